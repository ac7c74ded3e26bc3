//! Failures part-way through a strategy, injected with failpoints (the
//! `fail` crate, feature `failpoints`, enabled by scripts/test.sh) on real
//! filesystems: a strategy that fails after moving data rolls the file back
//! byte for byte; when the roll-back fails too, the error is
//! `PartiallyApplied` and says where the displaced bytes are.
#![cfg(feature = "failpoints")]

mod common;

use std::sync::Mutex;

use budge::{collapse, insert, ErrorKind, Strategy};
use common::{data, forced, read_all, TestFs};

/// Failpoints are process-wide: one test at a time.
static FAILPOINTS: Mutex<()> = Mutex::new(());

fn with_failpoint(name: &str, actions: &str, body: impl FnOnce()) {
    let _one = FAILPOINTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let scenario = fail::FailScenario::setup();
    fail::cfg(name, actions).unwrap();
    body();
    scenario.teardown();
}

const BS: u64 = 4096;

fn copies(fs: &TestFs) -> Vec<Strategy> {
    let mut v = vec![Strategy::UserCopy];
    if fs.caps().copy_file_range.works {
        v.push(Strategy::KernelCopy);
    }
    v
}

fs_test!(copy_insert_fails_part_way_and_rolls_back, |fs| {
    for s in copies(fs) {
        let orig = data(64 * BS as usize + 100, 1);
        let f = fs.file_with("f", &orig);
        // 16 KiB distance: the 240 KiB tail moves in 15 chunks; the 4th fails.
        with_failpoint("budge::move-chunk", "3*off->1*return->off", || {
            let e = insert(&f, 4 * BS, 4 * BS, &forced(s)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Io, "{s} on {}: {e}", fs.kind);
            assert!(
                e.to_string().contains("rolled back: the file is unchanged"),
                "{e}"
            );
        });
        assert!(read_all(&f) == orig, "{s} on {}: not rolled back", fs.kind);
    }
});

fs_test!(copy_collapse_fails_part_way_and_rolls_back, |fs| {
    for s in copies(fs) {
        let orig = data(64 * BS as usize + 100, 2);
        let f = fs.file_with("f", &orig);
        // Chunk 1 saves the removed range; the tail's 3rd chunk fails.
        with_failpoint("budge::move-chunk", "4*off->1*return->off", || {
            let e = collapse(&f, 4 * BS, 4 * BS, &forced(s)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Io, "{s} on {}: {e}", fs.kind);
            assert!(e.to_string().contains("rolled back"), "{e}");
        });
        assert!(read_all(&f) == orig, "{s} on {}: not rolled back", fs.kind);
    }
});

fs_test!(copy_insert_double_failure_describes_the_state, |fs| {
    let orig = data(64 * BS as usize, 3);
    let f = fs.file_with("f", &orig);
    // Every chunk from the 4th on fails, so the roll-back fails too.
    with_failpoint("budge::move-chunk", "3*off->return", || {
        let e = insert(&f, 4 * BS, 4 * BS, &forced(Strategy::UserCopy)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PartiallyApplied, "{e}");
        let msg = e.to_string();
        // The top 3 chunks (48 KiB) moved up by 16 KiB: the message says so.
        let moved_from = 64 * BS - 3 * 4 * BS;
        assert!(
            msg.contains(&format!("bytes [0, {moved_from}) are original")),
            "{msg}"
        );
        let (to, end) = (moved_from + 4 * BS, 68 * BS);
        assert!(msg.contains(&format!("are now at [{to}, {end})")), "{msg}");
    });
    // Check the description against the file.
    let now = read_all(&f);
    let moved_from = (64 - 12) * BS as usize;
    assert!(now[..moved_from] == orig[..moved_from]);
    assert!(now[moved_from + 4 * BS as usize..] == orig[moved_from..]);
});

fs_test!(reflink_shift_fails_part_way_and_rolls_back, |fs| {
    if !fs.caps().ficlonerange.works {
        return;
    }
    for is_insert in [true, false] {
        let orig = data(64 * BS as usize + 100, 4);
        let f = fs.file_with("f", &orig);
        with_failpoint("budge::reflink-clone-back", "return", || {
            let r = if is_insert {
                insert(&f, 8 * BS, 4 * BS, &forced(Strategy::Reflink))
            } else {
                collapse(&f, 8 * BS, 4 * BS, &forced(Strategy::Reflink))
            };
            let e = r.unwrap_err();
            assert!(
                e.to_string().contains("rolled back: the file is unchanged"),
                "{e}"
            );
        });
        assert!(read_all(&f) == orig, "insert={is_insert} on {}", fs.kind);
    }
});

fs_test!(reflink_double_failure_saves_the_tail, |fs| {
    if !fs.caps().ficlonerange.works {
        return;
    }
    let orig = data(64 * BS as usize + 100, 5);
    let f = fs.file_with("f", &orig);
    with_failpoint("budge::reflink-clone-back", "return", || {
        fail::cfg("budge::reflink-rollback", "return").unwrap();
        let e = collapse(&f, 8 * BS, 4 * BS, &forced(Strategy::Reflink)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PartiallyApplied, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("roll-back failed"), "{msg}");
        // The original bytes from the offset on are in the rescue file.
        let rescue = std::fs::read_dir(fs.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".budge-rescue-")
            })
            .expect("a rescue file");
        assert!(msg.contains(&rescue.display().to_string()), "{msg}");
        assert!(std::fs::read(&rescue).unwrap() == orig[8 * BS as usize..]);
        // The file itself was cut at the offset.
        assert!(read_all(&f) == orig[..8 * BS as usize]);
    });
});
