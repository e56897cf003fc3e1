//! Encryption at rest: sealing the tokens the store writes.
//!
//! A sealed value is the text `tk1:` followed by the standard base64 (RFC
//! 4648, padded) of a random 24-byte nonce and the XChaCha20-Poly1305
//! ciphertext with its 16-byte tag. The associated data binds the value to its
//! credential and column (`tk1\0`, the column name's length as 4 big-endian
//! bytes, the column name, the credential name), so a sealed value moved to
//! another row or column does not open. Values without the prefix are
//! plaintext, as written before encryption was turned on: they are read as
//! they are and sealed on their next write.
//!
//! The key is 32 bytes read from a file: exactly 32 raw bytes, or a text file
//! holding 64 hex digits or the base64 of 32 bytes (a trailing newline is
//! ignored). A key file anyone but its owner may read or write is refused,
//! unless it lies under `$CREDENTIALS_DIRECTORY`, which systemd protects.
//! Pure apart from reading the key file.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// What every sealed value starts with (format version 1).
pub(crate) const PREFIX: &str = "tk1:";

/// The systemd credential used as the key when none is configured.
pub(crate) const AUTO_CREDENTIAL: &str = "tokend-db-key";

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// A key file is a few dozen bytes; anything much larger is a mistake.
const MAX_KEY_FILE: u64 = 4096;

/// Errors loading a key, or opening a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file is missing or cannot be read.
    #[error("cannot read the database encryption key {path}: {reason}; check encryption_key_file or encryption_key_credential in [daemon] (and LoadCredential= or LoadCredentialEncrypted= in the unit)")]
    KeyUnreadable {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The key file holds something other than a 32-byte key.
    #[error("database encryption key {path} holds {found}: expected exactly 32 raw bytes, 64 hex digits, or the base64 of 32 bytes (a trailing newline is ignored); create one with `head -c 32 /dev/urandom > FILE`")]
    KeyFormat {
        /// The key file.
        path: PathBuf,
        /// What it holds instead (never the content).
        found: String,
    },
    /// The key file may be read or written by others.
    #[error("database encryption key {path} has mode {mode:04o}: only its owner may read or write it; run `chmod 600 {path}`, or pass it as a systemd credential (LoadCredentialEncrypted=)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A sealed value was found but no key is configured.
    #[error("encrypted, but no database encryption key is configured: configure the key it was sealed with (encryption_key_file or encryption_key_credential in [daemon], or the `tokend-db-key` systemd credential)")]
    NoKey,
    /// The AEAD refused the value: another key, or the value was altered or
    /// moved from another row.
    #[error("encrypted under a different key than the one configured (key {key_id}), or altered: configure the key it was sealed with; change keys only with `tokend rekey`")]
    WrongKey {
        /// Fingerprint of the configured key.
        key_id: String,
    },
    /// The value has the prefix but is not a well-formed sealed value.
    #[error("encrypted but malformed ({0}): the row was altered or truncated; restore a backup")]
    Malformed(&'static str),
}

/// A 256-bit database encryption key. Its `Debug` shows only a fingerprint,
/// and the key bytes are zeroed when it is dropped.
pub(crate) struct Key {
    cipher: XChaCha20Poly1305,
    id: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key from its 32 bytes.
    pub(crate) fn from_bytes(mut bytes: [u8; 32]) -> Key {
        let mut hash = Sha256::new();
        hash.update(b"tokend key id\0");
        hash.update(bytes);
        let id = hash.finalize()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let cipher = XChaCha20Poly1305::new(&bytes.into());
        wipe(&mut bytes);
        Key { cipher, id }
    }

    /// A fresh random key (tests, and nothing else: keys belong in files).
    #[cfg(test)]
    pub(crate) fn random() -> Key {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        Key::from_bytes(bytes)
    }

    /// Reads a key file, refusing one others may read or write unless it
    /// lies under `$CREDENTIALS_DIRECTORY`.
    pub(crate) fn load(path: &Path) -> Result<Key, SealError> {
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Key::load_from(path, creds.as_deref())
    }

    /// [`Key::load`] with the credentials directory given.
    pub(crate) fn load_from(path: &Path, credentials_dir: Option<&Path>) -> Result<Key, SealError> {
        let unreadable = |reason| SealError::KeyUnreadable {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        let mode = file.metadata().map_err(unreadable)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 && !credentials_dir.is_some_and(|dir| is_under(path, dir)) {
            return Err(SealError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut content = Vec::new();
        let read = (&mut file).take(MAX_KEY_FILE + 1).read_to_end(&mut content);
        let parsed = read.map_err(unreadable).and_then(|_| {
            parse_key(&content).map_err(|found| SealError::KeyFormat {
                path: path.to_path_buf(),
                found,
            })
        });
        wipe(&mut content);
        parsed.map(Key::from_bytes)
    }

    /// A short fingerprint of the key (not of the bytes themselves), for logs.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` as the `column` of credential `name`.
    pub(crate) fn seal(&self, plaintext: &str, column: &str, name: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let aad = associated_data(column, name);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(raw))
    }

    /// Opens a value sealed by [`Key::seal`] for the same column and name.
    pub(crate) fn open(&self, sealed: &str, column: &str, name: &str) -> Result<String, SealError> {
        let body = sealed
            .strip_prefix(PREFIX)
            .ok_or(SealError::Malformed("no tk1: prefix"))?;
        let raw = STANDARD
            .decode(body)
            .map_err(|_| SealError::Malformed("not base64"))?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed("too short"));
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        let aad = associated_data(column, name);
        let plain = self
            .cipher
            .decrypt(
                &XNonce::from(n),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::WrongKey {
                key_id: self.id.clone(),
            })?;
        String::from_utf8(plain).map_err(|_| SealError::Malformed("not UTF-8"))
    }
}

/// Whether a stored value is sealed (as opposed to plaintext from before
/// encryption was turned on).
pub(crate) fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// Seals `value` under `key`, or leaves it plaintext when there is no key.
pub(crate) fn seal(key: Option<&Key>, value: &str, column: &str, name: &str) -> String {
    match key {
        Some(k) => k.seal(value, column, name),
        None => value.to_string(),
    }
}

/// Opens a stored value: a sealed one with `key` (failing without one), a
/// plaintext one as it is.
pub(crate) fn open(
    key: Option<&Key>,
    stored: &str,
    column: &str,
    name: &str,
) -> Result<String, SealError> {
    if !is_sealed(stored) {
        return Ok(stored.to_string());
    }
    match key {
        Some(k) => k.open(stored, column, name),
        None => Err(SealError::NoKey),
    }
}

/// A key found for the daemon, and where.
#[derive(Debug)]
pub(crate) struct LoadedKey {
    /// The key.
    pub(crate) key: Key,
    /// The file it came from.
    pub(crate) path: PathBuf,
    /// True when found as `$CREDENTIALS_DIRECTORY/tokend-db-key` without
    /// being configured.
    pub(crate) automatic: bool,
}

/// The daemon's key: the configured file (which must then be usable), else
/// `$CREDENTIALS_DIRECTORY/tokend-db-key` if it exists, else none.
pub(crate) fn resolve(configured: Option<&Path>) -> Result<Option<LoadedKey>, SealError> {
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    resolve_in(configured, creds.as_deref())
}

/// [`resolve`] with the credentials directory given.
pub(crate) fn resolve_in(
    configured: Option<&Path>,
    credentials_dir: Option<&Path>,
) -> Result<Option<LoadedKey>, SealError> {
    let (path, automatic) = match (configured, credentials_dir) {
        (Some(path), _) => (path.to_path_buf(), false),
        (None, Some(dir)) if dir.join(AUTO_CREDENTIAL).exists() => {
            (dir.join(AUTO_CREDENTIAL), true)
        }
        (None, _) => return Ok(None),
    };
    let key = Key::load_from(&path, credentials_dir)?;
    Ok(Some(LoadedKey {
        key,
        path,
        automatic,
    }))
}

/// `tk1\0`, the column's length (4 bytes, big-endian), the column, the
/// credential name: unambiguous whatever the names hold.
fn associated_data(column: &str, name: &str) -> Vec<u8> {
    let len = u32::try_from(column.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    [
        b"tk1\0".as_slice(),
        &len,
        column.as_bytes(),
        name.as_bytes(),
    ]
    .concat()
}

/// Reads the key out of a key file's content, or says what it holds instead
/// (never quoting it).
fn parse_key(content: &[u8]) -> Result<[u8; 32], String> {
    let mut key = [0u8; 32];
    if content.len() as u64 > MAX_KEY_FILE {
        return Err(format!("more than {MAX_KEY_FILE} bytes"));
    }
    if content.len() == key.len() {
        key.copy_from_slice(content);
    } else {
        let mut decoded = decode_text_key(content)?;
        let n = decoded.len();
        if n == key.len() {
            key.copy_from_slice(&decoded);
        }
        wipe(&mut decoded);
        if n != key.len() {
            return Err(format!("the base64 of {n} bytes, not 32"));
        }
    }
    if key.iter().all(|b| *b == 0) {
        return Err("32 zero bytes, not a random key".into());
    }
    Ok(key)
}

/// Decodes a text key file: 64 hex digits or base64, one trailing newline
/// ignored.
fn decode_text_key(content: &[u8]) -> Result<Vec<u8>, String> {
    let Ok(text) = std::str::from_utf8(content) else {
        return Err(format!("{} bytes of binary data", content.len()));
    };
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err("nothing".into());
    }
    if text.bytes().all(|b| b.is_ascii_hexdigit()) {
        if text.len() != 64 {
            return Err(format!("{} hex digits, not 64", text.len()));
        }
        return (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| "invalid hex digits".to_string());
    }
    STANDARD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .map_err(|_| {
            format!(
                "{} bytes of text that are neither 64 hex digits nor base64",
                content.len()
            )
        })
}

/// Whether `path` lies under `dir`, comparing resolved paths where they
/// resolve (credentials directories are often reached through symlinks).
fn is_under(path: &Path, dir: &Path) -> bool {
    match (path.canonicalize(), dir.canonicalize()) {
        (Ok(p), Ok(d)) => p.starts_with(d),
        _ => path.starts_with(dir),
    }
}

/// Overwrites key material before it is freed (best effort).
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: a plain write through a valid, aligned &mut u8.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

#[cfg(test)]
mod tests;
