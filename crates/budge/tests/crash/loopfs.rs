//! A private loop-mounted filesystem for the shutdown tests: a sparse image
//! under `/var/tmp/budge-crash-<pid>/`, attached with `losetup`, formatted
//! and mounted; [`LoopFs::cycle`] unmounts and mounts it again (log
//! recovery). Everything is undone on drop, also when a test panics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct LoopFs {
    pub kind: &'static str,
    /// Extra `mkfs` arguments it was made with.
    pub mkfs_extra: &'static [&'static str],
    pub root: PathBuf,
    pub image: PathBuf,
    pub mnt: PathBuf,
    pub dev: String,
    mounted: bool,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Why the shutdown tests cannot run here, if they cannot.
pub fn unavailable(kind: &str) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root (needs losetup, mount and FS_IOC_SHUTDOWN)".into());
    }
    let mkfs = format!("mkfs.{kind}");
    for tool in ["losetup", "mount", "umount", mkfs.as_str()] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

impl LoopFs {
    /// Creates, formats and mounts a `size`-byte `kind` filesystem.
    pub fn new(kind: &'static str, size: u64) -> Result<LoopFs, String> {
        LoopFs::new_with(kind, size, &[])
    }

    /// [`LoopFs::new`] with extra `mkfs` arguments (XFS: `-m rmapbt=1`).
    pub fn new_with(
        kind: &'static str,
        size: u64,
        mkfs_extra: &'static [&'static str],
    ) -> Result<LoopFs, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = PathBuf::from(format!("/var/tmp/budge-crash-{}", std::process::id()));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let image = root.join(format!("{kind}-{n}.img"));
        let mnt = root.join(format!("{kind}-{n}"));
        std::fs::create_dir_all(&mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
        let f = std::fs::File::create(&image).map_err(|e| format!("{}: {e}", image.display()))?;
        f.set_len(size).map_err(|e| e.to_string())?;
        drop(f);
        let mut fs = LoopFs {
            kind,
            mkfs_extra,
            root,
            image,
            mnt,
            dev: String::new(),
            mounted: false,
        };
        let img = fs.image.to_str().unwrap().to_string();
        fs.dev = run("losetup", &["--find", "--show", &img])?;
        let mut args: Vec<&str> = match kind {
            "xfs" => vec!["-q", "-f", "-m", "reflink=1"],
            "ext4" => vec!["-q", "-F"],
            "btrfs" => vec!["-q", "-f"],
            k => return Err(format!("no mkfs for {k}")),
        };
        args.extend_from_slice(mkfs_extra);
        args.push(&fs.dev);
        run(&format!("mkfs.{kind}"), &args)?;
        fs.mount()?;
        Ok(fs)
    }

    fn mount(&mut self) -> Result<(), String> {
        run("mount", &[&self.dev, self.mnt.to_str().unwrap()])?;
        self.mounted = true;
        Ok(())
    }

    fn umount(&mut self) -> Result<(), String> {
        let mnt = self.mnt.to_str().unwrap().to_string();
        let mut last = String::new();
        for _ in 0..50 {
            match run("umount", &[&mnt]) {
                Ok(_) => {
                    self.mounted = false;
                    return Ok(());
                }
                // A just-killed process can hold the mount for a moment.
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }

    /// Unmounts and mounts again: after a shutdown, the mount replays the
    /// log as after a power cut.
    pub fn cycle(&mut self) -> Result<(), String> {
        self.umount()?;
        self.mount()
    }

    /// Unmounts and checks the filesystem read-only (`xfs_repair -n`,
    /// `e2fsck -fn`); returns the checker's complaint, if any. Mounts again.
    pub fn fsck(&mut self) -> Option<String> {
        if let Err(e) = self.umount() {
            return Some(format!("umount for fsck: {e}"));
        }
        let r = match self.kind {
            "xfs" => run("xfs_repair", &["-n", &self.dev]),
            _ => run("e2fsck", &["-fn", &self.dev]),
        };
        let remount = self.mount();
        match (r, remount) {
            (Ok(_), Ok(())) => None,
            (Err(e), _) => Some(e),
            (_, Err(e)) => Some(format!("mount after fsck: {e}")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Copies the device as it is at this instant to `to`: a power cut
    /// that keeps every write the device completed and none it did not.
    /// Waits until the device is idle (no request in flight) and takes the
    /// copy only if no write or discard completed or started meanwhile
    /// (`/sys/block/loopN/stat` before and after); retries otherwise.
    /// For filesystems without `FS_IOC_SHUTDOWN` (btrfs): the crash
    /// happens in the image, the live filesystem goes on.
    pub fn capture(&self, to: &Path) -> Result<(), String> {
        capture_device(&self.dev, &self.image, to)
    }

    /// Replaces this filesystem by a captured image ([`LoopFs::capture`]):
    /// unmounts, attaches `image` in place of the old one (which is
    /// deleted) and mounts it, which recovers it as after a power cut.
    pub fn boot_from(&mut self, image: &Path) -> Result<(), String> {
        self.umount()?;
        run("losetup", &["-d", &self.dev])?;
        self.dev.clear();
        let _ = std::fs::remove_file(&self.image);
        std::fs::rename(image, &self.image)
            .map_err(|e| format!("{} -> {}: {e}", image.display(), self.image.display()))?;
        let img = self.image.to_str().unwrap().to_string();
        self.dev = run("losetup", &["--find", "--show", &img])?;
        self.mount()
    }
}

/// Writes, discards and requests in flight of a block device, from
/// `/sys/block/NAME/stat` (write I/Os, write sectors, in flight, discard
/// I/Os).
fn device_activity(dev: &str) -> Result<[u64; 4], String> {
    let name = dev.rsplit('/').next().unwrap_or(dev);
    let p = format!("/sys/block/{name}/stat");
    let s = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
    let f: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 12 {
        return Err(format!("{p}: {} fields", f.len()));
    }
    Ok([f[4], f[6], f[8], f[11]])
}

/// See [`LoopFs::capture`].
pub fn capture_device(dev: &str, image: &Path, to: &Path) -> Result<(), String> {
    let img = image.to_str().unwrap();
    let dst = to.to_str().unwrap();
    for _ in 0..500 {
        let before = device_activity(dev)?;
        if before[2] != 0 {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let _ = std::fs::remove_file(to);
        run("cp", &["--sparse=always", img, dst])?;
        if device_activity(dev)? == before {
            return Ok(());
        }
    }
    Err(format!("{dev} never stayed idle for a copy of {img}"))
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted && self.umount().is_err() {
            let _ = run("umount", &["-l", self.mnt.to_str().unwrap()]);
        }
        if !self.dev.is_empty() {
            let _ = run("losetup", &["-d", &self.dev]);
        }
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_dir(&self.root);
    }
}
