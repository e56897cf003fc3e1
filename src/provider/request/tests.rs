use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::*;
use crate::config::parse_config;

/// The endpoint of the only provider in `toml`.
pub(crate) fn endpoint(toml: &str) -> Endpoint {
    let cfg = parse_config(toml).unwrap();
    let p = cfg.providers.values().next().unwrap();
    p.endpoint.clone()
}

/// The request `prepare` builds at a fixed stamp.
pub(crate) fn prep(e: &Endpoint, grant: &TokenGrant) -> PreparedRequest {
    prepare(e, grant, &AssertionStamp::at(1_700_000_000, "jti-1")).unwrap()
}

pub(crate) fn refresh(rt: &str) -> TokenGrant {
    TokenGrant::Refresh {
        refresh_token: Secret::new(rt),
    }
}

fn header<'a>(r: &'a PreparedRequest, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn prepared_request_debug_shows_no_secret() {
    let p = endpoint(
        "[providers.d]\ntoken_url = \"https://d.example/t\"\nclient_id = \"id\"\nclient_secret = \"the-client-secret\"\nclient_auth = \"body\"\n",
    );
    let r = prep(&p, &refresh("the-refresh-token"));
    assert!(r.body.contains("the-refresh-token") && r.body.contains("the-client-secret"));
    let basic = prep(
        &endpoint("[providers.d]\ntoken_url = \"https://d.example/t\"\nclient_id = \"id\"\nclient_secret = \"s\"\n"),
        &refresh("rt"),
    );
    let authorization = header(&basic, "authorization").unwrap().to_string();
    for (debug, secrets) in [
        (
            format!("{r:?}"),
            vec!["the-refresh-token", "the-client-secret"],
        ),
        (
            format!("{basic:?}"),
            vec![authorization.as_str(), "aWQ6cw=="],
        ),
    ] {
        for secret in secrets {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("sha256:"), "{debug}");
    }
}

#[test]
fn basic_auth_and_exact_form_body() {
    let p = endpoint(
        "[providers.d]\ntoken_url = \"https://apx.didit.me/auth/v2/token\"\nclient_id = \"id\"\nclient_secret = \"se:cret\"\n",
    );
    let r = prep(&p, &refresh("rt/1+"));
    assert_eq!(r.content_type, "application/x-www-form-urlencoded");
    assert_eq!(r.body, "grant_type=refresh_token&refresh_token=rt%2F1%2B");
    assert_eq!(header(&r, "authorization"), Some("Basic aWQ6c2U6Y3JldA=="));
}

#[test]
fn basic_urlencoded_follows_rfc_6749_2_3_1() {
    let p = endpoint(
        "[providers.d]\ntoken_url = \"https://a.example/t\"\nclient_id = \"a b\"\nclient_secret = \"x:y\"\nclient_auth = \"basic_urlencoded\"\n",
    );
    let r = prep(&p, &refresh("rt"));
    let expected = format!("Basic {}", B64.encode("a+b:x%3Ay"));
    assert_eq!(header(&r, "authorization"), Some(expected.as_str()));
}

#[test]
fn exchange_with_and_without_pkce() {
    let p = endpoint(
        "[providers.d]\ntoken_url = \"https://apx.didit.me/auth/v2/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
    );
    let mut grant = TokenGrant::Exchange {
        code: Secret::new("the-code"),
        redirect_uri: "https://your-app.com/callback".into(),
        code_verifier: None,
    };
    let r = prep(&p, &grant);
    assert_eq!(
        r.body,
        "code=the-code&grant_type=authorization_code&redirect_uri=https%3A%2F%2Fyour-app.com%2Fcallback"
    );
    if let TokenGrant::Exchange { code_verifier, .. } = &mut grant {
        *code_verifier = Some(Secret::new("verifier"));
    }
    assert!(prep(&p, &grant).body.ends_with("&code_verifier=verifier"));
}

#[test]
fn json_body_with_headers_and_nothing_else() {
    let p = endpoint(
        r#"
        [providers.partner]
        token_url = "https://partner.example/v1/auth/token"
        client_auth = "none"
        [providers.partner.refresh]
        encoding = "json"
        fields = { refreshToken = "{refresh_token}" }
        headers = { partnerId = "42", grantType = "refresh_token" }
        "#,
    );
    let r = prep(&p, &refresh("rt-1"));
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.body, r#"{"refreshToken":"rt-1"}"#);
    assert_eq!(header(&r, "partnerId"), Some("42"));
    assert_eq!(header(&r, "grantType"), Some("refresh_token"));
    assert_eq!(header(&r, "authorization"), None);
}

#[test]
fn credentials_in_form_body() {
    let p = endpoint(
        "[providers.b]\ntoken_url = \"https://bakrypt.io/auth/token/\"\nclient_id = \"cid\"\nclient_secret = \"csec\"\nclient_auth = \"body\"\n",
    );
    let r = prep(&p, &refresh("rt"));
    assert_eq!(
        r.body,
        "grant_type=refresh_token&refresh_token=rt&client_id=cid&client_secret=csec"
    );
    assert_eq!(header(&r, "authorization"), None);
}

#[test]
fn public_client_sends_client_id_only_and_scope_when_configured() {
    let p = endpoint(
        "[providers.p]\ntoken_url = \"https://a.example/t\"\nclient_id = \"pub\"\nclient_auth = \"none\"\nscope = \"a b\"\n",
    );
    let r = prep(&p, &refresh("rt"));
    assert_eq!(
        r.body,
        "grant_type=refresh_token&refresh_token=rt&scope=a+b&client_id=pub"
    );
}

fn device_auth(e: &Endpoint) -> PreparedRequest {
    prepare_device_authorization(
        e,
        &AssertionStamp::at(1_700_000_000, "jti-1"),
        e.client_secret.as_ref(),
    )
    .unwrap()
}

#[test]
fn device_code_grant_and_device_authorization_request() {
    let grant = TokenGrant::DeviceCode {
        device_code: Secret::new("GmRh/mhc+x"),
    };
    let public = endpoint(
        "[providers.tv]\ntoken_url = \"https://a.example/t\"\nclient_id = \"tv app\"\nclient_auth = \"none\"\nscope = \"openid offline_access\"\n",
    );
    let r = prep(&public, &grant);
    assert_eq!(
        r.body,
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=GmRh%2Fmhc%2Bx&client_id=tv+app"
    );
    assert_eq!(header(&r, "authorization"), None);
    assert_eq!(grant.secrets(), ["GmRh/mhc+x"]);
    let r = device_auth(&public);
    assert_eq!(r.content_type, "application/x-www-form-urlencoded");
    assert_eq!(r.body, "scope=openid+offline_access&client_id=tv+app");
    let confidential = cc_endpoint("basic");
    let r = prep(&confidential, &grant);
    assert_eq!(
        r.body,
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=GmRh%2Fmhc%2Bx"
    );
    let basic = format!("Basic {}", B64.encode("a b:x:y"));
    assert_eq!(header(&r, "authorization"), Some(basic.as_str()));
    let r = device_auth(&confidential);
    assert_eq!(r.body, "scope=provider-scope");
    assert_eq!(header(&r, "authorization"), Some(basic.as_str()));
    let body = device_auth(&cc_endpoint("body")).body;
    assert_eq!(
        body,
        "scope=provider-scope&client_id=a+b&client_secret=x%3Ay"
    );
}

fn client_credentials(scope: Option<&str>, params: &[(&str, &str)]) -> TokenGrant {
    TokenGrant::ClientCredentials {
        scope: scope.map(str::to_string),
        params: crate::provider::pairs(params),
    }
}

/// A provider with `client_auth = auth`, id `a b` and secret `x:y`.
fn cc_endpoint(auth: &str) -> Endpoint {
    endpoint(&format!(
        "[providers.c]\ntoken_url = \"https://c.example/t\"\nclient_id = \"a b\"\nclient_secret = \"x:y\"\nclient_auth = \"{auth}\"\nscope = \"provider-scope\"\n"
    ))
}

#[test]
fn client_credentials_with_each_client_auth_method() {
    let grant = client_credentials(Some("read write"), &[("audience", "https://api/x")]);
    let body = "grant_type=client_credentials&scope=read+write&audience=https%3A%2F%2Fapi%2Fx";
    let digirunner = format!("Basic {}", B64.encode(format!("a b:{}", B64.encode("x:y"))));
    for (auth, header_value, tail) in [
        (
            "basic",
            Some(format!("Basic {}", B64.encode("a b:x:y"))),
            "",
        ),
        (
            "basic_urlencoded",
            Some(format!("Basic {}", B64.encode("a+b:x%3Ay"))),
            "",
        ),
        ("body", None, "&client_id=a+b&client_secret=x%3Ay"),
        ("digirunner", Some(digirunner), ""),
    ] {
        let r = prep(&cc_endpoint(auth), &grant);
        assert_eq!(
            r.content_type, "application/x-www-form-urlencoded",
            "{auth}"
        );
        assert_eq!(r.body, format!("{body}{tail}"), "{auth}");
        assert_eq!(
            header(&r, "authorization"),
            header_value.as_deref(),
            "{auth}"
        );
    }
}

#[test]
fn client_credentials_falls_back_to_the_provider_scope() {
    let r = prep(&cc_endpoint("basic"), &client_credentials(None, &[]));
    assert_eq!(r.body, "grant_type=client_credentials&scope=provider-scope");
    let p = endpoint(
        "[providers.c]\ntoken_url = \"https://c.example/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\n",
    );
    let r = prep(&p, &client_credentials(None, &[("resource", "urn:r")]));
    assert_eq!(r.body, "grant_type=client_credentials&resource=urn%3Ar");
}

#[test]
fn client_credentials_template_from_the_configuration() {
    let p = endpoint(
        r#"
        [providers.j]
        token_url = "https://j.example/t"
        client_id = "i"
        client_secret = "s"
        [providers.j.client_credentials]
        encoding = "json"
        fields = { grantType = "client_credentials", scopes = "{scope}" }
        "#,
    );
    let r = prep(&p, &client_credentials(Some("a"), &[("audience", "x")]));
    assert_eq!(r.content_type, "application/json");
    assert_eq!(
        r.body,
        r#"{"audience":"x","grantType":"client_credentials","scopes":"a"}"#
    );
    assert!(TokenGrant::ClientCredentials {
        scope: None,
        params: vec![]
    }
    .secrets()
    .is_empty());
}
