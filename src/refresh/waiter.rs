//! Callers waiting for a credential's next refresh attempt, and how each
//! is answered once it ends.

use std::sync::Arc;
use std::time::Duration;

use super::request::Reply;
use super::timing::secs_up;
use super::{RefreshError, View};
use crate::provider::{Failure, FailureKind};

/// What a waiter wants from the next refresh attempt.
pub(crate) enum Waiter {
    /// A token valid for at least this long.
    Token {
        min_valid_ms: i64,
        reply: Reply<Arc<View>>,
    },
    /// The outcome of the attempt: an error if it failed.
    Attempt { reply: Reply<Arc<View>> },
    /// The credential's view after the attempt, whatever happened.
    Settled { reply: Reply<Arc<View>> },
}

impl Waiter {
    /// Whether `view` answers this waiter already, with no refresh.
    pub(crate) fn satisfied_by(&self, view: &View, now: i64) -> bool {
        match self {
            Waiter::Token { min_valid_ms, .. } => view.valid_token(now, *min_valid_ms).is_some(),
            Waiter::Settled { .. } => view.valid_token(now, 0).is_some(),
            Waiter::Attempt { .. } => false,
        }
    }

    /// Answers with `result`, whatever the waiter wanted.
    pub(crate) fn answer(self, result: Result<Arc<View>, RefreshError>) {
        let reply = match self {
            Waiter::Token { reply, .. } | Waiter::Attempt { reply } | Waiter::Settled { reply } => {
                reply
            }
        };
        let _ = reply.send(result);
    }

    /// Answers after a refresh attempt; `failure` is set if it failed.
    pub(crate) fn answer_after(self, view: &Arc<View>, now: i64, failure: Option<&Failure>) {
        let (reply, result) = match self {
            Waiter::Settled { reply } => (reply, Ok(Arc::clone(view))),
            Waiter::Attempt { reply } => match failure {
                None => (reply, Ok(Arc::clone(view))),
                Some(f) => (reply, Err(failure_error(view, f, now))),
            },
            Waiter::Token {
                min_valid_ms,
                reply,
            } => (reply, token_after(view, now, min_valid_ms, failure)),
        };
        let _ = reply.send(result);
    }
}

/// A token read's answer after an attempt.
fn token_after(
    view: &Arc<View>,
    now: i64,
    min_valid_ms: i64,
    failure: Option<&Failure>,
) -> Result<Arc<View>, RefreshError> {
    if view.valid_token(now, min_valid_ms).is_some() {
        return Ok(Arc::clone(view));
    }
    if let Some(f) = failure {
        return Err(failure_error(view, f, now));
    }
    let secs = view.expires_at.unwrap_or(now).saturating_sub(now) / 1000;
    Err(RefreshError::Unavailable {
        name: view.name.to_string(),
        reason: format!(
            "the provider issued a token valid for only {secs}s, less than the {}s asked for",
            min_valid_ms / 1000
        ),
    })
}

/// The error a failed attempt answers with.
fn failure_error(view: &View, f: &Failure, now: i64) -> RefreshError {
    let name = view.name.to_string();
    match f.kind {
        FailureKind::Reauth => RefreshError::NeedsReauth {
            name,
            provider: view.provider.to_string(),
            reason: f.message.clone(),
        },
        FailureKind::Misconfigured => RefreshError::Paused {
            name,
            reason: f.message.clone(),
        },
        FailureKind::Transient => match view.next_refresh_at {
            Some(at) => RefreshError::RetryLater {
                name,
                reason: format!(
                    "{}; the next attempt is in {}s",
                    f.message,
                    secs_up(at.saturating_sub(now))
                ),
                retry_after: Duration::from_millis(
                    u64::try_from(at.saturating_sub(now)).unwrap_or(0),
                ),
            },
            None => RefreshError::Unavailable {
                name,
                reason: f.message.clone(),
            },
        },
    }
}
