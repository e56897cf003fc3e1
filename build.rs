//! Link options for the `tokend` binary.
//!
//! On Linux the binary's relative relocations are packed (`DT_RELR`,
//! `-z pack-relative-relocs`): about 12,000 of them shrink from 300 KB of
//! `.rela.dyn` to 3 KB, which the dynamic loader no longer pages in and walks
//! at every start. Every `tokend get` is a fresh process, so this is part of
//! its latency (BENCHMARKS.md). The binary stays position-independent. It then
//! needs glibc 2.36 or later, where it otherwise needs 2.34.
//!
//! The unwinder is linked in (`libgcc_eh.a`) rather than loaded from
//! `libgcc_s.so.1`: one shared library fewer for the dynamic loader to open,
//! map, relocate and version-check at every start, and no run of its
//! constructor, whose CPU identification traps to the hypervisor on a VM.
//! The binary then needs only libc and libm. Panics unwind as before.
//!
//! It also tells cargo to rebuild when a migration changes, since the store
//! embeds them at compile time.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=tokend=-Wl,-z,pack-relative-relocs");
        // A library the package links, so it comes before std's `-lgcc_s`
        // on the link line and the unwinder's symbols resolve to it; the
        // linker then drops libgcc_s (`--as-needed`). Not bundled into the
        // rlib: the C compiler's own copy is linked where it is used.
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
    println!("cargo:rerun-if-changed=build.rs");
    // `sqlx::migrate!` embeds the files under `migrations/`; without this a
    // new or edited migration would not rebuild the crate that embeds them.
    println!("cargo:rerun-if-changed=migrations");
}
