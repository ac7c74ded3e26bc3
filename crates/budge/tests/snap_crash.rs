//! Crash atomicity and durability of snapshot commits.
//!
//! A worker process (this test binary re-executed) commits a stream of
//! self-describing versions of one file (every 4 KiB page stamped with the
//! version, its length and the page number; sizes go up and down) with
//! `commit`, `commit_and_close`, both `OnConflict` modes and in-memory
//! snapshots, announcing each commit before (`begin V`) and after (`done
//! V`) it. The parent crashes it at a random point and checks that the path
//! holds exactly one complete version, no older than the last commit that
//! had returned before the crash and no newer than the last one begun, and
//! that `cleanup` (or the next `SnapshotMut::open`) removes every
//! `.NAME.budge-commit` file the crash left, leaving nothing else.
//!
//! - `shutdown_xfs`, `shutdown_ext4`: a private loop-mounted filesystem
//!   (`crash/loopfs.rs`) is shut down with `FS_IOC_SHUTDOWN` without log
//!   flush (like a power cut), the worker is killed, and the filesystem is
//!   unmounted and mounted again (log recovery). A shutdown is not one
//!   instant: a commit that returned after it began may or may not have
//!   reached the disk, so only commits whose return was seen before it
//!   count as durable. Root only; a loud skip otherwise, a failure under
//!   `CI=true`.
//! - `kill9_*`: SIGKILL, on every filesystem of the matrix. Without a
//!   shutdown the page cache survives, so every commit the worker reported
//!   done must be there.
//!
//! - `power_cut_*`: XFS, btrfs and ext4 (btrfs has no FS_IOC_SHUTDOWN). At
//!   the steps of a commit the loop device's image is copied while the
//!   device is idle, a power cut that keeps every completed write; each
//!   copy is mounted (log replay) and must hold the old version before the
//!   rename, old or new after it, the new one once the commit returned.
//!
//! With the `failpoints` feature some rounds make the worker sleep at
//! `budge::snap::before-rename` (the temporary file is linked, not yet
//! renamed) and crash it there, so clean-up is exercised every run.
//!
//! Environment: `BUDGE_CRASH_ITERS` rounds per test (default 20);
//! `BUDGE_CRASH_SEED` reuses a seed (sizes, methods and crash points; not
//! the timing); `BUDGE_CRASH_VERBOSE` logs every round.

mod common;
mod crash;
mod snapver;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use budge::snap::{self, OnConflict, SnapOptions, SnapshotMut};
use common::{say, Rng, TestFs, Worker};
use crash::rounds::{crash_worker, kill_rounds, shutdown_rounds, Crash, Crashed, Log, Rounds};
use crash::{iters, pause};
use snapver::{check_version, fill_version, version_len, HEADER, PAGE};

// ---------------------------------------------------------------------------
// Self-describing versions (tests/snapver).

/// Version `v`'s length: derived from the version, so the parent knows it.
fn len_of_version(v: u64) -> usize {
    let mut r = Rng(v ^ 0x5EED);
    let pages = if r.chance(20) {
        r.between(1, 3)
    } else {
        r.between(1, 512)
    } as usize;
    let tail = if r.chance(50) {
        0
    } else {
        r.between(HEADER as u64, PAGE as u64 - 1) as usize
    };
    version_len(pages, tail)
}

fn seed(label: &str) -> u64 {
    snapver::seed("BUDGE_CRASH_SEED", label)
}

// ---------------------------------------------------------------------------
// The worker.

const WORKER_ENV: &str = "BUDGE_SNAP_CRASH_WORKER";
const WORKER_TEST: &str = "snap_crash_worker";
const MARK: &str = "budge::snap::before-rename";

/// The worker: runs only when re-executed by a crash test. Commits versions
/// `BASE+1 ..= BASE+COUNT` of the file at its path.
#[test]
fn snap_crash_worker() {
    let Ok(path) = std::env::var(WORKER_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    let var = |k: &str| -> u64 {
        std::env::var(k)
            .unwrap_or_else(|_| panic!("worker needs {k}"))
            .parse()
            .unwrap()
    };
    let (seed, base, count, sleep_ms) = (
        var("BUDGE_SNAPC_SEED"),
        var("BUDGE_SNAPC_BASE"),
        var("BUDGE_SNAPC_COUNT"),
        var("BUDGE_SNAPC_SLEEP_MS"),
    );
    let _scenario = fail::FailScenario::setup();
    fail::cfg_callback(MARK, move || {
        say("mark before-rename");
        if sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(sleep_ms));
        }
    })
    .unwrap();
    let mut rng = Rng(seed);
    let mut cur: Option<SnapshotMut> = None;
    say("opening");
    for v in base + 1..=base + count {
        let on_conflict = if rng.chance(50) {
            OnConflict::Refuse
        } else {
            OnConflict::Overwrite
        };
        let in_memory = rng.chance(15);
        let close = rng.chance(35);
        let mut m = match cur.take() {
            Some(m) => m,
            None => {
                let opts = SnapOptions {
                    on_conflict,
                    in_memory,
                    ..SnapOptions::default()
                };
                let m = match SnapshotMut::open_with(&path, &opts) {
                    Ok(m) => m,
                    Err(e) => {
                        say(&format!("error open {e}"));
                        std::process::exit(3);
                    }
                };
                for c in &m.report().cleaned {
                    say(&format!("cleaned {}", c.display()));
                }
                if v == base + 1 {
                    // What the parent verified must be what we start from.
                    match check_version(&m) {
                        Ok(w) if w == base => {}
                        r => {
                            say(&format!(
                                "error start: expected version {base}, found {r:?}"
                            ));
                            std::process::exit(3);
                        }
                    }
                    say("opened");
                }
                m
            }
        };
        if m.resize(len_of_version(v) as u64).is_err() {
            say(&format!("error {v} resize"));
            std::process::exit(2);
        }
        fill_version(&mut m, v);
        let how = format!(
            "{}{}",
            if close { "commit_and_close" } else { "commit" },
            if m.report().backing == snap::Backing::Memory {
                "-memory"
            } else {
                ""
            }
        );
        say(&format!("begin {v} {how}"));
        let r = if close {
            m.commit_and_close().map_err(budge::Error::from)
        } else {
            let r = m.commit();
            cur = Some(m);
            r
        };
        match r {
            Ok(_) => say(&format!("done {v}")),
            Err(e) => {
                say(&format!("error {v} {e}"));
                std::process::exit(2);
            }
        }
    }
    say("finished");
}

/// Starts a worker committing versions `base+1 ..= base+count` of `path`.
fn spawn_worker(path: &Path, seed: u64, base: u64, count: u64, sleep_ms: u64) -> Worker {
    Worker::spawn(
        common::worker_command(WORKER_TEST)
            .env(WORKER_ENV, path)
            .env("BUDGE_SNAPC_SEED", seed.to_string())
            .env("BUDGE_SNAPC_BASE", base.to_string())
            .env("BUDGE_SNAPC_COUNT", count.to_string())
            .env("BUDGE_SNAPC_SLEEP_MS", sleep_ms.to_string())
            .env_remove("FAILPOINTS"),
    )
}

// ---------------------------------------------------------------------------
// The parent.

/// Where a round crashes the worker.
#[derive(Debug)]
enum Trigger {
    /// `delay` after it announces commit number `k` (of this round).
    Begin(u64, Duration),
    /// `delay` after commit number `k` returns.
    Done(u64, Duration),
    /// `delay` after it opened the file.
    Time(Duration),
    /// `delay` into its sleep at the failpoint before the rename, in commit
    /// number `k` or later.
    Mark(u64, Duration),
}

struct Session {
    log: Log,
    path: PathBuf,
    /// The version the path holds (verified).
    version: u64,
}

impl Session {
    fn new(label: String, path: PathBuf) -> Session {
        let seed = seed(&label);
        let mut v0 = vec![0u8; len_of_version(0)];
        fill_version(&mut v0, 0);
        std::fs::write(&path, &v0).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        File::open(path.parent().unwrap())
            .unwrap()
            .sync_all()
            .unwrap();
        Session {
            log: Log::with_seed(label, seed),
            path,
            version: 0,
        }
    }

    fn fail(&self, msg: &str) -> ! {
        self.log.fail(msg)
    }

    fn trigger(&self, rng: &mut Rng) -> Trigger {
        let mode = rng.below(100);
        if mode < 25 && cfg!(feature = "failpoints") {
            Trigger::Mark(rng.below(4), Duration::from_micros(rng.between(0, 19_999)))
        } else if mode < 60 {
            Trigger::Begin(
                rng.below(6),
                Duration::from_micros(rng.log_between(1, 29_999)),
            )
        } else if mode < 80 {
            Trigger::Done(
                rng.below(6),
                Duration::from_micros(rng.log_between(1, 2_999)),
            )
        } else {
            Trigger::Time(Duration::from_micros(rng.between(0, 199_999)))
        }
    }

    /// Reads the worker's lines until `t` fires (or it ends / 60 s pass).
    fn fire(&self, w: &mut Worker, t: &Trigger) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = self.version;
        let nth = |l: &str, word: &str, k: u64| -> bool {
            l.strip_prefix(word)
                .and_then(|r| r.split(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v > base + k)
        };
        if w.wait_for(deadline, |l| l == "opened" || l.starts_with("error"))
            .is_none()
        {
            return;
        }
        let (hit, delay) = match *t {
            Trigger::Time(d) => (true, d),
            Trigger::Begin(k, d) => (w.wait_for(deadline, |l| nth(l, "begin ", k)).is_some(), d),
            Trigger::Done(k, d) => (w.wait_for(deadline, |l| nth(l, "done ", k)).is_some(), d),
            Trigger::Mark(k, d) => {
                let mut armed = false;
                let hit = w
                    .wait_for(deadline, |l| {
                        armed |= nth(l, "begin ", k.saturating_sub(1));
                        armed && l == "mark before-rename"
                    })
                    .is_some();
                (hit, d)
            }
        };
        if hit {
            // Keep draining lines while we wait, with their times.
            let until = Instant::now() + delay;
            if delay >= Duration::from_millis(2) {
                w.wait_for(until, |_| false);
            } else {
                pause(delay);
            }
        }
    }
}

impl Rounds for Session {
    fn log(&mut self) -> &mut Log {
        &mut self.log
    }

    fn round(&mut self, rng: &mut Rng, crash: Crash<'_>) {
        let shutdown = crash.shutdown;
        let t = self.trigger(rng);
        let sleep_ms = if matches!(t, Trigger::Mark(..)) {
            40
        } else {
            0
        };
        let wseed = rng.next();
        self.log.note(format!(
            "round from version {}: {t:?}, worker seed {wseed:#x}",
            self.version
        ));
        let mut w = spawn_worker(&self.path, wseed, self.version, 100_000, sleep_ms);
        self.fire(&mut w, &t);
        if shutdown && matches!(t, Trigger::Mark(..)) && rng.chance(60) {
            // Force the log while the worker sleeps between the link and
            // the rename, so the temporary name survives the shutdown.
            let d = File::open(self.path.parent().unwrap()).unwrap();
            rustix::fs::syncfs(&d).unwrap();
            self.log
                .stats
                .add("syncfs at the failpoint before the shutdown");
        }
        let Crashed {
            lines,
            status,
            down,
            alive,
        } = crash_worker(&mut self.log, w, crash);
        // The commits: certain are those reported done (before the
        // shutdown began, after one); the outcome may be any version from
        // there up to the last one begun.
        let mut certain = self.version;
        let mut begun = self.version;
        let mut opened = false;
        let mut marks = 0;
        let mut last_before = "nothing";
        for (at, l) in &lines {
            let before = *at < down;
            let word = l.split(' ').next().unwrap();
            let num = l.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok());
            if matches!(word, "begin" | "done") && num.is_none() {
                self.fail(&format!("bad line {l:?}"));
            }
            let v = num.unwrap_or(0);
            match word {
                "opened" => opened = true,
                "begin" => {
                    if v != begun + 1 {
                        self.fail(&format!("began {v} after {begun}"));
                    }
                    begun = v;
                }
                "done" => {
                    if v != begun {
                        self.fail(&format!("done {v} while {begun} was begun"));
                    }
                    if !shutdown || before {
                        certain = v;
                    }
                }
                "mark" => marks += 1,
                "error" if shutdown && !before => {
                    self.log.stats.add("worker error after the shutdown");
                }
                "error" => self.fail(&format!("worker: {l}")),
                "cleaned" => self.fail(&format!(
                    "the worker's open found strays the parent's clean-up left: {l}"
                )),
                _ => {}
            }
            if before {
                last_before = match word {
                    "opening" => "opening",
                    "opened" => "before the first commit",
                    "begin" => "inside a commit",
                    "mark" => "at the failpoint before the rename",
                    "done" => "between commits",
                    _ => "after the worker ended",
                };
            }
        }
        if !opened && alive {
            self.log
                .stats
                .add("crash before the worker opened the file");
        }
        self.log.stats.add(format!("crash point: {last_before}"));
        if matches!(t, Trigger::Mark(..)) && marks > 0 {
            self.log.stats.add("crash at the failpoint");
        }
        // The file: exactly one complete version in [certain, begun].
        let got = match std::fs::read(&self.path) {
            Ok(b) => check_version(&b),
            Err(e) => Err(format!("read: {e}")),
        };
        let v = match got {
            Ok(v) => v,
            Err(e) => self.fail(&format!(
                "the path does not hold one complete version: {e} (certain {certain}, begun {begun})"
            )),
        };
        if v < certain || v > begun {
            self.fail(&format!(
                "the path holds version {v}; expected one in [{certain}, {begun}] (the last commit returned before the crash, the last begun)"
            ));
        }
        self.log.stats.add(match (v == certain, begun == certain) {
            (true, true) => "outcome: nothing in flight",
            (true, false) => "outcome: the interrupted commit did not happen",
            (false, _) if v == begun => "outcome: the last commit begun is there",
            _ => "outcome: an uncertain earlier commit is there",
        });
        self.log.note(format!(
            "{status}; found version {v}, certain {certain}, begun {begun}, crash point {last_before}"
        ));
        self.check_strays(rng, v, begun);
        self.version = v;
        self.log.stats.add("rounds verified");
    }

    fn report(&mut self, elapsed: Duration) {
        self.log
            .report(elapsed, &format!(", at version {}", self.version));
    }
}

impl Session {
    /// The crash's leftovers: only a `.NAME.budge-commit` file, a
    /// complete version that was begun; clean-up removes all of them.
    /// `found`: the version at the path; `begun`: the last one begun.
    fn check_strays(&mut self, rng: &mut Rng, found: u64, begun: u64) {
        let dir = self.path.parent().unwrap().to_path_buf();
        let name = self
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let temp = format!(".{name}.budge-commit");
        let mut strays = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            if n == name || n == "lost+found" {
                continue;
            }
            if n != temp {
                self.fail(&format!("unexpected file {n} in {}", dir.display()));
            }
            let p = dir.join(&n);
            // Linked after its fsync: a complete version that was begun and
            // whose rename did not happen (or did not last): newer than the
            // one at the path.
            match std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| check_version(&b))
            {
                Ok(v) if v > found && v <= begun => {
                    self.log.note(format!("stray {n}: version {v}"));
                }
                r => self.fail(&format!(
                    "stray {n} holds {r:?}, not a complete version in ({found}, {begun}]"
                )),
            }
            strays.push(p);
        }
        strays.sort();
        if !strays.is_empty() {
            self.log
                .stats
                .add("rounds that left a stray temporary file");
        }
        let mut cleaned = if rng.chance(50) {
            snap::cleanup(&self.path).unwrap_or_else(|e| self.fail(&format!("cleanup: {e}")))
        } else {
            // The next writable snapshot cleans up first.
            let m = SnapshotMut::open(&self.path)
                .unwrap_or_else(|e| self.fail(&format!("SnapshotMut::open: {e}")));
            m.report().cleaned.clone()
        };
        cleaned.sort();
        if cleaned != strays {
            self.fail(&format!("cleaned {cleaned:?}; the strays were {strays:?}"));
        }
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| *n == temp)
            .collect();
        if !left.is_empty() {
            self.fail(&format!("strays remain after clean-up: {left:?}"));
        }
    }
}

// ---------------------------------------------------------------------------
// kill -9, on every filesystem.

fn kill_test(fs: &TestFs) {
    let mut sess = Session::new(
        format!("snapshot commit kill-9 {}", fs.kind),
        fs.path("file"),
    );
    let n = iters(20);
    kill_rounds(&mut sess, n);
    if cfg!(feature = "failpoints") && n >= 20 {
        assert!(
            sess.log
                .stats
                .get("rounds that left a stray temporary file")
                > 0,
            "{}: no kill at the failpoint left a stray (seed {:#x})",
            sess.log.label,
            sess.log.seed
        );
    }
}

fs_test!(kill9_during_commits, kill_test);

// ---------------------------------------------------------------------------
// Filesystem shutdown on a private XFS or ext4.

fn shutdown_test(kind: &'static str) {
    shutdown_rounds(kind, "snapshot shutdown test", iters(20), |dir| {
        Session::new(format!("snapshot commit shutdown {kind}"), dir.join("file"))
    });
}

kind_tests!(shutdown_test; shutdown_xfs = "xfs", shutdown_ext4 = "ext4");

// ---------------------------------------------------------------------------
// Power cut by image capture, at each step of a commit.
//
// btrfs has no FS_IOC_SHUTDOWN, so its crash is taken in a copy: at the
// failpoints before and after the rename (and once the commit returned),
// the loop device's image is copied while the device is idle
// (`LoopFs::capture`): a power cut that keeps every completed write. Each
// copy is then mounted (log replay) and must hold one whole version: the
// old one before the rename, old or new between the rename and the sync
// that makes it durable, the new one once the commit returned. Some
// rounds run `syncfs` before the capture after the rename: a transaction
// commit there must hold the whole new version. XFS and ext4 run it too.
// Without the `failpoints` feature only the capture after the return runs.

fn power_cut_round(
    fs: &mut crash::loopfs::LoopFs,
    rng: &mut Rng,
    cur: u64,
    label: &str,
    stats: &mut BTreeMap<String, u64>,
) -> u64 {
    let next = cur + 1;
    let dir = fs.path().join("d");
    let path = dir.join("file");
    let how = ["commit", "commit_and_close", "snapshot_to"][rng.between(0, 2) as usize];
    let sync_after_rename = rng.chance(50);
    let caps = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(&str, PathBuf)>::new()));
    let me = std::thread::current().id();
    let (dev, image, root) = (fs.dev.clone(), fs.image.clone(), fs.root.clone());
    let take = {
        let caps = caps.clone();
        let mnt = fs.path().to_path_buf();
        move |stage: &'static str| {
            if std::thread::current().id() != me {
                return;
            }
            if stage == "after-rename+syncfs" {
                let d = File::open(&mnt).unwrap();
                rustix::fs::syncfs(&d).unwrap();
            }
            let to = root.join(format!("capture-{stage}.img"));
            crash::loopfs::capture_device(&dev, &image, &to)
                .unwrap_or_else(|e| panic!("capture at {stage}: {e}"));
            caps.lock().unwrap().push((stage, to));
        }
    };
    #[cfg(feature = "failpoints")]
    {
        let t = take.clone();
        fail::cfg_callback("budge::snap::before-rename", move || t("before-rename")).unwrap();
        let t = take.clone();
        fail::cfg_callback("budge::snap::after-rename", move || {
            t("after-rename");
            if sync_after_rename {
                t("after-rename+syncfs");
            }
        })
        .unwrap();
    }
    let len = len_of_version(next);
    let r = match how {
        "snapshot_to" => {
            let src = dir.join("src");
            let mut buf = vec![0u8; len];
            fill_version(&mut buf, next);
            std::fs::write(&src, &buf).unwrap();
            File::open(&src).unwrap().sync_all().unwrap();
            snap::snapshot_to(&src, &path, true, &SnapOptions::default()).map(|_| ())
        }
        _ => {
            let mut m = SnapshotMut::open(&path).unwrap();
            m.resize(len as u64).unwrap();
            fill_version(&mut m, next);
            if how == "commit" {
                m.commit().map(|_| ())
            } else {
                m.commit_and_close().map(|_| ()).map_err(budge::Error::from)
            }
        }
    };
    #[cfg(feature = "failpoints")]
    {
        fail::remove("budge::snap::before-rename");
        fail::remove("budge::snap::after-rename");
    }
    r.unwrap_or_else(|e| panic!("{label}: {how} of version {next}: {e}"));
    take("returned");
    let caps = std::mem::take(&mut *caps.lock().unwrap());
    if cfg!(feature = "failpoints") {
        assert_eq!(
            caps.len(),
            if sync_after_rename { 4 } else { 3 },
            "{label}: captures {caps:?}"
        );
    }
    for (stage, image) in caps {
        fs.boot_from(&image)
            .unwrap_or_else(|e| panic!("{label}: mount the capture at {stage}: {e}"));
        let got = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| check_version(&b))
            .unwrap_or_else(|e| {
                panic!("{label}: {how} {cur} -> {next}, power cut at {stage}: {e}")
            });
        let allowed: &[u64] = match stage {
            "before-rename" => &[cur],
            "after-rename" => &[cur, next],
            _ => &[next],
        };
        assert!(
            allowed.contains(&got),
            "{label}: {how} {cur} -> {next}, power cut at {stage}: version {got}, expected one of {allowed:?}"
        );
        *stats
            .entry(format!(
                "{how} cut at {stage}: version {}",
                if got == next { "new" } else { "old" }
            ))
            .or_default() += 1;
        // What the cut may leave besides the file: the temporary name
        // (cleaned up by the next open) and the snapshot_to source.
        let cleaned = snap::cleanup(&path).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "src")
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["file"],
            "{label}: after the cut at {stage} and cleanup ({cleaned:?})"
        );
        if !cleaned.is_empty() {
            *stats
                .entry(format!("cut at {stage} left a temporary file"))
                .or_default() += 1;
        }
    }
    next
}

fn power_cut_test(kind: &'static str) {
    // Failpoints are per process: one kind at a time.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let label = format!("snapshot commit power cut {kind}");
    let Some(mut fs) = crash::loop_fs(kind, &label) else {
        return;
    };
    let mut rng = Rng(seed(&label));
    let dir = fs.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let mut buf = vec![0u8; len_of_version(1)];
    fill_version(&mut buf, 1);
    std::fs::write(dir.join("file"), &buf).unwrap();
    rustix::fs::syncfs(File::open(&dir).unwrap()).unwrap();
    let mut stats = BTreeMap::new();
    let mut cur = 1;
    let t = Instant::now();
    for _ in 0..iters(6) {
        cur = power_cut_round(&mut fs, &mut rng, cur, &label, &mut stats);
    }
    let mut s = format!(
        "{label}: {} commits in {:.1} s",
        cur - 1,
        t.elapsed().as_secs_f64()
    );
    for (k, n) in &stats {
        s.push_str(&format!("\n  {k}: {n}"));
    }
    eprintln!("{s}");
}

kind_tests!(power_cut_test; power_cut_xfs = "xfs", power_cut_btrfs = "btrfs", power_cut_ext4 = "ext4");
