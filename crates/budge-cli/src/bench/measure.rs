//! One timed operation and the series of them: the file under test, the
//! cache preparation (warm or cold), the timed call, the device counters
//! around it and the check of the result.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use budge::{ShiftOptions, Strategy};

use super::data::{self, Layout};
use super::sysinfo::{self, Device};
use super::{Cache, Method, Op};
use crate::baseline;

/// One timed operation.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Wall-clock seconds of the call, fsync included.
    pub secs: f64,
    /// Bytes written to the device during the call (fsync included).
    pub dev_write: Option<u64>,
    /// Bytes written from the start of the call until after a `syncfs` that
    /// follows it (also counts log/transaction commits the fsync deferred).
    pub dev_write_synced: Option<u64>,
    /// Bytes read from the device during the call.
    pub dev_read: Option<u64>,
}

/// Runs of one method in one cache state.
pub struct Series {
    pub method: Method,
    pub cache: Cache,
    pub insert: Vec<Sample>,
    pub collapse: Vec<Sample>,
    /// Why it did not run, or why it stopped.
    pub note: Option<String>,
    /// The file's extent count before the first run.
    pub extents_before: Option<u64>,
}

impl Series {
    pub fn new(method: Method, cache: Cache) -> Series {
        Series {
            method,
            cache,
            insert: Vec::new(),
            collapse: Vec::new(),
            note: None,
            extents_before: None,
        }
    }

    /// A series that did not run, saying why.
    pub fn not_run(method: Method, cache: Cache, why: String) -> Series {
        Series {
            note: Some(why),
            ..Series::new(method, cache)
        }
    }

    pub fn samples(&self, op: Op) -> &[Sample] {
        match op {
            Op::Insert => &self.insert,
            Op::Collapse => &self.collapse,
        }
    }

    /// Median seconds of `op`, if it ran.
    pub fn median(&self, op: Op) -> Option<f64> {
        median(self.samples(op).iter().map(|s| s.secs).collect())
    }

    /// Median of a device counter of `op`.
    pub fn median_bytes(&self, op: Op, f: impl Fn(&Sample) -> Option<u64>) -> Option<f64> {
        let v: Option<Vec<f64>> = self
            .samples(op)
            .iter()
            .map(|s| f(s).map(|b| b as f64))
            .collect();
        median(v?)
    }
}

/// The median (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// How the page cache is emptied for a cold run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ColdMethod {
    /// `echo 3 > /proc/sys/vm/drop_caches` with the file closed, so its
    /// inode (and the in-memory extent map) is evicted too.
    DropCaches,
    /// `posix_fadvise(DONTNEED)` on the file: its data pages only.
    Fadvise,
}

impl ColdMethod {
    pub fn describe(self) -> &'static str {
        match self {
            ColdMethod::DropCaches => "file closed, echo 3 > /proc/sys/vm/drop_caches, reopened",
            ColdMethod::Fadvise => {
                "posix_fadvise(DONTNEED) on the file (not root: its inode stays cached)"
            }
        }
    }
}

/// What every measurement on one filesystem shares.
pub struct Env {
    pub dev: Option<Device>,
    pub cold: ColdMethod,
    pub gap: u64,
}

/// The file under test, its original size and the shape of its content.
pub struct Subject {
    pub path: PathBuf,
    file: Option<File>,
    pub size: u64,
    pub offset: u64,
    /// Hole period for a punched file: `Some((period, punched_periods))`.
    holes: Option<(u64, u64)>,
    /// Set when an operation failed part-way: the content is unknown.
    pub broken: bool,
    buf: Vec<u8>,
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

impl Subject {
    /// Creates `path` with `size` bytes of bench content (fsynced).
    pub fn create(path: PathBuf, size: u64, offset: u64) -> std::io::Result<Subject> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut s = Subject {
            path,
            file: None,
            size,
            offset,
            holes: None,
            broken: false,
            buf: Vec::new(),
        };
        // `s` owns the path before the write, so a failed write still
        // removes the file (Drop).
        data::write_file(&f, size)?;
        s.file = Some(f);
        Ok(s)
    }

    /// Writes the content again from scratch (after a failure, or when the
    /// file got fragmented by copying strategies).
    pub fn rewrite(&mut self) -> std::io::Result<()> {
        self.file = None;
        std::fs::remove_file(&self.path)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&self.path)?;
        data::write_file(&f, self.size)?;
        self.file = Some(f);
        self.holes = None;
        self.broken = false;
        Ok(())
    }

    /// Punches `n - 1` holes so the file has `n` data runs: period
    /// `p = size / n` (block-aligned), the second half of each of the first
    /// `n - 1` periods a hole. Returns the period.
    pub fn punch_pattern(&mut self, n: u64, block: u64) -> Result<u64, String> {
        let p = budge::range::align_down(self.size / n.max(1), 2 * block);
        if p < 2 * block {
            return Err(format!(
                "{n} extents do not fit in {} with {block}-byte blocks",
                self.size
            ));
        }
        let f = self.file()?;
        for i in 0..n.saturating_sub(1) {
            budge::copy::punch_hole(f, i * p + p / 2, p / 2).map_err(|e| e.to_string())?;
        }
        f.sync_all().map_err(|e| format!("fsync: {e}"))?;
        self.holes = Some((p, n.saturating_sub(1)));
        Ok(p)
    }

    pub fn file(&self) -> Result<&File, String> {
        self.file
            .as_ref()
            .ok_or_else(|| "the bench file is not open".to_string())
    }

    /// The number of extents (FIEMAP), or of data segments where FIEMAP is
    /// unsupported.
    pub fn extent_count(&self) -> Result<u64, String> {
        let f = self.file()?;
        match budge::extents::extents(f) {
            Ok(e) => Ok(e.len() as u64),
            Err(e) if e.kind() == budge::ErrorKind::Unsupported => Ok(budge::extents::data_map(f)
                .map_err(|e| e.to_string())?
                .iter()
                .filter(|s| s.kind == budge::extents::SegmentKind::Data)
                .count()
                as u64),
            Err(e) => Err(e.to_string()),
        }
    }

    fn is_hole(&self, o: u64) -> bool {
        match self.holes {
            Some((p, punched)) => o / p < punched && o % p >= p / 2,
            None => false,
        }
    }

    /// Checks the content: original (`inserted == false`) or with `gap`
    /// zero bytes at the offset.
    pub fn check(&self, inserted: bool, gap: u64) -> Result<(), String> {
        let hole = |o| self.is_hole(o);
        let layout = Layout {
            size: self.size,
            inserted: inserted.then_some((self.offset, gap)),
            hole: &hole,
        };
        data::check(self.file()?, &layout, self.offset, gap)
    }

    /// Puts the file's pages in the state `cache` asks for; untimed.
    fn prepare(&mut self, cache: Cache, cold: ColdMethod) -> Result<(), String> {
        let f = self.file()?;
        rustix::fs::syncfs(f).map_err(|e| format!("syncfs: {e}"))?;
        match (cache, cold) {
            (Cache::Warm, _) => {
                // Read the whole file so every page is cached.
                let size = f.metadata().map_err(|e| format!("fstat: {e}"))?.len();
                self.buf.resize(8 << 20, 0);
                let f = self.file.as_ref().ok_or("the bench file is not open")?;
                let mut at = 0;
                while at < size {
                    let n = f
                        .read_at(&mut self.buf, at)
                        .map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    at += n as u64;
                }
            }
            (Cache::Cold, ColdMethod::DropCaches) => {
                self.file = None;
                sysinfo::drop_caches().map_err(|e| format!("drop_caches: {e}"))?;
                self.file = Some(open_rw(&self.path).map_err(|e| format!("reopen: {e}"))?);
            }
            (Cache::Cold, ColdMethod::Fadvise) => {
                rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed)
                    .map_err(|e| format!("fadvise: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(&self.path);
        // btrfs frees the blocks (and statfs shows them free) only when the
        // transaction commits; the next size's free-space check needs them.
        if let Some(dir) = self.path.parent().and_then(|d| File::open(d).ok()) {
            let _ = rustix::fs::syncfs(&dir);
        }
    }
}

/// The timed call.
fn call(method: Method, op: Op, f: &File, offset: u64, gap: u64) -> Result<(), String> {
    match method {
        Method::Naive => match op {
            Op::Insert => baseline::naive_insert(f, offset, gap),
            Op::Collapse => baseline::naive_collapse(f, offset, gap),
        }
        .map_err(|e| format!("naive {}: {e}", op.name())),
        Method::Bare | Method::BareNoSync => {
            // The baseline for the native strategy, deliberately bypassing
            // budge: the bare fallocate(INSERT_RANGE / COLLAPSE_RANGE) system
            // call and an fsync, nothing else (no probe, no checks).
            let mode = match op {
                Op::Insert => rustix::fs::FallocateFlags::INSERT_RANGE,
                Op::Collapse => rustix::fs::FallocateFlags::COLLAPSE_RANGE,
            };
            rustix::fs::fallocate(f, mode, offset, gap)
                .map_err(|e| format!("fallocate({}): {e}", op.name()))?;
            if method == Method::Bare {
                rustix::fs::fsync(f).map_err(|e| format!("fsync: {e}"))?;
            }
            Ok(())
        }
        Method::NativeNoSync => {
            let opts = ShiftOptions {
                strategy: Some(Strategy::Native),
                sync: false,
                ..ShiftOptions::default()
            };
            match op {
                Op::Insert => budge::insert(f, offset, gap, &opts),
                Op::Collapse => budge::collapse(f, offset, gap, &opts),
            }
            .map(drop)
            .map_err(|e| e.to_string())
        }
        Method::Shift(s) => {
            let opts = ShiftOptions {
                strategy: Some(s),
                sync: true,
                ..ShiftOptions::default()
            };
            let r = match op {
                Op::Insert => budge::insert(f, offset, gap, &opts),
                Op::Collapse => budge::collapse(f, offset, gap, &opts),
            }
            .map_err(|e| e.to_string())?;
            if r.strategy != s {
                return Err(format!("forced {s} but budge ran {}", r.strategy));
            }
            Ok(())
        }
    }
}

/// One prepared, timed and checked operation.
pub fn sample(
    env: &Env,
    subj: &mut Subject,
    method: Method,
    cache: Cache,
    op: Op,
) -> Result<Sample, String> {
    subj.prepare(cache, env.cold)?;
    let f = subj.file()?;
    let c0 = env.dev.as_ref().and_then(Device::counters);
    let t = Instant::now();
    let r = call(method, op, f, subj.offset, env.gap);
    let secs = t.elapsed().as_secs_f64();
    let c1 = env.dev.as_ref().and_then(Device::counters);
    if let Err(e) = r {
        // A refusal touches nothing; anything else leaves the file unknown.
        if subj.check(false, env.gap).is_err() {
            subj.broken = true;
        }
        return Err(e);
    }
    rustix::fs::syncfs(f).map_err(|e| format!("syncfs: {e}"))?;
    let c2 = env.dev.as_ref().and_then(Device::counters);
    if let Err(e) = subj.check(op == Op::Insert, env.gap) {
        subj.broken = true;
        return Err(format!(
            "WRONG RESULT after {} {}: {e}",
            method.name(),
            op.name()
        ));
    }
    let (dev_read, dev_write) = match (c0, c1) {
        (Some(a), Some(b)) => {
            let (r, w) = b.since(a);
            (Some(r), Some(w))
        }
        _ => (None, None),
    };
    let dev_write_synced = match (c0, c2) {
        (Some(a), Some(b)) => Some(b.since(a).1),
        _ => None,
    };
    Ok(Sample {
        secs,
        dev_write,
        dev_write_synced,
        dev_read,
    })
}

/// `runs` insert+collapse pairs of each of `methods` in each `caches`
/// state, the methods interleaved run by run (run 1 of every method, then
/// run 2, ...) so that drift in the machine's load hits them alike. A method
/// stops early (keeping what it has) after an error, or after a pair that
/// took longer than `slow_secs`. Stops everything if the file is left in an
/// unknown state (`subj.broken`).
pub fn group(
    env: &Env,
    subj: &mut Subject,
    methods: &[Method],
    caches: &[Cache],
    runs: usize,
    slow_secs: f64,
    say: &dyn Fn(String),
) -> Vec<Series> {
    let before = subj.extent_count().ok();
    let mut out: Vec<Series> = Vec::new();
    for &m in methods {
        for &c in caches {
            let mut s = Series::new(m, c);
            s.extents_before = before;
            out.push(s);
        }
    }
    let mut done = vec![false; out.len()];
    // Cache states outermost: a warm run after a cold one would have to read
    // the whole file back first.
    for &cache in caches {
        for run in 0..runs {
            for (i, s) in out.iter_mut().enumerate() {
                if s.cache != cache || done[i] || subj.broken {
                    continue;
                }
                let t = Instant::now();
                for op in [Op::Insert, Op::Collapse] {
                    match sample(env, subj, s.method, s.cache, op) {
                        Ok(x) => match op {
                            Op::Insert => s.insert.push(x),
                            Op::Collapse => s.collapse.push(x),
                        },
                        Err(e) => {
                            say(format!(
                                "    {} {} {}: {e}",
                                s.method.name(),
                                s.cache.name(),
                                op.name()
                            ));
                            s.note = Some(e);
                            done[i] = true;
                            break;
                        }
                    }
                }
                if !done[i] && t.elapsed().as_secs_f64() > slow_secs && run + 1 < runs {
                    s.note = Some(format!(
                        "stopped after {} run(s): one took over {slow_secs:.0} s",
                        run + 1
                    ));
                    done[i] = true;
                }
            }
        }
    }
    out
}

/// Why `method` cannot run on this filesystem, if it cannot.
pub fn unavailable(method: Method, caps: &budge::Capabilities) -> Option<String> {
    let fs = caps.fs.kind.name();
    match method {
        Method::Bare
        | Method::BareNoSync
        | Method::NativeNoSync
        | Method::Shift(Strategy::Native) => {
            if !caps.insert_range.works || !caps.collapse_range.works {
                Some(format!("{fs} has no fallocate INSERT_RANGE/COLLAPSE_RANGE"))
            } else {
                None
            }
        }
        Method::Shift(Strategy::Reflink) if !caps.ficlonerange.works => {
            Some(format!("{fs} cannot reflink"))
        }
        Method::Shift(Strategy::KernelCopy) if !caps.copy_file_range.works => {
            Some(format!("copy_file_range does not work on {fs}"))
        }
        _ => None,
    }
}
