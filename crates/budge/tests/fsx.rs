//! A model-based random test in the style of fsx (xfstests `ltp/fsx.c`).
//!
//! One file on the filesystem under test and an in-memory model of it
//! (`Vec<u8>`) go through the same random sequence of operations: positioned
//! writes, inserts and collapses (the point of budge), hole punches, zeroing,
//! clones and memmove-like copies within the file, truncates, writes and reads
//! through a `MAP_SHARED` mapping, inserts and collapses while a mapping of
//! the file holds dirty (unflushed) pages, `fsync` + page-cache drops, and
//! invalid requests that must fail without touching the file. After every
//! operation the whole file (size and bytes, read with `pread`) must equal the
//! model.
//!
//! The sequence runs once per shift strategy that can run on the filesystem
//! (forced for every insert/collapse whose range permits it) and once with
//! default options (the best strategy).
//!
//! Environment:
//! - `BUDGE_FSX_SEED`: the seed (decimal or `0x` hex); random otherwise and
//!   printed on stderr and in every failure message.
//! - `BUDGE_FSX_OPS`: operations per run (default [`DEFAULT_OPS`]).
//! - `BUDGE_FSX_STRATEGY`: run only this strategy (`native`, `reflink`,
//!   `kernel-copy`, `user-copy` or `default`).

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use budge::copy::{self, CopyOptions};
use budge::map::SharedMap;
use budge::{Capabilities, ErrorKind, Policy, ShiftOptions, Strategy};
use common::{Rng, TestFs};

/// Operations per run (each filesystem has 3 to 5 runs).
const DEFAULT_OPS: usize = 4000;
/// The file never grows beyond this.
const MAX_SIZE: u64 = 2 << 20;
/// Largest write, punch, zero, copy or shift length.
const MAX_IO: u64 = 256 << 10;
/// Operations listed in a failure message.
const HISTORY: usize = 24;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")))
}

/// One seed for the whole test process (all filesystems).
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        env_u64("BUDGE_FSX_SEED").unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            Rng(t ^ u64::from(std::process::id()).rotate_left(32)).next()
        })
    })
}

fn label(forced: Option<Strategy>) -> &'static str {
    forced.map_or("default", Strategy::name)
}

/// The seed of one run: the test seed mixed with the run's label, so a run
/// reproduces alone (`BUDGE_FSX_STRATEGY`) with the same operations.
fn run_seed(seed: u64, label: &str) -> u64 {
    let h = label.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    Rng(seed ^ h).next()
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Describes how `got` (file bytes from offset `base`) differs from `want`,
/// or `None` if they are equal.
fn diff(got: &[u8], want: &[u8], base: usize) -> Option<String> {
    if got == want {
        return None;
    }
    let n = got.len().min(want.len());
    let Some(first) = (0..n).find(|&i| got[i] != want[i]) else {
        return Some(format!(
            "sizes differ: got {:#x} bytes, the model has {:#x}; the common prefix is equal",
            got.len(),
            want.len()
        ));
    };
    let last = (0..n).rev().find(|&i| got[i] != want[i]).unwrap_or(first);
    let count = (first..=last).filter(|&i| got[i] != want[i]).count();
    let w = |v: &[u8]| hex(&v[first..(first + 16).min(v.len())]);
    let mut s = format!(
        "first difference at offset {:#x} (page {}, +{:#x}), last at {:#x}, {count} bytes differ in between{}\n  file:  {}\n  model: {}",
        base + first,
        (base + first) / 4096,
        (base + first) % 4096,
        base + last,
        if got.len() != want.len() {
            format!("; sizes differ: got {:#x}, model {:#x}", got.len(), want.len())
        } else {
            String::new()
        },
        w(got),
        w(want),
    );
    // Where the file's wrong bytes came from, if they are model bytes moved.
    let probe = &got[first..(first + 16).min(n)];
    if probe.len() == 16 && probe.iter().any(|&b| b != 0) {
        if let Some(at) = want.windows(16).position(|win| win == probe) {
            let _ = write!(
                s,
                "\n  the file's bytes there are the model's bytes at {:#x}",
                base + at
            );
        }
    }
    Some(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Write,
    MapWrite,
    MapRead,
    Insert,
    Collapse,
    Punch,
    Zero,
    Clone,
    Copy,
    Truncate,
    DirtyMapShift,
    SyncDrop,
    Invalid,
}

/// Relative frequencies.
const WEIGHTS: [(Op, u64); 13] = [
    (Op::Write, 14),
    (Op::MapWrite, 6),
    (Op::MapRead, 3),
    (Op::Insert, 16),
    (Op::Collapse, 16),
    (Op::Punch, 5),
    (Op::Zero, 5),
    (Op::Clone, 6),
    (Op::Copy, 10),
    (Op::Truncate, 4),
    (Op::DirtyMapShift, 7),
    (Op::SyncDrop, 2),
    (Op::Invalid, 3),
];

struct Fsx<'a> {
    fs: &'a TestFs,
    caps: Arc<Capabilities>,
    bs: u64,
    file: File,
    model: Vec<u8>,
    rng: Rng,
    /// The strategy forced on every insert/collapse whose range permits it.
    forced: Option<Strategy>,
    seed: u64,
    ops: usize,
    op_no: usize,
    /// The current operation, as done so far.
    cur: String,
    history: VecDeque<String>,
    /// Operations done, by kind.
    counts: BTreeMap<Op, usize>,
    /// Strategies that inserts and collapses reported.
    strategies: BTreeMap<&'static str, usize>,
    size_sum: u64,
    size_max: u64,
}

impl<'a> Fsx<'a> {
    fn new(fs: &'a TestFs, forced: Option<Strategy>, seed: u64, ops: usize) -> Self {
        let caps = fs.caps();
        let bs = caps.block_size();
        let name = format!("fsx-{}", label(forced));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(fs.path(&name))
            .unwrap();
        Fsx {
            fs,
            caps,
            bs,
            file,
            model: Vec::new(),
            rng: Rng(run_seed(seed, label(forced))),
            forced,
            seed,
            ops,
            op_no: 0,
            cur: String::new(),
            history: VecDeque::new(),
            counts: BTreeMap::new(),
            strategies: BTreeMap::new(),
            size_sum: 0,
            size_max: 0,
        }
    }

    fn size(&self) -> u64 {
        self.model.len() as u64
    }

    #[track_caller]
    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        let label = label(self.forced);
        let mut s = format!(
            "fsx FAILED on {} (run {label}, block size {}): seed {} ({:#x}), operation #{} of {}: {}\n{msg}\nprevious operations:",
            self.fs.kind, self.bs, self.seed, self.seed, self.op_no, self.ops, self.cur
        );
        let n = self.history.len();
        for (i, h) in self.history.iter().enumerate() {
            let _ = write!(s, "\n  #{}: {h}", self.op_no - (n - i));
        }
        let _ = write!(
            s,
            "\nreproduce: BUDGE_FSX_SEED={} BUDGE_FSX_OPS={} BUDGE_FSX_STRATEGY={label} cargo test -p budge --test fsx -- fsx::{}",
            self.seed,
            self.op_no + 1,
            self.fs.kind
        );
        panic!("{s}");
    }

    /// The whole file, read with `pread`, must equal the model.
    fn verify(&self, when: &str) {
        let len = self
            .file
            .metadata()
            .unwrap_or_else(|e| self.fail(format!("{when}: fstat: {e}")))
            .len();
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, 0)
            .unwrap_or_else(|e| self.fail(format!("{when}: pread {len:#x} bytes: {e}")));
        if let Some(d) = diff(&buf, &self.model, 0) {
            self.fail(format!(
                "{when}: the file (size {len:#x}) differs from the model (size {:#x}): {d}",
                self.size()
            ));
        }
    }

    fn model_write(&mut self, off: u64, data: &[u8]) {
        let (off, end) = (off as usize, off as usize + data.len());
        if end > self.model.len() {
            self.model.resize(end, 0);
        }
        self.model[off..end].copy_from_slice(data);
    }

    fn model_insert(&mut self, off: u64, len: u64) {
        let (off, len, old) = (off as usize, len as usize, self.model.len());
        self.model.resize(old + len, 0);
        self.model.copy_within(off..old, off + len);
        self.model[off..off + len].fill(0);
    }

    fn model_collapse(&mut self, off: u64, len: u64) {
        let (off, len, old) = (off as usize, len as usize, self.model.len());
        self.model.copy_within(off + len..old, off);
        self.model.truncate(old - len);
    }

    /// A random offset in `[0, limit]`: a multiple of the block size if
    /// `aligned`, else any byte.
    fn offset_in(&mut self, limit: u64, aligned: bool) -> u64 {
        if aligned {
            self.rng.below(limit / self.bs + 1) * self.bs
        } else {
            self.rng.below(limit + 1)
        }
    }

    /// A random non-zero length up to `max` (at least a block): whole blocks
    /// if `aligned`, else any, often under two blocks.
    fn length(&mut self, aligned: bool, max: u64) -> u64 {
        let max = max.max(self.bs);
        if aligned {
            self.bs * self.rng.between(1, max / self.bs)
        } else if self.rng.one_in(2) {
            self.rng.between(1, 2 * self.bs)
        } else {
            self.rng.between(1, max)
        }
    }

    fn random_op(&mut self) -> Op {
        let total: u64 = WEIGHTS.iter().map(|w| w.1).sum();
        let mut r = self.rng.below(total);
        for (op, w) in WEIGHTS {
            if r < w {
                return op;
            }
            r -= w;
        }
        unreachable!()
    }

    fn run(&mut self) {
        let start = Instant::now();
        // Start from some data so the first operations have a file to work on.
        let n = self.rng.below(MAX_SIZE / 2) as usize;
        let data = self.rng.bytes(n);
        self.cur = format!("initial write 0x0+{n:#x}");
        self.file.write_all_at(&data, 0).unwrap();
        self.model_write(0, &data);
        self.verify("after the initial write");
        while self.op_no < self.ops {
            self.op_no += 1;
            let op = self.random_op();
            let done = self.step(op);
            *self.counts.entry(done).or_default() += 1;
            self.verify("after the operation");
            self.size_sum += self.size();
            self.size_max = self.size_max.max(self.size());
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(std::mem::take(&mut self.cur));
        }
        // What is on disk (not only in the page cache) must match too, and a
        // fresh open must see it.
        self.cur = "final fsync, page-cache drop and reopen".into();
        self.sync_drop(true);
        self.verify("after the final fsync and page-cache drop");
        let name = format!("fsx-{}", label(self.forced));
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.fs.path(&name))
            .unwrap();
        self.verify("after reopening");
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k:?} {v}"))
            .collect();
        let strategies: Vec<String> = self
            .strategies
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        eprintln!(
            "fsx {} run {}: {} ops in {:.1?} (file size avg {} KiB, max {} KiB)\n  ops: {}\n  shift strategies: {}",
            self.fs.kind,
            label(self.forced),
            self.ops,
            start.elapsed(),
            (self.size_sum / self.ops.max(1) as u64) >> 10,
            self.size_max >> 10,
            counts.join(", "),
            strategies.join(", ")
        );
    }

    /// Runs `op` (or a substitute when it cannot apply); returns what ran.
    fn step(&mut self, op: Op) -> Op {
        match op {
            Op::Write => self.op_write(),
            Op::MapWrite => self.op_map_write(),
            Op::MapRead => self.op_map_read(),
            Op::Insert => self.op_shift(true),
            Op::Collapse => self.op_shift(false),
            Op::Punch => self.op_punch(),
            Op::Zero => self.op_zero(),
            Op::Clone => self.op_clone(),
            Op::Copy => self.op_copy(),
            Op::Truncate => self.op_truncate(),
            Op::DirtyMapShift => self.op_dirty_map_shift(),
            Op::SyncDrop => {
                let full = self.rng.one_in(2);
                self.cur = format!(
                    "{} + drop page cache",
                    if full { "fsync" } else { "fdatasync" }
                );
                self.sync_drop(full);
                Op::SyncDrop
            }
            Op::Invalid => self.op_invalid(),
        }
    }

    fn sync_drop(&self, full: bool) {
        let r = if full {
            self.file.sync_all()
        } else {
            self.file.sync_data()
        };
        r.unwrap_or_else(|e| self.fail(format!("fsync: {e}")));
        rustix::fs::fadvise(
            &self.file,
            0,
            None::<NonZeroU64>,
            rustix::fs::Advice::DontNeed,
        )
        .unwrap_or_else(|e| self.fail(format!("fadvise(DONTNEED): {e}")));
    }

    fn op_write(&mut self) -> Op {
        let size = self.size();
        let aligned = self.rng.one_in(4);
        let off = if self.rng.one_in(8) {
            size + self.rng.below(MAX_IO)
        } else {
            self.offset_in(size, aligned)
        }
        .min(MAX_SIZE - 1);
        let len = self.length(aligned, MAX_IO / 2).min(MAX_SIZE - off);
        let data = self.rng.bytes(len as usize);
        self.cur = format!("write {off:#x}+{len:#x} (size {size:#x})");
        self.file
            .write_all_at(&data, off)
            .unwrap_or_else(|e| self.fail(format!("pwrite: {e}")));
        self.model_write(off, &data);
        Op::Write
    }

    /// Writes 1 to 4 random ranges through `map` (and the model); returns
    /// their description.
    fn map_writes(&mut self, map: &mut SharedMap, limit: u64) -> String {
        let mut s = String::new();
        for _ in 0..self.rng.between(1, 4) {
            let off = self.rng.below(limit);
            let len = self.rng.between(1, MAX_IO / 4).min(limit - off);
            let data = self.rng.bytes(len as usize);
            let _ = write!(s, " {off:#x}+{len:#x}");
            map.write(off as usize, &data)
                .unwrap_or_else(|e| self.fail(format!("write through the mapping: {e}")));
            self.model_write(off, &data);
        }
        s
    }

    fn map(&self, writable: bool) -> SharedMap {
        // SAFETY: no other process touches the test's private file, and while
        // a map lives this process changes the file only through budge calls
        // (no borrowed slice is held across them) and accesses the mapping
        // only below the file's current size.
        unsafe { SharedMap::new(&self.file, self.model.len(), writable) }
            .unwrap_or_else(|e| self.fail(format!("map {:#x} bytes: {e}", self.size())))
    }

    fn op_map_write(&mut self) -> Op {
        let size = self.size();
        if size == 0 {
            return self.op_write();
        }
        self.cur = format!("mapwrite (size {size:#x}):");
        let mut map = self.map(true);
        let w = self.map_writes(&mut map, size);
        self.cur.push_str(&w);
        if self.rng.one_in(2) {
            self.cur.push_str(" + msync");
            map.flush()
                .unwrap_or_else(|e| self.fail(format!("msync: {e}")));
        }
        drop(map);
        Op::MapWrite
    }

    fn op_map_read(&mut self) -> Op {
        let size = self.size();
        if size == 0 {
            return self.op_write();
        }
        let writable = self.rng.one_in(2);
        self.cur = format!(
            "mapread (size {size:#x}, {})",
            if writable { "rw" } else { "ro" }
        );
        let map = self.map(writable);
        let off = self.rng.below(size);
        let len = self.rng.between(1, MAX_IO).min(size - off);
        let mut buf = vec![0u8; len as usize];
        map.read(off as usize, &mut buf)
            .unwrap_or_else(|e| self.fail(format!("read through the mapping: {e}")));
        if let Some(d) = diff(
            &buf,
            &self.model[off as usize..(off + len) as usize],
            off as usize,
        ) {
            self.fail(format!(
                "read {off:#x}+{len:#x} through the mapping differs from the model: {d}"
            ));
        }
        if let Some(d) = diff(map.as_slice(), &self.model, 0) {
            self.fail(format!("the whole mapping differs from the model: {d}"));
        }
        Op::MapRead
    }

    /// The best strategy for an insert or collapse strictly inside the file.
    fn best(&self, insert: bool, aligned: bool) -> Strategy {
        let native = if insert {
            &self.caps.insert_range
        } else {
            &self.caps.collapse_range
        };
        if aligned && native.works {
            Strategy::Native
        } else if aligned && self.caps.ficlonerange.works {
            Strategy::Reflink
        } else if self.caps.copy_file_range.works {
            Strategy::KernelCopy
        } else {
            Strategy::UserCopy
        }
    }

    /// Random parameters for an insert (`true`) or collapse.
    fn shift_params(&mut self, insert: bool) -> (u64, u64) {
        let size = self.size();
        let bs = self.bs;
        let aligned = !self.rng.one_in(4);
        if insert {
            let off = if self.rng.one_in(10) {
                size
            } else {
                self.offset_in(size, aligned)
            };
            let mut len = if self.rng.one_in(20) {
                0
            } else {
                self.length(aligned, MAX_IO)
            };
            let room = MAX_SIZE.saturating_sub(size);
            if len > room {
                len = if aligned { room / bs * bs } else { room };
            }
            (off, len)
        } else {
            let off = self.offset_in(size, aligned);
            let avail = size - off;
            let len = if self.rng.one_in(20) {
                0
            } else if self.rng.one_in(10) {
                avail // reaches EOF: a truncate
            } else {
                let l = self.length(aligned, MAX_IO).min(avail);
                if aligned {
                    l / bs * bs
                } else {
                    l
                }
            };
            (off, len)
        }
    }

    /// Options for an insert or collapse of `[off, off+len)`: the run's
    /// forced strategy if the range permits it, else the defaults. Returns
    /// them, the strategy the report must name, and a description.
    fn shift_options(
        &mut self,
        insert: bool,
        off: u64,
        len: u64,
    ) -> (ShiftOptions<'static>, Strategy, String) {
        let size = self.size();
        let degenerate = if len == 0 {
            Some(Strategy::Nothing)
        } else if insert && off == size {
            Some(Strategy::Extend)
        } else if !insert && off + len == size {
            Some(Strategy::Truncate)
        } else {
            None
        };
        // Not degenerate: the offset is strictly inside the file.
        let aligned = off % self.bs == 0 && len % self.bs == 0;
        let runnable = |s: Strategy| match s {
            Strategy::Native | Strategy::Reflink => aligned,
            _ => true,
        };
        let mut opts = ShiftOptions {
            sync: self.rng.one_in(32),
            ..ShiftOptions::default()
        };
        let expected = match self.forced {
            Some(s) if degenerate.is_some() || runnable(s) => {
                opts.strategy = Some(s);
                degenerate.unwrap_or(s)
            }
            _ => degenerate.unwrap_or_else(|| self.best(insert, aligned)),
        };
        // Metadata-only with a forced copying strategy is refused as a
        // contradiction (tested in copy.rs), so never combine them here.
        let forced_copy = opts.strategy.is_some_and(Strategy::copies_data);
        if !expected.copies_data() && !forced_copy && self.rng.one_in(4) {
            opts.policy = Policy::MetadataOnly;
        }
        let mut d = match opts.strategy {
            Some(s) => format!("forced {s}"),
            None => "default".to_string(),
        };
        if opts.policy == Policy::MetadataOnly {
            d.push_str(", metadata-only");
        }
        if opts.sync {
            d.push_str(", sync");
        }
        (opts, expected, d)
    }

    /// Inserts or collapses `[off, off+len)` in the file and the model, and
    /// checks the report.
    fn shift(&mut self, insert: bool, off: u64, len: u64) {
        let size = self.size();
        let (opts, expected, d) = self.shift_options(insert, off, len);
        let verb = if insert { "insert" } else { "collapse" };
        let _ = write!(self.cur, "{verb} {off:#x}+{len:#x} (size {size:#x}; {d})");
        let r = if insert {
            budge::insert(&self.file, off, len, &opts)
        } else {
            budge::collapse(&self.file, off, len, &opts)
        };
        let r = r.unwrap_or_else(|e| self.fail(format!("{verb} failed: {e} [{:?}]", e.kind())));
        let _ = write!(self.cur, " -> {}", r.strategy);
        *self.strategies.entry(r.strategy.name()).or_default() += 1;
        let new_size = if insert { size + len } else { size - len };
        // Fallbacks may only name better strategies that were skipped or
        // failed untouched, and none when a strategy was forced.
        let rank = |s: Strategy| Strategy::FORCEABLE.iter().position(|&f| f == s);
        let fallbacks_ok = if opts.strategy.is_some() {
            r.fallbacks.is_empty()
        } else {
            r.fallbacks.iter().all(|(s, _)| rank(*s) < rank(r.strategy))
        };
        // Copies move the tail (and a collapse saves the removed range
        // first); metadata strategies drop the tail's page cache.
        let moved = size - off;
        let (copied, reread) = match expected {
            s if s.copies_data() => (moved, 0),
            Strategy::Native | Strategy::Reflink => (0, moved),
            _ => (0, 0),
        };
        if r.strategy != expected
            || r.old_size != size
            || r.new_size != new_size
            || r.bytes_copied != copied
            || r.tail_reread != reread
            || !fallbacks_ok
        {
            self.fail(format!(
                "unexpected report {r:?}: expected strategy {expected}, sizes {size:#x} -> {new_size:#x}, {copied:#x} bytes copied, {reread:#x} bytes re-read, fallbacks only better strategies (none if forced)"
            ));
        }
        if insert {
            self.model_insert(off, len);
        } else {
            self.model_collapse(off, len);
        }
    }

    fn op_shift(&mut self, insert: bool) -> Op {
        let (off, len) = self.shift_params(insert);
        self.cur.clear();
        self.shift(insert, off, len);
        if insert {
            Op::Insert
        } else {
            Op::Collapse
        }
    }

    /// Dirty a mapping of the file, do not flush it, insert or collapse
    /// through the file while it lives: no dirty page may be lost, and the
    /// mapping must show the new content.
    fn op_dirty_map_shift(&mut self) -> Op {
        let size = self.size();
        if size == 0 {
            return self.op_shift(true);
        }
        let mut map = self.map(true);
        let w = self.map_writes(&mut map, size);
        self.cur = format!("mapwrite (size {size:#x}, not flushed):{w}; then ");
        let insert = self.rng.one_in(2);
        let (off, len) = self.shift_params(insert);
        self.shift(insert, off, len);
        self.verify("after the shift, with the dirty mapping alive");
        // Read back through the mapping, below the new EOF only (SIGBUS
        // beyond).
        let visible = map.len().min(self.model.len());
        let mut buf = vec![0u8; visible];
        map.read(0, &mut buf)
            .unwrap_or_else(|e| self.fail(format!("read through the mapping: {e}")));
        if let Some(d) = diff(&buf, &self.model[..visible], 0) {
            self.fail(format!(
                "after the shift, the old mapping's first {visible:#x} bytes differ from the model: {d}"
            ));
        }
        if visible > 0 && self.rng.one_in(2) {
            let w = self.map_writes(&mut map, visible as u64);
            let _ = write!(self.cur, "; then mapwrite to the old mapping:{w}");
            if self.rng.one_in(2) {
                self.cur.push_str(" + msync");
                map.flush()
                    .unwrap_or_else(|e| self.fail(format!("msync: {e}")));
            }
        }
        drop(map);
        Op::DirtyMapShift
    }

    fn op_punch(&mut self) -> Op {
        if !self.caps.punch_hole.works {
            return self.op_zero();
        }
        let size = self.size();
        let aligned = self.rng.one_in(2);
        let off = self.offset_in(size + self.bs, aligned);
        let len = self.length(aligned, MAX_IO);
        self.cur = format!("punch {off:#x}+{len:#x} (size {size:#x})");
        let r = copy::punch_hole(&self.file, off, len)
            .unwrap_or_else(|e| self.fail(format!("punch failed: {e} [{:?}]", e.kind())));
        let end = (off + len).min(size);
        let holed = end.saturating_sub(off);
        if r.hole_bytes != holed {
            self.fail(format!(
                "unexpected report {r:?}: expected {holed:#x} hole bytes"
            ));
        }
        if holed > 0 {
            self.model[off as usize..end as usize].fill(0);
        }
        Op::Punch
    }

    fn op_zero(&mut self) -> Op {
        let size = self.size();
        let aligned = self.rng.one_in(2);
        let off = self.offset_in(size + MAX_IO / 4, aligned).min(MAX_SIZE - 1);
        let len = if self.rng.one_in(20) {
            0
        } else {
            self.length(aligned, MAX_IO).min(MAX_SIZE - off)
        };
        let meta = self.caps.zero_range.works || self.caps.punch_hole.works;
        let policy = if meta && self.rng.one_in(2) {
            Policy::MetadataOnly
        } else {
            Policy::AllowCopy
        };
        self.cur = format!("zero {off:#x}+{len:#x} (size {size:#x}; {policy:?})");
        copy::zero_range(&self.file, off, len, policy)
            .unwrap_or_else(|e| self.fail(format!("zero failed: {e} [{:?}]", e.kind())));
        if len > 0 {
            let end = (off + len) as usize;
            if end > self.model.len() {
                self.model.resize(end, 0);
            }
            self.model[off as usize..end].fill(0);
        }
        Op::Zero
    }

    /// FICLONERANGE within the file: block-aligned, non-overlapping; now and
    /// then the tail to EOF (unaligned length) cloned beyond EOF.
    fn op_clone(&mut self) -> Op {
        let size = self.size();
        let bs = self.bs;
        if !self.caps.ficlonerange_same_file.works || size < bs {
            return self.op_copy();
        }
        let nb = size / bs;
        let (src, dst, len) = if self.rng.one_in(6) {
            // The tail from a block boundary to EOF, to a block at or past EOF.
            let last = if size % bs == 0 { nb - 1 } else { nb };
            let src = self.rng.below(last + 1) * bs;
            let len = size - src;
            let dst = size.div_ceil(bs) * bs + self.rng.below(4) * bs;
            if dst + len > MAX_SIZE {
                return self.op_copy();
            }
            (src, dst, len)
        } else {
            let lb = self.rng.between(1, nb.min(32));
            let src_b = self.rng.below(nb - lb + 1);
            let Some(dst_b) = (0..8)
                .map(|_| self.rng.below(nb + 3))
                .find(|&d| d.abs_diff(src_b) >= lb && (d + lb) * bs <= MAX_SIZE)
            else {
                return self.op_copy();
            };
            (src_b * bs, dst_b * bs, lb * bs)
        };
        self.cur = format!("clone {src:#x}+{len:#x} to {dst:#x} (size {size:#x})");
        let r = copy::clone_range(&self.file, src, &self.file, dst, len)
            .unwrap_or_else(|e| self.fail(format!("clone failed: {e} [{:?}]", e.kind())));
        if r.strategy != Strategy::Reflink || r.bytes_cloned != len {
            self.fail(format!("unexpected report {r:?}"));
        }
        let data = self.model[src as usize..(src + len) as usize].to_vec();
        self.model_write(dst, &data);
        Op::Clone
    }

    /// `copy_range` within the file; overlapping ranges are a memmove.
    fn op_copy(&mut self) -> Op {
        let size = self.size();
        if size == 0 {
            return self.op_write();
        }
        let bs = self.bs;
        let mode = self.rng.below(3); // 0: aligned, 1: same misalignment, 2: any
        let src = self.offset_in(size - 1, mode == 0);
        // Whole blocks in mode 0, unless clipped at EOF.
        let len = self.length(mode == 0, MAX_IO).min(size - src);
        let overlap = self.rng.one_in(3);
        let dst = if overlap {
            let d = self.rng.between(1, len.max(1));
            let d = if mode == 0 { d.div_ceil(bs) * bs } else { d };
            if self.rng.one_in(2) {
                src + d
            } else {
                src.saturating_sub(d)
            }
        } else {
            match mode {
                0 => self.offset_in(size + MAX_IO / 4, true),
                1 => self.offset_in(size + MAX_IO / 4, true) + src % bs,
                _ => self.rng.below(size + MAX_IO / 4),
            }
        };
        if dst + len > MAX_SIZE {
            return self.op_write();
        }
        let overlapping = src < dst + len && dst < src + len;
        let mut choices = vec![None, Some(Strategy::UserCopy)];
        if self.caps.copy_file_range.works {
            choices.push(Some(Strategy::KernelCopy));
        }
        let to_eof = src + len == size && dst + len >= size;
        if self.caps.ficlonerange_same_file.works
            && !overlapping
            && src % bs == 0
            && dst % bs == 0
            && (len % bs == 0 || to_eof)
        {
            choices.push(Some(Strategy::Reflink));
        }
        let strategy = choices[self.rng.below(choices.len() as u64) as usize];
        let opts = CopyOptions {
            strategy,
            ..CopyOptions::default()
        };
        self.cur = format!(
            "copy {src:#x}+{len:#x} to {dst:#x} (size {size:#x}; {})",
            strategy.map_or("default".to_string(), |s| format!("forced {s}"))
        );
        let r = copy::copy_range(&self.file, src, &self.file, dst, len, &opts)
            .unwrap_or_else(|e| self.fail(format!("copy failed: {e} [{:?}]", e.kind())));
        let _ = write!(self.cur, " -> {}", r.strategy);
        if src == dst && len > 0 {
            // A range copied onto itself: nothing to do, whatever the strategy.
            if r.strategy != Strategy::Nothing || r.bytes_copied + r.bytes_cloned != 0 {
                self.fail(format!("unexpected report {r:?} for a copy onto itself"));
            }
        } else if strategy.is_some_and(|s| s != r.strategy)
            || r.bytes_copied + r.bytes_cloned + r.hole_bytes != len
        {
            self.fail(format!(
                "unexpected report {r:?}: expected the forced strategy and copied + cloned + hole bytes = {len:#x}"
            ));
        }
        let end = (dst + len) as usize;
        if end > self.model.len() {
            self.model.resize(end, 0);
        }
        self.model
            .copy_within(src as usize..(src + len) as usize, dst as usize);
        Op::Copy
    }

    fn op_truncate(&mut self) -> Op {
        let size = self.size();
        let new = match self.rng.below(8) {
            0 if self.rng.one_in(4) => 0,
            0 | 1 => self.rng.below(size + 1),
            2 | 3 => size / self.bs * self.bs,
            4 => (size + self.rng.below(self.bs)).min(MAX_SIZE),
            _ => (size + self.rng.below(MAX_IO)).min(MAX_SIZE),
        };
        self.cur = format!("truncate {size:#x} -> {new:#x}");
        self.file
            .set_len(new)
            .unwrap_or_else(|e| self.fail(format!("ftruncate: {e}")));
        self.model.resize(new as usize, 0);
        Op::Truncate
    }

    /// Requests that must fail with a given error kind and leave the file
    /// unchanged (checked after the operation like any other).
    fn op_invalid(&mut self) -> Op {
        let size = self.size();
        let bs = self.bs;
        let metadata: Vec<Strategy> = common::shift_strategies(self.fs)
            .into_iter()
            .filter(|s| matches!(s, Strategy::Native | Strategy::Reflink))
            .collect();
        // An unaligned range strictly inside the file (collapse: not reaching EOF).
        let unaligned = |rng: &mut Rng| {
            let off = rng.between(1, size - 2 * bs);
            let off = if off % bs == 0 { off + 1 } else { off };
            (off, rng.between(1, bs))
        };
        let (what, insert, off, len, opts, kind) = match self.rng.below(5) {
            0 => {
                let off = size + self.rng.between(1, bs);
                (
                    "insert past EOF",
                    true,
                    off,
                    bs,
                    ShiftOptions::default(),
                    ErrorKind::InvalidArgument,
                )
            }
            1 => {
                let off = self.offset_in(size, true);
                let len = size - off + self.rng.between(1, 2 * bs);
                (
                    "collapse past EOF",
                    false,
                    off,
                    len,
                    ShiftOptions::default(),
                    ErrorKind::InvalidArgument,
                )
            }
            2 if !metadata.is_empty() && size > 4 * bs => {
                let s = metadata[self.rng.below(metadata.len() as u64) as usize];
                let (off, len) = unaligned(&mut self.rng);
                let opts = ShiftOptions {
                    strategy: Some(s),
                    ..ShiftOptions::default()
                };
                (
                    "forced metadata strategy, unaligned",
                    self.rng.one_in(2),
                    off,
                    len,
                    opts,
                    ErrorKind::Alignment,
                )
            }
            3 if size > 4 * bs => {
                let (off, len) = unaligned(&mut self.rng);
                let opts = ShiftOptions {
                    policy: Policy::MetadataOnly,
                    ..ShiftOptions::default()
                };
                let kind = if metadata.is_empty() {
                    ErrorKind::Unsupported
                } else {
                    ErrorKind::Alignment
                };
                (
                    "metadata-only, unaligned",
                    self.rng.one_in(2),
                    off,
                    len,
                    opts,
                    kind,
                )
            }
            4 if self.caps.ficlonerange_same_file.works && size >= 4 * bs => {
                let nb = size / bs;
                let lb = self.rng.between(2, nb / 2);
                let src = self.rng.below(nb - lb) * bs;
                let dst = src + self.rng.between(1, lb - 1) * bs;
                let len = lb * bs;
                self.cur = format!(
                    "invalid: overlapping clone {src:#x}+{len:#x} to {dst:#x} (size {size:#x})"
                );
                match copy::clone_range(&self.file, src, &self.file, dst, len) {
                    Err(e) if e.kind() == ErrorKind::InvalidArgument => {}
                    r => self.fail(format!("expected an InvalidArgument error, got {r:?}")),
                }
                return Op::Invalid;
            }
            _ => {
                let insert = self.rng.one_in(2);
                return self.op_shift(insert);
            }
        };
        let verb = if insert { "insert" } else { "collapse" };
        self.cur = format!("invalid ({what}): {verb} {off:#x}+{len:#x} (size {size:#x}; {opts:?})");
        let r = if insert {
            budge::insert(&self.file, off, len, &opts)
        } else {
            budge::collapse(&self.file, off, len, &opts)
        };
        match r {
            Err(e) if e.kind() == kind => {}
            r => self.fail(format!("expected a {kind:?} error, got {r:?}")),
        }
        Op::Invalid
    }
}

fn run_all(fs: &TestFs) {
    let seed = seed();
    let ops = env_u64("BUDGE_FSX_OPS").map_or(DEFAULT_OPS, |n| n as usize);
    let only = std::env::var("BUDGE_FSX_STRATEGY").ok();
    let runs: Vec<Option<Strategy>> = common::shift_strategies(fs)
        .into_iter()
        .map(Some)
        .chain([None])
        .filter(|s| match only.as_deref() {
            Some(o) => o == label(*s),
            None => true,
        })
        .collect();
    let names: Vec<&str> = runs.iter().map(|s| label(*s)).collect();
    eprintln!(
        "fsx on {}: seed {seed} ({seed:#x}), {ops} ops per run, runs: {} (reproduce with BUDGE_FSX_SEED={seed})",
        fs.kind,
        names.join(", ")
    );
    assert!(
        !runs.is_empty(),
        "BUDGE_FSX_STRATEGY={only:?} matches no strategy that runs on {}",
        fs.kind
    );
    let start = Instant::now();
    for forced in runs {
        Fsx::new(fs, forced, seed, ops).run();
    }
    eprintln!("fsx on {}: done in {:.1?}", fs.kind, start.elapsed());
}

fs_test!(fsx, |fs: &TestFs| run_all(fs));
