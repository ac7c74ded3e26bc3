//! The capability probe: what works on the filesystem holding a directory,
//! found by trying each real operation on temporary files there and checking
//! the resulting bytes (an errno alone is not trusted: seccomp filters and FUSE
//! servers can return success for calls that did nothing, or fail calls that
//! would work). Results are cached per filesystem (`st_dev`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::{FsInfo, FsKind};
use crate::error::{Error, Result};

/// Whether one capability works, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Support {
    /// The operation did what it should.
    pub works: bool,
    /// Why not, or a qualification of "yes" (e.g. "no holes reported").
    pub note: Option<String>,
}

impl Support {
    fn yes() -> Self {
        Support {
            works: true,
            note: None,
        }
    }
    fn yes_but(note: impl Into<String>) -> Self {
        Support {
            works: true,
            note: Some(note.into()),
        }
    }
    fn no(note: impl Into<String>) -> Self {
        Support {
            works: false,
            note: Some(note.into()),
        }
    }
    fn from_io(err: &io::Error) -> Self {
        Support::no(err.to_string())
    }
    fn check(r: io::Result<bool>) -> Self {
        match r {
            Ok(true) => Support::yes(),
            Ok(false) => Support::no("call succeeded but the file content was wrong"),
            Err(e) => Support::from_io(&e),
        }
    }
}

/// What works on one filesystem. Get it with [`probe`] (cached) or
/// [`probe_uncached`].
#[derive(Clone, Debug)]
#[allow(missing_docs)] // fields are named after the capability they describe
pub struct Capabilities {
    /// The directory that was probed; temporary files for strategies go here.
    pub dir: PathBuf,
    /// Filesystem facts (type, block size, sizes, device).
    pub fs: FsInfo,
    pub insert_range: Support,
    pub collapse_range: Support,
    pub punch_hole: Support,
    pub zero_range: Support,
    pub ficlone: Support,
    pub ficlonerange: Support,
    pub ficlonerange_same_file: Support,
    pub copy_file_range: Support,
    /// copy_file_range shares blocks instead of copying them.
    pub copy_file_range_reflinks: Support,
    pub fiemap: Support,
    pub seek_data: Support,
    pub o_tmpfile: Support,
    pub rename_exchange: Support,
    pub xfs_exchange_range: Support,
    pub ext4_move_ext: Support,
}

impl Capabilities {
    /// Every capability with its display name, in a stable order.
    pub fn entries(&self) -> [(&'static str, &Support); 15] {
        [
            ("insert_range", &self.insert_range),
            ("collapse_range", &self.collapse_range),
            ("punch_hole", &self.punch_hole),
            ("zero_range", &self.zero_range),
            ("ficlone", &self.ficlone),
            ("ficlonerange", &self.ficlonerange),
            ("ficlonerange_same_file", &self.ficlonerange_same_file),
            ("copy_file_range", &self.copy_file_range),
            ("copy_file_range_reflinks", &self.copy_file_range_reflinks),
            ("fiemap", &self.fiemap),
            ("seek_data", &self.seek_data),
            ("o_tmpfile", &self.o_tmpfile),
            ("rename_exchange", &self.rename_exchange),
            ("xfs_exchange_range", &self.xfs_exchange_range),
            ("ext4_move_ext", &self.ext4_move_ext),
        ]
    }

    /// The block size that insert/collapse/clone ranges must be multiples of.
    pub fn block_size(&self) -> u64 {
        self.fs.block_size
    }

    /// A directory on the same filesystem as `file` where temporary files
    /// can go: the file's own directory, else the probed one if it still
    /// exists on the same filesystem.
    pub fn scratch_dir(&self, file: &File) -> Option<PathBuf> {
        let dev = super::file_info(file).ok()?.dev;
        let same_fs = |d: &Path| {
            std::fs::metadata(d).is_ok_and(|m| std::os::unix::fs::MetadataExt::dev(&m) == dev)
        };
        dir_of(file)
            .filter(|d| same_fs(d))
            .or_else(|| same_fs(&self.dir).then(|| self.dir.clone()))
    }

    /// A temporary unnamed file on the filesystem of `file` (O_TMPFILE, or a
    /// named file unlinked at once where O_TMPFILE is missing).
    ///
    /// # Errors
    /// `NotFound` when no directory on that filesystem is known (an unlinked
    /// file whose probed directory is gone), or any error creating the file.
    pub fn temp_file_near(&self, file: &File) -> io::Result<File> {
        let dir = self.scratch_dir(file).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no directory on the file's filesystem for a temporary file",
            )
        })?;
        match super::open_tmpfile(&dir) {
            Ok(f) => Ok(f),
            Err(_) => tempfile::tempfile_in(&dir),
        }
    }
}

/// The cache key: `st_dev` and the filesystem type. A device number alone
/// is reused: unmount one filesystem and mount another on the same (loop)
/// device and it comes back with other capabilities.
type Key = (u64, u64);

fn cache() -> &'static Mutex<HashMap<Key, Arc<Capabilities>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Capabilities>>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
fn fs_type(sfs: &rustix::fs::StatFs) -> u64 {
    sfs.f_type as u64
}

/// The capabilities of the filesystem holding `dir`, probed once per
/// filesystem and then served from a process-wide cache.
///
/// # Errors
/// `NotFound` if `dir` does not exist, `Io` if no temporary file can be
/// created there (e.g. no write permission).
pub fn probe(dir: &Path) -> Result<Arc<Capabilities>> {
    let dev = std::fs::metadata(dir)
        .map_err(|e| Error::os("probe", "stat", e).with_path(dir))
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))?;
    let sfs = rustix::fs::statfs(dir)
        .map_err(|e| Error::os("probe", "statfs", e.into()).with_path(dir))?;
    let key = (dev, fs_type(&sfs));
    if let Some(c) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(Arc::clone(c));
    }
    let caps = Arc::new(probe_uncached(dir)?);
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, Arc::clone(&caps));
    Ok(caps)
}

/// The cached capabilities for the filesystem holding `file`, probing its
/// directory (found through `/proc/self/fd`) the first time.
///
/// # Errors
/// When the file's filesystem was never probed and its directory cannot be
/// found (an unlinked file): call [`probe`] on a directory there first.
pub fn probe_file(file: &File) -> Result<Arc<Capabilities>> {
    let info = super::file_info(file).map_err(|e| Error::os("probe", "fstat", e))?;
    probe_file_on(file, info.dev)
}

/// [`probe_file`] for a caller that already knows the file's `st_dev`
/// (saves an `fstat` on every operation).
pub(crate) fn probe_file_on(file: &File, dev: u64) -> Result<Arc<Capabilities>> {
    let sfs = rustix::fs::fstatfs(file).map_err(|e| Error::os("probe", "fstatfs", e.into()))?;
    if let Some(c) = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(dev, fs_type(&sfs)))
    {
        return Ok(Arc::clone(c));
    }
    let probed = match dir_of(file) {
        Some(dir) => probe(&dir),
        None => Err(Error::new(crate::ErrorKind::NotFound, "probe")
            .with_hint("the file has no directory (unlinked)")),
    };
    match probed {
        Ok(c) => Ok(c),
        // No temporary files possible there (e.g. a directory without write
        // permission): operations on the file itself are still worth trying,
        // since each falls back when the kernel refuses.
        Err(e) => Ok(Arc::new(Capabilities::unprobed(file, &e)?)),
    }
}

impl Capabilities {
    /// Capabilities for a file whose filesystem could not be probed: the
    /// in-place operations are marked "try it" (each strategy falls back on
    /// EOPNOTSUPP), those needing temporary files are marked missing.
    fn unprobed(file: &File, why: &Error) -> Result<Capabilities> {
        let fs = super::fs_info(file).map_err(|e| Error::os("probe", "fstatfs", e))?;
        let dir = dir_of(file).unwrap_or_default();
        let tryit = || Support::yes_but(format!("not probed ({why}); tried directly"));
        let no = || Support::no(format!("needs a temporary file; not probed ({why})"));
        Ok(Capabilities {
            dir,
            fs,
            insert_range: tryit(),
            collapse_range: tryit(),
            punch_hole: tryit(),
            zero_range: tryit(),
            ficlone: no(),
            ficlonerange: no(),
            ficlonerange_same_file: tryit(),
            copy_file_range: tryit(),
            copy_file_range_reflinks: no(),
            fiemap: tryit(),
            seek_data: tryit(),
            o_tmpfile: no(),
            rename_exchange: no(),
            xfs_exchange_range: no(),
            ext4_move_ext: no(),
        })
    }
}

fn dir_of(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let p = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    if p.to_string_lossy().ends_with(" (deleted)") {
        return None;
    }
    p.parent().map(Path::to_path_buf)
}

/// The name prefix of the two files the rename-exchange probe makes (the
/// only named files a probe makes): `.budge-probe-PID-RANDOM-{a,b}`.
const PROBE_PREFIX: &str = ".budge-probe-";

/// Removes from `dir` the files of rename-exchange probes whose process no
/// longer exists (killed part-way); every probe does this first. Returns
/// how many it removed.
///
/// # Errors
/// From reading the directory or removing a file.
pub fn remove_stale_probe_files(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PROBE_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Probes `dir`'s filesystem now, bypassing the cache.
///
/// # Errors
/// As for [`probe`].
pub fn probe_uncached(dir: &Path) -> Result<Capabilities> {
    let err = |call: &'static str| move |e: io::Error| Error::os("probe", call, e).with_path(dir);
    let (o_tmpfile, first) = match super::open_tmpfile(dir) {
        Ok(f) => (Support::yes(), f),
        Err(e) => (
            Support::from_io(&e),
            tempfile::tempfile_in(dir).map_err(err("create temporary file"))?,
        ),
    };
    let fs = super::fs_info(&first).map_err(err("fstatfs"))?;
    let p = Prober {
        dir,
        bs: fs.block_size,
        first: Mutex::new(Some(first)),
    };
    let (copy_file_range, copy_file_range_reflinks) = p.copy_file_range();
    Ok(Capabilities {
        dir: dir.to_path_buf(),
        fs,
        insert_range: Support::check(p.insert_range()),
        collapse_range: Support::check(p.collapse_range()),
        punch_hole: Support::check(p.punch_or_zero(super::Falloc::PunchHole)),
        zero_range: Support::check(p.punch_or_zero(super::Falloc::ZeroRange)),
        ficlone: Support::check(p.ficlone()),
        ficlonerange: Support::check(p.ficlonerange()),
        ficlonerange_same_file: Support::check(p.ficlonerange_same_file()),
        copy_file_range,
        copy_file_range_reflinks,
        fiemap: Support::check(p.fiemap()),
        seek_data: p.seek_data(),
        o_tmpfile,
        rename_exchange: Support::check(p.rename_exchange()),
        xfs_exchange_range: Support::check(p.xfs_exchange_range()),
        ext4_move_ext: Support::check(p.ext4_move_ext(fs.kind)),
    })
}

struct Prober<'a> {
    dir: &'a Path,
    bs: u64,
    first: Mutex<Option<File>>,
}

/// Block `i` of a probe file holds byte `tags[i]`; 0 means a hole/zeros.
fn pattern(bs: u64, tags: &[u8]) -> Vec<u8> {
    tags.iter()
        .flat_map(|&t| std::iter::repeat_n(t, usize::try_from(bs).unwrap_or(4096)))
        .collect()
}

impl Prober<'_> {
    fn tmp(&self) -> io::Result<File> {
        if let Some(f) = self.first.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Ok(f);
        }
        super::open_tmpfile(self.dir).or_else(|_| tempfile::tempfile_in(self.dir))
    }

    /// A temporary file holding blocks tagged `tags`, synced to disk so that
    /// extent-based calls see allocated blocks.
    fn file_with(&self, tags: &[u8]) -> io::Result<File> {
        let f = self.tmp()?;
        f.write_all_at(&pattern(self.bs, tags), 0)?;
        f.sync_all()?;
        Ok(f)
    }

    fn holds(&self, f: &File, tags: &[u8]) -> io::Result<bool> {
        let want = pattern(self.bs, tags);
        if f.metadata()?.len() != want.len() as u64 {
            return Ok(false);
        }
        let mut got = vec![0; want.len()];
        f.read_exact_at(&mut got, 0)?;
        Ok(got == want)
    }

    fn insert_range(&self) -> io::Result<bool> {
        let f = self.file_with(&[1, 2, 3, 4])?;
        super::fallocate(&f, super::Falloc::InsertRange, self.bs, self.bs)?;
        self.holds(&f, &[1, 0, 2, 3, 4])
    }

    fn collapse_range(&self) -> io::Result<bool> {
        let f = self.file_with(&[1, 2, 3, 4])?;
        super::fallocate(&f, super::Falloc::CollapseRange, self.bs, self.bs)?;
        self.holds(&f, &[1, 3, 4])
    }

    fn punch_or_zero(&self, mode: super::Falloc) -> io::Result<bool> {
        let f = self.file_with(&[1, 2, 3, 4])?;
        super::fallocate(&f, mode, self.bs, self.bs)?;
        self.holds(&f, &[1, 0, 3, 4])
    }

    fn ficlone(&self) -> io::Result<bool> {
        let src = self.file_with(&[1, 2, 3, 4])?;
        let dst = self.tmp()?;
        super::ficlone(&dst, &src)?;
        self.holds(&dst, &[1, 2, 3, 4])
    }

    fn ficlonerange(&self) -> io::Result<bool> {
        let src = self.file_with(&[1, 2, 3, 4])?;
        let dst = self.tmp()?;
        super::ficlonerange(&dst, 0, &src, self.bs, 2 * self.bs)?;
        self.holds(&dst, &[2, 3])
    }

    fn ficlonerange_same_file(&self) -> io::Result<bool> {
        let f = self.file_with(&[1, 2, 3, 4])?;
        super::ficlonerange(&f, 3 * self.bs, &f, 0, self.bs)?;
        self.holds(&f, &[1, 2, 3, 1])
    }

    fn copy_file_range(&self) -> (Support, Support) {
        let run = || -> io::Result<(bool, Support)> {
            let src = self.file_with(&[1, 2, 3, 4])?;
            let dst = self.tmp()?;
            let len = 4 * self.bs;
            let mut done = 0;
            while done < len {
                let n = super::copy_file_range(
                    &src,
                    done,
                    &dst,
                    done,
                    usize::try_from(len - done).unwrap_or(usize::MAX),
                )?;
                if n == 0 {
                    break;
                }
                done += n as u64;
            }
            let ok = self.holds(&dst, &[1, 2, 3, 4])?;
            dst.sync_all()?;
            let reflinks = match super::fiemap(&dst, 0, len, super::FIEMAP_FLAG_SYNC) {
                Ok(ext) if ext.is_empty() => Support::no("no extents reported"),
                Ok(ext) => {
                    if ext
                        .iter()
                        .all(|e| e.flags & crate::extents::flags::SHARED != 0)
                    {
                        Support::yes()
                    } else {
                        Support::no("copies data (extents not shared)")
                    }
                }
                Err(e) => Support::no(format!("cannot tell: FIEMAP: {e}")),
            };
            Ok((ok, reflinks))
        };
        match run() {
            Ok((true, r)) => (Support::yes(), r),
            Ok((false, _)) => (
                Support::no("call succeeded but the file content was wrong"),
                Support::no("copy_file_range does not work"),
            ),
            Err(e) => (
                Support::from_io(&e),
                Support::no("copy_file_range does not work"),
            ),
        }
    }

    fn fiemap(&self) -> io::Result<bool> {
        let f = self.file_with(&[1, 2])?;
        let ext = super::fiemap(&f, 0, u64::MAX, super::FIEMAP_FLAG_SYNC)?;
        Ok(!ext.is_empty() && ext[0].logical == 0)
    }

    fn seek_data(&self) -> Support {
        let run = || -> io::Result<Support> {
            let f = self.tmp()?;
            super::ftruncate(&f, 4 * self.bs)?;
            f.write_all_at(&pattern(self.bs, &[9]), 3 * self.bs)?;
            f.sync_all()?;
            let data = super::seek_data(&f, 0)?;
            let hole = super::seek_hole(&f, 0)?;
            Ok(match (data, hole) {
                (Some(d), 0) if d == 3 * self.bs => Support::yes(),
                (Some(0), h) if h == 4 * self.bs => Support::yes_but("no holes reported"),
                _ => Support::no("SEEK_DATA/SEEK_HOLE gave inconsistent answers"),
            })
        };
        run().unwrap_or_else(|e| Support::from_io(&e))
    }

    fn rename_exchange(&self) -> io::Result<bool> {
        // What earlier probes killed here left behind.
        let _ = remove_stale_probe_files(self.dir);
        let stem = format!("{PROBE_PREFIX}{}-{:x}", std::process::id(), rand_u64());
        let a = self.dir.join(format!("{stem}-a"));
        let b = self.dir.join(format!("{stem}-b"));
        let run = || -> io::Result<bool> {
            std::fs::write(&a, b"a")?;
            std::fs::write(&b, b"b")?;
            super::rename_exchange(&a, &b)?;
            Ok(std::fs::read(&a)? == b"b" && std::fs::read(&b)? == b"a")
        };
        let r = run();
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        r
    }

    fn xfs_exchange_range(&self) -> io::Result<bool> {
        let f1 = self.file_with(&[1, 2])?;
        let f2 = self.file_with(&[3, 4])?;
        super::xfs_exchange_range(&f1, 0, &f2, 0, self.bs)?;
        Ok(self.holds(&f1, &[3, 2])? && self.holds(&f2, &[1, 4])?)
    }

    fn ext4_move_ext(&self, kind: FsKind) -> io::Result<bool> {
        if kind != FsKind::Ext4 {
            // The ioctl number belongs to ext4 ('f', 15); on other filesystems
            // it is not defined and must not be sent.
            return Err(io::Error::new(io::ErrorKind::Unsupported, "not ext4"));
        }
        let orig = self.file_with(&[1, 2])?;
        let donor = self.tmp()?;
        super::fallocate(&donor, super::Falloc::Allocate, 0, 2 * self.bs)?;
        let moved = super::ext4_move_ext(&orig, &donor, 0, 0, 2)?;
        Ok(moved == 2 && self.holds(&orig, &[1, 2])?)
    }
}

/// A cheap unique-ish number for temporary names (not for security).
pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_probe_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let names = [
            format!("{PROBE_PREFIX}{dead}-1f-a"),
            format!("{PROBE_PREFIX}{dead}-1f-b"),
            format!("{PROBE_PREFIX}{me}-2e-a"),
            format!("{PROBE_PREFIX}x-a"),
            "data".to_string(),
        ];
        for n in &names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        assert_eq!(remove_stale_probe_files(dir.path()).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = names[2..].to_vec();
        want.sort();
        assert_eq!(left, want);
    }
}
