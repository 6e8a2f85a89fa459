//! Writing files so that nothing is lost or clobbered.
//!
//! - Every file is written to a randomly named temporary file that is created exclusively in
//!   the target's folder (the `tempfile` crate), so a file or symlink planted there by someone
//!   else is never followed or truncated; then it is flushed to disk and renamed over the
//!   target, and the folder is flushed too, so after a crash the target holds either the old or
//!   the new bytes. A failed write removes its temporary file.
//! - [`fault_point`] marks each step of these protocols, so tests can crash the process
//!   (`REVFLOW_CRASH_AT=N`: killed at the N-th point, running no cleanup) or make
//!   the N-th step fail like a full disk (`REVFLOW_FAIL_AT=N`). Without those variables it
//!   does nothing.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{FlowError, Result};

/// The error for an I/O failure on `path`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlowError + '_ {
    move |source| FlowError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically and durably (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// A file written in pieces that appears at its path only when complete: written to a
/// temporary file beside it (see the module docs), then flushed and renamed over the path by
/// [`commit`](Self::commit). Dropped without a commit, it leaves nothing behind.
pub struct AtomicFile {
    tmp: std::io::BufWriter<tempfile::NamedTempFile>,
    path: PathBuf,
}

impl AtomicFile {
    /// Creates the temporary file for `path` in its folder.
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = builder(&format!(".{}.", file_name(path)), 0o666)
            .suffix(".tmp")
            .tempfile_in(parent(path))
            .map_err(io(path))?;
        fault_point().map_err(io(path))?;
        Ok(Self {
            tmp: std::io::BufWriter::new(tmp),
            path: path.to_path_buf(),
        })
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.tmp.write_all(bytes).map_err(io(&self.path))
    }

    /// Flushes the file to disk and renames it over its path; the folder is flushed too.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        let tmp = self
            .tmp
            .into_inner()
            .map_err(|e| io(&path)(e.into_error()))?;
        fault_point().map_err(io(&path))?;
        tmp.as_file().sync_all().map_err(io(&path))?;
        fault_point().map_err(io(&path))?;
        tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
        fault_point().map_err(io(&path))?;
        sync_dir(parent(&path))
    }
}

/// Renames `from` to `to` (both in one folder) and flushes the folder, so the rename survives a
/// crash.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(io(to))?;
    fault_point().map_err(io(to))?;
    sync_dir(parent(to))
}

/// Flushes a folder's entries (new, renamed or removed files) to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    // Opening a folder read-only and calling fsync is how POSIX flushes its entries; other
    // systems have no such call and order their metadata writes themselves.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    fault_point().map_err(io(dir))
}

/// A new, empty, randomly named folder inside `dir` that nobody else can have created; the
/// caller fills it and renames it into place ([`tempfile::TempDir::keep`]) or drops it, which
/// removes it.
pub(crate) fn temp_dir_in(dir: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    let tmp = builder(prefix, 0o777).tempdir_in(dir).map_err(io(dir))?;
    fault_point().map_err(io(dir))?;
    Ok(tmp)
}

/// Creates `path` (which must not exist: the folder it is in is private to the caller),
/// writes `bytes` and flushes them.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create_new(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    fault_point().map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    fault_point().map_err(io(path))
}

/// A builder of temporary files (`mode` 0o666) or folders (0o777) that get the permissions
/// any file the user creates gets (the umask applies), not tempfile's private 0600/0700.
pub(crate) fn builder(prefix: &str, mode: u32) -> tempfile::Builder<'_, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder
}

/// The folder `path` is in (`.` for a bare file name).
pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The test hooks of the module docs, read once.
struct Faults {
    crash_at: Option<usize>,
    fail_at: Option<usize>,
    passed: AtomicUsize,
}

fn faults() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let var = |name| std::env::var(name).ok().and_then(|v| v.parse().ok());
        Faults {
            crash_at: var("REVFLOW_CRASH_AT"),
            fail_at: var("REVFLOW_FAIL_AT"),
            passed: AtomicUsize::new(0),
        }
    })
}

/// One step of a write protocol has been done (see the module docs).
pub(crate) fn fault_point() -> std::io::Result<()> {
    let f = faults();
    if f.crash_at.is_none() && f.fail_at.is_none() {
        return Ok(());
    }
    let n = f.passed.fetch_add(1, Ordering::SeqCst) + 1;
    if f.crash_at == Some(n) {
        // Like `kill -9`: no destructor, no flush, no core file.
        #[cfg(unix)]
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
    if f.fail_at == Some(n) {
        return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC: no space left on device
    }
    Ok(())
}

/// Points passed so far (for the crash test's report of where a run stands).
pub fn fault_points_passed() -> usize {
    faults().passed.load(Ordering::SeqCst)
}

/// Removes leftovers of interrupted writes in `dir` whose names start with one of `prefixes`
/// (only call it where no other process can be writing, e.g. under a run's lock).
pub(crate) fn remove_debris(dir: &Path, prefixes: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            let path: PathBuf = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("revflow-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    #[test]
    fn planted_symlinks_are_replaced_never_followed() {
        let dir = temp("symlink");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // At the target itself, and at every name the old writer used for its temporary file.
        let target = dir.join("out.png");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        for pid in [std::process::id()].into_iter().chain(0..64) {
            let planted = dir.join(format!(".out.png.tmp-{pid}"));
            let _ = std::os::unix::fs::symlink(&victim, planted);
        }
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&target).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = temp("failed");
        let target = dir.join("state.json");
        std::fs::write(&target, "old").unwrap();
        // Writing into a folder that vanished fails before anything is created.
        let err = write_atomic(&dir.join("missing/state.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/state.json"), "{err}");
        // Persisting onto a folder fails after the temporary file was written.
        std::fs::create_dir(dir.join("a-folder")).unwrap();
        assert!(write_atomic(&dir.join("a-folder"), b"x").is_err());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
