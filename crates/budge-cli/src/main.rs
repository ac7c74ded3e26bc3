//! `budge`: the command-line face of the budge library. Argument parsing,
//! printing and exit codes only; every operation is a library call.
//!
//! Exit codes: 0 success (also on a broken pipe), 1 the operation failed,
//! 2 usage error.

mod baseline;
mod bench;
mod demo;
mod output;
mod overlay_cmd;
mod pattern;
mod store_cmd;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use budge::copy::{CopyOptions, CopyReport};
use budge::{Policy, ShiftOptions, ShiftReport, Strategy};
use clap::{Args, Parser, Subcommand};

use output::Progress;

/// mremap for files: insert, collapse, clone and copy file space by changing
/// extents instead of moving bytes.
#[derive(Parser)]
#[command(name = "budge", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show what the filesystem under PATH can do (tried, not guessed).
    Probe {
        /// A directory (or file) on the filesystem to probe [default: .]
        path: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Insert LEN zero bytes at OFFSET, shifting the rest of the file up.
    Insert(ShiftArgs),
    /// Remove LEN bytes at OFFSET, shifting the rest of the file down.
    Collapse(ShiftArgs),
    /// Deallocate a range (reads as zeros; size unchanged).
    Punch(RangeArgs),
    /// Make a range read as zeros (ZERO_RANGE, else punch, else write zeros).
    Zero {
        #[command(flatten)]
        range: RangeArgs,
        /// Refuse to write zeros when no fallocate mode works.
        #[arg(long)]
        metadata_only: bool,
    },
    /// Reflink SRC into DST (whole file, or a range); never copies data.
    Clone(TransferArgs),
    /// Copy SRC into DST (whole file, or a range): reflink, then
    /// copy_file_range, then a sparse-aware copy.
    Copy {
        #[command(flatten)]
        t: TransferArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// List a file's extents (FIEMAP), or its data/hole map where FIEMAP is
    /// unsupported.
    Extents {
        file: PathBuf,
        /// Only the fragmentation summary.
        #[arg(long)]
        summary: bool,
        #[arg(long)]
        json: bool,
    },
    /// Demonstrate: 1 GiB file, insert 64 KiB in the middle with the best
    /// strategy and with a naive rewrite, verify both, compare.
    Demo {
        /// Where to put the demo file [default: a temporary directory here]
        dir: Option<PathBuf>,
        /// Size of the demo file.
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        size: u64,
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent point-in-time copy of FILE to OUT (reflink where
    /// possible, sparse-aware copy otherwise), published atomically.
    Snap {
        file: PathBuf,
        out: PathBuf,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Relocate a file's fragmented ranges into as few extents as the
    /// filesystem gives, in bounded chunks, under live mappings (move-ext on
    /// ext4, swapext for a whole fragmented file on XFS with rmapbt, cow on
    /// XFS, dedupe on XFS and btrfs, btrfs-defrag on btrfs; copy-rename, not
    /// coherent for other openers, where nothing else works).
    Defrag {
        file: PathBuf,
        /// Only this range: OFFSET LEN.
        #[arg(long, num_args = 2, value_names = ["OFFSET", "LEN"], value_parser = parse_size)]
        range: Option<Vec<u64>>,
        #[command(flatten)]
        relocate: RelocateArgs,
    },
    /// Benchmark insert/collapse strategies against a naive rewrite.
    Bench(bench::BenchArgs),
    /// Benchmark budge's relocation (defrag) against the filesystem's own
    /// defragmenter (e4defrag, xfs_fsr, btrfs defragment) on the same
    /// fragmented file.
    DefragBench(bench::defrag::DefragBenchArgs),
    /// A store: named growable arrays in one memory-mapped file.
    #[command(subcommand)]
    Store(store_cmd::StoreCmd),
    /// Page-granular copy-on-write overlays over a read-only base file.
    #[command(subcommand)]
    Overlay(overlay_cmd::OverlayCmd),
}

/// How `defrag` and `store compact` relocate.
#[derive(Args)]
pub struct RelocateArgs {
    /// Extents shorter than this count as fragments.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    threshold: u64,
    /// The most bytes moved in one step.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    chunk: u64,
    /// Force one strategy: move-ext, dedupe, swapext, btrfs-defrag, cow,
    /// copy-rename.
    #[arg(long)]
    strategy: Option<budge::RelocateStrategy>,
    /// Also move shared (reflinked) extents, unsharing them.
    #[arg(long)]
    unshare: bool,
    /// Keep the file's modification and change times: do not use cow,
    /// which updates them (XFS without rmapbt then uses dedupe).
    #[arg(long)]
    keep_times: bool,
    /// Report what would be moved; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

impl RelocateArgs {
    /// The options, for the whole file, reporting to `progress`.
    pub fn options<'a>(
        &self,
        progress: Option<budge::copy::Progress<'a>>,
    ) -> budge::RelocateOptions<'a> {
        budge::RelocateOptions {
            range: None,
            threshold: self.threshold,
            chunk: self.chunk,
            strategy: self.strategy,
            unshare: self.unshare,
            keep_times: self.keep_times,
            dry_run: self.dry_run,
            progress,
        }
    }
}

#[derive(Args)]
struct RangeArgs {
    file: PathBuf,
    #[command(flatten)]
    span: SpanArgs,
}

/// `OFFSET LEN [--json]`: the byte range after the file, in the commands that
/// act on a range of one file.
#[derive(Args)]
pub struct SpanArgs {
    #[arg(value_parser = parse_size)]
    pub(crate) offset: u64,
    #[arg(value_parser = parse_size)]
    pub(crate) len: u64,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
struct PolicyArgs {
    /// Refuse (touching nothing) when only copying data could do it.
    #[arg(long, conflicts_with = "allow_copy")]
    metadata_only: bool,
    /// Allow copying data when metadata strategies cannot run (default).
    #[arg(long)]
    allow_copy: bool,
    /// Force one strategy: native, reflink, kernel-copy, user-copy.
    #[arg(long)]
    strategy: Option<Strategy>,
}

impl PolicyArgs {
    fn policy(&self) -> Policy {
        if self.metadata_only {
            Policy::MetadataOnly
        } else {
            Policy::AllowCopy
        }
    }
}

#[derive(Args)]
struct ShiftArgs {
    #[command(flatten)]
    range: RangeArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// fsync the file before returning.
    #[arg(long)]
    sync: bool,
}

#[derive(Args)]
struct TransferArgs {
    src: PathBuf,
    dst: PathBuf,
    #[arg(long, value_parser = parse_size)]
    src_offset: Option<u64>,
    #[arg(long, value_parser = parse_size)]
    dst_offset: Option<u64>,
    #[arg(long, value_parser = parse_size)]
    len: Option<u64>,
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    budge::range::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size (examples: 4096, 4k, 64KiB, 1G)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("budge: {e}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn open_rw(path: &Path, op: &str) -> Result<File, budge::Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| budge::Error::os(op, "open", e).with_path(path))
}

fn open_ro(path: &Path, op: &str) -> Result<File, budge::Error> {
    File::open(path).map_err(|e| budge::Error::os(op, "open", e).with_path(path))
}

fn run(cmd: Cmd) -> CliResult {
    match cmd {
        Cmd::Probe { path, json } => {
            let path = path.unwrap_or_else(|| PathBuf::from("."));
            if let Err(e) = std::fs::metadata(&path) {
                return Err(budge::Error::os("probe", "stat", e).with_path(&path).into());
            }
            let dir = if path.is_dir() {
                path.clone()
            } else {
                path.parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            };
            let caps = budge::probe_uncached(&dir)?;
            output::print_probe(&caps, json)?;
        }
        Cmd::Insert(a) => shift(a, true)?,
        Cmd::Collapse(a) => shift(a, false)?,
        Cmd::Punch(RangeArgs { file, span }) => {
            let f = open_rw(&file, "punch")?;
            let rep = budge::copy::punch_hole(&f, span.offset, span.len)
                .map_err(|e| e.with_path(&file))?;
            output::print_copy("punch", &rep, span.json)?;
        }
        Cmd::Zero {
            range: RangeArgs { file, span },
            metadata_only,
        } => {
            let f = open_rw(&file, "zero")?;
            let policy = if metadata_only {
                Policy::MetadataOnly
            } else {
                Policy::AllowCopy
            };
            let rep = budge::copy::zero_range(&f, span.offset, span.len, policy)
                .map_err(|e| e.with_path(&file))?;
            output::print_copy("zero", &rep, span.json)?;
        }
        Cmd::Clone(t) => {
            let rep = transfer(&t, None)?;
            output::print_copy("clone", &rep, t.json)?;
        }
        Cmd::Copy { t, policy } => {
            let rep = transfer(&t, Some(&policy))?;
            output::print_copy("copy", &rep, t.json)?;
        }
        Cmd::Extents {
            file,
            summary,
            json,
        } => {
            let f = open_ro(&file, "list extents")?;
            output::print_extents(&f, summary, json).map_err(|e| {
                match e.downcast::<budge::Error>() {
                    Ok(be) => Box::new(be.with_path(&file)) as Box<dyn std::error::Error>,
                    Err(other) => other,
                }
            })?;
        }
        Cmd::Demo { dir, size, json } => demo::run(dir, size, json)?,
        Cmd::Snap {
            file,
            out,
            force,
            policy,
            json,
        } => {
            let progress = Progress::new("snapshot");
            let cb = progress.callback();
            let opts = budge::snap::SnapOptions {
                policy: policy.policy(),
                strategy: policy.strategy,
                progress: Some(&cb),
                ..Default::default()
            };
            let r = budge::snap::snapshot_to(&file, &out, force, &opts);
            progress.finish();
            output::print_snap(&file, &out, &r?, json)?;
        }
        Cmd::Defrag {
            file,
            range,
            relocate,
        } => {
            let progress = Progress::new("defrag");
            let cb = progress.callback();
            let opts = budge::RelocateOptions {
                range: range.map(|v| (v[0], v[1])),
                ..relocate.options(Some(&cb))
            };
            let r = budge::relocate_path(&file, &opts);
            progress.finish();
            output::print_relocate(&file, &r?, relocate.json)?;
        }
        Cmd::Bench(args) => bench::run(&args)?,
        Cmd::DefragBench(args) => bench::defrag::run(&args)?,
        Cmd::Store(cmd) => store_cmd::run(cmd)?,
        Cmd::Overlay(cmd) => overlay_cmd::run(cmd)?,
    }
    Ok(())
}

fn shift(a: ShiftArgs, insert: bool) -> CliResult {
    let verb = if insert { "insert" } else { "collapse" };
    let path = &a.range.file;
    let span = &a.range.span;
    let f = open_rw(path, verb)?;
    let progress = Progress::new(verb);
    let cb = progress.callback();
    let opts = ShiftOptions {
        policy: a.policy.policy(),
        strategy: a.policy.strategy,
        sync: a.sync,
        progress: Some(&cb),
    };
    let r: Result<ShiftReport, budge::Error> = if insert {
        budge::insert(&f, span.offset, span.len, &opts)
    } else {
        budge::collapse(&f, span.offset, span.len, &opts)
    };
    progress.finish();
    let rep = r.map_err(|e| e.with_path(path))?;
    output::print_shift(verb, path, span.offset, span.len, &rep, span.json)?;
    Ok(())
}

fn transfer(
    t: &TransferArgs,
    policy: Option<&PolicyArgs>,
) -> Result<CopyReport, Box<dyn std::error::Error>> {
    let verb = if policy.is_some() { "copy" } else { "clone" };
    let src = open_ro(&t.src, verb)?;
    let ranged = t.src_offset.is_some() || t.dst_offset.is_some() || t.len.is_some();
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&t.dst)
        .map_err(|e| budge::Error::os(verb, "open", e).with_path(&t.dst))?;
    let src_len = src
        .metadata()
        .map_err(|e| budge::Error::os(verb, "stat", e).with_path(&t.src))?
        .len();
    let so = t.src_offset.unwrap_or(0);
    let len = t.len.unwrap_or_else(|| src_len.saturating_sub(so));
    let progress = Progress::new(verb);
    let cb = progress.callback();
    let r = match policy {
        None if !ranged => budge::copy::clone_file(&src, &dst),
        None => budge::copy::clone_range(&src, so, &dst, t.dst_offset.unwrap_or(0), len),
        Some(p) => {
            let opts = CopyOptions {
                policy: p.policy(),
                strategy: p.strategy,
                progress: Some(&cb),
            };
            if ranged {
                budge::copy::copy_range(&src, so, &dst, t.dst_offset.unwrap_or(0), len, &opts)
            } else {
                budge::copy::copy_file(&src, &dst, &opts)
            }
        }
    };
    progress.finish();
    Ok(r.map_err(|e| e.with_path(&t.dst))?)
}
