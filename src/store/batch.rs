//! TEMPORARY placeholder until the group-commit branch lands.

use super::{Store, StoreError};
use crate::credential::Credential;

/// Group-commit handle (placeholder: one statement per call).
#[derive(Clone, Debug)]
pub struct GroupCommit {
    store: Store,
}

impl GroupCommit {
    /// Starts the queue.
    pub fn start(store: Store, _max_batch: usize) -> GroupCommit {
        GroupCommit { store }
    }

    /// Marks a refresh as started and returns the stored credential.
    pub async fn begin(
        &self,
        name: String,
        generation: i64,
        at: i64,
    ) -> Result<Option<Credential>, StoreError> {
        if !self
            .store
            .mark_refresh_started(&name, generation, at)
            .await?
        {
            return Ok(None);
        }
        self.store.load(&name).await
    }

    /// Saves an outcome.
    pub async fn save(&self, cred: Credential) -> Result<bool, StoreError> {
        self.store.save_outcome(&cred).await
    }
}
