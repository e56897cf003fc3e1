//! A small browser for tests: real HTTP over loopback with a cookie jar,
//! redirects followed by hand (so a test can stop before the last hop and
//! send it to its own loopback listener), and HTML forms read from the page
//! and submitted the way a browser would (hidden inputs kept, the test's
//! fields filled in). Enough for an authorization server's login, consent
//! and device-code pages; not a general HTML parser.

// Each test file uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use url::Url;

/// One response, with its body read.
#[derive(Debug, Clone)]
pub struct Page {
    /// The URL this page was fetched from.
    pub url: Url,
    pub status: u16,
    /// The `Location` header, resolved against [`Page::url`].
    pub location: Option<Url>,
    pub body: String,
}

impl Page {
    /// Whether this is a redirect (3xx with a `Location`).
    pub fn is_redirect(&self) -> bool {
        (300..400).contains(&self.status) && self.location.is_some()
    }

    /// The first `<form>` on the page, or a panic that shows the page.
    pub fn form(&self) -> Form {
        self.forms()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no <form> on {}: {}", self.url, self.body))
    }

    /// Every `<form>` on the page, in order.
    pub fn forms(&self) -> Vec<Form> {
        let body = without_comments(&self.body);
        let lower = body.to_ascii_lowercase();
        let mut forms = Vec::new();
        let mut at = 0;
        while let Some(start) = lower[at..].find("<form").map(|i| i + at) {
            let end = lower[start..]
                .find("</form")
                .map_or(lower.len(), |i| i + start);
            forms.push(Form::parse(&self.url, &body[start..end]));
            at = end;
        }
        forms
    }
}

/// A form as the page describes it: where it goes, how, and the inputs
/// (name, value) a browser would send if the user typed nothing.
#[derive(Debug, Clone)]
pub struct Form {
    pub action: Url,
    /// `GET` or `POST`, upper case.
    pub method: String,
    pub inputs: Vec<(String, String)>,
}

impl Form {
    fn parse(base: &Url, html: &str) -> Form {
        let mut tags = tags(html);
        let (_, form_attrs) = tags.next().expect("the form tag itself");
        let action = match form_attrs.get("action") {
            Some(a) if !a.is_empty() => base
                .join(a)
                .unwrap_or_else(|e| panic!("form action {a:?}: {e}")),
            _ => base.clone(),
        };
        let method = form_attrs
            .get("method")
            .map_or("GET".to_string(), |m| m.to_ascii_uppercase());
        let mut inputs = Vec::new();
        for (tag, attrs) in tags {
            if tag != "input" {
                continue;
            }
            let Some(name) = attrs.get("name") else {
                continue;
            };
            let kind = attrs.get("type").map(|t| t.to_ascii_lowercase());
            // A browser sends a checkbox only when checked, and a submit
            // button only when it is the one pressed.
            match kind.as_deref() {
                Some("submit" | "button" | "image" | "reset") => continue,
                Some("checkbox" | "radio") if !attrs.contains_key("checked") => continue,
                _ => {}
            }
            let value = attrs.get("value").cloned().unwrap_or_default();
            inputs.push((name.clone(), value));
        }
        Form {
            action,
            method,
            inputs,
        }
    }

    /// The form's inputs with `fields` set (replacing an input of the same
    /// name, or added).
    pub fn filled(&self, fields: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut out = self.inputs.clone();
        for (name, value) in fields {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.to_string(),
                None => out.push((name.to_string(), value.to_string())),
            }
        }
        out
    }
}

/// The tags in `html` with their lower-case names and attributes, values
/// unescaped.
fn tags(html: &str) -> impl Iterator<Item = (String, BTreeMap<String, String>)> + '_ {
    let mut rest = html;
    std::iter::from_fn(move || loop {
        let start = rest.find('<')?;
        rest = &rest[start + 1..];
        if rest.starts_with("!--") {
            rest = rest.find("-->").map_or("", |e| &rest[e + 3..]);
            continue;
        }
        let end = tag_end(rest);
        let inside = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        let name_end = inside
            .find(|c: char| c.is_ascii_whitespace() || c == '/')
            .unwrap_or(inside.len());
        let name = inside[..name_end].to_ascii_lowercase();
        if name.is_empty() || name.starts_with('/') || name.starts_with('!') {
            continue;
        }
        return Some((name, attributes(&inside[name_end..])));
    })
}

fn without_comments(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find("-->")
            .map_or("", |e| &rest[start + e + 3..]);
    }
    out.push_str(rest);
    out
}

/// Where the tag that `s` starts inside ends: the first `>` outside quotes.
fn tag_end(s: &str) -> usize {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return i,
            _ => {}
        }
    }
    s.len()
}

fn attributes(mut s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    loop {
        s = s.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '/');
        if s.is_empty() {
            return out;
        }
        let name_end = s
            .find(|c: char| c.is_ascii_whitespace() || c == '=' || c == '/')
            .unwrap_or(s.len());
        let name = s[..name_end].to_ascii_lowercase();
        s = s[name_end..].trim_start();
        let value = if let Some(after) = s.strip_prefix('=') {
            let after = after.trim_start();
            let (value, rest) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let close = body.find(q).unwrap_or(body.len());
                    (&body[..close], body.get(close + 1..).unwrap_or(""))
                }
                _ => {
                    let close = after
                        .find(|c: char| c.is_ascii_whitespace())
                        .unwrap_or(after.len());
                    (&after[..close], &after[close..])
                }
            };
            s = rest;
            unescape(value)
        } else {
            String::new()
        };
        if !name.is_empty() {
            out.entry(name).or_insert(value);
        }
    }
}

/// HTML character references: the named few templates use, and numeric ones.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|&i| i <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A stored cookie (RFC 6265, the parts a test server uses: host-only,
/// path, expiry).
#[derive(Debug, Clone)]
struct Cookie {
    value: String,
    expires: Option<SystemTime>,
}

/// A browser: a cookie jar and a client that never follows redirects itself.
pub struct Browser {
    client: reqwest::Client,
    /// (host, path, name) → cookie. Ports do not separate cookies (RFC 6265
    /// §8.5), as in a real browser.
    jar: Mutex<BTreeMap<(String, String, String), Cookie>>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .expect("http client");
        Browser {
            client,
            jar: Mutex::new(BTreeMap::new()),
        }
    }

    /// `GET url`, with the jar's cookies; the response's cookies are kept.
    pub async fn get(&self, url: &str) -> Page {
        let url = Url::parse(url).unwrap_or_else(|e| panic!("url {url:?}: {e}"));
        self.send(reqwest::Method::GET, url, None).await
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body.
    pub async fn post_form(&self, url: &Url, fields: &[(String, String)]) -> Page {
        self.send(reqwest::Method::POST, url.clone(), Some(fields))
            .await
    }

    /// Follows `page`'s redirects, at most `max` of them, and returns the
    /// first page that is not a redirect, or the redirect whose target is
    /// on `stop_at` (`host:port`) without fetching it: that hop is the
    /// caller's, e.g. to a loopback listener that it runs.
    pub async fn follow(&self, mut page: Page, max: usize, stop_at: Option<&str>) -> Page {
        for _ in 0..max {
            let Some(next) = page.location.clone().filter(|_| page.is_redirect()) else {
                return page;
            };
            if stop_at.is_some_and(|s| host_port(&next) == s) {
                return page;
            }
            page = self.send(reqwest::Method::GET, next, None).await;
        }
        assert!(
            !page.is_redirect(),
            "more than {max} redirects, last from {} to {:?}",
            page.url,
            page.location
        );
        page
    }

    /// Submits the first form on `page` with `fields` filled in (its hidden
    /// inputs kept), and returns the response without following it.
    pub async fn submit_form(&self, page: &Page, fields: &[(&str, &str)]) -> Page {
        let form = page.form();
        self.submit(&form, fields).await
    }

    /// Submits `form` with `fields` filled in.
    pub async fn submit(&self, form: &Form, fields: &[(&str, &str)]) -> Page {
        let values = form.filled(fields);
        match form.method.as_str() {
            "POST" => self.post_form(&form.action, &values).await,
            _ => {
                let mut url = form.action.clone();
                url.query_pairs_mut().clear().extend_pairs(&values);
                self.send(reqwest::Method::GET, url, None).await
            }
        }
    }

    /// The value of cookie `name` that a request to `url` would carry.
    pub fn cookie(&self, url: &Url, name: &str) -> Option<String> {
        self.cookies_for(url)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        form: Option<&[(String, String)]>,
    ) -> Page {
        let mut req = self.client.request(method.clone(), url.clone());
        let cookies = self.cookies_for(&url);
        if !cookies.is_empty() {
            let header: Vec<String> = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
            req = req.header(COOKIE, header.join("; "));
        }
        if let Some(fields) = form {
            req = req.form(fields);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        for value in resp.headers().get_all(SET_COOKIE) {
            if let Ok(value) = value.to_str() {
                self.store_cookie(&url, value);
            }
        }
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| {
                url.join(l)
                    .unwrap_or_else(|e| panic!("Location {l:?} from {url}: {e}"))
            });
        let body = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("body of {url}: {e}"));
        Page {
            url,
            status,
            location,
            body,
        }
    }

    fn cookies_for(&self, url: &Url) -> Vec<(String, String)> {
        let host = url.host_str().unwrap_or_default();
        let path = url.path();
        let now = SystemTime::now();
        let jar = self.jar.lock().expect("cookie jar");
        let mut matching: Vec<(&String, &String, &Cookie)> = jar
            .iter()
            .filter(|((h, p, _), c)| {
                h == host && path_matches(path, p) && c.expires.is_none_or(|e| e > now)
            })
            .map(|((_, p, n), c)| (p, n, c))
            .collect();
        // Longer paths first, as RFC 6265 §5.4 asks.
        matching.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
        matching
            .into_iter()
            .map(|(_, n, c)| (n.clone(), c.value.clone()))
            .collect()
    }

    fn store_cookie(&self, url: &Url, header: &str) {
        let mut parts = header.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let mut path = default_path(url);
        let mut expires = None;
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            match k.trim().to_ascii_lowercase().as_str() {
                "path" if v.trim().starts_with('/') => path = v.trim().to_string(),
                "max-age" => {
                    if let Ok(secs) = v.trim().parse::<i64>() {
                        expires = Some(if secs <= 0 {
                            SystemTime::UNIX_EPOCH
                        } else {
                            SystemTime::now() + Duration::from_secs(secs.unsigned_abs())
                        });
                    }
                }
                "expires" if expires.is_none() => {
                    expires = httpdate::parse_http_date(v.trim()).ok();
                }
                _ => {}
            }
        }
        let key = (
            url.host_str().unwrap_or_default().to_string(),
            path,
            name.trim().to_string(),
        );
        let mut jar = self.jar.lock().expect("cookie jar");
        if expires.is_some_and(|e| e <= SystemTime::now()) {
            jar.remove(&key);
        } else {
            jar.insert(
                key,
                Cookie {
                    value: value.trim().to_string(),
                    expires,
                },
            );
        }
    }
}

/// `host:port` of `url`, the port explicit.
pub fn host_port(url: &Url) -> String {
    let host = match url.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    format!("{host}:{}", url.port_or_known_default().unwrap_or(0))
}

fn default_path(url: &Url) -> String {
    let path = url.path();
    match path.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => path[..i].to_string(),
    }
}

fn path_matches(request: &str, cookie: &str) -> bool {
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request[cookie.len()..].starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_keeps_hidden_inputs_and_skips_buttons() {
        let page = Page {
            url: Url::parse("http://127.0.0.1:9/interaction/abc").unwrap(),
            status: 200,
            location: None,
            body: r#"<p>x</p><!-- <form action="/no"> --><FORM autocomplete="off" action="/interaction/abc/login?a=1&amp;b=2" method="post">
                <input type="hidden" name="prompt" value="login"/>
                <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
                <input type=checkbox name=remember>
                <input type="hidden" name="q" value='say &quot;hi&quot; &#x2F;'>
                <button type="submit" name="go" class="login login-submit">Sign-in</button>
                <input type="submit" name="submit" value="x">
            </form><form action="/second"></form>"#
                .to_string(),
        };
        let forms = page.forms();
        assert_eq!(forms.len(), 2);
        let form = &forms[0];
        assert_eq!(
            form.action.as_str(),
            "http://127.0.0.1:9/interaction/abc/login?a=1&b=2"
        );
        assert_eq!(form.method, "POST");
        let inputs: Vec<(&str, &str)> = form
            .inputs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            inputs,
            [("prompt", "login"), ("login", ""), ("q", "say \"hi\" /")]
        );
        let filled = form.filled(&[("login", "alice"), ("password", "pw")]);
        assert_eq!(filled[1], ("login".to_string(), "alice".to_string()));
        assert_eq!(filled[3], ("password".to_string(), "pw".to_string()));
        assert_eq!(forms[1].method, "GET");
        assert_eq!(forms[1].action.as_str(), "http://127.0.0.1:9/second");
    }

    #[test]
    fn cookies_follow_path_and_expiry() {
        let b = Browser::new();
        let base = Url::parse("http://127.0.0.1:1/interaction/abc").unwrap();
        b.store_cookie(&base, "_interaction=v1; path=/interaction/abc; httponly");
        b.store_cookie(&base, "_session=s; path=/; Max-Age=60");
        b.store_cookie(
            &base,
            "gone=x; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT",
        );
        let other_port = Url::parse("http://127.0.0.1:2/interaction/abc/login").unwrap();
        assert_eq!(b.cookie(&other_port, "_interaction").as_deref(), Some("v1"));
        let elsewhere = Url::parse("http://127.0.0.1:1/interaction/abcd").unwrap();
        assert_eq!(b.cookie(&elsewhere, "_interaction"), None);
        assert_eq!(b.cookie(&elsewhere, "_session").as_deref(), Some("s"));
        assert_eq!(b.cookie(&elsewhere, "gone"), None);
        b.store_cookie(&base, "_session=; path=/; Max-Age=0");
        assert_eq!(b.cookie(&elsewhere, "_session"), None);
        let other_host = Url::parse("http://localhost:1/").unwrap();
        assert_eq!(b.cookie(&other_host, "_session"), None);
    }
}
