//! `cargo bench --bench hostile`: issue 19's attack mixes, each against a fresh wsloop process,
//! with the two promises the issue asks to hold measured beside each one: peak RSS ≤
//! `--max-buffered` + a fixed base, and an unrelated client's echo never waiting more than
//! 100 ms.
//!
//! Per mix and server binary: start `SERVER --addr A --max-buffered 64MiB FLAGS…` (pinned to
//! CPU 0, this process to CPU 1, as `load.rs` places the server and its load generator) and
//! connect what the mix needs (room members, a queue filled first). Then, just before the
//! first attacking byte, connect the unrelated echo client and read the server's `VmRSS` (the
//! base) and CPU time; run the attack while the echo client sends a small message every 10 ms
//! and keeps its longest wait for the echo; once the attack is sent, wait until the server
//! goes quiet (its CPU time stops growing; at most a few seconds), then read its `VmHWM` (the
//! peak; also sampled every 10 ms, in case it dies) and its utime + stime since the base.
//! `buffered_bytes` of `/stats` (what the memory budget counts) is polled every 100 ms and its
//! highest value kept, to set beside the RSS growth. The attack's connections stay open until
//! all of that is read. Every mix is bounded in time (15 s of setup, 15 s of attack, 5 s of
//! settling) and talks to 127.0.0.1 only.
//!
//! The mixes (full scale, as issue 19 reproduced them):
//! - (a) one connection sends 378 KB of pipelined `GET /` keep-alive requests in one burst and
//!   never reads; (b) four such connections;
//! - (c) 3.4 KB of pipelined requests for a 4 MiB file in `--static-dir`, never read;
//! - (d) a 1.4 MiB message into a 5-member `/chat` room whose members all read: how many got it,
//!   and how many close frames they received;
//! - (e) `--max-bytes-rate 10000`: 20 × 1 MiB echoes, and how long they took (an exact limit
//!   takes ~35 minutes, so the mix stops at its bound and reports the rate it saw);
//! - (f) 10 never-reading `/chat` subscribers and 3 M empty publications;
//! - (g) a 4.2 MB burst of empty messages into a 21-member `/chat` room, members reading;
//! - (h) `--slow-consumer drop-oldest` and (i) `latest-only`: one subscriber over its
//!   `--max-backpressure` (it stopped reading inside an 8 MiB message before the attack) and
//!   100 000 empty publications;
//! - (j) 1.75 M pipelined `HEAD /` requests over 6 s on one connection that reads.
//!
//! TLS (issue 19's note on rustls buffers) is not measured: it would need a certificate and a
//! TLS client in every mix, which is beyond this bench.
//!
//! A publisher in a room is a member too (the demo app relays `/chat` messages to every member,
//! the sender included), so it always reads, or it would be one more never-reading subscriber.
//!
//! Options (unknown ones, like the `--bench` that cargo passes, are ignored):
//! - `--server PATH`: the binary to attack instead of the release `wsloop` this bench builds.
//!   Given twice, both binaries take turns in each mix, so a saved baseline and the current
//!   build are compared in one run under the same machine drift.
//! - `--quick` or `WSLOOP_BENCH_QUICK=1`: a tenth of every size and count, 5 s bounds; checks
//!   that the bench runs, the figures mean little.
//! - `--only LIST`: only the mixes with these letters (e.g. `--only adf`).
//! - `--rt` or `WSLOOP_BENCH_RT=1`: the server and this process under `chrt -f 10`, so that
//!   other work on a shared machine cannot starve them (which would show as echo waits).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

// The parts live in `benches/hostile/`; named by path, as a file directly in `benches/`
// would be taken by cargo for a bench target of its own.
#[path = "hostile/attacks.rs"]
mod attacks;
#[path = "hostile/client.rs"]
mod client;
#[path = "hostile/measure.rs"]
mod measure;
mod support;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use attacks::{big_room_message, flood_room, paced_heads, pipelined_gets, rate_limited_echoes};
use attacks::{Flood, Scene};
use measure::Figures;
use support::{path, Launch, Running};

/// `--max-buffered` of every server: small enough that breaking the budget shows plainly.
const MAX_BUFFERED: u64 = 64 << 20;
/// The longest an unrelated client's echo may wait (issue 19).
const WAIT_LIMIT: Duration = Duration::from_millis(100);
/// The file mix (c) requests, in the scratch folder served as `--static-dir`.
const BIG_FILE: &str = "big.bin";
const BIG_FILE_BYTES: usize = 4 << 20;

/// One attack mix: what the server runs with and what is done to it.
struct Mix {
    key: char,
    label: &'static str,
    /// Server flags besides `--addr` and `--max-buffered`.
    flags: &'static [&'static str],
    /// Serve the scratch folder (holding the 4 MiB file) as `--static-dir`.
    static_dir: bool,
    /// Sets up and sends the attack; returns what the row's note says about it.
    attack: fn(&mut Scene) -> String,
}

static MIXES: [Mix; 10] = [
    Mix {
        key: 'a',
        label: "1 conn: 378 KB of pipelined GET /, never read",
        flags: &[],
        static_dir: false,
        attack: |scene| pipelined_gets(scene, 1, "/", 378_000),
    },
    Mix {
        key: 'b',
        label: "4 conns: 378 KB of pipelined GET / each, never read",
        flags: &[],
        static_dir: false,
        attack: |scene| pipelined_gets(scene, 4, "/", 378_000),
    },
    Mix {
        key: 'c',
        label: "3.4 KB of pipelined GET of a 4 MiB static file, never read",
        flags: &[],
        static_dir: true,
        attack: |scene| pipelined_gets(scene, 1, "/big.bin", 3_400),
    },
    Mix {
        key: 'd',
        label: "1.4 MiB message into a 5-member /chat, all reading",
        flags: &[],
        static_dir: false,
        attack: big_room_message,
    },
    Mix {
        key: 'e',
        label: "--max-bytes-rate 10000: 20 × 1 MiB echoes",
        flags: &["--max-bytes-rate", "10000"],
        static_dir: false,
        attack: rate_limited_echoes,
    },
    Mix {
        key: 'f',
        label: "10 silent /chat subscribers, 3 M empty publications",
        flags: &[],
        static_dir: false,
        attack: |scene| {
            let count = scene.scaled(3_000_000);
            flood_room(scene, flood(10, 0, false, count))
        },
    },
    Mix {
        key: 'g',
        label: "4.2 MB of empty messages into a 21-member /chat, all reading",
        flags: &[],
        static_dir: false,
        // 4.2 MB of 6-byte frames (2 header bytes, 4 mask bytes): 20 members and the sender.
        attack: |scene| {
            let count = scene.scaled(4_200_000 / 6);
            flood_room(scene, flood(0, 20, false, count))
        },
    },
    Mix {
        key: 'h',
        label: "drop-oldest: 1 subscriber over its limit, 100 000 empty publications",
        flags: &["--slow-consumer", "drop-oldest"],
        static_dir: false,
        attack: |scene| {
            let count = scene.scaled(100_000);
            flood_room(scene, flood(1, 0, true, count))
        },
    },
    Mix {
        key: 'i',
        label: "latest-only: 1 subscriber over its limit, 100 000 empty publications",
        flags: &["--slow-consumer", "latest-only"],
        static_dir: false,
        attack: |scene| {
            let count = scene.scaled(100_000);
            flood_room(scene, flood(1, 0, true, count))
        },
    },
    Mix {
        key: 'j',
        label: "1.75 M pipelined HEAD / over 6 s, read",
        flags: &[],
        static_dir: false,
        attack: paced_heads,
    },
];

fn flood(silent: usize, reading: usize, over_limit: bool, count: usize) -> Flood {
    Flood {
        silent,
        reading,
        over_limit,
        count,
    }
}

/// The run's settings.
#[derive(Debug)]
struct Settings {
    /// The binaries to attack, taking turns in each mix.
    servers: Vec<PathBuf>,
    quick: bool,
    only: Option<String>,
    launch: Launch,
}

impl Settings {
    fn from_env() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let values = |name: &str| -> Vec<String> {
            args.windows(2)
                .filter(|w| w[0] == name)
                .map(|w| w[1].clone())
                .collect()
        };
        let flag = |name: &str, var: &str| {
            args.iter().any(|a| a == name)
                || std::env::var(var).is_ok_and(|v| v != "0" && !v.is_empty())
        };
        let mut servers = values("--server");
        if servers.is_empty() {
            support::build(&["--bin", "wsloop"]);
            servers.push(path(&support::release_dir().join("wsloop")));
        }
        // Absolute, as the servers run in the scratch folder.
        let servers = servers
            .iter()
            .map(|s| std::fs::canonicalize(s).unwrap_or_else(|e| panic!("--server {s}: {e}")))
            .collect();
        Settings {
            servers,
            quick: flag("--quick", "WSLOOP_BENCH_QUICK"),
            only: values("--only").pop(),
            launch: Launch::new(flag("--rt", "WSLOOP_BENCH_RT")),
        }
    }

    fn wants(&self, mix: &Mix) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(mix.key))
    }

    /// What every size and count is multiplied by.
    fn scale(&self) -> f64 {
        if self.quick {
            0.1
        } else {
            1.0
        }
    }

    /// How long a mix may spend on its setup, and then on sending its attack.
    fn attack_limit(&self) -> Duration {
        Duration::from_secs(if self.quick { 5 } else { 15 })
    }

    /// How long the server is given to work through what the attack sent.
    fn settle_limit(&self) -> Duration {
        Duration::from_secs(if self.quick { 2 } else { 5 })
    }
}

fn main() {
    let settings = Settings::from_env();
    settings.launch.place_self();
    let scratch = Scratch::create();
    eprintln!(
        "hostile bench: {} mix(es) × {} server(s){}, --max-buffered {} MiB",
        MIXES.iter().filter(|m| settings.wants(m)).count(),
        settings.servers.len(),
        if settings.quick {
            " (quick: a tenth of every size)"
        } else {
            ""
        },
        MAX_BUFFERED >> 20
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    for mix in MIXES.iter().filter(|m| settings.wants(m)) {
        for server in &settings.servers {
            let row = run_mix(&settings, mix, server, &scratch);
            eprintln!(
                "({:.0} s) {}",
                started.elapsed().as_secs_f64(),
                row.markdown()
            );
            rows.push(row);
        }
    }
    print_table(&settings, &rows);
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
}

/// A folder of this run's own: the static file of mix (c) and the servers' logs.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn create() -> Scratch {
        let dir = std::env::temp_dir().join(format!("wsloop-hostile-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        std::fs::write(dir.join(BIG_FILE), vec![b'x'; BIG_FILE_BYTES]).expect("static file");
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One mix against one server: the table's row.
struct Row {
    mix: &'static Mix,
    server: String,
    figures: Figures,
    died: Option<ExitStatus>,
    note: String,
}

/// Runs `mix` against a fresh `server` process.
fn run_mix(settings: &Settings, mix: &'static Mix, server: &Path, scratch: &Scratch) -> Row {
    let name = server
        .file_name()
        .map_or_else(|| path(server), |n| n.to_string_lossy().into_owned());
    let log = scratch.dir.join(format!("{name}-{}.log", mix.key));
    let mut running = start_server(settings, mix, server, scratch, &log);
    let mut scene = Scene::new(
        running.addr(),
        running.pid(),
        settings.scale(),
        settings.attack_limit(),
    );
    let note = (mix.attack)(&mut scene);
    let figures = scene.finish(settings.settle_limit());
    let died = running.exit_status();
    if died.is_some() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(3).collect();
        eprintln!("{name} died in mix ({}); its last words: {tail:?}", mix.key);
    }
    Row {
        mix,
        server: name,
        figures,
        died,
        note,
    }
}

/// The server for `mix`, pinned to CPU 0, its log in `log`. Its working folder is the scratch
/// folder, so the default `--static-dir html` does not exist there and the embedded page is
/// served, whatever folder the bench runs from.
fn start_server(
    settings: &Settings,
    mix: &Mix,
    server: &Path,
    scratch: &Scratch,
    log: &Path,
) -> Running {
    let addr = support::free_addr();
    let mut program = vec![
        path(server),
        "--addr".into(),
        addr.to_string(),
        "--max-buffered".into(),
        MAX_BUFFERED.to_string(),
    ];
    program.extend(mix.flags.iter().map(|f| (*f).to_owned()));
    if mix.static_dir {
        program.extend(["--static-dir".into(), path(&scratch.dir)]);
    }
    let mut command = settings.launch.command(0, &program);
    command
        .current_dir(&scratch.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("server log"));
    Running::start(&path(server), command, addr)
}

impl Row {
    /// Which promises broke: the server died, its growth passed `--max-buffered`, the echo
    /// client waited over 100 ms or lost its connection.
    fn verdict(&self) -> String {
        let probe = &self.figures.probe;
        let mut broken = Vec::new();
        if let Some(status) = self.died {
            broken.push(format!("died ({status})"));
        }
        if self.figures.growth().is_none_or(|g| g > MAX_BUFFERED) {
            broken.push("RSS".to_owned());
        }
        if probe.worst > WAIT_LIMIT {
            broken.push("wait".to_owned());
        }
        if probe.lost {
            broken.push("echo lost".to_owned());
        }
        if broken.is_empty() {
            "ok".to_owned()
        } else {
            format!("FAIL: {}", broken.join(", "))
        }
    }

    /// The row in the table's Markdown.
    fn markdown(&self) -> String {
        let f = &self.figures;
        let mib =
            |v: Option<u64>| v.map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / 1048576.0));
        format!(
            "| ({}) {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            self.mix.key,
            self.mix.label,
            self.server,
            mib(f.base),
            mib(f.peak),
            mib(f.growth()),
            MAX_BUFFERED >> 20,
            mib(f.budget),
            f.probe.worst.as_secs_f64() * 1e3,
            f.cpu_secs.map_or("-".to_owned(), |s| format!("{s:.2}")),
            self.verdict(),
            self.note,
        )
    }
}

/// The table (Markdown), one row per mix and server.
fn print_table(settings: &Settings, rows: &[Row]) {
    println!(
        "\n## Hostile mixes (issue 19){}\n",
        if settings.quick {
            " — quick mode: a tenth of every size"
        } else {
            ""
        }
    );
    for server in &settings.servers {
        println!("- {}", path(server));
    }
    println!(
        "\nMiB: base = VmRSS when the attack starts, peak = VmHWM, budget = the highest \
         `buffered_bytes` of /stats (polled every 100 ms); worst wait = the unrelated echo \
         client's longest round trip (one small message every 10 ms); CPU = server utime + \
         stime from the attack's start until it went quiet. ok = peak − base ≤ --max-buffered \
         and worst wait ≤ {} ms.\n",
        WAIT_LIMIT.as_millis()
    );
    println!(
        "| mix | server | base | peak | peak − base | --max-buffered | budget | worst wait ms \
         | CPU s | verdict | note |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for row in rows {
        println!("{}", row.markdown());
    }
}
