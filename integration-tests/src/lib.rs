//! The end-to-end test harness: real fleet binaries, real certificates made by `fleetctl certs`,
//! real processes on loopback with ephemeral ports, in temporary directories.
//!
//! The binaries are the ones `cargo test --workspace` builds next to the test executables
//! (`target/<profile>/`). End-to-end tests take [`serial`] so that timing assertions are not
//! skewed by other clusters competing for the same two cores.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fleet_common::tls::{TlsFiles, TlsMaterial, connect_coordinator};
use fleet_proto::v1::control_service_client::ControlServiceClient;
use fleet_proto::v1::{
    HostSummary, ListHostsRequest, ListReportsRequest, ListServicesRequest, ServiceStatus, StoredReport,
};
use rustix::process::{Pid, Signal, kill_process};
use tonic::transport::Channel;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs end-to-end tests one at a time (a panicking test does not block the others).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// The path of a workspace binary; panics with the fix when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build --bins` first)",
        p.display()
    );
    p
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `deadline` naming `what`.
/// Every poll is itself bounded by what is left of the deadline, so a check that hangs (a
/// call to a coordinator that does not answer) fails the wait on time instead of stalling the
/// test; a poll that fails returns `None` and is simply tried again.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed()).max(Duration::from_millis(10));
        match tokio::time::timeout(left, f()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out after {deadline:?} waiting for: {what} (the last check did not return)"),
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50).min(left)).await;
    }
}

/// When the first line of `log` after byte `from` that contains `needle` was written, in ms
/// since the epoch: fleet's logs (its daemons' and its services') start every line with an
/// RFC 3339 time. Tests measure what a process did by its own clock this way, instead of by
/// when a loaded test machine got round to noticing.
pub fn logged_at(log: &str, from: usize, needle: &str) -> Option<i64> {
    let line = log.get(from..)?.lines().find(|l| l.contains(needle))?;
    let t =
        time::OffsetDateTime::parse(line.split_whitespace().next()?, &time::format_description::well_known::Rfc3339)
            .ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// The files under `dir` whose names end in one of `ext`, sorted, not looking into `target`,
/// `.git` or `.ci` (the repository's own sources, as a clone has them).
pub fn source_files(dir: &Path, ext: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | ".ci") {
                    stack.push(p);
                }
            } else if ext.iter().any(|x| name.ends_with(x)) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs a command to completion and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A test PKI made with the real `fleetctl certs`.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory with every file.
    pub dir: PathBuf,
}

impl Pki {
    /// Creates a CA in `dir`.
    pub fn new(dir: &Path) -> Pki {
        let out = run(Command::new(bin("fleetctl")).args(["certs", "init", "--dir"]).arg(dir));
        assert!(out.status.success(), "certs init failed: {}", String::from_utf8_lossy(&out.stderr));
        Pki { dir: dir.to_path_buf() }
    }

    /// Issues a certificate for `role` `name`.
    pub fn issue(&self, role: &str, name: &str) {
        let out = run(Command::new(bin("fleetctl")).args(["certs", "issue", role, name, "--dir"]).arg(&self.dir));
        assert!(out.status.success(), "certs issue failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The file set of `name`.
    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        }
    }

    /// A `[tls]` table for `name`.
    pub fn toml(&self, name: &str) -> String {
        let f = self.files(name);
        format!("[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n", f.ca.display(), f.cert.display(), f.key.display())
    }
}

/// A running child process whose output goes to a log file. Killed when dropped; its log is
/// printed if the test is failing.
#[derive(Debug)]
pub struct Proc {
    /// A short name for messages.
    pub name: String,
    /// The process.
    pub child: Child,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `bin args...` with output appended to `log`.
    pub fn spawn(name: &str, bin: &Path, args: &[&str], log: &Path) -> Proc {
        Proc::spawn_logging(name, bin, args, log, "info")
    }

    /// Like [`Proc::spawn`], with `RUST_LOG` set to `filter`.
    pub fn spawn_logging(name: &str, bin: &Path, args: &[&str], log: &Path, filter: &str) -> Proc {
        Proc::spawn_env(name, bin, args, log, &[("RUST_LOG", filter)])
    }

    /// Like [`Proc::spawn`], with `env` added to the environment.
    pub fn spawn_env(name: &str, bin: &Path, args: &[&str], log: &Path, env: &[(&str, &str)]) -> Proc {
        let out = fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Proc { name: name.to_string(), child, log: log.to_path_buf() }
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32).expect("pid")
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        kill_process(self.pid(), sig).unwrap_or_else(|e| panic!("cannot signal {}: {e}", self.name));
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `deadline` for the process to exit on its own.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(start.elapsed() < deadline, "{} did not exit within {deadline:?}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to `deadline` for the exit status.
    pub fn terminate(&mut self, deadline: Duration) -> std::process::ExitStatus {
        self.signal(Signal::TERM);
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(start.elapsed() < deadline, "{} did not exit within {deadline:?} of SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // A stopped process must be continued to die promptly and be reaped.
            let _ = kill_process(self.pid(), Signal::CONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- last lines of {} ({}) ----", self.name, self.log.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// Coordinator settings for a test.
#[derive(Debug, Clone)]
pub struct CoordinatorOpts {
    /// `[agents] offline_after`.
    pub offline_after: Duration,
    /// gRPC port (0 for any).
    pub grpc_port: u16,
    /// HTTP port (0 for any).
    pub http_port: u16,
    /// Log as JSON lines instead of text.
    pub json_logs: bool,
    /// More TOML appended to the config (an `[alerting]` table, say).
    pub extra: String,
    /// More keys of the `[http]` table (which the config already has).
    pub http_extra: String,
    /// More keys of the `[agents]` table (which the config already has).
    pub agents_extra: String,
    /// The body of the `[access]` table: by default operator `ops` is an admin.
    pub access: String,
    /// More environment for the coordinator process.
    pub env: Vec<(String, String)>,
}

impl Default for CoordinatorOpts {
    fn default() -> Self {
        CoordinatorOpts {
            offline_after: Duration::from_secs(3),
            grpc_port: 0,
            http_port: 0,
            json_logs: false,
            extra: String::new(),
            http_extra: String::new(),
            agents_extra: String::new(),
            access: "[access.operators]\nops = \"admin\"\n".into(),
            env: Vec::new(),
        }
    }
}

/// A coordinator process [`Cluster::spawn_coordinator`] started.
#[derive(Debug)]
pub struct Coordinator {
    /// The process.
    pub proc: Proc,
    /// Its gRPC address, `https://127.0.0.1:PORT`.
    pub addr: String,
    /// Its HTTP address, `127.0.0.1:PORT`.
    pub http: String,
    /// What it was started with, its ports fixed (to restart it where it was).
    pub opts: CoordinatorOpts,
}

/// A test fleet: a PKI, a coordinator and agents, all under one temporary directory.
#[derive(Debug)]
pub struct Cluster {
    /// The PKI.
    pub pki: Pki,
    /// The coordinator process, while it runs.
    pub coordinator: Option<Proc>,
    /// Agent processes by name.
    pub agents: BTreeMap<String, Proc>,
    /// The coordinator's gRPC address, `https://127.0.0.1:PORT`.
    pub addr: String,
    /// The coordinator's HTTP address, `127.0.0.1:PORT`.
    pub http: String,
    /// Settings the coordinator was started with.
    pub opts: CoordinatorOpts,
    /// When set, agents get `coordinators = [...]` (a session to each) instead of `addr`.
    pub coordinators: Vec<String>,
    /// The temporary directory, removed on drop: declared last so the processes (and their
    /// logs, printed when a test fails) go first.
    pub tmp: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Services run in process groups of their own and outlive an agent killed with -9 (as
        // tests do on purpose): stop the agents, then find what they left through their pid
        // files, the way a restarted agent would, so that no test leaks processes.
        for a in self.agents.values_mut() {
            a.kill9();
        }
        let Ok(entries) = fs::read_dir(self.tmp.path()) else { return };
        for e in entries.flatten() {
            for stray in fleet_agent::supervisor::pidfile::strays(&e.path().join("run")) {
                if let Some(pid) = Pid::from_raw(stray.pid as i32) {
                    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                }
            }
        }
    }
}

impl Cluster {
    /// A PKI with certificates for the coordinator, operator `ops` and the named agents.
    pub fn new(agents: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(&tmp.path().join("pki"));
        pki.issue("coordinator", "coordinator");
        pki.issue("operator", "ops");
        for a in agents {
            pki.issue("agent", a);
        }
        fs::create_dir_all(tmp.path().join("logs")).expect("logs dir");
        Cluster {
            tmp,
            pki,
            coordinator: None,
            agents: BTreeMap::new(),
            addr: String::new(),
            http: String::new(),
            opts: CoordinatorOpts::default(),
            coordinators: Vec::new(),
        }
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The coordinator's config file path.
    pub fn coordinator_config(&self) -> PathBuf {
        self.dir().join("coordinator.toml")
    }

    /// Starts the coordinator and waits until it listens.
    pub async fn start_coordinator(&mut self, opts: CoordinatorOpts) {
        let m = self.spawn_coordinator("coordinator", opts).await;
        self.addr = m.addr;
        self.http = m.http;
        self.opts = m.opts;
        self.coordinator = Some(m.proc);
    }

    /// Starts a coordinator named `name` (its data in `<dir>/<name>`, its config
    /// `<dir>/<name>.toml` or, for "coordinator", [`Cluster::coordinator_config`], its log
    /// `logs/<name>.log`) with the cluster's PKI, and waits until it listens. Several of them
    /// make the coordinators of an HA set-up.
    pub async fn spawn_coordinator(&self, name: &str, opts: CoordinatorOpts) -> Coordinator {
        let data = self.dir().join(name);
        fs::create_dir_all(&data).expect("data dir");
        let addrs = data.join("coordinator.addrs.json");
        let _ = fs::remove_file(&addrs);
        let config = format!(
            "data_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n{}[agents]\noffline_after = \"{}ms\"\n{}[access]\n{}{}",
            data.display(),
            opts.grpc_port,
            opts.http_port,
            opts.http_extra,
            opts.offline_after.as_millis(),
            opts.agents_extra,
            opts.access,
            self.pki.toml("coordinator")
        ) + &opts.extra;
        let cfg =
            if name == "coordinator" { self.coordinator_config() } else { self.dir().join(format!("{name}.toml")) };
        fs::write(&cfg, config).expect("write config");
        let format = if opts.json_logs { "json" } else { "text" };
        let env: Vec<(&str, &str)> = opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut p = Proc::spawn_env(
            name,
            &bin("fleet-coordinator"),
            &["run", "--config", cfg.to_str().unwrap(), "--log-format", format],
            &self.dir().join(format!("logs/{name}.log")),
            &env,
        );
        let (grpc, http) = eventually(Duration::from_secs(20), "the coordinator to listen", || {
            let exited = p.child.try_wait().expect("try_wait");
            let text = fs::read_to_string(&addrs).ok();
            async move {
                if let Some(s) = exited {
                    panic!("the coordinator exited while starting: {s}");
                }
                let v: serde_json::Value = serde_json::from_str(&text?).ok()?;
                Some((v["grpc"].as_str()?.to_string(), v["http"].as_str()?.to_string()))
            }
        })
        .await;
        let port = grpc.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let http_port = http.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        p.name = name.into();
        Coordinator {
            addr: format!("https://127.0.0.1:{port}"),
            http,
            // A restart reuses the same ports so agents find it again.
            opts: CoordinatorOpts { grpc_port: port, http_port, ..opts },
            proc: p,
        }
    }

    /// Writes an agent config (extra TOML appended; it may start with top-level keys, as the
    /// `[tls]` table comes last) and returns its path.
    pub fn agent_config(&self, name: &str, report_interval: Duration, extra: &str) -> PathBuf {
        let path = self.dir().join(format!("{name}.toml"));
        let coordinator = if self.coordinators.is_empty() {
            format!("coordinator = \"{}\"", self.addr)
        } else {
            let list: Vec<String> = self.coordinators.iter().map(|c| format!("\"{c}\"")).collect();
            format!("coordinators = [{}]", list.join(", "))
        };
        let config = format!(
            "name = \"{name}\"\n{coordinator}\ndata_dir = \"{}\"\nreport_interval = \"{}ms\"\n{extra}\n{}",
            self.dir().join(name).display(),
            report_interval.as_millis(),
            self.pki.toml(name)
        );
        fs::write(&path, config).expect("write agent config");
        path
    }

    /// Starts agent `name` reporting every `report_interval`.
    pub fn start_agent(&mut self, name: &str, report_interval: Duration) {
        self.start_agent_with(name, report_interval, "");
    }

    /// Starts agent `name` with `extra` TOML appended to its config.
    pub fn start_agent_with(&mut self, name: &str, report_interval: Duration, extra: &str) {
        self.start_agent_env(name, report_interval, extra, &[]);
    }

    /// Like [`Cluster::start_agent_with`], with `env` added to the agent's environment.
    pub fn start_agent_env(&mut self, name: &str, report_interval: Duration, extra: &str, env: &[(&str, &str)]) {
        let cfg = self.agent_config(name, report_interval, extra);
        let p = Proc::spawn_env(
            name,
            &bin("fleet-agent"),
            &["run", "--config", cfg.to_str().unwrap()],
            &self.dir().join(format!("logs/{name}.log")),
            env,
        );
        self.agents.insert(name.to_string(), p);
    }

    /// `[enrollment]` signing with this cluster's CA, certificates valid for `cert_ttl`.
    pub fn enrollment_toml(&self, cert_ttl: &str) -> String {
        format!(
            "[enrollment]\nca_key = {}\ncert_ttl = \"{cert_ttl}\"\n",
            toml_string(self.pki.dir.join("ca-key.pem").to_str().unwrap())
        )
    }

    /// Writes the config of an agent with no `[tls]` (an enrolled one; `extra` may hold
    /// `join_token` and `ca_pin`, before any table) and returns its path.
    pub fn enrolled_agent_config(&self, name: &str, report_interval: Duration, extra: &str) -> PathBuf {
        let path = self.dir().join(format!("{name}.toml"));
        let config = format!(
            "name = \"{name}\"\ncoordinator = \"{}\"\ndata_dir = \"{}\"\nreport_interval = \"{}ms\"\n{extra}",
            self.addr,
            self.dir().join(name).display(),
            report_interval.as_millis(),
        );
        fs::write(&path, config).expect("write agent config");
        path
    }

    /// Starts an agent with no `[tls]`: enrolled already, or enrolling with `extra`'s
    /// `join_token` at its first start.
    pub fn start_enrolled_agent(&mut self, name: &str, report_interval: Duration, extra: &str) {
        let cfg = self.enrolled_agent_config(name, report_interval, extra);
        let p = Proc::spawn(
            name,
            &bin("fleet-agent"),
            &["run", "--config", cfg.to_str().unwrap()],
            &self.dir().join(format!("logs/{name}.log")),
        );
        self.agents.insert(name.to_string(), p);
    }

    /// The agent process `name`.
    pub fn agent(&mut self, name: &str) -> &mut Proc {
        self.agents.get_mut(name).unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// A ControlService client authenticated as operator `ops`.
    pub async fn control(&self) -> ControlServiceClient<Channel> {
        self.control_as("ops").await
    }

    /// A ControlService client authenticated with certificate `name`.
    pub async fn control_as(&self, name: &str) -> ControlServiceClient<Channel> {
        let tls = TlsMaterial::load(&self.pki.files(name)).expect("load tls");
        let ch = connect_coordinator(&self.addr, &tls).await.expect("connect");
        ControlServiceClient::new(ch)
    }

    /// Every host as the coordinator lists it (None when the call fails).
    pub async fn hosts(&self) -> Option<Vec<HostSummary>> {
        let tls = TlsMaterial::load(&self.pki.files("ops")).ok()?;
        let ch = connect_coordinator(&self.addr, &tls).await.ok()?;
        let r = ControlServiceClient::new(ch).list_hosts(ListHostsRequest::default()).await.ok()?;
        Some(r.into_inner().hosts)
    }

    /// Whether host `name` is online (None when it is unknown or the call fails).
    pub async fn online(&self, name: &str) -> Option<bool> {
        self.hosts().await?.into_iter().find(|h| h.name == name).map(|h| h.online)
    }

    /// Waits until every named host is online with metrics.
    pub async fn wait_online(&self, names: &[&str], deadline: Duration) {
        eventually(deadline, &format!("{names:?} online with metrics"), || async {
            let hosts = self.hosts().await?;
            names.iter().all(|n| hosts.iter().any(|h| h.name == *n && h.online && h.metrics.is_some())).then_some(())
        })
        .await
    }

    /// The state of `host`'s service `name` as the coordinator knows it.
    pub async fn service(&self, host: &str, name: &str) -> Option<ServiceStatus> {
        let tls = TlsMaterial::load(&self.pki.files("ops")).ok()?;
        let ch = connect_coordinator(&self.addr, &tls).await.ok()?;
        let r = ControlServiceClient::new(ch)
            .list_services(ListServicesRequest { host: host.into(), ..Default::default() })
            .await
            .ok()?;
        r.into_inner().services.into_iter().filter_map(|s| s.service).find(|s| s.name == name)
    }

    /// Waits until `host`'s service `name` satisfies `pred`, and returns its state.
    pub async fn wait_service(
        &self,
        host: &str,
        name: &str,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&ServiceStatus) -> bool,
    ) -> ServiceStatus {
        eventually(deadline, &format!("{host}/{name}: {what}"), || async {
            let s = self.service(host, name).await?;
            pred(&s).then_some(s)
        })
        .await
    }

    /// The stored reports of `host`.
    pub async fn reports(&self, host: &str) -> Vec<StoredReport> {
        self.control()
            .await
            .list_reports(ListReportsRequest { host: host.into(), since_ms: 0, limit: 0 })
            .await
            .expect("list reports")
            .into_inner()
            .reports
    }

    /// Runs fleetctl with this cluster's address and operator certificate.
    pub fn fleetctl(&self, args: &[&str]) -> Output {
        self.fleetctl_as("ops", args)
    }

    /// Runs fleetctl as operator `ops` with `env` added to its environment.
    pub fn fleetctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let f = self.pki.files("ops");
        run(Command::new(bin("fleetctl"))
            .args(args)
            .env("FLEET_ADDR", &self.addr)
            .env("FLEET_CA", &f.ca)
            .env("FLEET_CERT", &f.cert)
            .env("FLEET_KEY", &f.key)
            .envs(env.iter().copied()))
    }

    /// Runs fleetctl with certificate `name`.
    pub fn fleetctl_as(&self, name: &str, args: &[&str]) -> Output {
        let f = self.pki.files(name);
        run(Command::new(bin("fleetctl"))
            .args(args)
            .env("FLEET_ADDR", &self.addr)
            .env("FLEET_CA", &f.ca)
            .env("FLEET_CERT", &f.cert)
            .env("FLEET_KEY", &f.key))
    }

    /// GET http://<http>/<path> and the body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
        let r = client.get(format!("http://{}{path}", self.http)).send().await.expect("http get");
        let code = r.status().as_u16();
        (code, r.text().await.expect("body"))
    }
}

/// A webhook receiver on loopback: keeps every JSON body POSTed to it.
pub async fn webhook_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len: usize = text[..i]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            if let Ok(v) = serde_json::from_slice(&buf[i + 4..i + 4 + len]) {
                                g.lock().unwrap().push(v);
                            }
                            let _ =
                                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, got)
}

/// Starts a real Alertmanager (Debian's prometheus-alertmanager) for `c` on a free port, with
/// a receiver that drops notifications; its alerts are read with [`am_alerts`].
pub fn start_alertmanager(c: &Cluster) -> (Proc, u16) {
    start_alertmanager_with(c, "route:\n  receiver: devnull\n  group_wait: 0s\nreceivers:\n  - name: devnull\n")
}

/// Starts a real Alertmanager for `c` with `config` (its YAML) and returns it and its port.
pub fn start_alertmanager_with(c: &Cluster, config: &str) -> (Proc, u16) {
    assert!(
        Path::new("/usr/bin/prometheus-alertmanager").exists(),
        "install prometheus-alertmanager (scripts/test.sh does this)"
    );
    let dir = c.dir().join("alertmanager");
    fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("am.yml");
    fs::write(&conf, config).unwrap();
    let port = free_port();
    let p = Proc::spawn(
        "alertmanager",
        Path::new("/usr/bin/prometheus-alertmanager"),
        &[
            &format!("--config.file={}", conf.display()),
            &format!("--storage.path={}", dir.display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=",
        ],
        &c.dir().join("logs/alertmanager.log"),
    );
    (p, port)
}

/// Starts a real Prometheus (Debian's prometheus) for `c` on `port` (a [`free_port`]),
/// accepting remote writes at `/api/v1/write` and, with `scrape`, scraping the coordinator's
/// `/metrics` every second.
pub fn start_prometheus(c: &Cluster, port: u16, scrape: bool) -> Proc {
    assert!(Path::new("/usr/bin/prometheus").exists(), "install prometheus (scripts/test.sh does this)");
    let dir = c.dir().join("prometheus");
    fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("prometheus.yml");
    fs::write(
        &conf,
        if scrape {
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fleet-coordinator\n    static_configs:\n      - targets: ['{}']\n",
                c.http
            )
        } else {
            "global:\n  scrape_interval: 1s\n".to_string()
        },
    )
    .unwrap();
    Proc::spawn(
        "prometheus",
        Path::new("/usr/bin/prometheus"),
        &[
            &format!("--config.file={}", conf.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--web.enable-remote-write-receiver",
        ],
        &c.dir().join("logs/prometheus.log"),
    )
}

/// Like [`start_alertmanager`], serving https with the coordinator's certificate (signed by
/// the cluster's CA, valid for 127.0.0.1) and requiring basic auth `user` with the bcrypt
/// `hash` of its password (Alertmanager's `--web.config.file`).
pub fn start_alertmanager_https(c: &Cluster, user: &str, hash: &str) -> (Proc, u16) {
    let dir = c.dir().join("alertmanager-https");
    fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("am.yml");
    fs::write(&conf, "route:\n  receiver: devnull\n  group_wait: 0s\nreceivers:\n  - name: devnull\n").unwrap();
    let files = c.pki.files("coordinator");
    let web = dir.join("web.yml");
    fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  {user}: {hash}\n",
            files.cert.display(),
            files.key.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let p = Proc::spawn(
        "alertmanager",
        Path::new("/usr/bin/prometheus-alertmanager"),
        &[
            &format!("--config.file={}", conf.display()),
            &format!("--storage.path={}", dir.display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            &format!("--web.config.file={}", web.display()),
            "--cluster.listen-address=",
        ],
        &c.dir().join("logs/alertmanager-https.log"),
    );
    (p, port)
}

/// The alerts Alertmanager on `port` holds (its v2 API), None while it does not answer.
pub async fn am_alerts(port: u16) -> Option<Vec<serde_json::Value>> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/api/v2/alerts")).await.ok()?.text().await.ok()?;
    serde_json::from_str::<Vec<serde_json::Value>>(&body).ok()
}

/// A `[[services]]` table running `sh -c SCRIPT`, with extra keys appended.
pub fn sh_service(name: &str, script: &str, extra: &str) -> String {
    format!("\n[[services]]\nname = \"{name}\"\ncommand = \"sh\"\nargs = [\"-c\", {}]\n{extra}\n", toml_string(script))
}

/// A `[[services]]` table running the demo HTTP server on `port` with an HTTP health check;
/// writing `fail` or `hang` into `health_file` makes its health check fail or hang.
pub fn web_service(name: &str, port: u16, health_file: &Path, health: &str) -> String {
    format!(
        "\n[[services]]\nname = \"{name}\"\ncommand = {}\nargs = [\"demo-server\", \"--listen\", \"127.0.0.1:{port}\", \"--name\", \"{name}\", \"--health-file\", {}, \"--heartbeat\", \"0\"]\nstart_secs = \"200ms\"\nstop_timeout = \"5s\"\n[services.health]\nhttp = \"http://127.0.0.1:{port}/health\"\n{health}\n",
        toml_string(bin("fleetctl").to_str().unwrap()),
        toml_string(health_file.to_str().unwrap())
    )
}

/// A deployable `[[services]]` table: `bin/start` of the current release, an HTTP health check
/// on `port`, `conf` backed up around every switch.
pub fn app_service(root: &Path, port: u16, conf: &Path, extra_deploy: &str) -> String {
    format!(
        "\n[[services]]\nname = \"app\"\ncommand = \"bin/start\"\nstart_secs = \"300ms\"\nstart_retries = 2\nstop_timeout = \"5s\"\nenv = {{ FLEETCTL = {}, PORT = \"{port}\", CONF = {} }}\n[services.health]\nhttp = \"http://127.0.0.1:{port}/health\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nretries = 2\n[services.deploy]\nroot = {}\nbackup_paths = [{}]\n{extra_deploy}\n",
        toml_string(bin("fleetctl").to_str().unwrap()),
        toml_string(conf.to_str().unwrap()),
        toml_string(root.to_str().unwrap()),
        toml_string(conf.to_str().unwrap()),
    )
}

/// Writes a release archive of the demo app at `version` to `path`; with `broken`, its start
/// script writes into the config directory and exits 3 instead of serving.
pub fn app_release(path: &Path, version: &str, broken: bool) {
    app_release_on(path, version, if broken { Some("*") } else { None })
}

/// Like [`app_release`], broken only on the agent named `broken_on` (`*` for every agent).
pub fn app_release_on(path: &Path, version: &str, broken_on: Option<&str>) {
    let serve = format!(
        "mkdir -p \"$CONF\"\necho \"config of {version}\" > \"$CONF/app.conf\"\nexec \"$FLEETCTL\" demo-server --listen \"127.0.0.1:$PORT\" --name app --version {version} --heartbeat 0\n"
    );
    let start = match broken_on {
        Some(agent) => format!(
            "#!/bin/sh\ncase \"$FLEET_AGENT\" in {agent})\necho \"written by {version}\" > \"$CONF/app.conf\"\necho \"{version} cannot start: missing setting\" >&2\nexit 3;;\nesac\n{serve}"
        ),
        None => format!("#!/bin/sh\n{serve}"),
    };
    let gz =
        flate2::write::GzEncoder::new(fs::File::create(path).expect("create archive"), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data, mode) in [("bin/start", start.as_bytes(), 0o755), ("VERSION", version.as_bytes(), 0o644)] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gzip");
}

/// GET http://127.0.0.1:port/ and the body, if anything answers.
pub async fn get_body(port: u16) -> Option<String> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/")).await.ok()?;
    r.text().await.ok()
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A promtool that takes `--http.config.file` (Prometheus 2.45 or later): `FLEET_PROMTOOL`,
/// which scripts/test.sh sets (fetching Debian 13's promtool when the system's is older).
pub fn promtool_with_http_config() -> PathBuf {
    let candidates = [
        std::env::var_os("FLEET_PROMTOOL").map(PathBuf::from),
        Some(bin_dir().join("../test-tools/bin/promtool")),
        Some(PathBuf::from("promtool")),
    ];
    for p in candidates.into_iter().flatten() {
        let help = Command::new(&p).args(["query", "instant", "--help"]).output();
        if help.is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains("--http.config.file")
                || String::from_utf8_lossy(&o.stderr).contains("--http.config.file")
        }) {
            return p;
        }
    }
    panic!(
        "no promtool with --http.config.file (Prometheus 2.45 or later): run the tests with scripts/test.sh, which fetches one, or set FLEET_PROMTOOL"
    );
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `n` distinct free ports on loopback, for processes started together (each port is held
/// until all are picked: one at a time, the system may hand out the same port twice).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text.rfind(')').and_then(|i| text[i + 2..].chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

/// Checks that the stored reports of each agent run form 1..=N with no gap and no duplicate.
/// Returns the number of reports per boot id.
pub fn assert_contiguous(reports: &[StoredReport]) -> BTreeMap<u64, u64> {
    let mut by_boot: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in reports {
        let id = r.id.expect("report id");
        by_boot.entry(id.boot_id).or_default().push(id.seq);
    }
    let mut counts = BTreeMap::new();
    for (boot, mut seqs) in by_boot {
        let n = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), n, "boot {boot}: a report is stored twice");
        let expected: Vec<u64> = (1..=n as u64).collect();
        assert_eq!(seqs, expected, "boot {boot}: the stored sequence numbers have a gap");
        counts.insert(boot, n as u64);
    }
    counts
}

/// Parses `name{labels} value` lines of a Prometheus exposition into (series, value).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Runs `promtool check metrics` on `text`; returns its findings (empty when clean).
pub fn promtool_check(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: apt-get install prometheus (.ci/run does this)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let mut findings = String::from_utf8_lossy(&out.stdout).into_owned();
    findings.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && findings.trim().is_empty() {
        findings = format!("promtool exited with {}", out.status);
    }
    findings
}

/// A real etcd cluster (Debian's etcd-server) of a few members on loopback, for several
/// coordinators (docs/design.md §13).
#[derive(Debug)]
pub struct Etcd {
    /// The members, in order.
    pub members: Vec<EtcdMember>,
}

/// One etcd member: its process while it runs and how to start it again.
#[derive(Debug)]
pub struct EtcdMember {
    /// Its name in the etcd cluster.
    pub name: String,
    /// Its client URL, `http://127.0.0.1:PORT`.
    pub client: String,
    /// The process, while it runs.
    pub proc: Option<Proc>,
    args: Vec<String>,
    log: PathBuf,
}

impl Etcd {
    /// Starts `n` members under `c`'s directory and waits until they have a leader.
    pub async fn start(c: &Cluster, n: usize) -> Etcd {
        assert!(Path::new("/usr/bin/etcd").exists(), "install etcd-server (scripts/test.sh does this)");
        let picked = free_ports(2 * n);
        let ports: Vec<(u16, u16)> = picked.chunks(2).map(|p| (p[0], p[1])).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("etcd{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("etcd{i}");
            let dir = c.dir().join(&name);
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=fleet-test".into(),
                // Loopback answers in microseconds: elect quickly, as a LAN would.
                "--heartbeat-interval=100".into(),
                "--election-timeout=1000".into(),
            ];
            let mut m = EtcdMember {
                name: name.clone(),
                client: format!("http://127.0.0.1:{client}"),
                proc: None,
                args,
                log: c.dir().join(format!("logs/{name}.log")),
            };
            m.start();
            members.push(m);
        }
        let etcd = Etcd { members };
        etcd.wait_healthy(Duration::from_secs(30)).await;
        etcd
    }

    /// The members' client URLs as a TOML array, for `[cluster] etcd`.
    pub fn toml_urls(&self) -> String {
        let urls: Vec<String> = self.members.iter().map(|m| format!("\"{}\"", m.client)).collect();
        format!("[{}]", urls.join(", "))
    }

    /// Waits until every running member says it is healthy (it has a leader).
    pub async fn wait_healthy(&self, deadline: Duration) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        for m in self.members.iter().filter(|m| m.proc.is_some()) {
            let url = format!("{}/health", m.client);
            eventually(deadline, &format!("{} to be healthy", m.name), || {
                let r = client.get(&url).send();
                async move {
                    let v: serde_json::Value = r.await.ok()?.json().await.ok()?;
                    (v["health"] == "true").then_some(())
                }
            })
            .await;
        }
    }

    /// kill -9 of member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill9();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.members[i].start();
    }
}

impl EtcdMember {
    fn start(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.proc = Some(Proc::spawn(&self.name, Path::new("/usr/bin/etcd"), &args, &self.log));
    }
}
