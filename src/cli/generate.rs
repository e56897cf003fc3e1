//! `tokend completions SHELL` and `tokend man`: shell completions and a
//! roff manual, both generated from the clap definition so they never drift
//! from the real arguments. Neither needs a socket, a configuration or a
//! runtime, so packaging can run them at build time.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::{emit, Cli};

/// The shells `tokend completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => Shell::Bash,
            CompletionShell::Zsh => Shell::Zsh,
            CompletionShell::Fish => Shell::Fish,
        }
    }
}

/// `tokend completions SHELL`: the script on stdout.
pub(crate) fn completions(shell: CompletionShell) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(Shell::from(shell), &mut Cli::command(), "tokend", &mut out);
    emit(&String::from_utf8_lossy(&out))?;
    Ok(ExitCode::SUCCESS)
}

/// `tokend man`: one page for the whole command tree on stdout, or with
/// `out` one page per command (`tokend.1`, `tokend-get.1`...) in that
/// directory, as packages install them.
pub(crate) fn man(out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    match out {
        None => {
            // Built, so that subcommands carry their full names.
            cmd.build();
            let mut page = Vec::new();
            whole_page(&cmd, &mut page).context("cannot render the manual")?;
            emit(&String::from_utf8_lossy(&page))?;
        }
        Some(dir) => {
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write manual pages to {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The top page, then each subcommand's synopsis, description and
/// options as subsections of a section of its own, so that one `man -l`
/// shows every command.
fn whole_page(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        // After `build`, a subcommand's bin name is `tokend NAME`, which
        // its synopsis shows.
        writeln!(out, ".SH \"TOKEND {}\"", sub.get_name().to_uppercase())?;
        let man = clap_mangen::Man::new(sub.clone());
        let mut part = Vec::new();
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        man.render_options_section(&mut part)?;
        // Its sections become subsections of the command's own.
        for line in String::from_utf8_lossy(&part).lines() {
            match line.strip_prefix(".SH ") {
                Some(title) => writeln!(out, ".SS {title}")?,
                None => writeln!(out, "{line}")?,
            }
        }
    }
    Ok(())
}
