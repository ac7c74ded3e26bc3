//! The store's on-disk format, version 1. Pure: bytes in, values out, no I/O,
//! so the parser can be fuzzed (`fuzz/fuzz_targets/store_header.rs`).
//!
//! # File layout
//!
//! ```text
//! offset      size      what
//! 0           64 KiB    header slot A
//! 64 KiB      64 KiB    header slot B
//! 128 KiB     448 KiB   extent journal A (belongs to slot A's intent)
//! 576 KiB     448 KiB   extent journal B (belongs to slot B's intent)
//! 1 MiB       ...       region 0's capacity, region 1's capacity, ... packed
//!                       in table order, each a multiple of `align`
//! data_end              EOF
//! ```
//!
//! The whole 1 MiB header area is written (allocated) at creation, so later
//! header writes are plain overwrites that need no metadata transaction.
//!
//! # Header slot (little-endian)
//!
//! ```text
//! off   size  field
//! 0x00  8     magic          "BUDGE\xffST"
//! 0x08  4     version        1
//! 0x0c  4     checksum       CRC-32C of bytes [0, 0x0c) then [0x10, 0x10 + body_len)
//! 0x10  4     body_len       0x70 + 128 * region_count
//! 0x14  4     flags          0 (any other bit: Unsupported)
//! 0x18  8     generation     higher wins; the two slots alternate
//! 0x20  4     align          region alignment, a power of two, 4 KiB..=1 MiB
//! 0x24  4     region_count   <= MAX_REGIONS
//! 0x28  8     data_start     1 MiB
//! 0x30  8     data_end       end of the last region's capacity
//! 0x38  4     intent kind    0 none, 1 insert, 2 collapse
//! 0x3c  4     intent method  1 native (journal), 2 sidecar (copy of the tail)
//! 0x40  8     intent offset  where space was inserted or removed
//! 0x48  8     intent length  how much
//! 0x50  8     intent size    file size before the shift
//! 0x58  4     journal count  24-byte entries in this slot's journal
//! 0x5c  4     journal crc    CRC-32C of those entries
//! 0x60  32    reserved       zero
//! 0x80  ...   region entries, 128 bytes each, in file order
//! ```
//!
//! # Region entry
//!
//! ```text
//! off   size  field
//! 0x00  1     name_len       1..=63
//! 0x01  63    name           UTF-8 without NUL, zero-padded
//! 0x40  8     offset         = previous offset + previous capacity
//! 0x48  8     len            bytes in use, <= capacity
//! 0x50  8     capacity       multiple of align
//! 0x58  4     elem_size      0 for bytes; else len is a multiple of it
//! 0x5c  4     flags          0
//! 0x60  32    reserved       zero
//! ```
//!
//! # Journal entry (native intents)
//!
//! ```text
//! off   size  field
//! 0x00  8     logical        file offset of a data extent before the shift
//! 0x08  8     physical       its device offset
//! 0x10  8     length
//! ```
//!
//! # Commit record (extended attribute `user.budge.store`, native resizes)
//!
//! A resize on XFS or ext4 that changes only lengths and capacities is
//! committed by this small record instead of a slot write: it is set before
//! the `fallocate` and goes into the same filesystem journal, which is
//! ordered, so the record is durable whenever any part of the shift is
//! (one `fdatasync` per resize instead of two). It holds the change against
//! a base slot, not the whole table, so it stays small enough for XFS to
//! keep in the inode (a value of 356 bytes or more goes to a separate block
//! and costs a 4 KiB log write, measured).
//!
//! ```text
//! off   size  field
//! 0x00  8     magic          "BUDGE\xffSR"
//! 0x08  4     version        1
//! 0x0c  4     checksum       CRC-32C of bytes [0, 0x0c) then [0x10, length)
//! 0x10  4     length         0x50 + 24 * change_count
//! 0x14  4     change_count   1..=MAX_RECORD_CHANGES
//! 0x18  8     generation     the table's generation; newer than both slots to count
//! 0x20  8     base           generation of the slot the changes apply to
//! 0x28  4     intent kind    0 none (the shift is durable), 1 insert,
//!                            2 collapse (method: native); with 0 the
//!                            intent fields 0x2c..0x50 are zero
//! 0x2c  4     journal count  extents of the tail before the shift, canonical
//! 0x30  4     journal crc    CRC-32C of those extents as journal entries
//! 0x34  4     reserved       zero
//! 0x38  8     intent offset
//! 0x40  8     intent length
//! 0x48  8     intent size    file size before the shift
//! 0x50  ...   changes, 24 bytes each: region index u32, reserved u32 (zero),
//!             len u64, capacity u64 (offsets follow by packing)
//! ```
//!
//! The journal itself is not recorded: recovery rebuilds it from the
//! current extent map (each way the shift can have been cut gives one
//! candidate) and keeps the candidate whose count and CRC match
//! ([`super::plan::reconstruct`]).

use std::fmt;

/// Bytes 0..8 of every header slot.
pub const MAGIC: [u8; 8] = *b"BUDGE\xffST";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Size of one header slot.
pub const SLOT_SIZE: u64 = 64 << 10;
/// Offsets of the two header slots.
pub const SLOT_OFFSET: [u64; 2] = [0, SLOT_SIZE];
/// Size of one extent journal.
pub const JOURNAL_SIZE: u64 = 448 << 10;
/// Offsets of the two journals (journal `i` belongs to slot `i`).
pub const JOURNAL_OFFSET: [u64; 2] = [2 * SLOT_SIZE, 2 * SLOT_SIZE + JOURNAL_SIZE];
/// Where region data starts.
pub const DATA_START: u64 = 1 << 20;
/// Size of the fixed part of a slot.
pub const FIXED_LEN: usize = 0x80;
/// Size of one region entry.
pub const ENTRY_LEN: usize = 128;
/// Longest region name in bytes.
pub const MAX_NAME: usize = 63;
/// Most regions a store holds.
pub const MAX_REGIONS: usize = (SLOT_SIZE as usize - FIXED_LEN) / ENTRY_LEN;
/// Size of one journal entry.
pub const JOURNAL_ENTRY_LEN: usize = 24;
/// Most journal entries (extents) one intent records.
pub const MAX_JOURNAL: usize = JOURNAL_SIZE as usize / JOURNAL_ENTRY_LEN;
/// Smallest and largest region alignment.
pub const MIN_ALIGN: u32 = 4096;
/// See [`MIN_ALIGN`].
pub const MAX_ALIGN: u32 = 1 << 20;

const _: () = assert!(JOURNAL_OFFSET[1] + JOURNAL_SIZE == DATA_START);
const _: () = assert!(DATA_START % MAX_ALIGN as u64 == 0);

/// One named region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// File offset of its first byte.
    pub offset: u64,
    /// Bytes in use.
    pub len: u64,
    /// Bytes reserved (a multiple of the alignment).
    pub capacity: u64,
    /// Element size for typed regions, 0 for plain bytes.
    pub elem_size: u32,
}

/// What an intent says happened to the file after the table was written.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IntentKind {
    /// `length` bytes were inserted at `offset`.
    Insert,
    /// `[offset, offset + length)` was removed.
    Collapse,
}

/// How the shift is carried out, which decides how recovery completes it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `fallocate` INSERT/COLLAPSE_RANGE; the journal lists the tail's data
    /// extents so recovery can tell which of them the kernel already moved.
    Native,
    /// The tail was first copied (or reflinked) into a durable sidecar file,
    /// from which recovery rewrites it at its new offset.
    Sidecar,
}

/// A structural change in progress: the slot holding it describes the table
/// *after* the change, and recovery makes the file match.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// Insert or collapse.
    pub kind: IntentKind,
    /// Native or sidecar.
    pub method: Method,
    /// Where.
    pub offset: u64,
    /// How much.
    pub len: u64,
    /// The file size before the shift.
    pub old_size: u64,
    /// Entries in this slot's journal.
    pub journal_count: u32,
    /// CRC-32C of the journal entries.
    pub journal_crc: u32,
}

impl Intent {
    /// The file size once the shift is complete.
    pub fn new_size(&self) -> u64 {
        match self.kind {
            IntentKind::Insert => self.old_size + self.len,
            IntentKind::Collapse => self.old_size - self.len,
        }
    }
}

/// One decoded header slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Higher is newer.
    pub generation: u64,
    /// Region alignment in bytes.
    pub align: u32,
    /// The regions in file order.
    pub regions: Vec<Entry>,
    /// A structural change the file may not fully reflect yet.
    pub intent: Option<Intent>,
}

impl Header {
    /// An empty store's header.
    pub fn new(align: u32) -> Self {
        Header {
            generation: 1,
            align,
            regions: Vec::new(),
            intent: None,
        }
    }

    /// End of the last region's capacity: the file size the table describes.
    pub fn data_end(&self) -> u64 {
        self.regions
            .last()
            .map_or(DATA_START, |r| r.offset + r.capacity)
    }

    /// Index of the region called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }

    /// Recomputes every offset from the capacities (regions are packed).
    pub fn repack(&mut self) {
        let mut off = DATA_START;
        for r in &mut self.regions {
            r.offset = off;
            off += r.capacity;
        }
    }
}

/// Why a slot or journal was rejected, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// `true` for a newer format or unknown flags (`Unsupported`), `false`
    /// for damage (`Corrupted`).
    pub unsupported: bool,
    /// The field at fault, e.g. `"checksum"` or `"region 3 (\"idx\") capacity"`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> FormatError {
    FormatError {
        unsupported: false,
        field: field.into(),
        reason: reason.into(),
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Checks a region name: 1..=63 bytes of UTF-8 without NUL.
///
/// # Errors
/// The reason, for the caller's message.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("a region name cannot be empty".into())
    } else if name.len() > MAX_NAME {
        Err(format!(
            "a region name has at most {MAX_NAME} bytes; {name:?} has {}",
            name.len()
        ))
    } else if name.contains('\0') {
        Err("a region name cannot contain NUL".into())
    } else {
        Ok(())
    }
}

/// Encodes `h` into the bytes of one slot (`0x80 + 128 * regions` long).
///
/// # Panics
/// If `h` breaks the format's invariants (too many regions, a bad name):
/// callers validate before they build a header.
pub fn encode(h: &Header) -> Vec<u8> {
    assert!(h.regions.len() <= MAX_REGIONS, "too many regions");
    let body_len = FIXED_LEN - 0x10 + ENTRY_LEN * h.regions.len();
    let mut b = vec![0u8; 0x10 + body_len];
    b[0..8].copy_from_slice(&MAGIC);
    put32(&mut b, 0x08, VERSION);
    put32(&mut b, 0x10, body_len as u32);
    put32(&mut b, 0x14, 0);
    put64(&mut b, 0x18, h.generation);
    put32(&mut b, 0x20, h.align);
    put32(&mut b, 0x24, h.regions.len() as u32);
    put64(&mut b, 0x28, DATA_START);
    put64(&mut b, 0x30, h.data_end());
    if let Some(i) = h.intent {
        put32(
            &mut b,
            0x38,
            match i.kind {
                IntentKind::Insert => 1,
                IntentKind::Collapse => 2,
            },
        );
        put32(
            &mut b,
            0x3c,
            match i.method {
                Method::Native => 1,
                Method::Sidecar => 2,
            },
        );
        put64(&mut b, 0x40, i.offset);
        put64(&mut b, 0x48, i.len);
        put64(&mut b, 0x50, i.old_size);
        put32(&mut b, 0x58, i.journal_count);
        put32(&mut b, 0x5c, i.journal_crc);
    }
    for (k, r) in h.regions.iter().enumerate() {
        let e = FIXED_LEN + k * ENTRY_LEN;
        assert!(check_name(&r.name).is_ok(), "bad region name");
        b[e] = r.name.len() as u8;
        b[e + 1..e + 1 + r.name.len()].copy_from_slice(r.name.as_bytes());
        put64(&mut b, e + 0x40, r.offset);
        put64(&mut b, e + 0x48, r.len);
        put64(&mut b, e + 0x50, r.capacity);
        put32(&mut b, e + 0x58, r.elem_size);
    }
    let crc = checksum(&b, body_len);
    put32(&mut b, 0x0c, crc);
    b
}

/// Recomputes the checksum of encoded slot bytes `b` in place (for tools and
/// tests that build damaged-but-checksummed slots). Does nothing if `b` is
/// too short or its `body_len` runs past it.
pub fn seal(b: &mut [u8]) {
    if b.len() < FIXED_LEN {
        return;
    }
    let body_len = u32_at(b, 0x10) as usize;
    if 0x10usize
        .checked_add(body_len)
        .is_some_and(|e| e <= b.len())
    {
        let crc = checksum(b, body_len);
        put32(b, 0x0c, crc);
    }
}

/// The slot checksum: CRC-32C of everything but the checksum field, so the
/// magic and version are covered too (bytes 0..0x14 mean the same in every
/// format version).
fn checksum(b: &[u8], body_len: usize) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[..0x0c]), &b[0x10..0x10 + body_len])
}

/// Whether `b` starts with the magic (is a slot at all).
pub fn has_magic(b: &[u8]) -> bool {
    b.len() >= 8 && b[..8] == MAGIC
}

/// Decodes and validates one slot. `b` may be longer than the slot's
/// contents (a whole 64 KiB slot read from disk).
///
/// # Errors
/// A [`FormatError`] naming the first field that is wrong.
pub fn decode(b: &[u8]) -> Result<Header, FormatError> {
    if b.len() < FIXED_LEN {
        return Err(bad(
            "header",
            format!(
                "{} bytes, shorter than the {FIXED_LEN}-byte fixed part (truncated file?)",
                b.len()
            ),
        ));
    }
    if !has_magic(b) {
        return Err(bad(
            "magic",
            format!("{:02x?} is not a budge store's magic", &b[..8]),
        ));
    }
    let body_len = u32_at(b, 0x10) as usize;
    let max_body = SLOT_SIZE as usize - 0x10;
    if !(FIXED_LEN - 0x10..=max_body).contains(&body_len) {
        return Err(bad(
            "body_len",
            format!("{body_len} is outside {}..={max_body}", FIXED_LEN - 0x10),
        ));
    }
    if 0x10 + body_len > b.len() {
        return Err(bad(
            "body_len",
            format!(
                "{body_len} bytes run past the {} bytes read (truncated file?)",
                b.len()
            ),
        ));
    }
    let crc = checksum(b, body_len);
    let stored = u32_at(b, 0x0c);
    if crc != stored {
        return Err(bad(
            "checksum",
            format!("stored {stored:#010x}, computed {crc:#010x} (torn write or bit flip)"),
        ));
    }
    // Checked after the checksum, which covers it: a flipped bit is damage,
    // not a newer format.
    let version = u32_at(b, 0x08);
    if version > VERSION {
        return Err(FormatError {
            unsupported: true,
            field: "version".into(),
            reason: format!(
                "format version {version} is newer than this build reads ({VERSION}); upgrade budge"
            ),
        });
    }
    if version == 0 {
        return Err(bad("version", "format version 0 does not exist"));
    }
    let flags = u32_at(b, 0x14);
    if flags != 0 {
        return Err(FormatError {
            unsupported: true,
            field: "flags".into(),
            reason: format!("unknown feature flags {flags:#x}; written by a newer budge"),
        });
    }
    let generation = u64_at(b, 0x18);
    if generation == 0 {
        return Err(bad("generation", "0 is never written"));
    }
    let align = u32_at(b, 0x20);
    if !align.is_power_of_two() || !(MIN_ALIGN..=MAX_ALIGN).contains(&align) {
        return Err(bad(
            "align",
            format!("{align} is not a power of two in {MIN_ALIGN}..={MAX_ALIGN}"),
        ));
    }
    let count = u32_at(b, 0x24) as usize;
    if count > MAX_REGIONS {
        return Err(bad(
            "region_count",
            format!("{count} is more than {MAX_REGIONS}"),
        ));
    }
    if body_len != FIXED_LEN - 0x10 + ENTRY_LEN * count {
        return Err(bad(
            "body_len",
            format!("{body_len} does not match {count} regions"),
        ));
    }
    let data_start = u64_at(b, 0x28);
    if data_start != DATA_START {
        return Err(bad(
            "data_start",
            format!("{data_start}, expected {DATA_START}"),
        ));
    }
    if b[0x60..0x80].iter().any(|&x| x != 0) {
        return Err(bad("reserved", "header bytes 0x60..0x80 are not zero"));
    }
    let a = u64::from(align);
    let mut regions: Vec<Entry> = Vec::with_capacity(count);
    let mut next = DATA_START;
    for k in 0..count {
        let e = FIXED_LEN + k * ENTRY_LEN;
        let eb = &b[e..e + ENTRY_LEN];
        let field = |what: &str| format!("region {k} {what}");
        let name_len = eb[0] as usize;
        if !(1..=MAX_NAME).contains(&name_len) {
            return Err(bad(
                field("name_len"),
                format!("{name_len} is outside 1..={MAX_NAME}"),
            ));
        }
        let name = std::str::from_utf8(&eb[1..1 + name_len])
            .map_err(|_| bad(field("name"), "not UTF-8"))?;
        if name.contains('\0') {
            return Err(bad(field("name"), "contains NUL"));
        }
        if eb[1 + name_len..0x40].iter().any(|&x| x != 0) {
            return Err(bad(field("name"), "padding after the name is not zero"));
        }
        let field = |what: &str| format!("region {k} ({name:?}) {what}");
        let offset = u64_at(eb, 0x40);
        let len = u64_at(eb, 0x48);
        let capacity = u64_at(eb, 0x50);
        let elem_size = u32_at(eb, 0x58);
        if offset != next {
            return Err(bad(
                field("offset"),
                format!("{offset}, expected {next} (regions are packed in file order)"),
            ));
        }
        if capacity % a != 0 {
            return Err(bad(
                field("capacity"),
                format!("{capacity} is not a multiple of the {align}-byte alignment"),
            ));
        }
        if len > capacity {
            return Err(bad(
                field("len"),
                format!("{len} exceeds the capacity {capacity}"),
            ));
        }
        if elem_size != 0 && len % u64::from(elem_size) != 0 {
            return Err(bad(
                field("len"),
                format!("{len} is not a whole number of {elem_size}-byte elements"),
            ));
        }
        if u32_at(eb, 0x5c) != 0 {
            return Err(FormatError {
                unsupported: true,
                field: field("flags"),
                reason: format!("unknown region flags {:#x}", u32_at(eb, 0x5c)),
            });
        }
        if eb[0x60..].iter().any(|&x| x != 0) {
            return Err(bad(field("reserved"), "bytes 0x60..0x80 are not zero"));
        }
        if regions.iter().any(|r| r.name == name) {
            return Err(bad(field("name"), "duplicate region name"));
        }
        next = offset
            .checked_add(capacity)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                bad(
                    field("capacity"),
                    format!("{capacity} overflows the file offset"),
                )
            })?;
        regions.push(Entry {
            name: name.to_string(),
            offset,
            len,
            capacity,
            elem_size,
        });
    }
    let data_end = u64_at(b, 0x30);
    if data_end != next {
        return Err(bad(
            "data_end",
            format!("{data_end}, but the regions end at {next}"),
        ));
    }
    let intent = decode_intent(b, a, next)?;
    Ok(Header {
        generation,
        align,
        regions,
        intent,
    })
}

fn decode_intent(b: &[u8], align: u64, data_end: u64) -> Result<Option<Intent>, FormatError> {
    let kind = u32_at(b, 0x38);
    let kind = match kind {
        0 => {
            return if b[0x3c..0x60].iter().any(|&x| x != 0) {
                Err(bad("intent", "no intent, but its fields are not zero"))
            } else {
                Ok(None)
            };
        }
        1 => IntentKind::Insert,
        2 => IntentKind::Collapse,
        k => return Err(bad("intent kind", format!("{k} is not 0, 1 or 2"))),
    };
    let method = match u32_at(b, 0x3c) {
        1 => Method::Native,
        2 => Method::Sidecar,
        m => return Err(bad("intent method", format!("{m} is not 1 or 2"))),
    };
    let i = Intent {
        kind,
        method,
        offset: u64_at(b, 0x40),
        len: u64_at(b, 0x48),
        old_size: u64_at(b, 0x50),
        journal_count: u32_at(b, 0x58),
        journal_crc: u32_at(b, 0x5c),
    };
    if i.offset % align != 0 || i.len % align != 0 || i.old_size % align != 0 || i.len == 0 {
        return Err(bad(
            "intent",
            format!(
                "offset {}, length {}, size {} are not positive multiples of {align}",
                i.offset, i.len, i.old_size
            ),
        ));
    }
    if i.offset < DATA_START || i.old_size < DATA_START {
        return Err(bad("intent", "points into the header area"));
    }
    let fits = match kind {
        IntentKind::Insert => {
            i.offset <= i.old_size && i.old_size.checked_add(i.len) == Some(data_end)
        }
        IntentKind::Collapse => {
            i.offset.checked_add(i.len).is_some_and(|e| e <= i.old_size)
                && i.old_size - i.len == data_end
        }
    };
    if !fits {
        return Err(bad(
            "intent",
            format!(
                "{kind:?} of {} at {} from size {} does not end at data_end {data_end}",
                i.len, i.offset, i.old_size
            ),
        ));
    }
    if i.journal_count as usize > MAX_JOURNAL || (method == Method::Sidecar && i.journal_count != 0)
    {
        return Err(bad(
            "intent journal count",
            format!("{} entries", i.journal_count),
        ));
    }
    Ok(Some(i))
}

/// One journal entry: a data extent of the tail before the shift.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// File offset.
    pub logical: u64,
    /// Device offset.
    pub physical: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Encodes journal entries; returns the bytes and their CRC-32C.
pub fn encode_journal(j: &[JournalEntry]) -> (Vec<u8>, u32) {
    let mut b = vec![0u8; j.len() * JOURNAL_ENTRY_LEN];
    for (k, e) in j.iter().enumerate() {
        let o = k * JOURNAL_ENTRY_LEN;
        put64(&mut b, o, e.logical);
        put64(&mut b, o + 8, e.physical);
        put64(&mut b, o + 16, e.len);
    }
    let crc = crc32c::crc32c(&b);
    (b, crc)
}

/// Decodes `count` journal entries from `b` and checks them against `crc`
/// and the intent's range.
///
/// # Errors
/// A [`FormatError`] if the CRC does not match (the journal was not durable:
/// the slot must be ignored) or an entry lies outside the shifted tail.
pub fn decode_journal(b: &[u8], intent: &Intent) -> Result<Vec<JournalEntry>, FormatError> {
    let n = intent.journal_count as usize;
    let bytes = n * JOURNAL_ENTRY_LEN;
    if b.len() < bytes {
        return Err(bad("journal", format!("{} bytes, {bytes} needed", b.len())));
    }
    if crc32c::crc32c(&b[..bytes]) != intent.journal_crc {
        return Err(bad(
            "journal checksum",
            "does not match the intent (not durable before the crash)",
        ));
    }
    let (lo, hi) = match intent.kind {
        IntentKind::Insert => (intent.offset, intent.old_size),
        IntentKind::Collapse => (intent.offset + intent.len, intent.old_size),
    };
    let mut out = Vec::with_capacity(n);
    let mut prev_end = lo;
    for k in 0..n {
        let o = k * JOURNAL_ENTRY_LEN;
        let e = JournalEntry {
            logical: u64_at(b, o),
            physical: u64_at(b, o + 8),
            len: u64_at(b, o + 16),
        };
        let end = e.logical.checked_add(e.len);
        if e.len == 0
            || e.logical < prev_end
            || end.is_none_or(|x| x > hi)
            || e.physical.checked_add(e.len).is_none()
        {
            return Err(bad(
                format!("journal entry {k}"),
                format!("{e:?} is outside [{lo}, {hi}) or out of order"),
            ));
        }
        prev_end = e.logical + e.len;
        out.push(e);
    }
    Ok(out)
}

/// Name of the extended attribute holding a commit record.
pub const RECORD_XATTR: &str = "user.budge.store";
/// Bytes 0..8 of a commit record.
pub const RECORD_MAGIC: [u8; 8] = *b"BUDGE\xffSR";
/// Fixed part of a commit record.
pub const RECORD_FIXED_LEN: usize = 0x50;
/// Most regions one commit record changes: a record of up to 4 changes is
/// 176 bytes, which XFS keeps in the inode.
pub const MAX_RECORD_CHANGES: usize = 4;

/// One region's new length and capacity in a commit record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RecordChange {
    /// Index of the region in the base table.
    pub index: u32,
    /// New length.
    pub len: u64,
    /// New capacity.
    pub capacity: u64,
}

/// A commit record: the table of generation `generation` is the base slot's
/// table with `changes` applied and `intent` pending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The generation of the table it describes.
    pub generation: u64,
    /// The generation of the slot it changes.
    pub base: u64,
    /// The shift (always native) while it may not be durable; its journal
    /// count and CRC describe the canonical journal
    /// ([`super::plan::canonical`]). `None` once the shift is durable.
    pub intent: Option<Intent>,
    /// Changed regions, by index, ascending.
    pub changes: Vec<RecordChange>,
}

/// Encodes a commit record.
///
/// # Panics
/// With no changes or more than [`MAX_RECORD_CHANGES`].
pub fn encode_record(r: &Record) -> Vec<u8> {
    assert!((1..=MAX_RECORD_CHANGES).contains(&r.changes.len()));
    let len = RECORD_FIXED_LEN + 24 * r.changes.len();
    let mut b = vec![0u8; len];
    b[0..8].copy_from_slice(&RECORD_MAGIC);
    put32(&mut b, 0x08, VERSION);
    put32(&mut b, 0x10, len as u32);
    put32(&mut b, 0x14, r.changes.len() as u32);
    put64(&mut b, 0x18, r.generation);
    put64(&mut b, 0x20, r.base);
    if let Some(i) = &r.intent {
        put32(
            &mut b,
            0x28,
            match i.kind {
                IntentKind::Insert => 1,
                IntentKind::Collapse => 2,
            },
        );
        put32(&mut b, 0x2c, i.journal_count);
        put32(&mut b, 0x30, i.journal_crc);
        put64(&mut b, 0x38, i.offset);
        put64(&mut b, 0x40, i.len);
        put64(&mut b, 0x48, i.old_size);
    }
    for (k, c) in r.changes.iter().enumerate() {
        let o = RECORD_FIXED_LEN + 24 * k;
        put32(&mut b, o, c.index);
        put64(&mut b, o + 8, c.len);
        put64(&mut b, o + 16, c.capacity);
    }
    let crc = record_checksum(&b);
    put32(&mut b, 0x0c, crc);
    b
}

fn record_checksum(b: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[..0x0c]), &b[0x10..])
}

/// Recomputes a commit record's checksum in place (for tests and fuzzing,
/// so damaged fields get past the checksum). Does nothing to a buffer
/// shorter than the fixed part.
pub fn seal_record(b: &mut [u8]) {
    if b.len() >= RECORD_FIXED_LEN {
        let crc = record_checksum(b);
        put32(b, 0x0c, crc);
    }
}

/// Decodes a commit record (the fields on their own; [`apply_record`]
/// checks it against its base).
///
/// # Errors
/// A [`FormatError`] naming the field (fields are prefixed "record").
pub fn decode_record(b: &[u8]) -> Result<Record, FormatError> {
    if b.len() < RECORD_FIXED_LEN {
        return Err(bad(
            "record",
            format!(
                "{} bytes, shorter than its {RECORD_FIXED_LEN}-byte fixed part",
                b.len()
            ),
        ));
    }
    if b[..8] != RECORD_MAGIC {
        return Err(bad("record magic", format!("{:02x?}", &b[..8])));
    }
    let len = u32_at(b, 0x10) as usize;
    if len != b.len() {
        return Err(bad(
            "record length",
            format!("{len}, but the attribute has {} bytes", b.len()),
        ));
    }
    let stored = u32_at(b, 0x0c);
    let crc = record_checksum(b);
    if stored != crc {
        return Err(bad(
            "record checksum",
            format!("stored {stored:#010x}, computed {crc:#010x}"),
        ));
    }
    let version = u32_at(b, 0x08);
    if version > VERSION {
        return Err(FormatError {
            unsupported: true,
            field: "record version".into(),
            reason: format!(
                "format version {version} is newer than this build reads ({VERSION}); upgrade budge"
            ),
        });
    }
    if version == 0 {
        return Err(bad("record version", "format version 0 does not exist"));
    }
    let n = u32_at(b, 0x14) as usize;
    if !(1..=MAX_RECORD_CHANGES).contains(&n) || len != RECORD_FIXED_LEN + 24 * n {
        return Err(bad(
            "record change_count",
            format!("{n} changes in {len} bytes"),
        ));
    }
    let kind = match u32_at(b, 0x28) {
        0 => None,
        1 => Some(IntentKind::Insert),
        2 => Some(IntentKind::Collapse),
        k => return Err(bad("record intent kind", format!("{k} is not 0, 1 or 2"))),
    };
    if kind.is_none() && b[0x2c..0x50].iter().any(|&x| x != 0) {
        return Err(bad(
            "record intent",
            "no intent, but its fields are not zero",
        ));
    }
    if u32_at(b, 0x34) != 0 {
        return Err(bad("record reserved", "bytes 0x34..0x38 are not zero"));
    }
    let generation = u64_at(b, 0x18);
    let base = u64_at(b, 0x20);
    if base == 0 || generation <= base {
        return Err(bad(
            "record generation",
            format!("{generation} is not newer than its base {base}"),
        ));
    }
    let mut changes: Vec<RecordChange> = Vec::with_capacity(n);
    for k in 0..n {
        let o = RECORD_FIXED_LEN + 24 * k;
        if u32_at(b, o + 4) != 0 {
            return Err(bad(
                format!("record change {k}"),
                "reserved bytes are not zero",
            ));
        }
        let c = RecordChange {
            index: u32_at(b, o),
            len: u64_at(b, o + 8),
            capacity: u64_at(b, o + 16),
        };
        if changes.last().is_some_and(|p| p.index >= c.index) {
            return Err(bad(
                format!("record change {k}"),
                "region indexes are not ascending",
            ));
        }
        changes.push(c);
    }
    Ok(Record {
        generation,
        base,
        intent: kind.map(|kind| Intent {
            kind,
            method: Method::Native,
            offset: u64_at(b, 0x38),
            len: u64_at(b, 0x40),
            old_size: u64_at(b, 0x48),
            journal_count: u32_at(b, 0x2c),
            journal_crc: u32_at(b, 0x30),
        }),
        changes,
    })
}

/// The table a commit record describes: `base` with the changes applied,
/// repacked, with the record's generation and intent, validated as a slot.
///
/// # Errors
/// A [`FormatError`] if the generations do not match, an index is out of
/// range, or the result is not a valid table (e.g. the intent does not lead
/// to its end).
pub fn apply_record(base: &Header, r: &Record) -> Result<Header, FormatError> {
    if r.base != base.generation {
        return Err(bad(
            "record base",
            format!("generation {} but the slot has {}", r.base, base.generation),
        ));
    }
    let mut h = base.clone();
    for c in &r.changes {
        let e = h.regions.get_mut(c.index as usize).ok_or_else(|| {
            bad(
                "record change",
                format!(
                    "region index {} past the {} regions",
                    c.index,
                    base.regions.len()
                ),
            )
        })?;
        e.len = c.len;
        e.capacity = c.capacity;
    }
    h.repack();
    h.generation = r.generation;
    h.intent = r.intent;
    // Every invariant a slot has (lengths, alignment, the intent's sizes).
    decode(&encode(&h)).map_err(|e| FormatError {
        field: format!("record: {}", e.field),
        ..e
    })
}

/// The changes that turn `base` into `next`, if only lengths and
/// capacities differ and there are at most [`MAX_RECORD_CHANGES`] of them.
pub fn record_changes(base: &Header, next: &Header) -> Option<Vec<RecordChange>> {
    if base.regions.len() != next.regions.len() || base.align != next.align {
        return None;
    }
    let mut out = Vec::new();
    for (k, (a, b)) in base.regions.iter().zip(&next.regions).enumerate() {
        if a.name != b.name || a.elem_size != b.elem_size {
            return None;
        }
        if a.len != b.len || a.capacity != b.capacity {
            out.push(RecordChange {
                index: k as u32,
                len: b.len,
                capacity: b.capacity,
            });
        }
    }
    (!out.is_empty() && out.len() <= MAX_RECORD_CHANGES).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        let mut h = Header::new(4096);
        h.generation = 7;
        h.regions = vec![
            Entry {
                name: "a".into(),
                offset: 0,
                len: 10,
                capacity: 4096,
                elem_size: 0,
            },
            Entry {
                name: "idx".into(),
                offset: 0,
                len: 16,
                capacity: 8192,
                elem_size: 8,
            },
        ];
        h.repack();
        h
    }

    #[test]
    fn roundtrip() {
        let h = sample();
        let b = encode(&h);
        assert_eq!(decode(&b).unwrap(), h);
        let mut h2 = h.clone();
        h2.intent = Some(Intent {
            kind: IntentKind::Insert,
            method: Method::Native,
            offset: DATA_START,
            len: 4096,
            old_size: DATA_START + 8192,
            journal_count: 0,
            journal_crc: 0,
        });
        assert_eq!(decode(&encode(&h2)).unwrap(), h2);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let b = encode(&sample());
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(decode(&c).is_err(), "bit {i} flip went unnoticed");
        }
    }

    #[test]
    fn future_version_is_unsupported() {
        let mut b = encode(&sample());
        put32(&mut b, 8, 2);
        let body_len = u32_at(&b, 0x10) as usize;
        let crc = checksum(&b, body_len);
        put32(&mut b, 0x0c, crc);
        let e = decode(&b).unwrap_err();
        assert!(e.unsupported && e.field == "version", "{e}");
    }

    #[test]
    fn truncated_slot_is_corrupted() {
        let b = encode(&sample());
        for n in [0, 7, 64, b.len() - 1] {
            let e = decode(&b[..n]).unwrap_err();
            assert!(!e.unsupported, "{e}");
        }
    }

    #[test]
    fn duplicate_names_and_bad_layout_are_named() {
        let mut h = sample();
        h.regions[1].name = "a".into();
        let e = decode(&encode(&h)).unwrap_err();
        assert!(
            e.field.contains("name") && e.reason.contains("duplicate"),
            "{e}"
        );
        let mut h = sample();
        h.regions[1].offset += 4096;
        let e = decode(&encode(&h)).unwrap_err();
        assert!(e.field.contains("offset"), "{e}");
    }

    fn sample_record(h: &Header) -> Record {
        Record {
            generation: h.generation + 3,
            base: h.generation,
            intent: Some(Intent {
                kind: IntentKind::Insert,
                method: Method::Native,
                offset: DATA_START + 4096,
                len: 8192,
                old_size: h.data_end(),
                journal_count: 3,
                journal_crc: 0xdead_beef,
            }),
            changes: vec![RecordChange {
                index: 0,
                len: 9000,
                capacity: 12288,
            }],
        }
    }

    #[test]
    fn record_roundtrip_apply_and_damage() {
        let h = sample();
        let r = sample_record(&h);
        let b = encode_record(&r);
        assert!(b.len() <= 0x50 + 24 * MAX_RECORD_CHANGES);
        assert_eq!(decode_record(&b).unwrap(), r);
        let t = apply_record(&h, &r).unwrap();
        assert_eq!(t.generation, r.generation);
        assert_eq!(t.regions[0].capacity, 12288);
        assert_eq!(t.regions[1].offset, DATA_START + 12288);
        assert_eq!(t.intent, r.intent);
        let done = Record {
            intent: None,
            ..r.clone()
        };
        assert_eq!(decode_record(&encode_record(&done)).unwrap(), done);
        assert_eq!(apply_record(&h, &done).unwrap().intent, None);
        assert_eq!(record_changes(&h, &t), Some(r.changes.clone()));
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(decode_record(&c).is_err(), "bit {i} flip went unnoticed");
        }
        for n in 0..b.len() {
            assert!(decode_record(&b[..n]).is_err());
        }
        // Against the wrong base, or leading to the wrong size: refused.
        let mut other = h.clone();
        other.generation += 1;
        assert!(apply_record(&other, &r).unwrap_err().field.contains("base"));
        let mut bad_size = r.clone();
        bad_size.intent.as_mut().unwrap().old_size += 4096;
        assert!(apply_record(&h, &bad_size).is_err());
        let mut bad_index = r;
        bad_index.changes[0].index = 9;
        assert!(apply_record(&h, &bad_index).is_err());
    }

    #[test]
    fn journal_roundtrip_and_crc() {
        let i = Intent {
            kind: IntentKind::Insert,
            method: Method::Native,
            offset: DATA_START,
            len: 4096,
            old_size: DATA_START + 65536,
            journal_count: 2,
            journal_crc: 0,
        };
        let j = vec![
            JournalEntry {
                logical: DATA_START,
                physical: 1 << 30,
                len: 4096,
            },
            JournalEntry {
                logical: DATA_START + 8192,
                physical: 1 << 31,
                len: 8192,
            },
        ];
        let (b, crc) = encode_journal(&j);
        let i = Intent {
            journal_crc: crc,
            ..i
        };
        assert_eq!(decode_journal(&b, &i).unwrap(), j);
        let mut c = b.clone();
        c[3] ^= 1;
        assert!(decode_journal(&c, &i).is_err());
    }
}
