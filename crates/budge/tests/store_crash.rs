//! Crash atomicity of the store's structural changes (add, resize, remove,
//! rename): after a crash at any point the store reopens in the state before
//! or after the interrupted change, never between, and no byte committed
//! before it is lost.
//!
//! A worker process (this binary re-executed, see `crash/mod.rs`) runs a
//! random stream of adds, resizes (within and across capacity), removes,
//! renames and committed writes, announcing each op before and after it;
//! the parent keeps a model of every byte, crashes the worker, reopens the
//! store (recovery) and checks the table and every byte of every region.
//!
//! - `kill9_*`: SIGKILL at a random time, just after a chosen op begins, or
//!   (with the `failpoints` feature) at a chosen distance after the
//!   `budge::store::after-intent` / `after-shift` failpoints, sometimes
//!   while the worker sleeps there; sometimes the recovery is killed too.
//!   The store's clean pages are dropped from the page cache before the
//!   check, so it reads what is on disk. Every filesystem of the matrix,
//!   cycling through the store strategies.
//! - `shutdown_*`: the same on a private loop-mounted XFS or ext4, crashed
//!   with `FS_IOC_SHUTDOWN` without log flush (as xfstests does), then
//!   unmounted and mounted again (log recovery). Stores there are large and
//!   sparse with thousands of extents, so INSERT/COLLAPSE_RANGE runs long
//!   enough to be cut, and in most rounds a thread calls `syncfs` in a loop
//!   so part of a shift can reach the log. A shutdown is not one instant:
//!   an op that returns after it began may or may not have reached the disk
//!   and is checked like the interrupted one. Root only; a loud skip
//!   otherwise (a failure under `CI=true`).
//!
//! Environment: `BUDGE_CRASH_ITERS` rounds per test (default 40 kills and
//! 16 shutdowns per filesystem); `BUDGE_CRASH_SEED` reuses a seed (the op
//! streams, not the timing); `BUDGE_CRASH_REPORT` a file the statistics
//! are appended to (they always go to stderr); `BUDGE_CRASH_VERBOSE` logs
//! every round; `BUDGE_CRASH_FOCUS=<op kind>` shuts down just after such an
//! op returns; `BUDGE_CRASH_HAMMER=0|1` forces the `syncfs` thread off or
//! on. A failure keeps the store as the crash left it and after recovery,
//! the op log and the history in `/var/tmp/budge-crash-fail-<test>-<seed>/`.

mod common;
mod crash;

use std::time::{Duration, Instant};

use budge::sys::{fs_shutdown, ShutdownMode};
use budge::Strategy;
use common::TestFs;
use crash::loopfs::LoopFs;
use crash::model::{Op, Rng};
use crash::{fire, forensic, iters, pause, seed, strategy_name, Hammer, Session, Trigger, Worker};

/// The worker: runs only when re-executed by a crash test.
#[test]
fn crash_worker() {
    crash::worker_main();
}

fn kill_setup() -> Vec<Op> {
    vec![
        Op::Add {
            name: "a".into(),
            len: 100_000,
        },
        Op::Add {
            name: "b".into(),
            len: (1 << 20) + 3,
        },
        Op::Add {
            name: "c".into(),
            len: 0,
        },
        Op::Write {
            name: "a".into(),
            start: 0,
            end: 100_000,
            ver: 1,
        },
        Op::Stripe {
            name: "b".into(),
            start: 100,
            end: (1 << 20) + 3,
            stride: 32 << 10,
            chunk: 4096,
            ver: 2,
        },
    ]
}

fn kill_round(sess: &mut Session, rng: &mut Rng, it: u64, st: Option<Strategy>) {
    let sname = strategy_name(st);
    let mut cfg = sess.worker(rng, it, 150, st, "kill");
    let mode = rng.below(100);
    let marks = cfg!(feature = "failpoints");
    let trigger = if mode < 20 {
        Trigger::Time(Duration::from_micros(rng.range(0, 300_000)))
    } else if mode < 50 && marks {
        // Sleep in the window between the durable intent and the shift, or
        // between the shift and the op's return, and kill in it.
        let mark = *rng.pick(&crash::MARKS);
        cfg.sleep = Some((mark, 40));
        Trigger::Mark {
            mark,
            k: rng.below(12),
            deep: false,
            delay: Duration::from_micros(rng.range(0, 40_000)),
        }
    } else if mode < 70 && marks {
        // Kill inside the shift itself.
        Trigger::Mark {
            mark: "after-intent",
            k: rng.below(12),
            deep: true,
            delay: sess.shift_delay(rng, sname),
        }
    } else {
        Trigger::Op {
            k: rng.below(30),
            structural: rng.chance(70),
            delay: Duration::from_micros(rng.log_range(1, 30_000)),
        }
    };
    sess.note(format!(
        "kill round: strategy {sname}, {trigger:?}, sleep {:?}",
        cfg.sleep
    ));
    let mut w = Worker::spawn(&cfg);
    fire(&mut w, &sess.model, &trigger);
    let crash = Instant::now();
    w.kill();
    let (lines, status, desc) = w.finish(Duration::from_secs(120));
    sess.note(format!("worker: {desc}"));
    sess.check_exit(sname, status, &desc, false);
    let crashed = sess.absorb(&lines, sname, crash, false);
    if !crashed.actions.is_empty() {
        sess.fail(&format!(
            "the worker's open found recovery work after the parent's recovery: {:?}",
            crashed.actions
        ));
    }
    sess.stats.add(sname, "rounds");
    if !crashed.uncertain.is_empty() && rng.chance(20) {
        let at = forensic(&sess.path);
        if at != "clean" && !at.ends_with("complete") {
            // Kill the recovery too.
            sess.crash_state(sname, "at crash, then killed in recovery");
            let cfg2 = sess.worker(rng, it, 0, st, "kill");
            let mut w2 = Worker::spawn(&cfg2);
            w2.wait_for(Instant::now() + Duration::from_secs(60), |l| l == "opening");
            pause(Duration::from_micros(rng.log_range(1, 5_000)));
            let crash = Instant::now();
            w2.kill();
            let (l2, status, desc) = w2.finish(Duration::from_secs(120));
            sess.check_exit(sname, status, &desc, false);
            let opened = l2.iter().any(|(_, l)| l == "opened");
            sess.stats.add(
                sname,
                if opened {
                    "recovery worker completed before the kill"
                } else {
                    "recovery worker killed before it completed"
                },
            );
            assert!(sess.absorb(&l2, sname, crash, false).uncertain.is_empty());
            sess.verify(crashed, st, "after a kill in recovery");
            return;
        }
    }
    sess.verify(crashed, st, "at crash");
}

fn kill_test(fs: &TestFs) {
    let label = format!("kill-9 {}", fs.kind);
    let seed = seed(&label);
    let mut rng = Rng::new(seed);
    let mut sess = Session::create(&label, fs.path("store"), seed, &kill_setup());
    sess.drop_cache = true;
    let strategies = common::store_strategies_in(fs.dir.path());
    let n = iters(40);
    let t = Instant::now();
    for it in 0..n {
        sess.iteration = it;
        let st = strategies[it as usize % strategies.len()];
        kill_round(&mut sess, &mut rng, it, st);
    }
    sess.report(t.elapsed());
    assert_eq!(sess.stats.get("rounds"), n);
    assert_eq!(sess.stats.sum("in flight: "), n, "every round verified");
    // With the failpoints the kills land inside structural changes; make
    // sure the test exercised recovery, not just clean stores.
    if cfg!(feature = "failpoints") && n >= 20 {
        let interrupted = sess.stats.sum("at crash: native") + sess.stats.sum("at crash: sidecar")
            - sess.stats.sum("at crash: native insert: complete")
            - sess.stats.sum("at crash: native collapse: complete");
        assert!(
            interrupted > 0,
            "{label}: no kill landed inside a structural change (seed {seed:#x})"
        );
    }
}

fs_test!(kill9_during_a_stream_of_changes, kill_test);

fn shutdown_setup(rng: &mut Rng) -> Vec<Op> {
    let mut v = Vec::new();
    for k in 0..8u64 {
        let name = format!("p{k}");
        let len = rng.range(8 << 20, 40 << 20);
        v.push(Op::Add {
            name: name.clone(),
            len,
        });
        // ~1000 separate 4 KiB writes with holes between: ~1000 extents.
        let stride = (len / 1000).next_multiple_of(4096).max(8192);
        v.push(Op::Stripe {
            name,
            start: rng.below(stride / 4096) * 4096,
            end: len,
            stride,
            chunk: 4096,
            ver: k + 1,
        });
    }
    v
}

/// Refragments the largest regions until the store has `want` extents
/// again (copying strategies and writes merge them; on XFS a copy into a
/// sparse range gets speculative preallocation over the holes): empties a
/// region and grows it back (a hole), then writes a 4 KiB chunk every
/// `len / 2500` bytes of it, top down.
fn refragment(sess: &mut Session, rng: &mut Rng, it: u64, want: usize) {
    let mut n = crash::count_extents(&sess.path).unwrap_or(0);
    if n >= want {
        return;
    }
    let mut s = crash::open_retry(&sess.path, &crash::opts(None))
        .0
        .unwrap_or_else(|e| sess.fail(&format!("open to refragment: {e}")));
    if sess.model.regions.iter().all(|r| r.len < 8 << 20) && sess.model.total() < 256 << 20 {
        let op = Op::Add {
            name: format!("f{it}"),
            len: 32 << 20,
        };
        if let Err(e) = op.run(&mut s) {
            sess.fail(&format!("refragment: {op}: {e}"));
        }
        sess.model.apply(&op).unwrap();
        sess.log_parent(&op);
    }
    let mut regs = sess.model.table();
    regs.sort_by_key(|(_, len)| std::cmp::Reverse(*len));
    for (k, (name, len)) in regs.into_iter().enumerate() {
        if n >= want || len < 1 << 20 {
            break;
        }
        let stride = (len / 2500).next_multiple_of(4096).max(8192);
        let ops = [
            Op::Resize {
                name: name.clone(),
                len: 0,
            },
            Op::Resize {
                name: name.clone(),
                len,
            },
            Op::Stripe {
                name,
                start: rng.below(stride / 4096) * 4096,
                end: len,
                stride,
                chunk: 4096,
                ver: ((it + 1) << 32) + 0x8000_0000 + k as u64,
            },
        ];
        for op in ops {
            if let Err(e) = op.run(&mut s) {
                sess.fail(&format!("refragment: {op}: {e}"));
            }
            sess.model.apply(&op).unwrap();
            sess.log_parent(&op);
        }
        n = crash::count_extents(&sess.path).unwrap_or(0);
    }
    drop(s);
    sess.note(format!("refragmented to {n} extents"));
}

/// `BUDGE_CRASH_FOCUS`: shut down just after an op of this kind returns
/// (`write`, `stripe`, `resize`, ...), to chase a durability problem.
fn focus() -> Option<&'static str> {
    let v = std::env::var("BUDGE_CRASH_FOCUS").ok()?;
    ["add", "resize", "remove", "rename", "write", "stripe"]
        .into_iter()
        .find(|k| *k == v)
}

fn shutdown(fs: &LoopFs, sess: &Session) {
    let d = std::fs::File::open(fs.path()).unwrap();
    if let Err(e) = fs_shutdown(&d, ShutdownMode::NoLogFlush) {
        sess.fail(&format!("FS_IOC_SHUTDOWN on {}: {e}", fs.path().display()));
    }
}

fn shutdown_round(
    sess: &mut Session,
    fs: &mut LoopFs,
    rng: &mut Rng,
    it: u64,
    st: Option<Strategy>,
) {
    let sname = strategy_name(st);
    refragment(sess, rng, it, 5000);
    sess.note(format!(
        "extents {:?}, table {:?}",
        crash::count_extents(&sess.path),
        sess.model.table()
    ));
    let cfg = sess.worker(rng, it, 100, st, "shutdown");
    let mode = rng.below(100);
    let trigger = if let Some(kind) = focus() {
        // BUDGE_CRASH_FOCUS=<op kind>: crash just after such an op returned.
        Trigger::Done {
            kind,
            k: rng.below(6),
            delay: Duration::from_micros(rng.log_range(1, 5_000)),
        }
    } else if mode < 55 && cfg!(feature = "failpoints") {
        // Inside the shift: the fallocate (native) or the copy back.
        Trigger::Mark {
            mark: "after-intent",
            k: rng.below(6),
            deep: true,
            delay: sess.shift_delay(rng, sname),
        }
    } else if mode < 75 {
        Trigger::Op {
            k: rng.below(6),
            structural: true,
            delay: Duration::from_micros(rng.log_range(1, 100_000)),
        }
    } else {
        Trigger::Time(Duration::from_micros(rng.range(0, 1_500_000)))
    };
    let hammer = match std::env::var("BUDGE_CRASH_HAMMER").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => rng.chance(60),
    };
    sess.note(format!(
        "shutdown round: strategy {sname}, {trigger:?}, syncfs hammer {hammer}"
    ));
    let mut w = Worker::spawn(&cfg);
    let h = hammer.then(|| Hammer::start(fs.path(), rng.next()));
    fire(&mut w, &sess.model, &trigger);
    let alive = !w.exited();
    let down = Instant::now();
    shutdown(fs, sess);
    let syncs = h.map(Hammer::stop);
    w.kill();
    let (lines, status, desc) = w.finish(Duration::from_secs(120));
    sess.note(format!("worker: {desc}; syncfs calls {syncs:?}"));
    sess.check_exit(sname, status, &desc, alive);
    if let Err(e) = fs.cycle() {
        sess.fail(&format!("remount after the shutdown: {e}"));
    }
    let crashed = sess.absorb(&lines, sname, down, true);
    if !crashed.actions.is_empty() {
        sess.fail(&format!(
            "the worker's open found recovery work after the parent's recovery: {:?}",
            crashed.actions
        ));
    }
    sess.stats.add(sname, "rounds");
    sess.stats.add(
        sname,
        if hammer {
            "rounds with the syncfs hammer"
        } else {
            "rounds without the syncfs hammer"
        },
    );
    if !crashed.uncertain.is_empty() && rng.chance(25) {
        let at = forensic(&sess.path);
        if at != "clean" && !at.ends_with("complete") {
            // Shut down again while a worker's open recovers.
            sess.crash_state(sname, "at crash, then shut down in recovery");
            let cfg2 = sess.worker(rng, it, 0, st, "shutdown");
            let mut w2 = Worker::spawn(&cfg2);
            w2.wait_for(Instant::now() + Duration::from_secs(60), |l| l == "opening");
            pause(Duration::from_micros(rng.log_range(1, 50_000)));
            let alive = !w2.exited();
            let down = Instant::now();
            shutdown(fs, sess);
            w2.kill();
            let (l2, status, desc) = w2.finish(Duration::from_secs(120));
            sess.check_exit(sname, status, &desc, alive);
            if let Err(e) = fs.cycle() {
                sess.fail(&format!("remount after the second shutdown: {e}"));
            }
            assert!(sess.absorb(&l2, sname, down, true).uncertain.is_empty());
            sess.verify(crashed, st, "after a shutdown in recovery");
            return;
        }
    }
    sess.verify(crashed, st, "at crash");
}

fn shutdown_test(kind: &'static str) {
    let Some(mut fs) = crash::loop_fs(kind, "shutdown crash test") else {
        return;
    };
    let label = format!("shutdown {kind}");
    let seed = seed(&label);
    let mut rng = Rng::new(seed);
    let setup = shutdown_setup(&mut rng);
    let mut sess = Session::create(&label, fs.path().join("store"), seed, &setup);
    let extents = crash::count_extents(&sess.path).unwrap();
    eprintln!("{label}: store set up with {extents} extents");
    assert!(
        extents > 2000,
        "{label}: the setup should fragment the store ({extents} extents)"
    );
    let strategies = common::store_strategies_in(fs.path());
    let n = iters(16);
    let t = Instant::now();
    for it in 0..n {
        sess.iteration = it;
        let st = strategies[it as usize % strategies.len()];
        shutdown_round(&mut sess, &mut fs, &mut rng, it, st);
    }
    if let Some(e) = fs.fsck() {
        // The filesystem's own consistency is the kernel's business, but
        // worth knowing about.
        eprintln!("WARNING: {label}: fsck after the shutdowns complains: {e}");
        sess.stats.add("all", format!("FSCK COMPLAINED: {e}"));
    }
    sess.report(t.elapsed());
    assert_eq!(sess.stats.get("rounds"), n);
    assert_eq!(sess.stats.sum("in flight: "), n, "every round verified");
}

kind_tests!(shutdown_test; shutdown_xfs = "xfs", shutdown_ext4 = "ext4");

/// The commit record's crash cases, made to happen rather than waited for:
/// at the failpoint `mark` of a native resize, this thread forces the
/// filesystem journal (`syncfs`: the record, and after the shift the shift,
/// become durable) and shuts the filesystem down without log flush, before
/// any header slot or "done" mark is written. After a remount the store must
/// reopen in the new state (the record is the only description of it),
/// with the other regions' bytes intact.
#[cfg(feature = "failpoints")]
fn record_crash(kind: &'static str, mark: &'static str) {
    use budge::store::{Growth, Store, StoreOptions};
    let Some(mut fs) = crash::loop_fs(kind, "commit record crash test") else {
        return;
    };
    let path = fs.path().join("rec");
    let o = StoreOptions {
        growth: Growth::Exact,
        ..StoreOptions::default()
    };
    let mut s = Store::create(&path, &o).unwrap();
    let names = ["a", "b", "c"];
    let mut model = Vec::new();
    for (i, n) in names.iter().enumerate() {
        s.add(n, 1 << 20, 0).unwrap();
        let d = common::data(1 << 20, 40 + i as u64);
        s.bytes_mut(n).unwrap().copy_from_slice(&d);
        model.push(d);
    }
    s.commit().unwrap();
    let step = s.align();
    let dir = fs.path().to_path_buf();
    let me = std::thread::current().id();
    let scenario = fail::FailScenario::setup();
    fail::cfg_callback(format!("budge::store::{mark}"), move || {
        if std::thread::current().id() != me {
            return; // another test's store
        }
        let d = std::fs::File::open(&dir).unwrap();
        rustix::fs::syncfs(&d).unwrap();
        fs_shutdown(&d, ShutdownMode::NoLogFlush).unwrap();
    })
    .unwrap();
    let r = s.resize("a", (1 << 20) + step);
    scenario.teardown();
    let what = format!("{kind}, shut down at {mark}");
    match &r {
        // After the shift, the fdatasync fails on the dead filesystem.
        Err(e) => eprintln!("{what}: resize: {e}"),
        Ok(r) => panic!("{what}: the resize returned {r:?} on a shut-down filesystem"),
    }
    s.abandon();
    fs.cycle().unwrap();
    let s = Store::open(&path, &o).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    eprintln!("{what}: recovery {:?}", s.recovery().actions);
    assert_eq!(
        s.region("a").unwrap().capacity,
        (1 << 20) + step,
        "{what}: the record's table is in force"
    );
    if mark == "after-intent" {
        assert!(
            s.recovery()
                .actions
                .iter()
                .any(|a| a.contains("completed an interrupted shift")),
            "{what}: {:?}",
            s.recovery().actions
        );
    }
    for (k, n) in names.iter().enumerate() {
        let b = s.bytes(n).unwrap();
        assert!(b[..model[k].len()] == model[k][..], "{what}: region {n}");
        assert!(
            b[model[k].len()..].iter().all(|&x| x == 0),
            "{what}: {n} tail"
        );
    }
    let f = std::fs::File::open(&path).unwrap();
    assert!(
        budge::sys::meta::xattr_get_opt(&f, budge::store::format::RECORD_XATTR)
            .unwrap()
            .is_none(),
        "{what}: the open folded the record into a slot"
    );
}

#[cfg(feature = "failpoints")]
fn record_crash_before_shift(kind: &'static str) {
    record_crash(kind, "after-intent");
}

#[cfg(feature = "failpoints")]
fn record_crash_after_shift(kind: &'static str) {
    record_crash(kind, "after-shift");
}

#[cfg(feature = "failpoints")]
kind_tests!(record_crash_before_shift; record_durable_shift_not_xfs = "xfs", record_durable_shift_not_ext4 = "ext4");
#[cfg(feature = "failpoints")]
kind_tests!(record_crash_after_shift; record_and_shift_durable_xfs = "xfs", record_and_shift_durable_ext4 = "ext4");
