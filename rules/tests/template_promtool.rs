//! Differential tests of fleet's alert templates against Prometheus itself: fleet renders
//! each template for a spread of alert values, the renders become the `exp_annotations` and
//! `exp_labels` of a promtool rule test, and `promtool test rules` (Debian's prometheus
//! package, Prometheus 2.42 built with Go 1.19) must agree byte for byte. A second test
//! checks that fleet's `check` refuses the templates Go's parser refuses, and accepts the
//! ones it accepts.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use fleet_rules::template::{self, Data, Querier, QuerySample};
use serde::Serialize;

/// Alert values: integers, fractions and the boundaries of Go's `%v` and `%.4g` exponent
/// forms, the humanize prefixes and durations, and the extremes of float64.
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "0.5",
    "1e-5",
    "0.0001",
    "0.001",
    "0.000001234",
    "100000",
    "1e6",
    "1234567",
    "1e21",
    "1e-7",
    "123456.789",
    "2.5e-10",
    "12.345",
    "99.995",
    "999.9999",
    "59.99",
    "3725",
    "86400.5",
    "1023",
    "1024",
    "1025",
    "1048576",
    "-1500",
    "0.1",
    "1e100",
    "1.7976931348623157e308",
    "5e-324",
    "-1e-300",
    "1234567890.123",
    "NaN",
    "+Inf",
    "-Inf",
];

/// Annotation templates, rendered for every value.
const TEMPLATES: &[(&str, &str)] = &[
    ("value", "{{ $value }} {{ .Value }} {{ $value | print }}"),
    ("humanize", "{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizePercentage $value }}"),
    ("duration", "{{ humanizeDuration $value }}"),
    (
        "timestamp",
        "{{ if and (ge $value -1e10) (le $value 1e10) }}{{ humanizeTimestamp $value }}|{{ toTime $value }}|\
         {{ (toTime $value).Format \"2006-01-02T15:04:05.000Z07:00 Mon Jan _2 3PM\" }}|{{ (toTime $value).Unix }}\
         {{ else }}out of range{{ end }}",
    ),
    (
        "printf_float",
        "{{ printf \"%.2f|%5.1f|%e|%g|%.4g|%08.3f|%+.1e|%x|%v|%-12.3g|\" $value $value $value $value $value $value $value $value $value $value }}",
    ),
    ("printf_misc", "{{ printf \"%d|%s|%q|%T|%6.2f%%|%.0f\" $value $value $value $value $value $value }}"),
    ("pipeline", "{{ $value | printf \"%.3f\" | printf \"[%s]\" }}{{ $value | humanize | printf \"%q\" }}"),
    (
        "compare",
        "{{ if gt $value 100.0 }}big{{ else if lt $value 0.0 }}negative{{ else if eq $value 0.0 }}zero{{ else }}small{{ end }}\
         {{ if ge $value 1.0 }} ge1{{ end }}{{ if le $value 1.0 }} le1{{ end }}{{ if ne $value 1.0 }} ne1{{ end }}\
         {{ if $value }} true{{ else }} false{{ end }}{{ if not $value }} not{{ end }}",
    ),
    ("string_of_value", "{{ humanize (printf \"%v\" $value) }}|{{ len (printf \"%v\" $value) }}"),
    ("labels", "{{ $labels.instance }} {{ .Labels.job }} [{{ $labels.missing }}] {{ $labels }} {{ len $labels }}"),
    ("range_labels", "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}{{ range $labels }}{{ . }},{{ end }}"),
    ("with", "{{ with $labels.job }}job={{ . }}{{ end }}{{ with $labels.missing }}x{{ else }} no-missing{{ end }}"),
    ("strings", "{{ title \"disk full on host_a's it-b\" }}|{{ toUpper $labels.job }}|{{ toLower \"ABC\" }}"),
    (
        "regex",
        "{{ reReplaceAll \"(.*):\\\\d+\" \"$1\" $labels.instance }}|{{ $labels.instance | reReplaceAll \"\\\\.example\\\\.com\" \"\" }}\
         |{{ reReplaceAll \"a*\" \"-\" \"baaac\" }}|{{ if match \"^host-\" $labels.instance }}host{{ end }}",
    ),
    ("host", "{{ $labels.instance | stripPort }}|{{ $labels.instance | stripDomain }}|{{ stripPort \"[::1]:80\" }}"),
    (
        "variables",
        "{{ $x := \"a\" }}{{ if true }}{{ $x = \"b\" }}{{ $y := \"c\" }}{{ $y }}{{ end }}{{ $x }}\
         {{ with $v := $value }}{{ $v }}{{ end }}{{ $ := . }}{{ $.Labels.job }}",
    ),
    (
        "query",
        "{{ range $i, $s := query \"w\" | sortByLabel \"k\" }}{{ $i }}:{{ $s.Labels.k }}={{ $s.Value }} {{ end }}\
         {{ with query \"w{k=\\\"b\\\"}\" }}{{ . | first | value | humanize }} {{ (. | first).Labels.k }} {{ . | first | label \"k\" }}{{ end }}\
         {{ with query \"nothing\" }}x{{ else }} empty{{ end }} {{ len (query \"w\") }}",
    ),
    (
        "range_control",
        "{{ range $i, $s := query \"w\" | sortByLabel \"k\" }}{{ if eq $i 1 }}{{ continue }}{{ end }}{{ if eq $i 2 }}{{ break }}{{ end }}{{ $i }}{{ end }}\
         {{ range $x := query \"nothing\" }}x{{ else }} none{{ end }}",
    ),
    (
        "builtins",
        "{{ index $labels \"job\" }} {{ slice \"abcdef\" 1 3 }} {{ index \"abc\" 1 }} {{ print 1 2 \"a\" 3 }} {{ println \"x\" 1 }}",
    ),
    (
        "escapes",
        "{{ html \"<b>&'\\\"</b>\" }} {{ js \"it's \\\"q\\\" <a>=&\" }} {{ urlquery \"a b/c?d\" }} {{ graphLink \"rate(x[5m]) > 0\" }}",
    ),
    (
        "logic",
        "{{ or $labels.missing \"default\" }} {{ and 1 0 }} {{ and \"a\" \"b\" }} {{ or 0 \"\" }} {{ eq $labels.job \"x\" \"node\" }}",
    ),
    ("trim", "a {{- /* comment */ -}} b {{- \"x\" }}   {{- 1 -}}   c {{/* c2 */}}d"),
    (
        "literals",
        "{{ 'a' }} {{ 0x1F }} {{ 1e3 }} {{ 1_000 }} {{ 0o17 }} {{ .5 }} {{ `raw\\n` }} {{ \"\\u00e9\\t|\" }} {{ true }}",
    ),
    (
        "args",
        "{{ with args 1 \"two\" 3.5 }}{{ .arg0 }}-{{ .arg1 }}-{{ .arg2 }}-{{ .arg9 }}{{ end }} {{ args 1 \"x\" }}",
    ),
    (
        "durations",
        "{{ parseDuration \"1h30m\" }} {{ parseDuration \"1y2w3d4h5m6s7ms\" }} {{ humanizeDuration \"90061\" }}",
    ),
    (
        "printf_verbs",
        "{{ printf \"%5t|%-7v|%x|%X|%#x|%o|%b|%c|%q|%U|%#U|%08.3f|% d|%+d\" true false -255 255 255 8 5 65 66 0x1F600 0x1F600 -3.14159 5 5 }}",
    ),
    (
        "printf_strings",
        "{{ printf \"%s|%10s|%-10s|%.2s|%q|%#q|%x|% X|%05s|%v\" \"héllo\" \"ab\" \"ab\" \"héllo\" \"a\\\"b\" \"ab\" \"hi\" \"hi\" \"ab\" $labels }}",
    ),
    (
        "printf_errors",
        "{{ printf \"%d|%d %d|%!|%z\" \"x\" 1 }}{{ printf \"%d\" 1 \"extra\" }}{{ printf \"%[2]d %[1]d|%*d|%.*f\" 1 2 4 7 2 3.14159 }}",
    ),
    ("printf_huge", "{{ printf \"%999999999d\" 1 }}"),
];

/// Label templates, rendered into the alert's labels.
const LABEL_TEMPLATES: &[(&str, &str)] =
    &[("severity", "{{ if gt $value 1000.0 }}page{{ else }}ticket{{ end }}"), ("shown", "v={{ $value }}")];

/// The `w` series the `query` templates read, as fleet's test querier returns them.
const W_SERIES: &[(&str, f64)] = &[("a", 1.5), ("b", 2500.0), ("c", -3.0)];

struct TestQuerier;

impl Querier for TestQuerier {
    fn query(&self, expr: &str) -> Result<Vec<QuerySample>, String> {
        let sample = |k: &str, v: f64| QuerySample {
            labels: [("__name__".to_string(), "w".to_string()), ("k".to_string(), k.to_string())].into(),
            value: v,
        };
        Ok(match expr {
            "w" => W_SERIES.iter().map(|(k, v)| sample(k, *v)).collect(),
            "w{k=\"b\"}" => vec![sample("b", 2500.0)],
            "nothing" => Vec::new(),
            other => return Err(format!("the test querier does not know {other:?}")),
        })
    }
}

#[derive(Serialize)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Serialize)]
struct Group {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Serialize)]
struct Rule {
    alert: String,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct TestFile {
    rule_files: Vec<String>,
    evaluation_interval: String,
    tests: Vec<Test>,
}

#[derive(Serialize)]
struct Test {
    interval: String,
    input_series: Vec<Series>,
    alert_rule_test: Vec<AlertTest>,
}

#[derive(Serialize)]
struct Series {
    series: String,
    values: String,
}

#[derive(Serialize)]
struct AlertTest {
    eval_time: String,
    alertname: String,
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Serialize)]
struct ExpAlert {
    exp_labels: BTreeMap<String, String>,
    exp_annotations: BTreeMap<String, String>,
}

/// Runs `promtool ARGS` in `dir`, returning whether it succeeded and what it printed.
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = match Command::new("promtool").args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool is not on PATH; install it with `apt-get install prometheus`")
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn write_yaml(path: &Path, value: &impl Serialize) {
    let text = serde_yaml::to_string(value).expect("the test files serialise");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn render(text: &str, data: &Data<'_>, what: &str) -> String {
    template::expand(text, data).unwrap_or_else(|e| panic!("fleet fails to render {what} `{text}`: {e}"))
}

#[test]
fn templates_render_as_promtool_does() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut rules = Vec::new();
    let mut series = Vec::new();
    let mut alerts = Vec::new();
    for (i, value) in VALUES.iter().enumerate() {
        let case = format!("c{i:02}");
        let instance = format!("host-{i}.example.com:9100");
        series.push(Series {
            series: format!("v{{case=\"{case}\",instance=\"{instance}\",job=\"node\"}}"),
            values: value.to_string(),
        });
        let v: f64 = match *value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().expect("the values are floats"),
        };
        // Prometheus' template data holds the series' labels, __name__ included.
        let labels: BTreeMap<String, String> =
            [("__name__", "v"), ("case", case.as_str()), ("instance", instance.as_str()), ("job", "node")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let data = Data { labels: labels.clone(), value: v, querier: Some(&TestQuerier), ..Default::default() };
        let mut exp_labels: BTreeMap<String, String> =
            labels.iter().filter(|(k, _)| *k != "__name__").map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut exp_annotations = BTreeMap::new();
        for (name, text) in LABEL_TEMPLATES {
            exp_labels.insert(name.to_string(), render(text, &data, &format!("label {name} for {value}")));
        }
        for (name, text) in TEMPLATES {
            exp_annotations.insert(name.to_string(), render(text, &data, &format!("annotation {name} for {value}")));
        }
        let alert = format!("Value{i:02}");
        rules.push(Rule {
            alert: alert.clone(),
            expr: format!("v{{case=\"{case}\"}}"),
            labels: LABEL_TEMPLATES.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: TEMPLATES.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        });
        alerts.push(AlertTest {
            eval_time: "0m".into(),
            alertname: alert,
            exp_alerts: vec![ExpAlert { exp_labels, exp_annotations }],
        });
    }
    for (k, v) in W_SERIES {
        series.push(Series { series: format!("w{{k=\"{k}\"}}"), values: v.to_string() });
    }
    write_yaml(&dir.path().join("rules.yml"), &RuleFile { groups: vec![Group { name: "templates".into(), rules }] });
    let test = TestFile {
        rule_files: vec!["rules.yml".into()],
        evaluation_interval: "1m".into(),
        tests: vec![Test { interval: "1m".into(), input_series: series, alert_rule_test: alerts }],
    };
    write_yaml(&dir.path().join("test.yml"), &test);
    let (ok, out) = promtool(dir.path(), &["test", "rules", "test.yml"]);
    assert!(ok, "promtool renders differently from fleet (exp: fleet, got: Prometheus):\n{out}");
}

/// Templates Go's parser refuses: fleet's `check` refuses them too.
const REFUSED_BY_GO: &[&str] = &[
    "{{ $nope }}",
    "{{ nofunc 1 }}",
    "{{ if true }}x",
    "{{ end }}",
    "{{ else }}",
    "{{ if }}x{{ end }}",
    "{{ range }}x{{ end }}",
    "{{ with 1 }}{{ else if 2 }}{{ end }}",
    "{{ break }}",
    "{{ range . }}{{ else }}{{ break }}{{ end }}",
    "{{ 1 | 2 }}",
    "{{ \"a\" | \"b\" }}",
    "{{ $x, $y := 1 }}",
    "{{ range $a, $b, $c := . }}{{ end }}",
    "{{ . | nil }}",
    "{{ (1 }}",
    "{{ 1) }}",
    "{{ \"unterminated }}",
    "{{ 3k }}",
    "{{ 089 }}",
    "{{ 99999999999999999999 }}",
    "{{ \"\\q\" }}",
    "{{ 'ab' }}",
    "{{ /* x */ }}",
    "{{/* unclosed }}",
    "{{ .A.b.(c) }}",
    "{{ 1.Field }}",
    "{{ $x := 1 }}{{ if true }}{{ $y := 2 }}{{ end }}{{ $y }}",
    "{{ a=1 }}",
];

/// Templates Go's parser accepts but that fail whenever they run: fleet's `check` refuses
/// them, and promtool's render of each is an error.
const ALWAYS_FAIL: &[&str] = &[
    "{{ nil | print }}",
    "{{ title 3 }}",
    "{{ humanize 1 2 }}",
    "{{ \"x\" | humanize 1 }}",
    "{{ first 1 }}",
    "{{ \"a\" 1 }}",
    "{{ $labels 1 }}",
    "{{ match \"(\" \"x\" }}",
    "{{ 18446744073709551615 }}",
    "{{ label nil nil }}",
    "{{ printf 1 }}",
    "{{ query }}",
    "{{ print humanize }}",
    "{{ (1) 2 }}",
    "{{ eq 1 }}",
];

/// Templates Go's parser accepts that fleet's `check` accepts too.
const ACCEPTED: &[&str] = &[
    "{{ 1 | }}",
    "{{ $x := $x }}",
    "{{ $x:=1 }}{{ $x }}",
    "{{ if true }}{{ $y := 1 }}{{ else }}{{ $y }}{{ end }}",
    "{{ range $i, $e := . }}{{ $i }}{{ end }}",
    "{{ range $e := . }}{{ $e }}{{ break }}{{ continue }}{{ end }}",
    "{{ with $x := 1 }}{{ $x }}{{ else }}{{ $x }}{{ end }}",
    "{{ if 1 }}{{ else if 2 }}{{ else if 3 }}{{ else }}{{ end }}",
    "{{- 3 -}}",
    "{{ (1) }}{{ (.Labels).a }}{{ (query \"x\" | first).Labels.a }}",
    "{{ $ }}{{ $.Labels }}",
    "{{ print nil }}",
    "{{ .Labels.In }}{{ $labels.Location }}",
];

fn rule_file(list: &[&str]) -> RuleFile {
    let annotations = list.iter().enumerate().map(|(i, t)| (format!("t{i:02}"), t.to_string())).collect();
    RuleFile {
        groups: vec![Group {
            name: "g".into(),
            rules: vec![Rule { alert: "A".into(), expr: "up".into(), labels: BTreeMap::new(), annotations }],
        }],
    }
}

#[test]
fn check_refuses_what_go_refuses() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // promtool reports every template of a rule that fails to parse.
    write_yaml(&dir.path().join("refused.yml"), &rule_file(REFUSED_BY_GO));
    let (_, out) = promtool(dir.path(), &["check", "rules", "refused.yml"]);
    for (i, text) in REFUSED_BY_GO.iter().enumerate() {
        assert!(
            out.contains(&format!("\"t{i:02}\"")),
            "promtool accepts `{text}`, which this test says Go refuses:\n{out}"
        );
        assert!(template::check(text).is_err(), "fleet accepts `{text}`, which Go refuses:\n{out}");
    }
    write_yaml(&dir.path().join("accepted.yml"), &rule_file(ACCEPTED));
    let (ok, out) = promtool(dir.path(), &["check", "rules", "accepted.yml"]);
    assert!(ok, "promtool refuses a template this test says Go accepts:\n{out}");
    for text in ACCEPTED {
        template::check(text).unwrap_or_else(|e| panic!("fleet refuses `{text}`, which Go accepts: {e}"));
    }
}

#[test]
fn what_always_fails_in_go_loads_and_fails_when_rendered() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_yaml(&dir.path().join("rules.yml"), &rule_file(ALWAYS_FAIL));
    let (ok, out) = promtool(dir.path(), &["check", "rules", "rules.yml"]);
    assert!(ok, "promtool refuses a template this test says Go parses:\n{out}");
    // An alert expecting no annotations makes promtool print the ones it rendered.
    let test = TestFile {
        rule_files: vec!["rules.yml".into()],
        evaluation_interval: "1m".into(),
        tests: vec![Test {
            interval: "1m".into(),
            input_series: vec![Series { series: "up".into(), values: "1".into() }],
            alert_rule_test: vec![AlertTest {
                eval_time: "0m".into(),
                alertname: "A".into(),
                exp_alerts: vec![ExpAlert { exp_labels: BTreeMap::new(), exp_annotations: BTreeMap::new() }],
            }],
        }],
    };
    write_yaml(&dir.path().join("test.yml"), &test);
    let (_, out) = promtool(dir.path(), &["test", "rules", "test.yml"]);
    for (i, text) in ALWAYS_FAIL.iter().enumerate() {
        let failed = format!("t{i:02}=\"<error expanding template");
        assert!(out.contains(&failed), "promtool renders `{text}`, which this test says always fails:\n{out}");
        // Loaded as promtool loads it, failing when it renders as it fails there.
        template::check(text).unwrap_or_else(|e| panic!("fleet refuses `{text}`, which promtool loads: {e}"));
        assert!(template::expand(text, &template::Data::default()).is_err(), "fleet renders `{text}`");
    }
}
