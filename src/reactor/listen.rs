//! Binding the listening socket: mio's default, or with `SO_REUSEPORT` so that several
//! reactors (threads of one process, or separate processes) accept on the same port and the
//! kernel spreads incoming connections among them.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of a `SO_REUSEPORT` listener (mio uses the same for its own).
const BACKLOG: i32 = 1024;

/// Binds `addr`; with `reuse_port`, every listener bound the same way shares the port.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    if !reuse_port {
        return TcpListener::bind(addr);
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_listeners_share_a_port_only_with_reuse_port() {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let first = bind(any, true).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(addr, true).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        assert!(bind(addr, false).is_err());
    }
}
