//! The HTTP side of a connection's request phase: each request head its connection hands out
//! is answered here — a plain answer (`/metrics`, `/stats`, static files), or the upgrade
//! (validation, origin, memory budget, per-IP cap, the application's decision, the real
//! client address) — and refusals are written. The request phase's rules (PROXY header, head
//! size, one request at a time, keep-alive deadlines) are the connection's.

use std::net::SocketAddr;

use log::debug;
use wsloop_proto::conn::Request as HeadBytes;
use wsloop_proto::handshake::{
    validate_request, validate_upgrade, HandshakeError, RequestHead, EMPTY_HEADER,
};

use crate::admission::client_addr::client_addr;
use crate::admission::origin::origin_allowed;
use crate::app::{split_target, Context, Decision, Handler, Request};
use crate::http::{error_response, ok_response, Response};
use crate::out::Door;
use crate::stats::metrics::{self, RoomFigures};
use crate::stats::RejectReason;

use super::facts::Facts;
use super::{Core, MAX_HEADERS};

impl Core {
    /// Answers the request head connection `key` handed out: the upgrade, or a plain answer.
    pub(super) fn answer<H: Handler>(&mut self, app: &mut H, key: usize, request: HeadBytes) {
        let metrics_only = self.conns.get(key).is_some_and(|e| e.metrics_only);
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        let req = match RequestHead::parse(&request.head, &mut headers) {
            Ok(req) => req,
            Err(e) => return self.refuse(key, e),
        };
        if req.wants_websocket() && !metrics_only {
            return self.upgrade(app, key, &req, request.client);
        }
        if let Err(e) = validate_request(&req) {
            return self.refuse(key, e);
        }
        let keep_alive = req.keep_alive() && !self.shutting_down;
        let response = self.plain_http(key, &req, keep_alive);
        self.respond(key, &response, keep_alive && !response.closes());
    }

    /// Writes a plain-HTTP answer: its own bytes, then the shared file body without a copy.
    fn respond(&mut self, key: usize, response: &Response, keep_alive: bool) {
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
        let answered = entry.conn.respond(
            self.tick,
            &[&response.bytes],
            keep_alive,
            &mut door,
            &self.shared,
        );
        if let (Ok(()), Some(body)) = (answered, &response.shared_body) {
            door.push_shared(body, 0);
        }
    }

    fn plain_http(&mut self, key: usize, req: &RequestHead<'_, '_>, keep_alive: bool) -> Response {
        self.stats.http_requests += 1;
        let (path, _) = split_target(req.target);
        let head_only = req.method == "HEAD";
        let metrics_only = self.conns.get(key).is_some_and(|e| e.metrics_only);
        if metrics_only && req.wants_websocket() {
            // The metrics listener skips the PROXY header and the handshake rate: it never
            // upgrades.
            debug!("#{key}: WebSocket upgrade on the metrics listener: 404");
            return Response::owned(404, error_response(404, &[]));
        }
        let metrics_here = if metrics_only {
            true
        } else {
            self.config.metrics && self.config.metrics_addr.is_none()
        };
        if path == "/metrics" && metrics_here && matches!(req.method, "GET" | "HEAD") {
            self.fresh_stats();
            let text = match &self.member {
                Some(member) => member.metrics_text(&self.stats, &self.rooms),
                None => metrics::render(&self.stats, &RoomFigures::of(&self.rooms)),
            };
            let content_type = "text/plain; version=0.0.4; charset=utf-8";
            let bytes = ok_response(content_type, text.as_bytes(), head_only, keep_alive);
            return Response::owned(200, bytes);
        }
        if metrics_only {
            return Response::owned(404, error_response(404, &[]));
        }
        if path == "/stats" && self.config.stats && matches!(req.method, "GET" | "HEAD") {
            self.fresh_stats();
            let json = match &self.member {
                Some(member) => member.stats_json(&self.stats),
                None => self.stats.to_json(),
            };
            let bytes = ok_response("application/json", json.as_bytes(), head_only, keep_alive);
            return Response::owned(200, bytes);
        }
        self.static_files
            .respond(req.method, req.target, keep_alive, self.now)
    }

    /// Validates an upgrade and asks the application; on success the connection is open (its
    /// connection wrote the 101 with the negotiated extension).
    fn upgrade<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        req: &RequestHead<'_, '_>,
        proxied: Option<SocketAddr>,
    ) {
        if let Err(e) = validate_upgrade(req) {
            return self.refuse(key, e);
        }
        let origin = req.header("origin");
        if !origin_allowed(origin, req.header("host"), &self.config.allow_origins) {
            debug!("#{key}: origin {origin:?} not allowed: 403");
            return self.reject_http(key, 403, &[], RejectReason::Origin);
        }
        if self.budget.over(self.config.max_buffered) {
            debug!("#{key}: over --max-buffered: 503");
            return self.reject_busy(key, RejectReason::MemoryBudget);
        }
        let (Some(id), Some(entry)) = (self.id_of(key), self.conns.get(key)) else {
            return;
        };
        let socket_peer = entry
            .socket
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let peer = client_addr(
            proxied.unwrap_or(socket_peer),
            req,
            &self.config.trusted_proxies,
            self.config.forwarded_header,
        );
        if let Some(cap) = self.config.max_conns_per_ip {
            if !self.admission.count_per_ip(key, peer.ip(), cap) {
                debug!("#{key}: {} already has {cap} connections: 503", peer.ip());
                return self.reject_busy(key, RejectReason::PerIp);
            }
        }
        let request = Request::new(req.target, req.headers, peer);
        let protocol = match app.on_open(&mut Context { core: self }, id, &request) {
            Decision::Accept(protocol) => protocol,
            Decision::Reject(status) => {
                debug!("#{key}: application rejected the upgrade: {status}");
                return self.reject_http(key, status, &[], RejectReason::Application);
            }
        };
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
        if entry
            .conn
            .accept(self.tick, req, protocol.as_deref(), &mut door, &self.shared)
            .is_ok()
        {
            entry.facts = Facts {
                path: self.paths.hold(request.path()),
                peer: self.peers.keep(key, peer),
            };
            self.stats.upgraded += 1;
            debug!("#{key}: upgraded {} from {peer}", req.target);
        }
    }

    /// A request that broke a rule: the status its error calls for.
    pub(super) fn refuse(&mut self, key: usize, e: HandshakeError) {
        debug!("#{key}: bad request: {e}: {}", e.status());
        let extra: &[(&str, &str)] = if e == HandshakeError::UnsupportedVersion {
            &[("Sec-WebSocket-Version", "13")]
        } else {
            &[]
        };
        let status = e.status();
        self.reject_http(key, status, extra, RejectReason::for_status(status));
    }

    /// Answers 503 with a jittered `Retry-After`, so a fleet told to come back spreads out.
    pub(super) fn reject_busy(&mut self, key: usize, reason: RejectReason) {
        let retry = self.admission.retry_after().to_string();
        self.reject_http(key, 503, &[("Retry-After", &retry)], reason);
    }

    /// Refuses with an HTTP error `status`; the connection closes once it is written.
    fn reject_http(
        &mut self,
        key: usize,
        status: u16,
        extra: &[(&str, &str)],
        reason: RejectReason,
    ) {
        self.stats.reject(reason);
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
        let response = error_response(status, extra);
        let _ = entry
            .conn
            .reject(self.tick, &[&response], &mut door, &self.shared);
    }
}
