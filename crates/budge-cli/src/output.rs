//! Printing for humans (tables) and scripts (`--json`), and the progress bar.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use budge::copy::CopyReport;
use budge::extents::{self, flags, SegmentKind};
use budge::snap::SnapReport;
use budge::{Capabilities, ShiftReport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

type Res = Result<(), Box<dyn std::error::Error>>;

/// `64 KiB`, `1 GiB`.
pub fn human_size(n: u64) -> String {
    budge::range::fmt_size(n)
}

pub fn emit(value: &serde_json::Value) -> Res {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub fn print_probe(c: &Capabilities, json: bool) -> Res {
    if json {
        let mut caps = serde_json::Map::new();
        for (name, s) in c.entries() {
            caps.insert(name.into(), json!({ "works": s.works, "note": s.note }));
        }
        return emit(&json!({
            "dir": c.dir,
            "filesystem": c.fs.kind.name(),
            "block_size": c.fs.block_size,
            "total_bytes": c.fs.total_bytes,
            "available_bytes": c.fs.avail_bytes,
            "capabilities": caps,
        }));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} (block size {}, {} free of {})",
        c.dir.display(),
        c.fs.kind.name(),
        c.fs.block_size,
        human_size(c.fs.avail_bytes),
        human_size(c.fs.total_bytes)
    )?;
    writeln!(out, "{:<26} {:<4} note", "capability", "ok")?;
    for (name, s) in c.entries() {
        let ok = if s.works { "yes" } else { "no" };
        writeln!(
            out,
            "{name:<26} {ok:<4} {}",
            s.note.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

pub fn print_shift(
    verb: &str,
    path: &Path,
    offset: u64,
    len: u64,
    r: &ShiftReport,
    json: bool,
) -> Res {
    if json {
        let fallbacks: Vec<_> = r
            .fallbacks
            .iter()
            .map(|(s, w)| json!({"strategy": s.name(), "reason": w}))
            .collect();
        return emit(&json!({
            "operation": verb,
            "file": path,
            "offset": offset,
            "len": len,
            "strategy": r.strategy.name(),
            "bytes_copied": r.bytes_copied,
            "old_size": r.old_size,
            "new_size": r.new_size,
            "tail_reread": r.tail_reread,
            "fallbacks": fallbacks,
        }));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{verb} {} at {} in {}: strategy {}, {} data bytes copied, size {} -> {}",
        human_size(len),
        human_size(offset),
        path.display(),
        r.strategy,
        r.bytes_copied,
        r.old_size,
        r.new_size
    )?;
    for (s, why) in &r.fallbacks {
        writeln!(out, "  skipped {s}: {why}")?;
    }
    if r.tail_reread > 0 {
        writeln!(
            out,
            "  note: the kernel dropped the page cache of the last {} (re-read on next access)",
            human_size(r.tail_reread)
        )?;
    }
    Ok(())
}

pub fn print_copy(verb: &str, r: &CopyReport, json: bool) -> Res {
    if json {
        return emit(&json!({
            "operation": verb,
            "strategy": r.strategy.name(),
            "bytes_copied": r.bytes_copied,
            "bytes_cloned": r.bytes_cloned,
            "hole_bytes": r.hole_bytes,
        }));
    }
    writeln!(
        std::io::stdout().lock(),
        "{verb}: strategy {}, {} data bytes copied, {} cloned, {} of holes kept",
        r.strategy,
        r.bytes_copied,
        human_size(r.bytes_cloned),
        human_size(r.hole_bytes)
    )?;
    Ok(())
}

pub fn print_snap(file: &Path, out: &Path, r: &SnapReport, json: bool) -> Res {
    if json {
        return emit(&json!({
            "operation": "snap",
            "file": file,
            "out": out,
            "strategy": r.strategy.name(),
            "bytes_copied": r.bytes_copied,
            "bytes_cloned": r.bytes_cloned,
            "attempts": r.attempts,
            "note": r.note,
            "cleaned": r.cleaned,
            "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
        }));
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "snap {} -> {}: strategy {}, {} data bytes copied, {} cloned, {:.1} ms",
        file.display(),
        out.display(),
        r.strategy,
        r.bytes_copied,
        human_size(r.bytes_cloned),
        r.elapsed.as_secs_f64() * 1e3
    )?;
    if r.attempts > 1 {
        writeln!(
            o,
            "  note: the file changed during {} copies; copied again",
            r.attempts - 1
        )?;
    }
    if let Some(n) = &r.note {
        writeln!(o, "  note: {n}")?;
    }
    for c in &r.cleaned {
        writeln!(
            o,
            "  removed {} (left by an interrupted commit)",
            c.display()
        )?;
    }
    Ok(())
}

pub fn print_extents(f: &File, summary: bool, json: bool) -> Res {
    let size = f.metadata()?.len();
    match extents::extents(f) {
        Ok(ext) => {
            let s = extents::summarize(&ext, size);
            if json {
                let list: Vec<_> = ext
                    .iter()
                    .map(|e| json!({"logical": e.logical, "physical": e.physical, "length": e.length, "flags": flags::names(e.flags)}))
                    .collect();
                let sum = json!({
                    "size": size, "extents": s.extents, "mapped_bytes": s.mapped_bytes,
                    "hole_bytes": s.hole_bytes, "shared_bytes": s.shared_bytes,
                    "unwritten_bytes": s.unwritten_bytes, "largest_extent": s.largest_extent,
                    "average_extent": s.mapped_bytes.checked_div(s.extents).unwrap_or(0),
                    "largest_gap": s.largest_gap,
                });
                return emit(&if summary {
                    sum
                } else {
                    json!({"summary": sum, "extents": list})
                });
            }
            let mut out = std::io::stdout().lock();
            if !summary {
                writeln!(
                    out,
                    "{:>16} {:>16} {:>14}  flags",
                    "logical", "physical", "length"
                )?;
                for e in &ext {
                    writeln!(
                        out,
                        "{:>16} {:>16} {:>14}  {}",
                        e.logical,
                        e.physical,
                        e.length,
                        flags::names(e.flags).join(",")
                    )?;
                }
            }
            writeln!(
                out,
                "{} extents, {} mapped, {} in holes, {} shared, average extent {}, largest {}, largest gap {}",
                s.extents,
                human_size(s.mapped_bytes),
                human_size(s.hole_bytes),
                human_size(s.shared_bytes),
                human_size(s.mapped_bytes.checked_div(s.extents).unwrap_or(0)),
                human_size(s.largest_extent),
                human_size(s.largest_gap)
            )?;
        }
        Err(e) if e.kind() == budge::ErrorKind::Unsupported => {
            // tmpfs and others: fall back to the data/hole map.
            let segs = extents::data_map(f)?;
            if json {
                let list: Vec<_> = segs
                    .iter()
                    .map(|s| json!({"offset": s.offset, "len": s.len, "kind": if s.kind == SegmentKind::Data {"data"} else {"hole"}}))
                    .collect();
                return emit(&json!({"fiemap": false, "segments": list}));
            }
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "FIEMAP unsupported here ({e}); data/hole map from SEEK_DATA:"
            )?;
            if !summary {
                for s in &segs {
                    writeln!(
                        out,
                        "{:>16} {:>14}  {}",
                        s.offset,
                        s.len,
                        if s.kind == SegmentKind::Data {
                            "data"
                        } else {
                            "hole"
                        }
                    )?;
                }
            }
            let data: u64 = segs
                .iter()
                .filter(|s| s.kind == SegmentKind::Data)
                .map(|s| s.len)
                .sum();
            writeln!(
                out,
                "{} segments, {} data, {} holes",
                segs.len(),
                human_size(data),
                human_size(size - data)
            )?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// A progress bar that stays hidden unless the work takes over a second.
pub struct Progress {
    bar: ProgressBar,
    start: Instant,
}

impl Progress {
    pub fn new(verb: &str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(verb.to_string());
        Progress {
            bar,
            start: Instant::now(),
        }
    }

    /// The callback to hand to the library.
    pub fn callback(&self) -> impl Fn(u64, u64) + Sync + '_ {
        move |done, total| {
            if self.bar.is_hidden() && self.start.elapsed() > Duration::from_secs(1) {
                self.bar.set_draw_target(ProgressDrawTarget::stderr());
            }
            self.bar.set_length(total);
            self.bar.set_position(done);
        }
    }

    pub fn finish(&self) {
        if !self.bar.is_hidden() {
            self.bar.finish_and_clear();
        }
    }
}

fn relocate_json(r: &budge::RelocateReport) -> serde_json::Value {
    let skipped: Vec<_> = r
        .chunks_skipped
        .iter()
        .map(|c| json!({"offset": c.offset, "len": c.len, "reason": c.reason.to_string()}))
        .collect();
    json!({
        "strategy": r.strategy.name(),
        "coherent": r.coherent,
        "dry_run": r.dry_run,
        "offset": r.range.0,
        "len": r.range.1,
        "extents_before": r.extents_before,
        "extents_after": r.extents_after,
        "bytes_moved": r.bytes_moved,
        "chunks": r.chunks,
        "chunks_moved": r.chunks_moved,
        "chunks_skipped": skipped,
        "notes": r.notes,
        "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
    })
}

/// One report for humans: a line headed by `what`, then skipped chunks and
/// notes indented.
fn write_relocate(o: &mut impl Write, what: &str, r: &budge::RelocateReport) -> Res {
    writeln!(
        o,
        "{what}{}: strategy {}, extents {} -> {}, {} moved, {} of {} fragmented chunks moved, {:.1} ms",
        if r.dry_run { " (dry run)" } else { "" },
        r.strategy,
        r.extents_before,
        r.extents_after,
        human_size(r.bytes_moved),
        r.chunks_moved,
        r.chunks,
        r.elapsed.as_secs_f64() * 1e3
    )?;
    for c in &r.chunks_skipped {
        writeln!(
            o,
            "  skipped {} at {}: {}",
            human_size(c.len),
            human_size(c.offset),
            c.reason
        )?;
    }
    for n in &r.notes {
        writeln!(o, "  note: {n}")?;
    }
    Ok(())
}

pub fn print_relocate(file: &Path, r: &budge::RelocateReport, json: bool) -> Res {
    if json {
        let mut v = relocate_json(r);
        v["operation"] = json!("defrag");
        v["file"] = json!(file);
        return emit(&v);
    }
    write_relocate(
        &mut std::io::stdout().lock(),
        &format!("defrag {}", file.display()),
        r,
    )
}

pub fn print_compact(file: &Path, done: &[budge::store::Compacted], json: bool) -> Res {
    if json {
        let regions: Vec<_> = done
            .iter()
            .map(|c| {
                let mut v = relocate_json(&c.report);
                v["region"] = json!(c.name);
                v
            })
            .collect();
        return emit(&json!({"operation": "compact", "file": file, "regions": regions}));
    }
    let mut o = std::io::stdout().lock();
    if done.is_empty() {
        writeln!(o, "compact {}: no regions with data", file.display())?;
    }
    for c in done {
        write_relocate(
            &mut o,
            &format!("compact {} region {:?}", file.display(), c.name),
            &c.report,
        )?;
    }
    Ok(())
}
