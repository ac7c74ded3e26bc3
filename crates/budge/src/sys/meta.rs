//! File identity and metadata: what a snapshot records of a file and what a
//! commit carries over to the file that replaces it (mode, owner, extended
//! attributes), plus sealed memory files for snapshots that cannot live on
//! the file's own filesystem.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;

use rustix::fs::{Gid, MemfdFlags, Mode, SealFlags, Uid, XattrFlags};

/// Everything `fstat` says that tells one version of a file from another:
/// a write, truncate, chmod or replacement changes at least one field.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// `st_ctime` in nanoseconds since the epoch (changes on every write,
    /// truncate and metadata change, and cannot be set by users).
    pub ctime_ns: i128,
}

/// Mode, owner and hard-link count of a file (`fstat`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// `st_uid`.
    pub uid: u32,
    /// `st_gid`.
    pub gid: u32,
    /// `st_nlink`.
    pub nlink: u64,
}

fn ns(sec: i64, nsec: i64) -> i128 {
    i128::from(sec) * 1_000_000_000 + i128::from(nsec)
}

/// `fstat(fd)`: the file's [`Identity`] and [`Owner`].
pub fn identity<Fd: AsFd>(fd: Fd) -> io::Result<(Identity, Owner)> {
    let st = rustix::fs::fstat(fd)?;
    #[allow(clippy::unnecessary_cast)] // field types differ between targets
    let id = Identity {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
    };
    #[allow(clippy::unnecessary_cast)]
    let owner = Owner {
        mode: st.st_mode as u32 & 0o7777,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        nlink: st.st_nlink as u64,
    };
    Ok((id, owner))
}

/// `fchmod(fd, mode)`.
pub fn fchmod<Fd: AsFd>(fd: Fd, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(Into::into)
}

/// `fchown(fd, uid, gid)`.
pub fn fchown<Fd: AsFd>(fd: Fd, uid: u32, gid: u32) -> io::Result<()> {
    rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(Into::into)
}

/// The names of the file's extended attributes (`flistxattr`). A filesystem
/// without xattrs gives an empty list.
pub fn xattr_names<Fd: AsFd>(fd: Fd) -> io::Result<Vec<OsString>> {
    let fd = fd.as_fd();
    loop {
        let size = match rustix::fs::flistxattr_query(fd) {
            Ok(n) => n,
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::flistxattr(fd, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| OsString::from_vec(s.to_vec()))
                    .collect());
            }
            // The list grew between the two calls: ask again.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The value of one extended attribute (`fgetxattr`).
pub fn xattr_get<Fd: AsFd>(fd: Fd, name: &OsString) -> io::Result<Vec<u8>> {
    let fd = fd.as_fd();
    loop {
        let size = rustix::fs::fgetxattr_query(fd, name.as_os_str())?;
        let mut buf = vec![0u8; size];
        match rustix::fs::fgetxattr(fd, name.as_os_str(), &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets one extended attribute (`fsetxattr`, create or replace).
pub fn xattr_set<Fd: AsFd>(fd: Fd, name: impl AsRef<OsStr>, value: &[u8]) -> io::Result<()> {
    rustix::fs::fsetxattr(fd, name.as_ref(), value, XattrFlags::empty()).map_err(Into::into)
}

/// The value of one extended attribute, `None` if the file has none of that
/// name or the filesystem has no extended attributes.
pub fn xattr_get_opt<Fd: AsFd>(fd: Fd, name: &str) -> io::Result<Option<Vec<u8>>> {
    match xattr_get(fd, &OsString::from(name)) {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if [rustix::io::Errno::NODATA, rustix::io::Errno::OPNOTSUPP]
                .iter()
                .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Removes one extended attribute (`fremovexattr`); a missing one is fine.
pub fn xattr_remove<Fd: AsFd>(fd: Fd, name: &str) -> io::Result<()> {
    match rustix::fs::fremovexattr(fd, name) {
        Ok(()) | Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`: an anonymous file
/// in memory (swap-backed), reachable by no path.
pub fn memfd(name: &str) -> io::Result<File> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    Ok(File::from(fd))
}

/// Seals a memfd against any change of size or content
/// (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL`). Fails with
/// `EBUSY` while a writable shared mapping of it exists.
pub fn seal_readonly<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(
        fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .map_err(Into::into)
}
