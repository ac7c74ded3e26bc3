//! The store: named growable arrays in one memory-mapped file.
//!
//! A store file holds a small header (two checksummed slots, see [`format`](mod@format))
//! and then each region's bytes, packed in table order. Growing region `k`
//! inserts space at the end of its capacity ([`crate::insert`]), so its bytes
//! and every earlier region's bytes stay where they are on disk and in memory,
//! and later regions move up by exactly the inserted amount; shrinking
//! collapses space the same way. The whole file is mapped into one large
//! reservation of address space, so the base never moves.
//!
//! ```no_run
//! use budge::store::{Store, StoreOptions};
//!
//! let mut s = Store::create("arrays.budge", &StoreOptions::default())?;
//! s.add("ids", 0, 8)?;              // a region of u64s
//! s.add("names", 1 << 20, 0)?;      // 1 MiB of bytes after it
//! s.resize("ids", 8 * 1000)?;       // "names" budges along
//! s.get_mut::<u64>("ids")?[999] = 42;
//! s.commit()?;                      // durable
//! # Ok::<(), budge::Error>(())
//! ```
//!
//! Crash safety: every structural change (add, resize across capacity,
//! remove) writes the new table with an *intent* into the inactive header
//! slot and syncs it before touching the file; recovery at the next open
//! completes the change from whatever state the crash left. See
//! `docs/design.md` ("The store") for the protocol and its case analysis.
//!
//! Locking: one writer per file (`flock`; a second gets [`ErrorKind::Locked`]
//! naming the holder's pid); any number of read-only openers, which hold a
//! shared byte-range lock that structural changes need exclusively, so
//! nothing moves under a reader's slices.

pub mod format;
pub mod plan;

use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytemuck::Pod;

use crate::copy::{self, CopyOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::map::{Advice, Reservation};
use crate::range::fmt_size;
use crate::shift::{self, ShiftOptions};
use crate::sys::{self, lock::LockKind, probe::Capabilities};
use crate::{Policy, Strategy};
use format::{Entry, Header, Intent, IntentKind, JournalEntry, Method};
pub use plan::Growth;

/// Options for opening or creating a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Whether resizes may copy data (the sidecar strategies on filesystems
    /// without insert-range or reflink, e.g. tmpfs).
    pub policy: Policy,
    /// Force one shift strategy: `Native`, `Reflink`, `KernelCopy` or
    /// `UserCopy` (the last three go through a sidecar copy of the tail).
    pub strategy: Option<Strategy>,
    /// How capacity follows length.
    pub growth: Growth,
    /// Region alignment for a new store; default: the larger of the page
    /// size and the filesystem block size.
    pub align: Option<u32>,
    /// Address space to reserve (default 1 TiB, at least twice the file):
    /// growing past it moves the whole mapping once.
    pub reserve: u64,
    /// `madvise` for the mapping.
    pub advice: Advice,
    /// Wait for read-only openers to close before a structural change
    /// instead of failing with `Locked`.
    pub wait_for_readers: bool,
    /// Commit native resizes with the small commit record (an extended
    /// attribute that the filesystem journals in order with the shift): one
    /// `fdatasync` per resize instead of two. On by default; off, or where
    /// the record does not apply (adds, removes, more than four regions
    /// changed since the last header write, no extended attributes), the
    /// intent goes into a header slot first. See `docs/design.md`.
    pub commit_record: bool,
    /// Compact the store ([`Store::compact`], default options) after a
    /// native shift whose moved tail had more than this many extents
    /// (`None`: never on its own). Each insert or collapse costs time per
    /// extent to its right (about 1.3 µs on XFS, measured), and a tail of
    /// more than [`format::MAX_JOURNAL`] extents cannot be shifted natively
    /// at all, so the default, 10,000, keeps resizes fast and possible. The
    /// compaction is reported in [`ResizeReport::compacted`].
    pub compact_above: Option<usize>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            policy: Policy::AllowCopy,
            strategy: None,
            growth: Growth::Amortized,
            align: None,
            reserve: 1 << 40,
            advice: Advice::Normal,
            wait_for_readers: false,
            commit_record: true,
            compact_above: Some(10_000),
        }
    }
}

/// A region as listed by [`Store::regions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Name.
    pub name: String,
    /// File offset of its first byte.
    pub offset: u64,
    /// Bytes in use.
    pub len: u64,
    /// Bytes reserved on disk for it (holes beyond `len` cost no space).
    pub capacity: u64,
    /// Element size of a typed region, 0 for bytes.
    pub elem_size: u32,
    /// Address of its first byte in this process.
    pub address: usize,
}

/// What a shift under a structural change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShiftInfo {
    /// Insert or collapse.
    pub kind: IntentKind,
    /// Where (file offset).
    pub offset: u64,
    /// How much.
    pub len: u64,
    /// The strategy that moved the tail.
    pub strategy: Strategy,
    /// Data bytes copied (0 for native and reflink).
    pub bytes_copied: u64,
    /// Bytes whose page cache the kernel dropped (re-read on next touch).
    pub tail_reread: u64,
    /// Data extents recorded in the intent journal (native).
    pub extents: usize,
    /// Whether the mapping had to move to a larger reservation (every
    /// address changed).
    pub remapped: bool,
    /// Whether the change was committed by the commit record (one
    /// `fdatasync`) rather than a header slot written before the shift (two).
    pub record: bool,
}

/// What [`Store::resize`] (and add/remove) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResizeReport {
    /// The region.
    pub name: String,
    /// Length before.
    pub old_len: u64,
    /// Length after.
    pub new_len: u64,
    /// Capacity before.
    pub old_capacity: u64,
    /// Capacity after.
    pub new_capacity: u64,
    /// The shift, if capacity changed.
    pub shift: Option<ShiftInfo>,
    /// What the automatic compaction after the shift moved
    /// ([`StoreOptions::compact_above`]); empty when it did not run.
    pub compacted: Vec<Compacted>,
    /// Why the automatic compaction stopped, if it failed (the resize
    /// itself succeeded and is durable).
    pub compact_error: Option<String>,
}

/// What [`Store::compact`] did to one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The region.
    pub name: String,
    /// The relocation of its bytes in use.
    pub report: crate::relocate::RelocateReport,
}

/// What recovery found and did when the store was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// A description of each action taken; empty when the store was clean.
    pub actions: Vec<String>,
}

/// A store of named regions in one memory-mapped file. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    file: File,
    writable: bool,
    header: Header,
    slot: usize,
    map: Reservation,
    opts: StoreOptions,
    caps: Arc<Capabilities>,
    poisoned: Option<String>,
    recovery: Recovery,
    abandoned: bool,
    /// How the private copy was made, for a [`Store::open_snapshot`].
    snapshot: Option<crate::snap::SnapReport>,
    /// When `header` comes from the commit record: the table of its base
    /// slot (`slot`), which the record's changes are relative to.
    record_base: Option<Header>,
    /// Whether the file has a commit record attribute (current or stale).
    record_on_file: bool,
}

fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".budge-shift");
    PathBuf::from(s)
}

fn err(kind: ErrorKind, op: &str, path: &Path, hint: impl Into<String>) -> Error {
    Error::new(kind, op.to_string())
        .with_path(path)
        .with_hint(hint)
}

fn os(op: &str, path: &Path, call: &'static str, e: std::io::Error) -> Error {
    Error::os(op.to_string(), call, e).with_path(path)
}

impl Store {
    /// Creates a new, empty store at `path` (which must not exist). The file
    /// appears fully formed or not at all (it is built unnamed, then linked).
    ///
    /// # Errors
    /// `InvalidArgument` if `path` exists or the alignment is bad; `Io`.
    pub fn create(path: impl AsRef<Path>, opts: &StoreOptions) -> Result<Store> {
        let path = path.as_ref();
        let op = "create store";
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if path.exists() {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                path,
                "the file already exists",
            ));
        }
        let caps = crate::probe(&dir).map_err(|e| e.with_path(path))?;
        let page = rustix_page_size();
        let align = match opts.align {
            Some(a) => a,
            None => u32::try_from(caps.block_size().max(page)).unwrap_or(format::MAX_ALIGN),
        };
        if !align.is_power_of_two()
            || !(format::MIN_ALIGN..=format::MAX_ALIGN).contains(&align)
            || u64::from(align) % caps.block_size() != 0
            || u64::from(align) % page != 0
        {
            return Err(err(
                ErrorKind::Alignment,
                op,
                path,
                format!(
                    "alignment {align} must be a power of two in {}..={}, a multiple of the page ({page}) and of the filesystem block ({})",
                    format::MIN_ALIGN,
                    format::MAX_ALIGN,
                    caps.block_size()
                ),
            ));
        }
        let header = Header::new(align);
        let (file, named) = match sys::open_tmpfile(&dir) {
            Ok(f) => (f, false),
            Err(_) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(path)
                    .map_err(|e| os(op, path, "open", e))?;
                (f, true)
            }
        };
        let build = || -> Result<()> {
            // Allocate and write the whole header area so later header writes
            // are overwrites that need no allocation.
            let zeros = vec![0u8; format::DATA_START as usize];
            file.write_all_at(&zeros, 0)
                .map_err(|e| os(op, path, "pwrite", e))?;
            let slot = format::encode(&header);
            file.write_all_at(&slot, format::SLOT_OFFSET[0])
                .map_err(|e| os(op, path, "pwrite", e))?;
            sys::fsync(&file).map_err(|e| os(op, path, "fsync", e))?;
            if !named {
                sys::link_tmpfile(&file, path).map_err(|e| os(op, path, "linkat", e))?;
            }
            let d = File::open(&dir).map_err(|e| os(op, path, "open dir", e))?;
            sys::fsync(&d).map_err(|e| os(op, path, "fsync dir", e))?;
            Ok(())
        };
        if let Err(e) = build() {
            if named {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        drop(file);
        Store::open(path, opts)
    }

    /// Opens an existing store for reading and writing, recovering from an
    /// interrupted structural change if there was one ([`Store::recovery`]
    /// says what was done).
    ///
    /// # Errors
    /// `Locked` if another writer has it open (naming its pid) or recovery
    /// must wait for readers; `Corrupted`/`Unsupported` for a damaged or
    /// newer file; `NotFound`; `Io`.
    pub fn open(path: impl AsRef<Path>, opts: &StoreOptions) -> Result<Store> {
        Store::open_mode(path.as_ref(), opts, true)
    }

    /// Opens a store read-only. Any number of readers may open it, beside one
    /// writer; while a reader is open the writer can change lengths within
    /// capacity and the bytes, but cannot move regions.
    ///
    /// # Errors
    /// `Corrupted`/`Unsupported` as for [`Store::open`]; `NeedsRecovery` if a
    /// structural change was interrupted (open it read-write once).
    pub fn open_read_only(path: impl AsRef<Path>, opts: &StoreOptions) -> Result<Store> {
        Store::open_mode(path.as_ref(), opts, false)
    }

    fn open_mode(path: &Path, opts: &StoreOptions, writable: bool) -> Result<Store> {
        let op = if writable {
            "open store"
        } else {
            "open store read-only"
        };
        let file = open_file(path, op, writable)?;
        let info = sys::file_info(&file).map_err(|e| os(op, path, "fstat", e))?;
        if !info.regular {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                path,
                "not a regular file",
            ));
        }
        if writable {
            if let Err(e) = sys::try_lock(&file, true) {
                if e.kind() != IoKind::WouldBlock {
                    return Err(os(op, path, "flock", e));
                }
                let who = match sys::lock::flock_holder(info.dev, info.ino) {
                    Some((pid, comm)) if pid == std::process::id() => {
                        format!("this process (pid {pid}, {comm}) already has it open for writing")
                    }
                    Some((pid, comm)) => format!("pid {pid} ({comm}) has it open for writing"),
                    None => "another process has it open for writing".to_string(),
                };
                return Err(err(
                    ErrorKind::Locked,
                    op,
                    path,
                    format!("{who}; a store has one writer at a time"),
                ));
            }
        } else {
            // Wait out a structural change in progress, then pin the layout.
            sys::lock::ofd_lock(&file, 0, 1, LockKind::Shared, true)
                .map_err(|e| os(op, path, "fcntl(F_OFD_SETLKW)", e))?;
        }
        Store::from_file(path, file, opts, writable, None)
    }

    /// Opens a read-only snapshot of the store at `path`: a private copy
    /// (FICLONE into an unnamed file: O(1) on XFS and btrfs; a sparse copy
    /// elsewhere) taken while holding a reader's lock, so it never catches a
    /// structural change half-way. The snapshot never changes, and the
    /// writer may go on resizing, adding and removing regions as soon as
    /// this returns. With a copy, the bytes are point-in-time only if the
    /// writer does not write during the copy; the layout always is.
    /// [`Store::snapshot`] says how it was made.
    ///
    /// # Errors
    /// As for [`Store::open_read_only`]; `Unsupported` under
    /// `Policy::MetadataOnly` where only a copy would do.
    pub fn open_snapshot(path: impl AsRef<Path>, opts: &StoreOptions) -> Result<Store> {
        let path = path.as_ref();
        let op = "snapshot store";
        let file = open_file(path, op, false)?;
        // Wait out a structural change in progress and pin the layout while
        // the copy is made.
        sys::lock::ofd_lock(&file, 0, 1, LockKind::Shared, true)
            .map_err(|e| os(op, path, "fcntl(F_OFD_SETLKW)", e))?;
        let found = read_header(&file, path, op)?;
        if let Some(intent) = found.header.intent {
            let done = intent.method == Method::Native
                && native_progress_done(
                    &file,
                    path,
                    &intent,
                    found.slot,
                    found.record_base.is_some(),
                )?;
            if !done {
                return Err(err(
                    ErrorKind::NeedsRecovery,
                    op,
                    path,
                    "a structural change was interrupted; open the store read-write once to complete it",
                ));
            }
        }
        let snap_opts = crate::snap::SnapOptions {
            policy: opts.policy,
            strategy: opts.strategy.filter(|s| *s != Strategy::Native),
            ..Default::default()
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (private, _, report) =
            crate::snap::private_copy(op, path, &file, &dir, &snap_opts, true, true)?;
        drop(file);
        // The copy has no commit record: it gets the table read here.
        Store::from_file(path, private, opts, false, Some((report, found)))
    }

    /// How the private copy was made, for a store opened with
    /// [`Store::open_snapshot`]; `None` otherwise.
    pub fn snapshot(&self) -> Option<&crate::snap::SnapReport> {
        self.snapshot.as_ref()
    }

    fn from_file(
        path: &Path,
        file: File,
        opts: &StoreOptions,
        writable: bool,
        snapshot: Option<(crate::snap::SnapReport, Found)>,
    ) -> Result<Store> {
        let op = if snapshot.is_some() {
            "open store snapshot"
        } else if writable {
            "open store"
        } else {
            "open store read-only"
        };
        let info = sys::file_info(&file).map_err(|e| os(op, path, "fstat", e))?;
        let caps = sys::probe::probe_file(&file).map_err(|e| e.with_path(path))?;
        let (snapshot, found) = match snapshot {
            Some((report, found)) => (Some(report), found),
            None => (None, read_header(&file, path, op)?),
        };
        let Found {
            header,
            slot,
            other,
            record_base,
            record_on_file,
        } = found;
        let reserve = usize::try_from(opts.reserve.max(2 * info.size).next_multiple_of(1 << 30))
            .map_err(|_| {
                err(
                    ErrorKind::InvalidArgument,
                    op,
                    path,
                    "reservation too large",
                )
            })?;
        let map = Reservation::new(reserve, writable).map_err(|e| e.with_path(path))?;
        let mut s = Store {
            path: path.to_path_buf(),
            file,
            writable,
            header,
            slot,
            map,
            opts: opts.clone(),
            caps,
            poisoned: None,
            recovery: Recovery::default(),
            // Until the open succeeds, dropping must not write anything.
            abandoned: true,
            snapshot,
            record_base,
            record_on_file: record_on_file && writable,
        };
        s.recover(other)?;
        s.clean_intent("open store", true)?;
        s.remap()?;
        s.abandoned = false;
        Ok(s)
    }

    /// What recovery did when this store was opened.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The region alignment in bytes.
    pub fn align(&self) -> u64 {
        u64::from(self.header.align)
    }

    /// The header generation (increases with every committed change).
    pub fn generation(&self) -> u64 {
        self.header.generation
    }

    /// The file size the table describes.
    pub fn file_size(&self) -> u64 {
        self.header.data_end()
    }

    /// The capabilities of the filesystem under the store.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the store was opened read-write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The address-space reservation: (base address, bytes reserved).
    pub fn reservation(&self) -> (usize, usize) {
        (self.map.base(), self.map.reserved())
    }

    /// The regions in file order.
    pub fn regions(&self) -> Vec<Region> {
        self.header
            .regions
            .iter()
            .map(|r| self.region_of(r))
            .collect()
    }

    fn region_of(&self, r: &Entry) -> Region {
        Region {
            name: r.name.clone(),
            offset: r.offset,
            len: r.len,
            capacity: r.capacity,
            elem_size: r.elem_size,
            address: self.map.base() + r.offset as usize,
        }
    }

    /// The region called `name`.
    pub fn region(&self, name: &str) -> Option<Region> {
        self.header
            .find(name)
            .map(|i| self.region_of(&self.header.regions[i]))
    }

    fn index(&self, op: &str, name: &str) -> Result<usize> {
        self.header.find(name).ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                op,
                &self.path,
                format!("no region named {name:?}"),
            )
        })
    }

    fn range_of(&self, i: usize) -> (usize, usize) {
        let r = &self.header.regions[i];
        (r.offset as usize, r.len as usize)
    }

    /// The bytes of region `name`.
    ///
    /// # Errors
    /// `NotFound`.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let i = self.index(&format!("read region {name:?}"), name)?;
        let (o, l) = self.range_of(i);
        self.map.bytes(o, l).map_err(|e| e.with_path(&self.path))
    }

    /// The bytes of region `name`, writable. Changes reach the file through
    /// the shared mapping; [`commit`](Self::commit) makes them durable.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` on a read-only store; `Poisoned`.
    pub fn bytes_mut(&mut self, name: &str) -> Result<&mut [u8]> {
        let [b] = self.many_mut([name])?;
        Ok(b)
    }

    /// Several regions' bytes at once, writable.
    ///
    /// # Errors
    /// As for [`bytes_mut`](Self::bytes_mut), and `InvalidArgument` if a
    /// name repeats.
    pub fn many_mut<const N: usize>(&mut self, names: [&str; N]) -> Result<[&mut [u8]; N]> {
        let op = format!("write regions {names:?}");
        self.writable_check(&op)?;
        let mut ranges = Vec::with_capacity(N);
        for (k, n) in names.iter().enumerate() {
            if names[..k].contains(n) {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    &op,
                    &self.path,
                    format!("{n:?} is named twice"),
                ));
            }
            let i = self.index(&op, n)?;
            ranges.push(self.range_of(i));
        }
        let path = self.path.clone();
        let v = self.map.many_mut(&ranges).map_err(|e| e.with_path(path))?;
        Ok(v.try_into()
            .unwrap_or_else(|_| unreachable!("N ranges give N slices")))
    }

    fn typed_check<T: Pod>(&self, op: &str, name: &str) -> Result<usize> {
        let i = self.index(op, name)?;
        let r = &self.header.regions[i];
        let size = std::mem::size_of::<T>();
        if size == 0 {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                &self.path,
                "zero-sized element type",
            ));
        }
        if r.elem_size != 0 && r.elem_size as usize != size {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                &self.path,
                format!(
                    "region {name:?} holds {}-byte elements, not {size}-byte {}",
                    r.elem_size,
                    std::any::type_name::<T>()
                ),
            ));
        }
        if r.len % size as u64 != 0 {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                &self.path,
                format!(
                    "{} bytes is not a whole number of {size}-byte elements",
                    r.len
                ),
            ));
        }
        Ok(i)
    }

    /// Region `name` as a slice of `T`.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` if the region's element size is not
    /// `size_of::<T>()` or its length not a multiple of it.
    pub fn get<T: Pod>(&self, name: &str) -> Result<&[T]> {
        let op = format!("read region {name:?}");
        self.typed_check::<T>(&op, name)?;
        let b = self.bytes(name)?;
        bytemuck::try_cast_slice(b).map_err(|e| {
            err(
                ErrorKind::InvalidArgument,
                &op,
                &self.path,
                format!("{e:?}"),
            )
        })
    }

    /// Region `name` as a mutable slice of `T`.
    ///
    /// # Errors
    /// As for [`get`](Self::get) and [`bytes_mut`](Self::bytes_mut).
    pub fn get_mut<T: Pod>(&mut self, name: &str) -> Result<&mut [T]> {
        let op = format!("write region {name:?}");
        self.typed_check::<T>(&op, name)?;
        let path = self.path.clone();
        let b = self.bytes_mut(name)?;
        bytemuck::try_cast_slice_mut(b)
            .map_err(|e| err(ErrorKind::InvalidArgument, &op, &path, format!("{e:?}")))
    }

    fn writable_check(&self, op: &str) -> Result<()> {
        if !self.writable {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                &self.path,
                "the store is open read-only",
            ));
        }
        if let Some(p) = &self.poisoned {
            return Err(err(
                ErrorKind::Poisoned,
                op,
                &self.path,
                format!("an earlier write failed ({p}); reopen the store"),
            ));
        }
        Ok(())
    }

    fn poison<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if self.poisoned.is_none() {
                self.poisoned = Some(e.to_string());
            }
        }
        r
    }

    /// Makes every write through the mapping durable (`fdatasync`).
    ///
    /// # Errors
    /// `Io` (the store is then poisoned: a failed sync is not retryable).
    pub fn commit(&mut self) -> Result<()> {
        self.writable_check("commit")?;
        let r = sys::fdatasync(&self.file).map_err(|e| os("commit", &self.path, "fdatasync", e));
        self.poison(r)?;
        self.clean_intent("commit", false)
    }

    /// Relocates the fragmented parts of every region into as few extents as
    /// the filesystem gives ([`crate::relocate::relocate`]): the cure for a store that
    /// many resizes have cut into thousands of extents, which makes each
    /// later shift slower (XFS pays per extent to the right of an insert).
    ///
    /// Commits first (a pending change's journal records device addresses,
    /// which relocation changes). Then each region's bytes in use are
    /// relocated in place, chunk by chunk, keeping the inode, the layout
    /// and every byte: the mapping, slices taken after, and other processes
    /// reading the store see the same content throughout. Nothing in the
    /// header changes, so a crash part-way needs no recovery: each chunk is
    /// either moved or left as it was.
    ///
    /// `opts.range` must be `None` and the strategy an in-place one
    /// (copy-rename would give the store a new inode under its own mapping).
    ///
    /// # Errors
    /// `InvalidArgument` for a read-only store or bad options; as
    /// for [`crate::relocate::relocate`]. Chunks not moved for an expected reason (no
    /// space, a concurrent writer) are in the reports, not errors.
    pub fn compact(&mut self, opts: &crate::relocate::RelocateOptions) -> Result<Vec<Compacted>> {
        let op = "compact store";
        self.writable_check(op)?;
        if opts.range.is_some() || opts.strategy == Some(crate::RelocateStrategy::CopyRename) {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                &self.path,
                "compaction relocates whole regions in place: no range, no copy-rename",
            ));
        }
        if !opts.dry_run {
            self.commit()?;
        }
        let mut out = Vec::new();
        for r in self.header.regions.clone() {
            if r.len == 0 {
                continue;
            }
            let o = crate::relocate::RelocateOptions {
                range: Some((r.offset, r.len)),
                ..*opts
            };
            let report =
                crate::relocate::relocate(&self.file, &o).map_err(|e| e.with_path(&self.path))?;
            out.push(Compacted {
                name: r.name.clone(),
                report,
            });
        }
        Ok(out)
    }

    /// Compacts after a native shift of a tail of more than
    /// `opts.compact_above` extents. Best effort: the resize is done.
    fn auto_compact(&mut self, shift: Option<&ShiftInfo>) -> (Vec<Compacted>, Option<String>) {
        match (shift, self.opts.compact_above) {
            (Some(info), Some(limit)) if info.extents > limit => {
                match self.compact(&crate::relocate::RelocateOptions::default()) {
                    Ok(c) => (c, None),
                    Err(e) => (Vec::new(), Some(e.to_string())),
                }
            }
            _ => (Vec::new(), None),
        }
    }

    /// Closes the store the way a crash would: without replacing a pending
    /// intent record (for crash and recovery tests).
    #[doc(hidden)]
    pub fn abandon(mut self) {
        self.abandoned = true;
    }

    /// Replaces a completed change's intent with a clean table, so the
    /// header no longer refers to device addresses (a byte copy or a
    /// defragmented file then opens without its journal). The shift must
    /// be durable before the clean slot can be: sync, write, sync.
    fn clean_intent(&mut self, op: &str, fold_record: bool) -> Result<()> {
        if !self.writable || self.poisoned.is_some() {
            return Ok(());
        }
        if self.header.intent.is_some() || (fold_record && self.record_base.is_some()) {
            let r = sys::fdatasync(&self.file).map_err(|e| os(op, &self.path, "fdatasync", e));
            self.poison(r)?;
            let mut clean = self.header.clone();
            clean.intent = None;
            self.publish(op, clean, None)?;
        }
        // A slot newer than the record is durable: the record is stale.
        if self.record_on_file && self.record_base.is_none() {
            let _ = sys::meta::xattr_remove(&self.file, format::RECORD_XATTR);
            self.record_on_file = false;
        }
        Ok(())
    }

    /// A region name that is valid and not taken yet.
    fn check_new_name(&self, op: &str, name: &str) -> Result<()> {
        format::check_name(name).map_err(|h| err(ErrorKind::InvalidArgument, op, &self.path, h))?;
        if self.header.find(name).is_some() {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                &self.path,
                format!("a region named {name:?} exists"),
            ));
        }
        Ok(())
    }

    /// Adds a region of `len` zero bytes at the end, typed with `elem_size`
    /// (0 for bytes).
    ///
    /// # Errors
    /// `InvalidArgument` for a bad or duplicate name, or `len` not a multiple
    /// of `elem_size`; as for [`resize`](Self::resize).
    pub fn add(&mut self, name: &str, len: u64, elem_size: u32) -> Result<ResizeReport> {
        let op = format!("add region {name:?}");
        self.writable_check(&op)?;
        self.check_new_name(&op, name)?;
        if self.header.regions.len() >= format::MAX_REGIONS {
            return Err(err(
                ErrorKind::InvalidArgument,
                &op,
                &self.path,
                format!("a store holds at most {} regions", format::MAX_REGIONS),
            ));
        }
        if elem_size != 0 && len % u64::from(elem_size) != 0 {
            return Err(err(
                ErrorKind::InvalidArgument,
                &op,
                &self.path,
                format!("{len} bytes is not a whole number of {elem_size}-byte elements"),
            ));
        }
        let cap = plan::capacity_for(len, 0, self.align(), Growth::Exact);
        let mut next = self.header.clone();
        let at = next.data_end();
        next.regions.push(Entry {
            name: name.to_string(),
            offset: at,
            len,
            capacity: cap,
            elem_size,
        });
        next.repack();
        let shift = self.structural(&op, next, IntentKind::Insert, at, cap)?;
        let (compacted, compact_error) = self.auto_compact(shift.as_ref());
        Ok(ResizeReport {
            name: name.to_string(),
            old_len: 0,
            new_len: len,
            old_capacity: 0,
            new_capacity: cap,
            compacted,
            compact_error,
            shift,
        })
    }

    /// Removes region `name`; later regions move down over its space.
    ///
    /// # Errors
    /// `NotFound`; as for [`resize`](Self::resize).
    pub fn remove(&mut self, name: &str) -> Result<ResizeReport> {
        let op = format!("remove region {name:?}");
        self.writable_check(&op)?;
        let i = self.index(&op, name)?;
        let r = self.header.regions[i].clone();
        let mut next = self.header.clone();
        next.regions.remove(i);
        next.repack();
        let shift = self.structural(&op, next, IntentKind::Collapse, r.offset, r.capacity)?;
        let (compacted, compact_error) = self.auto_compact(shift.as_ref());
        Ok(ResizeReport {
            name: name.to_string(),
            old_len: r.len,
            new_len: 0,
            old_capacity: r.capacity,
            new_capacity: 0,
            compacted,
            compact_error,
            shift,
        })
    }

    /// Renames a region (a header update only).
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` for a bad or taken name; `Io`.
    pub fn rename(&mut self, old: &str, new: &str) -> Result<()> {
        let op = format!("rename region {old:?} to {new:?}");
        self.writable_check(&op)?;
        let i = self.index(&op, old)?;
        if old == new {
            return format::check_name(new)
                .map_err(|h| err(ErrorKind::InvalidArgument, &op, &self.path, h));
        }
        self.check_new_name(&op, new)?;
        let mut next = self.header.clone();
        next.regions[i].name = new.to_string();
        next.intent = None;
        self.publish(&op, next, None)
    }

    /// Resizes region `name` to `new_len` bytes. New bytes read as zero.
    /// Within capacity only the header changes; otherwise space is inserted
    /// at (or collapsed from) the end of the region's capacity, so this
    /// region and every earlier one keep their file offsets and addresses and
    /// later ones move by the difference. Durable on return.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` (length not a multiple of the element
    /// size, read-only); `Locked` (read-only openers pin the layout);
    /// `Unsupported` (metadata-only where only copying would work); `NoSpace`
    /// (store unchanged); `Poisoned`.
    pub fn resize(&mut self, name: &str, new_len: u64) -> Result<ResizeReport> {
        let op = format!("resize region {name:?} to {}", fmt_size(new_len));
        self.writable_check(&op)?;
        let i = self.index(&op, name)?;
        let r = self.header.regions[i].clone();
        if r.elem_size != 0 && new_len % u64::from(r.elem_size) != 0 {
            return Err(err(
                ErrorKind::InvalidArgument,
                &op,
                &self.path,
                format!(
                    "{new_len} bytes is not a whole number of {}-byte elements",
                    r.elem_size
                ),
            ));
        }
        let new_cap = plan::capacity_for(new_len, r.capacity, self.align(), self.opts.growth);
        self.resize_to(&op, i, new_len, new_cap)
    }

    /// Makes sure region `name` can grow to `capacity` bytes without moving
    /// anything (like `Vec::reserve`).
    ///
    /// # Errors
    /// As for [`resize`](Self::resize).
    pub fn reserve(&mut self, name: &str, capacity: u64) -> Result<ResizeReport> {
        let op = format!("reserve {} for region {name:?}", fmt_size(capacity));
        self.writable_check(&op)?;
        let i = self.index(&op, name)?;
        let r = self.header.regions[i].clone();
        let cap = plan::capacity_for(capacity, 0, self.align(), Growth::Exact).max(r.capacity);
        self.resize_to(&op, i, r.len, cap)
    }

    /// Gives back capacity beyond the region's length (rounded up to the
    /// alignment).
    ///
    /// # Errors
    /// As for [`resize`](Self::resize).
    pub fn shrink_to_fit(&mut self, name: &str) -> Result<ResizeReport> {
        let op = format!("shrink region {name:?} to fit");
        self.writable_check(&op)?;
        let i = self.index(&op, name)?;
        let r = self.header.regions[i].clone();
        let cap = plan::capacity_for(r.len, r.capacity, self.align(), Growth::Exact);
        self.resize_to(&op, i, r.len, cap)
    }

    fn resize_to(
        &mut self,
        op: &str,
        i: usize,
        new_len: u64,
        new_cap: u64,
    ) -> Result<ResizeReport> {
        let r = self.header.regions[i].clone();
        let mut next = self.header.clone();
        next.regions[i].len = new_len;
        next.regions[i].capacity = new_cap;
        next.repack();
        let shift = if new_cap == r.capacity {
            if new_len != r.len {
                next.intent = None;
                self.publish(op, next, None)?;
            }
            None
        } else if new_cap > r.capacity {
            self.structural(
                op,
                next,
                IntentKind::Insert,
                r.offset + r.capacity,
                new_cap - r.capacity,
            )?
        } else {
            self.structural(
                op,
                next,
                IntentKind::Collapse,
                r.offset + new_cap,
                r.capacity - new_cap,
            )?
        };
        if new_len < r.len {
            // Keep bytes beyond len zero, so a later grow within capacity
            // shows zeros (recovery redoes this after a crash).
            let end = r.len.min(new_cap);
            if end > new_len {
                let res = self.zero(r.offset + new_len, end - new_len).and_then(|()| {
                    sys::fdatasync(&self.file).map_err(|e| os(op, &self.path, "fdatasync", e))
                });
                self.poison(res)?;
            }
        }
        let (compacted, compact_error) = self.auto_compact(shift.as_ref());
        Ok(ResizeReport {
            name: r.name,
            old_len: r.len,
            new_len,
            old_capacity: r.capacity,
            new_capacity: new_cap,
            compacted,
            compact_error,
            shift,
        })
    }

    /// Zeroes `[offset, offset + len)` of the file: whole blocks punched,
    /// partial ones written.
    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        let a = self.align();
        let start = offset.next_multiple_of(a).min(offset + len);
        let end = ((offset + len) / a * a).max(start);
        let write_zeros = |o: u64, n: u64| -> Result<()> {
            if n == 0 {
                return Ok(());
            }
            let z = vec![0u8; n as usize];
            self.file
                .write_all_at(&z, o)
                .map_err(|e| os("zero", &self.path, "pwrite", e))
        };
        write_zeros(offset, start - offset)?;
        if end > start {
            let has_data = crate::extents::data_map_in(&self.file, start, end - start)
                .map(|m| {
                    m.iter()
                        .any(|s| s.kind == crate::extents::SegmentKind::Data)
                })
                .unwrap_or(true);
            if has_data && copy::punch_hole(&self.file, start, end - start).is_err() {
                let mut o = start;
                while o < end {
                    let n = (end - o).min(1 << 20);
                    write_zeros(o, n)?;
                    o += n;
                }
            }
        }
        write_zeros(end, offset + len - end)
    }

    /// Writes `next` (with `journal` for a native intent) into the inactive
    /// slot and syncs: the commit point of every change.
    fn publish(&mut self, op: &str, mut next: Header, journal: Option<&[u8]>) -> Result<()> {
        let target = 1 - self.slot;
        next.generation = self.header.generation + 1;
        let bytes = format::encode(&next);
        let r = (|| -> Result<()> {
            if let Some(j) = journal {
                self.file
                    .write_all_at(j, format::JOURNAL_OFFSET[target])
                    .map_err(|e| os(op, &self.path, "pwrite", e))?;
            }
            fail::fail_point!("budge::store::publish", |_| Err(os(
                op,
                &self.path,
                "pwrite",
                std::io::Error::other("injected failure (failpoint budge::store::publish)")
            )));
            self.file
                .write_all_at(&bytes, format::SLOT_OFFSET[target])
                .map_err(|e| os(op, &self.path, "pwrite", e))?;
            sys::fdatasync(&self.file).map_err(|e| os(op, &self.path, "fdatasync", e))
        })();
        self.poison(r)?;
        self.slot = target;
        self.header = next;
        self.record_base = None;
        Ok(())
    }

    fn layout_lock(&self, op: &str) -> Result<()> {
        sys::lock::ofd_lock(&self.file, 0, 1, LockKind::Exclusive, self.opts.wait_for_readers).map_err(|e| {
            if e.kind() == IoKind::WouldBlock || e.raw_os_error() == Some(libc::EAGAIN) {
                err(ErrorKind::Locked, op, &self.path, "read-only openers pin the layout; close them (or set wait_for_readers) to move regions")
            } else {
                os(op, &self.path, "fcntl(F_OFD_SETLK)", e)
            }
        })
    }

    fn layout_unlock(&self) {
        let _ = sys::lock::ofd_lock(&self.file, 0, 1, LockKind::Unlock, false);
    }

    /// Chooses how to shift: native where the filesystem has the fallocate
    /// mode and the extents fit the journal, else a sidecar copy.
    fn method(&self, op: &str, kind: IntentKind) -> Result<Method> {
        let native = match kind {
            IntentKind::Insert => &self.caps.insert_range,
            IntentKind::Collapse => &self.caps.collapse_range,
        };
        let aligned = self.align() % self.caps.block_size() == 0;
        match self.opts.strategy {
            Some(Strategy::Native) if !(native.works && aligned) => Err(err(
                ErrorKind::Unsupported,
                op,
                &self.path,
                format!(
                    "forced strategy native: {} has no {}-range",
                    self.caps.fs.kind.name(),
                    if kind == IntentKind::Insert {
                        "insert"
                    } else {
                        "collapse"
                    }
                ),
            )),
            Some(Strategy::Native) => Ok(Method::Native),
            Some(Strategy::Reflink | Strategy::KernelCopy | Strategy::UserCopy) => {
                Ok(Method::Sidecar)
            }
            Some(s) => Err(err(
                ErrorKind::InvalidArgument,
                op,
                &self.path,
                format!("strategy {s} cannot be forced for a store"),
            )),
            None if native.works && aligned => Ok(Method::Native),
            None if self.opts.policy == Policy::MetadataOnly && !self.caps.ficlonerange.works => {
                Err(err(
                    ErrorKind::Unsupported,
                    op,
                    &self.path,
                    format!(
                        "metadata-only: {} has neither {}-range nor reflink, so moving regions needs copying data (allow copying)",
                        self.caps.fs.kind.name(),
                        if kind == IntentKind::Insert { "insert" } else { "collapse" }
                    ),
                ))
            }
            None => Ok(Method::Sidecar),
        }
    }

    /// A change of capacity: publish the new table with an intent, shift,
    /// remap.
    fn structural(
        &mut self,
        op: &str,
        next: Header,
        kind: IntentKind,
        offset: u64,
        len: u64,
    ) -> Result<Option<ShiftInfo>> {
        if len == 0 {
            let mut next = next;
            next.intent = None;
            self.publish(op, next, None)?;
            return Ok(None);
        }
        self.layout_lock(op)?;
        // Give the part that will move back to the reservation first: the
        // kernel's shift then has no page tables of ours to walk over the
        // tail (measured: 305 us vs 22 us per 1 MiB insert before a 3.5 GiB
        // tail), and the tail is re-read after the shift anyway.
        let before = self.map.base();
        let keep = (offset as usize).min(self.map.mapped());
        #[allow(unsafe_code)]
        // SAFETY: shrinking only turns `[keep, mapped)` back into reservation;
        // `&mut self` means no slice into the mapping is live, and `keep` is
        // a region boundary (a multiple of align, so of the page size).
        let unmapped = unsafe { self.map.map_file(&self.file, keep) };
        let r = unmapped.and_then(|()| self.structural_locked(op, next, kind, offset, len));
        self.layout_unlock();
        let remapped = self.remap();
        let mut info = r?;
        remapped?;
        info.remapped = before != self.map.base();
        Ok(Some(info))
    }

    fn structural_locked(
        &mut self,
        op: &str,
        next: Header,
        kind: IntentKind,
        offset: u64,
        len: u64,
    ) -> Result<ShiftInfo> {
        let old_size = self.header.data_end();
        let method = self.method(op, kind)?;
        let mut intent = Intent {
            kind,
            method,
            offset,
            len,
            old_size,
            journal_count: 0,
            journal_crc: 0,
        };
        match method {
            Method::Native => {
                let tail = match kind {
                    IntentKind::Insert => offset,
                    IntentKind::Collapse => offset + len,
                };
                let journal = journal_of(&self.file, &self.path, op, tail, old_size)?;
                let prev = self.header.clone();
                // The commit record, where it applies: set before the shift,
                // in the filesystem journal with it, synced once after.
                let record = self.set_record(&next, intent, &journal);
                let mut with_intent = next.clone();
                if let Some(r) = &record {
                    with_intent.intent = r.intent;
                    with_intent.generation = r.generation;
                } else {
                    let (jb, crc) = format::encode_journal(&journal);
                    intent.journal_count = journal.len() as u32;
                    intent.journal_crc = crc;
                    with_intent.intent = Some(intent);
                    self.publish(op, with_intent.clone(), Some(&jb))?;
                }
                fail::fail_point!("budge::store::after-intent");
                let opts = ShiftOptions {
                    policy: Policy::MetadataOnly,
                    strategy: Some(Strategy::Native),
                    sync: false,
                    progress: None,
                };
                let injected = injected_native_failure(op);
                let res = match (injected, kind) {
                    (Some(e), _) => Err(e),
                    (None, IntentKind::Insert) => shift::insert(&self.file, offset, len, &opts),
                    (None, IntentKind::Collapse) => shift::collapse(&self.file, offset, len, &opts),
                };
                let report = match res {
                    Ok(r) => r,
                    Err(e)
                        if e.kind() != ErrorKind::PartiallyApplied
                            && file_size(&self.file) == Some(old_size) =>
                    {
                        // The kernel refused before changing anything
                        // (ENOSPC, say): publish the old table again, with
                        // a generation above the record's, if one was set.
                        let mut back = prev;
                        back.intent = None;
                        if let Some(r) = &record {
                            self.header.generation = r.generation;
                        }
                        self.publish(op, back, None)?;
                        return Err(e.with_path(&self.path));
                    }
                    Err(e) => {
                        self.poisoned = Some(e.to_string());
                        return Err(e.with_path(&self.path).with_hint(
                            "the store is poisoned; reopen it to let recovery complete the change",
                        ));
                    }
                };
                fail::fail_point!("budge::store::after-shift");
                let r = sys::fdatasync(&self.file).map_err(|e| os(op, &self.path, "fdatasync", e));
                // On failure, whatever of the record and the shift reached
                // the disk, the next open completes from it.
                self.poison(r)?;
                if let Some(mut r) = record.clone() {
                    // The shift is durable: mark the record done, so later
                    // writes (which change the tail's extents) never make
                    // recovery rebuild the journal. The filesystem journal
                    // orders this before any later extent change.
                    r.intent = None;
                    with_intent.intent = None;
                    let done = put_record(&self.file, &r);
                    self.header = with_intent;
                    // The base slot stays as it was; `prev` is its table
                    // unless an earlier record already set it.
                    self.record_base.get_or_insert(prev);
                    if done.is_err() {
                        // Put the table into a slot instead (synced).
                        let clean = self.header.clone();
                        self.publish(op, clean, None)?;
                    }
                }
                Ok(ShiftInfo {
                    kind,
                    offset,
                    len,
                    strategy: report.strategy,
                    bytes_copied: 0,
                    tail_reread: report.tail_reread,
                    extents: journal.len(),
                    remapped: false,
                    record: record.is_some(),
                })
            }
            Method::Sidecar => self.sidecar_shift(op, next, intent),
        }
    }

    /// Sets the commit record for `next` (the table after the change, with
    /// `intent` pending) if it applies: the option is on, only lengths and
    /// capacities of at most [`format::MAX_RECORD_CHANGES`] regions differ
    /// from the base slot, and the filesystem takes the attribute. Returns
    /// the record set; `None` means the caller writes a slot instead (the
    /// attribute is then as it was: stale, or a record the slot outdates).
    fn set_record(
        &mut self,
        next: &Header,
        mut intent: Intent,
        journal: &[JournalEntry],
    ) -> Option<format::Record> {
        if !self.opts.commit_record {
            return None;
        }
        let base = self.record_base.as_ref().unwrap_or(&self.header);
        let changes = format::record_changes(base, next)?;
        (intent.journal_count, intent.journal_crc) = plan::digest(&plan::canonical(journal));
        let rec = format::Record {
            generation: self.header.generation + 1,
            base: base.generation,
            intent: Some(intent),
            changes,
        };
        // Any failure (no xattrs here, no space for one) only means the
        // slower protocol: nothing was changed.
        put_record(&self.file, &rec).ok()?;
        self.record_on_file = true;
        Some(rec)
    }

    fn copy_opts(&self) -> CopyOptions<'static> {
        CopyOptions {
            policy: self.opts.policy,
            strategy: self.opts.strategy.filter(|s| *s != Strategy::Native),
            progress: None,
        }
    }

    fn sidecar_shift(&mut self, op: &str, next: Header, intent: Intent) -> Result<ShiftInfo> {
        let side = sidecar_path(&self.path);
        match std::fs::remove_file(&side) {
            Err(e) if e.kind() != IoKind::NotFound => {
                return Err(os(op, &side, "unlink stale sidecar", e));
            }
            _ => {}
        }
        let sf = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&side)
            .map_err(|e| os(op, &side, "open sidecar", e))?;
        let (e0, s0) = (intent.offset, intent.old_size);
        let copy_in = (|| -> Result<copy::CopyReport> {
            let rep = copy::copy_range(&self.file, e0, &sf, 0, s0 - e0, &self.copy_opts())?;
            sys::ftruncate(&sf, s0 - e0).map_err(|e| os(op, &side, "ftruncate", e))?;
            sys::fsync(&sf).map_err(|e| os(op, &side, "fsync", e))?;
            fsync_dir(&side)?;
            Ok(rep)
        })();
        let rep = match copy_in {
            Ok(r) => r,
            Err(e) => {
                drop(sf);
                let _ = std::fs::remove_file(&side);
                let why = e.hint().map(str::to_string);
                return Err(e.with_op(op).with_path(&self.path).with_hint(format!(
                    "copying the moving part into {} failed{}; the store is unchanged",
                    side.display(),
                    why.map(|w| format!(" ({w})")).unwrap_or_default()
                )));
            }
        };
        let prev = self.header.clone();
        let mut with_intent = next.clone();
        with_intent.intent = Some(intent);
        if let Err(e) = self.publish(op, with_intent, None) {
            drop(sf);
            let _ = std::fs::remove_file(&side);
            return Err(e);
        }
        fail::fail_point!("budge::store::after-intent");
        let copied_out =
            match apply_sidecar(&self.file, &self.path, &sf, &intent, &self.copy_opts()) {
                Ok(n) => n,
                Err(e) => {
                    // Put the tail back where it was, from the sidecar.
                    let back =
                        restore_sidecar(&self.file, &self.path, &sf, &intent, &self.copy_opts());
                    if back.is_ok() {
                        let mut b = prev;
                        b.intent = None;
                        if self.publish(op, b, None).is_ok() {
                            drop(sf);
                            let _ = std::fs::remove_file(&side);
                            return Err(e);
                        }
                    }
                    self.poisoned = Some(e.to_string());
                    return Err(e.with_kind(ErrorKind::PartiallyApplied).with_hint(format!(
                    "the tail is saved in {}; reopen the store to let recovery complete the change",
                    side.display()
                )));
                }
            };
        fail::fail_point!("budge::store::after-shift");
        let mut clean = next;
        clean.intent = None;
        self.publish(op, clean, None)?;
        drop(sf);
        let _ = std::fs::remove_file(&side);
        let strategy = if rep.bytes_copied == 0 && copied_out.bytes_copied == 0 {
            Strategy::Reflink
        } else {
            rep.strategy
        };
        Ok(ShiftInfo {
            kind: intent.kind,
            offset: intent.offset,
            len: intent.len,
            strategy,
            bytes_copied: rep.bytes_copied + copied_out.bytes_copied,
            tail_reread: s0 - e0,
            extents: 0,
            remapped: false,
            record: false,
        })
    }

    /// Maps the file's current size into the reservation (moving to a new,
    /// larger reservation if it no longer fits).
    fn remap(&mut self) -> Result<()> {
        let size = self.header.data_end();
        let len = usize::try_from(size).map_err(|_| {
            err(
                ErrorKind::InvalidArgument,
                "map store",
                &self.path,
                "file too large for the address space",
            )
        })?;
        if len > self.map.reserved() {
            let reserve = (len.saturating_mul(2)).next_multiple_of(1 << 30);
            self.map =
                Reservation::new(reserve, self.writable).map_err(|e| e.with_path(&self.path))?;
        }
        // SAFETY-free: map_file is unsafe because another process could
        // truncate the file under the mapping; the writer lock (flock) and the
        // readers' layout lock exclude budge processes from doing so, which is
        // the contract documented on `Store`.
        #[allow(unsafe_code)]
        // SAFETY: `self.file` is the file every earlier call mapped (the
        // Store never changes it) and `len` is the file's size per the
        // validated table (a multiple of `align`, itself a multiple of the
        // page size); `&mut self` means no slice into the mapping is live.
        unsafe { self.map.map_file(&self.file, len) }.map_err(|e| e.with_path(&self.path))?;
        if self.opts.advice != Advice::Normal && len > 0 {
            self.map
                .advise(0, len, self.opts.advice)
                .map_err(|e| e.with_path(&self.path))?;
        }
        Ok(())
    }

    /// Advises the kernel how region `name` will be accessed.
    ///
    /// # Errors
    /// `NotFound`; `Io`.
    pub fn advise(&self, name: &str, advice: Advice) -> Result<()> {
        let i = self.index("advise", name)?;
        let r = &self.header.regions[i];
        self.map
            .advise(r.offset as usize, r.capacity as usize, advice)
            .map_err(|e| e.with_path(&self.path))
    }

    /// Completes or rolls back an interrupted change, checks the size, and
    /// re-zeroes bytes beyond each region's length.
    fn recover(&mut self, other: Option<(Header, usize)>) -> Result<()> {
        let op = "recover store";
        // A snapshot's intent was checked on the original, under the lock.
        if let Some(intent) = self.header.intent.filter(|_| self.snapshot.is_none()) {
            // A complete native shift needs nothing (and so no layout lock,
            // which readers may hold); checking only reads.
            let done = intent.method == Method::Native
                && native_progress_done(
                    &self.file,
                    &self.path,
                    &intent,
                    self.slot,
                    self.record_base.is_some(),
                )?;
            if !done && !self.writable {
                return Err(err(
                    ErrorKind::NeedsRecovery,
                    "open store read-only",
                    &self.path,
                    "a structural change was interrupted; open the store read-write once to complete it",
                ));
            }
            if !done {
                self.layout_lock(op)?;
                let r = self.recover_intent(op, intent, other);
                self.layout_unlock();
                r?;
            }
        }
        let size = file_size(&self.file).unwrap_or(0);
        let end = self.header.data_end();
        if size != end {
            return Err(err(
                ErrorKind::Corrupted,
                "open store",
                &self.path,
                if size < end {
                    let r = self
                        .header
                        .regions
                        .iter()
                        .find(|r| r.offset + r.capacity > size);
                    format!(
                        "the region table ends at {end} but the file is only {size} bytes (truncated?): region {:?} at {} runs past EOF",
                        r.map_or("", |r| r.name.as_str()),
                        r.map_or(0, |r| r.offset)
                    )
                } else {
                    format!("the file is {size} bytes, longer than the region table's end ({end}); if this is a copy, was it made without extended attributes (the commit record, {}) while a change was pending?", format::RECORD_XATTR)
                },
            ));
        }
        if self.writable {
            let mut zeroed = false;
            for r in self.header.regions.clone() {
                if r.capacity > r.len
                    && region_tail_dirty(
                        &self.file,
                        r.offset + r.len,
                        r.capacity - r.len,
                        self.align(),
                    )
                {
                    self.zero(r.offset + r.len, r.capacity - r.len)?;
                    zeroed = true;
                }
            }
            if zeroed {
                self.recovery
                    .actions
                    .push("zeroed bytes beyond region lengths".into());
                let r = sys::fdatasync(&self.file).map_err(|e| os(op, &self.path, "fdatasync", e));
                self.poison(r)?;
            }
            let side = sidecar_path(&self.path);
            if side.exists() {
                let _ = std::fs::remove_file(&side);
                self.recovery
                    .actions
                    .push(format!("removed stale {}", side.display()));
            }
        }
        Ok(())
    }

    fn recover_intent(
        &mut self,
        op: &str,
        intent: Intent,
        other: Option<(Header, usize)>,
    ) -> Result<()> {
        let what = format!(
            "{} of {} at {} (generation {})",
            if intent.kind == IntentKind::Insert {
                "insert"
            } else {
                "collapse"
            },
            fmt_size(intent.len),
            intent.offset,
            self.header.generation
        );
        let forward = match intent.method {
            Method::Native => self.recover_native(op, &intent),
            Method::Sidecar => self.recover_sidecar(op, &intent),
        };
        match forward {
            Ok(Some(action)) => {
                self.recovery.actions.push(format!("{action}: {what}"));
                let mut clean = self.header.clone();
                clean.intent = None;
                self.publish(op, clean, None)?;
                if intent.method == Method::Sidecar {
                    let _ = std::fs::remove_file(sidecar_path(&self.path));
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err((e, untouched)) => {
                // Completing failed (ENOSPC, say). If nothing moved yet, go
                // back to the table before the change, which the other slot
                // still holds.
                match other {
                    Some((prev, _))
                        if untouched
                            && prev.generation + 1 == self.header.generation
                            && prev.intent.is_none() =>
                    {
                        self.recovery
                            .actions
                            .push(format!("rolled back {what}: {e}"));
                        if intent.method == Method::Sidecar {
                            let side = sidecar_path(&self.path);
                            if let Ok(sf) = File::open(&side) {
                                restore_sidecar(
                                    &self.file,
                                    &self.path,
                                    &sf,
                                    &intent,
                                    &self.copy_opts(),
                                )?;
                            }
                        }
                        self.publish(op, prev, None)?;
                        if intent.method == Method::Sidecar {
                            let _ = std::fs::remove_file(sidecar_path(&self.path));
                        }
                        Ok(())
                    }
                    _ => Err(e),
                }
            }
        }
    }

    /// Returns `Some(action)` when it changed or confirmed the file, `None`
    /// when the intent was already complete and clean-up is optional.
    fn recover_native(
        &mut self,
        op: &str,
        intent: &Intent,
    ) -> std::result::Result<Option<String>, (Error, bool)> {
        let journal = journal_for(
            &self.file,
            &self.path,
            intent,
            self.slot,
            self.record_base.is_some(),
        )
        .map_err(|e| (e, false))?;
        let map = current_map(&self.file, &self.path).map_err(|e| (e, false))?;
        let size = file_size(&self.file).unwrap_or(0);
        let steps = plan::plan(intent, &journal, &map, size).map_err(|h| {
            (
                err(
                    ErrorKind::Corrupted,
                    op,
                    &self.path,
                    format!(
                    "cannot complete the interrupted shift: {h}{}",
                    if h.contains("neither") {
                        "; was the file copied, restored from a backup or defragmented while the change was pending? Open the original read-write once, then copy it"
                    } else {
                        ""
                    }
                ),
                ),
                false,
            )
        })?;
        if steps.is_empty() {
            return Ok(None);
        }
        let untouched = steps.len() == 1
            && matches!(
                steps[0],
                plan::Step::Insert { .. } | plan::Step::Collapse { .. }
            )
            && size == intent.old_size;
        let opts = ShiftOptions {
            policy: Policy::MetadataOnly,
            strategy: Some(Strategy::Native),
            sync: false,
            progress: None,
        };
        for s in &steps {
            let r = match *s {
                plan::Step::Insert { offset, len } => {
                    shift::insert(&self.file, offset, len, &opts).map(|_| ())
                }
                plan::Step::Collapse { offset, len } => {
                    shift::collapse(&self.file, offset, len, &opts).map(|_| ())
                }
                plan::Step::SetSize(n) => {
                    sys::ftruncate(&self.file, n).map_err(|e| os(op, &self.path, "ftruncate", e))
                }
            };
            r.map_err(|e| (e.with_path(&self.path), untouched))?;
        }
        sys::fdatasync(&self.file).map_err(|e| (os(op, &self.path, "fdatasync", e), false))?;
        // Check the result: the plan must now be empty.
        let map = current_map(&self.file, &self.path).map_err(|e| (e, false))?;
        let size = file_size(&self.file).unwrap_or(0);
        match plan::plan(intent, &journal, &map, size) {
            Ok(s) if s.is_empty() => Ok(Some(format!(
                "completed an interrupted shift in {} steps ({steps:?})",
                steps.len()
            ))),
            Ok(s) => Err((
                err(
                    ErrorKind::Corrupted,
                    op,
                    &self.path,
                    format!("recovery left steps undone: {s:?}"),
                ),
                false,
            )),
            Err(h) => Err((err(ErrorKind::Corrupted, op, &self.path, h), false)),
        }
    }

    fn recover_sidecar(
        &mut self,
        op: &str,
        intent: &Intent,
    ) -> std::result::Result<Option<String>, (Error, bool)> {
        let side = sidecar_path(&self.path);
        let sf = File::open(&side).map_err(|e| {
            (
                err(
                    ErrorKind::Corrupted,
                    op,
                    &self.path,
                    format!(
                        "an interrupted shift needs its sidecar {}, which cannot be opened: {e}",
                        side.display()
                    ),
                ),
                false,
            )
        })?;
        let want = intent.old_size - intent.offset;
        let have = file_size(&sf).unwrap_or(0);
        if have != want {
            return Err((
                err(
                    ErrorKind::Corrupted,
                    op,
                    &self.path,
                    format!(
                        "sidecar {} is {have} bytes, expected {want}",
                        side.display()
                    ),
                ),
                false,
            ));
        }
        apply_sidecar(&self.file, &self.path, &sf, intent, &self.copy_opts())
            .map_err(|e| (e, true))?;
        Ok(Some(format!("rewrote the tail from {}", side.display())))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: leave a clean header (no device addresses) behind.
        if !self.abandoned {
            let _ = self.clean_intent("close store", true);
        }
    }
}

/// Failpoint `budge::store::native`: the kernel refusing a native shift
/// with ENOSPC, file untouched.
fn injected_native_failure(op: &str) -> Option<Error> {
    fail::fail_point!("budge::store::native", |_| Some(Error::os(
        op.to_string(),
        "fallocate",
        std::io::Error::from_raw_os_error(libc::ENOSPC)
    )));
    let _ = op;
    None
}

fn rustix_page_size() -> u64 {
    sys::page_size()
}

/// Opens `path` (never blocking, so a FIFO gives an error, not a hang);
/// a missing file is NotFound.
fn open_file(path: &Path, op: &str, writable: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            let kind = if e.kind() == IoKind::NotFound {
                ErrorKind::NotFound
            } else {
                crate::error::kind_of(&e)
            };
            os(op, path, "open", e).with_kind(kind)
        })
}

fn file_size(f: &File) -> Option<u64> {
    sys::file_info(f).ok().map(|i| i.size)
}

fn fsync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let d = File::open(&dir).map_err(|e| os("sync directory", &dir, "open", e))?;
    sys::fsync(&d).map_err(|e| os("sync directory", &dir, "fsync", e))
}

/// Whether `[offset, offset+len)` may hold non-zero bytes.
fn region_tail_dirty(file: &File, offset: u64, len: u64, align: u64) -> bool {
    let head = offset.next_multiple_of(align).min(offset + len) - offset;
    if head > 0 {
        let mut b = vec![0u8; head as usize];
        if file.read_exact_at(&mut b, offset).is_err() || b.iter().any(|&x| x != 0) {
            return true;
        }
    }
    crate::extents::data_map_in(file, offset + head, len - head)
        .map(|m| {
            m.iter()
                .any(|s| s.kind == crate::extents::SegmentKind::Data)
        })
        .unwrap_or(true)
}

/// The data extents of `[start, end)` for a native intent's journal.
fn journal_of(
    file: &File,
    path: &Path,
    op: &str,
    start: u64,
    end: u64,
) -> Result<Vec<JournalEntry>> {
    if start >= end {
        return Ok(Vec::new());
    }
    let ext =
        crate::extents::extents_in(file, start, end - start).map_err(|e| e.with_path(path))?;
    let bad = crate::extents::flags::DELALLOC
        | crate::extents::flags::UNKNOWN
        | crate::extents::flags::DATA_INLINE
        | crate::extents::flags::NOT_ALIGNED;
    if let Some(e) = ext.iter().find(|e| e.flags & bad != 0) {
        return Err(err(
            ErrorKind::Unsupported,
            op,
            path,
            format!(
                "extent at {} has no stable device address (flags {:?})",
                e.logical,
                crate::extents::flags::names(e.flags)
            ),
        ));
    }
    if ext.len() > format::MAX_JOURNAL {
        return Err(err(
            ErrorKind::Unsupported,
            op,
            path,
            format!("the data after this region has {} extents, more than an intent journal records ({}); defragment the store (budge store compact)", ext.len(), format::MAX_JOURNAL),
        ));
    }
    Ok(ext
        .into_iter()
        .map(|e| JournalEntry {
            logical: e.logical,
            physical: e.physical,
            len: e.length,
        })
        .collect())
}

fn current_map(file: &File, path: &Path) -> Result<Vec<plan::MapExtent>> {
    Ok(crate::extents::extents(file)
        .map_err(|e| e.with_path(path))?
        .into_iter()
        .map(|e| plan::MapExtent {
            logical: e.logical,
            physical: e.physical,
            len: e.length,
        })
        .collect())
}

fn read_journal(
    file: &File,
    path: &Path,
    intent: &Intent,
    slot: usize,
) -> Result<Vec<JournalEntry>> {
    let mut b = vec![0u8; intent.journal_count as usize * format::JOURNAL_ENTRY_LEN];
    file.read_exact_at(&mut b, format::JOURNAL_OFFSET[slot])
        .map_err(|e| os("read intent journal", path, "pread", e))?;
    format::decode_journal(&b, intent).map_err(|fe| {
        err(
            ErrorKind::Corrupted,
            "read intent journal",
            path,
            fe.to_string(),
        )
    })
}

/// Sets the commit record attribute (create or replace: one journalled
/// transaction, no sync).
fn put_record(file: &File, rec: &format::Record) -> std::io::Result<()> {
    sys::meta::xattr_set(file, format::RECORD_XATTR, &format::encode_record(rec))
}

/// The journal of the pending intent: read from the slot's journal area, or
/// for a commit record rebuilt from the extent map.
fn journal_for(
    file: &File,
    path: &Path,
    intent: &Intent,
    slot: usize,
    record: bool,
) -> Result<Vec<JournalEntry>> {
    if !record {
        return read_journal(file, path, intent, slot);
    }
    let map = current_map(file, path)?;
    plan::reconstruct(intent, &map).map_err(|h| {
        err(
            ErrorKind::Corrupted,
            "read intent journal",
            path,
            format!("{h}; was the file copied, restored from a backup or defragmented while the change was pending? Open the original read-write once, then copy it"),
        )
    })
}

fn native_progress_done(
    file: &File,
    path: &Path,
    intent: &Intent,
    slot: usize,
    record: bool,
) -> Result<bool> {
    let journal = match journal_for(file, path, intent, slot, record) {
        Ok(j) => j,
        Err(_) if record => return Ok(false),
        Err(e) => return Err(e),
    };
    let map = current_map(file, path)?;
    let size = file_size(file).unwrap_or(0);
    Ok(plan::plan(intent, &journal, &map, size).is_ok_and(|s| s.is_empty()))
}

/// Rewrites the tail from the sidecar at its post-shift offset. Idempotent.
fn apply_sidecar(
    file: &File,
    path: &Path,
    sf: &File,
    intent: &Intent,
    opts: &CopyOptions<'_>,
) -> Result<copy::CopyReport> {
    let op = "rewrite tail from sidecar";
    let (e, d, s) = (intent.offset, intent.len, intent.old_size);
    sys::ftruncate(file, e).map_err(|x| os(op, path, "ftruncate", x))?;
    fail::fail_point!("budge::store::apply", |_| Err(os(
        op,
        path,
        "copy_file_range",
        std::io::Error::other("injected failure (failpoint budge::store::apply)")
    )));
    let (src, dst, n) = match intent.kind {
        IntentKind::Insert => (0, e + d, s - e),
        IntentKind::Collapse => (d, e, s - e - d),
    };
    sys::ftruncate(file, intent.new_size()).map_err(|x| os(op, path, "ftruncate", x))?;
    let rep = copy::copy_range(sf, src, file, dst, n, opts).map_err(|x| x.with_path(path))?;
    sys::fdatasync(file).map_err(|x| os(op, path, "fdatasync", x))?;
    Ok(rep)
}

/// Puts the tail back at its pre-shift offset from the sidecar.
fn restore_sidecar(
    file: &File,
    path: &Path,
    sf: &File,
    intent: &Intent,
    opts: &CopyOptions<'_>,
) -> Result<()> {
    let op = "restore tail from sidecar";
    let (e, s) = (intent.offset, intent.old_size);
    sys::ftruncate(file, e).map_err(|x| os(op, path, "ftruncate", x))?;
    sys::ftruncate(file, s).map_err(|x| os(op, path, "ftruncate", x))?;
    copy::copy_range(sf, 0, file, e, s - e, opts).map_err(|x| x.with_path(path))?;
    sys::fdatasync(file).map_err(|x| os(op, path, "fdatasync", x))
}

/// A decoded slot and its index (0 = A, 1 = B).
type Slot = (Header, usize);

/// The table in force, as the header slots and the commit record give it.
#[derive(Debug)]
pub(crate) struct Found {
    /// The newest table.
    header: Header,
    /// Its slot; under a commit record, the record's base slot.
    slot: usize,
    /// The table before (the other valid slot, or the record's base).
    other: Option<Slot>,
    /// The base slot's table when `header` comes from the commit record.
    record_base: Option<Header>,
    /// Whether a commit record attribute exists (current or stale).
    record_on_file: bool,
}

/// Reads both slots and the commit record and picks the newest valid table.
fn read_header(file: &File, path: &Path, op: &str) -> Result<Found> {
    let (header, slot, other) = read_slots(file, path, op)?;
    let raw = sys::meta::xattr_get_opt(file, format::RECORD_XATTR)
        .map_err(|e| os(op, path, "fgetxattr", e))?;
    let Some(raw) = raw else {
        return Ok(Found {
            header,
            slot,
            other,
            record_base: None,
            record_on_file: false,
        });
    };
    let what = format!(
        "the commit record (extended attribute {})",
        format::RECORD_XATTR
    );
    let rec = format::decode_record(&raw).map_err(|e| {
        err(
            if e.unsupported {
                ErrorKind::Unsupported
            } else {
                ErrorKind::Corrupted
            },
            op,
            path,
            format!("{what}: {e}"),
        )
    })?;
    if rec.generation <= header.generation {
        // A slot written since outdates it.
        return Ok(Found {
            header,
            slot,
            other,
            record_base: None,
            record_on_file: true,
        });
    }
    let base = std::iter::once((header, slot))
        .chain(other)
        .find(|(h, _)| h.generation == rec.base)
        .ok_or_else(|| {
            err(
                ErrorKind::Corrupted,
                op,
                path,
                format!(
                    "{what} (generation {}) changes generation {}, which no valid header slot holds",
                    rec.generation, rec.base
                ),
            )
        })?;
    let table = format::apply_record(&base.0, &rec)
        .map_err(|e| err(ErrorKind::Corrupted, op, path, format!("{what}: {e}")))?;
    Ok(Found {
        header: table,
        slot: base.1,
        record_base: Some(base.0.clone()),
        other: Some(base),
        record_on_file: true,
    })
}

/// Reads both slots and picks the newest valid one. Returns it, its index,
/// and the other slot if valid.
fn read_slots(file: &File, path: &Path, op: &str) -> Result<(Header, usize, Option<Slot>)> {
    let mut found: Vec<(Header, usize)> = Vec::new();
    let mut problems: Vec<(usize, format::FormatError)> = Vec::new();
    let mut magic = false;
    for (i, &off) in format::SLOT_OFFSET.iter().enumerate() {
        let mut b = vec![0u8; format::SLOT_SIZE as usize];
        let n = sys::read_up_to(file, &mut b, off).map_err(|e| os(op, path, "pread", e))?;
        b.truncate(n);
        magic |= format::has_magic(&b);
        match format::decode(&b) {
            Ok(h) => {
                // A native intent is only valid with its journal: a torn
                // journal means the slot was not durable before the crash.
                if let Some(it) = h.intent.filter(|it| it.method == Method::Native) {
                    if let Err(e) = read_journal(file, path, &it, i) {
                        problems.push((
                            i,
                            format::FormatError {
                                unsupported: false,
                                field: "journal".into(),
                                reason: e.to_string(),
                            },
                        ));
                        continue;
                    }
                }
                found.push((h, i));
            }
            Err(e) => problems.push((i, e)),
        }
    }
    if let Some((_, e)) = problems.iter().find(|(_, e)| e.unsupported) {
        return Err(err(ErrorKind::Unsupported, op, path, e.to_string()));
    }
    found.sort_by_key(|(h, _)| std::cmp::Reverse(h.generation));
    let mut it = found.into_iter();
    match it.next() {
        Some((h, i)) => {
            let other = it.next();
            if let Some((o, _)) = &other {
                if o.generation == h.generation && *o != h {
                    return Err(err(
                        ErrorKind::Corrupted,
                        op,
                        path,
                        format!(
                            "both header slots claim generation {} with different tables",
                            h.generation
                        ),
                    ));
                }
            }
            Ok((h, i, other))
        }
        None if !magic => Err(err(
            ErrorKind::Corrupted,
            op,
            path,
            "not a budge store (no header slot has the magic)",
        )),
        None => {
            let why: Vec<String> = problems
                .iter()
                .map(|(i, e)| format!("slot {}: {e}", ["A", "B"][*i]))
                .collect();
            Err(err(
                ErrorKind::Corrupted,
                op,
                path,
                format!("no valid header slot ({})", why.join("; ")),
            ))
        }
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Per slot: `Ok(generation)` or why it is invalid.
    pub slots: Vec<std::result::Result<u64, String>>,
    /// The generation in use.
    pub generation: u64,
    /// The regions.
    pub regions: Vec<format::Entry>,
    /// Problems that make the store unusable or lose data.
    pub problems: Vec<String>,
    /// Things worth knowing that recovery handles (an interrupted change, a
    /// torn older slot, a stale sidecar).
    pub notes: Vec<String>,
}

/// Verifies a store without changing it: both header slots, the table, the
/// file size, a pending intent and any sidecar.
///
/// # Errors
/// `NotFound` or `Io` when the file cannot be read at all; damage is
/// reported in [`CheckReport::problems`], not as an error.
pub fn check(path: impl AsRef<Path>) -> Result<CheckReport> {
    let path = path.as_ref();
    let op = "check store";
    let file = open_file(path, op, false)?;
    if !sys::file_info(&file)
        .map_err(|e| os(op, path, "fstat", e))?
        .regular
    {
        return Err(err(
            ErrorKind::InvalidArgument,
            op,
            path,
            "not a regular file",
        ));
    }
    let mut rep = CheckReport::default();
    for (i, &off) in format::SLOT_OFFSET.iter().enumerate() {
        let mut b = vec![0u8; format::SLOT_SIZE as usize];
        let n = sys::read_up_to(&file, &mut b, off).map_err(|e| os(op, path, "pread", e))?;
        b.truncate(n);
        rep.slots.push(match format::decode(&b) {
            Ok(h) => match h.intent.filter(|it| it.method == Method::Native) {
                Some(it) => read_journal(&file, path, &it, i)
                    .map(|_| h.generation)
                    .map_err(|e| e.to_string()),
                None => Ok(h.generation),
            },
            Err(e) => Err(e.to_string()),
        });
    }
    match read_header(&file, path, op) {
        Ok(found) => {
            let (h, i, other) = (&found.header, found.slot, &found.other);
            let record = found.record_base.is_some();
            rep.generation = h.generation;
            rep.regions = h.regions.clone();
            if record {
                rep.notes.push(format!(
                    "the table in force (generation {}) is the commit record's change of slot {}'s",
                    h.generation,
                    ["A", "B"][i]
                ));
            } else if found.record_on_file {
                rep.notes.push(
                    "a stale commit record (removed at the next read-write open)".to_string(),
                );
            }
            if other.is_none() {
                rep.notes.push(format!(
                    "slot {} is not valid (normal after a crash during a header write)",
                    ["B", "A"][i]
                ));
            }
            let size = file_size(&file).unwrap_or(0);
            if let Some(it) = h.intent {
                let what = format!("{:?} of {} at {}", it.kind, it.len, it.offset);
                match it.method {
                    Method::Native => {
                        let planned = journal_for(&file, path, &it, i, record).and_then(|j| {
                            let map = current_map(&file, path)?;
                            Ok(plan::plan(&it, &j, &map, size))
                        });
                        match planned {
                            Ok(Ok(steps)) if steps.is_empty() => rep.notes.push(format!(
                                "the last structural change ({what}) is complete; its intent record is replaced at the next commit"
                            )),
                            Ok(Ok(steps)) => rep.notes.push(format!(
                                "a structural change ({what}) was interrupted; opening read-write completes it in {} step(s)",
                                steps.len()
                            )),
                            Ok(Err(why)) => rep.problems.push(format!(
                                "the pending structural change ({what}) cannot be completed: {why}"
                            )),
                            Err(e) => rep.problems.push(format!(
                                "the pending structural change ({what}) cannot be checked: {e}"
                            )),
                        }
                    }
                    Method::Sidecar => {
                        let side = sidecar_path(path);
                        let want = it.old_size - it.offset;
                        match File::open(&side).ok().and_then(|f| file_size(&f)) {
                            Some(n) if n == want => rep.notes.push(format!(
                                "a structural change ({what}) was interrupted; opening read-write completes it from {}",
                                side.display()
                            )),
                            Some(n) => rep.problems.push(format!(
                                "the interrupted change needs {} of {want} bytes; it has {n}",
                                side.display()
                            )),
                            None => rep.problems.push(format!(
                                "the interrupted change needs {}, which is missing",
                                side.display()
                            )),
                        }
                    }
                }
            } else if size != h.data_end() {
                rep.problems.push(if size < h.data_end() {
                    format!("the region table ends at {} but the file is {size} bytes: region data past EOF is missing", h.data_end())
                } else {
                    format!("the file is {size} bytes, longer than the region table's end ({})", h.data_end())
                });
            }
            if h.intent.is_none_or(|it| it.method != Method::Sidecar) && sidecar_path(path).exists()
            {
                rep.notes.push(format!(
                    "stale {} (removed at the next read-write open)",
                    sidecar_path(path).display()
                ));
            }
        }
        Err(e) => rep
            .problems
            .push(e.hint().unwrap_or("unreadable header").to_string()),
    }
    Ok(rep)
}
