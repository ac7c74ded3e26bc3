//! Insert and collapse on every filesystem of the matrix: every strategy that
//! can run, the defined edge cases, exact errors for misuse, and coherence
//! with a live MAP_SHARED mapping.

mod common;

use std::fs::File;

use budge::map::SharedMap;
use budge::{collapse, insert, ErrorKind, Policy, ShiftOptions, ShiftReport, Strategy};
use common::{data, forced, model_collapse, model_insert, read_all, shift_strategies, TestFs};

const BS: usize = 4096;

fn unchanged(fs: &TestFs, name: &str, orig: &[u8]) {
    let f = std::fs::File::open(fs.path(name)).unwrap();
    assert!(
        read_all(&f) == orig,
        "{name} on {} changed after a failed operation",
        fs.kind
    );
}

fn metadata_only() -> ShiftOptions<'static> {
    ShiftOptions {
        policy: Policy::MetadataOnly,
        ..ShiftOptions::default()
    }
}

/// Shifts a fresh file of `len` bytes with `op` (insert or collapse) of
/// `n` blocks at block `at`, once with each strategy that runs on `fs`:
/// each reports itself and the new size, and the file holds what `model`
/// makes of the original. Returns each strategy's report and the original.
fn with_every_strategy(
    fs: &TestFs,
    (len, seed): (usize, u64),
    op: impl Fn(&File, u64, u64, &ShiftOptions<'_>) -> budge::Result<ShiftReport>,
    model: fn(&[u8], usize, usize) -> Vec<u8>,
    (at, n): (usize, usize),
) -> Vec<(Strategy, ShiftReport, Vec<u8>)> {
    let mut v = Vec::new();
    for s in shift_strategies(fs) {
        let orig = data(len, seed);
        let f = fs.file_with("f", &orig);
        let r = op(&f, (at * BS) as u64, (n * BS) as u64, &forced(s)).unwrap();
        let want = model(&orig, at * BS, n * BS);
        assert_eq!(r.strategy, s, "on {}", fs.kind);
        assert_eq!(r.new_size, want.len() as u64);
        assert!(read_all(&f) == want, "{s} on {}", fs.kind);
        v.push((s, r, orig));
    }
    v
}

fs_test!(insert_with_every_strategy, |fs| {
    let reports = with_every_strategy(fs, (64 * BS + 123, 1), insert, model_insert, (10, 3));
    for (s, r, orig) in reports {
        assert_eq!(r.old_size, orig.len() as u64);
        let tail = (orig.len() - 10 * BS) as u64;
        match s {
            Strategy::Native | Strategy::Reflink => {
                assert_eq!(r.bytes_copied, 0);
                assert_eq!(r.tail_reread, tail);
            }
            _ => assert_eq!(r.bytes_copied, tail),
        }
    }
});

fs_test!(collapse_with_every_strategy, |fs| {
    with_every_strategy(fs, (64 * BS + 77, 2), collapse, model_collapse, (8, 5));
});

fs_test!(best_strategy_is_chosen_per_filesystem, |fs| {
    let orig = data(32 * BS, 3);
    let f = fs.file_with("f", &orig);
    let r = insert(&f, 4 * BS as u64, BS as u64, &ShiftOptions::default()).unwrap();
    let want = match fs.kind {
        "xfs" | "ext4" => Strategy::Native,
        "btrfs" => Strategy::Reflink,
        _ => Strategy::KernelCopy,
    };
    assert_eq!(r.strategy, want, "on {}", fs.kind);
    if want != Strategy::Native {
        assert_eq!(
            r.fallbacks[0].0,
            Strategy::Native,
            "skipped strategies are reported"
        );
    }
    assert!(read_all(&f) == model_insert(&orig, 4 * BS, BS));
});

fs_test!(unaligned_ranges_copy_or_refuse, |fs| {
    let orig = data(16 * BS, 4);
    let f = fs.file_with("f", &orig);
    let meta = metadata_only();
    // tmpfs has no metadata strategy at all: alignment would not help.
    let want = if fs.kind == "tmpfs" {
        ErrorKind::Unsupported
    } else {
        ErrorKind::Alignment
    };
    let e = insert(&f, 1000, 100, &meta).unwrap_err();
    assert_eq!(e.kind(), want, "{e}");
    if want == ErrorKind::Alignment {
        assert!(
            e.to_string().contains("multiples of 4096"),
            "names the alignment: {e}"
        );
    }
    unchanged(fs, "f", &orig);
    let e = collapse(&f, 4096, 100, &meta).unwrap_err();
    assert_eq!(e.kind(), want, "{e}");
    unchanged(fs, "f", &orig);

    let r = insert(&f, 1000, 100, &ShiftOptions::default()).unwrap();
    assert!(r.strategy.copies_data());
    let m = model_insert(&orig, 1000, 100);
    assert!(read_all(&f) == m);
    let r = collapse(&f, 5000, 333, &ShiftOptions::default()).unwrap();
    assert!(r.strategy.copies_data());
    assert!(read_all(&f) == model_collapse(&m, 5000, 333));
});

fs_test!(metadata_only_where_only_copies_work, |fs| {
    let orig = data(16 * BS, 5);
    let f = fs.file_with("f", &orig);
    let meta = metadata_only();
    let r = insert(&f, 4 * BS as u64, BS as u64, &meta);
    if fs.kind == "tmpfs" {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("tmpfs has no insert-range"), "{e}");
        unchanged(fs, "f", &orig);
    } else {
        assert!(!r.unwrap().strategy.copies_data());
        assert!(read_all(&f) == model_insert(&orig, 4 * BS, BS));
    }
});

fs_test!(forcing_an_unavailable_strategy_touches_nothing, |fs| {
    let orig = data(16 * BS, 6);
    let f = fs.file_with("f", &orig);
    let caps = fs.caps();
    for s in [Strategy::Native, Strategy::Reflink] {
        let works = match s {
            Strategy::Native => caps.insert_range.works,
            _ => caps.ficlonerange.works,
        };
        if works {
            continue;
        }
        let e = insert(&f, 4 * BS as u64, BS as u64, &forced(s)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains(&format!("cannot force {s}")), "{e}");
        unchanged(fs, "f", &orig);
    }
    // Forcing a metadata strategy on an unaligned range is an alignment error.
    let e = insert(&f, 100, 4096, &forced(Strategy::Native)).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Alignment | ErrorKind::Unsupported),
        "{e}"
    );
    unchanged(fs, "f", &orig);
});

fs_test!(edge_cases_at_and_past_eof, |fs| {
    let orig = data(8 * BS, 7);
    let f = fs.file_with("f", &orig);
    let d = ShiftOptions::default();
    let size = orig.len() as u64;

    // Zero length: nothing.
    assert_eq!(insert(&f, 3, 0, &d).unwrap().strategy, Strategy::Nothing);
    assert_eq!(
        collapse(&f, size, 0, &d).unwrap().strategy,
        Strategy::Nothing
    );
    unchanged(fs, "f", &orig);

    // Past EOF: errors, file unchanged.
    let e = insert(&f, size + 1, BS as u64, &d).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("past EOF"), "{e}");
    let e = collapse(&f, size - BS as u64, 2 * BS as u64, &d).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("past EOF"), "{e}");
    unchanged(fs, "f", &orig);

    // Insert at EOF extends with zeros, under metadata-only too.
    let meta = metadata_only();
    let r = insert(&f, size, 100, &meta).unwrap();
    assert_eq!(r.strategy, Strategy::Extend);
    assert!(read_all(&f) == model_insert(&orig, orig.len(), 100));

    // A collapse reaching EOF truncates.
    let r = collapse(&f, size - 50, 150, &meta).unwrap();
    assert_eq!(r.strategy, Strategy::Truncate);
    assert!(read_all(&f) == orig[..orig.len() - 50]);
});

fs_test!(absurd_and_overflowing_sizes_are_refused, |fs| {
    let orig = data(8 * BS, 8);
    let f = fs.file_with("f", &orig);
    let d = ShiftOptions::default();
    // 4 EiB: the XFS kernel would accept it; budge refuses.
    let e = insert(&f, 0, 4 << 60, &d).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = insert(&f, 4096, u64::MAX - 10, &d).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("overflows"), "{e}");
    let e = collapse(&f, u64::MAX - 1, 4096, &d).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    // Larger than the whole filesystem.
    let total = fs.caps().fs.total_bytes;
    let e = insert(&f, 0, total + 4096 - total % 4096, &d).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("whole filesystem"), "{e}");
    unchanged(fs, "f", &orig);
});

fs_test!(read_only_and_non_regular_files_are_refused, |fs| {
    let orig = data(8 * BS, 9);
    drop(fs.file_with("f", &orig));
    let ro = std::fs::File::open(fs.path("f")).unwrap();
    let e = insert(&ro, 0, BS as u64, &ShiftOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("read-only"), "{e}");
    let e = collapse(&ro, 0, BS as u64, &ShiftOptions::default()).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    unchanged(fs, "f", &orig);

    let dir = std::fs::File::open(fs.dir.path()).unwrap();
    let e = insert(&dir, 0, BS as u64, &ShiftOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("not a regular file"), "{e}");

    let app = std::fs::OpenOptions::new()
        .append(true)
        .open(fs.path("f"))
        .unwrap();
    let e = insert(&app, 0, BS as u64, &ShiftOptions::default()).unwrap_err();
    assert!(e.to_string().contains("O_APPEND"), "{e}");
    unchanged(fs, "f", &orig);
});

fs_test!(error_messages_name_operation_path_and_reason, |fs| {
    let orig = data(8 * BS, 10);
    let f = fs.file_with("f", &orig);
    let e = insert(&f, 1 << 20, 64 << 10, &ShiftOptions::default())
        .unwrap_err()
        .with_path(fs.path("f"));
    let msg = e.to_string();
    assert!(msg.starts_with("insert 64 KiB at 1 MiB in "), "{msg}");
    assert!(msg.contains(&fs.path("f").display().to_string()), "{msg}");
    assert!(msg.contains("past EOF"), "{msg}");
});

/// Dirty pages through a mapping, before and after the offset, then shift
/// through the file: the mapping and the file show the shifted data, and no
/// dirty byte is lost, whatever the strategy.
fn mapped_shift(fs: &TestFs, s: Strategy, is_insert: bool) {
    let mut model = data(48 * BS, 11);
    let f = fs.file_with("m", &model);
    let size = model.len();
    // Map enough for the grown file; only bytes within EOF are touched.
    // SAFETY: only this test uses the file, and it never truncates it below
    // the bytes it reads through the map.
    let mut map = unsafe { SharedMap::new(&f, size + 8 * BS, true) }.unwrap();
    for (at, byte) in [
        (5 * BS + 17, 0xa1u8),
        (20 * BS + 3, 0xb2),
        (40 * BS + 4000, 0xc3),
    ] {
        map.write(at, &[byte; 64]).unwrap();
        model[at..at + 64].fill(byte);
    }
    let (at, n) = (16 * BS, 4 * BS);
    let r = if is_insert {
        model = model_insert(&model, at, n);
        insert(&f, at as u64, n as u64, &forced(s)).unwrap()
    } else {
        model = model_collapse(&model, at, n);
        collapse(&f, at as u64, n as u64, &forced(s)).unwrap()
    };
    assert_eq!(r.strategy, s);
    assert!(
        read_all(&f) == model,
        "file content after {s} on {}",
        fs.kind
    );
    let mut through_map = vec![0; model.len()];
    map.read(0, &mut through_map).unwrap();
    assert!(
        through_map == model,
        "mapping content after {s} on {}",
        fs.kind
    );
}

fs_test!(mapping_stays_coherent_across_insert, |fs| {
    for s in shift_strategies(fs) {
        mapped_shift(fs, s, true);
    }
});

fs_test!(mapping_stays_coherent_across_collapse, |fs| {
    for s in shift_strategies(fs) {
        mapped_shift(fs, s, false);
    }
});
