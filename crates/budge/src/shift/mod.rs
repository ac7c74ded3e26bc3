//! Insert and collapse: shift a file's tail up (making a zero-filled gap) or
//! down (removing a range), with the best strategy the filesystem allows.
//!
//! Strategies, best first:
//! 1. [`Strategy::Native`]: `fallocate(INSERT_RANGE / COLLAPSE_RANGE)` (XFS,
//!    ext4). O(extents), no data moves.
//! 2. [`Strategy::Reflink`]: clone the tail into a temporary file
//!    (FICLONERANGE), truncate, and clone it back at its new offset (btrfs;
//!    XFS when forced). O(extents).
//! 3. [`Strategy::KernelCopy`]: move the tail with `copy_file_range`.
//! 4. [`Strategy::UserCopy`]: move the tail with `pread`/`pwrite`.
//!
//! Native and reflink need the offset and length in whole filesystem
//! blocks; the copies work at any byte offset. Under
//! [`Policy::MetadataOnly`] only the first two are allowed.
//!
//! Defined edge cases: a zero length does nothing; an insert at EOF extends
//! the file with zeros ([`Strategy::Extend`]; the kernel would refuse it with
//! EINVAL); a collapse reaching EOF truncates ([`Strategy::Truncate`]); an
//! insert past EOF or a collapse past EOF is an error, as are sizes beyond the
//! filesystem's maximum file size or larger than the filesystem itself.
//!
//! Failure: every strategy fails before changing the file when it can
//! (space is preallocated before data moves), and otherwise rolls back; if
//! even the roll-back fails the error ([`ErrorKind::PartiallyApplied`]) says
//! exactly what the file holds and where the displaced bytes were saved.
//!
//! Coherence: the native and reflink strategies write back dirty pages
//! (including those dirtied through a `MAP_SHARED` mapping) before shifting,
//! and the kernel drops the page cache from the offset to EOF, so the tail is
//! re-read from disk on its next access ([`ShiftReport::tail_reread`]). The
//! copy strategies go through the page cache, which mappings share.

use std::fs::File;
use std::sync::Arc;

use crate::copy::engine::{self, Engine, Partial, Progress};
use crate::copy::writable_target;
use crate::error::{op_range, Error, ErrorKind, Result};
use crate::range::{fmt_size, is_aligned};
use crate::sys::{self, probe::Capabilities, Falloc};
use crate::{Policy, Strategy};

/// Options for [`insert`] and [`collapse`].
#[derive(Clone, Copy, Default)]
pub struct ShiftOptions<'a> {
    /// Whether copying strategies may run.
    pub policy: Policy,
    /// Force one strategy instead of the best available; an error (touching
    /// nothing) if it cannot run here.
    pub strategy: Option<Strategy>,
    /// `fsync` the file before returning.
    pub sync: bool,
    /// Progress of O(n) copying strategies.
    pub progress: Option<Progress<'a>>,
}

impl std::fmt::Debug for ShiftOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShiftOptions")
            .field("policy", &self.policy)
            .field("strategy", &self.strategy)
            .field("sync", &self.sync)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What an insert or collapse did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShiftReport {
    /// The strategy that ran.
    pub strategy: Strategy,
    /// Data bytes copied (0 for metadata strategies).
    pub bytes_copied: u64,
    /// File size before.
    pub old_size: u64,
    /// File size after.
    pub new_size: u64,
    /// Bytes of the file, from the offset to the old EOF, whose page cache the
    /// kernel dropped: they are read from disk again on their next access.
    pub tail_reread: u64,
    /// Better strategies that were tried first and why they did not run.
    pub fallbacks: Vec<(Strategy, String)>,
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Dir {
    Insert,
    Collapse,
}

impl Dir {
    fn verb(self) -> &'static str {
        match self {
            Dir::Insert => "insert",
            Dir::Collapse => "collapse",
        }
    }
    fn falloc(self) -> Falloc {
        match self {
            Dir::Insert => Falloc::InsertRange,
            Dir::Collapse => Falloc::CollapseRange,
        }
    }
}

/// Inserts `len` zero bytes at `offset`, shifting everything from `offset`
/// to EOF up by `len`. See the [module docs](self) for strategies, edge cases
/// and failure behaviour.
///
/// # Errors
/// `InvalidArgument` (past EOF, overflow, absurd size, read-only or
/// non-regular file), `Alignment` or `Unsupported` (metadata-only or a forced
/// strategy that cannot run; nothing touched), `NoSpace` (file unchanged),
/// `PartiallyApplied` (see the message).
pub fn insert(file: &File, offset: u64, len: u64, opts: &ShiftOptions<'_>) -> Result<ShiftReport> {
    shift(file, Dir::Insert, offset, len, opts)
}

/// Removes `[offset, offset+len)`, shifting everything after it down by
/// `len`. See the [module docs](self).
///
/// # Errors
/// As for [`insert`].
pub fn collapse(
    file: &File,
    offset: u64,
    len: u64,
    opts: &ShiftOptions<'_>,
) -> Result<ShiftReport> {
    shift(file, Dir::Collapse, offset, len, opts)
}

fn shift(
    file: &File,
    dir: Dir,
    offset: u64,
    len: u64,
    opts: &ShiftOptions<'_>,
) -> Result<ShiftReport> {
    let op = op_range(dir.verb(), offset, len);
    let info = writable_target(file, &op)?;
    let size = info.size;
    let report = |strategy, new_size| ShiftReport {
        strategy,
        bytes_copied: 0,
        old_size: size,
        new_size,
        tail_reread: 0,
        fallbacks: Vec::new(),
    };
    let invalid = |hint: String| Error::new(ErrorKind::InvalidArgument, op.clone()).with_hint(hint);
    let end = offset
        .checked_add(len)
        .ok_or_else(|| invalid("offset + length overflows".into()))?;
    if let Some(s) = opts.strategy {
        if !Strategy::FORCEABLE.contains(&s) {
            return Err(invalid(format!("strategy {s} cannot be forced")));
        }
        if s.copies_data() && opts.policy == Policy::MetadataOnly {
            return Err(invalid(format!(
                "forcing {s} contradicts metadata-only: it copies data"
            )));
        }
    }
    if len == 0 {
        return Ok(report(Strategy::Nothing, size));
    }
    let caps = sys::probe::probe_file_on(file, info.dev)?;
    let new_size = match dir {
        Dir::Insert => {
            if offset > size {
                return Err(invalid(format!(
                    "offset is past EOF ({}); an insert needs an offset within the file or at its end",
                    fmt_size(size)
                )));
            }
            let new_size = size
                .checked_add(len)
                .ok_or_else(|| invalid("the new size overflows".into()))?;
            let max = caps.fs.kind.max_file_size(caps.block_size());
            if new_size > max {
                return Err(invalid(format!(
                    "the file would grow to {}, beyond {}'s maximum file size ({})",
                    fmt_size(new_size),
                    caps.fs.kind.name(),
                    fmt_size(max)
                )));
            }
            if len > caps.fs.total_bytes {
                return Err(invalid(format!(
                    "refusing to insert more than the whole filesystem ({}) holds",
                    fmt_size(caps.fs.total_bytes)
                )));
            }
            new_size
        }
        Dir::Collapse => {
            if end > size {
                return Err(invalid(format!(
                    "the range ends at {}, past EOF ({})",
                    fmt_size(end),
                    fmt_size(size)
                )));
            }
            size - len
        }
    };
    // Defined edge cases the kernel refuses with EINVAL.
    if dir == Dir::Insert && offset == size {
        sys::ftruncate(file, new_size).map_err(|e| Error::os(op.clone(), "ftruncate", e))?;
        return finish(file, &op, opts, report(Strategy::Extend, new_size));
    }
    if dir == Dir::Collapse && end == size {
        sys::ftruncate(file, offset).map_err(|e| Error::os(op.clone(), "ftruncate", e))?;
        return finish(file, &op, opts, report(Strategy::Truncate, new_size));
    }

    let ctx = Ctx {
        file,
        caps: &caps,
        dir,
        offset,
        len,
        size,
        new_size,
        op: &op,
        progress: opts.progress,
    };
    let (candidates, mut fallbacks) = ctx.candidates(opts)?;
    for strategy in candidates {
        match ctx.run(strategy) {
            Ok(bytes_copied) => {
                let tail_reread = if strategy.copies_data() {
                    0
                } else {
                    size - offset
                };
                let r = ShiftReport {
                    strategy,
                    bytes_copied,
                    old_size: size,
                    new_size,
                    tail_reread,
                    fallbacks,
                };
                return finish(file, &op, opts, r);
            }
            Err(Outcome::Untouched(why)) if opts.strategy.is_none() => {
                fallbacks.push((strategy, why))
            }
            Err(Outcome::Untouched(why)) => {
                return Err(Error::new(ErrorKind::Unsupported, op.clone())
                    .with_hint(format!("forced strategy {strategy} failed: {why}")))
            }
            Err(Outcome::Failed(e)) => return Err(e),
        }
    }
    let tried: Vec<String> = fallbacks.iter().map(|(s, w)| format!("{s}: {w}")).collect();
    Err(Error::new(ErrorKind::Unsupported, op.clone())
        .with_hint(format!("no strategy worked ({})", tried.join("; "))))
}

fn finish(file: &File, op: &str, opts: &ShiftOptions<'_>, r: ShiftReport) -> Result<ShiftReport> {
    if opts.sync {
        sys::fsync(file).map_err(|e| Error::os(op.to_string(), "fsync", e))?;
    }
    Ok(r)
}

/// How a strategy failed.
enum Outcome {
    /// It changed nothing and a later strategy may try (EOPNOTSUPP etc.).
    Untouched(String),
    /// A real error, the file restored or its state described.
    Failed(Error),
}

struct Ctx<'a> {
    file: &'a File,
    caps: &'a Arc<Capabilities>,
    dir: Dir,
    offset: u64,
    len: u64,
    size: u64,
    new_size: u64,
    op: &'a str,
    progress: Option<Progress<'a>>,
}

impl Ctx<'_> {
    fn aligned(&self) -> bool {
        let bs = self.caps.block_size();
        is_aligned(self.offset, bs) && is_aligned(self.len, bs)
    }

    fn err(&self, kind: ErrorKind, hint: String) -> Error {
        Error::new(kind, self.op.to_string()).with_hint(hint)
    }

    /// Why `s` cannot run here, or `None` if it can.
    fn unavailable(&self, s: Strategy) -> Option<(ErrorKind, String)> {
        let bs = self.caps.block_size();
        let fs = self.caps.fs.kind.name();
        let align = || {
            (
                ErrorKind::Alignment,
                format!("{s} needs offset and length in whole {bs}-byte blocks of {fs}"),
            )
        };
        match s {
            Strategy::Native => {
                let sup = match self.dir {
                    Dir::Insert => &self.caps.insert_range,
                    Dir::Collapse => &self.caps.collapse_range,
                };
                if !sup.works {
                    let n = if self.dir == Dir::Insert {
                        "insert-range"
                    } else {
                        "collapse-range"
                    };
                    Some((ErrorKind::Unsupported, format!("{fs} has no {n}")))
                } else if !self.aligned() {
                    Some(align())
                } else {
                    None
                }
            }
            Strategy::Reflink => {
                if !self.caps.ficlonerange.works {
                    Some((ErrorKind::Unsupported, format!("{fs} cannot reflink")))
                } else if !self.aligned() {
                    Some(align())
                } else {
                    None
                }
            }
            Strategy::KernelCopy if !self.caps.copy_file_range.works => Some((
                ErrorKind::Unsupported,
                "copy_file_range does not work here".into(),
            )),
            _ => None,
        }
    }

    /// The strategies to try, best first, and the better ones skipped with
    /// the reason; an error if none may run.
    #[allow(clippy::type_complexity)]
    fn candidates(
        &self,
        opts: &ShiftOptions<'_>,
    ) -> Result<(Vec<Strategy>, Vec<(Strategy, String)>)> {
        if let Some(s) = opts.strategy {
            if let Some((kind, why)) = self.unavailable(s) {
                return Err(self.err(kind, format!("cannot force {s}: {why}")));
            }
            return Ok((vec![s], Vec::new()));
        }
        let mut out = Vec::new();
        let mut why = Vec::new();
        for s in Strategy::FORCEABLE {
            if s.copies_data() && opts.policy == Policy::MetadataOnly {
                continue;
            }
            match self.unavailable(s) {
                None => out.push(s),
                Some(w) => why.push((s, w)),
            }
        }
        if out.is_empty() {
            let kind = if why.iter().any(|(_, (k, _))| *k == ErrorKind::Alignment) {
                ErrorKind::Alignment
            } else {
                ErrorKind::Unsupported
            };
            let reasons: Vec<&str> = why.iter().map(|(_, (_, w))| w.as_str()).collect();
            let fix = if kind == ErrorKind::Alignment {
                format!(
                    "use an offset and length in multiples of {} or allow copying",
                    self.caps.block_size()
                )
            } else {
                "allow copying".to_string()
            };
            return Err(self.err(
                kind,
                format!(
                    "metadata-only: {}; only a copy could do it ({fix})",
                    reasons.join(" and ")
                ),
            ));
        }
        // Report only the skipped strategies better than the first that runs.
        let first = Strategy::FORCEABLE
            .iter()
            .position(|s| *s == out[0])
            .unwrap_or(0);
        let skipped = why
            .into_iter()
            .filter(|(s, _)| Strategy::FORCEABLE.iter().position(|x| x == s).unwrap_or(0) < first)
            .map(|(s, (_, w))| (s, w))
            .collect();
        Ok((out, skipped))
    }

    fn run(&self, s: Strategy) -> Result<u64, Outcome> {
        match s {
            Strategy::Native => self.native().map(|()| 0),
            Strategy::Reflink => self.reflink().map(|()| 0),
            Strategy::KernelCopy => self.copy(Engine::Kernel),
            Strategy::UserCopy => self.copy(Engine::User),
            _ => Err(Outcome::Untouched(format!("{s} is not a shift strategy"))),
        }
    }

    fn size_now(&self) -> Option<u64> {
        sys::file_info(self.file).ok().map(|i| i.size)
    }

    fn native(&self) -> Result<(), Outcome> {
        let mode = self.dir.falloc();
        match sys::fallocate(self.file, mode, self.offset, self.len) {
            Ok(()) => Ok(()),
            Err(e) => {
                let after = self.size_now();
                let kind = crate::error::kind_of(&e);
                if after == Some(self.size) && kind == ErrorKind::Unsupported {
                    return Err(Outcome::Untouched(format!("{}: {e}", mode.name())));
                }
                let state = match after {
                    Some(s) if s == self.size => format!(
                        "the file size is unchanged ({}); the kernel does not promise the shift is all-or-nothing",
                        self.size
                    ),
                    Some(s) => format!(
                        "the kernel stopped part-way: the file size is now {s} (was {}, expected {})",
                        self.size, self.new_size
                    ),
                    None => "the file's state could not be read".into(),
                };
                let mut err = Error::os(self.op.to_string(), mode.name(), e).with_hint(state);
                if after != Some(self.size) && kind != ErrorKind::NoSpace {
                    err = err.with_kind(ErrorKind::PartiallyApplied);
                }
                Err(Outcome::Failed(err))
            }
        }
    }

    /// A failure before the file was touched: out of space is an error (no
    /// other strategy would do better); anything else lets the next one try.
    fn before_change(&self, call: &'static str, e: std::io::Error) -> Outcome {
        if crate::error::kind_of(&e) == ErrorKind::NoSpace {
            Outcome::Failed(
                Error::os(self.op.to_string(), call, e).with_hint("the file is unchanged"),
            )
        } else {
            Outcome::Untouched(format!("{call}: {e}"))
        }
    }

    /// Save `[offset, size)` in a temporary file, truncate the file at
    /// `offset`, extend it by the gap (insert) and clone the saved tail back
    /// at its new place. Roll back from the saved copy on failure.
    fn reflink(&self) -> Result<(), Outcome> {
        let tmp = self
            .caps
            .temp_file_near(self.file)
            .map_err(|e| self.before_change("create temporary file", e))?;
        let saved = self.size - self.offset;
        // The clone flushes dirty pages of the range first, so data written
        // through a mapping is in the saved copy.
        sys::ficlonerange(&tmp, 0, self.file, self.offset, saved)
            .map_err(|e| self.before_change("ioctl(FICLONERANGE) into a temporary file", e))?;
        let (skip, gap) = match self.dir {
            Dir::Insert => (0, self.len),
            Dir::Collapse => (self.len, 0),
        };
        let apply = || -> std::io::Result<()> {
            sys::ftruncate(self.file, self.offset)?;
            if gap > 0 {
                sys::ftruncate(self.file, self.offset + gap)?;
            }
            fail::fail_point!("budge::reflink-clone-back", |_| Err(std::io::Error::other(
                "injected failure"
            )));
            sys::ficlonerange(self.file, self.offset + gap, &tmp, skip, saved - skip)?;
            Ok(())
        };
        match apply() {
            Ok(()) if self.size_now() == Some(self.new_size) => Ok(()),
            r => {
                let e = r
                    .err()
                    .unwrap_or_else(|| std::io::Error::other("unexpected size after the shift"));
                let injected = || -> std::io::Result<()> {
                    fail::fail_point!("budge::reflink-rollback", |_| Err(std::io::Error::other(
                        "injected failure"
                    )));
                    Ok(())
                };
                let restored = injected().is_ok()
                    && sys::ftruncate(self.file, self.offset)
                        .and_then(|()| sys::ficlonerange(self.file, self.offset, &tmp, 0, saved))
                        .is_ok()
                    && self.size_now() == Some(self.size);
                let err = Error::os(self.op.to_string(), "reflink shift", e);
                if restored {
                    return Err(Outcome::Failed(
                        err.with_hint("rolled back: the file is unchanged"),
                    ));
                }
                Err(Outcome::Failed(self.rescue(&tmp, err)))
            }
        }
    }

    /// Where a failed shift names the bytes it saved, so no data is lost:
    /// `.budge-rescue-PID-OFFSET` next to the file (in its scratch
    /// directory).
    fn rescue_path(&self) -> std::path::PathBuf {
        let name = format!(".budge-rescue-{}-{}", std::process::id(), self.offset);
        self.caps
            .scratch_dir(self.file)
            .unwrap_or_else(|| self.caps.dir.clone())
            .join(name)
    }

    /// Gives the saved tail a name so no data is lost, and says where.
    fn rescue(&self, tmp: &File, err: Error) -> Error {
        let path = self.rescue_path();
        let saved = match sys::link_tmpfile(tmp, &path) {
            Ok(()) => format!(
                "the original bytes from offset {} to EOF were saved to {}",
                self.offset,
                path.display()
            ),
            Err(e) => format!("saving the original tail failed too ({e}); it is lost"),
        };
        err.with_kind(ErrorKind::PartiallyApplied).with_hint(format!(
            "roll-back failed: the file's size is {:?} and its content from offset {} is not the original; {saved}",
            self.size_now(),
            self.offset
        ))
    }

    /// Move the tail with a copy engine. Space for the new tail is reserved
    /// before any byte moves; the bytes a collapse removes are saved first, so
    /// a failure part-way can be rolled back.
    fn copy(&self, engine: Engine) -> Result<u64, Outcome> {
        let fail = |call: &'static str, e: std::io::Error, hint: String| {
            Outcome::Failed(Error::os(self.op.to_string(), call, e).with_hint(hint))
        };
        let tail_from = self.offset
            + if self.dir == Dir::Collapse {
                self.len
            } else {
                0
            };
        let tail = self.size - tail_from;
        self.check_space(tail, engine).map_err(Outcome::Failed)?;
        match self.dir {
            Dir::Insert => {
                // Reserve the blocks the moved tail will need beyond EOF, and
                // extend with ftruncate first (XFS would otherwise preallocate
                // speculatively far past EOF on the extending writes).
                let undo_size = |hint: &str| {
                    let ok = sys::ftruncate(self.file, self.size).is_ok();
                    if ok {
                        hint.to_string()
                    } else {
                        format!("{hint}; restoring the size failed")
                    }
                };
                if let Err(e) = sys::fallocate(self.file, Falloc::Allocate, self.size, self.len) {
                    if crate::error::kind_of(&e) == ErrorKind::NoSpace {
                        return Err(fail(
                            "fallocate",
                            e,
                            undo_size("no space for the moved tail; the file is unchanged"),
                        ));
                    }
                }
                sys::ftruncate(self.file, self.new_size)
                    .map_err(|e| fail("ftruncate", e, undo_size("the file is unchanged")))?;
                let to = self.offset + self.len;
                if let Err(p) = engine::move_bytes(
                    engine,
                    (self.file, self.offset),
                    (self.file, to),
                    tail,
                    true,
                    self.progress,
                ) {
                    return Err(Outcome::Failed(self.undo_insert_copy(engine, p)));
                }
                if let Err(e) = self.zero_gap(self.offset, self.len) {
                    let p = Partial {
                        done: tail,
                        call: "zero the inserted range",
                        err: e,
                    };
                    return Err(Outcome::Failed(self.undo_insert_copy(engine, p)));
                }
                Ok(tail)
            }
            Dir::Collapse => {
                let saved = self
                    .caps
                    .temp_file_near(self.file)
                    .map_err(|e| fail("open temporary file", e, "the file is unchanged".into()))?;
                engine::move_bytes(
                    engine,
                    (self.file, self.offset),
                    (&saved, 0),
                    self.len,
                    false,
                    None,
                )
                .map_err(|p| {
                    fail(
                        p.call,
                        p.err,
                        "saving the removed range failed; the file is unchanged".into(),
                    )
                })?;
                if let Err(p) = engine::move_bytes(
                    engine,
                    (self.file, tail_from),
                    (self.file, self.offset),
                    tail,
                    true,
                    self.progress,
                ) {
                    return Err(Outcome::Failed(self.undo_collapse_copy(engine, &saved, p)));
                }
                sys::ftruncate(self.file, self.new_size).map_err(|e| {
                    fail(
                        "ftruncate",
                        e,
                        "the data moved but the file was not shortened".into(),
                    )
                })?;
                Ok(self.len + tail)
            }
        }
    }

    /// On a copy-on-write filesystem every overwritten block needs a new
    /// one, so a move needs free space for the whole tail (plus the new
    /// range, or the saved range of a collapse). Checking first is what lets
    /// the move fail before touching the file; the roll-back would need the
    /// same space.
    /// Where `copy_file_range` reflinks (btrfs, XFS), the kernel engine
    /// shares blocks instead of rewriting them and needs no such space.
    fn check_space(&self, tail: u64, engine: Engine) -> Result<()> {
        let reflinks = engine == Engine::Kernel && self.caps.copy_file_range_reflinks.works;
        let cow = matches!(self.caps.fs.kind, sys::FsKind::Btrfs) && !reflinks;
        if !cow {
            return Ok(());
        }
        let need = self.len + tail;
        let avail = sys::fs_info(self.file)
            .map_err(|e| Error::os(self.op.to_string(), "fstatfs", e))?
            .avail_bytes;
        if avail < need.saturating_add(need / 8) {
            return Err(Error::new(ErrorKind::NoSpace, self.op.to_string()).with_hint(format!(
                "moving the tail on {} needs about {} free (copy-on-write rewrites every block), {} available; the file is unchanged",
                self.caps.fs.kind.name(),
                fmt_size(need),
                fmt_size(avail)
            )));
        }
        Ok(())
    }

    fn zero_gap(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if sys::fallocate(self.file, Falloc::PunchHole, offset, len).is_ok() {
            return Ok(());
        }
        engine::write_zeros(self.file, offset, len)
    }

    /// An insert by copy moved the top `p.done` bytes of the tail up by
    /// `len`; the rest of the tail is still in place. Move the moved part
    /// back down and restore the size.
    fn undo_insert_copy(&self, engine: Engine, p: Partial) -> Error {
        let err = Error::os(self.op.to_string(), p.call, p.err);
        let moved_from = self.size - p.done;
        let back = engine::move_bytes(
            engine,
            (self.file, moved_from + self.len),
            (self.file, moved_from),
            p.done,
            true,
            None,
        );
        if back.is_ok() && sys::ftruncate(self.file, self.size).is_ok() {
            return err.with_hint("rolled back: the file is unchanged");
        }
        err.with_kind(ErrorKind::PartiallyApplied).with_hint(format!(
            "roll-back failed: bytes [0, {moved_from}) are original; the original bytes [{moved_from}, {}) are now at [{}, {})",
            self.size,
            moved_from + self.len,
            self.size + self.len
        ))
    }

    /// A collapse by copy moved the bottom `p.done` bytes of the tail down by
    /// `len`; the removed range is in `saved`. Move them back up and restore
    /// the removed range.
    fn undo_collapse_copy(&self, engine: Engine, saved: &File, p: Partial) -> Error {
        let err = Error::os(self.op.to_string(), p.call, p.err);
        let back = engine::move_bytes(
            engine,
            (self.file, self.offset),
            (self.file, self.offset + self.len),
            p.done,
            true,
            None,
        )
        .and_then(|()| {
            engine::move_bytes(
                engine,
                (saved, 0),
                (self.file, self.offset),
                self.len,
                false,
                None,
            )
        });
        if back.is_ok() {
            return err.with_hint("rolled back: the file is unchanged");
        }
        let err = err.with_kind(ErrorKind::PartiallyApplied);
        let path = self.rescue_path();
        let where_saved = match sys::link_tmpfile(saved, &path) {
            Ok(()) => format!("the removed range was saved to {}", path.display()),
            Err(e) => format!("saving the removed range failed too ({e})"),
        };
        err.with_hint(format!(
            "roll-back failed: bytes [{}, {}) hold the tail's first {} bytes; the rest of the file is in place; {where_saved}",
            self.offset,
            self.offset + p.done,
            p.done
        ))
    }
}
