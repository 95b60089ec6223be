//! A peer server for the side-by-side load bench (`cargo bench --bench load`, issue 9):
//! fastwebsockets behind hyper 1's HTTP/1.1 upgrade on a tokio `current_thread` runtime,
//! written the way fastwebsockets' own `echo_server` example is — `upgrade::upgrade`, a
//! `FragmentCollector`, and every Text or Binary frame written straight back.
//!
//! Changes from that example: the listen address comes from argv[1], nothing is printed per
//! connection, `TCP_NODELAY` is on (as wsloop sets it), and the message limit is set to
//! 16 MiB explicitly (the default, 64 MiB, already allows the bench's 4 MiB point; this just
//! keeps it from depending on a default).
//!
//! ```sh
//! cargo run --release -p wsloop-peers --bin peer_fastwebsockets -- 127.0.0.1:9003
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(wsloop_peers::MAX_MESSAGE);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        let _ = tokio::task::unconstrained(handle_client(fut)).await;
    });
    Ok(response)
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9003".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await.expect("bind");
        println!(
            "peer_fastwebsockets listening on {}",
            listener.local_addr().expect("local address")
        );
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = http1::Builder::new()
                    .serve_connection(io, service_fn(server_upgrade))
                    .with_upgrades()
                    .await;
            });
        }
    });
}
