//! The stored copies of providers' metadata documents (`discovery` table):
//! the daemon writes each document it fetches and reads the copy back at
//! start-up when the issuer cannot be reached; `tokend check-config` reads
//! them read-only ([`read_metadata_offline`]) beside a running daemon.

use super::backend::Row;
use super::columns::Bound;
use super::{postgres, sqlite, Location, Store, StoreError};

/// A metadata document as last fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMetadata {
    /// The provider's issuer when it was fetched.
    pub(crate) issuer: String,
    /// The document as served.
    pub(crate) document: String,
    /// When it was fetched (Unix ms).
    pub(crate) fetched_at: i64,
}

const SELECT: &str = "SELECT issuer, document, fetched_at FROM discovery WHERE provider = $1";

fn decode(row: &Row) -> Result<StoredMetadata, sqlx::Error> {
    Ok(StoredMetadata {
        issuer: row.get_text("issuer")?,
        document: row.get_text("document")?,
        fetched_at: row.get_int("fetched_at")?,
    })
}

impl Store {
    /// Keeps `document`, fetched at `at`, as `provider`'s metadata.
    pub(crate) async fn save_metadata(
        &self,
        provider: &str,
        issuer: &str,
        document: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.pool
            .execute(
                "INSERT INTO discovery (provider, issuer, document, fetched_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (provider) DO UPDATE SET issuer = excluded.issuer, \
                 document = excluded.document, fetched_at = excluded.fetched_at",
                vec![
                    Bound::text(provider),
                    Bound::text(issuer),
                    Bound::text(document),
                    Bound::Int(Some(at)),
                ],
            )
            .await?;
        Ok(())
    }

    /// The metadata last kept for `provider`, if any.
    pub(crate) async fn load_metadata(
        &self,
        provider: &str,
    ) -> Result<Option<StoredMetadata>, StoreError> {
        let row = self
            .pool
            .fetch_optional(SELECT, vec![Bound::text(provider)])
            .await?;
        Ok(row.as_ref().map(decode).transpose()?)
    }
}

/// The metadata kept for `provider` in the database at `location`, read
/// through a read-only connection that takes no lock, so a running daemon is
/// not disturbed. `Ok(None)` if the file, the table or the row is absent.
pub(crate) async fn read_metadata_offline(
    location: &Location,
    provider: &str,
) -> Result<Option<StoredMetadata>, StoreError> {
    let path = match location {
        Location::File(path) => path,
        Location::Postgres(settings) => {
            let row = postgres::read_one(settings, SELECT, provider).await;
            return match row {
                Ok(row) => Ok(row.map(Row::Postgres).as_ref().map(decode).transpose()?),
                // A database from before discovery, or not yet migrated.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
    };
    if !path.exists() {
        return Ok(None);
    }
    let mut conn = sqlite::open_read_only(path).await?;
    let row = sqlx::query(SELECT)
        .bind(provider)
        .fetch_optional(&mut conn)
        .await;
    sqlite::close_conn(conn).await;
    match row {
        Ok(row) => Ok(row.map(Row::Sqlite).as_ref().map(decode).transpose()?),
        // A database from before discovery has no such table.
        Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => Ok(None),
        Err(e) => Err(e.into()),
    }
}
