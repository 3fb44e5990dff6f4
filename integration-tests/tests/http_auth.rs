//! The HTTP port behind TLS and credentials (docs/design.md §11), checked with the clients operators
//! use: curl, and promtool with a Prometheus `--http.config.file`. Without credentials the
//! query API and the status page answer 401; `public_paths` stay open for scrapers and probes.

use std::process::Command;
use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, run, serial, toml_string};

/// curl ARGS against `url`: (HTTP status, body). Status 0 when no HTTP answer came.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let out = run(Command::new("curl").args(["-s", "--max-time", "20", "-w", "\n%{http_code}"]).args(args).arg(url));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_port_wants_credentials_except_on_public_paths() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    let files = c.pki.files("coordinator");
    let hash = {
        let mut child = Command::new(fleet_integration_tests::bin("fleetctl"))
            .args(["hash-password", "--cost", "6"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let token_hash = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(b"grafana-token");
        format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    let http_extra = format!(
        "bearer_tokens = [\"{token_hash}\"]\n[http.tls]\ncert = {}\nkey = {}\n[http.basic_auth_users]\nprometheus = \"{hash}\"\n",
        toml_string(files.cert.to_str().unwrap()),
        toml_string(files.key.to_str().unwrap()),
    );
    c.start_coordinator(CoordinatorOpts { http_extra, ..Default::default() }).await;
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["pc2"], Duration::from_secs(15)).await;
    let base = format!("https://{}", c.http);
    let ca = files.ca.to_str().unwrap().to_string();
    let query = format!("{base}/api/v1/query?query=fleet_agent_up");

    // Without credentials: 401 with a challenge, for the API and the status page.
    for path in ["/api/v1/query?query=fleet_agent_up", "/", "/api/v1/rules", "/health"] {
        let (code, body) = curl(&format!("{base}{path}"), &["--cacert", &ca]);
        assert_eq!(code, 401, "{path}: {body}");
    }
    let out = run(Command::new("curl").args(["-s", "-o", "/dev/null", "-D", "-", "--cacert", &ca, &query]));
    assert!(String::from_utf8_lossy(&out.stdout).to_lowercase().contains("www-authenticate: basic realm=\"fleet\""));
    // Wrong credentials: 401.
    assert_eq!(curl(&query, &["--cacert", &ca, "-u", "prometheus:wrong"]).0, 401);
    assert_eq!(curl(&query, &["--cacert", &ca, "-u", "nobody:s3cret"]).0, 401);
    assert_eq!(curl(&query, &["--cacert", &ca, "-H", "Authorization: Bearer other"]).0, 401);
    // With them: served.
    let (code, body) = curl(&query, &["--cacert", &ca, "-u", "prometheus:s3cret"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"host\":\"pc2\""), "{body}");
    assert_eq!(curl(&format!("{base}/"), &["--cacert", &ca, "-u", "prometheus:s3cret"]).0, 200);
    assert_eq!(curl(&query, &["--cacert", &ca, "-H", "Authorization: Bearer grafana-token"]).0, 200);
    // Public paths need nothing.
    for path in ["/metrics", "/health/live", "/health/ready"] {
        assert_eq!(curl(&format!("{base}{path}"), &["--cacert", &ca]).0, 200, "{path}");
    }
    // Plain HTTP gets no answer from a TLS port.
    assert_ne!(curl(&format!("http://{}/metrics", c.http), &[]).0, 200);

    // promtool, as Prometheus' own tools talk to it.
    let cfg = c.dir().join("http.yml");
    std::fs::write(
        &cfg,
        format!("basic_auth:\n  username: prometheus\n  password: s3cret\ntls_config:\n  ca_file: {ca}\n"),
    )
    .unwrap();
    let promtool = fleet_integration_tests::promtool_with_http_config();
    let out = eventually(Duration::from_secs(20), "promtool to see pc2", || async {
        let out = run(Command::new(&promtool).args([
            "query",
            "instant",
            &format!("--http.config.file={}", cfg.display()),
            &base,
            "fleet_agent_up",
        ]));
        (out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pc2")).then_some(out)
    })
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("host=\"pc2\""), "{}", String::from_utf8_lossy(&out.stdout));
    let bare = c.dir().join("bare.yml");
    std::fs::write(&bare, format!("tls_config:\n  ca_file: {ca}\n")).unwrap();
    let out = run(Command::new(&promtool).args([
        "query",
        "instant",
        &format!("--http.config.file={}", bare.display()),
        &base,
        "fleet_agent_up",
    ]));
    assert!(!out.status.success(), "promtool without credentials got an answer");
}
