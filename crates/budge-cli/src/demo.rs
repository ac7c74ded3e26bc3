//! `budge demo`: the seed question answered on this machine. A file of known
//! data gets 64 KiB inserted in the middle twice over: once with budge's best
//! strategy and once by the naive rewrite; both are verified byte for byte
//! and timed side by side. Then the seed's own scenario: a store of eight
//! arrays where the first grows in place and the other seven budge along in
//! the file and in the address space, verified and timed.

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
        let mut out = out;
        out["store"] = store_demo(&dir, size, true)?;
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
    println!();
    store_demo(&dir, size, false)?;
    Ok(())
}

/// Eight regions of `size / 8` each; grow the first by 1 MiB and shrink it
/// back, showing that region 0 stays put, the others move by exactly 1 MiB
/// (file offset and address), and every byte survives.
fn store_demo(
    dir: &std::path::Path,
    size: u64,
    json_out: bool,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    use budge::store::{Growth, Store, StoreOptions};
    const GROW: u64 = 1 << 20;
    let path = dir.join(format!("budge-demo-{}.store", std::process::id()));
    let _cleanup = Cleanup(vec![path.clone(), {
        let mut p = path.clone().into_os_string();
        p.push(".budge-shift");
        p.into()
    }]);
    let opts = StoreOptions {
        growth: Growth::Exact,
        ..StoreOptions::default()
    };
    let each = (size / 8).max(GROW) / GROW * GROW;
    if !json_out {
        println!(
            "store: 8 arrays of {} in {}; grow the first by {} and shrink it back",
            human_size(each),
            path.display(),
            human_size(GROW)
        );
    }
    let mut st = Store::create(&path, &opts)?;
    let names: Vec<String> = (0..8).map(|i| format!("array{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        st.add(n, each, 0)?;
        pattern::fill(st.bytes_mut(n)?, 0, SEED + i as u64);
    }
    st.commit()?;
    let before = st.regions();
    let t = Instant::now();
    let grow = st.resize(&names[0], each + GROW)?;
    let t_grow = t.elapsed();
    let after = st.regions();
    // Region 0 keeps its address; each later one moves by exactly GROW.
    for (b, a) in before.iter().zip(&after).skip(1) {
        if a.address != b.address + GROW as usize || a.offset != b.offset + GROW {
            return Err(format!(
                "demo: {} did not move by exactly {}",
                a.name,
                human_size(GROW)
            )
            .into());
        }
    }
    if after[0].address != before[0].address {
        return Err("demo: the grown array moved".into());
    }
    let t = Instant::now();
    let mut expect = vec![0u8; 1 << 20];
    for (i, n) in names.iter().enumerate() {
        let b = st.bytes(n)?;
        for (k, chunk) in b[..each as usize].chunks(expect.len()).enumerate() {
            pattern::fill(
                &mut expect[..chunk.len()],
                (k << 20) as u64,
                SEED + i as u64,
            );
            if chunk != &expect[..chunk.len()] {
                return Err(format!("demo: {n} changed after the resize (chunk {k})").into());
            }
        }
    }
    if st.bytes(&names[0])?[each as usize..]
        .iter()
        .any(|&x| x != 0)
    {
        return Err("demo: the grown part is not zero".into());
    }
    let t_verify = t.elapsed();
    let t = Instant::now();
    let shrink = st.resize(&names[0], each)?;
    let t_shrink = t.elapsed();
    let strategy = grow
        .shift
        .as_ref()
        .map_or("none".into(), |s| s.strategy.to_string());
    let copied: u64 = [&grow, &shrink]
        .iter()
        .filter_map(|r| r.shift.as_ref())
        .map(|s| s.bytes_copied)
        .sum();
    if json_out {
        return Ok(json!({
            "file": path, "arrays": 8, "array_size": each, "grow": GROW,
            "strategy": strategy, "bytes_copied": copied,
            "grow_seconds": t_grow.as_secs_f64(), "shrink_seconds": t_shrink.as_secs_f64(),
            "verify_seconds": t_verify.as_secs_f64(),
            "address_of_array0_unchanged": true, "later_arrays_moved_by": GROW, "verified": true,
        }));
    }
    println!(
        "  {:<8} {:>16} {:>16}",
        "array", "address before", "address after"
    );
    for (b, a) in before.iter().zip(&after).take(3) {
        println!("  {:<8} {:>#16x} {:>#16x}", b.name, b.address, a.address);
    }
    println!(
        "  ... (array3-7 likewise moved by exactly {})",
        human_size(GROW)
    );
    println!(
        "  grow {} ({strategy}, {copied} data bytes copied), shrink back {}, both durable on return",
        ms(t_grow),
        ms(t_shrink)
    );
    println!(
        "  all 8 arrays verified after the grow in {} (the kernel dropped the moved arrays' page cache, so this re-reads them)",
        ms(t_verify)
    );
    Ok(json!({}))
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
