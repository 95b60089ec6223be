//! What the comparison servers share: the tokio-tungstenite echo, written the way that crate's
//! own `echo-server` example is, served over plain TCP (`peer_tokio_tungstenite`) and over
//! tokio-rustls (`tokio_wss_echo`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The message and frame limit of every peer (64 MiB, for the 16 MiB point): set explicitly, so the bench's large points
/// never depend on a library default.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Accepts the WebSocket upgrade on `stream` and echoes text and binary messages until the
/// connection ends: `accept_async`, `split()`, then `read.forward(write)` (`forward` batches
/// writes and flushes when the read side is pending). Tungstenite answers pings and closes
/// itself.
pub async fn tungstenite_echo<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (write, read) = ws.split();
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}
