//! An agent's clock, as seen from its session (docs/design.md §6: samples keep the time the agent
//! took them). The agent stamps its Hello and every report with its clock when it sends them;
//! each arrival gives `agent clock - coordinator clock - network delay`, and the largest of
//! the last [`WINDOW_MS`] of them (the least delayed) is the offset. Beyond [`TOLERANCE_MS`] a
//! report's samples are stored at the coordinator's time for them (`taken - offset`), so a
//! skewed host does not vanish from queries and rules or have its samples dropped as too old;
//! beyond [`WARN_MS`] the skew is a problem to fix (`FleetClockSkew`, docs/install.md "Clocks").
//!
//! Pure: no clocks are read here, the session passes the times in.

use std::collections::VecDeque;

/// Offsets below this are left alone: less than a default report interval, a sample cannot
/// be misplaced by more than one report, and correcting network jitter would only reorder
/// samples.
pub const TOLERANCE_MS: i64 = 5_000;
/// Offsets beyond this are warned of (log, `fleetctl host`, the `FleetClockSkew` rule).
pub const WARN_MS: i64 = 30_000;
/// How far back arrivals count: a clock that is set right is followed within this.
pub const WINDOW_MS: i64 = 10_000;
/// Arrivals kept at most.
const MAX_SAMPLES: usize = 64;

/// The offset estimate of one session.
#[derive(Debug, Default, Clone)]
pub struct ClockOffset {
    /// (arrival at the coordinator, agent clock at sending - arrival), oldest first.
    samples: VecDeque<(i64, i64)>,
}

impl ClockOffset {
    /// Notes a message the agent sent at `agent_ms` (its clock) that arrived at `arrived_ms`
    /// (the coordinator's); returns the offset estimate.
    pub fn observe(&mut self, agent_ms: i64, arrived_ms: i64) -> i64 {
        self.samples.push_back((arrived_ms, agent_ms.saturating_sub(arrived_ms)));
        while self.samples.len() > MAX_SAMPLES
            || self.samples.front().is_some_and(|(at, _)| arrived_ms - at > WINDOW_MS)
        {
            self.samples.pop_front();
        }
        self.offset().unwrap_or(0)
    }

    /// The estimate: agent clock minus coordinator clock, in ms; `None` before any message.
    pub fn offset(&self) -> Option<i64> {
        self.samples.iter().map(|(_, o)| *o).max()
    }
}

/// The time to store a sample the agent took at `taken_ms` with clock offset `offset_ms`.
pub fn corrected(taken_ms: i64, offset_ms: i64) -> i64 {
    if offset_ms.abs() > TOLERANCE_MS { taken_ms.saturating_sub(offset_ms) } else { taken_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_delayed_arrival_gives_the_offset() {
        let mut c = ClockOffset::default();
        assert_eq!(c.offset(), None);
        // An agent an hour ahead, behind a network that delays by 5 to 80 ms.
        let hour = 3_600_000;
        for (i, delay) in [40, 5, 80, 20].iter().enumerate() {
            let sent = 1_000_000 + i as i64 * 1000;
            c.observe(sent + hour, sent + delay);
        }
        assert_eq!(c.offset(), Some(hour - 5));
        assert_eq!(corrected(5_000_000 + hour, hour - 5), 5_000_005);
    }

    #[test]
    fn small_offsets_are_left_alone_and_a_clock_set_right_is_followed() {
        assert_eq!(corrected(1000, 3000), 1000, "within the tolerance");
        assert_eq!(corrected(100_000, -60_000), 160_000, "a clock behind is moved forward");
        let mut c = ClockOffset::default();
        c.observe(3_600_000, 0);
        // The clock is set right at t = 1 s; after the window only the right offset counts.
        for t in (1000..=12_000).step_by(1000) {
            c.observe(t, t);
        }
        assert_eq!(c.offset(), Some(0));
    }
}
