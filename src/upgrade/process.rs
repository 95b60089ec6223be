//! The two ends of the handoff channel as processes see them: the old process starts the new
//! one with the channel as its standard input; the new one takes it from there.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

use super::wire::Channel;
use super::{Upgrades, INHERIT_ENV};

/// Starts the new program with one end of a fresh socketpair as its standard input; returns
/// it and the channel over the other end. Both ends are close-on-exec here, so no other
/// program this process starts inherits either.
///
/// # Errors
/// The socketpair cannot be made or the program cannot be started.
pub(crate) fn spawn(upgrades: &Upgrades) -> io::Result<(Child, Channel<UnixStream>)> {
    let (ours, theirs) = UnixStream::pair()?;
    let child = Command::new(&upgrades.program)
        .args(&upgrades.args)
        .env(INHERIT_ENV, "1")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    Ok((child, Channel::new(ours)))
}

/// In a process an upgrade started ([`super::inheriting`]): the channel, taken off standard
/// input (which then reads `/dev/null`, so that nothing else reads the channel by mistake).
///
/// # Errors
/// Standard input cannot be duplicated or replaced.
pub(crate) fn inherited() -> io::Result<Option<Channel<UnixStream>>> {
    if !super::inheriting() {
        return Ok(None);
    }
    let channel = io::stdin().as_fd().try_clone_to_owned()?;
    rustix::stdio::dup2_stdin(File::open("/dev/null")?)?;
    Ok(Some(Channel::new(UnixStream::from(channel))))
}
