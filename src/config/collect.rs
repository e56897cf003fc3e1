//! Gathering problems: the [`Collector`] every validation step reports to,
//! the [`Scope`] of a table (where it and each of its keys are), and reading
//! a table into its raw shape one key at a time when it does not read whole,
//! so that every bad key is reported at its own line.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::raw::RawDuration;
use super::Problem;
use crate::access::Grant;

/// Gathers every problem of one configuration text, each with its line.
pub(super) struct Collector<'a> {
    /// The configuration text, to turn offsets into lines.
    text: &'a str,
    /// The problems found so far.
    pub(super) problems: Vec<Problem>,
}

/// A table being validated: its dotted path and where it and each of its
/// keys are, so that a problem points at its key's own line.
pub(super) struct Scope {
    /// Dotted path of the table, e.g. `providers.didit`.
    pub(super) path: String,
    /// Line of the table's header.
    pub(super) line: usize,
    /// Line of each key.
    pub(super) keys: BTreeMap<String, usize>,
}

impl Scope {
    /// The scope of a table the file does not have, reported at line 1.
    pub(super) fn absent(path: &str) -> Self {
        Scope {
            path: path.to_string(),
            line: 1,
            keys: BTreeMap::new(),
        }
    }

    /// The line of `key`, or of the table if the key is absent.
    pub(super) fn line(&self, key: &str) -> Option<usize> {
        Some(self.keys.get(key).copied().unwrap_or(self.line))
    }

    /// The dotted path of `key`.
    pub(super) fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }
}

impl<'a> Collector<'a> {
    /// A collector for `text`, with no problem found yet.
    pub(super) fn new(text: &'a str) -> Self {
        Collector {
            text,
            problems: Vec::new(),
        }
    }

    /// The 1-based line of byte `offset` of the text.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// A problem at `line` with `key`.
    pub(super) fn push(
        &mut self,
        line: Option<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// A problem with `key` of the table `s`, at the key's line.
    pub(super) fn problem(&mut self, s: &Scope, key: &str, message: impl Into<String>) {
        self.push(s.line(key), s.key(key), message);
    }

    /// `value` as a table, or a problem at `line`.
    pub(super) fn subtable<'v, 'i>(
        &mut self,
        line: usize,
        path: &str,
        value: &'v Spanned<DeValue<'i>>,
    ) -> Option<&'v DeTable<'i>> {
        let table = value.get_ref().as_table();
        if table.is_none() {
            self.push(
                Some(line),
                path,
                format!("must be a table; found {}", value.get_ref().type_str()),
            );
        }
        table
    }

    /// Reads `table`, found at `line` under `path`, into `T`. A table that
    /// does not read whole is read one key at a time, so that every unknown
    /// key and every value of the wrong type is reported, each at its own
    /// line; the keys that read are kept.
    pub(super) fn table<T: DeserializeOwned + Default>(
        &mut self,
        path: &str,
        line: usize,
        table: &DeTable<'_>,
    ) -> (T, Scope) {
        let scope = Scope {
            path: path.to_string(),
            line,
            keys: table
                .iter()
                .map(|(k, _)| (k.get_ref().to_string(), self.line_of(k.span().start)))
                .collect(),
        };
        let read = |t: DeTable<'_>| {
            T::deserialize(ValueDeserializer::from(Spanned::new(
                0..0,
                DeValue::Table(t),
            )))
        };
        if let Ok(whole) = read(table.clone()) {
            return (whole, scope);
        }
        let mut good = DeTable::new();
        for (k, v) in table {
            let mut one = DeTable::new();
            one.insert(k.clone(), v.clone());
            match read(one) {
                Ok(_) => {
                    good.insert(k.clone(), v.clone());
                }
                Err(e) => self.problem(&scope, k.get_ref(), e.message().trim()),
            }
        }
        (read(good).unwrap_or_default(), scope)
    }

    /// `rules` as reader grants; every rule that does not parse is a problem.
    pub(super) fn grants(&mut self, s: &Scope, key: &str, rules: &[String]) -> Vec<Grant> {
        rules
            .iter()
            .filter_map(|r| Grant::parse(r).map_err(|e| self.problem(s, key, e)).ok())
            .collect()
    }

    /// A group given by name or number, as a gid.
    pub(super) fn group(&mut self, s: &Scope, key: &str, name: Option<&str>) -> Option<u32> {
        let name = name?;
        if let Ok(gid) = name.parse::<u32>() {
            return Some(gid);
        }
        match Grant::parse(&format!("group:{name}")) {
            Ok(Grant::Gid(gid)) => Some(gid),
            Ok(_) => None,
            Err(e) => {
                self.problem(s, key, e);
                None
            }
        }
    }

    /// A duration setting: `default` if absent; a value that does not parse
    /// or lies outside `range` is a problem.
    pub(super) fn duration(
        &mut self,
        s: &Scope,
        key: &str,
        raw: Option<&RawDuration>,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Duration {
        let value = match raw {
            None => return default,
            Some(RawDuration::Seconds(n)) => Duration::from_secs(*n),
            Some(RawDuration::Text(t)) => match humantime::parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.problem(
                        s,
                        key,
                        format!("`{t}` is not a duration ({e}); write e.g. 30, \"90s\" or \"5m\""),
                    );
                    return default;
                }
            },
        };
        if !range.contains(&value) {
            self.problem(
                s,
                key,
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end())
                ),
            );
        }
        value
    }

    /// A count setting: `default` if absent; outside `range` is a problem.
    pub(super) fn count(
        &mut self,
        s: &Scope,
        key: &str,
        raw: Option<usize>,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> usize {
        let Some(value) = raw else { return default };
        if !range.contains(&value) {
            self.problem(
                s,
                key,
                format!("must be between {} and {}", range.start(), range.end()),
            );
        }
        value
    }
}
