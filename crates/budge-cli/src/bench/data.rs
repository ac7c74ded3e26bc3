//! Bench file content: every 8-byte word is a hash of its original file
//! offset (word-at-a-time, so writing 4 GiB stays fast), and a sampled check
//! that a file holds what an insert or collapse should have left.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const SEED: u64 = 0x6275_6467_6562_656e;
/// The unit [`check`] reads and compares.
pub const BLOCK: u64 = 4096;

/// Fills `buf` with the content of original offsets `[at, at+len)`.
fn fill(buf: &mut [u8], at: u64) {
    crate::pattern::fill(buf, at, SEED);
}

/// Writes `size` bytes of content sequentially to the empty file `f`, then
/// fsyncs it.
pub fn write_file(f: &File, size: u64) -> io::Result<()> {
    crate::pattern::write_file(f, size, SEED)
}

/// Where the file's bytes should come from now.
pub struct Layout<'a> {
    /// The original size.
    pub size: u64,
    /// `Some((offset, gap))` after an insert of `gap` zero bytes at `offset`;
    /// `None` when the file should be in its original state.
    pub inserted: Option<(u64, u64)>,
    /// Whether an original offset lies in a punched hole (reads as zeros).
    pub hole: &'a dyn Fn(u64) -> bool,
}

impl Layout<'_> {
    /// The original offset the byte at `o` came from, or `None` for the
    /// inserted zeros.
    fn source(&self, o: u64) -> Option<u64> {
        match self.inserted {
            Some((off, _)) if o < off => Some(o),
            Some((off, gap)) if o < off + gap => None,
            Some((_, gap)) => Some(o - gap),
            None => Some(o),
        }
    }
}

/// Checks the file size and, block by block, a handful of `BLOCK`-sized
/// samples around the shifted range and at both ends. `offset` and `gap`
/// are multiples of `BLOCK`.
pub fn check(f: &File, layout: &Layout<'_>, offset: u64, gap: u64) -> Result<(), String> {
    let want_size = layout.size + layout.inserted.map_or(0, |(_, g)| g);
    let size = f.metadata().map_err(|e| format!("fstat: {e}"))?.len();
    if size != want_size {
        return Err(format!("size is {size}, expected {want_size}"));
    }
    let tail = offset + gap;
    let mut points = vec![
        0,
        offset.saturating_sub(BLOCK),
        offset,
        tail.saturating_sub(BLOCK),
        tail,
        tail + BLOCK,
    ];
    points.push(tail + (size.saturating_sub(tail)) / 2 / BLOCK * BLOCK);
    points.push(size.saturating_sub(BLOCK) / BLOCK * BLOCK);
    let mut got = vec![0u8; BLOCK as usize];
    let mut want = vec![0u8; BLOCK as usize];
    for p in points {
        if p + BLOCK > size {
            continue;
        }
        f.read_exact_at(&mut got, p)
            .map_err(|e| format!("read at {p}: {e}"))?;
        match layout.source(p) {
            Some(src) if !(layout.hole)(src) => fill(&mut want, src),
            _ => want.fill(0),
        }
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(format!("wrong byte at offset {}", p + i as u64));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_layout_maps_offsets() {
        let no_holes = |_| false;
        let l = Layout {
            size: 100,
            inserted: Some((40, 8)),
            hole: &no_holes,
        };
        assert_eq!(l.source(39), Some(39));
        assert_eq!(l.source(40), None);
        assert_eq!(l.source(47), None);
        assert_eq!(l.source(48), Some(40));
    }

    #[test]
    fn check_round_trip() {
        let f = tempfile::tempfile().unwrap();
        write_file(&f, 64 * BLOCK).unwrap();
        let no_holes = |_| false;
        let orig = Layout {
            size: 64 * BLOCK,
            inserted: None,
            hole: &no_holes,
        };
        check(&f, &orig, 32 * BLOCK, 2 * BLOCK).unwrap();
        let shifted = Layout {
            size: 64 * BLOCK,
            inserted: Some((32 * BLOCK, 2 * BLOCK)),
            hole: &no_holes,
        };
        assert!(check(&f, &shifted, 32 * BLOCK, 2 * BLOCK).is_err());
    }
}
