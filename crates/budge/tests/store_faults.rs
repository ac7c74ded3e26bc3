//! The store's failure paths, with failures injected by failpoints on real
//! filesystems: a resize that fails leaves the store exactly as it was
//! (table and bytes), a failed header write poisons the store until it is
//! reopened, and nothing committed is lost.
#![cfg(feature = "failpoints")]

mod common;

use std::sync::Mutex;

use budge::store::{Store, StoreOptions};
use budge::{ErrorKind, Strategy};
use common::{data, store_opts, TestFs};

/// Failpoints are process-wide, and every store operation passes them: each
/// test holds this for its whole body.
static FAILPOINTS: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    FAILPOINTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `body` with failpoint `name` set to `actions` (the caller holds
/// [`serial`]).
fn with_failpoint(name: &str, actions: &str, body: impl FnOnce()) {
    let scenario = fail::FailScenario::setup();
    fail::cfg(name, actions).unwrap();
    body();
    scenario.teardown();
}

const MIB: u64 = 1 << 20;

/// A store with three regions of known bytes; returns their contents.
fn build(fs: &TestFs, name: &str, o: &StoreOptions) -> (std::path::PathBuf, Vec<Vec<u8>>) {
    let path = fs.path(name);
    let mut s = Store::create(&path, o).unwrap();
    let mut v = Vec::new();
    for (i, (n, len)) in [("a", MIB + 7), ("b", 2 * MIB), ("c", 300_000)]
        .iter()
        .enumerate()
    {
        s.add(n, *len, 0).unwrap();
        let d = data(*len as usize, i as u64 + 1);
        s.bytes_mut(n).unwrap().copy_from_slice(&d);
        v.push(d);
    }
    s.commit().unwrap();
    (path, v)
}

fn assert_same(path: &std::path::Path, o: &StoreOptions, want: &[Vec<u8>], what: &str) {
    let s = Store::open(path, o).unwrap();
    for (n, d) in ["a", "b", "c"].iter().zip(want) {
        assert_eq!(s.bytes(n).unwrap(), &d[..], "{what}: region {n}");
    }
}

fn sidecar_strategies(fs: &TestFs) -> Vec<Strategy> {
    let c = fs.caps();
    let mut v = vec![Strategy::UserCopy];
    if c.ficlonerange.works {
        v.push(Strategy::Reflink);
    }
    if c.copy_file_range.works {
        v.push(Strategy::KernelCopy);
    }
    v
}

fs_test!(native_refusal_publishes_the_old_table, |fs: &TestFs| {
    let _serial = serial();
    let c = fs.caps();
    if !(c.insert_range.works && c.collapse_range.works) {
        return; // no native shifts here; the sidecar tests cover this fs
    }
    let o = store_opts(Some(Strategy::Native));
    let (path, want) = build(fs, "s", &o);
    let gen_before;
    {
        let mut s = Store::open(&path, &o).unwrap();
        gen_before = s.generation();
        with_failpoint("budge::store::native", "return", || {
            let e = s.resize("a", 5 * MIB).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
            let e = s.remove("b").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
        });
        // Not poisoned: the kernel changed nothing and the old table is back.
        assert_eq!(s.region("a").unwrap().len, MIB + 7);
        assert!(s.generation() > gen_before);
        s.resize("c", 100).unwrap();
    }
    let mut want = want;
    want[2].truncate(100);
    assert_same(&path, &o, &want, "after refused native shifts");
});

fs_test!(failed_sidecar_apply_restores_the_tail, |fs: &TestFs| {
    let _serial = serial();
    for st in sidecar_strategies(fs) {
        let o = store_opts(Some(st));
        let (path, want) = build(fs, &format!("s-{st}"), &o);
        {
            let mut s = Store::open(&path, &o).unwrap();
            with_failpoint("budge::store::apply", "return", || {
                let e = s.resize("a", 4 * MIB).unwrap_err();
                assert!(e.to_string().contains("injected"), "{e}");
                let e = s.resize("b", MIB).unwrap_err();
                assert!(e.to_string().contains("injected"), "{e}");
            });
            assert_eq!(s.bytes("b").unwrap(), &want[1][..], "{st}: b back in place");
            assert_eq!(s.bytes("c").unwrap(), &want[2][..], "{st}: c back in place");
            assert!(
                !std::path::Path::new(&format!("{}.budge-shift", path.display())).exists(),
                "sidecar removed"
            );
        }
        assert_same(&path, &o, &want, &format!("{st}: after failed applies"));
    }
});

fs_test!(failed_header_write_poisons_until_reopened, |fs: &TestFs| {
    let _serial = serial();
    let o = store_opts(None);
    let (path, want) = build(fs, "s", &o);
    {
        let mut s = Store::open(&path, &o).unwrap();
        with_failpoint("budge::store::publish", "return", || {
            let e = s.rename("a", "z").unwrap_err();
            assert!(e.to_string().contains("injected"), "{e}");
        });
        for e in [
            s.rename("a", "y").unwrap_err(),
            s.resize("a", 10).unwrap_err(),
            s.commit().unwrap_err(),
            s.bytes_mut("a").map(|_| ()).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Poisoned, "{e}");
        }
        // Reading still works.
        assert_eq!(s.bytes("a").unwrap(), &want[0][..]);
    }
    assert_same(&path, &o, &want, "after a failed header write");
    let mut s = Store::open(&path, &o).unwrap();
    s.rename("a", "z").unwrap();
});
