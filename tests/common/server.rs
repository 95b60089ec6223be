//! The server under test: a real `wsloop` process on a free loopback port, stopped by PID when
//! the test ends.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

use super::http::connect;

/// A `wsloop` server process started for one test; killed on drop.
pub struct ServerProcess {
    /// The address it listens on (127.0.0.1 and a port the OS picked).
    pub addr: SocketAddr,
    child: Child,
}

impl ServerProcess {
    /// Starts `wsloop --addr 127.0.0.1:0 ARGS...` and waits for its `listening on` line.
    #[cfg(feature = "cli")]
    pub fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::start_at("127.0.0.1:0", args)
    }

    /// Starts `wsloop --addr ADDR ARGS...` and waits for its `listening on` line.
    #[cfg(feature = "cli")]
    pub fn start_at(addr: &str, args: &[&str]) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsloop"));
        command.args(["--addr", addr]).args(args);
        ServerProcess::spawn(command)
    }

    /// Starts `PROGRAM --addr 127.0.0.1:0 ARGS...` (a copy of wsloop, e.g. one a test
    /// replaces to upgrade it) and waits for its `listening on` line.
    pub fn start_program(program: &std::path::Path, args: &[&str]) -> ServerProcess {
        let mut command = Command::new(program);
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        ServerProcess::spawn(command)
    }

    /// Starts `wsloop --addr 127.0.0.1:0 ARGS...` through `sh -c 'ulimit -n LIMIT; exec ...'`,
    /// so the server runs with at most `fd_limit` open files; waits for `listening on`.
    /// `pid()` is the server's own PID (the shell `exec`s it).
    #[cfg(feature = "cli")]
    pub fn start_with_fd_limit(fd_limit: u32, args: &[&str]) -> ServerProcess {
        let script = format!("ulimit -n {fd_limit} && exec \"$0\" \"$@\"");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_wsloop"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args);
        ServerProcess::spawn(command)
    }

    /// Runs `command` (which starts wsloop) and waits for its `listening on` line.
    fn spawn(mut command: Command) -> ServerProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wsloop");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("wsloop exited before listening")
                .expect("read wsloop stdout");
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().expect("address");
                break addr.parse().expect("socket address");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerProcess { addr, child }
    }

    /// The server's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ws://ADDR/PATH`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A raw TCP connection to it (see [`connect`]), for malformed-input tests.
    pub fn raw(&self) -> TcpStream {
        connect(self.addr)
    }

    /// Sends `signal` (a `kill` name: `USR2`, `TERM`...) to the process.
    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }

    /// Its exit status once it has exited, waiting at most `within`.
    pub fn exit_within(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// After a `SIGUSR2` upgrade: waits (20 s at most) for this process to exit cleanly, and
    /// returns the new process's pid, which `pid_file` must name now.
    pub fn upgraded(&mut self, pid_file: &std::path::Path) -> u32 {
        let exited = self.exit_within(std::time::Duration::from_secs(20));
        assert!(
            exited.is_some_and(|s| s.success()),
            "the old process did not exit cleanly: {exited:?}"
        );
        let new: u32 = std::fs::read_to_string(pid_file)
            .expect("the pid file")
            .trim()
            .parse()
            .expect("a pid in the pid file");
        assert_ne!(new, self.pid(), "the pid file still names the old process");
        new
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (a `kill` name) to process `pid`.
pub fn signal_pid(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
