//! Client-secret rotation: a provider may be given several client secrets
//! (the new one and the one it replaces). A request is sent with the one
//! that worked last; when the provider answers `invalid_client`, the others
//! are tried in the order given, and the one that works is remembered for
//! every credential of the provider.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::token::Secret;

/// A provider's client secrets and which of them worked last.
#[derive(Debug)]
pub(crate) struct SecretRotation {
    secrets: Vec<Secret>,
    working: AtomicUsize,
}

impl SecretRotation {
    /// The secrets in the order the configuration gives them; the first is
    /// tried first until another one has worked.
    pub(crate) fn new(secrets: Vec<Secret>) -> SecretRotation {
        SecretRotation {
            secrets,
            working: AtomicUsize::new(0),
        }
    }

    /// How many secrets there are.
    pub(crate) fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Every secret, in the configuration's order (to scrub them all).
    pub(crate) fn all(&self) -> &[Secret] {
        &self.secrets
    }

    /// The order to try them in: the one that worked last, then the others
    /// in the configuration's order.
    pub(crate) fn order(&self) -> impl Iterator<Item = (usize, &Secret)> {
        let first = self
            .working
            .load(Ordering::Relaxed)
            .min(self.len().saturating_sub(1));
        let rest = (0..self.len()).filter(move |&i| i != first);
        std::iter::once(first)
            .chain(rest)
            .filter_map(|i| self.secrets.get(i).map(|s| (i, s)))
    }

    /// Remembers that secret `index` worked; whether that changed anything
    /// (so that the change is logged once, not at every request).
    pub(crate) fn worked(&self, index: usize) -> bool {
        self.working.swap(index, Ordering::Relaxed) != index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_working_secret_comes_first() {
        let r = SecretRotation::new(vec![Secret::new("a"), Secret::new("b"), Secret::new("c")]);
        let order = |r: &SecretRotation| r.order().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(order(&r), [0, 1, 2]);
        assert!(!r.worked(0));
        assert!(r.worked(2));
        assert!(!r.worked(2));
        assert_eq!(order(&r), [2, 0, 1]);
        assert_eq!(r.order().next().map(|(_, s)| s.expose()), Some("c"));
    }
}
