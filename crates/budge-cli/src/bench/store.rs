//! `budge store bench`: the store scenario from issue 3, side by side with
//! its baselines in the same run, on each filesystem given.
//!
//! A store of 8 regions (4 GiB of data by default, written and committed)
//! is opened with `Growth::Exact`, so every resize shifts the file; region 0
//! then grows by 1 MiB a hundred times and shrinks back. Measured, per
//! filesystem:
//!
//! - **resize**: each `Store::resize` (its fdatasyncs included), interleaved
//!   step by step with the bare `fallocate(INSERT_RANGE/COLLAPSE_RANGE)` +
//!   `fsync` on a plain file of the same size and layout, and with the
//!   store's protocol alone (a 4 KiB header `pwrite` + `fdatasync` +
//!   `fallocate` + `fdatasync`, "floor"); back to back (after the first call
//!   nothing past region 0 is cached) and warm (everything read into the
//!   page cache before each call);
//! - **re-touch**: one byte per page of every region through the mapping,
//!   before any resize and after one (the kernel dropped the cache past the
//!   shift point);
//! - **naive**: rewriting everything after region 0 shifted by 1 MiB
//!   ([`crate::baseline`]), warm, a few runs;
//! - **no-shift**: the layout that never moves data (each region its own
//!   file, mapped into its own address reservation, growth maps the new
//!   chunk, the way LLNL Metall grows), same grows, then the same touch;
//! - **amortized**: the same appends with the default `Growth::Amortized`,
//!   everything cached before each call (re-read, timed, after a resize
//!   that shifted): per-resize latency, the shifts, against the naive
//!   rewrite;
//! - **updates**: device bytes per random one-byte store through the mapping
//!   plus commit, `Advice::Normal` against `Advice::Random`, with the cache
//!   filled by large writes or empty;
//! - **extents**: one grow+shrink against the number of extents after
//!   region 0 (a smaller store with holes punched), budge against bare.

mod output;
mod phases;

use std::path::PathBuf;
use std::time::Instant;

use budge::map::Advice;
use clap::{Args, ValueEnum};

use super::{report, sysinfo, JsonArgs};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Arguments of `budge store bench`.
#[derive(Args)]
pub struct StoreBenchArgs {
    /// Directories, each on a filesystem to measure [default: .]
    pub dirs: Vec<PathBuf>,
    /// Small sizes, few runs: a smoke test of the harness (well under 30 s
    /// per filesystem).
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub output: JsonArgs,
    /// Bytes of region data in the store; scaled down (and the report says
    /// so) where the filesystem lacks room for the store and its baseline
    /// file [default: 4G; --quick: 64M]
    #[arg(long, value_parser = crate::parse_size)]
    pub size: Option<u64>,
    /// Regions in the store (all the same size).
    #[arg(long, default_value_t = 8)]
    pub regions: usize,
    /// Grows of region 0 (then as many shrinks) [default: 100; --quick: 10]
    #[arg(long)]
    pub steps: Option<usize>,
    /// Bytes per grow and shrink.
    #[arg(long, default_value = "1M", value_parser = crate::parse_size)]
    pub step: u64,
    /// Warm grow+shrink pairs (whole store read back before each call)
    /// [default: 5; --quick: 2]
    #[arg(long)]
    pub warm_runs: Option<usize>,
    /// Grow+shrink pairs of the naive rewrite [default: 3; --quick: 1]
    #[arg(long)]
    pub naive_runs: Option<usize>,
    /// Extent counts after region 0 for the extent sweep
    /// [default: 10,100,1000,10000; --quick: 10,100]
    #[arg(long, value_delimiter = ',')]
    pub extent_counts: Option<Vec<u64>>,
    /// Region data of the extent-sweep store [default: 256M; --quick: 16M]
    #[arg(long, value_parser = crate::parse_size)]
    pub extent_store_size: Option<u64>,
    /// Grow+shrink pairs per extent count [default: 5; --quick: 2]
    #[arg(long)]
    pub extent_runs: Option<usize>,
    /// Random one-byte updates per case [default: 40; --quick: 6]
    #[arg(long)]
    pub updates: Option<usize>,
    /// Seconds a series may run before it stops early (saying so): copying
    /// shifts of a large store take seconds each [default: 150; --quick: 4]
    #[arg(long)]
    pub budget: Option<f64>,
    /// Only these parts, comma-separated [default: all]
    #[arg(long, value_delimiter = ',', value_enum)]
    pub parts: Option<Vec<Part>>,
    /// `madvise` for the store's mapping (and the mapped plain twin) in the
    /// resize and amortized parts: normal, random, sequential (the updates
    /// part always measures normal and random)
    #[arg(long, default_value = "normal", value_parser = parse_advice)]
    pub advice: Advice,
}

fn parse_advice(s: &str) -> Result<Advice, String> {
    s.parse()
}

/// A part of the benchmark.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// Resize latency back to back and warm, against bare fallocate, and the
    /// re-touch cost.
    Resize,
    /// The naive rewrite of everything after region 0.
    Naive,
    /// The layout that never shifts (a file and a reservation per region).
    Noshift,
    /// The default growth policy: shifts caused by 100 appends.
    Amortized,
    /// Device bytes per random one-byte update through the mapping.
    Updates,
    /// Resize latency against the extent count after region 0.
    Extents,
}

/// The arguments with defaults resolved.
pub struct Config {
    dirs: Vec<PathBuf>,
    size: u64,
    regions: usize,
    steps: usize,
    step: u64,
    warm_runs: usize,
    naive_runs: usize,
    extent_counts: Vec<u64>,
    extent_store_size: u64,
    extent_runs: usize,
    updates: usize,
    budget: f64,
    parts: Vec<Part>,
    advice: Advice,
    quick: bool,
    output: JsonArgs,
}

impl Config {
    fn from(a: &StoreBenchArgs) -> Config {
        let q = a.quick;
        Config {
            dirs: if a.dirs.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                a.dirs.clone()
            },
            size: a.size.unwrap_or(if q { 64 * MIB } else { 4 * GIB }),
            regions: a.regions.max(2),
            steps: a.steps.unwrap_or(if q { 10 } else { 100 }).max(1),
            step: a.step,
            warm_runs: a.warm_runs.unwrap_or(if q { 2 } else { 5 }),
            naive_runs: a.naive_runs.unwrap_or(if q { 1 } else { 3 }),
            extent_counts: a.extent_counts.clone().unwrap_or_else(|| {
                if q {
                    vec![10, 100]
                } else {
                    vec![10, 100, 1000, 10_000]
                }
            }),
            extent_store_size: a
                .extent_store_size
                .unwrap_or(if q { 16 * MIB } else { 256 * MIB }),
            extent_runs: a.extent_runs.unwrap_or(if q { 2 } else { 5 }).max(1),
            updates: a.updates.unwrap_or(if q { 6 } else { 40 }).max(1),
            budget: a.budget.unwrap_or(if q { 4.0 } else { 150.0 }),
            parts: a.parts.clone().unwrap_or_else(|| {
                vec![
                    Part::Resize,
                    Part::Naive,
                    Part::Noshift,
                    Part::Amortized,
                    Part::Updates,
                    Part::Extents,
                ]
            }),
            advice: a.advice,
            quick: q,
            output: a.output.clone(),
        }
    }

    fn has(&self, p: Part) -> bool {
        self.parts.contains(&p)
    }
}

/// Runs the store benchmark.
pub fn run(args: &StoreBenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::from(args);
    let page = budge::sys::page_size();
    if cfg.step == 0 || cfg.step % page != 0 {
        return Err(format!(
            "budge store bench: --step must be a non-zero multiple of the page size ({page})"
        )
        .into());
    }
    let machine = sysinfo::Machine::get();
    let say = |s: String| eprintln!("{s}");
    if !cfg.output.json {
        output::print_header(&machine, &cfg);
    }
    let start = Instant::now();
    let mut results = Vec::new();
    for dir in &cfg.dirs {
        let r = phases::bench_fs(dir, &cfg, &say);
        if !cfg.output.json {
            output::print_fs(&r, &cfg);
        }
        results.push(r);
    }
    let targets = output::targets(&results, &cfg);
    let v = output::json(
        &machine,
        &cfg,
        &results,
        &targets,
        start.elapsed().as_secs_f64(),
    );
    cfg.output.emit(&v)?;
    if !cfg.output.json {
        report::print_targets(&targets);
        println!("\nwhole bench: {:.0} s", start.elapsed().as_secs_f64());
    }
    Ok(())
}
