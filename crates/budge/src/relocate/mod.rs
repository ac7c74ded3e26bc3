//! Relocation (defragmentation): move a file's data to new, less fragmented
//! blocks while it stays open and mapped.
//!
//! The range is cut into bounded chunks ([`RelocateOptions::chunk`]); only
//! chunks that are fragmented (two or more physically separate pieces, one
//! of them shorter than [`RelocateOptions::threshold`]) are moved, one at a
//! time, so a large file is relocated incrementally. Each chunk either
//! completes or is left as it was, with the reason in the report.
//!
//! Strategies, tried in order per filesystem (a strategy the kernel refuses
//! on the first chunk, having changed nothing, falls back to the next):
//!
//! - [`RelocateStrategy::MoveExt`] (ext4): a preallocated donor file and
//!   `EXT4_IOC_MOVE_EXT`, which swaps blocks under the page lock.
//! - [`RelocateStrategy::SwapExt`] (XFS with rmapbt, whole file, first when
//!   at least half the file's data is in fragmented chunks): the method of
//!   `xfs_fsr`. A donor preallocated over the file's data, filled with
//!   direct I/O, then `XFS_IOC_SWAPEXT` swaps every extent in one
//!   transaction, refused by the kernel if the file's times changed since
//!   the copy began (a concurrent write: nothing is swapped). It gives way
//!   to `Dedupe` for a range, shared extents, less fragmentation, or too
//!   little space for a whole-file donor. Never on an XFS without rmapbt:
//!   there the kernel swaps the inode forks, and on Linux 6.18 a crash once
//!   that swap is in the log left the filesystem unmountable.
//! - [`RelocateStrategy::Cow`] (XFS with reflink, next): share the chunk
//!   with a scratch file, then `FALLOC_FL_UNSHARE_RANGE`: the kernel's
//!   copy-on-write writes the cached pages to new blocks (the file's
//!   copy-on-write extent size hint raised to cover the run for the
//!   duration, so the run lands in one extent). No copy, no compare, the
//!   page cache untouched. The kernel counts it as a write: the file's
//!   mtime and ctime change ([`RelocateOptions::keep_times`] leaves it
//!   out), and it is never used on setuid/setgid files or files with
//!   capabilities, which a write clears.
//! - [`RelocateStrategy::Dedupe`] (XFS, btrfs): copy the chunk into a
//!   preallocated donor, then `FIDEDUPERANGE` donor → file, which remaps
//!   only if the bytes are still equal. A concurrent write makes the chunk
//!   "differs", skipped and untouched.
//! - [`RelocateStrategy::BtrfsDefrag`] (btrfs): `BTRFS_IOC_DEFRAG_RANGE`
//!   per chunk.
//! - [`RelocateStrategy::CopyRename`] (anywhere, only through
//!   [`relocate_path`]): copy into a new file and rename it over the path.
//!   Not coherent: other openers keep the old inode.
//!
//! All but `CopyRename` keep the inode and its page cache: a process reading
//! through `MAP_SHARED` sees the same bytes throughout.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::copy::Progress;
use crate::error::{Error, ErrorKind, Result};
use crate::extents::{clip, extents_in, flags, pieces, Extent};
use crate::range::{align_down, align_up, fmt_size};
use crate::sys::{self, probe::Capabilities, Falloc, FsKind};

/// How a relocation moves data.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RelocateStrategy {
    /// ext4 `EXT4_IOC_MOVE_EXT` from a preallocated donor file.
    MoveExt,
    /// Copy into a preallocated donor, then `FIDEDUPERANGE` donor → file.
    Dedupe,
    /// XFS, whole file: copy into a preallocated donor with direct I/O, then
    /// `XFS_IOC_SWAPEXT` (the method of `xfs_fsr`).
    SwapExt,
    /// btrfs `BTRFS_IOC_DEFRAG_RANGE`.
    BtrfsDefrag,
    /// XFS: share the chunk with a scratch file (`FICLONERANGE`), then
    /// `FALLOC_FL_UNSHARE_RANGE`: the kernel's copy-on-write writes it to
    /// new blocks from the page cache, which stays in place. Updates the
    /// file's modification and change times (see
    /// [`RelocateOptions::keep_times`]).
    Cow,
    /// Copy into a new file and rename it over the path (not coherent).
    CopyRename,
    /// Nothing to do: no fragmented chunk, or no extents (tmpfs).
    Nothing,
}

impl RelocateStrategy {
    /// The name used by the CLI and in reports.
    pub fn name(self) -> &'static str {
        match self {
            RelocateStrategy::MoveExt => "move-ext",
            RelocateStrategy::Dedupe => "dedupe",
            RelocateStrategy::SwapExt => "swapext",
            RelocateStrategy::BtrfsDefrag => "btrfs-defrag",
            RelocateStrategy::Cow => "cow",
            RelocateStrategy::CopyRename => "copy-rename",
            RelocateStrategy::Nothing => "none",
        }
    }

    /// The strategies a caller may force.
    pub const FORCEABLE: [RelocateStrategy; 6] = [
        RelocateStrategy::MoveExt,
        RelocateStrategy::Dedupe,
        RelocateStrategy::SwapExt,
        RelocateStrategy::BtrfsDefrag,
        RelocateStrategy::Cow,
        RelocateStrategy::CopyRename,
    ];

    /// Whether processes that hold the file open (or mapped) keep seeing it.
    pub fn coherent(self) -> bool {
        self != RelocateStrategy::CopyRename
    }
}

impl std::fmt::Display for RelocateStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RelocateStrategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::FORCEABLE
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown strategy {s:?} (expected move-ext, dedupe, swapext, btrfs-defrag, cow or copy-rename)"
                )
            })
    }
}

/// Default [`RelocateOptions::threshold`]: 1 MiB. A sequential read of an
/// extent this size costs about as long as one seek on a disk (≈ 1 MiB at
/// 150 MB/s ≈ 7 ms) and far more than an SSD's per-request overhead, so
/// extents at least this long are not worth moving; it is also between the
/// kernel's own defaults (btrfs 256 KiB, e4defrag/xfs_fsr "any gain").
pub const DEFAULT_THRESHOLD: u64 = 1 << 20;

/// Default [`RelocateOptions::chunk`]: 16 MiB, the most btrfs dedupes per
/// call, and small enough that one chunk's donor fits in tight free space.
pub const DEFAULT_CHUNK: u64 = 16 << 20;

/// Options for [`relocate`] and [`relocate_path`].
#[derive(Clone, Copy)]
pub struct RelocateOptions<'a> {
    /// `(offset, len)` to relocate; the whole file when `None`. Rounded out
    /// to whole blocks and clipped to EOF.
    pub range: Option<(u64, u64)>,
    /// An extent shorter than this counts as a fragment.
    pub threshold: u64,
    /// The most bytes moved in one step (rounded to whole blocks).
    pub chunk: u64,
    /// Force one strategy (no fallback).
    pub strategy: Option<RelocateStrategy>,
    /// Also move chunks holding shared (reflinked) extents, unsharing them.
    pub unshare: bool,
    /// Leave the file's modification and change times as they were: the
    /// automatic choice then skips [`RelocateStrategy::Cow`], which the
    /// kernel counts as a write (XFS without rmapbt then uses the slower
    /// dedupe). Every other strategy keeps the times.
    pub keep_times: bool,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Called with (bytes done, bytes to do) as the fragmented chunks are
    /// worked through (each chunk once, moved or skipped; for the whole-file
    /// swap, as the donor is filled), and once more at the end.
    pub progress: Option<Progress<'a>>,
}

impl Default for RelocateOptions<'_> {
    fn default() -> Self {
        RelocateOptions {
            range: None,
            threshold: DEFAULT_THRESHOLD,
            chunk: DEFAULT_CHUNK,
            strategy: None,
            unshare: false,
            keep_times: false,
            dry_run: false,
            progress: None,
        }
    }
}

impl std::fmt::Debug for RelocateOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelocateOptions")
            .field("range", &self.range)
            .field("threshold", &self.threshold)
            .field("chunk", &self.chunk)
            .field("strategy", &self.strategy)
            .field("unshare", &self.unshare)
            .field("keep_times", &self.keep_times)
            .field("dry_run", &self.dry_run)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Why a fragmented chunk was left as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// It holds shared (reflinked) extents and `unshare` is off.
    Shared,
    /// It holds holes (relocating would fill them).
    Holes,
    /// Inline or encoded (compressed) data.
    Special,
    /// The donor's allocation was no better (`donor` vs `file` pieces).
    DonorNotBetter {
        /// Pieces in the donor's allocation.
        donor: u64,
        /// Pieces in the file's chunk.
        file: u64,
    },
    /// The bytes changed under the relocation (a concurrent write): the
    /// kernel compared them and remapped nothing.
    Differs,
    /// No space for the donor.
    NoSpace,
    /// The kernel kept finding the range busy (ext4 `EBUSY`: pages being
    /// written concurrently); the part not yet moved was left as it was.
    Busy,
    /// The filesystem made no change (btrfs defrag judged it fine).
    Unchanged,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Shared => f.write_str("shared extents (use unshare)"),
            SkipReason::Holes => f.write_str("holes"),
            SkipReason::Special => f.write_str("inline or encoded data"),
            SkipReason::DonorNotBetter { donor, file } => {
                write!(f, "donor allocation no better ({donor} pieces vs {file})")
            }
            SkipReason::Differs => f.write_str("differs: changed concurrently, left as it was"),
            SkipReason::NoSpace => f.write_str("no space for the donor"),
            SkipReason::Busy => f.write_str("busy: being written concurrently"),
            SkipReason::Unchanged => f.write_str("the filesystem left it unchanged"),
        }
    }
}

/// A fragmented chunk that was not moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedChunk {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Why.
    pub reason: SkipReason,
}

/// What a relocation did (or, with `dry_run`, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelocateReport {
    /// The strategy that ran (or would run).
    pub strategy: RelocateStrategy,
    /// False for `CopyRename`: other openers keep the old inode.
    pub coherent: bool,
    /// The relocated range `(offset, len)` after rounding and clipping.
    pub range: (u64, u64),
    /// Extents in the range before (0 where the filesystem has none).
    pub extents_before: u64,
    /// Extents in the range after.
    pub extents_after: u64,
    /// Bytes whose physical location changed (with `dry_run`: the bytes of
    /// the fragmented chunks).
    pub bytes_moved: u64,
    /// Fragmented chunks found.
    pub chunks: u64,
    /// Of those, chunks moved.
    pub chunks_moved: u64,
    /// Of those, chunks left as they were, with the reason.
    pub chunks_skipped: Vec<SkippedChunk>,
    /// Strategies tried and abandoned, with the reason.
    pub notes: Vec<String>,
    /// Nothing was changed on purpose.
    pub dry_run: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// Relocates the fragmented chunks of `file` (open read-write) in place,
/// keeping its inode: coherent with other openers and live mappings.
///
/// # Errors
/// `InvalidArgument` for a bad file or range, `Unsupported` when a forced
/// strategy cannot run (or none can: use [`relocate_path`] for the copy
/// fallback), `Io` for unexpected kernel errors. Chunks not moved for an
/// expected reason (concurrent write, no space) are reported, not errors.
pub fn relocate(file: &File, opts: &RelocateOptions<'_>) -> Result<RelocateReport> {
    relocate_inner(file, None, opts)
}

/// [`relocate`] by path, which adds the [`RelocateStrategy::CopyRename`]
/// fallback (or forced strategy): copy into a new file in the same directory
/// and rename it over `path`. That is *not coherent*: processes holding the
/// old file open or mapped keep the old inode and do not see later writes.
///
/// # Errors
/// As for [`relocate`], plus `NotFound` for a missing path and `Conflict`
/// when the file changed during the copy (the original is then kept).
pub fn relocate_path(path: &Path, opts: &RelocateOptions<'_>) -> Result<RelocateReport> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::os("relocate", "open", e).with_path(path))?;
    relocate_inner(&file, Some(path), opts).map_err(|e| e.with_path(path))
}

/// A chunk of the range and its extents at planning time.
struct Chunk {
    offset: u64,
    len: u64,
    pieces: u64,
    skip: Option<SkipReason>,
}

/// Bytes of `after` whose physical location differs from `before`.
fn moved_bytes(before: &[Extent], after: &[Extent]) -> u64 {
    let mut moved = 0;
    for a in after {
        let mut same = 0;
        for b in before {
            let lo = a.logical.max(b.logical);
            let hi = (a.logical + a.length).min(b.logical + b.length);
            if lo < hi
                && a.physical != 0
                && a.physical.wrapping_sub(a.logical) == b.physical.wrapping_sub(b.logical)
            {
                same += hi - lo;
            }
        }
        moved += a.length - same.min(a.length);
    }
    moved
}

/// Plans the chunks of `[start, end)`: which are fragmented, and which of
/// those must be skipped whatever the strategy. `shared_elsewhere` says
/// whether an extent FIEMAP flags as shared is shared with another file.
fn plan(
    ext: &[Extent],
    start: u64,
    end: u64,
    chunk: u64,
    opts: &RelocateOptions<'_>,
    shared_elsewhere: &dyn Fn(&Extent) -> bool,
) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let stop = (at + chunk).min(end);
        let here: Vec<Extent> = ext
            .iter()
            .filter(|e| e.logical < stop && e.logical + e.length > at)
            .copied()
            .collect();
        let n = pieces(&here);
        let small = here.iter().any(|e| e.length < opts.threshold);
        if n >= 2 && small {
            let covered: u64 = here
                .iter()
                .map(|e| (e.logical + e.length).min(stop) - e.logical.max(at))
                .sum();
            let any = |f: u32| here.iter().any(|e| e.flags & f != 0);
            let skip = if covered < stop - at {
                Some(SkipReason::Holes)
            } else if any(flags::DATA_INLINE | flags::ENCODED | flags::DATA_TAIL) {
                Some(SkipReason::Special)
            } else if !opts.unshare
                && here
                    .iter()
                    .any(|e| e.flags & flags::SHARED != 0 && shared_elsewhere(e))
            {
                Some(SkipReason::Shared)
            } else {
                None
            };
            out.push(Chunk {
                offset: at,
                len: stop - at,
                pieces: n,
                skip,
            });
        }
        at = stop;
    }
    out
}

/// Whether an extent FIEMAP flags as shared is shared with another file.
///
/// btrfs flags an extent shared when it has two references, even both from
/// this file: after budge's reflink shift, the part before the insertion
/// point and the part after it reference one on-disk extent. Moving such
/// pieces unshares nothing another file sees, so on btrfs each flagged
/// extent's references are listed (`BTRFS_IOC_LOGICAL_INO_V2`, which needs
/// `CAP_SYS_ADMIN`) and it counts as shared only if one is from another
/// inode or subvolume. The listing sees only committed transactions: an
/// extent the running transaction made answers `ENOENT`, and then btrfs is
/// made to commit (once per call; a few milliseconds, no file data written)
/// and asked again. Elsewhere, or when the listing fails, every flagged
/// extent counts as shared.
fn shared_check(file: &File, kind: FsKind) -> impl Fn(&Extent) -> bool + '_ {
    let me = (kind == FsKind::Btrfs)
        .then(|| {
            let ino = rustix::fs::fstat(file).ok()?.st_ino;
            let root = sys::btrfs_subvolume_id(file).ok()?;
            Some((ino, root))
        })
        .flatten();
    // File offsets of this file's references already known to be to
    // extents only this file references: one listing covers every piece of
    // an extent (a file shifted 1,000 times holds hundreds of pieces of one
    // extent), so each extent is listed once.
    let mine_only = std::cell::RefCell::new(std::collections::HashSet::new());
    let committed = std::cell::Cell::new(false);
    move |e: &Extent| {
        let Some((ino, root)) = me else {
            return true;
        };
        if mine_only.borrow().contains(&e.logical) {
            return false;
        }
        let refs = match sys::btrfs_extent_refs(file, e.physical) {
            // An extent written or cloned in the running transaction has
            // no extent item yet (its references are delayed refs, which
            // the listing does not see): commit once, then ask again.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) && !committed.get() => {
                committed.set(true);
                match sys::btrfs_commit_transaction(file) {
                    Ok(()) => sys::btrfs_extent_refs(file, e.physical),
                    Err(_) => Err(err),
                }
            }
            r => r,
        };
        match refs {
            Ok((refs, true))
                if !refs.is_empty() && refs.iter().all(|r| r.inode == ino && r.root == root) =>
            {
                mine_only.borrow_mut().extend(refs.iter().map(|r| r.offset));
                false
            }
            _ => true,
        }
    }
}

/// The end of the run of adjacent chunks to move that starts at `chunks[0]`.
fn span_end(chunks: &[Chunk]) -> u64 {
    let mut end = chunks[0].offset + chunks[0].len;
    for c in &chunks[1..] {
        if c.offset != end || c.skip.is_some() {
            break;
        }
        end = c.offset + c.len;
    }
    end
}

fn order(kind: FsKind, path: bool, keep_times: bool) -> Vec<RelocateStrategy> {
    use RelocateStrategy::*;
    let mut v = match kind {
        FsKind::Ext4 => vec![MoveExt],
        FsKind::Xfs if keep_times => vec![SwapExt, Dedupe],
        FsKind::Xfs => vec![SwapExt, Cow, Dedupe],
        FsKind::Btrfs => vec![BtrfsDefrag, Dedupe],
        FsKind::Tmpfs => return Vec::new(),
        FsKind::Other(_) => vec![Dedupe, MoveExt, BtrfsDefrag],
    };
    if path {
        v.push(CopyRename);
    }
    v
}

/// The outcome of one chunk.
enum Step {
    Moved,
    Skipped(SkipReason),
}

/// Why [`RelocateStrategy::SwapExt`] is not used on an XFS without the
/// reverse-mapping btree.
const SWAPEXT_NEEDS_RMAPBT: &str = "XFS_IOC_SWAPEXT is used only on an XFS with rmapbt (mkfs.xfs -m rmapbt=1): without it the kernel swaps the inode forks, and on Linux 6.18 a crash after that swap reached the log left the filesystem unmountable (log recovery rejects the donor inode; tests/relocate_crash.rs found it, xfs_fsr does the same)";

/// The outcome of a whole-file strategy ([`RelocateStrategy::SwapExt`]).
enum Whole {
    /// Every extent of the file now lives in the donor's allocation.
    Swapped,
    /// Nothing changed, for a reason that applies to every chunk.
    Skipped(SkipReason),
    /// The strategy does not apply to this file (why); nothing changed.
    NotHere(String),
}

/// Turns an `ENOSPC` into `Whole::Skipped(NoSpace)` and anything else into
/// an error of `op` at `call`.
macro_rules! or_no_space {
    ($e:expr, $op:expr, $call:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                return Ok(Whole::Skipped(SkipReason::NoSpace))
            }
            Err(e) => return Err(Error::os($op.clone(), $call, e)),
        }
    };
}

struct Ctx<'a> {
    file: &'a File,
    caps: &'a Capabilities,
    bs: u64,
    size: u64,
    op: String,
    /// The current donor and the file range `[start, end)` preallocated in
    /// it: one allocation for a whole run of fragmented chunks, so the
    /// chunks land next to each other on disk.
    donor: std::cell::RefCell<Option<Donor>>,
    /// [`Ctx::cow`]'s scratch file, holding the old blocks.
    scratch: std::cell::RefCell<Option<File>>,
    cow: std::cell::RefCell<CowState>,
    progress: Option<Progress<'a>>,
}

/// What [`Ctx::cow`] changes on the file besides its blocks, put back by
/// [`CowState::restore`] (or, ignoring errors, on drop): its copy-on-write
/// extent size hint, raised to cover each run of chunks, and XFS's
/// `PREALLOC` flag, which every unshare sets. Also whether an unshare was
/// issued (the file's times changed).
#[derive(Default)]
struct CowState {
    /// The file (a second descriptor, so the guard owns it) and its own
    /// attributes, read before the first unshare.
    own: Option<(File, sys::CowAttrs)>,
    /// The hint is raised.
    raised: bool,
    /// An unshare was issued.
    unshared: bool,
    /// The end of the run the raised hint covers.
    covers: u64,
    /// Leave the hint alone from now on (it could not be set, or the
    /// filesystem lacked the space it reserves).
    off: bool,
    /// Why the hint was not raised or put back, for the report.
    note: Option<String>,
}

impl CowState {
    /// Reads the file's own attributes, once.
    fn begin(&mut self, file: &File) -> std::io::Result<()> {
        if self.own.is_none() {
            let own = sys::cow_attrs(file)?;
            self.own = Some((file.try_clone()?, own));
        }
        Ok(())
    }

    /// Raises `file`'s hint to cover the run `[offset, span_end)` if it does
    /// not yet. The kernel aligns copy-on-write reservations to multiples
    /// of the hint counted from offset 0, so the hint divides both the
    /// run's start and its length ([`aligned_hint`]): it reserves the run's
    /// blocks and none around it. At most half an allocation group and
    /// `2^21 - 1` blocks (the kernel's limits); only with room for the run
    /// twice over.
    fn cover(&mut self, file: &File, offset: u64, span_end: u64, bs: u64) {
        if self.off || offset < self.covers {
            return;
        }
        let Some((_, own)) = &self.own else { return };
        let own = own.cow_extent_size;
        let mut fail = |what: String| {
            self.off = true;
            self.note = Some(format!(
                "cow: {what}; the moved data may land in several extents"
            ));
        };
        let ag = match sys::xfs_ag_bytes(file) {
            Ok(ag) => ag,
            Err(e) => return fail(format!("could not size the allocation groups ({e})")),
        };
        let max = (ag / 2).min(bs * ((1 << 21) - 1)).min(u64::from(u32::MAX));
        let len = align_up(span_end.saturating_sub(offset), bs).unwrap_or(u64::MAX);
        // Each unshare reserves whole hints, and a reservation that fails
        // part-way keeps what it took.
        let avail = match sys::fs_info(file) {
            Ok(i) => i.avail_bytes,
            Err(e) => return fail(format!("could not read the free space ({e})")),
        };
        if avail / 2 < len {
            return fail(format!(
                "{} free, too little to reserve the {} run at once",
                fmt_size(avail),
                fmt_size(len)
            ));
        }
        let Some(hint) = aligned_hint(offset, len, max, bs) else {
            return fail(format!(
                "no copy-on-write extent size hint of at least 1 MiB divides both the run's offset ({}) and its length ({})",
                fmt_size(offset),
                fmt_size(len)
            ));
        };
        if own.is_some_and(|o| u64::from(o) >= hint) {
            self.covers = span_end;
            return;
        }
        match sys::set_cow_extent_size_hint(file, Some(hint as u32)) {
            Ok(()) => {
                self.raised = true;
                self.covers = span_end;
            }
            Err(e) => fail(format!(
                "could not raise the copy-on-write extent size hint ({e})"
            )),
        }
    }

    /// Stops raising the hint and puts the file's own back; true if it had
    /// been raised.
    fn give_up(&mut self) -> bool {
        if self.off || !self.raised {
            return false;
        }
        self.off = true;
        self.raised = false;
        if let Some((f, own)) = &self.own {
            if let Err(e) = sys::set_cow_extent_size_hint(f, own.cow_extent_size) {
                self.note = Some(format!(
                    "cow: could not put back the file's copy-on-write extent size hint ({e})"
                ));
            }
        }
        true
    }

    /// Puts the file's own hint and `PREALLOC` flag back, if they changed.
    fn restore(&mut self) -> std::io::Result<()> {
        let Some((f, own)) = self.own.take() else {
            return Ok(());
        };
        if sys::cow_attrs(&f)? == own {
            return Ok(());
        }
        sys::set_cow_attrs(&f, own)
    }
}

impl Drop for CowState {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

/// The largest copy-on-write extent size hint, in whole blocks, of at least
/// 1 MiB and at most `max` bytes, that divides both `offset` and `len`
/// (multiples of `bs`); `None` if there is none (or it takes too long to
/// find: a length of many blocks whose common divisor has no factor near
/// `max`).
fn aligned_hint(offset: u64, len: u64, max: u64, bs: u64) -> Option<u64> {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let g = gcd(offset / bs, len / bs);
    let most = max / bs;
    if g == 0 || most == 0 {
        return None;
    }
    // The largest divisor of g not over `most`: g / k for the least k.
    let first = g.div_ceil(most);
    let k = (first..first.saturating_add(1 << 16)).find(|k| g % k == 0)?;
    let hint = g / k * bs;
    (hint >= 1 << 20).then_some(hint)
}

/// Why [`RelocateStrategy::Cow`] must not run on `file`, if it must not:
/// the kernel counts `FALLOC_FL_UNSHARE_RANGE` as a write, and a write
/// clears setuid and setgid bits and removes file capabilities
/// (`security.capability`), root's included.
fn cow_would_strip(file: &File) -> Option<&'static str> {
    let mode = sys::meta::identity(file).map_or(0, |(_, o)| o.mode);
    if mode & 0o6000 != 0 {
        return Some("the file is setuid or setgid, which the kernel clears on a write (UNSHARE_RANGE counts as one)");
    }
    match sys::meta::xattr_get_opt(file, "security.capability") {
        Ok(Some(_)) => Some("the file has capabilities (security.capability), which the kernel removes on a write (UNSHARE_RANGE counts as one)"),
        _ => None,
    }
}

struct Donor {
    file: File,
    start: u64,
    end: u64,
}

impl Ctx<'_> {
    fn err(&self, call: &'static str) -> impl Fn(std::io::Error) -> Error + '_ {
        move |e| Error::os(self.op.clone(), call, e)
    }

    /// Makes sure the current donor covers chunk `c`: a donor on the file's
    /// filesystem, as long as the file, with `[c.offset, span_end)`
    /// preallocated (the run of fragmented chunks starting at `c`), halving
    /// the span down to the chunk alone while the filesystem lacks the
    /// space. False when not even the chunk fits.
    fn ensure_donor(&self, c: &Chunk, span_end: u64) -> Result<bool> {
        let end = c.offset + c.len;
        if matches!(&*self.donor.borrow(), Some(d) if d.start <= c.offset && end <= d.end) {
            return Ok(true);
        }
        // The previous donor's blocks (the old fragments, after move-ext)
        // are freed before allocating the next.
        *self.donor.borrow_mut() = None;
        let mut want = span_end.max(end) - c.offset;
        loop {
            let d = match self.caps.temp_file_near(self.file) {
                Ok(d) => d,
                // No inode left.
                Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => return Ok(false),
                Err(e) => return Err(Error::os(self.op.clone(), "create donor file", e)),
            };
            sys::ftruncate(&d, self.size).map_err(self.err("ftruncate"))?;
            let alen = align_up(want, self.bs).unwrap_or(want);
            fail::fail_point!("budge::relocate::donor-alloc");
            match sys::fallocate(&d, Falloc::AllocateKeepSize, c.offset, alen) {
                Ok(()) => {
                    *self.donor.borrow_mut() = Some(Donor {
                        file: d,
                        start: c.offset,
                        end: c.offset + want,
                    });
                    return Ok(true);
                }
                Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                    // A failed fallocate may leave part of the range
                    // allocated: start again from an empty donor.
                    drop(d);
                    if want <= c.len {
                        return Ok(false);
                    }
                    want = (align_up(want / 2, self.bs).unwrap_or(want / 2)).max(c.len);
                }
                Err(e) => return Err(Error::os(self.op.clone(), "fallocate(donor)", e)),
            }
        }
    }

    fn check_donor(&self, donor: &File, c: &Chunk) -> Result<Option<SkipReason>> {
        let d = pieces(&extents_in(donor, c.offset, c.len)?);
        Ok((d >= c.pieces).then_some(SkipReason::DonorNotBetter {
            donor: d,
            file: c.pieces,
        }))
    }

    fn move_ext(&self, c: &Chunk, span_end: u64) -> Result<Step> {
        if !self.ensure_donor(c, span_end)? {
            return Ok(Step::Skipped(SkipReason::NoSpace));
        }
        let guard = self.donor.borrow();
        let donor = &guard.as_ref().expect("ensured above").file;
        if let Some(r) = self.check_donor(donor, c)? {
            return Ok(Step::Skipped(r));
        }
        fail::fail_point!("budge::relocate::before-swap");
        let first = c.offset / self.bs;
        let blocks = align_up(c.len, self.bs).unwrap_or(c.len) / self.bs;
        let mut done = 0;
        let mut busy = 0;
        while done < blocks {
            let n = match sys::ext4_move_ext(
                self.file,
                donor,
                first + done,
                first + done,
                blocks - done,
            ) {
                Ok(n) => n,
                // Dirty or locked pages in the range (a concurrent write):
                // write them back and retry a few times.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                    busy += 1;
                    if busy > 3 {
                        return Ok(Step::Skipped(SkipReason::Busy));
                    }
                    sys::fdatasync(self.file).map_err(self.err("fdatasync"))?;
                    continue;
                }
                // Out of space for the extent tree (the donor's blocks are
                // already allocated): what moved stays moved, content is
                // the same either way, the rest of the chunk is left.
                Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                    return Ok(Step::Skipped(SkipReason::NoSpace))
                }
                Err(e) => return Err(Error::os(self.op.clone(), "EXT4_IOC_MOVE_EXT", e)),
            };
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(Step::Moved)
    }

    fn dedupe(&self, c: &Chunk, span_end: u64) -> Result<Step> {
        if !self.ensure_donor(c, span_end)? {
            return Ok(Step::Skipped(SkipReason::NoSpace));
        }
        let guard = self.donor.borrow();
        let donor = &guard.as_ref().expect("ensured above").file;
        // Copy through user space: copy_file_range would reflink here.
        // 256 KiB at a time, each piece's writeback started as soon as it
        // is in the donor, so the device writes while the next is copied
        // (1 GiB on XFS: 0.85-0.90 s, against 1.4-1.6 s with 1 MiB pieces
        // left for the wait below to write).
        let mut buf = vec![0u8; (256 << 10).min(c.len as usize)];
        let mut at = c.offset;
        let end = c.offset + c.len;
        while at < end {
            let n = buf.len().min((end - at) as usize);
            self.file
                .read_exact_at(&mut buf[..n], at)
                .map_err(self.err("pread"))?;
            match donor.write_all_at(&buf[..n], at) {
                Ok(()) => {}
                Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                    return Ok(Step::Skipped(SkipReason::NoSpace))
                }
                Err(e) => return Err(Error::os(self.op.clone(), "pwrite(donor)", e)),
            }
            // Only a head start: the wait below reports any error.
            let _ = sys::start_write_back(donor, at, n as u64);
            at += n as u64;
        }
        // No fdatasync of the donor: FIEMAP below (FIEMAP_FLAG_SYNC) and
        // the dedupe itself finish the chunk's writeback and wait for it, and the
        // journal's cache flush that makes the remap durable also makes
        // those completed writes durable. One fdatasync of the file at the
        // end makes the run durable.
        if let Some(r) = self.check_donor(donor, c)? {
            return Ok(Step::Skipped(r));
        }
        fail::fail_point!("budge::relocate::before-swap");
        let mut at = c.offset;
        while at < end {
            let d = match sys::fideduperange(donor, at, end - at, self.file, at) {
                Ok(d) => d,
                // Writing the donor back failed for want of space.
                Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                    return Ok(Step::Skipped(SkipReason::NoSpace))
                }
                Err(e) => return Err(Error::os(self.op.clone(), "FIDEDUPERANGE", e)),
            };
            if d.differs {
                return Ok(Step::Skipped(SkipReason::Differs));
            }
            if d.bytes_deduped == 0 {
                break;
            }
            at += d.bytes_deduped;
        }
        Ok(Step::Moved)
    }

    /// XFS, whole file, the method of `xfs_fsr`: a donor preallocated over
    /// the file's data, filled with direct I/O, then `XFS_IOC_SWAPEXT`,
    /// which writes back and drops the file's page cache (mappings refault
    /// from the new blocks) and swaps every extent in one transaction. No
    /// byte comparison, unlike [`Ctx::dedupe`]: a concurrent write is caught
    /// by the kernel's check that the file's ctime and mtime are those read
    /// before the copy. The order makes that check sufficient: times read,
    /// then `fdatasync` (which write-protects every dirty page, so any later
    /// store through a mapping faults and stamps the times), then the copy.
    /// A store into a page made writable before the `fdatasync` is written
    /// back by it and so is in the copy. Linux's multigrain timestamps
    /// (6.13+) make a stamp after a read of the times always differ from it.
    fn swapext(&self, before: &[Extent], chunks: &[Chunk]) -> Result<Whole> {
        if let Some(c) = chunks
            .iter()
            .find(|c| matches!(c.skip, Some(SkipReason::Shared | SkipReason::Special)))
        {
            let why = c.skip.as_ref().map(ToString::to_string).unwrap_or_default();
            return Ok(Whole::NotHere(format!(
                "the whole-file swap would rewrite {} at {} ({why}); moved per chunk instead",
                fmt_size(c.len),
                fmt_size(c.offset)
            )));
        }
        let st = rustix::fs::fstat(self.file)
            .map_err(|e| Error::os(self.op.clone(), "fstat", e.into()))?;
        let times = (
            (st.st_ctime, st.st_ctime_nsec as u32),
            (st.st_mtime, st.st_mtime_nsec as u32),
        );
        sys::fdatasync(self.file).map_err(self.err("fdatasync"))?;
        let ext = extents_in(self.file, 0, self.size)?;
        let d = match self.caps.temp_file_near(self.file) {
            Ok(d) => d,
            Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                return Ok(Whole::Skipped(SkipReason::NoSpace))
            }
            Err(e) => return Err(Error::os(self.op.clone(), "create donor file", e)),
        };
        sys::ftruncate(&d, self.size).map_err(self.err("ftruncate"))?;
        // One allocation per run of logically adjacent extents (holes stay
        // holes; unwritten extents stay allocated and unwritten).
        fail::fail_point!("budge::relocate::donor-alloc");
        for (start, end) in runs(&ext, |_| true) {
            let len = align_up(end - start, self.bs).unwrap_or(end - start);
            or_no_space!(
                sys::fallocate(&d, Falloc::AllocateKeepSize, start, len),
                self.op,
                "fallocate(donor)"
            );
        }
        // Direct I/O into the donor: no page cache to fill and write back
        // (where the filesystem refuses it, buffered writes do the same job).
        let direct = sys::set_direct(&d, true).is_ok();
        let data = runs(&ext, |e| e.flags & flags::UNWRITTEN == 0);
        let copy = Copy {
            bs: self.bs,
            direct,
            size: self.size,
            progress: self.progress,
        };
        let grew = match copy_ranges(self.file, &d, &data, &copy) {
            Ok(grew) => grew,
            Err(CopyError::Read(e)) => return Err(Error::os(self.op.clone(), "pread", e)),
            Err(CopyError::Write(e)) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                return Ok(Whole::Skipped(SkipReason::NoSpace))
            }
            Err(CopyError::Write(e)) => return Err(Error::os(self.op.clone(), "pwrite(donor)", e)),
        };
        if grew {
            sys::ftruncate(&d, self.size).map_err(self.err("ftruncate(donor)"))?;
        }
        let donor_pieces = pieces(&extents_in(&d, 0, self.size)?);
        let file_pieces = pieces(before);
        if donor_pieces >= file_pieces {
            return Ok(Whole::Skipped(SkipReason::DonorNotBetter {
                donor: donor_pieces,
                file: file_pieces,
            }));
        }
        fail::fail_point!("budge::relocate::before-swap");
        match sys::xfs_swapext(self.file, &d, self.size, times) {
            Ok(()) => Ok(Whole::Swapped),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                Ok(Whole::Skipped(SkipReason::Differs))
            }
            Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                Ok(Whole::Skipped(SkipReason::NoSpace))
            }
            Err(e)
                if matches!(
                    crate::error::kind_of(&e),
                    ErrorKind::Unsupported | ErrorKind::InvalidArgument
                ) =>
            {
                Ok(Whole::NotHere(format!("XFS_IOC_SWAPEXT refused: {e}")))
            }
            Err(e) => Err(Error::os(self.op.clone(), "XFS_IOC_SWAPEXT", e)),
        }
    }

    /// Shares chunk `c` with a scratch file, then unshares it: the kernel
    /// reserves new blocks for the range in the file's copy-on-write fork,
    /// dirties its cached pages, writes them back there, remaps them and
    /// waits (`xfs_reflink_unshare`). Readers and writers keep using the
    /// same page cache throughout, and a write during the move is simply
    /// part of what is written. Unless the hint is raised, the scratch
    /// file's share of the chunk is punched right after, freeing the old
    /// blocks, so a run needs free space for one chunk at a time.
    ///
    /// For the run of chunks to land in one extent, the file's
    /// copy-on-write extent size hint is raised to cover the run
    /// ([`CowState::cover`]): the first chunk's writeback then allocates
    /// the whole run at once, as `xfs_fsr`'s preallocated donor does.
    /// [`CowState`] puts the file's own hint and flags back.
    fn cow(&self, c: &Chunk, span_end: u64) -> Result<Step> {
        if self.caps.fs.kind != FsKind::Xfs {
            return Err(
                Error::new(ErrorKind::Unsupported, self.op.clone()).with_hint(format!(
                    "cow needs XFS with reflink (FALLOC_FL_UNSHARE_RANGE of shared blocks); this is {}",
                    self.caps.fs.kind.name()
                )),
            );
        }
        let scratch = match &mut *self.scratch.borrow_mut() {
            Some(f) => f.try_clone().map_err(self.err("dup"))?,
            slot => match self.caps.temp_file_near(self.file) {
                Ok(f) => slot.insert(f).try_clone().map_err(self.err("dup"))?,
                Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                    return Ok(Step::Skipped(SkipReason::NoSpace))
                }
                Err(e) => return Err(Error::os(self.op.clone(), "create scratch file", e)),
            },
        };
        {
            let mut st = self.cow.borrow_mut();
            st.begin(self.file).map_err(self.err("FS_IOC_FSGETXATTR"))?;
            st.cover(self.file, c.offset, span_end, self.bs);
        }
        match sys::ficlonerange(&scratch, c.offset, self.file, c.offset, c.len) {
            Ok(()) => {}
            Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                return Ok(Step::Skipped(SkipReason::NoSpace))
            }
            // Truncated meanwhile: the chunk is no longer there to move.
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && sys::file_info(self.file).is_ok_and(|i| i.size < c.offset + c.len) =>
            {
                return Ok(Step::Skipped(SkipReason::Differs))
            }
            Err(e) => return Err(Error::os(self.op.clone(), "FICLONERANGE(scratch)", e)),
        }
        let step = self.unshare(c);
        // Without a raised hint, done with the chunk either way: the old
        // blocks (and, after a failure, the share) go now, so the run needs
        // room for one chunk at a time. With the hint (room for the run
        // twice over was there) they stay until the end: freed in the
        // middle of the run, the hole drew the run's next allocation away
        // from the first (1 GiB: 2 extents instead of 1). Only frees space:
        // a failure leaves them to the scratch file's end.
        if !self.cow.borrow().raised {
            let _ = sys::fallocate(&scratch, Falloc::PunchHole, c.offset, c.len);
        }
        step
    }

    /// [`Ctx::cow`]'s `FALLOC_FL_UNSHARE_RANGE` of chunk `c`, retried once
    /// without the raised hint if the space it reserves is not there.
    fn unshare(&self, c: &Chunk) -> Result<Step> {
        fail::fail_point!("budge::relocate::before-swap");
        self.cow.borrow_mut().unshared = true;
        let unshare = || sys::fallocate(self.file, Falloc::UnshareRange, c.offset, c.len);
        let r = match unshare() {
            Err(e)
                if crate::error::kind_of(&e) == ErrorKind::NoSpace
                    && self.cow.borrow_mut().give_up() =>
            {
                unshare()
            }
            r => r,
        };
        match r {
            Ok(()) => Ok(Step::Moved),
            Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                Ok(Step::Skipped(SkipReason::NoSpace))
            }
            Err(e) => Err(Error::os(
                self.op.clone(),
                "fallocate(UNSHARE_RANGE|KEEP_SIZE)",
                e,
            )),
        }
    }

    /// The whole chunk is rewritten, like the donor strategies move it:
    /// the kernel's threshold is the chunk's length, so every extent in it
    /// (all shorter) is rewritten, not only those under
    /// [`RelocateOptions::threshold`], which left a chunk of 1 MiB pieces as
    /// it was.
    fn btrfs_defrag(&self, c: &Chunk) -> Result<Step> {
        let thresh = u32::try_from(c.len.max(1)).unwrap_or(u32::MAX);
        match sys::btrfs_defrag_range(
            self.file,
            c.offset,
            c.len,
            sys::BTRFS_DEFRAG_RANGE_START_IO,
            thresh,
        ) {
            Ok(()) => {}
            Err(e) if crate::error::kind_of(&e) == ErrorKind::NoSpace => {
                return Ok(Step::Skipped(SkipReason::NoSpace))
            }
            Err(e) => return Err(Error::os(self.op.clone(), "BTRFS_IOC_DEFRAG_RANGE", e)),
        }
        // No sync per chunk: FIEMAP (with FIEMAP_FLAG_SYNC) writes the chunk
        // back to measure it, and one fdatasync at the end makes the run
        // durable (the content is the same either way).
        Ok(Step::Moved)
    }
}

/// The maximal runs `[start, end)` of logically adjacent extents that `keep`
/// accepts.
fn runs(ext: &[Extent], keep: impl Fn(&Extent) -> bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in ext.iter().filter(|e| keep(e)) {
        match out.last_mut() {
            Some(last) if last.1 == e.logical => last.1 = e.logical + e.length,
            _ => out.push((e.logical, e.logical + e.length)),
        }
    }
    out
}

/// Which side of [`copy_ranges`] failed.
enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// How [`copy_ranges`] writes.
struct Copy<'a> {
    /// Block size: direct writes are rounded up to whole blocks.
    bs: u64,
    /// The destination is open with `O_DIRECT`.
    direct: bool,
    /// The source's size.
    size: u64,
    /// Called with (bytes written, bytes to write) after each write.
    progress: Option<Progress<'a>>,
}

/// Copies `ranges` of `src` into `dst` at the same offsets through user
/// space, reading the next 8 MiB on a second thread while the last is
/// written. Buffers are page-aligned for direct I/O; with `how.direct`,
/// each write is rounded up to whole blocks (zeros past EOF). True when
/// `dst` grew past `how.size` that way.
fn copy_ranges(
    src: &File,
    dst: &File,
    ranges: &[(u64, u64)],
    how: &Copy<'_>,
) -> std::result::Result<bool, CopyError> {
    let Copy {
        bs, direct, size, ..
    } = *how;
    let total: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    let mut done = 0;
    use std::sync::mpsc::{channel, sync_channel};
    const BUF: usize = 8 << 20;
    const ALIGN: usize = 4096;
    // A buffer travels with its offset and the bytes to write.
    type Full = (Vec<u8>, u64, usize);
    std::thread::scope(|sc| {
        let (full_tx, full_rx) = sync_channel::<Full>(1);
        let (empty_tx, empty_rx) = channel::<Vec<u8>>();
        for _ in 0..2 {
            let _ = empty_tx.send(vec![0u8; BUF + ALIGN]);
        }
        let reader = sc.spawn(move || -> std::io::Result<()> {
            for &(start, end) in ranges {
                let mut at = start;
                while at < end {
                    // The writer stopped (an error): so does the reader.
                    let Ok(mut raw) = empty_rx.recv() else {
                        return Ok(());
                    };
                    let skew = raw.as_ptr().align_offset(ALIGN);
                    let want = BUF.min((end - at) as usize);
                    let got = sys::read_up_to(src, &mut raw[skew..skew + want], at)?;
                    let n = if direct {
                        align_up(got as u64, bs).unwrap_or(got as u64) as usize
                    } else {
                        got
                    };
                    raw[skew + got..skew + n].fill(0);
                    if full_tx.send((raw, at, n)).is_err() {
                        return Ok(());
                    }
                    if got < want {
                        break;
                    }
                    at += want as u64;
                }
            }
            Ok(())
        });
        let mut grew = false;
        let mut failed = None;
        for (raw, at, n) in full_rx {
            let skew = raw.as_ptr().align_offset(ALIGN);
            if let Err(e) = dst.write_all_at(&raw[skew..skew + n], at) {
                failed = Some(e);
                break;
            }
            grew |= at + n as u64 > size;
            done += n as u64;
            if let Some(p) = how.progress {
                p(done.min(total), total);
            }
            let _ = empty_tx.send(raw);
        }
        drop(empty_tx);
        let read = reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        match (failed, read) {
            (Some(e), _) => Err(CopyError::Write(e)),
            (None, Err(e)) => Err(CopyError::Read(e)),
            (None, Ok(())) => Ok(grew),
        }
    })
}

fn relocate_inner(
    file: &File,
    path: Option<&Path>,
    opts: &RelocateOptions<'_>,
) -> Result<RelocateReport> {
    let t0 = Instant::now();
    let op = "relocate".to_string();
    let info = crate::copy::writable_target(file, &op)?;
    if !info.readable {
        return Err(Error::new(ErrorKind::InvalidArgument, op)
            .with_hint("the file must be open for reading and writing"));
    }
    let caps = sys::probe::probe_file_on(file, info.dev)?;
    let bs = caps.block_size().max(1);
    if opts.threshold == 0 || opts.chunk == 0 {
        return Err(Error::new(ErrorKind::InvalidArgument, op)
            .with_hint("threshold and chunk size must be positive"));
    }
    let chunk = align_up(opts.chunk, bs).unwrap_or(opts.chunk);
    let (start, end) = match opts.range {
        None => (0, info.size),
        Some((off, len)) => {
            let stop = off.checked_add(len).ok_or_else(|| {
                Error::new(ErrorKind::InvalidArgument, op.clone())
                    .with_hint("offset + length overflows")
            })?;
            if off > info.size {
                return Err(
                    Error::new(ErrorKind::InvalidArgument, op).with_hint(format!(
                        "the range starts at {}, past EOF ({})",
                        fmt_size(off),
                        fmt_size(info.size)
                    )),
                );
            }
            (
                align_down(off, bs),
                align_up(stop, bs).unwrap_or(stop).min(info.size),
            )
        }
    };
    let op = format!("relocate {} at {}", fmt_size(end - start), fmt_size(start));
    let mut report = RelocateReport {
        strategy: RelocateStrategy::Nothing,
        coherent: true,
        range: (start, end - start),
        extents_before: 0,
        extents_after: 0,
        bytes_moved: 0,
        chunks: 0,
        chunks_moved: 0,
        chunks_skipped: Vec::new(),
        notes: Vec::new(),
        dry_run: opts.dry_run,
        elapsed: Duration::ZERO,
    };
    let mut candidates = match opts.strategy {
        Some(RelocateStrategy::CopyRename) if path.is_none() => {
            return Err(Error::new(ErrorKind::InvalidArgument, op)
                .with_hint("copy-rename needs the file's path (relocate_path)"))
        }
        Some(s) => vec![s],
        None => order(caps.fs.kind, path.is_some(), opts.keep_times),
    };
    // Only where cow may run (the check is an fstat and an fgetxattr).
    if let Some(why) = candidates
        .contains(&RelocateStrategy::Cow)
        .then(|| cow_would_strip(file))
        .flatten()
    {
        if opts.strategy.is_some() {
            return Err(Error::new(ErrorKind::InvalidArgument, op)
                .with_hint(format!("cow refused: {why}; dedupe keeps them")));
        }
        candidates.retain(|&s| s != RelocateStrategy::Cow);
        report.notes.push(format!("cow: left out: {why}"));
    }
    let before = match extents_in(file, start, end - start) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            // No FIEMAP (tmpfs): data lives in memory, no extents to fix.
            if opts.strategy == Some(RelocateStrategy::CopyRename) {
                let path = path.unwrap_or_else(|| Path::new(""));
                return copy_rename(file, path, &caps, opts, report, t0, &[]);
            }
            if let Some(s) = opts.strategy {
                return Err(Error::new(ErrorKind::Unsupported, op).with_hint(format!(
                    "{} has no extents (no FIEMAP); {s} cannot run",
                    caps.fs.kind.name()
                )));
            }
            report.notes.push(format!(
                "{} has no extents (no FIEMAP): nothing to relocate",
                caps.fs.kind.name()
            ));
            report.elapsed = t0.elapsed();
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.extents_before = before.len() as u64;
    report.extents_after = report.extents_before;
    let shared_elsewhere = shared_check(file, caps.fs.kind);
    let chunks = plan(&before, start, end, chunk, opts, &shared_elsewhere);
    report.chunks = chunks.len() as u64;
    if chunks.is_empty() && opts.strategy.is_none() {
        report.elapsed = t0.elapsed();
        return Ok(report);
    }
    let Some(&first) = candidates.first() else {
        return Err(Error::new(ErrorKind::Unsupported, op).with_hint(format!(
            "no relocation strategy for {}",
            caps.fs.kind.name()
        )));
    };
    if opts.dry_run {
        report.strategy = first;
        report.coherent = first.coherent();
        for c in &chunks {
            match &c.skip {
                Some(r) => report.chunks_skipped.push(SkippedChunk {
                    offset: c.offset,
                    len: c.len,
                    reason: r.clone(),
                }),
                None => report.bytes_moved += c.len,
            }
        }
        report.elapsed = t0.elapsed();
        return Ok(report);
    }
    let ctx = Ctx {
        file,
        caps: &caps,
        bs,
        size: info.size,
        op: op.clone(),
        donor: std::cell::RefCell::new(None),
        scratch: std::cell::RefCell::new(None),
        cow: std::cell::RefCell::new(CowState::default()),
        progress: opts.progress,
    };
    let to_do: u64 = chunks
        .iter()
        .filter(|c| c.skip.is_none())
        .map(|c| c.len)
        .sum();
    let mut done = 0;
    let mut tried_any = false;
    // Chunks worked on whose effect is measured after the run (btrfs-defrag,
    // cow), with the reason for one that stopped.
    let mut pending: Vec<(u64, u64, Option<SkipReason>)> = Vec::new();
    let mut ci = 0;
    let mut strategy_idx = 0;
    while strategy_idx < candidates.len() {
        let s = candidates[strategy_idx];
        if s == RelocateStrategy::CopyRename {
            let path = path.unwrap_or_else(|| Path::new(""));
            return copy_rename(file, path, &caps, opts, report, t0, &before);
        }
        report.strategy = s;
        if s == RelocateStrategy::SwapExt {
            let movable = chunks
                .iter()
                .any(|c| matches!(c.skip, None | Some(SkipReason::Holes)));
            let data: u64 = before.iter().map(|e| e.length).sum();
            let fragmented: u64 = chunks.iter().map(|c| c.len).sum();
            let outcome = if start != 0 || end != info.size {
                Whole::NotHere("a whole-file strategy; a range is moved per chunk".into())
            } else if !sys::xfs_has_rmapbt(file).unwrap_or(false) {
                Whole::NotHere(SWAPEXT_NEEDS_RMAPBT.into())
            } else if !movable {
                Whole::Skipped(SkipReason::Unchanged)
            } else if opts.strategy.is_none() && fragmented.saturating_mul(2) < data {
                Whole::NotHere(format!(
                    "{} of {} fragmented: moved per chunk rather than rewriting the whole file",
                    fmt_size(fragmented),
                    fmt_size(data)
                ))
            } else {
                ctx.swapext(&before, &chunks)?
            };
            let forced = opts.strategy.is_some();
            match outcome {
                Whole::Swapped => {
                    report.chunks_moved = chunks.len() as u64;
                    ci = chunks.len();
                    break;
                }
                Whole::Skipped(r) if forced || !movable => {
                    for c in &chunks {
                        report.chunks_skipped.push(SkippedChunk {
                            offset: c.offset,
                            len: c.len,
                            reason: c.skip.clone().unwrap_or_else(|| r.clone()),
                        });
                    }
                    ci = chunks.len();
                    break;
                }
                Whole::Skipped(r) => report.notes.push(format!("{s}: {r}")),
                Whole::NotHere(why) if forced => {
                    return Err(Error::new(ErrorKind::Unsupported, op).with_hint(why))
                }
                Whole::NotHere(why) => report.notes.push(format!("{s}: {why}")),
            }
            strategy_idx += 1;
            continue;
        }
        while ci < chunks.len() {
            let c = &chunks[ci];
            if let Some(r) = &c.skip {
                report.chunks_skipped.push(SkippedChunk {
                    offset: c.offset,
                    len: c.len,
                    reason: r.clone(),
                });
                ci += 1;
                continue;
            }
            if let Some(p) = opts.progress {
                p(done, to_do);
            }
            done += c.len;
            // btrfs-defrag's chunks are measured once, after the run: a
            // FIEMAP (which syncs) around each would wait for each chunk's
            // writeback before starting the next.
            let deferred = matches!(s, RelocateStrategy::BtrfsDefrag | RelocateStrategy::Cow);
            let ext_before = if deferred {
                Vec::new()
            } else {
                extents_in(file, c.offset, c.len)?
            };
            let span_end = span_end(&chunks[ci..]);
            let step = match s {
                RelocateStrategy::MoveExt => ctx.move_ext(c, span_end),
                RelocateStrategy::Dedupe => ctx.dedupe(c, span_end),
                RelocateStrategy::BtrfsDefrag => ctx.btrfs_defrag(c),
                RelocateStrategy::Cow => ctx.cow(c, span_end),
                RelocateStrategy::SwapExt
                | RelocateStrategy::CopyRename
                | RelocateStrategy::Nothing => unreachable!(),
            };
            let step = match step {
                // The kernel refused the strategy before any chunk moved:
                // nothing changed, try the next one.
                Err(e)
                    if !tried_any
                        && opts.strategy.is_none()
                        && matches!(
                            e.kind(),
                            ErrorKind::Unsupported | ErrorKind::InvalidArgument
                        ) =>
                {
                    report.notes.push(format!("{s}: {e}"));
                    break;
                }
                Err(e) => return Err(e),
                Ok(st) => st,
            };
            tried_any = true;
            if deferred {
                let skip = match step {
                    Step::Moved => None,
                    Step::Skipped(r) => Some(r),
                };
                pending.push((c.offset, c.len, skip));
                ci += 1;
                continue;
            }
            let ext_after = extents_in(file, c.offset, c.len)?;
            let moved = moved_bytes(&ext_before, &ext_after);
            match step {
                Step::Moved if moved == 0 => report.chunks_skipped.push(SkippedChunk {
                    offset: c.offset,
                    len: c.len,
                    reason: SkipReason::Unchanged,
                }),
                Step::Moved => {
                    report.chunks_moved += 1;
                    report.bytes_moved += moved;
                }
                // What moved before the chunk stopped (move-ext, cow) counts.
                Step::Skipped(r) => {
                    report.bytes_moved += moved;
                    report.chunks_skipped.push(SkippedChunk {
                        offset: c.offset,
                        len: c.len,
                        reason: r,
                    });
                }
            }
            ci += 1;
        }
        if ci >= chunks.len() {
            break;
        }
        strategy_idx += 1;
    }
    if ci < chunks.len() {
        return Err(Error::new(ErrorKind::Unsupported, op).with_hint(format!(
            "no strategy worked on {}: {}",
            caps.fs.kind.name(),
            report.notes.join("; ")
        )));
    }
    if let Some(p) = opts.progress {
        p(to_do, to_do);
    }
    // A run that moved something ends with its remaps durable, except
    // btrfs-defrag's, left to the filesystem's next commit as `btrfs
    // filesystem defragment` leaves them: the content is the same either
    // way, and btrfs's fdatasync (the log tree) before that commit wrote
    // the metadata twice (119 of 265 ms for 256 MiB).
    let moved_any = report.chunks_moved > 0 || !pending.is_empty();
    if moved_any && report.strategy != RelocateStrategy::BtrfsDefrag {
        sys::fdatasync(file).map_err(|e| Error::os(op.clone(), "fdatasync", e))?;
    }
    // After the final writeback, which allocates what the raised hint
    // reserved.
    let mut cow = ctx.cow.borrow_mut();
    if let Err(e) = cow.restore() {
        report.notes.push(format!(
            "cow: could not put back the file's copy-on-write extent size hint and flags ({e})"
        ));
    }
    report.notes.extend(cow.note.take());
    if cow.unshared {
        report.notes.push(
            "cow: the file's modification and change times were updated (the kernel counts UNSHARE_RANGE as a write; keep_times / --keep-times moves by dedupe instead)".into(),
        );
    }
    drop(cow);
    // Dropping the last donor frees the old blocks and its share of the new
    // ones, so FIEMAP can report the file's extents merged.
    drop(ctx);
    report.coherent = report.strategy.coherent();
    let after = extents_in(file, start, end - start)?;
    report.extents_after = after.len() as u64;
    if report.strategy == RelocateStrategy::SwapExt {
        report.bytes_moved = moved_bytes(&before, &after);
    }
    for (offset, len, skip) in pending {
        let moved = moved_bytes(&clip(&before, offset, len), &clip(&after, offset, len));
        report.bytes_moved += moved;
        match skip {
            None if moved > 0 => report.chunks_moved += 1,
            skip => report.chunks_skipped.push(SkippedChunk {
                offset,
                len,
                reason: skip.unwrap_or(SkipReason::Unchanged),
            }),
        }
    }
    report.chunks_skipped.sort_by_key(|c| c.offset);
    report.elapsed = t0.elapsed();
    Ok(report)
}

/// Copies the whole file into a new one in its directory (preallocated,
/// written through user space so no blocks are shared) and renames it over
/// `path`.
fn copy_rename(
    file: &File,
    path: &Path,
    caps: &Capabilities,
    opts: &RelocateOptions<'_>,
    mut report: RelocateReport,
    t0: Instant,
    before: &[Extent],
) -> Result<RelocateReport> {
    let op = "relocate (copy and rename)";
    report.strategy = RelocateStrategy::CopyRename;
    report.coherent = false;
    report.notes.push(
        "copy-rename is not coherent: processes holding the old file open or mapped keep the old inode"
            .into(),
    );
    if opts.range.is_some() {
        report
            .notes
            .push("copy-rename copies the whole file, not only the range".into());
    }
    let (id0, _) = crate::sys::meta::identity(file).map_err(|e| Error::os(op, "fstat", e))?;
    let size = id0.size;
    if opts.dry_run {
        report.bytes_moved = size;
        report.elapsed = t0.elapsed();
        return Ok(report);
    }
    let dir = crate::snap::publish::dir_of(path);
    let new = sys::open_tmpfile(&dir).map_err(|e| {
        Error::os(op, "open(O_TMPFILE)", e)
            .with_path(path)
            .with_hint("copy-rename builds the new file unnamed in the file's directory")
    })?;
    // Preallocate the data segments so the allocator sees the whole size.
    for seg in crate::extents::data_map(file)? {
        if seg.kind == crate::extents::SegmentKind::Data {
            sys::fallocate(&new, Falloc::AllocateKeepSize, seg.offset, seg.len)
                .map_err(|e| Error::os(op, "fallocate", e))?;
        }
    }
    sys::ftruncate(&new, size).map_err(|e| Error::os(op, "ftruncate", e))?;
    let strategy = if caps.copy_file_range.works && !caps.copy_file_range_reflinks.works {
        crate::Strategy::KernelCopy
    } else {
        crate::Strategy::UserCopy
    };
    let copts = crate::copy::CopyOptions {
        strategy: Some(strategy),
        ..Default::default()
    };
    let rep = crate::copy::copy_range(file, 0, &new, 0, size, &copts)?;
    // Owner, mode and xattrs carried over, fsync, link, rename, directory
    // fsync; refused (file left as it was) if it changed since `id0`.
    crate::snap::publish::publish(op, &new, path, crate::snap::publish::Expect::Version(id0))
        .map_err(|e| {
            if e.kind() == ErrorKind::Conflict {
                e.with_hint("the file changed during the copy; it was left as it was")
            } else {
                e
            }
        })?;
    report.bytes_moved = rep.bytes_copied;
    report.chunks_moved = 1;
    report.chunks = report.chunks.max(1);
    let (start, len) = report.range;
    report.extents_after = match extents_in(&new, start, len) {
        Ok(e) => {
            if before.is_empty() {
                report.extents_before = 0;
            }
            e.len() as u64
        }
        Err(_) => 0,
    };
    report.elapsed = t0.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(l: u64, p: u64, n: u64) -> Extent {
        Extent {
            logical: l,
            physical: p,
            length: n,
            flags: 0,
        }
    }

    #[test]
    fn pieces_join_contiguous() {
        assert_eq!(pieces(&[e(0, 100, 10), e(10, 110, 10), e(20, 500, 5)]), 2);
        assert_eq!(pieces(&[]), 0);
    }

    #[test]
    fn moved_bytes_counts_new_locations() {
        let before = [e(0, 100, 10), e(10, 500, 10)];
        assert_eq!(moved_bytes(&before, &before), 0);
        assert_eq!(moved_bytes(&before, &[e(0, 100, 20)]), 10);
        assert_eq!(moved_bytes(&before, &[e(0, 900, 20)]), 20);
    }

    #[test]
    fn aligned_hint_divides_the_run() {
        const M: u64 = 1 << 20;
        // A whole 1 GiB file, half an allocation group of 768 MiB: twice
        // 512 MiB.
        assert_eq!(aligned_hint(0, 1024 * M, 768 * M, 4096), Some(512 * M));
        // A run at 16 MiB: the hint divides 16 MiB, or the reservation
        // would start before the run.
        assert_eq!(aligned_hint(16 * M, 48 * M, 1024 * M, 4096), Some(16 * M));
        assert_eq!(aligned_hint(64 * M, 32 * M, 1024 * M, 4096), Some(32 * M));
        // A whole run of 1 MiB + 4 KiB: itself.
        assert_eq!(aligned_hint(0, M + 4096, 1024 * M, 4096), Some(M + 4096));
        // 1 MiB at least: a run at 4 KiB has no such divisor.
        assert_eq!(aligned_hint(4096, 64 * M, 1024 * M, 4096), None);
        assert_eq!(aligned_hint(0, 0, 1024 * M, 4096), None);
        for (o, l, m) in [(0, 96 * M, 40 * M), (48 * M, 200 * M, 768 * M)] {
            let h = aligned_hint(o, l, m, 4096).unwrap();
            assert!(h <= m && o % h == 0 && l % h == 0 && h % 4096 == 0, "{h}");
        }
    }

    #[test]
    fn plan_picks_fragmented_chunks() {
        let o = RelocateOptions {
            threshold: 8,
            ..Default::default()
        };
        // [0,16): two small pieces; [16,32): one big extent; [32,48): hole.
        let ext = [
            e(0, 100, 4),
            e(4, 300, 12),
            e(16, 1000, 16),
            e(32, 2000, 4),
            e(40, 3000, 4),
        ];
        let p = plan(&ext, 0, 48, 16, &o, &|_| true);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].offset, p[0].pieces, p[0].skip.clone()), (0, 2, None));
        assert_eq!(p[1].skip, Some(SkipReason::Holes));
        assert_eq!("dedupe".parse(), Ok(RelocateStrategy::Dedupe));
    }
}
