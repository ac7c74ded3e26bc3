//! The properties the store-header fuzz target checks, shared with the
//! deterministic mutation run in `crates/budge/tests/store_bad_input.rs`
//! (which includes this file with `#[path]`), so both check the same things.
//!
//! Input layout: byte 0 picks a mode, the rest is a header slot (and, after
//! the slot's body, bytes used as an extent journal).
//!
//! - mode bit 0: before decoding, recompute the slot's CRC-32C over the
//!   claimed body, so the input reaches the field checks behind the checksum
//!   instead of dying at it almost every time;
//! - mode bit 1: give the journal a count and CRC that fit the bytes after
//!   the slot, so the per-entry checks run;
//! - mode bit 2: the rest is a commit record instead (`decode_record`,
//!   `apply_record` to a five-region base); bit 0 then fixes its CRC.
//!
//! Properties (a violation panics):
//! - `decode` never panics, whatever the bytes;
//! - a decoded header re-encodes to exactly the bytes it came from (the
//!   format is canonical: every byte is either checked or reserved-zero), and
//!   those decode to the same header;
//! - every decoded header keeps the invariants the store relies on (packed,
//!   aligned, len <= capacity, unique names, data_end without overflow, an
//!   intent whose sizes add up);
//! - an error names a field, gives a reason, and is `Unsupported` only for
//!   the version or a flags field;
//! - `decode_journal` with a decoded intent never panics, and what it
//!   accepts re-encodes to the same bytes and CRC and lies in the shifted tail.
#![allow(dead_code)]

use budge::store::format::{self, Header, Intent, IntentKind};

pub fn fix_crc(b: &mut [u8]) {
    format::seal(b);
}

fn check_header(h: &Header, bytes: &[u8]) {
    let enc = format::encode(h);
    assert!(
        bytes.len() >= enc.len() && bytes[..enc.len()] == enc[..],
        "encode(decode(b)) differs from b"
    );
    assert_eq!(format::decode(&enc).as_ref(), Ok(h), "re-decode differs");
    assert!(h.generation > 0);
    assert!(h.align.is_power_of_two());
    assert!((format::MIN_ALIGN..=format::MAX_ALIGN).contains(&h.align));
    assert!(h.regions.len() <= format::MAX_REGIONS);
    let mut next = format::DATA_START;
    for (k, r) in h.regions.iter().enumerate() {
        assert!(format::check_name(&r.name).is_ok());
        assert_eq!(h.find(&r.name), Some(k), "duplicate name {:?}", r.name);
        assert_eq!(r.offset, next);
        assert!(r.len <= r.capacity);
        assert_eq!(r.capacity % u64::from(h.align), 0);
        if r.elem_size != 0 {
            assert_eq!(r.len % u64::from(r.elem_size), 0);
        }
        next = r.offset.checked_add(r.capacity).expect("offset overflow");
    }
    assert!(next <= i64::MAX as u64);
    assert_eq!(h.data_end(), next);
    let mut repacked = h.clone();
    repacked.repack();
    assert_eq!(&repacked, h, "a decoded table is packed");
    if let Some(i) = h.intent {
        check_intent(&i, h);
    }
}

fn check_intent(i: &Intent, h: &Header) {
    let a = u64::from(h.align);
    assert!(i.len > 0 && i.len % a == 0 && i.offset % a == 0 && i.old_size % a == 0);
    assert!(i.offset >= format::DATA_START && i.old_size >= format::DATA_START);
    // new_size must not overflow or underflow for a decoded intent.
    assert_eq!(i.new_size(), h.data_end());
    match i.kind {
        IntentKind::Insert => assert!(i.offset <= i.old_size),
        IntentKind::Collapse => assert!(i.offset + i.len <= i.old_size),
    }
    assert!(i.journal_count as usize <= format::MAX_JOURNAL);
}

fn check_journal(i: &Intent, jb: &[u8]) {
    if let Ok(entries) = format::decode_journal(jb, i) {
        assert_eq!(entries.len(), i.journal_count as usize);
        let (enc, crc) = format::encode_journal(&entries);
        assert_eq!(crc, i.journal_crc);
        assert_eq!(&enc[..], &jb[..enc.len()]);
        let (lo, hi) = match i.kind {
            IntentKind::Insert => (i.offset, i.old_size),
            IntentKind::Collapse => (i.offset + i.len, i.old_size),
        };
        let mut prev = lo;
        for e in &entries {
            assert!(e.len > 0 && e.logical >= prev && e.logical + e.len <= hi);
            prev = e.logical + e.len;
        }
    }
}

/// The commit record properties (mode bit 2): `decode_record` never panics,
/// what it accepts re-encodes to the same bytes, and its table applied to a
/// valid base either fails with a named field or passes every slot check.
fn run_record(mode: u8, rest: &[u8]) -> bool {
    let mut b = rest.to_vec();
    if mode & 1 != 0 {
        format::seal_record(&mut b);
    }
    match format::decode_record(&b) {
        Ok(r) => {
            assert_eq!(
                format::encode_record(&r),
                b,
                "encode(decode(record)) differs"
            );
            let mut base = Header::new(4096);
            base.generation = r.base;
            for k in 0..5u64 {
                base.regions.push(format::Entry {
                    name: format!("r{k}"),
                    offset: 0,
                    len: 4096 * k,
                    capacity: 8192 * k,
                    elem_size: 0,
                });
            }
            base.repack();
            match format::apply_record(&base, &r) {
                Ok(h) => {
                    assert_eq!(h.generation, r.generation);
                    check_header(&h, &format::encode(&h));
                }
                Err(e) => assert!(!e.field.is_empty() && !e.reason.is_empty(), "{e:?}"),
            }
            true
        }
        Err(e) => {
            assert!(!e.field.is_empty() && !e.reason.is_empty(), "{e:?}");
            if e.unsupported {
                assert_eq!(e.field, "record version", "unsupported for {e}");
            }
            false
        }
    }
}

/// Runs every property on one input. Returns whether the slot (or, with
/// mode bit 2, the commit record) decoded.
pub fn run(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    if mode & 4 != 0 {
        return run_record(mode, rest);
    }
    let mut b = rest.to_vec();
    if mode & 1 != 0 {
        fix_crc(&mut b);
    }
    match format::decode(&b) {
        Ok(h) => {
            check_header(&h, &b);
            if let Some(i) = h.intent {
                let body = format::encode(&h).len();
                let jb = &b[body..];
                // As stored: the journal CRC rarely matches.
                check_journal(&i, jb);
                // With the count and CRC made to fit these bytes.
                let n = (jb.len() / format::JOURNAL_ENTRY_LEN).min(format::MAX_JOURNAL);
                let n = if mode & 2 != 0 {
                    n
                } else {
                    n.min(i.journal_count as usize)
                };
                let crc = crc32c::crc32c(&jb[..n * format::JOURNAL_ENTRY_LEN]);
                let i2 = Intent {
                    journal_count: n as u32,
                    journal_crc: crc,
                    ..i
                };
                check_journal(&i2, jb);
            }
            true
        }
        Err(e) => {
            assert!(!e.field.is_empty() && !e.reason.is_empty(), "{e:?}");
            if e.unsupported {
                assert!(
                    e.field == "version" || e.field.ends_with("flags"),
                    "unsupported for {e}"
                );
            }
            assert!(!e.to_string().is_empty());
            false
        }
    }
}
