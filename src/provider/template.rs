//! Request templates: the body encoding, body fields and extra headers of a
//! token request, each value a template naming `{placeholders}`, and the
//! renderer that fills them in. The set of placeholders and their syntax
//! live here only; configuration checks a template's values with
//! [`unknown_placeholders`] instead of knowing the syntax itself.

/// Body encoding of a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// `application/json`, every field a string.
    Json,
}

impl Encoding {
    /// Every encoding, in the order messages name them.
    const ALL: [Encoding; 2] = [Encoding::Form, Encoding::Json];

    /// The name of this encoding in a configuration's `encoding = "..."`.
    fn name(self) -> &'static str {
        match self {
            Encoding::Form => "form",
            Encoding::Json => "json",
        }
    }

    /// The encoding called `name` in a configuration.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Every encoding's name, as a message lists them: `form or json`.
    pub(crate) fn known_names() -> String {
        one_of(&Self::ALL.map(Encoding::name))
    }

    /// The Content-Type of a body in this encoding.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Encoding::Form => "application/x-www-form-urlencoded",
            Encoding::Json => "application/json",
        }
    }
}

/// `names` as a message offers them: `a, b or c`.
pub(crate) fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

/// The values a template may name as `{name}`.
pub(crate) const PLACEHOLDERS: [&str; 8] = [
    "refresh_token",
    "client_id",
    "client_secret",
    "scope",
    "code",
    "redirect_uri",
    "code_verifier",
    "device_code",
];

/// A request description: encoding, body fields and extra headers, each value
/// a template. A field or header whose template names a value that is not
/// available (no scope configured, no PKCE verifier given) is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestTemplate {
    /// Body encoding.
    pub(crate) encoding: Encoding,
    /// Body fields in order.
    pub(crate) fields: Vec<(String, String)>,
    /// Extra headers in order.
    pub(crate) headers: Vec<(String, String)>,
}

impl RequestTemplate {
    /// The standard refresh request (RFC 6749 §6), scope sent if configured.
    pub(crate) fn standard_refresh() -> Self {
        RequestTemplate {
            encoding: Encoding::Form,
            fields: pairs(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "{refresh_token}"),
                ("scope", "{scope}"),
            ]),
            headers: Vec::new(),
        }
    }

    /// The standard authorization-code exchange (RFC 6749 §4.1.3), with the
    /// PKCE verifier if one was given (RFC 7636 §4.5).
    pub(crate) fn standard_exchange() -> Self {
        RequestTemplate {
            encoding: Encoding::Form,
            fields: pairs(&[
                ("code", "{code}"),
                ("grant_type", "authorization_code"),
                ("redirect_uri", "{redirect_uri}"),
                ("code_verifier", "{code_verifier}"),
            ]),
            headers: Vec::new(),
        }
    }

    /// The standard client-credentials request (RFC 6749 §4.4.2), scope
    /// sent if the credential or the provider gives one.
    pub(crate) fn standard_client_credentials() -> Self {
        RequestTemplate {
            encoding: Encoding::Form,
            fields: pairs(&[("grant_type", "client_credentials"), ("scope", "{scope}")]),
            headers: Vec::new(),
        }
    }

    /// The standard device-code token request (RFC 8628 §3.4).
    pub(crate) fn standard_device() -> Self {
        RequestTemplate {
            encoding: Encoding::Form,
            fields: pairs(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", "{device_code}"),
            ]),
            headers: Vec::new(),
        }
    }

    /// The device authorization request (RFC 8628 §3.1): the scope, if
    /// configured; the client's authentication is added as for a token
    /// request.
    pub(crate) fn device_authorization() -> Self {
        RequestTemplate {
            encoding: Encoding::Form,
            fields: pairs(&[("scope", "{scope}")]),
            headers: Vec::new(),
        }
    }

    /// Whether any field or header names `{placeholder}`.
    pub(crate) fn mentions(&self, placeholder: &str) -> bool {
        let needle = format!("{{{placeholder}}}");
        self.fields
            .iter()
            .chain(&self.headers)
            .any(|(_, v)| v.contains(&needle))
    }
}

/// Owned `(key, value)` pairs from borrowed ones.
pub(crate) fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Substitutes `{name}` placeholders. Returns `None` if a named value is not
/// available, so the caller leaves that field out.
pub(crate) fn render(template: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) if PLACEHOLDERS.contains(&&after[..end]) => {
                out.push_str(&lookup(&after[..end])?);
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// The names in `value` written like a placeholder (`{lower_case}`) that are
/// no placeholder: most likely typing mistakes. Other braces (JSON, `{1}`)
/// are literal text and not reported.
pub(crate) fn unknown_placeholders(value: &str) -> Vec<&str> {
    let mut unknown = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.is_empty()
            && name.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')
            && !PLACEHOLDERS.contains(&name)
        {
            unknown.push(name);
        }
        rest = &after[end + 1..];
    }
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_substitutes_and_omits_missing_values() {
        let lookup = |k: &str| (k == "refresh_token").then(|| "RT".to_string());
        assert_eq!(render("{refresh_token}", lookup).as_deref(), Some("RT"));
        assert_eq!(
            render("Bearer {refresh_token}!", lookup).as_deref(),
            Some("Bearer RT!")
        );
        assert_eq!(render("{scope}", lookup), None);
        assert_eq!(
            render("{literal} {", lookup).as_deref(),
            Some("{literal} {")
        );
    }

    #[test]
    fn encoding_names() {
        assert_eq!(Encoding::known_names(), "form or json");
        assert_eq!(Encoding::from_name("json"), Some(Encoding::Json));
        assert_eq!(Encoding::from_name("xml"), None);
    }

    #[test]
    fn unknown_placeholders_are_lower_case_names_only() {
        assert_eq!(
            unknown_placeholders("{refresh_tokn} {scope} {X} {1} {}"),
            ["refresh_tokn"]
        );
        assert!(unknown_placeholders("{\"a\":1}").is_empty());
    }
}
