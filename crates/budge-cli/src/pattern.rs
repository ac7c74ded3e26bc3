//! Deterministic file content for the demo and the benchmark: every 8-byte
//! word holds a hash of its offset, so any byte can be checked without
//! keeping a copy, and a shifted or duplicated block is detected.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const CHUNK: usize = 1 << 20;

/// The word stored at 8-aligned offset `o`.
fn word(o: u64, seed: u64) -> u64 {
    let mut x = o ^ seed.rotate_left(17);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fills `buf` with the pattern bytes for file offsets `[at, at+len)`, a
/// word at a time (any alignment).
pub fn fill(buf: &mut [u8], at: u64, seed: u64) {
    let mut i = 0;
    while i < buf.len() {
        let o = at + i as u64;
        let bytes = word(o & !7, seed).to_le_bytes();
        let skip = (o & 7) as usize;
        let n = (8 - skip).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[skip..skip + n]);
        i += n;
    }
}

/// Writes `size` pattern bytes to `f` (which must be empty), then fsyncs.
pub fn write_file(f: &File, size: u64, seed: u64) -> io::Result<()> {
    f.set_len(size)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(CHUNK as u64) as usize;
        fill(&mut buf[..n], at, seed);
        f.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    f.sync_all()
}

/// What an insert of `gap` zero bytes at `offset` should have produced,
/// checked over the whole file. Returns the first wrong offset.
pub fn verify_insert(
    f: &File,
    orig_size: u64,
    offset: u64,
    gap: u64,
    seed: u64,
) -> io::Result<Option<u64>> {
    let size = f.metadata()?.len();
    if size != orig_size + gap {
        return Ok(Some(size.min(orig_size + gap)));
    }
    let mut got = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(CHUNK as u64) as usize;
        f.read_exact_at(&mut got[..n], at)?;
        // The expected bytes, as three runs: before the gap, the gap, after.
        let (end, gap_end) = (at + n as u64, offset + gap);
        let split = |x: u64| (x.clamp(at, end) - at) as usize;
        let (a, b) = (split(offset), split(gap_end));
        fill(&mut want[..a], at, seed);
        want[a..b].fill(0);
        if b < n {
            fill(&mut want[b..n], at + b as u64 - gap, seed);
        }
        if let Some(i) = got[..n].iter().zip(&want[..n]).position(|(x, y)| x != y) {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_at_any_alignment_matches_words() {
        let mut whole = vec![0u8; 64];
        fill(&mut whole, 0, 7);
        for start in 0..16 {
            for len in 0..40 {
                let mut part = vec![0u8; len];
                fill(&mut part, start as u64, 7);
                assert_eq!(part, whole[start..start + len]);
            }
        }
    }

    #[test]
    fn verify_insert_finds_wrong_bytes() {
        let f = tempfile::tempfile().unwrap();
        write_file(&f, 3 << 20, 1).unwrap();
        assert_eq!(verify_insert(&f, 3 << 20, 0, 0, 1).unwrap(), None);
        assert_eq!(verify_insert(&f, 1 << 20, 0, 2 << 20, 1).unwrap(), Some(0));
    }
}
