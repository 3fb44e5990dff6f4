//! Fuzzing of what strangers and rule files can feed the rules engine (invariant 15): PromQL
//! through parse, check and a bounded evaluation; alert templates through parse and render;
//! rule files through loading. Inputs are random, from grammar-shaped generators and byte
//! soup, and nothing may panic, hang or overflow a stack. Each target runs for
//! `FLEET_FUZZ_SECONDS` (default 3) from seed `FLEET_FUZZ_SEED` (default: from the clock);
//! a failure prints the seed and the input, so it can be run again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleet_rules::promql::{self, Labels, Limits, Series, Storage};
use fleet_rules::template;
use promql_parser::label::Matchers;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn budget() -> Duration {
    Duration::from_secs_f64(std::env::var("FLEET_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0))
}

fn seed() -> u64 {
    std::env::var("FLEET_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fleet_common::now_ms() as u64)
}

/// Runs `target` on generated inputs for the time budget; a panic names the seed and input.
fn fuzz(name: &str, generate: impl Fn(&mut StdRng) -> String, target: impl Fn(&str) + std::panic::RefUnwindSafe) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let until = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < until {
        let input = generate(&mut rng);
        if std::panic::catch_unwind(|| target(&input)).is_err() {
            panic!("{name}: FLEET_FUZZ_SEED={seed}, run {runs}, input:\n{input:?}");
        }
        runs += 1;
    }
    eprintln!("{name}: {runs} inputs from seed {seed}");
}

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

/// PromQL-shaped text: real functions, operators, selectors and modifiers, nested at random,
/// sometimes cut or spliced with junk.
fn promql_text(rng: &mut StdRng, depth: u32) -> String {
    const FUNCS: &[&str] = &[
        "abs",
        "rate",
        "sum",
        "avg",
        "max",
        "topk",
        "histogram_quantile",
        "label_replace",
        "absent",
        "clamp",
        "predict_linear",
        "time",
        "vector",
        "scalar",
        "count_over_time",
        "round",
        "sort",
        "increase",
        "quantile",
    ];
    const OPS: &[&str] = &["+", "-", "*", "/", "%", "^", "==", "!=", ">", "<=", " and ", " or ", " unless ", " atan2 "];
    const NAMES: &[&str] = &["up", "m", "fleet_host_load1", "x_total", "__name__", "le"];
    if depth == 0 || rng.random_ratio(1, 4) {
        return match rng.random_range(0..7) {
            0 => format!("{}", rng.random::<f64>() * 10f64.powi(rng.random_range(-5..25))),
            1 => pick(rng, &["NaN", "Inf", "-Inf", "0x1F", "1e308", "-0", "5m", "\"s\""]).to_string(),
            2 => format!(
                "{}[{}{}]",
                pick(rng, NAMES),
                rng.random_range(0..100_000),
                pick(rng, &["s", "m", "h", "y", "ms"])
            ),
            3 => format!(
                "{}{{{}{}\"{}\"}}",
                pick(rng, NAMES),
                pick(rng, &["a", "host", "__name__"]),
                pick(rng, &["=", "!=", "=~", "!~"]),
                pick(rng, &[".*", "(a|b)+", "[", "x", "\\\\"])
            ),
            4 => format!(
                "{} offset {}{}",
                pick(rng, NAMES),
                pick(rng, &["", "-"]),
                pick(rng, &["5m", "1y", "99999999999y"])
            ),
            5 => format!("{} @ {}", pick(rng, NAMES), pick(rng, &["100", "start()", "end()", "-1e20"])),
            _ => pick(rng, NAMES).to_string(),
        };
    }
    let a = promql_text(rng, depth - 1);
    let mut s = match rng.random_range(0..6) {
        0 => format!("{}({a})", pick(rng, FUNCS)),
        1 => format!("{a}{}{}", pick(rng, OPS), promql_text(rng, depth - 1)),
        2 => format!("({a})"),
        3 => format!(
            "{} by ({}) ({a})",
            pick(rng, &["sum", "count", "stddev", "count_values"]),
            pick(rng, &["host", "", "a, b"])
        ),
        4 => format!("{a}[{}:{}]", pick(rng, &["5m", "1h", "0s"]), pick(rng, &["1m", "", "0s"])),
        _ => format!("{}({}, {a})", pick(rng, &["topk", "quantile", "clamp_min", "round"]), rng.random_range(-3..1000)),
    };
    if rng.random_ratio(1, 20) {
        let mut cut = rng.random_range(0..=s.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    if rng.random_ratio(1, 20) {
        s.push_str(pick(rng, &[")", "(", "{", "\"", "[5m", "}", "$", "\u{0}", "\u{feff}"]));
    }
    s
}

struct Mem(Vec<Series>);

impl Storage for Mem {
    fn select(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Series> {
        self.0
            .iter()
            .filter(|s| promql::matches(&s.labels, name, m))
            .map(|s| Series {
                labels: s.labels.clone(),
                points: s.points.iter().copied().filter(|(t, _)| *t > start && *t <= end).collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    }
}

fn store() -> Mem {
    let mut out = Vec::new();
    for (name, host) in [("up", "a"), ("m", "b"), ("x_total", "a"), ("fleet_host_load1", "c")] {
        let mut l = Labels::new();
        l.insert("__name__", name);
        l.insert("host", host);
        l.insert("le", "+Inf");
        let points = (0..50).map(|i| (i * 15_000, if i % 7 == 0 { f64::NAN } else { i as f64 })).collect();
        out.push(Series { labels: l, points });
    }
    Mem(out)
}

#[test]
fn promql_never_panics_or_runs_away() {
    let s = store();
    fuzz(
        "promql",
        |rng| {
            if rng.random_ratio(1, 10) {
                (0..rng.random_range(0..200)).map(|_| rng.random_range(0x20u8..0x7f) as char).collect()
            } else {
                promql_text(rng, 6)
            }
        },
        |text| {
            let Ok(e) = promql::parse(text) else { return };
            if promql::check(&e).is_err() {
                return;
            }
            let limits = Limits::new(Duration::from_secs(2), None, 1_000_000);
            for t in [0, 300_000, 3_600_000, i64::MAX / 4, -1] {
                let _ = promql::eval_with(&e, &s, t, &limits);
            }
            let _ = format!("{e}");
        },
    );
}

/// Template-shaped text: actions, pipelines, functions and variables, with junk.
fn template_text(rng: &mut StdRng) -> String {
    const PARTS: &[&str] = &[
        "{{ $value }}",
        "{{ $labels.host }}",
        "{{ if gt $value 1.0 }}",
        "{{ else }}",
        "{{ end }}",
        "{{ range $k, $v := $labels }}",
        "{{ with query \"up\" }}",
        "{{ . | first | value }}",
        "{{ printf \"%5.2f\" $value }}",
        "{{ printf \"%999999999d\" 1 }}",
        "{{ $x := 1 }}",
        "{{ $x = \"a\" }}",
        "{{ $x }}",
        "{{ humanize1024 $value }}",
        "{{ humanizeDuration $value }}",
        "{{ reReplaceAll \"(a+)\" \"$1$1\" $labels.host }}",
        "{{ title (toUpper \"x\") }}",
        "{{- ",
        " -}}",
        "{{/* c */}}",
        "{{ index $labels \"a\" }}",
        "{{ len $labels }}",
        "{{ break }}",
        "{{ (",
        "}}",
        "{{",
        "text ",
        "\u{1b}",
        "{{ nil }}",
        "{{ slice \"abc\" 1 }}",
        "{{ eq 1 2 3 }}",
        "{{ toTime 1e30 }}",
        "{{ humanizeTimestamp -1e20 }}",
        "{{ parseDuration \"1h\" }}",
    ];
    (0..rng.random_range(0..30)).map(|_| pick(rng, PARTS)).collect()
}

#[test]
fn templates_never_panic_or_run_away() {
    struct Q;
    impl template::Querier for Q {
        fn query(&self, _: &str) -> Result<Vec<template::QuerySample>, String> {
            Ok(vec![template::QuerySample { labels: BTreeMap::from([("host".into(), "a".into())]), value: 1.0 }])
        }
    }
    fuzz("templates", template_text, |text| {
        let Ok(t) = template::Template::parse(text) else { return };
        for value in [0.0, -1.0, 1e300, f64::NAN, f64::INFINITY, 0.001] {
            let data = template::Data {
                labels: BTreeMap::from([("host".into(), "pc2".into())]),
                value,
                querier: Some(&Q),
                ..Default::default()
            };
            let _ = t.render(&data);
        }
    });
}

#[test]
fn rule_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yml");
    fuzz(
        "rule files",
        |rng| {
            let mut s = String::from("groups:\n");
            for g in 0..rng.random_range(0..3) {
                s.push_str(&format!(
                    "  - name: g{g}\n    interval: {}\n    rules:\n",
                    pick(rng, &["15s", "0", "1y", "x", "99999999999y"])
                ));
                for r in 0..rng.random_range(0..4) {
                    let kind = pick(rng, &["alert", "record"]);
                    s.push_str(&format!("      - {kind}: r{r}\n        expr: {:?}\n", promql_text(rng, 4)));
                    if rng.random_ratio(1, 2) {
                        s.push_str(&format!("        for: {}\n", pick(rng, &["1m", "99999999999y", "-1s", "1h30m"])));
                    }
                    if rng.random_ratio(1, 2) {
                        s.push_str(&format!("        annotations:\n          a: {:?}\n", template_text(rng)));
                    }
                }
            }
            if rng.random_ratio(1, 10) {
                let mut cut = rng.random_range(0..=s.len());
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            s
        },
        |text| {
            std::fs::write(&path, text).unwrap();
            let _ = fleet_rules::rules::load_file(&path);
        },
    );
}
