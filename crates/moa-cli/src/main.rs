//! The `moa` binary: parses the command line, runs a subcommand, maps errors to exit codes.

mod cli;
mod commands;
mod config;
mod env;
mod exit;
mod files;
mod local;
mod render;
mod runlog;
mod ui;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ui::init(cli.quiet, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("moa: cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUN_FAILED);
        }
    };
    let config = cli.config.as_deref();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Ask(args) => commands::ask::run(config, *args).await,
            Command::Chat(args) => commands::chat::run(config, *args).await,
            Command::Serve(args) => commands::serve::run(config, args).await,
            Command::Bench(args) => commands::bench::run(config, args).await,
            Command::Eval { command } => commands::eval::run(config, command).await,
            Command::Presets(args) => commands::presets::run(config, args),
            Command::Providers { json } => commands::providers::run(config, json),
            Command::Models { command } => local::models(command),
            Command::Config { command } => commands::config::run(config, command),
            Command::Logs { command } => commands::logs::run(config, command),
            Command::Completions { shell } => commands::shell::completions(shell),
            Command::Man { dir } => commands::shell::man(dir.as_deref()),
        }
    });
    // Leave at once: do not wait for upstream connections a dropped run left behind.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => match exit::code_for(&error) {
            None => ExitCode::from(exit::OK),
            Some(code) => {
                ui::error(&format!("{error:#}"));
                ExitCode::from(code)
            }
        },
    }
}
