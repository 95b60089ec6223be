//! What `/proc` says about the server process: memory, CPU, descriptors, wake-ups.

/// `VmRSS` of process `pid`, in KiB (user memory; kernel socket buffers are not in it).
pub fn rss_kib(pid: u32) -> u64 {
    wsload::stats::rss_kib(pid).expect("VmRSS of the server")
}

/// utime + stime of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    wsload::stats::cpu_seconds(Some(pid)).expect("CPU time of the server")
}

/// Entries in `/proc/PID/fd` (0 once the process is gone).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Voluntary and involuntary context switches of all the process's threads: how often it
/// was scheduled, so also how often it woke up.
pub fn context_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task") {
        let path = task.expect("task entry").path().join("status");
        let status = std::fs::read_to_string(path).expect("task status");
        total += status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .map(|v| v.trim().parse::<u64>().expect("switch count"))
            .sum::<u64>();
    }
    total
}

/// `VmHWM` of process `pid`, in KiB: the most `VmRSS` has been since it started.
pub fn peak_rss_kib(pid: u32) -> u64 {
    wsload::stats::peak_rss_kib(pid).expect("VmHWM of the server")
}
