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
use crate::refresh::{RefreshError, RefresherHandle, Update, UpdateKind, View};

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
        let change = match &self.sent {
            None => Some(UpdateKind::Token),
            Some(sent) => crate::refresh::change(Some(sent), &view),
        };
        let first = self.sent.is_none();
        match change {
            Some(UpdateKind::Token) => {
                if let Some(token) = token_response(&view) {
                    if let Ok(e) = Event::default().event("token").json_data(token) {
                        self.pending.push_back(e);
                    }
                }
                if first && view.state_name() != "active" {
                    self.push_state(&view);
                }
            }
            Some(UpdateKind::State) => self.push_state(&view),
            _ => {}
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
