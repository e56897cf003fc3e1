//! Sealing round trips, refusals, and key files.

use super::*;
use std::os::unix::fs::OpenOptionsExt;

const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn key_bytes() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

fn write_key(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, content))
        .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn round_trip_is_versioned_random_and_not_plaintext() {
    let key = Key::random();
    let a = key.seal("rt-secret-value", "refresh_token", "mail");
    let b = key.seal("rt-secret-value", "refresh_token", "mail");
    assert!(a.starts_with("tk1:") && is_sealed(&a), "{a}");
    assert_ne!(a, b, "a fresh nonce per seal");
    assert!(!a.contains("rt-secret"));
    assert_eq!(
        key.open(&a, "refresh_token", "mail").unwrap(),
        "rt-secret-value"
    );
    assert_eq!(
        open(Some(&key), &b, "refresh_token", "mail").unwrap(),
        "rt-secret-value"
    );
    // 24-byte nonce + 15 bytes + 16-byte tag, base64.
    let raw = STANDARD.decode(&a[4..]).unwrap();
    assert_eq!(raw.len(), 24 + 15 + 16);
    assert_eq!(seal(None, "plain", "access_token", "mail"), "plain");
}

#[test]
fn wrong_key_is_refused() {
    let sealed = Key::random().seal("at", "access_token", "mail");
    let other = Key::random();
    let err = other.open(&sealed, "access_token", "mail").unwrap_err();
    assert!(matches!(err, SealError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("different key"), "{err}");
    assert!(err.to_string().contains(other.id()), "{err}");
    let err = open(None, &sealed, "access_token", "mail").unwrap_err();
    assert!(matches!(err, SealError::NoKey), "{err}");
    assert!(
        err.to_string().contains("no database encryption key"),
        "{err}"
    );
}

#[test]
fn values_cannot_move_between_rows_or_columns() {
    let key = Key::random();
    let sealed = key.seal("rt", "refresh_token", "mail");
    for (column, name) in [("access_token", "mail"), ("refresh_token", "backup")] {
        let err = key.open(&sealed, column, name).unwrap_err();
        assert!(matches!(err, SealError::WrongKey { .. }), "{column} {name}");
    }
    // No ambiguity where column and name meet.
    let sealed = key.seal("x", "a", "b\0c");
    assert!(key.open(&sealed, "a\0b", "c").is_err());
}

#[test]
fn tampered_or_truncated_values_are_refused() {
    let key = Key::random();
    let sealed = key.seal("access-token", "access_token", "mail");
    let mut raw = STANDARD.decode(&sealed[4..]).unwrap();
    for i in [0, 24, raw.len() - 1] {
        raw[i] ^= 1;
        let bad = format!("tk1:{}", STANDARD.encode(&raw));
        assert!(matches!(
            key.open(&bad, "access_token", "mail"),
            Err(SealError::WrongKey { .. })
        ));
        raw[i] ^= 1;
    }
    for (bad, why) in [
        ("tk1:!!!", "not base64"),
        ("tk1:AAAA", "too short"),
        ("tk1:", "too short"),
    ] {
        match key.open(bad, "access_token", "mail") {
            Err(SealError::Malformed(w)) => assert_eq!(w, why),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn plaintext_passes_through_and_is_recognised() {
    let key = Key::random();
    for plain in ["at-abc", "eyJhbGciOiJub25lIn0.e30.", "", "tk2:future"] {
        assert!(!is_sealed(plain));
        assert_eq!(open(Some(&key), plain, "access_token", "m").unwrap(), plain);
        assert_eq!(open(None, plain, "access_token", "m").unwrap(), plain);
    }
}

#[test]
fn debug_shows_only_a_fingerprint() {
    let key = Key::from_bytes(key_bytes());
    let debug = format!("{key:?}");
    assert_eq!(debug, format!("Key {{ id: {:?}, .. }}", key.id()));
    assert_eq!(key.id().len(), 8);
    assert!(!debug.contains("0001020304"));
    let same = Key::from_bytes(key_bytes());
    assert_eq!(key.id(), same.id());
    assert_ne!(key.id(), Key::random().id());
}

#[test]
fn key_files_raw_hex_and_base64_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let b64 = STANDARD.encode(key_bytes());
    let files = [
        write_key(dir.path(), "raw", &key_bytes(), 0o600),
        write_key(dir.path(), "hex", HEX.as_bytes(), 0o600),
        write_key(dir.path(), "hex-nl", format!("{HEX}\n").as_bytes(), 0o400),
        write_key(
            dir.path(),
            "HEX-crlf",
            format!("{}\r\n", HEX.to_uppercase()).as_bytes(),
            0o600,
        ),
        write_key(dir.path(), "b64", format!("{b64}\n").as_bytes(), 0o600),
        write_key(
            dir.path(),
            "b64-nopad",
            b64.trim_end_matches('=').as_bytes(),
            0o600,
        ),
    ];
    let expected = Key::from_bytes(key_bytes());
    let sealed = expected.seal("v", "c", "n");
    for f in &files {
        let key = Key::load_from(f, None).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(key.id(), expected.id(), "{}", f.display());
        assert_eq!(key.open(&sealed, "c", "n").unwrap(), "v");
    }
}

#[test]
fn malformed_key_files_are_refused_without_quoting_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 7] = [
        ("empty", vec![], "holds nothing"),
        ("short", vec![0xffu8; 31], "31 bytes of binary data"),
        (
            "raw-nl",
            [key_bytes().as_slice(), b"\n"].concat(),
            "33 bytes of text",
        ),
        (
            "hex63",
            HEX.as_bytes()[..63].to_vec(),
            "63 hex digits, not 64",
        ),
        (
            "b64-16",
            STANDARD.encode([9u8; 16]).into_bytes(),
            "the base64 of 16 bytes, not 32",
        ),
        ("zeros", vec![0u8; 32], "32 zero bytes"),
        ("two-lines", format!("{HEX}\n\n").into_bytes(), "neither"),
    ];
    for (name, content, expect) in cases {
        let path = write_key(dir.path(), name, &content, 0o600);
        let err = Key::load_from(&path, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SealError::KeyFormat { .. }), "{name}: {msg}");
        assert!(msg.contains(expect), "{name}: {msg}");
        assert!(msg.contains("head -c 32 /dev/urandom"), "{msg}");
        assert!(!msg.contains(&HEX[..16]), "{msg}");
    }
    let big = write_key(dir.path(), "big", &vec![b'a'; 10_000], 0o600);
    let err = Key::load_from(&big, None).unwrap_err();
    assert!(err.to_string().contains("more than 4096 bytes"), "{err}");
    let missing = dir.path().join("missing");
    let err = Key::load_from(&missing, None).unwrap_err();
    assert!(matches!(err, SealError::KeyUnreadable { .. }), "{err}");
    assert!(err.to_string().contains("encryption_key_file"), "{err}");
}

#[test]
fn key_files_open_to_others_are_refused_outside_the_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    for (name, mode) in [("g-read", 0o640), ("o-read", 0o604), ("g-write", 0o620)] {
        let path = write_key(dir.path(), name, HEX.as_bytes(), mode);
        let err = Key::load_from(&path, None).unwrap_err();
        assert!(matches!(err, SealError::KeyPermissions { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        // Elsewhere is not good enough...
        let other = tempfile::tempdir().unwrap();
        assert!(Key::load_from(&path, Some(other.path())).is_err());
        // ...but systemd's credentials directory is.
        Key::load_from(&path, Some(dir.path())).unwrap();
    }
}

#[test]
fn resolution_prefers_the_configured_file_then_the_credential() {
    let creds = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let configured = write_key(elsewhere.path(), "k", HEX.as_bytes(), 0o600);

    assert!(resolve_in(None, None).unwrap().is_none());
    assert!(resolve_in(None, Some(creds.path())).unwrap().is_none());

    let got = resolve_in(Some(&configured), None).unwrap().unwrap();
    assert!(!got.automatic);
    assert_eq!(got.path, configured);

    // systemd makes credentials 0440 or so: fine there.
    let auto = write_key(creds.path(), AUTO_CREDENTIAL, &[5u8; 32], 0o440);
    let got = resolve_in(None, Some(creds.path())).unwrap().unwrap();
    assert!(got.automatic);
    assert_eq!(got.path, auto);
    assert_eq!(got.key.id(), Key::from_bytes([5u8; 32]).id());

    // A configured file wins over the credential, and must exist.
    let got = resolve_in(Some(&configured), Some(creds.path()))
        .unwrap()
        .unwrap();
    assert_eq!(got.path, configured);
    let missing = elsewhere.path().join("missing");
    assert!(matches!(
        resolve_in(Some(&missing), Some(creds.path())),
        Err(SealError::KeyUnreadable { .. })
    ));
}
