//! File-system helpers with the durability and ownership rules a data directory needs.
//!
//! A file we write for PostgreSQL is written to a temporary name, fsynced, chowned to the cluster
//! user and renamed into place, then its directory is fsynced: a crash leaves the old file or the
//! new one, never half of one, and never one the server cannot read. Copies of the template keep
//! every mode bit (PostgreSQL refuses a data directory that is not 0700/0750). Blocking: call from
//! `spawn_blocking` for anything large. Imports nothing from the crate.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// A uid/gid to chown to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

fn chown(path: &Path, owner: Option<Owner>) -> io::Result<()> {
    match owner {
        Some(o) => std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid)),
        None => Ok(()),
    }
}

/// Writes `contents` to `path` atomically and durably, with `mode`, owned by `owner` (or by us).
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> io::Result<()> {
    replace(path, contents, mode, owner, true)
}

/// As [`write_atomic`] without the fsyncs, for files in a directory that is flushed as a whole
/// ([`sync_filesystem`]) before anyone relies on it — each fsync costs milliseconds.
pub fn write_unsynced(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> io::Result<()> {
    replace(path, contents, mode, owner, false)
}

fn replace(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
    durable: bool,
) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        // The umask may have narrowed `mode`; the server checks some modes.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if durable {
            f.sync_all()?;
        }
    }
    chown(&tmp, owner)?;
    fs::rename(&tmp, path)?;
    if durable {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Makes a rename or a new entry in `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (not its parents) if missing, then sets its mode and owner either way.
pub fn ensure_dir(dir: &Path, mode: u32, owner: Option<Owner>) -> io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    chown(dir, owner)
}

/// Creates an empty file if missing (mode, owner applied either way), e.g. the server log.
pub fn ensure_file(path: &Path, mode: u32, owner: Option<Owner>) -> io::Result<()> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .open(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    chown(path, owner)
}

/// Copies the tree `src` to the new directory `dst`, keeping modes, chowning to `owner`.
/// Entries for which `skip(relative_path)` is true are left out (their parent dirs are kept).
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    owner: Option<Owner>,
    skip: &dyn Fn(&Path) -> bool,
) -> io::Result<()> {
    copy_dir(src, dst, Path::new(""), owner, skip)
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    rel: &Path,
    owner: Option<Owner>,
    skip: &dyn Fn(&Path) -> bool,
) -> io::Result<()> {
    let mode = fs::metadata(src)?.mode() & 0o7777;
    fs::DirBuilder::new().mode(mode).create(dst)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
    chown(dst, owner)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        if skip(&rel) {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&from, &to, &rel, owner, skip)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            chown(&to, owner)?;
        } else {
            // fs::copy keeps the permission bits and uses copy_file_range where it can.
            fs::copy(&from, &to)?;
            chown(&to, owner)?;
        }
    }
    Ok(())
}

/// Flushes the whole file system holding `path` — one syscall instead of an fsync per file of a
/// freshly copied data directory (what PostgreSQL's `recovery_init_sync_method = syncfs` does).
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(io::Error::from)
}

/// Marks `dir` as the top of unrelated directory trees (`chattr +T`, `FS_TOPDIR_FL`): ext2/3/4's
/// Orlov allocator then puts each new subdirectory (one cluster) in a block group of its own
/// instead of next to its siblings. Why: ext4 without a journal skips, inode by inode, every inode
/// of a group freed in the last minutes (`recently_deleted()`), so where clusters are made and
/// removed side by side one file creation cost 0.35 ms instead of 0.015 ms (BENCHMARKS.md).
/// Returns `Ok(false)` where the file system has no such flag (XFS, btrfs, tmpfs).
pub fn mark_top_directory(dir: &Path) -> io::Result<bool> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let unsupported = |e: io::Error| match e.raw_os_error() {
        Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => Ok(false),
        _ => Err(e),
    };
    let dir = File::open(dir)?;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which outlives the call
    // (the kernel's ext4/xfs/btrfs handlers all use an int despite the ioctl's declared long).
    if unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return unsupported(io::Error::last_os_error());
    }
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(true);
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, which outlives the call.
    if unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) } != 0 {
        return unsupported(io::Error::last_os_error());
    }
    Ok(true)
}

/// The first directory from the root down to `dir` that `uid`/`gid` cannot enter, if any.
/// Only the "other" and matching owner/group execute bits are considered (no ACLs).
pub fn first_untraversable(
    dir: &Path,
    uid: u32,
    gid: u32,
) -> io::Result<Option<std::path::PathBuf>> {
    for ancestor in dir.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let md = fs::metadata(ancestor)?;
        let mode = md.mode();
        let ok = if md.uid() == uid {
            mode & 0o100 != 0
        } else if md.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Ok(Some(ancestor.to_path_buf()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postgresql.conf");
        write_atomic(&path, b"one", 0o600, None).unwrap();
        write_atomic(&path, b"two", 0o640, None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn copy_keeps_modes_and_skips() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(src.join("pg_wal")).unwrap();
        fs::write(src.join("pg_wal/000000010000000000000001"), b"wal").unwrap();
        fs::write(src.join("PG_VERSION"), b"15\n").unwrap();
        fs::set_permissions(src.join("PG_VERSION"), fs::Permissions::from_mode(0o600)).unwrap();
        let dst = dir.path().join("dst");
        copy_tree(&src, &dst, None, &|rel| {
            rel.starts_with("pg_wal") && rel.components().count() > 1
        })
        .unwrap();
        assert_eq!(fs::metadata(&dst).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            fs::metadata(dst.join("PG_VERSION")).unwrap().mode() & 0o777,
            0o600
        );
        assert!(dst.join("pg_wal").is_dir());
        assert!(!dst.join("pg_wal/000000010000000000000001").exists());
        sync_filesystem(&dst).unwrap();
    }

    #[test]
    fn finds_a_closed_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        fs::create_dir_all(&inner).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        fs::set_permissions(dir.path().join("a"), fs::Permissions::from_mode(0o700)).unwrap();
        // A uid/gid that owns nothing here sees only the "other" bits.
        let found = first_untraversable(&inner, 54321, 54321).unwrap();
        assert_eq!(found, Some(dir.path().join("a")));
        fs::set_permissions(dir.path().join("a"), fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(first_untraversable(&inner, 54321, 54321).unwrap(), None);
    }
}
