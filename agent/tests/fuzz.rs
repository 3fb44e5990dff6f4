//! Fuzzing of agent.toml parsing: real keys with values of every shape, in random
//! combinations, must be refused or accepted, never panic. Runs for `FLEET_FUZZ_SECONDS`
//! (default 3) from seed `FLEET_FUZZ_SEED` (default: from the clock); a failure prints both.

use std::time::{Duration, Instant};

use fleet_agent::config::AgentConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn agent_config_files_never_panic() {
    const VALUES: &[&str] = &[
        "\"5s\"",
        "\"0s\"",
        "\"99999999999y\"",
        "0",
        "-1",
        "18446744073709551616",
        "\"\"",
        "[]",
        "[\"\", \"x\"]",
        "{}",
        "true",
        "\"https://127.0.0.1:7443\"",
        "\"http://x\"",
        "\"/nonexistent\"",
        "\"1GiB\"",
        "\"1e30B\"",
        "\"TERM\"",
        "\"SIGWHAT\"",
        "\"no\"",
        "\"on-failure\"",
        "\"\\u001b[2J\"",
        "{ RUST_LOG = \"info\" }",
        "[\"true\"]",
    ];
    const TOP: &[&str] = &["name", "coordinator", "data_dir", "report_interval", "colour"];
    const SERVICE: &[&str] = &[
        "name",
        "command",
        "args",
        "env",
        "workdir",
        "user",
        "restart",
        "start_secs",
        "start_retries",
        "stop_signal",
        "stop_timeout",
        "memory_max",
        "log_max_bytes",
        "log_backups",
    ];
    const HEALTH: &[&str] = &["http", "tcp", "exec", "interval", "timeout", "retries", "start_period"];
    const DEPLOY: &[&str] = &["root", "keep_releases", "backup_paths", "max_size", "max_files"];
    let seed: u64 = std::env::var("FLEET_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fleet_common::now_ms() as u64);
    let budget = std::env::var("FLEET_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let until = Instant::now() + Duration::from_secs_f64(budget);
    let mut runs = 0;
    while Instant::now() < until {
        let mut value = || VALUES[rng.random_range(0..VALUES.len())];
        let mut s = String::new();
        for k in TOP {
            s.push_str(&format!("{k} = {}\n", value()));
        }
        s.push_str(&format!(
            "[labels]\nrole = {}\n[outbox]\nmax_age = {}\nmax_bytes = {}\n",
            value(),
            value(),
            value()
        ));
        s.push_str(&format!("[tls]\nca = {}\ncert = {}\nkey = {}\n", value(), value(), value()));
        for _ in 0..(runs % 3) {
            s.push_str("[[services]]\n");
            for k in SERVICE {
                s.push_str(&format!("{k} = {}\n", value()));
            }
            s.push_str("[services.health]\n");
            for k in HEALTH.iter().take(runs % HEALTH.len() + 1) {
                s.push_str(&format!("{k} = {}\n", value()));
            }
            s.push_str("[services.deploy]\n");
            for k in DEPLOY {
                s.push_str(&format!("{k} = {}\n", value()));
            }
        }
        std::fs::write(&path, &s).unwrap();
        if std::panic::catch_unwind(|| AgentConfig::load(&path, || Some("pc2".into()))).is_err() {
            panic!("agent config: FLEET_FUZZ_SEED={seed}, run {runs}, input:\n{s}");
        }
        runs += 1;
    }
    eprintln!("agent config: {runs} inputs from seed {seed}");
}
