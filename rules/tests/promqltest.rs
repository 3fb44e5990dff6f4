//! fleet's own PromQL cases (rules/tests/promqltest/*.test, Prometheus' promqltest format) pass
//! through fleet's engine, and the harness itself reports what fails and what it skips.

use std::path::PathBuf;

#[test]
fn fleets_own_promqltest_cases_pass() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/promqltest");
    let s = fleet_rules::promqltest::run_paths(&[dir]).unwrap();
    assert!(s.failed.is_empty(), "{:#?}", s.failed);
    assert!(s.passed >= 15, "{s:?}");
}
