//! The crash harness: a worker process (this test binary re-executed) runs a
//! random stream of store operations and reports each one on stdout before
//! (`@@ begin <i> <op>`) and after (`@@ done <i>`) it; the parent keeps the
//! model, crashes the worker (SIGKILL, or a filesystem shutdown that drops
//! the unwritten log), lets recovery run, and checks the store against the
//! model: the table must be the one before the interrupted op or the one
//! after it, and every byte of every region must be what the committed ops
//! put there.
#![allow(dead_code)]

pub mod loopfs;
pub mod model;
pub mod rounds;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use budge::store::format::{self, IntentKind, Method};
use budge::store::{plan, Store, StoreOptions};
use budge::Strategy;

use crate::common::{self, say};
use model::{choose, Mix, Model, Op, Rng};

/// The store's failpoints the worker reports (`@@ mark <name>`).
pub const MARKS: [&str; 2] = ["after-intent", "after-shift"];

/// Set (to the store path) in a worker's environment.
pub const WORKER_ENV: &str = "BUDGE_CRASH_WORKER";
/// The name of the worker test in the test binary.
pub const WORKER_TEST: &str = "crash_worker";

pub use crate::common::store_opts as opts;

pub fn strategy_name(s: Option<Strategy>) -> &'static str {
    s.map_or("auto", Strategy::name)
}

fn parse_strategy(s: &str) -> Option<Strategy> {
    (s != "auto").then(|| s.parse().unwrap())
}

/// Operation mixes.
pub fn mix(name: &str) -> Mix {
    match name {
        // Small stores on the shared filesystems: many kills, all op kinds.
        "kill" => Mix {
            max_regions: 8,
            max_len: 4 << 20,
            max_total: 24 << 20,
            write: 30,
            max_write: 4 << 20,
            stripe: (16 << 10, 128 << 10, 4096),
            max_extents: 3000,
            gentle: false,
            stripe_pct: 25,
        },
        // Large sparse stores with thousands of extents on a private loop
        // filesystem: mostly resizes, so most shutdowns land in a shift.
        "shutdown" => Mix {
            max_regions: 10,
            max_len: 48 << 20,
            max_total: 320 << 20,
            write: 25,
            max_write: 1 << 20,
            stripe: (16 << 10, 96 << 10, 4096),
            max_extents: 9000,
            gentle: true,
            stripe_pct: 60,
        },
        m => panic!("unknown mix {m}"),
    }
}

/// `Store::open`, retried for up to 10 s while it fails with `Locked`.
///
/// The store's writer lock is a `flock`, which belongs to the open file
/// description: when a thread of a multi-threaded process closes the store
/// while another thread is spawning a process, the child holds a copy of
/// the descriptor (and so the lock) until it execs. The test binary runs
/// several tests at once, each spawning workers, so a store just closed by
/// one thread can look locked to the next opener for a moment. Returns how
/// many times it retried.
pub fn open_retry(path: &Path, o: &StoreOptions) -> (budge::Result<Store>, u32) {
    let t = Instant::now();
    let mut n = 0;
    loop {
        match Store::open(path, o) {
            Err(e)
                if e.kind() == budge::ErrorKind::Locked
                    && t.elapsed() < Duration::from_secs(10) =>
            {
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return (r, n),
        }
    }
}

pub fn count_extents(path: &Path) -> Option<usize> {
    let f = File::open(path).ok()?;
    budge::extents::extents(&f).ok().map(|e| e.len())
}

/// The worker: does nothing unless [`WORKER_ENV`] is set.
pub fn worker_main() {
    let Ok(path) = std::env::var(WORKER_ENV) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("worker needs {k}"));
    let seed: u64 = var("BUDGE_CRASH_SEED").parse().unwrap();
    let ops: u64 = var("BUDGE_CRASH_OPS").parse().unwrap();
    let vbase: u64 = var("BUDGE_CRASH_VBASE").parse().unwrap();
    let strategy = parse_strategy(&var("BUDGE_CRASH_STRATEGY"));
    let mix = mix(&var("BUDGE_CRASH_MIX"));
    let _scenario = fail::FailScenario::setup();
    // Mark the store's failpoints on stdout (with the `failpoints` feature):
    // `after-intent` is right before the shift (native: the fallocate;
    // sidecar: the copy back), `after-shift` right after it. One of them
    // may also sleep, to widen the window.
    let sleep = std::env::var("BUDGE_CRASH_SLEEP").ok().map(|v| {
        let (mark, ms) = v.split_once(':').unwrap();
        (mark.to_string(), Duration::from_millis(ms.parse().unwrap()))
    });
    for mark in MARKS {
        let nap = sleep.as_ref().filter(|(m, _)| m == mark).map(|(_, d)| *d);
        fail::cfg_callback(format!("budge::store::{mark}"), move || {
            say(&format!("mark {mark}"));
            if let Some(d) = nap {
                std::thread::sleep(d);
            }
        })
        .unwrap();
    }
    say("opening");
    // Native resizes commit by the commit record in three rounds of four,
    // by a header slot written first in the fourth (both protocols crash).
    let o = StoreOptions {
        commit_record: seed % 4 != 0,
        ..opts(strategy)
    };
    let mut s = match open_retry(Path::new(&path), &o).0 {
        Ok(s) => s,
        Err(e) => {
            say(&format!("error open {e}"));
            std::process::exit(3);
        }
    };
    for a in &s.recovery().actions {
        say(&format!("action {a}"));
    }
    say("opened");
    let mut m = Model::new(s.align());
    for r in s.regions() {
        m.apply(&Op::Add {
            name: r.name,
            len: r.len,
        })
        .unwrap();
    }
    let mut rng = Rng::new(seed);
    let (mut names, mut ver) = (vbase, vbase);
    let path = PathBuf::from(path);
    for i in 0..ops {
        let mut op = choose(&m, &mix, &mut rng, &mut names, &mut ver);
        if let Op::Stripe { name, start, .. } = &op {
            if count_extents(&path).unwrap_or(0) > mix.max_extents {
                op = Op::Write {
                    name: name.clone(),
                    start: *start,
                    end: (*start + 4096).min(m.regions[m.find(name).unwrap()].len),
                    ver,
                };
            }
        }
        say(&format!("begin {i} {op}"));
        let t = std::time::Instant::now();
        if let Err(e) = op.run(&mut s) {
            say(&format!("error {i} {e}"));
            std::process::exit(2);
        }
        say(&format!("done {i} {}", t.elapsed().as_micros()));
        m.apply(&op).unwrap();
        // The worker needs only the table.
        for r in &mut m.regions {
            r.data.clear();
        }
    }
    say("finished");
}

/// What a worker is told to do.
#[derive(Clone, Debug)]
pub struct WorkerCfg {
    pub path: PathBuf,
    pub seed: u64,
    pub ops: u64,
    pub vbase: u64,
    pub strategy: Option<Strategy>,
    pub mix: &'static str,
    /// Sleep this long at a mark (`failpoints` feature).
    pub sleep: Option<(&'static str, u64)>,
}

/// A running store worker: a [`common::Worker`] whose [`finish`](Worker::finish)
/// describes how it ended.
pub struct Worker(common::Worker);

impl Worker {
    pub fn spawn(cfg: &WorkerCfg) -> Worker {
        let mut cmd = common::worker_command(WORKER_TEST);
        cmd.env(WORKER_ENV, &cfg.path)
            .env("BUDGE_CRASH_SEED", cfg.seed.to_string())
            .env("BUDGE_CRASH_OPS", cfg.ops.to_string())
            .env("BUDGE_CRASH_VBASE", cfg.vbase.to_string())
            .env("BUDGE_CRASH_STRATEGY", strategy_name(cfg.strategy))
            .env("BUDGE_CRASH_MIX", cfg.mix)
            .env_remove("FAILPOINTS")
            .env_remove("BUDGE_CRASH_SLEEP");
        if let Some((mark, ms)) = cfg.sleep {
            cmd.env("BUDGE_CRASH_SLEEP", format!("{mark}:{ms}"));
        }
        Worker(common::Worker::spawn(&mut cmd))
    }

    /// Waits for the worker to end (killing it after `timeout`); returns
    /// its protocol lines (with the time each was read) and a description
    /// of how it ended plus stderr.
    pub fn finish(self, timeout: Duration) -> (Vec<(Instant, String)>, ExitStatus, String) {
        let (lines, status, err) = self.0.finish(timeout);
        (lines, status, format!("{status}; stderr: {}", err.trim()))
    }
}

impl std::ops::Deref for Worker {
    type Target = common::Worker;
    fn deref(&self) -> &common::Worker {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut common::Worker {
        &mut self.0
    }
}

/// Sleeps `d` precisely (spinning below a millisecond).
pub fn pause(d: Duration) {
    if d >= Duration::from_millis(2) {
        std::thread::sleep(d);
    } else {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }
}

/// When to crash the worker.
#[derive(Clone, Debug)]
pub enum Trigger {
    /// This long after it was started.
    Time(Duration),
    /// `delay` after it begins op `k` or a later one (the first structural
    /// one at or after `k` if `structural`).
    Op {
        k: u64,
        structural: bool,
        delay: Duration,
    },
    /// `delay` after the first op of `kind` at or after op `k` returned.
    Done {
        kind: &'static str,
        k: u64,
        delay: Duration,
    },
    /// `delay` after the first failpoint `mark` (see [`MARKS`]) in op `k`
    /// or a later one (if `deep`, one that moves at least half the regions).
    Mark {
        mark: &'static str,
        k: u64,
        deep: bool,
        delay: Duration,
    },
}

/// Reads the worker's lines until `trigger` fires (or the worker ends);
/// whether it fired.
pub fn fire(w: &mut Worker, model: &Model, trigger: &Trigger) -> bool {
    if let Trigger::Time(d) = *trigger {
        w.wait_for(Instant::now() + d, |_| false);
        return true;
    }
    // Follow the table, to know what each op does.
    let mut scratch = model.clone();
    let mut pending: Option<Op> = None;
    let mut armed = false;
    let hit = w.wait_for(Instant::now() + Duration::from_secs(60), |l| {
        if let Some(rest) = l.strip_prefix("begin ") {
            let (i, op) = rest.split_once(' ').unwrap();
            let (i, op): (u64, Op) = (i.parse().unwrap(), Op::parse(op).unwrap());
            armed = match *trigger {
                Trigger::Op { k, structural, .. } => {
                    i >= k && (!structural || scratch.is_structural(&op))
                }
                Trigger::Mark { k, deep, .. } => {
                    i >= k && (!deep || scratch.moves(&op) >= (scratch.regions.len() / 2).max(1))
                }
                Trigger::Done { k, kind, .. } => i >= k && op.kind() == kind,
                Trigger::Time(_) => unreachable!(),
            };
            pending = Some(op);
            return armed && matches!(trigger, Trigger::Op { .. });
        }
        if l.starts_with("done ") {
            if let Some(op) = pending.take() {
                let _ = scratch.apply(&op);
            }
            return armed && matches!(trigger, Trigger::Done { .. });
        }
        match trigger {
            Trigger::Mark { mark, .. } => armed && l.strip_prefix("mark ") == Some(*mark),
            _ => false,
        }
    });
    if hit.is_some() {
        let (Trigger::Op { delay, .. } | Trigger::Mark { delay, .. } | Trigger::Done { delay, .. }) =
            *trigger
        else {
            unreachable!()
        };
        pause(delay);
    }
    hit.is_some()
}

/// Counters, by strategy.
#[derive(Default)]
pub struct Stats {
    pub counts: BTreeMap<(String, String), u64>,
    pub extents: Vec<usize>,
}

impl Stats {
    pub fn add(&mut self, strategy: &str, key: impl Into<String>) {
        *self
            .counts
            .entry((strategy.to_string(), key.into()))
            .or_default() += 1;
    }

    pub fn get(&self, key: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((_, k), _)| k == key)
            .map(|(_, v)| v)
            .sum()
    }

    /// Sum over keys starting with `prefix`.
    pub fn sum(&self, prefix: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((_, k), _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

/// What the crash left, read from the file before recovery touches it.
pub fn forensic(path: &Path) -> String {
    let Ok(f) = File::open(path) else {
        return "no file".into();
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut valid: Vec<(format::Header, usize)> = Vec::new();
    for (i, &off) in format::SLOT_OFFSET.iter().enumerate() {
        let mut b = vec![0u8; format::SLOT_SIZE as usize];
        if f.read_exact_at(&mut b, off).is_err() {
            continue;
        }
        let Ok(h) = format::decode(&b) else { continue };
        if let Some(it) = h.intent.filter(|it| it.method == Method::Native) {
            if read_journal(&f, &it, i).is_err() {
                continue;
            }
        }
        valid.push((h, i));
    }
    let Some((mut h, slot)) = valid.iter().max_by_key(|(h, _)| h.generation).cloned() else {
        return "NO VALID HEADER".into();
    };
    // The commit record, when newer than both slots, is the table in force.
    let mut from_record = false;
    if let Ok(Some(raw)) = budge::sys::meta::xattr_get_opt(&f, format::RECORD_XATTR) {
        let Ok(rec) = format::decode_record(&raw) else {
            return "NO VALID HEADER: damaged commit record".into();
        };
        if rec.generation > h.generation {
            let Some((base, _)) = valid.iter().find(|(b, _)| b.generation == rec.base) else {
                return "NO VALID HEADER: the commit record's base slot is gone".into();
            };
            match format::apply_record(base, &rec) {
                Ok(t) => h = t,
                Err(e) => return format!("NO VALID HEADER: commit record: {e}"),
            }
            from_record = true;
        }
    }
    let Some(it) = h.intent else {
        return if from_record {
            "clean (commit record)".into()
        } else {
            "clean".into()
        };
    };
    let kind = match it.kind {
        IntentKind::Insert => "insert",
        IntentKind::Collapse => "collapse",
    };
    match it.method {
        Method::Native => {
            let map: Vec<plan::MapExtent> = match budge::extents::extents(&f) {
                Ok(m) => m
                    .into_iter()
                    .map(|e| plan::MapExtent {
                        logical: e.logical,
                        physical: e.physical,
                        len: e.length,
                    })
                    .collect(),
                Err(e) => return format!("native {kind}: FIEMAP failed: {e}"),
            };
            let journal = if from_record {
                match plan::reconstruct(&it, &map) {
                    Ok(j) => j,
                    Err(e) => return format!("native {kind} (record): UNPLANNABLE: {e}"),
                }
            } else {
                read_journal(&f, &it, slot).unwrap()
            };
            let kind = if from_record {
                format!("{kind} (record)")
            } else {
                kind.to_string()
            };
            let steps = match plan::plan(&it, &journal, &map, size) {
                Ok(s) => s,
                Err(e) => return format!("native {kind}: UNPLANNABLE: {e}"),
            };
            if steps.is_empty() {
                return format!("native {kind}: complete");
            }
            match plan::progress(&it, &journal, &map) {
                Ok(plan::Progress::NotStarted) if size == it.old_size => {
                    format!("native {kind}: not started")
                }
                Ok(plan::Progress::NotStarted) => {
                    format!("native {kind}: not started, size already changed")
                }
                Ok(plan::Progress::Done) => format!("native {kind}: moved, size pending"),
                Ok(plan::Progress::Partial { .. }) => format!("native {kind}: PARTIAL"),
                Err(e) => format!("native {kind}: progress error {e}"),
            }
        }
        Method::Sidecar => {
            let mut side = path.as_os_str().to_owned();
            side.push(".budge-shift");
            let side_ok = Path::new(&side).exists();
            let state = if size == it.old_size {
                "size old"
            } else if size == it.new_size() {
                "size new"
            } else if size == it.offset {
                "cut at the offset"
            } else {
                "size other"
            };
            format!(
                "sidecar {kind}: {state}{}",
                if side_ok { "" } else { ", NO SIDECAR" }
            )
        }
    }
}

/// Details of a partial native shift: how many journalled extents moved.
pub fn partial_detail(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    let mut best: Option<(format::Header, usize)> = None;
    for (i, &off) in format::SLOT_OFFSET.iter().enumerate() {
        let mut b = vec![0u8; format::SLOT_SIZE as usize];
        f.read_exact_at(&mut b, off).ok()?;
        if let Ok(h) = format::decode(&b) {
            if best
                .as_ref()
                .is_none_or(|(o, _)| h.generation > o.generation)
            {
                best = Some((h, i));
            }
        }
    }
    let (h, slot) = best?;
    let it = h.intent?;
    let journal = read_journal(&f, &it, slot).ok()?;
    let map: Vec<plan::MapExtent> = budge::extents::extents(&f)
        .ok()?
        .into_iter()
        .map(|e| plan::MapExtent {
            logical: e.logical,
            physical: e.physical,
            len: e.length,
        })
        .collect();
    match plan::progress(&it, &journal, &map).ok()? {
        plan::Progress::Partial { low, high } => {
            let (below, above) = (
                journal.iter().filter(|j| j.logical + j.len <= low).count(),
                journal.iter().filter(|j| j.logical >= high).count(),
            );
            let moved = match it.kind {
                IntentKind::Insert => above,
                IntentKind::Collapse => below,
            };
            Some(format!(
                "{moved} of {} journalled extents moved (boundary {low}..{high}, intent {:?} of {} at {})",
                journal.len(),
                it.kind,
                it.len,
                it.offset
            ))
        }
        _ => None,
    }
}

fn read_journal(
    f: &File,
    it: &format::Intent,
    slot: usize,
) -> Result<Vec<format::JournalEntry>, String> {
    let mut b = vec![0u8; it.journal_count as usize * format::JOURNAL_ENTRY_LEN];
    f.read_exact_at(&mut b, format::JOURNAL_OFFSET[slot])
        .map_err(|e| e.to_string())?;
    format::decode_journal(&b, it).map_err(|e| e.to_string())
}

/// A recovery action, reduced to a statistics key.
pub fn action_key(a: &str) -> String {
    if a.starts_with("completed an interrupted shift") {
        let steps: Vec<&str> = ["SetSize", "Collapse", "Insert"]
            .iter()
            .flat_map(|s| a.match_indices(s))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        format!("native shift completed: [{}]", steps.join(", "))
    } else if a.starts_with("rewrote the tail from") {
        "sidecar tail rewritten".into()
    } else if a.starts_with("rolled back") {
        "ROLLED BACK".into()
    } else if a.starts_with("zeroed bytes beyond") {
        "zeroed slack".into()
    } else if a.starts_with("removed stale") {
        "removed stale sidecar".into()
    } else {
        format!("other: {a}")
    }
}

/// One crash test: a store, its model, and what happened so far.
pub struct Session {
    pub label: String,
    pub path: PathBuf,
    pub model: Model,
    pub seed: u64,
    pub stats: Stats,
    pub history: Vec<String>,
    /// Every op begun, by whom and in which round (written out on failure).
    pub oplog: Vec<String>,
    /// Every write version used so far (to tell whose bytes are where).
    pub versions: Vec<u64>,
    pub iteration: u64,
    /// How long shifts took (from mark `after-intent` to `after-shift`),
    /// in µs, by strategy.
    pub shift_us: BTreeMap<String, Vec<u64>>,
    /// Where a failing store is copied.
    pub keep: PathBuf,
    /// Drop the store's clean pages from the page cache before checking it
    /// (kill tests: a killed process loses nothing in the page cache, so
    /// without this the check would never read what is on disk).
    pub drop_cache: bool,
}

/// What [`Session::check_store`] found.
pub struct Verified {
    /// For statistics.
    pub outcome: String,
    /// How many of the uncertain ops the store reflects.
    pub applied: usize,
    /// Byte ranges (region, offset, bytes) to rewrite so the store is
    /// exactly the model after `applied` ops.
    pub repairs: Vec<(String, u64, Vec<u8>)>,
}

/// A crashed worker's lines, digested by [`Session::absorb`].
#[derive(Default)]
pub struct Absorbed {
    /// Ops whose effect the crash leaves open, in order.
    pub uncertain: Vec<Op>,
    /// How many of them (the first ones) returned after the shutdown began.
    pub returned: usize,
    /// Recovery actions the worker's open reported.
    pub actions: Vec<String>,
}

fn describe(ops: &[Op]) -> String {
    if ops.is_empty() {
        "nothing".into()
    } else {
        ops.iter().map(Op::to_string).collect::<Vec<_>>().join("; ")
    }
}

impl Session {
    /// Creates a store at `path` and fills it with `setup` (run by the
    /// parent, no crash).
    pub fn create(label: &str, path: PathBuf, seed: u64, setup: &[Op]) -> Session {
        let mut s = Store::create(&path, &opts(None))
            .unwrap_or_else(|e| panic!("{label}: create store: {e}"));
        let mut model = Model::new(s.align());
        for op in setup {
            op.run(&mut s)
                .unwrap_or_else(|e| panic!("{label}: setup {op}: {e}"));
            model.apply(op).unwrap();
        }
        drop(s);
        Session {
            label: label.to_string(),
            path,
            model,
            seed,
            stats: Stats::default(),
            history: Vec::new(),
            oplog: setup.iter().map(|op| format!("[setup] {op}")).collect(),
            versions: setup.iter().filter_map(Op::version).collect(),
            iteration: 0,
            shift_us: BTreeMap::new(),
            drop_cache: false,
            keep: PathBuf::from(format!(
                "/var/tmp/budge-crash-fail-{}-{seed:016x}",
                label.replace([' ', '/'], "-")
            )),
        }
    }

    /// A delay after the `after-intent` mark that lands inside the shift:
    /// uniform up to the 90th percentile of the shifts seen so far with
    /// `strategy`, or log-uniform up to the longest (up to 100 ms before
    /// there are any).
    pub fn shift_delay(&self, rng: &mut Rng, strategy: &str) -> Duration {
        match self.shift_us.get(strategy) {
            Some(v) if v.len() >= 3 => {
                let mut v = v.clone();
                v.sort_unstable();
                let (p90, max) = (v[v.len() * 9 / 10], v[v.len() - 1]);
                Duration::from_micros(if rng.chance(50) {
                    rng.below(p90 + 1)
                } else {
                    rng.log_range(1, max.max(1000))
                })
            }
            _ => Duration::from_micros(rng.log_range(1, 100_000)),
        }
    }

    pub fn worker(
        &self,
        rng: &mut Rng,
        it: u64,
        ops: u64,
        strategy: Option<Strategy>,
        mix: &'static str,
    ) -> WorkerCfg {
        WorkerCfg {
            path: self.path.clone(),
            seed: rng.next(),
            ops,
            vbase: (it + 1) << 32,
            strategy,
            mix,
            sleep: None,
        }
    }

    pub fn note(&mut self, s: String) {
        if std::env::var_os("BUDGE_CRASH_VERBOSE").is_some() {
            eprintln!("{} [{}] {s}", self.label, self.iteration);
        }
        self.history.push(format!("[{}] {s}", self.iteration));
        if self.history.len() > 60 {
            self.history.remove(0);
        }
    }

    /// Where the store is copied before each recovery.
    fn snap_dir(&self) -> PathBuf {
        PathBuf::from(format!(
            "/var/tmp/budge-crash-snap-{}-{}",
            std::process::id(),
            self.label.replace([' ', '/'], "-")
        ))
    }

    /// Copies the store (and sidecar) as the crash left it, so a failure
    /// can be replayed from the state before recovery.
    fn snapshot(&self) {
        let dir = self.snap_dir();
        let _ = std::fs::create_dir_all(&dir);
        for suffix in ["", ".budge-shift"] {
            let mut src = self.path.as_os_str().to_owned();
            src.push(suffix);
            let dst = dir.join(format!("store{suffix}"));
            let _ = std::fs::remove_file(&dst);
            if Path::new(&src).exists() {
                // Sparse, and not a reflink: sharing the store's blocks
                // would change what its later writes do.
                let _ = Command::new("cp")
                    .args(["--sparse=always", "--reflink=never"])
                    .arg(&src)
                    .arg(&dst)
                    .status();
            }
        }
    }

    /// Fails the test with everything needed to look into it; keeps a copy
    /// of the store before and after recovery.
    pub fn fail(&self, msg: &str) -> ! {
        let _ = std::fs::create_dir_all(&self.keep);
        let mut kept = Vec::new();
        for suffix in ["", ".budge-shift"] {
            let mut src = self.path.as_os_str().to_owned();
            src.push(suffix);
            let dst = self.keep.join(format!("store{suffix}"));
            if std::fs::copy(&src, &dst).is_ok() {
                kept.push(dst.display().to_string());
            }
            let snap = self.snap_dir().join(format!("store{suffix}"));
            let dst = self.keep.join(format!("before-recovery-store{suffix}"));
            if std::fs::rename(&snap, &dst).is_ok() || std::fs::copy(&snap, &dst).is_ok() {
                kept.push(dst.display().to_string());
            }
        }
        let _ = std::fs::write(
            self.keep.join("history.txt"),
            format!("{msg}\n\n{}\n", self.history.join("\n")),
        );
        let _ = std::fs::write(self.keep.join("ops.log"), self.oplog.join("\n") + "\n");
        panic!(
            "\n{}: CRASH TEST FAILED at iteration {} (seed {:#x}; rerun with BUDGE_CRASH_SEED={:#x})\n{msg}\n\
             store copied to {kept:?}\nrecent history:\n  {}\n",
            self.label,
            self.iteration,
            self.seed,
            self.seed,
            self.history.join("\n  ")
        );
    }

    /// Fails unless the worker was killed or finished, or after a shutdown
    /// (`shutdown`: the worker was still running when the filesystem was
    /// shut down) stopped at an error it reported or died of SIGBUS (a
    /// page of the mapping could not be read). A panic is a failure.
    pub fn check_exit(&mut self, strategy: &str, status: ExitStatus, desc: &str, shutdown: bool) {
        if status.signal() == Some(9) || status.success() {
            return;
        }
        if shutdown && matches!(status.code(), Some(2 | 3)) {
            return;
        }
        if shutdown && status.signal() == Some(libc::SIGBUS) {
            self.stats.add(
                strategy,
                "worker died of SIGBUS (touched the mapping after the shutdown)",
            );
            return;
        }
        self.fail(&format!("the worker ended abnormally: {desc}"));
    }

    /// Takes in a crashed worker's lines: applies the ops it finished to the
    /// model and returns the ones whose outcome the crash leaves open: the
    /// op it had begun, and after a shutdown also those that returned once
    /// the shutdown had begun. `crash` is when the worker was killed or the
    /// filesystem shut down: errors the worker reports are failures, unless
    /// read after a shutdown (every call fails from then on).
    pub fn absorb(
        &mut self,
        lines: &[(Instant, String)],
        strategy: &str,
        crash: Instant,
        shutdown: bool,
    ) -> Absorbed {
        let mut pending: Option<Op> = None;
        let mut out = Absorbed::default();
        let mut done = 0;
        let mut intent_at: Option<Instant> = None;
        // Where the crash landed: the last line read before it.
        let point = match lines.iter().rev().find(|(t, _)| *t < crash) {
            None => "before the worker said anything",
            Some((_, l)) if l == "opening" => "in open (recovery)",
            Some((_, l)) if l.starts_with("action") || l == "opened" => "after open",
            Some((_, l)) if l == "mark after-intent" => "IN THE SHIFT (after the intent)",
            Some((_, l)) if l == "mark after-shift" => "after the shift, before the op returned",
            Some((_, l)) if l.starts_with("begin") => "in an op, before any shift",
            Some((_, l)) if l.starts_with("done") => "between ops",
            Some(_) => "after the worker ended",
        };
        self.stats.add(strategy, format!("crash point: {point}"));
        for (t, l) in lines {
            let (word, rest) = l.split_once(' ').unwrap_or((l.as_str(), ""));
            self.oplog.push(format!("[{}] worker: {l}", self.iteration));
            match word {
                "begin" => {
                    if let Some(p) = &pending {
                        self.fail(&format!("worker began an op while {p} was pending: {l}"));
                    }
                    let (_, op) = rest.split_once(' ').unwrap();
                    let op = Op::parse(op).unwrap_or_else(|e| self.fail(&e));
                    self.versions.extend(op.version());
                    pending = Some(op);
                }
                "done" => {
                    let op = pending
                        .take()
                        .unwrap_or_else(|| self.fail(&format!("done without begin: {l}")));
                    // After a shutdown began, an op that still returned may
                    // or may not have reached the disk: the shutdown is not
                    // one instant.
                    if shutdown && (*t >= crash || !out.uncertain.is_empty()) {
                        self.note(format!(
                            "{op} returned {} us after the shutdown began",
                            t.saturating_duration_since(crash).as_micros()
                        ));
                        out.uncertain.push(op);
                        out.returned += 1;
                    } else if let Err(e) = self.model.apply(&op) {
                        self.fail(&format!("model rejects {op}: {e}"));
                    }
                    done += 1;
                }
                // Time only the shifts that move regions.
                "mark" if rest == "after-intent" => {
                    intent_at = pending
                        .as_ref()
                        .is_some_and(|op| self.model.moves(op) > 0)
                        .then_some(*t);
                }
                "mark" => {
                    if let Some(t0) = intent_at.take() {
                        self.shift_us
                            .entry(strategy.to_string())
                            .or_default()
                            .push((*t - t0).as_micros() as u64);
                    }
                }
                "error" => {
                    if !shutdown || *t < crash {
                        self.fail(&format!("worker op failed: {rest}"));
                    }
                    let what = if rest.contains("os error 5") {
                        "EIO".to_string()
                    } else {
                        rest.rsplit(": ")
                            .next()
                            .unwrap_or(rest)
                            .chars()
                            .take(90)
                            .collect()
                    };
                    self.note(format!("worker error after the shutdown: {rest}"));
                    self.stats
                        .add(strategy, format!("worker error after the shutdown: {what}"));
                }
                "action" => {
                    self.stats.add(
                        strategy,
                        format!("recovery by a worker: {}", action_key(rest)),
                    );
                    out.actions.push(rest.to_string());
                }
                _ => {}
            }
        }
        out.uncertain.extend(pending);
        self.note(format!(
            "worker finished {done} ops; uncertain: {}",
            describe(&out.uncertain)
        ));
        out
    }

    /// Logs an op the parent itself runs on the store.
    pub fn log_parent(&mut self, op: &Op) {
        self.oplog
            .push(format!("[{}] parent: {op}", self.iteration));
        self.versions.extend(op.version());
    }

    /// Records what the crash left in the file (see [`forensic`]), before
    /// anything recovers it.
    pub fn crash_state(&mut self, strategy: &str, label: &str) -> String {
        let at = forensic(&self.path);
        if at.contains("PARTIAL") {
            if let Some(d) = partial_detail(&self.path) {
                self.note(format!("partial shift: {d}"));
                eprintln!(
                    "{}: round {}: {label}: partial native shift: {d}",
                    self.label, self.iteration
                );
            }
        }
        self.stats.add(strategy, format!("{label}: {at}"));
        self.note(format!("{label}: {at}"));
        at
    }

    /// Opens the store (recovery), checks it against the model with `pending`
    /// interrupted, and settles the model.
    pub fn verify(&mut self, crashed: Absorbed, strategy: Option<Strategy>, crash_label: &str) {
        let sname = strategy_name(strategy);
        let uncertain = crashed.uncertain;
        if self.drop_cache {
            // Writes back what is dirty (without waiting) and drops what is
            // clean: the check then reads the extent map and data blocks.
            if let Ok(f) = File::open(&self.path) {
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
            }
        }
        let at_crash = self.crash_state(sname, crash_label);
        if at_crash.contains("UNPLANNABLE")
            || at_crash.contains("NO VALID")
            || at_crash.contains("NO SIDECAR")
        {
            self.fail(&format!(
                "the crash left a state recovery cannot handle: {at_crash}"
            ));
        }
        self.snapshot();
        match budge::store::check(&self.path) {
            Ok(c) if c.problems.is_empty() => {}
            Ok(c) => self.fail(&format!(
                "check() before recovery reports problems {:?} (notes {:?})",
                c.problems, c.notes
            )),
            Err(e) => self.fail(&format!("check() failed: {e}")),
        }
        let (r, retries) = open_retry(&self.path, &opts(strategy));
        if retries > 0 {
            self.stats.add(
                sname,
                "open retried while Locked (a sibling test's spawn held the flock)",
            );
        }
        let mut s = match r {
            Ok(s) => s,
            Err(e) => self.fail(&format!(
                "reopen after the crash failed: {e} (uncertain: {})",
                describe(&uncertain)
            )),
        };
        let actions = s.recovery().actions.clone();
        for a in &actions {
            self.stats
                .add(sname, format!("recovery: {}", action_key(a)));
        }
        if actions.is_empty() {
            self.stats.add(sname, "recovery: nothing to do");
        }
        self.note(format!("recovery: {actions:?}"));
        if let Some(n) = count_extents(&self.path) {
            self.stats.extents.push(n);
            self.note(format!("{n} extents after recovery"));
        }
        let v = match self.check_store(&s, &uncertain) {
            Ok(v) => v,
            Err(e) => {
                drop(s);
                self.fail(&format!(
                    "{e}\nuncertain ops (in order; the first {} returned after the shutdown began): {}\nat crash: {at_crash}\nrecovery: {actions:?}",
                    crashed.returned,
                    describe(&uncertain)
                ))
            }
        };
        // Statistics: what the crash interrupted and which state survived.
        let n = uncertain.len();
        if n <= 1 {
            let kind = uncertain.first().map_or("no op", |o| o.kind());
            let structural = uncertain
                .first()
                .is_some_and(|o| self.model.is_structural(o));
            self.stats.add(
                sname,
                format!(
                    "in flight: {kind}{} -> {}",
                    if structural { " (shift)" } else { "" },
                    v.outcome
                ),
            );
        } else {
            self.stats.add(
                sname,
                format!(
                    "in flight: {n} ops (some returned during the shutdown) -> {}",
                    v.outcome
                ),
            );
        }
        if crashed.returned > 0 {
            self.stats
                .add(sname, "ops returned after the shutdown began (uncertain)");
            if v.applied < crashed.returned {
                let lost = describe(&uncertain[v.applied..crashed.returned]);
                self.note(format!(
                    "LOST ops that returned during the shutdown: {lost}"
                ));
                self.stats.add(
                    sname,
                    "LOST an op that returned success after the shutdown began",
                );
            }
        }
        // Settle: make the store exactly the chosen candidate (rewrite the
        // bytes that differ, e.g. a write that only partly survived), and
        // take that as the model.
        if !v.repairs.is_empty() {
            for (name, start, bytes) in &v.repairs {
                self.oplog.push(format!(
                    "[{}] parent repairs {name} [{start}, {})",
                    self.iteration,
                    start + bytes.len() as u64
                ));
                let r = s.bytes_mut(name).map(|b| {
                    b[*start as usize..*start as usize + bytes.len()].copy_from_slice(bytes)
                });
                if let Err(e) = r.and_then(|()| s.commit()) {
                    self.fail(&format!("repairing {name} after recovery: {e}"));
                }
            }
        }
        for op in &uncertain[..v.applied] {
            self.model.apply(op).unwrap();
        }
        drop(s);
        // Recovery is finished: check() finds nothing to do and readers can
        // open the store.
        match budge::store::check(&self.path) {
            Ok(c)
                if c.problems.is_empty() && !c.notes.iter().any(|n| n.contains("interrupted")) => {}
            Ok(c) => self.fail(&format!(
                "check() after recovery: problems {:?}, notes {:?}",
                c.problems, c.notes
            )),
            Err(e) => self.fail(&format!("check() after recovery failed: {e}")),
        }
        match Store::open_read_only(&self.path, &opts(strategy)) {
            Ok(r) if r.regions().len() == self.model.regions.len() => {}
            Ok(r) => self.fail(&format!(
                "read-only open after recovery sees {} regions, the model {}",
                r.regions().len(),
                self.model.regions.len()
            )),
            Err(e) => self.fail(&format!("read-only open after recovery: {e}")),
        }
    }

    /// Checks the reopened store against the candidates: the model after
    /// the first `j` uncertain ops, for each `j`. The table must be one of
    /// theirs; every byte must be what one of the candidates with that
    /// table says (an interrupted write leaves each byte old or new). Picks
    /// the latest candidate the bytes match exactly, or else the latest
    /// with that table plus the byte ranges to rewrite to reach it.
    fn check_store(&self, s: &Store, uncertain: &[Op]) -> Result<Verified, String> {
        let regions = s.regions();
        let table: Vec<(String, u64)> = regions.iter().map(|r| (r.name.clone(), r.len)).collect();
        let mut cands = vec![self.model.clone()];
        for op in uncertain {
            let next = cands
                .last()
                .unwrap()
                .after(op)
                .map_err(|e| format!("model: {e}"))?;
            cands.push(next);
        }
        let js: Vec<usize> = (0..cands.len())
            .filter(|&j| cands[j].table() == table)
            .collect();
        let Some(&jmax) = js.last() else {
            let mut msg =
                format!("the table is not one the uncertain ops can leave:\n  now: {table:?}\n");
            for (j, c) in cands.iter().enumerate() {
                msg.push_str(&format!("  after {j} of them: {:?}\n", c.table()));
            }
            return Err(msg);
        };
        let m = &cands[jmax];
        // Layout: packed, capacities exact, file size.
        let mut off = format::DATA_START;
        for r in &regions {
            if r.offset != off || r.capacity != m.capacity(r.len) {
                return Err(format!(
                    "region {:?}: offset {} capacity {} for len {} (expected offset {off}, capacity {})",
                    r.name,
                    r.offset,
                    r.capacity,
                    r.len,
                    m.capacity(r.len)
                ));
            }
            off += r.capacity;
        }
        let size = std::fs::metadata(&self.path)
            .map_err(|e| e.to_string())?
            .len();
        if size != off || s.file_size() != off {
            return Err(format!(
                "file size {size}, table end {}, expected {off}",
                s.file_size()
            ));
        }
        // Bytes beyond each length are zero on disk.
        let f = File::open(&self.path).map_err(|e| e.to_string())?;
        for r in &regions {
            let n = (r.capacity - r.len) as usize;
            let mut b = vec![0u8; n];
            f.read_exact_at(&mut b, r.offset + r.len)
                .map_err(|e| e.to_string())?;
            if let Some(p) = b.iter().position(|&x| x != 0) {
                return Err(format!(
                    "region {:?}: byte {} beyond its length {} is {:#x}, not 0",
                    r.name,
                    r.len + p as u64,
                    r.len,
                    b[p]
                ));
            }
        }
        // Content.
        let mut exact = vec![true; js.len()];
        let mut repairs = Vec::new();
        for (i, reg) in m.regions.iter().enumerate() {
            let got = s
                .bytes(&reg.name)
                .map_err(|e| format!("read {:?}: {e}", reg.name))?;
            let mut wants: Vec<Vec<u8>> = Vec::new();
            let mut which = Vec::new(); // js index -> wants index
            for &j in &js {
                let w = cands[j].regions[i].expected();
                match wants.iter().position(|x| *x == w) {
                    Some(k) => which.push(k),
                    None => {
                        which.push(wants.len());
                        wants.push(w);
                    }
                }
            }
            let same: Vec<bool> = wants.iter().map(|w| got == &w[..]).collect();
            for (x, &k) in which.iter().enumerate() {
                exact[x] &= same[k];
            }
            let last = &wants[*which.last().unwrap()];
            if same.iter().any(|&b| b) && got == &last[..] {
                continue;
            }
            if !same.iter().any(|&b| b) {
                if let Some(p) = (0..got.len()).find(|&p| wants.iter().all(|w| w[p] != got[p])) {
                    let p0 = (0..got.len()).find(|&q| got[q] != last[q]).unwrap_or(p);
                    return Err(format!(
                        "region {:?} ({} bytes): byte {p} is {:#x}, which no candidate state has (the latest with this table: {:#x}); first difference from it at byte {p0}\n{}",
                        reg.name,
                        got.len(),
                        got[p],
                        last[p],
                        self.diff(&cands[jmax].regions[i], got, last)
                    ));
                }
            }
            // Bytes that differ from the latest candidate, to rewrite.
            let mut p = 0;
            while p < got.len() {
                if got[p] == last[p] {
                    p += 1;
                    continue;
                }
                let a = p;
                while p < got.len() && got[p] != last[p] {
                    p += 1;
                }
                repairs.push((reg.name.clone(), a as u64, last[a..p].to_vec()));
            }
        }
        let n = uncertain.len();
        let (applied, repairs) = match (0..js.len()).rev().find(|&x| exact[x]) {
            Some(x) => (js[x], Vec::new()),
            None => (jmax, repairs),
        };
        let outcome = match n {
            0 => "nothing in flight".to_string(),
            1 if uncertain[0].writes_bytes() && !repairs.is_empty() => "bytes mixed".into(),
            1 if uncertain[0].writes_bytes() => if applied == 1 {
                "new bytes"
            } else {
                "old bytes"
            }
            .into(),
            1 if cands[0].table() == cands[1].table() => "same table".into(),
            1 => if applied == 1 { "after" } else { "before" }.into(),
            _ => format!(
                "{applied} of {n} applied{}",
                if repairs.is_empty() {
                    ""
                } else {
                    ", bytes mixed"
                }
            ),
        };
        Ok(Verified {
            outcome,
            applied,
            repairs,
        })
    }

    /// Where `got` differs from `want` (the committed bytes of `reg`): up to
    /// 40 ranges, each with the version the model expects there and the
    /// version (if any) whose bytes are there instead.
    fn diff(&self, reg: &model::Reg, got: &[u8], want: &[u8]) -> String {
        let expected_at = |p: u64| {
            reg.data
                .range(..=p)
                .next_back()
                .filter(|(_, (e, _))| *e > p)
                .map(|(&a, &(e, v))| format!("v{v:#x} [{a}, {e})"))
                .unwrap_or_else(|| "zeros".into())
        };
        let whose = |p: usize| -> String {
            let n = 8.min(got.len() - p);
            if got[p..p + n].iter().all(|&b| b == 0) {
                return "zeros".into();
            }
            let mut probe = vec![0u8; n];
            for &v in self.versions.iter().rev() {
                model::fill(v, p as u64, &mut probe);
                if probe == got[p..p + n] {
                    return format!("v{v:#x}");
                }
            }
            "unknown bytes".into()
        };
        let mut out = String::from("mismatched ranges (region offsets):\n");
        let mut p = 0;
        let mut n = 0;
        while p < want.len() && n < 40 {
            if got[p] == want[p] {
                p += 1;
                continue;
            }
            let a = p;
            while p < want.len() && got[p] != want[p] {
                p += 1;
            }
            out.push_str(&format!(
                "  [{a}, {p}): expected {} / found {}\n",
                expected_at(a as u64),
                whose(a)
            ));
            n += 1;
        }
        out
    }

    /// Prints the statistics.
    pub fn report(&self, elapsed: Duration) {
        let mut out = format!(
            "\n==== {}: {} rounds in {:.1} s (seed {:#x})\n",
            self.label,
            self.stats.get("rounds"),
            elapsed.as_secs_f64(),
            self.seed
        );
        let mut last = String::new();
        for ((st, key), n) in &self.stats.counts {
            if *st != last {
                out.push_str(&format!("  strategy {st}:\n"));
                last = st.clone();
            }
            out.push_str(&format!("    {n:5}  {key}\n"));
        }
        if !self.stats.extents.is_empty() {
            let mut e = self.stats.extents.clone();
            e.sort_unstable();
            out.push_str(&format!(
                "  extents in the store after recovery: min {} median {} max {}\n",
                e[0],
                e[e.len() / 2],
                e[e.len() - 1]
            ));
        }
        for (st, v) in &self.shift_us {
            let mut v = v.clone();
            v.sort_unstable();
            out.push_str(&format!(
                "  shifts that moved regions ({st}), timed from the intent to the shift's end: {}, median {} us, p90 {} us, max {} us\n",
                v.len(),
                v[v.len() / 2],
                v[v.len() * 9 / 10],
                v[v.len() - 1]
            ));
        }
        eprint!("{out}");
        if let Some(path) = std::env::var_os("BUDGE_CRASH_REPORT") {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(out.as_bytes()));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.snap_dir());
    }
}

/// A thread that keeps calling `syncfs` on a filesystem, as other processes
/// would: it forces the log, so a shift's first transactions can reach the
/// disk before the shutdown.
pub struct Hammer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Hammer {
    pub fn start(dir: &Path, seed: u64) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let f = File::open(dir).unwrap();
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut n = 0;
            while !s2.load(Ordering::Relaxed) {
                if rustix::fs::syncfs(&f).is_ok() {
                    n += 1;
                }
                pause(Duration::from_micros(rng.below(2000)));
            }
            n
        });
        Hammer {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap_or(0)
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A private 1 GiB loop filesystem of `kind` for the shutdown test `what`,
/// or `None` (a loud skip) where none can be made; under CI that fails.
pub fn loop_fs(kind: &'static str, what: &str) -> Option<loopfs::LoopFs> {
    loop_fs_with(kind, &[], what)
}

/// [`loop_fs`] made with extra `mkfs` arguments.
pub fn loop_fs_with(
    kind: &'static str,
    mkfs_extra: &'static [&'static str],
    what: &str,
) -> Option<loopfs::LoopFs> {
    if let Some(why) = loopfs::unavailable(kind) {
        if common::in_ci() {
            panic!("{what} on {kind} cannot run under CI: {why}");
        }
        eprintln!("SKIPPED {what} on {kind}: {why}");
        return None;
    }
    match loopfs::LoopFs::new_with(kind, 1 << 30, mkfs_extra) {
        Ok(fs) => Some(fs),
        Err(e) if common::in_ci() => panic!("loop {kind} filesystem: {e}"),
        Err(e) => {
            eprintln!("SKIPPED {what} on {kind}: loop filesystem: {e}");
            None
        }
    }
}

/// Iterations: `BUDGE_CRASH_ITERS`, or `default`.
pub fn iters(default: u64) -> u64 {
    std::env::var("BUDGE_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The run's seed: `BUDGE_CRASH_SEED` (decimal or 0x-hex), or random;
/// mixed with `label` so each test has its own. A given seed is used as is
/// for every test, so the failing test's printed seed reproduces it.
pub fn seed(label: &str) -> u64 {
    common::seed("BUDGE_CRASH_SEED", label)
}
