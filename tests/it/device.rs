//! The device authorization grant (RFC 8628) end to end: `tokend login
//! --device` against the fake's device endpoint, the daemon polling on its
//! own (pending, slow_down, denial, expiry), the CLI going away, `--no-wait`,
//! the logins API and its cancel, and who may use it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use tokend::client::Client;
use tokio::process::Command;

use crate::support::fake_provider::{DevicePoll, DeviceSettings, FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_as, provider_toml, wait_until, Daemon, FAST_DAEMON};

const SOCKET_GID: u32 = 4262;

/// A Didit fake with the device grant on, polled every second.
async fn fake(script: &[DevicePoll], public: bool) -> FakeProvider {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    fake.enable_device(DeviceSettings {
        script: script.to_vec(),
        public,
        ..DeviceSettings::default()
    });
    fake
}

/// The provider table for `fake` with its device endpoint; a public client
/// (`client_auth = "none"`) if `public`.
fn provider(fake: &FakeProvider, public: bool) -> String {
    let table = if public {
        format!(
            "[providers.p]\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_auth = \"none\"\n",
            fake.token_url(),
            fake.config().client_id
        )
    } else {
        provider_toml("p", fake)
    };
    format!(
        "{table}device_authorization_url = \"{}\"\n",
        fake.device_authorization_url()
    )
}

/// `GET path` through the library client, as JSON.
async fn get_json(daemon: &Daemon, path: &str) -> Result<Value, tokend::client::ClientError> {
    Client::new(&daemon.socket)
        .call::<Value>(Method::GET, path, None::<&()>)
        .await
}

/// The login of `name`, once it is no longer pending.
async fn settled(daemon: &Daemon, name: &str) -> Value {
    let path = format!("/v1/logins/{name}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let login = get_json(daemon, &path).await.expect("the login is listed");
        if login["state"] != "pending" {
            return login;
        }
        assert!(Instant::now() < deadline, "{name} still pending: {login}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_then_slow_down_then_approval_keeps_every_interval() {
    let fake = fake(
        &[
            DevicePoll::Pending,
            DevicePoll::SlowDown,
            DevicePoll::Approve,
        ],
        false,
    )
    .await;
    let daemon = Daemon::start(FAST_DAEMON, &provider(&fake, false)).await;
    let started = Instant::now();
    let run = daemon
        .cli(&[
            "login",
            "--device",
            "tv",
            "--provider",
            "p",
            "--timeout",
            "20s",
        ])
        .await;
    run.ok();
    let user_code = fake.device_user_codes().pop().expect("a user code");
    assert!(run.stderr.contains(&user_code), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("http://{}/device", fake.addr())),
        "{run:?}"
    );
    assert!(run.stderr.contains("Ctrl-C stops waiting"), "{run:?}");
    assert!(run.stdout.contains("tv: logged in (provider p)"), "{run:?}");
    // One second, then the five seconds slow_down adds, for good.
    let polls = fake.device_poll_times();
    assert_eq!(polls.len(), 3, "{polls:?}");
    assert!(polls[1] - polls[0] >= Duration::from_secs(1));
    assert!(polls[2] - polls[1] >= Duration::from_secs(6));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    // The credential is an ordinary one now: served and refreshed.
    daemon.cli(&["get", "tv"]).await.ok();
    let st = daemon.status("tv").await;
    assert_eq!(
        (st["state"].as_str(), st["has_refresh_token"].as_bool()),
        (Some("active"), Some(true))
    );
    daemon.cli(&["refresh", "tv"]).await.ok();
    assert_eq!(fake.refresh_count(), 1);
    let login = get_json(&daemon, "/v1/logins/tv").await.unwrap();
    assert_eq!(login["state"], "succeeded", "{login}");
    let config = daemon.config.to_str().unwrap().to_string();
    let check = daemon.cli(&["check-config", &config]).await;
    assert!(
        check
            .ok()
            .stdout
            .contains("provider p: device authorization at http://"),
        "{check:?}"
    );
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_and_expired_token_end_the_login_without_a_credential() {
    let fake = fake(&[DevicePoll::Pending, DevicePoll::Deny], true).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider(&fake, true)).await;
    let run = daemon
        .cli(&["login", "--device", "a", "--provider", "p"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("denied"), "{run:?}");
    fake.enable_device(DeviceSettings {
        script: vec![DevicePoll::Expire],
        public: true,
        ..DeviceSettings::default()
    });
    daemon
        .cli(&["login", "--device", "b", "--provider", "p", "--no-wait"])
        .await
        .ok();
    let login = settled(&daemon, "b").await;
    assert_eq!(login["state"], "failed", "{login}");
    assert!(
        login["reason"].as_str().unwrap().contains("expired"),
        "{login}"
    );
    for name in ["a", "b"] {
        let run = daemon.cli(&["status", name, "--json"]).await;
        assert_eq!(run.code, 1, "{name}: {run:?}");
    }
    let text = daemon.cli(&["status"]).await;
    assert!(
        text.ok()
            .stdout
            .contains("device login b (provider p): failed"),
        "{text:?}"
    );
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    assert_eq!(fake.exchange_count(), 0);
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_finishes_the_login_after_the_cli_is_killed() {
    let fake = fake(&[], true).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider(&fake, true)).await;
    let mut cli = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["login", "--device", "tv", "--provider", "p"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the cli");
    wait_until(Duration::from_secs(10), "a poll", || async {
        !fake.device_poll_times().is_empty()
    })
    .await;
    cli.kill().await.expect("kill the cli");
    fake.approve_device();
    wait_until(Duration::from_secs(10), "the credential", || async {
        daemon.cli(&["get", "tv"]).await.code == 0
    })
    .await;
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_lists_the_login_a_new_one_replaces_it_and_cancel_stops_the_polls() {
    let fake = fake(&[], false).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider(&fake, false)).await;
    let run = daemon
        .cli(&["login", "--device", "tv", "--provider", "p", "--no-wait"])
        .await;
    run.ok();
    assert!(run.stderr.contains("the daemon polls"), "{run:?}");
    let first = fake.device_user_codes();
    // A second login of the same name replaces the first.
    daemon
        .cli(&["login", "--device", "tv", "--provider", "p", "--no-wait"])
        .await
        .ok();
    let user_code = fake
        .device_user_codes()
        .into_iter()
        .find(|c| !first.contains(c))
        .expect("a second user code");
    let list = get_json(&daemon, "/v1/logins").await.unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["state"], "pending");
    assert_eq!(list[0]["user_code"], user_code.as_str());
    assert_eq!(list[0]["interval"], 1);
    assert!(list[0].get("device_code").is_none(), "{list:?}");
    let text = serde_json::to_string(&list).unwrap();
    assert!(fake.find_leaks(&text).is_empty(), "{text}");
    // `tokend status` shows it, for a name with no credential yet too.
    let status = daemon.cli(&["status"]).await;
    assert!(
        status.ok().stdout.contains(&format!(
            "device login tv (provider p): pending, enter {user_code}"
        )),
        "{status:?}"
    );
    let status = daemon.cli(&["status", "tv"]).await;
    assert!(status.ok().stdout.contains(&user_code), "{status:?}");
    wait_until(Duration::from_secs(5), "polls", || async {
        fake.device_poll_times().len() >= 2
    })
    .await;
    let client = Client::new(&daemon.socket);
    client
        .call::<Value>(Method::DELETE, "/v1/logins/tv", None::<&()>)
        .await
        .ok();
    let polled = fake.device_poll_times().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        fake.device_poll_times().len(),
        polled,
        "polled after cancel"
    );
    assert!(get_json(&daemon, "/v1/logins/tv").await.is_err());
    fake.approve_device();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(daemon.cli(&["get", "tv"]).await.code, 1);
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_administrators_start_see_or_cancel_logins() {
    let fake = fake(&[], false).await;
    let extra = format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n");
    let daemon = Daemon::start(&extra, &provider(&fake, false)).await;
    daemon.open_to_other_users();
    let run = cli_as(
        &daemon.socket,
        1000,
        SOCKET_GID,
        &[],
        &["login", "--device", "tv", "--provider", "p", "--no-wait"],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("may not add credentials"), "{run:?}");
    assert_eq!(fake.device_authorizations(), 0);
    daemon
        .cli(&["login", "--device", "tv", "--provider", "p", "--no-wait"])
        .await
        .ok();
    // Not even the user code (which would let another user approve it as
    // themselves) is shown to a non-administrator.
    let run = cli_as(&daemon.socket, 1000, SOCKET_GID, &[], &["status"]).await;
    let code = fake.device_user_codes().pop().unwrap();
    assert!(!run.stdout.contains(&code), "{run:?}");
    let run = cli_as(&daemon.socket, 1000, SOCKET_GID, &[], &["status", "tv"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        !run.stdout.contains(&code) && !run.stderr.contains(&code),
        "{run:?}"
    );
    // Their `tokend status` is not an access refused and logged: the list
    // of logins is only empty for them.
    assert!(
        !daemon.logs().contains("see device logins"),
        "{}",
        daemon.logs()
    );
    // An unknown provider, or one without a device endpoint, says what to set.
    let run = daemon
        .cli(&["login", "--device", "x", "--provider", "nope", "--no-wait"])
        .await;
    assert!(
        run.stderr.contains("provider `nope` is not configured"),
        "{run:?}"
    );
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_a_device_endpoint_names_the_key_to_set() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    let run = daemon
        .cli(&["login", "--device", "tv", "--provider", "p"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("no device_authorization_url; set it in [providers.p]"),
        "{run:?}"
    );
    // The device endpoint refusing the client is reported, nothing stored.
    let fake2 = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    fake2.enable_device(DeviceSettings::default());
    let wrong = provider(&fake2, false).replace(
        fake2.config().client_secret.as_deref().unwrap(),
        "wrong-secret",
    );
    let daemon2 = Daemon::start(FAST_DAEMON, &wrong).await;
    let run = daemon2
        .cli(&["login", "--device", "tv", "--provider", "p"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("device authorization endpoint answered 401 invalid_client"),
        "{run:?}"
    );
    assert!(get_json(&daemon2, "/v1/logins")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());
    daemon.finish(&[&fake]).await;
    daemon2.finish(&[&fake2]).await;
}
