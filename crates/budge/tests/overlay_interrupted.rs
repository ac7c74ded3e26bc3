//! Overlay commits interrupted by fault injection (`--features
//! budge/failpoints`): a replace commit stopped before its rename, an
//! in-place commit stopped part-way; the next open finishes or undoes it.
//! Failpoints are process-wide, so these live in their own test binary and
//! take turns.
#![cfg(feature = "failpoints")]
mod common;

use std::fs::File;

use budge::overlay::{CommitOptions, CommitStrategy, Overlay, OverlayOptions};
use budge::ErrorKind;
use common::{data, read_all, TestFs};

const PS: u64 = 4096;

static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_whole(o: &Overlay) -> Vec<u8> {
    let mut v = vec![0u8; o.size() as usize];
    o.read_at(0, &mut v).unwrap();
    v
}

fn setup(fs: &TestFs) -> (Vec<u8>, Vec<u8>) {
    let base = data(16 << 20, 11);
    fs.file_with("base", &base);
    let mut ov =
        Overlay::create(fs.path("base"), fs.path("ov"), &OverlayOptions::default()).unwrap();
    for i in 0..8 {
        ov.write_at(i * 2 * 1048576 + 3, &[i as u8 + 1; 70_000])
            .unwrap();
    }
    ov.zero(PS, 3 * PS).unwrap();
    let want = read_whole(&ov);
    ov.close().unwrap();
    (base, want)
}

fs_test!(a_commit_stopped_before_the_rename_changes_nothing, |fs| {
    let _g = one_at_a_time();
    let (base, want) = setup(fs);
    fail::cfg("budge::overlay::before-publish", "return").unwrap();
    let mut ov = Overlay::open(fs.path("ov")).unwrap();
    let e = ov
        .commit(&CommitOptions {
            strategy: CommitStrategy::Copy,
            progress: None,
        })
        .unwrap_err();
    fail::remove("budge::overlay::before-publish");
    assert!(e.to_string().contains("failpoint"), "{e}");
    drop(ov); // as if the process died here: the superblock says "publishing"
              // Read-only openers are told to recover first.
    let e = Overlay::open_read_only(fs.path("ov")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NeedsRecovery, "{e}");
    assert!(read_all(&File::open(fs.path("base")).unwrap()) == base);
    let mut ov = Overlay::open(fs.path("ov")).unwrap();
    assert!(read_whole(&ov) == want);
    assert!(
        !ov.changes().is_empty(),
        "the commit did not happen, so the overlay keeps its pages"
    );
    ov.commit(&CommitOptions::default()).unwrap();
    assert!(read_all(&File::open(fs.path("base")).unwrap()) == want);
});

fs_test!(
    an_in_place_commit_stopped_part_way_is_finished_on_open,
    |fs| {
        let _g = one_at_a_time();
        let (base, want) = setup(fs);
        fail::cfg("budge::overlay::in-place-piece", "2*off->return").unwrap();
        let mut ov = Overlay::open(fs.path("ov")).unwrap();
        let e = ov
            .commit(&CommitOptions {
                strategy: CommitStrategy::InPlace,
                progress: None,
            })
            .unwrap_err();
        fail::remove("budge::overlay::in-place-piece");
        assert!(e.to_string().contains("failpoint"), "{e}");
        drop(ov);
        let half = read_all(&File::open(fs.path("base")).unwrap());
        assert!(
            half != base && half != want,
            "the base holds part of the commit"
        );
        let e = Overlay::open_read_only(fs.path("ov")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NeedsRecovery, "{e}");
        let ov = Overlay::open(fs.path("ov")).unwrap();
        assert!(ov.changes().is_empty(), "the commit was finished on open");
        assert!(read_whole(&ov) == want);
        assert!(read_all(&File::open(fs.path("base")).unwrap()) == want);
    }
);

fs_test!(
    a_flush_stopped_before_the_superblock_keeps_the_last_one,
    |fs| {
        let _g = one_at_a_time();
        let (_base, want) = setup(fs);
        let mut ov = Overlay::open(fs.path("ov")).unwrap();
        let g = ov.generation();
        ov.write_at(0, &[0xee; 3 * PS as usize]).unwrap();
        fail::cfg("budge::overlay::before-superblock", "return").unwrap();
        let e = ov.flush().unwrap_err();
        fail::remove("budge::overlay::before-superblock");
        assert!(e.to_string().contains("failpoint"), "{e}");
        std::mem::drop(ov);
        let ov = Overlay::open(fs.path("ov")).unwrap();
        assert!(ov.generation() >= g);
        let v = read_whole(&ov);
        // Either the write made it (the drop flushed) or not: never a mix.
        let new = v[..3 * PS as usize].iter().all(|&b| b == 0xee);
        let old = v[..3 * PS as usize] == want[..3 * PS as usize];
        assert!(new || old, "pages 0..3 are neither old nor new");
        assert!(v[3 * PS as usize..] == want[3 * PS as usize..]);
    }
);
