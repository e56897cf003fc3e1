//! `tokend git-credential`: the real `git` fetches over HTTP from a local
//! server that takes only the credential's current token, through tokend as
//! its credential helper, for a host mapped in tokend's configuration or a
//! credential named in git's; another user not among the readers gets
//! nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{provider_toml, setpriv, wait_until, Daemon, Run, FAST_DAEMON};

const SOCKET_GID: u32 = 4252;

/// What the git server saw.
#[derive(Default)]
struct Seen {
    /// The scheme of each accepted request.
    accepted: Vec<String>,
    refused: usize,
}

/// A dumb-HTTP git server on 127.0.0.1 serving `root`, which takes a
/// request only with `token` (Basic as the password, or Bearer) and
/// otherwise answers 401 with the challenges in `challenges`.
struct GitServer {
    url: String,
    token: Arc<Mutex<String>>,
    seen: Arc<Mutex<Seen>>,
}

impl GitServer {
    async fn start(root: PathBuf, challenges: &'static [&'static str]) -> GitServer {
        let token = Arc::new(Mutex::new(String::new()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (t, s) = (token.clone(), seen.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (root, token, seen) = (root.clone(), t.clone(), s.clone());
            async move { serve(&root, &token, &seen, challenges, &uri, &headers) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/repo.git", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        GitServer { url, token, seen }
    }
}

fn serve(
    root: &Path,
    token: &Mutex<String>,
    seen: &Mutex<Seen>,
    challenges: &[&str],
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let want = token.lock().unwrap().clone();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let scheme = match given.split_once(' ') {
        Some(("Bearer", t)) if !want.is_empty() && t == want => Some("Bearer"),
        Some(("Basic", b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|d| {
                d.split_once(':')
                    .map(|(_, p)| p == want && !want.is_empty())
            })
            .and_then(|ok| ok.then_some("Basic")),
        _ => None,
    };
    let Some(scheme) = scheme else {
        seen.lock().unwrap().refused += 1;
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        for c in challenges {
            response
                .headers_mut()
                .append(header::WWW_AUTHENTICATE, c.parse().unwrap());
        }
        return response;
    };
    seen.lock().unwrap().accepted.push(scheme.to_string());
    let rel = uri.path().trim_start_matches('/');
    if rel.split('/').any(|part| part == ".." || part.is_empty()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    match std::fs::read(root.join(rel)) {
        Ok(body) => body.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A bare repository `repo.git` under `root` with one commit on main,
/// ready for dumb HTTP; returns the commit.
async fn bare_repo(root: &Path) -> String {
    let work = root.join("work");
    let run = |args: Vec<String>| async move {
        let out = Command::new("/usr/bin/git")
            .args(&args)
            .env("HOME", root)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let w = work.to_str().unwrap();
    run(s(&["init", "-q", "-b", "main", w])).await;
    std::fs::write(work.join("f"), "x").unwrap();
    run(s(&["-C", w, "add", "f"])).await;
    run(s(&[
        "-C",
        w,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "c",
    ]))
    .await;
    let head = run(s(&["-C", w, "rev-parse", "HEAD"])).await;
    let bare = root.join("repo.git");
    run(s(&["clone", "-q", "--bare", w, bare.to_str().unwrap()])).await;
    run(s(&["-C", bare.to_str().unwrap(), "update-server-info"])).await;
    head
}

/// `git ls-remote URL` with tokend as the only credential helper, given
/// `helper_args` after `git-credential`.
async fn ls_remote(git: &str, home: &Path, socket: &Path, helper_args: &str, url: &str) -> Run {
    let helper = format!(
        "!{} --socket {} git-credential {helper_args}",
        env!("CARGO_BIN_EXE_tokend"),
        socket.display()
    );
    let out = Command::new(git)
        .arg("-c")
        .arg("credential.helper=")
        .arg("-c")
        .arg(format!("credential.helper={helper}"))
        .args(["ls-remote", url])
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    Run::from_output(&out)
}

/// The tables of provider `p` and credentials `c` (readable by uid 1000,
/// mapped to git.example and each of `git_hosts`) and `d` (mapped to
/// git.example/group).
fn tables(fake: &FakeProvider, git_hosts: &[String]) -> String {
    let mut hosts = vec!["\"git.example\"".to_string()];
    hosts.extend(git_hosts.iter().map(|h| format!("\"{h}\"")));
    format!(
        "{}[credentials.c]\nreaders = [\"uid:1000\"]\ngit_hosts = [{}]\n\
         [credentials.d]\nreaders = [\"uid:1000\"]\ngit_hosts = [\"git.example/group\"]\n\
         git_username = \"x-access-token\"\n",
        provider_toml("p", fake),
        hosts.join(", ")
    )
}

fn daemon_extra() -> String {
    format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n")
}

/// A daemon with [`tables`], `c` and `d` added.
async fn start(git_hosts: &[String]) -> (FakeProvider, Daemon) {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(&daemon_extra(), &tables(&fake, git_hosts)).await;
    daemon.open_to_other_users();
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    daemon.add("d", "p", &fake.issue_refresh_token()).await.ok();
    (fake, daemon)
}

/// `host:port` of a server's URL.
fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_fetches_with_the_current_token() {
    let root = tempfile::tempdir().unwrap();
    let head = bare_repo(root.path()).await;
    // Basic only, and Bearer or Basic.
    let basic = GitServer::start(root.path().to_path_buf(), &["Basic realm=\"x\""]).await;
    let bearer = GitServer::start(
        root.path().to_path_buf(),
        &["Bearer realm=\"x\"", "Basic realm=\"x\""],
    )
    .await;
    let (fake, daemon) = start(&[host_of(&basic.url), host_of(&bearer.url)]).await;
    let token = daemon
        .cli(&["get", "c"])
        .await
        .ok()
        .stdout
        .trim()
        .to_string();
    *basic.token.lock().unwrap() = token.clone();
    *bearer.token.lock().unwrap() = token.clone();

    // Every git sends the token as the Basic password, the host mapped by
    // the daemon's configuration or the credential named by git's.
    let gits: Vec<&str> = ["/usr/bin/git", "/usr/local/bin/git"]
        .into_iter()
        .filter(|g| Path::new(g).exists())
        .collect();
    assert!(!gits.is_empty(), "git must be installed (.ci/run does)");
    for git in &gits {
        for helper in ["", "--credential c"] {
            let run = ls_remote(git, root.path(), &daemon.socket, helper, &basic.url).await;
            assert_eq!(run.code, 0, "{git} {helper}: {run:?}");
            assert!(run.stdout.contains(&head), "{git}: {run:?}");
        }
    }
    {
        let seen = basic.seen.lock().unwrap();
        assert!(seen.refused >= 2 * gits.len(), "never challenged");
        assert!(seen.accepted.len() >= 2 * gits.len());
        assert!(seen.accepted.iter().all(|s| s == "Basic"));
    }

    // A git that speaks authtype (2.46+) sends it as Bearer when the server
    // offers Bearer.
    if Path::new("/usr/local/bin/git").exists() {
        let run = ls_remote(
            "/usr/local/bin/git",
            root.path(),
            &daemon.socket,
            "",
            &bearer.url,
        )
        .await;
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains(&head));
        let seen = bearer.seen.lock().unwrap();
        assert!(!seen.accepted.is_empty());
        assert!(
            seen.accepted.iter().all(|s| s == "Bearer"),
            "{:?}",
            seen.accepted
        );
    }

    // A server that wants another token: git fails, with nothing stored.
    *basic.token.lock().unwrap() = "not-the-token".into();
    let run = ls_remote(gits[0], root.path(), &daemon.socket, "", &basic.url).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(!run.stderr.contains(&token) && !run.stdout.contains(&token));
    assert!(!root.path().join(".git-credentials").exists());

    daemon.finish(&[&fake]).await;
}

/// Feeds `input` to `tokend git-credential ARGS` as `uid` (else as root).
async fn helper_as(daemon: &Daemon, uid: Option<u32>, args: &[&str], input: &str) -> Run {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = setpriv(uid, SOCKET_GID, &[]);
            c.arg(env!("CARGO_BIN_EXE_tokend"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_tokend")),
    };
    let mut child = cmd
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("git-credential")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    Run::from_output(&child.wait_with_output().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_readers_get_a_token_and_only_over_https() {
    let (fake, daemon) = start(&[]).await;
    let token = daemon
        .cli(&["get", "c"])
        .await
        .ok()
        .stdout
        .trim()
        .to_string();
    let expiry = daemon.status("c").await["expires_at"].as_i64().unwrap();
    let d_token = daemon
        .cli(&["get", "d"])
        .await
        .ok()
        .stdout
        .trim()
        .to_string();
    let https = "protocol=https\nhost=git.example\n\n";
    let quiet = |run: &Run| {
        assert_eq!(
            (run.code, run.stdout.as_str(), run.stderr.as_str()),
            (0, "", ""),
            "{run:?}"
        )
    };

    // A reader gets the mapped credential's token, with the host's username.
    let want = format!("username=oauth2\npassword={token}\npassword_expiry_utc={expiry}\n");
    let run = helper_as(&daemon, Some(1000), &["get"], https).await;
    assert_eq!(run.ok().stdout, want);
    let run = helper_as(&daemon, Some(1000), &["get", "--credential", "c"], https).await;
    assert_eq!(run.ok().stdout, want);
    // The longest path prefix decides, when git sends the path.
    let input = "protocol=https\nhost=git.example\npath=group/repo.git\n\n";
    let run = helper_as(&daemon, None, &["get"], input).await;
    assert!(
        run.ok()
            .stdout
            .starts_with(&format!("username=x-access-token\npassword={d_token}\n")),
        "{run:?}"
    );
    // --username, then the URL's, then git_username.
    let with_user = "protocol=https\nhost=git.example\npath=group/r\nusername=url\n\n";
    let run = helper_as(&daemon, None, &["get", "--username", "me"], with_user).await;
    assert!(run.ok().stdout.starts_with("username=me\n"), "{run:?}");
    let run = helper_as(&daemon, None, &["get"], with_user).await;
    assert!(run.ok().stdout.starts_with("username=url\n"), "{run:?}");
    // Not a reader: of a mapped host, the unmapped host's silence; of a
    // named credential, a failure git reports.
    quiet(&helper_as(&daemon, Some(1002), &["get"], https).await);
    let run = helper_as(&daemon, Some(1002), &["get", "--credential", "c"], https).await;
    assert_ne!(run.code, 0);
    assert!(run.stdout.is_empty(), "{run:?}");
    // An unmapped host, plain http to another host, ssh: nothing at all,
    // and success, so git goes on to its next helper.
    // (With --credential, git's configuration chose the host.)
    quiet(
        &helper_as(
            &daemon,
            None,
            &["get"],
            "protocol=https\nhost=other.example\n\n",
        )
        .await,
    );
    for input in [
        "protocol=http\nhost=git.example\n\n",
        "protocol=ssh\nhost=git.example\n\n",
    ] {
        quiet(&helper_as(&daemon, None, &["get"], input).await);
        quiet(&helper_as(&daemon, None, &["get", "--credential", "c"], input).await);
    }
    // store and erase are accepted and change nothing.
    for op in ["store", "erase", "unknown"] {
        let input = "protocol=https\nhost=git.example\nusername=u\npassword=p\n\n";
        quiet(&helper_as(&daemon, None, &[op], input).await);
    }
    let run = helper_as(&daemon, None, &["get"], https).await;
    assert!(run.ok().stdout.contains(&format!("password={token}\n")));

    // check-config shows the mapping.
    let run = daemon
        .cli(&["check-config", daemon.config.to_str().unwrap()])
        .await;
    assert!(
        run.ok()
            .stdout
            .contains("credential d: git host git.example/group (username x-access-token)"),
        "{run:?}"
    );

    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_mapping() {
    let (fake, daemon) = start(&[]).await;
    let input = "protocol=https\nhost=new.example\n\n";
    let run = helper_as(&daemon, None, &["get"], input).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    daemon.write_config(&daemon_extra(), &tables(&fake, &["new.example".into()]));
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the new mapping", || async {
        helper_as(&daemon, None, &["get"], input)
            .await
            .stdout
            .contains("password=")
    })
    .await;
    daemon.finish(&[&fake]).await;
}
