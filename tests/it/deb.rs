//! The .deb as built by `debian/build-deb`: its files, and a `Depends` that
//! covers what the packaged binary needs to start.
//!
//! What a binary needs is in its ELF dynamic section: the libraries it names
//! (`DT_NEEDED`) and, for each, the symbol versions it requires
//! (`DT_VERNEED`), including bare ones such as `GLIBC_ABI_DT_RELR` that no
//! imported symbol carries. The installed packages' symbols files
//! (`/var/lib/dpkg/info/*.symbols`) say which package ships each library and
//! from which package version each of its symbol versions exists. The
//! package must depend on each of those packages at that version or later.
//! Installing it with `dpkg -i` and running the daemon from it is the
//! system test's job (`system.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::deb;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (Debian: binutils, dpkg): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `dpkg-deb -f` of one control field.
fn field(deb: &Path, name: &str) -> String {
    run("dpkg-deb", &["-f", deb.to_str().unwrap(), name])
        .trim()
        .to_string()
}

/// The libraries a binary needs and, per library, the versions it requires
/// of it, from `readelf --dynamic --version-info`.
fn needs(binary: &Path) -> BTreeMap<String, Vec<String>> {
    let path = binary.to_str().unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in run("readelf", &["--wide", "--dynamic", path]).lines() {
        if let Some(rest) = line.split("Shared library: [").nth(1) {
            out.entry(rest.trim_end_matches(']').to_string())
                .or_default();
        }
    }
    let info = run("readelf", &["--wide", "--version-info", path]);
    let mut file = None;
    let mut in_needs = false;
    for line in info.lines() {
        if line.starts_with("Version needs section") {
            in_needs = true;
            continue;
        }
        if line.starts_with("Version ") && !line.starts_with("Version needs") {
            in_needs = false;
        }
        if !in_needs {
            continue;
        }
        if let Some(f) = line.split("File: ").nth(1) {
            file = f.split_whitespace().next().map(str::to_string);
        } else if let (Some(f), Some(name)) = (&file, line.split("Name: ").nth(1)) {
            let name = name.split_whitespace().next().unwrap().to_string();
            out.entry(f.clone()).or_default().push(name);
        }
    }
    out
}

/// From the symbols files: library soname -> (package, version -> minimum
/// package version).
type Symbols = BTreeMap<String, (String, BTreeMap<String, String>)>;

fn symbols() -> Symbols {
    let mut out = Symbols::new();
    let dir = Path::new("/var/lib/dpkg/info");
    for entry in std::fs::read_dir(dir).expect("/var/lib/dpkg/info") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "symbols") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                // "libc.so.6 libc6 #MINVER#"
                let mut words = line.split_whitespace();
                let (Some(soname), Some(package)) = (words.next(), words.next()) else {
                    continue;
                };
                out.entry(soname.to_string())
                    .or_insert_with(|| (package.to_string(), BTreeMap::new()));
                current = Some(soname.to_string());
            } else if let (Some(lib), Some(rest)) = (&current, line.strip_prefix(' ')) {
                // " GLIBC_2.34@GLIBC_2.34 2.34": the version node itself.
                let mut words = rest.split_whitespace();
                let (Some(symbol), Some(min)) = (words.next(), words.next()) else {
                    continue;
                };
                if let Some((name, version)) = symbol.split_once('@') {
                    if name == version {
                        if let Some((_, map)) = out.get_mut(lib) {
                            map.insert(name.to_string(), min.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

fn version_ge(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "ge", b])
        .status()
        .expect("dpkg")
        .success()
}

/// Package -> the lowest version of it the binary can run with.
fn required(needs: &BTreeMap<String, Vec<String>>, symbols: &Symbols) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (lib, versions) in needs {
        let (package, map) = symbols
            .get(lib)
            .unwrap_or_else(|| panic!("no installed symbols file names {lib}"));
        let floor = out
            .entry(package.clone())
            .or_insert_with(|| "0".to_string());
        for v in versions {
            let min = map.get(v).unwrap_or_else(|| {
                panic!("{package}'s symbols file has no {v} (needed from {lib})")
            });
            if !version_ge(floor, min) {
                *floor = min.clone();
            }
        }
    }
    out
}

/// The unmet requirements: each package needs a clause of its own
/// (`pkg (>= v)`, no alternatives) with a version at least the required one.
fn unmet(depends: &str, required: &BTreeMap<String, String>) -> Vec<String> {
    let clauses: Vec<(String, Option<String>)> = depends
        .split(',')
        .map(str::trim)
        .filter(|c| !c.contains('|'))
        .map(|c| match c.split_once('(') {
            Some((name, rest)) => {
                let rest = rest.trim_end_matches(')').trim();
                let v = rest.strip_prefix(">=").map(|v| v.trim().to_string());
                (name.trim().to_string(), v)
            }
            None => (c.to_string(), None),
        })
        .collect();
    required
        .iter()
        .filter(|(pkg, min)| {
            !clauses
                .iter()
                .any(|(name, v)| name == *pkg && v.as_deref().is_some_and(|v| version_ge(v, min)))
        })
        .map(|(pkg, min)| format!("{pkg} (>= {min})"))
        .collect()
}

#[test]
fn depends_covers_what_the_packaged_binary_needs() {
    let deb = deb::package();
    let dir = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &["-x", deb.to_str().unwrap(), dir.path().to_str().unwrap()],
    );
    let binary = dir.path().join("usr/bin/tokend");
    let needs = needs(&binary);
    assert!(needs.contains_key("libc.so.6"), "{needs:?}");
    let required = required(&needs, &symbols());
    let depends = field(&deb, "Depends");
    eprintln!("the binary needs {required:?}; Depends: {depends}");
    assert_eq!(
        unmet(&depends, &required),
        Vec::<String>::new(),
        "Depends: {depends}"
    );
    // And no shared library the binary does not load: each package in
    // Depends that ships libraries (has a symbols file) is one it needs.
    let symbols = symbols();
    let library_packages: Vec<&str> = symbols.values().map(|(p, _)| p.as_str()).collect();
    for clause in depends.split(',') {
        let name = clause.split(['(', '|']).next().unwrap_or("").trim();
        if library_packages.contains(&name) {
            assert!(
                required.contains_key(name),
                "Depends names {name}, whose libraries the binary does not load: {depends}"
            );
        }
    }

    // The check itself: what dpkg-shlibdeps alone derives from the imported
    // symbols (glibc 2.34 for this binary's newest symbol) is not enough
    // when the binary carries packed relative relocations.
    if needs.values().flatten().any(|v| v == "GLIBC_ABI_DT_RELR") {
        assert_eq!(required.get("libc6").map(String::as_str), Some("2.36"));
        assert_eq!(
            unmet("libc6 (>= 2.34)", &required),
            vec!["libc6 (>= 2.36)".to_string()]
        );
    }
    assert!(!unmet("ca-certificates", &required).is_empty());
}

#[test]
fn the_package_holds_the_daemon_its_units_completions_and_manual() {
    let deb = deb::package();
    assert_eq!(field(&deb, "Package"), "tokend");
    assert_eq!(
        field(&deb, "Version"),
        format!("{}-1", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(field(&deb, "Architecture"), "amd64");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    run(
        "dpkg-deb",
        &["-x", deb.to_str().unwrap(), root.to_str().unwrap()],
    );
    let control = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &[
            "-e",
            deb.to_str().unwrap(),
            control.path().to_str().unwrap(),
        ],
    );
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/tokend/config.toml");

    // The units, sysusers and tmpfiles entries are the repository's.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (from, to) in [
        (
            "systemd/tokend.service",
            "usr/lib/systemd/system/tokend.service",
        ),
        (
            "systemd/tokend.socket",
            "usr/lib/systemd/system/tokend.socket",
        ),
        ("systemd/tokend.sysusers", "usr/lib/sysusers.d/tokend.conf"),
        ("systemd/tokend.tmpfile", "usr/lib/tmpfiles.d/tokend.conf"),
        ("config.example.toml", "etc/tokend/config.toml"),
    ] {
        assert_eq!(
            std::fs::read(repo.join(from)).unwrap(),
            std::fs::read(root.join(to)).unwrap_or_default(),
            "{to}"
        );
    }

    // The packaged binary runs, and what it generates is what was packaged.
    let binary = root.join("usr/bin/tokend");
    let binary = binary.to_str().unwrap();
    assert_eq!(
        run(binary, &["--version"]).trim(),
        format!("tokend {}", env!("CARGO_PKG_VERSION"))
    );
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/tokend"),
        ("zsh", "usr/share/zsh/vendor-completions/_tokend"),
        ("fish", "usr/share/fish/vendor_completions.d/tokend.fish"),
    ] {
        assert_eq!(
            run(binary, &["completions", shell]),
            std::fs::read_to_string(root.join(path)).unwrap_or_default(),
            "{path}"
        );
    }
    let pages = tempfile::tempdir().unwrap();
    run(binary, &["man", "--out", pages.path().to_str().unwrap()]);
    let mut generated: Vec<String> = std::fs::read_dir(pages.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    generated.sort();
    assert!(generated.len() > 10 && generated.contains(&"tokend-get.1".to_string()));
    for page in &generated {
        let packed = root.join("usr/share/man/man1").join(format!("{page}.gz"));
        let unpacked = run("zcat", &[packed.to_str().unwrap()]);
        assert_eq!(
            unpacked,
            std::fs::read_to_string(pages.path().join(page)).unwrap(),
            "{page}"
        );
    }
    let mut packed: Vec<String> = std::fs::read_dir(root.join("usr/share/man/man1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    packed.sort();
    let expected: Vec<String> = generated.iter().map(|p| format!("{p}.gz")).collect();
    assert_eq!(packed, expected);
}
