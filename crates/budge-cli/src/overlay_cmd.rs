//! `budge overlay ...`: the overlay subcommands. Parsing and printing only.

use std::io::{Read, Write};
use std::path::PathBuf;

use budge::overlay::{CommitOptions, CommitStrategy, Overlay, OverlayOptions, PageState, Status};
use clap::Subcommand;
use serde_json::json;

use crate::output::{emit, human_size, Progress};
use crate::{parse_size, CliResult, SpanArgs};

/// `budge overlay SUBCOMMAND`.
#[derive(Subcommand)]
pub enum OverlayCmd {
    /// Create OVERLAY over BASE (a plain file or another overlay). BASE is
    /// only read until `commit`.
    Create {
        base: PathBuf,
        overlay: PathBuf,
        /// Bytes per page: a multiple of 4 KiB and of the block size
        /// [default: the block size].
        #[arg(long, value_parser = parse_size)]
        page_size: Option<u64>,
        /// Replace a file already at OVERLAY.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write stdin (or --from FILE) at OFFSET, then flush.
    Write {
        overlay: PathBuf,
        #[arg(value_parser = parse_size)]
        offset: u64,
        /// Read the data from this file instead of stdin.
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Make LEN bytes at OFFSET read as zeros (whole pages store nothing).
    Zero {
        overlay: PathBuf,
        #[command(flatten)]
        span: SpanArgs,
    },
    /// Drop the overlay's pages in a page-aligned range: they show the base
    /// again.
    Revert {
        overlay: PathBuf,
        #[command(flatten)]
        span: SpanArgs,
    },
    /// Write LEN bytes of the merged view at OFFSET to stdout.
    Read {
        overlay: PathBuf,
        #[arg(value_parser = parse_size)]
        offset: u64,
        #[arg(value_parser = parse_size)]
        len: u64,
    },
    /// Size, pages changed, space used, base.
    Status {
        overlay: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The changed ranges (data or zero), one per line.
    Diff {
        overlay: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the merged view to OUT as a new plain file (sparse where it has
    /// holes, reflinked where the filesystem can).
    Export {
        overlay: PathBuf,
        out: PathBuf,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Merge the overlay into its base (atomic by reflink where possible,
    /// else in place with crash recovery), then empty the overlay.
    Commit {
        overlay: PathBuf,
        /// auto, reflink, copy (atomic, copies the base) or in-place.
        #[arg(long, default_value = "auto")]
        strategy: CommitStrategy,
        #[arg(long)]
        json: bool,
    },
    /// Delete the overlay (its changes are dropped; the base is untouched).
    Discard {
        overlay: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn status_json(s: &Status) -> serde_json::Value {
    json!({
        "overlay": s.path,
        "base": s.base,
        "depth": s.depth,
        "size": s.size,
        "page_size": s.page_size,
        "pages": s.pages,
        "present_pages": s.present_pages,
        "zero_pages": s.zero_pages,
        "data_bytes": s.present_pages * u64::from(s.page_size),
        "disk_bytes": s.disk_bytes,
        "generation": s.generation,
    })
}

fn print_status(s: &Status) {
    println!("overlay    {}", s.path.display());
    println!(
        "base       {}{}",
        s.base.display(),
        if s.depth > 1 {
            format!(" (an overlay; {} layers below)", s.depth)
        } else {
            String::new()
        }
    );
    println!(
        "size       {} in {} pages of {}",
        human_size(s.size),
        s.pages,
        human_size(u64::from(s.page_size))
    );
    println!(
        "changed    {} pages of data ({}), {} zero pages",
        s.present_pages,
        human_size(s.present_pages * u64::from(s.page_size)),
        s.zero_pages
    );
    println!("on disk    {}", human_size(s.disk_bytes));
    println!("generation {}", s.generation);
}

pub fn run(cmd: OverlayCmd) -> CliResult {
    match cmd {
        OverlayCmd::Create {
            base,
            overlay,
            page_size,
            force,
            json,
        } => {
            let page_size = page_size
                .map(|p| u32::try_from(p).map_err(|_| format!("--page-size {p} is too large")))
                .transpose()?;
            let o = Overlay::create(
                &base,
                &overlay,
                &OverlayOptions {
                    page_size,
                    overwrite: force,
                },
            )?;
            let s = o.status()?;
            o.close()?;
            if json {
                emit(&json!({"operation": "create", "status": status_json(&s)}))?;
            } else {
                println!(
                    "created {} over {} ({}, pages of {})",
                    overlay.display(),
                    s.base.display(),
                    human_size(s.size),
                    human_size(u64::from(s.page_size))
                );
            }
        }
        OverlayCmd::Write {
            overlay,
            offset,
            from,
            json,
        } => {
            let mut o = Overlay::open(&overlay)?;
            let mut input: Box<dyn Read> = match &from {
                Some(p) => Box::new(
                    std::fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?,
                ),
                None => Box::new(std::io::stdin().lock()),
            };
            let mut buf = vec![0u8; 8 << 20];
            let mut at = offset;
            loop {
                let n = read_full(&mut input, &mut buf)?;
                if n == 0 {
                    break;
                }
                o.write_at(at, &buf[..n])?;
                at += n as u64;
            }
            o.flush()?;
            let written = at - offset;
            if json {
                emit(
                    &json!({"operation": "write", "overlay": overlay, "offset": offset, "bytes": written, "generation": o.generation()}),
                )?;
            } else {
                println!(
                    "wrote {} at {} (flushed, generation {})",
                    human_size(written),
                    offset,
                    o.generation()
                );
            }
            o.close()?;
        }
        OverlayCmd::Zero { overlay, span } => change(&overlay, &span, false)?,
        OverlayCmd::Revert { overlay, span } => change(&overlay, &span, true)?,
        OverlayCmd::Read {
            overlay,
            offset,
            len,
        } => {
            let o = Overlay::open_read_only(&overlay)?;
            let end = offset.checked_add(len).ok_or("offset + length overflows")?;
            let mut out = std::io::stdout().lock();
            let mut buf = vec![0u8; 8 << 20];
            let mut at = offset;
            while at < end {
                let n = (end - at).min(buf.len() as u64) as usize;
                o.read_at(at, &mut buf[..n])?;
                match out.write_all(&buf[..n]) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    r => r?,
                }
                at += n as u64;
            }
            out.flush()?;
        }
        OverlayCmd::Status { overlay, json } => {
            // Read-write when possible: that finishes an interrupted commit.
            let o = match Overlay::open(&overlay) {
                Err(e) if e.kind() == budge::ErrorKind::Locked => {
                    Overlay::open_read_only(&overlay)?
                }
                r => r?,
            };
            let s = o.status()?;
            if json {
                emit(&status_json(&s))?;
            } else {
                print_status(&s);
            }
        }
        OverlayCmd::Diff { overlay, json } => {
            let o = Overlay::open_read_only(&overlay)?;
            let changes = o.changes();
            if json {
                let list: Vec<_> = changes
                    .iter()
                    .map(|c| json!({"offset": c.offset, "len": c.len, "kind": c.state.name()}))
                    .collect();
                emit(&json!({"overlay": overlay, "changes": list}))?;
            } else {
                let mut out = std::io::stdout().lock();
                for c in &changes {
                    let kind = match c.state {
                        PageState::Zero => "zero",
                        _ => "data",
                    };
                    match writeln!(out, "{:>14} {:>14} {kind}", c.offset, c.len) {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        r => r?,
                    }
                }
            }
        }
        OverlayCmd::Export {
            overlay,
            out,
            force,
            json,
        } => {
            let o = Overlay::open_read_only(&overlay)?;
            let bar = Progress::new("export");
            let cb = bar.callback();
            let r = o.export(&out, force, Some(&cb));
            bar.finish();
            let r = r?;
            if json {
                emit(
                    &json!({"operation": "export", "overlay": overlay, "out": out,
                    "bytes_cloned": r.bytes_cloned, "bytes_copied": r.bytes_copied, "hole_bytes": r.hole_bytes}),
                )?;
            } else {
                println!(
                    "exported {} to {}: {} reflinked, {} copied, {} left as holes",
                    overlay.display(),
                    out.display(),
                    human_size(r.bytes_cloned),
                    human_size(r.bytes_copied),
                    human_size(r.hole_bytes)
                );
            }
        }
        OverlayCmd::Commit {
            overlay,
            strategy,
            json,
        } => {
            let mut o = Overlay::open(&overlay)?;
            let bar = Progress::new("commit");
            let cb = bar.callback();
            let r = o.commit(&CommitOptions {
                strategy,
                progress: Some(&cb),
            });
            bar.finish();
            let r = r?;
            let atomic = r.strategy != CommitStrategy::InPlace;
            if json {
                emit(
                    &json!({"operation": "commit", "overlay": overlay, "base": o.base_path(),
                    "strategy": r.strategy.name(), "atomic": atomic, "pages": r.pages,
                    "bytes_cloned": r.bytes_cloned, "bytes_copied": r.bytes_copied,
                    "bytes_zeroed": r.bytes_zeroed}),
                )?;
            } else {
                println!(
                    "committed {} pages into {} by {} ({}): {} reflinked, {} copied, {} zeroed",
                    r.pages,
                    o.base_path().display(),
                    r.strategy,
                    if atomic {
                        "atomic: a new file renamed over the base"
                    } else {
                        "in place, resumed on the next open if interrupted"
                    },
                    human_size(r.bytes_cloned),
                    human_size(r.bytes_copied),
                    human_size(r.bytes_zeroed)
                );
            }
            o.close()?;
        }
        OverlayCmd::Discard { overlay, json } => {
            Overlay::discard(&overlay)?;
            if json {
                emit(&json!({"operation": "discard", "overlay": overlay}))?;
            } else {
                println!("discarded {}", overlay.display());
            }
        }
    }
    Ok(())
}

/// `zero` or `revert` a range, flushed.
fn change(overlay: &PathBuf, span: &SpanArgs, revert: bool) -> CliResult {
    let SpanArgs { offset, len, json } = *span;
    let mut o = Overlay::open(overlay)?;
    if revert {
        o.revert(offset, len)?;
    } else {
        o.zero(offset, len)?;
    }
    o.flush()?;
    let op = if revert { "revert" } else { "zero" };
    if json {
        emit(&json!({"operation": op, "overlay": overlay, "offset": offset, "len": len}))?;
    } else if revert {
        println!("reverted {} at {offset} to the base", human_size(len));
    } else {
        println!("zeroed {} at {offset}", human_size(len));
    }
    o.close()?;
    Ok(())
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
