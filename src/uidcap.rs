//! A cap on the API connections one uid may hold open, so that a single
//! socket user cannot take every connection slot and lock the others out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The most connections one uid may hold open at once.
pub(crate) const PER_UID_MAX: usize = 128;

/// The per-uid cap for a daemon serving at most `max_connections`: a
/// quarter of them, at most [`PER_UID_MAX`], at least one.
pub(crate) fn per_uid_limit(max_connections: usize) -> usize {
    (max_connections / 4).clamp(1, PER_UID_MAX)
}

type Counts = Arc<Mutex<HashMap<u32, usize>>>;

/// Open connections per uid, against a limit. Some uids are exempt: root
/// and the daemon's own uid can stop the daemon anyway, so a cap on them
/// protects nothing.
#[derive(Debug)]
pub(crate) struct PerUidCap {
    limit: usize,
    exempt: Vec<u32>,
    open: Counts,
}

/// One open connection of a uid; dropping it (when the connection ends,
/// however it ends) gives the slot back.
#[derive(Debug)]
pub(crate) struct UidSlot {
    uid: u32,
    counts: Option<Counts>,
}

impl PerUidCap {
    /// A cap of `limit` connections per uid, none for the `exempt` uids.
    pub(crate) fn new(limit: usize, exempt: &[u32]) -> PerUidCap {
        PerUidCap {
            limit,
            exempt: exempt.to_vec(),
            open: Arc::default(),
        }
    }

    /// The limit per uid.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more connection of `uid`, or None when it is at the cap.
    pub(crate) fn try_acquire(&self, uid: u32) -> Option<UidSlot> {
        if self.exempt.contains(&uid) {
            return Some(UidSlot { uid, counts: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(uid).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(UidSlot {
            uid,
            counts: Some(Arc::clone(&self.open)),
        })
    }

    /// How many connections `uid` holds (exempt uids are not counted).
    #[cfg(test)]
    pub(crate) fn open(&self, uid: u32) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let Some(counts) = &self.counts else { return };
        let mut open = counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Forget idle uids so the map stays as small as the set of
                // uids connected right now.
                open.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_at_its_cap_is_refused_until_a_slot_is_released() {
        let cap = PerUidCap::new(3, &[0]);
        let held: Vec<UidSlot> = (0..3).map(|_| cap.try_acquire(1000).unwrap()).collect();
        assert!(cap.try_acquire(1000).is_none(), "over the cap");
        assert!(cap.try_acquire(1001).is_some(), "another uid is unaffected");
        assert_eq!(cap.open(1001), 0, "its slot was dropped at once");
        let mut held = held;
        held.pop();
        assert_eq!(cap.open(1000), 2);
        let again = cap.try_acquire(1000);
        assert!(again.is_some(), "a released slot can be taken again");
        drop(held);
        drop(again);
        assert_eq!(cap.open(1000), 0);
        assert!(
            cap.open.lock().unwrap().is_empty(),
            "idle uids are forgotten"
        );
    }

    #[test]
    fn exempt_uids_are_not_capped() {
        let cap = PerUidCap::new(1, &[0, 999]);
        let held: Vec<_> = (0..10).map(|_| cap.try_acquire(0).unwrap()).collect();
        assert_eq!(held.len(), 10);
        assert!(cap.try_acquire(999).is_some());
        assert_eq!(cap.open(0), 0);
    }

    #[test]
    fn the_limit_follows_the_global_cap() {
        assert_eq!(per_uid_limit(4096), PER_UID_MAX);
        assert_eq!(per_uid_limit(100), 25);
        assert_eq!(per_uid_limit(2), 1);
        assert_eq!(per_uid_limit(0), 1);
    }
}
