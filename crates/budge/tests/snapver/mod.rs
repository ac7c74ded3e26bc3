//! Self-describing file versions for the snapshot commit tests
//! (`snap_procs.rs`, `snap_crash.rs`): every 4 KiB page of version `v` is
//! stamped with the version, its length and the page number, so a reader
//! can tell whether a file holds exactly one complete version.

/// Stamps are per page of this size.
pub const PAGE: usize = 4096;
/// Each page starts with the version, the version's length and the page
/// number (u64 LE each); the rest of it is one byte derived from the version.
pub const HEADER: usize = 24;

fn fill_byte(v: u64) -> u8 {
    (v % 251) as u8 + 1
}

/// A length for a version: `pages` whole pages plus a tail that holds a
/// header (or no tail).
pub fn version_len(pages: usize, tail: usize) -> usize {
    pages * PAGE
        + if tail == 0 {
            0
        } else {
            tail.clamp(HEADER, PAGE - 1)
        }
}

/// Stamps `buf` as version `v`.
pub fn fill_version(buf: &mut [u8], v: u64) {
    let len = buf.len() as u64;
    let b = fill_byte(v);
    for (p, page) in buf.chunks_mut(PAGE).enumerate() {
        assert!(
            page.len() >= HEADER,
            "version length {len} leaves a short page"
        );
        page[0..8].copy_from_slice(&v.to_le_bytes());
        page[8..16].copy_from_slice(&len.to_le_bytes());
        page[16..24].copy_from_slice(&(p as u64).to_le_bytes());
        page[HEADER..].fill(b);
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The version `buf` holds, if it is exactly one complete version.
pub fn check_version(buf: &[u8]) -> Result<u64, String> {
    if buf.len() < HEADER {
        return Err(format!("{} bytes: shorter than a header", buf.len()));
    }
    let (v, len) = (u64_at(buf, 0), u64_at(buf, 8));
    if len != buf.len() as u64 {
        return Err(format!(
            "version {v} is {len} bytes long but the file has {}",
            buf.len()
        ));
    }
    let fill = vec![fill_byte(v); PAGE];
    for (p, page) in buf.chunks(PAGE).enumerate() {
        let (pv, pl, pp) = (u64_at(page, 0), u64_at(page, 8), u64_at(page, 16));
        if (pv, pl, pp) != (v, len, p as u64) {
            return Err(format!(
                "page {p} says version {pv}, length {pl}, page {pp}; page 0 says version {v}, length {len}"
            ));
        }
        if page[HEADER..] != fill[..page.len() - HEADER] {
            return Err(format!(
                "page {p} of version {v}: body is not version {v}'s"
            ));
        }
    }
    Ok(v)
}

/// The test's seed from `var` or random (see [`crate::common::seed`]),
/// printed with how to reuse it.
pub fn seed(var: &str, label: &str) -> u64 {
    let s = crate::common::seed(var, label);
    eprintln!("{label}: seed {s:#x} ({var}={s:#x} reproduces it)");
    s
}
