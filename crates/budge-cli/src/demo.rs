//! `budge demo`: the seed question answered on this machine. A file of known
//! data gets 64 KiB inserted in the middle twice over: once with budge's best
//! strategy and once by the naive rewrite; both are verified byte for byte
//! and timed side by side.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use budge::range::align_down;
use budge::ShiftOptions;
use serde_json::json;

use crate::output::human_size;
use crate::{baseline, pattern};

const GAP: u64 = 64 << 10;
const SEED: u64 = 0x00b0_d6e5;

fn create(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

pub fn run(
    dir: Option<PathBuf>,
    size: u64,
    json_out: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new()
                .prefix(".budge-demo-")
                .tempdir_in(".")?;
            tmp.path().to_path_buf()
        }
    };
    let caps = budge::probe(&dir)?;
    let say = |s: String| {
        if !json_out {
            eprintln!("{s}");
        }
    };
    say(format!(
        "budge demo in {} ({}, block size {}): insert {} into the middle of a {} file",
        dir.display(),
        caps.fs.kind.name(),
        caps.block_size(),
        human_size(GAP),
        human_size(size)
    ));
    let best_path = dir.join(format!("budge-demo-{}-best.bin", std::process::id()));
    let naive_path = dir.join(format!("budge-demo-{}-naive.bin", std::process::id()));
    let _cleanup = Cleanup(vec![best_path.clone(), naive_path.clone()]);
    let offset = align_down(size / 2, caps.block_size().max(4096));

    say(format!(
        "writing two {} files of known data...",
        human_size(size)
    ));
    let best = create(&best_path)?;
    pattern::write_file(&best, size, SEED)?;
    let naive = create(&naive_path)?;
    pattern::write_file(&naive, size, SEED)?;

    let t = Instant::now();
    let report = budge::insert(
        &best,
        offset,
        GAP,
        &ShiftOptions {
            sync: true,
            ..ShiftOptions::default()
        },
    )
    .map_err(|e| e.with_path(&best_path))?;
    let t_best = t.elapsed();

    let t = Instant::now();
    baseline::naive_insert(&naive, offset, GAP)?;
    let t_naive = t.elapsed();
    let naive_copied = size - offset;

    say("verifying both files byte for byte...".into());
    for (name, f) in [("budge", &best), ("naive", &naive)] {
        if let Some(bad) = pattern::verify_insert(f, size, offset, GAP, SEED)? {
            return Err(format!("demo: the {name} result is wrong at byte {bad}").into());
        }
    }
    let speedup = t_naive.as_secs_f64() / t_best.as_secs_f64().max(1e-9);
    if json_out {
        let out = json!({
            "dir": dir, "filesystem": caps.fs.kind.name(), "file_size": size, "offset": offset, "inserted": GAP,
            "budge": {"strategy": report.strategy.name(), "seconds": t_best.as_secs_f64(), "bytes_copied": report.bytes_copied,
                       "fallbacks": report.fallbacks.iter().map(|(s, w)| json!({"strategy": s.name(), "reason": w})).collect::<Vec<_>>()},
            "naive": {"seconds": t_naive.as_secs_f64(), "bytes_copied": naive_copied},
            "speedup": speedup, "verified": true,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<22} {:>12} {:>18} {:>9}",
        "method", "time", "data bytes copied", "speed-up"
    );
    println!(
        "{:<22} {:>12} {:>18} {:>8.0}x",
        format!("budge ({})", report.strategy),
        ms(t_best),
        report.bytes_copied,
        speedup
    );
    println!(
        "{:<22} {:>12} {:>18} {:>9}",
        "naive rewrite",
        ms(t_naive),
        naive_copied,
        "1x"
    );
    for (s, why) in &report.fallbacks {
        println!("(budge skipped {s}: {why})");
    }
    println!("both results verified byte for byte; times include fsync");
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Removes the demo files however the demo ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
