//! Tables, targets and JSON of `budge store bench`.

use serde_json::{json, Value};

use budge::FsKind;

use super::super::report::{
    bench_json, bytes, opt_bytes, opt_secs, print_intro, ratio, secs, targets_json, times, Target,
    Verdict,
};
use super::super::sysinfo::Machine;
use super::phases::{Amortized, FsRun, Pair, Sample, Series};
use super::{Config, GIB};

fn sum(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? + b?)
}

/// The median of `a[i] / b[i]`: the samples were taken in pairs (interleaved
/// step by step), so this cancels load that hit both of a pair.
fn paired(a: &Series, b: &Series) -> Option<f64> {
    let v: Vec<f64> = a
        .samples
        .iter()
        .zip(&b.samples)
        .filter(|(_, y)| y.secs > 0.0)
        .map(|(x, y)| x.secs / y.secs)
        .collect();
    super::super::measure::median(v)
}

pub fn print_header(m: &Machine, cfg: &Config) {
    print_intro("budge store bench", m, "");
    println!(
        "scenario: a store of {} regions, {} of data in all (scaled where the filesystem lacks room), Growth::Exact (the amortized part: the default Growth::Amortized); region 0 grows by {} {} times, then shrinks back; every resize is durable on return (fdatasyncs included); mapping advice: {}",
        cfg.regions,
        bytes(cfg.size),
        bytes(cfg.step),
        cfg.steps,
        cfg.advice.name()
    );
    println!(
        "warm pairs: {}, naive pairs: {}, extent counts: {:?} in a {} store ({} pairs each), updates per case: {}, time budget per series: {:.0} s{}",
        cfg.warm_runs,
        cfg.naive_runs,
        cfg.extent_counts,
        bytes(cfg.extent_store_size),
        cfg.extent_runs,
        cfg.updates,
        cfg.budget,
        if cfg.quick { " (--quick)" } else { "" }
    );
}

fn row(name: &str, op: &str, s: &Series, bare: Option<&Series>, naive: Option<&Series>) {
    if s.n() == 0 {
        println!(
            "  {name:<18} {op:<6} {}",
            s.note.as_deref().unwrap_or("not run")
        );
        return;
    }
    println!(
        "  {name:<18} {op:<6} {:>4} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>9}",
        s.n(),
        opt_secs(s.median()),
        opt_secs(s.p99()),
        opt_secs(s.min()),
        opt_secs(s.max()),
        opt_bytes(s.med_w()),
        opt_bytes(s.med_r()),
        times(ratio(s.median(), bare.and_then(Series::median))),
        times(ratio(naive.and_then(Series::median), s.median())),
    );
}

fn rows(name: &str, p: &Pair, bare: Option<&Pair>, naive: Option<&Pair>) {
    row(
        name,
        "grow",
        &p.grow,
        bare.map(|b| &b.grow),
        naive.map(|n| &n.grow),
    );
    if p.shrink.n() > 0 || p.grow.n() > 0 {
        row(
            name,
            "shrink",
            &p.shrink,
            bare.map(|b| &b.shrink),
            naive.map(|n| &n.shrink),
        );
    }
}

fn touch_row(what: &str, s: &Series) {
    if s.n() == 0 {
        return;
    }
    println!(
        "  {what:<52} {:>4} {:>9} {:>9} {:>10} {:>10}",
        s.n(),
        opt_secs(s.median()),
        opt_secs(s.max()),
        opt_bytes(s.med_r()),
        opt_bytes(s.med_w())
    );
}

pub fn print_fs(r: &FsRun, cfg: &Config) {
    println!();
    println!(
        "== {} on {} ({}, {}-byte blocks, region alignment {}; took {:.0} s) ==",
        r.dir.display(),
        r.fs,
        r.device.as_deref().unwrap_or("no block device"),
        r.block,
        r.align,
        r.secs
    );
    if let Some(e) = &r.error {
        println!("ERROR: {e}");
    }
    if r.region_len == 0 {
        return;
    }
    println!(
        "store: {} file, {} regions of {}{}",
        bytes(r.file_size),
        r.regions,
        bytes(r.region_len),
        r.scaled
            .as_deref()
            .map_or(String::new(), |s| format!(" ({s})"))
    );
    if let Some(s) = &r.strategy {
        println!(
            "budge shifts with: {s}; first shift: journal of {} extents, {} of page cache dropped (re-read on next touch), {} copied",
            r.journal.unwrap_or(0),
            bytes(r.tail_reread.unwrap_or(0)),
            bytes(r.bytes_copied.unwrap_or(0))
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    let naive = (r.naive.grow.n() > 0).then_some(&r.naive);
    let seq_bare = (r.seq_bare_mapped.grow.n() > 0).then_some(&r.seq_bare_mapped);
    let warm_bare = (r.warm_bare_mapped.grow.n() > 0).then_some(&r.warm_bare_mapped);
    println!();
    println!(
        "resize latency             op        n    median       p99       min       max  dev W med  dev R med  vs bare  naive/x"
    );
    if r.seq_budge.grow.n() > 0 || r.noshift.grow.n() > 0 {
        println!(
            "back to back: {} grows of region 0 by {}, then {} shrinks (after the first, nothing past region 0 is cached)",
            r.steps_done.max(r.noshift.grow.n()),
            bytes(cfg.step),
            r.steps_done.max(r.noshift.grow.n())
        );
        if r.seq_budge.grow.n() > 0 {
            let [h0, h1, h2] = &r.seq_budge_half;
            if r.seq_bare.grow.n() > 0 {
                println!(" series 1, beside a plain file never mapped:");
                rows("budge", h0, Some(&r.seq_bare), naive);
                rows("bare, unmapped", &r.seq_bare, None, naive);
                rows("floor, unmapped", &r.seq_floor, Some(&r.seq_bare), naive);
                println!(" series 2, beside a plain file mapped and touched like the store:");
                rows("budge", h1, seq_bare, naive);
                rows("bare, mapped", &r.seq_bare_mapped, None, naive);
                rows("floor, mapped", &r.seq_floor_mapped, seq_bare, naive);
                println!(" series 3, beside a mapped plain file whose tail mapping is replaced after each call:");
                rows("budge", h2, Some(&r.seq_bare_remap), naive);
                rows("bare, mapped+remap", &r.seq_bare_remap, None, naive);
                println!(" all series:");
            }
            rows("budge", &r.seq_budge, None, naive);
        }
        if r.noshift.grow.n() > 0 {
            rows("no-shift", &r.noshift, seq_bare, naive);
        }
    }
    if r.warm_budge.grow.n() > 0 || naive.is_some() {
        println!("warm: the whole store (file) read into the page cache before each call");
        if r.warm_budge.grow.n() > 0 {
            rows("budge", &r.warm_budge, warm_bare, naive);
            rows("bare, mapped", &r.warm_bare_mapped, None, naive);
            rows("bare, unmapped", &r.warm_bare, warm_bare, naive);
        }
        if naive.is_some() {
            rows("naive rewrite", &r.naive, warm_bare, None);
        }
    }
    println!("(vs bare: divided by the bare row of the same series (warm: \"bare, mapped\"). bare = fallocate(INSERT/COLLAPSE_RANGE) + fsync on a plain file of the same layout, mapped and touched through the mapping like the store, or never mapped (its cache filled with read); mapped+remap = mapped, and after each call the mapping from the shift point to EOF is replaced (timed), which frees the page tables the kernel emptied; floor = 4 KiB header pwrite + fdatasync + fallocate + fdatasync on it, the store's protocol alone; no-shift = one file + reservation per region, grow = ftruncate + map the new part + fdatasync; naive = rewrite everything after region 0 through the page cache, fsync)");

    if r.touch_warm.n() > 0 || r.noshift_touch_after.n() > 0 {
        println!();
        println!(
            "re-touch: one byte per page of every region through the mapping    n    median       max  dev R med  dev W med"
        );
        touch_row(
            "store, freshly written (cached, not yet mapped)",
            &r.touch_first,
        );
        touch_row(
            "store, cached and mapped (before any resize)",
            &r.touch_warm,
        );
        touch_row(
            "store, after a resize (cache past region 0 dropped)",
            &r.touch_after,
        );
        touch_row(
            "no-shift files, freshly written (not yet mapped)",
            &r.noshift_touch_first,
        );
        touch_row("no-shift files, after its grows", &r.noshift_touch_after);
        let pmd = |p: Option<(u64, u64)>| {
            p.map_or("?".into(), |(p, m)| format!("{} of {}", bytes(p), bytes(m)))
        };
        if r.pmd_warm.is_some() || r.pmd_after.is_some() {
            println!(
                "  store mapping, mapped with 2 MiB PMDs (FilePmdMapped): before any resize {}; after a resize and the re-touch {}",
                pmd(r.pmd_warm),
                pmd(r.pmd_after)
            );
        }
    }

    println!();
    println!("ratios (medians):");
    let q = |a: Option<f64>, b: Option<f64>| times(ratio(a, b));
    if seq_bare.is_some() {
        let [h0, h1, h2] = &r.seq_budge_half;
        let pq = |a: &Series, b: &Series| {
            format!("{} ({})", times(paired(a, b)), q(a.median(), b.median()))
        };
        println!("  each: median of the per-pair ratios (ratio of the medians)");
        for (what, b, x, wb, wx) in [
            (
                "file never mapped",
                h0,
                &r.seq_bare,
                Some(&r.warm_budge),
                Some(&r.warm_bare),
            ),
            (
                "file mapped like the store",
                h1,
                &r.seq_bare_mapped,
                Some(&r.warm_budge),
                Some(&r.warm_bare_mapped),
            ),
            (
                "file mapped, tail remapped after each call",
                h2,
                &r.seq_bare_remap,
                None,
                None,
            ),
        ] {
            let warm = match (wb, wx) {
                (Some(wb), Some(wx)) => format!(
                    "; warm grow {}, shrink {}",
                    pq(&wb.grow, &wx.grow),
                    pq(&wb.shrink, &wx.shrink)
                ),
                _ => String::new(),
            };
            println!(
                "  budge / (bare fallocate + fsync), {what}: back to back grow {}, shrink {}{warm}",
                pq(&b.grow, &x.grow),
                pq(&b.shrink, &x.shrink),
            );
        }
        println!(
            "  budge / floor (the protocol alone), back to back: file mapped grow {}, shrink {}; never mapped grow {}, shrink {}",
            pq(&h1.grow, &r.seq_floor_mapped.grow),
            pq(&h1.shrink, &r.seq_floor_mapped.shrink),
            pq(&h0.grow, &r.seq_floor.grow),
            pq(&h0.shrink, &r.seq_floor.shrink),
        );
    }
    if naive.is_some() {
        println!(
            "  naive / budge: warm grow {}, shrink {}; back to back grow {}, shrink {}",
            q(r.naive.grow.median(), r.warm_budge.grow.median()),
            q(r.naive.shrink.median(), r.warm_budge.shrink.median()),
            q(r.naive.grow.median(), r.seq_budge.grow.median()),
            q(r.naive.shrink.median(), r.seq_budge.shrink.median()),
        );
        println!(
            "  naive / (budge warm + re-touch of the store): grow {}, shrink {}  (budge {} + re-touch {} = {})",
            q(
                r.naive.grow.median(),
                sum(r.warm_budge.grow.median(), r.touch_after.median())
            ),
            q(
                r.naive.shrink.median(),
                sum(r.warm_budge.shrink.median(), r.touch_after.median())
            ),
            opt_secs(r.warm_budge.grow.median()),
            opt_secs(r.touch_after.median()),
            opt_secs(sum(r.warm_budge.grow.median(), r.touch_after.median())),
        );
    }
    if r.noshift.grow.n() > 0 && r.seq_budge.grow.n() > 0 {
        let budge_total = sum(r.seq_budge.grow.median(), r.touch_after.median());
        let ns_total = sum(r.noshift.grow.median(), r.noshift_touch_after.median());
        println!(
            "  budge / no-shift: grow alone {}, grow + re-touch {} ({} vs {})",
            q(r.seq_budge.grow.median(), r.noshift.grow.median()),
            q(budge_total, ns_total),
            opt_secs(budge_total),
            opt_secs(ns_total),
        );
    }

    if let Some(a) = &r.amortized {
        print_amortized(r, a, cfg);
    }

    if !r.extents.is_empty() || r.extents_note.is_some() {
        println!();
        if r.extents.is_empty() {
            println!("extent count after region 0:");
        } else {
            println!(
                "extent count after region 0 ({} store; page cache dropped before each call; medians of {} pairs):",
                bytes(r.extent_store_len),
                cfg.extent_runs
            );
        }
        if let Some(n) = &r.extents_note {
            println!("  {n}");
        }
        if !r.extents.is_empty() {
            println!(
                "  target  extents  journal   budge grow    bare grow    ratio  budge shrink  bare shrink    ratio  budge dev W"
            );
        }
        for e in &r.extents {
            if let Some(n) = &e.note {
                println!("  {:>6}  {n}", e.target);
                continue;
            }
            println!(
                "  {:>6} {:>8} {:>8} {:>12} {:>12} {:>8} {:>13} {:>12} {:>8} {:>12}",
                e.target,
                e.extents.map_or("?".into(), |x| x.to_string()),
                e.journal.map_or("-".into(), |x| x.to_string()),
                opt_secs(e.budge.grow.median()),
                opt_secs(e.bare.grow.median()),
                q(e.budge.grow.median(), e.bare.grow.median()),
                opt_secs(e.budge.shrink.median()),
                opt_secs(e.bare.shrink.median()),
                q(e.budge.shrink.median(), e.bare.shrink.median()),
                opt_bytes(e.budge.grow.med_w()),
            );
        }
    }

    if !r.updates.is_empty() || r.updates_note.is_some() {
        println!();
        if r.updates.is_empty() {
            println!("random one-byte stores through the mapping:");
        } else {
            println!(
                "random one-byte stores through the mapping, each followed by commit (region 1, {}):",
                bytes(r.update_region_len)
            );
        }
        if let Some(n) = &r.updates_note {
            println!("  {n}");
        }
        if !r.updates.is_empty() {
            println!("  cache before    advice      n  dev W med  dev W max  dev R med  time med");
        }
        for u in &r.updates {
            println!(
                "  {:<14} {:<8} {:>4} {:>10} {:>10} {:>10} {:>9}",
                u.fill.name(),
                u.advice.name(),
                u.series.n(),
                opt_bytes(u.series.med_w()),
                u.series.max_w().map_or("n/a".into(), bytes),
                opt_bytes(u.series.med_r()),
                opt_secs(u.series.median()),
            );
        }
    }
}

fn print_amortized(r: &FsRun, a: &Amortized, cfg: &Config) {
    println!();
    println!(
        "growth policy Growth::Amortized (the default): the same {} appends of {} to the {} region, then back; warm (every region cached before each call; re-read, timed, after each resize that shifted); naive = the warm rewrite above",
        a.grows.n(),
        bytes(cfg.step),
        bytes(r.region_len)
    );
    println!(
        "  op        n  shifted    median       p99       max      mean   dev W med  dev W all  naive/x med  naive/x mean"
    );
    let naive = |grow: bool| {
        if grow {
            &r.naive.grow
        } else {
            &r.naive.shrink
        }
    };
    for (op, s, flags, grow) in [
        ("grow", &a.grows, &a.grow_shifted, true),
        ("shrink", &a.shrinks, &a.shrink_shifted, false),
    ] {
        if s.n() == 0 {
            continue;
        }
        let n = naive(grow);
        println!(
            "  {op:<6} {:>4} {:>8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} {:>12} {:>13}",
            s.n(),
            flags.iter().filter(|f| **f).count(),
            opt_secs(s.median()),
            opt_secs(s.p99()),
            opt_secs(s.max()),
            opt_secs(s.mean()),
            opt_bytes(s.med_w()),
            s.sum_w().map_or("n/a".into(), bytes),
            times(ratio(n.median(), s.median())),
            times(ratio(n.mean(), s.mean())),
        );
        let shifting = s.only(flags, true);
        let still = s.only(flags, false);
        if shifting.n() > 0 {
            println!(
                "    the {} that shifted: {} (dev W {} in all); the {} that did not: median {}, max {}",
                shifting.n(),
                shifting
                    .samples
                    .iter()
                    .map(|x| secs(x.secs))
                    .collect::<Vec<_>>()
                    .join(", "),
                shifting.sum_w().map_or("n/a".into(), bytes),
                still.n(),
                opt_secs(still.median()),
                opt_secs(still.max()),
            );
        }
    }
    if a.retouch.n() > 0 {
        let all = a.grows.total() + a.shrinks.total();
        let n = (a.grows.n() + a.shrinks.n()).max(1) as f64;
        let with = (all + a.retouch.total()) / n;
        let naive_mean = sum(r.naive.grow.mean(), r.naive.shrink.mean()).map(|x| x / 2.0);
        println!(
            "  re-touch after each shift: {} x {} ({} read); mean per resize over all {}: {} alone, {} with the re-touch; naive mean / that: {}, {}",
            a.retouch.n(),
            opt_secs(a.retouch.median()),
            opt_bytes(a.retouch.med_r()),
            n as usize,
            secs(all / n),
            secs(with),
            times(ratio(naive_mean, Some(all / n))),
            times(ratio(naive_mean, Some(with))),
        );
    }
    if let Some((p, m)) = a.pmd {
        println!(
            "  store mapping with 2 MiB PMDs after the first touch: {} of {}",
            bytes(p),
            bytes(m)
        );
    }
    println!(
        "  capacity after the grows {}, after the shrinks {} (Growth::Exact: {} shifts each way; an empty region appended to {} times shifts {} times, and {} times shrinking back to empty: computed with capacity_for)",
        bytes(a.capacity_after_grows),
        bytes(a.capacity_after_shrinks),
        if r.steps_done > 0 { r.steps_done } else { cfg.steps },
        cfg.steps,
        a.from_empty_grow_shifts,
        a.from_empty_shrink_shifts
    );
}

pub fn targets(results: &[FsRun], _cfg: &Config) -> Vec<Target> {
    let mut out = Vec::new();
    for r in results.iter().filter(|r| r.error.is_none()) {
        let fs = r.fs.clone();
        let xfs_ext4 = matches!(r.kind, Some(FsKind::Xfs | FsKind::Ext4));
        if xfs_ext4 && r.seq_bare.grow.n() > 0 {
            for (what, b, x) in [
                (
                    "back to back, bare file never mapped",
                    &r.seq_budge_half[0],
                    &r.seq_bare,
                ),
                ("warm, bare file never mapped", &r.warm_budge, &r.warm_bare),
                (
                    "back to back, bare file mapped like the store",
                    &r.seq_budge_half[1],
                    &r.seq_bare_mapped,
                ),
                (
                    "warm, bare file mapped like the store",
                    &r.warm_budge,
                    &r.warm_bare_mapped,
                ),
            ] {
                let g = paired(&b.grow, &x.grow);
                let s = paired(&b.shrink, &x.shrink);
                let ok = [g, s].iter().all(|v| v.is_some_and(|v| v <= 2.0));
                let have = g.is_some() && s.is_some();
                out.push(Target {
                    verdict: Verdict::if_applies(have, ok),
                    fs: fs.clone(),
                    what: format!("each resize within 2x of bare fallocate + fsync ({what})"),
                    detail: format!(
                        "median of paired ratios: grow {}, shrink {} (n={}); medians: grow {} vs {}, shrink {} vs {}",
                        times(g),
                        times(s),
                        b.grow.n().min(x.grow.n()),
                        opt_secs(b.grow.median()),
                        opt_secs(x.grow.median()),
                        opt_secs(b.shrink.median()),
                        opt_secs(x.shrink.median()),
                    ),
                });
            }
        }
        if r.naive.grow.n() > 0 && r.warm_budge.grow.n() > 0 {
            let g = ratio(r.naive.grow.median(), r.warm_budge.grow.median());
            let s = ratio(r.naive.shrink.median(), r.warm_budge.shrink.median());
            let at4 = r.region_len * r.regions as u64 >= 4 * GIB;
            let ok = [g, s].iter().all(|v| v.is_some_and(|v| v >= 300.0));
            let touch = sum(r.warm_budge.grow.median(), r.touch_after.median());
            out.push(Target {
                verdict: Verdict::if_applies(at4, ok),
                fs: fs.clone(),
                what: ">= 300x faster than the naive rewrite at 4 GiB (warm, fsync included)"
                    .into(),
                detail: format!(
                    "{}grow {} ({} vs {}), shrink {} ({} vs {}); with the re-touch of the store after it ({}): grow {}",
                    if at4 {
                        String::new()
                    } else {
                        format!("store is {}, not 4 GiB: ", bytes(r.region_len * r.regions as u64))
                    },
                    times(g),
                    opt_secs(r.naive.grow.median()),
                    opt_secs(r.warm_budge.grow.median()),
                    times(s),
                    opt_secs(r.naive.shrink.median()),
                    opt_secs(r.warm_budge.shrink.median()),
                    opt_secs(r.touch_after.median()),
                    times(ratio(r.naive.grow.median(), touch)),
                ),
            });
        }
        if let Some(a) = r.amortized.as_ref().filter(|a| a.grows.n() > 0) {
            if r.naive.grow.n() > 0 {
                let at4 = r.region_len * r.regions as u64 >= 4 * GIB;
                for (how, f) in [
                    (
                        "ratio of medians",
                        Series::median as fn(&Series) -> Option<f64>,
                    ),
                    ("ratio of means", Series::mean),
                ] {
                    let g = ratio(f(&r.naive.grow), f(&a.grows));
                    let s = ratio(f(&r.naive.shrink), f(&a.shrinks));
                    let ok = [g, s].iter().all(|v| v.is_some_and(|v| v >= 300.0));
                    out.push(Target {
                        verdict: Verdict::if_applies(at4, ok),
                        fs: fs.clone(),
                        what: format!(
                            ">= 300x faster than the naive rewrite at 4 GiB (warm, fsync included), default Growth::Amortized, {how}"
                        ),
                        detail: format!(
                            "grow {} ({} vs {}; {} of {} shifted), shrink {} ({} vs {}; {} shifted); re-touch after each shift {}",
                            times(g),
                            opt_secs(f(&r.naive.grow)),
                            opt_secs(f(&a.grows)),
                            a.grow_shifts,
                            a.grows.n(),
                            times(s),
                            opt_secs(f(&r.naive.shrink)),
                            opt_secs(f(&a.shrinks)),
                            a.shrink_shifts,
                            opt_secs(a.retouch.median()),
                        ),
                    });
                }
            }
        }
    }
    out
}

fn sample_json(s: &Sample) -> Value {
    json!({"seconds": s.secs, "dev_write_bytes": s.dev_w, "dev_read_bytes": s.dev_r})
}

fn series_json(s: &Series) -> Value {
    json!({
        "n": s.n(),
        "note": s.note,
        "median_seconds": s.median(),
        "p99_seconds": s.p99(),
        "min_seconds": s.min(),
        "max_seconds": s.max(),
        "mean_seconds": s.mean(),
        "median_dev_write_bytes": s.med_w(),
        "median_dev_read_bytes": s.med_r(),
        "samples": s.samples.iter().map(sample_json).collect::<Vec<_>>(),
    })
}

fn pair_json(p: &Pair) -> Value {
    json!({"grow": series_json(&p.grow), "shrink": series_json(&p.shrink)})
}

pub fn json(m: &Machine, cfg: &Config, results: &[FsRun], targets: &[Target], secs: f64) -> Value {
    let fs: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "dir": r.dir,
                "filesystem": r.fs,
                "device": r.device,
                "block_size": r.block,
                "align": r.align,
                "error": r.error,
                "seconds": r.secs,
                "regions": r.regions,
                "region_len": r.region_len,
                "file_size": r.file_size,
                "requested_size": r.requested,
                "scaled": r.scaled,
                "write_seconds": r.write_secs,
                "budge_strategy": r.strategy,
                "journal_extents": r.journal,
                "tail_reread_bytes": r.tail_reread,
                "bytes_copied": r.bytes_copied,
                "steps_done": r.steps_done,
                "notes": r.notes,
                "back_to_back": {
                    "budge": pair_json(&r.seq_budge),
                    "budge_beside_unmapped": pair_json(&r.seq_budge_half[0]),
                    "budge_beside_mapped": pair_json(&r.seq_budge_half[1]),
                    "budge_beside_mapped_remap": pair_json(&r.seq_budge_half[2]),
                    "bare_fallocate_fsync_unmapped": pair_json(&r.seq_bare),
                    "floor_unmapped": pair_json(&r.seq_floor),
                    "bare_fallocate_fsync_mapped": pair_json(&r.seq_bare_mapped),
                    "floor_mapped": pair_json(&r.seq_floor_mapped),
                    "bare_fallocate_fsync_mapped_remap": pair_json(&r.seq_bare_remap),
                    "noshift": pair_json(&r.noshift),
                },
                "warm": {
                    "budge": pair_json(&r.warm_budge),
                    "bare_fallocate_fsync_unmapped": pair_json(&r.warm_bare),
                    "bare_fallocate_fsync_mapped": pair_json(&r.warm_bare_mapped),
                    "naive": pair_json(&r.naive),
                },
                "touch": {
                    "store_first": series_json(&r.touch_first),
                    "store_warm": series_json(&r.touch_warm),
                    "store_after_resize": series_json(&r.touch_after),
                    "noshift_first": series_json(&r.noshift_touch_first),
                    "noshift_after_grows": series_json(&r.noshift_touch_after),
                },
                "pmd_mapped_bytes": {
                    "before_any_resize": r.pmd_warm,
                    "after_resize_and_retouch": r.pmd_after,
                },
                "amortized": r.amortized.as_ref().map(|a| json!({
                    "grows": series_json(&a.grows),
                    "shrinks": series_json(&a.shrinks),
                    "grow_shifted": a.grow_shifted,
                    "shrink_shifted": a.shrink_shifted,
                    "retouch_after_shift": series_json(&a.retouch),
                    "pmd_mapped_bytes": a.pmd,
                    "grow_shifts": a.grow_shifts,
                    "shrink_shifts": a.shrink_shifts,
                    "capacity_after_grows": a.capacity_after_grows,
                    "capacity_after_shrinks": a.capacity_after_shrinks,
                    "from_empty_grow_shifts_computed": a.from_empty_grow_shifts,
                    "from_empty_shrink_shifts_computed": a.from_empty_shrink_shifts,
                })),
                "extent_sweep": {
                    "store_data_bytes": r.extent_store_len,
                    "note": r.extents_note,
                    "rows": r.extents.iter().map(|e| json!({
                        "target": e.target,
                        "extents": e.extents,
                        "journal_entries": e.journal,
                        "note": e.note,
                        "budge": pair_json(&e.budge),
                        "bare_fallocate_fsync": pair_json(&e.bare),
                    })).collect::<Vec<_>>(),
                },
                "updates": {
                    "note": r.updates_note,
                    "region_len": r.update_region_len,
                    "rows": r.updates.iter().map(|u| json!({
                        "cache_before": u.fill.name(),
                        "advice": u.advice.name(),
                        "series": series_json(&u.series),
                        "max_dev_write_bytes": u.series.max_w(),
                    })).collect::<Vec<_>>(),
                },
            })
        })
        .collect();
    let config = json!({
        "size": cfg.size, "regions": cfg.regions, "steps": cfg.steps, "step": cfg.step,
        "warm_runs": cfg.warm_runs, "naive_runs": cfg.naive_runs,
        "extent_counts": cfg.extent_counts, "extent_store_size": cfg.extent_store_size,
        "extent_runs": cfg.extent_runs, "updates": cfg.updates, "budget_seconds": cfg.budget,
        "parts": cfg.parts.iter().map(|p| format!("{p:?}").to_lowercase()).collect::<Vec<_>>(),
        "quick": cfg.quick,
        "advice": cfg.advice.name(),
    });
    let mut v = bench_json(m, config, fs, secs);
    v["targets"] = targets_json(targets);
    v
}
