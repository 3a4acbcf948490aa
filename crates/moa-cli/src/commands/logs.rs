//! `moa logs`: past runs of `ask` and `chat`, newest first; one shown whole.

use std::path::Path;

use anyhow::Context;

use crate::cli::LogsCommand;
use crate::runlog;

/// The first line of `text`, cut to `max` characters.
fn headline(text: &str, max: usize) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut cut: String = line.chars().take(max).collect();
    if line.chars().count() > max || text.trim().lines().count() > 1 {
        cut.push('…');
    }
    cut
}

/// Runs `moa logs`.
pub fn run(_config: Option<&Path>, command: Option<LogsCommand>) -> anyhow::Result<()> {
    let dir = runlog::dir().context("this system has no user data directory for run logs")?;
    let command = command.unwrap_or(LogsCommand::List {
        limit: 20,
        json: false,
    });
    match command {
        LogsCommand::Path => println!("{}", dir.display()),
        LogsCommand::List { limit, json } => {
            let paths = runlog::list(&dir)?;
            if paths.is_empty() && !json {
                crate::ui::note!("No runs yet (they are kept in {}).", dir.display());
                return Ok(());
            }
            if !json {
                println!(
                    "{:<22} {:<19} {:<4} {:>5} {:>9}  PROMPT",
                    "ID", "STARTED (UTC)", "KIND", "TURNS", "COST"
                );
            }
            for path in paths.iter().take(limit) {
                // A file that cannot be read is named, not fatal: the rest still list.
                let run = match runlog::read(path) {
                    Ok(run) => run,
                    Err(e) => {
                        crate::ui::note!("moa: skipping {}: {e:#}", path.display());
                        continue;
                    }
                };
                let first = run.turns.first().map_or("", |t| t.user.as_str());
                if json {
                    let line = serde_json::json!({
                        "id": run.header.id,
                        "kind": run.header.about.kind,
                        "started": run.header.started,
                        "preset": run.header.about.preset,
                        "turns": run.turns.len(),
                        "cost": run.cost(),
                        "prompt": first,
                    });
                    println!("{line}");
                    continue;
                }
                let cost = run.cost().map_or("-".into(), |c| format!("${c:.4}"));
                println!(
                    "{:<22} {:<19} {:<4} {:>5} {:>9}  {}",
                    run.header.id,
                    runlog::utc(run.header.started),
                    run.header.about.kind.as_str(),
                    run.turns.len(),
                    cost,
                    headline(first, 60)
                );
            }
        }
        LogsCommand::Show { id, json } => {
            let (_, run) = runlog::find(&dir, &id, None)?;
            if json {
                let body = serde_json::json!({ "header": run.header, "turns": run.turns });
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            println!(
                "{} · {} · preset {} · started {} UTC{}",
                run.header.id,
                run.header.about.kind.as_str(),
                run.header.about.preset,
                runlog::utc(run.header.started),
                run.cost().map_or(String::new(), |c| format!(" · ${c:.4}"))
            );
            if let Some(system) = &run.header.about.system {
                println!("\nsystem: {system}");
            }
            for turn in &run.turns {
                println!("\n> {}\n\n{}", turn.user.trim_end(), turn.answer.trim_end());
            }
        }
    }
    Ok(())
}
