//! Host metrics from the operating system through sysinfo (docs/design.md §5). Only the parts a report
//! needs are refreshed (no process table), and label sets are bounded so a machine with
//! hundreds of container interfaces or mounts cannot blow up the coordinator's series count.

use std::collections::BTreeMap;

use fleet_proto::v1::{Filesystem, HostMetrics, NetworkInterface};
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};

/// At most this many filesystems and network interfaces are reported (sorted by name).
pub const MAX_DEVICES: usize = 64;

/// Reads host metrics; keeps the state sysinfo needs to compute CPU usage between reads.
pub struct Collector {
    system: System,
    disks: Disks,
    networks: Networks,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Collector")
    }
}

/// Filesystem types that describe no storage an operator would want alerts on.
const PSEUDO_FS: [&str; 14] = [
    "tmpfs",
    "devtmpfs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "overlay",
    "squashfs",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "fusectl",
];

impl Collector {
    /// Creates a collector and takes the first CPU reading, so the first report's CPU usage
    /// covers the time until it is taken.
    pub fn new() -> Result<Self, String> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything()),
        )
        .map_err(|e| format!("cannot read system information: {e:?}"))?;
        let disks = Disks::new_with_refreshed_list().map_err(|e| format!("cannot list filesystems: {e:?}"))?;
        let networks =
            Networks::new_with_refreshed_list().map_err(|e| format!("cannot list network interfaces: {e:?}"))?;
        Ok(Collector { system, disks, networks })
    }

    /// The operating system's host name, if it can be read.
    pub fn host_name() -> Option<String> {
        System::host_name().ok().filter(|s| !s.is_empty())
    }

    /// A one-line description of the operating system.
    pub fn os() -> String {
        System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.to_string())
    }

    /// Reads everything a report carries. CPU usage is the average since the previous call.
    pub fn collect(&mut self) -> HostMetrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        // Mounts and interfaces come and go (USB disks, VPNs, containers): refresh the lists.
        self.disks.refresh(true);
        self.networks.refresh(true);

        let mut filesystems: BTreeMap<String, Filesystem> = BTreeMap::new();
        for d in self.disks.iter() {
            let fstype = d.file_system().to_string_lossy().into_owned();
            if PSEUDO_FS.contains(&fstype.as_str()) || d.total_space() == 0 {
                continue;
            }
            let mountpoint = d.mount_point().to_string_lossy().into_owned();
            // The same device can be mounted twice (bind mounts); the first mount wins.
            filesystems.entry(mountpoint.clone()).or_insert_with(|| Filesystem {
                mountpoint,
                device: d.name().to_string_lossy().into_owned(),
                fstype,
                size_bytes: d.total_space(),
                avail_bytes: d.available_space(),
            });
        }
        let mut networks: Vec<NetworkInterface> = self
            .networks
            .iter()
            .map(|(name, data)| NetworkInterface {
                device: name.to_string_lossy().into_owned(),
                receive_bytes_total: data.total_received(),
                transmit_bytes_total: data.total_transmitted(),
            })
            .collect();
        networks.sort_by(|a, b| a.device.cmp(&b.device));
        networks.truncate(MAX_DEVICES);
        let load = System::load_average().unwrap_or(sysinfo::LoadAvg { one: 0.0, five: 0.0, fifteen: 0.0 });
        HostMetrics {
            cpu_usage_ratio: (f64::from(self.system.global_cpu_usage()) / 100.0).clamp(0.0, 1.0),
            cpu_count: self.system.cpus().len() as u32,
            memory_total_bytes: self.system.total_memory(),
            memory_available_bytes: self.system.available_memory(),
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
            filesystems: filesystems.into_values().take(MAX_DEVICES).collect(),
            networks,
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            uptime_seconds: System::uptime().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plausible_host_metrics() {
        let mut c = Collector::new().unwrap();
        let m = c.collect();
        assert!(m.memory_total_bytes > 0);
        assert!(m.memory_available_bytes <= m.memory_total_bytes);
        assert!(m.cpu_count > 0);
        assert!((0.0..=1.0).contains(&m.cpu_usage_ratio));
        assert!(m.uptime_seconds > 0);
        assert!(m.networks.iter().any(|n| n.device == "lo"), "{:?}", m.networks);
        assert!(m.filesystems.len() <= MAX_DEVICES);
    }
}
