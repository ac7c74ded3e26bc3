//! Copy acceleration: clone (reflink only), copy (reflink, then
//! `copy_file_range`, then a sparse-aware `pread`/`pwrite` loop), punch and
//! zero ranges.
//!
//! Copies keep holes: only the source's data segments (SEEK_DATA) are
//! copied, and holes in the source become holes in the destination. A copy
//! within one file whose ranges overlap behaves like `memmove` (holes are
//! not kept there).

pub(crate) mod engine;

use std::fs::File;
use std::sync::Arc;

use engine::Engine;
pub use engine::Progress;

use crate::error::{op_range, Error, ErrorKind, Result};
use crate::extents::{data_map_in, SegmentKind};
use crate::range::{align_down, fmt_size, is_aligned, overlaps};
use crate::sys::{self, probe::Capabilities, Falloc, FileInfo};
use crate::{Policy, Strategy};

/// What a copy, clone or zero did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyReport {
    /// The main strategy that ran.
    pub strategy: Strategy,
    /// Data bytes that went through a copy (kernel or user space).
    pub bytes_copied: u64,
    /// Bytes that now share blocks with the source (reflinked).
    pub bytes_cloned: u64,
    /// Bytes of source holes left as holes in the destination.
    pub hole_bytes: u64,
}

/// Options for [`copy_range`] and [`copy_file`].
#[derive(Clone, Copy, Default)]
pub struct CopyOptions<'a> {
    /// `MetadataOnly` allows only reflinks.
    pub policy: Policy,
    /// Force one strategy (`Reflink`, `KernelCopy` or `UserCopy`) instead of
    /// the best available; an error if it cannot run.
    pub strategy: Option<Strategy>,
    /// Progress of O(n) copying.
    pub progress: Option<Progress<'a>>,
}

impl std::fmt::Debug for CopyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions")
            .field("policy", &self.policy)
            .field("strategy", &self.strategy)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Checks that `file` is a regular file open for writing; returns its fstat.
pub(crate) fn writable_target(file: &File, op: &str) -> Result<FileInfo> {
    let info = sys::file_info(file).map_err(|e| Error::os(op, "fstat", e))?;
    if !info.regular {
        return Err(Error::new(ErrorKind::InvalidArgument, op).with_hint("not a regular file"));
    }
    if !info.writable {
        return Err(Error::new(ErrorKind::InvalidArgument, op)
            .with_hint("the file is open read-only; open it for writing"));
    }
    if info.append {
        return Err(Error::new(ErrorKind::InvalidArgument, op)
            .with_hint("the file is open with O_APPEND, which makes positioned writes append"));
    }
    Ok(info)
}

fn readable_source(file: &File, op: &str) -> Result<FileInfo> {
    let info = sys::file_info(file).map_err(|e| Error::os(op, "fstat", e))?;
    if !info.regular {
        return Err(
            Error::new(ErrorKind::InvalidArgument, op).with_hint("source is not a regular file")
        );
    }
    if !info.readable {
        return Err(
            Error::new(ErrorKind::InvalidArgument, op).with_hint("source is not open for reading")
        );
    }
    Ok(info)
}

fn same_file(a: &FileInfo, b: &FileInfo) -> bool {
    a.dev == b.dev && a.ino == b.ino
}

/// Validates a source range and destination for clone/copy.
fn check_ranges(
    op: &str,
    src: &FileInfo,
    src_off: u64,
    dst_off: u64,
    len: u64,
    fs_max: u64,
) -> Result<()> {
    let src_end = src_off.checked_add(len).ok_or_else(|| {
        Error::new(ErrorKind::InvalidArgument, op).with_hint("offset + length overflows")
    })?;
    if src_end > src.size {
        return Err(
            Error::new(ErrorKind::InvalidArgument, op).with_hint(format!(
                "the source range ends at {src_end}, past the source's EOF ({})",
                src.size
            )),
        );
    }
    match dst_off.checked_add(len) {
        Some(e) if e <= fs_max => Ok(()),
        _ => Err(
            Error::new(ErrorKind::InvalidArgument, op).with_hint(format!(
                "the destination would exceed the maximum file size ({})",
                fmt_size(fs_max)
            )),
        ),
    }
}

impl CopyReport {
    fn nothing() -> Self {
        CopyReport {
            strategy: Strategy::Nothing,
            bytes_copied: 0,
            bytes_cloned: 0,
            hole_bytes: 0,
        }
    }
}

/// The operation's name, both files' fstat and the capabilities.
type Prepared = (String, FileInfo, FileInfo, Arc<Capabilities>);

/// The checks shared by clone and copy: names the operation, validates both
/// files and the ranges, and returns `None` for a zero length.
fn prepare(
    verb: &str,
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> Result<Option<Prepared>> {
    let op = format!(
        "{verb} {} from {} to {}",
        fmt_size(len),
        fmt_size(src_off),
        fmt_size(dst_off)
    );
    let si = readable_source(src, &op)?;
    let di = writable_target(dst, &op)?;
    let caps = sys::probe::probe_file_on(dst, di.dev)?;
    let max = caps.fs.kind.max_file_size(caps.block_size());
    check_ranges(&op, &si, src_off, dst_off, len, max)?;
    Ok((len > 0).then_some((op, si, di, caps)))
}

/// Makes `dst[dst_off..+len]` share `src[src_off..+len]`'s blocks
/// (FICLONERANGE): no data is copied, and it is an error if that is
/// impossible. Offsets and length must be multiples of the block size,
/// except that a range ending at the source's EOF may have any length when
/// it also reaches the destination's EOF. Same-file ranges must not overlap.
///
/// # Errors
/// `Unsupported` without reflinks (or across filesystems), `Alignment`,
/// `InvalidArgument` for ranges past EOF or overlapping.
pub fn clone_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> Result<CopyReport> {
    let Some((op, si, di, caps)) = prepare("clone", src, src_off, dst, dst_off, len)? else {
        return Ok(CopyReport::nothing());
    };
    if same_file(&si, &di) && overlaps(src_off, dst_off, len) {
        return Err(Error::new(ErrorKind::InvalidArgument, op).with_hint(
            "source and destination ranges of the same file overlap; use copy (memmove) instead",
        ));
    }
    if si.dev != di.dev {
        return Err(Error::new(ErrorKind::Unsupported, op).with_hint(
            "source and destination are on different filesystems; reflinks cannot cross them",
        ));
    }
    let ok = if same_file(&si, &di) {
        &caps.ficlonerange_same_file
    } else {
        &caps.ficlonerange
    };
    if !ok.works {
        return Err(Error::new(ErrorKind::Unsupported, op).with_hint(format!(
            "{} cannot reflink ({}); use copy",
            caps.fs.kind.name(),
            ok.note.as_deref().unwrap_or("no FICLONERANGE")
        )));
    }
    let bs = caps.block_size();
    let to_eof = src_off + len == si.size && dst_off + len >= di.size;
    if !is_aligned(src_off, bs) || !is_aligned(dst_off, bs) || !(to_eof || is_aligned(len, bs)) {
        return Err(Error::new(ErrorKind::Alignment, op).with_hint(format!(
            "offsets and length must be multiples of the {bs}-byte block size (the length may be unaligned only when the range ends at both files' EOF)"
        )));
    }
    sys::ficlonerange(dst, dst_off, src, src_off, len)
        .map_err(|e| Error::os(op, "ioctl(FICLONERANGE)", e))?;
    Ok(CopyReport {
        strategy: Strategy::Reflink,
        bytes_copied: 0,
        bytes_cloned: len,
        hole_bytes: 0,
    })
}

/// Makes `dst` a reflinked copy of all of `src` (FICLONE), replacing its
/// content and size.
///
/// # Errors
/// `Unsupported` without reflinks.
pub fn clone_file(src: &File, dst: &File) -> Result<CopyReport> {
    let op = "clone file";
    let si = readable_source(src, op)?;
    let di = writable_target(dst, op)?;
    if si.dev != di.dev {
        return Err(Error::new(ErrorKind::Unsupported, op).with_hint(
            "source and destination are on different filesystems; reflinks cannot cross them",
        ));
    }
    sys::ficlone(dst, src).map_err(|e| {
        Error::os(op, "ioctl(FICLONE)", e).with_hint("the filesystem cannot reflink; use copy")
    })?;
    Ok(CopyReport {
        strategy: Strategy::Reflink,
        bytes_copied: 0,
        bytes_cloned: si.size,
        hole_bytes: 0,
    })
}

/// Copies `len` bytes from `src@src_off` to `dst@dst_off` with the best
/// strategy allowed: reflink the block-aligned middle (when both offsets
/// share the same misalignment), then `copy_file_range`, then
/// `pread`/`pwrite`. Holes in the source stay holes in the destination.
/// Within one file, overlapping ranges behave like `memmove`.
///
/// # Errors
/// `Unsupported` when the policy or forced strategy cannot run here,
/// `InvalidArgument` for bad ranges, `NoSpace`, or `PartiallyApplied` when a
/// copy failed part-way (the message says which destination bytes were
/// written).
pub fn copy_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
    opts: &CopyOptions<'_>,
) -> Result<CopyReport> {
    let Some((op, si, di, caps)) = prepare("copy", src, src_off, dst, dst_off, len)? else {
        return Ok(CopyReport::nothing());
    };
    if let Some(s) = opts.strategy {
        if s.copies_data() && opts.policy == Policy::MetadataOnly {
            return Err(
                Error::new(ErrorKind::InvalidArgument, op).with_hint(format!(
                    "forcing {s} contradicts metadata-only: it copies data"
                )),
            );
        }
    }
    let same = same_file(&si, &di);
    if same && src_off == dst_off {
        // Copying a range onto itself changes nothing.
        return Ok(CopyReport::nothing());
    }
    let overlapping = same && overlaps(src_off, dst_off, len);
    let plan = Plan::choose(
        &op,
        &caps,
        &si,
        &di,
        src_off,
        dst_off,
        len,
        same,
        overlapping,
        opts,
    )?;
    plan.run(
        &op,
        src,
        src_off,
        dst,
        dst_off,
        len,
        &di,
        &caps,
        overlapping,
        opts.progress,
    )
}

/// Copies all of `src` into `dst` (which is truncated first), keeping holes:
/// a FICLONE where possible, otherwise a sparse copy.
///
/// # Errors
/// As for [`copy_range`].
pub fn copy_file(src: &File, dst: &File, opts: &CopyOptions<'_>) -> Result<CopyReport> {
    let op = "copy file";
    let si = readable_source(src, op)?;
    let di = writable_target(dst, op)?;
    if same_file(&si, &di) {
        return Err(Error::new(ErrorKind::InvalidArgument, op)
            .with_hint("source and destination are the same file"));
    }
    let caps = sys::probe::probe_file_on(dst, di.dev)?;
    let try_clone = si.dev == di.dev
        && caps.ficlone.works
        && matches!(opts.strategy, None | Some(Strategy::Reflink));
    if try_clone && sys::ficlone(dst, src).is_ok() {
        return Ok(CopyReport {
            strategy: Strategy::Reflink,
            bytes_copied: 0,
            bytes_cloned: si.size,
            hole_bytes: 0,
        });
    }
    if opts.strategy == Some(Strategy::Reflink) || opts.policy == Policy::MetadataOnly {
        return Err(Error::new(ErrorKind::Unsupported, op).with_hint(format!(
            "{} cannot reflink these files; allow copying",
            caps.fs.kind.name()
        )));
    }
    sys::ftruncate(dst, 0).map_err(|e| Error::os(op, "ftruncate", e))?;
    copy_range(src, 0, dst, 0, si.size, opts)
}

/// Copies the first `size` bytes of `src` into `dst`, a new empty file the
/// caller just made, keeping holes: `copy_file_range` per data segment
/// (SEEK_DATA), falling back to `pread`/`pwrite` where the kernel refuses
/// it (across filesystems, or a filesystem without it). No capability probe
/// and no descriptor checks: the probe costs tens of milliseconds on its
/// first use in a process, as much as copying a 100 MiB file, and the
/// caller vouches for both descriptors. For a snapshot's private copy.
pub(crate) fn copy_into_new(
    src: &File,
    dst: &File,
    size: u64,
    opts: &CopyOptions<'_>,
) -> Result<CopyReport> {
    let op = "copy file";
    let mut engine = match opts.strategy {
        None | Some(Strategy::KernelCopy) => Engine::Kernel,
        Some(Strategy::UserCopy) => Engine::User,
        Some(s) => {
            return Err(Error::new(ErrorKind::Unsupported, op)
                .with_hint(format!("strategy {s} does not apply to copies")))
        }
    };
    let mut report = CopyReport::nothing();
    for s in data_map_in(src, 0, size)? {
        if s.kind == SegmentKind::Hole {
            report.hole_bytes += s.len;
            continue;
        }
        let progress = |k: u64, _: u64| {
            if let Some(p) = opts.progress {
                p(s.offset + k, size);
            }
        };
        let run = |engine| {
            engine::move_bytes(
                engine,
                (src, s.offset),
                (dst, s.offset),
                s.len,
                false,
                Some(&progress),
            )
        };
        let moved = match run(engine) {
            Err(p) if engine == Engine::Kernel && kernel_refused(&p, report.bytes_copied) => {
                if opts.strategy.is_some() {
                    return Err(Error::os(op, p.call, p.err)
                        .with_kind(ErrorKind::Unsupported)
                        .with_hint("copy_file_range does not work between these files"));
                }
                // The whole segment again, through user space: rewriting
                // what the kernel may have copied of it is harmless.
                engine = Engine::User;
                run(engine)
            }
            r => r,
        };
        moved.map_err(|p| partial(op, s.offset, s.len, p))?;
        report.bytes_copied += s.len;
    }
    report.strategy = match engine {
        Engine::Kernel => Strategy::KernelCopy,
        Engine::User => Strategy::UserCopy,
    };
    sys::ftruncate(dst, size).map_err(|e| Error::os(op, "ftruncate", e))?;
    if let Some(p) = opts.progress {
        p(size, size);
    }
    Ok(report)
}

/// Whether `copy_file_range` failed because it cannot copy between these
/// files (EXDEV, EOPNOTSUPP, ENOSYS; EINVAL on the very first call) rather
/// than for a reason a user-space copy would meet too.
fn kernel_refused(p: &engine::Partial, copied: u64) -> bool {
    use rustix::io::Errno;
    let first = p.done == 0 && copied == 0;
    match Errno::from_io_error(&p.err) {
        Some(e) => {
            [Errno::XDEV, Errno::OPNOTSUPP, Errno::NOSYS].contains(&e)
                || (first && e == Errno::INVAL)
        }
        None => false,
    }
}

/// Deallocates `[offset, offset+len)` (`FALLOC_FL_PUNCH_HOLE`): it reads as
/// zeros and the size is unchanged. The range is clipped to EOF.
///
/// # Errors
/// `Unsupported` where the filesystem cannot punch holes.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> Result<CopyReport> {
    let op = op_range("punch", offset, len);
    let info = writable_target(file, &op)?;
    let end = offset.checked_add(len).ok_or_else(|| {
        Error::new(ErrorKind::InvalidArgument, op.clone()).with_hint("offset + length overflows")
    })?;
    let end = end.min(info.size);
    if offset >= end {
        return Ok(CopyReport {
            strategy: Strategy::Nothing,
            bytes_copied: 0,
            bytes_cloned: 0,
            hole_bytes: 0,
        });
    }
    sys::fallocate(file, Falloc::PunchHole, offset, end - offset)
        .map_err(|e| Error::os(op, Falloc::PunchHole.name(), e))?;
    Ok(CopyReport {
        strategy: Strategy::Native,
        bytes_copied: 0,
        bytes_cloned: 0,
        hole_bytes: end - offset,
    })
}

/// Makes `[offset, offset+len)` read as zeros (extending the file if the
/// range ends past EOF): `FALLOC_FL_ZERO_RANGE`, else a hole punch, else
/// (allow-copy) writing zeros.
///
/// # Errors
/// `Unsupported` under metadata-only where neither fallocate mode works.
pub fn zero_range(file: &File, offset: u64, len: u64, policy: Policy) -> Result<CopyReport> {
    let op = op_range("zero", offset, len);
    let info = writable_target(file, &op)?;
    let end = offset.checked_add(len).ok_or_else(|| {
        Error::new(ErrorKind::InvalidArgument, op.clone()).with_hint("offset + length overflows")
    })?;
    if len == 0 {
        return Ok(CopyReport {
            strategy: Strategy::Nothing,
            bytes_copied: 0,
            bytes_cloned: 0,
            hole_bytes: 0,
        });
    }
    let native = CopyReport {
        strategy: Strategy::Native,
        bytes_copied: 0,
        bytes_cloned: 0,
        hole_bytes: 0,
    };
    if sys::fallocate(file, Falloc::ZeroRange, offset, len).is_ok() {
        return Ok(native);
    }
    // Punch within EOF, then extend: same bytes as ZERO_RANGE.
    let punch_end = end.min(info.size);
    let punched = offset >= punch_end
        || sys::fallocate(file, Falloc::PunchHole, offset, punch_end - offset).is_ok();
    if punched {
        if end > info.size {
            sys::ftruncate(file, end).map_err(|e| Error::os(op, "ftruncate", e))?;
        }
        return Ok(CopyReport {
            hole_bytes: len,
            ..native
        });
    }
    if policy == Policy::MetadataOnly {
        return Err(Error::new(ErrorKind::Unsupported, op).with_hint(
            "neither ZERO_RANGE nor PUNCH_HOLE works here and metadata-only forbids writing zeros",
        ));
    }
    engine::write_zeros(file, offset, len).map_err(|e| Error::os(op, "pwrite", e))?;
    Ok(CopyReport {
        strategy: Strategy::UserCopy,
        bytes_copied: len,
        bytes_cloned: 0,
        hole_bytes: 0,
    })
}

/// The chosen way to run one copy.
struct Plan {
    /// Reflink the block-aligned middle `[head, head+mid)` of the range.
    reflink_mid: Option<(u64, u64)>,
    /// Engine for everything not reflinked.
    engine: Engine,
    strategy: Strategy,
}

impl Plan {
    #[allow(clippy::too_many_arguments)]
    fn choose(
        op: &str,
        caps: &Arc<Capabilities>,
        si: &FileInfo,
        di: &FileInfo,
        src_off: u64,
        dst_off: u64,
        len: u64,
        same: bool,
        overlapping: bool,
        opts: &CopyOptions<'_>,
    ) -> Result<Plan> {
        let bs = caps.block_size();
        let can_reflink = si.dev == di.dev
            && !overlapping
            && if same {
                caps.ficlonerange_same_file.works
            } else {
                caps.ficlonerange.works
            }
            && src_off % bs == dst_off % bs;
        let mid = can_reflink.then(|| {
            let head = (bs - src_off % bs) % bs;
            let head = head.min(len);
            let rest = len - head;
            let to_eof = src_off + len == si.size && dst_off + len >= di.size;
            let mid = if to_eof { rest } else { align_down(rest, bs) };
            (head, mid)
        });
        let mid = mid.filter(|&(_, m)| m > 0);
        let fully = mid.is_some_and(|(h, m)| h == 0 && m == len);
        // copy_file_range refuses to cross filesystems (EXDEV since 5.19).
        let kernel = caps.copy_file_range.works && si.dev == di.dev;
        let unsupported =
            |why: String| Err(Error::new(ErrorKind::Unsupported, op.to_string()).with_hint(why));
        match (opts.strategy, opts.policy) {
            (Some(Strategy::Reflink), _) | (None, Policy::MetadataOnly) => {
                if fully {
                    Ok(Plan {
                        reflink_mid: mid,
                        engine: Engine::Kernel,
                        strategy: Strategy::Reflink,
                    })
                } else if mid.is_none() && !can_reflink {
                    unsupported(format!(
                        "{} cannot reflink this range (needs reflink support and offsets with the same misalignment modulo {bs})",
                        caps.fs.kind.name()
                    ))
                } else {
                    Err(Error::new(ErrorKind::Alignment, op.to_string()).with_hint(format!(
                        "only a copy could do the unaligned edges; offsets and length must be multiples of {bs}"
                    )))
                }
            }
            (Some(Strategy::KernelCopy), _) if !kernel => unsupported(if si.dev == di.dev {
                "copy_file_range does not work here".into()
            } else {
                "copy_file_range cannot copy between filesystems".into()
            }),
            (Some(Strategy::KernelCopy), _) => Ok(Plan {
                reflink_mid: None,
                engine: Engine::Kernel,
                strategy: Strategy::KernelCopy,
            }),
            (Some(Strategy::UserCopy), _) => Ok(Plan {
                reflink_mid: None,
                engine: Engine::User,
                strategy: Strategy::UserCopy,
            }),
            (Some(s), _) => unsupported(format!("strategy {s} does not apply to copies")),
            (None, Policy::AllowCopy) => {
                let engine = if kernel { Engine::Kernel } else { Engine::User };
                let strategy = if mid.is_some() {
                    Strategy::Reflink
                } else if kernel {
                    Strategy::KernelCopy
                } else {
                    Strategy::UserCopy
                };
                Ok(Plan {
                    reflink_mid: mid,
                    engine,
                    strategy,
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        op: &str,
        src: &File,
        src_off: u64,
        dst: &File,
        dst_off: u64,
        len: u64,
        di: &FileInfo,
        caps: &Capabilities,
        overlapping: bool,
        progress: Option<Progress<'_>>,
    ) -> Result<CopyReport> {
        let mut report = CopyReport {
            strategy: self.strategy,
            bytes_copied: 0,
            bytes_cloned: 0,
            hole_bytes: 0,
        };
        if overlapping {
            let moved = if src_off.abs_diff(dst_off) < engine::BOUNCE_BELOW {
                // A short move distance would mean len/distance calls:
                // bounce whole chunks through memory instead.
                engine::move_buffered(src, src_off, dst_off, len, progress)
            } else {
                engine::move_bytes(
                    self.engine,
                    (src, src_off),
                    (dst, dst_off),
                    len,
                    true,
                    progress,
                )
            };
            moved.map_err(|p| partial(op, dst_off, len, p))?;
            report.bytes_copied = len;
            return Ok(report);
        }
        let mut pieces = Vec::new();
        match self.reflink_mid {
            Some((head, mid)) => {
                if head > 0 {
                    pieces.push((0, head));
                }
                let tail_at = head + mid;
                if tail_at < len {
                    pieces.push((tail_at, len - tail_at));
                }
                sys::ficlonerange(dst, dst_off + head, src, src_off + head, mid)
                    .map_err(|e| Error::os(op.to_string(), "ioctl(FICLONERANGE)", e))?;
                report.bytes_cloned = mid;
            }
            None => pieces.push((0, len)),
        }
        let total: u64 = pieces.iter().map(|p| p.1).sum();
        let mut base = 0;
        for (at, n) in pieces {
            let done = self.sparse_copy(
                op,
                src,
                src_off + at,
                dst,
                dst_off + at,
                n,
                di,
                caps,
                &mut report,
                base,
                total,
                progress,
            )?;
            base += done;
        }
        let end = dst_off + len;
        let size = sys::file_info(dst)
            .map_err(|e| Error::os(op.to_string(), "fstat", e))?
            .size;
        if size < end {
            sys::ftruncate(dst, end).map_err(|e| Error::os(op.to_string(), "ftruncate", e))?;
        }
        Ok(report)
    }

    /// Copies the data segments of `src[so..+n]`, leaving holes as holes.
    #[allow(clippy::too_many_arguments)]
    fn sparse_copy(
        &self,
        op: &str,
        src: &File,
        so: u64,
        dst: &File,
        d: u64,
        n: u64,
        di: &FileInfo,
        caps: &Capabilities,
        report: &mut CopyReport,
        base: u64,
        total: u64,
        progress: Option<Progress<'_>>,
    ) -> Result<u64> {
        let segs = data_map_in(src, so, n)?;
        let mut done = 0;
        for s in segs {
            let dd = d + (s.offset - so);
            match s.kind {
                SegmentKind::Data => {
                    let shifted = |k: u64, _t: u64| {
                        if let Some(p) = progress {
                            p(base + done + k, total);
                        }
                    };
                    engine::move_bytes(
                        self.engine,
                        (src, s.offset),
                        (dst, dd),
                        s.len,
                        false,
                        Some(&shifted),
                    )
                    .map_err(|p| partial(op, d, n, p))?;
                    report.bytes_copied += s.len;
                }
                SegmentKind::Hole => {
                    report.hole_bytes += s.len;
                    // Beyond the destination's old EOF a hole is already a hole.
                    if dd < di.size {
                        let n = s.len.min(di.size - dd);
                        let punched = caps.punch_hole.works
                            && sys::fallocate(dst, Falloc::PunchHole, dd, n).is_ok();
                        if !punched {
                            engine::write_zeros(dst, dd, n)
                                .map_err(|e| Error::os(op.to_string(), "pwrite", e))?;
                        }
                    }
                }
            }
            done += s.len;
        }
        Ok(done)
    }
}

fn partial(op: &str, dst_off: u64, len: u64, p: engine::Partial) -> Error {
    let kind = match crate::error::kind_of(&p.err) {
        ErrorKind::NoSpace => ErrorKind::NoSpace,
        _ => ErrorKind::PartiallyApplied,
    };
    let done = p.done;
    Error::os(op.to_string(), p.call, p.err)
        .with_kind(kind)
        .with_hint(format!(
            "copy stopped part-way: destination bytes [{dst_off}, {}) may be partly overwritten; {} of {} bytes were copied in full",
            dst_off + len,
            done,
            len
        ))
}
