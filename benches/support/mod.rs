//! What the benches that run server processes share (`load.rs`, `hostile.rs`): building the
//! release binaries, launching a program pinned to a CPU (optionally at real-time priority),
//! and a server process on a free loopback port that is stopped by its PID when dropped.
//!
//! A module of its own (not a file directly in `benches/`), so cargo does not take it for a
//! bench target; each bench includes it with `mod support;`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A path as a `String` argument.
pub fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The folder of the release binaries this bench runs: `$CARGO_TARGET_DIR/release`, or where
/// cargo put this bench's own copy of `wsloop` (the same target dir).
pub fn release_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("release"),
        None => Path::new(env!("CARGO_BIN_EXE_wsloop"))
            .parent()
            .expect("target dir")
            .to_path_buf(),
    }
}

/// Builds release `targets` (e.g. `["--bin", "wsloop"]`); a no-op when they are current.
pub fn build(targets: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    // What cargo sets for running this bench (CARGO_MANIFEST_DIR, CARGO_PKG_*, …) must not reach
    // the nested build: ring's build script watches CARGO_MANIFEST_DIR, and a changed value
    // would rebuild ring, rustls and wsloop on every run.
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_PRIMARY_PACKAGE",
        ]
        .iter()
        .any(|prefix| key_text.starts_with(prefix))
        {
            command.env_remove(&key);
        }
    }
    let status = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--release"])
        .args(targets)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build failed");
}

/// How the programs a bench starts are placed on the machine.
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    /// Run under `chrt -f 10` (SCHED_FIFO), so that other work on a shared machine (compilers
    /// at normal priority) cannot starve them.
    pub rt: bool,
    /// Pin each program to its CPU (only worth it with two CPUs or more).
    pub pin: bool,
}

impl Launch {
    /// `rt` as asked; pinning whenever there are two CPUs.
    pub fn new(rt: bool) -> Launch {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Launch { rt, pin: cpus >= 2 }
    }

    /// `program args…` with the open-file soft limit raised to the hard limit, when pinning on
    /// CPU `cpu`, and with `rt` at real-time priority. `exec` keeps the PID the program's own.
    pub fn command(&self, cpu: u8, program: &[String]) -> Command {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@""#,
            "sh",
        ]);
        if self.rt {
            command.args(["chrt", "-f", "10"]);
        }
        if self.pin {
            command.args(["taskset", "-c", &cpu.to_string()]);
        }
        command.args(program);
        command
    }
}

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A server process this bench started (and so may stop).
pub struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Running {
    /// Spawns `command` (a server told to listen on `addr`, its stdio already set) and waits
    /// up to 10 s until `addr` accepts connections.
    pub fn start(name: &str, mut command: Command, addr: SocketAddr) -> Running {
        let child = command.spawn().expect("start server");
        let mut running = Running { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline && running.exit_status().is_none(),
                "{name} did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        running
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Running {
    /// SIGTERM, up to 3 s to go, then SIGKILL; always reaped.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
