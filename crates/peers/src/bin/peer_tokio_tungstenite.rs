//! A peer server for the side-by-side load bench (`cargo bench --bench load`, issue 9):
//! tokio-tungstenite on a tokio `current_thread` runtime, written the way that crate's own
//! `echo-server` example is — `accept_async`, `split()`, then `read.forward(write)` of text
//! and binary messages (`forward` batches writes and flushes when the read side is pending).
//!
//! Changes from the documentation's example: message and frame limits set explicitly
//! (`wsloop_peers::MAX_MESSAGE`), and `TCP_NODELAY` on, as wsloop sets it on every connection.
//!
//! ```sh
//! cargo run --release -p wsloop-peers --bin peer_tokio_tungstenite -- 127.0.0.1:9002
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use tokio::net::{TcpListener, TcpStream};

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await.expect("bind");
        println!(
            "peer_tokio_tungstenite listening on {}",
            listener.local_addr().expect("local address")
        );
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(accept_connection(stream));
        }
    });
}

async fn accept_connection(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    wsloop_peers::tungstenite_echo(stream).await;
}
