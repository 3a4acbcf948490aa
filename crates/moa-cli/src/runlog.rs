//! Past runs of `moa ask` and `moa chat`, kept for `moa logs` and `moa chat --continue`.
//!
//! One JSON Lines file per run in the user data dir (`~/.local/share/moa/runs/ID.jsonl` on
//! Linux): a header line, then one line per finished turn with its whole trace. Plain files
//! rather than an embedded database (SQLite via rusqlite, redb): a run is written by one process
//! and only ever appended to, lookups are by id or recency (the file name sorts by time), a
//! crash loses at most the turn being written, the files are readable with `jq`, and the build
//! gains no C library or storage engine. Files are private to the user (0600 in a 0700 dir),
//! never written through a symlink, and read back with bounded memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::env;

/// The most of one log file read back (a conversation is far smaller; a file grown by other
/// means must not fill memory).
const MAX_FILE: u64 = 64 << 20;

/// What a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Ask,
    Chat,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ask => "ask",
            Kind::Chat => "chat",
        }
    }
}

/// The first line of a run's file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub id: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
    #[serde(flatten)]
    pub about: About,
}

/// What a run is, as its writer says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct About {
    pub kind: Kind,
    pub preset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Whether the proposers saw the conversation so far.
    #[serde(default = "yes")]
    pub multi_turn: bool,
}

fn yes() -> bool {
    true
}

/// One finished turn.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Turn {
    pub user: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// The run's whole trace (`moa ask --json`'s object).
    #[serde(default)]
    pub trace: Value,
}

/// A run read back.
pub struct Run {
    pub header: Header,
    pub turns: Vec<Turn>,
}

impl Run {
    /// US dollars over every turn, when every turn's cost is known.
    pub fn cost(&self) -> Option<f64> {
        self.turns.iter().map(|t| t.cost).sum()
    }
}

/// Where runs are kept.
pub fn dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "moa").map(|d| d.data_dir().join("runs"))
}

/// Whether runs are kept: not with `--no-log`, `log = false` in the config or `MOA_LOG=0`.
pub fn enabled(config: &Config, no_log_flag: bool) -> bool {
    if no_log_flag {
        return false;
    }
    if let Some(v) = env::lookup(env::MOA_LOG) {
        return !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        );
    }
    config.file.log.unwrap_or(true)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of `secs` since the epoch.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A run's file, open for appending turns.
pub struct Writer {
    path: PathBuf,
    pub id: String,
}

impl Writer {
    /// Starts a new run's file in `dir`.
    pub fn create(dir: &Path, about: About) -> anyhow::Result<Writer> {
        create_private_dir(dir)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Ids sort by time, and two runs in the same second still differ.
        let id = format!(
            "{}-{:04x}",
            utc(now).replace(['-', ':'], "").replace(' ', "-"),
            fastrand::u16(..)
        );
        let writer = Writer {
            path: dir.join(format!("{id}.jsonl")),
            id: id.clone(),
        };
        let header = Header {
            id,
            started: now,
            about,
        };
        writer.append_line(&serde_json::to_string(&header)?)?;
        Ok(writer)
    }

    /// Appends to the run at `path` (a resumed chat).
    pub fn reopen(path: PathBuf, id: String) -> Writer {
        Writer { path, id }
    }

    /// The directory the run's file is in.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Appends one turn.
    pub fn turn(&self, user: &str, trace: &moa_core::Trace) -> anyhow::Result<()> {
        let turn = Turn {
            user: user.to_string(),
            answer: trace.answer.clone(),
            cost: trace.cost,
            trace: serde_json::to_value(trace)?,
        };
        self.append_line(&serde_json::to_string(&turn)?)
    }

    fn append_line(&self, line: &str) -> anyhow::Result<()> {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_symlink()) {
            anyhow::bail!(
                "{} is a symbolic link; not writing through it",
                self.path.display()
            );
        }
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&self.path)
            .with_context(|| format!("cannot write the run log {}", self.path.display()))?;
        // One write of the whole line: a crash leaves whole lines or a torn last one, which
        // reading skips.
        file.write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("cannot write the run log {}", self.path.display()))?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the run log directory {}", dir.display()))
}

/// Reads the run at `path`: its header and every whole turn (a torn last line is skipped).
pub fn read(path: &Path) -> anyhow::Result<Run> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = BufReader::new(file.take(MAX_FILE)).lines();
    let first = lines
        .next()
        .transpose()?
        .with_context(|| format!("{} is empty", path.display()))?;
    let header: Header = serde_json::from_str(&first)
        .with_context(|| format!("{} is not a moa run log", path.display()))?;
    let mut turns = Vec::new();
    for line in lines {
        match serde_json::from_str::<Turn>(&line?) {
            Ok(turn) => turns.push(turn),
            Err(_) => continue,
        }
    }
    Ok(Run { header, turns })
}

/// The run files in `dir`, newest first.
pub fn list(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    paths.sort();
    paths.reverse();
    Ok(paths)
}

/// The run `id` names: `last`, a whole id or a unique prefix; `kind` narrows `last`.
pub fn find(dir: &Path, id: &str, kind: Option<Kind>) -> anyhow::Result<(PathBuf, Run)> {
    let paths = list(dir)?;
    if id == "last" {
        for path in paths {
            if let Ok(run) = read(&path) {
                if kind.is_none_or(|k| run.header.about.kind == k) {
                    return Ok((path, run));
                }
            }
        }
        let what = match kind {
            Some(Kind::Chat) => "chat",
            _ => "run",
        };
        anyhow::bail!("there is no earlier {what} in {}", dir.display());
    }
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        anyhow::bail!("`{id}` is not a run id (`moa logs` lists them)");
    }
    let matching: Vec<PathBuf> = paths
        .into_iter()
        .filter(|p| {
            p.file_stem()
                .is_some_and(|s| s.to_string_lossy().starts_with(id))
        })
        .collect();
    match matching.as_slice() {
        [path] => Ok((path.clone(), read(path)?)),
        [] => anyhow::bail!("no run has the id `{id}` (`moa logs` lists them)"),
        many => anyhow::bail!(
            "`{id}` names {} runs; give more of the id (`moa logs` lists them)",
            many.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_342_400 + 3_661), "2026-12-04 01:01:01");
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_prefixes_must_be_unique() {
        let dir = tempfile::tempdir().unwrap();
        let fields = |kind| About {
            kind,
            preset: "p".into(),
            system: None,
            multi_turn: true,
        };
        let writer = Writer::create(dir.path(), fields(Kind::Chat)).unwrap();
        let mut trace_line = serde_json::to_string(&Turn {
            user: "hi".into(),
            answer: "hello".into(),
            cost: Some(0.5),
            trace: Value::Null,
        })
        .unwrap();
        trace_line.push('\n');
        let path = dir.path().join(format!("{}.jsonl", writer.id));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&trace_line);
        text.push_str("{\"user\": \"cut of");
        std::fs::write(&path, text).unwrap();
        let (_, run) = find(dir.path(), &writer.id[..writer.id.len() - 1], None).unwrap();
        assert_eq!(run.turns.len(), 1);
        assert_eq!(run.cost(), Some(0.5));
        assert!(find(dir.path(), "../etc", None).is_err());
        assert!(find(dir.path(), "zz", None).is_err());
        let (_, last_chat) = find(dir.path(), "last", Some(Kind::Chat)).unwrap();
        assert_eq!(last_chat.header.id, writer.id);
        assert!(find(dir.path(), "last", Some(Kind::Ask)).is_err());
    }
}
