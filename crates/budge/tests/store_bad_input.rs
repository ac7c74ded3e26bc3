//! Bad input for the store, on every filesystem: truncated files, flipped
//! bits in either or both header slots, wrong magic, a future version,
//! unknown flags, duplicate names, a table that does not add up or points
//! past EOF, a pending change whose sidecar is gone, ENOSPC, EOPNOTSUPP, bad
//! alignment, a read-only store, missing regions and files, bad names.
//!
//! Each gives the exact `ErrorKind` with a message naming the file and the
//! field, never a panic, and a failed open or operation leaves the file
//! byte-for-byte as it was; `budge::store::check` reports the same damage.
//! Damage to the newest slot alone is the one case where the store opens:
//! with the older generation, as after a torn header write.
//!
//! The header parser also gets a deterministic mutation run over thousands
//! of inputs derived from valid headers, with the same property checks as
//! the cargo-fuzz target (`fuzz/src/store_header.rs`, included below), so
//! the suite covers the parser without cargo-fuzz.

mod common;

#[path = "../../../fuzz/src/store_header.rs"]
mod header_checks;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use budge::store::format::{
    self, Entry, Header, Intent, IntentKind, JournalEntry, Method, DATA_START, SLOT_OFFSET,
    SLOT_SIZE,
};
use budge::store::{check, Growth, Store, StoreOptions};
use budge::{Error, ErrorKind, Policy, Strategy};
use common::{data, fill_fs, run_small, store_strategies, TestFs};

const MIB: u64 = 1 << 20;

/// "tail"'s length in the newest slot; the older slot says one more.
const TAIL_LEN: u64 = 70_000;

fn opts() -> StoreOptions {
    StoreOptions {
        growth: Growth::Exact,
        ..StoreOptions::default()
    }
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".budge-shift");
    PathBuf::from(s)
}

fn slot(b: &[u8], i: usize) -> &[u8] {
    let o = SLOT_OFFSET[i] as usize;
    &b[o..o + SLOT_SIZE as usize]
}

fn slot_mut(b: &mut [u8], i: usize) -> &mut [u8] {
    let o = SLOT_OFFSET[i] as usize;
    &mut b[o..o + SLOT_SIZE as usize]
}

/// Writes `h` (encoded as is, generation included) into slot `i`.
fn put_header(b: &mut [u8], i: usize, h: &Header) {
    let s = slot_mut(b, i);
    s.fill(0);
    let enc = format::encode(h);
    s[..enc.len()].copy_from_slice(&enc);
}

/// A valid store with data whose two header slots both hold clean tables:
/// the newest says "tail" is `TAIL_LEN` bytes, the older `TAIL_LEN + 1`.
struct Pristine {
    bytes: Vec<u8>,
    newest: usize,
    generation: u64,
    header: Header,
    older: Header,
}

impl Pristine {
    fn older_slot(&self) -> usize {
        1 - self.newest
    }
}

fn build(fs: &TestFs) -> Pristine {
    let path = fs.path("pristine");
    let mut s = Store::create(&path, &opts()).unwrap();
    s.add("ids", 8 * 1000, 8).unwrap();
    s.add("names", MIB + 5, 0).unwrap();
    s.add("tail", TAIL_LEN + 8, 0).unwrap();
    for (k, x) in s.get_mut::<u64>("ids").unwrap().iter_mut().enumerate() {
        *x = k as u64 * 7;
    }
    for (seed, name) in [(2, "names"), (3, "tail")] {
        let b = s.bytes_mut(name).unwrap();
        let d = data(b.len(), seed);
        b.copy_from_slice(&d);
    }
    s.commit().unwrap();
    // Two header-only changes, so both slots hold clean (intent-free) tables.
    s.resize("tail", TAIL_LEN + 1).unwrap();
    s.resize("tail", TAIL_LEN).unwrap();
    let generation = s.generation();
    drop(s);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let h: Vec<Header> = (0..2)
        .map(|i| format::decode(slot(&bytes, i)).unwrap())
        .collect();
    let newest = usize::from(h[1].generation > h[0].generation);
    let (header, older) = (h[newest].clone(), h[1 - newest].clone());
    assert_eq!(header.generation, generation);
    assert_eq!(older.generation + 1, generation);
    assert!(header.intent.is_none() && older.intent.is_none());
    assert_eq!(header.regions[2].len, TAIL_LEN);
    assert_eq!(older.regions[2].len, TAIL_LEN + 1);
    assert!(header.regions[1].len < header.regions[1].capacity);
    assert_eq!(bytes.len() as u64, header.data_end());
    Pristine {
        bytes,
        newest,
        generation,
        header,
        older,
    }
}

/// The commit record attribute of `path`, if any.
fn record_of(path: &Path) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).unwrap();
    budge::sys::meta::xattr_get_opt(&f, format::RECORD_XATTR).unwrap()
}

fn put_file(fs: &TestFs, case: &str, bytes: &[u8]) -> PathBuf {
    let path = fs.path(&case.replace([' ', '/', '"'], "_"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn same_file(path: &Path, bytes: &[u8]) -> bool {
    std::fs::read(path).unwrap() == bytes
}

fn assert_names(e: &Error, path: &Path, field: &str, what: &str) {
    let msg = e.to_string();
    assert!(
        msg.contains(field),
        "{what}: the message does not name {field:?}: {msg}"
    );
    assert!(
        msg.contains(&path.display().to_string()),
        "{what}: the message does not name the file: {msg}"
    );
}

/// Opening `bytes` (read-write and read-only) fails with `kind` and a
/// message naming `field` and the file; the file stays as it was, no sidecar
/// appears, and `check` reports a problem naming `field`.
fn expect_refused(fs: &TestFs, case: &str, bytes: &[u8], kind: ErrorKind, field: &str) {
    let what = format!("{} {case}", fs.kind);
    let path = put_file(fs, case, bytes);
    for writable in [true, false] {
        let e = if writable {
            Store::open(&path, &opts())
        } else {
            Store::open_read_only(&path, &opts())
        }
        .expect_err(&what);
        assert_eq!(e.kind(), kind, "{what} (writable {writable}): {e}");
        assert_names(&e, &path, field, &what);
        assert!(
            same_file(&path, bytes),
            "{what}: a failed open (writable {writable}) changed the file"
        );
        assert!(!sidecar(&path).exists(), "{what}: a sidecar appeared");
    }
    let rep = check(&path).unwrap();
    assert!(!rep.problems.is_empty(), "{what}: check found nothing");
    let all = rep.problems.join("; ");
    assert!(
        all.contains(field),
        "{what}: check does not name {field:?}: {all}"
    );
    assert!(same_file(&path, bytes), "{what}: check changed the file");
    std::fs::remove_file(&path).unwrap();
}

/// [`expect_refused`] as `Corrupted`.
fn expect_corrupted(fs: &TestFs, case: &str, bytes: &[u8], field: &str) {
    expect_refused(fs, case, bytes, ErrorKind::Corrupted, field);
}

/// Damage to one slot only: the store opens with the other slot's table (the
/// older generation when the newest is damaged), `check` flags the damaged
/// slot naming `field`, and neither changes the file's bytes.
fn expect_other_slot(fs: &TestFs, p: &Pristine, case: &str, bytes: &[u8], bad: usize, field: &str) {
    let what = format!("{} {case}", fs.kind);
    let path = put_file(fs, case, bytes);
    let (want, want_tail) = if bad == p.newest {
        (p.generation - 1, TAIL_LEN + 1)
    } else {
        (p.generation, TAIL_LEN)
    };
    let rep = check(&path).unwrap();
    match &rep.slots[bad] {
        Err(why) => assert!(why.contains(field), "{what}: slot {bad}: {why}"),
        Ok(g) => panic!("{what}: check calls damaged slot {bad} valid (generation {g})"),
    }
    assert!(rep.slots[1 - bad].is_ok(), "{what}: {:?}", rep.slots);
    assert!(rep.problems.is_empty(), "{what}: {:?}", rep.problems);
    assert_eq!(rep.generation, want, "{what}");
    assert!(
        rep.notes.iter().any(|n| n.contains("not valid")),
        "{what}: {:?}",
        rep.notes
    );
    for writable in [false, true] {
        let s = if writable {
            Store::open(&path, &opts())
        } else {
            Store::open_read_only(&path, &opts())
        }
        .unwrap_or_else(|e| panic!("{what} (writable {writable}): {e}"));
        assert_eq!(s.generation(), want, "{what}: which table is seen");
        assert_eq!(s.region("tail").unwrap().len, want_tail, "{what}");
        assert_eq!(s.get::<u64>("ids").unwrap()[999], 999 * 7, "{what}");
        drop(s);
        assert!(
            same_file(&path, bytes),
            "{what}: opening (writable {writable}) with the other slot changed the file"
        );
    }
    std::fs::remove_file(&path).unwrap();
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn set32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn set64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offset of region entry `k` in a slot.
const fn ent(k: usize) -> usize {
    format::FIXED_LEN + k * format::ENTRY_LEN
}

/// One damage to a slot's bytes, with the CRC recomputed afterwards (as a
/// buggy writer or a deliberate edit would leave it), so the field check
/// behind the checksum is what catches it.
type Patch = fn(&mut [u8]);

/// (case, patch, kind, field named in the message)
fn field_cases() -> Vec<(&'static str, Patch, ErrorKind, &'static str)> {
    use ErrorKind::{Corrupted as C, Unsupported as U};
    vec![
        ("version 0", |s| set32(s, 0x08, 0), C, "version"),
        ("version 2", |s| set32(s, 0x08, 2), U, "version"),
        ("version max", |s| set32(s, 0x08, u32::MAX), U, "version"),
        ("body_len off by one", |s| s[0x10] ^= 1, C, "body_len"),
        ("body_len 0", |s| set32(s, 0x10, 0), C, "body_len"),
        ("body_len huge", |s| set32(s, 0x10, u32::MAX), C, "body_len"),
        ("flags bit 0", |s| set32(s, 0x14, 1), U, "flags"),
        ("flags bit 31", |s| set32(s, 0x14, 1 << 31), U, "flags"),
        ("generation 0", |s| set64(s, 0x18, 0), C, "generation"),
        ("align 4097", |s| set32(s, 0x20, 4097), C, "align"),
        ("align 2048", |s| set32(s, 0x20, 2048), C, "align"),
        ("align 2 MiB", |s| set32(s, 0x20, 2 << 20), C, "align"),
        // A legal alignment the capacities do not follow.
        (
            "align 8192",
            |s| set32(s, 0x20, 8192),
            C,
            "region 1 (\"names\") capacity",
        ),
        ("region_count 4", |s| set32(s, 0x24, 4), C, "body_len"),
        (
            "region_count huge",
            |s| set32(s, 0x24, 1 << 20),
            C,
            "region_count",
        ),
        ("data_start 0", |s| set64(s, 0x28, 0), C, "data_start"),
        (
            "data_end short",
            |s| set64(s, 0x30, u64_at(s, 0x30) - 4096),
            C,
            "data_end",
        ),
        ("intent kind 7", |s| set32(s, 0x38, 7), C, "intent kind"),
        (
            "intent without method",
            |s| set32(s, 0x38, 1),
            C,
            "intent method",
        ),
        ("intent fields", |s| set32(s, 0x3c, 1), C, "intent"),
        ("header reserved", |s| s[0x70] = 1, C, "reserved"),
        ("name_len 0", |s| s[ent(0)] = 0, C, "region 0 name_len"),
        ("name_len 64", |s| s[ent(0)] = 64, C, "region 0 name_len"),
        ("name_len short", |s| s[ent(0)] = 2, C, "region 0 name"),
        (
            "name not UTF-8",
            |s| s[ent(1) + 1] = 0xff,
            C,
            "region 1 name",
        ),
        ("name with NUL", |s| s[ent(1) + 2] = 0, C, "region 1 name"),
        (
            "offset not packed",
            |s| set64(s, ent(1) + 0x40, u64_at(s, ent(1) + 0x40) + 4096),
            C,
            "region 1 (\"names\") offset",
        ),
        (
            "len > capacity",
            |s| set64(s, ent(2) + 0x48, u64_at(s, ent(2) + 0x50) + 1),
            C,
            "region 2 (\"tail\") len",
        ),
        (
            "len not whole elements",
            |s| set64(s, ent(0) + 0x48, 8001),
            C,
            "region 0 (\"ids\") len",
        ),
        (
            "elem_size 3",
            |s| set32(s, ent(0) + 0x58, 3),
            C,
            "region 0 (\"ids\") len",
        ),
        (
            "capacity unaligned",
            |s| set64(s, ent(2) + 0x50, u64_at(s, ent(2) + 0x50) + 1),
            C,
            "region 2 (\"tail\") capacity",
        ),
        (
            "capacity overflows",
            |s| set64(s, ent(2) + 0x50, !0xfff),
            C,
            "region 2 (\"tail\") capacity",
        ),
        (
            "region flags",
            |s| set32(s, ent(1) + 0x5c, 1),
            U,
            "region 1 (\"names\") flags",
        ),
        (
            "region reserved",
            |s| s[ent(2) + 0x70] = 9,
            C,
            "region 2 (\"tail\") reserved",
        ),
    ]
}

/// Each field of a slot, by offset, for raw bit flips (no CRC fix).
const FIELDS: [(&str, usize); 22] = [
    ("magic", 0x00),
    ("version", 0x08),
    ("checksum", 0x0c),
    ("body_len", 0x10),
    ("flags", 0x14),
    ("generation", 0x18),
    ("align", 0x20),
    ("region_count", 0x24),
    ("data_start", 0x28),
    ("data_end", 0x30),
    ("intent kind", 0x38),
    ("intent offset", 0x40),
    ("journal count", 0x58),
    ("reserved", 0x60),
    ("region 0 name_len", ent(0)),
    ("region 0 name", ent(0) + 1),
    ("region 1 offset", ent(1) + 0x40),
    ("region 1 len", ent(1) + 0x48),
    ("region 1 capacity", ent(1) + 0x50),
    ("region 0 elem_size", ent(0) + 0x58),
    ("region 2 flags", ent(2) + 0x5c),
    ("region 2 reserved", ent(2) + 0x60),
];

/// What a raw flip of bit 0 at `off` in both slots is reported as.
fn raw_flip_field(off: usize) -> &'static str {
    match off {
        0x00 => "magic",
        _ => "checksum", // the checksum covers the version too
    }
}

fs_test!(truncated_files_are_corrupted, |fs: &TestFs| {
    let p = build(fs);
    let b = &p.bytes;
    let n = b.len();
    let slot_b = SLOT_SIZE as usize;
    expect_corrupted(fs, "truncated to 0", &[], "magic");
    expect_corrupted(fs, "truncated to 7", &b[..7], "magic");
    expect_corrupted(fs, "truncated to 100", &b[..100], "header");
    expect_corrupted(fs, "truncated to 100 (names why)", &b[..100], "truncated");
    expect_corrupted(fs, "truncated mid slot A", &b[..300], "body_len");
    expect_corrupted(
        fs,
        "truncated in slot B",
        &b[..slot_b + 300],
        "region table ends at",
    );
    // Slot B cut (newest or not) or all data gone: the table points past EOF.
    let past = "region table ends at";
    expect_corrupted(fs, "truncated after slots", &b[..200 << 10], past);
    expect_corrupted(
        fs,
        "truncated at data start",
        &b[..DATA_START as usize],
        past,
    );
    expect_corrupted(fs, "data truncated a block", &b[..n - 4096], past);
    expect_corrupted(fs, "data truncated 100 bytes", &b[..n - 100], past);
    let mut longer = b.clone();
    longer.extend_from_slice(&[0u8; 4096]);
    expect_corrupted(
        fs,
        "longer than the table",
        &longer,
        "longer than the region table",
    );
});

fs_test!(table_pointing_past_eof_is_corrupted, |fs: &TestFs| {
    let p = build(fs);
    for (case, k) in [("names grows past EOF", 1), ("tail grows past EOF", 2)] {
        let mut b = p.bytes.clone();
        for (i, h) in [(p.newest, &p.header), (p.older_slot(), &p.older)] {
            let mut h = h.clone();
            h.regions[k].capacity += MIB;
            h.repack();
            put_header(&mut b, i, &h);
        }
        expect_corrupted(fs, case, &b, "region table ends at");
    }
});

fs_test!(flipped_bits_in_both_slots_are_corrupted, |fs: &TestFs| {
    let p = build(fs);
    for (name, off) in FIELDS {
        let mut b = p.bytes.clone();
        for i in 0..2 {
            slot_mut(&mut b, i)[off] ^= 1;
        }
        let field = raw_flip_field(off);
        let field = if off == 0 {
            "no header slot has the magic"
        } else {
            field
        };
        expect_corrupted(fs, &format!("flip {name}"), &b, field);
    }
    // The checksum-covered bytes give "checksum" wherever the flip is.
    for off in [0x11, 0x1b, 0x5f, ent(1) + 5, ent(2) + 0x7f] {
        let mut b = p.bytes.clone();
        for i in 0..2 {
            slot_mut(&mut b, i)[off] ^= 0x80;
        }
        expect_corrupted(fs, &format!("flip byte {off:#x}"), &b, "checksum");
    }
});

fs_test!(damaged_fields_in_both_slots_are_named, |fs: &TestFs| {
    let p = build(fs);
    for (case, patch, kind, field) in field_cases() {
        let mut b = p.bytes.clone();
        for i in 0..2 {
            let s = slot_mut(&mut b, i);
            patch(s);
            header_checks::fix_crc(s);
        }
        expect_refused(fs, case, &b, kind, field);
    }
});

fs_test!(damage_to_one_slot_opens_the_other, |fs: &TestFs| {
    let p = build(fs);
    for bad in [p.newest, p.older_slot()] {
        let which = if bad == p.newest { "newest" } else { "older" };
        // Raw bit flips (magic, version and the checksum itself are outside
        // the checksum; a version flip to 0 is damage, not a future format).
        for (name, off) in FIELDS {
            let mut b = p.bytes.clone();
            slot_mut(&mut b, bad)[off] ^= 1;
            let field = raw_flip_field(off);
            expect_other_slot(fs, &p, &format!("{which}: flip {name}"), &b, bad, field);
        }
        // Field damage behind a valid checksum.
        for (case, patch, kind, field) in field_cases() {
            if kind == ErrorKind::Unsupported {
                continue;
            }
            let mut b = p.bytes.clone();
            let s = slot_mut(&mut b, bad);
            patch(s);
            header_checks::fix_crc(s);
            expect_other_slot(fs, &p, &format!("{which}: {case}"), &b, bad, field);
        }
        // A slot that is all zeros (never written) or truncated to its fixed part.
        let mut b = p.bytes.clone();
        slot_mut(&mut b, bad).fill(0);
        expect_other_slot(fs, &p, &format!("{which}: zeroed"), &b, bad, "magic");
        let mut b = p.bytes.clone();
        slot_mut(&mut b, bad)[0x80..].fill(0);
        expect_other_slot(fs, &p, &format!("{which}: torn"), &b, bad, "checksum");
    }
});

fs_test!(future_version_and_flags_are_unsupported, |fs: &TestFs| {
    let p = build(fs);
    // In the newest slot alone: falling back to the older table would hide
    // what the newer budge wrote, so the whole store is refused.
    for (case, patch, kind, field) in field_cases() {
        if kind != ErrorKind::Unsupported {
            continue;
        }
        for (where_, slots) in [("both", vec![0, 1]), ("newest", vec![p.newest])] {
            let mut b = p.bytes.clone();
            for i in slots {
                let s = slot_mut(&mut b, i);
                patch(s);
                header_checks::fix_crc(s);
            }
            let case = format!("{case} in {where_}");
            expect_refused(fs, &case, &b, kind, field);
        }
    }
    // The message tells what to do.
    let mut b = p.bytes.clone();
    for i in 0..2 {
        set32(slot_mut(&mut b, i), 0x08, 2);
        header_checks::fix_crc(slot_mut(&mut b, i));
    }
    expect_refused(
        fs,
        "version 2 says upgrade",
        &b,
        ErrorKind::Unsupported,
        "upgrade budge",
    );
});

// The checksum covers the version field, so one flipped bit (1 -> 3) is
// damage to that slot, not a future format that would refuse the store.
fs_test!(version_bit_flip_is_not_a_future_format, |fs: &TestFs| {
    let p = build(fs);
    let mut b = p.bytes.clone();
    slot_mut(&mut b, p.older_slot())[0x08] ^= 2;
    let path = put_file(fs, "version-flip", &b);
    let s = Store::open(&path, &opts())
        .unwrap_or_else(|e| panic!("{}: one bit in the older slot's version: {e}", fs.kind));
    assert_eq!(s.generation(), p.generation);
});

fs_test!(wrong_magic_is_corrupted, |fs: &TestFs| {
    let p = build(fs);
    let mut b = p.bytes.clone();
    for i in 0..2 {
        slot_mut(&mut b, i)[..8].copy_from_slice(b"NOTBUDGE");
    }
    // Something else entirely, large enough to have both slots.
    let other = data(2 * MIB as usize, 5);
    let zeros = vec![0u8; 2 * MIB as usize];
    for (case, bytes, field) in [
        ("wrong magic", &b, "not a budge store"),
        ("random file", &other, "no header slot has the magic"),
        ("zero file", &zeros, "not a budge store"),
    ] {
        expect_corrupted(fs, case, bytes, field);
    }
});

/// A change to a decoded table.
type HeaderPatch = fn(&mut Header);

fs_test!(crafted_tables_are_corrupted, |fs: &TestFs| {
    let p = build(fs);
    let craft = |f: &dyn Fn(&mut Header)| {
        let mut b = p.bytes.clone();
        for (i, h) in [(p.newest, &p.header), (p.older_slot(), &p.older)] {
            let mut h = h.clone();
            f(&mut h);
            put_header(&mut b, i, &h);
        }
        b
    };
    let cases: [(&str, HeaderPatch, &str); 7] = [
        // encode() does not reject duplicates; decode() must.
        (
            "duplicate names",
            |h| h.regions[2].name = "ids".into(),
            "region 2 (\"ids\") name",
        ),
        (
            "duplicate names why",
            |h| h.regions[2].name = "ids".into(),
            "duplicate region name",
        ),
        (
            "adjacent duplicates",
            |h| h.regions[1].name = "ids".into(),
            "duplicate region name",
        ),
        (
            "offsets not packed",
            |h| h.regions[1].offset += 4096,
            "region 1 (\"names\") offset",
        ),
        (
            "first region not at data start",
            |h| {
                h.regions.swap(0, 1);
                h.repack();
                h.regions[0].offset = DATA_START + 4096;
            },
            "offset",
        ),
        (
            "len > capacity",
            |h| h.regions[1].len = h.regions[1].capacity + 1,
            "region 1 (\"names\") len",
        ),
        (
            "len vs elem_size",
            |h| h.regions[0].elem_size = 16_000,
            "region 0 (\"ids\") len",
        ),
    ];
    for (case, patch, field) in cases {
        expect_corrupted(fs, case, &craft(&patch), field);
    }
    // Both slots at one generation with different tables.
    let mut b = p.bytes.clone();
    let mut h = p.older.clone();
    h.generation = p.generation;
    put_header(&mut b, p.older_slot(), &h);
    expect_corrupted(
        fs,
        "two tables one generation",
        &b,
        "both header slots claim generation",
    );
});

fs_test!(pending_change_without_its_sidecar, |fs: &TestFs| {
    let p = build(fs);
    // The newest slot records a sidecar insert after "names" that never ran,
    // and the sidecar it needs is gone (or the wrong size).
    let mut h = p.header.clone();
    let (off, len) = (h.regions[1].offset + h.regions[1].capacity, 4096);
    h.regions[1].capacity += len;
    h.repack();
    h.generation = p.generation + 1;
    h.intent = Some(Intent {
        kind: IntentKind::Insert,
        method: Method::Sidecar,
        offset: off,
        len,
        old_size: p.header.data_end(),
        journal_count: 0,
        journal_crc: 0,
    });
    let mut b = p.bytes.clone();
    put_header(&mut b, p.older_slot(), &h);
    let what = format!("{} pending sidecar", fs.kind);
    let path = put_file(fs, "pending", &b);
    let rep = check(&path).unwrap();
    assert!(
        rep.problems.iter().any(|x| x.contains("missing")),
        "{what}: {rep:?}"
    );
    let e = Store::open(&path, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupted, "{what}: {e}");
    assert_names(&e, &path, "sidecar", &what);
    assert!(
        same_file(&path, &b),
        "{what}: a failed recovery changed the file"
    );
    let e = Store::open_read_only(&path, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NeedsRecovery, "{what}: {e}");
    assert!(same_file(&path, &b));
    // A sidecar of the wrong size is not trusted either, and is left alone.
    let side = sidecar(&path);
    let junk = data(12345, 9);
    std::fs::write(&side, &junk).unwrap();
    let e = Store::open(&path, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupted, "{what}: {e}");
    assert_names(&e, &path, "12345 bytes", &what);
    assert!(
        same_file(&path, &b),
        "{what}: a failed recovery changed the file"
    );
    assert!(same_file(&side, &junk), "{what}: the sidecar changed");
    std::fs::remove_file(&side).unwrap();
});

fs_test!(torn_journal_falls_back_to_the_older_slot, |fs: &TestFs| {
    let p = build(fs);
    // The newest slot claims a native insert whose journal never became
    // durable (CRC mismatch): that slot was not durable either.
    let mut h = p.header.clone();
    let (off, len) = (h.regions[1].offset + h.regions[1].capacity, 4096);
    h.regions[1].capacity += len;
    h.repack();
    h.generation = p.generation + 1;
    let tail_start = off;
    let (jb, crc) = format::encode_journal(&[JournalEntry {
        logical: tail_start,
        physical: 1 << 30,
        len: 4096,
    }]);
    h.intent = Some(Intent {
        kind: IntentKind::Insert,
        method: Method::Native,
        offset: off,
        len,
        old_size: p.header.data_end(),
        journal_count: 1,
        journal_crc: crc ^ 1,
    });
    let mut b = p.bytes.clone();
    let j = format::JOURNAL_OFFSET[p.older_slot()] as usize;
    b[j..j + jb.len()].copy_from_slice(&jb);
    put_header(&mut b, p.older_slot(), &h);
    let what = format!("{} torn journal", fs.kind);
    let path = put_file(fs, "torn-journal", &b);
    let rep = check(&path).unwrap();
    let bad = rep.slots[p.older_slot()].as_ref().unwrap_err();
    assert!(bad.contains("journal"), "{what}: {bad}");
    assert!(rep.problems.is_empty(), "{what}: {rep:?}");
    assert_eq!(rep.generation, p.generation);
    let s = Store::open(&path, &opts()).unwrap();
    assert_eq!(s.generation(), p.generation, "{what}");
    assert_eq!(s.region("tail").unwrap().len, TAIL_LEN);
    drop(s);
    assert!(same_file(&path, &b), "{what}: changed the file");
});

/// A store whose last structural change was native keeps that change's
/// intent (and journal) in its newest slot until the next change.
/// A store left with a native change pending, committed by a header slot
/// or (`record`) by the commit record attribute.
fn native_store(fs: &TestFs, name: &str, record: bool) -> Option<(PathBuf, StoreOptions, Vec<u8>)> {
    let c = fs.caps();
    if !(c.insert_range.works && c.collapse_range.works) {
        return None;
    }
    let path = fs.path(name);
    let o = StoreOptions {
        strategy: Some(Strategy::Native),
        commit_record: record,
        ..opts()
    };
    let mut s = Store::create(&path, &o).unwrap();
    s.add("a", 4096, 0).unwrap();
    s.add("b", 64 << 10, 0).unwrap();
    s.add("c", 64 << 10, 0).unwrap();
    let d = data(64 << 10, 4);
    s.bytes_mut("b").unwrap().copy_from_slice(&d);
    s.resize("a", 3 * 4096).unwrap();
    // Data written after the change: not in the journal.
    let d = data(64 << 10, 5);
    s.bytes_mut("c").unwrap().copy_from_slice(&d);
    s.commit().unwrap();
    let r = s.resize("a", 4 * 4096).unwrap();
    assert_eq!(r.shift.unwrap().record, record, "{}", fs.kind);
    s.abandon(); // as a crash would: the intent stays
    let full = std::fs::read(&path).unwrap();
    let h = [0, 1].map(|i| format::decode(slot(&full, i)).ok());
    let newest = h.iter().flatten().max_by_key(|h| h.generation).unwrap();
    let rec = record_of(&path);
    if record {
        let rec = format::decode_record(&rec.unwrap()).unwrap();
        assert!(
            rec.generation > newest.generation,
            "the record is the newest table"
        );
    } else {
        assert!(newest.intent.is_some(), "the last change keeps its intent");
    }
    Some((path, o, full))
}

// Cut the end off such a store, in place (the journalled extents stay where
// they are): the open must refuse, not "complete" the change again by
// growing the file back with zeros where "c"'s data was.
fs_test!(
    truncated_after_native_change_is_not_repaired,
    |fs: &TestFs| {
        let mut bad = Vec::new();
        for (cut, record) in [4096u64, 100, 64 << 10]
            .into_iter()
            .flat_map(|c| [(c, false), (c, true)])
        {
            let Some((path, o, full)) = native_store(fs, &format!("cut-{cut}"), record) else {
                return;
            };
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(full.len() as u64 - cut).unwrap();
            drop(f);
            let b = std::fs::read(&path).unwrap();
            let what = format!("{} native intent (record {record}), cut {cut}", fs.kind);
            let rep = check(&path).unwrap();
            let r = Store::open(&path, &o);
            let now = std::fs::read(&path).unwrap();
            match r {
                Ok(s) => bad.push(format!(
                    "{what}: opened, {:?}; the file went from {} to {} bytes; the last 4 KiB \
                     of \"c\" (data written after the change) now read {}",
                    s.recovery().actions,
                    b.len(),
                    now.len(),
                    if s.bytes("c").unwrap()[60 << 10..].iter().all(|&x| x == 0) {
                        "as zeros"
                    } else {
                        "as data"
                    }
                )),
                Err(e) => {
                    if e.kind() != ErrorKind::Corrupted {
                        bad.push(format!("{what}: {e}"));
                    }
                    if now != b {
                        bad.push(format!("{what}: the failed open changed the file"));
                    }
                }
            }
            if rep.problems.is_empty() {
                bad.push(format!("{what}: check found no problem: {:?}", rep.notes));
            }
            std::fs::remove_file(&path).unwrap();
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
);

// A plain byte copy of a store (cp without reflink, a backup, a move across
// filesystems) has other device addresses. A store closed normally carries
// no journal and its copy opens; a copy of a store that crashed with a
// native change pending cannot tell a complete shift from a partial one and
// is refused, unchanged, with the reason (recover the original first).
fs_test!(copy_of_store_after_native_change_opens, |fs: &TestFs| {
    for record in [false, true] {
        copy_of_store_after_native_change(fs, record);
    }
});

fn copy_of_store_after_native_change(fs: &TestFs, record: bool) {
    let Some((path, o, full)) = native_store(fs, "orig", record) else {
        return;
    };
    let what = format!("{} copied store (record {record})", fs.kind);
    let copy = put_file(fs, "copy", &full);
    // A copy that keeps extended attributes (cp -a): it has the record.
    if let Some(v) = record_of(&path) {
        let f = std::fs::File::open(&copy).unwrap();
        budge::sys::meta::xattr_set(&f, format::RECORD_XATTR, &v).unwrap();
    }
    let rep = check(&copy).unwrap();
    if record {
        // The resize returned, so its record says the shift is durable and
        // holds no device addresses: the copy opens with the new table.
        let want = Store::open_read_only(&path, &o).unwrap().regions();
        let s = Store::open(&copy, &o).unwrap_or_else(|e| panic!("{what}: {e}"));
        let strip = |v: Vec<budge::store::Region>| {
            v.into_iter()
                .map(|r| (r.name, r.offset, r.len, r.capacity))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(s.regions()), strip(want), "{what}");
        assert!(rep.problems.is_empty(), "{what}: {rep:?}");
        drop(s);
        for p in [copy, path] {
            std::fs::remove_file(p).unwrap();
        }
        return;
    }
    let e = Store::open(&copy, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupted, "{what}: {e}");
    assert!(e.to_string().contains("copied"), "{what}: says why: {e}");
    assert!(
        std::fs::read(&copy).unwrap() == full,
        "{what}: a failed open changed the copy"
    );
    assert!(!rep.problems.is_empty(), "{what}: check agrees: {rep:?}");
    // The original recovers (same device addresses); a copy taken after a
    // normal close opens.
    let s = Store::open(&path, &o).unwrap();
    drop(s);
    let clean = std::fs::read(&path).unwrap();
    let copy2 = put_file(fs, "copy2", &clean);
    let s = Store::open(&copy2, &o).unwrap_or_else(|e| panic!("{what}: clean copy: {e}"));
    assert!(
        s.recovery().actions.is_empty(),
        "{what}: {:?}",
        s.recovery()
    );
    assert!(check(&copy2).unwrap().problems.is_empty());
    for p in [copy, copy2, path] {
        std::fs::remove_file(p).unwrap();
    }
}

// Whatever open refuses, check reports as a problem (not as a note that
// "opening read-write completes it").
fs_test!(check_sees_what_open_refuses, |fs: &TestFs| {
    for (case, record) in ["copy", "cut 100", "cut 64 KiB"]
        .into_iter()
        .flat_map(|c| [(c, false), (c, true)])
    {
        let Some((path, o, full)) = native_store(fs, "orig", record) else {
            return;
        };
        let target = match case {
            "copy" => put_file(fs, "copy", &full),
            _ => {
                let cut = if case == "cut 100" { 100 } else { 64 << 10 };
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(full.len() as u64 - cut).unwrap();
                path.clone()
            }
        };
        let rep = check(&target).unwrap();
        if let Err(e) = Store::open(&target, &o) {
            assert!(
                !rep.problems.is_empty(),
                "{} {case}: open says {e}, check found no problem: {rep:?}",
                fs.kind
            );
        }
        let _ = std::fs::remove_file(fs.path("copy"));
        std::fs::remove_file(&path).unwrap();
    }
});

// Random damage to the header area of a real store file: never a panic; a
// refused open leaves the file as it was and `check` agrees it is bad.
fs_test!(mutated_store_files, |fs: &TestFs| {
    let path = fs.path("m");
    let mut s = Store::create(&path, &opts()).unwrap();
    s.add("a", 5000, 0).unwrap();
    s.add("b", 8 * 100, 8).unwrap();
    s.resize("a", 4000).unwrap();
    s.resize("a", 4001).unwrap();
    drop(s);
    let pristine = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut rng = Rng(0x5eed ^ fs.kind.len() as u64);
    let (mut refused, mut opened, mut check_gaps) = (0, 0, 0);
    for n in 0..120 {
        let mut b = pristine.clone();
        let which = rng.below(3) as usize;
        for i in 0..2 {
            if which != 2 && which != i {
                continue;
            }
            let s = slot_mut(&mut b, i);
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(0x80 + 2 * 128) as usize;
                match rng.below(3) {
                    0 => s[at] ^= 1 << rng.below(8),
                    1 => s[at] = rng.next() as u8,
                    _ => s[at] = s[at].wrapping_add(1),
                }
            }
            if rng.below(2) == 0 {
                header_checks::fix_crc(s);
            }
        }
        if rng.below(8) == 0 {
            let keep = rng.below(b.len() as u64) as usize;
            b.truncate(keep);
        }
        let what = format!("{} mutation {n}", fs.kind);
        let path = put_file(fs, &format!("m{n}"), &b);
        let rep = check(&path).unwrap();
        match Store::open_read_only(&path, &opts()) {
            Ok(_) => {}
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Corrupted | ErrorKind::Unsupported | ErrorKind::NeedsRecovery
                ),
                "{what}: {e}"
            ),
        }
        assert!(same_file(&path, &b), "{what}: read-only open changed it");
        match Store::open(&path, &opts()) {
            Ok(_) => opened += 1,
            Err(e) => {
                refused += 1;
                assert!(
                    matches!(e.kind(), ErrorKind::Corrupted | ErrorKind::Unsupported),
                    "{what}: {e}"
                );
                assert!(
                    same_file(&path, &b),
                    "{what}: a failed open changed it: {e}"
                );
                if rep.problems.is_empty() {
                    // Known gap: check() does not try a pending intent, so a
                    // fallback to an older slot whose intent cannot complete
                    // passes check (see check_sees_what_open_refuses).
                    assert!(
                        rep.notes.iter().any(|n| n.contains("interrupted")),
                        "{what}: open says {e} but check found nothing: {rep:?}"
                    );
                    check_gaps += 1;
                }
            }
        }
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_file(sidecar(&path));
    }
    eprintln!(
        "{}: {refused} refused, {opened} opened, {check_gaps} check gaps",
        fs.kind
    );
    assert!(
        refused > 10 && opened > 10,
        "{refused} refused, {opened} opened"
    );
});

/// Name, offset, len, capacity, elem_size of each region.
fn table(s: &Store) -> Vec<(String, u64, u64, u64, u32)> {
    s.regions()
        .into_iter()
        .map(|r| (r.name, r.offset, r.len, r.capacity, r.elem_size))
        .collect()
}

fn fmt_copied(n: u64) -> String {
    if n == 0 {
        "moving no data".into()
    } else {
        format!("copying {n} bytes")
    }
}

fn enospc(kind: &'static str) {
    run_small(kind, |fs| {
        let mut failures = 0;
        for strategy in store_strategies(fs) {
            let what = format!("{kind} {strategy:?}");
            let path = fs.path("s");
            let o = StoreOptions { strategy, ..opts() };
            let mut s = Store::create(&path, &o).unwrap();
            s.add("a", 3 * 4096, 0).unwrap();
            s.add("b", 8 * MIB, 0).unwrap();
            let da = data(3 * 4096, 11);
            let db = data(8 * MIB as usize, 12);
            s.bytes_mut("a").unwrap().copy_from_slice(&da);
            s.bytes_mut("b").unwrap().copy_from_slice(&db);
            s.commit().unwrap();
            let before = table(&s);
            let data_before = std::fs::read(&path).unwrap()[DATA_START as usize..].to_vec();
            let filler = fill_fs(fs, 1 << 20);
            // Grow "a" across its capacity: "b" (8 MiB of data) must move.
            let r = s.resize("a", 64 * 4096);
            drop(s);
            let failed = match r {
                Ok(rep) => {
                    // Native, reflink, or copy_file_range that reflinks
                    // (XFS, btrfs): no data space needed.
                    let sh = rep.shift.expect("a shift");
                    eprintln!(
                        "{what}: fits ({} by {})",
                        sh.strategy,
                        fmt_copied(sh.bytes_copied)
                    );
                    assert_ne!(strategy, Some(Strategy::UserCopy), "{what}");
                    false
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::NoSpace, "{what}: {e}");
                    assert!(
                        e.to_string().contains(&path.display().to_string()),
                        "{what}: {e}"
                    );
                    eprintln!("{what}: {e}");
                    failures += 1;
                    true
                }
            };
            assert!(!sidecar(&path).exists(), "{what}: sidecar left behind");
            let s = Store::open(&path, &o).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
            if failed {
                assert_eq!(table(&s), before, "{what}: the table changed");
                let now = std::fs::read(&path).unwrap()[DATA_START as usize..].to_vec();
                assert!(now == data_before, "{what}: region bytes changed");
                assert!(
                    s.recovery().actions.is_empty(),
                    "{what}: {:?}",
                    s.recovery()
                );
            } else {
                assert_eq!(&s.bytes("a").unwrap()[..da.len()], &da[..], "{what}");
            }
            assert!(s.bytes("b").unwrap() == &db[..], "{what}: b's bytes");
            drop(s);
            let rep = check(&path).unwrap();
            assert!(rep.problems.is_empty(), "{what}: {rep:?}");
            common::free_filler(fs, filler, 16 * MIB);
            std::fs::remove_file(&path).unwrap();
            if strategy == Some(Strategy::UserCopy) {
                assert!(failed, "{what}: a user copy of 8 MiB fit in 1 MiB");
            }
        }
        assert!(failures > 0, "no strategy hit ENOSPC on {kind}");
    });
}

kind_tests!(enospc; enospc_xfs, enospc_btrfs, enospc_ext4, enospc_tmpfs);

// Metadata-only where only a copy would work (tmpfs: no insert-range, no
// reflink), and a forced native strategy where there is no insert-range:
// `Unsupported`, and nothing changes.
fs_test!(eopnotsupp_leaves_the_store_unchanged, |fs: &TestFs| {
    let c = fs.caps();
    let path = fs.path("s");
    let mut s = Store::create(&path, &opts()).unwrap();
    s.add("a", 4096, 0).unwrap();
    s.add("b", 64 << 10, 0).unwrap();
    let db = data(64 << 10, 13);
    s.bytes_mut("b").unwrap().copy_from_slice(&db);
    s.commit().unwrap();
    let before = table(&s);
    drop(s);
    let mut cases = vec![(
        "metadata-only",
        StoreOptions {
            policy: Policy::MetadataOnly,
            ..opts()
        },
    )];
    if !c.insert_range.works {
        cases.push((
            "forced native",
            StoreOptions {
                strategy: Some(Strategy::Native),
                ..opts()
            },
        ));
    }
    for (case, o) in cases {
        let what = format!("{} {case}", fs.kind);
        let file_before = std::fs::read(&path).unwrap();
        let mut s = Store::open(&path, &o).unwrap();
        let metadata_possible = c.insert_range.works || c.ficlonerange.works;
        match s.resize("a", 8 * 4096) {
            Ok(_) => {
                assert!(case == "metadata-only" && metadata_possible, "{what}");
                drop(s);
                let s = Store::open(&path, &opts()).unwrap();
                assert!(s.bytes("b").unwrap() == &db[..], "{what}");
                // Undo for the next case.
                drop(s);
                let mut s = Store::open(&path, &opts()).unwrap();
                s.resize("a", 4096).unwrap();
            }
            Err(e) => {
                assert!(case == "forced native" || !metadata_possible, "{what}: {e}");
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{what}: {e}");
                // (The message names the inner copy, not the resize: see the
                // report of tests/store_bad_input.rs's author.)
                assert!(
                    e.to_string().contains(&path.display().to_string()),
                    "{what}: {e}"
                );
                drop(s);
                assert!(!sidecar(&path).exists(), "{what}: sidecar left behind");
                let now = std::fs::read(&path).unwrap();
                assert!(
                    now[DATA_START as usize..] == file_before[DATA_START as usize..],
                    "{what}: the data changed"
                );
                let s = Store::open(&path, &opts()).unwrap();
                assert_eq!(table(&s), before, "{what}");
                assert!(s.bytes("b").unwrap() == &db[..], "{what}");
            }
        }
    }
    if fs.kind == "tmpfs" {
        assert!(!c.insert_range.works && !c.ficlonerange.works);
    }
});

fs_test!(bad_alignment_at_create, |fs: &TestFs| {
    let page = budge::sys::page_size();
    for a in [0, 1, 1000, 2048, 4097, 12288, 2 << 20, 1 << 31, u32::MAX] {
        let path = fs.path(&format!("a{a}"));
        let o = StoreOptions {
            align: Some(a),
            ..opts()
        };
        let e = Store::create(&path, &o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Alignment, "{} align {a}: {e}", fs.kind);
        assert_names(&e, &path, "alignment", fs.kind);
        assert!(!path.exists(), "{} align {a}: a file was left", fs.kind);
    }
    // A good one works and is used.
    let path = fs.path("ok");
    let a = (64u64 << 10).max(page) as u32;
    let s = Store::create(
        &path,
        &StoreOptions {
            align: Some(a),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(s.align(), u64::from(a));
    drop(s);
    // Creating over an existing file refuses and leaves it alone.
    let before = std::fs::read(&path).unwrap();
    let e = Store::create(&path, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_names(&e, &path, "exists", fs.kind);
    assert!(same_file(&path, &before));
});

fs_test!(read_only_store_refuses_writes, |fs: &TestFs| {
    let path = fs.path("s");
    let mut s = Store::create(&path, &opts()).unwrap();
    s.add("a", 800, 8).unwrap();
    s.add("b", 4096, 0).unwrap();
    drop(s);
    let before = std::fs::read(&path).unwrap();
    let mut r = Store::open_read_only(&path, &opts()).unwrap();
    assert!(!r.is_writable());
    let ro = |e: Error, op: &str| {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{op}: {e}");
        assert_names(&e, &path, "read-only", op);
    };
    ro(r.bytes_mut("a").unwrap_err(), "bytes_mut");
    ro(r.many_mut(["a", "b"]).unwrap_err(), "many_mut");
    ro(r.get_mut::<u64>("a").unwrap_err(), "get_mut");
    ro(r.add("c", 10, 0).unwrap_err(), "add");
    ro(r.remove("a").unwrap_err(), "remove");
    ro(r.rename("a", "z").unwrap_err(), "rename");
    ro(r.resize("a", 8 * 1000).unwrap_err(), "resize");
    ro(r.resize("a", 8).unwrap_err(), "resize within capacity");
    ro(r.reserve("b", MIB).unwrap_err(), "reserve");
    ro(r.shrink_to_fit("b").unwrap_err(), "shrink_to_fit");
    ro(r.commit().unwrap_err(), "commit");
    assert_eq!(r.get::<u64>("a").unwrap().len(), 100);
    drop(r);
    assert!(
        same_file(&path, &before),
        "{}: a read-only store changed the file",
        fs.kind
    );
});

fs_test!(missing_regions_and_files_are_not_found, |fs: &TestFs| {
    let path = fs.path("s");
    let mut s = Store::create(&path, &opts()).unwrap();
    s.add("a", 800, 8).unwrap();
    s.commit().unwrap();
    let before = std::fs::read(&path).unwrap();
    let nf = |e: Error, op: &str| {
        assert_eq!(e.kind(), ErrorKind::NotFound, "{op}: {e}");
        assert_names(&e, &path, "\"nope\"", op);
    };
    nf(s.bytes("nope").unwrap_err(), "bytes");
    nf(s.bytes_mut("nope").unwrap_err(), "bytes_mut");
    nf(s.many_mut(["a", "nope"]).unwrap_err(), "many_mut");
    nf(s.get::<u64>("nope").unwrap_err(), "get");
    nf(s.get_mut::<u64>("nope").unwrap_err(), "get_mut");
    nf(s.resize("nope", 10).unwrap_err(), "resize");
    nf(s.reserve("nope", MIB).unwrap_err(), "reserve");
    nf(s.shrink_to_fit("nope").unwrap_err(), "shrink_to_fit");
    nf(s.remove("nope").unwrap_err(), "remove");
    nf(s.rename("nope", "b").unwrap_err(), "rename");
    assert!(s.region("nope").is_none());
    let e = s.advise("nope", budge::map::Advice::Random).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "advise: {e}");
    drop(s);
    assert!(same_file(&path, &before), "{}", fs.kind);

    let missing = fs.path("missing");
    for (op, r) in [
        ("open", Store::open(&missing, &opts()).map(drop)),
        (
            "open_read_only",
            Store::open_read_only(&missing, &opts()).map(drop),
        ),
        ("check", check(&missing).map(drop)),
    ] {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{op}: {e}");
        assert_names(&e, &missing, "open", op);
        assert!(!missing.exists(), "{op} created the file");
    }
    let e = Store::create(fs.path("no/such/dir/s"), &opts()).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::NotFound,
        "create in a missing directory: {e}"
    );
    // A directory is not a store.
    let e = Store::open(fs.dir.path(), &opts()).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::InvalidArgument),
        "open a directory: {e}"
    );
});

fs_test!(bad_region_names_are_refused, |fs: &TestFs| {
    let path = fs.path("s");
    let mut s = Store::create(&path, &opts()).unwrap();
    s.add("a", 100, 0).unwrap();
    s.add(&"x".repeat(63), 10, 0).unwrap();
    s.commit().unwrap();
    let before = std::fs::read(&path).unwrap();
    let long = "y".repeat(64);
    let long_utf8 = "é".repeat(32); // 64 bytes, 32 chars
    for (name, why) in [
        ("", "empty"),
        (long.as_str(), "at most 63 bytes"),
        (long_utf8.as_str(), "at most 63 bytes"),
        ("a\0b", "NUL"),
        ("\0", "NUL"),
    ] {
        let e = s.add(name, 10, 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "add {name:?}: {e}");
        assert_names(&e, &path, why, "add");
        let e = s.rename("a", name).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidArgument,
            "rename to {name:?}: {e}"
        );
        assert_names(&e, &path, why, "rename");
    }
    let e = s.add("a", 10, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_names(&e, &path, "exists", "duplicate add");
    let e = s.rename("a", &"x".repeat(63)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_names(&e, &path, "exists", "rename onto another");
    let e = s.many_mut(["a", "a"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = s.add("c", 10, 8).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidArgument,
        "len vs elem_size: {e}"
    );
    drop(s);
    assert!(
        same_file(&path, &before),
        "{}: refused names changed the file",
        fs.kind
    );
    let s = Store::open(&path, &opts()).unwrap();
    assert_eq!(s.regions().len(), 2);
});

fn mkfifo(p: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(ok.success(), "mkfifo {}", p.display());
}

/// Not a regular file: a directory or a FIFO is refused, not read.
#[test]
fn fifo_open_read_write_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fifo");
    mkfifo(&p);
    let e = Store::open(&p, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_names(&e, &p, "not a regular file", "open a FIFO");
}

#[test]
fn fifo_read_only_and_check_do_not_block() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fifo");
    mkfifo(&p);
    for which in ["open_read_only", "check"] {
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || {
            let r = if which == "check" {
                check(&q).map(drop)
            } else {
                Store::open_read_only(&q, &opts()).map(drop)
            };
            let _ = tx.send(r.map_err(|e| e.kind()));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(r) => assert_eq!(r, Err(ErrorKind::InvalidArgument), "{which}"),
            Err(_) => {
                // A writer lets the blocked open(2) return, ending the thread.
                let _w = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&p);
                panic!("{which} on a FIFO blocked for 5 s");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The parser alone: a deterministic mutation run (no filesystem needed).

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn entry(name: &str, len: u64, capacity: u64, elem_size: u32) -> Entry {
    Entry {
        name: name.into(),
        offset: 0,
        len,
        capacity,
        elem_size,
    }
}

/// Valid slots (with journal bytes after them where the intent has one).
fn seeds() -> Vec<Vec<u8>> {
    let mut v = vec![format::encode(&Header::new(4096))];
    let mut h = Header::new(4096);
    h.generation = 9;
    h.regions = vec![
        entry("ids", 8000, 8192, 8),
        entry("names", MIB + 5, MIB + 4096, 0),
        entry("z", 0, 0, 0),
        entry(&"n".repeat(63), 4096, 4096, 4),
    ];
    h.repack();
    v.push(format::encode(&h));
    let (jb, crc) = format::encode_journal(&[
        JournalEntry {
            logical: DATA_START + 8192,
            physical: 1 << 30,
            len: 4096,
        },
        JournalEntry {
            logical: DATA_START + 16384,
            physical: 1 << 31,
            len: 8192,
        },
    ]);
    let mut hi = h.clone();
    hi.intent = Some(Intent {
        kind: IntentKind::Insert,
        method: Method::Native,
        offset: DATA_START + 8192,
        len: 4096,
        old_size: h.data_end() - 4096,
        journal_count: 2,
        journal_crc: crc,
    });
    let mut b = format::encode(&hi);
    b.extend_from_slice(&jb);
    v.push(b);
    let mut hc = Header::new(65536);
    hc.generation = u64::MAX;
    hc.regions = vec![entry("a", 10, 65536, 0), entry("β", 0, 0, 0)];
    hc.repack();
    hc.intent = Some(Intent {
        kind: IntentKind::Collapse,
        method: Method::Sidecar,
        offset: DATA_START + 65536,
        len: 65536,
        old_size: DATA_START + 131072,
        journal_count: 0,
        journal_crc: 0,
    });
    v.push(format::encode(&hc));
    let mut many = Header::new(1 << 20);
    many.regions = (0..format::MAX_REGIONS)
        .map(|k| entry(&format!("r{k}"), k as u64, 1 << 20, 0))
        .collect();
    many.repack();
    v.push(format::encode(&many));
    for b in &v {
        format::decode(b).unwrap();
    }
    v
}

/// Interesting values for a 4- or 8-byte field.
fn interesting(rng: &mut Rng, old: u64) -> u64 {
    match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u64::from(u32::MAX),
        4 => old.wrapping_add(1),
        5 => old.wrapping_sub(1),
        6 => old.wrapping_add(4096),
        7 => 1 << rng.below(64),
        8 => i64::MAX as u64 + 1 - 4096 * rng.below(4),
        _ => rng.next(),
    }
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    match rng.below(9) {
        0 => {
            if !b.is_empty() {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            if !b.is_empty() {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next() as u8;
            }
        }
        2 => {
            // A whole field, aligned as the format's fields are.
            let wide = rng.below(2) == 0;
            let w = if wide { 8 } else { 4 };
            if b.len() >= w {
                let i = (rng.below((b.len() - w + 1) as u64) as usize) & !3;
                let old = if wide {
                    u64_at(b, i)
                } else {
                    u64::from(u32_at(b, i))
                };
                let v = interesting(rng, old);
                if wide {
                    set64(b, i, v);
                } else {
                    set32(b, i, v as u32);
                }
            }
        }
        3 => {
            let n = rng.below(b.len() as u64 + 1) as usize;
            b.truncate(n);
        }
        4 => {
            // Splice a chunk of another seed in.
            let o = &seeds[rng.below(seeds.len() as u64) as usize];
            let from = rng.below(o.len() as u64) as usize;
            let n = (rng.below(256) as usize).min(o.len() - from);
            let at = rng.below(b.len() as u64 + 1) as usize;
            let end = (at + n).min(b.len());
            b.splice(at..end, o[from..from + n].iter().copied());
        }
        5 => {
            // Copy one region entry over another (duplicate names).
            let n = b.len().saturating_sub(format::FIXED_LEN) / format::ENTRY_LEN;
            if n >= 2 {
                let (x, y) = (rng.below(n as u64) as usize, rng.below(n as u64) as usize);
                let src = b[ent(x)..ent(x) + format::ENTRY_LEN].to_vec();
                b[ent(y)..ent(y) + format::ENTRY_LEN].copy_from_slice(&src);
            }
        }
        6 => {
            // Insert or delete bytes (shifts everything after).
            let at = rng.below(b.len() as u64 + 1) as usize;
            if rng.below(2) == 0 {
                let n = 1 + rng.below(16) as usize;
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, junk);
            } else {
                let end = (at + 1 + rng.below(16) as usize).min(b.len());
                b.drain(at..end);
            }
        }
        7 => {
            // Append junk (a journal for a native intent).
            let n = rng.below(200) as usize;
            b.extend((0..n).map(|_| rng.next() as u8));
        }
        _ => {
            // Region count and body length made to agree, so the entries
            // themselves get parsed.
            if b.len() >= format::FIXED_LEN {
                let n = rng.below(8) as u32;
                set32(b, 0x24, n);
                set32(b, 0x10, 0x70 + 128 * n);
            }
        }
    }
}

#[test]
fn header_mutation_run() {
    let seeds = seeds();
    let mut rng = Rng(0xb0d6e);
    let (mut ok, mut err) = (0u32, 0u32);
    let mut fields = BTreeSet::new();
    let runs = 6000;
    for _ in 0..runs {
        let mut b = seeds[rng.below(seeds.len() as u64) as usize].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut b, &seeds);
        }
        let mode = rng.below(4) as u8;
        let mut input = vec![mode];
        input.extend_from_slice(&b);
        if header_checks::run(&input) {
            ok += 1;
        } else {
            err += 1;
            let mut c = b.clone();
            if mode & 1 != 0 {
                header_checks::fix_crc(&mut c);
            }
            let e = format::decode(&c).unwrap_err();
            // "region 3 (\"x\") len" -> "region len", to count kinds of field.
            let f: Vec<&str> = e
                .field
                .split(' ')
                .filter(|w| !w.starts_with('(') && w.parse::<u32>().is_err())
                .collect();
            fields.insert(f.join(" "));
        }
    }
    eprintln!("{runs} mutated headers: {ok} decoded, {err} refused; fields named: {fields:?}");
    assert!(
        ok >= 200,
        "too few mutations decode ({ok}): the run is too shallow"
    );
    for f in [
        "magic",
        "version",
        "checksum",
        "body_len",
        "header",
        "region name",
        "region offset",
        "region len",
        "region capacity",
        "data_end",
        "intent",
    ] {
        assert!(fields.contains(f), "no mutation reached {f:?}: {fields:?}");
    }
}

/// Every single-bit flip of every seed is caught (the seeds include intents
/// and a full table), and every truncation.
#[test]
fn every_bit_flip_and_truncation_of_valid_slots_is_caught() {
    for b in seeds() {
        let body = 0x10 + u32_at(&b, 0x10) as usize;
        // The 511-region seed: every bit of the fixed part and the first
        // entries, then a sample (each decode checksums the whole body).
        let step = if body > 4096 { 97 } else { 1 };
        let flips = (0..1024.min(body) * 8).chain((1024 * 8..body * 8).step_by(step));
        for i in flips {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            let e = format::decode(&c).expect_err("a flip went unnoticed");
            // The checksum covers every byte but itself, the version too.
            assert!(!e.unsupported, "bit {i}: {e}");
        }
        for n in (0..body).step_by(step) {
            let e = format::decode(&b[..n]).expect_err("a truncation went unnoticed");
            assert!(!e.unsupported, "{e}");
            assert!(
                e.reason.contains("truncated") || n < 8,
                "truncated to {n}: {e}"
            );
        }
    }
}

// The commit record's parser on mutated records (the same properties as
// the fuzz target's mode bit 2): never a panic, what decodes re-encodes
// exactly, and what applies to a valid base is a valid table.
#[test]
fn record_mutation_run() {
    use format::{Intent, IntentKind, Method, Record, RecordChange};
    let intent = Intent {
        kind: IntentKind::Insert,
        method: Method::Native,
        offset: format::DATA_START + 4096,
        len: 4096,
        old_size: format::DATA_START + 4096 * 60,
        journal_count: 3,
        journal_crc: 7,
    };
    let rec = |changes: Vec<RecordChange>, intent: Option<Intent>| Record {
        generation: 9,
        base: 8,
        intent,
        changes,
    };
    let c = |index, len, capacity| RecordChange {
        index,
        len,
        capacity,
    };
    let seeds: Vec<Vec<u8>> = [
        rec(vec![c(1, 4096, 8192 + 4096)], Some(intent)),
        rec(vec![c(1, 4096, 12288)], None),
        rec(vec![c(0, 0, 4096), c(2, 100, 20480), c(4, 8, 32768)], None),
    ]
    .iter()
    .map(format::encode_record)
    .collect();
    let mut rng = Rng(0x7ec0);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..6000 {
        let mut b = seeds[rng.below(seeds.len() as u64) as usize].clone();
        for _ in 0..1 + rng.below(3) {
            if b.is_empty() {
                break;
            }
            let at = rng.below(b.len() as u64) as usize;
            match rng.below(4) {
                0 => b[at] ^= 1 << rng.below(8),
                1 => b[at] = rng.next() as u8,
                2 => b.truncate(at),
                _ => {
                    // A plausible small value in a u32 field.
                    let at = at & !3;
                    if at + 4 <= b.len() {
                        b[at..at + 4].copy_from_slice(&(rng.below(6) as u32).to_le_bytes());
                    }
                }
            }
        }
        let mode = 4 | rng.below(2) as u8;
        let mut input = vec![mode];
        input.extend_from_slice(&b);
        if header_checks::run(&input) {
            ok += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!("6000 mutated records: {ok} decoded, {refused} refused");
    assert!(
        ok >= 100 && refused >= 1000,
        "{ok} decoded, {refused} refused"
    );
}
