//! Append-only JSON Lines checkpoints: every finished item is one line, written and synced to
//! disk as it lands, so a run killed at any moment (even with SIGKILL, or a power cut) loses at
//! most the items in flight. Reading tolerates a last line cut short by a kill, each line on its
//! own (one torn or foreign line, even inside a UTF-8 character, costs only itself). An open
//! journal is locked, so two runs on one folder cannot both spend on the same items.

use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{EvalError, Result};

/// An open checkpoint file of records `R`.
pub struct Journal<R> {
    file: std::fs::File,
    path: PathBuf,
    _record: PhantomData<fn(R)>,
}

impl<R: Serialize + DeserializeOwned> Journal<R> {
    /// Every whole record in `path`, in the order written (none if the file does not exist).
    /// Lines that do not parse (a line cut by a kill) are skipped.
    pub fn load(path: &Path) -> Result<Vec<R>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(bytes
                .split(|b| *b == b'\n')
                .filter_map(|line| serde_json::from_slice(line).ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(EvalError::io("read", path, e)),
        }
    }

    /// Opens `path` for appending, creating it and its folder if needed.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| EvalError::io("create", dir, e))?;
        }
        // A line cut short by a kill would glue onto the next record: start on a fresh line.
        let needs_newline = std::fs::read(path)
            .map(|b| !b.is_empty() && !b.ends_with(b"\n"))
            .unwrap_or(false);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| EvalError::io("open", path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(EvalError::Invalid(format!(
                    "another moa run is writing {} (it holds the journal's lock): wait for it to \
                     finish, or give this run another output folder",
                    path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(EvalError::io("lock", path, e)),
        }
        if needs_newline {
            file.write_all(b"\n")
                .map_err(|e| EvalError::io("write", path, e))?;
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            _record: PhantomData,
        })
    }

    /// Appends one record as one write of one whole line, flushed at once.
    pub fn append(&mut self, record: &R) -> Result<()> {
        let mut line = serde_json::to_vec(record)
            .map_err(|e| EvalError::Invalid(format!("cannot encode a record: {e}")))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| EvalError::io("write", &self.path, e))
    }

    /// Where the records go.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_cut_line_and_appends_start_on_a_fresh_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/j.jsonl");
        let mut journal = Journal::<(u32, String)>::open(&path).unwrap();
        journal.append(&(1, "one".into())).unwrap();
        drop(journal);
        // A kill in the middle of a write leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"[2,\"tw").unwrap();
        drop(f);
        assert_eq!(
            Journal::<(u32, String)>::load(&path).unwrap(),
            [(1, "one".into())]
        );
        let mut journal = Journal::<(u32, String)>::open(&path).unwrap();
        journal.append(&(3, "three".into())).unwrap();
        assert_eq!(
            Journal::<(u32, String)>::load(&path).unwrap(),
            [(1, "one".into()), (3, "three".into())]
        );
        assert!(Journal::<(u32, String)>::load(&dir.path().join("none"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_torn_multibyte_character_costs_only_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut bytes = b"[1,\"h\xc3\xa9\"]\n".to_vec();
        // Half of a two-byte character, as a kill in the middle of a write leaves it.
        bytes.extend_from_slice(b"[2,\"\xc3\n");
        bytes.extend_from_slice("[3,\"😀\"]\n".as_bytes());
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(
            Journal::<(u32, String)>::load(&path).unwrap(),
            [(1, "hé".into()), (3, "😀".into())]
        );
    }

    #[test]
    fn a_second_writer_on_the_same_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let first = Journal::<u32>::open(&path).unwrap();
        let err = Journal::<u32>::open(&path).err().unwrap().to_string();
        assert!(err.contains("another moa run"), "{err}");
        drop(first);
        assert!(
            Journal::<u32>::open(&path).is_ok(),
            "free again once the first is closed"
        );
    }
}
