//! The measurements of `budge store bench` on one filesystem.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use budge::map::{Advice, Reservation};
use budge::store::format::DATA_START;
use budge::store::plan::{capacity_for, Growth};
use budge::store::{ResizeReport, Store, StoreOptions};
use budge::sys::{self, Falloc};
use budge::FsKind;

use super::super::measure::median;
use super::super::report::bytes as fmt_bytes;
use super::super::sysinfo::Device;
use super::{Config, Part, GIB, MIB};
use crate::baseline;

/// One timed call.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Wall-clock seconds (fsyncs included).
    pub secs: f64,
    /// Bytes written to the block device during the call.
    pub dev_w: Option<u64>,
    /// Bytes read from the block device during the call.
    pub dev_r: Option<u64>,
}

/// Samples of one thing.
#[derive(Clone, Default)]
pub struct Series {
    pub samples: Vec<Sample>,
    /// Why it did not run, or stopped early.
    pub note: Option<String>,
}

impl Series {
    pub fn n(&self) -> usize {
        self.samples.len()
    }

    fn secs(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.secs).collect()
    }

    pub fn median(&self) -> Option<f64> {
        median(self.secs())
    }

    /// Nearest-rank 99th percentile.
    pub fn p99(&self) -> Option<f64> {
        let mut v = self.secs();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = (v.len() as f64 * 0.99).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }

    pub fn min(&self) -> Option<f64> {
        self.secs().into_iter().reduce(f64::min)
    }

    pub fn mean(&self) -> Option<f64> {
        let v = self.secs();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    pub fn total(&self) -> f64 {
        self.secs().iter().sum()
    }

    /// Bytes written to the device by all samples.
    pub fn sum_w(&self) -> Option<u64> {
        self.samples.iter().map(|s| s.dev_w).sum()
    }

    /// The samples whose flag is set (or not).
    pub fn only(&self, flags: &[bool], want: bool) -> Series {
        Series {
            samples: self
                .samples
                .iter()
                .zip(flags)
                .filter(|(_, f)| **f == want)
                .map(|(s, _)| *s)
                .collect(),
            note: None,
        }
    }

    pub fn max(&self) -> Option<f64> {
        self.secs().into_iter().reduce(f64::max)
    }

    fn med_of(&self, f: impl Fn(&Sample) -> Option<u64>) -> Option<f64> {
        let v: Option<Vec<f64>> = self
            .samples
            .iter()
            .map(|s| f(s).map(|b| b as f64))
            .collect();
        median(v?)
    }

    pub fn med_w(&self) -> Option<f64> {
        self.med_of(|s| s.dev_w)
    }

    pub fn med_r(&self) -> Option<f64> {
        self.med_of(|s| s.dev_r)
    }

    pub fn max_w(&self) -> Option<u64> {
        self.samples
            .iter()
            .map(|s| s.dev_w)
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .max()
    }
}

/// Grows and shrinks of one method.
#[derive(Clone, Default)]
pub struct Pair {
    pub grow: Series,
    pub shrink: Series,
}

/// What `Growth::Amortized` did with the same appends.
#[derive(Default)]
pub struct Amortized {
    pub grows: Series,
    pub shrinks: Series,
    /// Per sample of `grows` / `shrinks`: whether that resize shifted.
    pub grow_shifted: Vec<bool>,
    pub shrink_shifted: Vec<bool>,
    pub grow_shifts: usize,
    pub shrink_shifts: usize,
    /// The touch of every region that re-read the cache after each
    /// shifting resize (so the next call starts warm).
    pub retouch: Series,
    /// PMD-mapped bytes of the store mapping after the first warm touch,
    /// and the mapped bytes.
    pub pmd: Option<(u64, u64)>,
    pub capacity_after_grows: u64,
    pub capacity_after_shrinks: u64,
    /// Computed with `capacity_for`: shifts for the same appends to an
    /// empty region, and for the shrinks back to empty.
    pub from_empty_grow_shifts: usize,
    pub from_empty_shrink_shifts: usize,
}

/// One extent count of the sweep.
pub struct ExtRow {
    pub target: u64,
    pub extents: Option<usize>,
    pub journal: Option<usize>,
    pub budge: Pair,
    pub bare: Pair,
    pub note: Option<String>,
}

/// How the page cache of the updated region was filled before the updates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// `pwrite` of 8 MiB chunks over the region (large folios), fdatasync.
    LargeWrites,
    /// Nothing cached (`posix_fadvise(DONTNEED)` after a sync).
    Cold,
}

impl Fill {
    pub fn name(self) -> &'static str {
        match self {
            Fill::LargeWrites => "large writes",
            Fill::Cold => "cold",
        }
    }
}

/// Random one-byte updates plus commit.
pub struct UpdRow {
    pub fill: Fill,
    pub advice: Advice,
    pub series: Series,
}

/// Everything measured on one filesystem.
pub struct FsRun {
    pub dir: PathBuf,
    pub fs: String,
    pub kind: Option<FsKind>,
    pub device: Option<String>,
    pub block: u64,
    pub align: u64,
    pub regions: usize,
    pub region_len: u64,
    pub file_size: u64,
    pub requested: u64,
    pub scaled: Option<String>,
    pub insert_range: bool,
    pub write_secs: f64,
    /// From budge's first shifting resize.
    pub strategy: Option<String>,
    pub journal: Option<usize>,
    pub tail_reread: Option<u64>,
    pub bytes_copied: Option<u64>,
    pub steps_done: usize,
    pub seq_budge: Pair,
    /// The same samples by series: beside the unmapped plain file, the
    /// mapped one, the mapped+remap one (only the first on filesystems
    /// without insert-range).
    pub seq_budge_half: [Pair; 3],
    pub seq_bare: Pair,
    pub seq_floor: Pair,
    pub seq_bare_mapped: Pair,
    pub seq_floor_mapped: Pair,
    pub seq_bare_remap: Pair,
    pub warm_budge: Pair,
    pub warm_bare: Pair,
    pub warm_bare_mapped: Pair,
    pub naive: Pair,
    pub noshift: Pair,
    /// Touch of a freshly written store: cached, not yet mapped (faults).
    pub touch_first: Series,
    /// Touch again: cached and mapped.
    pub touch_warm: Series,
    /// Touch after a resize (the tail's cache was dropped).
    pub touch_after: Series,
    pub noshift_touch_first: Series,
    pub noshift_touch_after: Series,
    /// Bytes of the store's mapping mapped with PMDs (2 MiB) after the
    /// touch of the cached store before any resize, and after the last
    /// re-touch following a resize; with the mapped bytes.
    pub pmd_warm: Option<(u64, u64)>,
    pub pmd_after: Option<(u64, u64)>,
    pub amortized: Option<Amortized>,
    pub extents: Vec<ExtRow>,
    pub extents_note: Option<String>,
    pub extent_store_len: u64,
    pub updates: Vec<UpdRow>,
    pub updates_note: Option<String>,
    pub update_region_len: u64,
    pub notes: Vec<String>,
    pub error: Option<String>,
    pub secs: f64,
}

impl FsRun {
    fn new(dir: &Path, requested: u64) -> FsRun {
        FsRun {
            dir: dir.to_path_buf(),
            fs: "?".into(),
            kind: None,
            device: None,
            block: 0,
            align: 0,
            regions: 0,
            region_len: 0,
            file_size: 0,
            requested,
            scaled: None,
            insert_range: false,
            write_secs: 0.0,
            strategy: None,
            journal: None,
            tail_reread: None,
            bytes_copied: None,
            steps_done: 0,
            seq_budge: Pair::default(),
            seq_budge_half: Default::default(),
            seq_bare: Pair::default(),
            seq_floor: Pair::default(),
            seq_bare_mapped: Pair::default(),
            seq_floor_mapped: Pair::default(),
            seq_bare_remap: Pair::default(),
            warm_budge: Pair::default(),
            warm_bare: Pair::default(),
            warm_bare_mapped: Pair::default(),
            naive: Pair::default(),
            noshift: Pair::default(),
            touch_first: Series::default(),
            touch_warm: Series::default(),
            touch_after: Series::default(),
            noshift_touch_first: Series::default(),
            noshift_touch_after: Series::default(),
            pmd_warm: None,
            pmd_after: None,
            amortized: None,
            extents: Vec::new(),
            extents_note: None,
            extent_store_len: 0,
            updates: Vec::new(),
            updates_note: None,
            update_region_len: 0,
            notes: Vec::new(),
            error: None,
            secs: 0.0,
        }
    }
}

type Res<T> = Result<T, String>;

fn es(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Times `f`, with the device counters around it.
fn timed<T>(dev: Option<&Device>, f: impl FnOnce() -> Res<T>) -> Res<(Sample, T)> {
    let c0 = dev.and_then(Device::counters);
    let t = Instant::now();
    let v = f()?;
    let secs = t.elapsed().as_secs_f64();
    let c1 = dev.and_then(Device::counters);
    let (dev_r, dev_w) = match (c0, c1) {
        (Some(a), Some(b)) => {
            let (r, w) = b.since(a);
            (Some(r), Some(w))
        }
        _ => (None, None),
    };
    Ok((Sample { secs, dev_w, dev_r }, v))
}

fn region_name(i: usize) -> String {
    format!("r{i}")
}

fn seed(i: usize) -> u64 {
    0x5354_4f52_4542_0000 + i as u64
}

/// Files removed when dropped (and the filesystem synced, so btrfs frees
/// the space before the next phase checks it).
struct Doomed {
    paths: Vec<PathBuf>,
}

impl Doomed {
    fn new(paths: Vec<PathBuf>) -> Doomed {
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
        Doomed { paths }
    }
}

impl Drop for Doomed {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
        if let Some(d) = self
            .paths
            .first()
            .and_then(|p| p.parent())
            .and_then(|d| File::open(d).ok())
        {
            let _ = rustix::fs::syncfs(&d);
        }
    }
}

fn bench_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!(".budge-store-bench-{}-{what}", std::process::id()))
}

fn sidecar(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".budge-shift");
    PathBuf::from(s)
}

fn open_rw(p: &Path) -> Res<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map_err(|e| format!("open {}: {e}", p.display()))
}

/// Writes region `i`'s pattern to `[at, at + len)` of each file (8 MiB
/// `pwrite`s).
fn write_region(files: &[&File], at: u64, len: u64, i: usize) -> Res<()> {
    let chunk = 8 * MIB;
    let mut buf = vec![0u8; chunk as usize];
    let mut o = 0;
    while o < len {
        let n = (len - o).min(chunk) as usize;
        crate::pattern::fill(&mut buf[..n], o, seed(i));
        for f in files {
            f.write_all_at(&buf[..n], at + o)
                .map_err(|e| format!("pwrite: {e}"))?;
        }
        o += n as u64;
    }
    Ok(())
}

/// Reads the whole file into the page cache (untimed preparation).
fn read_all(f: &File, buf: &mut Vec<u8>) -> Res<()> {
    let size = f.metadata().map_err(es)?.len();
    buf.resize(8 * MIB as usize, 0);
    let mut at = 0;
    while at < size {
        let n = f.read_at(buf, at).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        at += n as u64;
    }
    Ok(())
}

/// Reads one byte per page: every page faulted in (or read from disk).
fn touch(b: &[u8], page: usize) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i < b.len() {
        s = s.wrapping_add(u64::from(b[i]));
        i += page;
    }
    black_box(s)
}

fn touch_store(st: &Store, regions: usize, page: usize) -> Res<u64> {
    let mut s = 0u64;
    for i in 0..regions {
        s = s.wrapping_add(touch(st.bytes(&region_name(i)).map_err(es)?, page));
    }
    Ok(s)
}

/// `FilePmdMapped` of the mappings inside `[base, base + len)` of this
/// process (`/proc/self/smaps`), in bytes; `None` if unreadable.
pub fn pmd_mapped(base: usize, len: usize) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    let mut total = 0u64;
    for line in text.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = head.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a >= base && b <= base + len;
                continue;
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("FilePmdMapped:") {
                let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
                total += kb * 1024;
            }
        }
    }
    Some(total)
}

fn store_pmd(st: &Store) -> Option<(u64, u64)> {
    let (base, reserved) = st.reservation();
    Some((pmd_mapped(base, reserved)?, st.file_size()))
}

/// Checks sampled pages of every region against the pattern (and zeros past
/// the original length of region 0).
fn verify_store(st: &Store, regions: usize, region_len: u64) -> Res<()> {
    let f = File::open(st.path()).map_err(es)?;
    let mut got = vec![0u8; 4096];
    let mut want = vec![0u8; 4096];
    for r in st.regions().iter().take(regions) {
        let i: usize = r.name[1..].parse().map_err(es)?;
        let data = r.len.min(region_len);
        let mut points: Vec<u64> = vec![0, data / 3, data / 2, data.saturating_sub(4096)];
        if r.len > region_len {
            points.push(region_len);
            points.push(r.len - 4096);
        }
        for p in points {
            f.read_exact_at(&mut got, r.offset + p).map_err(es)?;
            if p >= region_len {
                want.fill(0);
            } else {
                crate::pattern::fill(&mut want, p, seed(i));
            }
            if got != want {
                return Err(format!(
                    "WRONG CONTENT: region {} (offset {}, len {}) at {p}",
                    r.name, r.offset, r.len
                ));
            }
        }
    }
    Ok(())
}

/// Creates the store with `regions` regions of `len` bytes of pattern data
/// (and, if asked, a plain file with the same bytes at the same offsets),
/// committed.
fn build(
    path: &Path,
    plain: Option<&Path>,
    regions: usize,
    len: u64,
    opts: &StoreOptions,
) -> Res<(Store, Option<File>)> {
    let mut st = Store::create(path, opts).map_err(es)?;
    for i in 0..regions {
        st.add(&region_name(i), len, 0).map_err(es)?;
    }
    let w = open_rw(path)?;
    let p = match plain {
        Some(pp) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(pp)
                .map_err(|e| format!("create {}: {e}", pp.display()))?;
            f.set_len(st.file_size()).map_err(es)?;
            write_region(&[&f], 0, DATA_START, 99)?;
            Some(f)
        }
        None => None,
    };
    for r in st.regions() {
        let i: usize = r.name[1..].parse().map_err(es)?;
        let mut files = vec![&w];
        if let Some(f) = &p {
            files.push(f);
        }
        write_region(&files, r.offset, r.len, i)?;
    }
    st.commit().map_err(es)?;
    if let Some(f) = &p {
        sys::fsync(f).map_err(es)?;
    }
    Ok((st, p))
}

fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// The bare call: `fallocate` + `fsync`, nothing else.
fn bare(f: &File, grow: bool, at: u64, len: u64) -> Res<()> {
    let mode = if grow {
        Falloc::InsertRange
    } else {
        Falloc::CollapseRange
    };
    sys::fallocate(f, mode, at, len).map_err(|e| format!("{}: {e}", mode.name()))?;
    sys::fsync(f).map_err(|e| format!("fsync: {e}"))
}

/// The store's protocol and nothing else: header write + fdatasync,
/// `fallocate`, fdatasync.
fn floor(f: &File, hdr: &[u8], grow: bool, at: u64, len: u64) -> Res<()> {
    f.write_all_at(hdr, 64 << 10).map_err(es)?;
    sys::fdatasync(f).map_err(es)?;
    let mode = if grow {
        Falloc::InsertRange
    } else {
        Falloc::CollapseRange
    };
    sys::fallocate(f, mode, at, len).map_err(|e| format!("{}: {e}", mode.name()))?;
    sys::fdatasync(f).map_err(es)
}

struct Ctx<'a> {
    cfg: &'a Config,
    dev: Option<Device>,
    page: usize,
    say: &'a dyn Fn(String),
}

impl Ctx<'_> {
    fn dev(&self) -> Option<&Device> {
        self.dev.as_ref()
    }
}

fn record(run: &mut FsRun, rep: &ResizeReport) {
    if run.strategy.is_none() {
        if let Some(s) = &rep.shift {
            run.strategy = Some(s.strategy.name().to_string());
            run.journal = Some(s.extents);
            run.tail_reread = Some(s.tail_reread);
            run.bytes_copied = Some(s.bytes_copied);
        }
    }
}

/// Runs everything on one filesystem.
pub fn bench_fs(dir: &Path, cfg: &Config, say: &dyn Fn(String)) -> FsRun {
    let t = Instant::now();
    let mut run = FsRun::new(dir, cfg.size);
    if let Err(e) = bench_fs_inner(dir, cfg, say, &mut run) {
        say(format!("  error: {e}"));
        run.error = Some(e);
    }
    run.secs = t.elapsed().as_secs_f64();
    run
}

fn bench_fs_inner(dir: &Path, cfg: &Config, say: &dyn Fn(String), run: &mut FsRun) -> Res<()> {
    let caps = budge::probe(dir).map_err(es)?;
    let ctx = Ctx {
        cfg,
        dev: Device::of(dir),
        page: sys::page_size() as usize,
        say,
    };
    run.fs = caps.fs.kind.name();
    run.kind = Some(caps.fs.kind);
    run.device = ctx.dev.as_ref().map(|d| d.name.clone());
    run.block = caps.block_size();
    run.align = caps.block_size().max(ctx.page as u64);
    run.regions = cfg.regions;
    run.insert_range = caps.insert_range.works && caps.collapse_range.works;
    // Room: the store, the plain file (bare baseline, naive rewrite; on
    // btrfs the rewrite's copy-on-write needs the tail again; a copying
    // shift needs a sidecar of the tail), the growth, and a margin.
    let total = caps.fs.total_bytes;
    let margin = (total / 16).clamp(64 * MIB, GIB);
    let growth = (cfg.steps as u64 + 2) * cfg.step * 2;
    let free = free_bytes(dir);
    let fit = free.saturating_sub(margin + growth + 2 * DATA_START) / 2;
    let unit = (cfg.regions as u64) * MIB;
    let mut size = cfg.size;
    if size > fit {
        size = fit / unit * unit;
        run.scaled = Some(format!(
            "scaled from {} to {}: {} free, the store needs room for a second copy (baseline file, sidecar or copy-on-write) plus {} kept free",
            fmt_bytes(cfg.size),
            fmt_bytes(size),
            fmt_bytes(free),
            fmt_bytes(margin)
        ));
    }
    let region_len = size / cfg.regions as u64 / run.align * run.align;
    if region_len < 4 * cfg.step.max(MIB) {
        return Err(format!(
            "no room: {} free, {} regions of at least {} needed",
            fmt_bytes(free),
            cfg.regions,
            fmt_bytes(4 * cfg.step.max(MIB))
        ));
    }
    run.region_len = region_len;
    run.file_size = DATA_START + region_len * cfg.regions as u64;
    say(format!(
        "store bench: {} on {} ({}), {} free; store {} ({} regions of {}){}",
        dir.display(),
        run.fs,
        run.device.as_deref().unwrap_or("no block device"),
        fmt_bytes(free),
        fmt_bytes(run.file_size),
        cfg.regions,
        fmt_bytes(region_len),
        run.scaled
            .as_deref()
            .map_or(String::new(), |s| format!(" ({s})"))
    ));

    let store_path = bench_path(dir, "store");
    let plain_path = bench_path(dir, "plain");
    let store_parts = [Part::Resize, Part::Amortized, Part::Updates];
    let bare_ok = run.insert_range;
    if store_parts.iter().any(|p| cfg.has(*p)) {
        let doomed = Doomed::new(vec![store_path.clone(), sidecar(&store_path)]);
        let plain_doomed = Doomed::new(vec![plain_path.clone()]);
        say("  writing the store and its plain twin...".into());
        let t = Instant::now();
        let opts = StoreOptions {
            growth: Growth::Exact,
            advice: cfg.advice,
            ..StoreOptions::default()
        };
        let want_plain = bare_ok && cfg.has(Part::Resize);
        let (mut st, plain) = build(
            &store_path,
            want_plain.then_some(plain_path.as_path()),
            cfg.regions,
            region_len,
            &opts,
        )?;
        run.write_secs = t.elapsed().as_secs_f64();
        if cfg.has(Part::Resize) {
            let reserve = run.file_size + 4 * (cfg.steps as u64 + 2) * cfg.step;
            let plain = plain
                .map(|f| Plain::new(f, reserve, ctx.page, cfg.advice))
                .transpose()?;
            resize_phases(&ctx, run, &mut st, plain)?;
            verify_store(&st, cfg.regions, region_len)?;
        } else {
            drop(plain);
        }
        drop(plain_doomed);
        if cfg.has(Part::Amortized) {
            drop(st);
            st = amortized(&ctx, run, &store_path)?;
            verify_store(&st, cfg.regions, region_len)?;
        }
        if cfg.has(Part::Updates) {
            drop(st);
            updates(&ctx, run, &store_path)?;
        } else {
            drop(st);
        }
        drop(doomed);
    }
    if cfg.has(Part::Naive) {
        naive(&ctx, run, &plain_path)?;
    }
    if cfg.has(Part::Noshift) {
        noshift(&ctx, run, dir)?;
    }
    if cfg.has(Part::Extents) {
        if caps.fiemap.works {
            extent_sweep(&ctx, run, dir)?;
        } else {
            run.extents_note = Some(format!("{} has no FIEMAP (no extents)", run.fs));
        }
    }
    Ok(())
}

/// The plain twin of the store for the bare calls: the same bytes at the
/// same offsets, either unmapped (its cache filled with `read`) or mapped
/// and touched through the mapping like the store (so the kernel has the
/// same page tables to zap when it drops the tail's cache).
struct Plain {
    f: File,
    map: Reservation,
    mapped: bool,
    buf: Vec<u8>,
    page: usize,
    advice: Advice,
}

impl Plain {
    fn new(f: File, reserve: u64, page: usize, advice: Advice) -> Res<Plain> {
        let reserve = usize::try_from(reserve.next_multiple_of(GIB)).map_err(es)?;
        Ok(Plain {
            f,
            map: Reservation::new(reserve, true).map_err(es)?,
            mapped: false,
            buf: Vec::new(),
            page,
            advice,
        })
    }

    /// The store's advice, over the whole mapping (as `Store` does).
    fn advise(&self) -> Res<()> {
        let n = self.map.mapped();
        if self.advice != Advice::Normal && n > 0 {
            self.map.advise(0, n, self.advice).map_err(es)?;
        }
        Ok(())
    }

    fn size(&self) -> Res<u64> {
        Ok(self.f.metadata().map_err(es)?.len())
    }

    /// Maps the whole file (`on`) or returns the mapping to the reservation,
    /// which frees its page tables.
    fn set_mapped(&mut self, on: bool) -> Res<()> {
        let len = if on { self.size()? } else { 0 };
        if !on && self.map.mapped() > 0 {
            #[allow(unsafe_code)]
            // SAFETY: the reservation only ever maps this file; `&mut self`
            // means no slice into it is alive.
            unsafe { self.map.map_file(&self.f, 0) }.map_err(es)?;
        }
        self.mapped = on;
        if on {
            #[allow(unsafe_code)]
            // SAFETY: as above; `len` is the file's current size, so every
            // mapped page is backed by the file.
            unsafe { self.map.map_file(&self.f, len as usize) }.map_err(es)?;
            self.advise()?;
        }
        Ok(())
    }

    /// After an insert or collapse: the mapping follows the file size.
    fn follow(&mut self) -> Res<()> {
        if self.mapped {
            let len = self.size()?;
            #[allow(unsafe_code)]
            // SAFETY: as in `set_mapped`; nothing touched the mapping since
            // the size changed.
            unsafe { self.map.map_file(&self.f, len as usize) }.map_err(es)?;
            self.advise()?;
        }
        Ok(())
    }

    /// Returns `[at, EOF)` of the mapping to the reservation and maps it
    /// again: what a store could do after a shift so the kernel frees the
    /// page tables of the tail (which the shift emptied) instead of walking
    /// them at every later shift.
    fn remap_from(&mut self, at: u64) -> Res<()> {
        let len = self.size()?;
        let at = at / self.page as u64 * self.page as u64;
        #[allow(unsafe_code)]
        // SAFETY: as in `set_mapped`; `at` and `len` are within the file.
        unsafe {
            self.map.map_file(&self.f, at as usize).map_err(es)?;
            self.map.map_file(&self.f, len as usize).map_err(es)?;
        }
        self.advise()
    }

    /// Fills the page cache: through the mapping when mapped, else `read`.
    fn warm(&mut self) -> Res<()> {
        if self.mapped {
            let n = self.map.mapped();
            touch(self.map.bytes(0, n).map_err(es)?, self.page);
            Ok(())
        } else {
            read_all(&self.f, &mut self.buf)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum M {
    Budge,
    /// Bare fallocate + fsync, plain file unmapped.
    Bare,
    /// The store's protocol alone, plain file unmapped.
    Floor,
    /// Bare fallocate + fsync, plain file mapped and touched like the store.
    BareMapped,
    /// The protocol alone, plain file mapped.
    FloorMapped,
    /// Bare fallocate + fsync, plain file mapped, then the tail of the
    /// mapping replaced (timed with it).
    BareRemap,
}

impl M {
    fn name(self) -> &'static str {
        match self {
            M::Budge => "budge",
            M::Bare => "bare",
            M::Floor => "floor",
            M::BareMapped => "bare-mapped",
            M::FloorMapped => "floor-mapped",
            M::BareRemap => "bare-mapped-remap",
        }
    }

    fn mapped(self) -> bool {
        matches!(self, M::BareMapped | M::FloorMapped | M::BareRemap)
    }
}

/// The sequence (100 grows, 100 shrinks, interleaved with bare and floor,
/// once with the plain file unmapped and once mapped), the touches, and the
/// warm runs.
fn resize_phases(
    ctx: &Ctx<'_>,
    run: &mut FsRun,
    st: &mut Store,
    mut plain: Option<Plain>,
) -> Res<()> {
    let cfg = ctx.cfg;
    let (r0, len0) = (region_name(0), run.region_len);
    let at = DATA_START + len0;
    let step = cfg.step;
    let hdr = vec![0x5au8; 4096];
    let say = ctx.say;

    // Touch the freshly written store: every page is cached (written), none
    // mapped yet; then again, mapped.
    for k in 0..3 {
        let (s, _) = timed(ctx.dev(), || touch_store(st, cfg.regions, ctx.page))?;
        if k == 0 {
            run.touch_first.samples.push(s);
        } else {
            run.touch_warm.samples.push(s);
        }
    }
    run.pmd_warm = store_pmd(st);

    let halves: Vec<Vec<M>> = if plain.is_some() {
        vec![
            vec![M::Budge, M::Bare, M::Floor],
            vec![M::Budge, M::BareMapped, M::FloorMapped],
            vec![M::Budge, M::BareRemap],
        ]
    } else {
        let why = format!("{} has no fallocate INSERT_RANGE/COLLAPSE_RANGE", run.fs);
        for p in [
            &mut run.seq_bare,
            &mut run.seq_floor,
            &mut run.seq_bare_mapped,
            &mut run.seq_floor_mapped,
            &mut run.seq_bare_remap,
            &mut run.warm_bare,
            &mut run.warm_bare_mapped,
        ] {
            p.grow.note = Some(why.clone());
        }
        vec![vec![M::Budge]]
    };
    let per_half = cfg.budget / 2.0 / halves.len() as f64;
    let mut done_min = usize::MAX;
    for (h, methods) in halves.iter().enumerate() {
        if let Some(p) = plain.as_mut() {
            p.set_mapped(methods.iter().any(|m| m.mapped()))?;
            p.warm()?;
        }
        say(format!(
            "  back to back: {} grows of {} by {}, then shrinks ({})...",
            cfg.steps,
            r0,
            fmt_bytes(step),
            methods
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let t0 = Instant::now();
        let mut done = 0;
        for k in 0..cfg.steps {
            if k > 0 && t0.elapsed().as_secs_f64() > per_half {
                run.notes.push(format!(
                    "back-to-back series ({}) stopped after {k} grows (time budget)",
                    methods
                        .iter()
                        .map(|m| m.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                break;
            }
            for j in 0..methods.len() {
                let m = methods[(k + j) % methods.len()];
                let s = one_sample(ctx, run, st, plain.as_mut(), &hdr, m, true, k, at)?;
                if m == M::Budge {
                    run.seq_budge_half[h].grow.samples.push(s);
                }
                seq_pair(run, m).grow.samples.push(s);
            }
            done = k + 1;
        }
        let grown_secs = t0.elapsed().as_secs_f64();
        verify_store(st, cfg.regions, len0)?;
        for k in (0..done).rev() {
            for j in 0..methods.len() {
                let m = methods[(k + j) % methods.len()];
                let s = one_sample(ctx, run, st, plain.as_mut(), &hdr, m, false, k, at)?;
                if m == M::Budge {
                    run.seq_budge_half[h].shrink.samples.push(s);
                }
                seq_pair(run, m).shrink.samples.push(s);
            }
        }
        done_min = done_min.min(done);
        say(format!(
            "    {done} grows in {grown_secs:.1} s, shrinks in {:.1} s",
            t0.elapsed().as_secs_f64() - grown_secs,
        ));
        if let Some(p) = &plain {
            if p.size()? != st.file_size() {
                return Err(format!(
                    "plain file is {} bytes after the sequence, store {}",
                    p.size()?,
                    st.file_size()
                ));
            }
        }
        verify_store(st, cfg.regions, len0)?;
    }
    run.steps_done = done_min;

    // Warm: everything read back before each call (the store through its
    // mapping, timed: the re-touch cost).
    say(format!("  warm: {} grow+shrink pairs...", cfg.warm_runs));
    let t0 = Instant::now();
    let methods: Vec<M> = if plain.is_some() {
        vec![M::Budge, M::BareMapped, M::Bare]
    } else {
        vec![M::Budge]
    };
    for rep in 0..cfg.warm_runs {
        if rep > 0 && t0.elapsed().as_secs_f64() > cfg.budget {
            run.notes.push(format!(
                "warm runs stopped after {rep} (time budget {:.0} s)",
                cfg.budget
            ));
            break;
        }
        for grow in [true, false] {
            let (s, _) = timed(ctx.dev(), || touch_store(st, cfg.regions, ctx.page))?;
            run.touch_after.samples.push(s);
            run.pmd_after = store_pmd(st);
            for j in 0..methods.len() {
                let m = methods[(rep + j) % methods.len()];
                if m != M::Budge {
                    if let Some(p) = plain.as_mut() {
                        p.set_mapped(m.mapped())?;
                        p.warm()?;
                    }
                }
                let s = one_sample(ctx, run, st, plain.as_mut(), &hdr, m, grow, 0, at)?;
                let pair = match m {
                    M::Budge => &mut run.warm_budge,
                    M::BareMapped => &mut run.warm_bare_mapped,
                    _ => &mut run.warm_bare,
                };
                if grow {
                    pair.grow.samples.push(s);
                } else {
                    pair.shrink.samples.push(s);
                }
            }
        }
    }
    say(format!(
        "    warm budge grow median {}, re-touch median {}",
        run.warm_budge
            .grow
            .median()
            .map_or("-".into(), super::super::report::secs),
        run.touch_after
            .median()
            .map_or("-".into(), super::super::report::secs)
    ));
    Ok(())
}

fn seq_pair(run: &mut FsRun, m: M) -> &mut Pair {
    match m {
        M::Budge => &mut run.seq_budge,
        M::Bare => &mut run.seq_bare,
        M::Floor => &mut run.seq_floor,
        M::BareMapped => &mut run.seq_bare_mapped,
        M::FloorMapped => &mut run.seq_floor_mapped,
        M::BareRemap => &mut run.seq_bare_remap,
    }
}

/// One grow (to step `k + 1`) or shrink (to step `k`) by method `m`.
#[allow(clippy::too_many_arguments)]
fn one_sample(
    ctx: &Ctx<'_>,
    run: &mut FsRun,
    st: &mut Store,
    plain: Option<&mut Plain>,
    hdr: &[u8],
    m: M,
    grow: bool,
    k: usize,
    at: u64,
) -> Res<Sample> {
    let step = ctx.cfg.step;
    let r0 = region_name(0);
    let len = run.region_len + if grow { k as u64 + 1 } else { k as u64 } * step;
    if m == M::Budge {
        let (s, rep) = timed(ctx.dev(), || {
            st.resize(&r0, len)
                .map_err(|e| format!("budge resize: {e}"))
        })?;
        if rep.shift.is_none() {
            return Err(format!(
                "budge resize to {len} did not shift (capacity {} -> {})",
                rep.old_capacity, rep.new_capacity
            ));
        }
        record(run, &rep);
        return Ok(s);
    }
    let p = plain.ok_or("no plain file")?;
    if p.mapped != m.mapped() {
        p.set_mapped(m.mapped())?;
    }
    let s = match m {
        M::Bare | M::BareMapped => timed(ctx.dev(), || bare(&p.f, grow, at, step))?.0,
        M::BareRemap => {
            timed(ctx.dev(), || {
                bare(&p.f, grow, at, step)?;
                p.remap_from(at)
            })?
            .0
        }
        _ => timed(ctx.dev(), || floor(&p.f, hdr, grow, at, step))?.0,
    };
    p.follow()?;
    Ok(s)
}

/// The default growth policy with the same appends, warm: every region is
/// touched through the mapping before the first call and again (timed, the
/// re-touch) after each call that shifted, so every call starts with the
/// whole store cached, as in the warm resize series.
fn amortized(ctx: &Ctx<'_>, run: &mut FsRun, path: &Path) -> Res<Store> {
    let cfg = ctx.cfg;
    let opts = StoreOptions {
        growth: Growth::Amortized,
        advice: cfg.advice,
        ..StoreOptions::default()
    };
    let mut st = Store::open(path, &opts).map_err(es)?;
    let r0 = region_name(0);
    let len0 = run.region_len;
    let mut a = Amortized::default();
    (ctx.say)(format!(
        "  amortized: {} appends of {} with Growth::Amortized, warm...",
        cfg.steps,
        fmt_bytes(cfg.step)
    ));
    touch_store(&st, cfg.regions, ctx.page)?;
    touch_store(&st, cfg.regions, ctx.page)?;
    a.pmd = store_pmd(&st);
    let t0 = Instant::now();
    let mut done = 0;
    let one = |st: &mut Store, a: &mut Amortized, len: u64, grow: bool| -> Res<()> {
        let (s, rep) = timed(ctx.dev(), || st.resize(&r0, len).map_err(es))?;
        let shifted = rep.shift.is_some();
        if grow {
            a.grow_shifts += usize::from(shifted);
            a.grows.samples.push(s);
            a.grow_shifted.push(shifted);
        } else {
            a.shrink_shifts += usize::from(shifted);
            a.shrinks.samples.push(s);
            a.shrink_shifted.push(shifted);
        }
        if shifted {
            let (t, _) = timed(ctx.dev(), || touch_store(st, cfg.regions, ctx.page))?;
            a.retouch.samples.push(t);
        }
        Ok(())
    };
    for k in 1..=cfg.steps {
        if k > 1 && t0.elapsed().as_secs_f64() > cfg.budget / 2.0 {
            run.notes
                .push(format!("amortized appends stopped after {}", k - 1));
            break;
        }
        one(&mut st, &mut a, len0 + k as u64 * cfg.step, true)?;
        done = k;
    }
    a.capacity_after_grows = st.region(&r0).map_or(0, |r| r.capacity);
    for k in (0..done).rev() {
        one(&mut st, &mut a, len0 + k as u64 * cfg.step, false)?;
    }
    a.capacity_after_shrinks = st.region(&r0).map_or(0, |r| r.capacity);
    // The same appends to an empty region, computed with the policy itself.
    let mut cap = 0;
    for k in 1..=cfg.steps as u64 {
        let c = capacity_for(k * cfg.step, cap, run.align, Growth::Amortized);
        a.from_empty_grow_shifts += usize::from(c != cap);
        cap = c;
    }
    for k in (0..cfg.steps as u64).rev() {
        let c = capacity_for(k * cfg.step, cap, run.align, Growth::Amortized);
        a.from_empty_shrink_shifts += usize::from(c != cap);
        cap = c;
    }
    run.amortized = Some(a);
    Ok(st)
}

/// Device bytes per random one-byte update through the mapping plus
/// commit, in region 1.
fn updates(ctx: &Ctx<'_>, run: &mut FsRun, path: &Path) -> Res<()> {
    let cfg = ctx.cfg;
    if ctx.dev.is_none() {
        run.updates_note = Some("no block device: nothing to count".into());
        return Ok(());
    }
    (ctx.say)(format!(
        "  updates: {} random one-byte stores + commit, per case...",
        cfg.updates
    ));
    let r1 = region_name(1);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    for fill in [Fill::LargeWrites, Fill::Cold] {
        for advice in [Advice::Normal, Advice::Random] {
            let (off, len) = {
                let st = Store::open(path, &StoreOptions::default()).map_err(es)?;
                let r = st.region(&r1).ok_or("no region r1")?;
                (r.offset, r.len)
            };
            run.update_region_len = len;
            let f = open_rw(path)?;
            sys::fdatasync(&f).map_err(es)?;
            sys::fadvise_dontneed(&f, off, len).map_err(es)?;
            if fill == Fill::LargeWrites {
                write_region(&[&f], off, len, 1)?;
                sys::fdatasync(&f).map_err(es)?;
            }
            drop(f);
            let opts = StoreOptions {
                growth: Growth::Exact,
                advice,
                ..StoreOptions::default()
            };
            let mut st = Store::open(path, &opts).map_err(es)?;
            let mut series = Series::default();
            for _ in 0..cfg.updates {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let o = (rng % len) as usize;
                let (s, ()) = timed(ctx.dev(), || {
                    let b = st.bytes_mut(&r1).map_err(es)?;
                    b[o] = b[o].wrapping_add(1);
                    st.commit().map_err(es)
                })?;
                series.samples.push(s);
            }
            run.updates.push(UpdRow {
                fill,
                advice,
                series,
            });
        }
    }
    Ok(())
}

/// The naive rewrite of everything after region 0, warm.
fn naive(ctx: &Ctx<'_>, run: &mut FsRun, plain_path: &Path) -> Res<()> {
    let cfg = ctx.cfg;
    let _doomed = Doomed::new(vec![plain_path.to_path_buf()]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(plain_path)
        .map_err(es)?;
    let len = run.region_len;
    f.set_len(run.file_size).map_err(es)?;
    for i in 0..cfg.regions {
        write_region(&[&f], DATA_START + i as u64 * len, len, i)?;
    }
    sys::fsync(&f).map_err(es)?;
    let at = DATA_START + len;
    let mut buf = Vec::new();
    (ctx.say)(format!(
        "  naive: {} grow+shrink pairs (rewrite {} after region 0)...",
        cfg.naive_runs,
        fmt_bytes(run.file_size - at)
    ));
    let t0 = Instant::now();
    for rep in 0..cfg.naive_runs {
        if rep > 0 && t0.elapsed().as_secs_f64() > cfg.budget {
            run.notes
                .push(format!("naive runs stopped after {rep} (time budget)"));
            break;
        }
        read_all(&f, &mut buf)?;
        let (s, ()) = timed(ctx.dev(), || {
            baseline::naive_insert(&f, at, cfg.step).map_err(es)
        })?;
        run.naive.grow.samples.push(s);
        read_all(&f, &mut buf)?;
        let (s, ()) = timed(ctx.dev(), || {
            baseline::naive_collapse(&f, at, cfg.step).map_err(es)
        })?;
        run.naive.shrink.samples.push(s);
    }
    // Check it did what it should: region 1 starts where it did.
    let mut got = vec![0u8; 4096];
    let mut want = vec![0u8; 4096];
    f.read_exact_at(&mut got, at).map_err(es)?;
    crate::pattern::fill(&mut want, 0, seed(1));
    if got != want || f.metadata().map_err(es)?.len() != run.file_size {
        return Err("WRONG CONTENT after the naive rewrite".into());
    }
    Ok(())
}

/// The layout that never shifts: each region its own file mapped into its
/// own reservation; growing region 0 extends its file and maps the new part.
fn noshift(ctx: &Ctx<'_>, run: &mut FsRun, dir: &Path) -> Res<()> {
    let cfg = ctx.cfg;
    let paths: Vec<PathBuf> = (0..cfg.regions)
        .map(|i| bench_path(dir, &format!("noshift-{i}")))
        .collect();
    let _doomed = Doomed::new(paths.clone());
    let len = run.region_len;
    let reserve = (len + (cfg.steps as u64 + 1) * cfg.step).next_multiple_of(GIB) as usize;
    let mut files = Vec::new();
    let mut maps = Vec::new();
    (ctx.say)(format!(
        "  no-shift: {} region files, {} grows of region 0...",
        cfg.regions, cfg.steps
    ));
    for (i, p) in paths.iter().enumerate() {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(p)
            .map_err(es)?;
        f.set_len(len).map_err(es)?;
        write_region(&[&f], 0, len, i)?;
        sys::fdatasync(&f).map_err(es)?;
        let mut m = Reservation::new(reserve, true).map_err(es)?;
        #[allow(unsafe_code)]
        // SAFETY: `f` is this bench's own file, created above and kept open
        // beside its reservation; nothing truncates it except `grow_noshift`
        // below, which shrinks the mapping before the file. Each reservation
        // only ever maps its own file.
        unsafe { m.map_file(&f, len as usize) }.map_err(es)?;
        files.push(f);
        maps.push(m);
    }
    let touch_all = |maps: &[Reservation], lens: &[u64]| -> Res<u64> {
        let mut s = 0u64;
        for (m, &l) in maps.iter().zip(lens) {
            s = s.wrapping_add(touch(m.bytes(0, l as usize).map_err(es)?, ctx.page));
        }
        Ok(s)
    };
    let mut lens = vec![len; cfg.regions];
    let (s, _) = timed(ctx.dev(), || touch_all(&maps, &lens))?;
    run.noshift_touch_first.samples.push(s);
    let t0 = Instant::now();
    let mut done = 0;
    for k in 0..cfg.steps {
        if k > 0 && t0.elapsed().as_secs_f64() > cfg.budget / 2.0 {
            break;
        }
        let new = len + (k as u64 + 1) * cfg.step;
        let (s, ()) = timed(ctx.dev(), || grow_noshift(&files[0], &mut maps[0], new))?;
        run.noshift.grow.samples.push(s);
        lens[0] = new;
        done = k + 1;
    }
    for _ in 0..2 {
        let (s, _) = timed(ctx.dev(), || touch_all(&maps, &lens))?;
        run.noshift_touch_after.samples.push(s);
    }
    for k in (0..done).rev() {
        let new = len + k as u64 * cfg.step;
        let (s, ()) = timed(ctx.dev(), || grow_noshift(&files[0], &mut maps[0], new))?;
        run.noshift.shrink.samples.push(s);
        lens[0] = new;
    }
    drop(maps);
    Ok(())
}

/// Sets a no-shift region's length: extend the file then map the new part,
/// or unmap then truncate; fdatasync either way (the size is durable).
fn grow_noshift(f: &File, m: &mut Reservation, new: u64) -> Res<()> {
    let old = m.mapped() as u64;
    if new > old {
        sys::ftruncate(f, new).map_err(es)?;
    }
    #[allow(unsafe_code)]
    // SAFETY: as at the first mapping: `f` is the reservation's own file,
    // already at least `new` bytes long when growing; when shrinking the
    // mapping is cut before the file.
    unsafe { m.map_file(f, new as usize) }.map_err(es)?;
    if new < old {
        sys::ftruncate(f, new).map_err(es)?;
    }
    sys::fdatasync(f).map_err(es)
}

/// Resize latency against the number of extents after region 0.
fn extent_sweep(ctx: &Ctx<'_>, run: &mut FsRun, dir: &Path) -> Res<()> {
    let cfg = ctx.cfg;
    let len = cfg.extent_store_size / cfg.regions as u64 / run.align * run.align;
    run.extent_store_len = len * cfg.regions as u64;
    let step = cfg.step;
    let at = DATA_START + len;
    for &n in &cfg.extent_counts {
        let mut row = ExtRow {
            target: n,
            extents: None,
            journal: None,
            budge: Pair::default(),
            bare: Pair::default(),
            note: None,
        };
        let sp = bench_path(dir, &format!("ext{n}-store"));
        let pp = bench_path(dir, &format!("ext{n}-plain"));
        let _doomed = Doomed::new(vec![sp.clone(), sidecar(&sp), pp.clone()]);
        (ctx.say)(format!("  extents: {n} after region 0..."));
        let opts = StoreOptions {
            growth: Growth::Exact,
            ..StoreOptions::default()
        };
        let (mut st, plain) = build(
            &sp,
            run.insert_range.then_some(pp.as_path()),
            cfg.regions,
            len,
            &opts,
        )?;
        let sf = open_rw(&sp)?;
        let tail = st.file_size() - at;
        let period = tail / n.max(1) / (2 * run.align) * (2 * run.align);
        if period < 2 * run.align {
            row.note = Some(format!(
                "{n} extents do not fit in {} with {}-byte blocks",
                fmt_bytes(tail),
                run.align
            ));
            run.extents.push(row);
            continue;
        }
        for f in std::iter::once(&sf).chain(plain.as_ref()) {
            for i in 0..n.saturating_sub(1) {
                budge::copy::punch_hole(f, at + i * period + period / 2, period / 2).map_err(es)?;
            }
            sys::fsync(f).map_err(es)?;
        }
        row.extents = budge::extents::extents_in(&sf, at, tail)
            .map(|e| e.len())
            .ok();
        for _ in 0..cfg.extent_runs {
            for grow in [true, false] {
                let new = len + if grow { step } else { 0 };
                for m in [M::Budge, M::Bare] {
                    sys::fadvise_dontneed(&sf, 0, 0).map_err(es)?;
                    if let Some(p) = &plain {
                        sys::fadvise_dontneed(p, 0, 0).map_err(es)?;
                    }
                    let s = match m {
                        M::Budge => {
                            let (s, r) = timed(ctx.dev(), || st.resize("r0", new).map_err(es))?;
                            if let Some(sh) = &r.shift {
                                row.journal = Some(sh.extents);
                            }
                            s
                        }
                        _ => match &plain {
                            Some(p) => timed(ctx.dev(), || bare(p, grow, at, step))?.0,
                            None => continue,
                        },
                    };
                    let pair = if m == M::Budge {
                        &mut row.budge
                    } else {
                        &mut row.bare
                    };
                    if grow {
                        pair.grow.samples.push(s);
                    } else {
                        pair.shrink.samples.push(s);
                    }
                }
            }
        }
        drop(st);
        run.extents.push(row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(v: &[f64]) -> Series {
        Series {
            samples: v
                .iter()
                .map(|&secs| Sample {
                    secs,
                    dev_w: Some(4096),
                    dev_r: None,
                })
                .collect(),
            note: None,
        }
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = series(&v);
        assert_eq!(s.median(), Some(50.5));
        assert_eq!(s.p99(), Some(99.0));
        assert_eq!(s.min(), Some(1.0));
        assert_eq!(s.max(), Some(100.0));
        assert_eq!(s.med_w(), Some(4096.0));
        assert_eq!(s.med_r(), None);
        assert_eq!(series(&[3.0]).p99(), Some(3.0));
        assert_eq!(series(&[]).p99(), None);
    }

    #[test]
    fn touch_reads_one_byte_per_page() {
        let mut b = vec![0u8; 3 * 4096 + 1];
        b[0] = 1;
        b[4096] = 2;
        b[8192] = 3;
        b[12288] = 4;
        b[1] = 100;
        assert_eq!(touch(&b, 4096), 10);
    }
}
