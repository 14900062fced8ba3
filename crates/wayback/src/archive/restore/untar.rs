//! Unpacking a base backup's tar stream into a data directory, safely.
//!
//! The archive is data we did not write on this machine, so every entry is checked before it
//! touches the file system: only plain relative paths (no `/`, `..` or prefixes), only regular
//! files and directories — a symbolic link could point the next entry outside the data
//! directory, and Wayback clusters have no tablespaces that would need one. Files are created
//! 0600 and directories 0700 (PostgreSQL refuses looser data directories), owned by the cluster
//! user. Nothing is fsynced here: a backup's `pg_control` says "in production", so the server
//! syncs the whole data directory itself before it starts recovery. Blocking: run it on a
//! blocking thread.

use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::Receiver;

use bytes::Bytes;

use super::RestoreError;
use crate::pg::fsutil::Owner;

/// A `Read` over the parts arriving on a channel, in order; the end of the channel is EOF.
pub(super) struct ChannelReader {
    rx: Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(next) => self.current = next,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn chown(path: &Path, owner: Option<Owner>) -> io::Result<()> {
    match owner {
        Some(o) => std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid)),
        None => Ok(()),
    }
}

/// Creates the (absent or empty) data directory with mode 0700 for `owner`.
pub(super) fn create_data_dir(pgdata: &Path, owner: Option<Owner>) -> Result<(), RestoreError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |what: &str| RestoreError::io(format!("{what} {}", pgdata.display()));
    match fs::DirBuilder::new().mode(0o700).create(pgdata) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err("create")(e)),
    }
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700)).map_err(err("chmod"))?;
    chown(pgdata, owner).map_err(err("chown"))
}

/// The entry's path below the data directory, or why it is refused.
pub(super) fn safe_relative(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{} leaves the data directory", path.display()))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("an entry with an empty path".into());
    }
    Ok(out)
}

fn make_dirs(root: &Path, rel: &Path, owner: Option<Owner>) -> io::Result<()> {
    let mut dir = root.to_path_buf();
    for c in rel.components() {
        dir.push(c);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => chown(&dir, owner)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Unpacks the tar read from `reader` into `root`; returns the number of files written.
pub(super) fn unpack(
    reader: impl Read,
    root: &Path,
    owner: Option<Owner>,
) -> Result<u64, RestoreError> {
    let context = |what: String| RestoreError::io(what);
    let mut archive = tar::Archive::new(reader);
    let mut files = 0u64;
    let entries = archive
        .entries()
        .map_err(context("read the base backup's tar stream".into()))?;
    for entry in entries {
        let mut entry = entry.map_err(context("read the base backup's tar stream".into()))?;
        let raw_path = entry
            .path()
            .map_err(context("read a tar entry's path".into()))?
            .into_owned();
        let rel = safe_relative(&raw_path)
            .map_err(|e| RestoreError::Refused(format!("base backup entry refused: {e}")))?;
        let dest = root.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => make_dirs(root, &rel, owner)
                .map_err(context(format!("create {}", dest.display())))?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                    make_dirs(root, parent, owner)
                        .map_err(context(format!("create {}", root.join(parent).display())))?;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(context(format!("create {}", dest.display())))?;
                if let Some(o) = owner {
                    std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))
                        .map_err(context(format!("chown {}", dest.display())))?;
                }
                let mut out = BufWriter::with_capacity(1 << 20, file);
                io::copy(&mut entry, &mut out)
                    .and_then(|_| out.flush())
                    .map_err(context(format!("write {}", dest.display())))?;
                files += 1;
            }
            // Extended headers that the tar crate did not fold into the next entry.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(RestoreError::Refused(format!(
                    "base backup entry {} is a {other:?}; only files and directories are \
                     restored (tablespaces are not supported)",
                    raw_path.display()
                )))
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn paths_must_stay_inside() {
        assert_eq!(
            safe_relative(Path::new("base/1/2")).unwrap(),
            Path::new("base/1/2")
        );
        assert_eq!(
            safe_relative(Path::new("./PG_VERSION")).unwrap(),
            Path::new("PG_VERSION")
        );
        for bad in ["/etc/passwd", "base/../../x", "..", "", "."] {
            assert!(safe_relative(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unpacks_files_through_the_channel_in_order() {
        let tar = tar_of(&[("PG_VERSION", b"15\n"), ("base/1/1259", &[7u8; 70_000])]);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pgdata");
        create_data_dir(&root, None).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let chunks: Vec<Bytes> = tar.chunks(10_000).map(Bytes::copy_from_slice).collect();
        let feeder =
            std::thread::spawn(move || chunks.into_iter().for_each(|c| tx.send(c).unwrap()));
        assert_eq!(unpack(ChannelReader::new(rx), &root, None).unwrap(), 2);
        feeder.join().unwrap();
        assert_eq!(fs::read(root.join("PG_VERSION")).unwrap(), b"15\n");
        assert_eq!(fs::read(root.join("base/1/1259")).unwrap().len(), 70_000);
    }

    #[test]
    fn refuses_links_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "pg_tblspc/16384", "/elsewhere")
            .unwrap();
        let tar = b.into_inner().unwrap();
        let e = unpack(&tar[..], dir.path(), None).unwrap_err();
        assert!(e.to_string().contains("tablespaces"), "{e}");
    }
}
