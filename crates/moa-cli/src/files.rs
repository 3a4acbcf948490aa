//! Writing files that hold conversations: private to the user, and never through a symlink
//! that someone else could have planted where the file should go.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` readable by the user alone (0600 on Unix). A symlink at `path` is
/// refused, not followed; an existing file is replaced whole (written beside it, then renamed
/// over it), so a failed write never leaves half a file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other(format!(
            "{} is a symbolic link; not writing through it",
            path.display()
        )));
    }
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a file name", path.display())))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Makes an existing file readable by the user alone (Unix; elsewhere nothing).
pub fn make_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_private_whole_and_refuse_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.json");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let victim = dir.path().join("victim");
            std::fs::write(&victim, b"precious").unwrap();
            let link = dir.path().join("link.json");
            std::os::unix::fs::symlink(&victim, &link).unwrap();
            let err = write_private(&link, b"overwritten").unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            if cfg!(unix) { 3 } else { 1 }
        );
    }
}
