//! Clone, copy (sparse-aware), punch, zero, extents and the capability probe
//! on every filesystem of the matrix.

mod common;

use std::os::unix::fs::FileExt;

use budge::copy::{self, CopyOptions};
use budge::extents::{self, flags, SegmentKind};
use budge::{ErrorKind, Policy, Strategy};
use common::{data, read_all};

const BS: u64 = 4096;

fs_test!(probe_matches_the_filesystem, |fs| {
    let c = budge::sys::probe::probe_uncached(fs.dir.path()).unwrap();
    assert_eq!(c.fs.kind.name(), fs.kind);
    assert_eq!(c.block_size(), BS);
    let (native, reflink) = match fs.kind {
        "xfs" => (true, true),
        "btrfs" => (false, true),
        "ext4" => (true, false),
        _ => (false, false),
    };
    assert_eq!(c.insert_range.works, native, "{:?}", c.insert_range);
    assert_eq!(c.collapse_range.works, native);
    assert_eq!(c.ficlone.works, reflink);
    assert_eq!(c.ficlonerange.works, reflink);
    assert_eq!(c.ficlonerange_same_file.works, reflink);
    assert_eq!(c.copy_file_range_reflinks.works, reflink);
    assert_eq!(c.fiemap.works, fs.kind != "tmpfs");
    assert_eq!(c.ext4_move_ext.works, fs.kind == "ext4");
    assert!(c.punch_hole.works && c.copy_file_range.works && c.seek_data.works);
    assert!(c.o_tmpfile.works && c.rename_exchange.works);
    // This machine's xfsprogs cannot make exchange-range filesystems.
    assert!(!c.xfs_exchange_range.works);
    // The probe leaves nothing behind.
    assert_eq!(std::fs::read_dir(fs.dir.path()).unwrap().count(), 0);
    // The statfs-free XFS test agrees with statfs, on a file and a directory.
    let f = fs.file_with("f", b"x");
    for fd in [
        f.try_clone().unwrap(),
        std::fs::File::open(fs.dir.path()).unwrap(),
    ] {
        assert_eq!(budge::sys::is_xfs(&fd), fs.kind == "xfs");
        assert_eq!(
            budge::sys::fs_info(&fd).unwrap().kind == budge::sys::FsKind::Xfs,
            fs.kind == "xfs"
        );
    }
});

fs_test!(clone_range_shares_blocks_or_refuses, |fs| {
    let a = data(16 * BS as usize, 1);
    let src = fs.file_with("src", &a);
    src.sync_all().unwrap();
    let dst = fs.file_with("dst", &[]);
    let r = copy::clone_range(&src, 4 * BS, &dst, 0, 8 * BS);
    if !fs.caps().ficlonerange.works {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("cannot reflink"), "{e}");
        assert_eq!(read_all(&dst).len(), 0);
        return;
    }
    let r = r.unwrap();
    assert_eq!(
        (r.strategy, r.bytes_copied, r.bytes_cloned),
        (Strategy::Reflink, 0, 8 * BS)
    );
    assert!(read_all(&dst) == a[4 * BS as usize..12 * BS as usize]);
    let ext = extents::extents(&dst).unwrap();
    assert!(
        !ext.is_empty() && ext.iter().all(|e| e.flags & flags::SHARED != 0),
        "{ext:?}"
    );

    // Same file, non-overlapping.
    copy::clone_range(&src, 0, &src, 8 * BS, 4 * BS).unwrap();
    let mut m = a.clone();
    m.copy_within(0..4 * BS as usize, 8 * BS as usize);
    assert!(read_all(&src) == m);

    // Misuse, each with the exact error and the file untouched.
    let e = copy::clone_range(&src, 0, &src, 2 * BS, 4 * BS).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("overlap"), "{e}");
    let e = copy::clone_range(&src, 100, &dst, 0, BS).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Alignment);
    assert!(e.to_string().contains("4096"), "{e}");
    let e = copy::clone_range(&src, 0, &dst, 0, 64 * BS).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("past the source's EOF"), "{e}");
    assert!(read_all(&src) == m);
});

fs_test!(clone_across_filesystems_is_refused, |fs| {
    let other = if fs.kind == "tmpfs" { "xfs" } else { "tmpfs" };
    let src = fs.file_with("src", &data(4 * BS as usize, 13));
    common::run(other, |o| {
        let dst = o.file_with("dst", &[]);
        let e = copy::clone_file(&src, &dst).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("different filesystems"), "{e}");
        let e = copy::clone_range(&src, 0, &dst, 0, BS).unwrap_err();
        assert!(e.to_string().contains("different filesystems"), "{e}");
        // A copy across filesystems works (no reflink possible).
        let r = copy::copy_file(&src, &dst, &CopyOptions::default()).unwrap();
        assert_eq!(r.strategy, Strategy::UserCopy);
        assert!(read_all(&dst) == read_all(&src));
        let opts = CopyOptions {
            strategy: Some(Strategy::KernelCopy),
            ..CopyOptions::default()
        };
        let e = copy::copy_range(&src, 0, &dst, 0, BS, &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("between filesystems"), "{e}");
    });
});

fs_test!(clone_whole_file, |fs| {
    let a = data(10 * BS as usize + 5, 2);
    let src = fs.file_with("src", &a);
    let dst = fs.file_with("dst", b"old content");
    match copy::clone_file(&src, &dst) {
        Ok(r) => {
            assert!(fs.caps().ficlone.works);
            assert_eq!(r.bytes_copied, 0);
            assert!(read_all(&dst) == a);
        }
        Err(e) => {
            assert!(!fs.caps().ficlone.works);
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert_eq!(read_all(&dst), b"old content");
        }
    }
});

fs_test!(copy_range_with_each_strategy, |fs| {
    let caps = fs.caps();
    let mut strategies = vec![Strategy::KernelCopy, Strategy::UserCopy];
    if caps.ficlonerange.works {
        strategies.push(Strategy::Reflink);
    }
    for s in strategies {
        let a = data(32 * BS as usize, 3);
        let src = fs.file_with("src", &a);
        let dst = fs.file_with("dst", &data(8 * BS as usize, 4));
        let opts = CopyOptions {
            strategy: Some(s),
            ..CopyOptions::default()
        };
        let r = copy::copy_range(&src, 2 * BS, &dst, 4 * BS, 20 * BS, &opts).unwrap();
        assert_eq!(r.strategy, s);
        let mut want = data(8 * BS as usize, 4);
        want.resize(24 * BS as usize, 0);
        want[4 * BS as usize..].copy_from_slice(&a[2 * BS as usize..22 * BS as usize]);
        assert!(read_all(&dst) == want, "{s} on {}", fs.kind);
    }
});

fs_test!(copy_range_unaligned_reflinks_the_middle, |fs| {
    let a = data(40 * BS as usize, 5);
    let src = fs.file_with("src", &a);
    let dst = fs.file_with("dst", &[]);
    // Same misalignment on both sides: reflink the middle, copy the edges.
    let r = copy::copy_range(&src, 100, &dst, 100, 30 * BS, &CopyOptions::default()).unwrap();
    let mut want = vec![0u8; 100];
    want.extend_from_slice(&a[100..100 + 30 * BS as usize]);
    assert!(read_all(&dst) == want);
    if fs.caps().ficlonerange.works {
        assert_eq!(r.strategy, Strategy::Reflink);
        assert_eq!(r.bytes_cloned + r.bytes_copied, 30 * BS);
        assert!(r.bytes_copied < 2 * BS, "only the edges are copied: {r:?}");
    } else {
        assert!(r.strategy.copies_data());
    }
    // Metadata-only refuses, naming the alignment, and writes nothing.
    let dst2 = fs.file_with("dst2", &[]);
    let meta = CopyOptions {
        policy: Policy::MetadataOnly,
        ..CopyOptions::default()
    };
    let e = copy::copy_range(&src, 100, &dst2, 100, 30 * BS, &meta).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Alignment | ErrorKind::Unsupported),
        "{e}"
    );
    assert_eq!(read_all(&dst2).len(), 0);
});

fs_test!(copy_within_a_file_is_memmove, |fs| {
    for (from, to, n) in [
        (0u64, 3000u64, 20_000u64),
        (5000, 100, 30_000),
        (0, 4 * BS, 12 * BS),
        (8 * BS, 2 * BS, 12 * BS),
    ] {
        for s in [None, Some(Strategy::UserCopy)] {
            let a = data(64 * BS as usize, 6);
            let f = fs.file_with("f", &a);
            let opts = CopyOptions {
                strategy: s,
                ..CopyOptions::default()
            };
            copy::copy_range(&f, from, &f, to, n, &opts).unwrap();
            let mut m = a.clone();
            m.copy_within(from as usize..(from + n) as usize, to as usize);
            assert!(
                read_all(&f) == m,
                "memmove {from}->{to} len {n} ({s:?}) on {}",
                fs.kind
            );
        }
    }
});

fs_test!(copies_keep_holes, |fs| {
    // 1 MiB file: data at 0..8K, hole, data at 512K..520K, hole to EOF.
    let src = fs.file_with("src", &[]);
    src.set_len(1 << 20).unwrap();
    let d1 = data(8192, 7);
    let d2 = data(8192, 8);
    src.write_all_at(&d1, 0).unwrap();
    src.write_all_at(&d2, 512 << 10).unwrap();
    src.sync_all().unwrap();
    let want = read_all(&src);
    for s in [None, Some(Strategy::KernelCopy), Some(Strategy::UserCopy)] {
        let dst = fs.file_with("dst", &data(1 << 20, 9)); // full of data: holes must be made
        let opts = CopyOptions {
            strategy: s,
            ..CopyOptions::default()
        };
        let r = copy::copy_file(&src, &dst, &opts).unwrap();
        assert!(read_all(&dst) == want, "{s:?} on {}", fs.kind);
        dst.sync_all().unwrap();
        let map = extents::data_map(&dst).unwrap();
        let data_bytes: u64 = map
            .iter()
            .filter(|m| m.kind == SegmentKind::Data)
            .map(|m| m.len)
            .sum();
        assert!(
            data_bytes <= 64 << 10,
            "{s:?} on {}: the copy lost its holes: {map:?}",
            fs.kind
        );
        if r.strategy.copies_data() {
            assert_eq!(r.bytes_copied, 16384, "{r:?}");
            assert_eq!(r.hole_bytes, (1 << 20) - 16384);
        }
    }
});

fs_test!(punch_and_zero, |fs| {
    let a = data(16 * BS as usize, 10);
    let f = fs.file_with("f", &a);
    let r = copy::punch_hole(&f, BS, 2 * BS).unwrap();
    assert_eq!(r.strategy, Strategy::Native);
    let mut m = a.clone();
    m[BS as usize..3 * BS as usize].fill(0);
    assert!(read_all(&f) == m);
    // Zero an unaligned range and one reaching past EOF (extends).
    copy::zero_range(&f, 5 * BS + 7, 1000, Policy::AllowCopy).unwrap();
    m[(5 * BS + 7) as usize..(5 * BS + 1007) as usize].fill(0);
    assert!(read_all(&f) == m);
    copy::zero_range(&f, 15 * BS, 3 * BS, Policy::AllowCopy).unwrap();
    m.truncate(15 * BS as usize);
    m.resize(18 * BS as usize, 0);
    assert!(read_all(&f) == m);
    // Punching past EOF does nothing; the size never changes.
    copy::punch_hole(&f, 100 * BS, BS).unwrap();
    assert_eq!(read_all(&f).len(), m.len());
});

fs_test!(extents_and_data_map, |fs| {
    let f = fs.file_with("f", &[]);
    // Extending writes in small pieces: XFS preallocates past EOF; budge hides it.
    for i in 0..64u64 {
        f.write_all_at(&data(64 << 10, i), i * (64 << 10)).unwrap();
    }
    f.set_len(4 << 20).unwrap();
    copy::punch_hole(&f, 1 << 20, 1 << 20).unwrap();
    f.sync_all().unwrap();
    let size = 4 << 20;
    match extents::extents(&f) {
        Ok(ext) => {
            assert_ne!(fs.kind, "tmpfs");
            assert!(
                ext.iter().all(|e| e.logical + e.length <= size),
                "extents past EOF: {ext:?}"
            );
            let mapped: u64 = ext.iter().map(|e| e.length).sum();
            assert_eq!(mapped, 3 << 20, "{ext:?}");
            assert!(ext
                .iter()
                .all(|e| e.logical + e.length <= 1 << 20 || e.logical >= 2 << 20));
            let s = extents::summarize(&ext, size);
            assert_eq!(s.hole_bytes, 1 << 20);
        }
        Err(e) => {
            assert_eq!(fs.kind, "tmpfs");
            assert_eq!(e.kind(), ErrorKind::Unsupported);
        }
    }
    let map = extents::data_map(&f).unwrap();
    assert_eq!(map.iter().map(|s| s.len).sum::<u64>(), size);
    let hole = map.iter().find(|s| s.kind == SegmentKind::Hole).unwrap();
    assert_eq!((hole.offset, hole.len), (1 << 20, 1 << 20), "{map:?}");
});

fs_test!(copy_onto_itself_and_small_distance_moves, |fs| {
    let a = data(256 << 10, 11);
    let f = fs.file_with("f", &a);
    // Onto itself: nothing to do, with any strategy.
    for s in [None, Some(Strategy::KernelCopy), Some(Strategy::UserCopy)] {
        let opts = CopyOptions {
            strategy: s,
            ..CopyOptions::default()
        };
        let r = copy::copy_range(&f, BS, &f, BS, BS, &opts).unwrap();
        assert_eq!(r.strategy, Strategy::Nothing);
        assert!(read_all(&f) == a);
    }
    // A 1-byte move of 255 KiB, both directions: memmove, in few calls.
    let mut m = a.clone();
    copy::copy_range(&f, 0, &f, 1, 255 << 10, &CopyOptions::default()).unwrap();
    m.copy_within(0..255 << 10, 1);
    assert!(read_all(&f) == m);
    copy::copy_range(&f, 3, &f, 0, 250 << 10, &CopyOptions::default()).unwrap();
    m.copy_within(3..3 + (250 << 10), 0);
    assert!(read_all(&f) == m);
});

fs_test!(forced_copy_contradicting_metadata_only_is_refused, |fs| {
    let a = data(16 * BS as usize, 12);
    let f = fs.file_with("f", &a);
    let g = fs.file_with("g", &[]);
    for s in [Strategy::KernelCopy, Strategy::UserCopy] {
        let opts = CopyOptions {
            policy: Policy::MetadataOnly,
            strategy: Some(s),
            ..CopyOptions::default()
        };
        let e = copy::copy_range(&f, 0, &g, 0, BS, &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("contradicts metadata-only"), "{e}");
        let sopts = budge::ShiftOptions {
            policy: Policy::MetadataOnly,
            strategy: Some(s),
            ..Default::default()
        };
        let e = budge::insert(&f, 0, BS, &sopts).unwrap_err();
        assert!(e.to_string().contains("contradicts metadata-only"), "{e}");
    }
    assert!(read_all(&f) == a && read_all(&g).is_empty());
});
