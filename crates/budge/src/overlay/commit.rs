//! Commit (merge an overlay into its base), export (write the merged view
//! as a new file) and the recovery of interrupted commits.
//!
//! Replace commits (reflink, copy) build the new base as an unnamed file,
//! record its identity in the overlay's superblock (`publishing`), then
//! rename it over the base with the snapshot publish protocol. In-place
//! commits reserve space first, record `in place` with a cursor, write the
//! runs into the base and move the cursor every [`SYNC_EVERY`] bytes; the
//! next read-write open replays from the cursor (idempotent: the overlay's
//! data is unchanged until the final reset).

use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::format::{BaseId, CommitState};
use super::{err, file_id, os, Lower, Overlay, PageState, Src};
use crate::copy::{self, CopyOptions, CopyReport, Progress};
use crate::error::{ErrorKind, Result};
use crate::range::fmt_size;
use crate::snap::publish::{self, Expect};
use crate::sys::{self, meta, Falloc, FsKind};

/// Bytes an in-place commit writes between two recorded cursor positions.
pub const SYNC_EVERY: u64 = 64 << 20;

/// One step of an in-place commit, for [`Overlay::replay_pieces`]'s target.
enum Replay {
    /// Write `[at, at + len)` of the overlay's view (`state` says whether
    /// the overlay holds the bytes or they read as zeros).
    Piece { at: u64, len: u64, state: PageState },
    /// Make everything written so far durable.
    Sync,
}

/// How [`Overlay::commit`] merges the overlay into its base.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum CommitStrategy {
    /// Reflink where the base's filesystem can, else in place.
    #[default]
    Auto,
    /// Atomic: clone the base into an unnamed file, clone the overlay's runs
    /// into it, sync, rename over the base. O(changes). XFS, btrfs.
    Reflink,
    /// Atomic: like `Reflink` but the base is copied (sparse-aware). O(base).
    Copy,
    /// Writes the runs into the base file itself, with a recorded cursor so
    /// that an interrupted commit is finished on the next open. O(changes),
    /// any filesystem; readers of the base see it change page by page.
    InPlace,
}

impl CommitStrategy {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            CommitStrategy::Auto => "auto",
            CommitStrategy::Reflink => "reflink",
            CommitStrategy::Copy => "copy",
            CommitStrategy::InPlace => "in-place",
        }
    }
}

impl std::fmt::Display for CommitStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CommitStrategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(CommitStrategy::Auto),
            "reflink" => Ok(CommitStrategy::Reflink),
            "copy" => Ok(CommitStrategy::Copy),
            "in-place" | "inplace" => Ok(CommitStrategy::InPlace),
            _ => Err(format!(
                "unknown commit strategy {s:?} (auto, reflink, copy, in-place)"
            )),
        }
    }
}

/// Options for [`Overlay::commit`].
#[derive(Clone, Copy, Default)]
pub struct CommitOptions<'a> {
    /// Which protocol.
    pub strategy: CommitStrategy,
    /// Progress of the O(n) parts: `(bytes done, bytes in all)`.
    pub progress: Option<Progress<'a>>,
}

impl std::fmt::Debug for CommitOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitOptions")
            .field("strategy", &self.strategy)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What a commit did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// The protocol that ran (never `Auto`).
    pub strategy: CommitStrategy,
    /// Pages merged (present or zero).
    pub pages: u64,
    /// Bytes shared with the overlay or old base by reflink.
    pub bytes_cloned: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Bytes made to read as zeros.
    pub bytes_zeroed: u64,
    /// Whether the commit finished one a crash interrupted.
    pub recovered: bool,
}

impl CommitReport {
    fn add(&mut self, r: &CopyReport) {
        self.bytes_cloned += r.bytes_cloned;
        self.bytes_copied += r.bytes_copied;
    }
}

/// What an export did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Bytes shared by reflink.
    pub bytes_cloned: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Bytes left as holes (base holes and zero pages).
    pub hole_bytes: u64,
}

/// Makes `[off, off + len)` of `file` read as zeros: a hole if possible.
fn zero_in(op: &str, path: &Path, file: &File, off: u64, len: u64) -> Result<()> {
    if sys::fallocate(file, Falloc::PunchHole, off, len).is_ok() {
        return Ok(());
    }
    copy::zero_range(file, off, len, crate::Policy::default())
        .map(|_| ())
        .map_err(|e| e.with_path(path).with_op(op.to_string()))
}

impl Overlay {
    /// Merges the overlay into its base, then empties the overlay (it stays
    /// usable, now over the new base). The overlay is flushed first.
    ///
    /// - `Reflink`/`Copy` (plain-file bases): the new base is built aside and
    ///   renamed over the old one: readers that have the old base open keep
    ///   it; a crash leaves the old base or the new one. The base's owner,
    ///   mode and xattrs carry over; it gets a new inode.
    /// - `InPlace`: space for every run is reserved first (`fallocate`; on
    ///   btrfs the free space is checked), so `NoSpace` comes before a byte
    ///   of the base changes. A crash part-way is finished on the next
    ///   read-write open. Over another overlay, always in place (through
    ///   that overlay's own group commit).
    /// - `Auto`: `Reflink`, else `InPlace`.
    ///
    /// # Errors
    /// `Locked` if another process has the base open through budge (another
    /// overlay over it) for an in-place commit; `Conflict` if the base
    /// changed; `NoSpace` (nothing changed); `Unsupported` for a forced
    /// strategy the filesystem lacks.
    pub fn commit(&mut self, opts: &CommitOptions<'_>) -> Result<CommitReport> {
        let op = "commit overlay into its base";
        self.check_write(&|| op.to_string(), 0, 0)?;
        self.flush()?;
        if let Lower::Overlay(_) = self.lower {
            if !matches!(
                opts.strategy,
                CommitStrategy::Auto | CommitStrategy::InPlace
            ) {
                return Err(err(
                    ErrorKind::Unsupported,
                    op,
                    &self.path,
                    format!(
                        "the base is an overlay: it is committed into in place (through its own flush), not by {}",
                        opts.strategy
                    ),
                ));
            }
            self.begin_in_place(op)?;
            return self.replay_into_overlay(op, 0, opts.progress, false);
        }
        match opts.strategy {
            CommitStrategy::InPlace => self.commit_in_place(op, opts.progress),
            CommitStrategy::Copy => self.commit_replace(op, false, opts.progress),
            CommitStrategy::Reflink => self.commit_replace(op, true, opts.progress),
            CommitStrategy::Auto => match self.commit_replace(op, true, opts.progress) {
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    self.commit_in_place(op, opts.progress)
                }
                r => r,
            },
        }
    }

    fn base_file(&self) -> (&Path, &File) {
        match &self.lower {
            Lower::File { path, file, .. } => (path, file),
            Lower::Overlay(o) => (&o.path, &o.file),
        }
    }

    /// Writes the overlay's runs into `dst` (a file of the base's size).
    fn apply_runs(
        &self,
        op: &str,
        dst: &File,
        dst_path: &Path,
        report: &mut CommitReport,
        progress: Option<Progress<'_>>,
    ) -> Result<()> {
        let changes = self.changes();
        let total: u64 = changes.iter().map(|c| c.len).sum();
        let mut done = 0;
        for c in changes {
            match c.state {
                PageState::Present => {
                    let r = copy::copy_range(
                        &self.file,
                        self.sb.data_offset + c.offset,
                        dst,
                        c.offset,
                        c.len,
                        &CopyOptions::default(),
                    )
                    .map_err(|e| e.with_path(dst_path).with_op(op.to_string()))?;
                    report.add(&r);
                }
                PageState::Zero => {
                    zero_in(op, dst_path, dst, c.offset, c.len)?;
                    report.bytes_zeroed += c.len;
                }
                PageState::Absent => {}
            }
            report.pages += c.len.div_ceil(self.ps());
            done += c.len;
            if let Some(p) = progress {
                p(done, total);
            }
        }
        Ok(())
    }

    fn commit_replace(
        &mut self,
        op: &str,
        reflink: bool,
        progress: Option<Progress<'_>>,
    ) -> Result<CommitReport> {
        let (base_path, base) = self.base_file();
        let base_path = base_path.to_path_buf();
        let (cur, _) = meta::identity(base).map_err(|e| os(op, &base_path, "fstat", e))?;
        let dir = publish::dir_of(&base_path);
        let tmp = sys::open_tmpfile(&dir).map_err(|e| {
            let e = os(op, &base_path, "open(O_TMPFILE)", e);
            if e.kind() == ErrorKind::Unsupported {
                e
            } else {
                e.with_hint("the new base is built as an unnamed file in the base's directory")
            }
        })?;
        let mut report = CommitReport {
            strategy: if reflink {
                CommitStrategy::Reflink
            } else {
                CommitStrategy::Copy
            },
            ..CommitReport::default()
        };
        let r = if reflink {
            copy::clone_file(base, &tmp)
        } else {
            copy::copy_file(
                base,
                &tmp,
                &CopyOptions {
                    progress,
                    ..CopyOptions::default()
                },
            )
        }
        .map_err(|e| e.with_path(&base_path).with_op(op.to_string()))?;
        report.add(&r);
        self.apply_runs(op, &tmp, &base_path, &mut report, progress)?;
        sys::fsync(&tmp).map_err(|e| os(op, &base_path, "fsync", e))?;
        let BaseId::File {
            ino,
            mtime_sec,
            mtime_nsec,
            fingerprint,
        } = file_id(&tmp, self.sb.size).map_err(|e| os(op, &base_path, "fstat", e))?
        else {
            unreachable!("file_id gives a file identity")
        };
        let mut next = self.sb.clone();
        next.generation += 1;
        next.commit = CommitState::Publishing {
            ino,
            mtime_sec,
            mtime_nsec,
            fingerprint,
        };
        self.write_state(op, next)?;
        fail::fail_point!("budge::overlay::before-publish", |_| {
            Err(err(
                ErrorKind::Io,
                op,
                &self.path,
                "failpoint budge::overlay::before-publish",
            ))
        });
        // Our own shared lock would make publish wait for itself.
        let _ = sys::unlock(self.base_file().1);
        if let Err(e) = publish::publish(op, &tmp, &base_path, Expect::Version(cur)) {
            let _ = sys::try_lock(self.base_file().1, false);
            let mut next = self.sb.clone();
            next.generation += 1;
            next.commit = CommitState::None;
            self.write_state(op, next)?;
            return Err(e);
        }
        drop(tmp); // publish unlocked it (a forked child may hold a copy)
        let new = BaseId::File {
            ino,
            mtime_sec,
            mtime_nsec,
            fingerprint,
        };
        // The base is replaced: past this point the handle must not take
        // writes it could lose (the next open resets the overlay).
        if let Err(e) = self
            .adopt_new_base(op, &base_path, &new)
            .and_then(|()| self.reset(op, new))
        {
            self.poisoned = true;
            let why = e.hint().unwrap_or_default().to_string();
            return Err(e.with_hint(format!(
                "{why}; the commit is done (the base holds the merged content), but the overlay could not be emptied: reopen it, the open finishes that"
            )));
        }
        Ok(report)
    }

    /// Reopens the base at `path` and checks it is `new`.
    fn adopt_new_base(&mut self, op: &str, path: &Path, new: &BaseId) -> Result<()> {
        let lower = Lower::open(path, 0)?;
        let now = lower.id()?;
        if &now != new || lower.size() != self.sb.size {
            return Err(err(
                ErrorKind::Conflict,
                op,
                &self.path,
                format!(
                    "the base {} was replaced again right after the commit; the overlay is left as it is",
                    path.display()
                ),
            ));
        }
        self.lower = lower;
        Ok(())
    }

    /// Empties the overlay over the base `base` (after a commit).
    fn reset(&mut self, op: &str, base: BaseId) -> Result<()> {
        let pages = self.map.pages();
        self.pending_punch.push((0, pages));
        self.map.set(0, pages, PageState::Absent);
        let mut next = self.sb.clone();
        next.generation += 1;
        next.base = base;
        next.commit = CommitState::None;
        self.write_state(op, next)?;
        self.map_dirty = false;
        self.data_dirty = false;
        self.punch_pending();
        if self.view.is_some() {
            self.view = None;
            self.map_view()?;
        }
        Ok(())
    }

    /// Opens the base read-write with an exclusive lock (the read-only
    /// handle's shared lock is dropped first and taken back on failure).
    fn lock_base_rw(&mut self, op: &str) -> Result<File> {
        let (path, ro) = self.base_file();
        let path = path.to_path_buf();
        let ino = ro.metadata().map_err(|e| os(op, &path, "fstat", e))?.ino();
        let rw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| os(op, &path, "open", e))?;
        let m = rw.metadata().map_err(|e| os(op, &path, "fstat", e))?;
        if m.ino() != ino {
            return Err(err(
                ErrorKind::Conflict,
                op,
                &path,
                "the base was replaced while the overlay was open",
            ));
        }
        let _ = sys::unlock(ro);
        match sys::try_lock(&rw, true) {
            Ok(()) => Ok(rw),
            Err(e) => {
                let _ = sys::try_lock(self.base_file().1, false);
                if e.kind() == IoKind::WouldBlock {
                    Err(super::locked(
                        op,
                        &path,
                        &rw,
                        "other processes read the base through budge (another overlay over it?); an in-place commit would change it under them",
                    ))
                } else {
                    Err(os(op, &path, "flock", e))
                }
            }
        }
    }

    fn commit_in_place(
        &mut self,
        op: &str,
        progress: Option<Progress<'_>>,
    ) -> Result<CommitReport> {
        let rw = self.lock_base_rw(op)?;
        let base_path = self.base_file().0.to_path_buf();
        let m = rw.metadata().map_err(|e| os(op, &base_path, "fstat", e))?;
        // Recorded first: `fallocate` changes the base's mtime, so a crash
        // during the reservation must find the commit recorded (and finish
        // it) rather than a base whose identity no longer matches.
        if let Err(e) = self.begin_in_place(op) {
            let _ = sys::try_lock(self.base_file().1, false);
            return Err(e);
        }
        if let Err(e) = self.reserve(op, &rw, &base_path) {
            // Not a byte of the base changed (holes became unwritten extents
            // that read as zeros); put its mtime back, make that durable,
            // then forget the commit.
            let _ = sys::set_mtime(&rw, m.mtime(), m.mtime_nsec() as u32);
            sys::fsync(&rw).map_err(|e| os(op, &base_path, "fsync", e))?;
            let mut next = self.sb.clone();
            next.generation += 1;
            next.commit = CommitState::None;
            self.write_state(op, next)?;
            drop(rw);
            let _ = sys::try_lock(self.base_file().1, false);
            return Err(e);
        }
        self.replay_into_file(op, rw, 0, progress, false)
    }

    /// Makes sure writing every run into `rw` cannot fail for want of space.
    fn reserve(&self, op: &str, rw: &File, path: &Path) -> Result<()> {
        let changes = self.changes();
        let data: u64 = changes
            .iter()
            .filter(|c| c.state == PageState::Present)
            .map(|c| c.len)
            .sum();
        let fs = sys::fs_info(rw).map_err(|e| os(op, path, "fstatfs", e))?;
        if fs.kind == FsKind::Btrfs && fs.avail_bytes < data {
            return Err(err(
                ErrorKind::NoSpace,
                op,
                path,
                format!(
                    "writing {} in place needs that much free space on btrfs (copy-on-write); {} is free. Nothing was written",
                    fmt_size(data),
                    fmt_size(fs.avail_bytes)
                ),
            ));
        }
        for c in changes.iter().filter(|c| c.state == PageState::Present) {
            match sys::fallocate(rw, Falloc::AllocateKeepSize, c.offset, c.len) {
                Ok(()) => {}
                Err(e) if crate::error::kind_of(&e) == ErrorKind::Unsupported => return Ok(()),
                Err(e) => {
                    return Err(os(op, path, "fallocate(KEEP_SIZE)", e).with_hint(format!(
                        "reserving space for {} of changes before writing any; nothing was written",
                        fmt_size(data)
                    )))
                }
            }
        }
        Ok(())
    }

    fn begin_in_place(&mut self, op: &str) -> Result<()> {
        let mut next = self.sb.clone();
        next.generation += 1;
        next.commit = CommitState::InPlace { cursor: 0 };
        self.write_state(op, next)
    }

    fn set_cursor(&mut self, op: &str, cursor: u64) -> Result<()> {
        let mut next = self.sb.clone();
        next.generation += 1;
        next.commit = CommitState::InPlace { cursor };
        self.write_state(op, next)
    }

    /// Pieces of the runs from page `cursor` on, at most `SYNC_EVERY` long:
    /// `(first page, end page, state)`.
    fn pieces_from(&self, cursor: u64) -> Vec<(u64, u64, PageState)> {
        let step = (SYNC_EVERY / self.ps()).max(1);
        let mut v = Vec::new();
        for (s, e, st) in self.map.runs(cursor, self.map.pages()) {
            if st == PageState::Absent {
                continue;
            }
            let mut a = s;
            while a < e {
                let b = (a + step).min(e);
                v.push((a, b, st));
                a = b;
            }
        }
        v
    }

    /// Writes the overlay's pages from page `cursor` on into the commit's
    /// target, piece by piece ([`Overlay::pieces_from`]): `target` applies
    /// each [`Replay::Piece`] (adding what it wrote to the report), and
    /// after every [`SYNC_EVERY`] bytes makes the target durable
    /// ([`Replay::Sync`]) before the recorded cursor moves past them, so a
    /// crash resumes from the last durable piece. The final sync is the
    /// caller's.
    fn replay_pieces(
        &mut self,
        op: &str,
        cursor: u64,
        progress: Option<Progress<'_>>,
        report: &mut CommitReport,
        mut target: impl FnMut(&Overlay, Replay, &mut CommitReport) -> Result<()>,
    ) -> Result<()> {
        let ps = self.ps();
        let size = self.sb.size;
        let pieces = self.pieces_from(cursor);
        let total: u64 = pieces.iter().map(|p| (p.1 - p.0) * ps).sum();
        let (mut done, mut since) = (0, 0);
        for (i, &(s, e, state)) in pieces.iter().enumerate() {
            let (at, len) = (s * ps, (e * ps).min(size) - s * ps);
            target(self, Replay::Piece { at, len, state }, report)?;
            report.pages += e - s;
            done += len;
            since += len;
            if let Some(p) = progress {
                p(done, total);
            }
            if since >= SYNC_EVERY && i + 1 < pieces.len() {
                target(self, Replay::Sync, report)?;
                self.set_cursor(op, e)?;
                since = 0;
            }
        }
        Ok(())
    }

    fn replay_into_file(
        &mut self,
        op: &str,
        rw: File,
        cursor: u64,
        progress: Option<Progress<'_>>,
        recovered: bool,
    ) -> Result<CommitReport> {
        let path = self.base_file().0.to_path_buf();
        let size = self.sb.size;
        let mut report = CommitReport {
            strategy: CommitStrategy::InPlace,
            recovered,
            ..CommitReport::default()
        };
        self.replay_pieces(op, cursor, progress, &mut report, |ov, step, report| {
            let (a, n, st) = match step {
                Replay::Sync => {
                    return sys::fdatasync(&rw).map_err(|e| os(op, &path, "fdatasync", e));
                }
                Replay::Piece { at, len, state } => (at, len, state),
            };
            match st {
                PageState::Present => {
                    let r = copy::copy_range(
                        &ov.file,
                        ov.sb.data_offset + a,
                        &rw,
                        a,
                        n,
                        &CopyOptions::default(),
                    )
                    .map_err(|e| {
                        e.with_path(&path).with_op(op.to_string()).with_kind(ErrorKind::PartiallyApplied).with_hint(
                            "the commit stopped part-way: the base holds part of the overlay's changes. The overlay still holds all of them; opening it read-write (or committing again) finishes the commit",
                        )
                    })?;
                    report.add(&r);
                }
                _ => {
                    zero_in(op, &path, &rw, a, n)?;
                    report.bytes_zeroed += n;
                }
            }
            fail::fail_point!("budge::overlay::in-place-piece", |_| {
                Err(err(
                    ErrorKind::Io,
                    op,
                    &ov.path,
                    "failpoint budge::overlay::in-place-piece",
                ))
            });
            Ok(())
        })?;
        sys::fsync(&rw).map_err(|e| os(op, &path, "fsync", e))?;
        let new = file_id(&rw, size).map_err(|e| os(op, &path, "fstat", e))?;
        // Downgrade to the shared lock every reader of the base holds.
        sys::try_lock(&rw, false).map_err(|e| os(op, &path, "flock", e))?;
        self.lower = Lower::File {
            path,
            file: rw,
            size,
        };
        self.reset(op, new)?;
        Ok(report)
    }

    fn replay_into_overlay(
        &mut self,
        op: &str,
        cursor: u64,
        progress: Option<Progress<'_>>,
        recovered: bool,
    ) -> Result<CommitReport> {
        let Lower::Overlay(lower) = &self.lower else {
            unreachable!("replay_into_overlay over a plain file")
        };
        let lower_path = lower.path.clone();
        let _ = sys::unlock(&lower.file);
        let mut lw = match Overlay::open(&lower_path) {
            Ok(o) => o,
            Err(e) => {
                if let Lower::Overlay(lower) = &self.lower {
                    let _ = sys::try_lock(&lower.file, false);
                }
                return Err(e.with_op(format!("{op}: open the lower overlay for writing")));
            }
        };
        let mut report = CommitReport {
            strategy: CommitStrategy::InPlace,
            recovered,
            ..CommitReport::default()
        };
        let mut buf = Vec::new();
        self.replay_pieces(op, cursor, progress, &mut report, |ov, step, report| {
            match step {
                Replay::Sync => lw.flush()?,
                Replay::Piece {
                    at,
                    len,
                    state: PageState::Present,
                } => {
                    buf.resize(len as usize, 0);
                    ov.file
                        .read_exact_at(&mut buf, ov.sb.data_offset + at)
                        .map_err(|e| os(op, &ov.path, "pread", e))?;
                    lw.write_at(at, &buf)?;
                    report.bytes_copied += len;
                }
                Replay::Piece { at, len, .. } => {
                    lw.zero(at, len)?;
                    report.bytes_zeroed += len;
                }
            }
            Ok(())
        })?;
        lw.flush()?;
        let new = BaseId::Overlay {
            uuid: lw.sb.uuid,
            generation: lw.sb.generation,
        };
        drop(lw);
        let lower = Lower::open(&lower_path, 0)?;
        if lower.id()? != new {
            return Err(err(
                ErrorKind::Conflict,
                op,
                &self.path,
                "the lower overlay was written by another process right after the commit",
            ));
        }
        self.lower = lower;
        self.reset(op, new)?;
        Ok(report)
    }

    /// Finishes or undoes a commit recorded in the superblock (read-write
    /// opens only).
    pub(super) fn recover(&mut self) -> Result<()> {
        let op = "finish an interrupted commit";
        match self.sb.commit.clone() {
            CommitState::None => Ok(()),
            CommitState::Publishing {
                ino,
                mtime_sec,
                mtime_nsec,
                fingerprint,
            } => {
                let new = BaseId::File {
                    ino,
                    mtime_sec,
                    mtime_nsec,
                    fingerprint,
                };
                let now = self.lower.id()?;
                let path = self.base_file().0.to_path_buf();
                let _ = publish::cleanup(&path);
                if now == new {
                    self.reset(op, new)
                } else if now == self.sb.base {
                    let mut next = self.sb.clone();
                    next.generation += 1;
                    next.commit = CommitState::None;
                    self.write_state(op, next)
                } else {
                    Err(err(
                        ErrorKind::Conflict,
                        op,
                        &self.path,
                        format!(
                            "a commit into {} was interrupted and the base is now neither the old nor the new version",
                            path.display()
                        ),
                    ))
                }
            }
            CommitState::InPlace { cursor } => {
                if let Lower::Overlay(_) = self.lower {
                    self.replay_into_overlay(op, cursor, None, true).map(|_| ())
                } else {
                    let rw = self.lock_base_rw(op)?;
                    self.replay_into_file(op, rw, cursor, None, true)
                        .map(|_| ())
                }
            }
        }
    }

    /// Writes the merged view to a new plain file at `dest` (sparse where the
    /// view has holes: the base's holes and zero pages; reflinked where the
    /// filesystem can). The file appears complete or not at all. Unflushed
    /// writes are included.
    ///
    /// # Errors
    /// `InvalidArgument` if `dest` exists and not `overwrite`; `NoSpace`
    /// (nothing is left behind).
    pub fn export(
        &self,
        dest: impl AsRef<Path>,
        overwrite: bool,
        progress: Option<Progress<'_>>,
    ) -> Result<ExportReport> {
        let dest = dest.as_ref();
        let op = "export overlay";
        if !overwrite && std::fs::symlink_metadata(dest).is_ok() {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                dest,
                "a file already exists there; pass overwrite (--force)",
            ));
        }
        let dir: PathBuf = publish::dir_of(dest);
        let tmp = sys::open_tmpfile(&dir).map_err(|e| os(op, dest, "open(O_TMPFILE)", e))?;
        let size = self.sb.size;
        tmp.set_len(size)
            .map_err(|e| os(op, dest, "ftruncate", e))?;
        let mut report = ExportReport::default();
        let mut done = 0;
        self.each_source(0, size, &mut |off, n, src| {
            match src {
                Src::Zero => report.hole_bytes += n,
                Src::File(f, pos) => {
                    let r = copy::copy_range(f, pos, &tmp, off, n, &CopyOptions::default())
                        .map_err(|e| e.with_path(dest).with_op(op.to_string()))?;
                    report.bytes_cloned += r.bytes_cloned;
                    report.bytes_copied += r.bytes_copied;
                    report.hole_bytes += r.hole_bytes;
                }
            }
            done += n;
            if let Some(p) = progress {
                p(done, size);
            }
            Ok(())
        })?;
        let expect = if overwrite {
            Expect::Anything
        } else {
            Expect::Absent
        };
        publish::publish(op, &tmp, dest, expect)?;
        Ok(report)
    }
}
