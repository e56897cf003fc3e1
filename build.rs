//! Link options for the `tokend` binary.
//!
//! On Linux the binary's relative relocations are packed (`DT_RELR`,
//! `-z pack-relative-relocs`): about 12,000 of them shrink from 300 KB of
//! `.rela.dyn` to 3 KB, which the dynamic loader no longer pages in and walks
//! at every start. Every `tokend get` is a fresh process, so this is part of
//! its latency (BENCHMARKS.md). The binary stays position-independent. It then
//! needs glibc 2.36 or later, where it otherwise needs 2.34.
//!
//! It also tells cargo to rebuild when a migration changes, since the store
//! embeds them at compile time.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=tokend=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
    // `sqlx::migrate!` embeds the files under `migrations/`; without this a
    // new or edited migration would not rebuild the crate that embeds them.
    println!("cargo:rerun-if-changed=migrations");
}
