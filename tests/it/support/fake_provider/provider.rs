//! [`FakeProvider`], the running fake: starting and stopping it, issuing
//! grants and codes, injecting faults, and what a test reads back (counts,
//! times, rejections, leaks).

use super::*;

/// A running fake token endpoint. Every accessor reads shared state, so tests
/// may inspect it while requests are in flight. Dropping it stops the server
/// (open connections are aborted); [`FakeProvider::shutdown`] does the same
/// and waits.
pub struct FakeProvider {
    pub(super) inner: Arc<Inner>,
    pub(super) stop: Option<oneshot::Sender<()>>,
    pub(super) task: Option<JoinHandle<()>>,
}

impl FakeProvider {
    /// Starts a fake on `127.0.0.1` with an ephemeral port.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound (a broken test environment).
    pub async fn start(cfg: FakeConfig) -> FakeProvider {
        match FakeProvider::start_on(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await {
            Ok(p) => p,
            Err(e) => panic!("fake provider: cannot bind 127.0.0.1:0: {e}"),
        }
    }

    /// Starts a fake listening on `addr`.
    pub async fn start_on(cfg: FakeConfig, addr: SocketAddr) -> io::Result<FakeProvider> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            cfg,
            addr,
            state: Mutex::new(State::default()),
        });
        inner.register_config_secrets();
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, inner.clone(), stop_rx));
        Ok(FakeProvider {
            inner,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT/<the flavour's token path>`.
    pub fn token_url(&self) -> String {
        format!("{}{}", self.base_url(), self.inner.cfg.flavor.token_path())
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The configuration the fake runs with.
    pub fn config(&self) -> &FakeConfig {
        &self.inner.cfg
    }

    /// Mints a fresh valid refresh token, as if a user had just logged in.
    /// It starts a new family (see [`FakeProvider::issue_refresh_token_family`]).
    pub fn issue_refresh_token(&self) -> String {
        self.issue_refresh_token_family().0
    }

    /// Mints a fresh valid refresh token starting a new grant family, and
    /// returns it with the family's id. Every token rotated from it belongs to
    /// the same family; see [`FakeProvider::family_refresh_count`].
    pub fn issue_refresh_token_family(&self) -> (String, u64) {
        let mut st = self.inner.lock();
        let family = st.new_family();
        let token = self
            .inner
            .mint_refresh_token(&mut st, SystemTime::now(), family);
        (token, family)
    }

    /// Successful refreshes of family `family` (including ones accepted within
    /// the reuse grace and ones answered by [`Fault::ProcessThenReset`]); zero
    /// for an unknown family.
    pub fn family_refresh_count(&self, family: u64) -> usize {
        self.inner
            .lock()
            .family_refreshes
            .get(&family)
            .copied()
            .unwrap_or(0)
    }

    /// Mints `n` fresh valid refresh tokens, each starting its own family, in
    /// one go (one lock, one pass): the scale benchmark needs tens of
    /// thousands. Returns `(token, family)` pairs, as
    /// [`FakeProvider::issue_refresh_token_family`] does one at a time.
    pub fn issue_refresh_tokens(&self, n: usize) -> Vec<(String, u64)> {
        let mut st = self.inner.lock();
        let now = SystemTime::now();
        (0..n)
            .map(|_| {
                let family = st.new_family();
                (self.inner.mint_refresh_token(&mut st, now, family), family)
            })
            .collect()
    }

    /// The wall-clock time at which each successful refresh was carried out,
    /// with the family of the token it spent, in the order they happened
    /// (the same refreshes [`FakeProvider::refresh_count`] counts). Lets a
    /// benchmark compare them with the instant a refresh was planned for.
    pub fn refresh_wall_times(&self) -> Vec<(u64, SystemTime)> {
        self.inner.lock().refresh_log.clone()
    }

    /// The refresh token each family holds right now: the valid one (with
    /// strict rotation, at most one per family). Families whose tokens are
    /// all used or revoked are absent.
    pub fn current_refresh_tokens_by_family(&self) -> HashMap<u64, String> {
        self.inner
            .lock()
            .refresh_tokens
            .iter()
            .filter(|(_, e)| e.state == RtState::Valid)
            .map(|(t, e)| (e.family, t.clone()))
            .collect()
    }

    /// Mints a single-use authorization code bound to `redirect_uri`, with an
    /// optional S256 PKCE challenge; the exchange returns a refresh token only
    /// if `offline`.
    pub fn issue_code(
        &self,
        redirect_uri: &str,
        pkce_challenge: Option<&str>,
        offline: bool,
    ) -> String {
        self.inner
            .issue_code("code-", redirect_uri, pkce_challenge, offline)
    }

    /// As [`FakeProvider::issue_code`], for a code that begins with `prefix`
    /// (`-t`: one base64url code in 64 begins with `-`).
    pub fn issue_code_with_prefix(
        &self,
        prefix: &str,
        redirect_uri: &str,
        pkce_challenge: Option<&str>,
    ) -> String {
        self.inner
            .issue_code(prefix, redirect_uri, pkce_challenge, true)
    }

    /// Makes every currently valid refresh token invalid (as a revoked grant),
    /// and closes the reuse grace of used ones (still counted if reused).
    pub fn revoke_all(&self) {
        self.inner.revoke_all();
    }

    /// Successful refreshes (including ones answered by
    /// [`Fault::ProcessThenReset`]).
    pub fn client_credentials_count(&self) -> usize {
        self.inner.lock().client_credentials_count
    }

    /// Successful refreshes so far.
    pub fn refresh_count(&self) -> usize {
        self.inner.lock().refresh_count
    }

    /// Successful authorization-code exchanges.
    pub fn exchange_count(&self) -> usize {
        self.inner.lock().exchange_count
    }

    /// Every request that reached the token path, faulted or not.
    pub fn request_count(&self) -> usize {
        self.inner.lock().request_times.len()
    }

    /// When each request counted by [`FakeProvider::request_count`] arrived.
    pub fn request_times(&self) -> Vec<Instant> {
        self.inner.lock().request_times.clone()
    }

    /// How many times an already used refresh token was presented outside its
    /// reuse grace (always, with the default strict rotation) and refused.
    pub fn reused_refresh_tokens(&self) -> usize {
        self.inner.lock().reused_refresh_tokens
    }

    /// How many times an already used refresh token was presented within its
    /// reuse grace ([`FakeConfig::with_reuse_grace`]) and accepted.
    pub fn reused_within_grace(&self) -> usize {
        self.inner.lock().reused_within_grace
    }

    /// Every wire-format problem seen so far, one readable line each (no
    /// secret values).
    pub fn rejections(&self) -> Vec<String> {
        self.inner.lock().rejections.clone()
    }

    /// When an issued access token expires; `None` if it was never issued.
    pub fn access_token_expiry(&self, token: &str) -> Option<SystemTime> {
        self.inner.lock().access_tokens.get(token).copied()
    }

    /// The refresh tokens valid right now, oldest first.
    pub fn current_refresh_tokens(&self) -> Vec<String> {
        let st = self.inner.lock();
        let mut valid: Vec<(&String, u64)> = st
            .refresh_tokens
            .iter()
            .filter(|(_, e)| e.state == RtState::Valid)
            .map(|(t, e)| (t, e.seq))
            .collect();
        valid.sort_by_key(|(_, seq)| *seq);
        valid.into_iter().map(|(t, _)| t.clone()).collect()
    }

    /// Every access, refresh and ID token and code ever issued, plus the client
    /// secret and the encodings a client sends it in: strings that must never
    /// appear in the daemon's logs.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.inner.lock().secrets.clone()
    }

    /// Scans `text` (a log, say) for [`FakeProvider::issued_secrets`], whole
    /// or in part: short secrets must not appear whole, and no
    /// [`LEAK_WINDOW`]-character fragment of a longer one may appear, which
    /// catches a token echoed and then truncated. The constant header segment
    /// of JWT-shaped tokens is not secret and is ignored. Returns one line per
    /// leaked secret, naming it by SHA-256 fingerprint, never by value.
    pub fn find_leaks(&self, text: &str) -> Vec<String> {
        find_leaks(&self.issued_secrets(), text)
    }

    /// Queues a one-shot fault; queued faults are used first in, first out,
    /// one per token request, before normal processing.
    pub fn push_fault(&self, f: Fault) {
        self.inner.lock().faults.push_back(f);
    }

    /// Applies `f` to every token request until cleared with `None`; queued
    /// one-shot faults take precedence.
    pub fn set_sticky_fault(&self, f: Option<Fault>) {
        self.inner.lock().sticky_fault = f;
    }

    /// Stops accepting, aborts open connections and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its `JoinSet`, which aborts every
            // connection task, and closes the listener.
            task.abort();
        }
    }
}

impl fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeProvider")
            .field("addr", &self.inner.addr)
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}
