//! Starting jobs: taking due slots off the schedule, asking admission for
//! room, and launching the job for a slot or a code exchange.
//!
//! Also the three ways a slot's view changes (replaced, edited, and in
//! both cases rescheduled and published), since every start changes one.

use std::sync::Arc;

use super::admission::{Queued, Waiting};
use super::job::{self, Job, JobKind, Outcome, Work};
use super::reload::missing_provider;
use super::{ExchangeStart, RefreshError, Refresher, Report, View};
use crate::sinks::{Current, ListVersion, Ticket};

/// Where started jobs go.
pub(super) enum Launch {
    /// Spawned on the refresher's task tracker.
    Spawn,
    /// Only recorded, for tests that play the jobs' part themselves.
    #[cfg(test)]
    Record(tokio::sync::mpsc::UnboundedSender<super::tests::Started>),
}

/// What a refresh job wrote to its credential's sink files before it
/// reported: under which ticket, and with which sink lists (`None`: the
/// credential had none).
pub(super) struct SinkWrite {
    pub(super) ticket: Ticket,
    pub(super) version: Option<ListVersion>,
}

impl Refresher {
    /// Registers the slot's next wake-up: its refresh or commit retry.
    pub(super) fn reschedule(&mut self, id: u32) {
        let at = self.slots.get(id).and_then(|s| s.wake_at());
        self.schedule.set(id, at);
    }

    /// Replaces the slot's view, reschedules and publishes it.
    pub(super) fn set_view(&mut self, id: u32, view: View) {
        if let Some(slot) = self.slots.get_mut(id) {
            slot.view = Arc::new(view);
        }
        self.reschedule(id);
        self.slots.publish(id);
    }

    /// Changes the slot's view in place (a copy, if readers hold the old
    /// one), then reschedules and publishes it.
    pub(super) fn edit_view(&mut self, id: u32, edit: impl FnOnce(&mut View)) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        edit(Arc::make_mut(&mut slot.view));
        self.reschedule(id);
        self.slots.publish(id);
    }

    /// Starts every job the schedule holds for `now` or earlier. A due
    /// refresh whose provider has no room waits in its ready queue.
    pub(super) fn start_due(&mut self, now: i64) {
        while let Some(id) = self.schedule.pop_due(now) {
            let Some(slot) = self.slots.get_mut(id) else {
                continue;
            };
            let refresh = slot.view.next_refresh_at.is_some_and(|r| r <= now);
            let held = slot.held().is_some();
            let provider = Arc::clone(&slot.view.provider);
            if refresh && !held && !self.admission.has_room(&provider) {
                slot.queued = Some(Queued::Scheduled);
                self.admission.queue_scheduled(provider, id);
                continue;
            }
            if refresh {
                self.start_job(id, JobKind::Refresh, now);
            } else if held {
                self.start_job(id, JobKind::CommitRetry, now);
            }
            self.reschedule(id);
        }
    }

    /// Starts waiting jobs while their providers have room: on-demand ones
    /// first, then scheduled ones.
    pub(super) fn start_waiting(&mut self, now: i64) {
        while let Some(waiting) = self.admission.next_start() {
            match waiting {
                Waiting::Exchange(x) => self.launch_exchange(x),
                Waiting::Refresh(id) => self.start_queued(id, now),
            }
        }
    }

    fn start_queued(&mut self, id: u32, now: i64) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        // Taken off the queue, so a start that finds no room after all
        // queues it again.
        match slot.queued.take() {
            Some(Queued::OnDemand) => self.start_job(id, JobKind::Refresh, now),
            Some(Queued::Scheduled) => {
                // A replacement or reload may have moved it meanwhile.
                if slot.view.next_refresh_at.is_some_and(|at| at <= now) {
                    self.start_job(id, JobKind::Refresh, now);
                }
                self.reschedule(id);
            }
            // Started on demand meanwhile.
            None => {}
        }
    }

    /// Starts a job unless one is in flight: a refresh (which first retries
    /// any failed commit), or only the commit retry. A refresh for a provider
    /// in a Retry-After window is postponed to its end instead, and one whose
    /// provider has no room waits in the on-demand queue.
    pub(super) fn start_job(&mut self, id: u32, kind: JobKind, now: i64) {
        let Some(slot) = self.slots.get_mut(id).filter(|s| !s.view.refreshing) else {
            return;
        };
        let was_queued = slot.queued.take();
        let view = Arc::clone(&slot.view);
        let Some(provider) = self.provider(&view) else {
            self.pause_for_missing_provider(id, &view);
            return self.start_commit_retry(id);
        };
        if kind == JobKind::CommitRetry {
            return self.start_commit_retry(id);
        }
        if let Some(until) = self.admission.blocked_until(&provider.name, now) {
            self.edit_view(id, |v| v.next_refresh_at = Some(until));
            return;
        }
        if !self.admission.has_room(&view.provider) {
            if let Some(slot) = self.slots.get_mut(id) {
                slot.queued = Some(Queued::OnDemand);
            }
            if was_queued != Some(Queued::OnDemand) {
                let provider = Arc::clone(&view.provider);
                self.admission
                    .queue_on_demand(provider, Waiting::Refresh(id));
            }
            return self.reschedule(id);
        }
        let work = match self.slots.get(id).and_then(|s| s.held()) {
            Some(held) => Work::CommitThenRefresh {
                provider,
                held: held.cred.clone(),
            },
            None => Work::Refresh { provider },
        };
        let ticket = self.admission.admit(&view.provider);
        self.launch_job(id, work, Some(ticket));
    }

    /// Starts the retry of a failed commit, if the slot holds tokens.
    fn start_commit_retry(&mut self, id: u32) {
        match self.slots.get(id).and_then(|s| s.held()) {
            Some(held) => {
                let held = held.cred.clone();
                self.launch_job(id, Work::Commit { held }, None);
            }
            None => self.reschedule(id),
        }
    }

    /// Nothing can refresh a credential whose provider is gone until a
    /// reload brings it back: it must not stay scheduled (that would wake
    /// us in a loop), and its waiters hear why.
    fn pause_for_missing_provider(&mut self, id: u32, view: &View) {
        let reason = view
            .paused()
            .map_or_else(|| missing_provider(&view.provider), str::to_string);
        self.edit_view(id, |v| {
            v.next_refresh_at = None;
            v.edit_extras(|n| n.paused = Some(reason.clone()));
        });
        for w in self.slots.take_waiters(id) {
            w.answer(Err(RefreshError::Paused {
                name: view.name.to_string(),
                reason: reason.clone(),
            }));
        }
    }

    /// Marks the slot refreshing and hands its job to [`Launch`].
    fn launch_job(&mut self, id: u32, work: Work, ticket: Option<super::admission::Ticket>) {
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        let name = Arc::clone(&slot.view.name);
        let generation = slot.generation;
        let job = Job {
            commits: self.commits.clone(),
            store: self.store.clone(),
            client: self.client.clone(),
            name: Arc::clone(&name),
            generation,
            earlier_unknown: slot.earlier_unknown,
        };
        self.edit_view(id, |v| v.refreshing = true);
        let reports = self.reports_tx.clone();
        match &self.launch {
            Launch::Spawn => {
                let sinks = self.sinks.clone();
                let sink_ticket = sinks.ticket();
                self.tasks.spawn(async move {
                    let outcome = job::run_caught(&name, job.run(work)).await;
                    // Committed (or held in memory) and about to be served:
                    // the files hold it first.
                    let sinks = match &outcome {
                        Outcome::Refreshed { cred, .. } => Some(SinkWrite {
                            ticket: sink_ticket,
                            version: sinks
                                .write(&name, sink_ticket, Current::of_credential(cred))
                                .await,
                        }),
                        _ => None,
                    };
                    let _ = reports.send(Report::Job {
                        slot: id,
                        generation,
                        ticket,
                        outcome,
                        sinks,
                    });
                });
            }
            #[cfg(test)]
            Launch::Record(started) => {
                let _ = started.send(super::tests::Started {
                    slot: id,
                    generation,
                    ticket,
                    work,
                    at: self.now(),
                });
            }
        }
    }

    /// Starts a code exchange, which the caller made sure has room.
    pub(super) fn launch_exchange(&mut self, x: ExchangeStart) {
        let ticket = self.admission.admit(&Arc::from(x.provider.name.as_str()));
        let client = self.client.clone();
        let reports = self.reports_tx.clone();
        self.tasks.spawn(async move {
            let ExchangeStart {
                req,
                provider,
                reply,
            } = x;
            let grant = crate::provider::TokenGrant::Exchange {
                code: req.code,
                redirect_uri: req.redirect_uri,
                code_verifier: req.code_verifier,
            };
            let result = job::exchange(client, provider, req.name.clone(), grant, None).await;
            let _ = reports.send(Report::Exchanged {
                name: req.name,
                result,
                reply,
                ticket,
            });
        });
    }
}
