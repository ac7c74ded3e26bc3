//! Inspecting where a file's data lives: the extent list from FIEMAP, and the
//! data/hole map from SEEK_DATA/SEEK_HOLE (which works where FIEMAP does not,
//! e.g. tmpfs).

use std::fs::File;

use crate::error::{Error, Result};
use crate::sys;

/// `FIEMAP_EXTENT_*` flags from `<linux/fiemap.h>`.
pub mod flags {
    /// Last extent in the file.
    pub const LAST: u32 = 0x1;
    /// Location unknown.
    pub const UNKNOWN: u32 = 0x2;
    /// Delayed allocation: not yet on disk.
    pub const DELALLOC: u32 = 0x4;
    /// Data is encoded (compressed) on disk.
    pub const ENCODED: u32 = 0x8;
    /// Data is encrypted.
    pub const DATA_ENCRYPTED: u32 = 0x80;
    /// Extent offsets may not be block aligned.
    pub const NOT_ALIGNED: u32 = 0x100;
    /// Data is stored inline in metadata.
    pub const DATA_INLINE: u32 = 0x200;
    /// Data is packed into a block with other files' tails.
    pub const DATA_TAIL: u32 = 0x400;
    /// Allocated but unwritten: reads as zeros.
    pub const UNWRITTEN: u32 = 0x800;
    /// Merged from several on-disk extents.
    pub const MERGED: u32 = 0x1000;
    /// Shared with another file or range (reflinked).
    pub const SHARED: u32 = 0x2000;

    /// Names of the set flags, for display.
    pub fn names(f: u32) -> Vec<&'static str> {
        const ALL: [(u32, &str); 11] = [
            (LAST, "last"),
            (UNKNOWN, "unknown"),
            (DELALLOC, "delalloc"),
            (ENCODED, "encoded"),
            (DATA_ENCRYPTED, "encrypted"),
            (NOT_ALIGNED, "not_aligned"),
            (DATA_INLINE, "inline"),
            (DATA_TAIL, "tail"),
            (UNWRITTEN, "unwritten"),
            (MERGED, "merged"),
            (SHARED, "shared"),
        ];
        ALL.iter()
            .filter(|(b, _)| f & b != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// One extent of a file, within its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the file.
    pub logical: u64,
    /// Byte offset on the device (0 when unknown, e.g. delalloc).
    pub physical: u64,
    /// Length in bytes (trimmed to EOF).
    pub length: u64,
    /// `FIEMAP_EXTENT_*` flags (see [`flags`]).
    pub flags: u32,
}

/// Data or hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Bytes that may be non-zero.
    Data,
    /// A hole: reads as zeros and occupies no blocks.
    Hole,
}

/// A run of data or hole, from SEEK_DATA/SEEK_HOLE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Data or hole.
    pub kind: SegmentKind,
}

/// The extents of `file` within its size, in file order, via FIEMAP (with
/// `FIEMAP_FLAG_SYNC`, so delayed allocations are resolved first).
/// Extents past EOF (XFS speculative preallocation) are dropped and one
/// crossing EOF is trimmed.
///
/// # Errors
/// `Unsupported` where the filesystem has no FIEMAP (tmpfs): use
/// [`data_map`] there.
pub fn extents(file: &File) -> Result<Vec<Extent>> {
    let size = sys::file_info(file)
        .map_err(|e| Error::os("list extents", "fstat", e))?
        .size;
    extents_in(file, 0, size)
}

/// The extents overlapping `[offset, offset+len)`, trimmed to that range and
/// to EOF.
///
/// # Errors
/// As for [`extents`].
pub fn extents_in(file: &File, offset: u64, len: u64) -> Result<Vec<Extent>> {
    let size = sys::file_info(file)
        .map_err(|e| Error::os("list extents", "fstat", e))?
        .size;
    let end = offset.saturating_add(len).min(size);
    if offset >= end {
        return Ok(Vec::new());
    }
    let raw = sys::fiemap(file, offset, end - offset, sys::FIEMAP_FLAG_SYNC)
        .map_err(|e| Error::os("list extents", "FIEMAP", e))?;
    let raw: Vec<Extent> = raw
        .into_iter()
        .map(|e| Extent {
            logical: e.logical,
            physical: e.physical,
            length: e.length,
            flags: e.flags,
        })
        .collect();
    Ok(clip(&raw, offset, end - offset))
}

/// The part of `ext` within `[offset, offset + len)`, each extent trimmed
/// to it (physical addresses moved along).
pub fn clip(ext: &[Extent], offset: u64, len: u64) -> Vec<Extent> {
    let end = offset.saturating_add(len);
    ext.iter()
        .filter(|e| e.logical < end && e.logical.saturating_add(e.length) > offset)
        .map(|e| {
            let start = e.logical.max(offset);
            let stop = e.logical.saturating_add(e.length).min(end);
            Extent {
                logical: start,
                physical: if e.physical == 0 {
                    0
                } else {
                    e.physical + (start - e.logical)
                },
                length: stop - start,
                flags: e.flags,
            }
        })
        .collect()
}

/// The data/hole map of `file` from SEEK_DATA/SEEK_HOLE, covering
/// `[0, size)` exactly. Where the filesystem does not track holes the whole
/// file is one data segment.
///
/// # Errors
/// `Io` on a failing `lseek`.
pub fn data_map(file: &File) -> Result<Vec<Segment>> {
    let size = sys::file_info(file)
        .map_err(|e| Error::os("map data", "fstat", e))?
        .size;
    data_map_in(file, 0, size)
}

/// The data/hole map of `[offset, offset+len)` (clipped to EOF).
///
/// # Errors
/// As for [`data_map`].
pub fn data_map_in(file: &File, offset: u64, len: u64) -> Result<Vec<Segment>> {
    let size = sys::file_info(file)
        .map_err(|e| Error::os("map data", "fstat", e))?
        .size;
    let end = offset.saturating_add(len).min(size);
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        let data = match sys::seek_data(file, at) {
            Ok(d) => d.unwrap_or(end).min(end),
            // No SEEK_DATA support at all: everything is data.
            Err(e)
                if crate::error::kind_of(&e) == crate::ErrorKind::InvalidArgument
                    && at == offset =>
            {
                at
            }
            Err(e) => return Err(Error::os("map data", "lseek(SEEK_DATA)", e)),
        };
        if data > at {
            out.push(Segment {
                offset: at,
                len: data - at,
                kind: SegmentKind::Hole,
            });
        }
        if data >= end {
            break;
        }
        let hole = sys::seek_hole(file, data)
            .map_err(|e| Error::os("map data", "lseek(SEEK_HOLE)", e))?
            .min(end);
        let hole = if hole <= data { end } else { hole };
        out.push(Segment {
            offset: data,
            len: hole - data,
            kind: SegmentKind::Data,
        });
        at = hole;
    }
    Ok(out)
}

/// Fragmentation figures for a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Number of extents within EOF.
    pub extents: u64,
    /// Bytes covered by extents.
    pub mapped_bytes: u64,
    /// Bytes in holes (size minus mapped bytes).
    pub hole_bytes: u64,
    /// Bytes in shared (reflinked) extents.
    pub shared_bytes: u64,
    /// Bytes in unwritten (preallocated) extents.
    pub unwritten_bytes: u64,
    /// The largest extent.
    pub largest_extent: u64,
    /// The largest physical gap between extents adjacent in the file.
    pub largest_gap: u64,
}

/// Summarises an extent list for a file of `size` bytes.
pub fn summarize(ext: &[Extent], size: u64) -> Summary {
    let mut s = Summary {
        extents: ext.len() as u64,
        ..Summary::default()
    };
    for (i, e) in ext.iter().enumerate() {
        s.mapped_bytes += e.length;
        if e.flags & flags::SHARED != 0 {
            s.shared_bytes += e.length;
        }
        if e.flags & flags::UNWRITTEN != 0 {
            s.unwritten_bytes += e.length;
        }
        s.largest_extent = s.largest_extent.max(e.length);
        if let Some(prev) = i.checked_sub(1).map(|j| ext[j]) {
            if prev.physical != 0 && e.physical != 0 {
                let prev_end = prev.physical + prev.length;
                s.largest_gap = s.largest_gap.max(e.physical.abs_diff(prev_end));
            }
        }
    }
    s.hole_bytes = size.saturating_sub(s.mapped_bytes);
    s
}

/// Counts physically separate pieces of `ext` (sorted by logical offset):
/// adjacent extents that continue each other on disk count once, so this is
/// the fragmentation FIEMAP's extent count overstates where the filesystem
/// splits long extents.
pub fn pieces(ext: &[Extent]) -> u64 {
    let mut n = 0;
    let mut prev: Option<&Extent> = None;
    for e in ext {
        let joined = prev.is_some_and(|p| {
            p.logical + p.length == e.logical
                && p.physical != 0
                && p.physical + p.length == e.physical
        });
        if !joined {
            n += 1;
        }
        prev = Some(e);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts() {
        let e = |l, p, n, f| Extent {
            logical: l,
            physical: p,
            length: n,
            flags: f,
        };
        let ext = [
            e(0, 1000, 10, 0),
            e(10, 2000, 20, flags::SHARED),
            e(40, 2020, 5, flags::UNWRITTEN),
        ];
        let s = summarize(&ext, 50);
        assert_eq!(s.extents, 3);
        assert_eq!(s.mapped_bytes, 35);
        assert_eq!(s.hole_bytes, 15);
        assert_eq!(s.shared_bytes, 20);
        assert_eq!(s.unwritten_bytes, 5);
        assert_eq!(s.largest_extent, 20);
        assert_eq!(s.largest_gap, 990);
        assert_eq!(
            flags::names(flags::SHARED | flags::LAST),
            vec!["last", "shared"]
        );
    }
}
