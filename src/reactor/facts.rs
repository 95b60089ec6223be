//! What the upgrade decided about each open connection — the path it asked for and its
//! client's address — kept for `Context::path` and `Context::peer` at almost no cost per
//! connection, since every idle connection pays for whatever is kept.
//!
//! The slab entry holds 12 bytes of it ([`Facts`]): an id into this reactor's [`Paths`], where
//! every distinct path is stored once however many connections asked for it, and the address
//! itself when it is IPv4. Any other address waits in [`Peers`] beside the slab.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::rc::Rc;

use slab::Slab;

use crate::app::ConnId;

use super::Core;

impl Core {
    /// The client address connection `id` was upgraded with.
    pub(crate) fn peer_of(&self, id: ConnId) -> Option<SocketAddr> {
        let key = self.key_of(id)?;
        let facts = self.conns.get(key)?.facts;
        self.peers.get(key, facts.peer)
    }

    /// The path connection `id` was upgraded on.
    pub(crate) fn path_of(&self, id: ConnId) -> Option<&str> {
        let key = self.key_of(id)?;
        self.paths.get(self.conns.get(key)?.facts.path?)
    }

    /// Connection `key`, which had `facts`, left the slab.
    pub(super) fn forget_facts(&mut self, key: usize, facts: Facts) {
        if let Some(path) = facts.path {
            self.paths.release(path);
        }
        self.peers.forget(key, facts.peer);
    }
}

/// One open connection's facts, as its slab entry keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// Its path in [`Paths`]; `None` before the upgrade (or if the table was full).
    pub(crate) path: Option<PathId>,
    /// Its client's address.
    pub(crate) peer: Peer,
}

/// A client address in 8 bytes: IPv4 inline, anything else in [`Peers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Not known yet: the connection has not been upgraded.
    #[default]
    Unknown,
    /// An IPv4 address and port.
    V4(Ipv4Addr, u16),
    /// Kept in [`Peers`] under the connection's slab key.
    Elsewhere,
}

/// Where a path waits in [`Paths`]: its slab key plus one, so that `Option<PathId>` stays 4
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathId(NonZeroU32);

impl PathId {
    fn key(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// The addresses that do not fit a [`Peer`] (IPv6), by slab key.
#[derive(Debug, Default)]
pub(crate) struct Peers(HashMap<usize, SocketAddr>);

impl Peers {
    /// The compact form of connection `key`'s address `addr`, keeping it here when it does
    /// not fit one.
    pub(crate) fn keep(&mut self, key: usize, addr: SocketAddr) -> Peer {
        match addr {
            SocketAddr::V4(v4) => Peer::V4(*v4.ip(), v4.port()),
            SocketAddr::V6(_) => {
                self.0.insert(key, addr);
                Peer::Elsewhere
            }
        }
    }

    /// The address `peer` stands for (connection `key`'s).
    pub(crate) fn get(&self, key: usize, peer: Peer) -> Option<SocketAddr> {
        match peer {
            Peer::Unknown => None,
            Peer::V4(ip, port) => Some(SocketAddr::V4(SocketAddrV4::new(ip, port))),
            Peer::Elsewhere => self.0.get(&key).copied(),
        }
    }

    /// Connection `key` is gone.
    pub(crate) fn forget(&mut self, key: usize, peer: Peer) {
        if peer == Peer::Elsewhere {
            self.0.remove(&key);
        }
    }
}

/// The paths of this reactor's open connections, each stored once with the number of
/// connections holding it, and dropped with the last of them.
#[derive(Debug, Default)]
pub(crate) struct Paths {
    ids: HashMap<Rc<str>, PathId>,
    held: Slab<Held>,
}

/// One stored path.
#[derive(Debug)]
struct Held {
    path: Rc<str>,
    holders: usize,
}

impl Paths {
    /// Holds `path` for one more connection; `None` only if 2³² − 1 different paths are held.
    pub(crate) fn hold(&mut self, path: &str) -> Option<PathId> {
        if let Some(&id) = self.ids.get(path) {
            if let Some(held) = self.held.get_mut(id.key()) {
                held.holders += 1;
            }
            return Some(id);
        }
        let entry = self.held.vacant_entry();
        let id = u32::try_from(entry.key() + 1)
            .ok()
            .and_then(NonZeroU32::new)
            .map(PathId)?;
        let path: Rc<str> = Rc::from(path);
        entry.insert(Held {
            path: Rc::clone(&path),
            holders: 1,
        });
        self.ids.insert(path, id);
        Some(id)
    }

    /// The path `id` stands for.
    pub(crate) fn get(&self, id: PathId) -> Option<&str> {
        self.held.get(id.key()).map(|held| &*held.path)
    }

    /// Bytes of the path `id` stands for (0 for none): what a connection holding it counts in
    /// the memory budget, since a client picks it (up to `--max-head` bytes).
    pub(crate) fn len_of(&self, id: Option<PathId>) -> usize {
        id.and_then(|id| self.get(id)).map_or(0, str::len)
    }

    /// One connection holding `id` is gone; the path goes with the last.
    pub(crate) fn release(&mut self, id: PathId) {
        let Some(held) = self.held.get_mut(id.key()) else {
            return;
        };
        held.holders -= 1;
        if held.holders == 0 {
            let held = self.held.remove(id.key());
            self.ids.remove(&held.path);
        }
    }

    /// Distinct paths held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_stored_once_and_dropped_with_its_last_holder() {
        let mut paths = Paths::default();
        let a = paths.hold("/chat").unwrap();
        let b = paths.hold("/chat").unwrap();
        let other = paths.hold("/feed").unwrap();
        assert_eq!((a, paths.len()), (b, 2));
        assert_ne!(a, other);
        assert_eq!(paths.get(a), Some("/chat"));
        assert_eq!(paths.len_of(Some(other)), 5);
        paths.release(a);
        assert_eq!(paths.get(b), Some("/chat"));
        paths.release(b);
        assert_eq!((paths.get(a), paths.len()), (None, 1));
        // The slot is reused for the next path, under the same id, without confusion.
        let again = paths.hold("/again").unwrap();
        assert_eq!((again, paths.get(a)), (a, Some("/again")));
        let chat = paths.hold("/chat").unwrap();
        assert_eq!(paths.get(chat), Some("/chat"));
    }

    #[test]
    fn ipv4_peers_stay_inline_and_others_beside_the_slab() {
        let mut peers = Peers::default();
        let v4: SocketAddr = "203.0.113.7:4711".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let (inline, beside) = (peers.keep(1, v4), peers.keep(2, v6));
        assert_eq!(inline, Peer::V4(Ipv4Addr::new(203, 0, 113, 7), 4711));
        assert_eq!(beside, Peer::Elsewhere);
        assert_eq!(peers.get(1, inline), Some(v4));
        assert_eq!(peers.get(2, beside), Some(v6));
        assert_eq!(peers.get(3, Peer::Unknown), None);
        peers.forget(2, beside);
        assert_eq!(peers.get(2, beside), None);
        assert!(peers.0.is_empty());
    }

    /// The slab entry pays for these on every idle connection.
    #[test]
    fn facts_take_twelve_bytes() {
        assert_eq!(std::mem::size_of::<Peer>(), 8);
        assert_eq!(std::mem::size_of::<Option<PathId>>(), 4);
        assert_eq!(std::mem::size_of::<Facts>(), 12);
    }
}
