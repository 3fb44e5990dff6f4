//! `fleetctl rules test` and `rules check` against fleet's own rules corpus (rules/corpus) and
//! against promtool itself: every corpus file passes in both tools, and mutated copies pass or
//! fail exactly where promtool does.

use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/corpus")
}

fn fleetctl_test(file: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl")).args(["rules", "test"]).arg(file).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn promtool_run(file: &Path) -> (Option<i32>, String) {
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(file.file_name().unwrap())
        .current_dir(file.parent().unwrap())
        .output()
        .expect("promtool is not installed: apt-get install prometheus (scripts/test.sh does this)");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn promtool_test(file: &Path) -> Option<i32> {
    promtool_run(file).0
}

/// Which checks failed, as both tools name them: `alertname: X, time: T` and
/// `expr: "E", time: T`.
fn failed_checks(out: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    for key in ["alertname: ", "expr: \""] {
        let mut rest = out;
        while let Some(i) = rest.find(key) {
            let tail = &rest[i..];
            let Some(t) = tail.find(", time: ") else { break };
            let after = &tail[t + ", time: ".len()..];
            let end = after.find(',').unwrap_or(after.len());
            // promtool prints the time as Go does (3m0s), fleetctl as the file has it (3m).
            let time = &after[..end];
            let ms = fleet_rules::rules::parse_duration(&time.replace("m0s", "m").replace("h0m", "h"))
                .map(|d| d.as_millis().to_string())
                .unwrap_or_else(|_| time.to_string());
            found.insert(format!("{} at {ms} ms", &tail[..t]));
            rest = &tail[t..];
        }
    }
    found
}

#[test]
fn every_corpus_file_passes_in_both_tools() {
    let dir = corpus();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("the corpus at {} is missing: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".test.yml") {
            let (code, out) = fleetctl_test(&p);
            assert_eq!(code, Some(0), "{}:\n{out}", p.display());
            assert!(out.contains("SUCCESS"));
            assert_eq!(promtool_test(&p), Some(0), "promtool fails {}", p.display());
            n += 1;
        }
    }
    assert!(n >= 2, "found only {n} test files in {}", dir.display());
}

#[test]
fn mutated_tests_fail_exactly_where_promtool_fails() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(corpus()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    // (file, from, to): each a plausible slip in a test or a rule, each caught by promtool.
    let mutations: &[(&str, &str, &str)] = &[
        ("alerting.rules.yml", "for: 2m", "for: 3m"),
        ("alerting.rules.yml", "keep_firing_for: 2m", "keep_firing_for: 1m"),
        ("alerting.rules.yml", "gt $value 95.0", "gt $value 97.0"),
        ("alerting.rules.yml", "avg by (role)", "max by (role)"),
        ("alerting.rules.yml", "printf \\\"%.1f\\\"", "printf \\\"%.2f\\\""),
        ("alerting.rules.yml", "{{ .Labels.host }} {{ end }}", "{{ .Labels.service }} {{ end }}"),
        ("alerting.rules.yml", "{{ $s = \"critical\" }}", "{{ $s := \"critical\" }}"),
        ("alerting.rules.yml", "count(fleet_service_up", "max(fleet_service_up"),
        ("alerting.rules.test.yml", "restarted 4 times", "restarted 5 times"),
        (
            "alerting.rules.test.yml",
            "      - eval_time: 9m\n        alertname: BackupMissing",
            "      - eval_time: 6m\n        alertname: BackupMissing",
        ),
        ("alerting.rules.test.yml", "{value: \"1e+06\"", "{value: \"1000000\""),
        ("alerting.rules.test.yml", "humanized: \"500m 0.5\"", "humanized: \"500m 500m\""),
        ("alerting.rules.test.yml", "exp_labels: {job: db, env: prod}", "exp_labels: {job: db}"),
        ("promql.rules.yml", "rate(requests_total[2m])", "irate(requests_total[2m])"),
        ("promql.rules.yml", "sum without (instance)", "sum by (instance)"),
        ("promql.rules.yml", "group_left (role)", "group_left ()"),
        ("promql.rules.yml", "(maintenance == 1)", "(maintenance == 0)"),
        ("promql.rules.yml", "offset 5m", "offset 4m"),
        ("promql.rules.test.yml", "value: 3.1", "value: 3.2"),
        ("promql.rules.test.yml", "value: 0.5", "value: 0.4"),
    ];
    let pristine: Vec<(PathBuf, String)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect();
    for (file, from, to) in mutations {
        for (p, t) in &pristine {
            std::fs::write(p, t).unwrap();
        }
        let target = dir.path().join(file);
        let text = std::fs::read_to_string(&target).unwrap();
        assert!(text.contains(from), "mutation {from:?} does not apply to {file}");
        std::fs::write(&target, text.replacen(from, to, 1)).unwrap();
        let stem = file.split('.').next().unwrap();
        let test_file = dir.path().join(format!("{stem}.rules.test.yml"));
        let (ours, out) = fleetctl_test(&test_file);
        let (theirs, their_out) = promtool_run(&test_file);
        assert_eq!(theirs, Some(1), "{file}: {from:?} -> {to:?} is not caught by promtool: a useless mutation");
        assert_eq!(ours, theirs, "{file}: {from:?} -> {to:?}: fleetctl exited {ours:?}, promtool {theirs:?}\n{out}");
        // Not only both fail: the same checks fail.
        let (a, b) = (failed_checks(&out), failed_checks(&their_out));
        assert!(!b.is_empty(), "{file}: no failed check found in promtool's output:\n{their_out}");
        assert_eq!(a, b, "{file}: {from:?} -> {to:?}: fleetctl and promtool fail different checks\n{out}\n{their_out}");
    }
}

fn fleetctl_check(file: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl")).args(["rules", "check"]).arg(file).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn rules_check_accepts_the_corpus_and_refuses_what_cannot_run() {
    for f in ["alerting.rules.yml", "promql.rules.yml", "empty.rules.yml"] {
        let (code, out) = fleetctl_check(&corpus().join(f));
        assert_eq!(code, Some(0), "{f}: {out}");
        assert!(out.contains("SUCCESS"), "{out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.rules.yml");
    // The node-exporter mixin's disk alert: valid in Prometheus, not evaluable by fleet yet.
    std::fs::write(
        &p,
        "groups:\n  - name: node\n    rules:\n      - alert: NodeFilesystemSpaceFillingUp\n        expr: info(node_filesystem_avail_bytes) < 0\n",
    )
    .unwrap();
    let (code, out) = fleetctl_check(&p);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("disk.rules.yml:4: alert \"NodeFilesystemSpaceFillingUp\": the function info() is not supported"),
        "{out}"
    );
}

#[test]
fn a_broken_rule_file_is_reported_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.rules.yml"),
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(x[5m]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("bad.test.yml"), "rule_files: [bad.rules.yml]\ntests: []\n").unwrap();
    let (code, out) = fleetctl_test(&dir.path().join("bad.test.yml"));
    assert_eq!(code, Some(1));
    assert!(out.contains("bad.rules.yml:4: invalid expr"), "{out}");
    // What fleet cannot evaluate fails the test file too, naming the construct.
    std::fs::write(
        dir.path().join("bad.rules.yml"),
        "groups:\n  - name: g\n    rules:\n      - record: r:x\n        expr: info(x)\n",
    )
    .unwrap();
    let (code, out) = fleetctl_test(&dir.path().join("bad.test.yml"));
    assert_eq!(code, Some(1));
    assert!(out.contains("bad.rules.yml:4: recording rule \"r:x\": the function info() is not supported"), "{out}");
}

#[test]
fn the_default_rules_in_deploy_pass_their_tests_in_both_tools() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/fleet.rules.test.yml");
    let (code, out) = fleetctl_test(&file);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(promtool_test(&file), Some(0));
}

#[test]
fn rules_check_eval_runs_every_rule_over_a_made_up_history() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("eval.rules.yml");
    // Loads (the expression is valid) but cannot be evaluated over a history where `up` has
    // two series of job "node": matching on `job` alone finds two on the left for one.
    std::fs::write(
        &p,
        "groups:\n  - name: g\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up{job=\"node\"})\n      - alert: Twice\n        expr: up{job=\"node\"} * on (job) up{job=\"node\", instance=\"a\"}\n      - alert: Fine\n        expr: job:up:sum > 0\n",
    )
    .unwrap();
    let (code, out) = fleetctl_check(&p);
    assert_eq!(code, Some(0), "loading alone accepts it: {out}");
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl")).args(["rules", "check", "--eval"]).arg(&p).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED: 1 of 3 rules failed to evaluate"), "{text}");
    assert!(text.contains("g/Twice: found duplicate series for the match group"), "{text}");
    // The recording rule's output fed the next rule: the rest evaluate, and return series.
    std::fs::write(
        &p,
        std::fs::read_to_string(&p).unwrap().replace(" * on (job) up{job=\"node\", instance=\"a\"}", ""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl")).args(["rules", "check", "--eval"]).arg(&p).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("all evaluated (3 returned series)"), "{text}");
}

#[test]
fn promtool_fires_the_alerts_fleet_fires_over_a_made_up_history() {
    // fleet's alerts, with their labels and rendered annotations, written as a promtool test:
    // promtool passing it means Prometheus evaluates and renders them byte for byte alike.
    let dir = tempfile::tempdir().unwrap();
    let default_rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/fleet.rules.yml");
    let mut fired = 0;
    for rules in [corpus().join("alerting.rules.yml"), corpus().join("promql.rules.yml"), default_rules] {
        let test = dir.path().join("made-up.test.yml");
        let out = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(["rules", "check", "--emit-test"])
            .arg(&test)
            .arg(&rules)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&test).unwrap();
        fired += text.matches("exp_labels").count();
        assert_eq!(promtool_test(&test), Some(0), "promtool disagrees with fleet on {}:\n{text}", rules.display());
        assert_eq!(fleetctl_test(&test).0, Some(0));
    }
    assert!(fired >= 5, "only {fired} alerts fired over the made-up history");
}
