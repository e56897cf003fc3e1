//! The `tokend` binary: all logic lives in the library; see `tokend --help`.
//!
//! It defines C's `main` itself rather than a Rust `main`, so std's runtime
//! set-up does not run before it: `tokend::cli::start` does what of it
//! tokend needs, at less cost to every short `tokend get` (its module says
//! what and why).

// Not for `cargo test`, whose harness brings its own `main`.
#![cfg_attr(not(test), no_main)]

/// Called by the C runtime with the arguments, which std reads on its own.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> ! {
    tokend::cli::start()
}
