//! The slot table: every credential's owner-side state in a slab, and the
//! map its views are published into.
//!
//! Memory is what lets the refresher hold a million credentials: per
//! credential it keeps the published view and a [`Slot`] of a few words.
//! What few credentials need at any moment (callers waiting for a refresh,
//! tokens whose commit failed) is boxed apart in [`Outstanding`].

use std::sync::Arc;

use dashmap::DashMap;

use super::admission::Queued;
use super::tally::Tally;
use super::updates::Updates;
use super::waiter::Waiter;
use super::View;
use crate::credential::Credential;

/// The views readers load without asking the owner, by credential name.
pub(crate) type Published = Arc<DashMap<Arc<str>, Arc<View>>>;

/// The owner's private state for one credential, beside its published view
/// (which carries the schedule, the flags and the extras users see).
pub(crate) struct Slot {
    /// The view as last published.
    pub(crate) view: Arc<View>,
    /// The stored generation; a job's report for another one is stale.
    pub(crate) generation: i64,
    /// Consecutive transient refresh failures.
    pub(crate) attempt: u32,
    /// The last refresh ended without a known outcome (a crash, or a
    /// timeout after sending): a rejection now probably means the provider
    /// rotated the token then.
    pub(crate) earlier_unknown: bool,
    /// Due or asked for, and waiting in an admission queue for room.
    pub(crate) queued: Option<Queued>,
    /// What few credentials need at any moment.
    pub(crate) outstanding: Option<Box<Outstanding>>,
}

/// The part of a [`Slot`] most credentials never use: what is still
/// outstanding for it.
#[derive(Default)]
pub(crate) struct Outstanding {
    /// Callers waiting for the next refresh attempt.
    pub(crate) waiters: Vec<Waiter>,
    /// Tokens newer than the database's, held since their commit failed.
    pub(crate) held: Option<HeldTokens>,
}

/// Tokens held in memory because committing them failed, and when their
/// commit is retried.
pub(crate) struct HeldTokens {
    /// The credential as it should be stored: the only copy of the newest
    /// refresh token.
    pub(crate) cred: Credential,
    /// When to retry the commit (Unix ms).
    pub(crate) retry_at: i64,
    /// Consecutive failed commits.
    pub(crate) attempt: u32,
}

impl Slot {
    /// The held tokens, if their commit failed.
    pub(crate) fn held(&self) -> Option<&HeldTokens> {
        self.outstanding.as_ref().and_then(|o| o.held.as_ref())
    }

    /// When the schedule should wake this slot: the earlier of its refresh
    /// and a commit retry; never while a job runs or it waits for room.
    pub(crate) fn wake_at(&self) -> Option<i64> {
        if self.view.refreshing || self.queued.is_some() {
            return None;
        }
        let retry = self.held().map(|h| h.retry_at);
        match (self.view.next_refresh_at, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The slab of slots, the published map and the status tally.
pub(crate) struct Slots {
    /// Credentials by slot number (`View::slot`); `None` is a free slot.
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    published: Published,
    tally: Tally,
    /// Something changed since the service manager's status line was sent.
    changed: bool,
    /// Where outputs hear of new tokens, state changes and removals.
    updates: Updates,
}

impl Slots {
    /// An empty table publishing into `published`.
    pub(crate) fn new(published: Published) -> Slots {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
            published,
            tally: Tally::default(),
            changed: true,
            updates: Updates::new(),
        }
    }

    /// The outputs' channel.
    pub(crate) fn updates(&self) -> &Updates {
        &self.updates
    }

    /// Frees memory the load left unused.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
    }

    /// One past the highest slot number in use or free.
    pub(crate) fn len(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    pub(crate) fn get(&self, id: u32) -> Option<&Slot> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, id: u32) -> Option<&mut Slot> {
        self.slots.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Every slot in use.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut().flatten()
    }

    /// The slot of the credential named `name`.
    pub(crate) fn id_of(&self, name: &str) -> Option<u32> {
        self.published.get(name).map(|v| v.slot)
    }

    /// The slot's current view.
    pub(crate) fn view(&self, id: u32) -> Option<Arc<View>> {
        self.get(id).map(|s| Arc::clone(&s.view))
    }

    /// Puts a new credential in a free slot (not yet published).
    pub(crate) fn insert(&mut self, mut view: View, generation: i64) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                self.len().saturating_sub(1)
            }
        };
        view.slot = id;
        self.slots[id as usize] = Some(Slot {
            view: Arc::new(view),
            generation,
            attempt: 0,
            earlier_unknown: false,
            queued: None,
            outstanding: None,
        });
        id
    }

    /// Takes the credential in slot `id` out of the table and the published
    /// map, freeing the slot.
    pub(crate) fn remove(&mut self, id: u32) -> Option<Slot> {
        let slot = self.slots.get_mut(id as usize).and_then(Option::take)?;
        self.free.push(id);
        if let Some((_, old)) = self.published.remove(&slot.view.name) {
            self.tally.remove(&old);
            self.updates.removed(&old.name);
        }
        self.changed = true;
        Some(slot)
    }

    /// Publishes the slot's view for readers and counts it in the tally.
    pub(crate) fn publish(&mut self, id: u32) {
        let Some(view) = self.view(id) else {
            return;
        };
        self.tally.add(&view);
        // Sent after the insert, so a receiver that lagged and re-reads the
        // map finds this view.
        let old = self
            .published
            .insert(Arc::clone(&view.name), Arc::clone(&view));
        if let Some(old) = &old {
            self.tally.remove(old);
        }
        self.updates.published(old.as_deref(), &view);
        self.changed = true;
    }

    /// The credentials counted by state.
    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Whether anything changed since the status line was last sent.
    pub(crate) fn changed(&self) -> bool {
        self.changed
    }

    /// Notes that the status line was sent.
    pub(crate) fn mark_reported(&mut self) {
        self.changed = false;
    }

    /// The slot's outstanding part, created if it has none.
    pub(crate) fn outstanding(&mut self, id: u32) -> Option<&mut Outstanding> {
        let slot = self.get_mut(id)?;
        Some(slot.outstanding.get_or_insert_with(Box::default))
    }

    /// Adds a caller waiting for the slot's next refresh attempt.
    pub(crate) fn add_waiter(&mut self, id: u32, waiter: Waiter) {
        match self.outstanding(id) {
            Some(o) => o.waiters.push(waiter),
            None => waiter.answer(Err(super::RefreshError::ShuttingDown)),
        }
    }

    /// Takes the callers waiting on slot `id`.
    pub(crate) fn take_waiters(&mut self, id: u32) -> Vec<Waiter> {
        let waiters = self
            .get_mut(id)
            .and_then(|s| s.outstanding.as_mut())
            .map(|o| std::mem::take(&mut o.waiters))
            .unwrap_or_default();
        self.drop_outstanding_if_empty(id);
        waiters
    }

    /// Forgets the tokens held in memory (committed now, or replaced), and
    /// says whether there were any.
    pub(crate) fn forget_held(&mut self, id: u32) -> bool {
        let held = self
            .get_mut(id)
            .and_then(|s| s.outstanding.as_mut())
            .and_then(|o| o.held.take());
        self.drop_outstanding_if_empty(id);
        held.is_some()
    }

    /// Drops the slot's outstanding part once it holds nothing.
    pub(crate) fn drop_outstanding_if_empty(&mut self, id: u32) {
        if let Some(slot) = self.get_mut(id) {
            if slot
                .outstanding
                .as_ref()
                .is_some_and(|o| o.waiters.is_empty() && o.held.is_none())
            {
                slot.outstanding = None;
            }
        }
    }
}
