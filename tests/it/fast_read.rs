//! Token reads are answered before the router (`server/fast_read.rs`) for a
//! plain `GET /v1/tokens/NAME`: each answer must be the router's, status,
//! headers and body, for every kind of caller and credential. The router
//! still answers the same read spelt so the fast path does not take it (the
//! name percent-encoded), which is what each answer is compared with.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Fault, Flavor};
use crate::support::{provider_toml, setpriv, Daemon, RawAnswer, FAST_DAEMON};

const SOCKET_GID: u32 = 4253;
/// Reads `c` and `dead` (their provider's readers) but not `private`.
const READER_UID: u32 = 1000;

/// Sends `request` as `uid` (`None`: this process, root) and reads until
/// the server closes the connection (every request here says `close`).
async fn exchange(daemon: &Daemon, uid: Option<u32>, request: &str) -> Vec<u8> {
    let Some(uid) = uid else {
        let mut stream = UnixStream::connect(&daemon.socket).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
            .await
            .expect("no answer within 20 s")
            .unwrap();
        return out;
    };
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX); s.settimeout(20); s.connect(sys.argv[1])\n\
        s.sendall(sys.stdin.buffer.read()); out=b''\n\
        while True:\n    c=s.recv(65536)\n    if not c: break\n    out+=c\n\
        sys.stdout.buffer.write(out)\n";
    let mut child = setpriv(uid, SOCKET_GID, &[])
        .args(["/usr/bin/python3", "-c", script])
        .arg(&daemon.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv and python3 must be installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An answer with its `date` header left out, the one part two answers a
/// moment apart may differ in.
fn without_date(raw: &[u8]) -> (u16, Vec<String>, String) {
    let answer = RawAnswer::parse(raw);
    let head = answer
        .head
        .lines()
        .filter(|l| !l.starts_with("date:"))
        .map(str::to_string)
        .collect();
    (answer.status, head, answer.body)
}

/// `GET target` as `uid`, once as the fast path takes it and once spelt for
/// the router (`name` percent-encoded); asserts the answers are the same and
/// returns it. A token's `expires_in` counts down, so a pair that straddles
/// a second is asked again.
async fn same_answer(
    daemon: &Daemon,
    uid: Option<u32>,
    name: &str,
    query: &str,
    accept: &str,
) -> (u16, Vec<String>, String) {
    let encoded: String = name.bytes().map(|b| format!("%{b:02X}")).collect();
    let request = |name: &str| {
        format!(
            "GET /v1/tokens/{name}{query} HTTP/1.1\r\nHost: tokend\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
    };
    let mut last = None;
    for _ in 0..5 {
        let fast = without_date(&exchange(daemon, uid, &request(name)).await);
        let routed = without_date(&exchange(daemon, uid, &request(&encoded)).await);
        if fast == routed {
            return fast;
        }
        last = Some((fast, routed));
    }
    let (fast, routed) = last.unwrap();
    panic!("{name}{query} as {uid:?}: the fast path answered\n{fast:#?}\nthe router\n{routed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_answers_as_the_router_does() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = format!(
        "{}readers = [\"uid:{READER_UID}\"]\n[credentials.private]\nreaders = [\"uid:1001\"]\n",
        provider_toml("p", &fake)
    );
    let extra = format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n");
    let daemon = Daemon::start(&extra, &providers).await;
    daemon.open_to_other_users();
    for name in ["c", "private", "dead"] {
        daemon
            .add(name, "p", &fake.issue_refresh_token())
            .await
            .ok();
    }
    // `dead`'s grant is refused: it needs re-authorization, and its token
    // is withheld (the default `on_invalid_grant`).
    fake.push_fault(Fault::oauth_error(400, "invalid_grant"));
    let run = daemon.cli(&["refresh", "dead"]).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(daemon.status("dead").await["state"], "needs_reauth");

    let json = "application/json";
    let reader = Some(READER_UID);
    // (caller, name, query, accept, status)
    let cases = [
        (None, "c", "", json, 200),
        (None, "c", "", "text/plain", 200),
        (None, "c", "?min_valid=60", json, 200),
        (reader, "c", "", json, 200),
        (reader, "c", "", "text/plain", 200),
        // Not the reader's: answered as a missing one.
        (reader, "private", "", json, 404),
        (reader, "nosuch", "", json, 404),
        // An administrator is told precisely.
        (None, "nosuch", "", json, 404),
        (None, "private", "", json, 200),
        // Asks the owner, which refuses: no fresh token to serve.
        (None, "dead", "", json, 409),
        (reader, "dead", "", json, 409),
        // Asks the owner, which cannot give that long.
        (None, "c", "?min_valid=99999999", json, 422),
    ];
    for (uid, name, query, accept, status) in cases {
        let (got, head, body) = same_answer(&daemon, uid, name, query, accept).await;
        assert_eq!(got, status, "{name}{query} as {uid:?}: {head:?} {body}");
        let content_type = head
            .iter()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default();
        if accept == "text/plain" && status == 200 {
            assert_eq!(content_type, "text/plain; charset=utf-8");
            assert!(body.ends_with('\n') && !body.contains('{'), "{body}");
        } else {
            assert_eq!(content_type, "application/json", "{head:?}");
            serde_json::from_str::<serde_json::Value>(&body).expect("a JSON body");
        }
    }
    // The denial of `private` to the reader was still logged.
    let logs = daemon.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("access denied") && l.contains("private")),
        "{logs}"
    );
    daemon.finish(&[&fake]).await;
}

/// `tokend_socket_requests_total` for the token route and `status`.
async fn token_reads_counted(daemon: &Daemon, status: u16) -> f64 {
    let raw = exchange(
        daemon,
        None,
        "GET /metrics HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n",
    )
    .await;
    let page = RawAnswer::parse(&raw).body;
    let series = format!(
        "tokend_socket_requests_total{{route=\"/v1/tokens/{{name}}\",status=\"{status}\"}}"
    );
    page.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().expect("a sample value"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_mixes_fast_reads_and_routed_requests() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let (ok_before, bad_before) = (
        token_reads_counted(&daemon, 200).await,
        token_reads_counted(&daemon, 400).await,
    );
    // Pipelined on one keep-alive connection: fast, routed, fast with a
    // query, routed (a query the fast path leaves to the router), a HEAD
    // (routed) and a POST the route does not take.
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: tokend\r\n\r\n");
    let request = [
        get("/v1/tokens/c"),
        get("/v1/health"),
        get("/v1/tokens/c?min_valid=1"),
        get("/v1/tokens/c?min_valid=abc"),
        "HEAD /v1/tokens/c HTTP/1.1\r\nHost: tokend\r\n\r\n".to_string(),
        "POST /v1/tokens/c HTTP/1.1\r\nHost: tokend\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_string(),
    ]
    .concat();
    let raw = exchange(&daemon, None, &request).await;
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(
        statuses,
        ["200", "200", "200", "400", "200", "405"],
        "{text}"
    );
    // Both paths count under the route template: two fast reads and the
    // HEAD answered 200, the router's 400.
    assert_eq!(token_reads_counted(&daemon, 200).await - ok_before, 3.0);
    assert_eq!(token_reads_counted(&daemon, 400).await - bad_before, 1.0);
    daemon.finish(&[&fake]).await;
}

/// Reads until the server closes; returns what arrived and when it closed.
async fn until_closed(stream: &mut UnixStream) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out))
        .await
        .expect("the connection was not closed within 30 s")
        .ok();
    (out, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_read_head_must_arrive_within_the_head_timeout() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // A slow-loris read: a head that never ends.
    let mut slow = UnixStream::connect(&daemon.socket).await.unwrap();
    slow.write_all(b"GET /v1/tokens/c HTTP/1.1\r\nHost: tokend\r\nX-Slow: ")
        .await
        .unwrap();
    // A keep-alive reader that reads once, then holds its connection idle.
    let mut idle = UnixStream::connect(&daemon.socket).await.unwrap();
    idle.write_all(b"GET /v1/tokens/c HTTP/1.1\r\nHost: tokend\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (slow_got, slow_closed) = until_closed(&mut slow).await;
    let (idle_got, idle_closed) = until_closed(&mut idle).await;
    assert!(
        slow_got.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&slow_got)
    );
    assert!(
        String::from_utf8_lossy(&idle_got).starts_with("HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&idle_got)
    );
    // The head timeout is 10 s; neither is cut sooner, nor kept much longer.
    for (what, closed) in [("slow head", slow_closed), ("idle", idle_closed)] {
        let after = closed - started;
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(20)).contains(&after),
            "{what}: closed after {after:?}"
        );
    }
    // Others are served meanwhile and after.
    daemon.cli(&["get", "c"]).await.ok();
    daemon.finish(&[&fake]).await;
}
