//! TLS on the reactor (feature `tls`): rustls's sans-IO [`ServerConnection`] between the socket
//! and the same plaintext path plain connections take.
//!
//! - Reading: the reactor reads ciphertext into one half of its shared read buffer,
//!   [`TlsSession::decrypt`] feeds it to rustls and drains plaintext into the other half, and
//!   that plaintext goes to `Core::feed` exactly as a plain connection's bytes do.
//! - Writing: [`TlsSession::write_with`] hands the plaintext that the plain path would `writev`
//!   to rustls's `writer()` and writes the records with `write_tls`. Ciphertext the socket
//!   refuses stays in rustls (bounded by its buffer limit); plaintext rustls refuses stays in the
//!   connection's `OutQueue`, so backpressure works as for plain connections.
//!
//! Plain connections never reach this module: the connection holds `Option<Box<TlsSession>>`
//! and the reactor branches once per read or write, not per byte.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::out::{OutEntry, OutQueue};

/// Ciphertext and pending plaintext rustls may hold for one connection's output. Beyond it
/// plaintext stays in the connection's own queue (counted for backpressure).
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// What one session holds at rest, for the memory budget: the boxed `ServerConnection` with
/// its record-layer keys and rustls's receive buffer at its 4 KiB resting size. Measured:
/// 7.77 KiB of server RSS per idle wss connection, 10 000 open (benches/README.md, "TLS").
const SESSION_BYTES: usize = 8 * 1024;

/// The framing rustls adds to the records of one [`TLS_BUFFER_LIMIT`]'s worth of plaintext:
/// at most five records of 16 KiB, each with a 5-byte header and (TLS 1.2 AES-GCM, the
/// largest of the suites offered) an 8-byte explicit nonce and a 16-byte tag.
const RECORDS_OVERHEAD: usize = 5 * (5 + 8 + 16);

/// A certificate chain and key, ready to accept TLS connections (ALPN `http/1.1`).
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn", &self.server.alpn_protocols)
            .finish_non_exhaustive()
    }
}

pub use crate::tls_error::TlsError;

impl TlsConfig {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1).
    ///
    /// # Errors
    /// A file that cannot be read, holds no certificate or key, or a key that does not fit.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .map_err(|e| TlsError(format!("cannot read {what} {}: {e}", path.display())))
        };
        let cert_pem = read(cert, "certificate")?;
        let key_pem = read(key, "private key")?;
        TlsConfig::from_pem(&cert_pem, &key_pem).map_err(|TlsError(e)| {
            TlsError(format!(
                "{e} (certificate {}, key {})",
                cert.display(),
                key.display()
            ))
        })
    }

    /// Like [`from_pem_files`](TlsConfig::from_pem_files), from PEM text in memory.
    ///
    /// # Errors
    /// No certificate, no key, or a key that does not fit the certificate.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsConfig, TlsError> {
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("bad certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError("no certificate found in the PEM".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError(format!("no usable private key in the PEM: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError(format!("certificate and key do not fit: {e}")))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig::from_rustls(Arc::new(server)))
    }

    /// Uses a rustls configuration as it is (the caller sets ALPN, versions, resumption).
    pub fn from_rustls(server: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig { server }
    }

    /// The rustls configuration in use (to run another server with the very same settings).
    pub fn rustls_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// The state of one accepted connection.
    pub(crate) fn accept(&self) -> Result<Box<TlsSession>, TlsError> {
        let mut conn = ServerConnection::new(Arc::clone(&self.server))
            .map_err(|e| TlsError(format!("TLS session: {e}")))?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Box::new(TlsSession {
            conn,
            close_notify_sent: false,
        }))
    }
}

/// One connection's TLS state (boxed in the connection: 8 bytes there).
#[derive(Debug)]
pub(crate) struct TlsSession {
    conn: ServerConnection,
    close_notify_sent: bool,
}

/// What one [`TlsSession::decrypt`] step produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decrypted {
    /// Plaintext bytes written to the front of the buffer.
    pub(crate) len: usize,
    /// The peer sent `close_notify`: no more plaintext will come.
    pub(crate) closed: bool,
}

impl TlsSession {
    /// Feeds ciphertext from `cipher` (advancing it) and drains plaintext into `plain` until
    /// `plain` is full or `cipher` is used up with every plaintext byte drained. Call again
    /// while `cipher` is not empty or `plain` came back full.
    ///
    /// # Errors
    /// A TLS protocol error (garbage, plain HTTP, a failed handshake). rustls then has an alert
    /// queued: [`send_pending`](TlsSession::send_pending) it before dropping the connection.
    pub(crate) fn decrypt(
        &mut self,
        cipher: &mut &[u8],
        plain: &mut [u8],
    ) -> io::Result<Decrypted> {
        let mut len = 0;
        loop {
            while let Some(room) = plain.get_mut(len..).filter(|r| !r.is_empty()) {
                match self.conn.reader().read(room) {
                    Ok(0) => return Ok(Decrypted { len, closed: true }),
                    Ok(n) => len += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if len == plain.len() || cipher.is_empty() {
                return Ok(Decrypted { len, closed: false });
            }
            self.conn.read_tls(cipher)?;
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }

    /// Whether rustls holds ciphertext for the socket (handshake records, alerts, data).
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Bytes this session holds, for the memory budget: its resting size, plus — while rustls
    /// holds records the socket has not taken — the most that can be (the buffer limit and
    /// its records' framing; rustls does not say how much less it is).
    ///
    /// Not counted: a record still arriving grows rustls's receive buffer past its resting
    /// 4 KiB, by at most one record (about 18 KiB; 64 KiB for a handshake message), until
    /// the next read.
    pub(crate) fn memory(&self) -> usize {
        let pending = if self.conn.wants_write() {
            TLS_BUFFER_LIMIT + RECORDS_OVERHEAD
        } else {
            0
        };
        SESSION_BYTES + pending
    }

    /// Whether the handshake is still going on.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Writes rustls's pending ciphertext until done or the socket would block (not an error:
    /// the rest waits for `WRITABLE`).
    ///
    /// # Errors
    /// A socket error other than `WouldBlock`.
    pub(crate) fn send_pending(&mut self, socket: &mut impl Write) -> io::Result<()> {
        send_records(&mut self.conn, socket)
    }

    /// Writes pending ciphertext, then `out`'s queue and `entries` as plaintext through rustls
    /// (what the socket refuses stays queued, as `OutQueue::write_with` documents). Returns
    /// the plaintext bytes taken.
    ///
    /// # Errors
    /// A socket error other than `WouldBlock`.
    pub(crate) fn write_with(
        &mut self,
        socket: &mut impl Write,
        out: &mut OutQueue,
        outbox_bytes: &[u8],
        entries: &[OutEntry],
    ) -> io::Result<usize> {
        self.send_pending(socket)?;
        let mut sink = Encrypting {
            tls: &mut self.conn,
            socket,
        };
        out.write_with(&mut sink, outbox_bytes, entries)
            .map(|(n, _)| n)
    }

    /// Queues `close_notify` once (the connection has said everything).
    pub(crate) fn close_notify(&mut self) {
        if !std::mem::replace(&mut self.close_notify_sent, true) {
            self.conn.send_close_notify();
        }
    }
}

/// A `Write` that encrypts: takes plaintext only while the socket has taken every earlier
/// record, so rustls never holds more than one vectored write's worth of ciphertext.
struct Encrypting<'a, W: Write> {
    tls: &'a mut ServerConnection,
    socket: &'a mut W,
}

impl<W: Write> Write for Encrypting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_records(self.tls, self.socket)?;
        if self.tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write_vectored(bufs)?;
        send_records(self.tls, self.socket)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        send_records(self.tls, self.socket)
    }
}

/// Writes rustls's pending records until done or the socket would block.
fn send_records(tls: &mut ServerConnection, socket: &mut impl Write) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::out::Outbox;

    /// One direction of a socket: takes at most `room` bytes per call, then would block.
    #[derive(Default)]
    struct Pipe {
        bytes: Vec<u8>,
        room: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.bytes.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pair() -> (TlsSession, rustls::ClientConnection) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let config = TlsConfig::from_pem(
            certified.cert.pem().as_bytes(),
            certified.key_pair.serialize_pem().as_bytes(),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        (*config.accept().unwrap(), client)
    }

    /// Moves the client's records into the server; returns the plaintext the server got.
    fn client_to_server(client: &mut rustls::ClientConnection, server: &mut TlsSession) -> Vec<u8> {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut cipher = &wire[..];
        let mut plain = [0u8; 1000]; // small: exercises the "plain buffer full" path
        let mut got = Vec::new();
        loop {
            let step = server.decrypt(&mut cipher, &mut plain).unwrap();
            got.extend_from_slice(&plain[..step.len]);
            if cipher.is_empty() && step.len < plain.len() {
                return got;
            }
        }
    }

    fn server_to_client(wire: &mut Pipe, client: &mut rustls::ClientConnection) -> Vec<u8> {
        let mut rd = &wire.bytes[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
        }
        wire.bytes.clear();
        let mut got = Vec::new();
        let _ = client.reader().read_to_end(&mut got);
        got
    }

    #[test]
    fn output_survives_a_socket_that_takes_little_at_a_time() {
        let (mut server, mut client) = pair();
        let mut wire = Pipe::default();
        // Handshake, with the server's records written a few bytes per turn.
        client
            .writer()
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut request = Vec::new();
        for _ in 0..100 {
            request.extend(client_to_server(&mut client, &mut server));
            wire.room = 300;
            server.send_pending(&mut wire).unwrap();
            server_to_client(&mut wire, &mut client);
            if !client.is_handshaking() && !server.is_handshaking() && !request.is_empty() {
                break;
            }
        }
        assert_eq!(request, b"GET / HTTP/1.1\r\n\r\n");

        // 300 KiB of output in one turn, through a socket that takes 5000 bytes per turn.
        let message: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let mut outbox = Outbox::default();
        outbox.push_bytes(1, &[&message[..1000]]);
        let shared: std::rc::Rc<[u8]> = message[1000..].into();
        outbox.push_shared(1, &shared, 0);
        let mut out = OutQueue::default();
        let mut received = Vec::new();
        let mut entries = &outbox.entries[..];
        for _ in 0..1000 {
            wire.room = 5000;
            server
                .write_with(&mut wire, &mut out, &outbox.bytes, entries)
                .unwrap();
            entries = &[];
            received.extend(server_to_client(&mut wire, &mut client));
            // rustls holds at most its buffer limit; the rest waits as plaintext in `out`.
            assert!(out.len() + TLS_BUFFER_LIMIT + 1000 >= message.len() - received.len());
            if out.is_empty() && !server.wants_write() {
                break;
            }
        }
        assert_eq!(received.len(), message.len());
        assert!(received == message, "plaintext arrived intact and in order");

        // close_notify reaches the client as a clean end.
        server.close_notify();
        server.close_notify(); // once only
        wire.room = usize::MAX;
        server.send_pending(&mut wire).unwrap();
        server_to_client(&mut wire, &mut client);
        let mut rest = Vec::new();
        assert_eq!(client.reader().read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn plain_http_is_a_tls_error() {
        let (mut server, _client) = pair();
        let mut cipher = &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..];
        let mut plain = [0u8; 64];
        let err = server.decrypt(&mut cipher, &mut plain).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // An alert is queued for the peer.
        assert!(server.wants_write());
    }
}
