//! Tests of parsing, checking and rendering, construct by construct, against what Go's
//! text/template and Prometheus produce (the expected strings were confirmed with promtool
//! 2.42; `tests/template_promtool.rs` compares against it directly), plus the bounds and a
//! sweep of malformed input that must never panic.

use super::*;

fn data(value: f64) -> Data<'static> {
    Data {
        labels: [("instance".to_string(), "a".to_string()), ("job".to_string(), "node".to_string())].into(),
        value,
        external_labels: [("dc".to_string(), "x".to_string())].into(),
        external_url: "https://prom.example.com/sub/path".into(),
        timestamp: 1_234_567_890.5,
        querier: None,
    }
}

fn ok(text: &str, d: &Data<'_>) -> String {
    expand(text, d).unwrap_or_else(|e| panic!("`{text}` fails: {e}"))
}

fn err(text: &str, d: &Data<'_>) -> String {
    match expand(text, d) {
        Ok(out) => panic!("`{text}` renders {out:?} instead of failing"),
        Err(e) => e,
    }
}

struct Fixed;

impl Querier for Fixed {
    fn query(&self, expr: &str) -> Result<Vec<QuerySample>, String> {
        let s = |i: &str, v: f64| QuerySample {
            labels: [("__name__".to_string(), "up".to_string()), ("instance".to_string(), i.to_string())].into(),
            value: v,
        };
        match expr {
            "up" => Ok(vec![s("b", 1.0), s("a", 0.0)]),
            "none" => Ok(Vec::new()),
            _ => Err(format!("bad query {expr:?}")),
        }
    }
}

#[test]
fn the_prometheus_idioms() {
    let d = data(250.0);
    assert_eq!(ok("{{ $labels.instance }} uses {{ $value }}", &d), "a uses 250");
    assert_eq!(ok("{{ if gt $value 200.0 }}critical{{ else }}warning{{ end }}", &d), "critical");
    assert_eq!(ok("{{ if lt $value 100.0 }}low{{ else if lt $value 300.0 }}mid{{ else }}high{{ end }}", &d), "mid");
    assert_eq!(ok("{{ $externalLabels.dc }}/{{ .Labels.instance }}/{{ .ExternalLabels.dc }}", &d), "x/a/x");
    assert_eq!(ok("{{ printf \"%.2f\" $value }}", &d), "250.00");
    assert_eq!(ok("{{ $value | humanize }}", &data(1234567.0)), "1.235M");
    assert_eq!(ok("{{ humanizePercentage 0.1234 }}", &d), "12.34%");
    assert_eq!(ok("{{ humanizeDuration 3725 }}", &d), "1h 2m 5s");
    assert_eq!(ok("{{ \"disk full\" | title }} {{ toUpper \"x\" }}", &d), "Disk Full X");
    assert_eq!(ok("a {{- \" b \" -}} c", &d), "a b c");
    assert_eq!(ok("{{ $value }}", &data(0.95)), "0.95");
    assert_eq!(ok("{{ $value }}", &data(1e-7)), "1e-07");
    assert_eq!(ok("{{ .Value }} {{ $labels.missing }}|", &d), "250 |");
}

#[test]
fn values_print_as_go_prints_them() {
    for (v, want) in [
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (100000.0, "100000"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (f64::NAN, "NaN"),
    ] {
        assert_eq!(go_float(v), want);
        assert_eq!(ok("{{ $value }}", &data(v)), want);
    }
    let d = data(1.0);
    assert_eq!(ok("{{ . }}", &d), "{map[instance:a job:node] map[dc:x] https://prom.example.com/sub/path 1}");
    assert_eq!(
        ok("{{ $labels }} {{ true }} {{ 'a' }} {{ 0x1F }} {{ 1e3 }} {{ -0 }} {{ 1_000 }}", &d),
        "map[instance:a job:node] true 97 31 1000 0 1000"
    );
    assert_eq!(ok("{{ \"\\x41\\u00e9\\101\\t|\" }}{{ `raw\\n` }}", &d), "AéA\t|raw\\n");
    assert_eq!(
        ok("{{ (args).nothing }}|{{ print (args).nothing }}|{{ html (args).nothing }}", &d),
        "<no value>|<nil>|&lt;no value&gt;"
    );
}

#[test]
fn conditionals_follow_go_truth() {
    let d = data(0.0);
    assert_eq!(ok("{{ if $value }}t{{ else }}f{{ end }}", &d), "f");
    assert_eq!(ok("{{ if $value }}t{{ else }}f{{ end }}", &data(f64::NAN)), "t");
    assert_eq!(
        ok("{{ if \"\" }}t{{ else }}f{{ end }}{{ if (args) }}t{{ else }}f{{ end }}{{ if $labels }}t{{ end }}", &d),
        "fft"
    );
    assert_eq!(
        ok("{{ if and 1 0 }}t{{ else }}f{{ end }}{{ and 1 0 \"x\" }}|{{ or 0 \"\" \"y\" }}|{{ not 0 }}", &d),
        "f0|y|true"
    );
    // `and` and `or` stop at the first deciding argument: the query is never run.
    assert_eq!(ok("{{ or 1 (query \"up\") }}|{{ and 0 (query \"up\") }}", &d), "1|0");
    assert_eq!(ok("{{ if eq $labels.job \"x\" \"node\" }}yes{{ end }}", &d), "yes");
}

#[test]
fn comparisons_follow_go_kinds() {
    let d = data(5.0);
    assert!(err("{{ gt $value 1 }}", &d).contains("error calling gt: incompatible types for comparison"));
    assert_eq!(
        ok("{{ gt $value 1.0 }} {{ lt 1 2 }} {{ le \"a\" \"b\" }} {{ ge 2 2 }} {{ ne 1 2 }}", &d),
        "true true true true true"
    );
    assert_eq!(ok("{{ eq 1 2 1 }} {{ eq \"a\" nil }} {{ eq (index \"a\" 0) 97 }}", &d), "true false true");
    // Go's gt is "not le", so NaN is greater than everything.
    assert_eq!(ok("{{ gt $value 1.0 }} {{ lt $value 1.0 }}", &data(f64::NAN)), "true false");
    assert!(err("{{ lt true false }}", &d).contains("invalid type for comparison"));
    assert!(err("{{ eq $labels $labels }}", &d).contains("non-comparable"));
}

#[test]
fn with_range_and_variables() {
    let d = data(2.0);
    assert_eq!(
        ok("{{ with $labels.job }}job={{ . }}{{ end }}{{ with $labels.nope }}x{{ else }} none{{ end }}", &d),
        "job=node none"
    );
    assert_eq!(ok("{{ with $labels.nope }}a{{ else with $labels.job }}{{ . }}{{ else }}c{{ end }}", &d), "node");
    assert_eq!(ok("{{ with $x := 5 }}{{ $x }}{{ . }}{{ end }}", &d), "55");
    assert_eq!(ok("{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}", &d), "instance=a;job=node;");
    assert_eq!(
        ok("{{ range $labels }}{{ . }},{{ end }}{{ range $v := $labels }}{{ $v }}{{ end }}", &d),
        "a,node,anode"
    );
    assert_eq!(ok("{{ range (args) }}x{{ else }}empty{{ end }}", &d), "empty");
    assert_eq!(ok("{{ range $i, $e := args 1 \"b\" 3.5 }}{{ $i }}={{ $e }};{{ end }}", &d), "arg0=1;arg1=b;arg2=3.5;");
    // Assignment reaches the outer variable; a declaration ends at its block's end.
    assert_eq!(ok("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ $y }}{{ end }}{{ $x }}", &d), "32");
    assert_eq!(ok("{{ $x := 1 }}{{ range $labels }}{{ $x := . }}{{ end }}{{ $x }}", &d), "1");
    assert_eq!(ok("{{ $ := $labels }}{{ $.job }}", &d), "node");
    assert!(check("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}").unwrap_err().contains("undefined variable \"$y\""));
    // Go's parser sees a variable declared in an `if` branch from its `else`; at run time
    // it is not there.
    assert!(err("{{ if false }}{{ $y := 1 }}{{ else }}{{ $y }}{{ end }}", &d).contains("undefined variable: $y"));
    assert!(err("{{ range 5 }}{{ end }}", &d).contains("range can't iterate over 5"));
    assert!(err("{{ $x = 1 }}", &d).contains("undefined variable: $x"));
}

#[test]
fn queries() {
    let mut d = data(1.0);
    assert!(err("{{ query \"up\" }}", &d).contains("query is not available here"));
    d.querier = Some(&Fixed);
    assert_eq!(ok("{{ range query \"up\" }}{{ .Labels.instance }}={{ .Value }} {{ end }}", &d), "b=1 a=0 ");
    assert_eq!(ok("{{ range query \"up\" | sortByLabel \"instance\" }}{{ .Labels.instance }}{{ end }}", &d), "ab");
    // sortByLabel sorts in place: a later use of the same result sees the order.
    assert_eq!(
        ok(
            "{{ $r := query \"up\" }}{{ $s := sortByLabel \"instance\" $r }}{{ range $r }}{{ .Labels.instance }}{{ end }}",
            &d
        ),
        "ab"
    );
    assert_eq!(ok("{{ with query \"none\" }}x{{ else }}empty{{ end }} {{ len (query \"up\") }}", &d), "empty 2");
    assert_eq!(
        ok(
            "{{ (query \"up\" | first).Labels.instance }}|{{ query \"up\" | first | value }}|{{ query \"up\" | first | label \"instance\" }}",
            &d
        ),
        "b|1|b"
    );
    assert_eq!(
        ok("{{ query \"up\" | first }}|{{ index (query \"up\") 1 }}", &d),
        "{map[__name__:up instance:b] 1}|{map[__name__:up instance:a] 0}"
    );
    assert_eq!(ok("{{ range $i, $s := query \"up\" }}{{ if eq $i 1 }}{{ break }}{{ end }}{{ $i }}{{ end }}", &d), "0");
    assert_eq!(
        ok("{{ range $i, $s := query \"up\" }}{{ if eq $i 0 }}{{ continue }}{{ end }}{{ $i }}{{ end }}", &d),
        "1"
    );
    assert!(err("{{ query \"none\" | first }}", &d).contains("first() called on vector with no elements"));
    assert!(err("{{ query \"bad\" }}", &d).contains("error calling query: bad query"));
    let many = "{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ query \"up\" }}{{ end }}{{ end }}{{ end }}{{ end }}{{ end }}{{ end }}{{ end }}";
    assert!(err(many, &d).contains("at most 100 queries"));
}

#[test]
fn pipelines_pass_the_last_argument() {
    let d = data(3.14259);
    assert_eq!(ok("{{ \"x\" | printf \"%s-%s\" \"y\" }}", &d), "y-x");
    assert_eq!(ok("{{ $value | printf \"%.3f\" | printf \"[%s]\" }}", &d), "[3.143]");
    assert_eq!(ok("{{ 1 | }}", &d), "1");
    assert_eq!(ok("{{ (printf \"%d\" 5) }}{{ (.Labels).job }}", &d), "5node");
    assert!(err("{{ .Labels.job.x }}", &d).contains("can't evaluate field x in type string"));
    assert!(err("{{ .Nope }}", &d).contains("can't evaluate field Nope in type struct"));
    assert!(err("{{ \"x\" | .Labels.job }}", &d).contains("job is not a method but has arguments"));
    assert!(err("{{ $value | title }}", &d).contains("wrong type for value; expected string; got float64"));
    assert!(err("{{ title (safeHtml \"x\") }}", &d).contains("expected string; got template.HTML"));
}

#[test]
fn builtins() {
    let d = data(1.0);
    assert_eq!(
        ok(
            "{{ len \"héllo\" }} {{ index $labels \"job\" }} {{ index \"abc\" 1 }} {{ slice \"hello\" 1 3 }} {{ slice \"hello\" 2 }}",
            &d
        ),
        "6 node 98 el llo"
    );
    assert_eq!(ok("{{ print 1 2 \"a\" 3 \"b\" \"c\" 4 5 }}|{{ println 1 \"a\" }}", &d), "1 2a3bc4 5|1 a\n");
    assert_eq!(
        ok("{{ html \"<a&\\\"'>\" }} {{ js \"a<b>&=c'\\\"\" }} {{ urlquery \"a b&c\" }}", &d),
        "&lt;a&amp;&#34;&#39;&gt; a\\u003Cb\\u003E\\u0026\\u003Dc\\'\\\" a+b%26c"
    );
    assert!(err("{{ index \"abc\" 5 }}", &d).contains("index out of range: 5"));
    assert!(err("{{ len 3 }}", &d).contains("len of type int"));
    assert!(err("{{ slice \"abc\" 2 1 }}", &d).contains("invalid slice index: 2 > 1"));
}

#[test]
fn printf_follows_go_fmt() {
    let d = data(1.0);
    let cases = [
        (
            "{{ printf \"%5.1f|%-10s|%05d|%+.2e|%x|%v|%d|%s\" 3.14159 \"ab\" -42 12345.678 1.5 (args 1 \"a\") 1.5 }}",
            "  3.1|ab        |-0042|+1.23e+04|0x1.8p+00|map[arg0:1 arg1:a]|%!d(float64=1.5)|%!s(MISSING)",
        ),
        (
            "{{ printf \"%0.0f|%.4g|%g|%e|%E\" 2.5 123456.0 1e21 1e-7 1e21 }}",
            "2|1.235e+05|1e+21|1.000000e-07|1.000000E+21",
        ),
        (
            "{{ printf \"%x %X %#x % x %q %#q %U %c\" 255 255 255 \"hi\" \"a\\tb\" \"ab\" 0x1F600 65 }}",
            "ff FF 0xff 68 69 \"a\\tb\" `ab` U+1F600 A",
        ),
        ("{{ printf \"%t|%5t|%v|%q\" true false nil 'x' }}", "true|false|<nil>|'x'"),
        (
            "{{ printf \"%T %T %T %T %T\" 1 \"a\" 1.5 $labels (safeHtml \"x\") }}",
            "int string float64 map[string]string template.HTML",
        ),
        ("{{ printf \"%6.2f%%\" 99.5 }}", " 99.50%"),
        ("{{ printf \"%999999999d\" 1 }}", "%!(NOVERB)%!(EXTRA int=1)"),
        ("{{ printf \"%*d|%-*d|%.*f\" 4 7 3 1 2 3.14159 }}", "   7|1  |3.14"),
        // After %[1]d the next argument is the second: Go's rule, confirmed by promtool.
        ("{{ printf \"%[2]d %[1]d|%*d|%.*f\" 1 2 4 7 2 3.14159 }}", "2 1| 4|%!f(int=0000002)"),
    ];
    for (text, want) in cases {
        assert_eq!(ok(text, &d), want, "{text}");
    }
    // A width is capped at 10^6 by Go; the output limit then applies.
    assert!(err("{{ printf \"%1000000d%1000000d\" 1 2 }}", &d).contains("exceeds the limit"));
}

#[test]
fn prometheus_functions() {
    let d = data(1.0);
    assert_eq!(
        ok("{{ humanize 0 }}|{{ humanize 0.001234 }}|{{ humanize \"1234.5\" }}|{{ humanize -1500 }}", &d),
        "0|1.234m|1.234k|-1.5k"
    );
    assert_eq!(
        ok("{{ humanize1024 0.5 }}|{{ humanize1024 0.001 }}|{{ humanize1024 1048576 }}|{{ humanize1024 1025 }}", &d),
        "0.5|0.001|1Mi|1.001ki"
    );
    assert_eq!(
        ok(
            "{{ humanizeDuration 0.000001234 }}|{{ humanizeDuration 59.99 }}|{{ humanizeDuration 86400.5 }}|{{ humanizeDuration -0.5 }}",
            &d
        ),
        "1.234us|59.99s|1d 0h 0m 0s|-500ms"
    );
    assert_eq!(
        ok("{{ humanizePercentage 0.5 }}|{{ humanizeTimestamp 1234567890.1239 }}", &d),
        "50%|2009-02-13 23:31:30.123 +0000 UTC"
    );
    assert!(err("{{ humanize \"abc\" }}", &d).contains("strconv.ParseFloat: parsing \"abc\": invalid syntax"));
    assert!(err("{{ humanize $labels }}", &d).contains("can't convert map[string]string to float"));
    assert!(err("{{ humanize (index \"a\" 0) }}", &d).contains("can't convert uint8 to float"));
    assert_eq!(
        ok("{{ reReplaceAll \"(\\\\w+)@(\\\\w+)\" \"$2 at ${1}x $1x $$\" \"joe@home\" }}", &d),
        "home at joex  $"
    );
    assert_eq!(
        ok("{{ reReplaceAll \"a*\" \"-\" \"baaac\" }}|{{ match \"^a.c$\" \"abc\" }}|{{ match \"\\\\d\" \"٣\" }}", &d),
        "-b-c-|true|false"
    );
    assert_eq!(ok("{{ $p := \"^a\" }}{{ match $p \"abc\" }}", &d), "true");
    assert!(err("{{ $p := \"(\" }}{{ match $p \"abc\" }}", &d).contains("invalid regular expression"));
    assert_eq!(
        ok(
            "{{ stripPort \"a:9100\" }}|{{ stripPort \"[::1]:80\" }}|{{ stripPort \"x\" }}|{{ stripDomain \"a.b.c:80\" }}",
            &d
        ),
        "a|::1|x|a:80"
    );
    assert_eq!(
        ok("{{ graphLink \"up == 0\" }}|{{ tableLink \"up\" }}", &d),
        "/graph?g0.expr=up+%3D%3D+0&g0.tab=0|/graph?g0.expr=up&g0.tab=1"
    );
    assert_eq!(
        ok("{{ parseDuration \"1h30m\" }}|{{ parseDuration \"1y2w3d4h5m6s7ms\" }}", &d),
        "5400|3.3019506007e+07"
    );
    assert_eq!(
        ok("{{ externalURL }}|{{ pathPrefix }}|{{ $externalURL }}|{{ .ExternalURL }}", &d),
        "https://prom.example.com/sub/path|/sub/path|https://prom.example.com/sub/path|https://prom.example.com/sub/path"
    );
    assert_eq!(
        ok(
            "{{ now }}|{{ urlUnescape \"a%20b+c\" }}|{{ safeHtml \"<b>\" }}|{{ with args 1 \"x\" }}{{ .arg1 }}{{ end }}",
            &d
        ),
        "1.2345678905e+09|a b c|<b>|x"
    );
    assert_eq!(ok("{{ strvalue (query \"x\" | first) }}", &Data { querier: Some(&StrValue), ..data(1.0) }), "ok");
}

struct StrValue;

impl Querier for StrValue {
    fn query(&self, _: &str) -> Result<Vec<QuerySample>, String> {
        Ok(vec![QuerySample { labels: [("__value__".to_string(), "ok".to_string())].into(), value: 0.0 }])
    }
}

#[test]
fn times_and_durations() {
    let d = data(1.0);
    assert_eq!(ok("{{ toTime 1234567890.5 }}", &d), "2009-02-13 23:31:30.5 +0000 UTC");
    assert_eq!(
        ok(
            "{{ with toTime 1234567890 }}{{ .Format \"2006-01-02 Mon 3PM\" }}|{{ .Year }}|{{ .Month }}|{{ .Weekday }}|{{ .Unix }}|{{ .YearDay }}{{ end }}",
            &d
        ),
        "2009-02-13 Fri 11PM|2009|February|Friday|1234567890|44"
    );
    assert_eq!(
        ok(
            "{{ (toTime 0).Add 1500000000 }}|{{ ((toTime 90).Sub (toTime 0)).Minutes }}|{{ (toTime 0).AddDate 0 1 30 }}",
            &d
        ),
        "1970-01-01 00:00:01.5 +0000 UTC|1.5|1970-03-03 00:00:00 +0000 UTC"
    );
    assert_eq!(
        ok(
            "{{ toDuration 90.5 }}|{{ (toDuration 0.0015).String }}|{{ (toDuration 3600).Hours }}|{{ ((toDuration 95).Round 60000000000) }}",
            &d
        ),
        "1m30.5s|1.5ms|1|2m0s"
    );
    assert_eq!(
        ok("{{ printf \"%v|%s|%#v\" (toTime 0) (toDuration 1) (toTime 0) }}", &d),
        "1970-01-01 00:00:00 +0000 UTC|1s|time.Date(1970, time.January, 1, 0, 0, 0, 0, time.UTC)"
    );
    // Prometheus' converter takes durations but not pointers to them.
    assert!(err("{{ humanizeDuration (toDuration 5) }}", &d).contains("can't convert *time.Duration to float"));
    assert!(err("{{ toTime \"NaN\" }}", &d).contains("value is NaN or Inf"));
    assert!(err("{{ (toTime 0).Clock }}", &d).contains("with 3 results"));
    assert!(check("{{ (toTime 0).Local }}").unwrap_err().contains("the time method .Local is not supported"));
    // After .Labels a name is a label, whatever it is called.
    assert_eq!(ok("[{{ $labels.Local }}{{ .Labels.In }}]", &d), "[]");
}

#[test]
fn check_refuses_what_cannot_render() {
    for (text, want) in [
        ("{{ $nope }}", "undefined variable \"$nope\""),
        ("{{ nofunc 1 }}", "function \"nofunc\" not defined"),
        ("{{ if true }}x", "unexpected EOF"),
        ("{{ end }}", "unexpected {{end}}"),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ("{{ define \"x\" }}y{{ end }}", "{{define}} is not supported"),
        ("{{ template \"x\" }}", "{{template}} is not supported"),
        ("{{ block \"x\" . }}y{{ end }}", "{{block}} is not supported"),
        ("{{ call 1 }}", "\"call\" is not supported"),
        ("{{ 1+2i }}", "complex number 1+2i is not supported"),
        ("{{ with 1 }}{{ else if 2 }}{{ end }}", "unexpected <if> in input"),
        ("{{ 1 | 2 }}", "non executable command in pipeline stage 2"),
    ] {
        let e = check(text).expect_err(text);
        assert!(e.contains(want), "`{text}`: {e}");
    }
    // What Go finds only when the command runs loads (promtool accepts it) and fails the
    // render, as in Prometheus.
    let d = data(1.0);
    for (text, want) in [
        ("{{ humanize 1 2 }}", "wrong number of args for humanize: want 1 got 2"),
        ("{{ 1 | humanize 2 }}", "wrong number of args for humanize: want 1 got 2"),
        ("{{ printf }}", "wrong number of args for printf: want at least 1 got 0"),
        ("{{ value }}", "wrong number of args for value: want 1 got 0"),
        ("{{ title 3 }}", "expected string; found 3"),
        ("{{ first 1 }}", "can't handle 1 for arg of type template.queryResult"),
        ("{{ \"a\" 1 }}", "can't give argument to non-function \"a\""),
        ("{{ nil }}", "nil is not a command"),
        ("{{ 18446744073709551615 }}", "18446744073709551615 overflows int"),
        ("{{ match \"(\" \"x\" }}", "invalid regular expression"),
        ("{{ print humanize }}", "wrong number of args for humanize: want 1 got 0"),
        ("{{ eq 1 }}", "missing argument for comparison"),
    ] {
        assert!(check(text).is_ok(), "`{text}` must load: {:?}", check(text));
        let e = expand(text, &d).expect_err(text);
        assert!(e.contains(want), "`{text}`: {e}");
    }
    // Messages say where: line and column.
    assert_eq!(check("a\n  {{ nofunc }}").unwrap_err(), "2:6: function \"nofunc\" not defined");
}

#[test]
fn a_template_parses_once_and_renders_many_times() {
    let t = Template::parse("{{ $labels.instance }}={{ $value | humanize }}").unwrap();
    assert_eq!(t.render(&data(1500.0)).unwrap(), "a=1.5k");
    let mut other = data(0.002);
    other.labels.insert("instance".into(), "b".into());
    assert_eq!(t.render(&other).unwrap(), "b=2m");
}

#[test]
fn bounds() {
    let d = data(1.0);
    let nested = |n: usize| format!("{}x{}", "{{ if true }}".repeat(n), "{{ end }}".repeat(n));
    assert_eq!(ok(&nested(MAX_NESTING), &d), "x");
    assert!(check(&nested(MAX_NESTING + 1)).unwrap_err().contains("nesting exceeds the limit of 100"));
    let parens = |n: usize| format!("{{{{ {}1{} }}}}", "(".repeat(n), ")".repeat(n));
    assert_eq!(ok(&parens(MAX_NESTING), &d), "1");
    assert!(check(&parens(MAX_NESTING + 1)).is_err());
    // Long else-if chains cost no depth.
    let chain = format!("{{{{ if false }}}}{}{{{{ else }}}}z{{{{ end }}}}", "{{ else if false }}".repeat(1000));
    assert_eq!(ok(&chain, &d), "z");
    // Doubling a string runs into the size limit, not out of memory.
    let doubling = format!("{{{{ $s := \"ab\" }}}}{}{{{{ $s }}}}", "{{ $s = printf \"%s%s\" $s $s }}".repeat(30));
    assert!(err(&doubling, &d).contains("exceeds the limit"));
    let wide = format!("{}{{{{ printf \"%1000000d\" 1 }}}}", "x".repeat(100_000));
    assert!(err(&wide, &d).contains("output exceeds the limit of 1048576 bytes"));
    // Nested ranges over the labels: 2^20 iterations stop at the step limit.
    let ranges = format!("{}.{}", "{{ range args 1 2 3 4 }}".repeat(10), "{{ end }}".repeat(10));
    assert!(err(&ranges, &d).contains("steps"));
}

#[test]
fn odd_input_never_panics() {
    let d = Data { querier: Some(&Fixed), ..data(1.0) };
    let odd = [
        "{{",
        "}}",
        "{{ }}",
        "{{-}}",
        "{{- -}}",
        "{{ end }}",
        "{{ else }}",
        "{{ if }}",
        "{{ range $i, := . }}{{ end }}",
        "{{ $ }}",
        "{{ $$ }}",
        "{{ .. }}",
        "{{ .1 }}",
        "{{ ( }}",
        "{{ ) }}",
        "{{ | }}",
        "{{ \"\\",
        "{{ '",
        "{{ `",
        "{{/*",
        "{{/**/",
        "{{ printf \"%999999999d\" 1 }}",
        "{{ printf \"%.999999999f\" 1.0 }}",
        "{{ printf \"%[999999999999]d\" 1 }}",
        "{{ printf \"%-*d\" 1000001 1 }}",
        "{{ printf \"%\" }}",
        "{{ printf \"%.\" }}",
        "{{ printf \"%[\" }}",
        "{{ printf \"%[1\" 1 }}",
        "{{ printf \"%x\" -9223372036854775808 }}",
        "{{ index (query \"up\") -1 }}",
        "{{ slice \"é\" 1 }}",
        "{{ humanizeDuration 1e308 }}",
        "{{ toTime 1e300 }}",
        "{{ toDuration -1e300 }}",
        "{{ (toTime -1e10).AddDate 1000000000 1000000000 1000000000 }}",
        "{{ (toTime 0).Round -5 }}",
        "{{ ((toTime 0).Sub (toTime 1e9)).Round 7 }}",
        "{{ reReplaceAll \"(a{1000}){1000}\" \"\" \"x\" }}",
        "{{ 0x }}",
        "{{ 0x1p }}",
        "{{ 1e }}",
        "{{ '\\U0011ffff' }}",
        "{{ \"\\777\" }}",
        "\u{0}{{ \"\u{0}\" }}\u{7f}",
        "{{ range $k, $v := query \"up\" }}{{ $k.Labels }}{{ end }}",
        "{{ (1).X }}",
        "{{ nil.X }}",
        "{{ (nil).X }}",
        "{{ $.X.Y.Z }}",
        "{{ parseDuration \"99999999999999999999y\" }}",
    ];
    for text in odd {
        let _ = expand(text, &d);
    }
    // And a deterministic sweep of token soup.
    let tokens = [
        "{{", "}}", "{{- ", " -}}", " ", "(", ")", "|", "$x", "$", ":=", "=", ".", ".Labels", ".a", "if", "else",
        "end", "range", "with", "break", "continue", "1", "1.5", "\"s\"", "`r`", "nil", "true", "printf", "\"%d\"",
        "len", "index", "query", "\"up\"", "first", "humanize", "eq", "and", "x", ",", "/*", "*/", "'a'", "-",
        "$labels",
    ];
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..(seed % 24) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(tokens[(seed % tokens.len() as u64) as usize]);
        }
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        if let Ok(t) = Template::parse(&text) {
            let _ = t.render(&d);
        }
    }
}

#[test]
fn data_debug_hides_the_querier() {
    let d = Data { querier: Some(&Fixed), ..data(1.0) };
    assert!(format!("{d:?}").contains("querier: Some(\"...\")"));
}

#[test]
fn templates_can_be_shared_between_threads() {
    // Rule state holding parsed templates may be shared by the coordinator's tasks.
    fn shareable<T: Send + Sync>() {}
    shareable::<Template>();
}
