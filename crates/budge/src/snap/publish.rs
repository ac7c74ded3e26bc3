//! Publishing a new version of a file: the commit protocol shared by
//! [`SnapshotMut::commit`](super::SnapshotMut::commit),
//! [`commit_and_close`](super::SnapshotMut::commit_and_close) and
//! [`snapshot_to`](super::snapshot_to).
//!
//! The new content is an unnamed file (O_TMPFILE) on the target's
//! filesystem. Publishing it:
//!
//! 1. locks the file now at the path (`flock`, so budge committers to one
//!    path go one at a time) and checks it is still the
//!    file the path names, and, if asked, that it is the version the
//!    snapshot was taken from;
//! 2. gives the new file the old one's mode, owner and extended attributes;
//! 3. `fsync`s it (data, size and metadata), except where step 6 covers
//!    it (below);
//! 4. links it under the temporary name `.NAME.budge-commit` in the same
//!    directory, holding a `flock` on it;
//! 5. `rename`s that over the path (atomic: an opener sees the whole old or
//!    the whole new file);
//! 6. makes the rename durable: `fsync` of the directory, or on btrfs, for
//!    content made only by a clone, `fsync` of the new file.
//!
//! One journal commit instead of two where the filesystem allows it:
//! - XFS logs every metadata change in one ordered log: step 3 only writes
//!   the data back, and the directory's `fsync` in step 6 forces the log up
//!   to the rename, so with it every earlier change to the content (block
//!   allocations, size, clone remaps, owner, mode, xattrs, the link).
//! - btrfs, content that is a fresh clone ([`publish_clone`]): the clone
//!   flushed the source's data and its extents are in the running
//!   transaction, so step 3 has nothing to write. Step 6 `fsync`s the new
//!   file, which logs its extents and its new name (and the replaced
//!   entry); a transaction commit between 5 and 6 holds the clone and the
//!   rename together. A directory `fsync` alone would not do: it logs the
//!   name, not the file's extents (measured: the path then reads as an
//!   empty file after a crash).
//!
//! A crash before 4 leaves nothing (the kernel frees unnamed files); between
//! 4 and 5 a complete temporary file that nobody holds locked, which
//! [`cleanup`] removes on the next open; after 5 the new version, durable after 6.

use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::meta::{self, Identity};
use crate::sys::{self};

/// How long a commit waits for another holder of the file's lock (a budge
/// committer holds it for a few fsyncs; a store writer for its lifetime).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a commit expects to find at the path.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Anything (or nothing): overwrite.
    Anything,
    /// No file: the snapshot created a new one.
    Absent,
    /// This version of the file.
    Version(Identity),
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The one temporary name commits to `path` use: `.NAME.budge-commit`.
/// Committers to one path take turns (the lock on the file there), and
/// the committer holds a `flock` on the temporary file while it has the
/// name, so a name whose file is not locked is a stray.
fn temp_name(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let mut s = OsString::from(".");
    s.push(name);
    s.push(".budge-commit");
    Some(dir_of(path).join(s))
}

fn os(op: &str, path: &Path, call: &'static str, e: std::io::Error) -> Error {
    Error::os(op.to_string(), call, e).with_path(path)
}

/// The umask of this process, read from `/proc/self/status` (setting it to
/// find out would race with other threads); 022 if procfs says nothing.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Opens the file at `path` (if any) and takes the commit lock on it,
/// retrying while the path is being replaced under us. `None` if no file
/// is there.
fn lock_current(op: &str, path: &Path) -> Result<Option<File>> {
    for _ in 0..100 {
        // O_NONBLOCK: a FIFO at the path must not hang the commit (the
        // rename then fails on it, or replaces it, as rename does).
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
            Err(e) => return Err(os(op, path, "open", e)),
        };
        let (held, _) = meta::identity(&f).map_err(|e| os(op, path, "fstat", e))?;
        flock_wait(op, path, &f, held)?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.dev() == held.dev && m.ino() == held.ino => return Ok(Some(f)),
            // Replaced while we waited for the lock: lock the new one.
            Ok(_) => continue,
            Err(e) if e.kind() == IoKind::NotFound => continue,
            Err(e) => return Err(os(op, path, "stat", e)),
        }
    }
    Err(Error::new(ErrorKind::Conflict, op.to_string())
        .with_path(path)
        .with_hint("the file was replaced 100 times while waiting for the commit lock"))
}

/// Takes an exclusive `flock` on `f` (which may be open read-only), waiting
/// up to [`LOCK_WAIT`] for its holder.
fn flock_wait(op: &str, path: &Path, f: &File, id: Identity) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        match sys::try_lock(f, true) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == IoKind::WouldBlock && start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) if e.kind() == IoKind::WouldBlock => {
                let who = match sys::lock::flock_holder(id.dev, id.ino) {
                    Some((pid, comm)) => format!("pid {pid} ({comm})"),
                    None => "another process".to_string(),
                };
                return Err(Error::new(ErrorKind::Locked, op.to_string())
                    .with_path(path)
                    .with_hint(format!(
                        "{who} has held the file's lock for {} s (a budge store writer, or a commit in progress)",
                        LOCK_WAIT.as_secs()
                    )));
            }
            Err(e) => return Err(os(op, path, "flock", e)),
        }
    }
}

/// Copies mode, owner and extended attributes of `from` to `to`.
fn copy_metadata(op: &str, path: &Path, from: &File, to: &File) -> Result<()> {
    let (_, owner) = meta::identity(from).map_err(|e| os(op, path, "fstat", e))?;
    let (_, mine) = meta::identity(to).map_err(|e| os(op, path, "fstat", e))?;
    if (owner.uid, owner.gid) != (mine.uid, mine.gid) {
        meta::fchown(to, owner.uid, owner.gid).map_err(|e| {
            os(op, path, "fchown", e).with_hint(format!(
                "the new version must keep the owner {}:{}; only root (or the owner, for the group) can give it",
                owner.uid, owner.gid
            ))
        })?;
    }
    // After fchown (which may clear set-id bits).
    meta::fchmod(to, owner.mode).map_err(|e| os(op, path, "fchmod", e))?;
    let names = meta::xattr_names(from).map_err(|e| os(op, path, "flistxattr", e))?;
    for name in names {
        let value = match meta::xattr_get(from, &name) {
            Ok(v) => v,
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(os(op, path, "fgetxattr", e)),
        };
        meta::xattr_set(to, &name, &value).map_err(|e| {
            os(op, path, "fsetxattr", e).with_hint(format!(
                "cannot carry the extended attribute {:?} over to the new version",
                name
            ))
        })?;
    }
    Ok(())
}

/// Publishes `content` (an unnamed file on `path`'s filesystem) at `path`
/// with the protocol in the module docs. Returns the identity of the file
/// now at `path`, and whether it replaced one.
pub(crate) fn publish(
    op: &str,
    content: &File,
    path: &Path,
    expect: Expect,
) -> Result<(Identity, bool)> {
    publish_as(op, content, path, expect, false).map(|(id, old)| (id, old.is_some()))
}

/// [`publish`] for content made only by cloning a whole file
/// (`FICLONE`) into a new unnamed file, with no write since: on btrfs one
/// `fsync` after the rename makes it durable (module docs). Returns the
/// replaced file, still open and unlocked, for the caller to close later:
/// closing the last descriptor of a replaced file frees it (btrfs drops its
/// extents right there; XFS may wait for its inode reclaim queue), which
/// then need not be in the commit's latency.
pub(crate) fn publish_clone(
    op: &str,
    content: &File,
    path: &Path,
    expect: Expect,
) -> Result<(Identity, Option<File>)> {
    publish_as(op, content, path, expect, true)
}

/// How step 6 makes a publish durable.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Durable {
    /// Data written back before the rename, then the directory's `fsync`
    /// (XFS).
    DirLog,
    /// Nothing before the rename, then `fsync` of the new file (btrfs,
    /// fresh clones).
    FileAfter,
    /// `fsync` of the new file before the rename, the directory's after.
    Both,
}

fn publish_as(
    op: &str,
    content: &File,
    path: &Path,
    expect: Expect,
    only_cloned: bool,
) -> Result<(Identity, Option<File>)> {
    let dir = dir_of(path);
    let current = lock_current(op, path)?;
    let now = match &current {
        Some(f) => Some(meta::identity(f).map_err(|e| os(op, path, "fstat", e))?.0),
        None => None,
    };
    match (expect, now) {
        (Expect::Anything, _) | (Expect::Absent, None) => {}
        (Expect::Version(v), Some(n)) if v == n => {}
        (Expect::Absent, Some(_)) => {
            return Err(conflict(
                op,
                path,
                "a file was created at the path since the snapshot was made",
            ));
        }
        (Expect::Version(_), None) => {
            return Err(conflict(
                op,
                path,
                "the file was deleted since the snapshot was taken",
            ));
        }
        (Expect::Version(v), Some(n)) => {
            let what = if (v.dev, v.ino) != (n.dev, n.ino) {
                "the file was replaced by another one"
            } else if v.size != n.size {
                "the file's size changed"
            } else {
                "the file was written or its metadata changed"
            };
            return Err(conflict(
                op,
                path,
                &format!("{what} since the snapshot was taken"),
            ));
        }
    }
    match &current {
        Some(f) => copy_metadata(op, path, f, content)?,
        None => meta::fchmod(content, 0o666 & !umask()).map_err(|e| os(op, path, "fchmod", e))?,
    }
    // One journal commit where the filesystem allows it (module docs). XFS
    // is asked by its geometry ioctl, not `fstatfs`: XFS's statfs runs the
    // deferred inactivation of earlier inodes, which this commit's journal
    // commit would then pay for.
    let durable = if sys::is_xfs(content) {
        Durable::DirLog
    } else if only_cloned && sys::fs_info(content).is_ok_and(|i| i.kind == sys::FsKind::Btrfs) {
        Durable::FileAfter
    } else {
        Durable::Both
    };
    match durable {
        // The data only has to be written by the log force: the log write
        // flushes the device cache first.
        Durable::DirLog => {
            sys::write_back(content).map_err(|e| os(op, path, "sync_file_range", e))?;
        }
        Durable::FileAfter => {}
        Durable::Both => sys::fsync(content).map_err(|e| os(op, path, "fsync", e))?,
    }
    let temp = temp_name(path).ok_or_else(|| {
        Error::new(ErrorKind::InvalidArgument, op.to_string())
            .with_path(path)
            .with_hint("the path has no file name")
    })?;
    // Held until `content` is closed: marks the temporary name as live.
    sys::try_lock(content, true).map_err(|e| os(op, path, "flock", e))?;
    loop {
        match sys::link_tmpfile(content, &temp) {
            Ok(()) => break,
            Err(e) if e.kind() == IoKind::AlreadyExists => {
                if !remove_stale(op, &temp)? {
                    return Err(Error::new(ErrorKind::Locked, op.to_string())
                        .with_path(path)
                        .with_hint(format!(
                            "another commit to this path is in progress ({} exists and is locked)",
                            temp.display()
                        )));
                }
            }
            Err(e) => return Err(os(op, path, "linkat", e)),
        }
    }
    fail::fail_point!("budge::snap::before-rename", |_| {
        Err(Error::new(ErrorKind::Io, op.to_string())
            .with_path(path)
            .with_hint("failpoint budge::snap::before-rename"))
    });
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(os(op, path, "rename", e));
    }
    fail::fail_point!("budge::snap::after-rename");
    if durable == Durable::FileAfter {
        sys::fsync(content).map_err(|e| os(op, path, "fsync", e))?;
    } else {
        let d = File::open(&dir).map_err(|e| os(op, &dir, "open directory", e))?;
        sys::fsync(&d).map_err(|e| os(op, &dir, "fsync directory", e))?;
    }
    // The temporary name is gone: drop its lock now rather than at close,
    // which a child forked meanwhile by another thread would delay until it
    // execs (it holds a duplicate of the descriptor). Likewise the old
    // file's, whose descriptor goes back to the caller.
    if let Some(f) = &current {
        let _ = sys::unlock(f);
    }
    let _ = sys::unlock(content);
    let (id, _) = meta::identity(content).map_err(|e| os(op, path, "fstat", e))?;
    Ok((id, current))
}

fn conflict(op: &str, path: &Path, what: &str) -> Error {
    Error::new(ErrorKind::Conflict, op.to_string())
        .with_path(path)
        .with_hint(format!(
            "{what}; refusing to overwrite it (OnConflict::Refuse). Take a new snapshot to merge, or commit with OnConflict::Overwrite"
        ))
}

/// Removes `temp` if it is a stray (nobody holds its lock). Returns
/// whether the name is free now.
fn remove_stale(op: &str, temp: &Path) -> Result<bool> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(temp)
    {
        Ok(f) => f,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(true),
        Err(e) => return Err(os(op, temp, "open", e)),
    };
    match sys::try_lock(&f, true) {
        Ok(()) => {}
        Err(e) if e.kind() == IoKind::WouldBlock => return Ok(false),
        Err(e) => return Err(os(op, temp, "flock", e)),
    }
    // Still the file we locked (not one a new committer linked meanwhile)?
    let (held, _) = meta::identity(&f).map_err(|e| os(op, temp, "fstat", e))?;
    match std::fs::symlink_metadata(temp) {
        Ok(m) if m.dev() == held.dev && m.ino() == held.ino => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == IoKind::NotFound => return Ok(true),
        Err(e) => return Err(os(op, temp, "stat", e)),
    }
    match std::fs::remove_file(temp) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == IoKind::NotFound => Ok(true),
        Err(e) => Err(os(op, temp, "unlink", e)),
    }
}

/// Removes the temporary file a commit to `path` left behind when its
/// process died between linking and renaming (`.NAME.budge-commit` that no
/// process holds locked). Returns what it removed. A live commit's
/// temporary file is left alone. One `open`, no directory scan.
///
/// # Errors
/// `Io` if the stray cannot be removed.
pub fn cleanup(path: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let path = path.as_ref();
    let op = "clean up after an interrupted commit";
    let Some(temp) = temp_name(path) else {
        return Ok(Vec::new());
    };
    if std::fs::symlink_metadata(&temp).is_err() {
        return Ok(Vec::new());
    }
    if !remove_stale(op, &temp)? || std::fs::symlink_metadata(&temp).is_ok() {
        return Ok(Vec::new());
    }
    let dir = dir_of(path);
    let d = File::open(&dir).map_err(|e| os(op, &dir, "open directory", e))?;
    sys::fsync(&d).map_err(|e| os(op, &dir, "fsync directory", e))?;
    Ok(vec![temp])
}
