//! `moa completions SHELL` and `moa man`: generated from the command definition itself, so they
//! never fall behind a flag.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use clap::CommandFactory;

use crate::cli::Cli;

/// Prints the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    // Written whole afterwards: clap_complete panics on a write error, such as a closed pipe.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "moa", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}

/// Prints the man page moa(1) as roff, or with `dir` writes it and one page per subcommand
/// (moa-ask.1, moa-eval-generate.1, ...; cargo and git name theirs so) into `dir`.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let command = Cli::command();
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(command).render(&mut out)?;
        return Ok(out.flush()?);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = 0;
    write_pages(dir, command, "moa", &mut written)?;
    crate::ui::note!("moa: wrote {written} man pages to {}", dir.display());
    Ok(())
}

/// Writes `command`'s page as `name.1`, then its subcommands' as `name-sub.1`.
fn write_pages(
    dir: &Path,
    command: clap::Command,
    name: &str,
    written: &mut usize,
) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    let subcommands: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    clap_mangen::Man::new(
        command
            .name(name.to_string())
            .bin_name(name.replace('-', " ")),
    )
    .render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    *written += 1;
    for sub in subcommands {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_pages(dir, sub, &sub_name, written)?;
    }
    Ok(())
}
