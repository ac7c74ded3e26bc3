//! Crash safety of relocation (`budge::relocate`): relocation never changes
//! a file's content, so after a crash at any point of one the file holds
//! exactly the bytes it held before, has the same size, is readable in full
//! (no EIO, no zeros where data was), its extents can be listed, and its
//! directory holds no stray names (donors are unnamed `O_TMPFILE`s). A
//! second relocation after the crash works and keeps the content too.
//!
//! Each round makes a fresh fragmented file (`common::fragmented`: 64 KiB
//! pieces interleaved with a filler, 8 MiB of `common::data`), syncs it and
//! its directory, and hands it to a worker process (this test binary
//! re-executed, selected by `BUDGE_RELOCATE_CRASH_WORKER`). The worker opens
//! it read-write and relocates it with 1 MiB chunks, so there are many
//! chunks, printing `started` before, `progress DONE TOTAL` as
//! `RelocateOptions::progress` reports it, and `done ...` after; with the
//! `failpoints` feature it also prints `chunk N` at the
//! `budge::relocate::before-swap` failpoint of each chunk it moves (donor
//! strategies only). The parent crashes it:
//!
//! - `kill9_*` (every filesystem of the matrix): SIGKILL at a random delay
//!   after `started`, within 1.2 times the duration of an uncrashed
//!   relocation of the same kind of file measured first (one measured round
//!   per strategy, itself checked, then moved halfway toward each
//!   uncrashed one), or in some rounds a short random delay after the k-th
//!   `chunk` mark, or within the first 10 ms (budge's capability probe,
//!   planning, the first donor). After the kill the file is fsynced and read
//!   back with `O_DIRECT` (what the extent map points at, not the page cache)
//!   and through the page cache. tmpfs has no extents: there the test only
//!   checks that relocation reports nothing to do and keeps the content.
//! - `shutdown_*` (XFS and ext4, root only): the same on a private loop
//!   filesystem (`crash/loopfs.rs`), unmounted and mounted before each
//!   round's worker starts (so the log holds that round's changes only) and
//!   crashed with `FS_IOC_SHUTDOWN` without log flush (like a power cut), in
//!   some rounds while a thread calls `syncfs` in a loop so that part of the
//!   relocation reaches the log; then the worker is killed and the
//!   filesystem unmounted and mounted again (log recovery) before the
//!   checks. Root only: a loud skip otherwise, a failure under `CI=true`.
//!
//! Each forced in-place strategy that applies on the filesystem runs
//! (ext4: move-ext; XFS: dedupe; btrfs: dedupe and btrfs-defrag; any other
//! coherent strategy in `RelocateStrategy::FORCEABLE`, such as XFS's
//! swapext, where a trial relocation of such a file accepts it), and the
//! automatic choice, in turn.
//!
//! A failed round is reported at once (with the round's log, and a copy of
//! the file as found, or after a failed mount the kernel log, the
//! checker's verdict and the image) and the next rounds still run, on a
//! fresh filesystem if the mount failed; the test fails at the end.
//!
//! Environment: `BUDGE_CRASH_ITERS` rounds per test (default 8 per
//! filesystem, plus one measured round per strategy); `BUDGE_CRASH_SEED`
//! reuses a seed (strategies, delays and kill points; not the timing);
//! `BUDGE_CRASH_VERBOSE` logs every round;
//! `BUDGE_RELOCATE_CRASH_STRATEGY=<name>|auto` crashes only that strategy
//! (where it does not apply, the test does nothing). Failures keep what
//! they found in `/var/tmp/budge-crash-fail-relocate-<fs>-<seed>/`.

mod common;
mod crash;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use budge::relocate::{relocate, RelocateOptions, RelocateReport, RelocateStrategy};
use budge::sys::{fs_shutdown, ShutdownMode};
use budge::ErrorKind;
use common::{fragmented, read_all, say, Rng, TestFs, Worker};
use crash::{iters, pause};

const WORKER_ENV: &str = "BUDGE_RELOCATE_CRASH_WORKER";
const WORKER_TEST: &str = "relocate_crash_worker";
/// The relocated file's size.
const SIZE: usize = 8 << 20;
/// The relocation's chunk: many chunks per file.
const CHUNK: u64 = 1 << 20;
/// The relocated file's name (alone in its directory).
const NAME: &str = "f";

fn verbose() -> bool {
    std::env::var_os("BUDGE_CRASH_VERBOSE").is_some()
}

fn opts(strategy: Option<RelocateStrategy>) -> RelocateOptions<'static> {
    RelocateOptions {
        chunk: CHUNK,
        strategy,
        ..RelocateOptions::default()
    }
}

fn sname(s: Option<RelocateStrategy>) -> &'static str {
    s.map_or("auto", RelocateStrategy::name)
}

fn parse_strategy(s: &str) -> Option<RelocateStrategy> {
    (s != "auto").then(|| s.parse().unwrap_or_else(|e| panic!("{e}")))
}

fn fmt_report(r: &RelocateReport) -> String {
    format!(
        "{}: extents {} -> {}, chunks {} moved {} skipped {}, {} bytes moved",
        r.strategy,
        r.extents_before,
        r.extents_after,
        r.chunks,
        r.chunks_moved,
        r.chunks_skipped.len(),
        r.bytes_moved
    )
}

// ---------------------------------------------------------------------------
// The worker.

/// The worker: runs only when re-executed by a crash test.
#[test]
fn relocate_crash_worker() {
    let Ok(path) = std::env::var(WORKER_ENV) else {
        return;
    };
    // libtest printed "test relocate_crash_worker ... " without a newline:
    // end that line, so the first protocol line starts one.
    println!();
    let strategy = parse_strategy(&std::env::var("BUDGE_RC_STRATEGY").unwrap());
    let _scenario = fail::FailScenario::setup();
    if cfg!(feature = "failpoints") {
        let n = std::sync::atomic::AtomicU64::new(0);
        fail::cfg_callback("budge::relocate::before-swap", move || {
            let k = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            say(&format!("chunk {k}"));
        })
        .unwrap();
    }
    let f = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            say(&format!("error open {e}"));
            std::process::exit(3);
        }
    };
    let progress = |done: u64, total: u64| say(&format!("progress {done} {total}"));
    let o = RelocateOptions {
        progress: Some(&progress),
        ..opts(strategy)
    };
    say("started");
    match relocate(&f, &o) {
        Ok(r) => say(&format!(
            "done {} {} {} {}",
            r.strategy,
            r.chunks,
            r.chunks_moved,
            r.chunks_skipped.len()
        )),
        Err(e) => {
            say(&format!("error {:?} {e}", e.kind()));
            std::process::exit(2);
        }
    }
}

fn spawn(path: &Path, strategy: Option<RelocateStrategy>) -> Worker {
    Worker::spawn(
        common::worker_command(WORKER_TEST)
            .env(WORKER_ENV, path)
            .env("BUDGE_RC_STRATEGY", sname(strategy))
            .env_remove("FAILPOINTS"),
    )
}

// ---------------------------------------------------------------------------
// Checks.

/// Reads `path` in full with `O_DIRECT`: what its extents point at on
/// disk, not the page cache. `None` where `O_DIRECT` is refused.
fn read_direct(path: &Path, len: usize) -> Option<std::io::Result<Vec<u8>>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return None,
        Err(e) => return Some(Err(e)),
    };
    const ALIGN: usize = 4096;
    let mut buf = vec![0u8; len.next_multiple_of(ALIGN) + ALIGN];
    let skip = buf.as_ptr().align_offset(ALIGN);
    let b = &mut buf[skip..skip + len.next_multiple_of(ALIGN)];
    let mut at = 0;
    while at < len {
        let n = (1 << 20).min(b.len() - at);
        match f.read_at(&mut b[at..at + n], at as u64) {
            Ok(0) => break,
            Ok(k) => at += k,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && at == 0 => return None,
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(b[..at.min(len)].to_vec()))
}

/// Where `got` differs from `want`: the first offset, the number of
/// differing 4 KiB blocks and how many of them read as zeros.
fn diff(got: &[u8], want: &[u8]) -> String {
    if got.len() != want.len() {
        return format!("{} bytes read, {} expected", got.len(), want.len());
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
    let (mut blocks, mut zeros) = (0, 0);
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (i, (g, w)) in got.chunks(4096).zip(want.chunks(4096)).enumerate() {
        if g != w {
            blocks += 1;
            if g.iter().all(|&b| b == 0) {
                zeros += 1;
            }
            match ranges.last_mut() {
                Some(r) if r.1 == i => r.1 = i + 1,
                _ => ranges.push((i, i + 1)),
            }
        }
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(12)
        .map(|(a, b)| format!("[{:#x}, {:#x})", a * 4096, b * 4096))
        .collect();
    format!(
        "first difference at byte {first:#x}; {blocks} 4 KiB blocks differ ({zeros} read as zeros) in {} runs: {}",
        ranges.len(),
        shown.join(" ")
    )
}

/// Removes every name in `dir` but `NAME`, so that the rounds after one
/// that left stray files are checked on their own.
fn remove_strays(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name() != NAME {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Checks the file `NAME` in `dir` against `want`: size, content through
/// `O_DIRECT` (after an fsync) and through the page cache, extents that
/// list and cover the whole file, and no other name in `dir`. The extent
/// count on success.
fn check(dir: &Path, want: &[u8]) -> Result<usize, String> {
    let path = dir.join(NAME);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("read_dir: {e}"))?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names != [NAME] {
        return Err(format!("stray names in the directory: {names:?}"));
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open: {e}"))?;
    let size = f.metadata().map_err(|e| format!("fstat: {e}"))?.len();
    if size != want.len() as u64 {
        return Err(format!("size {size}, expected {}", want.len()));
    }
    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    if let Some(r) = read_direct(&path, want.len()) {
        let got = r.map_err(|e| format!("O_DIRECT read: {e}"))?;
        if got != want {
            return Err(format!("content read with O_DIRECT: {}", diff(&got, want)));
        }
    }
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    let mut got = vec![0u8; want.len()];
    f.read_exact_at(&mut got, 0)
        .map_err(|e| format!("read: {e}"))?;
    if got != want {
        return Err(format!("content: {}", diff(&got, want)));
    }
    let ext = budge::extents::extents(&f).map_err(|e| format!("extents: {e}"))?;
    let mut at = 0;
    for e in &ext {
        if e.logical != at {
            return Err(format!("extents: a gap at {at:#x}: {ext:?}"));
        }
        at = e.logical + e.length;
    }
    if at < size {
        return Err(format!("extents end at {at:#x}, size {size:#x}: {ext:?}"));
    }
    Ok(ext.len())
}

// ---------------------------------------------------------------------------
// Sessions.

/// A test's label, seed, log, statistics and failures.
struct Session {
    label: String,
    kind: &'static str,
    seed: u64,
    round: String,
    log: Vec<String>,
    stats: BTreeMap<String, u64>,
    /// Failed rounds, each with its own message; the test goes on with the
    /// next round (on a fresh filesystem if it had to) and fails at the end.
    failures: Vec<String>,
    image_kept: bool,
}

impl Session {
    fn new(label: String, kind: &'static str) -> Session {
        let seed = crash::seed(&label);
        Session {
            label,
            kind,
            seed,
            round: String::new(),
            log: Vec::new(),
            stats: BTreeMap::new(),
            failures: Vec::new(),
            image_kept: false,
        }
    }

    fn note(&mut self, s: String) {
        if verbose() {
            eprintln!("{} [{}] {s}", self.label, self.round);
        }
        self.log.push(format!("[{}] {s}", self.round));
    }

    fn add(&mut self, k: impl Into<String>) {
        *self.stats.entry(k.into()).or_default() += 1;
    }

    fn get(&self, k: &str) -> u64 {
        self.stats.get(k).copied().unwrap_or(0)
    }

    /// Where a failure keeps what it found.
    fn keep_dir(&self) -> PathBuf {
        PathBuf::from(format!(
            "/var/tmp/budge-crash-fail-relocate-{}-{:x}",
            self.kind, self.seed
        ))
    }

    /// The log of the current round.
    fn round_log(&self) -> String {
        let tag = format!("[{}] ", self.round);
        let lines: Vec<&str> = self
            .log
            .iter()
            .filter(|l| l.starts_with(&tag))
            .map(String::as_str)
            .collect();
        lines.join("\n    ")
    }

    /// Records a failed round, keeping a copy of the file in `dir` (if
    /// given) as it was found.
    fn failed(&mut self, dir: Option<&Path>, msg: &str) {
        let mut kept = String::new();
        if let Some(dir) = dir {
            let keep = self.keep_dir();
            if std::fs::create_dir_all(&keep).is_ok() {
                let to = keep.join(format!("{}.{}", NAME, self.round.replace(' ', "-")));
                if std::fs::copy(dir.join(NAME), &to).is_ok() {
                    kept = format!("\n  the file as found: {}", to.display());
                }
                if let Ok(f) = File::open(dir.join(NAME)) {
                    if let Ok(e) = budge::extents::extents(&f) {
                        let _ = std::fs::write(to.with_extension("extents"), format!("{e:#?}"));
                    }
                }
            }
        }
        let m = format!(
            "{}: round {}: {msg}{kept}\n  round log:\n    {}",
            self.label,
            self.round,
            self.round_log()
        );
        eprintln!("FAILED {m}");
        self.add("FAILED rounds");
        self.failures.push(m);
    }

    /// Fails the test at once (the harness itself failed).
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{}: round {}: {msg}\nseed {:#x} (BUDGE_CRASH_SEED={:#x})\nround log:\n    {}",
            self.label,
            self.round,
            self.seed,
            self.seed,
            self.round_log()
        );
    }

    fn report(&self, elapsed: Duration) {
        let mut s = format!(
            "{}: {} rounds in {:.1} s (seed {:#x}), {} crashed mid-relocation, {} failed:",
            self.label,
            self.get("rounds"),
            elapsed.as_secs_f64(),
            self.seed,
            self.get("crashed mid-relocation"),
            self.failures.len(),
        );
        for (k, n) in &self.stats {
            s.push_str(&format!("\n  {k}: {n}"));
        }
        eprintln!("{s}");
    }

    /// Fails the test if a round failed.
    fn finish(&self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} rounds failed (seed {:#x}, BUDGE_CRASH_SEED={:#x} repeats the choices):\n\n{}",
            self.failures.len(),
            self.get("rounds"),
            self.seed,
            self.seed,
            self.failures.join("\n\n")
        );
    }
}

/// What the worker got to before the crash (lines read before `down`).
#[derive(Debug, Default)]
struct Progress {
    started: bool,
    done: Option<String>,
    error: Option<String>,
    /// `chunk` marks (swaps begun).
    chunks: u64,
    /// The last `progress` report: (bytes done, bytes to do).
    bytes: Option<(u64, u64)>,
}

fn progress(lines: &[(Instant, String)], down: Instant) -> Progress {
    let mut p = Progress::default();
    for (at, l) in lines {
        if *at >= down {
            continue;
        }
        if l == "started" {
            p.started = true;
        } else if let Some(r) = l.strip_prefix("done ") {
            p.done = Some(r.to_string());
        } else if l.starts_with("chunk ") {
            p.chunks += 1;
        } else if let Some(r) = l.strip_prefix("progress ") {
            let (d, t) = r.split_once(' ').unwrap();
            p.bytes = Some((d.parse().unwrap(), t.parse().unwrap()));
        } else if l.starts_with("error") {
            p.error = Some(l.clone());
        }
    }
    p
}

/// Waits for the worker's line satisfying `pred` (true), or its end, an
/// error, or 60 s (false).
fn wait_line(w: &mut Worker, mut pred: impl FnMut(&str) -> bool) -> bool {
    let mut hit = false;
    w.wait_for(Instant::now() + Duration::from_secs(60), |l| {
        hit = pred(l);
        hit || l.starts_with("done") || l.starts_with("error")
    });
    hit
}

/// Lets `d` pass (reading the worker's lines meanwhile), or less if it
/// finishes.
fn linger(w: &mut Worker, d: Duration) {
    if d >= Duration::from_millis(2) {
        w.wait_for(Instant::now() + d, |l| {
            l.starts_with("done") || l.starts_with("error")
        });
    } else {
        pause(d);
    }
}

/// When to crash the worker.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// This long after `started`.
    Time(Duration),
    /// This long after the k-th `chunk` mark (1-based).
    Chunk(u64, Duration),
}

/// The measured uncrashed relocation of one strategy.
#[derive(Clone, Copy, Debug)]
struct Measured {
    took: Duration,
    chunks: u64,
}

impl Measured {
    /// Mostly a random time within 1.2 times the measured duration; with
    /// chunk marks, sometimes a short random time after the k-th; and
    /// sometimes within the first 10 ms.
    fn trigger(&self, rng: &mut Rng) -> Trigger {
        if rng.chance(20) {
            // The start: the capability probe, planning, the first donor.
            Trigger::Time(Duration::from_micros(rng.below(10_000)))
        } else if self.chunks > 0 && rng.chance(40) {
            let k = rng.between(1, self.chunks);
            let per = self.took.as_micros() as u64 / self.chunks;
            Trigger::Chunk(k, Duration::from_micros(rng.below(per + 1)))
        } else {
            let us = self.took.as_micros() as u64;
            Trigger::Time(Duration::from_micros(rng.below(us * 6 / 5 + 1)))
        }
    }
}

/// Where the rounds run, and how they crash.
trait Env {
    fn fs(&self) -> &TestFs;
    fn shutdown(&self) -> bool;
    /// Before a round's worker starts, the file made: nothing, or (for a
    /// shutdown) an unmount and mount, so that the log holds this round's
    /// changes only.
    fn settle(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Makes the round's `syncfs` thread, if any.
    fn hammer(&mut self, _rng: &mut Rng) -> Option<crash::Hammer> {
        None
    }
    /// The crash itself (the worker is killed right after).
    fn crash(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// After the worker is gone: unmount and mount, if the crash needs it.
    fn recover(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// After a failed [`Env::recover`]: what is known about the failure
    /// (kept under `keep` if `image`), then a fresh filesystem to go on.
    fn replace(&mut self, _keep: Option<PathBuf>) -> String {
        unreachable!("only a remount fails")
    }
}

/// `kill -9` on a filesystem of the matrix.
struct Kill<'a>(&'a TestFs);

impl Env for Kill<'_> {
    fn fs(&self) -> &TestFs {
        self.0
    }
    fn shutdown(&self) -> bool {
        false
    }
}

/// `FS_IOC_SHUTDOWN` on a private loop filesystem.
struct Shutdown {
    /// A directory on `lfs` (dropped before it).
    fs: Option<TestFs>,
    lfs: crash::loopfs::LoopFs,
}

impl Shutdown {
    fn new(kind: &'static str, mkfs_extra: &'static [&'static str]) -> Option<Shutdown> {
        let lfs = crash::loop_fs_with(kind, mkfs_extra, "relocate shutdown crash test")?;
        Some(Shutdown::on(lfs))
    }

    fn on(lfs: crash::loopfs::LoopFs) -> Shutdown {
        let dir = tempfile::Builder::new()
            .prefix("t-")
            .tempdir_in(lfs.path())
            .unwrap();
        File::open(lfs.path()).unwrap().sync_all().unwrap();
        Shutdown {
            fs: Some(TestFs {
                kind: lfs.kind,
                dir,
            }),
            lfs,
        }
    }
}

impl Env for Shutdown {
    fn fs(&self) -> &TestFs {
        self.fs.as_ref().unwrap()
    }
    fn shutdown(&self) -> bool {
        true
    }
    fn settle(&mut self) -> Result<(), String> {
        self.lfs
            .cycle()
            .map_err(|e| format!("unmount and mount: {e}"))
    }
    fn hammer(&mut self, rng: &mut Rng) -> Option<crash::Hammer> {
        rng.chance(50)
            .then(|| crash::Hammer::start(self.lfs.path(), rng.next()))
    }
    fn crash(&mut self) -> Result<(), String> {
        let d = File::open(self.lfs.path()).map_err(|e| e.to_string())?;
        fs_shutdown(&d, ShutdownMode::NoLogFlush).map_err(|e| format!("FS_IOC_SHUTDOWN: {e}"))
    }
    fn recover(&mut self) -> Result<(), String> {
        self.lfs.cycle()
    }
    fn replace(&mut self, keep: Option<PathBuf>) -> String {
        let what = forensics(&self.lfs, keep);
        self.fs = None;
        let lfs = crash::loopfs::LoopFs::new_with(self.lfs.kind, 1 << 30, self.lfs.mkfs_extra)
            .unwrap_or_else(|e| panic!("a fresh loop filesystem: {e}"));
        *self = Shutdown::on(lfs);
        what
    }
}

/// After a failed remount: the kernel log's tail, the checker's verdict
/// and (if `keep`) a sparse copy of the image.
fn forensics(lfs: &crash::loopfs::LoopFs, keep: Option<PathBuf>) -> String {
    let run = |cmd: &str, args: &[&str]| match std::process::Command::new(cmd).args(args).output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("{cmd}: {e}"),
    };
    let dmesg = run("dmesg", &[]);
    let mut tail: Vec<&str> = dmesg.lines().rev().take(24).collect();
    tail.reverse();
    let (checker, check) = match lfs.kind {
        "xfs" => ("xfs_repair -n", run("xfs_repair", &["-n", &lfs.dev])),
        _ => ("e2fsck -fn", run("e2fsck", &["-fn", &lfs.dev])),
    };
    let check: Vec<&str> = check.lines().take(16).collect();
    let image = keep.and_then(|to| {
        let ok = std::fs::create_dir_all(to.parent()?).is_ok()
            && std::process::Command::new("cp")
                .arg("--sparse=always")
                .arg(&lfs.image)
                .arg(&to)
                .status()
                .is_ok_and(|st| st.success());
        ok.then(|| to.display().to_string())
    });
    format!(
        "\n  kernel log:\n    {}\n  {checker}:\n    {}\n  image: {}",
        tail.join("\n    "),
        check.join("\n    "),
        image.unwrap_or_else(|| "not kept (only the first per test is)".into())
    )
}

/// How a crashed worker may have ended: killed, or finished before the
/// crash; after a shutdown also at an error (exit 2) or by SIGBUS.
fn exit_ok(status: ExitStatus, shutdown: bool) -> bool {
    status.signal() == Some(libc::SIGKILL)
        || status.code() == Some(0)
        || (shutdown && (status.code() == Some(2) || status.signal() == Some(libc::SIGBUS)))
}

fn exit_key(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("worker exit: code {c}"),
        (_, Some(s)) => format!("worker exit: signal {s}"),
        _ => "worker exit: ?".into(),
    }
}

/// Makes a fresh fragmented file `NAME` (a new inode) in `fs`, durable
/// with its directory (and the filler's removal); returns its content.
/// The allocator sometimes keeps the pieces together anyway (seen on XFS
/// right after a relocation, while the blocks it freed were still being
/// released): then it is made again, after a pause.
fn prepare(fs: &TestFs, seed: u64) -> Vec<u8> {
    let path = fs.path(NAME);
    let want = SIZE / common::PIECE / 4;
    let dir = File::open(fs.dir.path()).unwrap();
    for attempt in 0..6 {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
            _ => {}
        }
        // Let the old file's (and the last donor's) blocks be freed first.
        rustix::fs::syncfs(&dir).unwrap();
        std::thread::sleep(Duration::from_millis(200) * attempt as u32);
        let (f, d) = fragmented(fs, NAME, SIZE, seed.wrapping_add(attempt));
        f.sync_all().unwrap();
        if attempt > 0 && matches!(fs.kind, "xfs" | "btrfs") {
            fragment_by_cow(fs, &f);
        }
        let n = budge::extents::extents(&f).map_or(0, |e| e.len());
        drop(f);
        rustix::fs::syncfs(&dir).unwrap();
        if n >= want {
            return d;
        }
        eprintln!(
            "{}: the fragmented file came out in {n} extents (want {want}); making it again",
            fs.kind
        );
    }
    panic!("{}: could not make a fragmented file", fs.kind);
}

/// Fragments `f` where interleaved writes came out whole (seen on a loop
/// XFS after crashed cow relocations: the file and the filler each found
/// free space of their own to grow into): shares it with a scratch file,
/// then rewrites every other piece with its own bytes, each synced, so
/// copy-on-write gives each its own blocks between pieces that keep theirs.
/// The content is unchanged.
fn fragment_by_cow(fs: &TestFs, f: &File) {
    let scratch = fs.path("cow-scratch");
    let s = fs.file_with("cow-scratch", &[]);
    budge::sys::ficlonerange(&s, 0, f, 0, SIZE as u64).unwrap();
    let mut piece = vec![0u8; common::PIECE];
    for at in (common::PIECE..SIZE).step_by(2 * common::PIECE) {
        f.read_exact_at(&mut piece, at as u64).unwrap();
        f.write_all_at(&piece, at as u64).unwrap();
        f.sync_data().unwrap();
    }
    drop(s);
    std::fs::remove_file(scratch).unwrap();
}

fn extent_count(path: &Path) -> usize {
    budge::extents::extents(&File::open(path).unwrap())
        .unwrap()
        .len()
}

/// One uncrashed relocation by a worker, timed from `started` to `done`;
/// checked like a crashed one.
fn measure(
    sess: &mut Session,
    env: &mut dyn Env,
    st: Option<RelocateStrategy>,
    seed: u64,
) -> Measured {
    let want = prepare(env.fs(), seed);
    if let Err(e) = env.settle() {
        sess.fail(&e);
    }
    let fs = env.fs();
    let before = extent_count(&fs.path(NAME));
    let w = spawn(&fs.path(NAME), st);
    let (lines, status, stderr) = w.finish(Duration::from_secs(120));
    let at = |p: &dyn Fn(&str) -> bool| lines.iter().find(|(_, l)| p(l)).map(|(t, _)| *t);
    let (Some(t0), Some(t1), Some(0)) = (
        at(&|l| l == "started"),
        at(&|l| l.starts_with("done ")),
        status.code(),
    ) else {
        sess.fail(&format!(
            "uncrashed {} relocation failed: {status}: {lines:?}\n{stderr}",
            sname(st)
        ))
    };
    let chunks = lines
        .iter()
        .filter(|(_, l)| l.starts_with("chunk "))
        .count() as u64;
    let done = lines
        .iter()
        .find_map(|(_, l)| l.strip_prefix("done "))
        .unwrap();
    let after = match check(fs.dir.path(), &want) {
        Ok(n) => n,
        Err(e) => sess.fail(&format!("after an uncrashed {} relocation: {e}", sname(st))),
    };
    // The file must be fragmented enough for the relocation to have work.
    let moved: u64 = done.split(' ').nth(2).unwrap().parse().unwrap();
    if moved == 0 {
        sess.fail(&format!(
            "{}: nothing moved ({done}); {before} extents",
            sname(st)
        ));
    }
    let m = Measured {
        took: t1 - t0,
        chunks,
    };
    eprintln!(
        "{}: {}: uncrashed relocation of {} MiB took {:?} ({done}; extents {before} -> {after}, {chunks} chunk marks)",
        sess.label,
        sname(st),
        SIZE >> 20,
        m.took
    );
    m
}

/// One round: crash a relocation by `st` at a random point, check, and
/// relocate again. A failure is recorded in `sess`.
fn round(
    sess: &mut Session,
    env: &mut dyn Env,
    rng: &mut Rng,
    st: Option<RelocateStrategy>,
    m: &mut Measured,
) {
    let sn = sname(st);
    let want = prepare(env.fs(), rng.next());
    if let Err(e) = env.settle() {
        sess.fail(&e);
    }
    let path = env.fs().path(NAME);
    let dir = env.fs().dir.path().to_path_buf();
    let before = extent_count(&path);
    let trigger = m.trigger(rng);
    let hammer = env.hammer(rng);
    sess.note(format!(
        "{sn}: {before} extents, {trigger:?}, syncfs thread {}",
        hammer.is_some()
    ));
    let mut w = spawn(&path, st);
    if wait_line(&mut w, |l| l == "started") {
        match trigger {
            Trigger::Time(d) => linger(&mut w, d),
            Trigger::Chunk(k, d) => {
                let want = format!("chunk {k}");
                if wait_line(&mut w, |l| l == want) {
                    linger(&mut w, d);
                }
            }
        }
    }
    let down = Instant::now();
    if let Err(e) = env.crash() {
        sess.fail(&e);
    }
    let syncs = hammer.map(crash::Hammer::stop);
    w.kill();
    let (lines, status, stderr) = w.finish(Duration::from_secs(120));
    for (at, l) in &lines {
        let when = if *at < down { "before" } else { "after" };
        sess.note(format!("worker ({when} the crash): {l}"));
    }
    sess.note(format!("worker: {status}, syncfs calls {syncs:?}"));
    sess.add("rounds");
    sess.add(format!("{sn}: rounds"));
    sess.add(exit_key(status));
    if syncs.is_some() {
        sess.add("rounds with the syncfs thread");
    }
    let p = progress(&lines, down);
    // Relocations vary (other tests share the machine): aim within a
    // running estimate, moved halfway toward each uncrashed one.
    let at = |p: &dyn Fn(&str) -> bool| lines.iter().find(|(_, l)| p(l)).map(|(t, _)| *t);
    if let (Some(t0), Some(t1)) = (at(&|l| l == "started"), at(&|l| l.starts_with("done "))) {
        m.took = (m.took + (t1 - t0)) / 2;
    }
    let at = if p.done.is_some() {
        "finished before the crash".to_string()
    } else if p.started {
        sess.add("crashed mid-relocation");
        // By the progress reports (every strategy), else the swap marks.
        let part = match (p.bytes, p.chunks) {
            (Some((d, t)), _) if d >= t => "all done, not returned",
            (Some((d, _)), _) if d > 0 => "part done",
            (_, 0) => "nothing done",
            (_, k) if k < m.chunks => "part done",
            _ => "all swaps begun",
        };
        format!("crashed mid-relocation, {part}")
    } else {
        "crashed before the relocation started".to_string()
    };
    sess.note(at.clone());
    sess.add(format!("{sn}: {at}"));
    if let Err(e) = env.recover() {
        let keep = (!sess.image_kept).then(|| {
            sess.keep_dir()
                .join(format!("{}.img", sess.round.replace(' ', "-")))
        });
        sess.image_kept = true;
        let what = env.replace(keep);
        sess.failed(
            None,
            &format!("{at}: mounting after the shutdown failed: {e}{what}\n  (went on with a fresh filesystem)"),
        );
        return;
    }
    if !exit_ok(status, env.shutdown()) {
        sess.failed(
            Some(&dir),
            &format!("the worker ended with {status}: {}", stderr.trim()),
        );
        return;
    }
    if let Some(e) = &p.error {
        sess.failed(
            Some(&dir),
            &format!("the relocation failed before the crash: {e}"),
        );
        return;
    }
    // A worker killed inside the capability probe leaves its two
    // rename-exchange files; the next probe in the directory removes them.
    match budge::sys::probe::remove_stale_probe_files(&dir) {
        Ok(0) => {}
        Ok(_) => sess.add("rounds whose stale probe files the next probe removed"),
        Err(e) => sess.failed(
            Some(&dir),
            &format!("{at}: removing stale probe files: {e}"),
        ),
    }
    let after = match check(&dir, &want) {
        Ok(n) => n,
        Err(e) => {
            sess.failed(Some(&dir), &format!("{at}: after the crash: {e}"));
            remove_strays(&dir);
            return;
        }
    };
    // Relocating again works and keeps the content.
    let r = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => relocate(&f, &opts(st)).map_err(|e| e.to_string()),
        Err(e) => Err(format!("open: {e}")),
    };
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            sess.failed(
                Some(&dir),
                &format!("{at}: the relocation after the crash failed: {e}"),
            );
            return;
        }
    };
    let again = match check(&dir, &want) {
        Ok(n) => n,
        Err(e) => {
            sess.failed(
                Some(&dir),
                &format!(
                    "{at}: after the relocation after the crash ({}): {e}",
                    fmt_report(&r)
                ),
            );
            return;
        }
    };
    sess.note(format!(
        "extents {before} -> {after} at the crash -> {again} after relocating again ({})",
        fmt_report(&r)
    ));
    sess.add("rounds verified");
}

/// The strategies to crash here: the automatic choice and each forced
/// in-place strategy that applies.
fn strategies(fs: &TestFs) -> Vec<Option<RelocateStrategy>> {
    use RelocateStrategy::*;
    let known: &[RelocateStrategy] = match fs.kind {
        "ext4" => &[MoveExt],
        "xfs" => &[Dedupe],
        "btrfs" => &[Dedupe, BtrfsDefrag],
        _ => &[],
    };
    let only = std::env::var("BUDGE_RELOCATE_CRASH_STRATEGY").ok();
    let keep = |s: Option<RelocateStrategy>| only.as_deref().is_none_or(|o| o == sname(s));
    let mut v: Vec<_> = std::iter::once(None)
        .chain(known.iter().map(|s| Some(*s)))
        .filter(|s| keep(*s))
        .collect();
    // Strategies added since this test was written (XFS's swapext, say):
    // kept where a trial relocation of a file like the test's accepts them.
    for s in RelocateStrategy::FORCEABLE {
        if [MoveExt, Dedupe, BtrfsDefrag, CopyRename].contains(&s)
            || !s.coherent()
            || !keep(Some(s))
        {
            continue;
        }
        let (f, d) = fragmented(fs, "probe", SIZE, 77);
        match relocate(&f, &opts(Some(s))) {
            Ok(r) => {
                assert!(read_all(&f) == d, "{}: trial {s} changed content", fs.kind);
                eprintln!("{}: {s} applies here ({})", fs.kind, fmt_report(&r));
                v.push(Some(s));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Unsupported | ErrorKind::InvalidArgument
                ) =>
            {
                eprintln!("{}: {s} does not apply here: {e}", fs.kind);
            }
            Err(e) => panic!("{}: trial relocation with {s}: {e}", fs.kind),
        }
        drop(f);
        std::fs::remove_file(fs.path("probe")).unwrap();
    }
    v
}

/// Runs the rounds: one measured uncrashed relocation per strategy, then
/// `n` crashed ones cycling through the strategies; fails at the end if
/// any round failed.
fn session(sess: &mut Session, env: &mut dyn Env, n: u64) {
    let t = Instant::now();
    let mut rng = Rng(sess.seed);
    let sts = strategies(env.fs());
    if sts.is_empty() {
        eprintln!(
            "{}: BUDGE_RELOCATE_CRASH_STRATEGY does not apply here: nothing run",
            sess.label
        );
        return;
    }
    let mut measured = Vec::new();
    for &st in &sts {
        sess.round = format!("measure {}", sname(st));
        measured.push(measure(sess, env, st, rng.next()));
    }
    for it in 0..n {
        let i = it as usize % sts.len();
        sess.round = format!("{it} {}", sname(sts[i]));
        round(sess, env, &mut rng, sts[i], &mut measured[i]);
    }
    sess.report(t.elapsed());
    assert_eq!(
        sess.get("rounds verified") + sess.failures.len() as u64,
        n,
        "every round verified or failed"
    );
}

// ---------------------------------------------------------------------------
// kill -9.

fn kill_test(fs: &TestFs) {
    if fs.kind == "tmpfs" {
        // No extents: relocation has nothing to do, so nothing to crash.
        let (f, d) = fragmented(fs, NAME, SIZE, 1);
        let r = relocate(&f, &opts(None)).unwrap();
        assert_eq!(r.strategy, RelocateStrategy::Nothing, "{r:?}");
        assert_eq!((r.bytes_moved, r.chunks_moved), (0, 0), "{r:?}");
        assert!(r.notes.iter().any(|n| n.contains("no extents")), "{r:?}");
        assert!(read_all(&f) == d);
        eprintln!("relocate kill-9 tmpfs: no extents, nothing to relocate: trivial pass");
        return;
    }
    let mut sess = Session::new(format!("relocate kill-9 {}", fs.kind), fs.kind);
    session(&mut sess, &mut Kill(fs), iters(8));
    sess.finish();
}

fs_test!(kill9, kill_test);

// ---------------------------------------------------------------------------
// Filesystem shutdown.

fn shutdown_test(kind: &'static str) {
    shutdown_on(kind, &[]);
}

fn shutdown_on(kind: &'static str, mkfs_extra: &'static [&'static str]) {
    let Some(mut env) = Shutdown::new(kind, mkfs_extra) else {
        return;
    };
    let label = if mkfs_extra.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({})", mkfs_extra.join(" "))
    };
    let mut sess = Session::new(format!("relocate shutdown {label}"), kind);
    session(&mut sess, &mut env, iters(8));
    env.fs = None;
    if let Some(e) = env.lfs.fsck() {
        // The filesystem's own consistency is the kernel's business, but
        // worth knowing about.
        eprintln!(
            "WARNING: {}: fsck after the shutdowns complains: {e}",
            sess.label
        );
    }
    sess.finish();
}

// Seen on Linux 6.18 (XFS without rmapbt, as `crash/loopfs.rs` makes it):
// once the transaction of an `XFS_IOC_SWAPEXT` that left the donor with a
// btree extent map has reached the on-disk log (relocate's closing
// fdatasync does that at once), a shutdown made the next mount fail (log
// recovery: `xfs_dinode_verify` rejects the donor inode, EUCLEAN). xfs_fsr
// followed by `syncfs` does the same; with rmapbt=1 it does not. budge
// therefore uses swapext only with rmapbt (the trial run in `strategies`
// finds it refused on this filesystem); `shutdown_xfs_rmapbt` crashes it
// there. A round whose remount fails is reported with the kernel log and
// the image, and the test goes on with a fresh filesystem.
kind_tests!(shutdown_test; shutdown_xfs = "xfs", shutdown_ext4 = "ext4");

/// XFS with the reverse-mapping btree, where relocation swaps extents with
/// `XFS_IOC_SWAPEXT` (the `auto` choice for a whole fragmented file).
#[test]
fn shutdown_xfs_rmapbt() {
    shutdown_on("xfs", &["-m", "rmapbt=1"]);
}
