//! `budge store ...`: the store subcommands. Parsing and printing only.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use budge::store::{self, Growth, Region, ResizeReport, Store, StoreOptions};
use budge::Strategy;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::bench;
use crate::output::{emit, human_size};
use crate::{parse_size, CliResult};

/// `budge store SUBCOMMAND`.
#[derive(Subcommand)]
pub enum StoreCmd {
    /// Create an empty store.
    Create {
        file: PathBuf,
        /// Region alignment [default: max(page size, filesystem block)].
        #[arg(long, value_parser = parse_size)]
        align: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Header, size, filesystem and recovery state of a store.
    Info {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List the regions.
    Ls {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Add a region of SIZE zero bytes at the end.
    Add {
        file: PathBuf,
        name: String,
        #[arg(value_parser = parse_size)]
        size: u64,
        /// Element size of a typed region (0: bytes).
        #[arg(long, default_value_t = 0)]
        elem_size: u32,
        #[command(flatten)]
        opts: OptArgs,
    },
    /// Resize a region to SIZE, or by +N / -N bytes.
    Resize {
        file: PathBuf,
        name: String,
        /// New size, or +N / -N.
        #[arg(allow_hyphen_values = true)]
        size: String,
        #[command(flatten)]
        opts: OptArgs,
    },
    /// Remove a region; later regions move down.
    Rm {
        file: PathBuf,
        name: String,
        #[command(flatten)]
        opts: OptArgs,
    },
    /// Rename a region.
    Mv {
        file: PathBuf,
        old: String,
        new: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a region's bytes to stdout.
    Cat { file: PathBuf, name: String },
    /// Replace a region's bytes with stdin (or --from FILE), resizing it.
    Put {
        file: PathBuf,
        name: String,
        /// Read from this file instead of stdin.
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        opts: OptArgs,
    },
    /// Verify a store without changing it; exit 1 if it has problems.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Relocate the regions that resizes fragmented into as few extents as
    /// the filesystem gives, in place (layout, bytes and mappings kept).
    Compact {
        file: PathBuf,
        #[command(flatten)]
        relocate: crate::RelocateArgs,
    },
    /// Benchmark the store scenario (grow the first of 8 regions 100 times).
    Bench(bench::store::StoreBenchArgs),
}

/// Options shared by the commands that may move regions.
#[derive(Args)]
pub struct OptArgs {
    /// Refuse (changing nothing) when only copying data could move regions.
    #[arg(long)]
    metadata_only: bool,
    /// Force a strategy: native, reflink, kernel-copy, user-copy.
    #[arg(long)]
    strategy: Option<Strategy>,
    /// Capacity exactly the size (default: amortized growth with headroom).
    #[arg(long)]
    exact: bool,
    #[arg(long)]
    json: bool,
}

impl OptArgs {
    fn store_options(&self) -> StoreOptions {
        StoreOptions {
            policy: if self.metadata_only {
                budge::Policy::MetadataOnly
            } else {
                budge::Policy::AllowCopy
            },
            strategy: self.strategy,
            growth: if self.exact {
                Growth::Exact
            } else {
                Growth::Amortized
            },
            ..StoreOptions::default()
        }
    }
}

fn region_json(r: &Region) -> serde_json::Value {
    json!({
        "name": r.name,
        "offset": r.offset,
        "len": r.len,
        "capacity": r.capacity,
        "elem_size": r.elem_size,
    })
}

fn report_json(file: &Path, op: &str, r: &ResizeReport) -> serde_json::Value {
    json!({
        "operation": op,
        "file": file,
        "region": r.name,
        "old_len": r.old_len,
        "new_len": r.new_len,
        "old_capacity": r.old_capacity,
        "new_capacity": r.new_capacity,
        "shift": r.shift.as_ref().map(|s| json!({
            "kind": format!("{:?}", s.kind).to_lowercase(),
            "offset": s.offset,
            "len": s.len,
            "strategy": s.strategy.name(),
            "bytes_copied": s.bytes_copied,
            "tail_reread": s.tail_reread,
            "extents_journaled": s.extents,
            "commit": if s.record { "record" } else { "slot" },
        })),
        "compacted": r.compacted.iter().map(|c| json!({
            "region": c.name,
            "extents_before": c.report.extents_before,
            "extents_after": c.report.extents_after,
            "bytes_moved": c.report.bytes_moved,
        })).collect::<Vec<_>>(),
        "compact_error": r.compact_error,
    })
}

fn print_report(file: &Path, op: &str, r: &ResizeReport, json: bool) -> CliResult {
    if json {
        return emit(&report_json(file, op, r));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{op} {:?} in {}: {} -> {} (capacity {} -> {})",
        r.name,
        file.display(),
        human_size(r.old_len),
        human_size(r.new_len),
        human_size(r.old_capacity),
        human_size(r.new_capacity)
    )?;
    match &r.shift {
        Some(s) => writeln!(
            out,
            "  {:?} of {} at {}: strategy {}, {} data bytes copied, committed by {}",
            s.kind,
            human_size(s.len),
            human_size(s.offset),
            s.strategy,
            s.bytes_copied,
            if s.record {
                "the commit record (one fdatasync)"
            } else {
                "a header slot"
            }
        )?,
        None => writeln!(out, "  within capacity: header only, nothing moved")?,
    }
    if !r.compacted.is_empty() {
        let (b, a, m) = r.compacted.iter().fold((0, 0, 0), |(b, a, m), c| {
            (
                b + c.report.extents_before,
                a + c.report.extents_after,
                m + c.report.bytes_moved,
            )
        });
        writeln!(
            out,
            "  compacted (the shifted tail had too many extents): extents {b} -> {a}, {} moved",
            human_size(m)
        )?;
    }
    if let Some(e) = &r.compact_error {
        writeln!(out, "  compaction stopped: {e}")?;
    }
    Ok(())
}

fn print_recovery(s: &Store) {
    for a in &s.recovery().actions {
        eprintln!("budge: recovery: {a}");
    }
}

fn parse_new_size(s: &Store, name: &str, size: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let cur = s
        .region(name)
        .ok_or_else(|| {
            budge::Error::new(
                budge::ErrorKind::NotFound,
                format!("resize region {name:?}"),
            )
            .with_path(s.path())
            .with_hint(format!("no region named {name:?}"))
        })?
        .len;
    let bad = |e: String| -> Box<dyn std::error::Error> { e.into() };
    Ok(if let Some(n) = size.strip_prefix('+') {
        cur.checked_add(parse_size(n).map_err(bad)?)
            .ok_or_else(|| bad("size overflows".into()))?
    } else if let Some(n) = size.strip_prefix('-') {
        cur.checked_sub(parse_size(n).map_err(bad)?)
            .ok_or_else(|| bad(format!("region {name:?} has only {cur} bytes")))?
    } else {
        parse_size(size).map_err(bad)?
    })
}

pub fn run(cmd: StoreCmd) -> CliResult {
    match cmd {
        StoreCmd::Create { file, align, json } => {
            let align = align
                .map(|a| u32::try_from(a).map_err(|_| format!("--align {a} is too large")))
                .transpose()?;
            let s = Store::create(
                &file,
                &StoreOptions {
                    align,
                    ..StoreOptions::default()
                },
            )?;
            if json {
                emit(&json!({"operation": "create", "file": file, "align": s.align()}))?;
            } else {
                println!(
                    "created {} (align {}, on {})",
                    file.display(),
                    human_size(s.align()),
                    s.capabilities().fs.kind.name()
                );
            }
        }
        StoreCmd::Info { file, json } => {
            let s = Store::open_read_only(&file, &StoreOptions::default())?;
            let c = s.capabilities();
            let native = c.insert_range.works && c.collapse_range.works;
            let how = if native {
                "native (fallocate insert/collapse-range)"
            } else if c.ficlonerange.works {
                "reflink via a sidecar"
            } else {
                "copy via a sidecar"
            };
            let used: u64 = s.regions().iter().map(|r| r.len).sum();
            if json {
                emit(&json!({
                    "file": file,
                    "generation": s.generation(),
                    "align": s.align(),
                    "file_size": s.file_size(),
                    "regions": s.regions().len(),
                    "bytes_used": used,
                    "filesystem": c.fs.kind.name(),
                    "resize_strategy": how,
                }))?;
            } else {
                println!("store       {}", file.display());
                println!("generation  {}", s.generation());
                println!("align       {}", human_size(s.align()));
                println!("file size   {}", human_size(s.file_size()));
                println!(
                    "regions     {} ({} in use)",
                    s.regions().len(),
                    human_size(used)
                );
                println!("filesystem  {} (resizes: {how})", c.fs.kind.name());
            }
        }
        StoreCmd::Ls { file, json } => {
            let s = Store::open_read_only(&file, &StoreOptions::default())?;
            let regions = s.regions();
            if json {
                emit(&json!(regions.iter().map(region_json).collect::<Vec<_>>()))?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<24} {:>12} {:>12} {:>12} {:>5}",
                    "NAME", "OFFSET", "LEN", "CAPACITY", "ELEM"
                )?;
                for r in regions {
                    writeln!(
                        out,
                        "{:<24} {:>12} {:>12} {:>12} {:>5}",
                        r.name, r.offset, r.len, r.capacity, r.elem_size
                    )?;
                }
            }
        }
        StoreCmd::Add {
            file,
            name,
            size,
            elem_size,
            opts,
        } => {
            let mut s = Store::open(&file, &opts.store_options())?;
            print_recovery(&s);
            let r = s.add(&name, size, elem_size)?;
            print_report(&file, "add", &r, opts.json)?;
        }
        StoreCmd::Resize {
            file,
            name,
            size,
            opts,
        } => {
            let mut s = Store::open(&file, &opts.store_options())?;
            print_recovery(&s);
            let n = parse_new_size(&s, &name, &size)?;
            let r = s.resize(&name, n)?;
            print_report(&file, "resize", &r, opts.json)?;
        }
        StoreCmd::Rm { file, name, opts } => {
            let mut s = Store::open(&file, &opts.store_options())?;
            print_recovery(&s);
            let r = s.remove(&name)?;
            print_report(&file, "remove", &r, opts.json)?;
        }
        StoreCmd::Mv {
            file,
            old,
            new,
            json,
        } => {
            let mut s = Store::open(&file, &StoreOptions::default())?;
            print_recovery(&s);
            s.rename(&old, &new)?;
            if json {
                emit(&json!({"operation": "rename", "file": file, "old": old, "new": new}))?;
            } else {
                println!("renamed {old:?} to {new:?} in {}", file.display());
            }
        }
        StoreCmd::Cat { file, name } => {
            let s = Store::open_read_only(&file, &StoreOptions::default())?;
            let b = s.bytes(&name)?;
            let mut out = std::io::stdout().lock();
            out.write_all(b)?;
            out.flush()?;
        }
        StoreCmd::Put {
            file,
            name,
            from,
            opts,
        } => {
            let mut data = Vec::new();
            match &from {
                Some(p) => {
                    data = std::fs::read(p)
                        .map_err(|e| budge::Error::os("read input", "read", e).with_path(p))?;
                }
                None => {
                    std::io::stdin().lock().read_to_end(&mut data)?;
                }
            }
            let mut s = Store::open(&file, &opts.store_options())?;
            print_recovery(&s);
            let r = s.resize(&name, data.len() as u64)?;
            s.bytes_mut(&name)?.copy_from_slice(&data);
            s.commit()?;
            print_report(&file, "put", &r, opts.json)?;
        }
        StoreCmd::Check { file, json } => {
            let rep = store::check(&file)?;
            let ok = rep.problems.is_empty();
            if json {
                emit(&json!({
                    "file": file,
                    "ok": ok,
                    "generation": rep.generation,
                    "slots": rep.slots.iter().map(|s| match s {
                        Ok(g) => json!({"valid": true, "generation": g}),
                        Err(e) => json!({"valid": false, "error": e}),
                    }).collect::<Vec<_>>(),
                    "regions": rep.regions.len(),
                    "problems": rep.problems,
                    "notes": rep.notes,
                }))?;
            } else {
                let mut out = std::io::stdout().lock();
                for (i, s) in rep.slots.iter().enumerate() {
                    match s {
                        Ok(g) => writeln!(out, "slot {}: valid, generation {g}", ["A", "B"][i])?,
                        Err(e) => writeln!(out, "slot {}: invalid: {e}", ["A", "B"][i])?,
                    }
                }
                for n in &rep.notes {
                    writeln!(out, "note: {n}")?;
                }
                for p in &rep.problems {
                    writeln!(out, "PROBLEM: {p}")?;
                }
                if ok {
                    writeln!(
                        out,
                        "{}: ok, generation {}, {} regions",
                        file.display(),
                        rep.generation,
                        rep.regions.len()
                    )?;
                }
            }
            if !ok {
                return Err(format!(
                    "{}: {} problem(s) found",
                    file.display(),
                    rep.problems.len()
                )
                .into());
            }
        }
        StoreCmd::Compact { file, relocate } => {
            let mut s = Store::open(&file, &StoreOptions::default())?;
            print_recovery(&s);
            let progress = crate::output::Progress::new("compact");
            let cb = progress.callback();
            let done = s.compact(&relocate.options(Some(&cb)));
            progress.finish();
            let done = done?;
            crate::output::print_compact(&file, &done, relocate.json)?;
        }
        StoreCmd::Bench(args) => bench::store::run(&args)?,
    }
    Ok(())
}
