//! `fleetctl dev`: a whole fleet on this machine for trying fleet out and for development. It
//! makes a PKI and configs in DIR, starts fleet-coordinator and agents `main-pc` and `pc2` as
//! child processes (each agent supervising a demo HTTP service, `web`, with a health check),
//! waits until both agents are online and their services healthy, writes `DIR/fleetctl.env`, and stays in
//! the foreground. Ctrl-C or SIGTERM stops everything it started; so does any child exiting on
//! its own (after saying which and showing its last log lines). Children also get SIGTERM from
//! the kernel if fleetctl itself dies, so nothing is left orphaned.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fleet_common::identity::Role;
use fleet_common::tls::TlsFiles;
use fleet_proto::v1::ListHostsRequest;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::CliError;
use crate::certs::{self, CA_CERT};
use crate::client::Target;

/// The agents a dev cluster runs.
pub const AGENTS: [&str; 2] = ["main-pc", "pc2"];
/// fleet's default alert rules (deploy/rules), loaded by the dev coordinator so that the
/// walkthrough's failures raise alerts.
const DEFAULT_RULES: &str = include_str!("../../deploy/rules/fleet.rules.yml");
/// How long the cluster may take to come up.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `fleetctl dev` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Directory for certificates, configs, data and logs.
    #[arg(long, default_value = ".fleet-dev")]
    pub dir: PathBuf,
    /// gRPC listen address of the coordinator (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub grpc_listen: SocketAddr,
    /// HTTP listen address of the coordinator (/metrics, /health; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub http_listen: SocketAddr,
    /// How often the agents report.
    #[arg(long, default_value = "1s", value_parser = humantime_parse)]
    pub report_interval: Duration,
    /// Where fleet-coordinator and fleet-agent are (default: next to fleetctl, then PATH).
    #[arg(long, env = "FLEET_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Several coordinators: a three-member etcd (Debian's etcd-server) and three
    /// coordinators, the first on --grpc-listen/--http-listen and the others on the next
    /// ports (or free ones with port 0); the agents keep a session to each.
    #[arg(long)]
    pub ha: bool,
}

/// Coordinators and etcd members of `fleetctl dev --ha`.
const HA_MEMBERS: usize = 3;

fn find_etcd() -> Result<PathBuf, CliError> {
    let mut candidates = vec![PathBuf::from("/usr/bin/etcd")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("etcd")));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        CliError::usage(
            "fleetctl dev --ha runs a three-member etcd and cannot find etcd: install Debian's etcd-server package (apt-get install etcd-server), or run fleetctl dev without --ha",
        )
    })
}

/// The addresses of coordinator `i` of `fleetctl dev --ha`: the given ones for the first, the
/// ports after them (or free ports, for port 0) for the others.
fn ha_addr(base: SocketAddr, i: usize) -> Result<SocketAddr, CliError> {
    let port = match base.port() {
        0 => free_port()?,
        p => p.checked_add(i as u16).ok_or_else(|| CliError::usage(format!("no port after {p}")))?,
    };
    Ok(SocketAddr::new(base.ip(), port))
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write for example 1s or 500ms"))
}

fn find_binary(name: &str, bin_dir: Option<&Path>) -> Result<PathBuf, CliError> {
    let mut candidates = Vec::new();
    if let Some(d) = bin_dir {
        candidates.push(d.join(name));
    }
    if let Some(d) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        candidates.push(d.join(name));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        CliError::usage(format!(
            "cannot find {name} next to fleetctl or on PATH; build every binary with `cargo build --bins` or pass --bin-dir"
        ))
    })
}

fn abs(p: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(p).map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
}

/// Makes the CA and every certificate the dev cluster needs, keeping the ones that exist.
fn ensure_pki(pki: &Path) -> Result<(), CliError> {
    if !pki.join(CA_CERT).exists() {
        certs::init(pki, fleet_common::identity::DEFAULT_TRUST_DOMAIN, 3650, false)?;
    }
    let mut wanted = vec![(Role::Coordinator, "coordinator"), (Role::Operator, "dev")];
    wanted.extend(AGENTS.iter().map(|a| (Role::Agent, *a)));
    for (role, name) in wanted {
        if !pki.join(format!("{name}.pem")).exists() {
            certs::issue(pki, role, name, &[], 365, true)?;
        }
    }
    Ok(())
}

/// The demo backup job's script (run in the dev directory): a tarball of what the demo
/// services keep (web's health file, app's config) under `<agent>/backups`, the newest 5 kept.
fn backup_script(agent: &str) -> String {
    format!(
        "set -eu\nmkdir -p {agent}/backups\nout={agent}/backups/state-$(date -u +%Y%m%dT%H%M%SZ).tar.gz\nset --\nfor f in {agent}-web.health {agent}/app-conf; do if [ -e \"$f\" ]; then set -- \"$@\" \"$f\"; fi; done\ntar -czf \"$out\" --files-from /dev/null \"$@\"\nls -1t {agent}/backups/state-*.tar.gz | tail -n +6 | xargs -r rm --\necho \"backed up $# item(s) to $out\"\n"
    )
}

/// A free port on the loopback interface for a demo service.
fn free_port() -> Result<u16, CliError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| CliError::failed(format!("cannot find a free port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| CliError::failed(e.to_string()))
}

fn tls_section(pki: &Path, name: &str) -> String {
    format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.join(CA_CERT).display(),
        pki.join(format!("{name}.pem")).display(),
        pki.join(format!("{name}-key.pem")).display()
    )
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

fn spawn(name: &str, bin: &Path, config: &Path, log: &Path) -> Result<Proc, CliError> {
    let args = ["run".to_string(), "--config".to_string(), config.display().to_string()];
    spawn_args(name, bin, &args, log)
}

fn spawn_args(name: &str, bin: &Path, args: &[String], log: &Path) -> Result<Proc, CliError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| CliError::failed(format!("cannot open {}: {}", log.display(), fleet_common::io_reason(&e))))?;
    let err = out.try_clone().map_err(|e| CliError::failed(e.to_string()))?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| CliError::failed(format!("cannot start {}: {}", bin.display(), fleet_common::io_reason(&e))))?;
    Ok(Proc { name: name.to_string(), child, log: log.to_path_buf() })
}

#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe prctl(PR_SET_PDEATHSIG) system call. It is what guarantees that the
    // dev cluster's processes never outlive fleetctl, even if fleetctl is killed with SIGKILL.
    // The signal fires when the spawning *thread* exits; tokio's worker threads live as long as
    // the runtime, which is as long as fleetctl dev.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
}

fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter() {
        if let Some(pid) = p.child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for p in procs.iter_mut() {
        match tokio::time::timeout(STOP_TIMEOUT, p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{} did not stop within {}s; killing it", p.name, STOP_TIMEOUT.as_secs());
                let _ = p.child.kill().await;
            }
        }
    }
}

/// Stops services an agent left behind (it crashed, or did not stop them in time): the
/// agent's pid files under `data_dir/run/` name their process groups.
async fn stop_orphaned_services(dir: &Path) {
    for agent in AGENTS {
        let Ok(entries) = std::fs::read_dir(dir.join(agent).join("run")) else { continue };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()) else { continue };
            let Some(pg) = rustix::process::Pid::from_raw(pid) else { continue };
            if rustix::process::test_kill_process_group(pg).is_err() {
                continue;
            }
            eprintln!("stopping {} left running by {agent}", e.file_name().to_string_lossy().trim_end_matches(".pid"));
            let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::TERM);
            let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
            while rustix::process::test_kill_process_group(pg).is_ok() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::KILL);
        }
    }
}

async fn wait_for_addrs(coord: &mut Proc, file: &Path) -> Result<(SocketAddr, SocketAddr), CliError> {
    let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            let get = |k: &str| v[k].as_str().and_then(|s| s.parse::<SocketAddr>().ok());
            if let (Some(g), Some(h)) = (get("grpc"), get("http")) {
                return Ok((g, h));
            }
        }
        if let Ok(Some(status)) = coord.child.try_wait() {
            return Err(CliError::failed(format!(
                "fleet-coordinator exited ({status}) while starting; its last log lines:\n{}\n(if the port is in use, pass --grpc-listen/--http-listen 127.0.0.1:0)",
                tail(&coord.log, 15)
            )));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CliError::failed(format!(
                "fleet-coordinator did not start within {}s; see {}",
                STARTUP_DEADLINE.as_secs(),
                coord.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_online(target: &Target, procs: &mut [Proc]) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
    loop {
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(CliError::failed(format!(
                    "{} exited ({status}) while starting; its last log lines:\n{}",
                    p.name,
                    tail(&p.log, 15)
                )));
            }
        }
        if let Ok(mut c) = target.control().await
            && let Ok(r) = c.list_hosts(ListHostsRequest::default()).await
        {
            let hosts = r.into_inner().hosts;
            let ready = |h: &fleet_proto::v1::HostSummary| {
                h.online && h.metrics.is_some() && h.services.iter().any(|s| s.state == "running" && s.healthy)
            };
            if AGENTS.iter().all(|a| hosts.iter().any(|h| h.name == *a && ready(h))) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CliError::failed(format!(
                "the agents did not come online within {}s; see the logs in {}",
                STARTUP_DEADLINE.as_secs(),
                procs[0].log.parent().unwrap_or(Path::new(".")).display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the coordinators of `fleetctl dev --ha` have elected a leader.
async fn wait_leader(target: &Target) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Ok(mut c) = target.control().await
            && let Ok(r) = c.get_status(fleet_proto::v1::GetStatusRequest {}).await
            && r.get_ref().cluster.as_ref().is_some_and(|c| !c.leader.is_empty() && c.members.len() == HA_MEMBERS)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CliError::failed(format!(
                "the coordinators elected no leader within {}s; see the etcd and coordinator logs",
                STARTUP_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the dev cluster until a signal or a child's exit.
pub async fn run(args: DevArgs) -> Result<(), CliError> {
    let dir = abs(&args.dir)?;
    let pki = dir.join("pki");
    let logs = dir.join("logs");
    for d in [&dir, &pki, &logs] {
        std::fs::create_dir_all(d)
            .map_err(|e| CliError::failed(format!("cannot create {}: {}", d.display(), fleet_common::io_reason(&e))))?;
    }
    let coordinator_bin = find_binary("fleet-coordinator", args.bin_dir.as_deref())?;
    let agent_bin = find_binary("fleet-agent", args.bin_dir.as_deref())?;
    ensure_pki(&pki)?;
    // Install the handlers before any child exists, so a Ctrl-C during start-up still stops them.
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| CliError::failed(e.to_string()))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| CliError::failed(e.to_string()))?;

    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).map_err(|e| CliError::failed(e.to_string()))?;
    certs::write_file(&rules.join("fleet.rules.yml"), DEFAULT_RULES, 0o644)?;
    let offline_after = humantime::format_duration((args.report_interval * 5).max(Duration::from_secs(3)));
    let coordinator_text = |data: &Path, grpc: SocketAddr, http: SocketAddr, cluster: &str| {
        format!(
            "# Written by `fleetctl dev`; rewritten at every start.\ndata_dir = \"{}\"\n[grpc]\nlisten = \"{grpc}\"\n[http]\nlisten = \"{http}\"\n[agents]\noffline_after = \"{offline_after}\"\n\
             # fleet's default rules (deploy/rules); `fleetctl alerts` shows what they raise.\n[alerting]\nrule_files = [\"{}\"]\n\
             # The dev operator may do everything, tokens and revocation included.\n[access.operators]\ndev = \"admin\"\n\
             # Machines may join with `fleetctl tokens create`.\n[enrollment]\nca_key = \"{}\"\n{cluster}{}",
            data.display(),
            rules.join("*.yml").display(),
            pki.join(certs::CA_KEY).display(),
            tls_section(&pki, "coordinator"),
        )
    };

    let mut procs = Vec::new();
    // With --ha: three etcd members, then three coordinators of cluster "dev" on them.
    let mut members: Vec<(SocketAddr, SocketAddr)> = vec![(args.grpc_listen, args.http_listen)];
    let mut cluster = String::new();
    if args.ha {
        let etcd = find_etcd()?;
        // Held together until all are picked, so that no two are the same.
        let held: Vec<std::net::TcpListener> = (0..2 * HA_MEMBERS)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| CliError::failed(format!("cannot find free ports: {e}")))?;
        let picked: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()
            .map_err(|e| CliError::failed(e.to_string()))?;
        drop(held);
        let ports: Vec<(u16, u16)> = picked.chunks(2).map(|p| (p[0], p[1])).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("etcd{i}=http://127.0.0.1:{peer}")).collect();
        for (i, (client, peer)) in ports.iter().enumerate() {
            // A new etcd cluster at every start (its members' ports are new each time): what
            // the coordinators shared is rebuilt from what they keep themselves.
            let data = dir.join(format!("etcd{i}"));
            if data.exists() {
                std::fs::remove_dir_all(&data).map_err(|e| {
                    CliError::failed(format!("cannot clear {}: {}", data.display(), fleet_common::io_reason(&e)))
                })?;
            }
            let etcd_args = vec![
                format!("--name=etcd{i}"),
                format!("--data-dir={}", dir.join(format!("etcd{i}")).display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=fleet-dev".into(),
            ];
            procs.push(spawn_args(&format!("etcd{i}"), &etcd, &etcd_args, &logs.join(format!("etcd{i}.log")))?);
        }
        let urls: Vec<String> = ports.iter().map(|(c, _)| format!("\"http://127.0.0.1:{c}\"")).collect();
        members = (0..HA_MEMBERS)
            .map(|i| Ok((ha_addr(args.grpc_listen, i)?, ha_addr(args.http_listen, i)?)))
            .collect::<Result<_, CliError>>()?;
        cluster = format!("[cluster]\nname = \"dev\"\netcd = [{}]\n", urls.join(", "));
    }
    let mut coordinators = Vec::new();
    for (i, (grpc, http)) in members.iter().enumerate() {
        let name = if args.ha { format!("coordinator{i}") } else { "coordinator".to_string() };
        let data = dir.join(&name);
        std::fs::create_dir_all(&data).map_err(|e| CliError::failed(e.to_string()))?;
        let addrs = data.join("coordinator.addrs.json");
        let _ = std::fs::remove_file(&addrs);
        let cluster = if args.ha { format!("{cluster}advertise = \"{grpc}\"\n") } else { String::new() };
        let config = dir.join(format!("{name}.toml"));
        certs::write_file(&config, &coordinator_text(&data, *grpc, *http, &cluster), 0o644)?;
        procs.push(spawn(&format!("fleet-{name}"), &coordinator_bin, &config, &logs.join(format!("{name}.log")))?);
        coordinators.push((procs.len() - 1, addrs));
    }
    let result = async {
        let mut addresses = Vec::new();
        for (at, addrs_file) in &coordinators {
            let r = tokio::select! {
                r = wait_for_addrs(&mut procs[*at], addrs_file) => r?,
                _ = sigint.recv() => return Err(CliError::failed("interrupted")),
                _ = sigterm.recv() => return Err(CliError::failed("terminated")),
            };
            addresses.push(r);
        }
        let (grpc, http) = addresses[0];
        let coordinator_urls: Vec<String> = addresses.iter().map(|(g, _)| format!("https://127.0.0.1:{}", g.port())).collect();
        let addr = format!("https://127.0.0.1:{}", grpc.port());
        let mut app_ports = Vec::new();
        let fleetctl = std::env::current_exe().map_err(|e| CliError::failed(format!("cannot find fleetctl itself: {e}")))?;
        let coordinator_line = if args.ha {
            let list: Vec<String> = coordinator_urls.iter().map(|u| format!("\"{u}\"")).collect();
            format!("coordinators = [{}]", list.join(", "))
        } else {
            format!("coordinator = \"{addr}\"")
        };
        for agent in AGENTS {
            let config = dir.join(format!("{agent}.toml"));
            let web = free_port()?;
            let app = free_port()?;
            app_ports.push(format!("{agent} http://127.0.0.1:{app}/"));
            let health_file = dir.join(format!("{agent}-web.health"));
            let text = format!(
                "# Written by `fleetctl dev`; rewritten at every start.\nname = \"{agent}\"\n{coordinator_line}\ndata_dir = \"{}\"\nreport_interval = \"{}\"\n# `fleetctl exec` may run commands here (off unless set).\nallow_exec = true\n[labels]\nenv = \"dev\"\n{}\n\
                 # A demo service: write `fail` or `hang` into {} to watch fleet restart it.\n\
                 [[services]]\nname = \"web\"\ncommand = \"{}\"\nargs = [\"demo-server\", \"--listen\", \"127.0.0.1:{web}\", \"--name\", \"web on {agent}\", \"--health-file\", \"{}\"]\nrestart = \"always\"\nstop_timeout = \"5s\"\n\
                 [services.health]\nhttp = \"http://127.0.0.1:{web}/health\"\ninterval = \"2s\"\ntimeout = \"1s\"\nretries = 3\n\n\
                 # The example app (deploy/example-app): nothing runs until a release is deployed.\n\
                 [[services]]\nname = \"app\"\ncommand = \"bin/start\"\nenv = {{ FLEETCTL = \"{}\", PORT = \"{app}\", CONF = \"{}\" }}\nstop_timeout = \"5s\"\n\
                 [services.health]\nhttp = \"http://127.0.0.1:{app}/health\"\ninterval = \"1s\"\ntimeout = \"1s\"\nretries = 3\n\
                 [services.deploy]\nroot = \"{}\"\nbackup_paths = [\"{}\"]\n\n\
                 # A demo job: every minute, a backup of the demo services' state (the newest 5 kept).\n\
                 [[jobs]]\nname = \"backup\"\nschedule = \"* * * * *\"\ncommand = \"/bin/sh\"\nworkdir = \"{}\"\ntimeout = \"30s\"\n\
                 args = [\"-c\", '''{}''']\n",
                dir.join(agent).display(),
                humantime::format_duration(args.report_interval),
                tls_section(&pki, agent),
                health_file.display(),
                fleetctl.display(),
                health_file.display(),
                fleetctl.display(),
                dir.join(agent).join("app-conf").display(),
                dir.join(agent).join("app").display(),
                dir.join(agent).join("app-conf").display(),
                dir.display(),
                backup_script(agent),
            );
            certs::write_file(&config, &text, 0o644)?;
            procs.push(spawn(agent, &agent_bin, &config, &logs.join(format!("{agent}.log")))?);
        }
        let target = Target {
            addr: addr.clone(),
            tls: TlsFiles { ca: pki.join(CA_CERT), cert: pki.join("dev.pem"), key: pki.join("dev-key.pem") },
        };
        tokio::select! {
            r = wait_online(&target, &mut procs) => r?,
            _ = sigint.recv() => return Err(CliError::failed("interrupted")),
            _ = sigterm.recv() => return Err(CliError::failed("terminated")),
        }
        let env_file = dir.join("fleetctl.env");
        // The env file also puts this fleetctl on PATH, so the hints below work as printed.
        let bin_dir = fleetctl.parent().unwrap_or(Path::new("."));
        let env = format!(
            "export FLEET_ADDR={addr}\nexport FLEET_CA={}\nexport FLEET_CERT={}\nexport FLEET_KEY={}\nexport PATH=\"{}:$PATH\"\n",
            target.tls.ca.display(),
            target.tls.cert.display(),
            target.tls.key.display(),
            bin_dir.display(),
        );
        certs::write_file(&env_file, &env, 0o644)?;
        if args.ha {
            tokio::select! {
                r = wait_leader(&target) => r?,
                _ = sigint.recv() => return Err(CliError::failed("interrupted")),
                _ = sigterm.recv() => return Err(CliError::failed("terminated")),
            }
            outln!(
                "fleet dev cluster is up: coordinators {} on a three-member etcd, agents {}",
                coordinator_urls.join(", "),
                AGENTS.join(" and ")
            );
            outln!("`fleetctl status` names the leader; kill it (see `pgrep -af fleet-coordinator`) and another leads within seconds");
        } else {
            outln!("fleet dev cluster is up: coordinator {addr}, agents {}", AGENTS.join(" and "));
        }
        outln!();
        outln!("in another terminal (the env file also puts fleetctl on PATH):");
        outln!("  source {}", env_file.display());
        outln!("  fleetctl status");
        outln!("  fleetctl hosts");
        outln!("  fleetctl host main-pc");
        outln!("  fleetctl services");
        outln!("  fleetctl logs main-pc web -f");
        outln!("  fleetctl exec main-pc -- uptime");
        outln!("  fleetctl jobs");
        outln!("  fleetctl job run main-pc backup --wait && fleetctl job history main-pc backup");
        outln!("  fleetctl restart pc2 web");
        outln!("  fleetctl alerts");
        outln!("  curl -s http://{http}/metrics | grep '^fleet_'");
        outln!("status page: http://{http}/");
        outln!();
        outln!("deploy the example app (deploy/example-app) to both agents:");
        outln!("  deploy/example-app/build.sh 1.0 && fleetctl rollout start app --artifact app-1.0.tar.gz --version 1.0 --watch");
        outln!("  it then answers on {}", app_ports.join(" and "));
        outln!();
        outln!("logs: {}/*.log   data: {}", logs.display(), dir.display());
        outln!("press Ctrl-C to stop everything");

        // Foreground until a signal or a child ends on its own. With --ha a coordinator may
        // go (that is what it is for): the others carry on.
        let mut gone = vec![false; procs.len()];
        let exited = loop {
            tokio::select! {
                _ = sigint.recv() => break None,
                _ = sigterm.recv() => break None,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let mut ended = None;
            for (i, p) in procs.iter_mut().enumerate() {
                if gone[i] {
                    continue;
                }
                if let Ok(Some(status)) = p.child.try_wait() {
                    gone[i] = true;
                    if args.ha && p.name.starts_with("fleet-coordinator") {
                        eprintln!("{} exited ({status}); the other coordinators go on", p.name);
                        continue;
                    }
                    ended = Some((p.name.clone(), p.log.clone(), Ok::<_, std::io::Error>(status)));
                    break;
                }
            }
            if ended.is_some() {
                break ended;
            }
        };
        match exited {
            None => Ok(()),
            Some((name, log, status)) => Err(CliError::failed(format!(
                "{name} exited on its own ({}); stopping the dev cluster. Its last log lines:\n{}",
                status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                tail(&log, 15)
            ))),
        }
    }
    .await;
    eprintln!("stopping the dev cluster");
    stop_all(&mut procs).await;
    stop_orphaned_services(&dir).await;
    if result.is_ok() {
        eprintln!("stopped");
    }
    result
}
