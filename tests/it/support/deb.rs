//! The .deb of this build: `debian/build-deb --profile dev --no-build`
//! packages the very binary the other tests run, with cargo-deb, once per
//! test run. Its tests (`deb.rs`) and the system test (`system.rs`, which
//! installs it with `dpkg -i`) share it.
//!
//! cargo-deb comes from `.ci/run` (`cargo install --locked cargo-deb`). When
//! it is missing, the first caller installs the pinned version into this
//! build's target directory, so that `cargo test` alone is enough.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The cargo-deb this project is tested with.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

const BUILD_DEB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/debian/build-deb");

/// The package, built on first use; a failure is reported to every caller.
pub fn package() -> PathBuf {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DEB.get_or_init(build) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// `PATH` with a locally installed cargo-deb first, installing it if
/// neither `cargo deb` nor the local copy works.
fn path_with_cargo_deb() -> Result<std::ffi::OsString, String> {
    let root = tmp().join("cargo-deb");
    let mut dirs = vec![root.join("bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(dirs).map_err(|e| e.to_string())?;
    let works = |path: &std::ffi::OsStr| {
        Command::new("cargo")
            .args(["deb", "--version"])
            .env("PATH", path)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&path) {
        return Ok(path);
    }
    eprintln!(
        "cargo-deb not found: installing {CARGO_DEB_VERSION} into {}",
        root.display()
    );
    let out = Command::new("cargo")
        .args([
            "install",
            "--locked",
            "--quiet",
            "--version",
            CARGO_DEB_VERSION,
            "cargo-deb",
            "--root",
        ])
        .arg(&root)
        .output()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if !out.status.success() || !works(&path) {
        return Err(format!(
            "cannot install cargo-deb (`cargo install --locked cargo-deb`): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(path)
}

fn build() -> Result<PathBuf, String> {
    let path = path_with_cargo_deb()?;
    let out_dir = tmp().join(format!("deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let binary = Path::new(env!("CARGO_BIN_EXE_tokend"));
    // build-deb finds the dev build through CARGO_TARGET_DIR: the directory
    // holding this test's binary's profile directory.
    let target_dir = binary
        .parent()
        .and_then(Path::parent)
        .ok_or("the test binary has no target directory")?;
    let out = Command::new(BUILD_DEB)
        .args(["--profile", "dev", "--no-build", "--fast", "--quiet", "-o"])
        .arg(&out_dir)
        .env("PATH", &path)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .map_err(|e| format!("cannot run {BUILD_DEB}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "debian/build-deb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    match debs.len() {
        1 => Ok(debs.remove(0)),
        n => Err(format!(
            "debian/build-deb made {n} .deb files in {}",
            out_dir.display()
        )),
    }
}
