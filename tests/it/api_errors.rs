//! The socket API's error answers, spoken in raw HTTP where the CLI cannot
//! express the request: every error is `{"error","message"}` JSON with a
//! documented kind, admin-only requests are refused on their head, and a
//! caller who may not read a credential cannot tell whether it exists.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{provider_toml, setpriv, Daemon, FAST_DAEMON};

const SOCKET_GID: u32 = 4252;
/// Reads `c` (its provider's readers) but not `private`; administers nothing.
const READER_UID: u32 = 1000;

async fn start() -> (FakeProvider, Daemon) {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = format!(
        "{}readers = [\"uid:{READER_UID}\"]\n[credentials.private]\nreaders = [\"uid:1001\"]\n",
        provider_toml("p", &fake)
    );
    let extra = format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n");
    let daemon = Daemon::start(&extra, &providers).await;
    daemon.open_to_other_users();
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    daemon
        .add("private", "p", &fake.issue_refresh_token())
        .await
        .ok();
    (fake, daemon)
}

/// A response split into its status and body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn parse(raw: &[u8]) -> Answer {
        let answer = crate::support::RawAnswer::parse(raw);
        Answer {
            status: answer.status,
            body: answer.body,
        }
    }

    /// Asserts the body is the documented error JSON with `kind`.
    fn assert_error(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let json: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {self:?}"));
        assert_eq!(json["error"], kind, "{self:?}");
        let message = json["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{self:?}");
        assert_eq!(json.as_object().map(|o| o.len()), Some(2), "{self:?}");
    }
}

/// Sends `request` as this process (root, an administrator) and reads the
/// answer until the server closes the connection.
async fn raw(daemon: &Daemon, request: &[u8]) -> Answer {
    let mut stream = UnixStream::connect(&daemon.socket).await.unwrap();
    // The server may answer and close before it has read a large body.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
        .await
        .expect("no answer within 20 s")
        .ok();
    Answer::parse(&out)
}

/// Speaks raw HTTP over the socket as `uid`: writes stdin, then reads until
/// the head and `Content-Length` bytes of body have arrived (the server
/// need not close a connection whose request body it did not read).
const PY_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(float(sys.argv[2]))
s.connect(sys.argv[1])
s.sendall(sys.stdin.buffer.read())
out = b""
try:
    while True:
        if b"\r\n\r\n" in out:
            head, body = out.split(b"\r\n\r\n", 1)
            length = [l.split(b":", 1)[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0]):
                break
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
except socket.timeout:
    pass
sys.stdout.buffer.write(out)
"#;

async fn raw_as(daemon: &Daemon, uid: u32, request: &[u8], timeout: Duration) -> Answer {
    let mut child = setpriv(uid, SOCKET_GID, &[])
        // The system interpreter: a per-user one (pyenv) is unreachable to other uids.
        .args(["/usr/bin/python3", "-c", PY_CLIENT])
        .arg(&daemon.socket)
        .arg(timeout.as_secs_f64().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv and python3 must be installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Answer::parse(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_are_refused_before_their_body_arrives() {
    let (fake, daemon) = start().await;
    for path in [
        "PUT /v1/credentials/x",
        "POST /v1/credentials/x/exchange",
        "DELETE /v1/credentials/c",
        "POST /v1/credentials/c/refresh",
        "GET /v1/providers/p/login",
        "GET /v1/providers/p/authorize?state=x",
    ] {
        // Promises 100 bytes and sends 10: the refusal must not wait for the rest.
        let request = format!(
            "{path} HTTP/1.1\r\nHost: tokend\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"provider"
        );
        let started = Instant::now();
        let answer = raw_as(
            &daemon,
            READER_UID,
            request.as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: refused only after {:?}",
            started.elapsed()
        );
        answer.assert_error(403, "forbidden");
        assert!(answer.body.contains("may not"), "{path}: {answer:?}");
    }
    assert!(daemon.logs().contains("access denied"));
    // Nothing changed.
    assert_eq!(daemon.status("c").await["name"], "c");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_the_documented_json() {
    let (fake, daemon) = start().await;
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n");

    raw(&daemon, get("/v1/tokens/c?min_valid=abc").as_bytes())
        .await
        .assert_error(400, "bad_request");
    raw(&daemon, get("/v1/tokens/%FF").as_bytes())
        .await
        .assert_error(400, "bad_request");
    raw(&daemon, get("/v1/nothing-here").as_bytes())
        .await
        .assert_error(404, "not_found");
    raw(
        &daemon,
        b"DELETE /v1/health HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n",
    )
    .await
    .assert_error(405, "method_not_allowed");
    raw(
        &daemon,
        b"POST /v1/credentials HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .assert_error(405, "method_not_allowed");

    let put = |body: &str| {
        format!(
            "PUT /v1/credentials/x HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    raw(&daemon, put("{not json").as_bytes())
        .await
        .assert_error(400, "bad_request");
    let huge = format!(
        "{{\"provider\":\"p\",\"refresh_token\":\"{}\"}}",
        "a".repeat(70_000)
    );
    raw(&daemon, put(&huge).as_bytes())
        .await
        .assert_error(413, "payload_too_large");
    // A body that is not valid UTF-8 JSON, in a content type we do not parse.
    let mut odd = b"PUT /v1/credentials/x HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\
                    Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
        .to_vec();
    odd.extend_from_slice(&[0xff, 0xfe]);
    raw(&daemon, &odd).await.assert_error(400, "bad_request");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_and_missing_names_answer_alike() {
    let (fake, daemon) = start().await;
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n");
    for prefix in ["/v1/tokens/", "/v1/credentials/"] {
        let hidden = raw_as(
            &daemon,
            READER_UID,
            get(&format!("{prefix}private")).as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        let missing = raw_as(
            &daemon,
            READER_UID,
            get(&format!("{prefix}nosuchcred")).as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        hidden.assert_error(404, "not_found");
        // Same length names, so the answers must be byte for byte the same
        // once the name itself is swapped.
        assert_eq!(
            hidden,
            Answer {
                status: missing.status,
                body: missing.body.replace("nosuchcred", "private"),
            },
            "{prefix}"
        );
        assert!(hidden.body.contains("that you may read"), "{hidden:?}");
        // The reader still gets what it may read.
        raw_as(
            &daemon,
            READER_UID,
            get(&format!("{prefix}c")).as_bytes(),
            Duration::from_secs(10),
        )
        .await
        .status
        .eq(&200)
        .then_some(())
        .expect("the reader may read c");
    }
    // The refusal is still logged for the one that exists.
    let logs = daemon.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("access denied") && l.contains("private")),
        "{logs}"
    );
    // An administrator is told precisely.
    let admin = raw(&daemon, get("/v1/credentials/nosuchcred").as_bytes()).await;
    admin.assert_error(404, "not_found");
    assert!(!admin.body.contains("that you may read"), "{admin:?}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_refuses_access_token_lifetimes_beyond_a_year() {
    let (fake, daemon) = start().await;
    for secs in [u64::MAX, i64::MAX as u64, 365 * 24 * 3600 + 1] {
        let body = format!(
            "{{\"provider\":\"p\",\"refresh_token\":\"rt\",\"access_token\":\"at\",\"expires_in\":{secs}}}"
        );
        let request = format!(
            "PUT /v1/credentials/long HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = raw(&daemon, request.as_bytes()).await;
        answer.assert_error(400, "bad_request");
        assert!(answer.body.contains("one year"), "{secs}: {answer:?}");
    }
    let run = daemon.cli(&["status", "long", "--json"]).await;
    assert_eq!(run.code, 1, "nothing was stored: {run:?}");
    daemon.finish(&[&fake]).await;
}
