//! Logging set-up. To journald (native protocol, structured fields, one
//! priority per level) when stderr is connected to the journal
//! (`$JOURNAL_STREAM`) or `--log journald` is given; otherwise human-readable
//! lines on stderr. Filtered by `RUST_LOG`, by default [`DEFAULT_FILTER`]:
//! tokend's own events from info, its dependencies' from warn. Neither
//! output carries a dependency's source path: stderr lines never show code
//! locations, and the `log.*` fields of events bridged from the `log` crate
//! are dropped.
//!
//! Tokens and secrets never reach a log line: the code logs
//! [`crate::token::fingerprint`]s, and provider text is scrubbed first.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum LogTarget {
    /// journald if stderr is connected to the journal, else stderr.
    #[default]
    Auto,
    /// The journal; falls back to stderr if journald is not reachable.
    Journald,
    /// Human-readable lines on stderr.
    Stderr,
}

/// The filter when `RUST_LOG` is unset or invalid. tokend reports every
/// failure of a request itself, with the dependency's reason, so what
/// reqwest, hyper or sqlx say below warn is noise in the journal. The
/// platform verifier logs each certificate it rejects at error, a duplicate
/// of tokend's own `refresh_failed` warning naming the same reason.
pub(crate) const DEFAULT_FILTER: &str = "warn,tokend=info,rustls=off,rustls_platform_verifier=off";

/// The filter from `RUST_LOG`'s value, else [`DEFAULT_FILTER`]: a list of
/// `level` and `target=level` directives, the longest matching target
/// winning. Not tracing-subscriber's `EnvFilter`, whose span and field
/// filters need the regex engine: its tables and code are relocated by the
/// dynamic loader at every start of every `tokend get`.
fn filter(env: Option<&str>) -> Targets {
    env.filter(|directives| directives.split(',').all(valid_directive))
        .and_then(|directives| directives.parse().ok())
        .unwrap_or_else(|| {
            DEFAULT_FILTER
                .parse()
                .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
        })
}

/// `level`, `target` or `target=level`, a target being a module path.
/// `Targets` alone would take any text without `=` for a target, so a
/// mistyped `RUST_LOG` would silence the daemon instead of falling back to
/// the default.
fn valid_directive(directive: &str) -> bool {
    let level = |l: &str| l.eq_ignore_ascii_case("off") || l.parse::<tracing::Level>().is_ok();
    let target = |t: &str| {
        !t.is_empty()
            && t.split("::").all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
    };
    match directive.trim().split_once('=') {
        Some((t, l)) => target(t.trim()) && level(l.trim()),
        None => level(directive.trim()) || target(directive.trim()),
    }
}

/// The stderr layer writing to `writer`: no target, no code location, the
/// fields as [`write_field`] prints them.
fn stderr_layer<S, W>(writer: W, ansi: bool) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_file(false)
        .with_line_number(false)
        .with_ansi(ansi)
        .fmt_fields(tracing_subscriber::fmt::format::debug_fn(write_field))
}

/// Installs the global subscriber. Later calls are ignored.
pub(crate) fn init(target: LogTarget) {
    let env = std::env::var("RUST_LOG").ok();
    let filter = || filter(env.as_deref());
    let want_journal = match target {
        LogTarget::Auto => stderr_is_journal(),
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
    };
    let mut fallback = None;
    if want_journal {
        match journald_layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => fallback = Some(e),
        }
    }
    // A global filter, not a per-layer one: sqlx asks `tracing::enabled!`
    // before each statement without logging an event after it, and a
    // per-layer filter then drops the next event on that thread (on
    // PostgreSQL, whose driver runs on the caller's thread, "tokend started"
    // went missing).
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(stderr_layer(
            std::io::stderr,
            std::io::stderr().is_terminal(),
        ))
        .try_init();
    if let Some(e) = fallback {
        tracing::warn!("journald is not reachable ({e}); logging to stderr");
    }
}

fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    let mut priorities = PriorityMappings::new();
    // syslog meaning: a refresh is informational, not a "notice".
    priorities.info = Priority::Informational;
    priorities.debug = Priority::Debug;
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_priority_mappings(priorities)
        .with_syslog_identifier("tokend".into()))
}

/// Stderr format: the message, then ` credential=x` for `tokend_credential`;
/// the MESSAGE_ID is for the journal only, and the `log.file`, `log.line`,
/// `log.target` and `log.module_path` of a `log` record bridged into tracing
/// name a build machine's paths, of no use to an operator.
fn write_field(
    w: &mut tracing_subscriber::fmt::format::Writer<'_>,
    field: &Field,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    match field.name() {
        "message" => write!(w, "{value:?}"),
        "message_id" => Ok(()),
        name if name.starts_with("log.") => Ok(()),
        name => write!(
            w,
            " {}={value:?}",
            name.strip_prefix("tokend_").unwrap_or(name)
        ),
    }
}

/// Whether stderr is the stream systemd connected to the journal
/// (`$JOURNAL_STREAM` holds its `device:inode`).
fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat on fd 2 writes into the buffer we own; we read it only on success.
    let ok = unsafe { libc::fstat(2, stat.as_mut_ptr()) } == 0;
    if !ok {
        return false;
    }
    // SAFETY: fstat succeeded, so the buffer is initialised.
    let stat = unsafe { stat.assume_init() };
    expected.to_string_lossy() == format!("{}:{}", stat.st_dev, stat.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Buffer {
        type Writer = Buffer;
        fn make_writer(&self) -> Buffer {
            self.clone()
        }
    }

    /// What the stderr layer prints of a few events under `env`'s filter.
    fn log_lines(env: Option<&str>) -> String {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(stderr_layer(buffer.clone(), false).with_filter(filter(env)));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(tokend_credential = "c", "own info");
            tracing::debug!("own debug");
            // As tracing-log bridges a `log` record from the platform verifier.
            tracing::event!(
                target: "rustls_platform_verifier::verification::others",
                tracing::Level::ERROR,
                log.file = "/root/.cargo/registry/src/index.crates.io-0/rustls-platform-verifier-0.7.1/src/verification/others.rs",
                log.line = 146,
                "failed to verify TLS certificate: invalid peer certificate: UnknownIssuer"
            );
            tracing::info!(target: "hyper_util::client", "dependency info");
            tracing::event!(
                target: "sqlx::query",
                tracing::Level::WARN,
                log.file = "/root/.cargo/registry/src/sqlx-core/src/logger.rs",
                "dependency warning"
            );
        });
        let out = buffer.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn dependencies_log_from_warn_without_their_paths() {
        let out = log_lines(None);
        assert!(out.contains("own info credential=\"c\""), "{out}");
        assert!(out.contains("dependency warning"), "{out}");
        for absent in [
            "own debug",
            "dependency info",
            "failed to verify TLS certificate",
            ".cargo/registry",
            "log.",
            "src/logging.rs",
        ] {
            assert!(!out.contains(absent), "{absent} in {out}");
        }
    }

    #[test]
    fn rust_log_still_raises_the_level() {
        let out = log_lines(Some("debug"));
        for present in ["own debug", "dependency info", "failed to verify"] {
            assert!(out.contains(present), "{present} not in {out}");
        }
        assert!(!out.contains(".cargo/registry"), "{out}");
        let untimed = |out: String| -> Vec<String> {
            out.lines()
                .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_string())
                .collect()
        };
        for invalid in [
            "not a [valid filter",
            "tokend=loud",
            "info,=debug",
            "tokend[x]=info",
        ] {
            assert_eq!(
                untimed(log_lines(Some(invalid))),
                untimed(log_lines(None)),
                "{invalid}"
            );
        }
        let out = log_lines(Some("warn,tokend=debug,hyper_util=info"));
        for present in [
            "own debug",
            "own info",
            "dependency info",
            "dependency warning",
        ] {
            assert!(out.contains(present), "{present} not in {out}");
        }
        let out = log_lines(Some("info,rustls_platform_verifier=off"));
        assert!(!out.contains("failed to verify"), "{out}");
        assert!(!out.contains("own debug"), "{out}");
    }
}
