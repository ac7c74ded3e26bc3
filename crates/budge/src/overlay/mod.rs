//! Page-granular copy-on-write overlays over a read-only base file.
//!
//! An overlay is one file beside (or anywhere near) its base: two
//! superblock slots, two copies of a checksummed page map (2 bits per page:
//! absent, present or zero), then a sparse data area holding copied-up pages
//! at the base's own offsets (byte map in [`format`](mod@format)). Holes in the data area
//! are not the truth: the page map is. A page of zeros the user wrote is
//! `present`; a page zeroed through [`Overlay::zero`] is `zero` and stores
//! nothing; an `absent` page shows the layer below.
//!
//! # Durability: group commit
//!
//! [`Overlay::write_at`] is a `pwrite` into the data area plus a bit flip in
//! the in-memory map. [`Overlay::flush`] makes a batch durable in the
//! dm-clone order: `fdatasync` (the data, and the map blocks written into the
//! *inactive* copy), then the superblock naming that copy, then `fdatasync`
//! again. A crash before the second sync leaves the previous superblock and
//! its intact map copy, so every page reads either what it read at the last
//! flush or the new data, never unwritten blocks. Data freed by `zero` and
//! `revert` is punched only after a flush made a map that no longer points
//! at it durable. Overwriting a page that is already present is an in-place
//! write, as on a disk.
//!
//! # The base
//!
//! The base is opened read-only and `flock`ed shared; the overlay records its
//! inode, mtime, size and a CRC of its first and last 4 KiB (or, for an
//! overlay over an overlay, the lower one's uuid and generation) and refuses
//! to open over a changed base. Overlays stack to any depth up to
//! [`MAX_DEPTH`]; reads resolve top-down.
//!
//! # Commit
//!
//! See [`Overlay::commit`] and `docs/design.md` (Overlays) for the
//! protocols and their crash cases.

mod commit;
pub mod format;
mod pagemap;

use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

pub use commit::{CommitOptions, CommitReport, CommitStrategy, ExportReport};
use format::{BaseId, CommitState, Superblock, BLOCK};
use pagemap::PageMap;
pub use pagemap::PageState;

use crate::error::{op_range, Error, ErrorKind, Result};
use crate::map::PatchMap;
use crate::range::fmt_size;
use crate::snap::publish::{self, Expect};
use crate::sys::{self, Falloc};

/// Deepest stack of overlays opened (the base file not counted).
pub const MAX_DEPTH: usize = 32;

/// Options for [`Overlay::create`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OverlayOptions {
    /// Bytes per page: a multiple of 4 KiB and of the overlay filesystem's
    /// block size, at most 64 MiB. Default: the block size (at least 4 KiB).
    pub page_size: Option<u32>,
    /// Replace a file already at the overlay's path.
    pub overwrite: bool,
}

/// A changed range of the overlay (see [`Overlay::changes`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// First byte.
    pub offset: u64,
    /// Bytes (the last range ends at the overlay's size).
    pub len: u64,
    /// `Present` (data) or `Zero`.
    pub state: PageState,
}

/// What [`Overlay::status`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The overlay file.
    pub path: PathBuf,
    /// The base it was made over.
    pub base: PathBuf,
    /// Layers below this one (1: the base is a plain file).
    pub depth: usize,
    /// Logical size in bytes.
    pub size: u64,
    /// Bytes per page.
    pub page_size: u32,
    /// Pages in all.
    pub pages: u64,
    /// Pages holding data.
    pub present_pages: u64,
    /// Pages that read as zeros without data.
    pub zero_pages: u64,
    /// Bytes the overlay file occupies on disk (`st_blocks * 512`),
    /// superblocks and page map included.
    pub disk_bytes: u64,
    /// Generation of the last flush.
    pub generation: u64,
    /// Whether writes since the last flush are not yet durable.
    pub unflushed: bool,
}

/// Where bytes of the merged view come from.
pub(crate) enum Src<'a> {
    /// This file at this offset.
    File(&'a File, u64),
    /// Zeros.
    Zero,
}

enum Lower {
    File {
        path: PathBuf,
        file: File,
        size: u64,
    },
    Overlay(Box<Overlay>),
}

/// An open overlay. Writers hold an exclusive `flock` on the overlay file,
/// readers a shared one. Dropping a writer flushes (errors ignored: call
/// [`flush`](Self::flush) or [`close`](Self::close) to see them).
pub struct Overlay {
    path: PathBuf,
    file: File,
    writable: bool,
    sb: Superblock,
    map: PageMap,
    lower: Lower,
    /// Page ranges whose data may be punched after the next flush.
    pending_punch: Vec<(u64, u64)>,
    data_dirty: bool,
    map_dirty: bool,
    poisoned: bool,
    view: Option<PatchMap>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("path", &self.path)
            .field("writable", &self.writable)
            .field("generation", &self.sb.generation)
            .field("size", &self.sb.size)
            .field("page_size", &self.sb.page_size)
            .finish_non_exhaustive()
    }
}

pub(crate) fn err(kind: ErrorKind, op: &str, path: &Path, hint: impl Into<String>) -> Error {
    Error::new(kind, op.to_string())
        .with_path(path)
        .with_hint(hint)
}

pub(crate) fn os(op: &str, path: &Path, call: &'static str, e: std::io::Error) -> Error {
    Error::os(op.to_string(), call, e).with_path(path)
}

/// Takes the `flock` (`exclusive` or shared) on `file` without waiting;
/// when another holder has it, a `Locked` error saying `what` (and who).
fn lock_or_explain(op: &str, path: &Path, file: &File, exclusive: bool, what: &str) -> Result<()> {
    match sys::try_lock(file, exclusive) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == IoKind::WouldBlock => Err(locked(op, path, file, what)),
        Err(e) => Err(os(op, path, "flock", e)),
    }
}

fn locked(op: &str, path: &Path, file: &File, what: &str) -> Error {
    let holder = file
        .metadata()
        .ok()
        .and_then(|m| sys::lock::flock_holder(m.dev(), m.ino()));
    let by = match holder {
        Some((pid, comm)) => format!(" (held by pid {pid}, {comm})"),
        None => String::new(),
    };
    err(ErrorKind::Locked, op, path, format!("{what}{by}"))
}

/// CRC-32C of the first and last 4 KiB of a file of `size` bytes.
pub(crate) fn fingerprint(file: &File, size: u64) -> std::io::Result<u32> {
    let n = size.min(4096);
    let mut buf = vec![0u8; n as usize];
    file.read_exact_at(&mut buf, 0)?;
    let mut crc = crc32c::crc32c(&buf);
    file.read_exact_at(&mut buf, size - n)?;
    crc = crc32c::crc32c_append(crc, &buf);
    Ok(crc)
}

fn file_id(file: &File, size: u64) -> std::io::Result<BaseId> {
    let m = file.metadata()?;
    Ok(BaseId::File {
        ino: m.ino(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
        fingerprint: fingerprint(file, size)?,
    })
}

/// Whether either superblock slot starts with the overlay magic (a new
/// overlay has only slot 1).
fn is_overlay_file(file: &File) -> bool {
    let mut magic = [0u8; 8];
    [0, BLOCK]
        .iter()
        .any(|&at| file.read_exact_at(&mut magic, at).is_ok() && magic == format::MAGIC)
}

impl Lower {
    fn open(path: &Path, depth: usize) -> Result<Lower> {
        let op = "open the overlay's base";
        let file = File::open(path).map_err(|e| {
            let hint = if e.kind() == IoKind::NotFound {
                " (the base recorded in the overlay is missing)"
            } else {
                ""
            };
            Error::os(format!("{op}{hint}"), "open", e).with_path(path)
        })?;
        let m = file.metadata().map_err(|e| os(op, path, "fstat", e))?;
        if !m.is_file() {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                path,
                "the base is not a regular file",
            ));
        }
        if is_overlay_file(&file) {
            drop(file);
            return Ok(Lower::Overlay(Box::new(Overlay::open_at(
                path,
                false,
                depth + 1,
            )?)));
        }
        lock_or_explain(
            op,
            path,
            &file,
            false,
            "the base is locked for writing (a commit into it is in progress)",
        )?;
        Ok(Lower::File {
            path: path.to_path_buf(),
            file,
            size: m.len(),
        })
    }

    fn size(&self) -> u64 {
        match self {
            Lower::File { size, .. } => *size,
            Lower::Overlay(o) => o.sb.size,
        }
    }

    fn path(&self) -> &Path {
        match self {
            Lower::File { path, .. } => path,
            Lower::Overlay(o) => &o.path,
        }
    }

    fn id(&self) -> Result<BaseId> {
        match self {
            Lower::File { path, file, size } => {
                file_id(file, *size).map_err(|e| os("identify the base", path, "fstat/pread", e))
            }
            Lower::Overlay(o) => Ok(BaseId::Overlay {
                uuid: o.sb.uuid,
                generation: o.sb.generation,
            }),
        }
    }

    fn depth(&self) -> usize {
        match self {
            Lower::File { .. } => 1,
            Lower::Overlay(o) => 1 + o.lower.depth(),
        }
    }

    fn each_source<'s>(
        &'s self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(u64, u64, Src<'s>) -> Result<()>,
    ) -> Result<()> {
        match self {
            Lower::File { file, .. } => f(offset, len, Src::File(file, offset)),
            Lower::Overlay(o) => o.each_source(offset, len, f),
        }
    }
}

fn describe_change(old: &BaseId, new: &BaseId, old_size: u64, new_size: u64) -> String {
    if old_size != new_size {
        return format!(
            "its size changed from {} to {}",
            fmt_size(old_size),
            fmt_size(new_size)
        );
    }
    match (old, new) {
        (BaseId::File { ino: a, .. }, BaseId::File { ino: b, .. }) if a != b => {
            format!("it is another file now (inode {a} then, {b} now)")
        }
        (BaseId::File { fingerprint: a, .. }, BaseId::File { fingerprint: b, .. }) if a != b => {
            "its first or last 4 KiB changed".into()
        }
        (BaseId::File { .. }, BaseId::File { .. }) => "it was modified (mtime changed)".into(),
        (BaseId::Overlay { uuid: a, .. }, BaseId::Overlay { uuid: b, .. }) if a != b => {
            "it is another overlay now".into()
        }
        (BaseId::Overlay { generation: a, .. }, BaseId::Overlay { generation: b, .. }) => {
            format!("the lower overlay was written since (generation {a} then, {b} now)")
        }
        _ => "it was a plain file and is an overlay now, or the reverse".into(),
    }
}

impl Overlay {
    /// Creates an overlay at `overlay` over `base` (a plain file or another
    /// overlay) and opens it for writing. The overlay file appears complete
    /// or not at all (built unnamed, synced, then linked).
    ///
    /// # Errors
    /// `InvalidArgument` if a file exists at `overlay` (without
    /// `overwrite`), the base is empty or not a regular file, or the page
    /// size is invalid; `NotFound` for a missing base; `NoSpace`; `Locked`
    /// if the base is being committed into.
    pub fn create(
        base: impl AsRef<Path>,
        overlay: impl AsRef<Path>,
        opts: &OverlayOptions,
    ) -> Result<Overlay> {
        let (base, path) = (base.as_ref(), overlay.as_ref());
        let op = "create overlay";
        if !opts.overwrite && std::fs::symlink_metadata(path).is_ok() {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                path,
                "a file already exists there; discard it first or pass overwrite (--force)",
            ));
        }
        let base_abs = std::fs::canonicalize(base).map_err(|e| os(op, base, "realpath", e))?;
        let lower = Lower::open(&base_abs, 0)?;
        let size = lower.size();
        if size == 0 {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                base,
                "the base is empty; an overlay covers the base's bytes and cannot grow it",
            ));
        }
        let base_bytes = base_abs.as_os_str().as_encoded_bytes().to_vec();
        if base_bytes.len() > format::MAX_PATH {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                base,
                format!(
                    "the base's absolute path is longer than {} bytes",
                    format::MAX_PATH
                ),
            ));
        }
        let dir = publish::dir_of(path);
        let tmp = sys::open_tmpfile(&dir).map_err(|e| {
            os(op, path, "open(O_TMPFILE)", e)
                .with_hint("the overlay is built as an unnamed file in its directory")
        })?;
        let block = sys::fs_info(&tmp)
            .map_err(|e| os(op, path, "fstatfs", e))?
            .block_size
            .max(4096);
        let page_size = opts.page_size.unwrap_or(block as u32);
        if page_size == 0
            || u64::from(page_size) % block != 0
            || u64::from(page_size) % BLOCK != 0
            || page_size > 64 << 20
        {
            return Err(err(
                ErrorKind::Alignment,
                op,
                path,
                format!(
                    "page size {page_size} must be a multiple of the {block}-byte block size (and of 4 KiB), at most 64 MiB"
                ),
            ));
        }
        let (map_blocks, data_offset) = Superblock::layout(size, page_size);
        let pages = size.div_ceil(u64::from(page_size));
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&sys::probe::rand_u64().to_le_bytes());
        uuid[8..].copy_from_slice(&sys::probe::rand_u64().to_le_bytes());
        let sb = Superblock {
            generation: 1,
            page_size,
            map_blocks,
            size,
            data_offset,
            uuid,
            base: lower.id()?,
            commit: CommitState::None,
            base_path: base_bytes,
        };
        let file_len = data_offset + pages * u64::from(page_size);
        tmp.set_len(file_len)
            .map_err(|e| os(op, path, "ftruncate", e))?;
        let map = PageMap::new(pages, map_blocks);
        let mut image = Vec::with_capacity(map_blocks as usize * BLOCK as usize);
        for b in 0..map.blocks() {
            image.extend(format::encode_map_block(map.payload(b), 0, b as u32));
        }
        for slot in 0..2 {
            tmp.write_all_at(&image, sb.map_offset(slot))
                .map_err(|e| os(op, path, "pwrite", e))?;
        }
        tmp.write_all_at(&sb.encode(), BLOCK)
            .map_err(|e| os(op, path, "pwrite", e))?;
        let expect = if opts.overwrite {
            Expect::Anything
        } else {
            Expect::Absent
        };
        // Syncs, links and renames `tmp` into place, syncs the directory.
        publish::publish(op, &tmp, path, expect)?;
        // The writer's lock. Another process could only have locked the new
        // overlay in the instant since the rename.
        lock_or_explain(
            op,
            path,
            &tmp,
            true,
            "another process opened the new overlay",
        )?;
        let mut map = map;
        map.mark_clean(0);
        map.mark_clean(1);
        Ok(Overlay::assemble(path, tmp, true, sb, map, lower))
    }

    /// An overlay handle over state just read or written: nothing pending.
    fn assemble(
        path: &Path,
        file: File,
        writable: bool,
        sb: Superblock,
        map: PageMap,
        lower: Lower,
    ) -> Overlay {
        Overlay {
            path: path.to_path_buf(),
            file,
            writable,
            sb,
            map,
            lower,
            pending_punch: Vec::new(),
            data_dirty: false,
            map_dirty: false,
            poisoned: false,
            view: None,
        }
    }

    /// Opens an overlay for reading and writing (one writer at a time),
    /// finishing an interrupted commit first.
    ///
    /// # Errors
    /// `Corrupted` for damaged superblocks or page map; `Conflict` if the
    /// base changed; `Locked` if another process has it open (a writer) or
    /// has it open as the base of its overlay (any reader).
    pub fn open(path: impl AsRef<Path>) -> Result<Overlay> {
        Overlay::open_at(path.as_ref(), true, 0)
    }

    /// Opens an overlay read-only (any number of readers, no writer).
    ///
    /// # Errors
    /// As [`open`](Self::open); `NeedsRecovery` if a commit was interrupted
    /// (open it read-write once to finish it).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Overlay> {
        Overlay::open_at(path.as_ref(), false, 0)
    }

    fn open_at(path: &Path, writable: bool, depth: usize) -> Result<Overlay> {
        let op = if writable {
            "open overlay"
        } else {
            "open overlay read-only"
        };
        if depth > MAX_DEPTH {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                path,
                format!("overlays are stacked more than {MAX_DEPTH} deep (a loop?)"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| os(op, path, "open", e))?;
        let what = if writable {
            "another process has the overlay open (or stacked an overlay on it)"
        } else {
            "another process has the overlay open for writing"
        };
        lock_or_explain(op, path, &file, writable, what)?;
        let mut head = vec![0u8; 2 * BLOCK as usize];
        let got = sys::read_up_to(&file, &mut head, 0).map_err(|e| os(op, path, "pread", e))?;
        if got < head.len() {
            return Err(err(
                ErrorKind::Corrupted,
                op,
                path,
                format!("{got} bytes: too short to be a budge overlay"),
            ));
        }
        let slots: Vec<std::result::Result<Superblock, String>> = (0..2)
            .map(|s| {
                let sb = Superblock::decode(&head[s * BLOCK as usize..(s + 1) * BLOCK as usize])?;
                if sb.generation % 2 != s as u64 {
                    return Err(format!(
                        "generation {} does not belong in slot {s}",
                        sb.generation
                    ));
                }
                Ok(sb)
            })
            .collect();
        let sb = match (&slots[0], &slots[1]) {
            (Ok(a), Ok(b)) => {
                if a.generation > b.generation {
                    a.clone()
                } else {
                    b.clone()
                }
            }
            (Ok(a), Err(_)) => a.clone(),
            (Err(_), Ok(b)) => b.clone(),
            (Err(a), Err(b)) => {
                let hint = if head[..8] != format::MAGIC && head[4096..4104] != format::MAGIC {
                    "not a budge overlay (no superblock magic)".to_string()
                } else {
                    format!("neither superblock is valid (slot 0: {a}; slot 1: {b})")
                };
                return Err(err(ErrorKind::Corrupted, op, path, hint));
            }
        };
        let pages = sb.pages();
        let len = file.metadata().map_err(|e| os(op, path, "fstat", e))?.len();
        let want = sb.data_offset + pages * u64::from(sb.page_size);
        if len < want {
            return Err(err(
                ErrorKind::Corrupted,
                op,
                path,
                format!("the file is {len} bytes; its superblock needs {want} (truncated?)"),
            ));
        }
        let slot = (sb.generation % 2) as usize;
        let mut map = PageMap::new(pages, sb.map_blocks);
        let mut image = vec![0u8; sb.map_blocks as usize * BLOCK as usize];
        file.read_exact_at(&mut image, sb.map_offset(slot as u64))
            .map_err(|e| os(op, path, "pread", e))?;
        for b in 0..map.blocks() {
            let raw = &image[b * BLOCK as usize..(b + 1) * BLOCK as usize];
            let first = b as u64 * format::ENTRIES_PER_BLOCK;
            let payload =
                format::decode_map_block(raw, b as u32, sb.generation).map_err(|why| {
                    err(
                        ErrorKind::Corrupted,
                        op,
                        path,
                        format!(
                            "page map block {b} (pages {first}..{}) of generation {}: {why}",
                            first + format::ENTRIES_PER_BLOCK,
                            sb.generation
                        ),
                    )
                })?;
            map.load_block(b, payload).map_err(|page| {
                err(
                    ErrorKind::Corrupted,
                    op,
                    path,
                    format!("page map entry {page} is invalid"),
                )
            })?;
        }
        map.mark_clean(slot);
        let base_path = PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&sb.base_path),
        );
        let lower = Lower::open(&base_path, depth)?;
        let mut ov = Overlay::assemble(path, file, writable, sb, map, lower);
        match ov.sb.commit {
            CommitState::None => ov.check_base(op)?,
            _ if !writable => {
                return Err(err(
                    ErrorKind::NeedsRecovery,
                    op,
                    path,
                    "a commit into the base was interrupted; open the overlay read-write once (budge overlay status) to finish it",
                ))
            }
            _ => ov.recover()?,
        }
        Ok(ov)
    }

    fn check_base(&self, op: &str) -> Result<()> {
        let now = self.lower.id()?;
        let size = self.lower.size();
        if now == self.sb.base && size == self.sb.size {
            return Ok(());
        }
        Err(err(
            ErrorKind::Conflict,
            op,
            &self.path,
            format!(
                "the base {} changed since the overlay was made: {}; the overlay's pages were copied up against the old contents, so reading through it now would mix two versions",
                self.lower.path().display(),
                describe_change(&self.sb.base, &now, self.sb.size, size)
            ),
        ))
    }

    /// The overlay file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The base's path.
    pub fn base_path(&self) -> &Path {
        self.lower.path()
    }

    /// Logical size in bytes (the base's).
    pub fn size(&self) -> u64 {
        self.sb.size
    }

    /// Bytes per page.
    pub fn page_size(&self) -> u32 {
        self.sb.page_size
    }

    /// Generation of the last flush.
    pub fn generation(&self) -> u64 {
        self.sb.generation
    }

    /// Whether this handle can write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The state of the page holding byte `offset` in this layer.
    pub fn page_state(&self, offset: u64) -> PageState {
        if offset >= self.sb.size {
            return PageState::Absent;
        }
        self.map.get(offset / u64::from(self.sb.page_size))
    }

    fn ps(&self) -> u64 {
        u64::from(self.sb.page_size)
    }

    /// Calls `f(offset, len, source)` for consecutive pieces of
    /// `[offset, offset + len)` in order, resolving absent pages downwards.
    pub(crate) fn each_source<'s>(
        &'s self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(u64, u64, Src<'s>) -> Result<()>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let ps = self.ps();
        let end = offset + len;
        for (s, e, st) in self.map.runs(offset / ps, end.div_ceil(ps)) {
            let a = (s * ps).max(offset);
            let b = (e * ps).min(end);
            match st {
                PageState::Present => f(a, b - a, Src::File(&self.file, self.sb.data_offset + a))?,
                PageState::Zero => f(a, b - a, Src::Zero)?,
                PageState::Absent => self.lower.each_source(a, b - a, f)?,
            }
        }
        Ok(())
    }

    /// `op` builds the operation's name, only on the error path (it
    /// formats sizes: measurable per 4 KiB write).
    fn range_check(&self, op: &dyn Fn() -> String, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.sb.size => Ok(()),
            _ => Err(err(
                ErrorKind::InvalidArgument,
                &op(),
                &self.path,
                format!(
                    "past the end of the {}-byte overlay (an overlay has its base's size)",
                    self.sb.size
                ),
            )),
        }
    }

    /// Reads `buf.len()` bytes at `offset` of the merged view.
    ///
    /// # Errors
    /// `InvalidArgument` past the end; `Io` from `pread`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        let op = || op_range("read", offset, len);
        self.range_check(&op, offset, len)?;
        let path = &self.path;
        self.each_source(offset, len, &mut |at, n, src| {
            let dst = &mut buf[(at - offset) as usize..(at - offset + n) as usize];
            match src {
                Src::Zero => dst.fill(0),
                Src::File(f, pos) => f
                    .read_exact_at(dst, pos)
                    .map_err(|e| os(&op(), path, "pread", e))?,
            }
            Ok(())
        })
    }

    fn check_write(&self, op: &dyn Fn() -> String, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(err(
                ErrorKind::InvalidArgument,
                &op(),
                &self.path,
                "the overlay is open read-only",
            ));
        }
        if self.poisoned {
            return Err(err(
                ErrorKind::Poisoned,
                &op(),
                &self.path,
                "an earlier flush failed to sync, or a commit failed after it replaced the base; reopen the overlay (writes since the last successful flush are lost)",
            ));
        }
        self.range_check(op, offset, len)
    }

    fn page_end(&self, p: u64) -> u64 {
        ((p + 1) * self.ps()).min(self.sb.size)
    }

    /// Writes `data` at `offset`. Pages partly covered and not yet in the
    /// overlay are copied up whole (the rest read from below). Durable at
    /// the next [`flush`](Self::flush).
    ///
    /// # Errors
    /// `InvalidArgument` past the end or on a read-only overlay; `NoSpace`
    /// (the page map is unchanged: reads still show what they showed).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        let op = || op_range("write", offset, len);
        self.check_write(&op, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let ps = self.ps();
        let end = offset + len;
        let (p0, p1) = (offset / ps, end.div_ceil(ps));
        let needs = |o: &Self, p: u64| {
            o.map.get(p) != PageState::Present && (offset > p * ps || end < o.page_end(p))
        };
        let head = needs(self, p0);
        let tail = needs(self, p1 - 1);
        let start = if head { p0 * ps } else { offset };
        let stop = if tail { self.page_end(p1 - 1) } else { end };
        let at = self.sb.data_offset + start;
        let res = if start == offset && stop == end {
            self.file.write_all_at(data, at)
        } else {
            let mut buf = vec![0u8; (stop - start) as usize];
            let (h, t) = ((offset - start) as usize, (end - start) as usize);
            self.read_at(start, &mut buf[..h])?;
            self.read_at(end, &mut buf[t..])?;
            buf[h..t].copy_from_slice(data);
            self.file.write_all_at(&buf, at)
        };
        res.map_err(|e| os(&op(), &self.path, "pwrite", e))?;
        self.data_dirty = true;
        self.set_pages(p0, p1, PageState::Present)
    }

    /// Sets pages `[p0, p1)` and keeps the view and the punch list right.
    fn set_pages(&mut self, p0: u64, p1: u64, state: PageState) -> Result<()> {
        let changed: Vec<(u64, u64)> = self
            .map
            .runs(p0, p1)
            .filter(|r| r.2 != state)
            .map(|(s, e, _)| (s, e))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        for &(s, e) in &changed {
            if self.map.get(s) == PageState::Present {
                self.pending_punch.push((s, e));
            }
        }
        self.map.set(p0, p1, state);
        self.map_dirty = true;
        for (s, e) in changed {
            self.remap(s, e)?;
        }
        Ok(())
    }

    /// Re-points the merged view's pages `[p0, p1)` at their sources.
    fn remap(&mut self, p0: u64, p1: u64) -> Result<()> {
        let Some(mut view) = self.view.take() else {
            return Ok(());
        };
        let r = self.map_into(&mut view, p0, p1);
        self.view = Some(view);
        r
    }

    fn map_into(&self, view: &mut PatchMap, p0: u64, p1: u64) -> Result<()> {
        let ps = self.ps();
        let (a, b) = (p0 * ps, (p1 * ps).min(self.sb.size));
        let page = sys::page_size();
        let path = &self.path;
        self.each_source(a, b - a, &mut |off, n, src| {
            let n = n.next_multiple_of(page) as usize;
            match src {
                Src::Zero => view.map_zero(off as usize, n),
                #[allow(unsafe_code)]
                // SAFETY: `map_file` needs the range of `f` to stay within
                // EOF while the view lives. `f` is this stack's base (flock-ed
                // shared, its size checked against the overlay's at open) or
                // an overlay file whose data area covers every page (checked
                // at open); budge never shrinks either while they are open,
                // and `map_view` documents that others must not.
                Src::File(f, pos) => unsafe { view.map_file(off as usize, n, f, pos) },
            }
            .map_err(|e| e.with_path(path))
        })
    }

    /// Makes pages in `[offset, offset + len)` read as zeros. Whole pages
    /// become `zero` (no data stored, the old data punched after the next
    /// flush); the partly covered pages at either end are written.
    ///
    /// # Errors
    /// As [`write_at`](Self::write_at).
    pub fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        let op = || op_range("zero", offset, len);
        self.check_write(&op, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let ps = self.ps();
        let end = offset + len;
        // Whole pages become `zero`; the partly covered ones at either end
        // are written (unless already `zero`).
        let covered = |o: &Self, p: u64| offset <= p * ps && end >= o.page_end(p);
        let (first, last) = (offset / ps, (end - 1) / ps);
        let ends = if first == last {
            vec![first]
        } else {
            vec![first, last]
        };
        for p in ends {
            if !covered(self, p) && self.map.get(p) != PageState::Zero {
                let a = offset.max(p * ps);
                let b = end.min(self.page_end(p));
                self.write_at(a, &vec![0u8; (b - a) as usize])?;
            }
        }
        let first_full = if covered(self, first) {
            first
        } else {
            first + 1
        };
        let end_full = if covered(self, last) { last + 1 } else { last };
        if first_full >= end_full {
            return Ok(());
        }
        self.set_pages(first_full, end_full, PageState::Zero)
    }

    /// Drops this layer's pages in `[offset, offset + len)`: they show the
    /// layer below again. Whole pages only.
    ///
    /// # Errors
    /// `Alignment` unless both ends are page boundaries (or the end is the
    /// overlay's size).
    pub fn revert(&mut self, offset: u64, len: u64) -> Result<()> {
        let op = || op_range("revert", offset, len);
        self.check_write(&op, offset, len)?;
        let ps = self.ps();
        let end = offset + len;
        if offset % ps != 0 || (end % ps != 0 && end != self.sb.size) {
            return Err(err(
                ErrorKind::Alignment,
                &op(),
                &self.path,
                format!("revert works on whole {}-byte pages", self.sb.page_size),
            ));
        }
        self.set_pages(offset / ps, end.div_ceil(ps), PageState::Absent)
    }

    /// Makes every write so far durable (group commit; see the module docs).
    /// Does nothing if nothing changed.
    ///
    /// # Errors
    /// `Io`/`NoSpace` from the writes or syncs. A failed sync poisons the
    /// overlay: later writes fail until it is reopened.
    pub fn flush(&mut self) -> Result<()> {
        if !self.writable || (!self.data_dirty && !self.map_dirty) {
            return Ok(());
        }
        if self.poisoned {
            return Err(err(
                ErrorKind::Poisoned,
                "flush overlay",
                &self.path,
                "an earlier flush failed to sync; reopen the overlay",
            ));
        }
        if !self.map_dirty {
            self.sync("flush overlay")?;
            self.data_dirty = false;
            return Ok(());
        }
        let mut next = self.sb.clone();
        next.generation += 1;
        self.write_state("flush overlay", next)?;
        self.data_dirty = false;
        self.map_dirty = false;
        self.punch_pending();
        Ok(())
    }

    fn sync(&mut self, op: &str) -> Result<()> {
        sys::fdatasync(&self.file).map_err(|e| {
            self.poisoned = true;
            os(op, &self.path, "fdatasync", e)
        })
    }

    /// Writes the map blocks copy `next.generation % 2` lacks, syncs, then
    /// the superblock `next`, and syncs again.
    fn write_state(&mut self, op: &str, next: Superblock) -> Result<()> {
        let slot = (next.generation % 2) as usize;
        let blocks = self.map.dirty_blocks(slot);
        let mut i = 0;
        while i < blocks.len() {
            let mut j = i + 1;
            while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 {
                j += 1;
            }
            let mut buf = Vec::with_capacity((j - i) * BLOCK as usize);
            for &b in &blocks[i..j] {
                buf.extend(format::encode_map_block(
                    self.map.payload(b),
                    next.generation,
                    b as u32,
                ));
            }
            let at = next.map_offset(slot as u64) + blocks[i] as u64 * BLOCK;
            self.file
                .write_all_at(&buf, at)
                .map_err(|e| os(op, &self.path, "pwrite", e))?;
            i = j;
        }
        self.sync(op)?;
        fail::fail_point!("budge::overlay::before-superblock", |_| {
            Err(err(
                ErrorKind::Io,
                op,
                &self.path,
                "failpoint budge::overlay::before-superblock",
            ))
        });
        self.file
            .write_all_at(&next.encode(), slot as u64 * BLOCK)
            .map_err(|e| os(op, &self.path, "pwrite", e))?;
        self.sync(op)?;
        for b in blocks {
            self.map.written(slot, b);
        }
        self.sb = next;
        Ok(())
    }

    /// Frees the data of pages no durable map points at any more.
    fn punch_pending(&mut self) {
        let ps = self.ps();
        let pending = std::mem::take(&mut self.pending_punch);
        for (s, e) in pending {
            for (a, b, st) in self.map.runs(s, e) {
                if st != PageState::Present {
                    let _ = sys::fallocate(
                        &self.file,
                        Falloc::PunchHole,
                        self.sb.data_offset + a * ps,
                        (b - a) * ps,
                    );
                }
            }
        }
    }

    /// Flushes and closes, reporting errors `drop` would ignore.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn close(mut self) -> Result<()> {
        self.flush()
    }

    /// Builds the merged read-only mapping ([`view`](Self::view)); from then
    /// on writes through this handle keep it current (a `MAP_FIXED` remap
    /// per run that changes state). The base and every layer are mapped
    /// `MAP_SHARED`: a process that truncates the base behind budge's locks
    /// makes reads of the view raise SIGBUS.
    ///
    /// # Errors
    /// `Io` from `mmap` (ENOMEM beyond `vm.max_map_count` mappings: one per
    /// run of pages).
    pub fn map_view(&mut self) -> Result<()> {
        if self.view.is_some() {
            return Ok(());
        }
        let mut view = PatchMap::new(self.sb.size as usize).map_err(|e| e.with_path(&self.path))?;
        self.map_into(&mut view, 0, self.map.pages())?;
        self.view = Some(view);
        Ok(())
    }

    /// The merged view as one slice, once [`map_view`](Self::map_view) was
    /// called.
    pub fn view(&self) -> Option<&[u8]> {
        self.view.as_ref().map(PatchMap::as_slice)
    }

    /// The changed ranges of this layer (runs of `present` or `zero` pages),
    /// in order.
    pub fn changes(&self) -> Vec<Change> {
        let ps = self.ps();
        self.map
            .runs(0, self.map.pages())
            .filter(|r| r.2 != PageState::Absent)
            .map(|(s, e, state)| Change {
                offset: s * ps,
                len: (e * ps).min(self.sb.size) - s * ps,
                state,
            })
            .collect()
    }

    /// Counts and sizes.
    ///
    /// # Errors
    /// `Io` from `fstat`.
    pub fn status(&self) -> Result<Status> {
        let (present, zero) = self.map.counts();
        let m = self
            .file
            .metadata()
            .map_err(|e| os("overlay status", &self.path, "fstat", e))?;
        Ok(Status {
            path: self.path.clone(),
            base: self.lower.path().to_path_buf(),
            depth: self.lower.depth(),
            size: self.sb.size,
            page_size: self.sb.page_size,
            pages: self.map.pages(),
            present_pages: present,
            zero_pages: zero,
            disk_bytes: m.blocks() * 512,
            generation: self.sb.generation,
            unflushed: self.data_dirty || self.map_dirty,
        })
    }

    /// Deletes the overlay at `path` (its changes are dropped; the base is
    /// untouched). Refuses while any process has it open.
    ///
    /// # Errors
    /// `Locked` if it is open; `Corrupted` if the file is not an overlay.
    pub fn discard(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let op = "discard overlay";
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| os(op, path, "open", e))?;
        let mut head = vec![0u8; 2 * BLOCK as usize];
        let got = sys::read_up_to(&file, &mut head, 0).map_err(|e| os(op, path, "pread", e))?;
        if got < head.len() || (head[..8] != format::MAGIC && head[4096..4104] != format::MAGIC) {
            return Err(err(
                ErrorKind::Corrupted,
                op,
                path,
                "not a budge overlay (no superblock magic); refusing to delete it",
            ));
        }
        lock_or_explain(op, path, &file, true, "the overlay is open")?;
        std::fs::remove_file(path).map_err(|e| os(op, path, "unlink", e))?;
        let dir = publish::dir_of(path);
        let d = File::open(&dir).map_err(|e| os(op, &dir, "open directory", e))?;
        sys::fsync(&d).map_err(|e| os(op, &dir, "fsync directory", e))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.writable && !self.poisoned {
            let _ = self.flush();
        }
    }
}
