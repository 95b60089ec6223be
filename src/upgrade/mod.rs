//! Handing live connections to a new process on `SIGUSR2` (issue 18): the first pieces, NOT
//! wired into the reactor or the binary yet. Nothing calls them outside their tests, and no
//! signal starts an upgrade.
//!
//! - [`wire`]: framed messages, each with the descriptors it carries (`SCM_RIGHTS`), over a
//!   Unix stream socket — one end of the socketpair the new process will inherit, so that no
//!   path exists that another local user could connect to.
//! - [`protocol`]: the versioned hello both processes exchange before any descriptor moves.
//!
//! What a moving connection carries is `wsloop_proto::conn::export` plus the server's own
//! state for it (path, subprotocol, client address, rooms, unwritten output): that record is
//! not written yet.

// Not wired yet: only the tests use these.
#![allow(dead_code)]

pub(crate) mod protocol;
pub(crate) mod wire;
