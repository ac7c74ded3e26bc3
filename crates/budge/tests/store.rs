//! The store on every filesystem, with every shift strategy forced: regions
//! keep their bytes, earlier regions keep their addresses, later ones move by
//! exactly the inserted amount, and everything survives a reopen.

mod common;

use budge::store::{Store, StoreOptions};
use budge::ErrorKind;
use common::{data, store_opts, store_strategies, TestFs};

const MIB: u64 = 1 << 20;

fn fill(s: &mut Store, name: &str, seed: u64) -> Vec<u8> {
    let b = s.bytes_mut(name).unwrap();
    let d = data(b.len(), seed);
    b.copy_from_slice(&d);
    d
}

fs_test!(grow_shrink_keeps_bytes_and_addresses, |fs: &TestFs| {
    for strategy in store_strategies(fs) {
        let path = fs.path(&format!("s-{strategy:?}"));
        let mut s = Store::create(&path, &store_opts(strategy)).unwrap();
        s.add("a", 3 * MIB + 5, 0).unwrap();
        s.add("b", 2 * MIB, 0).unwrap();
        s.add("c", 100_000, 0).unwrap();
        let a = fill(&mut s, "a", 1);
        let b = fill(&mut s, "b", 2);
        let c = fill(&mut s, "c", 3);
        s.commit().unwrap();
        let before: Vec<_> = s.regions();

        let rep = s.resize("a", 5 * MIB).unwrap();
        let sh = rep.shift.clone().expect("grew past capacity: a shift");
        if let Some(st) = strategy {
            assert_eq!(sh.strategy, st, "{}: forced {st}", fs.kind);
        }
        let after = s.regions();
        assert_eq!(after[0].address, before[0].address, "region a stays put");
        let d = after[0].capacity - before[0].capacity;
        assert_eq!(
            after[1].address,
            before[1].address + d as usize,
            "b budges by exactly d"
        );
        assert_eq!(after[2].address, before[2].address + d as usize);
        let ab = s.bytes("a").unwrap();
        assert_eq!(&ab[..a.len()], &a[..], "{}: a's old bytes", fs.kind);
        assert!(ab[a.len()..].iter().all(|&x| x == 0), "new bytes are zero");
        assert_eq!(s.bytes("b").unwrap(), &b[..], "{} {strategy:?}: b", fs.kind);
        assert_eq!(s.bytes("c").unwrap(), &c[..]);

        // Shrink b (in the middle) below its old length, then c grows.
        s.resize("b", MIB / 2 + 3).unwrap();
        s.resize("c", 3 * MIB).unwrap();
        assert_eq!(s.bytes("b").unwrap(), &b[..(MIB / 2 + 3) as usize]);
        assert_eq!(&s.bytes("c").unwrap()[..c.len()], &c[..]);
        drop(s);

        let s = Store::open(&path, &store_opts(strategy)).unwrap();
        assert!(s.recovery().actions.is_empty(), "{:?}", s.recovery());
        assert_eq!(&s.bytes("a").unwrap()[..a.len()], &a[..]);
        assert_eq!(s.bytes("b").unwrap(), &b[..(MIB / 2 + 3) as usize]);
        assert_eq!(&s.bytes("c").unwrap()[..c.len()], &c[..]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), s.file_size());
    }
});

fs_test!(remove_rename_and_typed_slices, |fs: &TestFs| {
    for strategy in store_strategies(fs) {
        let path = fs.path(&format!("s-{strategy:?}"));
        let mut s = Store::create(&path, &store_opts(strategy)).unwrap();
        s.add("ids", 8 * 1000, 8).unwrap();
        s.add("gone", MIB, 0).unwrap();
        s.add("tail", 70_000, 0).unwrap();
        for (i, x) in s.get_mut::<u64>("ids").unwrap().iter_mut().enumerate() {
            *x = i as u64 * 3;
        }
        let t = fill(&mut s, "tail", 9);
        s.remove("gone").unwrap();
        s.rename("tail", "end").unwrap();
        assert!(s.region("tail").is_none());
        assert_eq!(s.bytes("end").unwrap(), &t[..]);
        assert_eq!(s.get::<u64>("ids").unwrap()[999], 2997);
        let e = s.get::<u32>("ids").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        let e = s.resize("ids", 12).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        s.resize("ids", 8 * 100_000).unwrap();
        assert_eq!(s.get::<u64>("ids").unwrap()[999], 2997);
        assert_eq!(s.get::<u64>("ids").unwrap()[99_999], 0);
        drop(s);
        let s = Store::open_read_only(&path, &store_opts(strategy)).unwrap();
        assert_eq!(s.bytes("end").unwrap(), &t[..]);
        assert_eq!(s.regions().len(), 2);
    }
});

fs_test!(
    shrink_then_grow_within_capacity_reads_zeros,
    |fs: &TestFs| {
        let path = fs.path("s");
        let mut s = Store::create(&path, &StoreOptions::default()).unwrap();
        s.add("a", 3 * MIB, 0).unwrap();
        s.add("b", MIB, 0).unwrap();
        fill(&mut s, "a", 4);
        s.resize("a", 100).unwrap(); // amortized: keeps capacity? at most a quarter
        s.resize("a", 2 * MIB).unwrap();
        assert!(s.bytes("a").unwrap()[100..].iter().all(|&x| x == 0));
    }
);

fs_test!(one_writer_many_readers, |fs: &TestFs| {
    let path = fs.path("s");
    let mut s = Store::create(&path, &StoreOptions::default()).unwrap();
    s.add("a", MIB, 0).unwrap();
    s.add("b", MIB, 0).unwrap();
    let e = Store::open(&path, &StoreOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked);
    assert!(
        e.to_string().contains(&std::process::id().to_string()),
        "names the holder: {e}"
    );
    let r1 = Store::open_read_only(&path, &StoreOptions::default()).unwrap();
    let r2 = Store::open_read_only(&path, &StoreOptions::default()).unwrap();
    // Readers pin the layout: moving regions fails, in-capacity changes work.
    let e = s.resize("a", 8 * MIB).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    s.resize("a", MIB / 2).unwrap();
    assert_eq!(r1.bytes("b").unwrap().len(), MIB as usize);
    drop((r1, r2));
    s.resize("a", 8 * MIB).unwrap();
    drop(s);
    // The last change's intent record is still in the header; a reader and
    // then a writer open beside it without needing the layout lock.
    let r = Store::open_read_only(&path, &StoreOptions::default()).unwrap();
    let mut w = Store::open(&path, &StoreOptions::default()).unwrap();
    w.resize("b", MIB / 2).unwrap(); // within capacity: allowed beside readers
    assert_eq!(r.bytes("a").unwrap().len(), 8 * MIB as usize);
});

fs_test!(several_regions_borrowed_at_once, |fs: &TestFs| {
    let path = fs.path("s");
    let mut s = Store::create(&path, &StoreOptions::default()).unwrap();
    s.add("x", 8 * 512, 8).unwrap();
    s.add("y", 8 * 512, 8).unwrap();
    let [x, y] = s.many_mut(["x", "y"]).unwrap();
    x.fill(1);
    y.copy_from_slice(x);
    assert_eq!(s.bytes("y").unwrap(), s.bytes("x").unwrap());
    let e = s.many_mut(["x", "x"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = s.many_mut(["x", "nope"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // Typed slices are aligned for any Pod type up to the page size.
    let xs = s.get::<u64>("x").unwrap();
    assert_eq!(xs.as_ptr() as usize % 4096, 0);
    assert_eq!(xs[511], u64::from_ne_bytes([1; 8]));
});

fs_test!(snapshot_while_the_writer_goes_on, |fs: &TestFs| {
    let path = fs.path("snap-store");
    let mut s = Store::create(&path, &store_opts(None)).unwrap();
    s.add("a", 2 * MIB, 0).unwrap();
    s.add("b", 3 * MIB + 4096, 0).unwrap();
    let a = fill(&mut s, "a", 11);
    let b = fill(&mut s, "b", 12);
    s.commit().unwrap();
    let snap = Store::open_snapshot(&path, &StoreOptions::default()).unwrap();
    let rep = snap.snapshot().unwrap().clone();
    let reflinks = matches!(fs.kind, "xfs" | "btrfs");
    assert_eq!(rep.bytes_copied == 0, reflinks, "{rep:?}");
    assert!(!snap.is_writable());
    // The writer keeps going: grow a (b moves), write, add, remove, rename.
    s.resize("a", 5 * MIB).unwrap();
    s.bytes_mut("b").unwrap().fill(0xEE);
    s.add("c", MIB, 0).unwrap();
    s.remove("a").unwrap();
    s.rename("b", "bb").unwrap();
    s.commit().unwrap();
    let names: Vec<_> = snap.regions().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(snap.bytes("a").unwrap() == &a[..]);
    assert!(snap.bytes("b").unwrap() == &b[..]);
    // A second snapshot sees the new state; the first is unchanged.
    let snap2 = Store::open_snapshot(&path, &StoreOptions::default()).unwrap();
    let names: Vec<_> = snap2.regions().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["bb", "c"]);
    assert!(snap2.bytes("bb").unwrap().iter().all(|&x| x == 0xEE));
    assert!(snap.bytes("b").unwrap() == &b[..]);
    // Dropping snapshots leaves no file behind.
    drop((snap, snap2));
    let names: Vec<_> = std::fs::read_dir(fs.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["snap-store"]);
    // Metadata-only where only a copy works: refused.
    let mo = StoreOptions {
        policy: budge::Policy::MetadataOnly,
        ..StoreOptions::default()
    };
    match Store::open_snapshot(&path, &mo) {
        Ok(_) => assert!(reflinks),
        Err(e) => {
            assert!(!reflinks, "{e}");
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        }
    }
});

// Many small appends to random regions cut the store into hundreds of
// extents; compact() puts each region back into few, keeping every byte,
// the layout and the mapping's addresses; reads through the mapping during
// and after see the same bytes, and the store reopens unchanged.
fs_test!(compact_heals_what_resizes_fragmented, |fs: &TestFs| {
    use budge::relocate::RelocateOptions;
    let path = fs.path("frag");
    let mut s = Store::create(&path, &store_opts(None)).unwrap();
    let names = ["a", "b", "c", "d"];
    let mut model: Vec<Vec<u8>> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        s.add(n, MIB, 0).unwrap();
        model.push(fill(&mut s, n, 50 + i as u64));
    }
    s.commit().unwrap();
    let step = s.align();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..150u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = (x % names.len() as u64) as usize;
        let old = model[k].len();
        s.resize(names[k], (old as u64) + step).unwrap();
        let add = data(step as usize, 1000 + i);
        s.bytes_mut(names[k]).unwrap()[old..].copy_from_slice(&add);
        model[k].extend_from_slice(&add);
        s.commit().unwrap();
    }
    let layout = s.regions();
    let ext = |s: &Store| {
        budge::extents::extents(&std::fs::File::open(s.path()).unwrap()).map(|v| v.len())
    };
    let before = ext(&s);
    let dry = s
        .compact(&RelocateOptions {
            dry_run: true,
            ..RelocateOptions::default()
        })
        .unwrap();
    assert_eq!(
        ext(&s).ok(),
        before.as_ref().ok().copied(),
        "dry run moved data"
    );
    let done = s.compact(&RelocateOptions::default()).unwrap();
    let after = ext(&s);
    eprintln!(
        "{}: store compact: extents {:?} -> {:?}; {}",
        fs.kind,
        before.as_ref().ok(),
        after.as_ref().ok(),
        done.iter()
            .map(|c| format!(
                "{} {} {}->{} moved {}",
                c.name,
                c.report.strategy,
                c.report.extents_before,
                c.report.extents_after,
                c.report.bytes_moved
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(done.len(), names.len());
    assert_eq!(dry.len(), names.len());
    assert_eq!(
        s.regions(),
        layout,
        "{}: layout or addresses changed",
        fs.kind
    );
    for (k, n) in names.iter().enumerate() {
        assert!(
            s.bytes(n).unwrap() == &model[k][..],
            "{}: region {n}",
            fs.kind
        );
    }
    if let (Ok(b), Ok(a)) = (before, after) {
        assert!(b >= 40, "{}: not fragmented ({b} extents)", fs.kind);
        assert!(a * 4 < b, "{}: {b} -> {a} extents", fs.kind);
        assert!(done
            .iter()
            .all(|c| c.report.coherent && c.report.chunks_skipped.is_empty()));
    } else {
        assert!(done.iter().all(|c| c.report.bytes_moved == 0));
    }
    // Options that would not keep the store in place are refused.
    let bad = s.compact(&RelocateOptions {
        range: Some((0, 4096)),
        ..RelocateOptions::default()
    });
    assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidArgument);
    drop(s);
    let s = Store::open(&path, &store_opts(None)).unwrap();
    assert!(s.recovery().actions.is_empty(), "{:?}", s.recovery());
    for (k, n) in names.iter().enumerate() {
        assert!(
            s.bytes(n).unwrap() == &model[k][..],
            "{}: region {n} after reopen",
            fs.kind
        );
    }
    let ro = Store::open_read_only(&path, &store_opts(None));
    assert!(ro.is_err() || ro.unwrap().compact(&RelocateOptions::default()).is_err());
});

fn layout(s: &Store) -> Vec<(String, u64, u64, u64)> {
    s.regions()
        .into_iter()
        .map(|r| (r.name, r.offset, r.len, r.capacity))
        .collect()
}

fn record_attr(path: &std::path::Path) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).unwrap();
    budge::sys::meta::xattr_get_opt(&f, budge::store::format::RECORD_XATTR).unwrap()
}

// Native resizes are committed by the commit record (one fdatasync) while
// at most four regions differ from the slot in force; a fifth, or the
// option off, writes a slot. An abandoned store (a crash after the resizes
// returned) reopens with the record's table and every byte; open and close
// fold the record into a slot and remove it.
fs_test!(record_protocol_commits_native_resizes, |fs: &TestFs| {
    let native = fs.caps().insert_range.works && fs.caps().collapse_range.works;
    let path = fs.path("rec");
    let names = ["a", "b", "c", "d", "e", "f"];
    let mut s = Store::create(&path, &store_opts(None)).unwrap();
    let mut model = Vec::new();
    for (i, n) in names.iter().enumerate() {
        s.add(n, MIB, 0).unwrap();
        model.push(fill(&mut s, n, 70 + i as u64));
    }
    drop(s);
    let mut s = Store::open(&path, &store_opts(None)).unwrap();
    let step = s.align();
    let mut used = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let old = model[i].len();
        let r = s.resize(n, old as u64 + step).unwrap();
        let add = data(step as usize, 200 + i as u64);
        s.bytes_mut(n).unwrap()[old..].copy_from_slice(&add);
        model[i].extend_from_slice(&add);
        used.push(r.shift.unwrap().record);
    }
    s.commit().unwrap();
    if native {
        // Four changes against the base, a slot for the fifth, then a new
        // base for the sixth.
        assert_eq!(used, [true, true, true, true, false, true], "{}", fs.kind);
        assert!(record_attr(&path).is_some());
    } else {
        assert!(used.iter().all(|r| !r), "{}: {used:?}", fs.kind);
    }
    let want = layout(&s);
    // A snapshot taken while the record is the table in force has it.
    let snap = Store::open_snapshot(&path, &store_opts(None)).unwrap();
    assert_eq!(layout(&snap), want, "{}: snapshot", fs.kind);
    assert!(snap.bytes("f").unwrap() == &model[5][..]);
    drop(snap);
    s.abandon();
    let ro = Store::open_read_only(&path, &store_opts(None)).unwrap();
    assert_eq!(layout(&ro), want, "{}", fs.kind);
    for (i, n) in names.iter().enumerate() {
        assert!(ro.bytes(n).unwrap() == &model[i][..], "{}: {n}", fs.kind);
    }
    drop(ro);
    let s = Store::open(&path, &store_opts(None)).unwrap();
    assert_eq!(layout(&s), want);
    assert!(record_attr(&path).is_none(), "{}: folded at open", fs.kind);
    drop(s);
    // The option off: slots only.
    let o = StoreOptions {
        commit_record: false,
        ..store_opts(None)
    };
    let mut s = Store::open(&path, &o).unwrap();
    let r = s.resize("a", model[0].len() as u64 + 2 * step).unwrap();
    assert!(!r.shift.unwrap().record);
    assert!(record_attr(&path).is_none());
    drop(s);
    std::fs::remove_file(&path).unwrap();
});

// A store whose resizes cut the data after the grown region into many
// extents compacts itself once a shifted tail has more than
// `compact_above` extents: every byte and the layout stay, and the
// extent count comes down.
fs_test!(auto_compaction_when_the_tail_piles_up, |fs: &TestFs| {
    if !(fs.caps().insert_range.works && fs.caps().collapse_range.works) {
        return; // sidecar shifts record no extents
    }
    let path = fs.path("auto");
    let o = StoreOptions {
        compact_above: Some(40),
        ..store_opts(None)
    };
    let mut s = Store::create(&path, &o).unwrap();
    let names = ["a", "b", "c", "d"];
    let mut model: Vec<Vec<u8>> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        s.add(n, MIB, 0).unwrap();
        model.push(fill(&mut s, n, 90 + i as u64));
    }
    s.commit().unwrap();
    let step = s.align();
    let (mut runs, mut most, mut after) = (0, 0, usize::MAX);
    for i in 0..150u64 {
        let k = (i * 7 % 3) as usize; // a, b, c: d is always in the tail
        let old = model[k].len();
        let r = s.resize(names[k], old as u64 + step).unwrap();
        assert_eq!(r.compact_error, None, "{}", fs.kind);
        most = most.max(r.shift.as_ref().map_or(0, |x| x.extents));
        if !r.compacted.is_empty() {
            runs += 1;
            let ext = budge::extents::extents(&std::fs::File::open(&path).unwrap()).unwrap();
            after = after.min(ext.len());
        }
        let add = data(step as usize, 300 + i);
        s.bytes_mut(names[k]).unwrap()[old..].copy_from_slice(&add);
        model[k].extend_from_slice(&add);
        s.commit().unwrap();
    }
    eprintln!(
        "{}: auto compaction ran {runs} times; most tail extents {most}; fewest extents after one {after}",
        fs.kind
    );
    assert!(runs > 0, "{}: never compacted (most {most})", fs.kind);
    assert!(after < 40, "{}: {after} extents after compaction", fs.kind);
    for (k, n) in names.iter().enumerate() {
        assert!(s.bytes(n).unwrap() == &model[k][..], "{}: {n}", fs.kind);
    }
    drop(s);
    let s = Store::open(&path, &o).unwrap();
    for (k, n) in names.iter().enumerate() {
        assert!(
            s.bytes(n).unwrap() == &model[k][..],
            "{}: {n} after reopen",
            fs.kind
        );
    }
});
