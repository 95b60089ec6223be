// The client side of the examples on wsloop's rustdoc front page (src/lib.rs), which include
// this file in hidden lines: a `tungstenite` client with a read timeout, and checks that run in
// another thread and stop the server however they end, so that no example can hang.

use std::error::Error;
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use tungstenite::{Message, WebSocket};
use wsloop::ServerHandle;

/// What a check found: `Ok`, or what went wrong.
pub type Outcome = Result<(), Box<dyn Error>>;

/// A client, connected and upgraded.
pub type Client = WebSocket<TcpStream>;

/// Connects to `ws://ADDR/PATH`; reads time out after 10 s.
pub fn connect(addr: SocketAddr, path: &str) -> Result<Client, Box<dyn Error>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tungstenite::client(url, stream).map_err(|e| e.to_string())?;
    Ok(ws)
}

/// The next text message.
pub fn next(ws: &mut Client) -> Result<String, Box<dyn Error>> {
    loop {
        match ws.read()? {
            Message::Text(text) => return Ok(text.to_string()),
            Message::Ping(_) | Message::Pong(_) => {}
            other => return Err(format!("expected text, got {other:?}").into()),
        }
    }
}

/// Expects the text `want` next.
pub fn expect(ws: &mut Client, want: &str) -> Outcome {
    let got = next(ws)?;
    if got == want {
        Ok(())
    } else {
        Err(format!("expected {want:?}, got {got:?}").into())
    }
}

/// Whether a message sent to `ws://ADDR/` comes back.
pub fn echoes(addr: SocketAddr) -> Outcome {
    let mut ws = connect(addr, "/")?;
    ws.send(Message::text("hello 你好"))?;
    expect(&mut ws, "hello 你好")
}

/// Shuts the server down when dropped.
struct StopOnDrop(ServerHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Runs `check` against the server at `addr` in another thread, then shuts the server down
/// through `handle` however the check ended (a panic included).
pub fn check(
    addr: SocketAddr,
    handle: ServerHandle,
    check: impl FnOnce(SocketAddr) -> Outcome + Send + 'static,
) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let _stop = StopOnDrop(handle);
        check(addr).map_err(|e| e.to_string())
    })
}

/// What the check found, as the example's error.
pub fn joined(check: JoinHandle<Result<(), String>>) -> std::io::Result<()> {
    check
        .join()
        .map_err(|_| std::io::Error::other("the check panicked"))?
        .map_err(std::io::Error::other)
}

/// Raises SIGTERM when dropped: what stops `Workers`, whose every reactor handles it.
pub struct TermOnDrop;

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
    }
}
