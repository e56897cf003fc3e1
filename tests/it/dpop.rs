//! DPoP (RFC 9449): a credential of a `dpop = true` provider has its own
//! key, proves it on every token request (through the server's nonce
//! challenge), keeps it across restarts, and hands callers proofs for their
//! own requests, all checked by the fake's strict DPoP mode. The private
//! key never shows anywhere.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_as, provider_toml, wait_until, Daemon, Run, FAST_DAEMON};

const SOCKET_GID: u32 = 4262;

/// The stored `dpop_key` column of each credential (no encryption key is
/// configured here, so it is the base64url PKCS#8 itself).
async fn stored_keys(daemon: &Daemon) -> Vec<(String, Option<String>)> {
    use sqlx::Row as _;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&daemon.database)
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    let rows = sqlx::query("SELECT name, dpop_key FROM credentials ORDER BY name")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get("name"), r.get("dpop_key")))
        .collect()
}

/// The private scalar `d` of a P-256 PKCS#8 key, as base64url and hex:
/// the 32 bytes of the ECPrivateKey's OCTET STRING (RFC 5915).
fn private_scalar(pkcs8_b64url: &str) -> [String; 2] {
    let der = URL_SAFE_NO_PAD.decode(pkcs8_b64url).unwrap();
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("ECPrivateKey in the PKCS#8 document");
    let d = &der[at + 5..at + 37];
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    [URL_SAFE_NO_PAD.encode(d), hex]
}

/// `Authorization: DPoP <token>` and `DPoP: <proof>` from `tokend get --dpop`.
fn header_lines(run: &Run) -> (String, String) {
    let mut lines = run.stdout.lines();
    let auth = lines.next().expect("Authorization line");
    let proof = lines.next().expect("DPoP line");
    assert!(lines.next().is_none(), "{run:?}");
    let token = auth
        .strip_prefix("Authorization: DPoP ")
        .unwrap_or_else(|| panic!("{run:?}"));
    let proof = proof
        .strip_prefix("DPoP: ")
        .unwrap_or_else(|| panic!("{run:?}"));
    (token.to_string(), proof.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_credential_refreshes_with_its_own_key_across_restarts_and_signs_callers_proofs() {
    // A public client: its refresh tokens are bound to the key (§5).
    let fake = FakeProvider::start(FakeConfig::new(Flavor::DigiRunnerPublic).with_dpop()).await;
    let plain = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let config = format!(
        "{}dpop = true\nreaders = [\"uid:1000\"]\n{}",
        provider_toml("p", &fake),
        provider_toml("plain", &plain)
    );
    let extra = format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n");
    let mut daemon = Daemon::start(&extra, &config).await;
    daemon.open_to_other_users();
    let check = daemon
        .cli(&["check-config", daemon.config.to_str().unwrap()])
        .await;
    assert!(
        check.ok().stdout.contains("provider p: DPoP-bound tokens"),
        "{check:?}"
    );

    // The first request meets the nonce challenge and is sent again with it.
    daemon
        .add("api", "p", &fake.issue_refresh_token())
        .await
        .ok();
    assert_eq!(fake.dpop_nonce_challenges(), 1);
    let keys = fake.dpop_accepted_keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let jkt = keys[0].clone();
    let st = daemon.status("api").await;
    assert_eq!(st["token_type"], "DPoP", "{st}");
    assert_eq!(st["state"], "active", "{st}");
    // The nonce of the last answer is used: no second challenge.
    daemon.cli(&["refresh", "api"]).await.ok();
    assert_eq!(fake.dpop_nonce_challenges(), 1);

    // After a restart the same key (the fake refuses another for a bound
    // refresh token); the new process has to learn the nonce again.
    daemon.stop().await;
    daemon.spawn().await;
    daemon.cli(&["refresh", "api"]).await.ok();
    assert_eq!(fake.dpop_accepted_keys(), vec![jkt.clone(); 3]);
    assert_eq!(fake.dpop_nonce_challenges(), 2);

    // A caller's proof, for its own request; query and fragment left out.
    let run = daemon
        .cli(&[
            "get",
            "api",
            "--dpop",
            "GET",
            "https://api.example/v1/x?page=2#top",
        ])
        .await;
    let (token, proof) = header_lines(run.ok());
    assert_eq!(fake.dpop_bound_key(&token), Some(jkt.clone()));
    fake.check_resource_proof(&proof, &token, "GET", "https://api.example/v1/x", None)
        .unwrap();
    // A proof is good once: the resource server refuses a replay.
    assert!(fake
        .check_resource_proof(&proof, &token, "GET", "https://api.example/v1/x", None)
        .is_err());
    // With the resource server's nonce, as a reader.
    let run = cli_as(
        &daemon.socket,
        1000,
        SOCKET_GID,
        &[],
        &[
            "get",
            "api",
            "--dpop",
            "POST",
            "https://api.example/v1/y",
            "--nonce",
            "rs-n0nce",
        ],
    )
    .await;
    let (token2, proof2) = header_lines(run.ok());
    assert_eq!(token2, token);
    fake.check_resource_proof(
        &proof2,
        &token,
        "POST",
        "https://api.example/v1/y",
        Some("rs-n0nce"),
    )
    .unwrap();
    // Another local user, not a reader, gets nothing.
    let run = cli_as(
        &daemon.socket,
        1002,
        SOCKET_GID,
        &[],
        &["get", "api", "--dpop", "GET", "https://api.example/v1/x"],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains("that you may read"), "{run:?}");
    // What callers may not ask for.
    for (htm, htu) in [
        ("GET", "ftp://api.example/x"),
        ("G ET", "https://a/"),
        ("GET", "/relative"),
    ] {
        let run = daemon.cli(&["get", "api", "--dpop", htm, htu]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr.contains("htm") || run.stderr.contains("htu"),
            "{run:?}"
        );
    }

    // A credential of a provider without DPoP has no key and gets no proof.
    daemon
        .add("mail", "plain", &plain.issue_refresh_token())
        .await
        .ok();
    let run = daemon
        .cli(&["get", "mail", "--dpop", "GET", "https://api.example/x"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("not bound to a DPoP key"), "{run:?}");

    // The private key is in the database only.
    let json = daemon
        .cli(&[
            "get",
            "api",
            "--dpop",
            "GET",
            "https://api.example/v1/x",
            "--json",
        ])
        .await;
    let answer: serde_json::Value = serde_json::from_str(&json.ok().stdout).unwrap();
    assert_eq!(answer["token_type"], "DPoP");
    let mut shown = vec![
        daemon.cli(&["status", "--json"]).await.ok().stdout.clone(),
        json.stdout.clone(),
        run.stderr.clone(),
    ];
    daemon.stop().await;
    let keys = stored_keys(&daemon).await;
    assert_eq!(keys[1].0, "mail");
    assert!(keys[1].1.is_none(), "a non-DPoP credential has no key");
    let stored = keys[0].1.clone().expect("the DPoP credential's key");
    shown.push(daemon.logs());
    let [d_b64, d_hex] = private_scalar(&stored);
    for text in &shown {
        for secret in [
            &stored[..],
            &stored[40..80],
            &d_b64,
            &d_hex,
            &proof,
            &proof2,
        ] {
            assert!(!text.contains(secret), "a secret shows: {secret}");
        }
    }
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    assert!(plain.rejections().is_empty(), "{:?}", plain.rejections());
    daemon.finish(&[&fake, &plain]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_answers_bearer_to_a_dpop_request_is_refused() {
    // A fake without DPoP ignores the proof and answers a bearer token.
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let config = format!("{}dpop = true\n", provider_toml("p", &fake));
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    let _ = daemon.add("api", "p", &fake.issue_refresh_token()).await;
    wait_until(Duration::from_secs(10), "the refusal", || async {
        daemon.status("api").await["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("ignored DPoP"))
    })
    .await;
    let st = daemon.status("api").await;
    assert_eq!(st["state"], "paused", "{st}");
    let run = daemon.cli(&["get", "api"]).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(daemon.logs().contains("the provider ignored DPoP"));
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_binds_its_tokens_to_one_key_for_all_its_polls() {
    use crate::support::fake_provider::{DevicePoll, DeviceSettings};
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit).with_dpop()).await;
    fake.enable_device(DeviceSettings {
        script: vec![
            DevicePoll::Pending,
            DevicePoll::Pending,
            DevicePoll::Approve,
        ],
        ..DeviceSettings::default()
    });
    let config = format!(
        "{}dpop = true\ndevice_authorization_url = \"{}\"\n",
        provider_toml("p", &fake),
        fake.device_authorization_url()
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
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
    assert!(run.ok().stdout.contains("tv: logged in"), "{run:?}");
    // Every poll proved the same key, and it is the one stored.
    let keys = fake.dpop_accepted_keys();
    assert!(keys.len() >= 3, "{keys:?}");
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    let stored = stored_keys(&daemon).await;
    assert!(
        matches!(&stored[..], [(name, Some(_))] if name == "tv"),
        "{stored:?}"
    );
    let get = daemon
        .cli(&["get", "tv", "--dpop", "GET", "https://api.example/v1/x"])
        .await;
    let (token, proof) = header_lines(get.ok());
    assert_eq!(
        fake.dpop_bound_key(&token).as_deref(),
        Some(keys[0].as_str())
    );
    fake.check_resource_proof(&proof, &token, "GET", "https://api.example/v1/x", None)
        .unwrap();
    assert_eq!(
        daemon.logs().matches("new DPoP key").count(),
        1,
        "{}",
        daemon.logs()
    );
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}
