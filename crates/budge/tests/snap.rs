//! Snapshots on every filesystem, in one process: isolation from changes to
//! the file, commit (grow, shrink, create), commit-and-close, metadata kept,
//! conflict detection, forced copy strategies, and stray-file clean-up.
//! (Other processes and crashes: tests/snap_procs.rs, tests/snap_crash.rs.)

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use budge::snap::{self, Backing, OnConflict, SnapOptions, Snapshot, SnapshotMut};
use budge::{ErrorKind, Policy, Strategy};
use common::{data, TestFs};

fn reflinks(fs: &TestFs) -> bool {
    matches!(fs.kind, "xfs" | "btrfs")
}

fn copy_strategies(fs: &TestFs) -> Vec<Option<Strategy>> {
    let mut v = vec![None, Some(Strategy::KernelCopy), Some(Strategy::UserCopy)];
    if reflinks(fs) {
        v.push(Some(Strategy::Reflink));
    }
    v
}

fs_test!(
    snapshot_isolated_from_writes_truncate_unlink_replace,
    |fs: &TestFs| {
        for strategy in copy_strategies(fs) {
            let path = fs.path("f");
            let d = data(3 << 20 | 123, 7);
            std::fs::write(&path, &d).unwrap();
            let opts = SnapOptions {
                strategy,
                ..SnapOptions::default()
            };
            let s = Snapshot::open_with(&path, &opts).unwrap();
            let want = strategy.unwrap_or(if reflinks(fs) {
                Strategy::Reflink
            } else {
                Strategy::KernelCopy
            });
            assert_eq!(s.report().strategy, want, "{strategy:?}");
            assert_eq!(s.report().backing, Backing::TmpFile);
            assert_eq!(s.len(), d.len());
            // Overwrite, truncate, unlink, replace: the snapshot never changes.
            std::fs::write(&path, vec![0xAAu8; d.len()]).unwrap();
            assert!(s.changed().unwrap());
            assert!(s[..] == d[..]);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(10)
                .unwrap();
            assert!(s[..] == d[..], "after truncate");
            std::fs::remove_file(&path).unwrap();
            assert!(s[..] == d[..], "after unlink");
            std::fs::write(&path, b"other").unwrap();
            assert!(s[..] == d[..], "after replace");
            std::fs::remove_file(&path).unwrap();
        }
    }
);

fs_test!(empty_file_snapshot, |fs: &TestFs| {
    let path = fs.path("empty");
    std::fs::write(&path, b"").unwrap();
    let s = Snapshot::open(&path).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.report().strategy, Strategy::Nothing);
    let mut m = SnapshotMut::open(&path).unwrap();
    m.resize(5).unwrap();
    m.copy_from_slice(b"hello");
    m.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    assert!(s.is_empty(), "the read snapshot still sees the empty file");
});

fs_test!(commit_grow_shrink_and_close, |fs: &TestFs| {
    for strategy in copy_strategies(fs) {
        let path = fs.path("g");
        let d = data(1 << 20, 3);
        std::fs::write(&path, &d).unwrap();
        let opts = SnapOptions {
            strategy,
            ..SnapOptions::default()
        };
        let mut m = SnapshotMut::open_with(&path, &opts).unwrap();
        m[0..5].copy_from_slice(b"HELLO");
        // Not visible before commit.
        assert_eq!(&std::fs::read(&path).unwrap()[0..5], &d[0..5]);
        m.resize(3 << 20).unwrap();
        m[(3 << 20) - 1] = 9;
        let r = m.commit().unwrap();
        assert_eq!(r.len, 3 << 20);
        assert!(r.replaced);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 3 << 20);
        assert_eq!(&on_disk[0..5], b"HELLO");
        assert_eq!(&on_disk[5..1 << 20], &d[5..]);
        assert!(on_disk[1 << 20..(3 << 20) - 1].iter().all(|&b| b == 0));
        assert_eq!(on_disk[(3 << 20) - 1], 9);
        // Shrink to an unaligned size, commit: the file really shrinks.
        m.resize(4097).unwrap();
        m.commit().unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 4097);
        assert_eq!(&on_disk[0..5], b"HELLO");
        assert_eq!(&on_disk[5..4097], &d[5..4097]);
        // Writes after a commit are private until the next one.
        m[4096] = 0xEE;
        assert_eq!(std::fs::read(&path).unwrap()[4096], d[4096]);
        let r = m.commit_and_close().unwrap();
        assert_eq!(r.strategy, Strategy::Nothing);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 4097);
        assert_eq!(on_disk[4096], 0xEE);
        // Nothing stray left in the directory.
        let names: Vec<_> = std::fs::read_dir(fs.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("g")], "{names:?}");
        std::fs::remove_file(&path).unwrap();
    }
});

fs_test!(
    create_does_not_touch_existing_file_until_commit,
    |fs: &TestFs| {
        let path = fs.path("new");
        let mut m = SnapshotMut::create(&path).unwrap();
        assert!(!path.exists());
        m.resize(10).unwrap();
        m.copy_from_slice(b"0123456789");
        assert!(!path.exists());
        let r = m.commit().unwrap();
        assert!(!r.replaced);
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        // An existing file is untouched until commit.
        std::fs::write(&path, b"keep me").unwrap();
        let mut m = SnapshotMut::create(&path).unwrap();
        m.resize(3).unwrap();
        m.copy_from_slice(b"new");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        drop(m);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"keep me",
            "dropping commits nothing"
        );
        // With Refuse, create + commit over an existing file is a conflict.
        let opts = SnapOptions {
            on_conflict: OnConflict::Refuse,
            ..SnapOptions::default()
        };
        let mut m = SnapshotMut::create_with(&path, &opts).unwrap();
        m.resize(1).unwrap();
        let e = m.commit().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }
);

// A commit_and_close that fails hands the snapshot back with its changes:
// refused on a conflict, the path keeps the other writer's version; the
// same snapshot then overwrites it once told to.
fs_test!(
    a_failed_commit_and_close_hands_the_snapshot_back,
    |fs: &TestFs| {
        let path = fs.path("handback");
        for in_memory in [false, true] {
            let d = data(300_000, 12);
            std::fs::write(&path, &d).unwrap();
            let opts = SnapOptions {
                on_conflict: OnConflict::Refuse,
                in_memory,
                ..SnapOptions::default()
            };
            let mut m = SnapshotMut::open_with(&path, &opts).unwrap();
            m[5000..9000].fill(0x5A);
            let mut mine = d.clone();
            mine[5000..9000].fill(0x5A);
            let theirs = data(123_456, 13);
            std::fs::write(&path, &theirs).unwrap();
            let e = m.commit_and_close().unwrap_err();
            assert_eq!(e.error.kind(), ErrorKind::Conflict, "{e}");
            assert!(e.to_string().contains("handback"), "{e}");
            assert!(std::fs::read(&path).unwrap() == theirs, "the path changed");
            let mut m = e.snapshot;
            assert!(m[..] == mine[..], "in memory {in_memory}: changes lost");
            m.set_on_conflict(OnConflict::Overwrite);
            m.commit_and_close().unwrap();
            assert!(
                std::fs::read(&path).unwrap() == mine,
                "in memory {in_memory}"
            );
        }
    }
);

fs_test!(commit_keeps_mode_owner_xattrs, |fs: &TestFs| {
    let path = fs.path("meta");
    std::fs::write(&path, data(70_000, 1)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&path, Some(4321), Some(8765)).unwrap();
    let xattrs = xattr_supported(&path);
    if xattrs {
        set_xattr(&path, "user.budge.test", b"value 1");
        set_xattr(&path, "user.budge.empty", b"");
    }
    for close in [false, true] {
        let mut m = SnapshotMut::open(&path).unwrap();
        m[0] ^= 1;
        if close {
            m.commit_and_close().unwrap();
        } else {
            m.commit().unwrap();
        }
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!((md.uid(), md.gid()), (4321, 8765));
        if xattrs {
            assert_eq!(get_xattr(&path, "user.budge.test"), b"value 1");
            assert_eq!(get_xattr(&path, "user.budge.empty"), b"");
        }
    }
    assert!(
        xattrs || fs.kind == "tmpfs",
        "user xattrs expected on {}",
        fs.kind
    );
});

fn xattr_supported(path: &std::path::Path) -> bool {
    rustix::fs::setxattr(
        path,
        "user.budge.probe",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .and_then(|()| rustix::fs::removexattr(path, "user.budge.probe"))
    .is_ok()
}

fn set_xattr(path: &std::path::Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn get_xattr(path: &std::path::Path, name: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::getxattr(path, name, &mut buf[..]).unwrap();
    buf.truncate(n);
    buf
}

fs_test!(conflict_detection, |fs: &TestFs| {
    let path = fs.path("c");
    std::fs::write(&path, b"version 1").unwrap();
    let refuse = SnapOptions {
        on_conflict: OnConflict::Refuse,
        ..SnapOptions::default()
    };
    // Unchanged: commits, and keeps committing against its own versions.
    let mut m = SnapshotMut::open_with(&path, &refuse).unwrap();
    m[8] = b'2';
    m.commit().unwrap();
    m[8] = b'3';
    m.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"version 3");
    // Someone writes in place (same size): refused, file untouched.
    let mut a = SnapshotMut::open_with(&path, &refuse).unwrap();
    std::fs::write(&path, b"VERSION 9").unwrap();
    a[8] = b'4';
    let e = a.commit().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("written"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"VERSION 9");
    // Two snapshots of one version: the first commit wins, the second is refused.
    let mut b = SnapshotMut::open_with(&path, &refuse).unwrap();
    let mut c = SnapshotMut::open_with(&path, &refuse).unwrap();
    b[0] = b'b';
    c[0] = b'c';
    b.commit().unwrap();
    let e = c.commit().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("replaced"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"bERSION 9");
    // Deleted under it: refused; Overwrite (the default) recreates it.
    let mut d = SnapshotMut::open_with(&path, &refuse).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(d.commit().unwrap_err().kind(), ErrorKind::Conflict);
    assert!(!path.exists());
    std::fs::write(&path, b"x").unwrap();
    let mut e = SnapshotMut::open(&path).unwrap();
    std::fs::write(&path, b"someone else").unwrap();
    e.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
});

fs_test!(metadata_only_refuses_to_copy, |fs: &TestFs| {
    let path = fs.path("m");
    std::fs::write(&path, data(10_000, 2)).unwrap();
    let opts = SnapOptions {
        policy: Policy::MetadataOnly,
        ..SnapOptions::default()
    };
    match Snapshot::open_with(&path, &opts) {
        Ok(s) => {
            assert!(reflinks(fs), "{} cannot reflink", fs.kind);
            assert_eq!(s.report().bytes_copied, 0);
        }
        Err(e) => {
            assert!(!reflinks(fs), "{e}");
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        }
    }
});

fs_test!(in_memory_snapshots_are_sealed_and_commit, |fs: &TestFs| {
    let path = fs.path("mem");
    let d = data(200_000, 4);
    std::fs::write(&path, &d).unwrap();
    let opts = SnapOptions {
        in_memory: true,
        ..SnapOptions::default()
    };
    let s = Snapshot::open_with(&path, &opts).unwrap();
    assert_eq!(s.report().backing, Backing::Memory);
    assert!(s.report().strategy.copies_data());
    assert!(s[..] == d[..]);
    // Sealed: not even the owner can change it through the descriptor.
    use std::os::unix::fs::FileExt;
    assert!(s.file().write_at(b"x", 0).is_err());
    let mut m = SnapshotMut::open_with(&path, &opts).unwrap();
    m[1] = 0;
    m.resize(100).unwrap();
    let r = m.commit_and_close().unwrap();
    assert!(r.strategy.copies_data());
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), 100);
    assert_eq!(on_disk[1], 0);
    assert_eq!(on_disk[2..], d[2..100]);
});

fs_test!(snapshot_to_file_and_cleanup_of_strays, |fs: &TestFs| {
    let src = fs.path("src");
    let out = fs.path("out");
    let d = data(5 << 20, 9);
    std::fs::write(&src, &d).unwrap();
    let r = snap::snapshot_to(&src, &out, false, &SnapOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), d);
    assert_eq!(r.bytes_copied == 0, reflinks(fs), "{r:?}");
    let e = snap::snapshot_to(&src, &out, false, &SnapOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    std::fs::write(&src, b"v2").unwrap();
    snap::snapshot_to(&src, &out, true, &SnapOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"v2");
    // A stray (nobody holds its lock) is removed on the next open; a live
    // one (locked, as a commit in progress holds it) is left alone, and a
    // commit meanwhile says another commit is in progress.
    let temp = fs.path(".out.budge-commit");
    std::fs::write(&temp, b"in progress").unwrap();
    let held = std::fs::File::open(&temp).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let mut m = SnapshotMut::open(&out).unwrap();
    assert!(m.report().cleaned.is_empty());
    assert!(temp.exists());
    let e = m.commit().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"v2");
    drop(held);
    let m = SnapshotMut::open(&out).unwrap();
    assert_eq!(m.report().cleaned, vec![temp.clone()]);
    assert!(!temp.exists());
});

fs_test!(symlink_commits_go_to_the_target, |fs: &TestFs| {
    let target = fs.path("target");
    let link = fs.path("link");
    std::fs::write(&target, b"abc").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut m = SnapshotMut::open(&link).unwrap();
    m[0] = b'X';
    m.commit().unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"Xbc");
});

fs_test!(hard_links_keep_the_old_version, |fs: &TestFs| {
    let path = fs.path("h");
    let other = fs.path("h2");
    std::fs::write(&path, b"old").unwrap();
    std::fs::hard_link(&path, &other).unwrap();
    let held = std::fs::File::open(&path).unwrap();
    let mut m = SnapshotMut::open(&path).unwrap();
    m.copy_from_slice(b"new");
    m.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(
        std::fs::read(&other).unwrap(),
        b"old",
        "documented: a new inode"
    );
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &held, &mut s).unwrap();
    assert_eq!(s, "old", "open descriptors keep the old version");
});

#[test]
fn errors_name_file_and_operation() {
    let e = Snapshot::open("/nonexistent/budge/file").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/budge/file") && msg.contains("snapshot"),
        "{msg}"
    );
    let e = Snapshot::open("/dev/null").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = SnapshotMut::open("/").unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

// A copy that sees the file change under it starts again in an emptied
// file: the second copy's holes must not show the first copy's data, and
// its size is the file's new size. A file that changes during every copy
// is a conflict, and the error says so.
#[cfg(feature = "failpoints")]
fs_test!(a_copy_retried_after_a_change_starts_empty, |fs: &TestFs| {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    const MIB: usize = 1 << 20;
    let _scenario = fail::FailScenario::setup();
    let path = fs.path("changing");
    let me = std::thread::current().id();
    // How many more copies the callback spoils.
    let spoil = Arc::new(AtomicU32::new(0));
    let (spoil2, p2) = (spoil.clone(), path.clone());
    let newer = data(MIB, 41);
    let newer2 = newer.clone();
    fail::cfg_callback("budge::snap::after-copy", move || {
        if std::thread::current().id() != me || spoil2.load(Ordering::SeqCst) == 0 {
            return;
        }
        spoil2.fetch_sub(1, Ordering::SeqCst);
        // 3 MiB: data, a hole, data (the first copy had data in the hole).
        let f = std::fs::File::options().write(true).open(&p2).unwrap();
        f.set_len(0).unwrap();
        f.set_len(3 * MIB as u64).unwrap();
        f.write_all_at(&newer2, 0).unwrap();
        f.write_all_at(&newer2, 2 * MIB as u64).unwrap();
    })
    .unwrap();
    let mut want = newer.clone();
    want.resize(2 * MIB, 0);
    want.extend_from_slice(&newer);
    let variants = [
        (Some(Strategy::KernelCopy), false),
        (Some(Strategy::UserCopy), false),
        (None, true),
    ];
    for (strategy, in_memory) in variants {
        let what = format!("{strategy:?} in memory {in_memory}");
        let opts = SnapOptions {
            strategy,
            in_memory,
            ..SnapOptions::default()
        };
        std::fs::write(&path, data(4 * MIB, 40)).unwrap();
        spoil.store(1, Ordering::SeqCst);
        let s = Snapshot::open_with(&path, &opts).unwrap();
        assert_eq!(s.report().attempts, 2, "{what}");
        assert_eq!(s.len(), want.len(), "{what}");
        assert!(
            s[..] == want[..],
            "{what}: the retried copy is not the new file"
        );
        drop(s);

        std::fs::write(&path, data(4 * MIB, 42)).unwrap();
        spoil.store(u32::MAX, Ordering::SeqCst);
        let e = SnapshotMut::open_with(&path, &opts).unwrap_err();
        spoil.store(0, Ordering::SeqCst);
        assert_eq!(e.kind(), ErrorKind::Conflict, "{what}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("changed during each of") && msg.contains("changing"),
            "{what}: {msg}"
        );
    }
});

fs_test!(copies_report_progress, |fs: &TestFs| {
    use std::sync::atomic::{AtomicU64, Ordering};
    let path = fs.path("p");
    let d = data(24 << 20, 6);
    std::fs::write(&path, &d).unwrap();
    for strategy in [Strategy::KernelCopy, Strategy::UserCopy] {
        let (done, total, calls) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        let cb = |d: u64, t: u64| {
            calls.fetch_add(1, Ordering::Relaxed);
            done.fetch_max(d, Ordering::Relaxed);
            total.store(t, Ordering::Relaxed);
        };
        let opts = SnapOptions {
            strategy: Some(strategy),
            progress: Some(&cb),
            ..SnapOptions::default()
        };
        let s = Snapshot::open_with(&path, &opts).unwrap();
        assert!(s[..] == d[..]);
        assert!(
            calls.load(Ordering::Relaxed) >= 1,
            "{strategy}: no progress calls"
        );
        assert_eq!(total.load(Ordering::Relaxed), d.len() as u64, "{strategy}");
        assert_eq!(done.load(Ordering::Relaxed), d.len() as u64, "{strategy}");
    }
});

/// Descriptors of this process open on a deleted `path` (a replaced
/// version still held).
fn held_deleted(path: &std::path::Path) -> usize {
    let want = format!("{} (deleted)", path.display());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy() == want)
        .count()
}

fs_test!(a_commit_keeps_at_most_one_replaced_file_open, |fs| {
    let path = fs.path("f");
    std::fs::write(&path, data(64 << 10, 1)).unwrap();
    let mut m = SnapshotMut::open(&path).unwrap();
    m[0] = 1;
    m.commit().unwrap();
    // Where the commit cloned, the replaced file is closed later, not in
    // the commit; a copying commit closes it at once.
    let reflinks = m.report().strategy == Strategy::Reflink;
    assert_eq!(held_deleted(&path), usize::from(reflinks), "{}", fs.kind);
    for i in 2..5 {
        m[0] = i;
        m.commit().unwrap();
        assert_eq!(held_deleted(&path), usize::from(reflinks), "{}", fs.kind);
    }
    drop(m);
    assert_eq!(held_deleted(&path), 0, "{}", fs.kind);
    assert_eq!(std::fs::read(&path).unwrap()[0], 4);
});
