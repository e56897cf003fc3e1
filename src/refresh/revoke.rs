//! Removing a credential with revocation (RFC 7009): the handle reads the
//! credential through the owner (which awaits only the database), sends the
//! revocation itself (the owner never awaits a provider), then asks the
//! owner to delete. Asked for (`?revoke=true`, `tokend remove --revoke`),
//! a failed revocation keeps the credential unless forced: a user who asked
//! to revoke must not believe a live grant is gone. Configured alone
//! (`revoke_on_remove`), the delete happens anyway and the answer says the
//! revocation failed.

use std::sync::Arc;

use super::request::Command;
use super::{RefreshError, Refresher, RefresherHandle};
use crate::api::{Removed, Revocation};
use crate::config::ProviderConfig;
use crate::credential::Credential;
use crate::event;
use crate::events::Kind;
use crate::provider::Revocable;

/// What the remover asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RemoveOptions {
    /// Revoke first (`?revoke=true`), even if the provider does not say
    /// `revoke_on_remove`.
    pub(crate) revoke: bool,
    /// Delete even if an asked-for revocation failed.
    pub(crate) force: bool,
}

impl Refresher {
    /// The stored credential (tokens included) and its provider, for a
    /// revocation before its removal.
    pub(super) async fn for_revocation(
        &self,
        name: &str,
    ) -> Result<(Credential, Option<Arc<ProviderConfig>>), RefreshError> {
        if self.slots.id_of(name).is_none() {
            return Err(RefreshError::NotFound(name.to_string()));
        }
        let cred = self
            .store
            .load(name)
            .await?
            .ok_or_else(|| RefreshError::NotFound(name.to_string()))?;
        let provider = self.config.providers.get(&cred.provider).cloned();
        Ok((cred, provider))
    }
}

impl RefresherHandle {
    /// Deletes a credential, revoking its token first if asked or if its
    /// provider says `revoke_on_remove`.
    pub(crate) async fn remove_with(
        &self,
        name: &str,
        opts: RemoveOptions,
    ) -> Result<Removed, RefreshError> {
        let (cred, provider) = self
            .ask(|reply| Command::ForRevocation {
                name: name.to_string(),
                reply,
            })
            .await?;
        let configured = provider.as_deref().is_some_and(|p| p.revoke_on_remove);
        let (revocation, revocation_error) = if opts.revoke || configured {
            self.revoke(&cred, provider.as_deref()).await
        } else {
            (Revocation::NotRequested, None)
        };
        if let (Revocation::Failed, Some(message)) = (revocation, &revocation_error) {
            if opts.revoke && !opts.force {
                return Err(RefreshError::RevocationFailed {
                    name: name.to_string(),
                    message: message.clone(),
                });
            }
        }
        drop(cred);
        self.remove(name).await?;
        Ok(Removed {
            name: name.to_string(),
            revocation,
            revocation_error,
        })
    }

    /// Revokes the credential's refresh token, or its access token if it
    /// has none (client_credentials).
    async fn revoke(
        &self,
        cred: &Credential,
        provider: Option<&ProviderConfig>,
    ) -> (Revocation, Option<String>) {
        let token = match (&cred.refresh_token, &cred.access_token) {
            (Some(rt), _) => Revocable::RefreshToken(rt),
            (None, Some(at)) => Revocable::AccessToken(at),
            (None, None) => return (Revocation::NothingToRevoke, None),
        };
        let result = match provider {
            Some(p) => self.client.revoke(&p.endpoint, token).await.map_err(|e| e.to_string()),
            None => Err(format!(
                "provider `{}` is not in the configuration or still waits for its metadata, so tokend cannot reach its revocation endpoint",
                cred.provider
            )),
        };
        match result {
            Ok(()) => {
                event!(info, Kind::Revoked, tokend_credential = %cred.name, tokend_provider = %cred.provider, "token revoked at the provider");
                (Revocation::Revoked, None)
            }
            Err(message) => {
                event!(warn, Kind::RevocationFailed, tokend_credential = %cred.name, tokend_provider = %cred.provider, tokend_error = %message, "revocation failed");
                (Revocation::Failed, Some(message))
            }
        }
    }
}
