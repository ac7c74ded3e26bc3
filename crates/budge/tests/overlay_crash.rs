//! Crash consistency of overlays (`budge::overlay`): group commit, and
//! commits into the base, crashed by `kill -9` and by filesystem shutdown.
//!
//! Every byte the tests write is a stamp: 64-byte units that name the write
//! that put them there (its id) and their own offset, so a page read after a
//! crash is recognised as the base, one write's data, zeros, or garbage.
//!
//! # Writes and flushes (`kill9_during_writes_*`, `shutdown_during_writes_*`)
//!
//! A worker process (this test binary re-executed) opens the overlay and
//! runs a seeded stream of `write_at` (page-aligned and not), `zero`,
//! `revert` and `flush`, announcing each op before it runs (`op I KIND`) and
//! each flush after it returned (`flushed I GENERATION`). The parent crashes
//! it, regenerates the same stream from the seed up to the last op begun and
//! replays it on a model of the overlay: the in-memory page map, the merged
//! view, the generation each flush makes, and for every 4 KiB block of the
//! data area the history of what was written there. After the crash it
//! reopens the overlay (`Overlay::open`: no error) and checks what the
//! module docs promise:
//!
//! - the generation is at least the one of the last flush known complete
//!   (nothing flushed is lost) and at most the one of the last flush begun,
//!   and the page map is exactly the model's map of that generation;
//! - absent pages read the base, zero pages zeros, and present pages the
//!   data area, which holds a version written at or after the last flush
//!   known to have synced it (the later of the last completed flush and the
//!   flush whose map was found). After `kill -9` the page cache survives, so
//!   a present page holds its newest version (or, for the op in flight, the
//!   one before it). Never garbage, never the data of a page that was not
//!   present when the map was written.
//!
//! # Commits (`kill9_during_commit_*`, `shutdown_during_commit_*`)
//!
//! The parent puts changes into the overlay (data runs, sometimes more than
//! the 64 MiB an in-place commit writes between two recorded cursors; zero
//! runs; reverts) and closes it; a worker opens it and commits with one
//! strategy (in place, copy and, where FICLONE works, reflink), and is
//! crashed somewhere in it. Sometimes a second worker is killed while its
//! open finishes the interrupted commit. Then `Overlay::open` must succeed,
//! and either the commit happened (the overlay is empty and the base holds
//! the merged content) or it did not (the overlay holds exactly its pages
//! and the base is the old base); the merged view is the expected one
//! either way, no stray file is left next to the base, and a read-only open
//! works again. A commit that returned before the crash must have happened;
//! one that began writing into the base in place must be finished; one
//! stopped before its rename (the `failpoints` feature makes the worker
//! sleep there) must not have happened.
//!
//! `in_place_commit_killed_while_reserving_*` kills in-place commits of
//! thousands of runs early, inside their space reservation: `fallocate`
//! changes the base's mtime there, and a version of budge that recorded the
//! commit only after reserving left the overlay unopenable (`Conflict`).
//! The commit is now recorded first, so the next open finishes it.
//!
//! Shutdown tests use a private loop-mounted XFS or ext4
//! (`crash/loopfs.rs`): `FS_IOC_SHUTDOWN` without log flush (like a power
//! cut), kill the worker, unmount, mount (log recovery). Only what was
//! reported before the shutdown began counts as complete. Root only; a loud
//! skip otherwise, a failure under `CI=true`.
//!
//! Environment: `BUDGE_CRASH_ITERS` rounds per test (defaults below);
//! `BUDGE_CRASH_SEED` reuses a seed (ops, sizes and crash points; not the
//! timing); `BUDGE_CRASH_VERBOSE` logs every round.

mod common;
mod crash;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use budge::overlay::format::ENTRIES_PER_BLOCK;
use budge::overlay::{CommitOptions, CommitStrategy, Overlay, OverlayOptions, PageState};
use budge::ErrorKind;
use common::{say, Rng, TestFs, Worker};
use crash::rounds::{crash_worker, kill_rounds, shutdown_rounds, Crash, Crashed, Log, Rounds};
use crash::{iters, pause};

// ---------------------------------------------------------------------------
// Stamps.

/// Bytes per stamp unit.
const UNIT: u64 = 64;
/// Bytes per checked block (the data area's history is kept per block).
const BLK: u64 = 4096;
const MAGIC: u64 = 0x4F56_4C43_5253_4831;
/// The stamp id of zeros.
const ZEROS: u64 = 0;
/// The stamp id of the writes tests' base.
const BASE: u64 = 1;
/// Bytes an in-place commit writes between two recorded cursors
/// (`overlay::commit::SYNC_EVERY`, not exported).
const SYNC_EVERY: u64 = 64 << 20;

fn mix(id: u64, at: u64, k: u64) -> u64 {
    let mut z = id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ at.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ k.wrapping_mul(0x1656_67B1_9E37_79F9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stamp `id` over one 4 KiB block, with the offset words (bytes 8..16 of
/// each unit) left zero. Cached: the tests run in a debug build.
fn pattern(id: u64) -> std::rc::Rc<Vec<u8>> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<u64, std::rc::Rc<Vec<u8>>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > 8192 {
            c.clear();
        }
        c.entry(id)
            .or_insert_with(|| {
                let mut v = vec![0u8; BLK as usize];
                for (i, u) in v.chunks_exact_mut(UNIT as usize).enumerate() {
                    let at = i as u64 * UNIT;
                    u[..8].copy_from_slice(&(MAGIC ^ id).to_le_bytes());
                    for k in 2..8 {
                        u[k * 8..k * 8 + 8].copy_from_slice(&mix(id, at, k as u64).to_le_bytes());
                    }
                }
                std::rc::Rc::new(v)
            })
            .clone()
    })
}

/// The unit of stamp `id` at byte `at` (a multiple of [`UNIT`]): the magic
/// xor the id, the offset `at`, then six words of the id and `at % 4096`.
fn unit(id: u64, at: u64) -> [u8; UNIT as usize] {
    let mut b = [0u8; UNIT as usize];
    fill(&mut b, at, id);
    b
}

/// Fills `buf` with stamp `id` as it reads at byte `off` of a file.
fn fill(buf: &mut [u8], off: u64, id: u64) {
    if id == ZEROS {
        buf.fill(0);
        return;
    }
    let pat = pattern(id);
    let mut pos = 0;
    while pos < buf.len() {
        let s = ((off + pos as u64) % BLK) as usize;
        let n = (BLK as usize - s).min(buf.len() - pos);
        buf[pos..pos + n].copy_from_slice(&pat[s..s + n]);
        pos += n;
    }
    // The offset word of every unit overlapping `buf`.
    let end = off + buf.len() as u64;
    let mut u = off - off % UNIT;
    while u < end {
        let (a, b) = ((u + 8).max(off), (u + 16).min(end));
        if a < b {
            buf[(a - off) as usize..(b - off) as usize]
                .copy_from_slice(&u.to_le_bytes()[(a - u - 8) as usize..(b - u - 8) as usize]);
        }
        u += UNIT;
    }
}

fn stamped(off: u64, len: u64, id: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    fill(&mut v, off, id);
    v
}

/// What the unit-aligned piece `b` at byte `at` holds: `Some(ZEROS)`,
/// `Some(id)` of a stamp, or `None` (garbage, or a unit moved elsewhere).
fn decode(b: &[u8], at: u64) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(ZEROS);
    }
    if b.len() < 8 {
        return None;
    }
    let id = u64::from_le_bytes(b[..8].try_into().unwrap()) ^ MAGIC;
    (unit(id, at)[..b.len()] == *b).then_some(id)
}

/// Describes `buf` (read at byte `off`, a multiple of [`UNIT`]) as runs of
/// units of one origin.
fn describe(buf: &[u8], off: u64, name: &dyn Fn(u64) -> String) -> String {
    let mut runs: Vec<(usize, usize, Option<u64>)> = Vec::new();
    for (i, c) in buf.chunks(UNIT as usize).enumerate() {
        let what = decode(c, off + (i as u64) * UNIT);
        let a = i * UNIT as usize;
        match runs.last_mut() {
            Some(r) if r.2 == what => r.1 = a + c.len(),
            _ => runs.push((a, a + c.len(), what)),
        }
    }
    runs.iter()
        .map(|&(a, b, w)| {
            let w = w.map_or_else(|| "GARBAGE".to_string(), name);
            format!("[{a}..{b}) {w}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn hash(b: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ b.len() as u64;
    let words = b.chunks_exact(8);
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    for w in words
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .chain([u64::from_le_bytes(tail)])
    {
        h = (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
    h
}

// ---------------------------------------------------------------------------
// Shared plumbing.

const WORKER_ENV: &str = "BUDGE_OVERLAY_CRASH_WORKER";
const WORKER_TEST: &str = "overlay_crash_worker";

/// `Overlay::open` (or read-only), retried for up to 10 s while `Locked`:
/// a `flock` belongs to the open file description, and a descriptor copied
/// into a child another test thread is spawning holds it until the exec.
fn open_retry(path: &Path, writable: bool) -> budge::Result<Overlay> {
    let t = Instant::now();
    loop {
        let r = if writable {
            Overlay::open(path)
        } else {
            Overlay::open_read_only(path)
        };
        match r {
            Err(e) if e.kind() == ErrorKind::Locked && t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

fn env_u64(k: &str) -> u64 {
    std::env::var(k)
        .unwrap_or_else(|_| panic!("worker needs {k}"))
        .parse()
        .unwrap()
}

/// Waits to be killed. Exiting would drop the overlay, and dropping a
/// writer flushes.
fn park() -> ! {
    std::thread::sleep(Duration::from_secs(300));
    std::process::exit(4)
}

/// Reads the worker's lines until one satisfies `pred` (true), or the
/// worker finished, failed or ended, or 60 s passed (false).
fn wait_line(w: &mut Worker, mut pred: impl FnMut(&str) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut hit = false;
    w.wait_for(deadline, |l| {
        hit = pred(l);
        hit || l == "finished" || l.starts_with("error")
    });
    hit
}

/// Lets `d` pass (reading lines meanwhile, with their times), or less if
/// the worker finishes.
fn linger(w: &mut Worker, d: Duration) {
    if d >= Duration::from_millis(2) {
        w.wait_for(Instant::now() + d, |l| l == "finished");
    } else {
        pause(d);
    }
}

/// Creates the overlay `ov` over `base` with `ps`-byte pages and closes
/// it; returns its generation.
fn create_overlay(base: &Path, ov: &Path, ps: u32) -> u64 {
    let opts = OverlayOptions {
        page_size: Some(ps),
        overwrite: false,
    };
    let o = Overlay::create(base, ov, &opts).unwrap();
    let gen = o.generation();
    o.close().unwrap();
    gen
}

fn fsync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

/// The worker: runs only when re-executed by a crash test.
#[test]
fn overlay_crash_worker() {
    let Ok(path) = std::env::var(WORKER_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    match std::env::var("BUDGE_OVC_MODE").as_deref() {
        Ok("writes") => writes_worker(&path),
        Ok("commit") => commit_worker(&path),
        Ok("recover") => recover_worker(&path),
        m => panic!("unknown worker mode {m:?}"),
    }
}

fn open_or_exit(path: &Path) -> Overlay {
    say("opening");
    match open_retry(path, true) {
        Ok(o) => o,
        Err(e) => {
            say(&format!("error open {e}"));
            std::process::exit(3);
        }
    }
}

/// Opens the overlay (finishing an interrupted commit) and waits.
fn recover_worker(path: &Path) {
    let ov = open_or_exit(path);
    say(&format!("opened {}", ov.generation()));
    say("finished");
    park()
}

// ---------------------------------------------------------------------------
// Writes and flushes: the op stream.

#[derive(Clone, Copy, Debug)]
enum WOp {
    Write { off: u64, len: u64 },
    Zero { off: u64, len: u64 },
    Revert { off: u64, len: u64 },
    Flush,
}

impl WOp {
    fn kind(self) -> &'static str {
        match self {
            WOp::Write { .. } => "write",
            WOp::Zero { .. } => "zero",
            WOp::Revert { .. } => "revert",
            WOp::Flush => "flush",
        }
    }
}

/// A range for an op: page-aligned (`aligned`) or in 64-byte units; often
/// in the first 64 pages (so pages are overwritten in place, zeroed and
/// reverted again and again) or around the end of the page map's first
/// block (so flushes write both map blocks).
fn pick_range(rng: &mut Rng, size: u64, ps: u64, aligned: bool) -> (u64, u64) {
    let edge = ENTRIES_PER_BLOCK * ps;
    let (lo, hi) = match rng.below(4) {
        0 | 1 => (0, (64 * ps).min(size)),
        2 if edge < size => (edge - 32 * ps, (edge + 32 * ps).min(size)),
        _ => (0, size),
    };
    if aligned {
        let (p0, p1) = (lo / ps, hi.div_ceil(ps));
        let off = (p0 + rng.below(p1 - p0)) * ps;
        let n = rng.log_between(1, 32);
        (off, (n * ps).min(size - off))
    } else {
        let off = lo + rng.below((hi - lo) / UNIT) * UNIT;
        let len = rng.log_between(1, 1024) * UNIT;
        (off, len.min(size - off))
    }
}

fn gen_op(rng: &mut Rng, size: u64, ps: u64) -> WOp {
    match rng.below(100) {
        0..=21 => WOp::Flush,
        22..=61 => {
            let aligned = rng.chance(50);
            let (off, len) = pick_range(rng, size, ps, aligned);
            WOp::Write { off, len }
        }
        62..=76 => {
            let aligned = rng.chance(50);
            let (off, len) = pick_range(rng, size, ps, aligned);
            WOp::Zero { off, len }
        }
        _ => {
            let (off, len) = pick_range(rng, size, ps, true);
            WOp::Revert { off, len }
        }
    }
}

/// Runs ops `1..=COUNT` of the stream `SEED` on the overlay; op `i` writes
/// stamp `IDBASE + i`.
fn writes_worker(path: &Path) {
    let (seed, idbase, count) = (
        env_u64("BUDGE_OVC_SEED"),
        env_u64("BUDGE_OVC_IDBASE"),
        env_u64("BUDGE_OVC_COUNT"),
    );
    let mut ov = open_or_exit(path);
    say(&format!("opened {}", ov.generation()));
    let (size, ps) = (ov.size(), u64::from(ov.page_size()));
    let mut rng = Rng(seed);
    for i in 1..=count {
        let op = gen_op(&mut rng, size, ps);
        say(&format!("op {i} {}", op.kind()));
        let r = match op {
            WOp::Write { off, len } => ov.write_at(off, &stamped(off, len, idbase + i)),
            WOp::Zero { off, len } => ov.zero(off, len),
            WOp::Revert { off, len } => ov.revert(off, len),
            WOp::Flush => ov.flush(),
        };
        if let Err(e) = r {
            say(&format!("error {i} {e}"));
            std::process::exit(2);
        }
        if let WOp::Flush = op {
            say(&format!("flushed {i} {}", ov.generation()));
        }
    }
    say("finished");
    park()
}

// ---------------------------------------------------------------------------
// Writes and flushes: the model.

/// The overlay as the ops of this round left it, with what a crash may
/// leave of it.
struct WModel {
    size: u64,
    ps: u64,
    base: Vec<u8>,
    merged: Vec<u8>,
    state: Vec<PageState>,
    gen: u64,
    map_dirty: bool,
    /// Pages that stopped being present since the last map flush (their
    /// data is punched after the next one).
    pending: Vec<u64>,
    /// Per 4 KiB block of the data area: `(op, hash)` of each version
    /// written there this round (op 0: what it held when the round began,
    /// for blocks of present pages).
    hist: Vec<Vec<(u64, u64)>>,
    /// Generation -> (the first op that made it, the page map).
    maps: BTreeMap<u64, (u64, Vec<PageState>)>,
    /// Flush op (0: the round's start) -> the generation after it.
    flush_gen: BTreeMap<u64, u64>,
}

/// What a crash left, as the check found it.
struct WOutcome {
    gen: u64,
    cert_gen: u64,
    max_gen: u64,
    /// Blocks of present pages holding a version older than the newest.
    older_blocks: u64,
    /// Pages whose state differs from the model's in-memory map (an
    /// unflushed change that did not survive).
    lost_state_pages: u64,
}

impl WModel {
    fn new(size: u64, ps: u64, base: Vec<u8>, gen: u64) -> WModel {
        let pages = size.div_ceil(ps);
        WModel {
            size,
            ps,
            merged: base.clone(),
            base,
            state: vec![PageState::Absent; pages as usize],
            gen,
            map_dirty: false,
            pending: Vec::new(),
            hist: Vec::new(),
            maps: BTreeMap::new(),
            flush_gen: BTreeMap::new(),
        }
    }

    fn blocks(&self) -> u64 {
        self.size.div_ceil(BLK)
    }

    fn blk(&self, b: u64) -> std::ops::Range<usize> {
        (b * BLK) as usize..((b + 1) * BLK).min(self.size) as usize
    }

    fn page_blocks(&self, p: u64) -> std::ops::Range<u64> {
        p * self.ps / BLK..((p + 1) * self.ps / BLK).min(self.blocks())
    }

    fn page_end(&self, p: u64) -> u64 {
        ((p + 1) * self.ps).min(self.size)
    }

    fn start_round(&mut self) {
        self.hist = (0..self.blocks())
            .map(|b| {
                if self.state[(b * BLK / self.ps) as usize] == PageState::Present {
                    vec![(0, hash(&self.merged[self.blk(b)]))]
                } else {
                    Vec::new()
                }
            })
            .collect();
        self.maps = BTreeMap::from([(self.gen, (0, self.state.clone()))]);
        self.flush_gen = BTreeMap::from([(0, self.gen)]);
        self.map_dirty = false;
        self.pending.clear();
    }

    /// `Overlay::set_pages`.
    fn set_pages(&mut self, p0: u64, p1: u64, st: PageState) {
        for p in p0..p1 {
            let cur = &mut self.state[p as usize];
            if *cur != st {
                if *cur == PageState::Present {
                    self.pending.push(p);
                }
                *cur = st;
                self.map_dirty = true;
            }
        }
    }

    /// `Overlay::write_at`: every block of the pages it touches gets a new
    /// data version (the whole page is copied up unless it was present).
    fn write(&mut self, op: u64, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        self.merged[off as usize..end as usize].copy_from_slice(data);
        let (p0, p1) = (off / self.ps, end.div_ceil(self.ps));
        self.set_pages(p0, p1, PageState::Present);
        for p in p0..p1 {
            for b in self.page_blocks(p) {
                let h = hash(&self.merged[self.blk(b)]);
                self.hist[b as usize].push((op, h));
            }
        }
    }

    /// `Overlay::zero`: partly covered end pages are written (unless
    /// `zero`), whole pages become `zero`.
    fn zero(&mut self, op: u64, off: u64, len: u64) {
        let (ps, end) = (self.ps, off + len);
        let covered = |m: &Self, p: u64| off <= p * ps && end >= m.page_end(p);
        let (first, last) = (off / ps, (end - 1) / ps);
        let ends = if first == last {
            vec![first]
        } else {
            vec![first, last]
        };
        for p in ends {
            if !covered(self, p) && self.state[p as usize] != PageState::Zero {
                let a = off.max(p * ps);
                let b = end.min(self.page_end(p));
                self.write(op, a, &vec![0u8; (b - a) as usize]);
            }
        }
        let first_full = if covered(self, first) {
            first
        } else {
            first + 1
        };
        let end_full = if covered(self, last) { last + 1 } else { last };
        if first_full < end_full {
            self.set_pages(first_full, end_full, PageState::Zero);
        }
        self.merged[off as usize..end as usize].fill(0);
    }

    fn revert(&mut self, off: u64, len: u64) {
        let (p0, p1) = (off / self.ps, (off + len).div_ceil(self.ps));
        self.set_pages(p0, p1, PageState::Absent);
        let (a, b) = ((p0 * self.ps) as usize, self.page_end(p1 - 1) as usize);
        self.merged[a..b].copy_from_slice(&self.base[a..b]);
    }

    /// `Overlay::flush`: a new generation if the map changed, then the
    /// punch of data no map points at any more.
    fn flush(&mut self, op: u64) {
        if self.map_dirty {
            self.gen += 1;
            self.maps.insert(self.gen, (op, self.state.clone()));
            self.map_dirty = false;
            for p in std::mem::take(&mut self.pending) {
                if self.state[p as usize] != PageState::Present {
                    for b in self.page_blocks(p) {
                        let n = self.blk(b).len();
                        self.hist[b as usize].push((op, hash(&vec![0u8; n])));
                    }
                }
            }
        }
        self.flush_gen.insert(op, self.gen);
    }

    fn apply(&mut self, i: u64, id: u64, op: WOp) {
        match op {
            WOp::Write { off, len } => self.write(i, off, &stamped(off, len, id)),
            WOp::Zero { off, len } => self.zero(i, off, len),
            WOp::Revert { off, len } => self.revert(off, len),
            WOp::Flush => self.flush(i),
        }
    }

    /// Checks the reopened overlay after a crash: ops `1..=last` were begun
    /// (and all returned if `finished`), the flush at op `cert` is known
    /// complete, `kill`: the page cache survived. On success the model takes
    /// the state found.
    fn check(
        &mut self,
        ov: &Overlay,
        (last, finished): (u64, bool),
        cert: u64,
        kill: bool,
        name: &dyn Fn(u64) -> String,
    ) -> Result<WOutcome, String> {
        let g = ov.generation();
        let cert_gen = self.flush_gen[&cert];
        let max_gen = *self.flush_gen.range(..=last).next_back().unwrap().1;
        if g < cert_gen {
            return Err(format!(
                "generation {g} after the crash: the flush at op {cert} had made generation {cert_gen} and returned: a completed flush was lost"
            ));
        }
        if g > max_gen {
            return Err(format!(
                "generation {g} after the crash; no flush begun (up to op {last}) made more than {max_gen}"
            ));
        }
        let (first_op, map) = match self.maps.get(&g) {
            Some((o, m)) => (*o, m.clone()),
            None => return Err(format!("no flush of the model made generation {g}")),
        };
        let ps = self.ps;
        let bad: Vec<String> = (0..map.len() as u64)
            .filter_map(|p| {
                let got = ov.page_state(p * ps);
                (got != map[p as usize])
                    .then(|| format!("page {p}: {} (want {})", got.name(), map[p as usize].name()))
            })
            .collect();
        if !bad.is_empty() {
            return Err(format!(
                "the page map differs from generation {g}'s (made by the flush at op {first_op}) at {} pages: {}",
                bad.len(),
                bad.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
        let mut got = vec![0u8; self.size as usize];
        for (i, c) in got.chunks_mut(4 << 20).enumerate() {
            ov.read_at((i as u64) * (4 << 20), c)
                .map_err(|e| format!("read after the crash: {e}"))?;
        }
        // The data of present pages: at least as new as the last sync known
        // to cover it.
        let lb = match (kill, finished) {
            (true, true) => last + 1,
            (true, false) => last,
            (false, _) => cert.max(first_op),
        }
        .max(1);
        let mut errs = Vec::new();
        let mut older = 0;
        for b in 0..self.blocks() {
            let r = self.blk(b);
            let p = b * BLK / ps;
            let have = &got[r.clone()];
            let st = map[p as usize];
            let why = match st {
                PageState::Absent => {
                    (have != &self.base[r.clone()]).then(|| "want the base".to_string())
                }
                PageState::Zero => have
                    .iter()
                    .any(|&x| x != 0)
                    .then(|| "want zeros".to_string()),
                PageState::Present => {
                    let h = self.hist[b as usize].as_slice();
                    match h.iter().rposition(|&(op, _)| op < lb) {
                        None => Some(format!(
                            "the model has no data version before op {lb} for it: {h:?}"
                        )),
                        Some(lo) => {
                            if let Some(k) = h[lo..].iter().rposition(|&(_, x)| x == hash(have)) {
                                if lo + k + 1 < h.len() {
                                    older += 1;
                                }
                                None
                            } else {
                                let ops: Vec<u64> = h[lo..].iter().map(|v| v.0).collect();
                                Some(format!(
                                    "want the version current at op {lb} or a later one (written by ops {ops:?})"
                                ))
                            }
                        }
                    }
                }
            };
            if let Some(why) = why {
                errs.push(format!(
                    "block {b} (bytes {}..{}, page {p}, {}): {why}; it holds {}",
                    r.start,
                    r.end,
                    st.name(),
                    describe(have, r.start as u64, name)
                ));
            }
        }
        if !errs.is_empty() {
            return Err(format!(
                "{} blocks read wrong after the crash (generation {g}, map of op {first_op}, last completed flush at op {cert}, last op begun {last}):\n    {}",
                errs.len(),
                errs.iter().take(10).cloned().collect::<Vec<_>>().join("\n    ")
            ));
        }
        let lost = map.iter().zip(&self.state).filter(|(a, b)| a != b).count() as u64;
        self.state = map;
        self.merged = got;
        self.gen = g;
        Ok(WOutcome {
            gen: g,
            cert_gen,
            max_gen,
            older_blocks: older,
            lost_state_pages: lost,
        })
    }
}

// ---------------------------------------------------------------------------
// Writes and flushes: the parent.

/// Where a round crashes the worker.
#[derive(Debug)]
enum WTrigger {
    /// This long after it opened the overlay.
    Time(Duration),
    /// This long after it begins its flush number `k` (of this round).
    Flush(u64, Duration),
    /// This long after it begins op `k` or a later one.
    Op(u64, Duration),
}

impl WTrigger {
    fn pick(rng: &mut Rng) -> WTrigger {
        match rng.below(100) {
            0..=54 => WTrigger::Flush(
                rng.below(60),
                Duration::from_micros(rng.log_between(1, 4_000)),
            ),
            55..=79 => WTrigger::Op(
                rng.below(400),
                Duration::from_micros(rng.log_between(1, 2_000)),
            ),
            _ => WTrigger::Time(Duration::from_micros(rng.between(0, 300_000))),
        }
    }

    fn fire(&self, w: &mut Worker) {
        if !wait_line(w, |l| l.starts_with("opened")) {
            return;
        }
        let (hit, d) = match *self {
            WTrigger::Time(d) => (true, d),
            WTrigger::Flush(k, d) => {
                let mut n = 0;
                let hit = wait_line(w, |l| {
                    if l.starts_with("op ") && l.ends_with(" flush") {
                        n += 1;
                    }
                    n > k
                });
                (hit, d)
            }
            WTrigger::Op(k, d) => (
                wait_line(w, |l| {
                    l.strip_prefix("op ")
                        .and_then(|r| r.split(' ').next())
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|i| i > k)
                }),
                d,
            ),
        };
        if hit {
            linger(w, d);
        }
    }
}

/// The size of the writes tests' overlays: two page-map blocks at 4 KiB
/// pages, and a partial last page.
const WSIZE: u64 = ENTRIES_PER_BLOCK * 4096 + (1 << 20) + 3000;

struct WSession {
    log: Log,
    ov: PathBuf,
    model: WModel,
}

impl WSession {
    fn new(label: String, dir: &Path, ps: u32) -> WSession {
        let log = Log::new(label);
        let (base, ov) = (dir.join("base"), dir.join("ov"));
        let bytes = stamped(0, WSIZE, BASE);
        std::fs::write(&base, &bytes).unwrap();
        File::open(&base).unwrap().sync_all().unwrap();
        fsync_dir(dir);
        let gen = create_overlay(&base, &ov, ps);
        WSession {
            log,
            ov,
            model: WModel::new(WSIZE, u64::from(ps), bytes, gen),
        }
    }

    fn fail(&self, msg: &str) -> ! {
        self.log.fail(msg)
    }
}

impl Rounds for WSession {
    fn log(&mut self) -> &mut Log {
        &mut self.log
    }

    fn round(&mut self, rng: &mut Rng, crash: Crash<'_>) {
        let shutdown = crash.shutdown;
        let t = WTrigger::pick(rng);
        let wseed = rng.next();
        let count = rng.between(100, 2500);
        let idbase = (self.log.round + 2) << 32;
        self.log.note(format!(
            "round at generation {}: {t:?}, worker seed {wseed:#x}, {count} ops",
            self.model.gen
        ));
        self.model.start_round();
        let start_gen = self.model.gen;
        let mut w = Worker::spawn(
            common::worker_command(WORKER_TEST)
                .env(WORKER_ENV, &self.ov)
                .env("BUDGE_OVC_MODE", "writes")
                .env("BUDGE_OVC_SEED", wseed.to_string())
                .env("BUDGE_OVC_IDBASE", idbase.to_string())
                .env("BUDGE_OVC_COUNT", count.to_string())
                .env_remove("FAILPOINTS"),
        );
        t.fire(&mut w);
        let Crashed {
            lines,
            status,
            down,
            ..
        } = crash_worker(&mut self.log, w, crash);
        // The ops begun, the flushes known complete.
        let (mut last, mut cert, mut finished) = (0u64, 0u64, false);
        let mut kinds: Vec<String> = Vec::new();
        let mut reported = Vec::new();
        let mut at_crash = "before the worker printed anything";
        for (at, l) in &lines {
            let before = *at < down;
            let mut it = l.split(' ');
            let word = it.next().unwrap_or("");
            let num = |s: Option<&str>| s.and_then(|v| v.parse::<u64>().ok());
            let (a, b) = (it.next(), it.next());
            match word {
                "opening" => {}
                "finished" => finished = true,
                "opened" => {
                    if num(a) != Some(start_gen) {
                        self.fail(&format!(
                            "the worker opened generation {a:?}; the parent verified {start_gen}"
                        ));
                    }
                }
                "op" => {
                    if num(a) != Some(last + 1) {
                        self.fail(&format!("op line {l:?} after op {last}"));
                    }
                    last += 1;
                    kinds.push(b.unwrap_or("").to_string());
                }
                "flushed" => {
                    let (Some(i), Some(g)) = (num(a), num(b)) else {
                        self.fail(&format!("bad line {l:?}"));
                    };
                    if i != last {
                        self.fail(&format!("{l:?} while op {last} was the last begun"));
                    }
                    reported.push((i, g));
                    if !shutdown || before {
                        cert = i;
                    }
                }
                "error" if shutdown && !before => {
                    self.log.stats.add("worker error after the shutdown");
                }
                _ => self.fail(&format!("worker: {l}")),
            }
            if before {
                at_crash = match (word, b) {
                    ("opening", _) => "while the worker opened the overlay",
                    ("opened", _) => "before the first op",
                    ("op", Some("flush")) => "inside a flush",
                    ("op", Some("write")) => "inside a write",
                    ("op", Some("zero")) => "inside a zero",
                    ("op", _) => "inside a revert",
                    ("flushed", _) => "right after a flush returned",
                    _ => "after the last op",
                };
            }
        }
        self.log.stats.add(format!("crash point: {at_crash}"));
        // Replay the stream up to the last op begun.
        let mut orng = Rng(wseed);
        for i in 1..=last {
            let op = gen_op(&mut orng, self.model.size, self.model.ps);
            if op.kind() != kinds[(i - 1) as usize] {
                self.fail(&format!(
                    "op {i}: the worker ran a {}, the model a {op:?}",
                    kinds[(i - 1) as usize]
                ));
            }
            self.model.apply(i, idbase + i, op);
        }
        for (i, g) in reported {
            if self.model.flush_gen[&i] != g {
                self.fail(&format!(
                    "the flush at op {i} made generation {g}; the model says {}",
                    self.model.flush_gen[&i]
                ));
            }
        }
        let ov = match open_retry(&self.ov, true) {
            Ok(o) => o,
            Err(e) => self.fail(&format!("Overlay::open after the crash: {e}")),
        };
        let round_of = |id: u64| (id >> 32) - 2;
        let name = move |id: u64| match id {
            ZEROS => "zeros".to_string(),
            BASE => "base".to_string(),
            id if id >> 32 >= 2 => format!("round {} op {}", round_of(id), id & 0xFFFF_FFFF),
            id => format!("unknown stamp {id:#x}"),
        };
        let out = match self
            .model
            .check(&ov, (last, finished), cert, !shutdown, &name)
        {
            Ok(o) => o,
            Err(e) => self.fail(&e),
        };
        drop(ov);
        let s = &mut self.log.stats;
        s.add(if out.gen == out.cert_gen {
            "outcome: the map of the last completed flush"
        } else {
            "outcome: a later flush's map (begun, not known complete)"
        });
        if out.max_gen > out.cert_gen {
            s.add("rounds with a map flush in flight or unconfirmed");
        }
        s.addn(
            "present blocks holding an older version than the newest",
            out.older_blocks,
        );
        s.addn(
            "pages whose unflushed state change did not survive",
            out.lost_state_pages,
        );
        s.addn("ops run", last);
        self.log.note(format!(
            "{status}: {last} ops, last completed flush at op {cert}: generation {} (certain {}, at most {}), crash point {at_crash}",
            out.gen, out.cert_gen, out.max_gen
        ));
        self.log.stats.add("rounds verified");
    }
}

fn writes_page_size(kind: &str, shutdown: bool) -> u32 {
    // Mostly one page per block; 16 KiB pages (partial pages copied up
    // around 4 KiB writes) on some.
    match (kind, shutdown) {
        ("btrfs" | "tmpfs", false) | ("ext4", true) => 16 << 10,
        _ => 4 << 10,
    }
}

fn writes_kill(fs: &TestFs) {
    let ps = writes_page_size(fs.kind, false);
    let mut sess = WSession::new(
        format!("overlay writes kill-9 {} ({} KiB pages)", fs.kind, ps >> 10),
        fs.dir.path(),
        ps,
    );
    kill_rounds(&mut sess, iters(10));
}

fs_test!(kill9_during_writes, writes_kill);

fn writes_shutdown(kind: &'static str) {
    let ps = writes_page_size(kind, true);
    shutdown_rounds(kind, "overlay writes shutdown test", iters(8), |dir| {
        WSession::new(
            format!("overlay writes shutdown {kind} ({} KiB pages)", ps >> 10),
            dir,
            ps,
        )
    });
}

kind_tests!(writes_shutdown; shutdown_during_writes_xfs = "xfs", shutdown_during_writes_ext4 = "ext4");

// ---------------------------------------------------------------------------
// Commits: the worker.

/// The failpoints the commit worker reports (`mark KEY N`, N counting from
/// 0) and may sleep at.
const COMMIT_MARKS: [(&str, &str); 3] = [
    ("budge::overlay::in-place-piece", "piece"),
    ("budge::overlay::before-publish", "publish"),
    ("budge::overlay::before-superblock", "superblock"),
];

/// How long the worker sleeps at the chosen mark; the parent crashes it
/// well within.
const MARK_SLEEP_MS: u64 = 1000;

/// Opens the overlay and commits it with `BUDGE_OVC_STRATEGY`, sleeping at
/// mark `BUDGE_OVC_SLEEP` (`KEY:N`) if set.
fn commit_worker(path: &Path) {
    let strategy: CommitStrategy = std::env::var("BUDGE_OVC_STRATEGY")
        .unwrap()
        .parse()
        .unwrap();
    let sleep = std::env::var("BUDGE_OVC_SLEEP").ok().and_then(|v| {
        let (k, n) = v.split_once(':')?;
        Some((k.to_string(), n.parse::<u64>().ok()?))
    });
    let _scenario = fail::FailScenario::setup();
    for (fp, key) in COMMIT_MARKS {
        let n = AtomicU64::new(0);
        let nap = sleep.as_ref().filter(|(k, _)| k == key).map(|&(_, n)| n);
        fail::cfg_callback(fp, move || {
            let i = n.fetch_add(1, Ordering::Relaxed);
            say(&format!("mark {key} {i}"));
            if nap == Some(i) {
                std::thread::sleep(Duration::from_millis(MARK_SLEEP_MS));
                say(&format!("resumed {key} {i}"));
            }
        })
        .unwrap();
    }
    let mut ov = open_or_exit(path);
    say(&format!("opened {}", ov.generation()));
    say("commit begin");
    match ov.commit(&CommitOptions {
        strategy,
        progress: None,
    }) {
        Ok(r) => say(&format!("commit done {}", r.strategy)),
        Err(e) => {
            say(&format!("error commit {e}"));
            std::process::exit(2);
        }
    }
    say("finished");
    park()
}

// ---------------------------------------------------------------------------
// Commits: the model and the parent.

/// The commit tests' base: 96 MiB with a partial last page.
const CSIZE: u64 = (96 << 20) - 1536;
/// The commit tests' page size.
const CPS: u64 = 4096;

/// Stamp ids per page: the base's and the overlay's.
struct CModel {
    base: Vec<u64>,
    ov: Vec<(PageState, u64)>,
}

impl CModel {
    fn pages() -> u64 {
        CSIZE.div_ceil(CPS)
    }

    fn merged(&self, p: u64) -> u64 {
        match self.ov[p as usize] {
            (PageState::Present, id) => id,
            (PageState::Zero, _) => ZEROS,
            (PageState::Absent, _) => self.base[p as usize],
        }
    }

    /// The pieces an in-place commit writes (runs of one state, split at
    /// [`SYNC_EVERY`]) and the index of the piece after which it records
    /// its first cursor, if it does.
    fn pieces(&self) -> (u64, Option<u64>) {
        let step = SYNC_EVERY / CPS;
        let (mut n, mut since, mut first_cursor) = (0u64, 0u64, None);
        let mut p = 0;
        let pages = Self::pages();
        while p < pages {
            let st = self.ov[p as usize].0;
            let mut e = p + 1;
            while e < pages && self.ov[e as usize].0 == st {
                e += 1;
            }
            if st != PageState::Absent {
                let mut a = p;
                while a < e {
                    let b = (a + step).min(e);
                    since += (b - a) * CPS;
                    if since >= SYNC_EVERY && first_cursor.is_none() {
                        first_cursor = Some(n);
                    }
                    n += 1;
                    a = b;
                }
            }
            p = e;
        }
        // The cursor is recorded only if another piece follows.
        (n, first_cursor.filter(|&c| c + 1 < n))
    }
}

/// Where a round crashes the commit worker.
#[derive(Debug)]
enum CTrigger {
    /// This long after the worker was started (mostly before the commit).
    Early(Duration),
    /// This long after it begins the commit.
    Begin(Duration),
    /// This long into its sleep at failpoint mark `key` number `k`.
    Mark(&'static str, u64, Duration),
}

struct CSession {
    log: Log,
    dir: PathBuf,
    base: PathBuf,
    ov: PathBuf,
    model: CModel,
    strategies: Vec<CommitStrategy>,
    /// Commit durations seen, per strategy and size class.
    est: HashMap<(CommitStrategy, bool), Duration>,
}

impl CSession {
    fn new(label: String, dir: &Path) -> CSession {
        let log = Log::new(label);
        let mut rng = Rng(log.seed ^ 0xBA5E);
        let (base, ov) = (dir.join("base"), dir.join("ov"));
        // The base: stamped runs and holes.
        let pages = CModel::pages();
        let mut ids = vec![ZEROS; pages as usize];
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&base)
            .unwrap();
        let mut p = 0;
        while p < pages {
            let n = rng.log_between(1, 2048).min(pages - p);
            if rng.chance(60) {
                let off = p * CPS;
                let len = (n * CPS).min(CSIZE - off);
                f.write_all_at(&stamped(off, len, BASE), off).unwrap();
                ids[p as usize..(p + n) as usize].fill(BASE);
            }
            p += n;
        }
        f.set_len(CSIZE).unwrap();
        f.sync_all().unwrap();
        drop(f);
        fsync_dir(dir);
        create_overlay(&base, &ov, CPS as u32);
        let mut strategies = vec![CommitStrategy::InPlace, CommitStrategy::Copy];
        if budge::probe(dir).unwrap().ficlone.works {
            strategies.push(CommitStrategy::Reflink);
        }
        CSession {
            log,
            dir: dir.to_path_buf(),
            base,
            ov,
            model: CModel {
                base: ids,
                ov: vec![(PageState::Absent, 0); pages as usize],
            },
            strategies,
            est: HashMap::new(),
        }
    }

    fn fail(&self, msg: &str) -> ! {
        self.log.fail(msg)
    }

    fn name(&self) -> impl Fn(u64) -> String {
        |id| match id {
            ZEROS => "zeros".to_string(),
            BASE => "the first base".to_string(),
            id => format!("round {}'s data", id.wrapping_sub(2)),
        }
    }

    /// A random page run of at most `max` pages: `(first page, pages)`.
    fn run(rng: &mut Rng, max: u64) -> (u64, u64) {
        let pages = CModel::pages();
        let n = rng.log_between(1, max).min(pages);
        (rng.below(pages - n + 1), n)
    }

    fn bytes(p: u64, n: u64) -> (u64, u64) {
        let off = p * CPS;
        (off, ((p + n) * CPS).min(CSIZE) - off)
    }

    /// Puts this round's changes into the overlay (and closes it): reverts
    /// and zero runs, then data runs, `big` (more than [`SYNC_EVERY`] of
    /// present pages in all) for some in-place rounds.
    fn prepare(&mut self, rng: &mut Rng, big: bool) {
        let id = self.log.round + 2;
        let mut ov = match open_retry(&self.ov, true) {
            Ok(o) => o,
            Err(e) => self.fail(&format!("open to prepare the round: {e}")),
        };
        let m = &mut self.model;
        if rng.chance(30) {
            let (p, n) = Self::run(rng, 1024);
            let (off, len) = Self::bytes(p, n);
            ov.revert(off, len).unwrap();
            m.ov[p as usize..(p + n) as usize].fill((PageState::Absent, 0));
        }
        for _ in 0..rng.below(4) {
            let (p, n) = Self::run(rng, 512);
            let (off, len) = Self::bytes(p, n);
            ov.zero(off, len).unwrap();
            m.ov[p as usize..(p + n) as usize].fill((PageState::Zero, 0));
        }
        let mut present = m.ov.iter().filter(|s| s.0 == PageState::Present).count() as u64;
        let (target, max_run) = if big {
            (rng.between(17_000, 20_000), 4096)
        } else {
            (present + rng.log_between(1, 2048), 1024)
        };
        let mut buf = Vec::new();
        let mut runs = 0;
        while present < target || runs == 0 {
            let (p, n) = Self::run(rng, max_run);
            let mut q = p;
            while q < p + n {
                let k = (p + n - q).min(1024);
                let (off, len) = Self::bytes(q, k);
                buf.resize(len as usize, 0);
                fill(&mut buf, off, id);
                ov.write_at(off, &buf).unwrap();
                q += k;
            }
            for s in &mut m.ov[p as usize..(p + n) as usize] {
                if s.0 != PageState::Present {
                    present += 1;
                }
                *s = (PageState::Present, id);
            }
            runs += 1;
        }
        ov.close().unwrap();
    }

    fn trigger(&self, rng: &mut Rng, strategy: CommitStrategy, big: bool) -> CTrigger {
        let mode = rng.below(100);
        if mode < 35 && cfg!(feature = "failpoints") {
            let d = Duration::from_micros(rng.between(0, 50_000));
            if strategy == CommitStrategy::InPlace {
                let (n, cursor) = self.model.pieces();
                let k = match cursor {
                    Some(c) if rng.chance(60) => c + rng.below(2),
                    _ => rng.below(n),
                };
                return CTrigger::Mark("piece", k, d);
            }
            return CTrigger::Mark("publish", 0, d);
        }
        if mode < 45 {
            return CTrigger::Early(Duration::from_micros(rng.log_between(1, 30_000)));
        }
        let est = self
            .est
            .get(&(strategy, big))
            .copied()
            .unwrap_or(Duration::from_millis(200));
        CTrigger::Begin(est.mul_f64(rng.below(1300) as f64 / 1000.0))
    }
}

impl Rounds for CSession {
    fn log(&mut self) -> &mut Log {
        &mut self.log
    }

    fn round(&mut self, rng: &mut Rng, crash: Crash<'_>) {
        let shutdown = crash.shutdown;
        let strategy = self.strategies[rng.below(self.strategies.len() as u64) as usize];
        let big = strategy == CommitStrategy::InPlace && rng.chance(50);
        let tp = Instant::now();
        self.prepare(rng, big);
        let prep = tp.elapsed();
        let old_base = self.model.base.clone();
        let old_ov = self.model.ov.clone();
        let t = self.trigger(rng, strategy, big);
        let present = old_ov.iter().filter(|s| s.0 == PageState::Present).count();
        self.log.note(format!(
            "{strategy} commit of {present} present pages ({}): {t:?} (prepared in {prep:?})",
            if big { "big" } else { "small" }
        ));
        let sleep = match t {
            CTrigger::Mark(key, k, _) => format!("{key}:{k}"),
            _ => String::new(),
        };
        let mut w = Worker::spawn(
            common::worker_command(WORKER_TEST)
                .env(WORKER_ENV, &self.ov)
                .env("BUDGE_OVC_MODE", "commit")
                .env("BUDGE_OVC_STRATEGY", strategy.name())
                .env("BUDGE_OVC_SLEEP", &sleep)
                .env_remove("FAILPOINTS"),
        );
        let mut mark_hit = false;
        match t {
            CTrigger::Early(d) => linger(&mut w, d),
            CTrigger::Begin(d) => {
                if wait_line(&mut w, |l| l == "commit begin") {
                    linger(&mut w, d);
                }
            }
            CTrigger::Mark(key, k, d) => {
                let want = format!("mark {key} {k}");
                if wait_line(&mut w, |l| l == want) {
                    mark_hit = true;
                    linger(&mut w, d);
                }
            }
        }
        let Crashed {
            lines,
            status,
            down,
            ..
        } = crash_worker(&mut self.log, w, crash);
        let sn = strategy.name();
        // What the worker got to.
        let (mut begin, mut done, mut done_certain, mut pieces) = (None, None, false, 0);
        let mut resumed_before = false;
        let mut at_crash = "before the worker printed anything";
        for (at, l) in &lines {
            let before = *at < down;
            match l.as_str() {
                "commit begin" => begin = Some(*at),
                l if l.starts_with("commit done") => {
                    done = Some(*at);
                    done_certain |= !shutdown || before;
                }
                l if l.starts_with("mark piece") => pieces += 1,
                l if l.starts_with("resumed") => resumed_before |= before,
                l if l.starts_with("error") && shutdown && !before => {
                    self.log.stats.add("worker error after the shutdown");
                }
                l if l.starts_with("error") => self.fail(&format!("worker: {l}")),
                _ => {}
            }
            if before {
                at_crash = match l.split(' ').next().unwrap_or("") {
                    "opening" => "while the worker opened the overlay",
                    "opened" => "before the commit",
                    "commit" if l == "commit begin" => "inside the commit",
                    "mark" if l.starts_with("mark piece") => {
                        "inside the commit, after an in-place piece"
                    }
                    "mark" if l.starts_with("mark publish") => {
                        "inside the commit, at the failpoint before the rename"
                    }
                    "mark" => "inside the commit, syncing a new superblock",
                    "resumed" => "inside the commit, after the failpoint",
                    _ => "after the commit",
                };
            }
        }
        if let (Some(a), Some(b)) = (begin, done) {
            self.est.insert((strategy, big), b - a);
            self.log.note(format!("the commit took {:?}", b - a));
        }
        self.log.stats.add(format!("{sn}: crash point: {at_crash}"));
        // A second crash, while an open finishes the interrupted commit.
        if begin.is_some() && done.is_none() && rng.chance(30) {
            self.recover_crash(rng);
        }
        // Only now read-only: an interrupted commit is refused.
        match open_retry(&self.ov, false) {
            Ok(o) => drop(o),
            Err(e) if e.kind() == ErrorKind::NeedsRecovery => {
                self.log.stats.add(format!(
                    "{sn}: the open found an interrupted commit to finish"
                ));
            }
            Err(e) => {
                self.log.note(format!("read-only open: {e}"));
                self.log
                    .stats
                    .add(format!("{sn}: read-only open failed: {:?}", e.kind()));
            }
        }
        let ov = match open_retry(&self.ov, true) {
            Ok(o) => o,
            Err(e) => self.fail(&format!(
                "Overlay::open after a crash in a {sn} commit ({at_crash}): {e}"
            )),
        };
        let committed = ov.changes().is_empty();
        self.log.stats.add(format!(
            "{sn}: outcome: {}",
            if committed {
                "committed"
            } else {
                "not committed"
            }
        ));
        if done_certain && !committed {
            self.fail(
                "the commit had returned before the crash, yet the overlay still holds its pages",
            );
        }
        if pieces > 0 && !committed {
            self.fail(&format!(
                "the in-place commit had written {pieces} pieces into the base, yet the open did not finish it"
            ));
        }
        let publish_held =
            mark_hit && matches!(t, CTrigger::Mark("publish", ..)) && !resumed_before;
        if publish_held && committed {
            self.fail("the crash came at the failpoint before the rename, yet the commit happened");
        }
        // The expected contents.
        let merged: Vec<u64> = (0..CModel::pages()).map(|p| self.model.merged(p)).collect();
        let want_base = if committed { &merged } else { &old_base };
        let name = self.name();
        if !committed {
            let bad: Vec<String> = (0..CModel::pages())
                .filter_map(|p| {
                    let got = ov.page_state(p * CPS);
                    (got != old_ov[p as usize].0).then(|| {
                        format!(
                            "page {p}: {} (want {})",
                            got.name(),
                            old_ov[p as usize].0.name()
                        )
                    })
                })
                .collect();
            if !bad.is_empty() {
                self.fail(&format!(
                    "not committed, but the page map changed at {} pages: {}",
                    bad.len(),
                    bad.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
                ));
            }
        }
        if let Err(e) = compare(
            &|off, buf| ov.read_at(off, buf).map_err(|e| e.to_string()),
            CSIZE,
            &merged,
            &name,
        ) {
            self.fail(&format!(
                "the merged view after the crash ({}): {e}",
                if committed {
                    "committed"
                } else {
                    "not committed"
                }
            ));
        }
        let f = File::open(&self.base).unwrap();
        let len = f.metadata().unwrap().len();
        if len != CSIZE {
            self.fail(&format!("the base is {len} bytes, want {CSIZE}"));
        }
        if let Err(e) = compare(
            &|off, buf| f.read_exact_at(buf, off).map_err(|e| e.to_string()),
            CSIZE,
            want_base,
            &name,
        ) {
            self.fail(&format!(
                "the base after the crash ({}): {e}",
                if committed {
                    "committed: want the merged content"
                } else {
                    "not committed: want the old base"
                }
            ));
        }
        drop(ov);
        // Nothing left next to the base.
        let strays: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !matches!(n.as_str(), "base" | "ov" | "lost+found"))
            .collect();
        if !strays.is_empty() {
            self.fail(&format!("files left next to the base: {strays:?}"));
        }
        if let Err(e) = open_retry(&self.ov, false) {
            self.fail(&format!("read-only open after the recovery: {e}"));
        }
        if committed {
            self.model.base = merged;
            self.model.ov.fill((PageState::Absent, 0));
        }
        self.log.note(format!(
            "{status}: {}, crash point {at_crash}",
            if committed {
                "committed"
            } else {
                "not committed"
            }
        ));
        self.log.stats.add("rounds verified");
    }
}

impl CSession {
    /// Starts a worker that opens the overlay (finishing the interrupted
    /// commit) and kills it part-way.
    fn recover_crash(&mut self, rng: &mut Rng) {
        let d = Duration::from_micros(rng.log_between(1, 150_000));
        let mut w = Worker::spawn(
            common::worker_command(WORKER_TEST)
                .env(WORKER_ENV, &self.ov)
                .env("BUDGE_OVC_MODE", "recover")
                .env_remove("FAILPOINTS"),
        );
        if wait_line(&mut w, |l| l == "opening") {
            linger(&mut w, d);
        }
        let down = Instant::now();
        w.kill();
        let (lines, status, stderr) = w.finish(Duration::from_secs(60));
        self.log.log_lines(&lines, down);
        if status.signal() != Some(libc::SIGKILL) {
            self.fail(&format!("recovery worker ended with {status}: {stderr}"));
        }
        if let Some((_, l)) = lines.iter().find(|(_, l)| l.starts_with("error")) {
            self.fail(&format!("recovery worker: {l}"));
        }
        let opened = lines
            .iter()
            .any(|(at, l)| l.starts_with("opened") && *at < down);
        self.log
            .note(format!("second crash {d:?} into the recovering open"));
        self.log.stats.add(if opened {
            "second kill: after the recovering open"
        } else {
            "second kill: during the recovering open"
        });
    }
}

/// A positioned read of a file or an overlay's merged view.
type ReadAt<'a> = dyn Fn(u64, &mut [u8]) -> Result<(), String> + 'a;

/// Compares a file-like `read` of `size` bytes with stamp ids per 4 KiB
/// page.
fn compare(
    read: &ReadAt<'_>,
    size: u64,
    want: &[u64],
    name: &dyn Fn(u64) -> String,
) -> Result<(), String> {
    let chunk = 1024 * CPS;
    let mut buf = vec![0u8; chunk as usize];
    let mut exp = vec![0u8; CPS as usize];
    let mut errs = Vec::new();
    let mut nbad = 0;
    let mut off = 0;
    while off < size {
        let n = chunk.min(size - off);
        read(off, &mut buf[..n as usize])?;
        for (i, have) in buf[..n as usize].chunks(CPS as usize).enumerate() {
            let at = off + (i as u64) * CPS;
            let p = at / CPS;
            let e = &mut exp[..have.len()];
            fill(e, at, want[p as usize]);
            if have != e {
                nbad += 1;
                if errs.len() < 8 {
                    errs.push(format!(
                        "page {p}: want {}, holds {}",
                        name(want[p as usize]),
                        describe(have, at, name)
                    ));
                }
            }
        }
        off += n;
    }
    if nbad == 0 {
        Ok(())
    } else {
        Err(format!("{nbad} pages differ:\n    {}", errs.join("\n    ")))
    }
}

fn commit_kill(fs: &TestFs) {
    let mut sess = CSession::new(format!("overlay commit kill-9 {}", fs.kind), fs.dir.path());
    kill_rounds(&mut sess, iters(8));
}

fs_test!(kill9_during_commit, commit_kill);

fn commit_shutdown(kind: &'static str) {
    shutdown_rounds(kind, "overlay commit shutdown test", iters(6), |dir| {
        CSession::new(format!("overlay commit shutdown {kind}"), dir)
    });
}

kind_tests!(commit_shutdown; shutdown_during_commit_xfs = "xfs", shutdown_during_commit_ext4 = "ext4");

// ---------------------------------------------------------------------------
// An in-place commit killed while it reserves space.

/// `fallocate(KEEP_SIZE)`, which `commit_in_place` uses to reserve space on
/// the base, sets the base's mtime on XFS, btrfs, ext4 and tmpfs. An earlier
/// version recorded the commit in the superblock only after reserving, so a
/// crash during the reservation left a superblock saying "no commit" over a
/// base whose mtime changed, and the next `Overlay::open` refused it with
/// `Conflict`. With thousands of runs (every other page) the reservation
/// takes long enough that a kill soon after the commit begins lands in it
/// almost every time.
///
/// Round 0 measures the time from "commit begin" to the first in-place
/// piece (the superblock that records the commit, then the reservation) and
/// kills there; later rounds kill at a random point of that window. After
/// every kill the overlay must open, the merged view must be the expected
/// one and the base the old or the merged content.
fn reserve_kill(fs: &TestFs) {
    if !cfg!(feature = "failpoints") {
        eprintln!("SKIPPED in-place reserve kill test: needs --features budge/failpoints");
        return;
    }
    const SIZE: u64 = 48 << 20;
    let mut log = Log::new(format!(
        "overlay in-place commit killed while reserving {}",
        fs.kind
    ));
    let dir = fs.dir.path();
    let (basep, ovp) = (dir.join("base"), dir.join("ov"));
    let pages = SIZE / CPS;
    std::fs::write(&basep, stamped(0, SIZE, BASE)).unwrap();
    File::open(&basep).unwrap().sync_all().unwrap();
    fsync_dir(dir);
    create_overlay(&basep, &ovp, CPS as u32);
    let mut base = vec![BASE; pages as usize];
    let mut ov_ids = vec![ZEROS; pages as usize];
    let name = |id: u64| match id {
        ZEROS => "zeros".to_string(),
        BASE => "the first base".to_string(),
        id => format!("round {}'s data", id - 2),
    };
    let mut window: Option<Duration> = None;
    let mut rng = Rng(log.seed);
    let n = iters(4);
    let t = Instant::now();
    for round in 0..n {
        log.round = round;
        let mut ov = open_retry(&ovp, true).unwrap_or_else(|e| log.fail(&format!("open: {e}")));
        if ov.changes().is_empty() {
            let id = round + 2;
            for p in (0..pages).step_by(2) {
                ov.write_at(p * CPS, &stamped(p * CPS, CPS, id)).unwrap();
                ov_ids[p as usize] = id;
            }
        }
        ov.close().unwrap();
        let d = window.map(|w| w.mul_f64(rng.below(1000) as f64 / 1000.0));
        log.note(format!(
            "kill {d:?} after the commit begins (window {window:?})"
        ));
        let mut w = Worker::spawn(
            common::worker_command(WORKER_TEST)
                .env(WORKER_ENV, &ovp)
                .env("BUDGE_OVC_MODE", "commit")
                .env("BUDGE_OVC_STRATEGY", "in-place")
                .env("BUDGE_OVC_SLEEP", "")
                .env_remove("FAILPOINTS"),
        );
        if wait_line(&mut w, |l| l == "commit begin") {
            match d {
                Some(d) => linger(&mut w, d),
                None => {
                    wait_line(&mut w, |l| l == "mark superblock 0");
                }
            }
        }
        let down = Instant::now();
        w.kill();
        let (lines, status, stderr) = w.finish(Duration::from_secs(60));
        log.log_lines(&lines, down);
        if status.signal() != Some(libc::SIGKILL) {
            log.fail(&format!("worker ended with {status}: {stderr}"));
        }
        let at = |what: &str| lines.iter().find(|(_, l)| l == what).map(|(t, _)| *t);
        let begin = at("commit begin");
        let recorded = at("mark superblock 0");
        let first_piece = lines
            .iter()
            .find(|(_, l)| l.starts_with("mark piece"))
            .map(|(t, _)| *t);
        if let (None, Some(b), Some(r)) = (window, begin, first_piece) {
            window = Some(r - b);
            log.note(format!("record + reservation window {:?}", r - b));
        }
        let pieces = lines
            .iter()
            .filter(|(_, l)| l.starts_with("mark piece"))
            .count();
        log.stats.add(
            match (
                begin.is_some_and(|t| t < down),
                recorded.is_some_and(|t| t < down),
            ) {
                (false, _) => "kill before the commit began",
                (true, false) => "kill before the commit was recorded",
                (true, true) if pieces == 0 => "kill while reserving space (commit recorded)",
                (true, true) => "kill after the first piece",
            },
        );
        let ov = match open_retry(&ovp, true) {
            Ok(o) => o,
            Err(e) => log.fail(&format!(
                "Overlay::open after a kill {pieces} in-place pieces into the commit: {e}"
            )),
        };
        let committed = ov.changes().is_empty();
        let merged: Vec<u64> = (0..pages as usize)
            .map(|p| {
                if ov_ids[p] != ZEROS {
                    ov_ids[p]
                } else {
                    base[p]
                }
            })
            .collect();
        if let Err(e) = compare(
            &|off, buf| ov.read_at(off, buf).map_err(|e| e.to_string()),
            SIZE,
            &merged,
            &name,
        ) {
            log.fail(&format!("the merged view: {e}"));
        }
        let f = File::open(&basep).unwrap();
        let want = if committed { &merged } else { &base };
        if let Err(e) = compare(
            &|off, buf| f.read_exact_at(buf, off).map_err(|e| e.to_string()),
            SIZE,
            want,
            &name,
        ) {
            log.fail(&format!("the base (committed: {committed}): {e}"));
        }
        drop(ov);
        if committed {
            base = merged;
            ov_ids.fill(ZEROS);
        }
        log.stats.add(if committed {
            "outcome: committed"
        } else {
            "outcome: not committed"
        });
        log.stats.add("rounds verified");
    }
    log.report(t.elapsed(), "");
    assert_eq!(log.stats.get("rounds verified"), n);
}

fs_test!(in_place_commit_killed_while_reserving, reserve_kill);
