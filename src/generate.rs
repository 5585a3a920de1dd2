//! The man pages and shell completion scripts, generated from the clap
//! definitions of [`Cli`] (so they never drift from `--help`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use thiserror::Error;

use crate::cli::Cli;

/// Errors from writing a man page or a completion script.
#[derive(Debug, Error)]
pub enum GenerateError {
    /// Standard output could not be written.
    #[error("cannot write to standard output")]
    Stdout(#[source] io::Error),
    /// A page could not be written into `--dir`.
    #[error("cannot write man pages into {0}: check that the directory exists and is writable")]
    Dir(PathBuf, #[source] io::Error),
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<(), GenerateError> {
    let mut cmd = Cli::command();
    // clap_complete writes with write_all and panics on failure: render into
    // memory first, so a closed pipe is an error, not a panic.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "vflaunch", &mut script);
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(GenerateError::Stdout)
}

/// Writes the vflaunch(1) page to `out`.
pub fn man_page(out: &mut dyn Write) -> Result<(), GenerateError> {
    // As man_pages_to: `vflaunch help` has no page of its own.
    clap_mangen::Man::new(Cli::command().disable_help_subcommand(true))
        .render(out)
        .and_then(|()| out.flush())
        .map_err(GenerateError::Stdout)
}

/// Writes vflaunch.1 and one page per subcommand (vflaunch-run.1, ...) into `dir`.
pub fn man_pages_to(dir: &Path) -> Result<(), GenerateError> {
    clap_mangen::generate_to(Cli::command(), dir).map_err(|e| GenerateError::Dir(dir.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_completion_names_every_run_flag() {
        let mut out = Vec::new();
        completions(clap_complete::Shell::Bash, &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("complete -F _vflaunch"), "{script}");
        for flag in [
            "--device",
            "--kernel",
            "--serial",
            "--log-format",
            "--api-socket",
        ] {
            assert!(script.contains(flag), "{flag} missing");
        }
    }

    #[test]
    fn man_page_has_the_sections_and_subcommands() {
        let mut out = Vec::new();
        man_page(&mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.starts_with(".ie"), "{}", &page[..80.min(page.len())]);
        for needle in [
            ".TH vflaunch 1",
            ".SH SYNOPSIS",
            ".SH SUBCOMMANDS",
            "vflaunch\\-run",
        ] {
            assert!(page.contains(needle), "{needle} missing");
        }
    }

    #[test]
    fn man_pages_to_writes_one_page_per_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        man_pages_to(dir.path()).unwrap();
        for page in [
            "vflaunch.1",
            "vflaunch-run.1",
            "vflaunch-check.1",
            "vflaunch-ping.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(text.contains(".SH OPTIONS"), "{page}: {text}");
        }
        let err = man_pages_to(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
