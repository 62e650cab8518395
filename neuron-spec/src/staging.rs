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
        .ok_or_else(|| Error::Invalid(format!("{}: not a directory name", dest.display())))?
        .to_string_lossy()
        .to_string();
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.{tag}-{}", std::process::id())))
}

impl Staging {
    /// Refuses an existing `dest` unless `force`; creates the temporary directory.
    pub fn new(dest: &Path, force: bool) -> Result<Self> {
        if dest.exists() && !force {
            return Err(Error::DestinationExists { path: dest.to_path_buf() });
        }
        let tmp = sibling(dest, "partial")?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self { dest: dest.to_path_buf(), tmp, force, committed: false })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.tmp
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
            fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
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
