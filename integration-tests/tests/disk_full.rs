//! A full disk is survived and said: the coordinator stops acknowledging what it cannot
//! store, the agent keeps what it could not deliver, both say so a few times rather than
//! thousands, and both work again on their own within seconds of space coming back. Each data
//! directory is a small tmpfs, filled and freed by the test (mounting needs root, as CI has).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, parse_metrics, serial};

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts a small tmpfs to fill a disk: run the tests as root (scripts/test.sh does in CI)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk(dir.to_path_buf())
    }

    /// Fills what is left with a ballast file.
    fn fill(&self) {
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", self.0.join("ballast").display()))
            .args(["bs=1M", "count=64"])
            .output();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("ballast")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

async fn metric(c: &Cluster, name: &str) -> f64 {
    let (_, text) = c.http_get("/metrics").await;
    parse_metrics(&text).get(name).copied().unwrap_or(0.0)
}

fn lines(log: &str, level: &str) -> usize {
    log.lines().filter(|l| l.contains(level)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_survived_said_sparingly_and_recovered_from() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    let coord_disk = SmallDisk::mount(&c.dir().join("coordinator"), "8m");
    let agent_disk = SmallDisk::mount(&c.dir().join("pc2"), "8m");
    c.start_coordinator(CoordinatorOpts { offline_after: Duration::from_secs(30), ..Default::default() }).await;
    c.start_agent("pc2", Duration::from_millis(100));
    c.wait_online(&["pc2"], Duration::from_secs(10)).await;

    // The coordinator's disk fills: not ready, nothing acknowledged that is not stored, the
    // agent keeps its reports. Ten seconds of it are a handful of log lines, not thousands.
    let before = c.coordinator.as_ref().unwrap().log_text();
    coord_disk.fill();
    eventually(Duration::from_secs(10), "/health/ready to say the store fails", || async {
        (c.http_get("/health/ready").await.0 == 503).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await; // ten seconds of a full disk
    let during = c.coordinator.as_ref().unwrap().log_text()[before.len()..].to_string();
    assert!(lines(&during, "ERROR") + lines(&during, "WARN") < 30, "a full disk floods the log:\n{during}");
    let agent_log = c.agents["pc2"].log_text();
    assert!(lines(&agent_log, "WARN") + lines(&agent_log, "ERROR") < 10, "{agent_log}");

    // Space comes back: ready again within seconds, and every report the agent held arrives.
    let stored_before = metric(&c, "fleet_coordinator_reports_stored_total").await;
    coord_disk.free();
    eventually(Duration::from_secs(10), "/health/ready again after space came back", || async {
        (c.http_get("/health/ready").await.0 == 200).then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "the reports held during the outage to be stored", || async {
        let stored = metric(&c, "fleet_coordinator_reports_stored_total").await;
        (stored > stored_before + 50.0).then_some(())
    })
    .await;
    assert_eq!(metric(&c, "fleet_agent_reports_dropped_total{host=\"pc2\"}").await, 0.0, "the agent kept them all");
    let log = c.coordinator.as_ref().unwrap().log_text();
    assert!(log.contains("the store accepts writes again"), "{log}");

    // The agent's disk fills: its reports are lost, counted, and said once; then it buffers
    // again by itself.
    let before = c.agents["pc2"].log_text();
    agent_disk.fill();
    eventually(Duration::from_secs(10), "the agent to lose reports", || async {
        c.agents["pc2"].log_text().contains("cannot buffer a report").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await; // ten seconds of a full disk
    let during = c.agents["pc2"].log_text()[before.len()..].to_string();
    assert!(lines(&during, "ERROR") + lines(&during, "WARN") < 30, "a full disk floods the agent's log:\n{during}");
    agent_disk.free();
    eventually(Duration::from_secs(10), "the agent to buffer reports again", || async {
        c.agents["pc2"].log_text().contains("buffering reports again").then_some(())
    })
    .await;
    let last = c.hosts().await.unwrap()[0].last_report_ms;
    eventually(Duration::from_secs(10), "new reports from pc2", || async {
        (c.hosts().await?[0].last_report_ms > last).then_some(())
    })
    .await;
    assert!(metric(&c, "fleet_agent_reports_dropped_total{host=\"pc2\"}").await > 0.0, "the loss is counted");
    assert_eq!(c.http_get("/health/ready").await.0, 200);
}
