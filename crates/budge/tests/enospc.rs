//! ENOSPC on small, nearly full filesystems: an insert or collapse that
//! cannot get space fails cleanly and leaves the file byte-identical, with
//! every strategy that can run there.

mod common;

use budge::{collapse, insert, ErrorKind, Strategy};
use common::{data, fill_fs, forced, read_all, run_small, shift_strategies};

const BS: u64 = 4096;

fn enospc(kind: &'static str) {
    run_small(kind, |fs| {
        let orig = data(256 * BS as usize, 1);
        let f = fs.file_with("f", &orig);
        f.sync_all().unwrap();
        let strategies = shift_strategies(fs);
        let filler = fill_fs(fs, 64 << 10);
        let mut failures = 0;
        for s in strategies {
            // Far more than is free: a copying insert must reserve it first.
            let big = 8 << 20;
            match insert(&f, 16 * BS, big, &forced(s)) {
                Ok(r) => {
                    assert!(!s.copies_data(), "{s} on full {kind} claimed success");
                    assert_eq!(r.strategy, s);
                    // Metadata strategies need no data space; undo for the next round.
                    collapse(&f, 16 * BS, big, &forced(s)).unwrap();
                }
                Err(e) => {
                    failures += 1;
                    assert_eq!(e.kind(), ErrorKind::NoSpace, "{s} on {kind}: {e}");
                    assert!(e.to_string().contains("unchanged"), "{s} on {kind}: {e}");
                }
            }
            assert!(read_all(&f) == orig, "{s} on full {kind} changed the file");
        }
        // A collapse by copy must save the removed range first: no room,
        // unless copy_file_range reflinks (XFS, btrfs), which needs none.
        // (Kernel copy last: on success it changes the file, as it should.)
        for s in [Strategy::UserCopy, Strategy::KernelCopy] {
            match collapse(&f, 8 * BS, 128 * BS, &forced(s)) {
                Ok(_) => {
                    assert!(
                        s == Strategy::KernelCopy && fs.caps().copy_file_range_reflinks.works,
                        "{s} on full {kind}"
                    );
                    let want = common::model_collapse(&orig, 8 * BS as usize, 128 * BS as usize);
                    assert!(read_all(&f) == want, "{s} collapse on full {kind}");
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::NoSpace, "{s} on {kind}: {e}");
                    assert!(
                        read_all(&f) == orig,
                        "{s} collapse on full {kind} changed the file"
                    );
                }
            }
        }
        assert!(failures > 0, "no strategy hit ENOSPC on {kind}");
        common::free_filler(fs, filler, 1 << 20);
        // With space back, the same insert works.
        let r = insert(&f, 16 * BS, 4 * BS, &common::ShiftOptions::default()).unwrap();
        assert_ne!(r.strategy, Strategy::Nothing);
    });
}

kind_tests!(enospc; enospc_xfs, enospc_btrfs, enospc_ext4, enospc_tmpfs);

/// btrfs rewrites every overwritten block elsewhere, so a copying shift needs
/// free space for the whole tail, not just the inserted range: budge checks
/// before moving a byte instead of failing half-way.
#[test]
fn copy_shift_on_nearly_full_btrfs_fails_before_moving() {
    run_small("btrfs", |fs| {
        let orig = data(8 << 20, 2);
        let f = fs.file_with("f", &orig);
        f.sync_all().unwrap();
        let filler = fill_fs(fs, 2 << 20);
        // (Not KernelCopy: copy_file_range reflinks on btrfs and needs no space.)
        let s = Strategy::UserCopy;
        let e = insert(&f, 1 << 20, 64 << 10, &forced(s)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
        assert!(e.to_string().contains("copy-on-write"), "{e}");
        assert!(read_all(&f) == orig);
        let e = collapse(&f, 1 << 20, 64 << 10, &forced(s)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
        assert!(read_all(&f) == orig);
        // copy_file_range reflinks on btrfs: the kernel copy needs no space
        // for the tail and is not refused.
        let r = insert(&f, 1 << 20, 64 << 10, &forced(Strategy::KernelCopy)).unwrap();
        assert_eq!(r.strategy, Strategy::KernelCopy);
        assert!(read_all(&f) == common::model_insert(&orig, 1 << 20, 64 << 10));
        collapse(&f, 1 << 20, 64 << 10, &forced(Strategy::KernelCopy)).unwrap();
        assert!(read_all(&f) == orig);
        // The reflink shift needs no data space and still works.
        insert(&f, 1 << 20, 64 << 10, &forced(Strategy::Reflink)).unwrap();
        assert!(read_all(&f) == common::model_insert(&orig, 1 << 20, 64 << 10));
        drop(filler);
    });
}
