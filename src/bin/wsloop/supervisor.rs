//! `--processes N`: a small supervisor that runs N wsloop processes on one port and restarts
//! any that dies.
//!
//! Why processes and not only `--workers` threads: each process has its own open-file limit
//! (20 000 here), its own allocator and its own crash domain. The supervisor holds a socket
//! bound to the address with `SO_REUSEPORT` but never listening — that reserves the port
//! (and resolves port 0 once) across restarts without taking any connection, because the
//! kernel spreads new connections only among *listening* sockets of the group. Each child is
//! this same program with the same arguments, told through [`SUPERVISED_ADDR`] to bind that
//! address with `SO_REUSEPORT` and to serve, not supervise.
//!
//! A child that exits while the supervisor is not stopping is restarted after a backoff that
//! doubles from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`] (reset once a child has run for
//! [`STABLE_AFTER`]), so a child that cannot start does not spin. SIGTERM or SIGINT to the
//! supervisor is passed on to every child as SIGTERM (each drains its connections with 1001),
//! and the supervisor exits when they all have.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use rustix::process::{kill_process, Pid, Signal};
use socket2::{Domain, Protocol, Socket, Type};

/// Environment variable through which the supervisor hands a child its address.
pub const SUPERVISED_ADDR: &str = "WSLOOP_SUPERVISED_ADDR";
/// Delay before the first restart of a child that died.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often children are checked.
const TICK: Duration = Duration::from_millis(50);

/// What to run and how many.
#[derive(Debug, Clone)]
pub struct Supervisor {
    /// The program each child runs (normally `std::env::current_exe()`).
    pub program: PathBuf,
    /// Its arguments (normally this process's own).
    pub args: Vec<OsString>,
    /// How many children.
    pub processes: usize,
    /// The address they share.
    pub addr: SocketAddr,
}

/// One child slot: the running process, or when to start the next one.
struct Slot {
    child: Option<Child>,
    started: Instant,
    restart_at: Option<Instant>,
    backoff: Duration,
    restarts: u64,
}

impl Slot {
    /// The next start after the current backoff, which then doubles (up to the cap).
    fn schedule_restart(&mut self) {
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

impl Supervisor {
    /// Reserves the address, starts the children, restarts the ones that die, and returns
    /// once `stop` is set and every child has exited. `on_event` gets one line per start,
    /// exit and restart (the binary prints them).
    ///
    /// # Errors
    /// The address cannot be reserved, or the first start of a child fails.
    pub fn run(&self, stop: &Arc<AtomicBool>, mut on_event: impl FnMut(&str)) -> io::Result<()> {
        let reservation = reserve(self.addr)?;
        let addr = reservation
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet address"))?;
        on_event(&format!(
            "supervisor on {addr}: {} processes",
            self.processes
        ));
        let mut slots = Vec::with_capacity(self.processes);
        for i in 0..self.processes {
            let child = self.spawn(addr)?;
            on_event(&format!(
                "process {} of {} started (pid {})",
                i + 1,
                self.processes,
                child.id()
            ));
            slots.push(Slot {
                child: Some(child),
                started: Instant::now(),
                restart_at: None,
                backoff: FIRST_BACKOFF,
                restarts: 0,
            });
        }
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            for (i, slot) in slots.iter_mut().enumerate() {
                self.tend(i, slot, addr, &mut on_event);
            }
        }
        on_event("stopping: SIGTERM to every process");
        for slot in &slots {
            if let Some(child) = &slot.child {
                // Already gone is fine: it is reaped below.
                let _ = kill_process(Pid::from_child(child), Signal::TERM);
            }
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(mut child) = slot.child.take() {
                let status = child.wait()?;
                on_event(&format!("process {} exited ({})", i + 1, describe(status)));
            }
        }
        drop(reservation);
        Ok(())
    }

    /// Reaps a dead child and starts its replacement when the backoff allows.
    fn tend(&self, i: usize, slot: &mut Slot, addr: SocketAddr, on_event: &mut impl FnMut(&str)) {
        if let Some(child) = &mut slot.child {
            match child.try_wait() {
                Ok(None) => return,
                Ok(Some(status)) => {
                    let ran = slot.started.elapsed();
                    if ran >= STABLE_AFTER {
                        slot.backoff = FIRST_BACKOFF;
                    }
                    warn!(
                        "process {} (pid {}) died: {}",
                        i + 1,
                        child.id(),
                        describe(status)
                    );
                    on_event(&format!(
                        "process {} (pid {}) exited ({}) after {:.1} s; restarting in {} ms",
                        i + 1,
                        child.id(),
                        describe(status),
                        ran.as_secs_f64(),
                        slot.backoff.as_millis()
                    ));
                    slot.child = None;
                    slot.schedule_restart();
                }
                Err(e) => {
                    warn!("process {}: wait failed: {e}", i + 1);
                    return;
                }
            }
        }
        if slot.restart_at.is_some_and(|at| Instant::now() >= at) {
            match self.spawn(addr) {
                Ok(child) => {
                    slot.restarts += 1;
                    on_event(&format!(
                        "process {} restarted (pid {}, restart {})",
                        i + 1,
                        child.id(),
                        slot.restarts
                    ));
                    slot.child = Some(child);
                    slot.started = Instant::now();
                    slot.restart_at = None;
                }
                Err(e) => {
                    warn!("process {}: restart failed: {e}", i + 1);
                    slot.schedule_restart();
                }
            }
        }
    }

    fn spawn(&self, addr: SocketAddr) -> io::Result<Child> {
        info!("starting {} on {addr}", self.program.display());
        Command::new(&self.program)
            .args(&self.args)
            .env(SUPERVISED_ADDR, addr.to_string())
            .spawn()
    }
}

/// A socket bound to `addr` with `SO_REUSEPORT`, never listening: it keeps the port for the
/// children (and fixes port 0 to one port) without receiving connections itself.
fn reserve(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A non-blocking listener bound as every child binds its own: with `SO_REUSEPORT`.
    fn listen_shared(addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = reserve(addr)?;
        socket.listen(128)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    }

    #[test]
    fn a_reserved_port_takes_no_connections_but_lets_listeners_share_it() {
        let reservation = reserve(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = reservation.local_addr().unwrap().as_socket().unwrap();
        // Nothing listens yet: a connection is refused rather than parked in a backlog.
        assert!(TcpStream::connect(addr).is_err());
        let listener = listen_shared(addr).unwrap();
        // Every connection reaches the one listening socket.
        let mut clients = Vec::new();
        for _ in 0..32 {
            clients.push(TcpStream::connect(addr).unwrap());
        }
        let mut accepted = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while accepted < clients.len() && Instant::now() < deadline {
            match listener.accept() {
                Ok(_) => accepted += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        assert_eq!(accepted, clients.len());
        // Without SO_REUSEPORT the port is taken.
        assert!(TcpListener::bind(addr).is_err());
    }
}
