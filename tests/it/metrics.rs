//! `GET /metrics`: scraped over the real socket after real refreshes against
//! the fake provider, checked by Prometheus's own parser (`promtool check
//! metrics`) and by reading the values back; only administrators may scrape.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_at, provider_toml, setpriv, Daemon, RawAnswer, FAST_DAEMON};

const SOCKET_GID: u32 = 4253;
const OTHER_UID: u32 = 1000;

/// The head and body of one answer.
type Page = RawAnswer;

fn parse(raw: &[u8]) -> Page {
    RawAnswer::parse(raw)
}

/// Reads the answer to `request` on `stream` until the server closes it.
async fn exchange(mut stream: impl AsyncReadExt + AsyncWriteExt + Unpin, request: &str) -> Page {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
        .await
        .expect("no answer within 20 s")
        .unwrap();
    parse(&out)
}

/// `GET /metrics` as this process (root, an administrator).
async fn scrape(daemon: &Daemon, accept: Option<&str>) -> Page {
    let stream = UnixStream::connect(&daemon.socket).await.unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: tokend\r\n{accept}Connection: close\r\n\r\n");
    exchange(stream, &request).await
}

/// Runs Prometheus's parser and linter on a page in the classic format.
async fn promtool_check(page: &str) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(page.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the page: {}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses an OpenMetrics page with the Prometheus project's Python parser
/// (strict: it refuses a page without `# EOF`, a counter sample without
/// `_total`, a bad value) and returns its samples as `type name{k="v",...}
/// value` lines, labels sorted.
const PY_OPENMETRICS: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        print("%s %s{%s} %r" % (f.type, s.name, labels, float(s.value)))
"#;

async fn openmetrics_samples(page: &str) -> Vec<String> {
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", PY_OPENMETRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(page.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser (Debian package python3-prometheus-client) rejected the page: {}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every sample of a text page: `name{labels}` (labels as written) to value.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample {l:?}"));
            let value = value.parse().unwrap_or_else(|_| panic!("bad value {l:?}"));
            (series.to_string(), value)
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}; have {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_refreshes_states_expiry_and_routes() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let extra = format!("{FAST_DAEMON}metrics_credential_limit = 1\n");
    let daemon = Daemon::start(&extra, &provider_toml("p", &fake)).await;
    daemon.add("a", "p", &fake.issue_refresh_token()).await.ok();
    daemon.add("b", "p", &fake.issue_refresh_token()).await.ok();
    daemon.cli(&["refresh", "a"]).await.ok();
    daemon.cli(&["get", "a"]).await.ok();
    fake.revoke_all();
    let run = daemon.cli(&["refresh", "b"]).await;
    assert_eq!(run.code, 1, "{run:?}");

    let page = scrape(&daemon, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.head
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        page.head
    );
    promtool_check(&page.body).await;
    let s = samples(&page.body);

    assert_eq!(fake.refresh_count(), 3);
    assert_eq!(
        value(
            &s,
            r#"tokend_refreshes_total{provider="p",outcome="success"}"#
        ),
        fake.refresh_count() as f64
    );
    assert_eq!(
        value(
            &s,
            r#"tokend_refreshes_total{provider="p",outcome="reauth"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&s, r#"tokend_refresh_duration_seconds_count{provider="p"}"#),
        4.0
    );
    assert_eq!(value(&s, r#"tokend_credentials{state="active"}"#), 1.0);
    assert_eq!(
        value(&s, r#"tokend_credentials{state="needs_reauth"}"#),
        1.0
    );
    assert_eq!(value(&s, r#"tokend_credentials{state="paused"}"#), 0.0);

    // One series (the cap), the other counted as omitted; the aggregates
    // cover both. Both tokens came from the fake an hour long.
    let series: Vec<_> = s
        .keys()
        .filter(|k| k.starts_with("tokend_token_expiry_seconds{"))
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    let secs = s[series[0]];
    assert!((3000.0..=3600.0).contains(&secs), "{secs}");
    assert_eq!(value(&s, "tokend_token_expiry_omitted"), 1.0);
    assert_eq!(
        value(&s, "tokend_token_expiry_distribution_seconds_count"),
        2.0
    );
    assert!(value(&s, "tokend_token_expiry_min_seconds") <= secs);

    // Routes are templates, never the names in the path.
    assert!(
        value(
            &s,
            r#"tokend_socket_requests_total{route="/v1/tokens/{name}",status="200"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &s,
            r#"tokend_socket_requests_total{route="/v1/credentials/{name}/refresh",status="200"}"#
        ) >= 1.0
    );
    assert!(
        !page.body.contains("route=\"/v1/tokens/a\""),
        "{}",
        page.body
    );

    assert!(value(&s, "tokend_commit_duration_seconds_count") >= 3.0);
    assert_eq!(
        value(
            &s,
            &format!(
                "tokend_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(value(&s, "process_start_time_seconds") > 1.0e9);

    // This scrape itself shows on the next one.
    let again = samples(&scrape(&daemon, None).await.body);
    assert!(
        value(
            &again,
            r#"tokend_socket_requests_total{route="/metrics",status="200"}"#
        ) >= 1.0
    );

    // A scraper that asks for OpenMetrics gets it, ending in `# EOF`.
    let open = scrape(
        &daemon,
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert_eq!(open.status, 200);
    assert!(
        open.head
            .contains("content-type: application/openmetrics-text"),
        "{}",
        open.head
    );
    assert!(
        open.body.contains("# TYPE tokend_refreshes counter\n"),
        "{}",
        open.body
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    let parsed = openmetrics_samples(&open.body).await;
    for expected in [
        r#"counter tokend_refreshes_total{outcome="success",provider="p"} 3.0"#,
        r#"counter tokend_refreshes_total{outcome="reauth",provider="p"} 1.0"#,
        r#"gauge tokend_credentials{state="needs_reauth"} 1.0"#,
        r#"histogram tokend_refresh_duration_seconds_count{provider="p"} 4.0"#,
        r#"gauge tokend_token_expiry_omitted{} 1.0"#,
    ] {
        assert!(
            parsed.iter().any(|l| l == expected),
            "no {expected} in {parsed:#?}"
        );
    }
    assert!(
        parsed
            .iter()
            .any(|l| l.starts_with("info tokend_build_info{version=")),
        "{parsed:#?}"
    );

    let leaks = fake.find_leaks(&std::fs::read_to_string(&daemon.log).unwrap());
    assert!(leaks.is_empty(), "secrets in the log: {leaks:?}");
    let leaks = fake.find_leaks(&page.body);
    assert!(leaks.is_empty(), "secrets on the metrics page: {leaks:?}");
    daemon.finish(&[&fake]).await;
}

/// Reads one answer to `GET /metrics` as another uid, through the system
/// Python (the test runs as root; the other uid has no Rust client).
const PY_GET: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
s.sendall(b"GET /metrics HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n")
out = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    out += chunk
sys.stdout.buffer.write(out)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_administrators_may_scrape() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = format!(
        "{}readers = [\"uid:{OTHER_UID}\"]\n",
        provider_toml("p", &fake)
    );
    let extra = format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n");
    let daemon = Daemon::start(&extra, &providers).await;
    daemon.open_to_other_users();
    daemon
        .add("secret-name", "p", &fake.issue_refresh_token())
        .await
        .ok();

    let out = setpriv(OTHER_UID, SOCKET_GID, &[])
        .args(["/usr/bin/python3", "-c", PY_GET])
        .arg(&daemon.socket)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("setpriv and python3 must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = parse(&out.stdout);
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(!page.body.contains("secret-name"), "{}", page.body);
    let json: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(json["error"], "forbidden", "{}", page.body);

    // The administrator's scrape does name it.
    let admin = scrape(&daemon, None).await;
    assert!(
        admin.body.contains("credential=\"secret-name\""),
        "{}",
        admin.body
    );
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loopback_listener_serves_metrics_without_credential_names() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    // A port free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!("{FAST_DAEMON}metrics_listen = \"127.0.0.1:{port}\"\n");
    let daemon = Daemon::start(&extra, &provider_toml("p", &fake)).await;
    daemon
        .add("named-one", "p", &fake.issue_refresh_token())
        .await
        .ok();

    let get = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let page = exchange(tcp, get).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.head
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        page.head
    );
    promtool_check(&page.body).await;
    let s = samples(&page.body);
    assert_eq!(
        value(
            &s,
            r#"tokend_refreshes_total{provider="p",outcome="success"}"#
        ),
        1.0
    );
    assert_eq!(value(&s, r#"tokend_credentials{state="active"}"#), 1.0);
    assert_eq!(value(&s, "tokend_token_expiry_omitted"), 1.0);
    assert!(!page.body.contains("named-one"), "{}", page.body);

    // A page in a browser, its name rebound to 127.0.0.1, is refused.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let rebound = exchange(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: evil.example:9464\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert!(!rebound.body.contains("tokend_"), "{}", rebound.body);

    // Nothing but the metrics page is served there.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let other = exchange(
        tcp,
        "GET /v1/tokens/named-one HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(other.status, 404, "{}", other.body);
    assert!(
        !other.body.contains("eyJ") && !other.body.contains("access_token"),
        "{}",
        other.body
    );
    daemon.finish(&[&fake]).await;
}

#[tokio::test]
async fn check_config_shows_the_metrics_settings_and_refuses_a_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokend.toml");
    std::fs::write(
        &file,
        "[daemon]\nmetrics_credential_limit = 7\nmetrics_listen = \"[::1]:9464\"\n",
    )
    .unwrap();
    let run = cli_at(dir.path(), &["check-config", file.to_str().unwrap()], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("expiry series for up to 7 credential(s)"),
        "{run:?}"
    );
    assert!(run.stdout.contains("http://[::1]:9464/metrics"), "{run:?}");

    for (value, expected) in [
        ("0.0.0.0:9464", "is not a loopback address"),
        ("192.0.2.1:9464", "is not a loopback address"),
        ("localhost:9464", "is not an address and port"),
        ("127.0.0.1", "is not an address and port"),
    ] {
        std::fs::write(&file, format!("[daemon]\nmetrics_listen = \"{value}\"\n")).unwrap();
        let run = cli_at(dir.path(), &["check-config", file.to_str().unwrap()], None).await;
        assert_eq!(run.code, 2, "{value}: {run:?}");
        assert!(
            run.stderr.contains("tokend.toml:2: daemon.metrics_listen"),
            "{value}: {run:?}"
        );
        assert!(run.stderr.contains(expected), "{value}: {run:?}");
    }
    std::fs::write(&file, "[daemon]\nmetrics_credential_limit = 10001\n").unwrap();
    let run = cli_at(dir.path(), &["check-config", file.to_str().unwrap()], None).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("daemon.metrics_credential_limit: must be between 0 and 10000"),
        "{run:?}"
    );
}
