//! Prometheus metrics: the process-wide registry, its typed families, and
//! the page `GET /metrics` serves. The rest of the daemon records through
//! the small functions here and never touches the registry.
//!
//! Counters and histograms are recorded as things happen; the families that
//! describe the credentials (how many in each state, seconds to expiry) are
//! computed at scrape time from the published views, so no task keeps
//! gauges in step with the refresher. The socket's request counter is a
//! fixed table of atomics: counting a token read costs one relaxed
//! increment, without a lock or an allocation.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{
    prometheus_text, text, DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
    LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::refresh::View;

/// The page's two formats: OpenMetrics for a scraper that asks for it (as
/// Prometheus does), else the classic text format every other tool reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The page's content type in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Who reads the page, which decides whether series name credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Audience {
    /// Administrators on the socket: up to `metrics_credential_limit`
    /// credentials get an expiry series of their own.
    Administrators,
    /// Anyone on the machine (the loopback listener): aggregates only.
    AnyLocalUser,
}

/// How a refresh attempt ended, as the `outcome` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum RefreshResult {
    /// New tokens.
    Success,
    /// The grant was rejected: someone must log in again.
    Reauth,
    /// The client itself was rejected: the configuration needs fixing.
    Misconfigured,
    /// Anything worth retrying: network, 5xx, a bad response.
    Transient,
}

impl RefreshResult {
    fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Success => "success",
            RefreshResult::Reauth => "reauth",
            RefreshResult::Misconfigured => "misconfigured",
            RefreshResult::Transient => "transient",
        }
    }
}

impl From<crate::provider::FailureKind> for RefreshResult {
    fn from(kind: crate::provider::FailureKind) -> Self {
        use crate::provider::FailureKind;
        match kind {
            FailureKind::Reauth => RefreshResult::Reauth,
            FailureKind::Misconfigured => RefreshResult::Misconfigured,
            FailureKind::Transient => RefreshResult::Transient,
        }
    }
}

impl EncodeLabelValue for RefreshResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    provider: String,
    outcome: RefreshResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

/// Route templates the request table can tell apart; the router has fewer,
/// so the last slot ("other") only ever holds unmatched paths.
const ROUTE_SLOTS: usize = 32;
/// Status codes 100 to 599, one counter each.
const STATUSES: usize = 500;

struct RouteSlot {
    template: OnceLock<Box<str>>,
    counts: [AtomicU64; STATUSES],
}

impl RouteSlot {
    const fn new() -> RouteSlot {
        RouteSlot {
            template: OnceLock::new(),
            counts: [const { AtomicU64::new(0) }; STATUSES],
        }
    }
}

/// Socket requests by route template and status: templates take a slot the
/// first time they are seen, so the table needs no list of routes kept in
/// step with the router.
struct RequestTable {
    slots: [RouteSlot; ROUTE_SLOTS],
    other: RouteSlot,
}

static REQUESTS: RequestTable = RequestTable {
    slots: [const { RouteSlot::new() }; ROUTE_SLOTS],
    other: RouteSlot::new(),
};

impl RequestTable {
    fn slot(&self, template: Option<&str>) -> &RouteSlot {
        let Some(template) = template else {
            return &self.other;
        };
        for slot in &self.slots {
            match slot.template.get() {
                Some(t) if &**t == template => return slot,
                Some(_) => continue,
                None => {
                    // Two first requests of new routes may race for this
                    // slot: the loser sees the winner's template and moves on.
                    let t = slot.template.get_or_init(|| template.into());
                    if &**t == template {
                        return slot;
                    }
                }
            }
        }
        &self.other
    }
}

impl std::fmt::Debug for RequestTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestTable")
    }
}

#[derive(Debug)]
struct RequestCollector;

impl prometheus_client::collector::Collector for RequestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "tokend_socket_requests",
            "Requests answered on the API socket, by route template and status.",
            None,
            MetricType::Counter,
        )?;
        let named = REQUESTS
            .slots
            .iter()
            .filter_map(|s| s.template.get().map(|t| (&**t, s)));
        for (route, slot) in named.chain(std::iter::once(("other", &REQUESTS.other))) {
            for (i, count) in slot.counts.iter().enumerate() {
                let n = count.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = u16::try_from(i + 100).unwrap_or(u16::MAX);
                let labels = [("route", route.to_string()), ("status", status.to_string())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

struct Metrics {
    registry: Registry,
    refreshes: Family<RefreshLabels, Counter>,
    refresh_duration: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    commit_duration: Histogram,
    commit_batch: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let refreshes = Family::<RefreshLabels, Counter>::default();
    registry.register(
        "tokend_refreshes",
        "Refresh attempts, by provider and outcome",
        refreshes.clone(),
    );
    let refresh_duration =
        Family::<ProviderLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.01, 2.0, 12))) as fn() -> Histogram,
        );
    registry.register(
        "tokend_refresh_duration_seconds",
        "Time the provider's token endpoint took to answer a refresh",
        refresh_duration.clone(),
    );
    let commit_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
    registry.register(
        "tokend_commit_duration_seconds",
        "Time of one database transaction of the group commit",
        commit_duration.clone(),
    );
    let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
    registry.register(
        "tokend_commit_batch_size",
        "Writes committed together in one transaction",
        commit_batch.clone(),
    );
    registry.register(
        "tokend_build",
        "The running tokend's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    start.set(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    registry.register(
        "process_start_time_seconds",
        "When the daemon started, in seconds since the Unix epoch",
        start,
    );
    registry.register_collector(Box::new(RequestCollector));
    Metrics {
        registry,
        refreshes,
        refresh_duration,
        commit_duration,
        commit_batch,
    }
});

/// Counts a finished refresh attempt of a credential of `provider`.
pub(crate) fn refresh_done(provider: &str, outcome: RefreshResult) {
    METRICS
        .refreshes
        .get_or_create(&RefreshLabels {
            provider: provider.to_string(),
            outcome,
        })
        .inc();
}

/// Records how long `provider`'s token endpoint took to answer.
pub(crate) fn refresh_request_took(provider: &str, took: Duration) {
    METRICS
        .refresh_duration
        .get_or_create(&ProviderLabel {
            provider: provider.to_string(),
        })
        .observe(took.as_secs_f64());
}

/// Records one group-commit transaction of `writes` writes.
pub(crate) fn commit_took(took: Duration, writes: usize) {
    METRICS.commit_duration.observe(took.as_secs_f64());
    METRICS.commit_batch.observe(writes as f64);
}

/// Counts a socket request answered with `status`; `route` is the matched
/// route template (never the raw path), `None` for a path that matched none.
pub(crate) fn socket_request(route: Option<&str>, status: u16) {
    let Some(i) = usize::from(status).checked_sub(100) else {
        return;
    };
    if let Some(count) = REQUESTS.slot(route).counts.get(i) {
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The metrics page: the recorded families, then the credentials' states
/// and seconds to expiry from `views` at `now` (Unix milliseconds). At most
/// `limit` credentials get a series of their own (those expiring soonest);
/// `tokend_token_expiry_omitted` counts the rest, and the minimum and a
/// histogram over all of them stay exact at any number.
pub(crate) fn render(views: &[Arc<View>], limit: usize, now: i64, format: Format) -> String {
    let mut states: BTreeMap<&'static str, i64> =
        [("active", 0), ("needs_reauth", 0), ("paused", 0)].into();
    let mut expiring: Vec<(f64, &str)> = Vec::new();
    let expiry_hist = Histogram::new([0.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 21600.0, 86400.0]);
    for v in views {
        *states.entry(v.state_name()).or_insert(0) += 1;
        if let Some(at) = v.expires_at {
            let secs = at.saturating_sub(now) as f64 / 1000.0;
            expiry_hist.observe(secs);
            expiring.push((secs, &v.name));
        }
    }
    let order = |a: &(f64, &str), b: &(f64, &str)| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1));
    let soonest = expiring.iter().map(|e| e.0).min_by(f64::total_cmp);
    let omitted = expiring.len().saturating_sub(limit);
    // The soonest `limit` without sorting all of a million credentials.
    if omitted > 0 && limit > 0 {
        expiring.select_nth_unstable_by(limit - 1, order);
    }
    expiring.truncate(limit);
    expiring.sort_unstable_by(order);

    let mut scrape = Registry::default();
    let by_state = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    for (state, n) in &states {
        by_state.get_or_create(&[("state", state)]).set(*n);
    }
    scrape.register(
        "tokend_credentials",
        "Credentials by the state tokend status shows",
        by_state,
    );
    scrape.register_collector(Box::new(ExpiryCollector(
        expiring
            .iter()
            .map(|(secs, name)| (name.to_string(), *secs))
            .collect(),
    )));
    scrape.register(
        "tokend_token_expiry_omitted",
        "Credentials left out of tokend_token_expiry_seconds (past metrics_credential_limit)",
        ConstGauge::new(i64::try_from(omitted).unwrap_or(i64::MAX)),
    );
    if let Some(soonest) = soonest {
        scrape.register(
            "tokend_token_expiry_min_seconds",
            "Seconds until the soonest expiry of any credential's access token",
            ConstGauge::new(soonest),
        );
    }
    scrape.register(
        "tokend_token_expiry_distribution_seconds",
        "Seconds to expiry of every credential's access token",
        expiry_hist,
    );

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = match format {
        Format::OpenMetrics => text::encode_registry(&mut out, &METRICS.registry)
            .and_then(|()| text::encode_registry(&mut out, &scrape))
            .and_then(|()| text::encode_eof(&mut out)),
        Format::Text => prometheus_text::encode(&mut out, &METRICS.registry)
            .and_then(|()| prometheus_text::encode(&mut out, &scrape)),
    };
    out
}

/// Seconds to expiry of the credentials that get a series of their own.
#[derive(Debug)]
struct ExpiryCollector(Vec<(String, f64)>);

impl prometheus_client::collector::Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "tokend_token_expiry_seconds",
            "Seconds until the credential's access token expires (negative: expired).",
            None,
            MetricType::Gauge,
        )?;
        for (name, secs) in &self.0 {
            let labels = [("credential", name.as_str())];
            ConstGauge::new(*secs).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_template_and_status() {
        socket_request(Some("/test/{name}"), 200);
        socket_request(Some("/test/{name}"), 200);
        socket_request(Some("/test/{name}"), 404);
        socket_request(None, 404);
        socket_request(Some("/test/{name}"), 42);
        let page = render(&[], 100, 0, Format::OpenMetrics);
        assert!(
            page.contains(
                "tokend_socket_requests_total{route=\"/test/{name}\",status=\"200\"} 2\n"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "tokend_socket_requests_total{route=\"/test/{name}\",status=\"404\"} 1\n"
            ),
            "{page}"
        );
        assert!(
            page.contains("tokend_socket_requests_total{route=\"other\",status=\"404\"}"),
            "{page}"
        );
        assert!(page.ends_with("# EOF\n"), "{page}");
        assert_eq!(page.matches("# EOF").count(), 1, "{page}");
    }

    #[test]
    fn only_the_soonest_expiring_credentials_get_a_series() {
        let now = 1_000_000;
        let views: Vec<Arc<View>> = [("e", 5), ("a", 1), ("d", 4), ("b", 2), ("c", 3)]
            .into_iter()
            .map(|(name, secs)| {
                let mut cred = crate::credential::Credential::new(name, "p", None, now);
                cred.expires_at = Some(now + secs * 1000);
                Arc::new(View::of_alone(&cred))
            })
            .chain(std::iter::once(Arc::new(View::of_alone(
                &crate::credential::Credential::new("no-token", "p", None, now),
            ))))
            .collect();
        let page = render(&views, 2, now, Format::Text);
        let series: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("tokend_token_expiry_seconds{"))
            .collect();
        assert_eq!(
            series,
            [
                "tokend_token_expiry_seconds{credential=\"a\"} 1.0",
                "tokend_token_expiry_seconds{credential=\"b\"} 2.0"
            ],
            "{page}"
        );
        assert!(page.contains("\ntokend_token_expiry_omitted 3\n"), "{page}");
        assert!(
            page.contains("\ntokend_token_expiry_min_seconds 1.0\n"),
            "{page}"
        );
        assert!(
            page.contains("\ntokend_token_expiry_distribution_seconds_count 5\n"),
            "{page}"
        );
        assert!(
            page.contains("\ntokend_credentials{state=\"active\"} 6\n"),
            "{page}"
        );
        assert!(!page.contains("# EOF"), "{page}");

        let none = render(&views, 0, now, Format::Text);
        assert!(!none.contains("tokend_token_expiry_seconds{"), "{none}");
        assert!(none.contains("\ntokend_token_expiry_omitted 5\n"), "{none}");
    }
}
