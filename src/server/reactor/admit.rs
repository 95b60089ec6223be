//! Admission and the opening handshake: accept-time refusals, the request head, plain HTTP
//! answers, the upgrade (origin, per-IP cap, subprotocol and extension negotiation), and the
//! real client address (PROXY header, trusted forwarding headers).

use std::net::{IpAddr, SocketAddr};

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::protocol::deflate::negotiate;
use crate::protocol::handshake::{
    validate_request, validate_upgrade, write_accept_response, HandshakeError, HeadScanner,
    RequestHead, EMPTY_HEADER,
};
use crate::protocol::proxy::{self, ProxyHeader};
use crate::server::admission::origin_allowed;
use crate::server::app::{Context, Decision, Handler, Request};
use crate::server::client_addr::{client_ip, Cidr};
use crate::server::compression::ConnDeflate;
use crate::server::config::ProxyMode;
use crate::server::connection::{Connection, HeadState, Phase};
use crate::server::http::{error_response, ok_response, Response};
use crate::server::metrics::{self, RoomFigures};
use crate::server::stats::RejectReason;
use crate::server::workers::{release_ip_slot, take_ip_slot};

use super::{Core, MAX_HEADERS, REJECT_OVERFLOW};

impl Core {
    /// A connection was accepted: admit it, or answer 503 (or just close it) over a limit.
    pub(super) fn add_connection(
        &mut self,
        socket: TcpStream,
        peer: SocketAddr,
        metrics_only: bool,
    ) {
        if self.shutting_down {
            return;
        }
        let open = self.count_connection_in();
        if !self.insert_connection(socket, peer, metrics_only, open) {
            self.count_connection_out();
        }
    }

    /// Puts an accepted connection in the slab, refused with 503 when over `--max-conns`
    /// (`open` connections in the process before it), the memory budget or the handshake rate.
    /// False when it was closed at once instead.
    fn insert_connection(
        &mut self,
        mut socket: TcpStream,
        peer: SocketAddr,
        metrics_only: bool,
        open: usize,
    ) -> bool {
        let refusal = if open >= self.config.max_conns {
            Some(RejectReason::MaxConns)
        } else if self.over_budget() {
            Some(RejectReason::MemoryBudget)
        } else if !metrics_only
            && self
                .handshake_bucket
                .as_mut()
                .is_some_and(|bucket| !bucket.try_take(self.tick, 1))
        {
            Some(RejectReason::HandshakeRate)
        } else {
            None
        };
        if refusal.is_some() && open >= self.config.max_conns + REJECT_OVERFLOW {
            // Not even room to say so: drop the socket.
            self.stats.reject(refusal.unwrap_or(RejectReason::MaxConns));
            return false;
        }
        // The metrics listener is always plain HTTP.
        let tls_config = self.config.tls.as_ref().filter(|_| !metrics_only);
        let tls = match tls_config {
            // A 503 cannot be said before a TLS handshake: over the limit, just close.
            Some(_) if refusal.is_some() => {
                debug!("{peer}: refused before the TLS handshake: closing");
                self.stats.reject(refusal.unwrap_or(RejectReason::MaxConns));
                return false;
            }
            Some(config) => match config.accept() {
                Ok(session) => Some(session),
                Err(e) => {
                    warn!("{peer}: {e}");
                    return false;
                }
            },
            None => None,
        };
        let _ = socket.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.registry.register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register {peer}: {e}");
            return false;
        }
        self.next_serial = self.next_serial.wrapping_add(1);
        let mut conn = Connection::new(socket, self.next_serial, self.tick, tls);
        conn.metrics_only = metrics_only;
        entry.insert(conn);
        self.reaccount(key); // a TLS session holds memory from the start
        self.stats.accepted += 1;
        self.stats.open += 1;
        if let Some(reason) = refusal {
            debug!("{peer}: refused ({}): 503", reason.label());
            self.reject_busy(key, reason);
        } else {
            debug!("{peer}: accepted as #{key}");
            self.arm(key, self.tick.after(self.config.handshake_timeout));
        }
        true
    }

    /// Counts a new connection towards `--max-conns`; returns how many the process had
    /// before it. A lone reactor's slab is its count; workers share one.
    fn count_connection_in(&self) -> usize {
        match &self.member {
            Some(member) => member.counts.open_one(),
            None => self.conns.len(),
        }
    }

    /// A connection counted by [`Core::count_connection_in`] is gone.
    fn count_connection_out(&self) {
        if let Some(member) = &self.member {
            member.counts.close_one();
        }
    }

    /// Connection `key` left the slab: it no longer counts towards `--max-conns` nor, if it
    /// was upgraded, towards its address's `--max-conns-per-ip`.
    pub(super) fn count_out(&mut self, key: usize) {
        self.count_connection_out();
        if let Some(ip) = self.ip_of.remove(&key) {
            match &self.member {
                Some(member) => member.counts.release_ip(ip),
                None => release_ip_slot(&mut self.per_ip, ip),
            }
        }
    }

    /// Counts connection `key` towards `--max-conns-per-ip` for `ip` (every worker's
    /// connections together); false when `ip` already has `cap`.
    fn count_per_ip(&mut self, key: usize, ip: IpAddr, cap: usize) -> bool {
        let taken = match &self.member {
            Some(member) => member.counts.take_ip(ip, cap),
            None => take_ip_slot(&mut self.per_ip, ip, cap),
        };
        if taken {
            self.ip_of.insert(key, ip);
        }
        taken
    }

    /// Handles the request head(s) collected so far: plain HTTP requests (possibly several,
    /// pipelined on a keep-alive connection) and at most one upgrade.
    ///
    /// Requests are answered only while the connection's unsent output stays within
    /// `--max-backpressure`. Past it, the rest stays in the head buffer (at most about one
    /// read: reading pauses, and the buffer counts in the memory budget) and is answered when
    /// the output has drained, before anything more is read.
    pub(super) fn on_head_bytes<H: Handler>(&mut self, app: &mut H, key: usize) {
        if !self.proxy_header_done(key) {
            return;
        }
        let Some(mut head) = self.take_head(key) else {
            return;
        };
        let Some(answered) = self.answer_heads(app, key, &mut head) else {
            return; // Upgraded, refused or closing: the head is done with.
        };
        if answered > 0 {
            head.buf.drain(..answered.min(head.buf.len()));
            // An idle keep-alive connection holds no buffer; a held one only its unread rest.
            head.buf.shrink_to_fit();
        }
        if let Some(conn) = self.conns.get_mut(key) {
            // Held: read nothing more until the output drained (`after_write` resumes).
            conn.read_paused |= head.held;
            conn.phase = Phase::Head(head);
        }
        if answered > 0 {
            // Keep-alive: the next request gets the same time as the first.
            self.arm(key, self.tick.after(self.config.handshake_timeout));
        }
    }

    /// Whether the PROXY protocol header (when one is expected) has been dealt with; false
    /// while it is incomplete or when it was refused (the connection is then closed).
    fn proxy_header_done(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let Phase::Head(head) = &mut conn.phase else {
            return false;
        };
        if head.proxy_done || self.config.proxy_protocol == ProxyMode::Off || conn.metrics_only {
            return true;
        }
        let peer = conn.socket.peer_addr().map(|a| a.ip()).ok();
        let trusted = peer.is_some_and(|ip| trusted_peer(&self.config.trusted_proxies, ip));
        match proxy::parse(&head.buf) {
            Ok(ProxyHeader::Partial) => return false,
            Ok(ProxyHeader::Absent) if self.config.proxy_protocol == ProxyMode::Optional => {}
            Ok(ProxyHeader::Found { len, source }) if trusted => {
                head.buf.drain(..len.min(head.buf.len()));
                head.client = source;
            }
            outcome => {
                debug!("#{key}: PROXY header refused from {peer:?}: {outcome:?}");
                self.stats.reject(RejectReason::Proxy);
                self.kill(key);
                return false;
            }
        }
        head.proxy_done = true;
        true
    }

    /// Takes the request head state out of a connection still reading one (its phase says
    /// `Linger` meanwhile), so that requests can borrow its bytes while the core answers.
    fn take_head(&mut self, key: usize) -> Option<Box<HeadState>> {
        let conn = self.conns.get_mut(key)?;
        match std::mem::replace(&mut conn.phase, Phase::Linger) {
            Phase::Head(head) => Some(head),
            other => {
                conn.phase = other;
                None
            }
        }
    }

    /// Answers the complete requests at the front of `head.buf`, in order, while the output
    /// stays within `--max-backpressure`; sets `head.held` when it stopped for that. Returns
    /// the bytes answered, or `None` once the connection reads no more requests (upgraded,
    /// refused, closing).
    fn answer_heads<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        head: &mut HeadState,
    ) -> Option<usize> {
        let mut answered = 0;
        loop {
            let conn = self.conns.get(key)?;
            head.held = conn.over_backpressure(self.config.max_backpressure);
            if head.held {
                return Some(answered);
            }
            let metrics_only = conn.metrics_only;
            let unread = head.buf.get_mut(answered..).unwrap_or_default();
            let end = match head.scanner.scan(unread, self.config.max_head) {
                Ok(Some(end)) => end,
                Ok(None) => return Some(answered),
                Err(e) => {
                    self.refuse(key, e);
                    return None;
                }
            };
            let (request, rest) = unread.split_at_mut_checked(end)?;
            let mut headers = [EMPTY_HEADER; MAX_HEADERS];
            let req = match RequestHead::parse(request, &mut headers) {
                Ok(req) => req,
                Err(e) => {
                    self.refuse(key, e);
                    return None;
                }
            };
            if req.wants_websocket() && !metrics_only {
                if self.upgrade(app, key, &req, head.client) {
                    // Bytes after the head are the first frames: decode them now.
                    self.on_frames(app, key, rest);
                }
                return None;
            }
            if let Err(e) = validate_request(&req) {
                self.refuse(key, e);
                return None;
            }
            let keep_alive = req.keep_alive() && !self.shutting_down;
            let response = self.plain_http(key, &req, keep_alive);
            self.queue_response(key, &response);
            if !keep_alive || response.closes() {
                self.linger(key);
                return None;
            }
            answered += end;
            head.scanner = HeadScanner::default();
        }
    }

    /// Corks a plain-HTTP answer: its own bytes, then the shared file body without a copy.
    fn queue_response(&mut self, key: usize, response: &Response) {
        self.queue(key, &[&response.bytes]);
        if let Some(body) = &response.shared_body {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.corked += body.len();
                self.outbox.push_shared(key, body, 0);
            }
        }
    }

    fn plain_http(&mut self, key: usize, req: &RequestHead<'_, '_>, keep_alive: bool) -> Response {
        self.stats.http_requests += 1;
        let path = req.target.split('?').next().unwrap_or_default();
        let head_only = req.method == "HEAD";
        let metrics_only = self.conns.get(key).is_some_and(|c| c.metrics_only);
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
        if path == "/stats" && matches!(req.method, "GET" | "HEAD") {
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

    /// Validates an upgrade and asks the application; on success the connection is open.
    pub(super) fn upgrade<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        req: &RequestHead<'_, '_>,
        proxied: Option<SocketAddr>,
    ) -> bool {
        if let Err(e) = validate_upgrade(req) {
            self.refuse(key, e);
            return false;
        }
        let key_header = req.header("sec-websocket-key").unwrap_or_default();
        let origin = req.header("origin");
        if !origin_allowed(origin, req.header("host"), &self.config.allow_origins) {
            debug!("#{key}: origin {origin:?} not allowed: 403");
            self.reject_http(key, 403, &[], RejectReason::Origin);
            return false;
        }
        if self.over_budget() {
            debug!("#{key}: over --max-buffered: 503");
            self.reject_busy(key, RejectReason::MemoryBudget);
            return false;
        }
        let (Some(id), Some(conn)) = (self.id_of(key), self.conns.get(key)) else {
            return false;
        };
        let socket_peer = conn
            .socket
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let peer = self.client_addr(proxied.unwrap_or(socket_peer), req);
        if let Some(cap) = self.config.max_conns_per_ip {
            if !self.count_per_ip(key, peer.ip(), cap) {
                debug!("#{key}: {} already has {cap} connections: 503", peer.ip());
                self.reject_busy(key, RejectReason::PerIp);
                return false;
            }
        }
        let request = Request {
            path: req.target,
            headers: req.headers,
            peer,
        };
        let decision = app.on_open(&mut Context { core: self }, id, &request);
        let protocol = match decision {
            Decision::Accept(protocol) => protocol,
            Decision::Reject(status) => {
                debug!("#{key}: application rejected the upgrade: {status}");
                self.reject_http(key, status, &[], RejectReason::Application);
                return false;
            }
        };
        let deflate = self.config.deflate.as_ref().and_then(|config| {
            let offers = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|h| h.value);
            negotiate(offers, config)
        });
        let extensions = deflate.map(|params| params.response_value());
        let mut response = Vec::with_capacity(256);
        write_accept_response(
            &mut response,
            key_header,
            protocol.as_deref(),
            extensions.as_deref(),
        );
        self.queue(key, &[&response]);
        self.stats.upgraded += 1;
        debug!("#{key}: upgraded {} from {peer}", req.target);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.phase = Phase::Open;
            conn.app_open = true;
            if let Some(params) = deflate {
                conn.decoder.enable_compression();
                conn.deflate = Some(Box::new(ConnDeflate::new(params)));
            }
        }
        self.arm_idle(key);
        true
    }

    /// The client's address: the `--forwarded-header` (joined over its lines, RFC 9110 §5.3)
    /// is honoured only for hops in `--trusted-proxy`; any other forwarding header is not
    /// read at all.
    pub(super) fn client_addr(&self, peer: SocketAddr, req: &RequestHead<'_, '_>) -> SocketAddr {
        let Some(header) = self.config.forwarded_header else {
            return peer;
        };
        let values: Vec<&str> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(header.name()))
            .map(|h| h.value)
            .collect();
        if values.is_empty() {
            return peer;
        }
        let list = values.join(", ");
        let ip = client_ip(peer.ip(), &self.config.trusted_proxies, header, &list);
        SocketAddr::new(ip, if ip == peer.ip() { peer.port() } else { 0 })
    }

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
        let retry = self.jitter.retry_after(2).to_string();
        self.reject_http(key, 503, &[("Retry-After", &retry)], reason);
    }

    pub(super) fn reject_http(
        &mut self,
        key: usize,
        status: u16,
        extra: &[(&str, &str)],
        reason: RejectReason,
    ) {
        self.stats.reject(reason);
        self.queue(key, &[&error_response(status, extra)]);
        self.linger(key);
    }
}

/// Whether PROXY headers from `ip` are believed (no `--trusted-proxy`: loopback only).
fn trusted_peer(trusted: &[Cidr], ip: IpAddr) -> bool {
    if trusted.is_empty() {
        ip.is_loopback()
    } else {
        trusted.iter().any(|c| c.contains(ip))
    }
}
