//! Tests of configuration parsing and validation, from strings.

use std::time::Duration;

use super::*;
use crate::credential::CredentialGrant;
use crate::provider::{pairs, ClientAuth, Encoding, RequestTemplate};

fn problems(text: &str) -> Vec<Problem> {
    parse_config(text).unwrap_err().problems
}

#[test]
fn empty_config_is_valid_with_defaults() {
    let cfg = parse_config("").unwrap();
    assert!(cfg.providers.is_empty());
    assert_eq!(cfg.daemon.max_concurrent_refreshes, 16);
    assert_eq!(cfg.daemon.retry_max, Duration::from_secs(300));
}

#[test]
fn basic_auth_and_form_by_default() {
    let cfg = parse_config(
        r#"
        [providers.didit]
        token_url = "https://apx.didit.me/auth/v2/token"
        client_id = "id"
        client_secret = "secret"
        "#,
    )
    .unwrap();
    let p = &cfg.providers["didit"];
    assert_eq!(p.endpoint.client_auth, ClientAuth::Basic);
    assert_eq!(p.endpoint.refresh, RequestTemplate::standard_refresh());
    assert_eq!(p.endpoint.reauth_errors, ["invalid_grant", "invalid_token"]);
}

#[test]
fn json_body_and_headers() {
    let cfg = parse_config(
        r#"
        [providers.partner]
        token_url = "https://partner.example/v1/auth/token"
        client_auth = "none"
        [providers.partner.refresh]
        encoding = "json"
        fields = { refreshToken = "{refresh_token}" }
        headers = { partnerId = 42, grantType = "refresh_token" }
        "#,
    )
    .unwrap();
    let p = &cfg.providers["partner"];
    assert_eq!(p.endpoint.refresh.encoding, Encoding::Json);
    assert_eq!(
        p.endpoint.refresh.fields,
        pairs(&[("refreshToken", "{refresh_token}")])
    );
    assert_eq!(
        p.endpoint.refresh.headers,
        pairs(&[("grantType", "refresh_token"), ("partnerId", "42")])
    );
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let text = r#"
[daemon]
refresh_remaining = 2.0

[providers.a]
token_url = "http://example.com/token"
client_id = "x"
client_auth = "magic"

[providers.b]
token_url = "https://b.example/token"
client_scret = "typo"
"#;
    let p = problems(text);
    let keys: Vec<_> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert!(
        keys.contains(&(Some(3), "daemon.refresh_remaining")),
        "{p:?}"
    );
    assert!(keys.contains(&(Some(6), "providers.a.token_url")), "{p:?}");
    assert!(
        keys.contains(&(Some(8), "providers.a.client_auth")),
        "{p:?}"
    );
    let b = p
        .iter()
        .find(|p| p.key == "providers.b.client_scret")
        .expect("b reported");
    assert_eq!(b.line, Some(12));
    assert!(
        b.message.contains("unknown field `client_scret`"),
        "{}",
        b.message
    );
}

/// `(line, key)` of every problem, in order.
fn where_(text: &str) -> Vec<(usize, String)> {
    problems(text)
        .into_iter()
        .map(|p| (p.line.expect("a line"), p.key))
        .collect()
}

#[test]
fn every_bad_key_of_a_table_is_reported_at_its_own_line() {
    let text = "\
[daemon]
socket = \"/s\"
max_response_bytes = \"big\"
retry_max = -5
typo_one = 1
max_concurrent_refreshes = 0

[providers.a]
token_url = \"https://a.example/t\"
client_auth = \"none\"
max_response_bytes = 0
request_timeout = 0
clientid = \"x\"
keepalive = true
readers = \"uid:1\"
";
    assert_eq!(
        where_(text),
        [
            (3, "daemon.max_response_bytes".to_string()),
            (4, "daemon.retry_max".into()),
            (5, "daemon.typo_one".into()),
            (6, "daemon.max_concurrent_refreshes".into()),
            (11, "providers.a.max_response_bytes".into()),
            (12, "providers.a.request_timeout".into()),
            (13, "providers.a.clientid".into()),
            (14, "providers.a.keepalive".into()),
            (15, "providers.a.readers".into()),
        ]
    );
    let p = problems(text);
    let message = |key: &str| &p.iter().find(|p| p.key == key).unwrap().message;
    assert!(
        message("daemon.max_response_bytes").contains("invalid type: string \"big\""),
        "{p:?}"
    );
    assert!(message("daemon.retry_max").contains("negative"), "{p:?}");
    assert!(
        message("providers.a.clientid").contains("unknown field"),
        "{p:?}"
    );
    assert!(
        message("providers.a.max_response_bytes").contains("between 1024 and"),
        "{p:?}"
    );
    assert!(
        message("providers.a.request_timeout").contains("between 100ms and 10m"),
        "{p:?}"
    );
    // As check-config prints them.
    let shown = parse_config(text).unwrap_err().to_string();
    assert!(
        shown.contains(
            "config:14: providers.a.keepalive: invalid type: boolean `true`, expected a duration"
        ),
        "{shown}"
    );
}

#[test]
fn sub_tables_and_credentials_report_their_keys_lines() {
    let text = "\
[providers.a]
token_url = \"https://a.example/t\"
client_auth = \"none\"
[providers.a.refresh]
encoding = \"xml\"
encodng = \"json\"
fields = { rt = \"{refresh_tokn}\", n = 1.5 }
[providers.a.response]
acess_token = \"at\"
[credentials.c]
readers = [\"uid:1\"]
reader = 1
[credentials.d]
";
    assert_eq!(
        where_(text),
        [
            (5, "providers.a.refresh.encoding".to_string()),
            (6, "providers.a.refresh.encodng".into()),
            (7, "providers.a.refresh.fields.n".into()),
            (7, "providers.a.refresh.fields.rt".into()),
            (7, "providers.a.refresh".into()),
            (9, "providers.a.response.acess_token".into()),
            (12, "credentials.c.reader".into()),
            (13, "credentials.d.readers".into()),
        ]
    );
}

#[test]
fn on_invalid_grant_defaults_to_withhold_and_names_its_values() {
    let base = "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_auth = \"none\"\n";
    let cfg = parse_config(base).unwrap();
    assert_eq!(
        cfg.providers["a"].on_invalid_grant,
        OnInvalidGrant::Withhold
    );
    let cfg = parse_config(&format!(
        "{base}on_invalid_grant = \"serve_until_expiry\"\n"
    ))
    .unwrap();
    assert_eq!(
        cfg.providers["a"].on_invalid_grant,
        OnInvalidGrant::ServeUntilExpiry
    );
    let p = problems(&format!("{base}on_invalid_grant = \"serve\"\n"));
    assert_eq!(p[0].key, "providers.a.on_invalid_grant", "{p:?}");
    assert!(
        p[0].message.contains("withhold or serve_until_expiry"),
        "{p:?}"
    );
}

#[test]
fn every_numeric_limit_refuses_zero_and_absurd_values() {
    let daemon_zero = [
        "min_refresh_interval",
        "max_refresh_margin",
        "max_concurrent_refreshes",
        "retry_initial",
        "retry_max",
        "shutdown_timeout",
        "read_timeout",
        "default_lifetime",
        "request_timeout",
        "max_response_bytes",
    ];
    for key in daemon_zero {
        for value in ["0", "99999999999"] {
            let p = problems(&format!("[daemon]\n{key} = {value}\n"));
            assert_eq!(
                (p.len(), p[0].line, p[0].key.as_str()),
                (1, Some(2), format!("daemon.{key}").as_str()),
                "{key} = {value}: {p:?}"
            );
            assert!(p[0].message.starts_with("must be between"), "{p:?}");
        }
    }
    let provider_zero = [
        "default_lifetime",
        "request_timeout",
        "max_response_bytes",
        "max_concurrent_refreshes",
        "keepalive",
    ];
    for key in provider_zero.into_iter().chain(["refresh_token_warning"]) {
        for value in ["0", "99999999999"] {
            if key == "refresh_token_warning" && value == "0" {
                continue; // zero means: never warn
            }
            let text = format!(
                "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_auth = \"none\"\n{key} = {value}\n"
            );
            let p = problems(&text);
            assert_eq!(
                (p.len(), p[0].line, p[0].key.as_str()),
                (1, Some(4), format!("providers.a.{key}").as_str()),
                "{key} = {value}: {p:?}"
            );
        }
    }
    assert!(parse_config("[daemon]\nretry_initial = \"10m\"\nretry_max = \"5m\"\n").is_err());
    assert!(parse_config("[daemon]\nrefresh_remaining = nan\n").is_err());
    parse_config("[daemon]\nmax_response_bytes = 1024\nmax_concurrent_refreshes = 4096\nshutdown_timeout = \"100ms\"\n").unwrap();
}

#[test]
fn unknown_top_level_key_and_syntax_errors_have_lines() {
    let p = problems("[daemon]\nsocket = \"/x\"\n[deamon]\n");
    assert_eq!(p[0].line, Some(3));
    let p = problems("[daemon\n");
    assert_eq!(p[0].line, Some(1));
}

#[test]
fn basic_auth_without_secret_and_unknown_placeholder() {
    let p = problems(
        r#"
        [providers.a]
        token_url = "https://a.example/token"
        client_id = "x"
        [providers.a.refresh]
        fields = { rt = "{refresh_tokn}" }
        "#,
    );
    let msgs: Vec<_> = p.iter().map(|p| p.message.as_str()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("needs a client secret")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("unknown placeholder {refresh_tokn}")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("no field or header sends {refresh_token}")),
        "{msgs:?}"
    );
}

#[test]
fn secret_sources_are_exclusive_and_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-file\n").unwrap();
    let cfg = parse_config(&format!(
        "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_id = \"x\"\nclient_secret_file = {:?}\n",
        file
    ))
    .unwrap();
    assert_eq!(
        cfg.providers["a"]
            .endpoint
            .client_secret
            .as_ref()
            .unwrap()
            .expose(),
        "from-file"
    );
    let p = problems(
        "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_id = \"x\"\nclient_secret = \"a\"\nclient_secret_env = \"B\"\n",
    );
    assert!(p[0].message.contains("one way only"));
    let p = problems(
        "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_id = \"x\"\nclient_secret_env = \"TOKEND_TEST_SURELY_UNSET\"\n",
    );
    assert!(p[0].message.contains("TOKEND_TEST_SURELY_UNSET is not set"));
}

#[test]
fn readers_per_provider_and_per_credential() {
    let cfg = parse_config(
        r#"
        [daemon]
        admin_group = "root"
        socket_group = "0"
        [providers.a]
        token_url = "https://a.example/t"
        client_id = "x"
        client_secret = "s"
        readers = ["uid:1000", "group:root", "unit:backup.service"]
        [credentials.special]
        readers = ["user:root"]
        "#,
    )
    .unwrap();
    assert_eq!(cfg.daemon.admin_gid, Some(0));
    assert_eq!(cfg.daemon.socket_gid, Some(0));
    assert_eq!(
        **cfg.readers("other", "a").unwrap(),
        [
            Grant::Uid(1000),
            Grant::Gid(0),
            Grant::Unit("backup.service".into())
        ]
    );
    assert_eq!(**cfg.readers("special", "a").unwrap(), [Grant::Uid(0)]);
    assert!(cfg.readers("x", "unknown").is_none());
    let p = problems("[credentials.c]\nreaders = [\"user:surely-nobody-here\"]\n");
    assert_eq!(
        (p[0].line, p[0].key.as_str()),
        (Some(2), "credentials.c.readers")
    );
}

#[test]
fn durations_accept_seconds_and_text() {
    let cfg = parse_config("[daemon]\nretry_initial = 2\nretry_max = \"10m\"\n").unwrap();
    assert_eq!(cfg.daemon.retry_initial, Duration::from_secs(2));
    assert_eq!(cfg.daemon.retry_max, Duration::from_secs(600));
    let p = problems("[daemon]\nretry_max = \"soon\"\n");
    assert_eq!(p[0].key, "daemon.retry_max");
}

/// A provider `a` with `client_auth`, then `rest`.
fn with_provider(client_auth: &str, rest: &str) -> String {
    format!(
        "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\nclient_auth = \"{client_auth}\"\n{rest}"
    )
}

#[test]
fn a_declared_client_credentials_credential() {
    let cfg = parse_config(&with_provider(
        "body",
        "[credentials.svc]\nprovider = \"a\"\ngrant = \"client_credentials\"\nscope = \"read\"\nparams = { audience = \"https://api\", resource = \"urn:x\" }\n",
    ))
    .unwrap();
    assert_eq!(
        cfg.declared["svc"],
        Declared {
            provider: "a".into(),
            grant: CredentialGrant::ClientCredentials {
                scope: Some("read".into()),
                params: pairs(&[("audience", "https://api"), ("resource", "urn:x")]),
            },
        }
    );
    // Its readers come from the provider, as for any credential.
    assert!(!cfg.credentials.contains_key("svc"));
}

#[test]
fn declared_credentials_are_checked_at_their_lines() {
    let found = |text: &str| -> Vec<(Option<usize>, String, String)> {
        problems(text)
            .into_iter()
            .map(|p| (p.line, p.key, p.message))
            .collect()
    };
    let got = found(&with_provider(
        "none",
        "[credentials.svc]\nprovider = \"a\"\ngrant = \"client_credentials\"\n",
    ));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].0, got[0].1.as_str()),
        (Some(8), "credentials.svc.grant")
    );
    assert!(got[0].2.contains("client_auth = \"none\""), "{got:?}");

    let got = found(&with_provider(
        "basic",
        "[credentials.svc]\nprovider = \"b\"\ngrant = \"password\"\n[credentials.t]\ngrant = \"client_credentials\"\nparams = { grant_type = \"x\", n = 1, bad = true }\n[credentials.u]\nscope = \"x\"\nreaders = []\n",
    ));
    let keys: Vec<_> = got.iter().map(|p| (p.0, p.1.as_str())).collect();
    assert_eq!(
        keys,
        [
            (Some(8), "credentials.svc.grant"),
            (Some(9), "credentials.t.provider"),
            (Some(11), "credentials.t.params.bad"),
            (Some(11), "credentials.t.params.grant_type"),
            (Some(13), "credentials.u.scope"),
        ],
        "{got:?}"
    );
    let got = found(&with_provider(
        "basic",
        "[credentials.svc]\nprovider = \"nope\"\ngrant = \"client_credentials\"\n",
    ));
    assert_eq!(got[0].1, "credentials.svc.provider", "{got:?}");
    assert!(got[0].2.contains("no provider `nope`"), "{got:?}");
}

#[test]
fn device_authorization_url_is_https_and_its_template_sends_the_device_code() {
    let provider = |url: &str, rest: &str| {
        format!(
            "[providers.tv]\ntoken_url = \"https://idp.example/token\"\nclient_id = \"tv\"\nclient_auth = \"none\"\ndevice_authorization_url = \"{url}\"\n{rest}"
        )
    };
    let cfg = parse_config(&provider("https://idp.example/device", "")).unwrap();
    let e = &cfg.providers["tv"].endpoint;
    assert_eq!(
        e.device_authorization_url.as_ref().map(url::Url::as_str),
        Some("https://idp.example/device")
    );
    assert_eq!(e.device, RequestTemplate::standard_device());
    assert!(parse_config(&provider("https://idp.example/token", ""))
        .unwrap()
        .providers["tv"]
        .endpoint
        .device_authorization_url
        .is_some());
    let p = problems(&provider("http://idp.example/device", ""));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].key.ends_with("device_authorization_url"), "{p:?}");
    assert!(p[0].message.contains("plain http"), "{p:?}");
    assert!(parse_config(&provider(
        "http://idp.example/device",
        "allow_insecure_http = true\n"
    ))
    .is_ok());
    let p = problems(&provider("not a url", ""));
    assert!(p[0].message.contains("is not a URL"), "{p:?}");
    let p = problems(&provider(
        "https://idp.example/device",
        "[providers.tv.device]\nfields = { code = \"{code}\" }\n",
    ));
    assert!(
        p.iter()
            .any(|p| p.message.contains("no field or header sends {device_code}")),
        "{p:?}"
    );
    let cfg = parse_config(
        "[providers.tv]\ntoken_url = \"https://idp.example/token\"\nclient_auth = \"none\"\n",
    )
    .unwrap();
    assert!(cfg.providers["tv"]
        .endpoint
        .device_authorization_url
        .is_none());
}

#[test]
fn an_issuer_stands_in_for_the_token_url() {
    let cfg = parse_config(
        r#"
        [providers.g]
        issuer = "https://accounts.example"
        client_id = "id"
        client_secret = "secret"
        revoke_on_remove = true
        discovery_refresh = "6h"
        "#,
    )
    .unwrap();
    let p = &cfg.providers["g"];
    assert_eq!(
        p.endpoint.issuer.as_deref(),
        Some("https://accounts.example")
    );
    assert!(p.revoke_on_remove);
    assert_eq!(
        p.discovery,
        Some(Discovery {
            refresh: Duration::from_secs(6 * 3600),
            token_url_configured: false,
        })
    );
    assert!(cfg.pending.is_empty());
    let plain = parse_config(
        "[providers.p]\ntoken_url = \"https://p.example/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\n",
    )
    .unwrap();
    let p = &plain.providers["p"];
    assert_eq!(p.discovery, None);
    assert!(!p.revoke_on_remove);
    assert_eq!(p.endpoint.revocation_url, None);
}

#[test]
fn issuer_and_revocation_url_are_checked() {
    for (toml, key, what) in [
        ("issuer = \"https://a.example/?x=1\"", "issuer", "no query"),
        ("issuer = \"http://a.example\"", "issuer", "plain http"),
        ("issuer = \"not a url\"", "issuer", "not a URL"),
        (
            "token_url = \"https://a.example/t\"\nrevocation_url = \"http://a.example/r\"",
            "revocation_url",
            "plain http",
        ),
        (
            "issuer = \"https://a.example\"\ndiscovery_refresh = \"100ms\"",
            "discovery_refresh",
            "",
        ),
        ("client_auth = \"none\"", "token_url", "issuer ="),
    ] {
        let p = problems(&format!(
            "[providers.a]\n{toml}\nclient_id = \"i\"\nclient_secret = \"s\"\n"
        ));
        let found = p
            .iter()
            .find(|p| p.key == format!("providers.a.{key}"))
            .unwrap_or_else(|| panic!("{key} not reported: {p:?}"));
        assert!(found.message.contains(what), "{found:?}");
    }
}

#[test]
fn a_header_alone_keeps_the_default_body() {
    // GitHub answers form-encoded unless asked for JSON.
    let cfg = parse_config(
        r#"
        [providers.github]
        token_url = "https://github.com/login/oauth/access_token"
        client_id = "id"
        client_secret = "secret"
        client_auth = "body"
        [providers.github.refresh]
        headers = { Accept = "application/json" }
        "#,
    )
    .unwrap();
    let refresh = &cfg.providers["github"].endpoint.refresh;
    assert_eq!(refresh.fields, RequestTemplate::standard_refresh().fields);
    assert_eq!(refresh.encoding, Encoding::Form);
    assert_eq!(refresh.headers, pairs(&[("Accept", "application/json")]));
    let r = crate::provider::prepare(
        &cfg.providers["github"].endpoint,
        &crate::provider::TokenGrant::Refresh {
            refresh_token: crate::token::Secret::new("rt"),
        },
        &crate::provider::AssertionStamp::at(1_700_000_000, "jti-1"),
    )
    .unwrap();
    assert_eq!(
        r.body,
        "grant_type=refresh_token&refresh_token=rt&client_id=id&client_secret=secret"
    );
    assert_eq!(r.headers, pairs(&[("Accept", "application/json")]));
}

#[test]
fn dpop_is_off_unless_a_provider_turns_it_on() {
    let cfg = parse_config(
        "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_id = \"i\"\nclient_auth = \"none\"\ndpop = true\n\
         [providers.b]\ntoken_url = \"https://b.example/t\"\nclient_id = \"i\"\nclient_auth = \"none\"\n",
    )
    .unwrap();
    assert!(cfg.providers["a"].endpoint.dpop);
    assert!(!cfg.providers["b"].endpoint.dpop);
    let p = problems("[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_auth = \"none\"\ndpop = \"yes\"\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].line, Some(4), "{p:?}");
}

#[test]
fn sinks_read_their_mode_format_and_on_remove() {
    use crate::sinks::{Format, OnRemove};
    let cfg = parse_config(
        "[credentials.c]\nreaders = [\"uid:1\"]\n\
         [[credentials.c.sinks]]\npath = \"/run/a/t\"\n\
         [[credentials.c.sinks]]\npath = \"/run/a/h\"\nformat = \"header\"\nmode = \"640\"\non_remove = \"keep\"\n\
         [[credentials.c.sinks]]\npath = \"/run/a/j\"\nformat = \"template\"\ntemplate = \"T={access_token}\"\nmode = 0o444\n",
    )
    .unwrap();
    let sinks = &cfg.sinks["c"];
    assert_eq!(sinks.len(), 3);
    assert_eq!(
        (&sinks[0].format, sinks[0].mode, sinks[0].on_remove),
        (&Format::Token, 0o600, OnRemove::Delete)
    );
    assert_eq!(
        (&sinks[1].format, sinks[1].mode, sinks[1].on_remove),
        (&Format::Header, 0o640, OnRemove::Keep)
    );
    assert_eq!(sinks[2].format, Format::Template("T={access_token}".into()));
    assert_eq!(sinks[2].mode, 0o444);
}

#[test]
fn bad_sinks_are_problems_at_their_key() {
    let keys = |text: &str| -> Vec<String> {
        problems(&format!(
            "[credentials.c]\nreaders = [\"uid:1\"]\n[[credentials.c.sinks]]\n{text}"
        ))
        .into_iter()
        .map(|p| p.key)
        .collect()
    };
    assert_eq!(keys(""), ["credentials.c.sinks[0].path"]);
    assert_eq!(
        keys("path = \"/a/b\"\nmode = \"4755\""),
        ["credentials.c.sinks[0].mode"]
    );
    assert_eq!(
        keys("path = \"/a/b\"\nmode = \"9\""),
        ["credentials.c.sinks[0].mode"]
    );
    assert_eq!(
        keys("path = \"/a/b\"\nformat = \"template\""),
        ["credentials.c.sinks[0].template"]
    );
    assert_eq!(
        keys("path = \"/a/b\"\ntemplate = \"{access_token}\""),
        ["credentials.c.sinks[0].template"]
    );
    assert_eq!(
        keys("path = \"/a/b\"\nformat = \"template\"\ntemplate = \"x\""),
        ["credentials.c.sinks[0].template"]
    );
    assert_eq!(
        keys("path = \"/a/b\"\nowner = \"surely-no-such-user\""),
        ["credentials.c.sinks[0].owner"]
    );
    assert_eq!(keys("path = \"/a/b\"\ncolour = 1").len(), 1);
}
