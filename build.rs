//! Build script of the `wsloop` package: in release builds of the `wsloop` binary, asks the
//! linker to lay out the functions that start-up and serving run (listed in
//! `src/bin/wsloop/symbol-order.txt`, written by `scripts/symbol-order.sh`) side by side at
//! the start of the code.
//!
//! Why: the kernel maps a program's code in blocks of 64 KiB or more per page fault (fault-
//! around, and whole large folios of the page cache), and all of them count in the process's
//! resident memory. Scattered over 3.4 MB of code (clap, the logger, std, the reactor), the
//! few hundred functions a server runs touched about 30 such blocks: 2 MiB of resident code,
//! the largest part of wsloop's memory beyond its message buffers. Side by side they fill
//! about a dozen. Only the layout changes: the same code runs.
//!
//! Only lld knows `--symbol-ordering-file`; rustc links with its own lld by default on
//! x86_64 Linux from Rust 1.90 on. With an older rustc, another target, or a linker chosen in
//! the environment, nothing is added (and `WSLOOP_NO_SYMBOL_ORDER` turns it off). Names no
//! longer in the program (after a change of code or compiler) are skipped silently: the list
//! then only helps less, and the script writes it anew. The names carry hashes that depend on
//! the features cargo unifies over the packages it builds at once: the list is written for
//! the binary `cargo run --release` and `cargo build --release` build at the root; built
//! beside the bench's peers, the names differ (the benches build it again alone).
//!
//! The list ends with the serving code's marker, `wsloop_serving_code_end`: the binary keeps
//! what lies before it mapped and gives back the rest once it listens (src/bin/wsloop/trim.rs,
//! under `cfg(symbol_order)`, which this build script sets when it passes the list).

use std::env;
use std::path::Path;
use std::process::Command;

/// The list, relative to the package.
const ORDER_FILE: &str = "src/bin/wsloop/symbol-order.txt";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WSLOOP_NO_SYMBOL_ORDER");
    // `symbol_order`: the binary was linked with the list, so the serving code lies between
    // the start of `.text` and `wsloop_serving_code_end` (src/bin/wsloop/trim.rs).
    println!("cargo:rustc-check-cfg=cfg(symbol_order)");
    if links_with_rust_lld() {
        let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        let file = Path::new(&dir).join(ORDER_FILE);
        if file.is_file() {
            println!(
                "cargo:rustc-link-arg-bin=wsloop=-Wl,--symbol-ordering-file={}",
                file.display()
            );
            println!("cargo:rustc-link-arg-bin=wsloop=-Wl,--no-warn-symbol-ordering");
            println!("cargo:rustc-cfg=symbol_order");
        }
    }
}

/// Whether this is a release build for x86_64 Linux (GNU) by a rustc that links with its
/// own lld, with no other linker asked for.
fn links_with_rust_lld() -> bool {
    let var = |name: &str| env::var(name).unwrap_or_default();
    if env::var_os("WSLOOP_NO_SYMBOL_ORDER").is_some()
        || var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || env::var_os("CARGO_FEATURE_CLI").is_none()
        || env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
    {
        return false;
    }
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if ["linker", "fuse-ld", "link-self-contained"]
        .iter()
        .any(|f| flags.contains(f))
    {
        return false;
    }
    rustc_minor().is_some_and(|minor| minor >= 90)
}

/// The minor version of the rustc that builds this (1.x), from `rustc --version`.
fn rustc_minor() -> Option<u32> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    if parts.next()? != "1" {
        return None;
    }
    parts.next()?.parse().ok()
}
