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
