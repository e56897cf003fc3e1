//! The `credentials` table as the store sees it: the one list of its
//! columns, the one encoder that binds a credential's values in that order,
//! and the one decoder that turns a row back into a credential. Sealing on
//! write and opening on read happen here, so the secret values
//! (`refresh_token`, `access_token`, `extra.id_token`, and the DPoP private
//! key `dpop_key`) are handled by the same code everywhere.
//!
//! Every statement that names columns in order builds its list from
//! [`COLUMNS`], and every row is read by position from it, so adding a
//! column means adding it here (and in a migration) only.

use std::str::FromStr;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::StoreError;
use crate::credential::{Credential, CredentialGrant, GrantKind, State};
use crate::provider::DpopKey;
use crate::seal::{self, Key};
use crate::token::{LifetimeSource, Secret};

/// The table's columns, in the order every statement here writes and reads
/// them.
pub(super) const COLUMNS: [&str; 20] = [
    "name",
    "provider",
    "grant_type",
    "grant_request",
    "generation",
    "refresh_token",
    "access_token",
    "token_type",
    "scope",
    "expires_at",
    "lifetime_source",
    "refresh_expires_at",
    "extra",
    "state",
    "last_error",
    "refresh_started_at",
    "last_refresh_at",
    "dpop_key",
    "created_at",
    "updated_at",
];

const NAME: usize = index("name");
const PROVIDER: usize = index("provider");
const GRANT_TYPE: usize = index("grant_type");
const GRANT_REQUEST: usize = index("grant_request");
const GENERATION: usize = index("generation");
const REFRESH_TOKEN: usize = index("refresh_token");
const ACCESS_TOKEN: usize = index("access_token");
const TOKEN_TYPE: usize = index("token_type");
const SCOPE: usize = index("scope");
const EXPIRES_AT: usize = index("expires_at");
const LIFETIME_SOURCE: usize = index("lifetime_source");
const REFRESH_EXPIRES_AT: usize = index("refresh_expires_at");
const EXTRA: usize = index("extra");
const STATE: usize = index("state");
const LAST_ERROR: usize = index("last_error");
const REFRESH_STARTED_AT: usize = index("refresh_started_at");
const LAST_REFRESH_AT: usize = index("last_refresh_at");
const DPOP_KEY: usize = index("dpop_key");
const CREATED_AT: usize = index("created_at");
const UPDATED_AT: usize = index("updated_at");

/// How many columns [`state_values`] gives: `refresh_token` to
/// `dpop_key`, what a refresh may change. (A refresh keeps the DPoP key,
/// but gives one to a credential made before its provider used DPoP.)
pub(super) const STATE_COUNT: usize = DPOP_KEY + 1 - REFRESH_TOKEN;

/// The columns [`state_values`] gives, in its order.
pub(super) fn state_columns() -> &'static [&'static str] {
    &COLUMNS[REFRESH_TOKEN..=DPOP_KEY]
}

/// The position of `name` in [`COLUMNS`]; a name not there fails the build.
const fn index(name: &str) -> usize {
    let mut i = 0;
    while i < COLUMNS.len() {
        if same(COLUMNS[i].as_bytes(), name.as_bytes()) {
            return i;
        }
        i += 1;
    }
    panic!("not a column of credentials")
}

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Which form of a credential a read produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// Everything, refresh token and every response extra included.
    Full,
    /// What the daemon keeps in memory from start-up: no refresh token (it
    /// is opened, to prove it opens, and dropped) and of `extra` only the
    /// id_token, which the query extracts in SQL.
    Startup,
}

/// The select list for `shape`, in [`COLUMNS`] order (also what
/// `RETURNING` gives back); [`Shape::Startup`]'s as SQLite reads it (the
/// store builds each backend's with [`startup_list`]).
pub(super) fn select_list(shape: Shape) -> &'static str {
    static FULL: LazyLock<String> = LazyLock::new(|| COLUMNS.join(", "));
    static STARTUP: LazyLock<String> = LazyLock::new(|| startup_list(super::sqlite::ID_TOKEN));
    match shape {
        Shape::Full => &FULL,
        Shape::Startup => &STARTUP,
    }
}

/// The [`Shape::Startup`] select list, with `id_token` (a backend's
/// expression for `extra`'s id_token) in place of `extra`.
pub(super) fn startup_list(id_token: &str) -> String {
    let mut columns = COLUMNS;
    columns[EXTRA] = id_token;
    columns.join(", ")
}

/// The upsert of a whole credential: parameters $1 name, $2 provider, $3
/// grant_type and $4 grant_request ([`grant_values`]), $5.. the state columns ([`state_values`]), then created_at, which is also
/// the first `updated_at`. A replacement bumps the generation so a refresh
/// still in flight for the old one cannot overwrite it.
pub(super) fn replace_sql() -> &'static str {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let first = 5; // $1 name, $2 provider and $3, $4 the grant come first
        let created = first + STATE_COUNT;
        let values: Vec<String> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, _)| match i {
                NAME => "$1".into(),
                PROVIDER => "$2".into(),
                GRANT_TYPE => "$3".into(),
                GRANT_REQUEST => "$4".into(),
                GENERATION => "1".into(),
                CREATED_AT | UPDATED_AT => format!("${created}"),
                i => format!("${}", i - REFRESH_TOKEN + first),
            })
            .collect();
        let updates: Vec<String> = ["provider", "grant_type", "grant_request"]
            .iter()
            .chain(state_columns())
            .chain(&["updated_at"])
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        format!(
            "INSERT INTO credentials ({}) VALUES ({})
             ON CONFLICT (name) DO UPDATE SET generation = credentials.generation + 1, {}
             RETURNING generation",
            COLUMNS.join(", "),
            values.join(", "),
            updates.join(", "),
        )
    });
    &SQL
}

/// One value as a statement binds it, whatever the backend.
pub(super) enum Bound<'a> {
    /// A text column: owned when sealed or serialized here.
    Text(Option<std::borrow::Cow<'a, str>>),
    /// An integer column.
    Int(Option<i64>),
}

impl<'a> Bound<'a> {
    /// A text value.
    pub(super) fn text(s: &'a str) -> Self {
        Bound::Text(Some(std::borrow::Cow::Borrowed(s)))
    }

    /// A NULL of the same type, for a padding row (PostgreSQL types every
    /// row of a `VALUES` list alike).
    pub(super) fn null(&self) -> Bound<'static> {
        match self {
            Bound::Text(_) => Bound::Text(None),
            Bound::Int(_) => Bound::Int(None),
        }
    }
}

/// NULLs typed as [`state_values`]'s, in its order: a padding row's.
pub(super) fn state_nulls() -> [Bound<'static>; STATE_COUNT] {
    let blank = Credential::new("", "", None, 0);
    state_values(&blank, None).map(|b| b.null())
}

/// The credential's state columns ([`state_columns`], in order) as stored:
/// the tokens sealed under `key` when there is one. The backend binds them.
pub(super) fn state_values<'a>(c: &'a Credential, key: Option<&Key>) -> [Bound<'a>; STATE_COUNT] {
    use std::borrow::Cow;
    let seal = |column, s: &Secret| Cow::Owned(seal_column(key, &c.name, column, s.expose()));
    let text = |s: Option<&'a str>| Bound::Text(s.map(Cow::Borrowed));
    [
        Bound::Text(c.refresh_token.as_ref().map(|s| seal("refresh_token", s))),
        Bound::Text(c.access_token.as_ref().map(|s| seal("access_token", s))),
        text(Some(&c.token_type)),
        text(c.scope.as_deref()),
        Bound::Int(c.expires_at),
        text(c.lifetime_source.map(LifetimeSource::as_str)),
        Bound::Int(c.refresh_expires_at),
        Bound::Text(Some(Cow::Owned(seal_extra(key, &c.name, &c.extra)))),
        text(Some(c.state.as_str())),
        text(c.last_error.as_deref()),
        Bound::Int(c.refresh_started_at),
        Bound::Int(c.last_refresh_at),
        Bound::Text(c.dpop_key.as_ref().map(|k| seal("dpop_key", k.stored()))),
    ]
}

/// The grant columns (`grant_type`, `grant_request`) of a credential as
/// stored. The request holds no secret, so it is not sealed.
pub(super) fn grant_values(c: &Credential) -> (&'static str, Option<String>) {
    let request = match &c.grant {
        CredentialGrant::RefreshToken => None,
        CredentialGrant::ClientCredentials { scope, params } => {
            Some(serde_json::json!({ "scope": scope, "params": params }).to_string())
        }
    };
    (c.grant.kind().as_str(), request)
}

/// The grant of a row from its `grant_type` and `grant_request` columns.
fn decode_grant(
    kind: Option<&str>,
    request: Option<&str>,
    corrupt: impl Fn(String) -> StoreError,
) -> Result<CredentialGrant, StoreError> {
    /// `grant_request` as stored.
    #[derive(serde::Deserialize)]
    struct Request {
        scope: Option<String>,
        #[serde(default)]
        params: Vec<(String, String)>,
    }
    match GrantKind::from_str(kind.unwrap_or("refresh_token")).map_err(&corrupt)? {
        GrantKind::RefreshToken => Ok(CredentialGrant::RefreshToken),
        GrantKind::ClientCredentials => {
            let r: Request = serde_json::from_str(request.unwrap_or("{}"))
                .map_err(|e| corrupt(format!("grant_request is not valid: {e}")))?;
            Ok(CredentialGrant::ClientCredentials {
                scope: r.scope,
                params: r.params,
            })
        }
    }
}

/// `value` of `column` of credential `name` as stored: sealed under `key`,
/// or as it is without one.
pub(super) fn seal_column(key: Option<&Key>, name: &str, column: &str, value: &str) -> String {
    seal::seal(key, value, column, name)
}

/// The `extra` column as stored: JSON, its id_token sealed.
pub(super) fn seal_extra(key: Option<&Key>, name: &str, extra: &Map<String, Value>) -> String {
    let mut extra = extra.clone();
    if let Some(Value::String(id)) = extra.get_mut("id_token") {
        *id = seal_column(key, name, "id_token", id);
    }
    Value::Object(extra).to_string()
}

/// Opens a stored value of `column` of credential `name` (plaintext passes
/// through), naming both when it does not open.
pub(super) fn open_column(
    key: Option<&Key>,
    name: &str,
    column: &'static str,
    stored: &str,
) -> Result<String, StoreError> {
    seal::open(key, stored, column, name).map_err(|reason| StoreError::Sealed {
        name: name.to_string(),
        column,
        reason,
    })
}

/// A stored `dpop_key` of credential `name`, opened under `key` and parsed.
pub(super) fn open_dpop_key(
    key: Option<&Key>,
    name: &str,
    stored: &str,
) -> Result<DpopKey, StoreError> {
    parse_dpop_key(name, &open_column(key, name, "dpop_key", stored)?)
}

fn parse_dpop_key(name: &str, opened: &str) -> Result<DpopKey, StoreError> {
    DpopKey::from_stored(opened).map_err(|e| StoreError::Corrupt {
        name: name.to_string(),
        reason: format!("dpop_key: {e}"),
    })
}

/// A row being read, by position in [`COLUMNS`]. Each backend implements it
/// for its rows.
pub(super) trait Source {
    /// Column `i` as text, `None` for NULL.
    fn text(&self, i: usize) -> Result<Option<&str>, StoreError>;
    /// Column `i` as an integer, `None` for NULL.
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
}

/// How a row's token values were stored, for the start-up warning and
/// rekey's tally.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stored {
    /// Some token value (refresh, access or id_token) was sealed.
    pub(super) sealed: bool,
    /// The refresh or access token was in clear.
    pub(super) plain_token: bool,
    /// The id_token was in clear.
    pub(super) plain_id_token: bool,
}

/// A decoded row.
#[derive(Debug)]
pub(super) struct Decoded {
    /// The credential; in [`Shape::Startup`], without its refresh token.
    pub(super) cred: Credential,
    /// Whether the row holds a refresh token.
    pub(super) has_refresh_token: bool,
    /// How its tokens were stored.
    pub(super) stored: Stored,
}

/// The one row decoder: a row of [`select_list`]`(shape)` as a credential,
/// its tokens opened with `key`. Opens the refresh token, then the access
/// token, then the id_token, and fails on the first that does not open.
pub(super) fn decode<R: Source + ?Sized>(
    row: &R,
    shape: Shape,
    key: Option<&Key>,
) -> Result<Decoded, StoreError> {
    let name = row.text(NAME)?.unwrap_or_default().to_string();
    let corrupt = |reason: String| StoreError::Corrupt {
        name: name.clone(),
        reason,
    };
    let required = |i: usize| {
        row.int(i)?
            .ok_or_else(|| corrupt(format!("{} is NULL", COLUMNS[i])))
    };
    let mut stored = Stored::default();
    let mut token = |column: &'static str, i: usize| -> Result<Option<String>, StoreError> {
        let Some(v) = row.text(i)? else {
            return Ok(None);
        };
        stored.sealed |= seal::is_sealed(v);
        stored.plain_token |= !seal::is_sealed(v);
        open_column(key, &name, column, v).map(Some)
    };
    let refresh_token = token("refresh_token", REFRESH_TOKEN)?;
    let access_token = token("access_token", ACCESS_TOKEN)?.map(Secret::new);
    // Opened either way, so that a key that does not open stops start-up,
    // but parsed (and kept) only in full: start-up needs no key in memory.
    let dpop_key = token("dpop_key", DPOP_KEY)?;
    let extra = decode_extra(row.text(EXTRA)?, shape, key, &name, &mut stored)?;
    let has_refresh_token = refresh_token.is_some();
    let grant = decode_grant(row.text(GRANT_TYPE)?, row.text(GRANT_REQUEST)?, corrupt)?;
    let cred = Credential {
        grant,
        provider: row.text(PROVIDER)?.unwrap_or_default().to_string(),
        generation: required(GENERATION)?,
        refresh_token: match shape {
            Shape::Full => refresh_token.map(Secret::new),
            Shape::Startup => None,
        },
        access_token,
        token_type: row.text(TOKEN_TYPE)?.unwrap_or("Bearer").to_string(),
        scope: row.text(SCOPE)?.map(str::to_string),
        expires_at: row.int(EXPIRES_AT)?,
        lifetime_source: row.text(LIFETIME_SOURCE)?.map(LifetimeSource::parse),
        refresh_expires_at: row.int(REFRESH_EXPIRES_AT)?,
        extra,
        state: State::from_str(row.text(STATE)?.unwrap_or_default()).map_err(corrupt)?,
        last_error: row.text(LAST_ERROR)?.map(str::to_string),
        refresh_started_at: row.int(REFRESH_STARTED_AT)?,
        last_refresh_at: row.int(LAST_REFRESH_AT)?,
        dpop_key: match (shape, dpop_key) {
            (Shape::Full, Some(k)) => Some(parse_dpop_key(&name, &k)?),
            _ => None,
        },
        created_at: required(CREATED_AT)?,
        updated_at: required(UPDATED_AT)?,
        name: name.clone(),
    };
    Ok(Decoded {
        cred,
        has_refresh_token,
        stored,
    })
}

/// The `extra` of a row: in [`Shape::Full`] the stored JSON, in
/// [`Shape::Startup`] the id_token alone; the id_token opened either way.
fn decode_extra(
    column: Option<&str>,
    shape: Shape,
    key: Option<&Key>,
    name: &str,
    stored: &mut Stored,
) -> Result<Map<String, Value>, StoreError> {
    let mut open_id = |v: &str| {
        stored.sealed |= seal::is_sealed(v);
        stored.plain_id_token |= !seal::is_sealed(v);
        open_column(key, name, "id_token", v)
    };
    match shape {
        Shape::Startup => {
            let mut extra = Map::new();
            if let Some(id) = column {
                extra.insert("id_token".into(), Value::String(open_id(id)?));
            }
            Ok(extra)
        }
        Shape::Full => {
            let mut extra: Map<String, Value> = serde_json::from_str(column.unwrap_or_default())
                .map_err(|e| StoreError::Corrupt {
                    name: name.to_string(),
                    reason: format!("extra is not JSON: {e}"),
                })?;
            if let Some(Value::String(id)) = extra.get_mut("id_token") {
                *id = open_id(id)?;
            }
            Ok(extra)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statements_follow_the_column_list() {
        assert_eq!(state_columns().len(), STATE_COUNT);
        assert_eq!(state_columns().first(), Some(&"refresh_token"));
        assert_eq!(state_columns().last(), Some(&"dpop_key"));
        assert_eq!(
            replace_sql()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            "INSERT INTO credentials (name, provider, grant_type, grant_request, generation, \
             refresh_token, access_token, token_type, scope, expires_at, lifetime_source, \
             refresh_expires_at, extra, state, last_error, refresh_started_at, last_refresh_at, \
             dpop_key, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $18) \
             ON CONFLICT (name) DO UPDATE SET generation = credentials.generation + 1, \
             provider = excluded.provider, grant_type = excluded.grant_type, \
             grant_request = excluded.grant_request, refresh_token = excluded.refresh_token, \
             access_token = excluded.access_token, token_type = excluded.token_type, \
             scope = excluded.scope, expires_at = excluded.expires_at, \
             lifetime_source = excluded.lifetime_source, \
             refresh_expires_at = excluded.refresh_expires_at, extra = excluded.extra, \
             state = excluded.state, last_error = excluded.last_error, \
             refresh_started_at = excluded.refresh_started_at, \
             last_refresh_at = excluded.last_refresh_at, dpop_key = excluded.dpop_key, \
             updated_at = excluded.updated_at \
             RETURNING generation"
        );
        assert!(select_list(Shape::Startup).contains(", json_extract(extra, '$.id_token'), state,"));
    }
}
