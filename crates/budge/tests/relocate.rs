//! Relocation (defragmentation) on every filesystem of the matrix: content
//! is kept byte for byte, extent counts do not grow (and shrink where the
//! filesystem has extents), each strategy can be forced where it applies,
//! dry runs change nothing, shared extents are left alone unless asked,
//! another process reading through its own mapping sees the right bytes, a
//! chunk raced by a write is left as it was (or moved with the write, by
//! cow), ENOSPC leaves the file intact, and cow puts the file's
//! copy-on-write hint back and says the times changed.

mod common;
#[path = "crash/loopfs.rs"]
#[allow(dead_code)]
mod loopfs;

use std::fs::File;

use budge::relocate::{
    relocate, relocate_path, RelocateOptions, RelocateReport, RelocateStrategy, SkipReason,
};
use budge::ErrorKind;
use common::{
    data, fill_fs, fragment_by_inserts, fragmented, read_all, run_small, surely_fragmented, TestFs,
};

fn extent_count(f: &File) -> Option<u64> {
    budge::extents::extents(f).ok().map(|e| e.len() as u64)
}

fn has_extents(fs: &TestFs) -> bool {
    fs.kind != "tmpfs"
}

fn opts(chunk: u64) -> RelocateOptions<'static> {
    RelocateOptions {
        chunk,
        ..RelocateOptions::default()
    }
}

/// Whether every chunk `r` skipped was skipped for `why`.
fn all_skipped(r: &RelocateReport, why: SkipReason) -> bool {
    r.chunks_skipped.iter().all(|c| c.reason == why)
}

/// `r` moved no chunk: every one was skipped for `why`.
#[track_caller]
fn assert_none_moved(r: &RelocateReport, why: SkipReason) {
    assert_eq!(r.chunks_moved, 0, "{r:?}");
    assert!(all_skipped(r, why), "{r:?}");
}

/// Sets failpoint `name` (in a `FailScenario` the caller set up) to call
/// `f` in this thread only: other tests' threads pass it untouched.
#[cfg(feature = "failpoints")]
fn in_this_thread(name: &str, f: impl Fn() + Send + Sync + 'static) {
    let me = std::thread::current().id();
    fail::cfg_callback(name, move || {
        if std::thread::current().id() == me {
            f();
        }
    })
    .unwrap();
}

/// Whether `fs` is an XFS with the reverse-mapping btree (where swapext
/// runs; the test matrix's XFS has none, `loopfs` makes one).
fn rmapbt(fs: &TestFs) -> bool {
    budge::sys::xfs_has_rmapbt(File::open(fs.dir.path()).unwrap()).unwrap_or(false)
}

/// The in-place strategies that apply on this filesystem.
fn inplace(fs: &TestFs) -> Vec<RelocateStrategy> {
    match fs.kind {
        "ext4" => vec![RelocateStrategy::MoveExt],
        "xfs" if rmapbt(fs) => vec![
            RelocateStrategy::SwapExt,
            RelocateStrategy::Dedupe,
            RelocateStrategy::Cow,
        ],
        "xfs" => vec![RelocateStrategy::Dedupe, RelocateStrategy::Cow],
        "btrfs" => vec![RelocateStrategy::Dedupe, RelocateStrategy::BtrfsDefrag],
        _ => vec![],
    }
}

fs_test!(defragments_keeping_content, |fs| {
    let (f, d) = fragmented(fs, "f", 12 << 20, 1);
    let before = extent_count(&f);
    let r = relocate(&f, &opts(2 << 20)).unwrap();
    assert!(read_all(&f) == d, "content changed on {}", fs.kind);
    eprintln!(
        "{}: auto {} extents {} -> {}, moved {}, chunks {} moved {} skipped {:?}, {:?}",
        fs.kind,
        r.strategy,
        r.extents_before,
        r.extents_after,
        r.bytes_moved,
        r.chunks,
        r.chunks_moved,
        r.chunks_skipped,
        r.elapsed
    );
    assert!(r.coherent);
    if has_extents(fs) {
        assert_eq!(Some(r.extents_before), before);
        // FIEMAP may merge more once the donors' inodes are gone.
        assert!(extent_count(&f).unwrap() <= r.extents_after);
        assert!(r.extents_before > 6, "{}: not fragmented: {r:?}", fs.kind);
        assert!(r.extents_after < r.extents_before, "{r:?}");
        // Every chunk is fragmented unless the allocator (btrfs under
        // concurrent load) happened to keep some pieces together.
        assert!((1..=6).contains(&r.chunks), "{r:?}");
        assert!(r.chunks_moved > 0 && r.bytes_moved > 0, "{r:?}");
        let want = match fs.kind {
            "ext4" => RelocateStrategy::MoveExt,
            "btrfs" => RelocateStrategy::BtrfsDefrag,
            // The whole file is fragmented: one swap of all its extents.
            _ if rmapbt(fs) => RelocateStrategy::SwapExt,
            // Without rmapbt: share with a scratch file, then unshare.
            _ => RelocateStrategy::Cow,
        };
        assert_eq!(r.strategy, want, "{r:?}");
        // A second pass finds little or nothing left to do.
        let r2 = relocate(&f, &opts(2 << 20)).unwrap();
        assert!(r2.extents_after <= r.extents_after, "{r2:?}");
        assert!(read_all(&f) == d);
    } else {
        assert_eq!(r.strategy, RelocateStrategy::Nothing);
        assert_eq!(r.bytes_moved, 0);
        assert!(r.notes.iter().any(|n| n.contains("no extents")), "{r:?}");
    }
});

fs_test!(each_strategy_forced, |fs| {
    for s in inplace(fs) {
        let (f, d) = fragmented(fs, "f", 8 << 20, 2);
        let o = RelocateOptions {
            strategy: Some(s),
            ..opts(2 << 20)
        };
        let r = relocate(&f, &o).unwrap();
        eprintln!(
            "{}: forced {s} extents {} -> {}, moved {}, skipped {:?}",
            fs.kind, r.extents_before, r.extents_after, r.bytes_moved, r.chunks_skipped
        );
        assert_eq!(r.strategy, s);
        assert!(read_all(&f) == d, "{s} changed content on {}", fs.kind);
        assert!(r.extents_after < r.extents_before, "{s}: {r:?}");
    }
    // copy-rename, through the path, everywhere.
    let (f, d) = fragmented(fs, "g", 8 << 20, 3);
    let o = RelocateOptions {
        strategy: Some(RelocateStrategy::CopyRename),
        ..opts(2 << 20)
    };
    let r = relocate_path(&fs.path("g"), &o).unwrap();
    eprintln!(
        "{}: forced copy-rename extents {} -> {}",
        fs.kind, r.extents_before, r.extents_after
    );
    assert_eq!(r.strategy, RelocateStrategy::CopyRename);
    assert!(!r.coherent);
    assert!(r.notes.iter().any(|n| n.contains("not coherent")));
    assert_eq!(std::fs::read(fs.path("g")).unwrap(), d);
    // The old descriptor still reads the old inode.
    assert!(read_all(&f) == d);
    if has_extents(fs) {
        assert!(r.extents_after < r.extents_before, "{r:?}");
    }
    // No temporary names left behind.
    let names: Vec<_> = std::fs::read_dir(fs.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".budge")),
        "{names:?}"
    );
    // Forcing a strategy that does not apply is an error, not a fallback.
    let wrong = if fs.kind == "ext4" {
        RelocateStrategy::Dedupe
    } else {
        RelocateStrategy::MoveExt
    };
    let o = RelocateOptions {
        strategy: Some(wrong),
        ..opts(2 << 20)
    };
    let (f, d) = fragmented(fs, "h", 4 << 20, 4);
    let e = relocate(&f, &o).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Unsupported | ErrorKind::InvalidArgument
        ),
        "{e}"
    );
    assert!(read_all(&f) == d);
});

fs_test!(progress_is_reported_to_the_end, |fs| {
    for s in inplace(fs) {
        let (f, d) = fragmented(fs, &format!("p-{s}"), 8 << 20, 6);
        let calls = std::sync::Mutex::new(Vec::<(u64, u64)>::new());
        let cb = |done: u64, total: u64| calls.lock().unwrap().push((done, total));
        let o = RelocateOptions {
            strategy: Some(s),
            progress: Some(&cb),
            ..opts(1 << 20)
        };
        let r = relocate(&f, &o).unwrap();
        assert!(read_all(&f) == d, "{s}");
        let calls = calls.into_inner().unwrap();
        // One call per chunk (the whole-file swap: per 8 MiB written) and
        // one at the end, which says everything is done.
        assert!(calls.len() >= 2, "{s}: {calls:?}");
        let &(last_done, last_total) = calls.last().unwrap();
        assert!(last_total > 0 && last_done == last_total, "{s}: {calls:?}");
        for w in calls.windows(2) {
            if w[0].1 == w[1].1 {
                assert!(w[0].0 <= w[1].0, "{s}: goes backwards: {calls:?}");
            }
        }
        assert!(calls.iter().all(|&(d, t)| d <= t), "{s}: {calls:?}");
        eprintln!("{} {s}: {} progress calls, {r:?}", fs.kind, calls.len());
    }
});

fs_test!(dry_run_changes_nothing, |fs| {
    let (f, d) = fragmented(fs, "f", 8 << 20, 5);
    let ext = budge::extents::extents(&f).ok();
    let o = RelocateOptions {
        dry_run: true,
        ..opts(2 << 20)
    };
    let r = relocate(&f, &o).unwrap();
    assert!(r.dry_run);
    assert_eq!(budge::extents::extents(&f).ok(), ext);
    assert!(read_all(&f) == d);
    if has_extents(fs) {
        assert!((1..=4).contains(&r.chunks), "{r:?}");
        assert_eq!(r.bytes_moved, r.chunks * (2 << 20));
        assert_eq!(r.extents_after, r.extents_before);
    }
});

fs_test!(range_only_moves_that_range, |fs| {
    let (f, d) = fragmented(fs, "f", 8 << 20, 6);
    let o = RelocateOptions {
        range: Some((2 << 20, 2 << 20)),
        ..opts(1 << 20)
    };
    // Where each byte outside the range lives, sampled per extent start.
    let outside = |f: &File| -> Option<Vec<(u64, u64)>> {
        let v = budge::extents::extents(f).ok()?;
        Some(
            v.iter()
                .filter(|e| e.logical + e.length <= 2 << 20 || e.logical >= 4 << 20)
                .map(|e| (e.logical, e.physical))
                .collect(),
        )
    };
    let phys_at = |f: &File, at: u64| {
        budge::extents::extents(f)
            .unwrap()
            .iter()
            .find(|e| e.logical <= at && at < e.logical + e.length)
            .map(|e| e.physical + (at - e.logical))
    };
    let before = outside(&f);
    let r = relocate(&f, &o).unwrap();
    assert_eq!(r.range, (2 << 20, 2 << 20));
    assert!(read_all(&f) == d);
    for (l, p) in before.unwrap_or_default() {
        assert_eq!(phys_at(&f, l), Some(p), "data outside the range moved");
    }
    if has_extents(fs) {
        assert!((1..=2).contains(&r.chunks), "{r:?}");
        assert!(r.extents_after < r.extents_before, "{r:?}");
    }
});

fs_test!(shared_extents_left_unless_unshare, |fs| {
    if !matches!(fs.kind, "xfs" | "btrfs") {
        return;
    }
    let (f, d) = fragmented(fs, "f", 4 << 20, 7);
    let copy = fs.file_with("copy", &[]);
    budge::copy::clone_file(&f, &copy).unwrap();
    let r = relocate(&f, &opts(1 << 20)).unwrap();
    assert!(r.chunks > 0);
    assert_none_moved(&r, SkipReason::Shared);
    let o = RelocateOptions {
        unshare: true,
        ..opts(1 << 20)
    };
    let r = relocate(&f, &o).unwrap();
    assert!(r.chunks_moved > 0, "{r:?}");
    assert!(read_all(&f) == d && read_all(&copy) == d);
    assert!(r.extents_after < r.extents_before, "{r:?}");
});

// The fragmentation budge's own users get: 1,000 random inserts into a
// file, each inserted range then written (a store growing its regions).
// Relocation puts it back into few extents, byte for byte.
fs_test!(heals_a_file_fragmented_by_1000_inserts, |fs| {
    let (f, model) = fragment_by_inserts(fs, "f", 8 << 20, 1000);
    let r = relocate(&f, &RelocateOptions::default()).unwrap();
    eprintln!(
        "{}: 1000 inserts: {} extents -> {} ({}), moved {}, chunks {}/{} skipped {:?}, {:?}",
        fs.kind,
        r.extents_before,
        r.extents_after,
        r.strategy,
        r.bytes_moved,
        r.chunks_moved,
        r.chunks,
        r.chunks_skipped,
        r.elapsed
    );
    assert!(read_all(&f) == model, "{}: content changed", fs.kind);
    if has_extents(fs) {
        assert!(
            r.extents_before >= 500,
            "{}: not fragmented: {r:?}",
            fs.kind
        );
        assert!(r.chunks_skipped.is_empty(), "{r:?}");
        // One allocation for the whole run of chunks: a handful of extents
        // at most (FIEMAP splits at the filesystem's largest extent).
        let after = extent_count(&f).unwrap();
        assert!(after <= 4, "{}: {after} extents after: {r:?}", fs.kind);
    } else {
        assert_eq!(r.strategy, RelocateStrategy::Nothing);
    }
});

// Relocation right after the fragmentation, in the transaction that made
// it: on btrfs the reflink shift's pieces are shared only within the file,
// but the reference listing that says so sees only committed transactions
// and answered ENOENT, so every chunk was skipped as shared (4 MiB, 100
// inserts: 190 extents stayed 190). Relocation commits once and asks again.
fs_test!(relocates_right_after_the_inserts, |fs| {
    // The test's new directory committed first: otherwise btrfs commits
    // the whole transaction at the file's first fsync (its parent is new),
    // and nothing is left uncommitted.
    rustix::fs::syncfs(File::open(fs.dir.path()).unwrap()).unwrap();
    let (f, model) = fragment_by_inserts(fs, "fresh", 4 << 20, 100);
    let r = relocate(&f, &RelocateOptions::default()).unwrap();
    assert!(read_all(&f) == model, "{}: content changed", fs.kind);
    if has_extents(fs) {
        assert!(r.extents_before >= 50, "{}: not fragmented: {r:?}", fs.kind);
        assert!(r.chunks_skipped.is_empty(), "{}: {r:?}", fs.kind);
        let after = extent_count(&f).unwrap();
        assert!(after <= 4, "{}: {after} extents after: {r:?}", fs.kind);
    }
});

/// Fills `fs` but for `free` bytes in one place (a file preallocated
/// first, removed once the filler has taken the rest), synced; returns the
/// filler.
fn fill_but(fs: &TestFs, free: u64) -> File {
    let keep = fs.file_with("keep", &[]);
    budge::sys::fallocate(&keep, budge::sys::Falloc::Allocate, 0, free).unwrap();
    let filler = fill_fs(fs, 64 << 10);
    drop(keep);
    std::fs::remove_file(fs.path("keep")).unwrap();
    rustix::fs::syncfs(File::open(fs.dir.path()).unwrap()).unwrap();
    filler
}

/// A fresh loop filesystem of `kind` for one test (`mkfs` with `extra`),
/// and a directory in it; `None` (the test skips, said on stderr; a
/// failure under CI) where loop filesystems cannot be made. The directory
/// is dropped before the filesystem.
fn own_fs(
    kind: &'static str,
    size: u64,
    extra: &'static [&'static str],
    what: &str,
) -> Option<(TestFs, loopfs::LoopFs)> {
    if let Some(why) = loopfs::unavailable(kind) {
        assert!(!common::in_ci(), "{what} on {kind} under CI: {why}");
        eprintln!("SKIPPED {what} on {kind}: {why}");
        return None;
    }
    let lfs = loopfs::LoopFs::new_with(kind, size, extra).unwrap();
    let fs = TestFs {
        kind,
        dir: tempfile::tempdir_in(lfs.path()).unwrap(),
    };
    Some((fs, lfs))
}

// ENOSPC part-way: the filesystem fills up (another writer takes the last
// free space) after the first chunk's donor was allocated. The chunks whose
// donors could not be allocated are left as they were and reported; the
// file is intact; a later run with space again finishes the job.
#[cfg(feature = "failpoints")]
fn enospc_part_way(kind: &'static str) {
    use std::sync::{Arc, Mutex};
    // A fresh filesystem of its own: free space left fragmented by other
    // tests would make donors no better than the file. mkfs.xfs wants at
    // least 300 MB; XFS with rmapbt, so the whole-file swapext runs (and
    // meets ENOSPC).
    let extra: &'static [&'static str] = if kind == "xfs" {
        &["-m", "rmapbt=1"]
    } else {
        &[]
    };
    let Some((fs, lfs)) = own_fs(kind, 320 << 20, extra, "ENOSPC part-way") else {
        return;
    };
    let fs = &fs;
    {
        let (f, d) = fragment_by_inserts(fs, "f", 8 << 20, 1000);
        // Too little free space for one donor spanning the whole file, so
        // each chunk gets its own: fill the filesystem, then free 3 MiB in
        // one place.
        let filler = fill_but(fs, 3 << 20);
        if kind == "xfs" {
            // The whole-file swap needs a donor as large as the file: with
            // 3 MiB free it fails before changing anything.
            let o = RelocateOptions {
                strategy: Some(RelocateStrategy::SwapExt),
                ..opts(1 << 20)
            };
            let r = relocate(&f, &o).unwrap();
            assert_none_moved(&r, SkipReason::NoSpace);
            assert!(read_all(&f) == d, "{kind}: swapext changed content");
            assert_eq!(extent_count(&f), Some(r.extents_before));
        }
        let scenario = fail::FailScenario::setup();
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let armed2 = armed.clone();
        in_this_thread("budge::relocate::before-swap", move || {
            armed2.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let taken: Arc<Mutex<Vec<File>>> = Arc::default();
        let (rest_path, taken2) = (fs.path("rest"), taken.clone());
        // Once the first chunk is under way, every donor allocation finds
        // the space gone.
        in_this_thread("budge::relocate::donor-alloc", move || {
            if !armed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let mut t = taken2.lock().unwrap();
            let rest = File::options()
                .create(true)
                .write(true)
                .open(format!("{}.{}", rest_path.display(), t.len()))
                .unwrap();
            common::allocate_greedily(&rest, 1 << 20, |_| false);
            t.push(rest);
        });
        // The per-chunk donor strategies (btrfs-defrag allocates inside
        // the kernel, swapext is all or nothing).
        let donor_opts = RelocateOptions {
            strategy: inplace(fs)
                .into_iter()
                .find(|&s| s != RelocateStrategy::SwapExt),
            ..opts(1 << 20)
        };
        let r = relocate(&f, &donor_opts);
        scenario.teardown();
        let r = r.unwrap();
        eprintln!(
            "{kind}: ENOSPC part-way: extents {} chunks {} moved {} skipped {:?}",
            r.extents_before, r.chunks, r.chunks_moved, r.chunks_skipped
        );
        assert!(read_all(&f) == d, "{kind}: content changed");
        assert!(r.chunks_moved >= 1, "{r:?}");
        assert!(
            r.chunks_skipped
                .iter()
                .any(|c| c.reason == SkipReason::NoSpace),
            "{r:?}"
        );
        assert!(all_skipped(&r, SkipReason::NoSpace), "{r:?}");
        assert_eq!(
            r.chunks_moved + r.chunks_skipped.len() as u64,
            r.chunks,
            "{r:?}"
        );
        // Space again: the rest is relocated.
        for (i, t) in taken.lock().unwrap().drain(..).enumerate() {
            drop(t);
            std::fs::remove_file(format!("{}.{i}", fs.path("rest").display())).unwrap();
        }
        common::free_filler(fs, filler, 16 << 20);
        let r2 = relocate(&f, &opts(1 << 20)).unwrap();
        assert!(
            r2.chunks_skipped
                .iter()
                .all(|c| matches!(c.reason, SkipReason::DonorNotBetter { .. })),
            "{r2:?}"
        );
        assert!(extent_count(&f).unwrap() * 3 < r.extents_before, "{r2:?}");
        assert!(read_all(&f) == d);
    }
    drop(lfs);
}

#[cfg(feature = "failpoints")]
kind_tests!(enospc_part_way; enospc_part_way_xfs = "xfs", enospc_part_way_btrfs = "btrfs", enospc_part_way_ext4 = "ext4");

#[test]
fn invalid_arguments() {
    common::run("xfs", |fs| {
        let f = fs.file_with("f", &data(8192, 1));
        let o = RelocateOptions {
            range: Some((1 << 20, 4096)),
            ..RelocateOptions::default()
        };
        assert_eq!(
            relocate(&f, &o).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let ro = File::open(fs.path("f")).unwrap();
        let e = relocate(&ro, &RelocateOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let o = RelocateOptions {
            strategy: Some(RelocateStrategy::CopyRename),
            ..RelocateOptions::default()
        };
        assert_eq!(
            relocate(&f, &o).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    });
}

fn enospc(kind: &'static str) {
    run_small(kind, |fs| {
        let (f, d) = fragmented(fs, "f", 4 << 20, 8);
        let filler = fill_fs(fs, 64 << 10);
        let o = opts(1 << 20);
        match relocate(&f, &o) {
            Ok(r) => {
                assert_none_moved(&r, SkipReason::NoSpace);
                if kind == "xfs" {
                    // The whole-file swap is not used without rmapbt; the
                    // per-chunk cow found no space either.
                    assert_eq!(r.strategy, RelocateStrategy::Cow, "{r:?}");
                    assert!(r.notes.iter().any(|n| n.starts_with("swapext")), "{r:?}");
                }
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}"),
        }
        assert!(read_all(&f) == d, "{kind}: content changed");
        if kind != "tmpfs" {
            let o = RelocateOptions {
                strategy: Some(RelocateStrategy::CopyRename),
                ..o
            };
            let e = relocate_path(&fs.path("f"), &o).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
            assert_eq!(std::fs::read(fs.path("f")).unwrap(), d);
        }
        drop(filler);
    });
}

#[test]
fn enospc_leaves_file_intact_xfs() {
    enospc("xfs");
}
#[test]
fn enospc_leaves_file_intact_btrfs() {
    enospc("btrfs");
}
#[test]
fn enospc_leaves_file_intact_ext4() {
    enospc("ext4");
}

// A write lands between the donor copy and the swap (failpoint
// `budge::relocate::before-swap`): Dedupe finds the bytes differ and skips
// the chunk, MoveExt moves it keeping the new bytes; either way the file
// holds the racing write.
#[cfg(feature = "failpoints")]
fs_test!(racing_write_is_kept, |fs| {
    if !has_extents(fs) {
        return;
    }
    let (f, mut d) = fragmented(fs, "f", 4 << 20, 9);
    let scenario = fail::FailScenario::setup();
    let racer = f.try_clone().unwrap();
    let new = data(4096, 99);
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fired2 = fired.clone();
    let new2 = new.clone();
    in_this_thread("budge::relocate::before-swap", move || {
        if !fired2.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::os::unix::fs::FileExt::write_all_at(&racer, &new2, 8192).unwrap();
        }
    });
    // The donor strategies: btrfs-defrag has no window between copy and
    // swap (the kernel rewrites through the page cache).
    let o = RelocateOptions {
        strategy: inplace(fs).first().copied(),
        ..opts(1 << 20)
    };
    let r = relocate(&f, &o);
    scenario.teardown();
    let r = r.unwrap();
    d[8192..8192 + 4096].copy_from_slice(&new);
    assert!(read_all(&f) == d, "{}: racing write lost", fs.kind);
    if r.strategy == RelocateStrategy::SwapExt {
        // The kernel saw the file's times change: nothing was swapped.
        assert_none_moved(&r, SkipReason::Differs);
    } else if r.strategy == RelocateStrategy::Dedupe {
        assert_eq!(r.chunks_skipped[0].offset, 0, "{r:?}");
        assert_eq!(r.chunks_skipped[0].reason, SkipReason::Differs, "{r:?}");
        assert_eq!(r.chunks_moved, r.chunks - 1, "{r:?}");
    } else {
        assert_eq!(r.chunks_moved, r.chunks, "{r:?}");
    }
});

// A store through a writable MAP_SHARED mapping lands between the donor
// copy and the swap, into a page the same mapping had already dirtied before
// the relocation began (so its page-table entry may still be writable: no
// fault, no page_mkwrite). Every in-place strategy must keep it. For the
// whole-file swap this is what ordering "times, fdatasync, copy" is for: the
// fdatasync write-protects the page, so the store faults and stamps mtime,
// and the kernel refuses the swap.
#[cfg(feature = "failpoints")]
fn stores_through_a_dirty_mapping(fs: &TestFs) {
    use std::sync::mpsc::channel;
    use std::sync::{Arc, Mutex};
    for s in inplace(fs) {
        let (f, mut d) = surely_fragmented(fs, &format!("m-{s}"), 4 << 20, 12);
        if has_extents(fs) {
            assert!(extent_count(&f).unwrap() > 8, "{}: not fragmented", fs.kind);
        }
        // SAFETY: the file keeps its size while mapped: only relocation and
        // this test's stores touch it.
        let mut map = unsafe { budge::map::SharedMap::new(&f, d.len(), true) }.unwrap();
        map.as_mut_slice().unwrap()[8192..8192 + 100].fill(0x11);
        d[8192..8192 + 100].fill(0x11);
        let scenario = fail::FailScenario::setup();
        let (go_tx, go_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<()>();
        let go = Arc::new(Mutex::new(Some(go_tx)));
        let done = Arc::new(Mutex::new(done_rx));
        let (go2, done2) = (go.clone(), done.clone());
        in_this_thread("budge::relocate::before-swap", move || {
            let tx = go2.lock().unwrap().take();
            if let Some(tx) = tx {
                tx.send(()).unwrap();
                done2.lock().unwrap().recv().unwrap();
            }
        });
        let r = std::thread::scope(|sc| {
            let map = &mut map;
            let writer = sc.spawn(move || {
                if go_rx.recv().is_ok() {
                    map.as_mut_slice().unwrap()[8192 + 50..8192 + 150].fill(0x22);
                    done_tx.send(()).unwrap();
                    true
                } else {
                    false
                }
            });
            let o = RelocateOptions {
                strategy: Some(s),
                ..opts(1 << 20)
            };
            let r = relocate(&f, &o);
            // No failpoint on this strategy's path: release the writer.
            go.lock().unwrap().take();
            (r, writer.join().unwrap())
        });
        scenario.teardown();
        let (r, wrote) = r;
        let r = r.unwrap();
        if wrote {
            d[8192 + 50..8192 + 150].fill(0x22);
        }
        assert!(
            read_all(&f) == d,
            "{} {s}: a store through the mapping was lost: {r:?}",
            fs.kind
        );
        assert!(
            map.as_slice() == &d[..],
            "{} {s}: the mapping differs",
            fs.kind
        );
        eprintln!(
            "{} {s}: store {}; moved {} chunks, skipped {:?}",
            fs.kind,
            if wrote {
                "between copy and swap"
            } else {
                "not raced (no window)"
            },
            r.chunks_moved,
            r.chunks_skipped
                .iter()
                .map(|c| c.reason.to_string())
                .collect::<Vec<_>>()
        );
        if s == RelocateStrategy::SwapExt {
            assert!(wrote, "{r:?}");
            assert_eq!(r.chunks_moved, 0, "{r:?}");
        }
    }
}

#[cfg(feature = "failpoints")]
fs_test!(
    stores_through_a_dirty_mapping_are_kept,
    stores_through_a_dirty_mapping
);

/// swapext runs only on an XFS with rmapbt: on the matrix's XFS (none) it
/// is refused when forced and passed over when automatic; on a loop XFS
/// made with `-m rmapbt=1` it heals a file fragmented by inserts into one
/// extent and keeps a store through a dirty mapping.
#[test]
fn swapext_only_with_rmapbt() {
    common::run("xfs", |fs| {
        assert!(!rmapbt(fs), "the matrix's XFS is expected without rmapbt");
        let (f, d) = fragmented(fs, "f", 8 << 20, 21);
        let o = RelocateOptions {
            strategy: Some(RelocateStrategy::SwapExt),
            ..opts(1 << 20)
        };
        let e = relocate(&f, &o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("rmapbt"), "{e}");
        assert!(read_all(&f) == d);
        let r = relocate(&f, &opts(1 << 20)).unwrap();
        assert_eq!(r.strategy, RelocateStrategy::Cow, "{r:?}");
        assert!(r.notes.iter().any(|n| n.contains("rmapbt")), "{r:?}");
        assert!(read_all(&f) == d);
    });
    let Some((fs, _lfs)) = own_fs("xfs", 512 << 20, &["-m", "rmapbt=1"], "swapext with rmapbt")
    else {
        return;
    };
    let fs = &fs;
    assert!(rmapbt(fs));
    let (f, d) = fragment_by_inserts(fs, "f", 8 << 20, 300);
    let before = extent_count(&f).unwrap();
    let r = relocate(&f, &opts(1 << 20)).unwrap();
    assert_eq!(r.strategy, RelocateStrategy::SwapExt, "{r:?}");
    assert!(read_all(&f) == d, "swapext changed content");
    assert_eq!(r.chunks_moved, r.chunks, "{r:?}");
    assert_eq!(extent_count(&f), Some(1), "{before} extents before: {r:?}");
    assert!(r.bytes_moved >= 8 << 20, "{r:?}");
    eprintln!(
        "rmapbt XFS: swapext {before} -> 1 extents in {:?}",
        r.elapsed
    );
    drop(f);
    #[cfg(feature = "failpoints")]
    stores_through_a_dirty_mapping(fs);
}

fs_test!(copy_rename_keeps_mode_owner_and_xattrs, |fs| {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (f, d) = fragmented(fs, "m", 4 << 20, 4);
    drop(f);
    let path = fs.path("m");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
    let xattr = budge::sys::meta::xattr_set(File::open(&path).unwrap(), "user.budge-test", b"kept");
    let o = RelocateOptions {
        strategy: Some(RelocateStrategy::CopyRename),
        ..opts(2 << 20)
    };
    relocate_path(&path, &o).unwrap();
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    if xattr.is_ok() {
        let v = budge::sys::meta::xattr_get(File::open(&path).unwrap(), &"user.budge-test".into())
            .unwrap();
        assert_eq!(v, b"kept");
    } else {
        eprintln!("{}: no user xattrs here: {xattr:?}", fs.kind);
    }
    assert_eq!(std::fs::read(&path).unwrap(), d);
});

fs_test!(
    a_live_shared_mapping_reads_the_same_bytes_throughout,
    |fs| {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        for s in inplace(fs) {
            let (f, d) = surely_fragmented(fs, &format!("live-{s}"), 8 << 20, 5);
            // SAFETY: nothing truncates the file while the map exists: only
            // relocation runs on it, which keeps its size and content.
            let map = unsafe { budge::map::SharedMap::new(&f, d.len(), false) }.unwrap();
            let done = AtomicBool::new(false);
            let (passes, bad) = (AtomicU64::new(0), AtomicU64::new(0));
            let r = std::thread::scope(|sc| {
                sc.spawn(|| {
                    let page = 4096;
                    while !done.load(Ordering::Acquire) {
                        let m = map.as_slice();
                        for (i, chunk) in m.chunks(page).enumerate() {
                            if chunk != &d[i * page..i * page + chunk.len()] {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        passes.fetch_add(1, Ordering::Relaxed);
                    }
                });
                let o = RelocateOptions {
                    strategy: Some(s),
                    ..opts(1 << 20)
                };
                let r = relocate(&f, &o);
                // At least one whole pass after the relocation finished.
                let p = passes.load(Ordering::Relaxed);
                while r.is_ok() && passes.load(Ordering::Relaxed) < p + 2 {
                    std::thread::yield_now();
                }
                done.store(true, Ordering::Release);
                r
            });
            let r = r.unwrap();
            assert!(r.bytes_moved > 0, "{s}: {r:?}");
            assert_eq!(bad.load(Ordering::Relaxed), 0, "{}: {s}", fs.kind);
            eprintln!(
                "{}: {s}: {} passes over the mapping while it moved {} bytes, all equal",
                fs.kind,
                passes.load(Ordering::Relaxed),
                r.bytes_moved
            );
            assert!(read_all(&f) == d);
        }
    }
);

/// The environment variable that makes [`relocate_reader_worker`] a reader:
/// `PATH WANT` (WANT: a file holding the bytes PATH must read as).
const READER_ENV: &str = "BUDGE_RELOCATE_READER";

/// The reader process of `a_reader_process_sees_the_same_bytes_throughout`
/// (a no-op unless [`READER_ENV`] is set): maps the file read-only with
/// `MAP_SHARED` and compares every page with the bytes it must hold (read
/// from WANT first), pass after pass, saying `pass N BAD` after each, until
/// `PATH.stop` exists.
#[test]
fn relocate_reader_worker() {
    let Ok(spec) = std::env::var(READER_ENV) else {
        return;
    };
    // End libtest's "test ... " line, so the first protocol line starts one.
    println!();
    let (path, want) = spec.split_once(' ').unwrap();
    let want = std::fs::read(want).unwrap();
    let size = want.len();
    let f = File::open(path).unwrap();
    // SAFETY: the parent only relocates the file, which keeps its size and
    // its bytes; nothing truncates it while the map exists.
    let map = unsafe { budge::map::SharedMap::new(&f, size, false) }.unwrap();
    let stop = std::path::PathBuf::from(format!("{path}.stop"));
    let (mut pass, mut bad) = (0u64, 0u64);
    loop {
        for (i, page) in map.as_slice().chunks(4096).enumerate() {
            if page != &want[i * 4096..i * 4096 + page.len()] {
                bad += 1;
            }
        }
        pass += 1;
        common::say(&format!("pass {pass} {bad}"));
        if stop.exists() {
            break;
        }
    }
}

/// The pass number and mismatches in a reader's `pass N BAD` line.
fn reader_pass(line: &str) -> Option<(u64, u64)> {
    let mut w = line.strip_prefix("pass ")?.split(' ');
    Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
}

// Another process reads the file through its own MAP_SHARED mapping while
// each in-place strategy relocates it: every page it reads, before, during
// and after, holds the right bytes.
fs_test!(a_reader_process_sees_the_same_bytes_throughout, |fs| {
    use std::time::{Duration, Instant};
    for (k, s) in inplace(fs).into_iter().enumerate() {
        let name = format!("proc-{s}");
        let seed = 40 + k as u64;
        let (f, d) = surely_fragmented(fs, &name, 8 << 20, seed);
        let path = fs.path(&name);
        let want = fs.path(&format!("{name}.want"));
        std::fs::write(&want, &d).unwrap();
        let spec = format!("{} {}", path.display(), want.display());
        let mut w = common::Worker::spawn(
            common::worker_command("relocate_reader_worker").env(READER_ENV, spec),
        );
        let deadline = || Instant::now() + Duration::from_secs(60);
        assert!(
            w.wait_for(deadline(), |l| l.starts_with("pass ")).is_some(),
            "{s}: the reader did not start"
        );
        let o = RelocateOptions {
            strategy: Some(s),
            ..opts(1 << 20)
        };
        // Each chunk lingers 20 ms before its move (where the strategy has
        // that failpoint), so the reader's passes overlap the moves.
        #[cfg(feature = "failpoints")]
        let scenario = fail::FailScenario::setup();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        #[cfg(feature = "failpoints")]
        {
            let hits = hits.clone();
            in_this_thread("budge::relocate::before-swap", move || {
                hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            });
        }
        let t0 = Instant::now();
        let r = relocate(&f, &o);
        let t1 = Instant::now();
        #[cfg(feature = "failpoints")]
        scenario.teardown();
        let r = r.unwrap();
        // Two whole passes that began after the relocation returned.
        let last = w.texts().iter().filter_map(|l| reader_pass(l)).count() as u64;
        let seen = w.wait_for(deadline(), |l| {
            reader_pass(l).is_some_and(|(p, _)| p >= last + 2)
        });
        std::fs::write(format!("{}.stop", path.display()), b"").unwrap();
        let (lines, status, stderr) = w.finish(Duration::from_secs(60));
        assert!(status.success(), "{s}: reader: {status} {stderr}");
        assert!(seen.is_some(), "{s}: the reader stopped passing: {stderr}");
        let (passes, bad) = lines
            .iter()
            .rev()
            .find_map(|(_, l)| reader_pass(l))
            .unwrap();
        // Passes that were under way while the relocation ran: each starts
        // where the one before it ended.
        let ends: Vec<Instant> = lines
            .iter()
            .filter(|(_, l)| reader_pass(l).is_some())
            .map(|(t, _)| *t)
            .collect();
        let during = ends.windows(2).filter(|w| w[1] > t0 && w[0] < t1).count();
        eprintln!(
            "{}: {s}: a reader process made {passes} passes over its mapping ({during} during the moves) while {} bytes moved; {bad} pages differed",
            fs.kind, r.bytes_moved
        );
        if hits.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            assert!(during > 0, "{s}: no reader pass overlapped the moves");
        }
        assert!(r.bytes_moved > 0, "{s}: {r:?}");
        assert_eq!(bad, 0, "{}: {s}: the reader saw wrong bytes", fs.kind);
        assert!(read_all(&f) == d);
    }
});

/// A writer truncates the file after cow shared a chunk and before the
/// unshare: the unshare keeps the size (`KEEP_SIZE`; without it XFS grew
/// the file back to the chunk's end with zeros), so the file is exactly
/// what the truncate left; the chunks past the new end are skipped as
/// changed.
#[cfg(feature = "failpoints")]
#[test]
fn cow_keeps_a_racing_truncate() {
    common::run("xfs", |fs| {
        let (f, d) = fragment_by_inserts(fs, "f", 8 << 20, 100);
        let scenario = fail::FailScenario::setup();
        let racer = f.try_clone().unwrap();
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fired2 = fired.clone();
        in_this_thread("budge::relocate::before-swap", move || {
            if !fired2.swap(true, std::sync::atomic::Ordering::SeqCst) {
                racer.set_len(1 << 20).unwrap();
            }
        });
        let o = RelocateOptions {
            strategy: Some(RelocateStrategy::Cow),
            ..opts(4 << 20)
        };
        let r = relocate(&f, &o);
        scenario.teardown();
        let r = r.unwrap();
        eprintln!("xfs: cow with a racing truncate: {r:?}");
        assert!(fired.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(f.metadata().unwrap().len(), 1 << 20, "{r:?}");
        assert!(read_all(&f) == d[..1 << 20], "{r:?}");
        // The chunks past the new end are skipped as changed.
        assert!(
            r.chunks_skipped
                .iter()
                .any(|c| c.reason == SkipReason::Differs),
            "{r:?}"
        );
    });
}

/// cow with room for one chunk but not for the run: the hint is not
/// raised (its reservations would fail part-way and keep what they took),
/// and every chunk still moves, since each chunk's old blocks are freed
/// before the next (the scratch file's share is punched). The content
/// never changes.
#[test]
fn cow_needs_room_for_one_chunk_at_a_time() {
    // A fresh filesystem of its own (mkfs.xfs wants at least 300 MB).
    let Some((fs, lfs)) = own_fs("xfs", 320 << 20, &[], "cow with room for one chunk") else {
        return;
    };
    let fs = &fs;
    let (f, d) = fragment_by_inserts(fs, "f", 64 << 20, 300);
    // Fill the filesystem, then free 40 MiB in one place: a 16 MiB chunk
    // fits (its reservation, rounded per extent, takes more than 16 MiB),
    // the 64 MiB run does not.
    let filler = fill_but(fs, 40 << 20);
    let o = RelocateOptions {
        strategy: Some(RelocateStrategy::Cow),
        ..opts(16 << 20)
    };
    let r = relocate(&f, &o).unwrap();
    eprintln!(
        "xfs: cow with room for one chunk: extents {} -> {}, chunks {} moved {} skipped {:?}",
        r.extents_before, r.extents_after, r.chunks, r.chunks_moved, r.chunks_skipped
    );
    assert!(read_all(&f) == d, "content changed");
    assert_eq!(budge::sys::cow_extent_size_hint(&f).unwrap(), None);
    assert!(r.notes.iter().any(|n| n.contains("too little")), "{r:?}");
    assert_eq!(r.chunks_moved, r.chunks, "{r:?}");
    assert!(r.extents_after * 10 < r.extents_before, "{r:?}");
    drop(filler);
    drop(lfs);
}

/// The space runs out after cow raised the hint for the run (failpoint
/// `budge::relocate::before-swap`, between the share and the unshare): the
/// chunk is `no space`, the content unchanged, the file's own hint back.
#[cfg(feature = "failpoints")]
#[test]
fn cow_enospc_after_raising_the_hint() {
    let Some((fs, lfs)) = own_fs("xfs", 320 << 20, &[], "cow ENOSPC after raising the hint") else {
        return;
    };
    let fs = &fs;
    let (f, d) = fragment_by_inserts(fs, "f", 16 << 20, 100);
    budge::sys::set_cow_extent_size_hint(&f, Some(64 << 10)).unwrap();
    let scenario = fail::FailScenario::setup();
    let filler = std::sync::Arc::new(std::sync::Mutex::new(None::<File>));
    let (filler2, path, probe) = (filler.clone(), fs.path("filler"), f.try_clone().unwrap());
    in_this_thread("budge::relocate::before-swap", move || {
        let mut slot = filler2.lock().unwrap();
        if slot.is_none() {
            let hint = budge::sys::cow_extent_size_hint(&probe).unwrap();
            assert_eq!(hint, Some(16 << 20), "raised to the run");
            let g = File::options()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .unwrap();
            common::allocate_greedily(&g, 64 << 20, |_| false);
            *slot = Some(g);
        }
    });
    let o = RelocateOptions {
        strategy: Some(RelocateStrategy::Cow),
        ..opts(16 << 20)
    };
    let r = relocate(&f, &o);
    scenario.teardown();
    let r = r.unwrap();
    eprintln!(
        "xfs: cow ENOSPC after raising the hint: moved {} skipped {:?}",
        r.chunks_moved, r.chunks_skipped
    );
    assert!(read_all(&f) == d, "content changed");
    assert_eq!(
        budge::sys::cow_extent_size_hint(&f).unwrap(),
        Some(64 << 10)
    );
    assert_none_moved(&r, SkipReason::NoSpace);
    let g = filler.lock().unwrap().take().unwrap();
    common::free_filler(fs, g, 64 << 20);
    let r2 = relocate(&f, &o).unwrap();
    assert_eq!(r2.chunks_moved, 1, "{r2:?}");
    assert!(read_all(&f) == d);
    drop(lfs);
}

/// `(mtime, ctime)` of `f` in nanoseconds.
fn times(f: &File) -> (i128, i128) {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().unwrap();
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()))
}

// XFS's cow strategy raises the file's copy-on-write extent size hint for
// the run and puts the file's own back; it updates the times and says so.
// With keep_times the automatic choice leaves it out and the times stay.
// Elsewhere, forced, it is refused and the file is unchanged.
fs_test!(cow_puts_the_hint_back_and_reports_the_times, |fs| {
    let o = RelocateOptions {
        strategy: Some(RelocateStrategy::Cow),
        ..opts(1 << 20)
    };
    if fs.kind != "xfs" {
        let (f, d) = fragmented(fs, "f", 4 << 20, 12);
        let before = budge::extents::extents(&f).ok();
        let e = relocate(&f, &o).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                ErrorKind::Unsupported | ErrorKind::InvalidArgument
            ),
            "{}: {e}",
            fs.kind
        );
        assert!(read_all(&f) == d, "{}: content changed", fs.kind);
        assert_eq!(budge::extents::extents(&f).ok(), before, "{}", fs.kind);
        return;
    }
    let (f, d) = fragment_by_inserts(fs, "f", 8 << 20, 100);
    // A hint of the file's own, smaller than the run.
    budge::sys::set_cow_extent_size_hint(&f, Some(256 << 10)).unwrap();
    let t0 = times(&f);
    let r = relocate(&f, &o).unwrap();
    eprintln!(
        "xfs: cow extents {} -> {}, moved {}, notes {:?}",
        r.extents_before, r.extents_after, r.bytes_moved, r.notes
    );
    assert_eq!(r.strategy, RelocateStrategy::Cow);
    assert!(r.coherent);
    assert!(read_all(&f) == d, "cow changed content");
    assert!(r.chunks_moved > 0 && r.bytes_moved > 0, "{r:?}");
    assert!(r.extents_after * 4 < r.extents_before, "{r:?}");
    assert_eq!(
        budge::sys::cow_extent_size_hint(&f).unwrap(),
        Some(256 << 10),
        "the file's own hint is back"
    );
    assert!(times(&f).0 > t0.0, "cow updates mtime");
    // XFS sets PREALLOC on every unshare; it is put back too.
    assert!(!budge::sys::cow_attrs(&f).unwrap().prealloc);
    assert!(
        r.notes.iter().any(|n| n.contains("times were updated")),
        "{r:?}"
    );
    // A file with no hint of its own has none afterwards.
    let (g, dg) = fragment_by_inserts(fs, "g", 8 << 20, 100);
    assert_eq!(budge::sys::cow_extent_size_hint(&g).unwrap(), None);
    relocate(&g, &o).unwrap();
    assert_eq!(budge::sys::cow_extent_size_hint(&g).unwrap(), None);
    assert!(read_all(&g) == dg);
    // A run that does not start at 0: the hint divides its offset, so no
    // copy-on-write blocks are reserved outside it (they would stay
    // allocated until the inode leaves memory).
    let (k, dk) = fragment_by_inserts(fs, "k", 64 << 20, 300);
    let r = relocate(
        &k,
        &RelocateOptions {
            range: Some((16 << 20, 48 << 20)),
            ..o
        },
    )
    .unwrap();
    assert!(r.chunks_moved > 0, "{r:?}");
    assert!(read_all(&k) == dk);
    {
        use std::os::unix::fs::MetadataExt;
        let allocated = k.metadata().unwrap().blocks() * 512;
        assert!(
            allocated <= (64 << 20) + (1 << 20),
            "{allocated} bytes allocated for 64 MiB: {r:?}"
        );
    }
    // Setuid and setgid bits and file capabilities, which the kernel
    // clears on a write: the automatic choice leaves cow out; forced, it
    // is refused. The bits stay.
    use std::os::unix::fs::PermissionsExt;
    let (s, ds) = fragment_by_inserts(fs, "s", 8 << 20, 100);
    s.set_permissions(std::fs::Permissions::from_mode(0o4755))
        .unwrap();
    let e = relocate(&s, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("setuid"), "{e}");
    let r = relocate(&s, &opts(1 << 20)).unwrap();
    assert_ne!(r.strategy, RelocateStrategy::Cow, "{r:?}");
    assert!(r.notes.iter().any(|n| n.contains("left out")), "{r:?}");
    assert_eq!(s.metadata().unwrap().permissions().mode() & 0o7777, 0o4755);
    assert!(read_all(&s) == ds);
    // keep_times: the automatic choice moves it some other way, times kept.
    let (h, dh) = fragment_by_inserts(fs, "h", 8 << 20, 100);
    let th = times(&h);
    let r = relocate(
        &h,
        &RelocateOptions {
            keep_times: true,
            ..opts(1 << 20)
        },
    )
    .unwrap();
    assert_ne!(r.strategy, RelocateStrategy::Cow, "{r:?}");
    assert!(r.chunks_moved > 0, "{r:?}");
    assert_eq!(times(&h), th, "{r:?}");
    assert!(read_all(&h) == dh);
});

// A write lands in a chunk after cow shared it with the scratch file and
// before the unshare (failpoint `budge::relocate::before-swap`): the
// kernel's copy-on-write takes it like any write, and the chunk still
// moves, with the new bytes.
#[cfg(feature = "failpoints")]
#[test]
fn cow_keeps_a_racing_write() {
    common::run("xfs", |fs| {
        let (f, mut d) = fragment_by_inserts(fs, "f", 4 << 20, 100);
        let scenario = fail::FailScenario::setup();
        let racer = f.try_clone().unwrap();
        let new = data(4096, 98);
        let new2 = new.clone();
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fired2 = fired.clone();
        in_this_thread("budge::relocate::before-swap", move || {
            if !fired2.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::os::unix::fs::FileExt::write_all_at(&racer, &new2, 8192).unwrap();
            }
        });
        let o = RelocateOptions {
            strategy: Some(RelocateStrategy::Cow),
            ..opts(1 << 20)
        };
        let r = relocate(&f, &o);
        scenario.teardown();
        let r = r.unwrap();
        assert!(fired.load(std::sync::atomic::Ordering::SeqCst));
        d[8192..8192 + 4096].copy_from_slice(&new);
        assert!(read_all(&f) == d, "racing write lost");
        assert_eq!(r.chunks_moved, r.chunks, "{r:?}");
        assert!(r.extents_after < r.extents_before, "{r:?}");
    });
}
