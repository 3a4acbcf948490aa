//! `moa config trust | untrust`: which project config files may decide where keys go.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::ConfigCommand;
use crate::config::trust;

pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    let (path, trusting) = match command {
        ConfigCommand::Trust { path } => (path, true),
        ConfigCommand::Untrust { path } => (path, false),
    };
    let path = path.unwrap_or_else(|| PathBuf::from("moa.toml"));
    if !path.is_file() {
        anyhow::bail!("config file {} does not exist", path.display());
    }
    let store = trust::store_path().context("no data directory for moa's trust list")?;
    trust::set_trusted(&store, &path, trusting)
        .with_context(|| format!("cannot update the trust list {}", store.display()))?;
    let verb = if trusting {
        "trusted"
    } else {
        "no longer trusted"
    };
    eprintln!(
        "moa: {} is {verb} (as it is now; recorded in {})",
        path.display(),
        store.display()
    );
    Ok(())
}
