//! `qemu-io` and `qemu-img` for the qcow2 comparisons: the overlay test
//! (`tests/overlay_qemu.rs`, through `common`) and the overlay benchmark
//! (`benches/overlay.rs`, which includes this file by path).
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

/// What one `qemu-io` process did.
pub struct QemuIo {
    pub status: ExitStatus,
    /// Its output without the prompts.
    pub out: String,
    pub err: String,
    /// When it exited.
    pub ended: Instant,
}

impl QemuIo {
    /// Whether every command worked: `qemu-io` reports a failed command on
    /// its output, not in its exit status, so any output counts as failure.
    pub fn ok(&self) -> bool {
        self.status.success() && self.out.trim().is_empty() && self.err.trim().is_empty()
    }
}

/// Runs `qemu-io -t CACHE -f qcow2 IMAGE` with `script` on stdin.
pub fn qemu_io(image: &Path, cache: &str, script: String) -> QemuIo {
    let mut child = Command::new("qemu-io")
        .args(["-t", cache, "-f", "qcow2"])
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu-io");
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let err_pipe = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || std::io::read_to_string(err_pipe).unwrap_or_default());
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    let status = child.wait().unwrap();
    let ended = Instant::now();
    feeder.join().unwrap().unwrap();
    QemuIo {
        status,
        out: out.replace("qemu-io> ", ""),
        err: errs.join().unwrap(),
        ended,
    }
}

/// `qemu-img create` of the qcow2 overlay `image` over the raw `base`, with
/// clusters of `cluster` (bytes, or qemu's `4k`, `64k`).
pub fn qemu_img_create(base: &Path, cluster: &str, image: &Path) -> Command {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .args(["-o", &format!("cluster_size={cluster}")])
        .arg(image);
    c
}

/// `qemu-img commit` of the qcow2 overlay `image` into its base.
pub fn qemu_img_commit(image: &Path) -> Command {
    let mut c = Command::new("qemu-img");
    c.args(["commit", "-q", "-t", "writeback", "-f", "qcow2"])
        .arg(image);
    c
}
