//! Measurement: a log-linear latency histogram, CPU time and resident memory from `/proc`.

use std::time::{Duration, Instant};

/// Sub-buckets per power of two: 2^7 = 128, so any recorded value is off by at most 1/128
/// (0.8 %) of itself.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `SUB` get one exact bucket each; every power of two above gets `SUB` buckets.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * (SUB as usize);

/// A log-linear histogram of `u64` values (the load generator records nanoseconds).
///
/// Recording is a `leading_zeros`, a shift and an increment: cheap enough for every message.
/// Memory is fixed (about 60 KiB) whatever the range.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let group = u64::from(msb - SUB_BITS + 1);
    let sub = (value >> (msb - SUB_BITS)) - SUB;
    (group * SUB + sub) as usize
}

/// The lowest value and width of bucket `index`.
fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    let (group, sub) = (index / SUB, index % SUB);
    if group == 0 {
        return (sub, 1);
    }
    let shift = group - 1;
    ((SUB + sub) << shift, 1 << shift)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, value: u64) {
        if let Some(c) = self.counts.get_mut(bucket_of(value)) {
            *c += 1;
        }
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += u128::from(value);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Forgets everything (the end of a warm-up).
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
        self.min = u64::MAX;
        self.max = 0;
        self.sum = 0;
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The smallest value (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// The largest value (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0.0–1.0): the middle of the bucket that holds it, clamped
    /// to the recorded range; exactly the minimum and maximum at 0 and 1. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        if q <= 0.0 {
            return self.min;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_range(index);
                return (low + width / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// p50, p99 and p99.9 in microseconds (the histogram holds nanoseconds).
    pub fn percentiles_us(&self) -> Percentiles {
        let us = |q| self.quantile(q) as f64 / 1000.0;
        Percentiles {
            p50_us: us(0.50),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.max() as f64 / 1000.0,
            mean_us: self.mean() / 1000.0,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// User + system CPU seconds of process `pid` (`None`: this process), from `/proc/PID/stat`.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat_cpu(&stat)
}

/// utime + stime in seconds from the text of a `/proc/PID/stat` file.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: fields are counted after
    // its last ')'. utime and stime are fields 14 and 15, the 12th and 13th after it.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // `/proc/PID/stat` counts in clock ticks (`CLK_TCK`).
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second().max(1) as f64)
}

/// Resident memory (`VmRSS`) of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// The most resident memory process `pid` has had (`VmHWM`, its high-water mark) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...) by its name; `None` once the
/// process is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's soft limit on open files (`None`: unlimited).
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// CPU use of a process over a window, as a percentage of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: Option<u32>,
    start_cpu: Option<f64>,
    start: Instant,
}

impl CpuMeter {
    /// Starts measuring process `pid` (`None`: this process).
    pub fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            start_cpu: cpu_seconds(pid),
            start: Instant::now(),
        }
    }

    /// Percent of one core used since [`start`](CpuMeter::start) (`None` if `/proc` could not
    /// be read, e.g. the process is gone).
    pub fn percent(&self) -> Option<f64> {
        let used = cpu_seconds(self.pid)? - self.start_cpu?;
        let wall = self.start.elapsed();
        (wall > Duration::ZERO).then(|| 100.0 * used / wall.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        let mut expected_low = 0;
        for index in 0..BUCKETS - 1 {
            let (low, width) = bucket_range(index);
            assert_eq!(low, expected_low, "index {index}");
            assert_eq!(bucket_of(low), index);
            assert_eq!(bucket_of(low + width - 1), index);
            expected_low = low + width;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_bounded() {
        let mut v = 1u64;
        while v < u64::MAX / 3 {
            let (low, width) = bucket_range(bucket_of(v));
            let mid = low + width / 2;
            let err = (mid as f64 - v as f64).abs() / v as f64;
            assert!(err <= 1.0 / SUB as f64, "{v}: {err}");
            v = v * 3 + 1;
        }
    }

    #[test]
    fn quantiles_of_a_uniform_range() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let near = |got: u64, want: f64| (got as f64 - want).abs() / want < 0.01;
        assert!(near(h.quantile(0.5), 50_000_000.0), "{}", h.quantile(0.5));
        assert!(near(h.quantile(0.99), 99_000_000.0), "{}", h.quantile(0.99));
        assert!(near(h.quantile(0.999), 99_900_000.0));
        assert_eq!(h.quantile(0.0), 1000);
        assert_eq!(h.quantile(1.0), 100_000_000);
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.min(), 1000);
        let p = h.percentiles_us();
        assert!((p.mean_us - 50_000.5).abs() < 0.01);
    }

    #[test]
    fn exact_small_values_merge_and_clear() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in [3u64, 3, 5, 7] {
            a.record(v);
        }
        b.record(100);
        a.merge(&b);
        assert_eq!(a.count(), 5);
        assert_eq!(a.quantile(0.5), 5);
        assert_eq!(a.quantile(0.4), 3);
        assert_eq!(a.max(), 100);
        a.clear();
        assert_eq!(a.count(), 0);
        assert_eq!(a.quantile(0.5), 0);
        assert_eq!(a.min(), 0);
    }

    #[test]
    fn proc_parsing() {
        let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        let status = "Name:\twsloop\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(4321));
        assert_eq!(parse_status_kib(status, "VmPeak"), Some(9000));
        assert_eq!(parse_status_kib(status, "VmHWM"), None);
        assert!(cpu_seconds(None).is_some());
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
