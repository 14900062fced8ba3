//! Filesystem helpers of the local store: durable directory creation, temporary files that
//! vanish unless persisted, and the walk behind `list`. Blocking: called inside `spawn_blocking`.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::key::TEMP_MARKER;
use super::ObjectMeta;

/// `Ok(None)` for "no such file" and for a path through or onto something that is not a file
/// (ENOTDIR, EISDIR): in both cases no object has that key.
pub(super) fn absent_is_none<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    use nix::errno::Errno;
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e)
            if matches!(
                e.raw_os_error().map(Errno::from_raw),
                Some(Errno::ENOTDIR | Errno::EISDIR)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub(super) fn open_file(path: &Path) -> std::io::Result<File> {
    let file = File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::from_raw_os_error(
            nix::errno::Errno::EISDIR as i32,
        ));
    }
    Ok(file)
}

pub(super) fn meta_of(key: String, meta: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        key,
        size: meta.len(),
        last_modified: meta.modified().ok().map(DateTime::<Utc>::from),
    }
}

pub(super) fn walk(
    root: &Path,
    rel_dir: &str,
    prefix: &str,
    found: &mut Vec<ObjectMeta>,
) -> std::io::Result<()> {
    let Some(entries) = absent_is_none(fs::read_dir(root.join(rel_dir)))? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not a key we could have written
        };
        if name.starts_with(TEMP_MARKER) {
            continue;
        }
        let key = if rel_dir.is_empty() {
            name
        } else {
            format!("{rel_dir}/{name}")
        };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            // Descend only where keys under the directory can still match the prefix.
            let as_dir = format!("{key}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(root, &key, prefix, found)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) {
            // A file deleted between read_dir and metadata is simply not listed.
            if let Some(meta) = absent_is_none(entry.metadata())? {
                found.push(meta_of(key, &meta));
            }
        }
    }
    Ok(())
}

/// Creates `dir` and its missing ancestors below `root`, fsyncing each new entry into its parent.
pub(super) fn create_dirs_durably(root: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir != root {
        if let Some(parent) = dir.parent() {
            create_dirs_durably(root, parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(dir.parent().unwrap_or(dir)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        // An object already holds this name: the key cannot also be a "directory" here.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(std::io::Error::from_raw_os_error(
            nix::errno::Errno::ENOTDIR as i32,
        )),
        Err(e) => Err(e),
    }
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A temporary file beside its destination, removed on drop unless persisted.
pub(super) struct TempFile {
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    pub(super) fn create(dir: &Path) -> std::io::Result<(Self, File)> {
        let path = dir.join(format!("{TEMP_MARKER}{}", uuid::Uuid::new_v4().simple()));
        let file = File::options().write(true).create_new(true).open(&path)?;
        let temp = Self {
            path,
            persisted: false,
        };
        Ok((temp, file))
    }

    /// fsync the data, rename over `dest`, fsync the directory.
    pub(super) fn persist(mut self, file: File, dest: &Path) -> std::io::Result<()> {
        file.sync_all()?;
        drop(file);
        fs::rename(&self.path, dest)?;
        self.persisted = true;
        sync_dir(dest.parent().expect("a key has a parent"))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}
