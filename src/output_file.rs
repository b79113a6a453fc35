//! Files that appear whole or not at all (`flea synth`, `flea logits`).
//!
//! The data goes to `<target>.partial` next to the target, is synced, and is
//! renamed over the target only when complete, so a reader never sees half a
//! model and a failed run never leaves a zero-byte or truncated file under
//! the name asked for. The partial file is removed when writing fails or the
//! [`OutputFile`] is dropped uncommitted; the CLI's signal handler removes it
//! on SIGINT/SIGTERM (see [`partial_path`]).
//!
//! What the target may be:
//! * absent, or a regular file (replaced);
//! * a symlink: it is followed, so the file it points to is replaced and the
//!   link itself stays (as `cp` and shell redirection do); a dangling link
//!   is refused;
//! * anything else (a directory, a device such as `/dev/null`, a FIFO or a
//!   socket) is refused: renaming over it would replace the node itself.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A file being written under a temporary name; see the module docs.
pub struct OutputFile {
    target: PathBuf,
    partial: PathBuf,
    file: Option<File>,
}

/// Where the data for `target` goes while it is written: next to the file
/// that will be replaced (after following symlinks), so the final rename
/// stays on one file system.
pub fn partial_path(target: &Path) -> Result<PathBuf> {
    let resolved = resolve_target(target)?;
    let mut name = resolved.into_os_string();
    name.push(".partial");
    Ok(PathBuf::from(name))
}

/// The path that will actually be replaced, after the checks above.
fn resolve_target(target: &Path) -> Result<PathBuf> {
    let shown = target.display();
    let link = match std::fs::symlink_metadata(target) {
        Ok(m) => m.file_type().is_symlink(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(target.to_path_buf()),
        Err(e) => {
            return Err(Error::io(format!(
                "{shown}: cannot examine the output: {e}"
            )))
        }
    };
    let resolved = if link {
        std::fs::canonicalize(target).map_err(|e| {
            Error::io(format!(
                "{shown}: the output is a symlink whose target cannot be resolved ({e}); \
                 refusing to write through it"
            ))
        })?
    } else {
        target.to_path_buf()
    };
    let meta = std::fs::metadata(&resolved)
        .map_err(|e| Error::io(format!("{shown}: cannot examine the output: {e}")))?;
    if meta.is_dir() {
        return Err(Error::io(format!(
            "{shown}: is a directory; expected a file name to write"
        )));
    }
    if !meta.is_file() {
        return Err(Error::io(format!(
            "{shown}: is not a regular file (a device, FIFO or socket); refusing to replace it"
        )));
    }
    Ok(resolved)
}

impl OutputFile {
    /// Check `target` and create its partial file.
    pub fn create(target: &Path) -> Result<OutputFile> {
        let resolved = resolve_target(target)?;
        let partial = partial_path(&resolved)?;
        let file = File::create(&partial)
            .map_err(|e| Error::io(format!("{}: cannot create: {e}", partial.display())))?;
        Ok(OutputFile {
            target: resolved,
            partial,
            file: Some(file),
        })
    }

    /// The file to write the data to.
    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("an uncommitted output has its file")
    }

    /// Where the data is going until [`OutputFile::commit`].
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// Sync the data and move it under the target's name.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("committed once");
        file.sync_all()
            .map_err(|e| Error::io(format!("{}: cannot sync: {e}", self.partial.display())))?;
        drop(file);
        std::fs::rename(&self.partial, &self.target).map_err(|e| {
            Error::io(format!(
                "{}: cannot rename to {}: {e}",
                self.partial.display(),
                self.target.display()
            ))
        })?;
        // Renamed: nothing left for Drop to clean up.
        self.partial = PathBuf::new();
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.partial.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flea-output-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn appears_only_when_committed() {
        let dir = scratch("commit");
        let target = dir.join("out.bin");
        let mut out = OutputFile::create(&target).unwrap();
        out.file().write_all(b"data").unwrap();
        assert!(!target.exists());
        out.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"data");
        assert!(!dir.join("out.bin.partial").exists());
    }

    #[test]
    fn dropped_uncommitted_leaves_nothing() {
        let dir = scratch("drop");
        let target = dir.join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        let mut out = OutputFile::create(&target).unwrap();
        out.file().write_all(b"half").unwrap();
        drop(out);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert!(!dir.join("out.bin.partial").exists());
    }

    #[test]
    fn refuses_directories_and_devices_and_follows_symlinks() {
        let dir = scratch("kinds");
        let e = OutputFile::create(&dir).err().unwrap();
        assert!(e.message.contains("is a directory"), "{}", e.message);
        let e = OutputFile::create(Path::new("/dev/null")).err().unwrap();
        assert!(e.message.contains("not a regular file"), "{}", e.message);

        let real = dir.join("real.bin");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut out = OutputFile::create(&link).unwrap();
        out.file().write_all(b"new").unwrap();
        out.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");

        let dangling = dir.join("dangling.bin");
        std::os::unix::fs::symlink(dir.join("missing/x"), &dangling).unwrap();
        let e = OutputFile::create(&dangling).err().unwrap();
        assert!(e.message.contains("symlink"), "{}", e.message);
    }
}
