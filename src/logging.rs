//! Logging set-up. To journald (native protocol, structured fields, one
//! priority per level) when stderr is connected to the journal
//! (`$JOURNAL_STREAM`) or `--log journald` is given; otherwise human-readable
//! lines on stderr. Filtered by `RUST_LOG` (default `info`).
//!
//! Tokens and secrets never reach a log line: the code logs
//! [`crate::token::fingerprint`]s, and provider text is scrubbed first.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogTarget {
    /// journald if stderr is connected to the journal, else stderr.
    #[default]
    Auto,
    /// The journal; falls back to stderr if journald is not reachable.
    Journald,
    /// Human-readable lines on stderr.
    Stderr,
}

/// Installs the global subscriber. Later calls are ignored.
pub fn init(target: LogTarget) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
                    .with(layer.with_filter(filter()))
                    .try_init();
                return;
            }
            Err(e) => fallback = Some(e),
        }
    }
    let fields = tracing_subscriber::fmt::format::debug_fn(write_field);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .fmt_fields(fields)
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
/// the MESSAGE_ID is for the journal only.
fn write_field(
    w: &mut tracing_subscriber::fmt::format::Writer<'_>,
    field: &Field,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    match field.name() {
        "message" => write!(w, "{value:?}"),
        "message_id" => Ok(()),
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
