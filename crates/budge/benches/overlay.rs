//! Overlays: `budge::overlay` side by side with qcow2 overlays driven by
//! `qemu-io`/`qemu-img` (qemu-utils) and with the raw `pwrite`/`pread`
//! floor, all in the same run (issue: overlays, "side by side with qcow2").
//!
//! ```text
//! cargo bench -p budge --bench overlay -- [--size 1G] [--ops 10000]
//!     [--runs 5] [LABEL:DIR | DIR]...
//! ```
//!
//! Without directories it reads `BUDGE_TEST_FS` (`label:dir,label:dir`).
//! Files go into `DIR/.budge-ovbench-PID` (removed at the end).
//!
//! **Setup, per filesystem.** A base of `--size` bytes of seeded
//! pseudo-random data, written and fsynced. One fixed seeded list of
//! `--ops` random page indices to write (write `i` fills its 4 KiB page with
//! the byte `pattern(i)`, what `qemu-io write -P` writes; a page written
//! twice keeps the last) and one to read. The same lists for every
//! implementation and run.
//!
//! **Runs.** Each run makes fresh overlays over the one base and runs the
//! phases below; within a phase every implementation runs once, in an order
//! rotated from run to run. `syncfs` runs (untimed) before every timed step
//! so no step pays for another's writeback.
//!
//! **Page cache: warm, stated, not dropped** (dropping caches is global and
//! this machine is shared). Before each run the whole base is read
//! (untimed), so every read of a base page is a page-cache hit for every
//! implementation; the overlays' pages are cached from the write phase.
//! The residency of the base is printed before the read phase. On the loop
//! mounts a sync goes through the loop device to the image file on the host.
//!
//! **Implementations.**
//! - `raw` (the floor): `pwrite` of each page into a plain sparse file of
//!   the base's size, then `fdatasync`. Reads: `pread` of each page from the
//!   raw file if the write list wrote it (one `Vec<bool>` load), else from
//!   the base: an overlay with a free lookup (reading never-written pages
//!   from the sparse file would read holes, which is cheaper and not what an
//!   overlay must do). Commit floor: `pread` from the raw file and `pwrite` into the
//!   base of every written page in offset order, then `fdatasync` (an
//!   in-place commit, not atomic).
//! - `budge`: `Overlay::create` over the base (untimed), `write_at` of each
//!   page, `flush` (group commit: durable); `read_at` of each page;
//!   `commit` with `CommitStrategy::Auto` (reflink where the filesystem can:
//!   atomic rename; else in place: a recorded replay). Space:
//!   `status().disk_bytes` (`st_blocks * 512`, superblocks and map included).
//! - `qcow2-4k`, `qcow2-64k`: `qemu-img create -f qcow2 -F raw -b BASE -o
//!   cluster_size=4096|65536` (untimed); writes as one `qemu-io -t writeback
//!   -f qcow2` process reading `write -q -P PAT OFF 4k` lines and a final
//!   `flush` from stdin; reads likewise (`read -q OFF 4k`). Each is timed as
//!   a whole process ("total") and, since qemu-io cannot time itself per
//!   command, the median of four empty runs on the same image (EOF on stdin
//!   at once, two before and two after) is subtracted ("net"; per op =
//!   net / ops). Commit: `qemu-img commit -q -t writeback -f qcow2`, timed;
//!   the time of a second, empty commit of the emptied image is shown as its
//!   fixed cost. Space: `st_blocks * 512` of the qcow2 file.
//! - Writes without the flush, to see the per-write cost apart from the
//!   sync every implementation pays: the write loops of raw and budge alone,
//!   and `qemu-io -t unsafe` (flushes ignored) on a fresh image of each
//!   cluster size (net of its startup; the image is removed at once).
//!
//! **Commits** run after the reads, into the one base: budge first (its
//! overlay records the base's identity, which the others' commits change),
//! then the two qcow2 images in an order alternating between runs, then the
//! raw floor. After each commit the whole base is checked byte for byte
//! against the model (the base's data with the written pages) and its
//! CRC-32C recorded — all must match, so the committed bases are identical —
//! and the written pages are restored (untimed) for the next commit. A
//! mismatch aborts with `CHECK FAILED` (exit 2). Reads of budge and raw are
//! checked against the model too (after each timed loop); qemu-io's reads
//! are not (verifying them would add to its time).
//!
//! **Reported** (medians over the runs): totals per phase, per-op median
//! latency (p99; mean) for budge and raw (each call timed; the timer's
//! cost is in both), per-op for qemu-io
//! (net / ops), ratios of medians, space, commit times, the strategy
//! budge's commit ran and whether it is atomic. Then the issue's targets,
//! each marked met or not met with its figures.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/common/qemu.rs"]
mod qemu;
use common::{
    dir_arg, env_dirs, gen, loadavg, median, parse_size, print_run, resident, sh, splitmix, syncfs,
    warm,
};

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use budge::overlay::{CommitOptions, Overlay, OverlayOptions};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const SEED: u64 = 0x0be7_1a75_eed5_0001;

// ---------------------------------------------------------------- content

/// The byte write `i` fills its page with (never 0).
fn pattern(i: usize) -> u8 {
    (splitmix(SEED ^ 0x5a5a_0000 ^ i as u64) % 255 + 1) as u8
}

/// The operation lists and the model they make.
struct Lists {
    /// Page index of write `i`.
    writes: Vec<u64>,
    /// Page index of read `i`.
    reads: Vec<u64>,
    /// Written page -> the pattern it holds (the last write's).
    last: BTreeMap<u64, u8>,
    /// Whether page `p` was written: the raw floor's lookup (one load).
    written: Vec<bool>,
}

impl Lists {
    fn new(size: u64, ops: usize) -> Lists {
        let pages = size / PAGE;
        let writes: Vec<u64> = (0..ops)
            .map(|i| splitmix(SEED ^ 0x1000_0000 ^ i as u64) % pages)
            .collect();
        let reads: Vec<u64> = (0..ops)
            .map(|i| splitmix(SEED ^ 0x2000_0000 ^ i as u64) % pages)
            .collect();
        let mut last = BTreeMap::new();
        for (i, &p) in writes.iter().enumerate() {
            last.insert(p, pattern(i));
        }
        let mut written = vec![false; pages as usize];
        for &p in &writes {
            written[p as usize] = true;
        }
        Lists {
            writes,
            reads,
            last,
            written,
        }
    }

    /// What page `p` of the merged view holds.
    fn expected_page(&self, p: u64, buf: &mut [u8]) {
        match self.last.get(&p) {
            Some(&b) => buf.fill(b),
            None => gen(p * PAGE, buf),
        }
    }
}

fn check_failed(msg: String) -> ! {
    eprintln!("CHECK FAILED: {msg}");
    std::process::exit(2);
}

/// Checks the whole file at `path` against the model; returns its CRC-32C.
fn verify_base(what: &str, path: &Path, size: u64, l: &Lists) -> u32 {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    if len != size {
        check_failed(format!("{what}: size {len}, want {size}"));
    }
    let chunk = 8 * MIB;
    let mut got = vec![0u8; chunk as usize];
    let mut want = vec![0u8; chunk as usize];
    let mut crc = 0;
    let mut off = 0;
    while off < size {
        let n = (size - off).min(chunk) as usize;
        f.read_exact_at(&mut got[..n], off).unwrap();
        gen(off, &mut want[..n]);
        for (&p, &b) in l.last.range(off / PAGE..(off + n as u64).div_ceil(PAGE)) {
            let a = (p * PAGE - off) as usize;
            want[a..a + PAGE as usize].fill(b);
        }
        if got[..n] != want[..n] {
            let k = got[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .unwrap();
            check_failed(format!(
                "{what}: byte {} (page {}): got {:#04x}, want {:#04x}",
                off + k as u64,
                (off + k as u64) / PAGE,
                got[k],
                want[k]
            ));
        }
        crc = crc32c::crc32c_append(crc, &got[..n]);
        off += n as u64;
    }
    crc
}

/// Checks the pages read (`bufs`, one page per entry of `l.reads`).
fn verify_reads(what: &str, bufs: &[u8], l: &Lists) {
    let mut want = vec![0u8; PAGE as usize];
    for (i, (&p, got)) in l.reads.iter().zip(bufs.chunks(PAGE as usize)).enumerate() {
        l.expected_page(p, &mut want);
        if got != want.as_slice() {
            check_failed(format!("{what}: read {i} of page {p} returned wrong bytes"));
        }
    }
}

/// Writes the base's own bytes back into every written page, then syncs.
fn restore_base(path: &Path, l: &Lists) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let mut buf = vec![0u8; PAGE as usize];
    for &p in l.last.keys() {
        gen(p * PAGE, &mut buf);
        f.write_all_at(&buf, p * PAGE).unwrap();
    }
    f.sync_data().unwrap();
}

fn make_base(path: &Path, size: u64) {
    let f = File::create(path).unwrap();
    let mut buf = vec![0u8; (8 * MIB) as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(8 * MIB) as usize;
        gen(off, &mut buf[..n]);
        f.write_all_at(&buf[..n], off).unwrap();
        off += n as u64;
    }
    f.sync_all().unwrap();
}

// ---------------------------------------------------------------- system

fn disk_bytes(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        eprintln!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
}

/// Runs `qemu-io -t CACHE -f qcow2 IMAGE` with `script` on stdin;
/// returns the wall time of the whole process. Any output besides prompts
/// is a failed command (qemu-io does not say so in its exit status).
fn qemu_io(image: &Path, cache: &str, script: &str) -> Duration {
    let t = Instant::now();
    let r = qemu::qemu_io(image, cache, script.to_string());
    if !r.ok() {
        check_failed(format!(
            "qemu-io on {} ({}): {}{}",
            image.display(),
            r.status,
            r.out.chars().take(2000).collect::<String>(),
            r.err
        ));
    }
    r.ended - t
}

/// Median of four empty `qemu-io` runs of `image`, two before `f` and two
/// after; returns (`f`'s time, that startup cost).
fn qemu_io_timed(image: &Path, cache: &str, script: &str) -> (Duration, Duration) {
    let mut empty = vec![qemu_io(image, cache, ""), qemu_io(image, cache, "")];
    let d = qemu_io(image, cache, script);
    empty.push(qemu_io(image, cache, ""));
    empty.push(qemu_io(image, cache, ""));
    (d, median(&empty))
}

fn qemu_img_create(base: &Path, cluster: u32, image: &Path) {
    let _ = fs::remove_file(image);
    run_ok(
        &mut qemu::qemu_img_create(base, &cluster.to_string(), image),
        "qemu-img create",
    );
}

fn qemu_img_commit(image: &Path) -> Duration {
    let t = Instant::now();
    run_ok(&mut qemu::qemu_img_commit(image), "qemu-img commit");
    t.elapsed()
}

// ---------------------------------------------------------------- output

fn header(dirs: &[(String, PathBuf)]) {
    print_run();
    println!(
        "qemu: {}",
        sh("qemu-io", &["--version"]).lines().next().unwrap_or("")
    );
    for (label, dir) in dirs {
        let m = sh(
            "findmnt",
            &["-no", "FSTYPE,SOURCE,OPTIONS", "-T", &dir.to_string_lossy()],
        );
        let reflink = budge::probe(dir).is_ok_and(|c| c.ficlone.works);
        println!(
            "fs {label}: {} — {m}; reflink {}",
            dir.display(),
            if reflink { "yes" } else { "no" }
        );
    }
    println!("load: {}", loadavg());
}

fn fmt_d(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else if s >= 1e-5 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

fn fmt_b(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    }
}

fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

// ---------------------------------------------------------------- the run

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Imp {
    Raw,
    Budge,
    Q4k,
    Q64k,
}

const IMPS: [Imp; 4] = [Imp::Raw, Imp::Budge, Imp::Q4k, Imp::Q64k];

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Raw => "raw",
            Imp::Budge => "budge",
            Imp::Q4k => "qcow2-4k",
            Imp::Q64k => "qcow2-64k",
        }
    }
    fn cluster(self) -> u32 {
        match self {
            Imp::Q4k => 4096,
            _ => 65536,
        }
    }
}

/// One run's measurements of one implementation.
#[derive(Default, Clone)]
struct Meas {
    /// Write phase, writes and flush.
    write_total: Duration,
    /// The final flush/fdatasync alone (budge, raw).
    flush: Duration,
    /// Per-op medians and p99 (budge, raw).
    write_op: (Duration, Duration),
    read_total: Duration,
    read_op: (Duration, Duration),
    /// qemu-io: the startup cost subtracted (write, read phase).
    startup: (Duration, Duration),
    /// The writes without the flush: budge and raw: the loop of writes
    /// alone; qcow2: `qemu-io -t unsafe` (flushes ignored) on a fresh image,
    /// net of its startup.
    write_nosync: Duration,
    space: u64,
    commit: Duration,
    /// qemu-img: the time of an empty commit.
    commit_fixed: Duration,
    strategy: String,
    crc: u32,
}

struct FsResult {
    label: String,
    size: u64,
    ops: usize,
    distinct: usize,
    runs: Vec<BTreeMap<&'static str, Meas>>,
    base_resident: Vec<f64>,
}

fn time_each(n: usize, mut f: impl FnMut(usize)) -> (Duration, Vec<Duration>) {
    let mut per = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let a = Instant::now();
        f(i);
        per.push(a.elapsed());
    }
    (t.elapsed(), per)
}

fn bench_fs(label: &str, dir: &Path, size: u64, ops: usize, runs: usize) -> FsResult {
    let work = dir.join(format!(".budge-ovbench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir(&work).unwrap();
    let base = work.join("base");
    let raw_path = work.join("raw");
    let ov_path = work.join("overlay.budge");
    let q_path = |imp: Imp| work.join(format!("{}.qcow2", imp.name()));
    let l = Lists::new(size, ops);
    eprintln!(
        "[{label}] base of {} ({} random page writes, {} distinct; {} reads, {} of written pages)",
        fmt_b(size),
        ops,
        l.last.len(),
        ops,
        l.reads.iter().filter(|p| l.last.contains_key(p)).count()
    );
    let t = Instant::now();
    make_base(&base, size);
    eprintln!(
        "[{label}] base written and fsynced in {}",
        fmt_d(t.elapsed())
    );
    let mut res = FsResult {
        label: label.to_string(),
        size,
        ops,
        distinct: l.last.len(),
        runs: Vec::new(),
        base_resident: Vec::new(),
    };
    let mut page = vec![0u8; PAGE as usize];
    let mut bufs = vec![0u8; ops * PAGE as usize];
    let write_script: String = l
        .writes
        .iter()
        .enumerate()
        .map(|(i, p)| format!("write -q -P {} {} 4k\n", pattern(i), p * PAGE))
        .chain(std::iter::once("flush\n".to_string()))
        .collect();
    let read_script: String = l
        .reads
        .iter()
        .map(|p| format!("read -q {} 4k\n", p * PAGE))
        .collect();

    for run in 0..runs {
        let t_run = Instant::now();
        let mut m: BTreeMap<&'static str, Meas> = BTreeMap::new();
        for imp in IMPS {
            m.insert(imp.name(), Meas::default());
        }
        warm(&base);
        // The raw floor reads base pages through one descriptor kept open,
        // as the overlay keeps its base open.
        let base_rd = File::open(&base).unwrap();
        // Fresh files.
        let raw = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&raw_path)
            .unwrap();
        raw.set_len(size).unwrap();
        let mut ov = Overlay::create(
            &base,
            &ov_path,
            &OverlayOptions {
                overwrite: true,
                ..OverlayOptions::default()
            },
        )
        .unwrap();
        for imp in [Imp::Q4k, Imp::Q64k] {
            qemu_img_create(&base, imp.cluster(), &q_path(imp));
        }
        let mut order = IMPS.to_vec();
        order.rotate_left(run % IMPS.len());

        // Writes.
        for &imp in &order {
            syncfs(dir);
            let e = m.get_mut(imp.name()).unwrap();
            match imp {
                Imp::Raw => {
                    let t = Instant::now();
                    let (_, per) = time_each(ops, |i| {
                        page.fill(pattern(i));
                        raw.write_all_at(&page, l.writes[i] * PAGE).unwrap();
                    });
                    let f = Instant::now();
                    raw.sync_data().unwrap();
                    e.flush = f.elapsed();
                    e.write_nosync = f - t;
                    e.write_total = t.elapsed();
                    e.write_op = (median(&per), quantile(&per, 0.99));
                    e.space = disk_bytes(&raw_path);
                }
                Imp::Budge => {
                    let t = Instant::now();
                    let (_, per) = time_each(ops, |i| {
                        page.fill(pattern(i));
                        ov.write_at(l.writes[i] * PAGE, &page).unwrap();
                    });
                    let f = Instant::now();
                    ov.flush().unwrap();
                    e.flush = f.elapsed();
                    e.write_nosync = f - t;
                    e.write_total = t.elapsed();
                    e.write_op = (median(&per), quantile(&per, 0.99));
                    e.space = ov.status().unwrap().disk_bytes;
                }
                Imp::Q4k | Imp::Q64k => {
                    let (d, s) = qemu_io_timed(&q_path(imp), "writeback", &write_script);
                    e.write_total = d;
                    e.startup.0 = s;
                    e.space = disk_bytes(&q_path(imp));
                    // The same writes with flushes ignored, on a fresh image
                    // made the same way (removed at once).
                    let nosync = work.join(format!("{}-nosync.qcow2", imp.name()));
                    qemu_img_create(&base, imp.cluster(), &nosync);
                    syncfs(dir);
                    let (d, s) = qemu_io_timed(&nosync, "unsafe", &write_script);
                    e.write_nosync = d.saturating_sub(s);
                    fs::remove_file(&nosync).unwrap();
                }
            }
        }

        // Reads.
        res.base_resident.push(resident(&base));
        for &imp in &order {
            syncfs(dir);
            let e = m.get_mut(imp.name()).unwrap();
            match imp {
                Imp::Raw => {
                    let (total, per) = time_each(ops, |i| {
                        let p = l.reads[i];
                        let dst = &mut bufs[i * PAGE as usize..(i + 1) * PAGE as usize];
                        if l.written[p as usize] {
                            raw.read_exact_at(dst, p * PAGE).unwrap();
                        } else {
                            base_rd.read_exact_at(dst, p * PAGE).unwrap();
                        }
                    });
                    e.read_total = total;
                    e.read_op = (median(&per), quantile(&per, 0.99));
                    verify_reads("raw reads", &bufs, &l);
                }
                Imp::Budge => {
                    let (total, per) = time_each(ops, |i| {
                        let dst = &mut bufs[i * PAGE as usize..(i + 1) * PAGE as usize];
                        ov.read_at(l.reads[i] * PAGE, dst).unwrap();
                    });
                    e.read_total = total;
                    e.read_op = (median(&per), quantile(&per, 0.99));
                    verify_reads("budge reads", &bufs, &l);
                }
                Imp::Q4k | Imp::Q64k => {
                    let (d, s) = qemu_io_timed(&q_path(imp), "writeback", &read_script);
                    e.read_total = d;
                    e.startup.1 = s;
                }
            }
        }
        bufs.fill(0);

        // Commits: budge first, then qcow2 (alternating), then the raw floor.
        syncfs(dir);
        {
            let e = m.get_mut("budge").unwrap();
            let t = Instant::now();
            let r = ov.commit(&CommitOptions::default()).unwrap();
            e.commit = t.elapsed();
            e.strategy = r.strategy.name().to_string();
            ov.close().unwrap();
            e.crc = verify_base("budge-committed base", &base, size, &l);
            restore_base(&base, &l);
        }
        let qs = if run % 2 == 0 {
            [Imp::Q4k, Imp::Q64k]
        } else {
            [Imp::Q64k, Imp::Q4k]
        };
        for imp in qs {
            syncfs(dir);
            let e = m.get_mut(imp.name()).unwrap();
            e.commit = qemu_img_commit(&q_path(imp));
            e.commit_fixed = qemu_img_commit(&q_path(imp));
            e.strategy = "in place".to_string();
            e.crc = verify_base(&format!("{}-committed base", imp.name()), &base, size, &l);
            restore_base(&base, &l);
        }
        {
            syncfs(dir);
            let e = m.get_mut("raw").unwrap();
            let b = OpenOptions::new().write(true).open(&base).unwrap();
            let t = Instant::now();
            for &p in l.last.keys() {
                raw.read_exact_at(&mut page, p * PAGE).unwrap();
                b.write_all_at(&page, p * PAGE).unwrap();
            }
            b.sync_data().unwrap();
            e.commit = t.elapsed();
            e.strategy = "in place".to_string();
            drop(b);
            e.crc = verify_base("raw-committed base", &base, size, &l);
            restore_base(&base, &l);
        }
        let crc = m["budge"].crc;
        for (name, e) in &m {
            if e.crc != crc {
                check_failed(format!(
                    "{name}'s committed base has CRC {:#x}, budge's {crc:#x}",
                    e.crc
                ));
            }
        }
        drop((raw, base_rd));
        for p in [
            raw_path.clone(),
            ov_path.clone(),
            q_path(Imp::Q4k),
            q_path(Imp::Q64k),
        ] {
            let _ = fs::remove_file(p);
        }
        let b = &m["budge"];
        eprintln!(
            "[{label}] run {}/{runs} ({}): writes raw {} budge {} q4k {} q64k {}; reads raw {} budge {} q4k {} q64k {}; commit budge {} ({}) q4k {} q64k {} raw {}; all bases CRC {crc:#010x}",
            run + 1,
            fmt_d(t_run.elapsed()),
            fmt_d(m["raw"].write_total),
            fmt_d(b.write_total),
            fmt_d(m["qcow2-4k"].write_total),
            fmt_d(m["qcow2-64k"].write_total),
            fmt_d(m["raw"].read_total),
            fmt_d(b.read_total),
            fmt_d(m["qcow2-4k"].read_total),
            fmt_d(m["qcow2-64k"].read_total),
            fmt_d(b.commit),
            b.strategy,
            fmt_d(m["qcow2-4k"].commit),
            fmt_d(m["qcow2-64k"].commit),
            fmt_d(m["raw"].commit),
        );
        res.runs.push(m);
    }
    let _ = fs::remove_dir_all(&work);
    res
}

// ---------------------------------------------------------------- report

/// Median over runs of `f`.
fn med(r: &FsResult, imp: &str, f: impl Fn(&Meas) -> Duration) -> Duration {
    median(&r.runs.iter().map(|m| f(&m[imp])).collect::<Vec<_>>())
}

fn med_u(r: &FsResult, imp: &str, f: impl Fn(&Meas) -> u64) -> u64 {
    let mut v: Vec<u64> = r.runs.iter().map(|m| f(&m[imp])).collect();
    v.sort();
    v[v.len() / 2]
}

/// A row of a phase's totals: `[raw, budge]`, and each qcow2 image's
/// `[net, whole process]`.
fn totals_row(l: &str, what: &str, [raw, b]: [Duration; 2], q4: [Duration; 2], q64: [Duration; 2]) {
    println!(
        "| {l} | {what} | {} | {} | {:.2} | {} ({}) | {:.1} | {} ({}) | {:.1} |",
        fmt_d(raw),
        fmt_d(b),
        ratio(b, raw),
        fmt_d(q4[0]),
        fmt_d(q4[1]),
        ratio(q4[0], b),
        fmt_d(q64[0]),
        fmt_d(q64[1]),
        ratio(q64[0], b)
    );
}

/// A row of a phase per op: raw's and budge's median (p99; mean), the
/// median and p99 from `op` and the means given, then each qcow2 image's
/// net per op. Returns raw's and budge's medians.
fn per_op_row(
    l: &str,
    what: &str,
    r: &FsResult,
    op: impl Fn(&Meas) -> (Duration, Duration),
    [raw_mean, b_mean]: [Duration; 2],
    [q4, q64]: [Duration; 2],
) -> (Duration, Duration) {
    let (raw, b) = (med(r, "raw", |m| op(m).0), med(r, "budge", |m| op(m).0));
    println!(
        "| {l} | {what} | {} ({}; {}) | {} ({}; {}) | {:.2} | {} | {:.1} | {} | {:.1} |",
        fmt_d(raw),
        fmt_d(med(r, "raw", |m| op(m).1)),
        fmt_d(raw_mean),
        fmt_d(b),
        fmt_d(med(r, "budge", |m| op(m).1)),
        fmt_d(b_mean),
        ratio(b, raw),
        fmt_d(q4),
        ratio(q4, b),
        fmt_d(q64),
        ratio(q64, b)
    );
    (raw, b)
}

fn report(results: &[FsResult]) {
    println!(
        "\n## Results (medians over runs; qcow2 cells: net (whole process); ratios of medians)\n"
    );
    println!(
        "| fs | measure | raw | budge | budge/raw | qcow2-4k | 4k/budge | qcow2-64k | 64k/budge |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut targets = Vec::new();
    for r in results {
        let n = r.ops as u32;
        let qnet_w = |imp: &str| {
            r.runs
                .iter()
                .map(|m| m[imp].write_total.saturating_sub(m[imp].startup.0))
                .collect::<Vec<_>>()
        };
        let qnet_r = |imp: &str| {
            r.runs
                .iter()
                .map(|m| m[imp].read_total.saturating_sub(m[imp].startup.1))
                .collect::<Vec<_>>()
        };
        let (rw, bw) = (
            med(r, "raw", |m| m.write_total),
            med(r, "budge", |m| m.write_total),
        );
        let (rr, br) = (
            med(r, "raw", |m| m.read_total),
            med(r, "budge", |m| m.read_total),
        );
        let q = |imp: &str| {
            (
                median(&qnet_w(imp)),
                med(r, imp, |m| m.write_total),
                median(&qnet_r(imp)),
                med(r, imp, |m| m.read_total),
            )
        };
        let (q4, q64) = (q("qcow2-4k"), q("qcow2-64k"));
        let l = &r.label;
        let writes = format!("{} writes + flush", r.ops);
        totals_row(l, &writes, [rw, bw], [q4.0, q4.1], [q64.0, q64.1]);
        let wn = |imp: &str| med(r, imp, |m| m.write_nosync);
        let (rwo, bwo) = per_op_row(
            l,
            "write, per op: median (p99; mean without the flush); qcow2 net/ops",
            r,
            |m| m.write_op,
            [wn("raw") / n, wn("budge") / n],
            [q4.0 / n, q64.0 / n],
        );
        let (rwn, bwn, q4wn, q64wn) = (wn("raw"), wn("budge"), wn("qcow2-4k"), wn("qcow2-64k"));
        println!(
            "| {l} | {} writes without the flush (qcow2: `-t unsafe`, net) | {} | {} | {:.2} | {} | {:.1} | {} | {:.1} |",
            r.ops,
            fmt_d(rwn),
            fmt_d(bwn),
            ratio(bwn, rwn),
            fmt_d(q4wn),
            ratio(q4wn, bwn),
            fmt_d(q64wn),
            ratio(q64wn, bwn)
        );
        let (rf, bf) = (med(r, "raw", |m| m.flush), med(r, "budge", |m| m.flush));
        println!(
            "| {l} | of which the flush (fdatasync / group commit) | {} | {} | {:.2} | | | | |",
            fmt_d(rf),
            fmt_d(bf),
            ratio(bf, rf)
        );
        let reads = format!("{} reads", r.ops);
        totals_row(l, &reads, [rr, br], [q4.2, q4.3], [q64.2, q64.3]);
        let (rro, bro) = per_op_row(
            l,
            "read, per op: median (p99; mean); qcow2 net/ops",
            r,
            |m| m.read_op,
            [rr / n, br / n],
            [q4.2 / n, q64.2 / n],
        );
        println!(
            "| {l} | qemu-io startup subtracted (write, read) | | | | {}, {} | | {}, {} | |",
            fmt_d(med(r, "qcow2-4k", |m| m.startup.0)),
            fmt_d(med(r, "qcow2-4k", |m| m.startup.1)),
            fmt_d(med(r, "qcow2-64k", |m| m.startup.0)),
            fmt_d(med(r, "qcow2-64k", |m| m.startup.1)),
        );
        let written = r.ops as u64 * PAGE;
        let sp = |imp: &str| med_u(r, imp, |m| m.space);
        let (rs, bs, q4s, q64s) = (sp("raw"), sp("budge"), sp("qcow2-4k"), sp("qcow2-64k"));
        let pct = |b: u64| format!("{:.1}%", b as f64 * 100.0 / written as f64);
        println!(
            "| {l} | space used (% of {} written) | {} ({}) | {} ({}) | {:.2} | {} ({}) | {:.1} | {} ({}) | {:.1} |",
            fmt_b(written),
            fmt_b(rs),
            pct(rs),
            fmt_b(bs),
            pct(bs),
            bs as f64 / rs as f64,
            fmt_b(q4s),
            pct(q4s),
            q4s as f64 / bs as f64,
            fmt_b(q64s),
            pct(q64s),
            q64s as f64 / bs as f64
        );
        let c = |imp: &str| med(r, imp, |m| m.commit);
        let (rc, bc, q4c, q64c) = (c("raw"), c("budge"), c("qcow2-4k"), c("qcow2-64k"));
        let strat = &r.runs[0]["budge"].strategy;
        let atomic = matches!(strat.as_str(), "reflink" | "copy");
        println!(
            "| {l} | commit (budge: {strat}, {}; qemu-img: in place, fixed cost of an empty commit in brackets) | {} | {} | {:.2} | {} ({}) | {:.2} | {} ({}) | {:.2} |",
            if atomic { "atomic" } else { "not atomic: recorded replay" },
            fmt_d(rc),
            fmt_d(bc),
            ratio(bc, rc),
            fmt_d(q4c),
            fmt_d(med(r, "qcow2-4k", |m| m.commit_fixed)),
            ratio(q4c, bc),
            fmt_d(q64c),
            fmt_d(med(r, "qcow2-64k", |m| m.commit_fixed)),
            ratio(q64c, bc)
        );

        // Targets.
        let mark = |ok: bool| if ok { "met" } else { "NOT MET" };
        let w2 = ratio(bw, rw);
        let r2 = ratio(br, rr);
        targets.push(format!(
            "- {l}: writes within 2x of raw: **{}** ({w2:.2}x total with the flush; per-op median {:.2}x)",
            mark(w2 <= 2.0),
            ratio(bwo, rwo)
        ));
        targets.push(format!(
            "- {l}: reads within 2x of raw: **{}** ({r2:.2}x total; per-op median {:.2}x)",
            mark(r2 <= 2.0),
            ratio(bro, rro)
        ));
        let fw = ratio(q4.0, bw).min(ratio(q64.0, bw));
        let fr = ratio(q4.2, br).min(ratio(q64.2, br));
        targets.push(format!(
            "- {l}: ≥10x faster than qcow2 through qemu-io (net of startup): writes + flush **{}** ({:.1}x 4k, {:.1}x 64k; the raw floor itself: {:.1}x, {:.1}x), reads **{}** ({:.1}x 4k, {:.1}x 64k; raw floor {:.1}x, {:.1}x); writes without the flush (qcow2 `-t unsafe`): {:.1}x 4k, {:.1}x 64k",
            mark(fw >= 10.0),
            ratio(q4.0, bw),
            ratio(q64.0, bw),
            ratio(q4.0, rw),
            ratio(q64.0, rw),
            mark(fr >= 10.0),
            ratio(q4.2, br),
            ratio(q64.2, br),
            ratio(q4.2, rr),
            ratio(q64.2, rr),
            ratio(q4wn, bwn),
            ratio(q64wn, bwn)
        ));
        let over = bs as f64 / written as f64 - 1.0;
        targets.push(format!(
            "- {l}: overlay space within 10% of the data written: **{}** ({} for {} written, {:+.1}%; {} distinct pages = {}; qcow2-4k {:.2}x, qcow2-64k {:.1}x the data written)",
            mark(over <= 0.10),
            fmt_b(bs),
            fmt_b(written),
            over * 100.0,
            r.distinct,
            fmt_b(r.distinct as u64 * PAGE),
            q4s as f64 / written as f64,
            q64s as f64 / written as f64
        ));
        let fast = bc <= q4c && bc <= q64c;
        targets.push(format!(
            "- {l}: commit {}atomic ({strat}) and at least as fast as `qemu-img commit`: **{}** ({} vs {} (4k), {} (64k); raw in-place floor {})",
            if atomic { "" } else { "NOT " },
            mark(fast && (atomic || !matches!(l.as_str(), "xfs" | "btrfs"))),
            fmt_d(bc),
            fmt_d(q4c),
            fmt_d(q64c),
            fmt_d(rc)
        ));
        let res: Vec<String> = r
            .base_resident
            .iter()
            .map(|x| format!("{:.0}%", x * 100.0))
            .collect();
        targets.push(format!(
            "- {l}: base size {}, {} runs; base resident in the page cache before the read phase: {}",
            fmt_b(r.size),
            r.runs.len(),
            res.join(", ")
        ));
    }
    println!("\n## Targets\n");
    for t in targets {
        println!("{t}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut size = 1u64 << 30;
    let mut ops = 10_000usize;
    let mut runs = 5usize;
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {}
            "--size" => size = parse_size(&it.next().expect("--size N")),
            "--ops" => ops = it.next().expect("--ops N").parse().expect("--ops N"),
            "--runs" => runs = it.next().expect("--runs N").parse().expect("--runs N"),
            s if s.starts_with("--") => panic!("unknown option {s}"),
            s => dirs.push(dir_arg(s)),
        }
    }
    assert!(
        size >= PAGE && size % PAGE == 0,
        "--size: a multiple of 4 KiB"
    );
    if dirs.is_empty() {
        dirs = env_dirs();
    }
    for tool in ["qemu-io", "qemu-img"] {
        if sh(tool, &["--version"]).is_empty() || sh(tool, &["--version"]).starts_with('(') {
            eprintln!(
                "{tool} not found: apt-get install qemu-utils (scripts/testfs.sh up installs it)"
            );
            std::process::exit(1);
        }
    }
    header(&dirs);
    let start = Instant::now();
    let mut results = Vec::new();
    for (label, dir) in &dirs {
        results.push(bench_fs(label, dir, size, ops, runs));
    }
    report(&results);
    println!(
        "\nwhole bench: {}; load at end {}",
        fmt_d(start.elapsed()),
        loadavg()
    );
}
