//! The status tally: credentials counted by the state users see, and the
//! one-line summary sent to the service manager.

use std::time::Duration;

use super::View;

/// Credentials counted by the state users see, kept up to date as views
/// are published so the status line never needs a pass over all of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    active: usize,
    needs_reauth: usize,
    paused: usize,
}

impl Tally {
    fn slot(&mut self, view: &View) -> &mut usize {
        match view.state_name() {
            "active" => &mut self.active,
            "needs_reauth" => &mut self.needs_reauth,
            _ => &mut self.paused,
        }
    }

    /// Counts a view in.
    pub(crate) fn add(&mut self, view: &View) {
        *self.slot(view) += 1;
    }

    /// Counts a view out.
    pub(crate) fn remove(&mut self, view: &View) {
        let n = self.slot(view);
        *n = n.saturating_sub(1);
    }

    /// The one-line summary for `systemctl status`, e.g. "12 credentials: 11
    /// active, 1 needs re-auth; next refresh in 4m".
    pub(crate) fn line(&self, next_refresh_at: Option<i64>, now: i64) -> String {
        let total = self.active + self.needs_reauth + self.paused;
        let mut out = format!("{total} credential{}", if total == 1 { "" } else { "s" });
        let mut parts = Vec::new();
        if total > 0 {
            parts.push(format!("{} active", self.active));
        }
        if self.needs_reauth > 0 {
            parts.push(format!(
                "{} need{} re-auth",
                self.needs_reauth,
                if self.needs_reauth == 1 { "s" } else { "" }
            ));
        }
        if self.paused > 0 {
            parts.push(format!("{} paused", self.paused));
        }
        if !parts.is_empty() {
            out.push_str(": ");
            out.push_str(&parts.join(", "));
        }
        if let Some(at) = next_refresh_at {
            let secs = (at.saturating_sub(now).max(0).saturating_add(999)) / 1000;
            out.push_str(&format!(
                "; next refresh in {}",
                humantime::format_duration(Duration::from_secs(secs as u64))
            ));
        }
        out
    }
}

/// The status line for a set of views (see [`Tally::line`]).
pub(crate) fn summary<'a>(views: impl Iterator<Item = &'a View>, now: i64) -> String {
    let mut tally = Tally::default();
    let mut next: Option<i64> = None;
    for v in views {
        tally.add(v);
        if let Some(at) = v.next_refresh_at {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    tally.line(next, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{Credential, State};

    fn view(state: State, paused: bool, next: Option<i64>) -> View {
        let mut cred = Credential::new("c", "p", None, 0);
        cred.state = state;
        let mut view = View::of_alone(&cred);
        view.next_refresh_at = next;
        view.edit_extras(|n| n.paused = paused.then(|| "x".to_string()));
        view
    }

    #[test]
    fn summary_counts_states_and_names_the_next_refresh() {
        let views = [
            view(State::Active, false, Some(300_000)),
            view(State::Active, false, Some(240_000)),
            view(State::NeedsReauth, false, None),
            view(State::Active, true, None),
        ];
        assert_eq!(
            summary(views.iter(), 0),
            "4 credentials: 2 active, 1 needs re-auth, 1 paused; next refresh in 4m"
        );
        assert_eq!(summary([].iter(), 0), "0 credentials");
    }
}
