//! The supervisor's timing rules, kept free of processes so they can be tested with tokio's
//! paused clock (docs/design.md §5):
//!
//! - restart backoff: 100 ms, doubling, capped at 30 s, back to 100 ms once the service has
//!   been up (and healthy) for 30 s;
//! - a start whose process ends within `start_secs` is a failed start; after `start_retries`
//!   failed starts in a row the service is fatal until an operator starts it;
//! - a health check that fails `retries` times in a row, outside `start_period`, makes the
//!   service unhealthy (and the supervisor restarts it);
//! - `memory_max` exceeded on 3 samples in a row (one a second) restarts the service.

use std::time::Duration;

use tokio::time::Instant;

/// First restart delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Up (and healthy) this long, a service's backoff starts over.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// Samples above memory_max in a row before a restart.
pub const MEMORY_STRIKES: u32 = 3;

/// Restart backoff and failed-start accounting for one service.
#[derive(Debug, Clone)]
pub struct Backoff {
    restarts_in_a_row: u32,
    failed_starts: u32,
    start_retries: u32,
    stable_since: Option<Instant>,
}

/// What to do after a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Start it again after this delay.
    Restart(Duration),
    /// Leave it down: the restart policy does not restart it.
    StayDown,
    /// Too many failed starts in a row: leave it down until an operator starts it.
    Fatal,
}

impl Backoff {
    /// A fresh backoff for a service with `start_retries`.
    pub fn new(start_retries: u32) -> Self {
        Backoff { restarts_in_a_row: 0, failed_starts: 0, start_retries, stable_since: None }
    }

    /// Forgets every failure: an operator's start or restart.
    pub fn reset(&mut self) {
        self.restarts_in_a_row = 0;
        self.failed_starts = 0;
        self.stable_since = None;
    }

    /// Failed starts in a row so far.
    pub fn failed_starts(&self) -> u32 {
        self.failed_starts
    }

    /// The service is up and (where it has a check) healthy from `now`.
    pub fn up_and_healthy(&mut self, now: Instant) {
        self.failed_starts = 0;
        self.stable_since.get_or_insert(now);
    }

    /// The service stopped being healthy (or stopped).
    pub fn not_healthy(&mut self) {
        self.stable_since = None;
    }

    /// When the current stable period resets the backoff, if one is running.
    pub fn reset_deadline(&self) -> Option<Instant> {
        self.stable_since.map(|s| s + BACKOFF_RESET_AFTER)
    }

    /// Applies the reset if the service has been stable long enough by `now`.
    pub fn check_stable(&mut self, now: Instant) {
        if self.stable_since.is_some_and(|s| now.duration_since(s) >= BACKOFF_RESET_AFTER) {
            self.restarts_in_a_row = 0;
        }
    }

    /// The delay before the next restart, advancing the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let d = BACKOFF_INITIAL.saturating_mul(1u32 << self.restarts_in_a_row.min(20)).min(BACKOFF_MAX);
        self.restarts_in_a_row = self.restarts_in_a_row.saturating_add(1);
        d
    }

    /// A process ended at `now`. `during_start`: it ended within start_secs. `success`: it
    /// exited with status 0. `restart`: the service's restart policy.
    pub fn after_exit(
        &mut self,
        now: Instant,
        during_start: bool,
        success: bool,
        restart: crate::config::RestartPolicy,
    ) -> AfterExit {
        use crate::config::RestartPolicy;
        self.check_stable(now);
        self.stable_since = None;
        if during_start {
            self.failed_starts += 1;
            if self.failed_starts >= self.start_retries.max(1) {
                return AfterExit::Fatal;
            }
            return AfterExit::Restart(self.next_delay());
        }
        match restart {
            RestartPolicy::No => AfterExit::StayDown,
            RestartPolicy::OnFailure if success => AfterExit::StayDown,
            RestartPolicy::OnFailure | RestartPolicy::Always => AfterExit::Restart(self.next_delay()),
        }
    }

    /// The supervisor restarts a running service (unhealthy, over memory_max) at `now`:
    /// returns the delay before it starts again, which counts against the backoff.
    pub fn forced_restart(&mut self, now: Instant) -> Duration {
        self.check_stable(now);
        self.stable_since = None;
        self.next_delay()
    }
}

/// Consecutive health-check results of one run of a service.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    retries: u32,
    start_period_ends: Instant,
    failures: u32,
    healthy: bool,
    last_error: String,
}

/// What a health result means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthVerdict {
    /// Healthy (the first passing check after a start or a failure, or still healthy).
    Healthy,
    /// Failing, but not `retries` times in a row yet (or within start_period).
    Failing,
    /// Failed `retries` times in a row outside start_period: restart the service.
    Unhealthy(String),
}

impl HealthTracker {
    /// A tracker for a process started at `started`.
    pub fn new(retries: u32, start_period: Duration, started: Instant) -> Self {
        HealthTracker {
            retries: retries.max(1),
            start_period_ends: started + start_period,
            failures: 0,
            healthy: false,
            last_error: String::new(),
        }
    }

    /// Whether the last verdict was healthy.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// The last failure's reason.
    pub fn last_error(&self) -> &str {
        &self.last_error
    }

    /// Records one probe result at `now`.
    pub fn record(&mut self, now: Instant, result: Result<(), String>) -> HealthVerdict {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.healthy = true;
                HealthVerdict::Healthy
            }
            Err(e) => {
                self.healthy = false;
                self.last_error = e;
                if now < self.start_period_ends {
                    // Failures while the service warms up do not count.
                    return HealthVerdict::Failing;
                }
                self.failures += 1;
                if self.failures >= self.retries {
                    HealthVerdict::Unhealthy(format!(
                        "health check failed {} time{} in a row: {}",
                        self.failures,
                        if self.failures == 1 { "" } else { "s" },
                        self.last_error
                    ))
                } else {
                    HealthVerdict::Failing
                }
            }
        }
    }
}

/// Samples of resident memory against memory_max.
#[derive(Debug, Clone, Default)]
pub struct MemoryWatch {
    strikes: u32,
}

impl MemoryWatch {
    /// Records one sample; returns the reason to restart once it was above `max` on
    /// [`MEMORY_STRIKES`] samples in a row.
    pub fn record(&mut self, rss: u64, max: u64) -> Option<String> {
        if rss <= max {
            self.strikes = 0;
            return None;
        }
        self.strikes += 1;
        (self.strikes >= MEMORY_STRIKES).then(|| {
            format!(
                "resident memory {} stayed above memory_max {}",
                fleet_common::human_bytes(rss),
                fleet_common::human_bytes(max)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RestartPolicy;
    use tokio::time::{advance, pause};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn backoff_doubles_to_the_cap_and_resets_after_stable_uptime() {
        pause();
        let mut b = Backoff::new(5);
        let mut delays = vec![];
        for _ in 0..12 {
            // Each run lasts 2s (past start_secs, crashing long before 30s of stability).
            b.up_and_healthy(Instant::now());
            advance(Duration::from_secs(2)).await;
            match b.after_exit(Instant::now(), false, false, RestartPolicy::OnFailure) {
                AfterExit::Restart(d) => delays.push(d),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400),
                ms(12800),
                ms(25600),
                ms(30000),
                ms(30000),
                ms(30000)
            ]
        );
        // Up and healthy for 30s: the next crash restarts after 100ms again.
        b.up_and_healthy(Instant::now());
        advance(Duration::from_secs(29)).await;
        b.check_stable(Instant::now());
        assert_eq!(b.clone().next_delay(), ms(30000), "29s is not yet stable");
        advance(Duration::from_secs(1)).await;
        assert_eq!(b.after_exit(Instant::now(), false, false, RestartPolicy::Always), AfterExit::Restart(ms(100)));
    }

    #[tokio::test]
    async fn unhealthy_time_does_not_count_as_stable() {
        pause();
        let mut b = Backoff::new(5);
        b.next_delay();
        b.next_delay();
        b.up_and_healthy(Instant::now());
        advance(Duration::from_secs(20)).await;
        b.not_healthy();
        advance(Duration::from_secs(20)).await;
        b.up_and_healthy(Instant::now());
        advance(Duration::from_secs(20)).await;
        assert_eq!(b.forced_restart(Instant::now()), ms(400), "two 20s healthy spells are not 30s of stability");
    }

    #[tokio::test]
    async fn failed_starts_make_a_service_fatal_until_reset() {
        pause();
        let mut b = Backoff::new(3);
        assert_eq!(b.after_exit(Instant::now(), true, false, RestartPolicy::Always), AfterExit::Restart(ms(100)));
        assert_eq!(b.after_exit(Instant::now(), true, false, RestartPolicy::Always), AfterExit::Restart(ms(200)));
        assert_eq!(b.after_exit(Instant::now(), true, true, RestartPolicy::Always), AfterExit::Fatal);
        b.reset();
        assert_eq!(b.failed_starts(), 0);
        assert_eq!(b.after_exit(Instant::now(), true, false, RestartPolicy::Always), AfterExit::Restart(ms(100)));
        // A start that got past start_secs clears the failed-start count.
        b.up_and_healthy(Instant::now());
        assert_eq!(b.failed_starts(), 0);
    }

    #[tokio::test]
    async fn restart_policies() {
        pause();
        let now = Instant::now();
        assert_eq!(Backoff::new(5).after_exit(now, false, true, RestartPolicy::OnFailure), AfterExit::StayDown);
        assert_eq!(
            Backoff::new(5).after_exit(now, false, false, RestartPolicy::OnFailure),
            AfterExit::Restart(ms(100))
        );
        assert_eq!(Backoff::new(5).after_exit(now, false, true, RestartPolicy::Always), AfterExit::Restart(ms(100)));
        assert_eq!(Backoff::new(5).after_exit(now, false, false, RestartPolicy::No), AfterExit::StayDown);
    }

    #[tokio::test]
    async fn health_needs_retries_failures_outside_start_period() {
        pause();
        let started = Instant::now();
        let mut h = HealthTracker::new(3, Duration::from_secs(10), started);
        // Within start_period failures do not count.
        for _ in 0..5 {
            assert_eq!(h.record(Instant::now(), Err("refused".into())), HealthVerdict::Failing);
            advance(Duration::from_secs(1)).await;
        }
        advance(Duration::from_secs(5)).await;
        assert_eq!(h.record(Instant::now(), Err("refused".into())), HealthVerdict::Failing);
        assert_eq!(h.record(Instant::now(), Ok(())), HealthVerdict::Healthy, "a pass clears the count");
        assert_eq!(h.record(Instant::now(), Err("503".into())), HealthVerdict::Failing);
        assert_eq!(h.record(Instant::now(), Err("503".into())), HealthVerdict::Failing);
        assert_eq!(
            h.record(Instant::now(), Err("GET /health: 503".into())),
            HealthVerdict::Unhealthy("health check failed 3 times in a row: GET /health: 503".into())
        );
    }

    #[test]
    fn memory_must_stay_above_the_limit() {
        let mut m = MemoryWatch::default();
        assert!(m.record(200, 100).is_none());
        assert!(m.record(200, 100).is_none());
        assert!(m.record(50, 100).is_none(), "a dip resets the count");
        assert!(m.record(200, 100).is_none());
        assert!(m.record(200, 100).is_none());
        assert!(m.record(200, 100).unwrap().contains("stayed above memory_max"));
    }
}
