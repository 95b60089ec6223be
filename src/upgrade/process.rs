//! The two ends of the handoff channel as processes see them: the old process starts the new
//! one with the channel as its standard input; the new one takes it from there.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

use super::wire::Channel;
use super::{Upgrades, INHERIT_ENV, WORKER_CHANNELS};

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

/// With `--workers N`, worker 0 of the old process: a channel for each other worker, the new
/// ends sent first on `channel` ([`WORKER_CHANNELS`]), the old ends handed to those workers.
///
/// # Errors
/// A socketpair cannot be made or the channel fails.
pub(crate) fn hand_out_channels(
    upgrades: &Upgrades,
    channel: &mut Channel<UnixStream>,
) -> io::Result<()> {
    if upgrades.workers <= 1 {
        return Ok(());
    }
    let pairs = (1..upgrades.workers)
        .map(|_| UnixStream::pair())
        .collect::<io::Result<Vec<_>>>()?;
    let (ours, theirs): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    channel.send_all(
        WORKER_CHANNELS,
        &[],
        theirs.into_iter().map(OwnedFd::from).collect(),
    )?;
    for (sibling, stream) in upgrades.siblings.iter().zip(ours) {
        sibling.take_upgrade_channel(stream);
    }
    Ok(())
}

/// In a new process with `workers` workers: each worker's channel (see
/// [`hand_out_channels`]), or `None` when no upgrade started this process.
///
/// # Errors
/// Standard input cannot be taken, or the channels did not come.
pub(crate) fn inherited_channels(workers: usize) -> io::Result<Option<Vec<Channel<UnixStream>>>> {
    let Some(mut first) = inherited()? else {
        return Ok(None);
    };
    if workers <= 1 {
        return Ok(Some(vec![first]));
    }
    first
        .socket_mut()
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let msg = first.recv_one()?;
    if msg.kind != WORKER_CHANNELS || msg.fds.len() + 1 != workers {
        return Err(io::Error::other(
            "handoff: the old process runs another number of workers",
        ));
    }
    let rest = msg
        .fds
        .into_iter()
        .map(|fd| Channel::new(UnixStream::from(fd)));
    Ok(Some(std::iter::once(first).chain(rest).collect()))
}

/// In a process an upgrade started ([`super::inheriting`]): the channel, taken off standard
/// input (which then reads `/dev/null`, so that nothing else reads the channel by mistake).
///
/// # Errors
/// Standard input cannot be duplicated or replaced.
fn inherited() -> io::Result<Option<Channel<UnixStream>>> {
    if !super::inheriting() {
        return Ok(None);
    }
    let channel = io::stdin().as_fd().try_clone_to_owned()?;
    rustix::stdio::dup2_stdin(File::open("/dev/null")?)?;
    Ok(Some(Channel::new(UnixStream::from(channel))))
}
