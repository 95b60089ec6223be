//! A [`Handler`] served in this process, for the library's tests: no `wsloop` binary needed,
//! so these run in every feature set.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use wsloop::{Config, Handler, Reactor, ServerHandle};

/// A [`Handler`] served by a [`Reactor`] on its own thread of this process, on a loopback port
/// the OS picked; shut down gracefully and joined on drop.
pub struct InProcess {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its handle, for the test to act as another thread of the application would.
    pub handle: ServerHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    /// Serves the application `make_app` builds (on the reactor's thread: a reactor stays on
    /// the thread that bound it) with `config`, its address replaced by `127.0.0.1:0`.
    pub fn start<H, F>(config: Config, make_app: F) -> InProcess
    where
        H: Handler + 'static,
        F: FnOnce() -> H + Send + 'static,
    {
        let config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..config
        };
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let reactor = Reactor::bind(config, make_app())?;
            let _ = bound_tx.send((reactor.local_addr(), reactor.handle()));
            reactor.run()
        });
        let (addr, handle) = bound_rx.recv().expect("the reactor did not bind");
        InProcess {
            addr,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
