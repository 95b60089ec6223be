//! `wsloop`: the server binary. Echoes every message on any path; `/chat` (or every path with
//! `--chat`) relays each message to every chat member. Serves the demo page on the same
//! port. `--processes` runs several copies under [`supervisor`].

mod args;
mod echo_chat;
mod pid_file;
mod supervisor;
mod trim;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use clap::Parser;
use wsloop::{Upgrades, Workers};

use args::Args;
use echo_chat::EchoChat;
use pid_file::PidFile;
use supervisor::{Supervisor, SUPERVISED_ADDR, SUPERVISED_PID_FILE};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = Args::parse();
    if args.redis.is_some() && !cfg!(feature = "redis") {
        // Before anything starts: under --processes every child would fail the same way.
        eprintln!("wsloop: --redis: this wsloop was built without the `redis` feature");
        return ExitCode::FAILURE;
    }
    match std::env::var(SUPERVISED_ADDR).ok().map(|a| a.parse()) {
        // A child of `--processes`: serve on the supervisor's address.
        Some(Ok(addr)) => {
            args.addr = addr;
            args.reuse_port = true;
        }
        Some(Err(e)) => {
            eprintln!("wsloop: {SUPERVISED_ADDR}: {e}");
            return ExitCode::FAILURE;
        }
        None if args.processes > 1 => return supervise(&args),
        None => {}
    }
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wsloop: TLS: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // A child of `--processes` keeps the file the supervisor names (the supervisor's own
    // file names the supervisor). A process an upgrade started writes it once it has taken
    // over (until then the old one serves).
    let pid_path = match std::env::var_os(SUPERVISED_ADDR) {
        Some(_) => std::env::var_os(SUPERVISED_PID_FILE).map(PathBuf::from),
        None => args.pid_file.clone(),
    };
    let pid_file = match write_pid_file(
        pid_path
            .as_deref()
            .filter(|_| !wsloop::upgrade::inheriting()),
    ) {
        Ok(file) => Arc::new(Mutex::new(file)),
        Err(code) => return code,
    };
    let chat = args.chat;
    let protocols = args.protocol.clone();
    let mut workers = Workers::new(config)
        .count(usize::from(args.workers))
        .redis(args.redis());
    match upgrades(pid_path, &pid_file) {
        Ok(upgrades) => workers = workers.upgrades(upgrades),
        Err(e) => log::warn!("SIGUSR2 upgrades disabled: cannot find this program: {e}"),
    }
    let on_listening = |addr: SocketAddr, from_disk: bool| {
        let page = if from_disk {
            format!("files from {}", args.static_dir.display())
        } else {
            "the embedded demo page".to_owned()
        };
        let scale = match (args.workers, &args.redis) {
            (1, None) => String::new(),
            (n, None) => format!(", {n} workers"),
            (n, Some(url)) => format!(", {n} workers, rooms shared through {url}"),
        };
        // Before the line that says the server is ready: once a client can know it is, the
        // pages are given back (a peak of memory measured from then on does not hold them).
        give_back_start_up_pages(true);
        println!("wsloop listening on {addr} (open {scheme}://{addr}/ for {page}{scale})");
        let _ = std::io::stdout().flush();
    };
    match workers.run(
        move |_| EchoChat::new(chat, protocols.clone()),
        on_listening,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsloop: {}: {e}", args.addr);
            ExitCode::FAILURE
        }
    }
}

/// `--processes N`: start N copies of this program on one port and keep them running.
fn supervise(args: &Args) -> ExitCode {
    if args.metrics_addr.is_some() {
        eprintln!(
            "wsloop: --metrics-addr cannot be used with --processes: every process would bind it"
        );
        return ExitCode::FAILURE;
    }
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(e) => {
            eprintln!("wsloop: cannot find this program to start it again: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _pid_file = match write_pid_file(args.pid_file.as_deref()) {
        Ok(file) => file,
        Err(code) => return code,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("wsloop: cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let upgrade = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR2, Arc::clone(&upgrade))
    {
        eprintln!("wsloop: cannot handle SIGUSR2: {e}");
        return ExitCode::FAILURE;
    }
    let supervisor = Supervisor {
        program,
        args: std::env::args_os().skip(1).collect(),
        processes: usize::from(args.processes),
        addr: args.addr,
        pid_dir: std::env::temp_dir().join(format!("wsloop-supervisor-{}", std::process::id())),
    };
    let mut started = false;
    let result = supervisor.run(&stop, &upgrade, |event| {
        // Not println!: a closed stdout must not take the supervisor (and its duty to stop
        // the children) down.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "wsloop supervisor: {event}").and_then(|()| out.flush());
        if !std::mem::replace(&mut started, true) {
            give_back_start_up_pages(false);
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsloop: {}: {e}", args.addr);
            ExitCode::FAILURE
        }
    }
}

/// Start-up is over: what it mapped of the program's files need not stay resident
/// ([`trim`]). `serving`: this process serves (keep its serving code mapped).
fn give_back_start_up_pages(serving: bool) {
    match trim::drop_file_pages(serving) {
        Ok(bytes) => log::debug!("gave back {bytes} bytes of start-up's file mappings"),
        Err(e) => log::debug!("could not give back start-up's file pages: {e}"),
    }
}

/// `SIGUSR2` starts this program again, from the path it was started from (a deploy
/// replaces the file there) with the same arguments; the new process rewrites the pid file
/// once it has taken over.
fn upgrades(
    pid_path: Option<PathBuf>,
    pid_file: &Arc<Mutex<Option<PidFile>>>,
) -> std::io::Result<Upgrades> {
    let program = std::env::current_exe()?;
    let slot = Arc::clone(pid_file);
    Ok(
        Upgrades::new(program, std::env::args_os().skip(1).collect()).on_takeover(move || {
            // Whatever the handoff ran beyond the serving list (which holds the upgrade's
            // path) need not stay resident either; start-up's pages went when this process
            // began to listen.
            give_back_start_up_pages(true);
            let Some(path) = &pid_path else { return };
            match PidFile::write(path) {
                Ok(file) => {
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(file);
                    }
                }
                Err(e) => log::warn!("--pid-file {}: {e}", path.display()),
            }
        }),
    )
}

/// `--pid-file`: written before serving, so that a server that runs can be signalled. The
/// exit code (after saying why) when it cannot be written.
fn write_pid_file(path: Option<&std::path::Path>) -> Result<Option<PidFile>, ExitCode> {
    path.map(|path| {
        PidFile::write(path).map_err(|e| {
            eprintln!("wsloop: --pid-file {}: {e}", path.display());
            ExitCode::FAILURE
        })
    })
    .transpose()
}
