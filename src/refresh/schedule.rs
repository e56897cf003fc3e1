//! The schedule: each slot's next wake-up (its refresh or a commit retry),
//! earliest first.
//!
//! A binary heap of `(time, slot)` whose entries are current only while the
//! slot's registered wake-up still says that time: moving a wake-up pushes a
//! new entry and leaves the old one to be skipped, and the heap is
//! compacted when stale entries pile up (16 bytes per credential, where a
//! B-tree set took about 26). Ties go to the lower slot number.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Wake-ups by slot (see the module documentation).
#[derive(Default)]
pub(crate) struct Schedule {
    heap: BinaryHeap<Reverse<(i64, u32)>>,
    /// The current wake-up of each slot, by slot number.
    current: Vec<Option<i64>>,
}

impl Schedule {
    /// Registers slot `id`'s wake-up (none: it is not woken).
    pub(crate) fn set(&mut self, id: u32, at: Option<i64>) {
        let index = id as usize;
        if self.current.len() <= index {
            self.current.resize(index + 1, None);
        }
        self.current[index] = at;
        if let Some(at) = at {
            self.heap.push(Reverse((at, id)));
            if self.heap.len() > 2 * self.current.len() + 1024 {
                self.compact();
            }
        }
    }

    /// The earliest current wake-up, dropping stale entries on the way.
    pub(crate) fn next(&mut self) -> Option<(i64, u32)> {
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if self.is_current(at, id) {
                return Some((at, id));
            }
            self.heap.pop();
        }
        None
    }

    /// Takes the earliest wake-up if it is due at `now`: the slot is then
    /// no longer scheduled.
    pub(crate) fn pop_due(&mut self, now: i64) -> Option<u32> {
        let (at, id) = self.next()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.current[id as usize] = None;
        Some(id)
    }

    /// Frees memory the load left unused.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.current.shrink_to_fit();
        self.heap.shrink_to_fit();
    }

    fn is_current(&self, at: i64, id: u32) -> bool {
        self.current.get(id as usize) == Some(&Some(at))
    }

    /// Drops every stale entry, so moved wake-ups cannot pile up.
    fn compact(&mut self) {
        let current = &self.current;
        self.heap
            .retain(|Reverse((at, id))| current.get(*id as usize) == Some(&Some(*at)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refresh::timing::first_due;

    fn drain(s: &mut Schedule, now: i64) -> Vec<u32> {
        std::iter::from_fn(|| s.pop_due(now)).collect()
    }

    #[test]
    fn hands_out_due_slots_earliest_first_and_skips_moved_ones() {
        let mut s = Schedule::default();
        s.set(0, Some(300));
        s.set(1, Some(100));
        s.set(2, Some(200));
        s.set(3, Some(100));
        // Moved later, then unscheduled: the old entries are stale.
        s.set(1, Some(250));
        s.set(2, None);
        assert_eq!(s.next(), Some((100, 3)));
        assert_eq!(drain(&mut s, 260), vec![3, 1]);
        assert_eq!(s.next(), Some((300, 0)));
        assert_eq!(drain(&mut s, 299), Vec::<u32>::new());
        assert_eq!(drain(&mut s, 300), vec![0]);
        assert_eq!(s.next(), None);
    }

    #[test]
    fn stale_entries_are_compacted_away() {
        let mut s = Schedule::default();
        for at in 0..10_000 {
            s.set(7, Some(at));
        }
        assert!(s.heap.len() <= 2 * 8 + 1024 + 1, "{}", s.heap.len());
        assert_eq!(drain(&mut s, i64::MAX), vec![7]);
    }

    /// The order in which the schedule hands out the loaded credentials.
    fn start_order(loaded: &[(Option<i64>, Option<i64>)], now: i64) -> Vec<u32> {
        let mut s = Schedule::default();
        for (id, (due, interrupted)) in loaded.iter().enumerate() {
            s.set(id as u32, first_due(*due, *interrupted, now));
        }
        drain(&mut s, i64::MAX)
    }

    #[test]
    fn interrupted_refreshes_start_first_oldest_attempt_first() {
        let now = 10_000;
        let loaded = [
            // Overdue since long before any interrupted attempt.
            (Some(50), None),
            // Interrupted, attempts at 9 s, 7 s and 8 s (due before them).
            (Some(100), Some(9_000)),
            (Some(100), Some(7_000)),
            (Some(100), Some(8_000)),
            // Due now, and later.
            (Some(now), None),
            (Some(20_000), None),
            // Not scheduled at all (needs re-authorization, paused).
            (None, Some(1_000)),
            // An attempt stamped in the future (the clock went back).
            (Some(100), Some(50_000)),
        ];
        assert_eq!(start_order(&loaded, now), vec![2, 3, 1, 7, 0, 4, 5]);
    }
}
