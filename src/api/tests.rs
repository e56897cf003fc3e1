use super::*;

#[test]
fn debug_output_never_shows_secrets() {
    let put = PutCredential {
        provider: "p".into(),
        grant: GrantType::RefreshToken,
        refresh_token: "rt-very-secret".into(),
        params: BTreeMap::new(),
        access_token: Some("at-very-secret".into()),
        expires_in: Some(60),
        scope: None,
    };
    let code = ExchangeCode {
        provider: "p".into(),
        code: "code-very-secret".into(),
        redirect_uri: "https://app/cb".into(),
        code_verifier: Some("verifier-very-secret".into()),
    };
    let token = TokenResponse {
        name: "c".into(),
        access_token: "at-very-secret".into(),
        token_type: "Bearer".into(),
        expires_at: 0,
        expires_in: 0,
        scope: None,
        id_token: Some("idt-very-secret".into()),
        state: CredentialState::Active,
        warning: None,
    };
    let all = format!("{put:?} {code:?} {token:?} {put:#?}");
    assert!(!all.contains("very-secret"), "{all}");
    assert!(all.contains("sha256:"));
}

/// The JSON string a wire enum serializes to.
fn name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value).unwrap() {
        serde_json::Value::String(s) => s,
        other => panic!("not a string: {other}"),
    }
}

#[test]
fn wire_enums_keep_their_names() {
    use CredentialState as S;
    for (state, want) in [
        (S::Active, "active"),
        (S::NeedsReauth, "needs_reauth"),
        (S::Paused, "paused"),
    ] {
        assert_eq!((name(&state), state.as_str()), (want.into(), want));
    }
    use LoginState as G;
    for (state, want) in [
        (G::Pending, "pending"),
        (G::Succeeded, "succeeded"),
        (G::Failed, "failed"),
    ] {
        assert_eq!(name(&state), want);
    }
    use LifetimeSource as L;
    for (source, want) in [
        (L::ExpiresIn, "expires_in"),
        (L::JwtExp, "jwt_exp"),
        (L::Default, "default"),
    ] {
        assert_eq!(name(&source), want);
    }
    use ErrorKind as K;
    for (kind, want) in [
        (K::BadRequest, "bad_request"),
        (K::UnknownProvider, "unknown_provider"),
        (K::Forbidden, "forbidden"),
        (K::NotFound, "not_found"),
        (K::MethodNotAllowed, "method_not_allowed"),
        (K::Timeout, "timeout"),
        (K::NeedsReauth, "needs_reauth"),
        (K::PayloadTooLarge, "payload_too_large"),
        (K::MinValidUnsatisfiable, "min_valid_unsatisfiable"),
        (K::Internal, "internal"),
        (K::ExchangeFailed, "exchange_failed"),
        (K::Unavailable, "unavailable"),
        (K::Paused, "paused"),
        (K::ShuttingDown, "shutting_down"),
    ] {
        assert_eq!(name(&kind), want);
    }
    let health = Health {
        status: HealthStatus::Ok,
        credentials: 3,
        version: "0.1.0".into(),
    };
    assert_eq!(
        serde_json::to_string(&health).unwrap(),
        r#"{"status":"ok","credentials":3,"version":"0.1.0"}"#
    );
}

#[test]
fn an_unknown_error_kind_still_reads() {
    let body: ErrorBody =
        serde_json::from_str(r#"{"error":"from_the_future","message":"m"}"#).unwrap();
    assert_eq!((body.error, body.message.as_str()), (ErrorKind::Other, "m"));
    let body: ErrorBody =
        serde_json::from_str(r#"{"error":"needs_reauth","message":"m"}"#).unwrap();
    assert_eq!(body.error, ErrorKind::NeedsReauth);
}
