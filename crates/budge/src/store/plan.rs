//! Pure arithmetic of the store: capacity growth, and the recovery planner
//! that decides, from the intent's journal and the file's current extent map,
//! how far an interrupted native shift got and which (idempotent) steps
//! complete it. No I/O, so every case is unit-tested without a filesystem.
//!
//! # Why the planner can work at all
//!
//! `fallocate(INSERT_RANGE)` and `COLLAPSE_RANGE` move extents, not blocks:
//! a data block keeps its device address and only its file offset changes by
//! the shift distance `d`. XFS shifts one extent per transaction and ext4
//! restarts its journal handle when credits run out, so a crash can leave the
//! tail part-shifted. Both walk the tail in one direction (insert: from the
//! last extent down; collapse: from the first up), so the part-shifted state
//! always has the same shape:
//!
//! ```text
//! insert:    [unshifted prefix][hole >= d][suffix shifted up by d]
//! collapse:  [prefix shifted down by d][hole >= d][unshifted suffix]
//! ```
//!
//! The journal records each data extent of the tail with its device address
//! before the shift; looking each one up in the current map says which side
//! of the boundary it is on. Collapsing `d` bytes of the hole in the middle
//! turns a part-done insert back into "not started" and a part-done collapse
//! into "done", and a collapse of a hole again leaves the same shape if it is
//! itself interrupted, so recovery can be interrupted and rerun.

use super::format::{Intent, IntentKind, JournalEntry};

/// One extent of the current file, as FIEMAP reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MapExtent {
    /// File offset.
    pub logical: u64,
    /// Device offset.
    pub physical: u64,
    /// Length.
    pub len: u64,
}

/// How far a native shift got.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// No journalled extent moved.
    NotStarted,
    /// Some moved; the boundary (in pre-shift file offsets) is between the
    /// two given offsets.
    Partial {
        /// End of the last extent still at its pre-shift offset (insert) or
        /// of the last one already moved (collapse), in pre-shift offsets.
        low: u64,
        /// Start of the first extent already moved (insert) or still
        /// unmoved (collapse), in pre-shift offsets.
        high: u64,
    },
    /// Every journalled extent moved.
    Done,
}

/// A step of recovery, in current file offsets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `fallocate(COLLAPSE_RANGE)` (always of a range the plan proved to be a
    /// hole, or the intent's own range).
    Collapse {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// `fallocate(INSERT_RANGE)` (the intent's own insert).
    Insert {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// `ftruncate`, only over a range the plan proved to be a hole.
    SetSize(u64),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Where {
    Unshifted,
    Shifted,
}

/// Physical address of file offset `x` in `map` (sorted by logical).
fn phys_at(map: &[MapExtent], x: u64) -> Option<(u64, u64)> {
    let i = map.partition_point(|e| e.logical + e.len <= x);
    let e = map.get(i)?;
    if e.logical <= x {
        Some((e.physical + (x - e.logical), e.logical + e.len - x))
    } else {
        None
    }
}

/// Whether `[start, end)` holds no data in `map`.
fn is_hole(map: &[MapExtent], start: u64, end: u64) -> bool {
    let i = map.partition_point(|e| e.logical + e.len <= start);
    map.get(i).is_none_or(|e| e.logical >= end)
}

/// Splits the journal into pieces by where each now is.
fn classify(
    intent: &Intent,
    journal: &[JournalEntry],
    map: &[MapExtent],
) -> Result<Vec<(u64, u64, Where)>, String> {
    let d = intent.len;
    let mut out: Vec<(u64, u64, Where)> = Vec::new();
    for j in journal {
        let mut x = j.logical;
        let end = j.logical + j.len;
        while x < end {
            let p = j.physical + (x - j.logical);
            let moved = match intent.kind {
                IntentKind::Insert => x.checked_add(d),
                IntentKind::Collapse => x.checked_sub(d),
            };
            let (w, run) = match phys_at(map, x) {
                Some((q, run)) if q == p => (Where::Unshifted, run),
                _ => match moved.and_then(|m| phys_at(map, m)) {
                    Some((q, run)) if q == p => (Where::Shifted, run),
                    _ => {
                        return Err(format!(
                            "the journalled data block at file offset {x} (device offset {p}) is \
                             neither at {x} nor {} bytes {}",
                            d,
                            match intent.kind {
                                IntentKind::Insert => "higher",
                                IntentKind::Collapse => "lower",
                            }
                        ))
                    }
                },
            };
            let n = run.min(end - x);
            match out.last_mut() {
                Some(last) if last.1 == x && last.2 == w => last.1 += n,
                _ => out.push((x, x + n, w)),
            }
            x += n;
        }
    }
    Ok(out)
}

/// How far the shift described by `intent` got, judging by where the
/// journalled extents are in `map`.
///
/// # Errors
/// A description if an extent is in neither place or the pieces do not have
/// the one-boundary shape (something other than the shift moved them).
pub fn progress(
    intent: &Intent,
    journal: &[JournalEntry],
    map: &[MapExtent],
) -> Result<Progress, String> {
    let pieces = classify(intent, journal, map)?;
    let first = |w| pieces.iter().find(|p| p.2 == w).map(|p| p.0);
    let last_end = |w| pieces.iter().rev().find(|p| p.2 == w).map(|p| p.1);
    let (low, high) = match intent.kind {
        // Unshifted prefix, then shifted suffix.
        IntentKind::Insert => (last_end(Where::Unshifted), first(Where::Shifted)),
        // Shifted prefix, then unshifted suffix.
        IntentKind::Collapse => (last_end(Where::Shifted), first(Where::Unshifted)),
    };
    Ok(match (low, high) {
        (None, None) => Progress::NotStarted, // no data in the tail: size decides
        (Some(_), None) => match intent.kind {
            IntentKind::Insert => Progress::NotStarted,
            IntentKind::Collapse => Progress::Done,
        },
        (None, Some(_)) => match intent.kind {
            IntentKind::Insert => Progress::Done,
            IntentKind::Collapse => Progress::NotStarted,
        },
        (Some(low), Some(high)) if low <= high => Progress::Partial { low, high },
        (Some(low), Some(high)) => {
            return Err(format!(
                "moved and unmoved extents interleave ({low} > {high}): not the shape a \
                 part-done shift leaves"
            ))
        }
    })
}

/// The steps that complete the shift from its current state. Empty when the
/// file already matches. Every step is safe to repeat after a crash in the
/// middle of recovery (the next plan starts from whatever state that left).
///
/// # Errors
/// A description when the state is not one a part-done shift can leave.
pub fn plan(
    intent: &Intent,
    journal: &[JournalEntry],
    map: &[MapExtent],
    size: u64,
) -> Result<Vec<Step>, String> {
    let (e, d, s) = (intent.offset, intent.len, intent.old_size);
    let target = intent.new_size();
    let prog = progress(intent, journal, map)?;
    let hole = |a: u64, b: u64| -> Result<(), String> {
        if is_hole(map, a, b) {
            Ok(())
        } else {
            Err(format!("expected a hole at [{a}, {b}) but found data"))
        }
    };
    let mut steps = Vec::new();
    match (intent.kind, prog) {
        (IntentKind::Insert, Progress::Done) => {
            // The kernel sets an insert's size before moving anything, so a
            // shorter file was truncated by something else: data is gone.
            if size < target {
                return Err(format!(
                    "the file is {size} bytes, shorter than after the insert ({target}): truncated?"
                ));
            }
            if size > target {
                hole(target, size)?;
                steps.push(Step::SetSize(target));
            }
        }
        (IntentKind::Insert, Progress::NotStarted) => {
            if journal.is_empty() && size == target && e + d <= size {
                // Nothing to tell apart: an all-hole tail reads the same
                // shifted or not, so only the size matters.
                return Ok(steps);
            }
            if size < s {
                return Err(format!(
                    "the file is {size} bytes, shorter than before the insert ({s})"
                ));
            }
            if size > s {
                hole(s, size)?; // XFS and ext4 set the new size first
                steps.push(Step::SetSize(s));
            }
            steps.push(Step::Insert { offset: e, len: d });
        }
        (IntentKind::Insert, Progress::Partial { low, high }) => {
            // Unshifted data ends at `low`, shifted data starts at `high + d`:
            // [low, low + d) is a hole; removing it undoes the part done.
            hole(low, high + d)?;
            steps.push(Step::Collapse {
                offset: low,
                len: d,
            });
            let after = size.checked_sub(d).ok_or("file shorter than the shift")?;
            if after > s {
                steps.push(Step::SetSize(s));
            }
            steps.push(Step::Insert { offset: e, len: d });
        }
        (IntentKind::Collapse, Progress::Done) => {
            if size != target {
                if size < target {
                    return Err(format!(
                        "the file is {size} bytes, shorter than after the collapse ({target})"
                    ));
                }
                hole(target, size)?; // the size is set last
                steps.push(Step::SetSize(target));
            }
        }
        (IntentKind::Collapse, Progress::NotStarted) => {
            if size == target && journal.is_empty() {
                return Ok(steps); // done (the size is set last), or all holes
            }
            if size != s {
                return Err(format!(
                    "collapse not started but the file is {size} bytes, not {s}"
                ));
            }
            steps.push(Step::Collapse { offset: e, len: d });
        }
        (IntentKind::Collapse, Progress::Partial { low, high }) => {
            // Moved data ends at `low - d`, unmoved data starts at `high`.
            let from = low - d;
            hole(from, high)?;
            steps.push(Step::Collapse {
                offset: from,
                len: d,
            });
        }
    }
    Ok(steps)
}

/// The journal in canonical form: pieces that are contiguous both in the
/// file and on the device merged into one, so two extent listings of the
/// same data compare equal however the filesystem splits its records (XFS
/// merges extents a collapse brings together; written and unwritten
/// neighbours are separate records).
pub fn canonical(j: &[JournalEntry]) -> Vec<JournalEntry> {
    let mut out: Vec<JournalEntry> = Vec::with_capacity(j.len());
    for e in j.iter().filter(|e| e.len > 0) {
        match out.last_mut() {
            Some(l) if l.logical + l.len == e.logical && l.physical + l.len == e.physical => {
                l.len += e.len;
            }
            _ => out.push(*e),
        }
    }
    out
}

/// Count and CRC-32C of a canonical journal, as a commit record stores them.
pub fn digest(canon: &[JournalEntry]) -> (u32, u32) {
    let (_, crc) = super::format::encode_journal(canon);
    (canon.len() as u32, crc)
}

/// The pre-shift tail range `[lo, hi)` the journal covers.
fn tail_range(intent: &Intent) -> (u64, u64) {
    match intent.kind {
        IntentKind::Insert => (intent.offset, intent.old_size),
        IntentKind::Collapse => (intent.offset + intent.len, intent.old_size),
    }
}

/// The data of current `[a, b)`, moved by `delta` (pre-shift offsets), in
/// pieces clipped to the range.
fn pieces_in(
    map: &[MapExtent],
    a: u64,
    b: u64,
    back: impl Fn(u64) -> u64,
    out: &mut Vec<JournalEntry>,
) {
    if a >= b {
        return;
    }
    let i = map.partition_point(|e| e.logical + e.len <= a);
    for e in &map[i..] {
        if e.logical >= b {
            break;
        }
        let s = e.logical.max(a);
        let t = (e.logical + e.len).min(b);
        out.push(JournalEntry {
            logical: back(s),
            physical: e.physical + (s - e.logical),
            len: t - s,
        });
    }
}

/// Rebuilds the canonical journal of a commit record's shift from the
/// current extent map, for recovery, which has no journal written down.
///
/// A shift cut short has one boundary (see the module docs): in pre-shift
/// offsets, the tail below it is at its old place and the tail above it
/// moved by `d` (insert), or the reverse (collapse). Each boundary gives
/// one candidate journal; candidates only differ if data lies between
/// their boundaries, and then the count and CRC the record holds
/// (`intent.journal_count`, `intent.journal_crc`) tell them apart. The
/// boundaries worth trying are "not started", "done" and one per hole of at
/// least `d` bytes in the current tail (the gap the shift opened sits in
/// one), so the cost is O(holes x extents).
///
/// # Errors
/// A description when no candidate matches: something other than the
/// shift changed the file's extents (a byte copy, a defragmentation).
pub fn reconstruct(intent: &Intent, map: &[MapExtent]) -> Result<Vec<JournalEntry>, String> {
    let d = intent.len;
    let (lo, hi) = tail_range(intent);
    // Boundaries, in pre-shift offsets.
    let mut cands: Vec<u64> = vec![lo, hi];
    let (scan_a, scan_b) = match intent.kind {
        IntentKind::Insert => (lo, hi.saturating_add(d)),
        IntentKind::Collapse => (lo.saturating_sub(d), hi),
    };
    let mut at = scan_a;
    let i = map.partition_point(|e| e.logical + e.len <= scan_a);
    let mut holes: Vec<(u64, u64)> = Vec::new();
    for e in map[i..].iter().take_while(|e| e.logical < scan_b) {
        if e.logical > at {
            holes.push((at, e.logical));
        }
        at = at.max(e.logical + e.len);
    }
    if at < scan_b {
        holes.push((at, scan_b));
    }
    for (h0, h1) in holes {
        if h1 - h0 >= d {
            let x = match intent.kind {
                IntentKind::Insert => h0,
                IntentKind::Collapse => h0 + d,
            };
            cands.push(x.clamp(lo, hi));
        }
    }
    cands.sort_unstable();
    cands.dedup();
    let want = (intent.journal_count, intent.journal_crc);
    for x in cands {
        let mut j = Vec::new();
        match intent.kind {
            IntentKind::Insert => {
                pieces_in(map, lo, x, |o| o, &mut j);
                pieces_in(map, x + d, hi + d, |o| o - d, &mut j);
            }
            IntentKind::Collapse => {
                pieces_in(map, lo - d, x - d, |o| o + d, &mut j);
                pieces_in(map, x, hi, |o| o, &mut j);
            }
        }
        let c = canonical(&j);
        if c.len() as u32 == want.0 && digest(&c) == want {
            return Ok(c);
        }
    }
    Err(format!(
        "no way the shift could have been cut matches the commit record's journal \
         ({} extents, CRC {:#010x}): the file's extents changed otherwise",
        want.0, want.1
    ))
}

/// Applies `steps` to a model of the extent map, for tests: returns the map
/// and size after them.
#[cfg(test)]
fn apply(map: &[MapExtent], size: u64, steps: &[Step]) -> (Vec<MapExtent>, u64) {
    let mut m = map.to_vec();
    let mut size = size;
    for s in steps {
        match *s {
            Step::SetSize(n) => {
                m.retain(|e| e.logical < n);
                for e in &mut m {
                    e.len = e.len.min(n - e.logical);
                }
                size = n;
            }
            Step::Insert { offset, len } => {
                m = split(&m, offset);
                for e in &mut m {
                    if e.logical >= offset {
                        e.logical += len;
                    }
                }
                size += len;
            }
            Step::Collapse { offset, len } => {
                m = split(&split(&m, offset), offset + len);
                m.retain(|e| e.logical < offset || e.logical >= offset + len);
                for e in &mut m {
                    if e.logical >= offset + len {
                        e.logical -= len;
                    }
                }
                size -= len;
            }
        }
    }
    (m, size)
}

#[cfg(test)]
fn split(m: &[MapExtent], at: u64) -> Vec<MapExtent> {
    let mut out = Vec::new();
    for e in m {
        if e.logical < at && at < e.logical + e.len {
            let a = at - e.logical;
            out.push(MapExtent { len: a, ..*e });
            out.push(MapExtent {
                logical: at,
                physical: e.physical + a,
                len: e.len - a,
            });
        } else {
            out.push(*e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::Method;
    use proptest::prelude::*;

    const B: u64 = 4096;

    fn intent(kind: IntentKind, e: u64, d: u64, s: u64) -> Intent {
        Intent {
            kind,
            method: Method::Native,
            offset: e,
            len: d,
            old_size: s,
            journal_count: 0,
            journal_crc: 0,
        }
    }

    fn journal_of(map: &[MapExtent], lo: u64, hi: u64) -> Vec<JournalEntry> {
        split(&split(map, lo), hi)
            .into_iter()
            .filter(|e| e.logical >= lo && e.logical < hi)
            .map(|e| JournalEntry {
                logical: e.logical,
                physical: e.physical,
                len: e.len,
            })
            .collect()
    }

    /// Data blocks by file offset -> physical, for comparing outcomes
    /// regardless of how extents are split.
    fn blocks(m: &[MapExtent]) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = m
            .iter()
            .flat_map(|e| (0..e.len / B).map(move |k| (e.logical + k * B, e.physical + k * B)))
            .collect();
        v.sort_unstable();
        v
    }

    /// The kernel's order: insert moves extents from the last one down,
    /// collapse from the first one up; `done` extents have moved. XFS and
    /// ext4 set an insert's new size first and a collapse's last.
    /// `done == 0`: untouched; `done == k >= 1`: the first step (insert:
    /// new size; collapse: free the range) and `k - 1` extents moved.
    fn partial(map: &[MapExtent], i: &Intent, done: usize) -> (Vec<MapExtent>, u64) {
        let (e, d, s) = (i.offset, i.len, i.old_size);
        if done == 0 {
            return (map.to_vec(), s);
        }
        let done = done - 1;
        match i.kind {
            IntentKind::Insert => {
                let mut m = split(map, e);
                let tail: Vec<usize> = (0..m.len()).filter(|&k| m[k].logical >= e).collect();
                for &k in tail.iter().rev().take(done) {
                    m[k].logical += d;
                }
                (m, s + d)
            }
            IntentKind::Collapse => {
                let mut m = split(&split(map, e), e + d);
                m.retain(|x| x.logical < e || x.logical >= e + d);
                let tail: Vec<usize> = (0..m.len()).filter(|&k| m[k].logical >= e + d).collect();
                let all = done >= tail.len();
                for &k in tail.iter().take(done) {
                    m[k].logical -= d;
                }
                (m, if all { s - d } else { s })
            }
        }
    }

    /// The shift a property case describes: `(kind, offset, distance,
    /// old size)` in bytes, or `None` for a collapse past EOF.
    fn shift_case(
        n: usize,
        at: usize,
        d: u64,
        insert: bool,
    ) -> Option<(IntentKind, u64, u64, u64)> {
        let n = n as u64;
        let (s, e, d) = (n * B, (at as u64 % n) * B, d * B);
        if !insert && e + d > s {
            return None;
        }
        let kind = if insert {
            IntentKind::Insert
        } else {
            IntentKind::Collapse
        };
        Some((kind, e, d, s))
    }

    /// The tail's journal before the shift `i`.
    fn tail_journal(map: &[MapExtent], i: &Intent) -> Vec<JournalEntry> {
        let (lo, hi) = tail_range(i);
        journal_of(map, lo, hi)
    }

    /// The whole shift `i` as one step.
    fn whole(i: &Intent) -> Vec<Step> {
        let (offset, len) = (i.offset, i.len);
        match i.kind {
            IntentKind::Insert => vec![Step::Insert { offset, len }],
            IntentKind::Collapse => vec![Step::Collapse { offset, len }],
        }
    }

    fn map_from(blocks_data: &[bool]) -> Vec<MapExtent> {
        // Each data block its own extent, physical addresses scattered.
        blocks_data
            .iter()
            .enumerate()
            .filter(|(_, &b)| b)
            .map(|(k, _)| MapExtent {
                logical: k as u64 * B,
                physical: (1 << 30) + (k as u64 * 7919 % 1000) * B * 3,
                len: B,
            })
            .collect()
    }

    proptest! {
        #[test]
        fn recovery_completes_any_partial_shift(
            data in proptest::collection::vec(any::<bool>(), 2..40),
            at in 0usize..40, d in 1u64..6, insert in any::<bool>(), done in 0usize..50,
        ) {
            let Some((kind, e, d, s)) = shift_case(data.len(), at, d, insert) else { return Ok(()) };
            let map = map_from(&data);
            let i = intent(kind, e, d, s);
            let journal = tail_journal(&map, &i);
            // The expected final state: the whole shift applied.
            let (want, want_size) = apply(&map, s, &whole(&i));
            let (now, size) = partial(&map, &i, done);
            let steps = plan(&i, &journal, &now, size).map_err(TestCaseError::fail)?;
            let (got, got_size) = apply(&now, size, &steps);
            prop_assert_eq!(got_size, want_size);
            prop_assert_eq!(blocks(&got), blocks(&want));
            // Recovery is idempotent: planning again finds nothing to do.
            let again = plan(&i, &journal, &got, got_size).map_err(TestCaseError::fail)?;
            prop_assert!(again.is_empty(), "second plan {:?}", again);
            // And a crash in the middle of recovery's own steps is recoverable.
            for k in 0..steps.len() {
                let (mid, mid_size) = apply(&now, size, &steps[..k]);
                let rest = plan(&i, &journal, &mid, mid_size).map_err(TestCaseError::fail)?;
                let (fin, fin_size) = apply(&mid, mid_size, &rest);
                prop_assert_eq!(fin_size, want_size);
                prop_assert_eq!(blocks(&fin), blocks(&want));
            }
        }
    }

    proptest! {
        #[test]
        fn reconstruct_finds_the_journal_of_any_partial_shift(
            data in proptest::collection::vec(any::<bool>(), 2..40),
            at in 0usize..40, d in 1u64..6, insert in any::<bool>(), done in 0usize..50,
            contiguous in any::<bool>(),
        ) {
            let Some((kind, e, d, s)) = shift_case(data.len(), at, d, insert) else { return Ok(()) };
            let mut map = map_from(&data);
            if contiguous {
                // Physically contiguous neighbours: canonical form merges them.
                for (k, x) in map.iter_mut().enumerate() {
                    x.physical = (1 << 30) + x.logical + (k as u64 / 3) * B * 100;
                }
            }
            let mut i = intent(kind, e, d, s);
            let journal = tail_journal(&map, &i);
            let canon = canonical(&journal);
            (i.journal_count, i.journal_crc) = digest(&canon);
            let (now, size) = partial(&map, &i, done);
            let got = reconstruct(&i, &now).map_err(TestCaseError::fail)?;
            prop_assert_eq!(blocks_j(&got), blocks_j(&journal));
            // And the plan from it completes the shift.
            let (want, want_size) = apply(&map, s, &whole(&i));
            let steps = plan(&i, &got, &now, size).map_err(TestCaseError::fail)?;
            let (fin, fin_size) = apply(&now, size, &steps);
            prop_assert_eq!(fin_size, want_size);
            prop_assert_eq!(blocks(&fin), blocks(&want));
        }
    }

    fn blocks_j(j: &[JournalEntry]) -> Vec<(u64, u64)> {
        blocks(
            &j.iter()
                .map(|e| MapExtent {
                    logical: e.logical,
                    physical: e.physical,
                    len: e.len,
                })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn reconstruct_refuses_a_moved_block() {
        let map = map_from(&[true, false, true, true]);
        let mut i = intent(IntentKind::Insert, B, B, 4 * B);
        (i.journal_count, i.journal_crc) = digest(&canonical(&journal_of(&map, B, 4 * B)));
        let mut moved = map.clone();
        moved[2].physical += 12345 * B;
        assert!(reconstruct(&i, &moved).is_err());
        assert!(reconstruct(&i, &map).is_ok());
    }

    #[test]
    fn a_block_in_neither_place_is_refused() {
        let map = map_from(&[true, true, true]);
        let i = intent(IntentKind::Insert, B, B, 3 * B);
        let journal = journal_of(&map, B, 3 * B);
        let mut moved = map.clone();
        moved[2].physical += 12345 * B;
        assert!(plan(&i, &journal, &moved, 4 * B).is_err());
    }
}

/// Capacity for a region that needs `len` bytes, now holding `capacity`,
/// under `growth`, in multiples of `align`.
pub fn capacity_for(len: u64, capacity: u64, align: u64, growth: Growth) -> u64 {
    let exact = len.div_ceil(align) * align;
    match growth {
        Growth::Exact => exact,
        Growth::Amortized => {
            if len > capacity {
                // Grow by at least half the current capacity.
                let amortized = (capacity + capacity / 2).div_ceil(align) * align;
                exact.max(amortized)
            } else if exact.saturating_mul(4) <= capacity {
                // Shrink only when at most a quarter is used, leaving room.
                (len + len / 2).div_ceil(align) * align
            } else {
                capacity
            }
        }
    }
}

/// How a region's capacity follows its length.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Growth {
    /// Capacity is the length rounded up to the alignment: every resize that
    /// crosses a multiple of the alignment shifts the file.
    Exact,
    /// Growth reserves half again the current capacity, and capacity is
    /// given back only when a quarter or less is used, so a run of small
    /// appends shifts the file O(log n) times.
    #[default]
    Amortized,
}

#[cfg(test)]
mod growth_tests {
    use super::*;

    #[test]
    fn amortized_appends_shift_rarely() {
        let mut cap = 0;
        let mut shifts = 0;
        for len in (0..10_000u64).map(|k| k * 100) {
            let c = capacity_for(len, cap, 4096, Growth::Amortized);
            if c != cap {
                shifts += 1;
                cap = c;
            }
            assert!(cap >= len);
        }
        assert!(shifts < 40, "{shifts} shifts for 10,000 appends");
        assert_eq!(capacity_for(5000, 8192, 4096, Growth::Exact), 8192);
        assert_eq!(capacity_for(0, 8192, 4096, Growth::Exact), 0);
        assert_eq!(capacity_for(100, 1 << 20, 4096, Growth::Amortized), 4096);
    }
}
