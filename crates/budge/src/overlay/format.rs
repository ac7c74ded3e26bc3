//! The overlay's on-disk format, version 1. Pure: bytes in, values out, no
//! I/O, so the parsers can be tested and fuzzed alone.
//!
//! # File layout
//!
//! ```text
//! offset                 size              what
//! 0                      4 KiB             superblock slot 0 (even generations)
//! 4 KiB                  4 KiB             superblock slot 1 (odd generations)
//! 8 KiB                  4 KiB * blocks    page map copy 0 (named by slot 0)
//! 8 KiB + 4 KiB * blocks 4 KiB * blocks    page map copy 1 (named by slot 1)
//! data_offset            size, rounded up  page i of the base at data_offset + i * page_size
//! ```
//!
//! `data_offset` is the end of map copy 1 rounded up to the page size, so
//! overlay data and base data have the same alignment and runs can be
//! reflinked between them. The data area is sparse: only copied-up pages
//! hold blocks.
//!
//! # Superblock (little-endian; CRC-32C of bytes [0, 4092) at 4092)
//!
//! ```text
//! off   size  field
//! 0x000 8     magic            "BUDGEOVL"
//! 0x008 4     version          1
//! 0x00c 4     flags            0 (any other bit: Unsupported)
//! 0x010 8     generation       higher valid slot wins; lives in slot generation % 2
//! 0x018 4     page_size        multiple of 4 KiB and of the block size
//! 0x01c 4     map_blocks       4 KiB page-map blocks per copy
//! 0x020 8     size             logical size = the base's size
//! 0x028 8     data_offset
//! 0x030 16    uuid             this overlay's identity (random at create)
//! 0x040 4     base_kind        1 plain file, 2 overlay
//! 0x044 4     base_fingerprint CRC-32C of the base's first and last page (kind 1)
//! 0x048 8     base_ino         (kind 1)
//! 0x050 8     base_mtime_sec   (kind 1)
//! 0x058 8     base_mtime_nsec  (kind 1)
//! 0x060 16    base_uuid        (kind 2) the lower overlay's uuid
//! 0x070 8     base_generation  (kind 2) the lower overlay's generation
//! 0x078 4     commit_state     0 none, 1 publishing (replace), 2 in place
//! 0x07c 4     reserved         0
//! 0x080 8     commit_cursor    in place: pages below this are written and synced
//! 0x088 8     new_ino          publishing: the replacement's inode
//! 0x090 8     new_mtime_sec    publishing
//! 0x098 8     new_mtime_nsec   publishing
//! 0x0a0 16    new_fingerprint  publishing: fingerprint (4 bytes) then 12 zero
//! 0x0b0 2     base_path_len    1..=MAX_PATH
//! 0x0b2 ...   base_path        absolute path of the base, bytes
//! 0xffc 4     crc              CRC-32C of [0, 0xffc)
//! ```
//!
//! # Page-map block (4 KiB)
//!
//! ```text
//! off   size  field
//! 0     4080  entries: 2 bits per page, page i at bits 2*(i%4) of byte i/4
//!             0 absent (read the base), 1 present (read the overlay's data),
//!             2 zero (reads as zeros, stores nothing), 3 invalid
//! 4080  8     generation   the flush that wrote it (<= the superblock's)
//! 4088  4     index        block number within the copy
//! 4092  4     crc          CRC-32C of [0, 4092)
//! ```
//!
//! Entries past the last page are 0.

use std::convert::TryInto;

/// "BUDGEOVL".
pub const MAGIC: [u8; 8] = *b"BUDGEOVL";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Size of a superblock slot and of a page-map block.
pub const BLOCK: u64 = 4096;
/// Bytes of entries in one page-map block.
pub const PAYLOAD: usize = 4080;
/// Pages described by one page-map block.
pub const ENTRIES_PER_BLOCK: u64 = PAYLOAD as u64 * 4;
/// Longest base path recorded.
pub const MAX_PATH: usize = 0xffc - 0xb2;
/// Where the page-map copies start.
pub const MAP_START: u64 = 2 * BLOCK;

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}
fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// What the overlay was made over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseId {
    /// A plain file: its inode, mtime and a fingerprint of its first and last
    /// page (with the size, which is the overlay's).
    File {
        /// `st_ino`.
        ino: u64,
        /// `st_mtime`, seconds.
        mtime_sec: i64,
        /// `st_mtime`, nanoseconds.
        mtime_nsec: u32,
        /// CRC-32C of the first and last page.
        fingerprint: u32,
    },
    /// Another overlay, at one generation.
    Overlay {
        /// Its uuid.
        uuid: [u8; 16],
        /// Its generation when this overlay was made or last committed.
        generation: u64,
    },
}

/// An interrupted commit, recorded in the superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitState {
    /// No commit in progress.
    None,
    /// A replacement file (identity below) is about to be renamed over the
    /// base. On open: if the base is it, the commit happened; if the base is
    /// still the old one, it did not.
    Publishing {
        /// The replacement's inode.
        ino: u64,
        /// Its mtime, seconds.
        mtime_sec: i64,
        /// Its mtime, nanoseconds.
        mtime_nsec: u32,
        /// Its fingerprint.
        fingerprint: u32,
    },
    /// Pages are being written into the base in place; those below `cursor`
    /// are written and synced. On open the rest is replayed.
    InPlace {
        /// First page not known to be synced.
        cursor: u64,
    },
}

/// One superblock slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Higher wins.
    pub generation: u64,
    /// Bytes per page.
    pub page_size: u32,
    /// Page-map blocks per copy.
    pub map_blocks: u32,
    /// Logical size in bytes.
    pub size: u64,
    /// Where page 0's data lives in the overlay file.
    pub data_offset: u64,
    /// This overlay's identity.
    pub uuid: [u8; 16],
    /// The base it was made over.
    pub base: BaseId,
    /// An interrupted commit.
    pub commit: CommitState,
    /// Absolute path of the base.
    pub base_path: Vec<u8>,
}

impl Superblock {
    /// Pages of `page_size` covering `size` bytes.
    pub fn pages(&self) -> u64 {
        self.size.div_ceil(u64::from(self.page_size))
    }

    /// Offset of page-map copy `slot` (0 or 1).
    pub fn map_offset(&self, slot: u64) -> u64 {
        MAP_START + slot * u64::from(self.map_blocks) * BLOCK
    }

    /// The layout for an overlay of `size` bytes with `page_size` pages:
    /// (map blocks per copy, data offset).
    pub fn layout(size: u64, page_size: u32) -> (u32, u64) {
        let pages = size.div_ceil(u64::from(page_size));
        let blocks = pages.div_ceil(ENTRIES_PER_BLOCK).max(1);
        let map_end = MAP_START + 2 * blocks * BLOCK;
        (
            u32::try_from(blocks).unwrap_or(u32::MAX),
            map_end.next_multiple_of(u64::from(page_size)),
        )
    }

    /// The 4 KiB slot image.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK as usize];
        b[0..8].copy_from_slice(&MAGIC);
        put32(&mut b, 0x08, VERSION);
        put64(&mut b, 0x10, self.generation);
        put32(&mut b, 0x18, self.page_size);
        put32(&mut b, 0x1c, self.map_blocks);
        put64(&mut b, 0x20, self.size);
        put64(&mut b, 0x28, self.data_offset);
        b[0x30..0x40].copy_from_slice(&self.uuid);
        match &self.base {
            BaseId::File {
                ino,
                mtime_sec,
                mtime_nsec,
                fingerprint,
            } => {
                put32(&mut b, 0x40, 1);
                put32(&mut b, 0x44, *fingerprint);
                put64(&mut b, 0x48, *ino);
                put64(&mut b, 0x50, *mtime_sec as u64);
                put64(&mut b, 0x58, u64::from(*mtime_nsec));
            }
            BaseId::Overlay { uuid, generation } => {
                put32(&mut b, 0x40, 2);
                b[0x60..0x70].copy_from_slice(uuid);
                put64(&mut b, 0x70, *generation);
            }
        }
        match &self.commit {
            CommitState::None => {}
            CommitState::Publishing {
                ino,
                mtime_sec,
                mtime_nsec,
                fingerprint,
            } => {
                put32(&mut b, 0x78, 1);
                put64(&mut b, 0x88, *ino);
                put64(&mut b, 0x90, *mtime_sec as u64);
                put64(&mut b, 0x98, u64::from(*mtime_nsec));
                put32(&mut b, 0xa0, *fingerprint);
            }
            CommitState::InPlace { cursor } => {
                put32(&mut b, 0x78, 2);
                put64(&mut b, 0x80, *cursor);
            }
        }
        let n = self.base_path.len().min(MAX_PATH);
        b[0xb0..0xb2].copy_from_slice(&(n as u16).to_le_bytes());
        b[0xb2..0xb2 + n].copy_from_slice(&self.base_path[..n]);
        let crc = crc32c::crc32c(&b[..0xffc]);
        put32(&mut b, 0xffc, crc);
        b
    }

    /// Parses a slot; `Err` says why it is not a valid superblock.
    pub fn decode(b: &[u8]) -> Result<Superblock, String> {
        if b.len() < BLOCK as usize {
            return Err(format!("{} bytes, a superblock is 4096", b.len()));
        }
        if b[0..8] != MAGIC {
            return Err("not a budge overlay (bad magic)".into());
        }
        let crc = le32(b, 0xffc);
        if crc32c::crc32c(&b[..0xffc]) != crc {
            return Err("checksum mismatch".into());
        }
        let version = le32(b, 0x08);
        if version != VERSION {
            return Err(format!(
                "format version {version}; this budge reads version {VERSION}"
            ));
        }
        if le32(b, 0x0c) != 0 {
            return Err(format!("unknown flags {:#x}", le32(b, 0x0c)));
        }
        let page_size = le32(b, 0x18);
        if page_size == 0 || u64::from(page_size) % BLOCK != 0 || page_size > 64 << 20 {
            return Err(format!(
                "page size {page_size} is not a multiple of 4 KiB up to 64 MiB"
            ));
        }
        let size = le64(b, 0x20);
        let map_blocks = le32(b, 0x1c);
        let data_offset = le64(b, 0x28);
        let (want_blocks, want_data) = Superblock::layout(size, page_size);
        if map_blocks != want_blocks || data_offset != want_data {
            return Err(format!(
                "layout mismatch: {map_blocks} map blocks at data offset {data_offset}, expected {want_blocks} at {want_data} for {size} bytes"
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x30..0x40]);
        let base = match le32(b, 0x40) {
            1 => {
                let nsec = le64(b, 0x58);
                if nsec >= 1_000_000_000 {
                    return Err(format!("base mtime nanoseconds {nsec} out of range"));
                }
                BaseId::File {
                    ino: le64(b, 0x48),
                    mtime_sec: le64(b, 0x50) as i64,
                    mtime_nsec: nsec as u32,
                    fingerprint: le32(b, 0x44),
                }
            }
            2 => {
                let mut u = [0u8; 16];
                u.copy_from_slice(&b[0x60..0x70]);
                BaseId::Overlay {
                    uuid: u,
                    generation: le64(b, 0x70),
                }
            }
            k => return Err(format!("unknown base kind {k}")),
        };
        let commit = match le32(b, 0x78) {
            0 => CommitState::None,
            1 => {
                let nsec = le64(b, 0x98);
                if nsec >= 1_000_000_000 {
                    return Err(format!("commit mtime nanoseconds {nsec} out of range"));
                }
                CommitState::Publishing {
                    ino: le64(b, 0x88),
                    mtime_sec: le64(b, 0x90) as i64,
                    mtime_nsec: nsec as u32,
                    fingerprint: le32(b, 0xa0),
                }
            }
            2 => CommitState::InPlace {
                cursor: le64(b, 0x80),
            },
            k => return Err(format!("unknown commit state {k}")),
        };
        let n = usize::from(u16::from_le_bytes([b[0xb0], b[0xb1]]));
        if n == 0 || n > MAX_PATH {
            return Err(format!("base path length {n} out of range"));
        }
        Ok(Superblock {
            generation: le64(b, 0x10),
            page_size,
            map_blocks,
            size,
            data_offset,
            uuid,
            base,
            commit,
            base_path: b[0xb2..0xb2 + n].to_vec(),
        })
    }
}

/// The 4 KiB image of page-map block `index` holding `payload`.
pub fn encode_map_block(payload: &[u8], generation: u64, index: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[..PAYLOAD].copy_from_slice(&payload[..PAYLOAD]);
    put64(&mut b, PAYLOAD, generation);
    put32(&mut b, PAYLOAD + 8, index);
    let crc = crc32c::crc32c(&b[..0xffc]);
    put32(&mut b, 0xffc, crc);
    b
}

/// Checks a page-map block read from copy position `index` against the
/// superblock's generation; returns its payload.
pub fn decode_map_block(b: &[u8], index: u32, max_generation: u64) -> Result<&[u8], String> {
    if b.len() < BLOCK as usize {
        return Err("short block".into());
    }
    if crc32c::crc32c(&b[..0xffc]) != le32(b, 0xffc) {
        return Err("checksum mismatch".into());
    }
    if le32(b, PAYLOAD + 8) != index {
        return Err(format!(
            "block says it is number {}, found at {index}",
            le32(b, PAYLOAD + 8)
        ));
    }
    let g = le64(b, PAYLOAD);
    if g > max_generation {
        return Err(format!(
            "written by generation {g}, newer than the superblock's {max_generation}"
        ));
    }
    Ok(&b[..PAYLOAD])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        let (map_blocks, data_offset) = Superblock::layout(1 << 30, 4096);
        Superblock {
            generation: 7,
            page_size: 4096,
            map_blocks,
            size: 1 << 30,
            data_offset,
            uuid: [3; 16],
            base: BaseId::File {
                ino: 42,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 5,
                fingerprint: 0xdead_beef,
            },
            commit: CommitState::InPlace { cursor: 9 },
            base_path: b"/var/tmp/base.img".to_vec(),
        }
    }

    #[test]
    fn superblock_round_trips() {
        let s = sample();
        assert_eq!(Superblock::decode(&s.encode()).unwrap(), s);
        let mut o = sample();
        o.base = BaseId::Overlay {
            uuid: [9; 16],
            generation: 3,
        };
        o.commit = CommitState::Publishing {
            ino: 1,
            mtime_sec: -5,
            mtime_nsec: 999_999_999,
            fingerprint: 1,
        };
        assert_eq!(Superblock::decode(&o.encode()).unwrap(), o);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let img = sample().encode();
        for i in (0..img.len()).step_by(7) {
            let mut b = img.clone();
            b[i] ^= 0x40;
            assert!(Superblock::decode(&b).is_err(), "byte {i}");
        }
    }

    #[test]
    fn layout_for_a_gibibyte() {
        // 262144 pages of 4 KiB, 16320 per block: 17 blocks per copy.
        let (blocks, data) = Superblock::layout(1 << 30, 4096);
        assert_eq!(blocks, 17);
        assert_eq!(data, 8192 + 2 * 17 * 4096);
        let (_, data) = Superblock::layout(1 << 30, 65536);
        assert_eq!(data % 65536, 0);
    }

    #[test]
    fn map_blocks_check_index_generation_and_crc() {
        let payload = vec![0x55u8; PAYLOAD];
        let b = encode_map_block(&payload, 4, 2);
        assert_eq!(decode_map_block(&b, 2, 4).unwrap(), &payload[..]);
        assert!(decode_map_block(&b, 3, 4).is_err());
        assert!(decode_map_block(&b, 2, 3).is_err());
        let mut c = b.clone();
        c[100] ^= 1;
        assert!(decode_map_block(&c, 2, 4).is_err());
    }
}
