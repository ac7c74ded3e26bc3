//! `budge bench`: insert and collapse a range at the middle of a file with
//! every strategy the filesystem allows, side by side with the naive rewrite
//! ([`crate::baseline`]) and the bare `fallocate` call, in the same run, warm
//! and cold. Every figure is reported next to its baselines, because other
//! work on the machine makes absolute times noisy.
//!
//! Per filesystem and size: one file of known content is written; each
//! method runs N insert+collapse pairs on it (the collapse undoes the
//! insert), each operation prepared (warm: the whole file read into the page
//! cache; cold: the page cache dropped), timed alone (fsync included), its
//! device writes read from `/sys/block/<dev>/stat`, and its result checked.
//! The metadata methods (bare fallocate, native, reflink, and the fallocate
//! calls without fsync that isolate budge's own overhead) run interleaved;
//! the copying ones each on their own, fewer times at large sizes.

mod data;
pub mod defrag;
mod measure;
mod report;
pub mod store;
mod sysinfo;

use std::path::{Path, PathBuf};
use std::time::Instant;

use budge::FsKind;
use budge::Strategy;
use clap::{Args, ValueEnum};

use measure::{ColdMethod, Env, Series, Subject};
use report::{FsResult, SizeResult, SweepResult};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Arguments of `budge bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Directories, each on a filesystem to measure [default: .]
    pub dirs: Vec<PathBuf>,
    /// File sizes, comma-separated; sizes that do not fit in the free space
    /// (with a margin) are skipped [default: 256M,1G,4G; --quick: 16M,64M]
    #[arg(long, value_delimiter = ',', value_parser = crate::parse_size)]
    pub sizes: Option<Vec<u64>>,
    /// Insert+collapse pairs per metadata method; copying methods and the
    /// naive rewrite run fewer at 1 GiB (3) and above (1) [default: 5;
    /// --quick: 2]
    #[arg(long)]
    pub runs: Option<usize>,
    /// Smoke-test the harness: small files, two runs, small extent sweep.
    #[arg(long)]
    pub quick: bool,
    /// Also time bare/native/reflink insert and collapse against the file's
    /// extent count (a file with holes punched).
    #[arg(long)]
    pub extents: bool,
    /// Extent counts for --extents [default: 10,100,1000,10000; --quick: 10,100]
    #[arg(long, value_delimiter = ',')]
    pub extent_counts: Option<Vec<u64>>,
    /// File size for --extents [default: 256M; --quick: 16M]
    #[arg(long, value_parser = crate::parse_size)]
    pub extent_file_size: Option<u64>,
    /// Cache states to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "warm,cold")]
    pub cache: Vec<Cache>,
    /// Only these methods, comma-separated: bare-fallocate, native, reflink,
    /// bare-nosync, native-nosync (the calls without fsync), naive-rewrite,
    /// user-copy, kernel-copy [default: all]
    #[arg(long, value_delimiter = ',', value_parser = parse_method)]
    pub methods: Option<Vec<Method>>,
    /// Bytes inserted and collapsed (a multiple of the block size).
    #[arg(long, default_value = "64K", value_parser = crate::parse_size)]
    pub gap: u64,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `--json` and `--save-json` of the benches that can save their JSON beside
/// the tables.
#[derive(Args, Clone)]
pub struct JsonArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON to this file (beside the tables).
    #[arg(long)]
    pub save_json: Option<PathBuf>,
}

impl JsonArgs {
    /// Writes `v` to the `--save-json` file, if one was given, then prints it
    /// if `--json` was.
    fn emit(&self, v: &serde_json::Value) -> Result<(), Box<dyn std::error::Error>> {
        if let Some(p) = &self.save_json {
            std::fs::write(p, serde_json::to_string_pretty(v)?)
                .map_err(|e| format!("write {}: {e}", p.display()))?;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(v)?);
        }
        Ok(())
    }
}

/// The page cache state before a timed operation.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Cache {
    /// The whole file is in the page cache.
    Warm,
    /// Nothing of the file is cached: caches dropped (root) or fadvise(DONTNEED).
    Cold,
}

impl Cache {
    fn name(self) -> &'static str {
        match self {
            Cache::Warm => "warm",
            Cache::Cold => "cold",
        }
    }
}

/// What is timed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `baseline::naive_insert` / `naive_collapse` (rewrite the tail, fsync).
    Naive,
    /// The bare `fallocate` call plus fsync, bypassing budge.
    Bare,
    /// The bare `fallocate` call alone, no fsync.
    BareNoSync,
    /// `budge::insert` / `collapse`, native forced, `sync: false`. With
    /// [`Method::BareNoSync`] it isolates budge's own overhead from the
    /// noise of fsync.
    NativeNoSync,
    /// `budge::insert` / `collapse` with this strategy forced, `sync: true`.
    Shift(Strategy),
}

impl Method {
    /// Everything, in the order they run on one file: the metadata methods
    /// first (interleaved), then the naive rewrite (every speed-up's
    /// baseline), the copying strategies last (on reflink filesystems
    /// `copy_file_range` can leave the file fragmented).
    const ALL: [Method; 8] = [
        Method::Bare,
        Method::Shift(Strategy::Native),
        Method::Shift(Strategy::Reflink),
        Method::BareNoSync,
        Method::NativeNoSync,
        Method::Naive,
        Method::Shift(Strategy::UserCopy),
        Method::Shift(Strategy::KernelCopy),
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Naive => "naive-rewrite",
            Method::Bare => "bare-fallocate",
            Method::BareNoSync => "bare-nosync",
            Method::NativeNoSync => "native-nosync",
            Method::Shift(s) => s.name(),
        }
    }

    /// Whether the time is O(file size).
    fn copies(self) -> bool {
        match self {
            Method::Naive => true,
            Method::Bare | Method::BareNoSync | Method::NativeNoSync => false,
            Method::Shift(s) => s.copies_data(),
        }
    }

    /// Whether the timed call includes an fsync.
    fn syncs(self) -> bool {
        !matches!(self, Method::BareNoSync | Method::NativeNoSync)
    }

    /// The bare call this method's "vs bare" ratio divides by.
    fn bare(self) -> Method {
        match self {
            Method::BareNoSync | Method::NativeNoSync => Method::BareNoSync,
            _ => Method::Bare,
        }
    }

    /// The order of rows in the tables.
    fn rank(self) -> u8 {
        match self {
            Method::Bare => 0,
            Method::Shift(Strategy::Native) => 1,
            Method::Shift(Strategy::Reflink) => 2,
            Method::Shift(Strategy::KernelCopy) => 3,
            Method::Shift(Strategy::UserCopy) => 4,
            Method::Shift(_) => 5,
            Method::Naive => 6,
            Method::BareNoSync => 7,
            Method::NativeNoSync => 8,
        }
    }
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::ALL
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            format!(
                "unknown method {s:?} (expected one of {})",
                names.join(", ")
            )
        })
}

/// Insert or collapse.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Collapse,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Collapse => "collapse",
        }
    }
}

/// The arguments with defaults resolved.
pub struct Config {
    dirs: Vec<PathBuf>,
    sizes: Vec<u64>,
    runs: usize,
    caches: Vec<Cache>,
    methods: Vec<Method>,
    gap: u64,
    extents: bool,
    extent_counts: Vec<u64>,
    extent_file_size: u64,
    json: bool,
}

impl Config {
    fn from(a: &BenchArgs) -> Config {
        let q = a.quick;
        let mut caches = a.cache.clone();
        caches.dedup();
        Config {
            dirs: if a.dirs.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                a.dirs.clone()
            },
            sizes: a.sizes.clone().unwrap_or_else(|| {
                if q {
                    vec![16 * MIB, 64 * MIB]
                } else {
                    vec![256 * MIB, GIB, 4 * GIB]
                }
            }),
            runs: a.runs.unwrap_or(if q { 2 } else { 5 }).max(1),
            caches,
            methods: a.methods.clone().unwrap_or_else(|| Method::ALL.to_vec()),
            gap: a.gap,
            extents: a.extents,
            extent_counts: a.extent_counts.clone().unwrap_or_else(|| {
                if q {
                    vec![10, 100]
                } else {
                    vec![10, 100, 1000, 10_000]
                }
            }),
            extent_file_size: a
                .extent_file_size
                .unwrap_or(if q { 16 * MIB } else { 256 * MIB }),
            json: a.json,
        }
    }

    /// Pairs for `method` on a `size` file: fewer for the O(n) ones on
    /// large files, to keep the whole bench within minutes.
    fn runs_for(&self, method: Method, size: u64) -> usize {
        if !method.copies() || size <= 256 * MIB {
            self.runs
        } else if size <= GIB {
            self.runs.min(3)
        } else {
            1
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::from(args);
    if cfg.gap == 0 || cfg.gap % data::BLOCK != 0 {
        return Err(format!(
            "budge bench: --gap must be a non-zero multiple of {}",
            data::BLOCK
        )
        .into());
    }
    let machine = sysinfo::Machine::get();
    let say = |s: String| eprintln!("{s}");
    // A cold run needs root to drop caches; otherwise fall back to fadvise.
    let cold = if !cfg.caches.contains(&Cache::Cold) || sysinfo::drop_caches().is_ok() {
        ColdMethod::DropCaches
    } else {
        say("bench: cannot write /proc/sys/vm/drop_caches (not root?): cold = posix_fadvise(DONTNEED)".into());
        ColdMethod::Fadvise
    };
    if !cfg.json {
        report::print_header(&machine, &cfg, cold);
    }
    let start = Instant::now();
    let mut results = Vec::new();
    for dir in &cfg.dirs {
        let r = bench_fs(dir, &cfg, cold, &say);
        if !cfg.json {
            report::print_fs(&r, &cfg);
        }
        results.push(r);
    }
    let targets = report::targets(&results, &cfg);
    if cfg.json {
        let v = report::json(
            &machine,
            &cfg,
            cold,
            &results,
            &targets,
            start.elapsed().as_secs_f64(),
        );
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        report::print_targets(&targets);
        println!("\nwhole bench: {:.0} s", start.elapsed().as_secs_f64());
    }
    Ok(())
}

fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// Free space kept for everyone else on the filesystem.
fn margin(total: u64) -> u64 {
    (total / 8).clamp(16 * MIB, GIB)
}

/// Space a method needs beyond the file itself. btrfs writes data out of
/// place, so a rewrite of the tail needs room for a second copy of it until
/// the transaction commits.
fn extra_space(method: Method, caps: &budge::Capabilities, size: u64, gap: u64) -> u64 {
    let cow = caps.fs.kind == FsKind::Btrfs;
    let tail = size - size / 2;
    match method {
        Method::Naive | Method::Shift(Strategy::UserCopy) if cow => tail + gap,
        Method::Shift(Strategy::KernelCopy) if cow && !caps.copy_file_range_reflinks.works => {
            tail + gap
        }
        _ => gap,
    }
}

fn bench_fs(dir: &Path, cfg: &Config, cold: ColdMethod, say: &dyn Fn(String)) -> FsResult {
    let t = Instant::now();
    let mut r = FsResult::new(dir);
    let caps = match budge::probe(dir) {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    let env = Env {
        dev: sysinfo::Device::of(dir),
        cold,
        gap: cfg.gap,
    };
    r.fs = caps.fs.kind.name();
    r.block = caps.block_size();
    r.device = env.dev.as_ref().map(|d| d.name.clone());
    r.free = free_bytes(dir);
    let margin = margin(caps.fs.total_bytes);
    say(format!(
        "bench: {} on {} ({}), {} free, keeping {} free for others",
        dir.display(),
        r.fs,
        r.device.as_deref().unwrap_or("no block device"),
        report::bytes(r.free),
        report::bytes(margin)
    ));
    let on = OnFs {
        dir,
        caps: &caps,
        env: &env,
        cfg,
        margin,
        say,
    };
    for &size in &cfg.sizes {
        r.sizes.push(bench_size(&on, size));
    }
    if cfg.extents {
        let any = [
            Method::Bare,
            Method::Shift(Strategy::Native),
            Method::Shift(Strategy::Reflink),
        ]
        .iter()
        .any(|m| measure::unavailable(*m, &caps).is_none());
        if any {
            for &n in &cfg.extent_counts {
                r.sweep.push(sweep_one(&on, n));
            }
        } else {
            r.sweep_note = Some(format!("{} has neither insert-range nor reflink", r.fs));
        }
    }
    r.secs = t.elapsed().as_secs_f64();
    r
}

fn bench_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!(".budge-bench-{}-{what}.bin", std::process::id()))
}

/// What measuring one file on a filesystem needs: the directory, what its
/// filesystem can do, how to time, the arguments, the free space to leave to
/// others, and where progress goes.
struct OnFs<'a> {
    dir: &'a Path,
    caps: &'a budge::Capabilities,
    env: &'a Env,
    cfg: &'a Config,
    margin: u64,
    say: &'a dyn Fn(String),
}

impl OnFs<'_> {
    /// The unit files are laid out in: the filesystem's block, at least
    /// [`data::BLOCK`].
    fn block(&self) -> u64 {
        self.caps.block_size().max(data::BLOCK)
    }

    /// `size` rounded down to whole blocks (and MiB), and the block-aligned
    /// middle of that: where the gap goes.
    fn layout(&self, size: u64) -> (u64, u64) {
        let bs = self.block();
        let size = budge::range::align_down(size, bs.max(MIB));
        (size, budge::range::align_down(size / 2, bs))
    }

    /// Passes a progress line on.
    fn say(&self, line: String) {
        (self.say)(line);
    }

    /// Runs `methods` interleaved on `subj`, `runs` pairs each, per cache
    /// state; then says each series' summary.
    fn group(&self, subj: &mut Subject, methods: &[Method], runs: usize) -> Vec<Series> {
        let series = measure::group(
            self.env,
            subj,
            methods,
            &self.cfg.caches,
            runs,
            60.0,
            self.say,
        );
        for s in &series {
            self.say(report::progress_line(s));
        }
        series
    }

    /// A series of `method` per cache state measured, none run, for `why`.
    fn not_run(&self, method: Method, why: &str) -> Vec<Series> {
        self.cfg
            .caches
            .iter()
            .map(|&cache| Series::not_run(method, cache, why.to_string()))
            .collect()
    }
}

fn bench_size(on: &OnFs, size: u64) -> SizeResult {
    let (size, offset) = on.layout(size);
    let mut out = SizeResult {
        size,
        offset,
        skipped: None,
        series: Vec::new(),
        create_secs: 0.0,
        extents: None,
    };
    let need = size + on.cfg.gap + on.margin;
    let free = free_bytes(on.dir);
    if need > free {
        out.skipped = Some(format!(
            "needs {} free (file + margin), {} free",
            report::bytes(need),
            report::bytes(free)
        ));
        on.say(format!(
            "  {}: skipped: {}",
            report::bytes(size),
            out.skipped.as_deref().unwrap_or("")
        ));
        return out;
    }
    on.say(format!("  {}: writing the file...", report::bytes(size)));
    let t = Instant::now();
    let mut subj = match Subject::create(
        bench_path(on.dir, &report::bytes(size).replace(' ', "")),
        size,
        offset,
    ) {
        Ok(s) => s,
        Err(e) => {
            out.skipped = Some(format!("writing the file failed: {e}"));
            return out;
        }
    };
    out.create_secs = t.elapsed().as_secs_f64();
    let initial = subj.extent_count().unwrap_or(1);
    out.extents = Some(initial);
    let mut ready = Vec::new();
    for method in Method::ALL
        .into_iter()
        .filter(|m| on.cfg.methods.contains(m))
    {
        if let Some(why) = measure::unavailable(method, on.caps) {
            out.series.extend(on.not_run(method, &why));
            continue;
        }
        let extra = extra_space(method, on.caps, size, on.cfg.gap);
        let free = free_bytes(on.dir);
        if extra + on.margin > free {
            let why = format!(
                "no room: needs {} more, {} free",
                report::bytes(extra + on.margin),
                report::bytes(free)
            );
            on.say(format!("    {}: {why}", method.name()));
            out.series.extend(on.not_run(method, &why));
            continue;
        }
        ready.push(method);
    }
    // The metadata methods run interleaved (their ratios to each other are
    // the point); each copying one on its own, in `Method::ALL` order.
    let (meta, copying): (Vec<Method>, Vec<Method>) = ready.into_iter().partition(|m| !m.copies());
    let mut groups = vec![meta];
    groups.extend(copying.into_iter().map(|m| vec![m]));
    for g in groups.into_iter().filter(|g| !g.is_empty()) {
        // Start from the original layout if an earlier group broke or
        // fragmented the file.
        let count = subj.extent_count().unwrap_or(initial);
        if subj.broken || count > (initial * 4).max(initial + 64) {
            on.say(format!(
                "    rewriting the file ({count} extents, was {initial}, broken: {})",
                subj.broken
            ));
            if let Err(e) = subj.rewrite() {
                out.skipped = Some(format!("rewriting the file failed: {e}"));
                return out;
            }
        }
        let runs = on.cfg.runs_for(g[0], size);
        let names: Vec<&str> = g.iter().map(|m| m.name()).collect();
        on.say(format!("    {} ({runs} runs)...", names.join(", ")));
        let t = Instant::now();
        out.series.extend(on.group(&mut subj, &g, runs));
        on.say(format!("    ({:.1} s)", t.elapsed().as_secs_f64()));
    }
    out
}

fn sweep_one(on: &OnFs, n: u64) -> SweepResult {
    let bs = on.block();
    let (size, offset) = on.layout(on.cfg.extent_file_size);
    let mut out = SweepResult {
        target: n,
        size,
        offset,
        period: 0,
        extents: None,
        extents_after: None,
        series: Vec::new(),
        note: None,
    };
    let free = free_bytes(on.dir);
    if size + on.cfg.gap + on.margin > free {
        out.note = Some(format!(
            "needs {} free, {} free",
            report::bytes(size + on.cfg.gap + on.margin),
            report::bytes(free)
        ));
        return out;
    }
    on.say(format!(
        "  extent sweep: {n} extents in {}...",
        report::bytes(size)
    ));
    let path = bench_path(on.dir, &format!("extents-{n}"));
    let mut subj = match Subject::create(path, size, offset) {
        Ok(s) => s,
        Err(e) => {
            out.note = Some(format!("writing the file failed: {e}"));
            return out;
        }
    };
    match subj.punch_pattern(n, bs) {
        Ok(p) => out.period = p,
        Err(e) => {
            out.note = Some(e);
            return out;
        }
    }
    out.extents = subj.extent_count().ok();
    let mut ready = Vec::new();
    let sweep = [
        Method::Bare,
        Method::Shift(Strategy::Native),
        Method::Shift(Strategy::Reflink),
        Method::BareNoSync,
        Method::NativeNoSync,
    ];
    for method in sweep.into_iter().filter(|m| on.cfg.methods.contains(m)) {
        match measure::unavailable(method, on.caps) {
            Some(why) => out.series.extend(on.not_run(method, &why)),
            None => ready.push(method),
        }
    }
    out.series.extend(on.group(&mut subj, &ready, on.cfg.runs));
    if subj.broken {
        out.note = Some("the file was left in an unknown state".into());
        return out;
    }
    out.extents_after = subj.extent_count().ok();
    out
}
