//! The only layer that talks to the kernel: one safe wrapper per system call
//! or ioctl, and the capability [`probe`]. Nothing here decides anything; the
//! strategies in [`crate::shift`] and [`crate::copy`] do.
//!
//! Wrappers return [`std::io::Result`]; callers add the operation and path.

pub mod ioctl;
pub mod lock;
pub mod meta;
pub mod probe;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{FallocateFlags, Mode, OFlags, SeekFrom};
use rustix::io::Errno;

pub use ioctl::{
    btrfs_commit_transaction, btrfs_defrag_range, btrfs_extent_refs, btrfs_subvolume_id, cow_attrs,
    cow_extent_size_hint, ext4_move_ext, ficlonerange, fideduperange, fiemap, fs_shutdown, is_xfs,
    set_cow_attrs, set_cow_extent_size_hint, xfs_ag_bytes, xfs_exchange_range, xfs_has_rmapbt,
    xfs_swapext, BtrfsExtentRef, CowAttrs, Dedupe, RawExtent, ShutdownMode,
    BTRFS_DEFRAG_RANGE_START_IO, FIEMAP_FLAG_SYNC,
};

/// The `fallocate(2)` modes budge uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Falloc {
    /// Mode 0: allocate blocks, extending the file size if needed.
    Allocate,
    /// `FALLOC_FL_KEEP_SIZE`: allocate without changing the size.
    AllocateKeepSize,
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: deallocate, reads as zeros.
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE`: make the range read as zeros, keeping it allocated.
    ZeroRange,
    /// `FALLOC_FL_INSERT_RANGE`: insert a hole, shifting later data up.
    InsertRange,
    /// `FALLOC_FL_COLLAPSE_RANGE`: remove the range, shifting later data down.
    CollapseRange,
    /// `FALLOC_FL_UNSHARE_RANGE | FALLOC_FL_KEEP_SIZE`: give the range
    /// blocks of its own where they are shared (copy-on-write through the
    /// page cache), never changing the size (without `KEEP_SIZE` XFS grows
    /// a file truncated meanwhile back to the range's end).
    UnshareRange,
}

impl Falloc {
    /// The flag's name as in the kernel headers, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Falloc::Allocate => "fallocate",
            Falloc::AllocateKeepSize => "fallocate(KEEP_SIZE)",
            Falloc::PunchHole => "fallocate(PUNCH_HOLE)",
            Falloc::ZeroRange => "fallocate(ZERO_RANGE)",
            Falloc::InsertRange => "fallocate(INSERT_RANGE)",
            Falloc::CollapseRange => "fallocate(COLLAPSE_RANGE)",
            Falloc::UnshareRange => "fallocate(UNSHARE_RANGE|KEEP_SIZE)",
        }
    }

    fn flags(self) -> FallocateFlags {
        match self {
            Falloc::Allocate => FallocateFlags::empty(),
            Falloc::AllocateKeepSize => FallocateFlags::KEEP_SIZE,
            Falloc::PunchHole => FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            Falloc::ZeroRange => FallocateFlags::ZERO_RANGE,
            Falloc::InsertRange => FallocateFlags::INSERT_RANGE,
            Falloc::CollapseRange => FallocateFlags::COLLAPSE_RANGE,
            Falloc::UnshareRange => FallocateFlags::UNSHARE_RANGE | FallocateFlags::KEEP_SIZE,
        }
    }
}

/// `fallocate(fd, mode, offset, len)`.
///
/// # Errors
/// `EOPNOTSUPP` where the filesystem lacks the mode, `EINVAL` for
/// misaligned insert/collapse or a range reaching EOF, `ENOSPC`.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/fallocate.2.html>
pub fn fallocate<Fd: AsFd>(fd: Fd, mode: Falloc, offset: u64, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(fd, mode.flags(), offset, len).map_err(Into::into)
}

/// Set once the kernel says `copy_file_range` does not exist (ENOSYS or
/// EPERM from a seccomp filter), so later calls skip it.
static NO_COPY_FILE_RANGE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `copy_file_range(src, &src_off, dst, &dst_off, len, 0)`: one call; may
/// return less than `len` (XFS and btrfs do for unaligned tails), 0 at EOF.
///
/// # Errors
/// `EXDEV`, `EINVAL` for overlapping same-file ranges, `ENOSYS`/`EPERM`
/// where unavailable (remembered process-wide).
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/copy_file_range.2.html>
pub fn copy_file_range<S: AsFd, D: AsFd>(
    src: S,
    src_off: u64,
    dst: D,
    dst_off: u64,
    len: usize,
) -> io::Result<usize> {
    use std::sync::atomic::Ordering;
    if NO_COPY_FILE_RANGE.load(Ordering::Relaxed) {
        return Err(Errno::NOSYS.into());
    }
    let (mut s, mut d) = (src_off, dst_off);
    match rustix::fs::copy_file_range(src, Some(&mut s), dst, Some(&mut d), len) {
        Err(e) if e == Errno::NOSYS || e == Errno::PERM => {
            NO_COPY_FILE_RANGE.store(true, Ordering::Relaxed);
            Err(e.into())
        }
        r => r.map_err(Into::into),
    }
}

/// `ioctl(dst, FICLONE, src)`: make all of `dst` share `src`'s blocks.
///
/// # Errors
/// `EOPNOTSUPP` without reflinks, `EXDEV` across filesystems.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/ioctl_ficlone.2.html>
#[doc(alias = "FICLONE")]
pub fn ficlone<D: AsFd, S: AsFd>(dst: D, src: S) -> io::Result<()> {
    rustix::fs::ioctl_ficlone(dst, src).map_err(Into::into)
}

/// `lseek(fd, offset, SEEK_DATA)`: the next data at or after `offset`, or
/// `None` when there is none before EOF (ENXIO).
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/lseek.2.html>
#[doc(alias = "SEEK_DATA")]
pub fn seek_data<Fd: AsFd>(fd: Fd, offset: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(fd, SeekFrom::Data(offset)) {
        Ok(o) => Ok(Some(o)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `lseek(fd, offset, SEEK_HOLE)`: the next hole at or after `offset` (EOF
/// counts as a hole).
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/lseek.2.html>
#[doc(alias = "SEEK_HOLE")]
pub fn seek_hole<Fd: AsFd>(fd: Fd, offset: u64) -> io::Result<u64> {
    rustix::fs::seek(fd, SeekFrom::Hole(offset)).map_err(Into::into)
}

/// `open(dir, O_TMPFILE | O_RDWR, 0600)`: an unnamed file on `dir`'s filesystem.
///
/// # Errors
/// `EOPNOTSUPP`/`EISDIR` where the filesystem has no O_TMPFILE, `EACCES`
/// without write permission on `dir`.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/open.2.html>
#[doc(alias = "O_TMPFILE")]
pub fn open_tmpfile(dir: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// `linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, path, AT_SYMLINK_FOLLOW)`:
/// give an O_TMPFILE file a name.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/open.2.html> (O_TMPFILE)
pub fn link_tmpfile(file: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc.as_str(),
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(Into::into)
}

/// `renameat2(a, b, RENAME_EXCHANGE)`: atomically swap two paths.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/rename.2.html>
#[doc(alias = "RENAME_EXCHANGE")]
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(Into::into)
}

/// `ftruncate(fd, size)`.
pub fn ftruncate<Fd: AsFd>(fd: Fd, size: u64) -> io::Result<()> {
    rustix::fs::ftruncate(fd, size).map_err(Into::into)
}

/// `fsync(fd)`.
pub fn fsync<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    rustix::fs::fsync(fd).map_err(Into::into)
}

/// Turns `O_DIRECT` on or off for `fd` (`fcntl(F_SETFL)`).
///
/// # Errors
/// `EINVAL` where the filesystem has no direct I/O.
pub fn set_direct<Fd: AsFd>(fd: Fd, on: bool) -> io::Result<()> {
    let fl = rustix::fs::fcntl_getfl(&fd)?;
    let fl = if on {
        fl | OFlags::DIRECT
    } else {
        fl - OFlags::DIRECT
    };
    rustix::fs::fcntl_setfl(fd, fl).map_err(Into::into)
}

/// Starts writeback of `[offset, offset+len)` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the device works on it while
/// the caller goes on. Durability needs a later wait or fsync.
pub fn start_write_back<Fd: AsFd>(fd: Fd, offset: u64, len: u64) -> io::Result<()> {
    let inval = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let off = i64::try_from(offset).map_err(inval)?;
    let n = i64::try_from(len).map_err(inval)?;
    sync_file_range(fd.as_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE)
}

/// Writes back every dirty page of `fd` and waits for the writes to
/// complete, without a journal commit or a device cache flush:
/// `sync_file_range(fd, 0, 0, WAIT_BEFORE | WRITE | WAIT_AFTER)`. Not
/// durable by itself.
///
/// # Errors
/// `EIO` from writeback; `ESPIPE` for a pipe.
pub fn write_back<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    sync_file_range(fd.as_fd(), 0, 0, flags)
}

#[allow(unsafe_code)]
fn sync_file_range(fd: BorrowedFd<'_>, offset: i64, len: i64, flags: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range takes no pointers; the descriptor is borrowed,
    // so it stays open for the call.
    let r = unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `pread` until `buf` is full or EOF (retrying `EINTR`); the bytes read.
///
/// # Errors
/// From `pread`.
pub fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The page size (from the aux vector; no system call).
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// `fdatasync(fd)`: file data and the metadata needed to read it back.
pub fn fdatasync<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    rustix::fs::fdatasync(fd).map_err(Into::into)
}

/// `posix_fadvise(fd, offset, len, POSIX_FADV_DONTNEED)`: drop clean cached pages.
pub fn fadvise_dontneed<Fd: AsFd>(fd: Fd, offset: u64, len: u64) -> io::Result<()> {
    let len = std::num::NonZeroU64::new(len);
    rustix::fs::fadvise(fd, offset, len, rustix::fs::Advice::DontNeed).map_err(Into::into)
}

/// What `fstat` says about a descriptor that budge needs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// `st_size`.
    pub size: u64,
    /// `S_ISREG`.
    pub regular: bool,
    /// `st_dev`: identifies the filesystem.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// Opened with read access.
    pub readable: bool,
    /// Opened with write access.
    pub writable: bool,
    /// `O_APPEND` is set (fallocate shifts refuse it).
    pub append: bool,
}

/// `fstat(fd)` and `fcntl(fd, F_GETFL)`.
pub fn file_info<Fd: AsFd>(fd: Fd) -> io::Result<FileInfo> {
    let fd = fd.as_fd();
    let st = rustix::fs::fstat(fd)?;
    let fl = rustix::fs::fcntl_getfl(fd)?;
    let acc = fl & OFlags::RWMODE;
    Ok(FileInfo {
        size: u64::try_from(st.st_size).unwrap_or(0),
        regular: rustix::fs::FileType::from_raw_mode(st.st_mode)
            == rustix::fs::FileType::RegularFile,
        dev: st.st_dev,
        ino: st.st_ino,
        readable: acc == OFlags::RDONLY || acc == OFlags::RDWR,
        writable: acc == OFlags::WRONLY || acc == OFlags::RDWR,
        append: fl.contains(OFlags::APPEND),
    })
}

/// The filesystem types budge knows, from `statfs.f_type`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// XFS.
    Xfs,
    /// btrfs.
    Btrfs,
    /// ext4 (and ext2/ext3, which share the magic).
    Ext4,
    /// tmpfs.
    Tmpfs,
    /// Anything else, with its magic number.
    Other(u64),
}

impl FsKind {
    fn from_magic(magic: u64) -> FsKind {
        match magic {
            0x5846_5342 => FsKind::Xfs,
            0x9123_683E => FsKind::Btrfs,
            0xEF53 => FsKind::Ext4,
            0x0102_1994 => FsKind::Tmpfs,
            m => FsKind::Other(m),
        }
    }

    /// A short lowercase name: `xfs`, `btrfs`, `ext4`, `tmpfs`, `0x…`.
    pub fn name(self) -> String {
        match self {
            FsKind::Xfs => "xfs".into(),
            FsKind::Btrfs => "btrfs".into(),
            FsKind::Ext4 => "ext4".into(),
            FsKind::Tmpfs => "tmpfs".into(),
            FsKind::Other(m) => format!("{m:#x}"),
        }
    }

    /// The largest file size the filesystem allows with `block_size` blocks.
    pub fn max_file_size(self, block_size: u64) -> u64 {
        match self {
            // ext4 extent files: 2^32 blocks.
            FsKind::Ext4 => block_size
                .saturating_mul(1 << 32)
                .min(crate::range::MAX_LFS_FILESIZE),
            _ => crate::range::MAX_LFS_FILESIZE,
        }
    }
}

/// What `fstatfs` and `fstat` say about the filesystem holding a file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FsInfo {
    /// The filesystem type.
    pub kind: FsKind,
    /// `f_bsize`: the block size.
    pub block_size: u64,
    /// Total size in bytes (`f_blocks * f_frsize`).
    pub total_bytes: u64,
    /// Bytes available to unprivileged users (`f_bavail * f_frsize`).
    pub avail_bytes: u64,
    /// `st_dev` of the file: the key for per-filesystem caches.
    pub dev: u64,
}

/// `fstatfs(fd)` plus `fstat(fd).st_dev`.
pub fn fs_info<Fd: AsFd>(fd: Fd) -> io::Result<FsInfo> {
    let fd = fd.as_fd();
    let sfs = rustix::fs::fstatfs(fd)?;
    let st = rustix::fs::fstat(fd)?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let (bsize, frsize) = (sfs.f_bsize as u64, sfs.f_frsize as u64);
    let frsize = if frsize == 0 { bsize } else { frsize };
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    Ok(FsInfo {
        kind: FsKind::from_magic(sfs.f_type as u64),
        block_size: bsize,
        total_bytes: (sfs.f_blocks as u64).saturating_mul(frsize),
        avail_bytes: (sfs.f_bavail as u64).saturating_mul(frsize),
        dev: st.st_dev,
    })
}

/// `flock(fd, LOCK_EX | LOCK_NB)` or `LOCK_SH | LOCK_NB`.
///
/// # Errors
/// `EWOULDBLOCK` when another open file description holds a conflicting lock.
pub fn try_lock<Fd: AsFd>(fd: Fd, exclusive: bool) -> io::Result<()> {
    use rustix::fs::FlockOperation as Op;
    let op = if exclusive {
        Op::NonBlockingLockExclusive
    } else {
        Op::NonBlockingLockShared
    };
    rustix::fs::flock(fd, op).map_err(Into::into)
}

/// `flock(fd, LOCK_UN)`: releases this open file description's lock.
///
/// # Errors
/// `EBADF` for a closed descriptor.
pub fn unlock<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    rustix::fs::flock(fd, rustix::fs::FlockOperation::Unlock).map_err(Into::into)
}

/// `futimens(fd, [UTIME_OMIT, mtime])`: sets the modification time back
/// (used to leave a file exactly as it was after a failed operation).
///
/// # Errors
/// `EPERM` unless the caller owns the file.
pub fn set_mtime<Fd: AsFd>(fd: Fd, sec: i64, nsec: u32) -> io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: sec,
            tv_nsec: i64::from(nsec) as _,
        },
    };
    rustix::fs::futimens(fd, &ts).map_err(Into::into)
}
