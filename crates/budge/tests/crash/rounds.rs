//! Rounds of crashes, shared by the overlay and snapshot crash tests: a
//! session's label, seed, log and statistics ([`Log`]); crashing a worker
//! and checking how it ended ([`crash_worker`]); and the two ways a test
//! runs its rounds, `kill -9` on the matrix's filesystem ([`kill_rounds`])
//! and shutdown of a private loop filesystem ([`shutdown_rounds`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use budge::sys::{fs_shutdown, ShutdownMode};

use crate::common::{Rng, Worker};

/// `BUDGE_CRASH_VERBOSE`: log every round on stderr.
pub fn verbose() -> bool {
    std::env::var_os("BUDGE_CRASH_VERBOSE").is_some()
}

/// Counts by key.
#[derive(Default)]
pub struct Stats(pub BTreeMap<String, u64>);

impl Stats {
    pub fn add(&mut self, k: impl Into<String>) {
        self.addn(k, 1);
    }
    pub fn addn(&mut self, k: impl Into<String>, n: u64) {
        *self.0.entry(k.into()).or_default() += n;
    }
    pub fn get(&self, k: &str) -> u64 {
        self.0.get(k).copied().unwrap_or(0)
    }
}

/// A session's label, seed, log and statistics.
pub struct Log {
    pub label: String,
    pub seed: u64,
    pub round: u64,
    pub lines: Vec<String>,
    pub stats: Stats,
}

impl Log {
    /// A log for `label` with the run's seed ([`super::seed`]).
    pub fn new(label: String) -> Log {
        let seed = super::seed(&label);
        Log::with_seed(label, seed)
    }

    pub fn with_seed(label: String, seed: u64) -> Log {
        Log {
            label,
            seed,
            round: 0,
            lines: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn note(&mut self, s: String) {
        if verbose() {
            eprintln!("{} [{}] {s}", self.label, self.round);
        }
        self.lines.push(format!("[{}] {s}", self.round));
    }

    /// Fails the test with the seed that repeats it and the log's tail.
    pub fn fail(&self, msg: &str) -> ! {
        let tail: Vec<&str> = self
            .lines
            .iter()
            .rev()
            .take(80)
            .rev()
            .map(String::as_str)
            .collect();
        panic!(
            "{}: round {}: {msg}\nseed {:#x} (BUDGE_CRASH_SEED={:#x})\nlog tail:\n  {}",
            self.label,
            self.round,
            self.seed,
            self.seed,
            tail.join("\n  ")
        );
    }

    /// Prints the statistics; `extra` follows the seed on the first line.
    pub fn report(&self, elapsed: Duration, extra: &str) {
        let mut s = format!(
            "{}: {} rounds in {:.1} s (seed {:#x}){extra}:",
            self.label,
            self.stats.get("rounds verified"),
            elapsed.as_secs_f64(),
            self.seed,
        );
        for (k, n) in &self.stats.0 {
            s.push_str(&format!("\n  {k}: {n}"));
        }
        eprintln!("{s}");
    }

    /// Records the worker's lines in the log, each marked before or after
    /// the crash began.
    pub fn log_lines(&mut self, lines: &[(Instant, String)], down: Instant) {
        for (at, l) in lines {
            let when = if *at < down { "before" } else { "after" };
            self.lines
                .push(format!("[{}] worker ({when}): {l}", self.round));
        }
    }
}

/// How a round crashes its worker.
pub struct Crash<'a> {
    /// Whether `kill` shuts the filesystem down (and `remount` brings it
    /// back).
    pub shutdown: bool,
    /// Crashes the worker (which is then killed, if still running); the
    /// session's log is there to fail with.
    pub kill: &'a mut dyn FnMut(&Log, &mut Worker),
    /// Runs once the worker is gone, with the session's log likewise.
    pub remount: &'a mut dyn FnMut(&Log),
}

/// A crash test's session: rounds that each start a worker, crash it and
/// check what survived.
pub trait Rounds {
    fn log(&mut self) -> &mut Log;
    /// Runs one round: a worker, the crash, the checks.
    fn round(&mut self, rng: &mut Rng, crash: Crash<'_>);
    /// Prints the statistics.
    fn report(&mut self, elapsed: Duration) {
        self.log().report(elapsed, "");
    }
}

/// What a crashed worker left.
pub struct Crashed {
    /// Its lines, with their times.
    pub lines: Vec<(Instant, String)>,
    pub status: ExitStatus,
    /// When the crash began.
    pub down: Instant,
    /// Whether the worker was still running then.
    pub alive: bool,
}

/// Crashes the worker `w` (`crash.kill`, then SIGKILL), waits for it and
/// calls `crash.remount`; logs its lines and counts how it ended, which must
/// be killed or, after a shutdown, at an error (exit 2 or 3) or by SIGBUS
/// (its mapping is on the dead filesystem).
pub fn crash_worker(log: &mut Log, mut w: Worker, crash: Crash<'_>) -> Crashed {
    let alive = !w.exited();
    let down = Instant::now();
    (crash.kill)(log, &mut w);
    w.kill();
    let (lines, status, stderr) = w.finish(Duration::from_secs(60));
    (crash.remount)(log);
    log.log_lines(&lines, down);
    let shutdown = crash.shutdown;
    let exit_ok = status.signal() == Some(libc::SIGKILL)
        || (shutdown && alive && matches!(status.code(), Some(2 | 3)))
        || (shutdown && alive && status.signal() == Some(libc::SIGBUS));
    if !exit_ok {
        log.fail(&format!("worker ended with {status}: {stderr}"));
    }
    let key = match (status.code(), status.signal()) {
        (Some(c), _) => format!("worker exit: code {c}"),
        (_, Some(s)) => format!("worker exit: signal {s}"),
        _ => "worker exit: ?".into(),
    };
    log.stats.add(key);
    Crashed {
        lines,
        status,
        down,
        alive,
    }
}

/// Runs `n` rounds of `sess` on the matrix's filesystem, each killing the
/// worker with SIGKILL; every round must be verified.
pub fn kill_rounds<S: Rounds>(sess: &mut S, n: u64) {
    let mut rng = Rng(sess.log().seed);
    let t = Instant::now();
    for it in 0..n {
        sess.log().round = it;
        let crash = Crash {
            shutdown: false,
            kill: &mut |_, w| w.kill(),
            remount: &mut |_| {},
        };
        sess.round(&mut rng, crash);
    }
    sess.report(t.elapsed());
    assert_eq!(sess.log().stats.get("rounds verified"), n);
}

/// Shuts the filesystem holding `mnt` down like a power cut.
pub fn shut_down(mnt: &Path) -> Result<(), String> {
    let d = File::open(mnt).map_err(|e| e.to_string())?;
    fs_shutdown(&d, ShutdownMode::NoLogFlush)
        .map_err(|e| format!("FS_IOC_SHUTDOWN on {}: {e}", mnt.display()))
}

/// Runs `n` rounds of the session `make` makes in a fresh directory on a
/// private loop filesystem of `kind` (none: a loud skip, see
/// [`super::loop_fs`]), each shutting the filesystem down like a power cut
/// and mounting it again; then runs fsck. Every round must be verified.
pub fn shutdown_rounds<S: Rounds>(
    kind: &'static str,
    what: &str,
    n: u64,
    make: impl FnOnce(&Path) -> S,
) {
    let Some(mut fs) = super::loop_fs(kind, what) else {
        return;
    };
    let dir = fs.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    File::open(fs.path()).unwrap().sync_all().unwrap();
    let mut sess = make(&dir);
    let mut rng = Rng(sess.log().seed);
    let t = Instant::now();
    let mnt = fs.path().to_path_buf();
    for it in 0..n {
        sess.log().round = it;
        let fs_ref = &mut fs;
        let crash = Crash {
            shutdown: true,
            kill: &mut |log, _| {
                if let Err(e) = shut_down(&mnt) {
                    log.fail(&e);
                }
            },
            remount: &mut |log| {
                if let Err(e) = fs_ref.cycle() {
                    log.fail(&format!("remount after the shutdown: {e}"));
                }
            },
        };
        sess.round(&mut rng, crash);
    }
    if let Some(e) = fs.fsck() {
        eprintln!(
            "WARNING: {}: fsck after the shutdowns complains: {e}",
            sess.log().label
        );
        sess.log().stats.add(format!("FSCK COMPLAINED: {e}"));
    }
    sess.report(t.elapsed());
    assert_eq!(sess.log().stats.get("rounds verified"), n);
}
