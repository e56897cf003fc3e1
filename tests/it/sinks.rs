//! File sinks: each format's exact content and mode, a reload's new sink
//! list, a refresh burst under a reader (the file is never partial, never
//! missing and never older than the token the socket served just before),
//! what a sink costs a refresh, a symlink refused, every `on_remove`, and
//! check-config showing the sinks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_at, provider_toml, wait_until, write_private, Daemon, FAST_DAEMON};

fn me() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// `[credentials.c]` with the given sink tables (each a TOML body).
fn credential(sinks: &[String]) -> String {
    let mut out = format!("[credentials.c]\nreaders = [\"uid:{}\"]\n", me());
    for s in sinks {
        out.push_str(&format!("[[credentials.c.sinks]]\n{s}\n"));
    }
    out
}

fn sink_dir(daemon: &Daemon) -> PathBuf {
    let dir = daemon.dir.path().join("out");
    std::fs::create_dir_all(&dir).expect("sink dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    dir
}

async fn token(daemon: &Daemon) -> String {
    daemon
        .cli(&["get", "c"])
        .await
        .ok()
        .stdout
        .trim_end()
        .to_string()
}

async fn file_is(path: &Path, want: &str) {
    let want = want.to_string();
    let p = path.to_path_buf();
    wait_until(Duration::from_secs(5), "the sink file's contents", || {
        let got = std::fs::read_to_string(&p).ok();
        let ok = got.as_deref() == Some(want.as_str());
        async move { ok }
    })
    .await;
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_hold_each_format_exactly_with_their_mode() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let mut daemon = Daemon::prepare(FAST_DAEMON, "");
    let dir = sink_dir(&daemon);
    let sinks = [
        format!("path = {:?}\nformat = \"token\"", dir.join("token")),
        format!("path = {:?}\nformat = \"header\"\nmode = \"0640\"", dir.join("header")),
        format!("path = {:?}\nformat = \"json\"\nmode = 0o644", dir.join("json")),
        format!(
            "path = {:?}\nformat = \"template\"\ntemplate = \"{{name}} {{token_type}} {{access_token}} {{expires_at}}\\n\"",
            dir.join("tpl")
        ),
    ];
    let providers = format!("{}{}", provider_toml("p", &fake), credential(&sinks));
    daemon.write_config(FAST_DAEMON, &providers);

    let check = cli_at(
        &daemon.socket,
        &["check-config", daemon.config.to_str().unwrap()],
        None,
    )
    .await;
    check.ok();
    for line in [
        format!(
            "credential c: sink {} (token, mode 0600, on_remove delete)",
            dir.join("token").display()
        ),
        format!(
            "credential c: sink {} (header, mode 0640, on_remove delete)",
            dir.join("header").display()
        ),
        format!(
            "credential c: sink {} (json, mode 0644, on_remove delete)",
            dir.join("json").display()
        ),
        format!(
            "credential c: sink {} (template, mode 0600, on_remove delete)",
            dir.join("tpl").display()
        ),
    ] {
        assert!(
            check.stdout.contains(&line),
            "{line} not in {}",
            check.stdout
        );
    }

    daemon.spawn().await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let tok = token(&daemon).await;
    file_is(&dir.join("token"), &tok).await;
    file_is(
        &dir.join("header"),
        &format!("Authorization: Bearer {tok}\n"),
    )
    .await;
    let status = daemon.status("c").await;
    let expires_at = status["expires_at"].as_i64().expect("expires_at");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("json")).unwrap()).unwrap();
    assert_eq!(json["access_token"], tok.as_str());
    assert_eq!(json["name"], "c");
    assert_eq!(
        json["token_type"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("bearer")
    );
    assert!(
        (json["expires_at"].as_i64().unwrap() - expires_at).abs() <= 1,
        "{json} vs {status}"
    );
    let tpl = std::fs::read_to_string(dir.join("tpl")).unwrap();
    let parts: Vec<&str> = tpl.trim_end().split(' ').collect();
    assert_eq!((parts[0], parts[2]), ("c", tok.as_str()), "{tpl}");
    assert_eq!(parts[3], json["expires_at"].to_string());
    assert!(tpl.ends_with('\n'));
    assert_eq!(mode_of(&dir.join("token")), 0o600);
    assert_eq!(mode_of(&dir.join("header")), 0o640);
    assert_eq!(mode_of(&dir.join("json")), 0o644);
    // Nothing but the sinks in the directory: no temp file left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);

    // A restart writes the sinks from the stored token.
    std::fs::remove_file(dir.join("token")).unwrap();
    daemon.stop().await;
    daemon.spawn().await;
    file_is(&dir.join("token"), &token(&daemon).await).await;

    // A reload applies the new sink list: the new sink is written at once
    // with the current token, a sink that left the list keeps its file.
    let tok = token(&daemon).await;
    let added = dir.join("added");
    let kept = [
        format!("path = {:?}\nformat = \"token\"", dir.join("token")),
        format!("path = {added:?}\nformat = \"header\""),
    ];
    daemon.write_config(
        FAST_DAEMON,
        &format!("{}{}", provider_toml("p", &fake), credential(&kept)),
    );
    daemon.signal(libc::SIGHUP);
    file_is(&added, &format!("Authorization: Bearer {tok}\n")).await;
    assert!(
        !daemon.logs().contains("change only on restart"),
        "{}",
        daemon.logs()
    );
    // The next token goes to the sinks listed now, not to the dropped ones.
    daemon.cli(&["refresh", "c"]).await.ok();
    let next = token(&daemon).await;
    assert_ne!(next, tok);
    assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), next);
    assert_eq!(
        std::fs::read_to_string(&added).unwrap(),
        format!("Authorization: Bearer {next}\n")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("header")).unwrap(),
        format!("Authorization: Bearer {tok}\n")
    );
    daemon.finish(&[&fake]).await;
}

/// One HTTP/1.1 request over the daemon's socket, as this process (an
/// administrator): the status and the body.
fn http(socket: &Path, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: tokend\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (status, body.to_string())
}

/// The token the socket serves for `name` now.
fn served(socket: &Path, name: &str) -> String {
    let (status, body) = http(socket, "GET", &format!("/v1/tokens/{name}"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Forces a refresh of `name` and waits for its answer.
fn force_refresh(socket: &Path, name: &str) {
    let (status, body) = http(socket, "POST", &format!("/v1/credentials/{name}/refresh"));
    assert_eq!(status, 200, "{body}");
}

/// The token in a `header` sink's contents; panics on anything else.
fn header_token(text: &str) -> String {
    let tok = text
        .strip_prefix("Authorization: Bearer ")
        .and_then(|t| t.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("a partial or malformed file: {text:?}"));
    assert!(
        !tok.is_empty() && !tok.contains(char::is_whitespace),
        "{text:?}"
    );
    tok.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_never_holds_a_token_older_than_the_one_served_during_a_refresh_burst() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(4))).await;
    let mut daemon = Daemon::prepare(FAST_DAEMON, "");
    let dir = sink_dir(&daemon);
    let path = dir.join("header");
    let providers = format!(
        "{}{}",
        provider_toml("p", &fake),
        credential(&[format!("path = {path:?}\nformat = \"header\"")])
    );
    daemon.write_config(FAST_DAEMON, &providers);
    daemon.spawn().await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // Written before `add` answered: no waiting for the file.
    let first = token(&daemon).await;
    assert_eq!(
        header_token(&std::fs::read_to_string(&path).expect("the file after add")),
        first
    );

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path, socket) = (Arc::clone(&stop), path.clone(), daemon.socket.clone());
        std::thread::spawn(move || {
            // What the socket served, then what the file held, per read
            // (repeats of the last pair left out).
            let mut pairs: Vec<(String, String)> = Vec::new();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let now = served(&socket, "c");
                let text = std::fs::read_to_string(&path).expect("the file is always there");
                let file = header_token(&text);
                if pairs.last() != Some(&(now.clone(), file.clone())) {
                    pairs.push((now, file));
                }
                reads += 1;
            }
            (pairs, reads)
        })
    };
    let refresher = {
        let socket = daemon.socket.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                force_refresh(&socket, "c");
            }
        })
    };
    tokio::task::spawn_blocking(move || refresher.join())
        .await
        .unwrap()
        .expect("every forced refresh succeeded");
    stop.store(true, Ordering::Relaxed);
    let (pairs, reads) = reader.join().expect("the reader saw only whole files");
    let served_tokens: std::collections::HashSet<&str> =
        pairs.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        served_tokens.len() > 50,
        "the reader saw {} tokens served in {reads} reads",
        served_tokens.len()
    );
    // The fake mints with one lifetime, so its expiries are issue order.
    let issued = |t: &str| {
        fake.access_token_expiry(t)
            .unwrap_or_else(|| panic!("a token the provider never issued"))
    };
    let stale = pairs
        .iter()
        .filter(|(now, file)| issued(file) < issued(now))
        .count();
    assert_eq!(
        stale,
        0,
        "{stale} of {} reads found the file older than the token served just before",
        pairs.len()
    );
    eprintln!(
        "sink burst: {reads} reads, {} tokens served, none older in the file",
        served_tokens.len()
    );
    daemon.finish(&[&fake]).await;
}

/// What a sink costs a refresh, from the outside: a forced refresh is
/// answered once its token is published, so its round trip runs through
/// the commit to the token served. Two credentials of one provider, one
/// with a sink, refreshed in turns; the figures are printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_sink_costs_a_refresh() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let mut daemon = Daemon::prepare(FAST_DAEMON, "");
    let dir = sink_dir(&daemon);
    let path = dir.join("token");
    let providers = format!(
        "{}[credentials.bare]\nreaders = [\"uid:{me}\"]\n{}",
        provider_toml("p", &fake),
        credential(&[format!("path = {path:?}")]),
        me = me()
    );
    daemon.write_config(FAST_DAEMON, &providers);
    daemon.spawn().await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    daemon
        .add("bare", "p", &fake.issue_refresh_token())
        .await
        .ok();
    let socket = daemon.socket.clone();
    let (bare, sink) = tokio::task::spawn_blocking(move || {
        let time = |name: &str| {
            let t = std::time::Instant::now();
            force_refresh(&socket, name);
            t.elapsed()
        };
        let (mut bare, mut sink) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            bare.push(time("bare"));
            sink.push(time("c"));
        }
        (bare, sink)
    })
    .await
    .unwrap();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (b, s) = (median(bare), median(sink));
    eprintln!(
        "sink cost: median forced refresh {b:?} without a sink, {s:?} with one (x{:.2}, +{:?}), 300 each",
        s.as_secs_f64() / b.as_secs_f64(),
        s.saturating_sub(b)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        served(&daemon.socket, "c")
    );
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_at_the_path_is_refused_and_its_target_untouched() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let mut daemon = Daemon::prepare(FAST_DAEMON, "");
    let dir = sink_dir(&daemon);
    let target = daemon.dir.path().join("victim");
    write_private(&target, "precious\n");
    std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
    let good = dir.join("good");
    let providers = format!(
        "{}{}",
        provider_toml("p", &fake),
        credential(&[
            format!("path = {:?}", dir.join("link")),
            format!("path = {good:?}"),
        ])
    );
    daemon.write_config(FAST_DAEMON, &providers);
    daemon.spawn().await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // The other sink of the same credential is still written.
    file_is(&good, &token(&daemon).await).await;
    wait_until(Duration::from_secs(5), "a sink_failed event", || {
        let ok = daemon.logs().contains("sink_failed");
        async move { ok }
    })
    .await;
    assert!(daemon.logs().contains("symbolic link"), "{}", daemon.logs());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    assert!(std::fs::symlink_metadata(dir.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_remove_deletes_keeps_or_empties() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let mut daemon = Daemon::prepare(FAST_DAEMON, "");
    let dir = sink_dir(&daemon);
    let (deleted, kept, emptied, default) =
        (dir.join("d"), dir.join("k"), dir.join("e"), dir.join("def"));
    let providers = format!(
        "{}{}",
        provider_toml("p", &fake),
        credential(&[
            format!("path = {deleted:?}\non_remove = \"delete\""),
            format!("path = {kept:?}\non_remove = \"keep\""),
            format!("path = {emptied:?}\non_remove = \"empty\""),
            format!("path = {default:?}"),
        ])
    );
    daemon.write_config(FAST_DAEMON, &providers);
    daemon.spawn().await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let tok = token(&daemon).await;
    for p in [&deleted, &kept, &emptied, &default] {
        file_is(p, &tok).await;
    }
    daemon.cli(&["remove", "c"]).await.ok();
    let gone = |p: PathBuf| async move { !p.exists() };
    wait_until(Duration::from_secs(5), "the deleted sink", || {
        gone(deleted.clone())
    })
    .await;
    wait_until(Duration::from_secs(5), "the default sink", || {
        gone(default.clone())
    })
    .await;
    file_is(&emptied, "").await;
    assert_eq!(mode_of(&emptied), 0o600);
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), tok);
    daemon.finish(&[&fake]).await;
}

#[tokio::test]
async fn check_config_refuses_bad_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let other = if me() == 0 { None } else { Some(me() + 1) };
    let mut text = format!(
        "[credentials.c]\nreaders = [\"uid:{}\"]\n\
         [[credentials.c.sinks]]\npath = \"relative/token\"\n\
         [[credentials.c.sinks]]\npath = \"/tmp/x\"\nformat = \"yaml\"\n\
         [[credentials.c.sinks]]\npath = \"/tmp/y\"\nformat = \"template\"\ntemplate = \"{{acess_token}}\"\n\
         [[credentials.c.sinks]]\npath = \"/tmp/z\"\nmode = \"0666\"\non_remove = \"shred\"\n",
        me()
    );
    if let Some(uid) = other {
        text.push_str(&format!(
            "[[credentials.c.sinks]]\npath = \"/tmp/w\"\nowner = {uid}\n"
        ));
    }
    write_private(&file, &text);
    let run = cli_at(dir.path(), &["check-config", file.to_str().unwrap()], None).await;
    assert_eq!(run.code, 2, "{run:?}");
    for want in [
        "credentials.c.sinks[0].path",
        "credentials.c.sinks[1].format",
        "unknown placeholder {acess_token}",
        "credentials.c.sinks[3].mode",
        "credentials.c.sinks[3].on_remove",
    ] {
        assert!(run.stderr.contains(want), "{want} not in {}", run.stderr);
    }
    if other.is_some() {
        assert!(
            run.stderr.contains("credentials.c.sinks[4].owner"),
            "{}",
            run.stderr
        );
    }
}
