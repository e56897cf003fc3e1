//! Admission: which jobs may start now, and which wait.
//!
//! This is the one place the concurrency caps (`max_concurrent_refreshes`,
//! overall and per provider) are enforced: the owner starts a job that may
//! call a provider only with a [`Ticket`] from here, and gets the room back
//! when the job reports. Jobs never wait for a slot themselves, so a million
//! credentials falling due at once (after a long downtime) cost a queue
//! entry each, not a task each. A reload changes the caps at once: the jobs
//! in flight keep their tickets and finish; new starts obey the new caps.
//!
//! Starts that find no room wait in two kinds of queue. A read, `refresh`,
//! a new credential or a code exchange waits in the on-demand queue (one,
//! oldest first, across providers), which is served before the scheduled
//! refreshes waiting in their provider's ready queue (oldest first, in the
//! order the schedule handed them out). Here too live the `Retry-After`
//! blocks: providers that asked to be left alone until a given time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::config::Config;

/// The concurrency caps of a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Jobs calling providers at once, in all.
    pub(crate) global: usize,
    /// Jobs calling each provider at once; a provider missing here gets 1.
    pub(crate) per_provider: HashMap<String, usize>,
}

impl Caps {
    /// The caps `config` sets.
    pub(crate) fn of(config: &Config) -> Caps {
        Caps {
            global: config.daemon.max_concurrent_refreshes,
            per_provider: config
                .providers
                .iter()
                .map(|(name, p)| (name.clone(), p.max_concurrent_refreshes))
                .collect(),
        }
    }

    fn provider(&self, provider: &str) -> usize {
        self.per_provider.get(provider).copied().unwrap_or(1)
    }
}

/// Room taken by one job for `provider`; handed back with
/// [`Admission::release`] when the job reports.
#[derive(Debug)]
pub(crate) struct Ticket {
    provider: Arc<str>,
}

/// Which queue a credential waits in for room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// A scheduled refresh, in its provider's ready queue.
    Scheduled,
    /// Someone asked for it, in the on-demand queue.
    OnDemand,
}

/// A start waiting in the on-demand queue.
pub(crate) enum Waiting<E> {
    /// A refresh of this slot.
    Refresh(u32),
    /// An authorization-code exchange.
    Exchange(E),
}

/// Running counts, queues and blocks (see the module documentation). `E`
/// is what a waiting code exchange carries.
pub(crate) struct Admission<E> {
    caps: Caps,
    running: usize,
    running_by_provider: HashMap<Arc<str>, usize>,
    on_demand: VecDeque<(Arc<str>, Waiting<E>)>,
    ready: HashMap<Arc<str>, VecDeque<u32>>,
    blocked_until: HashMap<String, i64>,
}

impl<E> Admission<E> {
    /// Nothing running, nothing waiting, under `caps`.
    pub(crate) fn new(caps: Caps) -> Admission<E> {
        Admission {
            caps,
            running: 0,
            running_by_provider: HashMap::new(),
            on_demand: VecDeque::new(),
            ready: HashMap::new(),
            blocked_until: HashMap::new(),
        }
    }

    /// Applies reloaded caps; jobs in flight keep their tickets.
    pub(crate) fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
    }

    /// Whether a job for `provider` may start now.
    pub(crate) fn has_room(&self, provider: &str) -> bool {
        self.running < self.caps.global && self.running_for(provider) < self.caps.provider(provider)
    }

    /// Takes room for a job for `provider`. Callers check
    /// [`Admission::has_room`] first.
    pub(crate) fn admit(&mut self, provider: &Arc<str>) -> Ticket {
        self.running = self.running.saturating_add(1);
        let n = self
            .running_by_provider
            .entry(Arc::clone(provider))
            .or_default();
        *n = n.saturating_add(1);
        Ticket {
            provider: Arc::clone(provider),
        }
    }

    /// Gives back the room a finished job held.
    pub(crate) fn release(&mut self, ticket: Ticket) {
        self.running = self.running.saturating_sub(1);
        if let Some(n) = self.running_by_provider.get_mut(&ticket.provider) {
            *n = n.saturating_sub(1);
        }
    }

    /// Jobs running, in all.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// Jobs running for `provider`.
    pub(crate) fn running_for(&self, provider: &str) -> usize {
        self.running_by_provider.get(provider).copied().unwrap_or(0)
    }

    /// Queues a due scheduled refresh of slot `id` behind the others of
    /// its provider.
    pub(crate) fn queue_scheduled(&mut self, provider: Arc<str>, id: u32) {
        self.ready.entry(provider).or_default().push_back(id);
    }

    /// Queues a start someone asked for.
    pub(crate) fn queue_on_demand(&mut self, provider: Arc<str>, waiting: Waiting<E>) {
        self.on_demand.push_back((provider, waiting));
    }

    /// Takes the next waiting start whose provider has room: the oldest
    /// on-demand one, else a scheduled one. The caller starts it (taking a
    /// ticket) or drops it if it went stale, then asks again.
    pub(crate) fn next_start(&mut self) -> Option<Waiting<E>> {
        if self.running >= self.caps.global {
            return None;
        }
        if let Some(i) = self.on_demand.iter().position(|(p, _)| self.has_room(p)) {
            return self.on_demand.remove(i).map(|(_, w)| w);
        }
        let provider = self
            .ready
            .keys()
            .find(|p| self.has_room(p))
            .map(Arc::clone)?;
        let queue = self.ready.get_mut(&provider)?;
        let id = queue.pop_front();
        if queue.is_empty() {
            self.ready.remove(&provider);
        }
        id.map(Waiting::Refresh)
    }

    /// Everything still waiting in the on-demand queue, for shutdown.
    pub(crate) fn drain_on_demand(&mut self) -> impl Iterator<Item = Waiting<E>> + '_ {
        self.on_demand.drain(..).map(|(_, w)| w)
    }

    /// Records a provider's `Retry-After`: no refresh for it before `until`.
    pub(crate) fn block(&mut self, provider: &str, until: i64) {
        let entry = self
            .blocked_until
            .entry(provider.to_string())
            .or_insert(until);
        *entry = (*entry).max(until);
    }

    /// The end of `provider`'s `Retry-After`, if it is still on at `now`.
    pub(crate) fn blocked_until(&self, provider: &str, now: i64) -> Option<i64> {
        self.blocked_until
            .get(provider)
            .copied()
            .filter(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(global: usize, per: &[(&str, usize)]) -> Caps {
        Caps {
            global,
            per_provider: per.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
        }
    }

    fn ids(a: &mut Admission<&'static str>) -> Vec<String> {
        std::iter::from_fn(|| {
            let next = a.next_start()?;
            let (name, provider) = match next {
                Waiting::Refresh(id) => (id.to_string(), if id < 100 { "p" } else { "q" }),
                Waiting::Exchange(x) => (x.to_string(), "p"),
            };
            // Started: it takes its room.
            let _ticket = a.admit(&Arc::from(provider));
            Some(name)
        })
        .collect()
    }

    #[test]
    fn caps_count_overall_and_per_provider_and_unknown_providers_get_one() {
        let mut a: Admission<()> = Admission::new(caps(3, &[("p", 2), ("q", 5)]));
        let (p, q, gone): (Arc<str>, Arc<str>, Arc<str>) = ("p".into(), "q".into(), "gone".into());
        let t1 = a.admit(&p);
        assert!(a.has_room("p"));
        let _t2 = a.admit(&p);
        assert!(!a.has_room("p"), "provider cap");
        assert!(a.has_room("q"));
        let _t3 = a.admit(&q);
        assert!(!a.has_room("q"), "global cap");
        a.release(t1);
        assert!(a.has_room("p") && a.has_room("q"));
        assert_eq!((a.running(), a.running_for("p")), (2, 1));
        assert!(a.has_room("gone"));
        let _t4 = a.admit(&gone);
        assert!(!a.has_room("gone"));
    }

    #[test]
    fn on_demand_starts_go_first_then_each_ready_queue_in_order() {
        let mut a = Admission::new(caps(10, &[("p", 3), ("q", 1)]));
        for id in [5, 3, 9] {
            a.queue_scheduled(Arc::from("p"), id);
        }
        a.queue_scheduled(Arc::from("q"), 100);
        a.queue_scheduled(Arc::from("q"), 101);
        a.queue_on_demand(Arc::from("q"), Waiting::Refresh(102));
        a.queue_on_demand(Arc::from("p"), Waiting::Exchange("x"));
        let mut started = ids(&mut a);
        // On demand first, oldest first; then p's queue in order until its
        // cap, and nothing more of q (its one slot went on demand).
        assert_eq!(started.drain(..2).collect::<Vec<_>>(), ["102", "x"]);
        assert_eq!(started, ["5", "3"]);
    }

    #[test]
    fn new_caps_apply_to_new_starts_only() {
        let mut a = Admission::new(caps(10, &[("p", 1)]));
        let p: Arc<str> = Arc::from("p");
        let running = a.admit(&p);
        a.queue_scheduled(Arc::clone(&p), 1);
        a.queue_scheduled(Arc::clone(&p), 2);
        assert!(a.next_start().is_none());
        a.set_caps(caps(10, &[("p", 2)]));
        assert_eq!(ids(&mut a), ["1"]);
        a.set_caps(caps(1, &[("p", 2)]));
        // Two run over a cap of one: they finish, and only then one starts.
        a.release(running);
        assert!(a.next_start().is_none());
    }

    #[test]
    fn a_retry_after_blocks_a_provider_until_the_latest_end() {
        let mut a: Admission<()> = Admission::new(caps(1, &[]));
        a.block("p", 5_000);
        a.block("p", 3_000);
        assert_eq!(a.blocked_until("p", 1_000), Some(5_000));
        assert_eq!(a.blocked_until("p", 4_999), Some(5_000));
        assert_eq!(a.blocked_until("p", 5_000), None);
        assert_eq!(a.blocked_until("q", 0), None);
    }
}
