//! The parts of fleet-loadgen the benchmarks share: a simulated host whose reports have the
//! size, shape and value dynamics of a real agent's with 5 services.

use fleet_proto::v1::{Filesystem, HostMetrics, NetworkInterface, Report, ReportId, ServiceStatus};
use rand::{Rng, SeedableRng};

const PAGE: u64 = 4096;
const MOUNTS: [&str; 4] = ["/", "/boot", "/home", "/var"];
const DEVICES: [&str; 3] = ["eth0", "lo", "docker0"];
const SERVICES: usize = 5;

/// One simulated machine: its counters grow and its gauges wander from report to report the
/// way a real host's do (CPU ratios with full float precision, memory in pages, load averages
/// with two decimals, byte counters, CPU seconds in clock ticks), so the coordinator's history
/// compresses them no better than it would real ones.
#[derive(Debug)]
pub struct SimHost {
    rng: rand::rngs::StdRng,
    boot_id: u64,
    seq: u64,
    memory_available: u64,
    fs_avail: [u64; MOUNTS.len()],
    net: [(u64, u64); DEVICES.len()],
    load: [f64; 3],
    uptime: u64,
    svc_cpu_ticks: [u64; SERVICES],
    svc_rss: [u64; SERVICES],
}

impl SimHost {
    /// Host number `i`; the same `i` and `seed` give the same reports.
    pub fn new(i: u64, seed: u64) -> SimHost {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let boot_id = rng.random::<u64>() | 1;
        SimHost {
            boot_id,
            seq: 0,
            memory_available: (20 << 30) + rng.random_range(0..(1 << 18)) * PAGE,
            fs_avail: std::array::from_fn(|_| (200 << 30) + rng.random_range(0..(1 << 20)) * PAGE),
            net: [(0, 0); DEVICES.len()],
            load: [0.5, 0.4, 0.3],
            uptime: 100_000 + rng.random_range(0..1_000_000),
            svc_cpu_ticks: [0; SERVICES],
            svc_rss: std::array::from_fn(|_| (50 << 20) + rng.random_range(0..4096) * PAGE),
            rng,
        }
    }

    /// The agent run the reports belong to.
    pub fn boot_id(&self) -> u64 {
        self.boot_id
    }

    /// The next report, taken at `timestamp_ms`, `interval_s` after the previous one.
    pub fn next_report(&mut self, timestamp_ms: i64, interval_s: u64) -> Report {
        self.seq += 1;
        self.uptime += interval_s;
        let rng = &mut self.rng;
        let step = |rng: &mut rand::rngs::StdRng, x: &mut u64, pages: i64| {
            *x = x.saturating_add_signed(rng.random_range(-pages..=pages) * PAGE as i64);
        };
        step(rng, &mut self.memory_available, 2048);
        for a in &mut self.fs_avail {
            if rng.random_bool(0.2) {
                step(rng, a, 256);
            }
        }
        for (rx, tx) in &mut self.net {
            *rx += rng.random_range(0..2_000_000 * interval_s);
            *tx += rng.random_range(0..500_000 * interval_s);
        }
        for l in &mut self.load {
            *l = ((*l + rng.random_range(-0.2..0.2)).max(0.0) * 100.0).round() / 100.0;
        }
        for (ticks, rss) in self.svc_cpu_ticks.iter_mut().zip(&mut self.svc_rss) {
            *ticks += rng.random_range(0..20 * interval_s);
            step(rng, rss, 64);
        }
        let services = (0..SERVICES)
            .map(|s| ServiceStatus {
                name: format!("svc{s}"),
                state: "running".into(),
                healthy: true,
                pid: 1000 + s as u32,
                restarts: 0,
                uptime_seconds: self.seq * interval_s,
                cpu_seconds: self.svc_cpu_ticks[s] as f64 / 100.0,
                memory_rss_bytes: self.svc_rss[s],
                version: "1.0.0".into(),
                message: String::new(),
                has_health_check: true,
                awaiting_release: false,
                cpu_usage_ratio: 0.01,
            })
            .collect();
        Report {
            id: Some(ReportId { boot_id: self.boot_id, seq: self.seq }),
            timestamp_ms,
            // Sent as soon as it is taken, as a live agent's report is.
            sent_at_ms: timestamp_ms,
            host: Some(HostMetrics {
                cpu_usage_ratio: self.rng.random::<f64>() * 0.5,
                cpu_count: 8,
                memory_total_bytes: 32 << 30,
                memory_available_bytes: self.memory_available,
                swap_total_bytes: 2 << 30,
                swap_used_bytes: 0,
                filesystems: MOUNTS
                    .iter()
                    .zip(self.fs_avail)
                    .map(|(m, avail)| Filesystem {
                        mountpoint: m.to_string(),
                        device: "/dev/sda1".into(),
                        fstype: "ext4".into(),
                        size_bytes: 500 << 30,
                        avail_bytes: avail,
                    })
                    .collect(),
                networks: DEVICES
                    .iter()
                    .zip(self.net)
                    .map(|(d, (rx, tx))| NetworkInterface {
                        device: d.to_string(),
                        receive_bytes_total: rx,
                        transmit_bytes_total: tx,
                    })
                    .collect(),
                load1: self.load[0],
                load5: self.load[1],
                load15: self.load[2],
                uptime_seconds: self.uptime,
            }),
            services,
            reports_dropped_total: 0,
            jobs: Vec::new(),
        }
    }
}

/// Latencies in microseconds, in fixed memory however long the run: exact below 2,048 µs,
/// then 128 buckets per power of two (within 0.8%).
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

const EXACT: u32 = 2048;
const SUB_BITS: u32 = 7;

impl Default for Histogram {
    fn default() -> Self {
        let n = EXACT as usize + (32 - EXACT.trailing_zeros() as usize) * (1 << SUB_BITS);
        Histogram { buckets: vec![0; n], count: 0 }
    }
}

impl Histogram {
    fn index(us: u32) -> usize {
        if us < EXACT {
            return us as usize;
        }
        let e = 31 - us.leading_zeros();
        let sub = (us >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        EXACT as usize + ((e - EXACT.trailing_zeros()) << SUB_BITS) as usize + sub as usize
    }

    /// The middle of bucket `i`, in microseconds.
    fn value(i: usize) -> f64 {
        if i < EXACT as usize {
            return i as f64;
        }
        let k = i - EXACT as usize;
        let e = (k >> SUB_BITS) as u32 + EXACT.trailing_zeros();
        let sub = (k & ((1 << SUB_BITS) - 1)) as u64;
        let width = 1u64 << (e - SUB_BITS);
        (((1u64 << SUB_BITS) + sub) * width) as f64 + width as f64 / 2.0
    }

    /// Records one latency.
    pub fn record(&mut self, us: u32) {
        self.buckets[Self::index(us)] += 1;
        self.count += 1;
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `p` quantile (0..=1) in milliseconds, 0 when empty.
    pub fn quantile_ms(&self, p: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((self.count - 1) as f64 * p).round() as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen > rank {
                return Self::value(i) / 1000.0;
            }
        }
        unreachable!("rank < count")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_exact_below_two_ms_and_within_one_percent_above() {
        let mut h = Histogram::default();
        for us in 1..=1000 {
            h.record(us);
        }
        assert_eq!(h.quantile_ms(0.5), 0.501);
        assert_eq!(h.quantile_ms(0.99), 0.99);
        let mut h = Histogram::default();
        for us in [3_000, 70_000, 1_000_000, 4_000_000_000, u32::MAX] {
            h.record(us);
            let got = h.quantile_ms(1.0) * 1000.0;
            assert!((got - f64::from(us)).abs() / f64::from(us) < 0.008, "{us} µs came back as {got}");
        }
        assert_eq!(h.count(), 5);
        assert_eq!(Histogram::default().quantile_ms(0.99), 0.0);
    }
}
