//! The comparison server for the wss benchmarks: tokio-tungstenite over tokio-rustls on a
//! current-thread runtime, echoing with `split()` + `forward()`, with the same certificate and
//! rustls provider (ring) as wsloop. Without `--tls-cert`: plain ws://.
//!
//! ```sh
//! cargo run --release -p wsloop-peers --bin tokio_wss_echo -- 127.0.0.1:9444 --tls-cert cert.pem --tls-key key.pem
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use wsloop::TlsConfig;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .map_or("127.0.0.1:9444", String::as_str)
        .parse()
        .expect("address");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // The same rustls ServerConfig wsloop builds (ring, ALPN http/1.1, default versions).
    let acceptor = match (flag("--tls-cert"), flag("--tls-key")) {
        (Some(cert), Some(key)) => {
            let config = TlsConfig::from_pem_files(cert.as_ref(), key.as_ref()).expect("cert");
            Some(TlsAcceptor::from(config.rustls_config()))
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let scheme = if acceptor.is_some() { "wss" } else { "ws" };
        println!(
            "tokio_wss_echo listening on {} ({scheme})",
            listener.local_addr().unwrap()
        );
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            wsloop_peers::tungstenite_echo(tls).await;
                        }
                    }
                    None => wsloop_peers::tungstenite_echo(tcp).await,
                }
            });
        }
    });
}
