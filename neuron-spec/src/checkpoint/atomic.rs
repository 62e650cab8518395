//! Nothing partial: outputs are built in a temporary sibling directory and renamed into place when complete.

use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// A temporary directory next to `dest` that becomes `dest` on [`Staging::commit`] and is removed otherwise.
pub struct Staging {
    dest: PathBuf,
    tmp: PathBuf,
    force: bool,
    committed: bool,
}

fn sibling(dest: &Path, tag: &str) -> Result<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::Argument(format!("{}: not a directory name", dest.display())))?
        .to_string_lossy()
        .to_string();
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.{tag}-{}", std::process::id())))
}

impl Staging {
    /// Refuses an existing `dest` unless `force`; removes the temporary directories of writers of `dest` that
    /// were killed (see [`remove_stale_partials`]); creates the temporary directory.
    pub fn new(dest: &Path, force: bool) -> Result<Self> {
        if dest.exists() && !force {
            return Err(Error::DestinationExists { path: dest.to_path_buf() });
        }
        let tmp = sibling(dest, "partial")?;
        remove_stale_partials(dest);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        // Errors name the destination the user gave, not the hidden temporary directory.
        fs::create_dir_all(&tmp).map_err(|e| Error::io(dest, e))?;
        Ok(Self { dest: dest.to_path_buf(), tmp, force, committed: false })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// `e` with paths inside the temporary directory shown under the destination, the name the user gave.
    pub fn describe(&self, e: Error) -> Error {
        describe_under(&self.tmp, &self.dest, e)
    }

    /// The temporary directory named `name` (another process's [`Staging::path`] file name) next to `dest`:
    /// where a cooperating process writes into that process's staging directory.
    pub fn sibling_named(dest: &Path, name: &str) -> PathBuf {
        dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join(name)
    }

    /// Flushes the directory tree and renames it to the destination (replacing it only now, with force).
    pub fn commit(mut self) -> Result<()> {
        sync_tree(&self.tmp)?;
        if self.dest.exists() {
            if !self.force {
                return Err(Error::DestinationExists { path: self.dest.clone() });
            }
            let old = sibling(&self.dest, "old")?;
            fs::rename(&self.dest, &old).map_err(|e| Error::io(&self.dest, e))?;
            if let Err(e) = fs::rename(&self.tmp, &self.dest) {
                // Put the previous output back rather than leave it under a hidden name.
                let _ = fs::rename(&old, &self.dest);
                return Err(Error::io(&self.dest, e));
            }
            let _ = if old.is_dir() { fs::remove_dir_all(&old) } else { fs::remove_file(&old) };
        } else {
            fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        }
        if let Some(parent) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Removes the `.<name>.partial-<pid>` siblings of `dest` whose process no longer runs: what a writer killed
/// mid-way (`kill -9`, power loss) leaves behind. Such a directory is hidden and never becomes `dest` (only a
/// completed write is renamed into place), so removing it loses nothing.
///
/// Liveness is read from `/proc/<pid>`, so this only acts where `/proc` exists (Linux). A directory is left
/// alone when its pid is alive, is this process, or is not a plain number, and symlinks are never followed.
/// Caveat: a writer in another pid namespace (another container) sharing this directory looks dead; two
/// containers must not write the same destination at the same time (they would race on it anyway).
pub fn remove_stale_partials(dest: &Path) {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return;
    }
    let Some(name) = dest.file_name().and_then(|n| n.to_str()) else { return };
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!(".{name}.partial-");
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let Ok(pid_n) = pid.parse::<u32>() else { continue };
        if pid_n.to_string() != pid || pid_n == std::process::id() || proc_root.join(pid).exists() {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// `e` with paths inside `tmp` (a staging directory) shown under `dest`, the name the user gave.
pub fn describe_under(tmp: &Path, dest: &Path, e: Error) -> Error {
    match e {
        Error::Io { path, source } => match path.strip_prefix(tmp) {
            Ok(rel) => Error::Io { path: dest.join(rel), source },
            Err(_) => Error::Io { path, source },
        },
        other => other,
    }
}

fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| Error::io(&p, e))?;
        }
    }
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_dead_writers_partials_are_removed() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let root = std::env::temp_dir().join(format!("neuron-spec-staging-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let dead = root.join(".out.partial-4294967294");
        let alive = root.join(".out.partial-1"); // init: alive
        let own = root.join(format!(".out.partial-{}", std::process::id()));
        let odd = [".out.partial-0042", ".out.partial-x", ".outx.partial-4294967293", "out.partial-4294967292"];
        for d in [&dead, &alive, &own] {
            fs::create_dir(d).unwrap();
        }
        for d in odd {
            fs::create_dir(root.join(d)).unwrap();
        }
        // A symlink named like a dead writer's directory: neither it nor its target is touched.
        let target = root.join("precious");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(&target, root.join(".out.partial-4294967291")).unwrap();

        remove_stale_partials(&root.join("out"));
        assert!(!dead.exists(), "a dead writer's directory is removed");
        assert!(alive.exists() && own.exists());
        for d in odd {
            assert!(root.join(d).exists(), "{d} is not ours to remove");
        }
        assert!(target.join("f").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
