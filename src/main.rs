//! The `tokend` binary: all logic lives in the library; see `tokend --help`.

fn main() -> std::process::ExitCode {
    tokend::cli::main()
}
