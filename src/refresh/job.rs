//! Refresh jobs: the tasks that talk to token endpoints and the database on
//! the owner's behalf.
//!
//! A job is handed what it needs and the owner's promise that no other job
//! for the credential runs meanwhile, and that its provider had room for it
//! (the owner counts jobs against the concurrency caps; a job never waits
//! for a slot). It records the attempt durably, calls the provider, commits
//! the outcome (guarded by generation) and only then reports back.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt as _;

use crate::config::ProviderConfig;
use crate::credential::{Credential, CredentialGrant, GrantKind, State};
use crate::event;
use crate::events::Kind;
use crate::metrics;
use crate::provider::{DpopKey, Failure, FailureKind, ProviderClient, TokenGrant};
use crate::store::{GroupCommit, Store};
use crate::token::{expires_at_ms, now_ms};

/// What the owner asks [`start_job`](super::Refresher) for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// Refresh the credential (first committing any tokens held in memory).
    Refresh,
    /// Only retry the commit of the tokens held in memory.
    CommitRetry,
}

/// What one job does.
pub(crate) enum Work {
    /// Refresh with the refresh token on record.
    Refresh { provider: Arc<ProviderConfig> },
    /// Commit the tokens held in memory since their commit failed (the only
    /// copy of the newest refresh token), then refresh: from the database
    /// if the commit now succeeds, else from the held tokens.
    CommitThenRefresh {
        provider: Arc<ProviderConfig>,
        held: Credential,
    },
    /// Only retry the commit of the held tokens.
    Commit { held: Credential },
}

/// What a job works on: one credential generation, and the means to reach
/// the database and the provider. [`Job::run`] is given the [`Work`].
pub(crate) struct Job {
    pub(crate) commits: GroupCommit,
    pub(crate) store: Store,
    pub(crate) client: ProviderClient,
    pub(crate) name: Arc<str>,
    pub(crate) generation: i64,
    /// An earlier refresh ended without a known outcome.
    pub(crate) earlier_unknown: bool,
}

/// Where a credential's newest tokens are: in the database, or only in
/// memory because the database refused them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Committed: the database holds them.
    Committed,
    /// Only in memory; their commit is retried.
    HeldInMemory,
}

/// What a job tells the owner.
pub(crate) enum Outcome {
    /// New tokens, and whether they reached the database.
    Refreshed {
        cred: Credential,
        durability: Durability,
    },
    /// The refresh failed. `cred` carries the recorded error and state, or
    /// is `None` if the credential could not even be read.
    Failed {
        cred: Option<Credential>,
        failure: Failure,
    },
    /// A commit-only job (retrying tokens held in memory) finished.
    CommitRetried(Durability),
    /// The credential was replaced or removed while the job ran.
    Superseded,
}

/// Makes the next job panic, for the refresher's tests.
#[cfg(test)]
pub(crate) static PANIC_NEXT_JOB: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

impl Job {
    /// Does `work` and says how it went.
    pub(crate) async fn run(self, work: Work) -> Outcome {
        #[cfg(test)]
        if PANIC_NEXT_JOB.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("a job panicked on purpose");
        }
        let (provider, cred, sent_at, base) = match work {
            Work::Commit { held } => {
                return match self.commit_held(held).await {
                    Some(durability) => Outcome::CommitRetried(durability),
                    None => Outcome::Superseded,
                }
            }
            Work::Refresh { provider } => {
                let sent_at = now_ms();
                let cred = self.begin(sent_at).await;
                (provider, cred, sent_at, Durability::Committed)
            }
            Work::CommitThenRefresh { provider, held } => {
                let Some(durability) = self.commit_held(held.clone()).await else {
                    return Outcome::Superseded;
                };
                // Sent after the commit, as the attempt starts then.
                let sent_at = now_ms();
                if durability == Durability::Committed {
                    // The database and memory agree now, but the attempt
                    // still has to be marked.
                    let cred = self.begin(sent_at).await;
                    (provider, cred, sent_at, Durability::Committed)
                } else {
                    // The database is failing and holds an older refresh
                    // token than memory: refreshing with the newest one (the
                    // only one the provider still accepts) beats letting the
                    // access token die.
                    (provider, Ok(held), sent_at, Durability::HeldInMemory)
                }
            }
        };
        match cred {
            Ok(cred) => self.refresh(&provider, cred, sent_at, base).await,
            Err(outcome) => outcome,
        }
    }

    /// Commits tokens held in memory: whether that worked, or `None` if the
    /// credential was replaced or removed meanwhile.
    async fn commit_held(&self, held: Credential) -> Option<Durability> {
        match self.commits.save(held).await {
            Ok(true) => Some(Durability::Committed),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(tokend_credential = %self.name, tokend_error = %e, "commit of tokens held in memory still failing");
                Some(Durability::HeldInMemory)
            }
        }
    }

    /// Records durably that a refresh is about to be sent and reads the
    /// credential back, refresh token included. If the mark cannot be
    /// written, reads the credential anyway: the mark only helps a later
    /// diagnosis, and a lapsed access token helps no one.
    async fn begin(&self, at: i64) -> Result<Credential, Outcome> {
        let marked = self
            .commits
            .begin(self.name.to_string(), self.generation, at)
            .await;
        let cred = match marked {
            Ok(cred) => cred,
            // Another daemon may own the database now: refreshing would
            // rotate the refresh token under it.
            Err(e) if e.is_ownership_lost() => {
                return Err(Outcome::Failed {
                    cred: None,
                    failure: failure(FailureKind::Transient, &e.to_string()),
                })
            }
            Err(e) => {
                tracing::warn!(
                    tokend_credential = %self.name, tokend_error = %e,
                    "cannot record the refresh attempt in the database; refreshing anyway"
                );
                match self.store.load(&self.name).await {
                    Ok(cred) => cred.filter(|c| c.generation == self.generation),
                    Err(e) => {
                        return Err(Outcome::Failed {
                            cred: None,
                            failure: failure(
                                FailureKind::Transient,
                                &format!("cannot read the credential from the database: {e}"),
                            ),
                        })
                    }
                }
            }
        };
        cred.ok_or(Outcome::Superseded)
    }

    /// Refreshes `cred`; `base` says whether `cred` is what the database
    /// holds (a failure is then recorded there) or only held in memory.
    async fn refresh(
        self,
        provider: &ProviderConfig,
        mut cred: Credential,
        sent_at: i64,
        base: Durability,
    ) -> Outcome {
        let grant = match request_grant(&cred) {
            Ok(grant) => grant,
            Err(f) => {
                metrics::refresh_done(&provider.name, f.kind.into());
                return self.fail(cred, f, base).await;
            }
        };
        // `begin` keeps the mark of an earlier attempt whose outcome is
        // unknown; so does this copy, which the failure path saves.
        cred.refresh_started_at = Some(cred.refresh_started_at.unwrap_or(sent_at));
        if let Err(f) = ensure_dpop_key(provider, &mut cred) {
            metrics::refresh_done(&provider.name, f.kind.into());
            return self.fail(cred, f, base).await;
        }
        let asked = Instant::now();
        let result = self
            .client
            .request_bound(&provider.endpoint, &grant, cred.dpop_key.as_ref())
            .await;
        metrics::refresh_request_took(&provider.name, asked.elapsed());
        match result {
            Ok(set) => {
                metrics::refresh_done(&provider.name, metrics::RefreshResult::Success);
                let (expires_at, source) = expires_at_ms(&set, sent_at, provider.default_lifetime);
                cred.apply(set, sent_at, expires_at, source);
                let durability = match self.commits.save(cred.clone()).await {
                    Ok(true) => Durability::Committed,
                    Ok(false) => return Outcome::Superseded,
                    Err(e) => {
                        tracing::error!(tokend_credential = %self.name, tokend_error = %e, "commit of refreshed tokens failed");
                        Durability::HeldInMemory
                    }
                };
                Outcome::Refreshed { cred, durability }
            }
            Err(mut f) => {
                if f.kind == FailureKind::Reauth
                    && cred.grant.kind() == GrantKind::ClientCredentials
                {
                    // No grant of a person's to authorize again: whatever
                    // the provider rejected is the client's configuration.
                    f.kind = FailureKind::Misconfigured;
                }
                if f.kind == FailureKind::Reauth && self.earlier_unknown {
                    f.message.push_str(
                        "; an earlier refresh of this credential ended without a known outcome (tokend stopped, or the request timed out after it was sent), so the provider has probably rotated the refresh token then",
                    );
                }
                // Keep the mark when the provider may have processed the
                // request: the next attempt (or the next start) knows then.
                if !f.outcome_unknown {
                    cred.refresh_started_at = None;
                }
                metrics::refresh_done(&provider.name, f.kind.into());
                self.fail(cred, f, base).await
            }
        }
    }

    async fn fail(self, mut cred: Credential, failure: Failure, base: Durability) -> Outcome {
        cred.last_error = Some(failure.message.clone());
        cred.updated_at = now_ms();
        if failure.kind == FailureKind::Reauth {
            cred.state = State::NeedsReauth;
            cred.refresh_started_at = None;
        }
        // Held tokens stay out of a database that holds an older refresh
        // token than they do; their own commit retry writes them.
        if base == Durability::Committed {
            match self.commits.save(cred.clone()).await {
                Ok(false) => return Outcome::Superseded,
                Ok(true) => {}
                Err(e) => {
                    tracing::error!(tokend_credential = %self.name, tokend_error = %e, "could not record the refresh failure")
                }
            }
        }
        Outcome::Failed {
            cred: Some(cred),
            failure,
        }
    }
}

/// The request that renews `cred`: its refresh token, or the client's own
/// credentials for a client_credentials credential.
fn request_grant(cred: &Credential) -> Result<TokenGrant, Failure> {
    match &cred.grant {
        CredentialGrant::ClientCredentials { scope, params } => Ok(TokenGrant::ClientCredentials {
            scope: scope.clone(),
            params: params.clone(),
        }),
        CredentialGrant::RefreshToken => match cred.refresh_token.clone() {
            Some(refresh_token) => Ok(TokenGrant::Refresh { refresh_token }),
            None => Err(failure(
                FailureKind::Reauth,
                "the provider never issued a refresh token and the access token has expired",
            )),
        },
    }
}

/// Runs a job's future, turning a panic into a transient failure: the
/// owner then clears `refreshing`, releases the job's running counts and
/// retries with backoff, where a lost task would leave the credential
/// refreshing forever. The mark in the database stays, as for any attempt
/// whose outcome is unknown.
pub(crate) async fn run_caught(name: &str, job: impl Future<Output = Outcome>) -> Outcome {
    let panic = match AssertUnwindSafe(job).catch_unwind().await {
        Ok(outcome) => return outcome,
        Err(panic) => panic,
    };
    // Only a literal message: a formatted one could carry anything.
    let what = panic
        .downcast_ref::<&'static str>()
        .map_or_else(String::new, |m| format!(": {m}"));
    event!(
        error, Kind::RefreshFailed,
        tokend_credential = %name,
        "the refresh job panicked{what}; this is a bug in tokend, please report it; retrying with backoff"
    );
    let mut f = failure(
        FailureKind::Transient,
        "the refresh job failed unexpectedly (a bug in tokend; see the log)",
    );
    f.outcome_unknown = true;
    Outcome::Failed {
        cred: None,
        failure: f,
    }
}

/// Exchanges an authorization code (or polls with a device code); the owner
/// stores the result. `dpop_key` is the key to bind the tokens to, if the
/// caller made one already (a device login keeps one for all its polls).
pub(crate) async fn exchange(
    client: ProviderClient,
    provider: Arc<ProviderConfig>,
    name: String,
    grant: TokenGrant,
    dpop_key: Option<DpopKey>,
) -> Result<Credential, Failure> {
    let mut cred = Credential::new(&name, &provider.name, None, now_ms());
    cred.dpop_key = dpop_key;
    // The key exists before the code is exchanged: the tokens are bound to it.
    ensure_dpop_key(&provider, &mut cred)?;
    let sent_at = now_ms();
    let set = client
        .request_bound(&provider.endpoint, &grant, cred.dpop_key.as_ref())
        .await?;
    let (expires_at, source) = expires_at_ms(&set, sent_at, provider.default_lifetime);
    cred.apply(set, sent_at, expires_at, source);
    Ok(cred)
}

/// Gives `cred` a DPoP key if its provider uses DPoP and it has none: it
/// was made before the provider's `dpop = true`. Its refresh token was
/// issued unbound then; the tokens from now on are bound to the new key.
pub(crate) fn ensure_dpop_key(
    provider: &ProviderConfig,
    cred: &mut Credential,
) -> Result<(), Failure> {
    if cred.dpop_key.is_none() {
        cred.dpop_key = new_dpop_key(provider, &cred.name)?;
    }
    Ok(())
}

/// A new DPoP key for credential `name` if its provider uses DPoP.
pub(crate) fn new_dpop_key(
    provider: &ProviderConfig,
    name: &str,
) -> Result<Option<DpopKey>, Failure> {
    if !provider.endpoint.dpop {
        return Ok(None);
    }
    let key = DpopKey::generate().map_err(|e| failure(FailureKind::Transient, &e.to_string()))?;
    tracing::info!(tokend_credential = %name, tokend_provider = %provider.name, tokend_dpop_jkt = %key.thumbprint(), "new DPoP key for the credential");
    Ok(Some(key))
}

fn failure(kind: FailureKind, message: &str) -> Failure {
    Failure {
        kind,
        status: None,
        error_code: None,
        message: message.to_string(),
        retry_after: None,
        outcome_unknown: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_gets_a_dpop_key_once_and_only_from_a_dpop_provider() {
        let provider = |dpop: bool| {
            let cfg = crate::config::parse_config(&format!(
                "[providers.p]\ntoken_url = \"https://p.example/t\"\nclient_id = \"i\"\nclient_auth = \"none\"\ndpop = {dpop}\n"
            ))
            .unwrap();
            cfg.providers["p"].clone()
        };
        let mut cred = Credential::new("c", "p", None, 0);
        ensure_dpop_key(&provider(false), &mut cred).unwrap();
        assert!(cred.dpop_key.is_none());
        // Made before its provider used DPoP: a key at its next request.
        ensure_dpop_key(&provider(true), &mut cred).unwrap();
        let jkt = cred.dpop_key.as_ref().unwrap().thumbprint();
        // Kept afterwards: every token stays bound to the same key.
        ensure_dpop_key(&provider(true), &mut cred).unwrap();
        assert_eq!(cred.dpop_key.unwrap().thumbprint(), jkt);
    }

    #[tokio::test]
    async fn a_panicking_job_is_a_transient_failure_with_unknown_outcome() {
        let outcome = run_caught("c", async { panic!("job blew up") }).await;
        let Outcome::Failed { cred, failure } = outcome else {
            panic!("not a failure");
        };
        assert!(cred.is_none());
        assert_eq!(failure.kind, FailureKind::Transient);
        assert!(failure.outcome_unknown);
        assert!(
            failure.message.contains("unexpectedly"),
            "{}",
            failure.message
        );
        // A job that does not panic is passed through.
        let outcome =
            run_caught("c", async { Outcome::CommitRetried(Durability::Committed) }).await;
        assert!(matches!(
            outcome,
            Outcome::CommitRetried(Durability::Committed)
        ));
    }
}
