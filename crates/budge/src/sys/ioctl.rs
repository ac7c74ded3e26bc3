//! Typed wrappers for the ioctls rustix does not wrap: FICLONERANGE,
//! FIDEDUPERANGE, FIEMAP, EXT4_IOC_MOVE_EXT, BTRFS_IOC_DEFRAG_RANGE,
//! BTRFS_IOC_INO_LOOKUP, BTRFS_IOC_LOGICAL_INO_V2,
//! XFS_IOC_EXCHANGE_RANGE, XFS_IOC_SWAPEXT, XFS_IOC_FSGEOMETRY_V1 and
//! FS_IOC_SHUTDOWN.
//!
//! Each kernel struct is `#[repr(C)]` with the layout from the kernel's uapi
//! headers, checked by a size assertion; each call goes through
//! [`rustix::ioctl::ioctl`] with an [`Ioctl`](rustix::ioctl::Ioctl) pattern
//! whose opcode encodes that struct's size.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};

/// `struct file_clone_range` from `<linux/fs.h>`.
#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}
const _: () = assert!(std::mem::size_of::<FileCloneRange>() == 32);
const FICLONERANGE: Opcode = opcode::write::<FileCloneRange>(0x94, 13);

/// `ioctl(dst, FICLONERANGE, {src, src_offset, len, dst_offset})`: make
/// `dst[dst_offset..+len]` share `src[src_offset..+len]`'s blocks.
///
/// A `len` of 0 means "to the end of `src`". Offsets and length must be
/// multiples of the filesystem block size, except that the range may end at
/// the source's EOF.
///
/// # Errors
/// `EOPNOTSUPP` where the filesystem has no reflinks, `EXDEV` across
/// filesystems, `EINVAL` for misaligned or (same file) overlapping ranges.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/ioctl_ficlonerange.2.html>
#[doc(alias = "FICLONERANGE")]
pub fn ficlonerange<D: AsFd, S: AsFd>(
    dst: D,
    dst_offset: u64,
    src: S,
    src_offset: u64,
    len: u64,
) -> io::Result<()> {
    let arg = FileCloneRange {
        src_fd: i64::from(src.as_fd().as_raw_fd()),
        src_offset,
        src_length: len,
        dest_offset: dst_offset,
    };
    // SAFETY: FICLONERANGE is a write ioctl taking a pointer to
    // `struct file_clone_range`, whose layout `FileCloneRange` reproduces (size
    // asserted above); the kernel only reads it, and `src_fd` is a borrowed,
    // open descriptor for the duration of the call.
    unsafe { ioctl(dst, Setter::<FICLONERANGE, FileCloneRange>::new(arg)) }.map_err(Into::into)
}

/// `struct file_dedupe_range` from `<linux/fs.h>`, without its flexible
/// `info[]` array.
#[repr(C)]
struct FileDedupeRangeHeader {
    src_offset: u64,
    src_length: u64,
    dest_count: u16,
    reserved1: u16,
    reserved2: u32,
}
const _: () = assert!(std::mem::size_of::<FileDedupeRangeHeader>() == 24);

/// `struct file_dedupe_range_info` from `<linux/fs.h>`.
#[repr(C)]
struct FileDedupeRangeInfo {
    dest_fd: i64,
    dest_offset: u64,
    bytes_deduped: u64,
    status: i32,
    reserved: u32,
}
const _: () = assert!(std::mem::size_of::<FileDedupeRangeInfo>() == 32);

/// `struct file_dedupe_range` with exactly one `info[]` element.
#[repr(C)]
struct FileDedupeRangeOne {
    header: FileDedupeRangeHeader,
    info: FileDedupeRangeInfo,
}
const _: () = assert!(std::mem::size_of::<FileDedupeRangeOne>() == 56);
// The opcode encodes the header's size only, as in the kernel's
// `#define FIDEDUPERANGE _IOWR(0x94, 54, struct file_dedupe_range)`.
const FIDEDUPERANGE: Opcode = opcode::read_write::<FileDedupeRangeHeader>(0x94, 54);

/// `FILE_DEDUPE_RANGE_DIFFERS`: the ranges' contents were not equal.
const FILE_DEDUPE_RANGE_DIFFERS: i32 = 1;

/// What one [`fideduperange`] call did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Dedupe {
    /// Bytes of the destination that now share the source's blocks (may be
    /// less than asked: btrfs stops at 16 MiB per call).
    pub bytes_deduped: u64,
    /// The kernel found the contents different and remapped nothing
    /// (`FILE_DEDUPE_RANGE_DIFFERS`).
    pub differs: bool,
}

/// `ioctl(src, FIDEDUPERANGE, {src_offset, len, [{dst, dst_offset}]})`:
/// if `src[src_offset..+len]` and `dst[dst_offset..+len]` hold the same
/// bytes, make the destination share the source's blocks. The kernel locks
/// both inodes, writes back and compares the pages, and remaps only when they
/// are equal, so the destination's content never changes.
///
/// # Errors
/// `EOPNOTSUPP`/`EINVAL` where the filesystem cannot share blocks (ext4,
/// tmpfs), `EXDEV` across filesystems, `EPERM`/`EACCES` when `dst` is not
/// open for writing (and the caller is not its owner), or the negative
/// per-destination status the kernel stores in `info[0].status`.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/ioctl_fideduperange.2.html>
#[doc(alias = "FIDEDUPERANGE")]
pub fn fideduperange<S: AsFd, D: AsFd>(
    src: S,
    src_offset: u64,
    len: u64,
    dst: D,
    dst_offset: u64,
) -> io::Result<Dedupe> {
    let mut arg = FileDedupeRangeOne {
        header: FileDedupeRangeHeader {
            src_offset,
            src_length: len,
            dest_count: 1,
            reserved1: 0,
            reserved2: 0,
        },
        info: FileDedupeRangeInfo {
            dest_fd: i64::from(dst.as_fd().as_raw_fd()),
            dest_offset: dst_offset,
            bytes_deduped: 0,
            status: 0,
            reserved: 0,
        },
    };
    // SAFETY: FIDEDUPERANGE reads a `struct file_dedupe_range` and
    // `dest_count` (= 1) `struct file_dedupe_range_info` elements directly
    // after it, and writes `bytes_deduped` and `status` back into them;
    // `FileDedupeRangeOne` is `repr(C)` with the header first and exactly one
    // info element after it (sizes asserted above). `dest_fd` is an open,
    // borrowed descriptor for the duration of the call.
    unsafe {
        ioctl(
            src,
            Updater::<FIDEDUPERANGE, FileDedupeRangeOne>::new(&mut arg),
        )
    }?;
    match arg.info.status {
        s if s < 0 => Err(io::Error::from_raw_os_error(-s)),
        s => Ok(Dedupe {
            bytes_deduped: arg.info.bytes_deduped,
            differs: s == FILE_DEDUPE_RANGE_DIFFERS,
        }),
    }
}

/// `struct fiemap` header from `<linux/fiemap.h>`.
#[repr(C)]
#[derive(Default)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}
const _: () = assert!(std::mem::size_of::<FiemapHeader>() == 32);

/// `struct fiemap_extent` from `<linux/fiemap.h>`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct FiemapExtentRaw {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<FiemapExtentRaw>() == 56);

const FIEMAP_BATCH: usize = 256;

/// `struct fiemap` followed by room for `FIEMAP_BATCH` extents.
#[repr(C)]
struct FiemapBuf {
    header: FiemapHeader,
    extents: [FiemapExtentRaw; FIEMAP_BATCH],
}
// The opcode encodes the size of the header only, as in the kernel's
// `#define FS_IOC_FIEMAP _IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: Opcode = opcode::read_write::<FiemapHeader>(b'f', 11);

/// Ask the kernel to write back dirty data before mapping.
pub const FIEMAP_FLAG_SYNC: u32 = 0x1;

/// One extent as FIEMAP reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawExtent {
    /// Byte offset in the file.
    pub logical: u64,
    /// Byte offset on the device (0 when unknown).
    pub physical: u64,
    /// Length in bytes.
    pub length: u64,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

/// `ioctl(fd, FS_IOC_FIEMAP, ...)`: every extent overlapping
/// `[start, start+len)`, fetched in batches until the kernel reports the last.
///
/// # Errors
/// `EOPNOTSUPP` where the filesystem has no FIEMAP (tmpfs), `EBADR` for
/// unsupported flags.
///
/// # References
/// - <https://docs.kernel.org/filesystems/fiemap.html>
#[doc(alias = "FS_IOC_FIEMAP")]
pub fn fiemap<Fd: AsFd>(fd: Fd, start: u64, len: u64, flags: u32) -> io::Result<Vec<RawExtent>> {
    let fd = fd.as_fd();
    let end = start.saturating_add(len);
    let mut out = Vec::new();
    let mut at = start;
    let mut buf = Box::new(FiemapBuf {
        header: FiemapHeader::default(),
        extents: [FiemapExtentRaw::default(); FIEMAP_BATCH],
    });
    while at < end {
        buf.header = FiemapHeader {
            fm_start: at,
            fm_length: end - at,
            fm_flags: flags,
            fm_extent_count: FIEMAP_BATCH as u32,
            ..FiemapHeader::default()
        };
        // SAFETY: FS_IOC_FIEMAP reads the header and writes at most
        // `fm_extent_count` (= FIEMAP_BATCH, the array's length) extents after
        // it; `FiemapBuf` is `repr(C)` with the header first and the array
        // directly after it, as in `struct fiemap`.
        unsafe { ioctl(fd, Updater::<FS_IOC_FIEMAP, FiemapBuf>::new(&mut buf)) }?;
        let n = (buf.header.fm_mapped_extents as usize).min(FIEMAP_BATCH);
        if n == 0 {
            break;
        }
        let mut last = false;
        for e in &buf.extents[..n] {
            out.push(RawExtent {
                logical: e.fe_logical,
                physical: e.fe_physical,
                length: e.fe_length,
                flags: e.fe_flags,
            });
            last |= e.fe_flags & crate::extents::flags::LAST != 0;
        }
        let tail = &buf.extents[n - 1];
        let next = tail.fe_logical.saturating_add(tail.fe_length);
        if last || next <= at {
            break;
        }
        at = next;
    }
    Ok(out)
}

/// `struct move_extent` from `<linux/ext4.h>` (`fs/ext4/ext4.h`).
#[repr(C)]
struct MoveExtent {
    reserved: u32,
    donor_fd: u32,
    orig_start: u64,
    donor_start: u64,
    len: u64,
    moved_len: u64,
}
const _: () = assert!(std::mem::size_of::<MoveExtent>() == 40);
const EXT4_IOC_MOVE_EXT: Opcode = opcode::read_write::<MoveExtent>(b'f', 15);

/// `ioctl(orig, EXT4_IOC_MOVE_EXT, {donor, orig_start, donor_start, len})`:
/// exchange the physical blocks of `orig` and `donor` over `len` blocks
/// (units are filesystem blocks), keeping `orig`'s content. Returns the
/// number of blocks moved.
///
/// # Errors
/// `ENOTTY`/`EOPNOTSUPP` outside ext4; `EINVAL` for unallocated donor blocks.
///
/// # References
/// - <https://www.kernel.org/doc/html/latest/filesystems/ext4/> (e4defrag)
#[doc(alias = "EXT4_IOC_MOVE_EXT")]
pub fn ext4_move_ext<O: AsFd, D: AsFd>(
    orig: O,
    donor: D,
    orig_start: u64,
    donor_start: u64,
    len: u64,
) -> io::Result<u64> {
    let mut arg = MoveExtent {
        reserved: 0,
        donor_fd: u32::try_from(donor.as_fd().as_raw_fd())
            .map_err(|_| io::ErrorKind::InvalidInput)?,
        orig_start,
        donor_start,
        len,
        moved_len: 0,
    };
    // SAFETY: EXT4_IOC_MOVE_EXT reads and updates a `struct move_extent`,
    // reproduced by `MoveExtent` (size asserted); `donor_fd` is an open,
    // borrowed descriptor for the duration of the call.
    unsafe {
        ioctl(
            orig,
            Updater::<EXT4_IOC_MOVE_EXT, MoveExtent>::new(&mut arg),
        )
    }?;
    Ok(arg.moved_len)
}

/// `struct btrfs_ioctl_defrag_range_args` from `<linux/btrfs.h>`.
#[repr(C)]
struct BtrfsDefragRangeArgs {
    start: u64,
    len: u64,
    flags: u64,
    extent_thresh: u32,
    compress_type: u32,
    unused: [u32; 4],
}
const _: () = assert!(std::mem::size_of::<BtrfsDefragRangeArgs>() == 48);
const BTRFS_IOC_DEFRAG_RANGE: Opcode = opcode::write::<BtrfsDefragRangeArgs>(0x94, 16);

/// `BTRFS_DEFRAG_RANGE_START_IO`: start writeback of the rewritten range
/// before returning (without it the new extents are only allocated at the
/// next writeback).
pub const BTRFS_DEFRAG_RANGE_START_IO: u64 = 2;

/// `ioctl(fd, BTRFS_IOC_DEFRAG_RANGE, {start, len, flags, extent_thresh})`:
/// btrfs rewrites, through the page cache, the extents of
/// `[start, start+len)` smaller than `extent_thresh` bytes (0: the kernel's
/// default) into new, larger extents. Content is unchanged; reflinked or
/// snapshotted extents are unshared by the rewrite.
///
/// # Errors
/// `ENOTTY` outside btrfs, `EINVAL` for unknown flags, `ENOSPC`.
///
/// # References
/// - <https://btrfs.readthedocs.io/en/latest/btrfs-filesystem.html> (defragment)
/// - `fs/btrfs/ioctl.c`, `btrfs_ioctl_defrag()` in the Linux sources
#[doc(alias = "BTRFS_IOC_DEFRAG_RANGE")]
pub fn btrfs_defrag_range<Fd: AsFd>(
    fd: Fd,
    start: u64,
    len: u64,
    flags: u64,
    extent_thresh: u32,
) -> io::Result<()> {
    let arg = BtrfsDefragRangeArgs {
        start,
        len,
        flags,
        extent_thresh,
        compress_type: 0,
        unused: [0; 4],
    };
    // SAFETY: BTRFS_IOC_DEFRAG_RANGE is a write ioctl reading a
    // `struct btrfs_ioctl_defrag_range_args`, reproduced by
    // `BtrfsDefragRangeArgs` (size asserted); the kernel only reads it.
    unsafe {
        ioctl(
            fd,
            Setter::<BTRFS_IOC_DEFRAG_RANGE, BtrfsDefragRangeArgs>::new(arg),
        )
    }
    .map_err(Into::into)
}

/// `struct btrfs_ioctl_ino_lookup_args` from `<linux/btrfs.h>`.
#[repr(C)]
struct BtrfsInoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}
const _: () = assert!(std::mem::size_of::<BtrfsInoLookupArgs>() == 4096);
const BTRFS_IOC_INO_LOOKUP: Opcode = opcode::read_write::<BtrfsInoLookupArgs>(0x94, 18);
/// The objectid of a subvolume's root directory.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

/// The id of the btrfs subvolume (tree) holding `fd`'s inode:
/// `BTRFS_IOC_INO_LOOKUP` with tree 0 for the subvolume's root directory,
/// which needs no privilege.
///
/// # Errors
/// `ENOTTY` outside btrfs.
///
/// # References
/// - `fs/btrfs/ioctl.c`, `btrfs_ioctl_ino_lookup()` in the Linux sources
#[doc(alias = "BTRFS_IOC_INO_LOOKUP")]
pub fn btrfs_subvolume_id<Fd: AsFd>(fd: Fd) -> io::Result<u64> {
    let mut arg = BtrfsInoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: BTRFS_IOC_INO_LOOKUP reads and updates a
    // `struct btrfs_ioctl_ino_lookup_args`, reproduced by
    // `BtrfsInoLookupArgs` (size asserted), which lives across the call.
    unsafe {
        ioctl(
            fd,
            Updater::<BTRFS_IOC_INO_LOOKUP, BtrfsInoLookupArgs>::new(&mut arg),
        )
    }?;
    Ok(arg.treeid)
}

/// `struct btrfs_ioctl_logical_ino_args` from `<linux/btrfs.h>`.
#[repr(C)]
struct BtrfsLogicalInoArgs {
    logical: u64,
    size: u64,
    reserved: [u64; 3],
    flags: u64,
    inodes: u64,
}
const _: () = assert!(std::mem::size_of::<BtrfsLogicalInoArgs>() == 56);
const BTRFS_IOC_LOGICAL_INO_V2: Opcode = opcode::read_write::<BtrfsLogicalInoArgs>(0x94, 59);
const BTRFS_LOGICAL_INO_ARGS_IGNORE_OFFSET: u64 = 1;

/// One reference to a btrfs data extent: the inode, the file offset the
/// reference starts at, and the subvolume (tree) id.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BtrfsExtentRef {
    /// Inode number within its subvolume.
    pub inode: u64,
    /// File offset of the reference.
    pub offset: u64,
    /// Subvolume (tree) id.
    pub root: u64,
}

/// Every reference to the btrfs data extent holding `logical` (a physical
/// address as FIEMAP reports it on btrfs), from any file in any subvolume:
/// `BTRFS_IOC_LOGICAL_INO_V2` with `IGNORE_OFFSET`. `fd` is any file on the
/// filesystem. The buffer grows to what the kernel says it needs, up to the
/// kernel's limit of 16 MiB; the flag is false if references were still
/// left out.
///
/// # Errors
/// `EPERM` without `CAP_SYS_ADMIN`, `ENOTTY` outside btrfs, `ENOENT` when
/// nothing is at `logical`.
///
/// # References
/// - `fs/btrfs/ioctl.c`, `btrfs_ioctl_logical_to_ino()` in the Linux sources
#[doc(alias = "BTRFS_IOC_LOGICAL_INO_V2")]
pub fn btrfs_extent_refs<Fd: AsFd>(
    fd: Fd,
    logical: u64,
) -> io::Result<(Vec<BtrfsExtentRef>, bool)> {
    const LIMIT: usize = 16 << 20;
    // `struct btrfs_data_container`: four u32 counters (bytes_left,
    // bytes_missing, elem_cnt, elem_missed), then u64 triples.
    let mut bytes = 4096;
    loop {
        let mut buf = vec![0u64; bytes / 8];
        let mut arg = BtrfsLogicalInoArgs {
            logical,
            size: bytes as u64,
            reserved: [0; 3],
            flags: BTRFS_LOGICAL_INO_ARGS_IGNORE_OFFSET,
            inodes: buf.as_mut_ptr() as u64,
        };
        // SAFETY: BTRFS_IOC_LOGICAL_INO_V2 reads and updates a
        // `struct btrfs_ioctl_logical_ino_args`, reproduced by
        // `BtrfsLogicalInoArgs` (size asserted); the kernel writes at most
        // `size` bytes to `inodes`, which points at `buf`, exactly `size`
        // bytes long and alive (not moved) across the call.
        unsafe {
            ioctl(
                fd.as_fd(),
                Updater::<BTRFS_IOC_LOGICAL_INO_V2, BtrfsLogicalInoArgs>::new(&mut arg),
            )
        }?;
        let missing = (buf[0] >> 32) as usize;
        let elem_cnt = (buf[1] & 0xffff_ffff) as usize;
        let elem_missed = (buf[1] >> 32) as usize;
        if elem_missed > 0 && bytes < LIMIT {
            bytes = (bytes + missing.max(4096)).next_multiple_of(8).min(LIMIT);
            continue;
        }
        let n = elem_cnt.min(buf.len() - 2) / 3;
        let refs = buf[2..2 + 3 * n]
            .chunks_exact(3)
            .map(|t| BtrfsExtentRef {
                inode: t[0],
                offset: t[1],
                root: t[2],
            })
            .collect();
        return Ok((refs, elem_missed == 0));
    }
}

const BTRFS_IOC_START_SYNC: Opcode = opcode::read::<u64>(0x94, 24);
const BTRFS_IOC_WAIT_SYNC: Opcode = opcode::write::<u64>(0x94, 22);

/// Commits btrfs's running transaction and waits until it is on disk
/// (`BTRFS_IOC_START_SYNC`, then `BTRFS_IOC_WAIT_SYNC` on its id). Unlike
/// `syncfs` it writes back no file data. Until a transaction commits, the
/// extents it wrote or cloned have no items in the extent tree, so
/// [`btrfs_extent_refs`] answers `ENOENT` for them. `fd` is any file on the
/// filesystem.
///
/// # Errors
/// `ENOTTY` outside btrfs; `EIO` if the commit failed.
///
/// # References
/// - `fs/btrfs/ioctl.c`, `btrfs_ioctl_start_sync()` and
///   `btrfs_ioctl_wait_sync()` in the Linux sources
#[doc(alias = "BTRFS_IOC_START_SYNC")]
pub fn btrfs_commit_transaction<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    let fd = fd.as_fd();
    // SAFETY: BTRFS_IOC_START_SYNC writes one `__u64` (the transaction's
    // id) through its argument, which `Getter` provides and returns.
    let transid = unsafe {
        ioctl(
            fd,
            rustix::ioctl::Getter::<BTRFS_IOC_START_SYNC, u64>::new(),
        )
    }?;
    // SAFETY: BTRFS_IOC_WAIT_SYNC reads one `__u64` through its argument,
    // which `Setter` points at for the duration of the call.
    unsafe { ioctl(fd, Setter::<BTRFS_IOC_WAIT_SYNC, u64>::new(transid)) }?;
    Ok(())
}

/// `struct xfs_exchange_range` from `<xfs/xfs_fs.h>` (Linux 6.10+).
#[repr(C)]
struct XfsExchangeRange {
    file1_fd: i32,
    pad: u32,
    file1_offset: u64,
    file2_offset: u64,
    length: u64,
    flags: u64,
}
const _: () = assert!(std::mem::size_of::<XfsExchangeRange>() == 40);
const XFS_IOC_EXCHANGE_RANGE: Opcode = opcode::write::<XfsExchangeRange>(b'X', 129);

/// `ioctl(file2, XFS_IOC_EXCHANGE_RANGE, {file1, ...})`: atomically exchange
/// `len` bytes of `file1` at `file1_offset` with `file2` at `file2_offset`.
///
/// # Errors
/// `ENOTTY` on kernels or filesystems without it; `EOPNOTSUPP` on XFS
/// filesystems made without the exchange-range feature.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/ioctl_xfs_exchange_range.2.html>
#[doc(alias = "XFS_IOC_EXCHANGE_RANGE")]
pub fn xfs_exchange_range<F1: AsFd, F2: AsFd>(
    file1: F1,
    file1_offset: u64,
    file2: F2,
    file2_offset: u64,
    len: u64,
) -> io::Result<()> {
    let arg = XfsExchangeRange {
        file1_fd: file1.as_fd().as_raw_fd(),
        pad: 0,
        file1_offset,
        file2_offset,
        length: len,
        flags: 0,
    };
    // SAFETY: XFS_IOC_EXCHANGE_RANGE is a write ioctl reading a
    // `struct xfs_exchange_range`, reproduced by `XfsExchangeRange` (size
    // asserted); `file1_fd` is open and borrowed for the call.
    unsafe {
        ioctl(
            file2,
            Setter::<XFS_IOC_EXCHANGE_RANGE, XfsExchangeRange>::new(arg),
        )
    }
    .map_err(Into::into)
}

/// `struct xfs_bstime` from `<xfs/xfs_fs.h>` (64-bit: `long` seconds).
#[repr(C)]
#[derive(Default)]
struct XfsBstime {
    tv_sec: i64,
    tv_nsec: i32,
}

/// `struct xfs_bstat` from `<xfs/xfs_fs.h>`: only the change and modify
/// times are read by `XFS_IOC_SWAPEXT`.
#[repr(C)]
#[derive(Default)]
struct XfsBstat {
    ino: u64,
    mode: u16,
    nlink: u16,
    uid: u32,
    gid: u32,
    rdev: u32,
    blksize: i32,
    size: i64,
    atime: XfsBstime,
    mtime: XfsBstime,
    ctime: XfsBstime,
    blocks: i64,
    xflags: u32,
    extsize: i32,
    extents: i32,
    gen: u32,
    projid_lo: u16,
    forkoff: u16,
    projid_hi: u16,
    sick: u16,
    checked: u16,
    pad: [u8; 2],
    cowextsize: u32,
    dmevmask: u32,
    dmstate: u16,
    aextents: u16,
}
const _: () = assert!(std::mem::size_of::<XfsBstat>() == 136);

/// `struct xfs_swapext` from `<xfs/xfs_fs.h>`.
#[repr(C)]
struct XfsSwapext {
    version: i64,
    fdtarget: i64,
    fdtmp: i64,
    offset: i64,
    length: i64,
    pad: [u8; 16],
    stat: XfsBstat,
}
const _: () = assert!(std::mem::size_of::<XfsSwapext>() == 192);
const XFS_IOC_SWAPEXT: Opcode = opcode::read_write::<XfsSwapext>(b'X', 109);

/// `ioctl(target, XFS_IOC_SWAPEXT, {target, tmp, 0, len, stat})`: exchange
/// all the extents of `target` and `tmp` (both `len` bytes long), the
/// primitive `xfs_fsr` uses. The kernel writes back and drops both files'
/// page caches (so mappings refault from the new blocks), then refuses with
/// `EBUSY` if `target`'s ctime or mtime differ from `times`
/// (`((ctime_sec, ctime_nsec), (mtime_sec, mtime_nsec))`, taken before the
/// copy): a write since then is never swapped away.
///
/// # Errors
/// `ENOTTY`/`EINVAL` outside XFS, `EBUSY` when `target` changed, `EINVAL`
/// when pages stay cached (pinned) or the forks' formats do not allow it,
/// `EFAULT` when `len` is not both files' size.
///
/// # References
/// - `xfs_swap_extents` in the kernel's `fs/xfs/xfs_bmap_util.c`; `xfs_fsr(8)`
#[doc(alias = "XFS_IOC_SWAPEXT")]
pub fn xfs_swapext<T: AsFd, D: AsFd>(
    target: T,
    tmp: D,
    len: u64,
    times: ((i64, u32), (i64, u32)),
) -> io::Result<()> {
    let ((cs, cn), (ms, mn)) = times;
    let nsec = |n: u32| i32::try_from(n).map_err(|_| io::ErrorKind::InvalidInput);
    let mut arg = XfsSwapext {
        version: 0,
        fdtarget: i64::from(target.as_fd().as_raw_fd()),
        fdtmp: i64::from(tmp.as_fd().as_raw_fd()),
        offset: 0,
        length: i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?,
        pad: [0; 16],
        stat: XfsBstat {
            ctime: XfsBstime {
                tv_sec: cs,
                tv_nsec: nsec(cn)?,
            },
            mtime: XfsBstime {
                tv_sec: ms,
                tv_nsec: nsec(mn)?,
            },
            ..XfsBstat::default()
        },
    };
    // SAFETY: XFS_IOC_SWAPEXT reads a `struct xfs_swapext`, reproduced by
    // `XfsSwapext` (size asserted against the uapi layout, 192 bytes);
    // both descriptors are open and borrowed for the call.
    unsafe {
        ioctl(
            target,
            Updater::<XFS_IOC_SWAPEXT, XfsSwapext>::new(&mut arg),
        )
    }
    .map_err(Into::into)
}

/// `struct xfs_fsop_geom_v1` from `<xfs/xfs_fs.h>`.
#[repr(C)]
#[derive(Default)]
struct XfsFsopGeomV1 {
    blocksize: u32,
    rtextsize: u32,
    agblocks: u32,
    agcount: u32,
    logblocks: u32,
    sectsize: u32,
    inodesize: u32,
    imaxpct: u32,
    datablocks: u64,
    rtblocks: u64,
    rtextents: u64,
    logstart: u64,
    uuid: [u8; 16],
    sunit: u32,
    swidth: u32,
    version: i32,
    flags: u32,
    logsectsize: u32,
    rtsectsize: u32,
    dirblocksize: u32,
}
const _: () = assert!(std::mem::size_of::<XfsFsopGeomV1>() == 112);
const XFS_IOC_FSGEOMETRY_V1: Opcode = opcode::read::<XfsFsopGeomV1>(b'X', 100);
/// `XFS_FSOP_GEOM_FLAGS_RMAPBT`: the reverse-mapping btree.
const XFS_FSOP_GEOM_FLAGS_RMAPBT: u32 = 1 << 19;

fn xfs_geometry_v1<Fd: AsFd>(fd: Fd) -> io::Result<XfsFsopGeomV1> {
    // SAFETY: XFS_IOC_FSGEOMETRY_V1 fills a `struct xfs_fsop_geom_v1`,
    // reproduced by `XfsFsopGeomV1` (size asserted, 112 bytes).
    unsafe {
        ioctl(
            fd,
            rustix::ioctl::Getter::<XFS_IOC_FSGEOMETRY_V1, XfsFsopGeomV1>::new(),
        )
    }
    .map_err(Into::into)
}

/// Whether the XFS filesystem holding `fd` has the reverse-mapping btree
/// (`mkfs.xfs -m rmapbt=1`), from `XFS_IOC_FSGEOMETRY_V1`.
///
/// # Errors
/// `ENOTTY` outside XFS.
#[doc(alias = "XFS_IOC_FSGEOMETRY_V1")]
pub fn xfs_has_rmapbt<Fd: AsFd>(fd: Fd) -> io::Result<bool> {
    Ok(xfs_geometry_v1(fd)?.flags & XFS_FSOP_GEOM_FLAGS_RMAPBT != 0)
}

/// Whether `fd` is on XFS: `XFS_IOC_FSGEOMETRY_V1` answers only there.
///
/// For hot paths, instead of [`fs_info`](super::fs_info): XFS's `statfs`
/// kicks its deferred inode inactivation (`xfs_inodegc_push`), whose
/// transactions then join the next log force. A commit that asked
/// `fstatfs` which filesystem it was on paid for freeing earlier inodes in
/// its directory `fsync` (on the test XFS: 0.55 ms became 0.8-1.2 ms); the
/// geometry ioctl reads the superblock and nothing else.
#[doc(alias = "XFS_IOC_FSGEOMETRY_V1")]
pub fn is_xfs<Fd: AsFd>(fd: Fd) -> bool {
    xfs_geometry_v1(fd).is_ok_and(|g| g.blocksize.is_power_of_two())
}

/// The XFS allocation group size in bytes (`agblocks * blocksize`), from
/// `XFS_IOC_FSGEOMETRY_V1`.
///
/// # Errors
/// `ENOTTY` outside XFS.
#[doc(alias = "XFS_IOC_FSGEOMETRY_V1")]
pub fn xfs_ag_bytes<Fd: AsFd>(fd: Fd) -> io::Result<u64> {
    let g = xfs_geometry_v1(fd)?;
    Ok(u64::from(g.agblocks) * u64::from(g.blocksize))
}

/// `struct fsxattr` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct Fsxattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}
const _: () = assert!(std::mem::size_of::<Fsxattr>() == 28);
const FS_IOC_FSGETXATTR: Opcode = opcode::read::<Fsxattr>(b'X', 31);
const FS_IOC_FSSETXATTR: Opcode = opcode::write::<Fsxattr>(b'X', 32);
/// `FS_XFLAG_COWEXTSIZE`: the copy-on-write extent size hint is set.
const FS_XFLAG_COWEXTSIZE: u32 = 0x0001_0000;

fn fsxattr<Fd: AsFd>(fd: Fd) -> io::Result<Fsxattr> {
    // SAFETY: FS_IOC_FSGETXATTR fills a `struct fsxattr`, reproduced by
    // `Fsxattr` (size asserted, 28 bytes).
    unsafe {
        ioctl(
            fd,
            rustix::ioctl::Getter::<FS_IOC_FSGETXATTR, Fsxattr>::new(),
        )
    }
    .map_err(Into::into)
}

/// `FS_XFLAG_PREALLOC`: the file has space preallocated past what it wrote
/// (XFS then keeps blocks past EOF when the file is closed).
const FS_XFLAG_PREALLOC: u32 = 0x0000_0020;

/// The attributes of a file that budge's `cow` relocation changes and puts
/// back (`FS_IOC_FSGETXATTR`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CowAttrs {
    /// The copy-on-write extent size hint in bytes (`FS_XFLAG_COWEXTSIZE`,
    /// XFS with reflink): how much the kernel allocates at once when it
    /// copies a shared block on write. `None`: the file has none of its own.
    pub cow_extent_size: Option<u32>,
    /// `FS_XFLAG_PREALLOC`, which XFS sets on any `fallocate` that may
    /// allocate, `FALLOC_FL_UNSHARE_RANGE` included.
    pub prealloc: bool,
}

/// The file's [`CowAttrs`].
///
/// # Errors
/// `ENOTTY` where the filesystem has no `FS_IOC_FSGETXATTR`.
#[doc(alias = "FS_IOC_FSGETXATTR")]
pub fn cow_attrs<Fd: AsFd>(fd: Fd) -> io::Result<CowAttrs> {
    let a = fsxattr(fd)?;
    Ok(CowAttrs {
        cow_extent_size: (a.xflags & FS_XFLAG_COWEXTSIZE != 0).then_some(a.cowextsize),
        prealloc: a.xflags & FS_XFLAG_PREALLOC != 0,
    })
}

/// Sets the file's [`CowAttrs`], keeping its other attributes. Changes the
/// file's ctime.
///
/// # Errors
/// `EINVAL` for a hint the filesystem refuses (not a multiple of the block
/// size, over half an allocation group, no reflink); `EPERM` for a file the
/// caller does not own.
#[doc(alias = "FS_IOC_FSSETXATTR")]
pub fn set_cow_attrs<Fd: AsFd>(fd: Fd, attrs: CowAttrs) -> io::Result<()> {
    let mut a = fsxattr(&fd)?;
    a.xflags &= !(FS_XFLAG_COWEXTSIZE | FS_XFLAG_PREALLOC);
    a.cowextsize = 0;
    if let Some(bytes) = attrs.cow_extent_size {
        a.xflags |= FS_XFLAG_COWEXTSIZE;
        a.cowextsize = bytes;
    }
    if attrs.prealloc {
        a.xflags |= FS_XFLAG_PREALLOC;
    }
    // SAFETY: FS_IOC_FSSETXATTR reads a `struct fsxattr`, reproduced by
    // `Fsxattr` (size asserted, 28 bytes); the kernel only reads it.
    unsafe { ioctl(fd, Setter::<FS_IOC_FSSETXATTR, Fsxattr>::new(a)) }.map_err(Into::into)
}

/// The file's copy-on-write extent size hint ([`CowAttrs::cow_extent_size`]).
///
/// # Errors
/// As for [`cow_attrs`].
pub fn cow_extent_size_hint<Fd: AsFd>(fd: Fd) -> io::Result<Option<u32>> {
    Ok(cow_attrs(fd)?.cow_extent_size)
}

/// Sets or clears the file's copy-on-write extent size hint, keeping its
/// other attributes.
///
/// # Errors
/// As for [`set_cow_attrs`].
pub fn set_cow_extent_size_hint<Fd: AsFd>(fd: Fd, hint: Option<u32>) -> io::Result<()> {
    let a = cow_attrs(&fd)?;
    set_cow_attrs(
        fd,
        CowAttrs {
            cow_extent_size: hint,
            ..a
        },
    )
}

/// How [`fs_shutdown`] treats the log.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownMode {
    /// Freeze and sync the filesystem first (`FS_GOING_DOWN_FULLSYNC`).
    FullSync = 0,
    /// Flush the log, then shut down (`FS_GOING_DOWN_METAFLUSH`).
    LogFlush = 1,
    /// Shut down at once, dropping the in-memory log (`FS_GOING_DOWN_NOSYNC`):
    /// like pulling the power.
    NoLogFlush = 2,
}

const FS_IOC_SHUTDOWN: Opcode = opcode::read::<u32>(b'X', 125);

/// `ioctl(fd, FS_IOC_SHUTDOWN, mode)`: shut down the filesystem holding `fd`
/// (XFS, ext4, btrfs 6.x), as xfstests does to simulate a crash. Needs
/// `CAP_SYS_ADMIN`. Every later operation on that filesystem fails with
/// `EIO` until it is unmounted and mounted again.
///
/// # Errors
/// `EPERM` without privilege, `ENOTTY` where unsupported.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/ioctl_xfs_goingdown.2.html>
#[doc(alias = "FS_IOC_SHUTDOWN")]
#[doc(alias = "XFS_IOC_GOINGDOWN")]
pub fn fs_shutdown<Fd: AsFd>(fd: Fd, mode: ShutdownMode) -> io::Result<()> {
    // SAFETY: FS_IOC_SHUTDOWN takes a pointer to a `__u32` that the kernel
    // reads with get_user (the `_IOR` in its definition notwithstanding);
    // `Setter` passes a pointer to a live `u32`.
    unsafe { ioctl(fd, Setter::<FS_IOC_SHUTDOWN, u32>::new(mode as u32)) }.map_err(Into::into)
}
