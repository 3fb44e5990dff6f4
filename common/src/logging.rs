//! Structured logs for the daemons and fleetctl: `tracing` to stderr as text or JSON, or to
//! the journal with priorities when stderr is the journal (a systemd service), filtered by
//! `RUST_LOG` (default `info`).

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format `{other}`; use text or json")),
        }
    }
}

/// The filter `RUST_LOG` (or `default_directive` when unset) asks for: a default level and
/// per-target levels, `info,fleet_coordinator=debug`. (tracing's `EnvFilter` also takes span
/// and field filters, but needs a regex engine: a third of a megabyte in every agent.)
pub fn filter(rust_log: Option<&str>, default_directive: &str) -> Result<Targets, String> {
    match rust_log {
        Some(s) if !s.trim().is_empty() => s.parse::<Targets>().map_err(|e| {
            format!("RUST_LOG={s:?} is not a log filter ({e}); write for example RUST_LOG=info,fleet_agent=debug")
        }),
        _ => Ok(default_directive.parse().expect("the built-in default is a valid filter")),
    }
}

/// Installs the global subscriber. `default_directive` applies when `RUST_LOG` is unset; a
/// `RUST_LOG` that does not parse is reported on stderr and the default used.
pub fn init(format: LogFormat, default_directive: &str) {
    init_with(format, default_directive, None)
}

/// [`init`], with fleet's spans (target [`crate::telemetry::TARGET`]) exported through
/// `telemetry` when it is given. Each layer has its own filter: the log lines stay what they
/// are, and with no telemetry no layer wants those spans, so their callsites stay disabled.
pub fn init_with(format: LogFormat, default_directive: &str, telemetry: Option<&crate::telemetry::Telemetry>) {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::Layer;
    let rust_log = std::env::var("RUST_LOG").ok();
    let targets = filter(rust_log.as_deref(), default_directive).unwrap_or_else(|e| {
        eprintln!("warning: {e}; logging at {default_directive}");
        default_directive.parse().expect("the built-in default is a valid filter")
    });
    let targets = targets.with_target(crate::telemetry::TARGET, LevelFilter::OFF);
    let otel = telemetry.map(|t| {
        tracing_opentelemetry::layer().with_tracer(t.tracer()).with_filter(
            Targets::new()
                .with_target(crate::telemetry::TARGET, tracing::Level::INFO)
                .with_target("fleet", tracing::Level::WARN),
        )
    });
    // Under systemd, text goes to the journal natively: a priority per line (ERROR is err,
    // WARN warning, ...) and fields as journal fields; JSON stays JSON for shippers.
    if format == LogFormat::Text
        && crate::systemd::stderr_is_journal()
        && let Ok(journal) = tracing_journald::layer()
    {
        drop(tracing_subscriber::registry().with(otel).with(journal.with_filter(targets)).try_init());
        return;
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let result = match format {
        LogFormat::Text => {
            tracing_subscriber::registry().with(otel).with(fmt.with_target(false).with_filter(targets)).try_init()
        }
        LogFormat::Json => tracing_subscriber::registry()
            .with(otel)
            .with(fmt.json().flatten_event(true).with_current_span(false).with_filter(targets))
            .try_init(),
    };
    // A second init (tests that run two daemons in one process) keeps the first subscriber.
    drop(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn rust_log_sets_levels_per_target_and_bad_values_are_named() {
        let f = filter(Some("warn,fleet_agent=debug"), "info").unwrap();
        assert!(f.would_enable("fleet_agent::session", &Level::DEBUG));
        assert!(!f.would_enable("h2", &Level::INFO));
        assert!(f.would_enable("h2", &Level::WARN));
        let d = filter(None, "info").unwrap();
        assert!(d.would_enable("anything", &Level::INFO) && !d.would_enable("anything", &Level::DEBUG));
        let e = filter(Some("fleet_agent=loud"), "info").unwrap_err();
        assert!(e.contains("RUST_LOG=\"fleet_agent=loud\"") && e.contains("for example"), "{e}");
    }
}
