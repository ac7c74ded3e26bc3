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

/// Fills `buf` with the pattern bytes for file offsets `[at, at+len)`.
pub fn fill(buf: &mut [u8], at: u64, seed: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let o = at + i as u64;
        *b = word(o & !7, seed).to_le_bytes()[(o & 7) as usize];
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
        for (i, w) in want[..n].iter_mut().enumerate() {
            let o = at + i as u64;
            *w = if o < offset {
                let mut b = [0u8];
                fill(&mut b, o, seed);
                b[0]
            } else if o < offset + gap {
                0
            } else {
                let mut b = [0u8];
                fill(&mut b, o - gap, seed);
                b[0]
            };
        }
        if let Some(i) = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
    Ok(None)
}
