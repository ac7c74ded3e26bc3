//! The bench's results, their tables, the targets they are checked against,
//! and the JSON form.

use std::path::{Path, PathBuf};

use budge::Strategy;
use serde_json::{json, Value};

use super::measure::{ColdMethod, Sample, Series};
use super::sysinfo::Machine;
use super::{Cache, Config, Method, Op, GIB, MIB};

/// Everything measured on one filesystem.
pub struct FsResult {
    pub dir: PathBuf,
    pub fs: String,
    pub block: u64,
    pub device: Option<String>,
    pub free: u64,
    pub sizes: Vec<SizeResult>,
    pub sweep: Vec<SweepResult>,
    pub sweep_note: Option<String>,
    pub error: Option<String>,
    pub secs: f64,
}

impl FsResult {
    pub fn new(dir: &Path) -> FsResult {
        FsResult {
            dir: dir.to_path_buf(),
            fs: "?".into(),
            block: 0,
            device: None,
            free: 0,
            sizes: Vec::new(),
            sweep: Vec::new(),
            sweep_note: None,
            error: None,
            secs: 0.0,
        }
    }

    fn size(&self, size: u64) -> Option<&SizeResult> {
        self.sizes
            .iter()
            .find(|s| s.size == size && s.skipped.is_none())
    }
}

/// One file size on one filesystem.
pub struct SizeResult {
    pub size: u64,
    pub offset: u64,
    pub skipped: Option<String>,
    pub series: Vec<Series>,
    pub create_secs: f64,
    pub extents: Option<u64>,
}

impl SizeResult {
    fn get(&self, method: Method, cache: Cache) -> Option<&Series> {
        self.series
            .iter()
            .find(|s| s.method == method && s.cache == cache && !s.insert.is_empty())
    }

    fn median(&self, method: Method, cache: Cache, op: Op) -> Option<f64> {
        self.get(method, cache)?.median(op)
    }
}

/// One extent count of the sweep.
pub struct SweepResult {
    pub target: u64,
    pub size: u64,
    pub offset: u64,
    pub period: u64,
    pub extents: Option<u64>,
    pub extents_after: Option<u64>,
    pub series: Vec<Series>,
    pub note: Option<String>,
}

/// `812 µs`, `1.23 ms`, `2.31 s`.
pub fn secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// `512 B`, `40 KiB`, `1.5 MiB`, `4 GiB`, `4.25 GiB`.
pub fn bytes(b: u64) -> String {
    let (unit, name, decimals) = if b < 1024 {
        return format!("{b} B");
    } else if b < MIB {
        (1024, "KiB", 0)
    } else if b < GIB {
        (MIB, "MiB", 1)
    } else {
        (GIB, "GiB", 2)
    };
    if b % unit == 0 {
        format!("{} {name}", b / unit)
    } else {
        format!("{:.*} {name}", decimals, b as f64 / unit as f64)
    }
}

/// [`bytes`] of a median rounded to whole bytes; `n/a` where there is none.
pub fn opt_bytes(b: Option<f64>) -> String {
    b.map_or_else(|| "n/a".into(), |b| bytes(b.round() as u64))
}

/// [`secs`], or `-` where nothing was measured.
pub fn opt_secs(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), secs)
}

/// `412x` (or `3.4x`) for a speed-up.
fn speed_up(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}x")
    } else {
        format!("{x:.1}x")
    }
}

/// A ratio to three significant figures: `412x`, `3.4x`, `1.07x`; `-` where
/// there is none.
pub fn times(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}x"),
        Some(x) if x >= 10.0 => format!("{x:.1}x"),
        Some(x) => format!("{x:.2}x"),
    }
}

/// `num / den` where both were measured and `den` is positive.
pub fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// A one-line summary of a finished series, for stderr.
pub fn progress_line(s: &Series) -> String {
    format!(
        "    {:<14} {:<4} n={} insert {} collapse {}{}",
        s.method.name(),
        s.cache.name(),
        s.insert.len(),
        opt_secs(s.median(Op::Insert)),
        opt_secs(s.median(Op::Collapse)),
        s.note
            .as_ref()
            .map_or_else(String::new, |n| format!(" ({n})"))
    )
}

/// The first lines of every bench's report: `TITLE, DATE`, the machine (its
/// memory size followed by `mem_suffix`) and the command line.
pub fn print_intro(title: &str, m: &Machine, mem_suffix: &str) {
    println!("{title}, {}", m.date);
    println!(
        "machine: {} CPUs, {}, {}{mem_suffix}, {}",
        m.nproc,
        m.cpu,
        bytes(m.mem_bytes),
        m.kernel
    );
    println!("command: {}", m.command);
}

/// A bench's JSON: when, on what machine and with what command line it ran,
/// its resolved `config`, a result per filesystem, and how long it took.
pub fn bench_json(m: &Machine, config: Value, filesystems: Vec<Value>, secs: f64) -> Value {
    json!({
        "date": m.date,
        "machine": {"nproc": m.nproc, "cpu": m.cpu, "kernel": m.kernel, "mem_bytes": m.mem_bytes},
        "command": m.command,
        "config": config,
        "filesystems": filesystems,
        "seconds": secs,
    })
}

pub fn print_header(m: &Machine, cfg: &Config, cold: ColdMethod) {
    print_intro("budge bench", m, " RAM");
    println!(
        "operation: insert {0} at the middle of the file, then collapse the same {0} (restoring it); every call fsyncs",
        bytes(cfg.gap)
    );
    println!(
        "warm: the whole file read into the page cache first; cold: {}",
        cold.describe()
    );
    println!(
        "runs: {} insert+collapse pairs per metadata method (interleaved); copying methods and the naive rewrite: {} up to 256 MiB, {} at 1 GiB, 1 above",
        cfg.runs,
        cfg.runs,
        cfg.runs.min(3)
    );
}

const LEGEND: &str = "\
times: median over n runs, fsync included. vs naive: naive median / method median (speed-up).
vs bare: method median / bare fallocate median. dev W: bytes written to the block device during
the call (median); +sync: until after a syncfs that follows it (log/transaction commits the fsync
left); dev R: bytes read during the call. bare-nosync / native-nosync: the same calls without
fsync (budge's own overhead, free of fsync noise; their vs bare divides by bare-nosync).";

pub fn print_fs(r: &FsResult, cfg: &Config) {
    println!();
    println!(
        "== {} on {} (device {}, {}-byte blocks, {} free at start; bench took {:.0} s) ==",
        r.dir.display(),
        r.fs,
        r.device.as_deref().unwrap_or("n/a"),
        r.block,
        bytes(r.free),
        r.secs
    );
    if let Some(e) = &r.error {
        println!("error: {e}");
        return;
    }
    println!("{LEGEND}");
    println!(
        "{:>8} {:<5} {:<14} {:>2} {:>10} {:>10} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "size",
        "cache",
        "method",
        "n",
        "insert",
        "collapse",
        "ins",
        "col",
        "ins",
        "col",
        "dev W ins",
        "dev W col",
        "ins+sync",
        "dev R ins"
    );
    println!(
        "{:>8} {:<5} {:<14} {:>2} {:>10} {:>10} {:>15} {:>13}",
        "", "", "", "", "", "", "vs naive", "vs bare"
    );
    let mut notes: Vec<(String, Vec<String>)> = Vec::new();
    for s in &r.sizes {
        if let Some(why) = &s.skipped {
            println!("{:>8} skipped: {why}", bytes(s.size));
            continue;
        }
        for &cache in &cfg.caches {
            let mut rows: Vec<&Series> = s.series.iter().filter(|x| x.cache == cache).collect();
            rows.sort_by_key(|x| x.method.rank());
            for x in rows {
                if let Some(n) = &x.note {
                    let why = format!("{}: {n}", x.method.name());
                    let at = format!("{} {}", bytes(s.size), cache.name());
                    match notes.iter_mut().find(|(w, _)| *w == why) {
                        Some((_, ats)) => ats.push(at),
                        None => notes.push((why, vec![at])),
                    }
                }
                if x.insert.is_empty() {
                    continue;
                }
                let speed = |op| {
                    let naive = if x.method.syncs() {
                        s.median(Method::Naive, cache, op)
                    } else {
                        None
                    };
                    ratio(naive, x.median(op)).map_or_else(|| "-".into(), speed_up)
                };
                let vs_bare = |op| {
                    ratio(x.median(op), s.median(x.method.bare(), cache, op))
                        .map_or_else(|| "-".into(), |v| format!("{v:.2}x"))
                };
                println!(
                    "{:>8} {:<5} {:<14} {:>2} {:>10} {:>10} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
                    bytes(s.size),
                    cache.name(),
                    x.method.name(),
                    x.insert.len(),
                    opt_secs(x.median(Op::Insert)),
                    opt_secs(x.median(Op::Collapse)),
                    speed(Op::Insert),
                    speed(Op::Collapse),
                    vs_bare(Op::Insert),
                    vs_bare(Op::Collapse),
                    opt_bytes(x.median_bytes(Op::Insert, |s| s.dev_write)),
                    opt_bytes(x.median_bytes(Op::Collapse, |s| s.dev_write)),
                    opt_bytes(x.median_bytes(Op::Insert, |s| s.dev_write_synced)),
                    opt_bytes(x.median_bytes(Op::Insert, |s| s.dev_read)),
                );
            }
        }
    }
    for (why, ats) in notes {
        println!("  note: {why} ({})", ats.join(", "));
    }
    if let Some(n) = &r.sweep_note {
        println!("extent sweep: {n}");
    }
    if !r.sweep.is_empty() {
        println!();
        println!(
            "extent sweep on {}: insert/collapse {} at the middle of a file with holes punched (extents before -> after)",
            r.fs,
            bytes(cfg.gap)
        );
        println!(
            "{:>7} {:>13} {:>8} {:<5} {:<14} {:>2} {:>10} {:>10} {:>7} {:>9} {:>9}",
            "target",
            "extents",
            "size",
            "cache",
            "method",
            "n",
            "insert",
            "collapse",
            "ins",
            "dev W ins",
            "dev R ins"
        );
        println!(
            "{:>7} {:>13} {:>8} {:<5} {:<14} {:>2} {:>10} {:>10} {:>7}",
            "", "", "", "", "", "", "", "", "vs bare"
        );
        for w in &r.sweep {
            if let Some(n) = &w.note {
                println!("{:>7} {n}", w.target);
            }
            let ext = format!(
                "{} -> {}",
                w.extents.map_or("?".into(), |e| e.to_string()),
                w.extents_after.map_or("?".into(), |e| e.to_string())
            );
            for &cache in &cfg.caches {
                let bare = |m: Method| {
                    w.series
                        .iter()
                        .find(|x| x.method == m.bare() && x.cache == cache)
                        .and_then(|x| x.median(Op::Insert))
                };
                let mut rows: Vec<&Series> = w.series.iter().filter(|x| x.cache == cache).collect();
                rows.sort_by_key(|x| x.method.rank());
                for x in rows.into_iter().filter(|x| !x.insert.is_empty()) {
                    println!(
                        "{:>7} {:>13} {:>8} {:<5} {:<14} {:>2} {:>10} {:>10} {:>7} {:>9} {:>9}",
                        w.target,
                        ext,
                        bytes(w.size),
                        cache.name(),
                        x.method.name(),
                        x.insert.len(),
                        opt_secs(x.median(Op::Insert)),
                        opt_secs(x.median(Op::Collapse)),
                        ratio(x.median(Op::Insert), bare(x.method))
                            .map_or_else(|| "-".into(), |v| format!("{v:.2}x")),
                        opt_bytes(x.median_bytes(Op::Insert, |s| s.dev_write)),
                        opt_bytes(x.median_bytes(Op::Insert, |s| s.dev_read)),
                    );
                }
            }
        }
        let skipped: Vec<String> = r
            .sweep
            .first()
            .map(|w| {
                w.series
                    .iter()
                    .filter(|x| x.insert.is_empty() && x.cache == cfg.caches[0])
                    .map(|x| {
                        format!(
                            "{}: {}",
                            x.method.name(),
                            x.note.as_deref().unwrap_or("did not run")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        for s in skipped {
            println!("  note: {s}");
        }
    }
}

/// Whether a target holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    Fails,
    /// Not measured, or the run does not meet the target's conditions.
    NotApplicable,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Holds => "HOLDS",
            Verdict::Fails => "FAILS",
            Verdict::NotApplicable => "N/A",
        }
    }

    /// Holds if `ok`, else fails.
    pub fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Holds
        } else {
            Verdict::Fails
        }
    }

    /// [`Verdict::of`] `ok` where the target `applies`, else not applicable.
    pub fn if_applies(applies: bool, ok: bool) -> Verdict {
        if applies {
            Verdict::of(ok)
        } else {
            Verdict::NotApplicable
        }
    }
}

/// One checked target.
pub struct Target {
    pub verdict: Verdict,
    pub fs: String,
    pub what: String,
    pub detail: String,
}

/// The `== targets ==` table: one line per target.
pub fn print_targets(t: &[Target]) {
    println!();
    println!("== targets ==");
    for x in t {
        println!(
            "[{:<5}] {}: {}: {}",
            x.verdict.name(),
            x.fs,
            x.what,
            x.detail
        );
    }
}

/// The targets in a bench's JSON.
pub fn targets_json(targets: &[Target]) -> Value {
    targets
        .iter()
        .map(|t| json!({"verdict": t.verdict.name(), "filesystem": t.fs, "target": t.what, "detail": t.detail}))
        .collect()
}

const NATIVE: Method = Method::Shift(Strategy::Native);
const REFLINK: Method = Method::Shift(Strategy::Reflink);

/// Checks the targets against what was measured.
pub fn targets(results: &[FsResult], cfg: &Config) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push = |verdict, fs: &str, what: &str, detail: String| {
        out.push(Target {
            verdict,
            fs: fs.to_string(),
            what: what.to_string(),
            detail,
        });
    };
    for r in results.iter().filter(|r| r.error.is_none()) {
        let fs = r.fs.as_str();
        let has = |m: Method| {
            r.sizes.iter().any(|s| {
                s.series
                    .iter()
                    .any(|x| x.method == m && !x.insert.is_empty())
            })
        };
        let g1 = r.size(GIB);
        for &cache in &cfg.caches {
            let c = cache.name();
            // 1. Native within 1.2x of the bare call at 1 GiB (and, when
            //    measured, the calls without fsync).
            for (m, bare, label) in [
                (
                    NATIVE,
                    Method::Bare,
                    "native insert/collapse within 1.2x of bare fallocate",
                ),
                (
                    Method::NativeNoSync,
                    Method::BareNoSync,
                    "native call without fsync within 1.2x of the bare call",
                ),
            ] {
                if !has(m) {
                    continue;
                }
                let what = format!("{label} at 1 GiB ({c})");
                let Some(s) = g1 else {
                    push(
                        Verdict::NotApplicable,
                        fs,
                        &what,
                        "1 GiB not measured".into(),
                    );
                    continue;
                };
                let (Some(a), Some(b)) = (s.get(m, cache), s.get(bare, cache)) else {
                    push(
                        Verdict::NotApplicable,
                        fs,
                        &what,
                        "not both measured at 1 GiB".into(),
                    );
                    continue;
                };
                let mut ok = true;
                let mut detail = Vec::new();
                for op in [Op::Insert, Op::Collapse] {
                    let min = |x: &Series| x.samples(op).iter().map(|s| s.secs).reduce(f64::min);
                    let (Some(r), Some(rmin)) =
                        (ratio(a.median(op), b.median(op)), ratio(min(a), min(b)))
                    else {
                        ok = false;
                        continue;
                    };
                    ok &= r <= 1.2;
                    detail.push(format!(
                        "{} median {r:.2}x ({} vs {}), min {rmin:.2}x ({} vs {})",
                        op.name(),
                        opt_secs(a.median(op)),
                        opt_secs(b.median(op)),
                        opt_secs(min(a)),
                        opt_secs(min(b))
                    ));
                }
                push(Verdict::of(ok), fs, &what, detail.join("; "));
            }
            // 2. Native (and on btrfs reflink) this much faster than naive at
            //    1 GiB, the ratio growing with the file size.
            for (m, min) in [(NATIVE, 100.0), (REFLINK, 8.0)] {
                if !has(m) || (m == REFLINK && fs != "btrfs") {
                    continue;
                }
                let what = format!(
                    "{} >= {min:.0}x faster than the naive rewrite at 1 GiB ({c})",
                    m.name()
                );
                let sp = |s: &SizeResult, op| {
                    ratio(s.median(Method::Naive, cache, op), s.median(m, cache, op))
                };
                match g1.map(|s| (sp(s, Op::Insert), sp(s, Op::Collapse))) {
                    Some((Some(i), Some(k))) => push(
                        Verdict::of(i >= min && k >= min),
                        fs,
                        &what,
                        format!("insert {}, collapse {}", speed_up(i), speed_up(k)),
                    ),
                    _ => push(
                        Verdict::NotApplicable,
                        fs,
                        &what,
                        "not both measured at 1 GiB".into(),
                    ),
                }
                let what = format!(
                    "{}'s speed-up over naive grows with the file size ({c})",
                    m.name()
                );
                let mut grows = true;
                let mut detail = Vec::new();
                let mut n = 0;
                for op in [Op::Insert, Op::Collapse] {
                    let pts: Vec<(u64, f64)> = r
                        .sizes
                        .iter()
                        .filter_map(|s| sp(s, op).map(|x| (s.size, x)))
                        .collect();
                    n = n.max(pts.len());
                    grows &= pts.windows(2).all(|w| w[1].1 >= w[0].1);
                    let txt: Vec<String> = pts
                        .iter()
                        .map(|(sz, x)| format!("{} {}", bytes(*sz), speed_up(*x)))
                        .collect();
                    detail.push(format!("{}: {}", op.name(), txt.join(" -> ")));
                }
                push(
                    Verdict::if_applies(n >= 2, grows),
                    fs,
                    &what,
                    detail.join("; "),
                );
            }
        }
        // 3. Device writes per metadata-only insert.
        if r.device.is_some() {
            for m in [NATIVE, REFLINK] {
                if !has(m) {
                    continue;
                }
                let mut worst_fsync: f64 = 0.0;
                let mut worst_sync: f64 = 0.0;
                for s in r.sizes.iter() {
                    for x in s.series.iter().filter(|x| x.method == m) {
                        worst_fsync = worst_fsync
                            .max(x.median_bytes(Op::Insert, |s| s.dev_write).unwrap_or(0.0));
                        worst_sync = worst_sync.max(
                            x.median_bytes(Op::Insert, |s| s.dev_write_synced)
                                .unwrap_or(0.0),
                        );
                    }
                }
                push(
                    Verdict::of(worst_fsync < MIB as f64),
                    fs,
                    &format!("{} insert writes < 1 MiB to the device", m.name()),
                    format!(
                        "largest median over sizes and cache states: {} during the call, {} including a following syncfs",
                        bytes(worst_fsync as u64),
                        bytes(worst_sync as u64)
                    ),
                );
            }
        }
        // 4. Metadata strategies flat in file size when cold.
        if cfg.caches.contains(&Cache::Cold) {
            for m in [
                Method::Bare,
                NATIVE,
                REFLINK,
                Method::BareNoSync,
                Method::NativeNoSync,
            ] {
                if !has(m) {
                    continue;
                }
                let small = r.size(256 * MIB);
                let big = r.size(4 * GIB).or_else(|| {
                    r.sizes
                        .iter()
                        .rev()
                        .find(|s| s.skipped.is_none() && s.size > 256 * MIB)
                });
                let what = format!("{} cold: 4 GiB within 2x of 256 MiB", m.name());
                let (Some(small), Some(big)) = (small, big) else {
                    push(
                        Verdict::NotApplicable,
                        fs,
                        &what,
                        "256 MiB or larger sizes not measured".into(),
                    );
                    continue;
                };
                let ri = ratio(
                    big.median(m, Cache::Cold, Op::Insert),
                    small.median(m, Cache::Cold, Op::Insert),
                );
                let rc = ratio(
                    big.median(m, Cache::Cold, Op::Collapse),
                    small.median(m, Cache::Cold, Op::Collapse),
                );
                let min_ratio = |op| {
                    let min = |s: &SizeResult| {
                        s.get(m, Cache::Cold)
                            .and_then(|x| x.samples(op).iter().map(|s| s.secs).reduce(f64::min))
                    };
                    ratio(min(big), min(small)).map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
                };
                let (Some(i), Some(k)) = (ri, rc) else {
                    push(
                        Verdict::NotApplicable,
                        fs,
                        &what,
                        "did not run at both sizes".into(),
                    );
                    continue;
                };
                let partial = big.size != 4 * GIB;
                push(
                    Verdict::if_applies(!partial, i <= 2.0 && k <= 2.0),
                    fs,
                    &what,
                    format!(
                        "{}{} / 256 MiB: insert median {i:.2}x ({} vs {}), min {}; collapse median {k:.2}x ({} vs {}), min {}",
                        if partial { "4 GiB not measured; " } else { "" },
                        bytes(big.size),
                        opt_secs(big.median(m, Cache::Cold, Op::Insert)),
                        opt_secs(small.median(m, Cache::Cold, Op::Insert)),
                        min_ratio(Op::Insert),
                        opt_secs(big.median(m, Cache::Cold, Op::Collapse)),
                        opt_secs(small.median(m, Cache::Cold, Op::Collapse)),
                        min_ratio(Op::Collapse),
                    ),
                );
            }
        }
    }
    out
}

fn sample_json(s: &Sample) -> Value {
    json!({"seconds": s.secs, "dev_write_bytes": s.dev_write, "dev_write_bytes_with_syncfs": s.dev_write_synced, "dev_read_bytes": s.dev_read})
}

fn series_json(x: &Series) -> Value {
    let op = |op: Op| {
        json!({
            "median_seconds": x.median(op),
            "min_seconds": x.samples(op).iter().map(|s| s.secs).reduce(f64::min),
            "max_seconds": x.samples(op).iter().map(|s| s.secs).reduce(f64::max),
            "median_dev_write_bytes": x.median_bytes(op, |s| s.dev_write),
            "median_dev_write_bytes_with_syncfs": x.median_bytes(op, |s| s.dev_write_synced),
            "median_dev_read_bytes": x.median_bytes(op, |s| s.dev_read),
            "samples": x.samples(op).iter().map(sample_json).collect::<Vec<_>>(),
        })
    };
    json!({
        "method": x.method.name(),
        "cache": x.cache.name(),
        "runs": x.insert.len(),
        "note": x.note,
        "extents_before": x.extents_before,
        "insert": op(Op::Insert),
        "collapse": op(Op::Collapse),
    })
}

pub fn json(
    m: &Machine,
    cfg: &Config,
    cold: ColdMethod,
    results: &[FsResult],
    targets: &[Target],
    secs: f64,
) -> Value {
    let fs: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "dir": r.dir,
                "filesystem": r.fs,
                "block_size": r.block,
                "device": r.device,
                "free_bytes_at_start": r.free,
                "error": r.error,
                "seconds": r.secs,
                "sizes": r.sizes.iter().map(|s| json!({
                    "size": s.size,
                    "offset": s.offset,
                    "skipped": s.skipped,
                    "extents": s.extents,
                    "write_seconds": s.create_secs,
                    "series": s.series.iter().map(series_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "extent_sweep_note": r.sweep_note,
                "extent_sweep": r.sweep.iter().map(|w| json!({
                    "target_extents": w.target,
                    "extents": w.extents,
                    "extents_after": w.extents_after,
                    "size": w.size,
                    "offset": w.offset,
                    "hole_period": w.period,
                    "note": w.note,
                    "series": w.series.iter().map(series_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let config = json!({
        "gap": cfg.gap, "sizes": cfg.sizes, "runs": cfg.runs,
        "cache": cfg.caches.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "cold_method": cold.describe(),
        "extent_counts": if cfg.extents { Some(&cfg.extent_counts) } else { None },
        "extent_file_size": cfg.extent_file_size,
    });
    let mut v = bench_json(m, config, fs, secs);
    v["targets"] = targets_json(targets);
    v
}
