//! `fleetctl rules test` against the compatibility corpus (../shared/compat/rules) and against
//! promtool itself: every corpus file passes, and mutated copies pass or fail exactly where
//! promtool does.

use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/compat/rules")
}

fn fleetctl_test(file: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl")).args(["rules", "test"]).arg(file).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn promtool_test(file: &Path) -> Option<i32> {
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(file.file_name().unwrap())
        .current_dir(file.parent().unwrap())
        .output()
        .expect("promtool is not installed: apt-get install prometheus (.ci/run does this)");
    out.status.code()
}

#[test]
fn every_corpus_file_passes() {
    let dir = corpus();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("the corpus at {} is missing: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".test.yml") {
            let (code, out) = fleetctl_test(&p);
            assert_eq!(code, Some(0), "{}:\n{out}", p.display());
            assert!(out.contains("SUCCESS"));
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
    // (file, from, to): each a plausible slip in a test or a rule.
    let mutations: &[(&str, &str, &str)] = &[
        ("semantics.rules.test.yml", "text: \"a uses 250\"", "text: \"a uses 251\""),
        (
            "semantics.rules.test.yml",
            "exp_labels: {instance: b, severity: warning}",
            "exp_labels: {instance: b, severity: critical}",
        ),
        (
            "semantics.rules.test.yml",
            "      - eval_time: 3m\n        alertname: KeepFiring",
            "      - eval_time: 2m\n        alertname: KeepFiring",
        ),
        ("semantics.rules.test.yml", "values: '1 1 _ _ _ _ _ _ _ _ _ _'", "values: '1 1 1 1 1 1 1 1 1 _ _ _'"),
        (
            "semantics.rules.test.yml",
            "eval_time: 4m\n        alertname: Gappy",
            "eval_time: 3m\n        alertname: Gappy",
        ),
        ("fleet.rules.test.yml", "value: 0.9", "value: 0.8"),
        ("fleet.rules.test.yml", "eval_time: 2m15s", "eval_time: 2m"),
        (
            "fleet.rules.test.yml",
            "summary: \"main-pc CPU at 0.9\"}\n      - eval_time: 2m45s",
            "summary: \"main-pc CPU at 0.90\"}\n      - eval_time: 2m45s",
        ),
        ("fleet.rules.yml", "for: 30s", "for: 1m"),
        ("fleet.rules.yml", "> 3", "> 8"),
        ("fleet.rules.yml", "for: 2m", "for: 1m"),
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
        let test_file = dir.path().join(if file.starts_with("fleet") {
            "fleet.rules.test.yml"
        } else {
            "semantics.rules.test.yml"
        });
        let (ours, out) = fleetctl_test(&test_file);
        let theirs = promtool_test(&test_file);
        assert_eq!(ours, theirs, "{file}: {from:?} -> {to:?}: fleetctl exited {ours:?}, promtool {theirs:?}\n{out}");
    }
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
}

#[test]
fn the_default_rules_in_deploy_pass_their_tests_in_both_tools() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/fleet.rules.test.yml");
    let (code, out) = fleetctl_test(&file);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(promtool_test(&file), Some(0));
}
