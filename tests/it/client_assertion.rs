//! Signed client authentication (`private_key_jwt` with RSA, P-256 and
//! Ed25519 keys made here by `openssl genpkey`, and `client_secret_jwt`)
//! against the fake's strict assertion check, for refresh and
//! client_credentials; client-secret rotation; the key file's mode; and no
//! key, assertion or secret in the daemon's log.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::fake_provider::{find_leaks, AssertionCheck, FakeConfig, FakeProvider, Flavor};
use crate::support::{provider_toml, wait_until, write_private, Daemon, FAST_DAEMON};

/// A private key made by `openssl genpkey` in `dir` (mode 0600), and the
/// PEM of its public half.
fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> (std::path::PathBuf, String) {
    let path = dir.join(format!("{name}.pem"));
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&path)
        .output()
        .expect("run openssl genpkey (openssl is installed by .ci/run)");
    assert!(out.status.success(), "openssl genpkey: {out:?}");
    let pem = std::fs::read_to_string(&path).unwrap();
    write_private(&path, &pem);
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&path)
        .output()
        .expect("run openssl pkey");
    assert!(public.status.success(), "openssl pkey: {public:?}");
    (path, String::from_utf8(public.stdout).unwrap())
}

/// `client_assertion_type` of a JWT (RFC 7523 §2.2).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The key types tokend signs with: alg, `openssl genpkey` arguments.
const KEYS: [(&str, &[&str]); 3] = [
    (
        "RS256",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    ),
    (
        "ES256",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ),
    ("EdDSA", &["-algorithm", "ed25519"]),
];

/// A Didit fake authenticating clients by `check`, that also serves
/// client_credentials with no scope or audience.
async fn assertion_fake(check: AssertionCheck) -> FakeProvider {
    FakeProvider::start(FakeConfig::new(Flavor::Didit).with_client_assertion(check)).await
}

/// A provider table for `fake` with `client_auth = auth` and `extra` keys.
fn provider(name: &str, fake: &FakeProvider, auth: &str, extra: &str) -> String {
    format!(
        "[providers.{name}]\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_auth = \"{auth}\"\n{extra}",
        fake.token_url(),
        fake.config().client_id
    )
}

fn declared(name: &str, provider: &str) -> String {
    format!("[credentials.{name}]\nprovider = \"{provider}\"\ngrant = \"client_credentials\"\n")
}

/// Adds a refresh-token credential on `provider` and reads its token: the
/// daemon must refresh it through the provider's client authentication.
async fn refresh_through(daemon: &Daemon, fake: &FakeProvider, name: &str, provider: &str) {
    let rt = fake.issue_refresh_token();
    daemon.add(name, provider, &rt).await.ok();
    let run = daemon.cli(&["get", name]).await;
    assert!(!run.ok().stdout.trim().is_empty(), "{run:?}");
    daemon.cli(&["refresh", name]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_with_rsa_p256_and_ed25519_keys() {
    let keys = tempfile::tempdir().unwrap();
    let mut fakes = Vec::new();
    let mut checks = Vec::new();
    let mut config = String::new();
    let mut pems = Vec::new();
    for (alg, args) in KEYS {
        let (path, public) = openssl_key(keys.path(), alg, args);
        let check = AssertionCheck::public_key(alg, &public);
        let fake = assertion_fake(check.clone()).await;
        let name = alg.to_lowercase();
        // RSA with its default alg, the others named: both ways are checked.
        let alg_key = if alg == "RS256" {
            String::new()
        } else {
            format!("client_assertion_alg = \"{alg}\"\n")
        };
        config.push_str(&provider(
            &name,
            &fake,
            "private_key_jwt",
            &format!("client_assertion_key_file = {path:?}\n{alg_key}"),
        ));
        config.push_str(&declared(&format!("svc-{name}"), &name));
        pems.push(std::fs::read_to_string(&path).unwrap());
        fakes.push(fake);
        checks.push(check);
    }
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    let path = daemon.config.to_str().unwrap().to_string();
    let run = daemon.cli(&["check-config", &path]).await;
    assert!(
        run.ok()
            .stdout
            .contains("provider es256: client_auth private_key_jwt (ES256"),
        "{run:?}"
    );
    for ((alg, _), fake) in KEYS.iter().zip(&fakes) {
        let name = alg.to_lowercase();
        refresh_through(&daemon, fake, &format!("user-{name}"), &name).await;
        wait_until(Duration::from_secs(10), "client_credentials", || async {
            fake.client_credentials_count() >= 1
        })
        .await;
        daemon.cli(&["get", &format!("svc-{name}")]).await.ok();
        assert!(fake.refresh_count() >= 2, "{alg}: {}", fake.refresh_count());
        assert!(
            fake.rejections().is_empty(),
            "{alg}: {:?}",
            fake.rejections()
        );
    }
    let logs = daemon.logs();
    let mut secrets: Vec<String> = checks.iter().flat_map(AssertionCheck::assertions).collect();
    assert!(secrets.len() >= 9, "{}", secrets.len());
    // Every line of the keys' base64, long enough to be a fragment of one.
    secrets.extend(pems.iter().flat_map(|p| {
        p.lines()
            .filter(|l| !l.starts_with("-----"))
            .map(String::from)
    }));
    let leaks = find_leaks(&secrets, &logs);
    assert!(leaks.is_empty(), "key or assertion in the log: {leaks:?}");
    let refs: Vec<&FakeProvider> = fakes.iter().collect();
    daemon.finish(&refs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_jwt_signs_with_the_client_secret() {
    let secret = "a-shared-client-secret-of-40-bytes-long!";
    let check = AssertionCheck::shared_secret(secret);
    let fake = FakeProvider::start(
        FakeConfig::new(Flavor::Didit)
            .with_client("tokend-test", Some(secret.to_string()))
            .with_client_assertion(check.clone()),
    )
    .await;
    let config = format!(
        "{}{}",
        provider(
            "h",
            &fake,
            "client_secret_jwt",
            &format!("client_secret = \"{secret}\"\nsend_client_id = false\nassertion_lifetime = \"30s\"\n")
        ),
        declared("svc", "h")
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    refresh_through(&daemon, &fake, "user", "h").await;
    wait_until(Duration::from_secs(10), "client_credentials", || async {
        fake.client_credentials_count() >= 1
    })
    .await;
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    assert!(check.accepted() >= 3, "{}", check.accepted());
    let leaks = find_leaks(&check.assertions(), &daemon.logs());
    assert!(leaks.is_empty(), "assertion in the log: {leaks:?}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_refuses_a_replayed_or_wrongly_signed_assertion() {
    let secret = "a-shared-client-secret-of-40-bytes-long!";
    let check = AssertionCheck::shared_secret(secret);
    let fake = assertion_fake(check.clone()).await;
    let rt = fake.issue_refresh_token();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign_for = |key: &str, jti: &str, aud: &str, lifetime: u64| {
        let claims = serde_json::json!({
            "iss": "tokend-test", "sub": "tokend-test", "aud": aud,
            "jti": jti, "iat": now, "exp": now + lifetime,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let sign = |key: &str, jti: &str| sign_for(key, jti, &fake.token_url(), 60);
    let http = reqwest::Client::new();
    let send = |jwt: String, rt: String| {
        let http = http.clone();
        let url = fake.token_url();
        async move {
            let form = [
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", rt),
                ("client_assertion_type", JWT_BEARER.to_string()),
                ("client_assertion", jwt),
            ];
            let r = http.post(url).form(&form).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let good = sign(secret, "jti-1");
    let (status, body) = send(good.clone(), rt).await;
    assert_eq!(status, 200, "{body}");
    let rt2 = serde_json::from_str::<serde_json::Value>(&body).unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = send(good, rt2.clone()).await;
    assert_eq!(
        (status, body.contains("invalid_client")),
        (401, true),
        "{body}"
    );
    let (status, _) = send(
        sign("another-secret-another-secret-xx", "jti-2"),
        rt2.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let elsewhere = sign_for(secret, "jti-4", "https://elsewhere.example/token", 60);
    assert_eq!(send(elsewhere, rt2.clone()).await.0, 401);
    let long_lived = sign_for(secret, "jti-5", &fake.token_url(), 3600);
    assert_eq!(send(long_lived, rt2.clone()).await.0, 401);
    let (status, _) = send(sign(secret, "jti-3"), rt2).await;
    assert_eq!(status, 200);
    let rejections = fake.rejections();
    assert_eq!(rejections.len(), 4, "{rejections:?}");
    assert!(rejections[0].contains("replayed"), "{rejections:?}");
    assert!(rejections[1].contains("InvalidSignature"), "{rejections:?}");
    assert!(rejections[2].contains("InvalidAudience"), "{rejections:?}");
    assert!(rejections[3].contains("lives 3600 s"), "{rejections:?}");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_is_found_and_remembered() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let valid = fake.config().client_secret.clone().unwrap();
    let config = provider_toml("p", &fake).replace(
        &format!("client_secret = \"{valid}\""),
        &format!("client_secret = [\"the-old-revoked-secret\", \"{valid}\"]"),
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    refresh_through(&daemon, &fake, "a", "p").await;
    // One refused attempt with the old secret, then the new one for good:
    // the second refresh and the second credential go straight to it.
    refresh_through(&daemon, &fake, "b", "p").await;
    let rejections = fake.rejections();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(
        rejections[0].contains("wrong client secret"),
        "{rejections:?}"
    );
    assert!(fake.refresh_count() >= 4, "{}", fake.refresh_count());
    let logs = daemon.logs();
    assert_eq!(
        logs.matches("accepts client secret number 2 of 2").count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains("the-old-revoked-secret"), "{logs}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_client_secret_is_refused_the_credential_pauses() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let valid = fake.config().client_secret.clone().unwrap();
    let config = provider_toml("p", &fake).replace(
        &format!("client_secret = \"{valid}\""),
        "client_secret = [\"wrong-secret-one\", \"wrong-secret-two\"]",
    ) + &declared("svc", "p");
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    // A declared credential appears once the refresher has created it.
    wait_until(Duration::from_secs(10), "the paused status", || async {
        let run = daemon.cli(&["status", "svc", "--json"]).await;
        run.code == 0
            && serde_json::from_str::<serde_json::Value>(&run.stdout)
                .is_ok_and(|v| v["state"] == "paused")
    })
    .await;
    let rejections = fake.rejections();
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    let logs = daemon.logs();
    assert!(!logs.contains("wrong-secret-"), "{logs}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_readable_by_others_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (path, _) = openssl_key(keys.path(), "ec", KEYS[1].1);
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let config = provider(
        "k",
        &fake,
        "private_key_jwt",
        &format!("client_assertion_key_file = {path:?}\n"),
    );
    let daemon = Daemon::prepare(FAST_DAEMON, &config);
    let config_path = daemon.config.to_str().unwrap().to_string();
    daemon.cli(&["check-config", &config_path]).await.ok();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = daemon.cli(&["check-config", &config_path]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("providers.k.client_assertion_key_file")
            && run.stderr.contains("readable by other users (mode 0644)"),
        "{run:?}"
    );
    fake.shutdown().await;
}
