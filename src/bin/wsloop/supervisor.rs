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
//!
//! SIGUSR2 to the supervisor upgrades the children in place, one at a time: each gets
//! SIGUSR2 and hands its connections to a new process it starts (see `wsloop::upgrade`). The
//! supervisor is the children's subreaper, so a new process becomes its child once the old
//! one has exited; each child names the process serving its place in its own pid file
//! ([`SUPERVISED_PID_FILE`]), which the new process rewrites when it has taken over. The
//! supervisor then supervises that process instead of restarting the old one.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use rustix::process::{
    getpid, kill_process, set_child_subreaper, waitpid, Pid, Signal, WaitOptions, WaitStatus,
};
use socket2::{Domain, Protocol, Socket, Type};

/// Environment variable through which the supervisor hands a child its address.
pub const SUPERVISED_ADDR: &str = "WSLOOP_SUPERVISED_ADDR";
/// Environment variable naming the file in which a child keeps the pid of the process that
/// serves its place (itself, then whoever an upgrade handed its connections to).
pub const SUPERVISED_PID_FILE: &str = "WSLOOP_SUPERVISED_PID_FILE";
/// How long one child's upgrade may take before the supervisor goes on to the next.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
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
    /// Where each child keeps the pid serving its place (`process-N.pid`).
    pub pid_dir: PathBuf,
}

/// A supervised process: one the supervisor started, or one an upgrade started that it
/// adopted (its child through the subreaper once the old process exited).
enum Proc {
    Started(Child),
    Adopted(Pid),
}

impl Proc {
    fn id(&self) -> u32 {
        match self {
            Proc::Started(child) => child.id(),
            Proc::Adopted(pid) => pid.as_raw_nonzero().get() as u32,
        }
    }

    fn pid(&self) -> Pid {
        match self {
            Proc::Started(child) => Pid::from_child(child),
            Proc::Adopted(pid) => *pid,
        }
    }

    /// How it ended, once it has.
    fn try_wait(&mut self) -> io::Result<Option<(bool, String)>> {
        match self {
            Proc::Started(child) => Ok(child
                .try_wait()?
                .map(|status| (status.success(), describe(status)))),
            Proc::Adopted(pid) => Ok(waitpid(Some(*pid), WaitOptions::NOHANG)?
                .map(|(_, status)| (status.exit_status() == Some(0), describe_wait(status)))),
        }
    }

    fn wait(&mut self) -> io::Result<String> {
        match self {
            Proc::Started(child) => child.wait().map(describe),
            Proc::Adopted(pid) => Ok(waitpid(Some(*pid), WaitOptions::empty())?
                .map_or_else(String::new, |(_, status)| describe_wait(status))),
        }
    }
}

/// A rolling upgrade under way: the slot being upgraded, its process before, and until when.
struct Rolling {
    slot: usize,
    old: u32,
    until: Instant,
}

/// One child slot: the running process, or when to start the next one.
struct Slot {
    child: Option<Proc>,
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
    pub fn run(
        &self,
        stop: &Arc<AtomicBool>,
        upgrade: &Arc<AtomicBool>,
        mut on_event: impl FnMut(&str),
    ) -> io::Result<()> {
        let reservation = reserve(self.addr)?;
        let addr = reservation
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet address"))?;
        // New processes that upgrades start become ours once their parent (a child) exits.
        if let Err(e) = set_child_subreaper(Some(getpid())) {
            warn!("cannot become the children's subreaper: upgrades lose track of them: {e}");
        }
        std::fs::create_dir_all(&self.pid_dir)?;
        on_event(&format!(
            "supervisor on {addr}: {} processes",
            self.processes
        ));
        let mut slots = Vec::with_capacity(self.processes);
        for i in 0..self.processes {
            let child = self.spawn(addr, i)?;
            on_event(&format!(
                "process {} of {} started (pid {})",
                i + 1,
                self.processes,
                child.id()
            ));
            slots.push(Slot {
                child: Some(Proc::Started(child)),
                started: Instant::now(),
                restart_at: None,
                backoff: FIRST_BACKOFF,
                restarts: 0,
            });
        }
        let mut rolling: Option<Rolling> = None;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            if upgrade.swap(false, Ordering::Relaxed) {
                match rolling {
                    Some(_) => on_event("SIGUSR2: an upgrade is under way: ignored"),
                    None => {
                        on_event("SIGUSR2: upgrading the processes one at a time");
                        rolling = self.upgrade_next(0, &slots, &mut on_event);
                    }
                }
            }
            for (i, slot) in slots.iter_mut().enumerate() {
                self.tend(i, slot, addr, &mut on_event);
            }
            rolling = rolling.and_then(|r| self.tend_upgrade(r, &slots, &mut on_event));
        }
        on_event("stopping: SIGTERM to every process");
        for slot in &slots {
            if let Some(child) = &slot.child {
                let _ = kill_process(child.pid(), Signal::TERM);
            }
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(mut child) = slot.child.take() {
                let status = child.wait()?;
                on_event(&format!("process {} exited ({status})", i + 1));
            }
        }
        let _ = std::fs::remove_dir_all(&self.pid_dir);
        drop(reservation);
        Ok(())
    }

    /// Sends SIGUSR2 to the first slot from `from` on with a running process.
    fn upgrade_next(
        &self,
        from: usize,
        slots: &[Slot],
        on_event: &mut impl FnMut(&str),
    ) -> Option<Rolling> {
        let (slot, child) = slots
            .iter()
            .enumerate()
            .skip(from)
            .find_map(|(i, s)| s.child.as_ref().map(|c| (i, c)))?;
        if let Err(e) = kill_process(child.pid(), Signal::USR2) {
            on_event(&format!("process {}: SIGUSR2: {e}", slot + 1));
            return self.upgrade_next(slot + 1, slots, on_event);
        }
        Some(Rolling {
            slot,
            old: child.id(),
            until: Instant::now() + UPGRADE_TIMEOUT,
        })
    }

    /// The slot being upgraded is done once another process serves it (or its time is up):
    /// then the next one.
    fn tend_upgrade(
        &self,
        rolling: Rolling,
        slots: &[Slot],
        on_event: &mut impl FnMut(&str),
    ) -> Option<Rolling> {
        let now = slots
            .get(rolling.slot)
            .and_then(|s| s.child.as_ref())
            .map(Proc::id);
        if now.is_some_and(|pid| pid != rolling.old) {
            return self.upgrade_next(rolling.slot + 1, slots, on_event);
        }
        if Instant::now() >= rolling.until {
            on_event(&format!(
                "process {}: not upgraded within {} s; going on",
                rolling.slot + 1,
                UPGRADE_TIMEOUT.as_secs()
            ));
            return self.upgrade_next(rolling.slot + 1, slots, on_event);
        }
        Some(rolling)
    }

    /// Checks one slot: a process that exited is replaced by the one its upgrade started
    /// (named by its pid file, running), else restarted when its backoff has passed.
    fn tend(&self, i: usize, slot: &mut Slot, addr: SocketAddr, on_event: &mut impl FnMut(&str)) {
        if let Some(child) = &mut slot.child {
            match child.try_wait() {
                Ok(None) => return,
                Ok(Some((success, status))) => {
                    let old = child.id();
                    if let Some(new) = self.upgraded_to(i, old).filter(|_| success) {
                        on_event(&format!(
                            "process {} upgraded (pid {old} -> pid {})",
                            i + 1,
                            new.as_raw_nonzero()
                        ));
                        slot.child = Some(Proc::Adopted(new));
                        slot.started = Instant::now();
                        return;
                    }
                    let ran = slot.started.elapsed();
                    if ran >= STABLE_AFTER {
                        slot.backoff = FIRST_BACKOFF;
                    }
                    warn!("process {} (pid {old}) died: {status}", i + 1);
                    on_event(&format!(
                        "process {} (pid {old}) exited ({status}) after {:.1} s; restarting in {} ms",
                        i + 1,
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
            match self.spawn(addr, i) {
                Ok(child) => {
                    slot.restarts += 1;
                    on_event(&format!(
                        "process {} restarted (pid {}, restart {})",
                        i + 1,
                        child.id(),
                        slot.restarts
                    ));
                    slot.child = Some(Proc::Started(child));
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

    /// The process an upgrade of slot `i` handed `old`'s connections to, if its pid file
    /// names another process that is still there.
    fn upgraded_to(&self, i: usize, old: u32) -> Option<Pid> {
        let text = std::fs::read_to_string(self.pid_file(i)).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let pid = Pid::from_raw(pid).filter(|p| p.as_raw_nonzero().get() as u32 != old)?;
        // Signal 0: whether it exists (and is ours to signal).
        rustix::process::test_kill_process(pid).ok().map(|()| pid)
    }

    fn pid_file(&self, i: usize) -> PathBuf {
        self.pid_dir.join(format!("process-{}.pid", i + 1))
    }

    fn spawn(&self, addr: SocketAddr, i: usize) -> io::Result<Child> {
        info!("starting {} on {addr}", self.program.display());
        Command::new(&self.program)
            .args(&self.args)
            .env(SUPERVISED_ADDR, addr.to_string())
            .env(SUPERVISED_PID_FILE, self.pid_file(i))
            .spawn()
    }
}

fn reserve(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// How an adopted process ended, as [`describe`] says it of a started one.
fn describe_wait(status: WaitStatus) -> String {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => format!("{status:?}"),
    }
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
