//! `GET /v1/tokens/{name}/watch`: a credential's tokens as server-sent
//! events. The first event is the current token (if any), then one `token`
//! event per new token, a `state` event when the state users see changes
//! without a new token (needs reauthorization, paused, active again), and a
//! `removed` event that ends the stream. Comments every [`HEARTBEAT`] keep
//! idle connections visibly alive.
//!
//! A watch holds its connection, so watchers count against the per-uid
//! connection cap like any request. The request timeout covers only the
//! answer's head, which is sent at once; the stream ends at shutdown, when
//! the owner stops, or when the caller may no longer read the credential
//! (its readers changed on reload).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path as UrlPath, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::broadcast::{error::RecvError, Receiver};
use tokio_util::sync::CancellationToken;

use super::convert::{credential_status, token_response};
use super::error::ApiResult;
use super::routes::authorize_read;
use crate::access::Peer;
use crate::refresh::{change, RefreshError, RefresherHandle, Update, UpdateKind, View};
use crate::token::now_ms;

/// How often an idle stream sends a comment.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(15);

pub(super) async fn watch_token(
    State(h): State<RefresherHandle>,
    Extension(peer): Extension<Arc<Peer>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Response> {
    authorize_read(&h, &peer, &name)?;
    // Subscribed before the view is read: an update in between is then
    // seen twice at worst (and sent once), never missed.
    let updates = h.subscribe().ok_or(RefreshError::ShuttingDown)?;
    let view = h
        .view(&name)
        .ok_or_else(|| RefreshError::NotFound(name.clone()))?;
    let mut watch = Watch {
        shutdown: h.shutdown(),
        h,
        peer,
        name,
        updates,
        sent: None,
        pending: VecDeque::new(),
        done: false,
    };
    watch.offer(view);
    let stream = futures::stream::unfold(watch, |mut w| async move {
        let event = w.next().await?;
        Some((Ok::<Event, Infallible>(event), w))
    });
    Ok(sse(stream))
}

fn sse<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(stream: S) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text(""))
        .into_response()
}

/// One watcher's state.
struct Watch {
    h: RefresherHandle,
    peer: Arc<Peer>,
    name: String,
    updates: Receiver<Update>,
    shutdown: CancellationToken,
    /// The view last sent: what the next one is compared with.
    sent: Option<Arc<View>>,
    /// Events decided but not yet sent.
    pending: VecDeque<Event>,
    /// The `removed` event is queued or the caller lost access: nothing follows.
    done: bool,
}

impl Watch {
    /// The next event, or `None` to end the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            let received = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                received = self.updates.recv() => received,
            };
            match received {
                Ok(update) if *update.name != *self.name => {}
                Ok(Update {
                    kind: UpdateKind::Removed,
                    ..
                }) => self.removed(),
                Ok(Update { view: Some(v), .. }) => self.offer(v),
                Ok(Update { view: None, .. }) => {}
                // Fell behind: what counts is the view now.
                Err(RecvError::Lagged(_)) => match self.h.view(&self.name) {
                    Some(v) => self.offer(v),
                    None => self.removed(),
                },
                Err(RecvError::Closed) => return None,
            }
        }
    }

    fn removed(&mut self) {
        self.pending
            .push_back(Event::default().event("removed").data(&self.name));
        self.done = true;
    }

    /// Queues what `view` changes from the view last sent.
    fn offer(&mut self, view: Arc<View>) {
        if self.h.policy().may_read(&self.peer, &view.readers).is_err() {
            // Readers changed on reload: the caller learns no more.
            self.done = true;
            return;
        }
        let (token, state) = what_to_send(self.sent.as_deref(), &view, now_ms());
        if token {
            if let Some(e) = token_response(&view)
                .and_then(|t| Event::default().event("token").json_data(t).ok())
            {
                self.pending.push_back(e);
            }
        }
        if state {
            self.push_state(&view);
        }
        self.sent = Some(view);
    }

    fn push_state(&mut self, view: &View) {
        if let Ok(e) = Event::default()
            .event("state")
            .json_data(credential_status(view))
        {
            self.pending.push_back(e);
        }
    }
}

/// Whether `view`, after `sent` (the view last sent, `None` at first),
/// deserves a `token` event and a `state` event. A token is sent only if a
/// plain read would serve it (valid, and not withheld after a rejected
/// grant); the first view's state is told only when it is not `active`.
fn what_to_send(sent: Option<&View>, view: &View, now: i64) -> (bool, bool) {
    let servable = view.valid_token(now, 0).is_some();
    match sent {
        None => (servable, view.state_name() != "active"),
        Some(sent) => match change(Some(sent), view) {
            Some(UpdateKind::Token) => (servable, sent.state_name() != view.state_name()),
            Some(UpdateKind::State) => (false, true),
            _ => (false, false),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnInvalidGrant;
    use crate::credential::{Credential, State};
    use crate::token::Secret;

    fn view(token: &str, expires_at: i64, state: State, policy: OnInvalidGrant) -> View {
        let mut cred = Credential::new("c", "p", None, 0);
        cred.access_token = Some(Secret::new(token));
        cred.expires_at = Some(expires_at);
        cred.state = state;
        let mut v = View::of_alone(&cred);
        v.on_invalid_grant = policy;
        v
    }

    #[test]
    fn only_servable_tokens_and_real_state_changes_are_sent() {
        let serve = OnInvalidGrant::ServeUntilExpiry;
        let active = view("a", 100, State::Active, serve);
        assert_eq!(what_to_send(None, &active, 50), (true, false));
        // An expired token is not sent, not even first.
        assert_eq!(what_to_send(None, &active, 150), (false, false));
        let newer = view("b", 200, State::Active, serve);
        assert_eq!(what_to_send(Some(&active), &newer, 50), (true, false));
        assert_eq!(
            what_to_send(Some(&active), &active.clone(), 50),
            (false, false)
        );
        // A rejected grant: told, and its token is withheld or served as a
        // plain read would.
        let dead = view("a", 100, State::NeedsReauth, serve);
        assert_eq!(what_to_send(Some(&active), &dead, 50), (false, true));
        assert_eq!(what_to_send(None, &dead, 50), (true, true));
        let withheld = view("a", 100, State::NeedsReauth, OnInvalidGrant::Withhold);
        assert_eq!(what_to_send(None, &withheld, 50), (false, true));
        // Re-authorized: a new token, and the state is active again.
        let back = view("c", 300, State::Active, serve);
        assert_eq!(what_to_send(Some(&dead), &back, 50), (true, true));
    }
}
