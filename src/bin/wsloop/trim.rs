//! Gives back the pages start-up faulted in from the program's files once the server is
//! listening, so that what stays resident is what serving touches.
//!
//! Why: a file page is mapped 64 KiB at a time (the kernel's fault-around), and start-up runs
//! code and reads constants spread over the binary and libc (the command-line parser, the
//! logger's set-up, `std`'s environment and path code, the dynamic loader). Those mappings
//! stay counted in the process's RSS for its whole life although they are never run again:
//! about a megabyte, a tenth of what a server holding two 4 MiB messages needs in all.
//!
//! How: `madvise(MADV_DONTNEED)` on every read-only private mapping of a file that holds no
//! private copy of a page (`Anonymous: 0 kB` in `/proc/self/smaps`). For such a mapping it only
//! drops the page-table entries: the pages stay in the page cache, and the next access maps
//! them again from there, so nothing the process sees changes. Mappings that were written
//! before they were made read-only (the relocated RELRO pages) hold private copies, and
//! dropping those would lose the relocations: they are left alone, as are writable,
//! shared and anonymous mappings.
//!
//! The code serving runs is kept, and mapped in full at once: `build.rs` has the linker put
//! it first in `.text`, ending with [`wsloop_serving_code_end`] (`scripts/symbol-order.sh`
//! writes the list), and `MADV_POPULATE_READ` maps that range. Serving then faults in almost
//! no code of its own, so what a connection costs is not blurred by the first connections
//! mapping the handshake's code, and the rest of the program (start-up, the command line,
//! errors' formatting) stays out of memory. Without the list (another linker, a debug build)
//! everything is dropped and serving maps its code as it runs.
//!
//! These are the binary's only `unsafe` lines: `madvise` may change what memory holds, and
//! the conditions above are what make it harmless here; `#[no_mangle]` names the marker for
//! the linker's list. The library and the protocol crate stay
//! `#![forbid(unsafe_code)]`.
#![allow(unsafe_code)]

use std::fs;
use std::io;

/// A mapping that may be dropped: its start address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    start: usize,
    len: usize,
}

impl Region {
    /// The part of the region below the page that holds `end` (the serving code to keep),
    /// and the rest (to drop). With no `end`, or one outside the region, all is dropped.
    fn split_at(self, end: Option<usize>) -> (Region, Region) {
        const PAGE: usize = 4096;
        let region_end = self.start.saturating_add(self.len);
        match end {
            Some(end) if (self.start..region_end).contains(&end) => {
                let keep = (end.saturating_add(PAGE) & !(PAGE - 1)).min(region_end);
                (
                    Region {
                        start: self.start,
                        len: keep - self.start,
                    },
                    Region {
                        start: keep,
                        len: region_end - keep,
                    },
                )
            }
            _ => (
                Region {
                    start: self.start,
                    len: 0,
                },
                self,
            ),
        }
    }
}

/// Where the linker's list of serving functions ends (see the module's comment): the list
/// names it right after them, so its address is the end of the code serving runs.
#[no_mangle]
#[inline(never)]
pub extern "C" fn wsloop_serving_code_end() {}

/// Drops the read-only file pages mapped into this process, but for the serving code when
/// `keep_serving` (a server; not the `--processes` supervisor, which serves nothing), which
/// it maps in full (see the module's comment). Returns the bytes of address space dropped.
///
/// Not inlined: `scripts/symbol-order.sh` splits start-up from serving where it returns.
#[inline(never)]
pub fn drop_file_pages(keep_serving: bool) -> io::Result<usize> {
    let smaps = fs::read_to_string("/proc/self/smaps")?;
    let serving_end = (keep_serving && cfg!(symbol_order))
        .then_some(wsloop_serving_code_end as *const () as usize);
    let mut dropped = 0;
    for region in read_only_file_regions(&smaps) {
        let (keep, drop) = region.split_at(serving_end);
        if drop.len > 0 && advise(drop, rustix::mm::Advice::LinuxDontNeed).is_ok() {
            dropped += drop.len;
        }
        if keep.len > 0 {
            // Fails before Linux 5.14 (no MADV_POPULATE_READ): the code is then mapped as
            // serving runs it.
            let _ = advise(keep, rustix::mm::Advice::LinuxPopulateRead);
        }
    }
    Ok(dropped)
}

/// `madvise` on `region`, one of [`read_only_file_regions`].
fn advise(region: Region, advice: rustix::mm::Advice) -> io::Result<()> {
    // SAFETY: `region` is (part of) a private, read-only mapping of a file with no anonymous
    // (copied-on-write) page, as `/proc/self/smaps` described it just now: the program or
    // one of its shared libraries, which stay mapped for the life of the process (nothing
    // here unloads a library). For such a mapping MADV_DONTNEED only unmaps pages that the
    // page cache still holds, and the next access maps the same bytes again; POPULATE_READ
    // maps them at once. No Rust reference is invalidated: the bytes read afterwards are
    // the ones read before, and nothing can write to the mapping (no write permission).
    unsafe { rustix::mm::madvise(region.start as *mut std::ffi::c_void, region.len, advice) }
        .map_err(io::Error::from)
}

/// The mappings in `smaps` (the text of `/proc/self/smaps`) that [`drop_file_pages`] may drop:
/// private, not writable, backed by a file (an inode), and with `Anonymous: 0 kB`.
fn read_only_file_regions(smaps: &str) -> Vec<Region> {
    let mut regions = Vec::new();
    // The mapping whose fields are being read, if it is a candidate so far.
    let mut candidate: Option<Region> = None;
    for line in smaps.lines() {
        if let Some(region) = mapping_header(line) {
            candidate = region;
        } else if let Some(kb) = line.strip_prefix("Anonymous:") {
            let anonymous = kb.trim().trim_end_matches("kB").trim();
            if let Some(region) = candidate.take() {
                if anonymous == "0" {
                    regions.push(region);
                }
            }
        }
    }
    regions
}

/// For a mapping's header line (`start-end perms offset dev inode [path]`): `Some(Some(r))`
/// if the mapping may be dropped, `Some(None)` if not, `None` if the line is not a header.
fn mapping_header(line: &str) -> Option<Option<Region>> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.as_bytes();
    let _offset = fields.next()?;
    let _device = fields.next()?;
    let inode = fields.next()?;
    if perms.len() != 4 || inode.bytes().any(|b| !b.is_ascii_digit()) {
        return None;
    }
    let droppable = perms.get(1) == Some(&b'-') && perms.get(3) == Some(&b'p') && inode != "0";
    Some(droppable.then_some(Region {
        start,
        len: end.saturating_sub(start),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c00fb000 r--p 00000000 fd:01 1234 /usr/bin/wsloop
Size:               1004 kB
Anonymous:             0 kB
55d0c00fb000-55d0c044e000 r-xp 000fa000 fd:01 1234 /usr/bin/wsloop
Size:               3404 kB
Anonymous:             0 kB
55d0c044e000-55d0c0461000 r--p 0044c000 fd:01 1234 /usr/bin/wsloop
Size:                 76 kB
Anonymous:            76 kB
55d0c0462000-55d0c0463000 rw-p 0045f000 fd:01 1234 /usr/bin/wsloop
Anonymous:             4 kB
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
Anonymous:           132 kB
7f0000100000-7f0000101000 r--s 00000000 fd:01 99 /some/shared
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_private_file_mappings_are_chosen() {
        assert_eq!(
            read_only_file_regions(SMAPS),
            vec![
                Region {
                    start: 0x55d0c0000000,
                    len: 0xfb000
                },
                Region {
                    start: 0x55d0c00fb000,
                    len: 0x353000
                },
            ]
        );
    }

    #[test]
    fn the_serving_code_is_kept_up_to_the_page_that_ends_it() {
        let text = Region {
            start: 0x10000,
            len: 0x40000,
        };
        let (keep, drop) = text.split_at(Some(0x2a123));
        assert_eq!(
            keep,
            Region {
                start: 0x10000,
                len: 0x1b000
            }
        );
        assert_eq!(
            drop,
            Region {
                start: 0x2b000,
                len: 0x25000
            }
        );
        for end in [None, Some(0x5000), Some(0x50000)] {
            let (keep, drop) = text.split_at(end);
            assert_eq!((keep.len, drop), (0, text), "{end:?}");
        }
    }

    /// The test process drops its own read-only file pages and goes on running the code and
    /// reading the constants it just dropped; its RSS of file pages goes down.
    #[test]
    fn the_process_runs_on_after_its_file_pages_are_dropped() {
        let before = rss_file_kb();
        let dropped = drop_file_pages(true).unwrap_or(0);
        let after = rss_file_kb();
        assert!(dropped > 0, "nothing dropped");
        assert!(after < before, "RssFile {before} kB -> {after} kB");
        // Code and constants are mapped again on use.
        let text = format!("{:?}", read_only_file_regions(SMAPS));
        assert!(text.contains("Region"));
    }

    fn rss_file_kb() -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}
