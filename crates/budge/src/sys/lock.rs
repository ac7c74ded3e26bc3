//! File locks: `flock` for the one writer (its holder can be named from
//! `/proc/locks`) and open-file-description byte-range locks (`F_OFD_SETLK`)
//! for the readers-versus-layout-change lock. The two kinds never conflict
//! with each other on Linux, so one file carries both.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Shared or exclusive.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Any number of holders (`F_RDLCK`).
    Shared,
    /// One holder (`F_WRLCK`).
    Exclusive,
    /// Release (`F_UNLCK`).
    Unlock,
}

/// `fcntl(fd, F_OFD_SETLK or F_OFD_SETLKW, {type, SEEK_SET, start, len})`:
/// an open-file-description lock on a byte range, released when the last
/// descriptor sharing the description is closed (unlike classic POSIX locks,
/// not when any descriptor of the process for the file is closed).
///
/// # Errors
/// `EAGAIN` when `wait` is false and a conflicting lock is held; `EINTR`.
///
/// # References
/// - <https://man7.org/linux/man-pages/man2/fcntl.2.html> (Open file description locks)
#[doc(alias = "F_OFD_SETLK")]
pub fn ofd_lock<Fd: AsFd>(
    fd: Fd,
    start: u64,
    len: u64,
    kind: LockKind,
    wait: bool,
) -> io::Result<()> {
    let l_type = match kind {
        LockKind::Shared => libc::F_RDLCK,
        LockKind::Exclusive => libc::F_WRLCK,
        LockKind::Unlock => libc::F_UNLCK,
    };
    let start = i64::try_from(start).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `flock` is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl.l_pid = 0; // required by F_OFD_* (EINVAL otherwise)
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: `fd` is a live descriptor borrowed for the call, and `fl` is a
    // properly initialised `struct flock` the kernel only reads.
    let rc = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), cmd, &fl as *const libc::flock) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The process holding a `flock` lock on the file `(dev, ino)`, as
/// `(pid, command name)`, read from `/proc/locks`. `None` if no flock lock is
/// listed (or procfs is not mounted).
pub fn flock_holder(dev: u64, ino: u64) -> Option<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    let suffix = format!(":{ino}");
    let comm = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default()
    };
    // Whether `pid` has a descriptor open on (dev, ino): needed where
    // /proc/locks shows the superblock's device, not st_dev (btrfs).
    let has_open = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
            })
        })
    };
    let mut candidates = Vec::new();
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 10876 fe:00:10010634 0 EOF"
        let mut f = line.split_whitespace();
        if f.nth(1) != Some("FLOCK") {
            continue;
        }
        let mut rest = f.skip(2);
        let Some(pid) = rest.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        match rest.next() {
            Some(id) if id == want => return Some((pid, comm(pid))),
            Some(id) if id.ends_with(&suffix) => candidates.push(pid),
            _ => {}
        }
    }
    candidates
        .into_iter()
        .find(|&pid| has_open(pid))
        .map(|pid| (pid, comm(pid)))
}
