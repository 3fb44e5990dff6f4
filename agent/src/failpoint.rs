//! Crash points for the tests of invariant 10 (debug builds only).
//!
//! A kill -9 at a random moment rarely lands in the microseconds between two steps of a
//! deploy. An agent started with `FLEET_FAILPOINTS=deploy.after-pending` (a comma-separated
//! list) kills itself with SIGKILL when it reaches that point, so the test can restart it and
//! check what the next start makes of the state left behind. Release builds compile every
//! failpoint to nothing and ignore the variable.

/// Where a deploy can be cut: after its pending record is durable, before the switch.
pub const AFTER_PENDING: &str = "deploy.after-pending";
/// After `current` points at the new release, before the earlier release's files are restored
/// and the service restarted.
pub const AFTER_SWITCH: &str = "deploy.after-switch";

/// Kills the process with SIGKILL if `name` is listed in `FLEET_FAILPOINTS` (debug builds).
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let armed = ARMED.get_or_init(|| {
            std::env::var("FLEET_FAILPOINTS")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        });
        if armed.iter().any(|a| a == name) {
            eprintln!("failpoint {name}: killing the agent (FLEET_FAILPOINTS)");
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
