//! Keys, claims and signed requests, checked with the JOSE crate's own
//! verification.

use super::*;

use std::os::unix::fs::PermissionsExt;

use jsonwebtoken::{decode, DecodingKey, Validation};

use crate::config::parse_config;
use crate::provider::request::tests::{endpoint, refresh};
use crate::provider::{prepare, TokenGrant};
use crate::token::Secret;

/// A fixed Ed25519 key (RFC 8032 §7.1, test 1) as PKCS#8 v1 PEM.
pub(crate) const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
/// Its public half, as a DER SubjectPublicKeyInfo PEM.
pub(crate) const ED25519_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

#[test]
fn keys_of_each_kind_and_format() {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ed = SigningKey::from_pem(ED25519_PEM.as_bytes()).unwrap();
    assert_eq!(ed.kind(), KeyKind::Ed25519);
    let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(ec.as_ref())
    );
    let key = SigningKey::from_pem(pem.as_bytes()).unwrap();
    assert_eq!(key.kind(), KeyKind::P256);
    assert!(!format!("{key:?}").contains(&STANDARD.encode(ec.as_ref())[..20]));
    assert!(format!("{key:?}").contains("sha256:"), "{key:?}");
    assert_eq!(
        SigningKey::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err(),
        KeyError::NotPrivateKey("CERTIFICATE".into())
    );
    assert_eq!(
        SigningKey::from_pem(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
        )
        .unwrap_err(),
        KeyError::Encrypted
    );
    assert_eq!(
        SigningKey::from_pem(b"hello").unwrap_err(),
        KeyError::NotPem
    );
    assert!(matches!(
        SigningKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        Err(KeyError::Unsupported(_))
    ));
}

#[test]
fn kinds_sign_their_algorithms_only() {
    assert!(KeyKind::Rsa.signs(Alg::Ps256));
    assert!(!KeyKind::Rsa.signs(Alg::Es256));
    assert!(!KeyKind::P256.signs(Alg::EdDsa));
    assert!(!KeyKind::Ed25519.signs(Alg::Hs256));
    assert_eq!(Alg::from_name("EdDSA"), Some(Alg::EdDsa));
    assert_eq!(Alg::from_name("none"), None);
    assert_eq!(Alg::from_name("HS256"), Some(Alg::Hs256));
}

#[test]
fn stamps_have_unique_url_safe_ids() {
    let (a, b) = (AssertionStamp::new(), AssertionStamp::new());
    assert_ne!(a.jti, b.jti);
    assert_eq!(URL_SAFE_NO_PAD.decode(&a.jti).unwrap().len(), 16);
    assert!(a.now > 1_700_000_000);
}

const SECRET_32: &str = "0123456789abcdef0123456789abcdef";
const URL: &str = "https://login.example/oauth/token";

/// The claims tokend signs, read back.
#[derive(serde::Deserialize, Debug, PartialEq)]
struct Read {
    iss: String,
    sub: String,
    aud: String,
    jti: String,
    iat: u64,
    exp: u64,
}

fn stamp() -> AssertionStamp {
    AssertionStamp::at(1_700_000_000, "jti-fixed-1")
}

/// The form body's fields, decoded.
fn fields(body: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

/// `header.claims` as tokend must write them, base64url.
fn signing_input(header: &str, claims: &str) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

const CLAIMS: &str = r#"{"iss":"cid","sub":"cid","aud":"https://login.example/oauth/token","jti":"jti-fixed-1","iat":1700000000,"exp":1700000060}"#;

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_audience(&[URL]);
    v.set_issuer(&["cid"]);
    v.sub = Some("cid".into());
    // The fixed stamp is in the past: check the claims, not the clock.
    v.validate_exp = false;
    v.required_spec_claims = ["exp", "iss", "sub", "aud"].map(String::from).into();
    v
}

#[test]
fn client_secret_jwt_request_byte_for_byte() {
    let e = endpoint(&format!(
        "[providers.h]\ntoken_url = \"{URL}\"\nclient_id = \"cid\"\nclient_secret = \"{SECRET_32}\"\nclient_auth = \"client_secret_jwt\"\n"
    ));
    let r = prepare(&e, &refresh("rt"), &stamp()).unwrap();
    let input = signing_input(r#"{"typ":"JWT","alg":"HS256"}"#, CLAIMS);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET_32.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(aws_lc_rs::hmac::sign(&key, input.as_bytes()));
    let jwt = format!("{input}.{sig}");
    assert_eq!(
        r.body,
        format!("grant_type=refresh_token&refresh_token=rt&client_id=cid&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}")
    );
    assert!(r.headers.is_empty(), "{:?}", r.headers);
    let read = decode::<Read>(
        &jwt,
        &DecodingKey::from_secret(SECRET_32.as_bytes()),
        &validation(Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(read.claims.exp - read.claims.iat, 60);
    assert_eq!(r.client_assertion, Some(Secret::new(jwt.clone())));
    assert!(!format!("{r:?}").contains(&sig), "{r:?}");
}

/// A provider table signing with `pem` (written 0600 in `dir`) and `extra` keys.
fn key_provider(dir: &std::path::Path, pem: &str, extra: &str) -> String {
    let path = dir.join("client.pem");
    std::fs::write(&path, pem).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[providers.k]\ntoken_url = \"{URL}\"\nclient_id = \"cid\"\nclient_auth = \"private_key_jwt\"\nclient_assertion_key_file = {:?}\n{extra}",
        path.to_str().unwrap()
    )
}

#[test]
fn private_key_jwt_ed25519_byte_for_byte_with_kid_and_no_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let e = endpoint(&key_provider(
        dir.path(),
        ED25519_PEM,
        "client_assertion_kid = \"k1\"\nsend_client_id = false\n",
    ));
    let grant = TokenGrant::ClientCredentials {
        scope: Some("read".into()),
        params: vec![],
    };
    let r = prepare(&e, &grant, &stamp()).unwrap();
    let input = signing_input(r#"{"typ":"JWT","alg":"EdDSA","kid":"k1"}"#, CLAIMS);
    let der = STANDARD
        .decode(ED25519_PEM.lines().nth(1).unwrap())
        .unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(&der).unwrap();
    let sig = URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref());
    let jwt = format!("{input}.{sig}");
    assert_eq!(
        r.body,
        format!("grant_type=client_credentials&scope=read&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}")
    );
    let public = DecodingKey::from_ed_pem(ED25519_PUBLIC_PEM.as_bytes()).unwrap();
    let read = decode::<Read>(&jwt, &public, &validation(Algorithm::EdDSA)).unwrap();
    assert_eq!(read.header.kid.as_deref(), Some("k1"));
    assert_eq!(read.claims.jti, "jti-fixed-1");
    assert!(e.describe_auth().contains("EdDSA") && e.describe_auth().contains("kid k1"));
}

#[test]
fn private_key_jwt_es256_verifies_and_a_literal_audience_is_used() {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(pkcs8.as_ref())
    );
    let dir = tempfile::tempdir().unwrap();
    let e = endpoint(&key_provider(
        dir.path(),
        &pem,
        "assertion_audience = \"https://login.example/\"\nassertion_lifetime = \"30s\"\n",
    ));
    let r = prepare(&e, &refresh("rt"), &stamp()).unwrap();
    let jwt = r.client_assertion.unwrap().expose().to_string();
    let public = pair.public_key().as_ref();
    let (x, y) = (&public[1..33], &public[33..65]);
    let key =
        DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(x), &URL_SAFE_NO_PAD.encode(y))
            .unwrap();
    let mut v = validation(Algorithm::ES256);
    v.set_audience(&["https://login.example/"]);
    let read = decode::<Read>(&jwt, &key, &v).unwrap();
    assert_eq!(read.claims.exp, 1_700_000_030);
    assert!(fields(&r.body).contains(&("client_id".into(), "cid".into())));
}

#[test]
fn a_rotation_secret_signs_client_secret_jwt() {
    let other = "another-secret-of-thirty-two-bytes!!";
    let e = endpoint(&format!(
        "[providers.h]\ntoken_url = \"{URL}\"\nclient_id = \"cid\"\nclient_secret = [\"{SECRET_32}\", \"{other}\"]\nclient_auth = \"client_secret_jwt\"\n"
    ));
    let rotation = e.secret_rotation.as_ref().unwrap();
    assert_eq!(rotation.len(), 2);
    let second = &rotation.all()[1];
    let r =
        crate::provider::request::prepare_with_secret(&e, &refresh("rt"), &stamp(), Some(second))
            .unwrap();
    let jwt = r.client_assertion.unwrap().expose().to_string();
    let key = DecodingKey::from_secret(other.as_bytes());
    decode::<Read>(&jwt, &key, &validation(Algorithm::HS256)).unwrap();
    assert!(
        e.describe_auth().contains("2 client secrets"),
        "{}",
        e.describe_auth()
    );
}

/// The problems `toml` has, as one message.
fn problems(toml: &str) -> String {
    parse_config(toml).unwrap_err().to_string()
}

#[test]
fn configuration_mistakes_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let ed = key_provider(
        dir.path(),
        ED25519_PEM,
        "client_assertion_alg = \"RS256\"\n",
    );
    let msg = problems(&ed);
    assert!(
        msg.contains("RS256 cannot be signed") && msg.contains("EdDSA"),
        "{msg}"
    );

    let msg = problems(&format!(
        "[providers.h]\ntoken_url = \"{URL}\"\nclient_id = \"cid\"\nclient_secret = \"short\"\nclient_auth = \"client_secret_jwt\"\n"
    ));
    assert!(msg.contains("at least 32 bytes"), "{msg}");

    let msg = problems(&format!(
        "[providers.b]\ntoken_url = \"{URL}\"\nclient_id = \"cid\"\nclient_secret = \"s\"\nclient_assertion_kid = \"k\"\n"
    ));
    assert!(
        msg.contains("client_assertion_kid") && msg.contains("only used with"),
        "{msg}"
    );

    let msg = problems(&format!(
        "[providers.k]\ntoken_url = \"{URL}\"\nclient_id = \"cid\"\nclient_auth = \"private_key_jwt\"\n"
    ));
    assert!(msg.contains("needs a private key"), "{msg}");

    let msg = problems(&format!(
        "[providers.h]\ntoken_url = \"{URL}\"\nclient_id = \"cid\"\nclient_secret = []\n"
    ));
    assert!(msg.contains("the list is empty"), "{msg}");

    let msg = problems(&key_provider(dir.path(), "not a key", ""));
    assert!(msg.contains("is not a PEM file"), "{msg}");

    let msg = problems(&key_provider(
        dir.path(),
        ED25519_PEM,
        "client_assertion_alg = \"none\"\n",
    ));
    assert!(msg.contains("unknown algorithm `none`"), "{msg}");
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let toml = key_provider(dir.path(), ED25519_PEM, "");
    parse_config(&toml).unwrap();
    let path = dir.path().join("client.pem");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let msg = problems(&toml);
    assert!(
        msg.contains("readable by other users (mode 0644)") && msg.contains("chmod 600"),
        "{msg}"
    );
}
