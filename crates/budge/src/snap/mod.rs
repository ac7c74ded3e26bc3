//! Snapshots: a private, unchanging view of a file as `&[u8]`, and writable
//! snapshots committed back atomically and durably.
//!
//! A snapshot is a private copy of the file: an unnamed file (`O_TMPFILE`)
//! in the file's directory, made by FICLONE where the filesystem reflinks
//! (O(1): XFS, btrfs) and by a sparse-aware copy otherwise
//! (`copy_file_range`, then `pread`/`pwrite`: ext4, tmpfs). Nobody else can
//! open it by a path, so writes to, truncation, unlinking or replacement of
//! the original change nothing in it and cannot cause SIGBUS. Where no
//! unnamed file can be made next to the file (a directory without write
//! permission, a read-only mount), the copy goes into memory (`memfd`:
//! RAM or swap, the whole file's size), and a read-only snapshot's memfd is
//! sealed against any change.
//!
//! ```
//! use budge::snap::{OnConflict, SnapOptions, Snapshot, SnapshotMut};
//!
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("data.bin");
//! std::fs::write(&path, b"hello, world")?;
//!
//! let snap = Snapshot::open(&path)?;                // O(1) on XFS and btrfs
//! std::fs::write(&path, b"changed under it")?;
//! assert_eq!(&snap[..], b"hello, world");            // never changes under us
//!
//! let mut m = SnapshotMut::open(&path)?;           // "changed under it"
//! m[0] = b'C';
//! m.resize(6)?;                                     // grow or shrink
//! let report = m.commit()?;                         // atomic and durable
//! assert_eq!(std::fs::read(&path)?, b"Change");
//! assert_eq!(report.len, 6);
//!
//! // Optimistic concurrency: refuse to overwrite someone else's change.
//! let opts = SnapOptions { on_conflict: OnConflict::Refuse, ..Default::default() };
//! let mut m = SnapshotMut::open_with(&path, &opts)?;
//! std::fs::write(&path, b"theirs")?;
//! m[0] = b'J';
//! assert_eq!(m.commit().unwrap_err().kind(), budge::ErrorKind::Conflict);
//! assert_eq!(std::fs::read(&path)?, b"theirs");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Commit
//! A commit publishes a *new file* at the path by the protocol in
//! `publish` (see `docs/design.md`): the content goes into a new unnamed
//! file (cloned from the snapshot where the filesystem reflinks, copied
//! otherwise), which gets the old file's mode, owner and extended
//! attributes, is fsynced, linked under a temporary name and renamed over
//! the path; then the directory is fsynced. So:
//! - an opener of the path sees the whole old or the whole new content,
//!   never a mix, never a truncated file, also after a crash at any point;
//! - when `commit` returns, the content and the directory entry are durable;
//! - a shrink really shrinks the file (the new file has the snapshot's size);
//! - the path gets a new inode, on every filesystem: **other hard links**
//!   to the old file keep the old content, and **processes that have the old
//!   file open or mapped** keep seeing the old version until they reopen
//!   the path. FICLONE into the original inode (which would keep its
//!   identity and links) is not used anywhere: it is not crash-atomic (XFS
//!   and btrfs remap extent by extent, in several transactions) and cannot
//!   shrink the file in the same step. XFS exchange-range would be, but
//!   this project cannot test it (xfsprogs 6.1 cannot make such a
//!   filesystem), so it is left out.
//! - [`SnapshotMut::commit_and_close`] publishes the snapshot's own file:
//!   O(1) on every filesystem.
//! - with [`OnConflict::Refuse`], a commit fails with
//!   [`ErrorKind::Conflict`], touching nothing,
//!   when the file at the path is no longer the version the snapshot was
//!   taken from (written, truncated, chmod-ed, replaced or deleted: any
//!   change of inode, size, mtime or ctime). budge committers to one path
//!   take a lock for the check-and-rename, so two of them cannot both pass
//!   the check; a writer that does not go through budge can still slip in
//!   between the check and the rename (a window of microseconds).
//!
//! # Limits
//! - Root and the file's owner can still reach the private file through
//!   `/proc/PID/fd`; the isolation is against everyone going through paths.
//! - Writes through a [`SnapshotMut`]'s mapping into blocks shared with the
//!   original (reflink) or into holes need free space when the kernel
//!   writes them back or faults them in; on a full filesystem the kernel
//!   raises SIGBUS at the store, as for any shared file mapping.
//! - A snapshot of a budge [`Store`](crate::Store) file takes a store
//!   reader's lock for the copy, so it never catches a region move half-way;
//!   [`Store::open_snapshot`](crate::Store::open_snapshot) opens one as a
//!   store.
//! - On filesystems that copy, a snapshot is consistent only if the file
//!   does not change during the copy: budge compares the file's identity
//!   before and after and copies again (up to 5 times) if it changed, then
//!   gives up with `Conflict`.

pub(crate) mod publish;

use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use publish::cleanup;
use publish::{dir_of, publish, publish_clone, Expect};

use crate::copy::CopyOptions;
pub use crate::copy::Progress;
use crate::error::{Error, ErrorKind, Result};
use crate::map::SharedMap;
use crate::range::fmt_size;
use crate::sys::meta::{self, Identity};
use crate::sys::{self};
use crate::{Policy, Strategy};

/// How many times a copy is retried when the file changes during it.
const COPY_ATTEMPTS: u32 = 5;

/// What a commit does when the file changed since the snapshot was taken.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// Replace it anyway (last committer wins).
    #[default]
    Overwrite,
    /// Refuse with [`ErrorKind::Conflict`], leaving the file as it is.
    Refuse,
}

/// Where a snapshot's private copy lives.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// An unnamed file (`O_TMPFILE`) on the file's own filesystem.
    TmpFile,
    /// An anonymous memory file (`memfd`): costs RAM (or swap) equal to the
    /// file's size, and always a copy.
    Memory,
}

impl Backing {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backing::TmpFile => "tmpfile",
            Backing::Memory => "memory",
        }
    }
}

/// Options for opening snapshots.
#[derive(Clone, Copy, Default)]
pub struct SnapOptions<'a> {
    /// `MetadataOnly` refuses to copy: a snapshot must be a reflink.
    pub policy: Policy,
    /// Force `Reflink`, `KernelCopy` or `UserCopy` for making the copy.
    pub strategy: Option<Strategy>,
    /// Called with (bytes done, bytes total) during O(n) copies.
    pub progress: Option<Progress<'a>>,
    /// Keep the private copy in memory (`memfd`) even where a file could
    /// be made.
    pub in_memory: bool,
    /// What [`SnapshotMut::commit`] does when the file changed meanwhile.
    pub on_conflict: OnConflict,
}

impl std::fmt::Debug for SnapOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapOptions")
            .field("policy", &self.policy)
            .field("strategy", &self.strategy)
            .field("progress", &self.progress.is_some())
            .field("in_memory", &self.in_memory)
            .field("on_conflict", &self.on_conflict)
            .finish()
    }
}

/// How a snapshot was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapReport {
    /// `Reflink`, `KernelCopy`, `UserCopy`, or `Nothing` (an empty file, or
    /// a new one from [`SnapshotMut::create`]).
    pub strategy: Strategy,
    /// Data bytes copied (0 for a reflink).
    pub bytes_copied: u64,
    /// Bytes shared with the original (reflinked).
    pub bytes_cloned: u64,
    /// Where the private copy lives.
    pub backing: Backing,
    /// Copies made: more than 1 when the file changed during a copy.
    pub attempts: u32,
    /// Why the snapshot is in memory or copied, when it is.
    pub note: Option<String>,
    /// Temporary files of interrupted commits that were removed first.
    pub cleaned: Vec<PathBuf>,
    /// Wall time.
    pub elapsed: Duration,
}

impl SnapReport {
    /// Nothing copied yet.
    fn empty(backing: Backing, note: Option<String>) -> SnapReport {
        SnapReport {
            strategy: Strategy::Nothing,
            bytes_copied: 0,
            bytes_cloned: 0,
            backing,
            attempts: 0,
            note,
            cleaned: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitReport {
    /// How the content reached the published file: `Reflink`, `KernelCopy`,
    /// `UserCopy`, or `Nothing` when the snapshot's own file was published
    /// ([`SnapshotMut::commit_and_close`]).
    pub strategy: Strategy,
    /// Data bytes copied.
    pub bytes_copied: u64,
    /// Size of the published file.
    pub len: u64,
    /// Whether a file was replaced (false: the path was created).
    pub replaced: bool,
    /// Wall time.
    pub elapsed: Duration,
}

fn os(op: &str, path: &Path, call: &'static str, e: std::io::Error) -> Error {
    Error::os(op.to_string(), call, e).with_path(path)
}

/// The path commits go to: `path` itself, or the file a symbolic link at
/// `path` points to (a rename over the link would replace the link).
fn target_of(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// An empty private file for a snapshot of something in `dir`: unnamed in
/// `dir`, or in memory if asked or (when `memory_ok`) if `dir` cannot hold
/// one.
fn private_file(
    op: &str,
    path: &Path,
    dir: &Path,
    in_memory: bool,
    memory_ok: bool,
) -> Result<(File, Backing, Option<String>)> {
    let memfd = |note: String| {
        let f = meta::memfd("budge-snapshot").map_err(|e| os(op, path, "memfd_create", e))?;
        Ok((f, Backing::Memory, Some(note)))
    };
    if in_memory {
        return memfd("in memory as asked".into());
    }
    match sys::open_tmpfile(dir) {
        Ok(f) => Ok((f, Backing::TmpFile, None)),
        Err(e)
            if memory_ok
                && matches!(
                    e.raw_os_error(),
                    Some(
                        libc::EACCES
                            | libc::EPERM
                            | libc::EROFS
                            | libc::EOPNOTSUPP
                            | libc::EISDIR
                            | libc::EINVAL
                    )
                ) =>
        {
            memfd(format!(
                "no unnamed file can be made in {} ({e}): the snapshot is a copy in memory (RAM or swap)",
                dir.display()
            ))
        }
        Err(e) => Err(os(op, dir, "open(O_TMPFILE)", e).with_hint(format!(
            "a snapshot's private copy is an unnamed file in {}; it must be writable",
            dir.display()
        ))),
    }
}

/// Fills `dst` with a consistent copy of `src` (cloned where possible);
/// returns the version of `src` it holds.
fn fill(
    op: &str,
    path: &Path,
    src: &File,
    dst: &File,
    opts: &SnapOptions<'_>,
    report: &mut SnapReport,
) -> Result<Identity> {
    let copy_opts = CopyOptions {
        policy: opts.policy,
        strategy: opts.strategy,
        progress: opts.progress,
    };
    for attempt in 1..=COPY_ATTEMPTS {
        let (before, _) = meta::identity(src).map_err(|e| os(op, path, "fstat", e))?;
        if attempt > 1 {
            // The copy fills a new, empty file: empty it again.
            sys::ftruncate(dst, 0).map_err(|e| os(op, path, "ftruncate", e))?;
        }
        let r = clone_or_copy(src, dst, before.size, &copy_opts)
            .map_err(|e| private_copy_failed(e, op, path))?;
        fail::fail_point!("budge::snap::after-copy");
        report.attempts = attempt;
        report.strategy = if before.size == 0 {
            Strategy::Nothing
        } else {
            r.strategy
        };
        report.bytes_copied += r.bytes_copied;
        report.bytes_cloned = r.bytes_cloned;
        // A clone is atomic against writers (the filesystem locks the file
        // for it), so it holds some version at least as new as `before`;
        // recording `before` can only make a later conflict check stricter.
        // (No second `fstat` after a clone.)
        if r.strategy == Strategy::Reflink
            || meta::identity(src).map_err(|e| os(op, path, "fstat", e))?.0 == before
        {
            if r.strategy.copies_data() && report.note.is_none() && opts.strategy.is_none() {
                report.note = Some(format!(
                    "the filesystem cannot reflink here: {} copied",
                    fmt_size(r.bytes_copied)
                ));
            }
            return Ok(before);
        }
    }
    Err(Error::new(ErrorKind::Conflict, op.to_string())
        .with_path(path)
        .with_hint(format!(
            "the file changed during each of {COPY_ATTEMPTS} copies, so no consistent snapshot could be made (reflinks would make it atomic)"
        )))
}

/// FICLONE tried directly, then the sparse copy into the new file. No
/// capability probe (a probe costs ~50 ms and fsyncs on its first use in a
/// process), and none of the copy layer's descriptor checks (four
/// syscalls): `src` was just opened for reading and checked regular, and
/// `dst` is the snapshot's own new, empty file. `size` is `src`'s size.
fn clone_or_copy(
    src: &File,
    dst: &File,
    size: u64,
    opts: &CopyOptions<'_>,
) -> Result<crate::copy::CopyReport> {
    if matches!(opts.strategy, None | Some(Strategy::Reflink)) {
        match sys::ficlone(dst, src) {
            Ok(()) => {
                return Ok(crate::copy::CopyReport {
                    strategy: Strategy::Reflink,
                    bytes_copied: 0,
                    bytes_cloned: size,
                    hole_bytes: 0,
                })
            }
            Err(e)
                if opts.strategy == Some(Strategy::Reflink)
                    || opts.policy == Policy::MetadataOnly =>
            {
                return Err(Error::os("clone file", "ioctl(FICLONE)", e)
                    .with_kind(ErrorKind::Unsupported)
                    .with_hint("the filesystem cannot reflink this file here; allow copying"))
            }
            Err(_) => {}
        }
    }
    crate::copy::copy_into_new(src, dst, size, opts)
}

/// A copy into a private unnamed file failed: say so, since the copy
/// layer's message about "destination bytes" would read as if `path` were
/// damaged.
fn private_copy_failed(e: Error, op: &str, path: &Path) -> Error {
    let what = match e.kind() {
        ErrorKind::NoSpace => "no space for the copy",
        ErrorKind::Io | ErrorKind::PartiallyApplied => "the copy failed",
        _ => return e.with_op(op).with_path(path),
    };
    e.with_op(op).with_path(path).with_hint(format!(
        "{what}; it went to a new unnamed file, now discarded: {} is unchanged",
        path.display()
    ))
}

/// Opens the file to snapshot; also says whether it is a budge store.
fn open_source(op: &str, path: &Path) -> Result<(File, bool)> {
    let f = File::open(path).map_err(|e| {
        let kind = crate::error::kind_of(&e);
        os(op, path, "open", e).with_kind(kind)
    })?;
    let st = rustix::fs::fstat(&f).map_err(|e| os(op, path, "fstat", e.into()))?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() {
        return Err(Error::new(ErrorKind::InvalidArgument, op.to_string())
            .with_path(path)
            .with_hint("not a regular file"));
    }
    // A budge store: take a reader's lock (released when `f` is closed,
    // after the copy) so the copy never catches a region move half-way.
    let mut magic = [0u8; 8];
    let store = std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0).is_ok()
        && crate::store::format::has_magic(&magic);
    if store {
        sys::lock::ofd_lock(&f, 0, 1, sys::lock::LockKind::Shared, true)
            .map_err(|e| os(op, path, "fcntl(F_OFD_SETLKW)", e))?;
    }
    Ok((f, store))
}

/// Makes a private, consistent copy of `src` for a snapshot in `dir`;
/// `store`: `src` is a budge store.
pub(crate) fn private_copy(
    op: &str,
    path: &Path,
    src: &File,
    dir: &Path,
    opts: &SnapOptions<'_>,
    memory_ok: bool,
    store: bool,
) -> Result<(File, Identity, SnapReport)> {
    let start = Instant::now();
    let (file, backing, note) = private_file(op, path, dir, opts.in_memory, memory_ok)?;
    let mut report = SnapReport::empty(backing, note);
    let id = fill(op, path, src, &file, opts, &mut report)?;
    // A budge store's commit record belongs to its table: the copy carries
    // it.
    if store {
        if let Ok(Some(v)) = sys::meta::xattr_get_opt(src, crate::store::format::RECORD_XATTR) {
            let _ = sys::meta::xattr_set(&file, crate::store::format::RECORD_XATTR, &v);
        }
    }
    report.elapsed = start.elapsed();
    Ok((file, id, report))
}

fn map_private(
    op: &str,
    path: &Path,
    file: &File,
    len: u64,
    writable: bool,
) -> Result<Option<SharedMap>> {
    if len == 0 {
        return Ok(None);
    }
    let n = usize::try_from(len).map_err(|_| {
        Error::new(ErrorKind::InvalidArgument, op.to_string())
            .with_path(path)
            .with_hint(format!("{len} bytes do not fit in the address space"))
    })?;
    #[allow(unsafe_code)]
    // SAFETY: `file` is this snapshot's private copy, an unnamed O_TMPFILE
    // or memfd created by `private_file` and never linked while mapped: no
    // other process can open it by a path, so nobody else writes to or
    // truncates it (the caveat of /proc/PID/fd access by the owner or root
    // is documented in the module docs). The owner changes its size only
    // through `&mut self` methods that drop this mapping first.
    let map = unsafe { SharedMap::new(file, n, writable) };
    map.map(Some).map_err(|e| e.with_op(op).with_path(path))
}

/// A read-only snapshot of a file: its bytes at the moment of
/// [`open`](Snapshot::open), unchanged whatever happens to the file.
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
    file: File,
    map: Option<SharedMap>,
    version: Identity,
    report: SnapReport,
}

impl Snapshot {
    /// Snapshots the file at `path` with default options.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` for a non-regular file; `Conflict` if
    /// the file kept changing during copies; `Unsupported` under
    /// `Policy::MetadataOnly` where only a copy would do; `Io`.
    pub fn open(path: impl AsRef<Path>) -> Result<Snapshot> {
        Snapshot::open_with(path, &SnapOptions::default())
    }

    /// Snapshots the file at `path`.
    ///
    /// # Errors
    /// As for [`Snapshot::open`].
    pub fn open_with(path: impl AsRef<Path>, opts: &SnapOptions<'_>) -> Result<Snapshot> {
        let path = path.as_ref();
        let op = "snapshot";
        let (src, store) = open_source(op, path)?;
        let (file, version, report) =
            private_copy(op, path, &src, &dir_of(path), opts, true, store)?;
        if report.backing == Backing::Memory {
            meta::seal_readonly(&file).map_err(|e| os(op, path, "fcntl(F_ADD_SEALS)", e))?;
        }
        let map = map_private(op, path, &file, version.size, false)?;
        Ok(Snapshot {
            path: path.to_path_buf(),
            file,
            map,
            version,
            report,
        })
    }

    /// The path the snapshot was taken of.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, SharedMap::len)
    }

    /// Whether the snapshot is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], SharedMap::as_slice)
    }

    /// How the snapshot was made.
    pub fn report(&self) -> &SnapReport {
        &self.report
    }

    /// The private copy (for reading with other APIs; it is unnamed).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file at the path is no longer the version snapshotted.
    ///
    /// # Errors
    /// `Io` from `stat`.
    pub fn changed(&self) -> Result<bool> {
        changed_since(&self.path, Some(self.version))
    }
}

fn changed_since(path: &Path, version: Option<Identity>) -> Result<bool> {
    match File::open(path) {
        Ok(f) => {
            let (now, _) =
                meta::identity(&f).map_err(|e| os("check for changes", path, "fstat", e))?;
            Ok(Some(now) != version)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(version.is_some()),
        Err(e) => Err(os("check for changes", path, "open", e)),
    }
}

impl Deref for Snapshot {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Snapshot {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// A writable snapshot: a private copy of a file to change through
/// `&mut [u8]`, resize, and [`commit`](SnapshotMut::commit) back.
#[derive(Debug)]
pub struct SnapshotMut {
    path: PathBuf,
    file: File,
    map: Option<SharedMap>,
    len: u64,
    expect: Expect,
    opts_policy: Policy,
    on_conflict: OnConflict,
    report: SnapReport,
    /// The file the last `commit` replaced, closed at the next commit or
    /// when the snapshot is dropped rather than inside the commit (see
    /// [`SnapshotMut::commit`]).
    retired: Option<File>,
}

impl SnapshotMut {
    /// Opens a writable snapshot of the file at `path` with default options.
    ///
    /// # Errors
    /// As for [`Snapshot::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<SnapshotMut> {
        SnapshotMut::open_with(path, &SnapOptions::default())
    }

    /// Opens a writable snapshot of the file at `path` (or of the file a
    /// symbolic link there points to; commits go to that file). Removes
    /// what interrupted commits to it left behind first.
    ///
    /// # Errors
    /// As for [`Snapshot::open`].
    pub fn open_with(path: impl AsRef<Path>, opts: &SnapOptions<'_>) -> Result<SnapshotMut> {
        let path = target_of(path.as_ref());
        let op = "snapshot for writing";
        let cleaned = cleanup(&path)?;
        let (src, store) = open_source(op, &path)?;
        let (file, version, mut report) =
            private_copy(op, &path, &src, &dir_of(&path), opts, true, store)?;
        report.cleaned = cleaned;
        let map = map_private(op, &path, &file, version.size, true)?;
        Ok(SnapshotMut {
            path,
            file,
            map,
            len: version.size,
            expect: Expect::Version(version),
            opts_policy: opts.policy,
            on_conflict: opts.on_conflict,
            report,
            retired: None,
        })
    }

    /// Starts a new, empty file for `path`. Nothing at `path` is touched
    /// until the first commit, which creates the file (or, with
    /// [`OnConflict::Overwrite`], replaces whatever is there by then).
    ///
    /// # Errors
    /// `Io` if no private file can be made.
    pub fn create(path: impl AsRef<Path>) -> Result<SnapshotMut> {
        SnapshotMut::create_with(path, &SnapOptions::default())
    }

    /// [`SnapshotMut::create`] with options.
    ///
    /// # Errors
    /// As for [`SnapshotMut::create`].
    pub fn create_with(path: impl AsRef<Path>, opts: &SnapOptions<'_>) -> Result<SnapshotMut> {
        let start = Instant::now();
        let path = target_of(path.as_ref());
        let op = "create through a snapshot";
        let cleaned = cleanup(&path)?;
        let (file, backing, note) = private_file(op, &path, &dir_of(&path), opts.in_memory, true)?;
        Ok(SnapshotMut {
            path,
            file,
            map: None,
            len: 0,
            expect: Expect::Absent,
            opts_policy: opts.policy,
            on_conflict: opts.on_conflict,
            report: SnapReport {
                cleaned,
                elapsed: start.elapsed(),
                ..SnapReport::empty(backing, note)
            },
            retired: None,
        })
    }

    /// The path commits go to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the snapshot is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], SharedMap::as_slice)
    }

    /// The bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self.map.as_mut() {
            Some(m) => m.as_mut_slice().unwrap_or_default(),
            None => &mut [],
        }
    }

    /// How the snapshot was made.
    pub fn report(&self) -> &SnapReport {
        &self.report
    }

    /// Whether the file at the path is no longer the version this snapshot
    /// was taken from (or last committed).
    ///
    /// # Errors
    /// `Io` from `stat`.
    pub fn changed(&self) -> Result<bool> {
        match self.expect {
            Expect::Version(v) => changed_since(&self.path, Some(v)),
            Expect::Absent => changed_since(&self.path, None),
            Expect::Anything => Ok(false),
        }
    }

    /// Grows (with zeros) or shrinks the snapshot to `new_len` bytes. The
    /// mapping may move; borrowing rules make stale slices impossible.
    ///
    /// # Errors
    /// `Io` (e.g. ENOSPC is not possible here: growth is sparse; ENOMEM for
    /// the mapping). On error the snapshot keeps its old length.
    pub fn resize(&mut self, new_len: u64) -> Result<()> {
        let op = format!("resize snapshot to {}", fmt_size(new_len));
        if new_len == self.len {
            return Ok(());
        }
        self.map = None;
        let old = self.len;
        let r = sys::ftruncate(&self.file, new_len)
            .map_err(|e| os(&op, &self.path, "ftruncate", e))
            .and_then(|()| map_private(&op, &self.path, &self.file, new_len, true));
        match r {
            Ok(map) => {
                self.map = map;
                self.len = new_len;
                Ok(())
            }
            Err(e) => {
                // Back to the old length (shrinking cannot fail for lack of
                // space; growing back a shrunk file reads zeros, but a
                // shrink only fails before the truncate ran).
                let _ = sys::ftruncate(&self.file, old);
                self.map = map_private(&op, &self.path, &self.file, old, true)
                    .ok()
                    .flatten();
                Err(e)
            }
        }
    }

    fn expected(&self) -> Expect {
        match self.on_conflict {
            OnConflict::Overwrite => Expect::Anything,
            OnConflict::Refuse => self.expect,
        }
    }

    /// Publishes the snapshot's content at the path, atomically and
    /// durably (see the module docs); the snapshot stays open and later
    /// commits conflict-check against this version. O(1) where the
    /// filesystem reflinks, a copy otherwise.
    ///
    /// Where it reflinks, the file the commit replaced stays open until the
    /// next commit or until the snapshot is dropped: closing the last
    /// descriptor of a replaced file frees it (btrfs drops its extents
    /// there and then; XFS may wait for its inode reclaim queue), up to a
    /// millisecond that is garbage collection, not part of making the
    /// commit durable. Its space (the blocks it no longer shares) comes
    /// back then.
    ///
    /// # Errors
    /// `Conflict` (with [`OnConflict::Refuse`]) if the file changed; `Io`
    /// when the directory is not writable or a step fails (the path then
    /// still holds the old version); `NoSpace`.
    pub fn commit(&mut self) -> Result<CommitReport> {
        let start = Instant::now();
        let op = "commit snapshot";
        let dir = dir_of(&self.path);
        let content = sys::open_tmpfile(&dir).map_err(|e| {
            os(op, &self.path, "open(O_TMPFILE)", e).with_hint(format!(
                "a commit publishes a new file through {}, which must be writable",
                dir.display()
            ))
        })?;
        let copy_opts = CopyOptions {
            policy: self.opts_policy,
            strategy: None,
            progress: None,
        };
        let r = clone_or_copy(&self.file, &content, self.len, &copy_opts)
            .map_err(|e| private_copy_failed(e, op, &self.path))?;
        let (id, replaced) = if r.strategy == Strategy::Reflink {
            let (id, old) = publish_clone(op, &content, &self.path, self.expected())?;
            let replaced = old.is_some();
            // The previous commit's replaced file is closed here, after
            // this commit is durable; this one's at the next commit or drop.
            drop(std::mem::replace(&mut self.retired, old));
            (id, replaced)
        } else {
            publish(op, &content, &self.path, self.expected())?
        };
        self.expect = Expect::Version(id);
        Ok(CommitReport {
            strategy: if self.len == 0 {
                Strategy::Nothing
            } else {
                r.strategy
            },
            bytes_copied: r.bytes_copied,
            len: self.len,
            replaced,
            elapsed: start.elapsed(),
        })
    }

    /// Sets what later commits do when the file changed since the snapshot
    /// was taken (or since its last commit): after a refused commit,
    /// [`OnConflict::Overwrite`] publishes these changes over the other
    /// writer's.
    pub fn set_on_conflict(&mut self, on_conflict: OnConflict) {
        self.on_conflict = on_conflict;
    }

    /// Publishes the snapshot's own file at the path and closes the
    /// snapshot: O(1) on every filesystem (a copy only if the snapshot is
    /// in memory).
    ///
    /// # Errors
    /// As for [`SnapshotMut::commit`], in a [`CloseError`] that hands the
    /// snapshot back, still mapped and with every change: the file at the
    /// path is untouched, and the changes can be committed again (say,
    /// with [`OnConflict::Overwrite`] after a conflict), or to another
    /// path with [`snapshot_to`], or dropped. `?` turns it into the
    /// [`Error`] alone.
    pub fn commit_and_close(mut self) -> std::result::Result<CommitReport, CloseError> {
        if self.report.backing == Backing::Memory {
            return self.commit().map_err(|error| CloseError {
                error,
                snapshot: Box::new(self),
            });
        }
        let start = Instant::now();
        let op = "commit and close snapshot";
        // The mapping stays until the publish succeeded: its dirty pages
        // are in the page cache, which the publish's fsync writes back.
        match publish(op, &self.file, &self.path, self.expected()) {
            Ok((_, replaced)) => Ok(CommitReport {
                strategy: Strategy::Nothing,
                bytes_copied: 0,
                len: self.len,
                replaced,
                elapsed: start.elapsed(),
            }),
            Err(error) => Err(CloseError {
                error,
                snapshot: Box::new(self),
            }),
        }
    }
}

/// A [`SnapshotMut::commit_and_close`] that failed: why, and the snapshot
/// with its changes, still open (as `std::io::IntoInnerError` and
/// `tempfile::PersistError` hand theirs back).
pub struct CloseError {
    /// Why the commit failed.
    pub error: Error,
    /// The snapshot, as it was before the call (boxed: a `Result` carrying
    /// it whole would be large).
    pub snapshot: Box<SnapshotMut>,
}

impl CloseError {
    /// The error and the snapshot.
    pub fn into_parts(self) -> (Error, SnapshotMut) {
        (self.error, *self.snapshot)
    }
}

impl std::fmt::Debug for CloseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloseError")
            .field("error", &self.error)
            .field("path", &self.snapshot.path)
            .finish()
    }
}

impl std::fmt::Display for CloseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for CloseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<CloseError> for Error {
    fn from(e: CloseError) -> Error {
        e.error
    }
}

impl Deref for SnapshotMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl DerefMut for SnapshotMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }
}

/// Writes a consistent point-in-time copy of the file at `src` to `dest`
/// (O(1) by reflink where both are on one filesystem that reflinks, a
/// sparse-aware copy otherwise), published atomically and durably like a
/// commit. With `overwrite` false, an existing `dest` is an error.
///
/// # Errors
/// `Conflict` if `dest` exists and `overwrite` is false, or if the file kept
/// changing during copies; as for [`Snapshot::open`] otherwise.
pub fn snapshot_to(
    src: impl AsRef<Path>,
    dest: impl AsRef<Path>,
    overwrite: bool,
    opts: &SnapOptions<'_>,
) -> Result<SnapReport> {
    let (src, dest) = (src.as_ref(), target_of(dest.as_ref()));
    let op = "snapshot to a file";
    let cleaned = cleanup(&dest)?;
    let (from, store) = open_source(op, src)?;
    let (file, _, mut report) = private_copy(op, src, &from, &dir_of(&dest), opts, false, store)?;
    report.cleaned = cleaned;
    let expect = if overwrite {
        Expect::Anything
    } else {
        Expect::Absent
    };
    let start = Instant::now();
    let published = if report.strategy == Strategy::Reflink {
        publish_clone(op, &file, &dest, expect).map(|(id, old)| (id, old.is_some()))
    } else {
        publish(op, &file, &dest, expect)
    };
    published.map_err(|e| match e.kind() {
        ErrorKind::Conflict => Error::new(ErrorKind::Conflict, op)
            .with_path(&dest)
            .with_hint("the destination exists; pass overwrite to replace it"),
        _ => e,
    })?;
    report.elapsed += start.elapsed();
    Ok(report)
}
