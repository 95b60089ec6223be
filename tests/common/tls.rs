//! TLS helpers shared by the TLS tests and the wss measurement examples (which include this
//! file with `#[path]`): a self-signed certificate written to a temporary folder, and a rustls
//! client that trusts exactly that certificate.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A TLS stream over TCP as the tests and measurement clients use it.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost` and `127.0.0.1`, as PEM files in a temporary
/// folder that is removed on drop.
pub struct TestCert {
    /// The folder holding `cert.pem` and `key.pem`.
    pub dir: PathBuf,
    /// `cert.pem`.
    pub cert: PathBuf,
    /// `key.pem`.
    pub key: PathBuf,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// Generates a fresh key pair and certificate (rcgen).
    pub fn generate() -> TestCert {
        static N: AtomicUsize = AtomicUsize::new(0);
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("generate certificate");
        let dir = std::env::temp_dir().join(format!(
            "wsloop-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
        TestCert {
            dir,
            cert,
            key,
            der: certified.cert.der().clone(),
        }
    }

    /// `--tls-cert CERT --tls-key KEY` for the server.
    pub fn args(&self) -> [String; 4] {
        [
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// A client configuration that trusts this certificate only, offering ALPN `http/1.1`.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config_trusting(self.der.clone())
    }
}

/// A client configuration that trusts `cert` only (ring provider, ALPN `http/1.1`).
pub fn client_config_trusting(cert: CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("trust the certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS client stream to `addr` for the name `localhost` (the handshake completes on the
/// first read or write).
pub fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = ClientConnection::new(Arc::clone(config), name).expect("client connection");
    StreamOwned::new(conn, tcp)
}
