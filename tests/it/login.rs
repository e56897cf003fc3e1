//! `tokend login`: the real CLI binds its loopback listener and prints the
//! authorization URL the real daemon built; the test browser
//! (`support::browser`) opens it at the strict fake's authorization
//! endpoint, fills in the login form and follows the 302 back to the CLI,
//! which hands the code and verifier to the daemon's exchange.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;

use crate::support::browser::{Browser, Page};
use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_as, provider_toml, wait_until, Daemon, Run, FAST_DAEMON};

const SOCKET_GID: u32 = 4253;

/// A Didit fake and a daemon whose provider `p` can log in there, with
/// `extra` provider keys (after the authorize table's).
async fn start(extra: &str) -> (FakeProvider, Daemon) {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = format!(
        "{}authorization_url = \"{}\"\n{extra}[providers.p.authorize]\naccess_type = \"offline\"\nprompt = \"consent\"\n",
        provider_toml("p", &fake),
        fake.authorization_url()
    );
    let extra = format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n");
    let daemon = Daemon::start(&extra, &providers).await;
    (fake, daemon)
}

/// A running `tokend login` and the authorization URL it printed.
pub(crate) struct Login {
    child: Child,
    pub(crate) url: String,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl Login {
    /// Starts `tokend login c -p p ARGS` with no browser to start, and
    /// waits for the URL it prints.
    pub(crate) async fn start(daemon: &Daemon, args: &[&str]) -> Login {
        Login::start_with(daemon, args, None).await
    }

    /// [`Login::start`] with `$BROWSER` set to `browser`, if given.
    async fn start_with(daemon: &Daemon, args: &[&str], browser: Option<&Path>) -> Login {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokend"));
        if let Some(browser) = browser {
            cmd.env("BROWSER", browser);
        } else {
            cmd.env_remove("BROWSER");
        }
        let mut child = cmd
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["login", "c", "--provider", "p"])
            .args(args)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tokend login");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let all = Arc::clone(&stderr);
        let reader = tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim_start().starts_with("http") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.trim().to_string());
                    }
                }
                let mut all = all.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let url = match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(url)) => url,
            _ => {
                let out = child.wait_with_output().await.expect("output");
                panic!(
                    "tokend login printed no URL: {:?} {}",
                    Run::from_output(&out),
                    stderr.lock().unwrap()
                );
            }
        };
        Login {
            child,
            url,
            stdin,
            stderr,
            reader,
        }
    }

    /// Waits for the CLI to exit: its code, stdout and whole stderr.
    pub(crate) async fn finish(mut self) -> Run {
        drop(self.stdin.take());
        let out = tokio::time::timeout(Duration::from_secs(60), self.child.wait_with_output())
            .await
            .expect("tokend login did not exit")
            .expect("output");
        let _ = self.reader.await;
        let mut run = Run::from_output(&out);
        run.stderr = self.stderr.lock().unwrap().clone();
        run
    }
}

/// The test browser: no redirect followed on its own, loopback only.
fn browser() -> Browser {
    Browser::new()
}

/// Opens `url` at the fake's authorization endpoint and submits its form
/// with `action` and `password`; the answer (a 302, or the form again).
async fn submit(b: &Browser, fake: &FakeProvider, url: &str, action: &str, password: &str) -> Page {
    let page = b.get(url).await;
    assert_eq!(
        page.status,
        200,
        "authorization request refused: {:?}",
        fake.rejections()
    );
    let (user, _) = fake.login_credentials();
    b.submit_form(
        &page,
        &[
            ("username", user),
            ("password", password),
            ("action", action),
        ],
    )
    .await
}

/// The `Location` of a 302.
fn location(p: &Page) -> String {
    assert_eq!(p.status, 302, "{p:?}");
    p.location.as_ref().expect("Location").to_string()
}

/// Every parameter of `url`'s query.
fn query(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(q: &[(String, String)], key: &str) -> Option<String> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_stores_a_credential_that_serves_tokens() {
    let (fake, daemon) = start("").await;
    let login = Login::start(&daemon, &["--no-browser"]).await;
    let q = query(&login.url);
    let redirect_uri = param(&q, "redirect_uri").unwrap();
    assert!(
        redirect_uri.starts_with("http://127.0.0.1:"),
        "{redirect_uri}"
    );
    assert!(redirect_uri.ends_with("/callback"), "{redirect_uri}");
    assert_eq!(param(&q, "response_type").as_deref(), Some("code"));
    assert_eq!(param(&q, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param(&q, "access_type").as_deref(), Some("offline"));
    assert_eq!(param(&q, "prompt").as_deref(), Some("consent"));

    let b = browser();
    // Another request to the listener (a browser's favicon) is not the redirect.
    let favicon = redirect_uri.replace("/callback", "/favicon.ico");
    assert_eq!(b.get(&favicon).await.status, 404);
    let again = submit(&b, &fake, &login.url, "login", "wrong").await;
    assert_eq!(again.status, 200);
    assert_eq!(fake.wrong_passwords(), 1);
    let (_, password) = fake.login_credentials();
    let back = location(&submit(&b, &fake, &login.url, "login", password).await);
    assert!(back.starts_with(&format!("{redirect_uri}?code=")), "{back}");
    // While it waits, the CLI's argv holds nothing secret.
    let pid = login.child.id().expect("pid");
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let page = b.get(&back).await;
    assert_eq!(page.status, 200);
    let page = page.body;
    assert!(page.contains("Logged in"), "{page}");
    let run = login.finish().await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("c: logged in (provider p)"), "{run:?}");

    let token = daemon.cli(&["get", "c"]).await;
    assert!(token.ok().stdout.starts_with("at-"), "{token:?}");
    let st = daemon.status("c").await;
    assert_eq!(st["has_refresh_token"], true, "{st}");
    assert_eq!(fake.exchange_count(), 1);
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    for (what, text) in [
        ("argv", String::from_utf8_lossy(&argv).into_owned()),
        ("CLI output", format!("{}{}", run.stdout, run.stderr)),
    ] {
        let leaks = fake.find_leaks(&text);
        assert!(leaks.is_empty(), "secrets in the {what}: {leaks:?}");
    }
    // The verifier reached the fake (the exchange checked it): it is among
    // the secrets the daemon's log is scanned for.
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_state_or_a_denial_exchanges_nothing() {
    let (fake, daemon) = start("").await;
    let b = browser();
    let (_, password) = fake.login_credentials();

    let login = Login::start(&daemon, &["--no-browser"]).await;
    let back = location(&submit(&b, &fake, &login.url, "login", password).await);
    let state = param(&query(&back), "state").unwrap();
    let forged = back.replace(&format!("state={state}"), "state=forged-state-value");
    let page = b.get(&forged).await.body;
    assert!(page.contains("Login failed"), "{page}");
    let run = login.finish().await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("state does not match"), "{run:?}");

    let login = Login::start(&daemon, &[]).await;
    let back = location(&submit(&b, &fake, &login.url, "deny", "").await);
    b.get(&back).await;
    let run = login.finish().await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("refused the login: access_denied: The user denied the request."),
        "{run:?}"
    );

    assert_eq!(fake.exchange_count(), 0);
    let missing = daemon.cli(&["status", "c"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_a_taken_port_and_a_non_admin_fail_clearly() {
    // A port that is taken while the login runs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (fake, daemon) = start(&format!("redirect_port = {port}\n")).await;

    let run = daemon
        .cli(&["login", "c", "-p", "p", "--no-browser", "--timeout", "1s"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("the port is in use"), "{run:?}");
    assert!(run.stderr.contains("redirect_port"), "{run:?}");
    drop(taken);

    let run = daemon
        .cli(&["login", "c", "-p", "p", "--no-browser", "--timeout", "1s"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("http://127.0.0.1:{port}/callback")),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("did not come back within the timeout"),
        "{run:?}"
    );

    daemon.open_to_other_users();
    let args = ["login", "c", "-p", "p", "--no-browser", "--timeout", "1s"];
    let run = cli_as(&daemon.socket, 1000, SOCKET_GID, &[], &args).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("may not log in"), "{run:?}");

    let run = daemon.cli(&["login", "c", "-p", "nope"]).await;
    assert!(run.stderr.contains("no provider named `nope`"), "{run:?}");
    assert!(fake.authorize_requests().is_empty());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_an_authorization_endpoint_says_which_key_to_set() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    let run = daemon.cli(&["login", "c", "-p", "p", "--no-browser"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("set authorization_url (or issuer) under [providers.p]"),
        "{run:?}"
    );
    let client = tokend::client::Client::new(&daemon.socket);
    for (path, status) in [
        ("/v1/providers/nope/login", 404),
        ("/v1/providers/p/login", 400),
        (
            "/v1/providers/p/authorize?redirect_uri=x&state=abcdefgh&code_challenge=x",
            400,
        ),
    ] {
        let (got, body) = client
            .raw(hyper::Method::GET, path, None, "application/json")
            .await
            .unwrap();
        assert_eq!(got, status, "{path}: {body:?}");
    }
    // A reload that adds the endpoint takes effect for the next login.
    let with_login = format!(
        "{}authorization_url = \"{}\"\nredirect_port = 8399\n",
        provider_toml("p", &fake),
        fake.authorization_url()
    );
    daemon.write_config(FAST_DAEMON, &with_login);
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "the reload", || async {
        let (status, body) = client
            .raw(
                hyper::Method::GET,
                "/v1/providers/p/login",
                None,
                "application/json",
            )
            .await
            .unwrap();
        status == 200 && String::from_utf8_lossy(&body).contains("\"redirect_port\":8399")
    })
    .await;
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_reads_the_address_the_browser_ended_at() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let (fake, daemon) = start(&format!("redirect_port = {port}\n")).await;
    // An `iss` in the redirect is not checked against a provider with no
    // issuer configured (RFC 9207 §2.4 needs one to compare with).
    fake.set_redirect_issuer(Some("http://fake.example"));
    let mut login = Login::start(&daemon, &["--paste"]).await;
    let redirect_uri = param(&query(&login.url), "redirect_uri").unwrap();
    assert_eq!(redirect_uri, format!("http://127.0.0.1:{port}/callback"));
    let b = browser();
    let (_, password) = fake.login_credentials();
    let back = location(&submit(&b, &fake, &login.url, "login", password).await);
    // Nothing listens there: the browser shows an error, the user copies
    // the address.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on {back}"
    );
    let mut stdin = login.stdin.take().unwrap();
    stdin
        .write_all(format!("{back}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let run = login.finish().await;
    assert_eq!(run.code, 0, "{run:?}");
    daemon.cli(&["get", "c"]).await.ok();
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_is_started_with_the_url_as_its_one_argument() {
    let (fake, daemon) = start("").await;
    let client = tokend::client::Client::new(&daemon.socket);
    // The daemon refuses a redirect that is not the provider's loopback one.
    let (status, body) = client
        .raw(
            hyper::Method::GET,
            "/v1/providers/p/authorize?redirect_uri=http%3A%2F%2Fevil.example%3A80%2Fcallback&state=abcdefgh&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            None,
            "application/json",
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body:?}");
    assert!(String::from_utf8_lossy(&body).contains("not the provider's redirect"));

    let seen = daemon.dir.path().join("browser-args");
    let script = daemon.dir.path().join("browser.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$#\" \"$@\" > {0}.tmp && mv {0}.tmp {0}\n",
            seen.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let login = Login::start_with(&daemon, &[], Some(&script)).await;
    wait_until(Duration::from_secs(10), "the browser to start", || async {
        seen.exists()
    })
    .await;
    let args = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(args, format!("1\n{}\n", login.url), "one argument, the URL");
    let b = browser();
    let (_, password) = fake.login_credentials();
    let back = location(&submit(&b, &fake, &login.url, "login", password).await);
    b.get(&back).await;
    let run = login.finish().await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("a browser was started"), "{run:?}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_authorization_endpoint_refuses_what_the_rfcs_forbid() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let client_id = fake.config().client_id.clone();
    let good = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", "http://127.0.0.1:5000/callback"),
        ("state", "abcdefgh"),
        (
            "code_challenge",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ),
        ("code_challenge_method", "S256"),
    ];
    let url = |pairs: &[(&str, &str)]| {
        let mut u = url::Url::parse(&fake.authorization_url()).unwrap();
        u.query_pairs_mut().extend_pairs(pairs);
        u.to_string()
    };
    let b = browser();
    assert_eq!(b.get(&url(&good)).await.status, 200);
    let mut refused = 0;
    for (key, bad) in [
        ("response_type", Some("token")),
        ("client_id", Some("someone-else")),
        ("redirect_uri", Some("https://app.example/callback")),
        ("redirect_uri", Some("http://127.0.0.1/callback")),
        ("code_challenge_method", Some("plain")),
        ("code_challenge", Some("short")),
        ("state", None),
        ("code_challenge", None),
    ] {
        let pairs: Vec<(&str, &str)> = good
            .iter()
            .filter(|(k, _)| *k != key)
            .copied()
            .chain(bad.map(|v| (key, v)))
            .collect();
        let page = b.get(&url(&pairs)).await;
        assert_eq!(page.status, 400, "{key}={bad:?}");
        refused += 1;
        assert_eq!(fake.rejections().len(), refused, "{key}={bad:?}");
    }
    let mut twice = good.to_vec();
    twice.push(("state", "again"));
    assert_eq!(b.get(&url(&twice)).await.status, 400);
    // A form that was never shown is refused too.
    let forged = b
        .post_form(
            &url::Url::parse(&fake.authorization_url()).unwrap(),
            &[
                ("request".into(), "nope".into()),
                ("action".into(), "login".into()),
            ],
        )
        .await;
    assert_eq!(forged.status, 400);
    assert_eq!(
        fake.rejections().len(),
        refused + 2,
        "{:?}",
        fake.rejections()
    );
    assert_eq!(fake.authorize_requests().len(), 1);
}
