//! When the owner itself writes sink files (`crate::sinks`): at start-up,
//! for a token it stores before publishing it (`replace`), after a
//! removal, for the new sinks of a reload, and for a refresh whose job
//! wrote with sink lists that a reload has replaced since. Refresh jobs
//! write their own tokens (`start::launch_job`); every write carries a
//! ticket taken here in the order of the owner's decisions.

use super::job::Outcome;
use super::start::SinkWrite;
use super::Refresher;
use crate::credential::Credential;
use crate::sinks::Current;

impl Refresher {
    /// Writes every sink of every credential that has a token.
    pub(super) async fn write_all_sinks(&mut self) {
        for name in self.sinks.names() {
            let Some(view) = self.slots.id_of(&name).and_then(|id| self.slots.view(id)) else {
                continue;
            };
            let ticket = self.sinks.ticket();
            self.sinks
                .write(&name, ticket, Current::of_view(&view))
                .await;
        }
    }

    /// Writes `cred`'s token (stored as a new generation, not yet
    /// published); older decisions about the name lose to this one.
    pub(super) async fn write_stored_sinks(&mut self, cred: &Credential) {
        let ticket = self.sinks.ticket();
        self.sinks
            .write(&cred.name, ticket, Current::of_credential(cred))
            .await;
    }

    /// Applies `on_remove` to the sinks of the removed credential `name`.
    pub(super) async fn remove_sinks(&mut self, name: &str) {
        let ticket = self.sinks.ticket();
        self.sinks.removed(name, ticket).await;
    }

    /// Takes the reloaded configuration's sink lists and writes the new
    /// sinks at once. Sinks that left the configuration keep their files.
    pub(super) async fn reload_sinks(&mut self) {
        for (name, added) in self.sinks.set(&self.config.sinks) {
            let published = self
                .slots
                .id_of(&name)
                .and_then(|id| self.slots.view(id))
                .and_then(|v| Current::of_view(&v));
            self.sinks.write_added(&name, added, published).await;
        }
    }

    /// A refresh's job wrote its token with the sink lists of its time; if
    /// a reload changed them since, writes the current lists before the
    /// token is published.
    pub(super) async fn catch_up_sinks(
        &mut self,
        id: u32,
        generation: i64,
        outcome: &Outcome,
        written: Option<SinkWrite>,
    ) {
        let (Outcome::Refreshed { cred, .. }, Some(written)) = (outcome, written) else {
            return;
        };
        let current = self
            .slots
            .get(id)
            .is_some_and(|s| s.generation == generation);
        if !current || written.version == Some(self.sinks.version()) || !self.sinks.has(&cred.name)
        {
            return;
        }
        self.sinks
            .write(&cred.name, written.ticket, Current::of_credential(cred))
            .await;
    }
}
