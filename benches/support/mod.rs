//! What the benches that run server processes share (`load.rs`, `hostile.rs`, `upgrade.rs`):
//! building the release binaries, launching a program pinned to a CPU (optionally at real-time
//! priority), placing the bench itself on the other CPU, a server process on a free loopback
//! port that is stopped by its PID when dropped, and its `/stats`.
//!
//! A module of its own (not a file directly in `benches/`), so cargo does not take it for a
//! bench target; each bench includes it with `mod support;`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A bench's command line (`cargo bench --bench NAME -- ARGS`): `--name value` options, and
/// flags an environment variable may set as well.
#[allow(dead_code)] // `hostile.rs` takes no arguments.
pub struct Args(Vec<String>);

#[allow(dead_code)]
impl Args {
    pub fn from_env() -> Args {
        Args(std::env::args().skip(1).collect())
    }

    /// The word after `name`, if `name` was given.
    pub fn value(&self, name: &str) -> Option<&str> {
        let at = self.0.iter().position(|a| a == name)?;
        self.0.get(at + 1).map(String::as_str)
    }

    /// The word after `name`, parsed (`None` when missing or malformed).
    pub fn parsed<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.value(name)?.parse().ok()
    }

    /// Whether `name` was given, or `var` is set to something other than "" or "0".
    pub fn flag(&self, name: &str, var: &str) -> bool {
        self.0.iter().any(|a| a == name)
            || std::env::var(var).is_ok_and(|v| v != "0" && !v.is_empty())
    }
}

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
///
/// Then builds the `wsloop` binary once more as `cargo run --release` does (features unified
/// over the workspace's default members). Built beside other packages (the peers), its
/// dependencies get other features, which changes every symbol's hash, and the list of
/// functions whose layout `build.rs` asks of the linker no longer matches: the bench would
/// then measure a binary whose code lies otherwise than the one users run.
pub fn build(targets: &[&str]) {
    cargo_build(targets);
    cargo_build(&["--bin", "wsloop"]);
}

/// `cargo build --release TARGETS`, in this workspace.
fn cargo_build(targets: &[&str]) {
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

    /// Moves this process (its load and its measuring) to CPU 1, away from the server on
    /// CPU 0, and with `rt` to real-time priority; call it before any thread starts, so all
    /// inherit it (and after any build, which would otherwise be confined to CPU 1 too).
    #[allow(dead_code)] // `load.rs` runs `wsload` as a process of its own instead.
    pub fn place_self(&self) {
        let pid = std::process::id().to_string();
        let mut commands: Vec<Vec<&str>> = Vec::new();
        if self.pin {
            commands.push(vec!["taskset", "-a", "-p", "-c", "1", &pid]);
        }
        if self.rt {
            commands.push(vec!["chrt", "-a", "-f", "-p", "10", &pid]);
        }
        for command in commands {
            let ok = Command::new(command[0])
                .args(&command[1..])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("note: `{}` failed", command.join(" "));
            }
        }
    }
}

/// Sends signal `name` (e.g. `"TERM"`) to process `pid`; whether `kill` succeeded. Only for
/// processes the bench started (or, like an upgraded server, that its own server started).
pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `GET /stats` as JSON; `None` when the server does not answer within a few seconds.
#[allow(dead_code)] // `load.rs` asks no counters.
pub fn stats(addr: SocketAddr) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = "GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let body_at = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    serde_json::from_slice(response.get(body_at..)?).ok()
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
        signal(self.child.id(), "TERM");
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
