//! `budge defrag-bench`: budge's relocation (defragmentation) side by side
//! with the filesystem's own defragmenter on the same fragmented file, per
//! filesystem, in the same run (issue 6).
//!
//! Per filesystem (XFS, btrfs, ext4; tmpfs has no extents and is skipped),
//! for each run, each contender in turn (the order rotated by one every run):
//!
//! 1. **The file**, made afresh for every contender and every run, the same
//!    way each time: `size - inserts × piece` bytes of seeded pattern
//!    ([`crate::pattern`]) written and fsynced, then `inserts` calls of
//!    `budge::insert` of `piece` bytes at seeded random block-aligned offsets
//!    (default policy: INSERT_RANGE on XFS and ext4, the reflink shift on
//!    btrfs), each inserted range then written with the next `piece` bytes of
//!    the same pattern stream; then fsync and syncfs. That is the
//!    fragmentation budge's own users get, and the content is a known
//!    function of the seed (a list of runs of one pattern stream). Extents
//!    before: the FIEMAP count, and the pieces (neighbours that continue each
//!    other on disk merged).
//! 2. **Warm and verified**: the whole file is read back, compared with that
//!    function and hashed, so every contender starts with the whole file in
//!    the page cache; then an untimed syncfs.
//! 3. **Timed**: the contender's call, then `syncfs` of the filesystem (so
//!    each pays for making its result durable); device bytes read and written
//!    from `/sys/block/<dev>/stat` over the same span.
//!    - `budge`: `budge::relocate` with the default options (threshold
//!      1 MiB, chunk 16 MiB); `budge-t64M`: threshold 64 MiB, same chunk;
//!      on XFS `budge-keep-times`: the defaults with `keep_times` (no `cow`
//!      strategy, which updates the file's times).
//!    - the system tool, as a process (start to exit): `e4defrag FILE`
//!      (ext4), `xfs_fsr -v FILE` (XFS), `btrfs filesystem defragment -f FILE`
//!      and the same with `-t 64M` (btrfs). Its exit status and output are
//!      kept; a failing tool is reported, not fatal.
//! 4. **After**: extents and pieces again, and the content read back: it must
//!    hash as before (a mismatch stops the bench with an error). Then the
//!    file is deleted and the filesystem synced, so only one bench file exists
//!    at a time and every contender finds the same free space.
//!
//! Reported per contender: medians over the runs of the time, the extents and
//! pieces after, device bytes written and read; then, for every budge
//! contender against every tool, the ratios of the medians (time, extents)
//! and issue 6's target: as few extents as the system tool, in no more time.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use budge::{FsKind, RelocateOptions, RelocateReport, ShiftOptions};
use clap::Args;
use serde_json::{json, Value};

use super::measure::median;
use super::report::{bench_json, bytes, opt_bytes, opt_secs, print_intro, ratio, secs, times};
use super::sysinfo::{Device, Machine};
use super::JsonArgs;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The unit in which the file is read back, compared and hashed.
const CHUNK: u64 = MIB;
/// Mixed into `--seed` for the content, so offsets and bytes differ.
const CONTENT_SEED: u64 = 0x6465_6672_6167_2121;

/// Arguments of `budge defrag-bench`.
#[derive(Args)]
pub struct DefragBenchArgs {
    /// Directories, each on a filesystem to measure, as DIR or LABEL:DIR
    /// [default: the entries of $BUDGE_TEST_FS, else .]
    pub dirs: Vec<String>,
    /// Small file, one run: a smoke test of the harness.
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub output: JsonArgs,
    /// Size of the fragmented file (rounded down to whole blocks)
    /// [default: 1G; --quick: 64M]
    #[arg(long, value_parser = crate::parse_size)]
    pub size: Option<u64>,
    /// Inserts that fragment it [default: 1000; --quick: 100]
    #[arg(long)]
    pub inserts: Option<usize>,
    /// Bytes per insert (a multiple of the block size).
    #[arg(long, default_value = "64K", value_parser = crate::parse_size)]
    pub piece: u64,
    /// Runs; each runs every contender once, in an order rotated by one per
    /// run [default: 3; --quick: 1]
    #[arg(long)]
    pub runs: Option<usize>,
    /// Seed of the insert offsets and of the content.
    #[arg(long, default_value_t = 6)]
    pub seed: u64,
    /// Only these contenders, comma-separated: budge, budge-t64M,
    /// budge-keep-times, e4defrag, xfs_fsr, btrfs-defrag, btrfs-defrag-t64M
    /// [default: all that apply]
    #[arg(long, value_delimiter = ',')]
    pub contenders: Option<Vec<String>>,
}

/// A directory to measure, with the label it was given.
struct Target {
    label: Option<String>,
    dir: PathBuf,
}

/// The arguments with defaults resolved.
struct Config {
    targets: Vec<Target>,
    size: u64,
    inserts: usize,
    piece: u64,
    runs: usize,
    seed: u64,
    only: Option<Vec<String>>,
    quick: bool,
    output: JsonArgs,
}

/// `LABEL:DIR` (a label has no `/`) or `DIR`.
fn target(s: &str) -> Target {
    match s.split_once(':') {
        Some((l, d)) if !l.is_empty() && !l.contains('/') && !d.is_empty() => Target {
            label: Some(l.to_string()),
            dir: PathBuf::from(d),
        },
        _ => Target {
            label: None,
            dir: PathBuf::from(s),
        },
    }
}

impl Config {
    fn from(a: &DefragBenchArgs) -> Config {
        let q = a.quick;
        let targets = if a.dirs.is_empty() {
            let env = std::env::var("BUDGE_TEST_FS").unwrap_or_default();
            let t: Vec<Target> = env
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| target(s.trim()))
                .collect();
            if t.is_empty() {
                vec![target(".")]
            } else {
                t
            }
        } else {
            a.dirs.iter().map(|s| target(s)).collect()
        };
        Config {
            targets,
            size: a.size.unwrap_or(if q { 64 * MIB } else { GIB }),
            inserts: a.inserts.unwrap_or(if q { 100 } else { 1000 }),
            piece: a.piece,
            runs: a.runs.unwrap_or(if q { 1 } else { 3 }).max(1),
            seed: a.seed,
            only: a.contenders.clone(),
            quick: q,
            output: a.output.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// The contenders.

/// How a contender defragments the file.
#[derive(Clone)]
enum How {
    /// `budge::relocate` with this threshold and the default chunk;
    /// `keep_times`: [`RelocateOptions::keep_times`].
    Budge { threshold: u64, keep_times: bool },
    /// A system tool: the program and its arguments before the file.
    Tool {
        program: &'static str,
        args: &'static [&'static str],
    },
}

#[derive(Clone)]
struct Contender {
    name: &'static str,
    how: How,
}

impl Contender {
    fn is_tool(&self) -> bool {
        matches!(self.how, How::Tool { .. })
    }

    /// What runs, for the header and the JSON.
    fn describe(&self) -> String {
        match &self.how {
            How::Budge {
                threshold,
                keep_times,
            } => format!(
                "budge::relocate(threshold {}, chunk {}{})",
                bytes(*threshold),
                bytes(budge::relocate::DEFAULT_CHUNK),
                if *keep_times { ", keep_times" } else { "" }
            ),
            How::Tool { program, args } => {
                let mut v = vec![*program];
                v.extend_from_slice(args);
                v.push("FILE");
                v.join(" ")
            }
        }
    }
}

const ALL_NAMES: [&str; 7] = [
    "budge",
    "budge-t64M",
    "budge-keep-times",
    "e4defrag",
    "xfs_fsr",
    "btrfs-defrag",
    "btrfs-defrag-t64M",
];

/// The contenders on a filesystem of `kind`: budge's (two, three on XFS), then its tools.
fn contenders(kind: &FsKind) -> Vec<Contender> {
    let mut v = vec![
        Contender {
            name: "budge",
            how: How::Budge {
                threshold: budge::relocate::DEFAULT_THRESHOLD,
                keep_times: false,
            },
        },
        Contender {
            name: "budge-t64M",
            how: How::Budge {
                threshold: 64 * MIB,
                keep_times: false,
            },
        },
    ];
    match kind {
        FsKind::Ext4 => v.push(Contender {
            name: "e4defrag",
            how: How::Tool {
                program: "e4defrag",
                args: &[],
            },
        }),
        FsKind::Xfs => v.extend([
            Contender {
                name: "budge-keep-times",
                how: How::Budge {
                    threshold: budge::relocate::DEFAULT_THRESHOLD,
                    keep_times: true,
                },
            },
            Contender {
                name: "xfs_fsr",
                how: How::Tool {
                    program: "xfs_fsr",
                    args: &["-v"],
                },
            },
        ]),
        FsKind::Btrfs => {
            v.push(Contender {
                name: "btrfs-defrag",
                how: How::Tool {
                    program: "btrfs",
                    args: &["filesystem", "defragment", "-f"],
                },
            });
            v.push(Contender {
                name: "btrfs-defrag-t64M",
                how: How::Tool {
                    program: "btrfs",
                    args: &["filesystem", "defragment", "-f", "-t", "64M"],
                },
            });
        }
        _ => {}
    }
    v
}

// ---------------------------------------------------------------------------
// The fragmented file and its content.

/// splitmix64: a small seeded generator, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (n > 0; the modulo bias is negligible here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How the file is made, and what it must hold: runs of one pattern stream.
/// The stream's first `base` bytes are written first; insert `i` then gets
/// stream bytes `[base + i × piece, base + (i+1) × piece)`.
struct Model {
    size: u64,
    base: u64,
    piece: u64,
    seed: u64,
    /// Insert offsets, in the order they are made.
    offsets: Vec<u64>,
    /// `(file offset, len, stream offset)` in file order, covering the file.
    runs: Vec<(u64, u64, u64)>,
}

impl Model {
    fn new(size: u64, inserts: usize, piece: u64, block: u64, seed: u64) -> Result<Model, String> {
        if piece == 0 || piece % block != 0 {
            return Err(format!(
                "--piece {} is not a non-zero multiple of the block size ({block})",
                bytes(piece)
            ));
        }
        let size = budge::range::align_down(size, block);
        let inserted = (inserts as u64)
            .checked_mul(piece)
            .filter(|&n| n < size)
            .ok_or_else(|| {
                format!(
                    "{inserts} inserts of {} do not fit in a {} file",
                    bytes(piece),
                    bytes(size)
                )
            })?;
        let base = size - inserted;
        let mut rng = Rng(seed);
        // (len, stream offset) in file order.
        let mut segs: Vec<(u64, u64)> = vec![(base, 0)];
        let mut offsets = Vec::with_capacity(inserts);
        let mut cur = base;
        for i in 0..inserts as u64 {
            let off = rng.below(cur / block) * block;
            offsets.push(off);
            let (mut at, mut k) = (0, 0);
            while at + segs[k].0 <= off {
                at += segs[k].0;
                k += 1;
            }
            let (len, src) = segs[k];
            let new = (piece, base + i * piece);
            if off == at {
                segs.insert(k, new);
            } else {
                let head = off - at;
                segs[k] = (head, src);
                segs.insert(k + 1, new);
                segs.insert(k + 2, (len - head, src + head));
            }
            cur += piece;
        }
        let mut runs = Vec::with_capacity(segs.len());
        let mut at = 0;
        for (len, src) in segs {
            runs.push((at, len, src));
            at += len;
        }
        debug_assert_eq!(at, size);
        Ok(Model {
            size,
            base,
            piece,
            seed: seed ^ CONTENT_SEED,
            offsets,
            runs,
        })
    }

    /// The bytes the file must hold at `[at, at + buf.len())`.
    fn fill(&self, buf: &mut [u8], at: u64) {
        let end = at + buf.len() as u64;
        let mut k = self.runs.partition_point(|r| r.0 + r.1 <= at);
        while k < self.runs.len() && self.runs[k].0 < end {
            let (off, len, src) = self.runs[k];
            let lo = off.max(at);
            let hi = (off + len).min(end);
            let b = &mut buf[(lo - at) as usize..(hi - at) as usize];
            crate::pattern::fill(b, src + (lo - off), self.seed);
            k += 1;
        }
    }
}

/// The bench file: removed when dropped, whatever happened.
struct Scratch {
    path: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn syncfs(dir: &File, what: &str) -> Result<(), String> {
    rustix::fs::syncfs(dir).map_err(|e| format!("syncfs ({what}): {e}"))
}

fn open_rw(path: &Path, step: &str) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{step}: open {}: {e}", path.display()))
}

/// How the file was made.
#[derive(Clone, Default)]
struct Built {
    secs: f64,
    /// The strategies `budge::insert` used, and how often.
    strategies: BTreeMap<&'static str, u64>,
    bytes_copied: u64,
}

/// Makes the fragmented file at `path` (see the module docs), durable.
fn build(path: &Path, m: &Model, dir: &File) -> Result<(File, Built), String> {
    let t = Instant::now();
    let p = path.display();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("make the file: create {p}: {e}"))?;
    crate::pattern::write_file(&f, m.base, m.seed)
        .map_err(|e| format!("make the file: write {} to {p}: {e}", bytes(m.base)))?;
    let mut built = Built::default();
    let mut buf = vec![0u8; m.piece as usize];
    let opts = ShiftOptions::default();
    for (i, &off) in m.offsets.iter().enumerate() {
        let r = budge::insert(&f, off, m.piece, &opts).map_err(|e| {
            format!(
                "make the file: insert {} of {} at {off} in {p}: {e}",
                i + 1,
                m.offsets.len()
            )
        })?;
        *built.strategies.entry(r.strategy.name()).or_default() += 1;
        built.bytes_copied += r.bytes_copied;
        crate::pattern::fill(&mut buf, m.base + i as u64 * m.piece, m.seed);
        f.write_all_at(&buf, off)
            .map_err(|e| format!("make the file: write the piece at {off} in {p}: {e}"))?;
    }
    f.sync_all()
        .map_err(|e| format!("make the file: fsync {p}: {e}"))?;
    syncfs(dir, "after making the file")?;
    built.secs = t.elapsed().as_secs_f64();
    Ok((f, built))
}

/// Reads the whole file, compares it with the model and hashes it.
fn check(f: &File, m: &Model, path: &Path, step: &str) -> Result<u64, String> {
    let p = path.display();
    let size = f
        .metadata()
        .map_err(|e| format!("{step}: fstat {p}: {e}"))?
        .len();
    if size != m.size {
        return Err(format!("{step}: {p} is {size} bytes, expected {}", m.size));
    }
    let mut got = vec![0u8; CHUNK as usize];
    let mut want = vec![0u8; CHUNK as usize];
    let mut h = DefaultHasher::new();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(CHUNK) as usize;
        f.read_exact_at(&mut got[..n], at)
            .map_err(|e| format!("{step}: read {p} at {at}: {e}"))?;
        m.fill(&mut want[..n], at);
        if let Some(i) = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
            return Err(format!(
                "{step}: {p}: wrong byte at offset {}",
                at + i as u64
            ));
        }
        h.write(&got[..n]);
        at += n as u64;
    }
    Ok(h.finish())
}

/// Extents and pieces: neighbours that continue each other on disk count
/// once (what `budge::relocate` plans with).
#[derive(Clone, Copy, Default)]
struct Layout {
    extents: u64,
    pieces: u64,
}

fn layout(f: &File, path: &Path, step: &str) -> Result<Layout, String> {
    let ext = budge::extents::extents(f)
        .map_err(|e| format!("{step}: FIEMAP of {}: {e}", path.display()))?;
    Ok(Layout {
        extents: ext.len() as u64,
        pieces: budge::extents::pieces(&ext),
    })
}

// ---------------------------------------------------------------------------
// One measurement.

/// A tool's run.
#[derive(Clone)]
struct ToolRun {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl ToolRun {
    /// The last line it printed, whitespace collapsed.
    fn last_line(&self) -> String {
        let all = format!("{}\n{}", self.stdout, self.stderr);
        all.lines()
            .rev()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| !l.is_empty())
            .unwrap_or_default()
    }
}

#[derive(Clone)]
enum Outcome {
    Budge(Result<RelocateReport, String>),
    Tool(ToolRun),
}

impl Outcome {
    fn failed(&self) -> bool {
        match self {
            Outcome::Budge(r) => r.is_err(),
            Outcome::Tool(t) => !t.ok,
        }
    }

    /// One line: what the contender did.
    fn summary(&self) -> String {
        match self {
            Outcome::Budge(Err(e)) => format!("ERROR: {e}"),
            Outcome::Budge(Ok(r)) => {
                let mut s = format!(
                    "{}: {} of {} fragmented chunks moved, {} moved",
                    r.strategy,
                    r.chunks_moved,
                    r.chunks,
                    bytes(r.bytes_moved)
                );
                let skipped = skip_counts(r);
                if !skipped.is_empty() {
                    let v: Vec<String> = skipped.iter().map(|(w, n)| format!("{n} {w}")).collect();
                    s += &format!("; skipped: {}", v.join(", "));
                }
                s
            }
            Outcome::Tool(t) => {
                let line = t.last_line();
                let line: String = line.chars().take(70).collect();
                if line.is_empty() {
                    t.status.clone()
                } else {
                    format!("{}: {line}", t.status)
                }
            }
        }
    }
}

/// Skipped chunks by reason.
fn skip_counts(r: &RelocateReport) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for c in &r.chunks_skipped {
        *m.entry(c.reason.to_string()).or_default() += 1;
    }
    m
}

#[derive(Clone)]
struct Sample {
    run: usize,
    /// Place in this run's order (0 = first).
    position: usize,
    built: Built,
    before: Layout,
    after: Layout,
    secs: f64,
    dev_read: Option<u64>,
    dev_write: Option<u64>,
    outcome: Outcome,
}

fn run_tool(program: &str, args: &[&str], path: &Path) -> ToolRun {
    match Command::new(program)
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => ToolRun {
            ok: o.status.success(),
            status: match o.status.code() {
                Some(c) => format!("exit {c}"),
                None => format!("{}", o.status),
            },
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Err(e) => ToolRun {
            ok: false,
            status: format!("could not run {program}: {e}"),
            stdout: String::new(),
            stderr: String::new(),
        },
    }
}

/// Makes the file, lets `c` defragment it (timed), checks it, deletes it.
fn measure(
    c: &Contender,
    m: &Model,
    path: &Path,
    dir: &File,
    dev: Option<&Device>,
    run: usize,
    position: usize,
) -> Result<Sample, String> {
    let scratch = Scratch {
        path: path.to_path_buf(),
    };
    let (f, built) = build(path, m, dir)?;
    let before = layout(&f, path, "before")?;
    let sum = check(&f, m, path, "before (warming the cache)")?;
    // The tool opens the file itself.
    let f = if c.is_tool() {
        drop(f);
        None
    } else {
        Some(f)
    };
    syncfs(dir, "before the timed step")?;
    let c0 = dev.and_then(Device::counters);
    let t = Instant::now();
    let outcome = match (&c.how, &f) {
        (
            How::Budge {
                threshold,
                keep_times,
            },
            Some(f),
        ) => {
            let opts = RelocateOptions {
                threshold: *threshold,
                keep_times: *keep_times,
                ..RelocateOptions::default()
            };
            Outcome::Budge(budge::relocate(f, &opts).map_err(|e| e.to_string()))
        }
        (How::Tool { program, args }, _) => Outcome::Tool(run_tool(program, args, path)),
        (How::Budge { .. }, None) => Outcome::Budge(Err("the file was not open".into())),
    };
    syncfs(dir, "after the timed step")?;
    let secs = t.elapsed().as_secs_f64();
    let c1 = dev.and_then(Device::counters);
    let (dev_read, dev_write) = match (c0, c1) {
        (Some(a), Some(b)) => {
            let (r, w) = b.since(a);
            (Some(r), Some(w))
        }
        _ => (None, None),
    };
    let f = match f {
        Some(f) => f,
        None => open_rw(path, &format!("after {}", c.name))?,
    };
    let step = format!("after {}", c.name);
    let after = layout(&f, path, &step)?;
    let sum_after = check(&f, m, path, &step)?;
    if sum_after != sum {
        return Err(format!(
            "{step}: {} hashes to {sum_after:016x}, {sum:016x} before",
            path.display()
        ));
    }
    drop(f);
    std::fs::remove_file(&scratch.path)
        .map_err(|e| format!("remove {}: {e}", scratch.path.display()))?;
    syncfs(dir, "after removing the file")?;
    Ok(Sample {
        run,
        position,
        built,
        before,
        after,
        secs,
        dev_read,
        dev_write,
        outcome,
    })
}

// ---------------------------------------------------------------------------
// Per filesystem.

struct Series {
    contender: Contender,
    samples: Vec<Sample>,
}

impl Series {
    /// The samples that did not fail.
    fn good(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| !s.outcome.failed())
    }

    fn med(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let v: Option<Vec<f64>> = self.good().map(f).collect();
        median(v?)
    }

    fn secs(&self) -> Option<f64> {
        self.med(|s| Some(s.secs))
    }
    fn extents_after(&self) -> Option<f64> {
        self.med(|s| Some(s.after.extents as f64))
    }
    fn pieces_after(&self) -> Option<f64> {
        self.med(|s| Some(s.after.pieces as f64))
    }
    fn dev_write(&self) -> Option<f64> {
        self.med(|s| s.dev_write.map(|b| b as f64))
    }
    fn dev_read(&self) -> Option<f64> {
        self.med(|s| s.dev_read.map(|b| b as f64))
    }
    fn failures(&self) -> usize {
        self.samples.len() - self.good().count()
    }
}

struct FsRun {
    label: String,
    dir: PathBuf,
    fs: String,
    device: Option<String>,
    block: u64,
    size: u64,
    base: u64,
    skipped: Option<String>,
    error: Option<String>,
    series: Vec<Series>,
    secs: f64,
}

impl FsRun {
    fn all(&self) -> impl Iterator<Item = &Sample> {
        self.series.iter().flat_map(|s| &s.samples)
    }

    fn med_all(&self, f: impl Fn(&Sample) -> f64) -> Option<f64> {
        median(self.all().map(f).collect())
    }
}

/// A budge contender against a tool: ratios of the medians.
struct Pairing<'a> {
    budge: &'a Series,
    tool: &'a Series,
    time: Option<f64>,
    extents: Option<f64>,
    pieces: Option<f64>,
    met: Option<bool>,
}

fn pairings(r: &FsRun) -> Vec<Pairing<'_>> {
    let mut out = Vec::new();
    for b in r.series.iter().filter(|s| !s.contender.is_tool()) {
        for t in r.series.iter().filter(|s| s.contender.is_tool()) {
            let met = match (b.secs(), t.secs(), b.extents_after(), t.extents_after()) {
                (Some(bs), Some(ts), Some(be), Some(te)) => Some(be <= te && bs <= ts),
                _ => None,
            };
            out.push(Pairing {
                budge: b,
                tool: t,
                time: ratio(b.secs(), t.secs()),
                extents: ratio(b.extents_after(), t.extents_after()),
                pieces: ratio(b.pieces_after(), t.pieces_after()),
                met,
            });
        }
    }
    out
}

fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// Free space kept for everyone else on the filesystem.
fn margin(total: u64) -> u64 {
    (total / 8).clamp(16 * MIB, GIB)
}

fn bench_fs(t: &Target, cfg: &Config, say: &dyn Fn(String)) -> Result<FsRun, String> {
    let start = Instant::now();
    let mut r = FsRun {
        label: t.label.clone().unwrap_or_default(),
        dir: t.dir.clone(),
        fs: String::new(),
        device: None,
        block: 0,
        size: 0,
        base: 0,
        skipped: None,
        error: None,
        series: Vec::new(),
        secs: 0.0,
    };
    let caps = match budge::probe(&t.dir) {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e.to_string());
            return Ok(r);
        }
    };
    r.fs = caps.fs.kind.name();
    if r.label.is_empty() {
        r.label = r.fs.clone();
    }
    r.block = caps.block_size();
    let dev = Device::of(&t.dir);
    r.device = dev.as_ref().map(|d| d.name.clone());
    if matches!(caps.fs.kind, FsKind::Tmpfs) {
        r.skipped = Some("no extents, skipped".into());
        return Ok(r);
    }
    let m = match Model::new(cfg.size, cfg.inserts, cfg.piece, r.block, cfg.seed) {
        Ok(m) => m,
        Err(e) => {
            r.error = Some(e);
            return Ok(r);
        }
    };
    r.size = m.size;
    r.base = m.base;
    // The file, and a second copy's worth for the tools that rewrite it
    // (xfs_fsr's temporary file, e4defrag's donor, btrfs copy-on-write).
    let need = 2 * m.size + margin(caps.fs.total_bytes);
    let free = free_bytes(&t.dir);
    if need > free {
        r.skipped = Some(format!(
            "needs {} free (the file twice + margin), {} free",
            bytes(need),
            bytes(free)
        ));
        return Ok(r);
    }
    let mut cs = contenders(&caps.fs.kind);
    if let Some(only) = &cfg.only {
        cs.retain(|c| only.iter().any(|o| o == c.name));
    }
    if cs.is_empty() {
        r.skipped = Some("no selected contender applies".into());
        return Ok(r);
    }
    let dir = File::open(&t.dir).map_err(|e| format!("open {}: {e}", t.dir.display()))?;
    let path = t
        .dir
        .join(format!(".budge-defrag-bench-{}.bin", std::process::id()));
    say(format!(
        "defrag-bench: {} ({} on {}): {} file, {} inserts of {}, {} run(s) of {}",
        t.dir.display(),
        r.fs,
        r.device.as_deref().unwrap_or("no block device"),
        bytes(m.size),
        m.offsets.len(),
        bytes(m.piece),
        cfg.runs,
        cs.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
    ));
    let mut series: Vec<Series> = cs
        .iter()
        .map(|c| Series {
            contender: c.clone(),
            samples: Vec::new(),
        })
        .collect();
    for run in 0..cfg.runs {
        let n = series.len();
        for position in 0..n {
            let k = (run + position) % n;
            let c = series[k].contender.clone();
            let s = measure(&c, &m, &path, &dir, dev.as_ref(), run, position).map_err(|e| {
                format!(
                    "{} ({}), run {}, {}: {e}",
                    t.dir.display(),
                    r.fs,
                    run + 1,
                    c.name
                )
            })?;
            say(format!(
                "  run {}/{} {:<18} {:>9}  extents {} -> {}, pieces {} -> {}  (made in {}) {}",
                run + 1,
                cfg.runs,
                c.name,
                secs(s.secs),
                s.before.extents,
                s.after.extents,
                s.before.pieces,
                s.after.pieces,
                secs(s.built.secs),
                s.outcome.summary()
            ));
            series[k].samples.push(s);
        }
    }
    r.series = series;
    r.secs = start.elapsed().as_secs_f64();
    Ok(r)
}

// ---------------------------------------------------------------------------
// Output.

/// The commit of the source tree this binary was built from, read from its
/// `.git` (no `git` process): `abcdef123456 (branch)`. Uncommitted changes
/// are not detected.
fn code_commit() -> Option<String> {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = loop {
        let g = dir.join(".git");
        if g.is_dir() {
            break g;
        }
        dir = dir.parent()?;
    };
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(r) = head.strip_prefix("ref: ") else {
        return Some(format!("{} (detached)", &head[..head.len().min(12)]));
    };
    let id = std::fs::read_to_string(git.join(r))
        .ok()
        .map(|s| s.trim().to_string())
        .or_else(|| {
            let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
            packed
                .lines()
                .find_map(|l| l.strip_suffix(r)?.strip_suffix(' ').map(str::to_string))
        })?;
    let branch = r.strip_prefix("refs/heads/").unwrap_or(r);
    Some(format!("{} ({branch})", &id[..id.len().min(12)]))
}

fn print_header(m: &Machine, cfg: &Config, commit: Option<&str>) {
    print_intro("budge defrag-bench", m, "");
    println!(
        "code: budge {}, commit {} (HEAD of the source tree when run; uncommitted changes not shown)",
        env!("CARGO_PKG_VERSION"),
        commit.unwrap_or("unknown")
    );
    println!(
        "file: {} of seeded pattern, fragmented by {} budge inserts of {} at random block-aligned offsets (seed {}), each written; made afresh for every contender and run, one file at a time (same free space)",
        bytes(cfg.size),
        cfg.inserts,
        bytes(cfg.piece),
        cfg.seed
    );
    println!(
        "method: {} run(s), contenders in an order rotated per run; before each, the whole file is read (page cache warm) and checked, then an untimed syncfs; timed: the call (a tool: process start to exit) + syncfs; device bytes over the same span; after: content hash must match{}",
        cfg.runs,
        if cfg.quick { " (--quick)" } else { "" }
    );
}

fn opt_count(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.0}"))
}

fn print_fs(r: &FsRun) {
    println!();
    println!(
        "== {}: {} ({}, {}, {}-byte blocks; took {:.0} s) ==",
        r.label,
        r.dir.display(),
        if r.fs.is_empty() { "?" } else { &r.fs },
        r.device.as_deref().unwrap_or("no block device"),
        r.block,
        r.secs
    );
    if let Some(e) = &r.error {
        println!("ERROR: {e}");
        return;
    }
    if let Some(s) = &r.skipped {
        println!("{s}");
        return;
    }
    let all: Vec<&Sample> = r.all().collect();
    // The insert strategies of each file made (normally the same for all).
    let mut strategies: Vec<String> = all
        .iter()
        .map(|s| {
            let v: Vec<String> = s
                .built
                .strategies
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            v.join(" + ")
        })
        .collect();
    strategies.sort();
    strategies.dedup();
    println!(
        "file: {} ({} written, then the inserts); made in {} (median; budge::insert per file: {}; {} copied in all {} files); before: {} extents, {} pieces (median)",
        bytes(r.size),
        bytes(r.base),
        opt_secs(r.med_all(|s| s.built.secs)),
        strategies.join(" / "),
        bytes(all.iter().map(|s| s.built.bytes_copied).sum()),
        all.len(),
        opt_count(r.med_all(|s| s.before.extents as f64)),
        opt_count(r.med_all(|s| s.before.pieces as f64)),
    );
    println!();
    println!(
        "  {:<18} {:>4} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>10}",
        "contender",
        "runs",
        "time med",
        "min",
        "max",
        "extents",
        "pieces",
        "dev W med",
        "dev R med"
    );
    for s in &r.series {
        let ts: Vec<f64> = s.good().map(|x| x.secs).collect();
        let min = ts.iter().copied().reduce(f64::min);
        let max = ts.iter().copied().reduce(f64::max);
        let fails = s.failures();
        println!(
            "  {:<18} {:>4} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>10}{}",
            s.contender.name,
            s.samples.len(),
            opt_secs(s.secs()),
            opt_secs(min),
            opt_secs(max),
            opt_count(s.extents_after()),
            opt_count(s.pieces_after()),
            opt_bytes(s.dev_write()),
            opt_bytes(s.dev_read()),
            if fails > 0 {
                format!("  FAILED {fails} of {}", s.samples.len())
            } else {
                String::new()
            }
        );
    }
    println!("  (extents, pieces: after, median; time: the call + syncfs)");
    println!();
    println!("  what each did (last run):");
    for s in &r.series {
        if let Some(x) = s.samples.last() {
            println!("  {:<18} {}", s.contender.name, x.outcome.summary());
        }
    }
    let p = pairings(r);
    if !p.is_empty() {
        println!();
        println!("  target (issue 6): as few extents as the system tool, in no more time");
        for x in &p {
            println!(
                "  {:<10} / {:<18} time {:>7}, extents {:>7}, pieces {:>7}: {}",
                x.budge.contender.name,
                x.tool.contender.name,
                times(x.time),
                times(x.extents),
                times(x.pieces),
                match x.met {
                    Some(true) => "met",
                    Some(false) => "missed",
                    None => "n/a",
                }
            );
        }
    }
}

fn layout_json(l: Layout) -> Value {
    json!({"extents": l.extents, "pieces": l.pieces})
}

fn sample_json(s: &Sample) -> Value {
    let outcome = match &s.outcome {
        Outcome::Budge(Err(e)) => json!({"error": e}),
        Outcome::Budge(Ok(r)) => json!({
            "strategy": r.strategy.name(),
            "coherent": r.coherent,
            "extents_before": r.extents_before,
            "extents_after": r.extents_after,
            "bytes_moved": r.bytes_moved,
            "chunks": r.chunks,
            "chunks_moved": r.chunks_moved,
            "chunks_skipped": r.chunks_skipped.len(),
            "skipped_by_reason": skip_counts(r),
            "notes": r.notes,
            "elapsed_seconds": r.elapsed.as_secs_f64(),
        }),
        Outcome::Tool(t) => json!({
            "ok": t.ok,
            "status": t.status,
            "stdout": t.stdout,
            "stderr": t.stderr,
        }),
    };
    json!({
        "run": s.run + 1,
        "position": s.position + 1,
        "seconds": s.secs,
        "dev_read_bytes": s.dev_read,
        "dev_write_bytes": s.dev_write,
        "before": layout_json(s.before),
        "after": layout_json(s.after),
        "failed": s.outcome.failed(),
        "made": {
            "seconds": s.built.secs,
            "insert_strategies": s.built.strategies,
            "bytes_copied": s.built.bytes_copied,
        },
        "outcome": outcome,
    })
}

fn json_out(m: &Machine, cfg: &Config, commit: Option<&str>, runs: &[FsRun], secs: f64) -> Value {
    let fs: Vec<Value> = runs
        .iter()
        .map(|r| {
            let series: Vec<Value> = r
                .series
                .iter()
                .map(|s| {
                    json!({
                        "name": s.contender.name,
                        "tool": s.contender.is_tool(),
                        "command": s.contender.describe(),
                        "failures": s.failures(),
                        "median": {
                            "seconds": s.secs(),
                            "extents_after": s.extents_after(),
                            "pieces_after": s.pieces_after(),
                            "dev_write_bytes": s.dev_write(),
                            "dev_read_bytes": s.dev_read(),
                        },
                        "samples": s.samples.iter().map(sample_json).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let pairs: Vec<Value> = pairings(r)
                .iter()
                .map(|p| {
                    json!({
                        "budge": p.budge.contender.name,
                        "tool": p.tool.contender.name,
                        "time_ratio": p.time,
                        "extents_ratio": p.extents,
                        "pieces_ratio": p.pieces,
                        "target_met": p.met,
                    })
                })
                .collect();
            json!({
                "label": r.label,
                "dir": r.dir,
                "filesystem": r.fs,
                "device": r.device,
                "block_size": r.block,
                "file_size": r.size,
                "written_before_inserts": r.base,
                "skipped": r.skipped,
                "error": r.error,
                "seconds": r.secs,
                "contenders": series,
                "budge_vs_tool": pairs,
            })
        })
        .collect();
    let config = json!({
        "size": cfg.size, "inserts": cfg.inserts, "piece": cfg.piece, "runs": cfg.runs,
        "seed": cfg.seed, "quick": cfg.quick, "contenders": cfg.only,
        "budge_chunk": budge::relocate::DEFAULT_CHUNK,
    });
    let mut v = bench_json(m, config, fs, secs);
    v["bench"] = "defrag".into();
    v["code"] = json!({"version": env!("CARGO_PKG_VERSION"), "commit": commit});
    v
}

/// Runs the defragmentation benchmark.
pub fn run(args: &DefragBenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::from(args);
    if let Some(only) = &cfg.only {
        if let Some(bad) = only.iter().find(|o| !ALL_NAMES.contains(&o.as_str())) {
            return Err(format!(
                "budge defrag-bench: unknown contender {bad:?} (expected one of {})",
                ALL_NAMES.join(", ")
            )
            .into());
        }
    }
    let machine = Machine::get();
    let commit = code_commit();
    let say = |s: String| eprintln!("{s}");
    if !cfg.output.json {
        print_header(&machine, &cfg, commit.as_deref());
    }
    let start = Instant::now();
    let mut results = Vec::new();
    for t in &cfg.targets {
        let r = bench_fs(t, &cfg, &say).map_err(|e| format!("budge defrag-bench: {e}"))?;
        if !cfg.output.json {
            print_fs(&r);
        }
        results.push(r);
    }
    let total = start.elapsed().as_secs_f64();
    let v = json_out(&machine, &cfg, commit.as_deref(), &results, total);
    cfg.output
        .emit(&v)
        .map_err(|e| format!("budge defrag-bench: {e}"))?;
    if !cfg.output.json {
        println!("\nwhole bench: {total:.0} s");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_covers_the_file_and_places_pieces() {
        let m = Model::new(1 << 20, 10, 8192, 4096, 1).unwrap();
        assert_eq!(m.size, 1 << 20);
        assert_eq!(m.base, (1 << 20) - 10 * 8192);
        let total: u64 = m.runs.iter().map(|r| r.1).sum();
        assert_eq!(total, m.size);
        for w in m.runs.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0);
        }
        // Every stream byte appears exactly once.
        let mut srcs: Vec<(u64, u64)> = m.runs.iter().map(|r| (r.2, r.1)).collect();
        srcs.sort_unstable();
        let mut at = 0;
        for (s, l) in srcs {
            assert_eq!(s, at);
            at += l;
        }
        // The last insert's piece is where it was put.
        let last = *m.offsets.last().unwrap();
        let mut got = vec![0u8; 8192];
        let mut want = vec![0u8; 8192];
        m.fill(&mut got, last);
        crate::pattern::fill(&mut want, m.base + 9 * 8192, m.seed);
        assert_eq!(got, want);
    }

    #[test]
    fn model_refuses_bad_sizes() {
        assert!(Model::new(1 << 20, 16, 65536, 4096, 1).is_err());
        assert!(Model::new(1 << 20, 1, 1000, 4096, 1).is_err());
    }

    #[test]
    fn targets_parse() {
        let t = target("xfs:/mnt/x");
        assert_eq!(t.label.as_deref(), Some("xfs"));
        assert_eq!(t.dir, PathBuf::from("/mnt/x"));
        let t = target("/mnt/a:b");
        assert_eq!(t.label, None);
        assert_eq!(t.dir, PathBuf::from("/mnt/a:b"));
    }
}
