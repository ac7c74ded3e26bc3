//! Helpers shared by the benchmarks (`snap`, `overlay`): seeded content,
//! page-cache residency and warming, `syncfs`, medians, sizes, the machine.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

pub fn code_commit() -> String {
    let git = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.git");
    let head = fs::read_to_string(git.join("HEAD")).unwrap_or_default();
    let head = head.trim();
    let full = match head.strip_prefix("ref: ") {
        Some(r) => fs::read_to_string(git.join(r))
            .ok()
            .map(|s| s.trim().to_string())
            .or_else(|| {
                fs::read_to_string(git.join("packed-refs"))
                    .ok()
                    .and_then(|p| {
                        p.lines()
                            .find(|l| l.ends_with(r))
                            .map(|l| l[..40].to_string())
                    })
            })
            .unwrap_or_default(),
        None => head.to_string(),
    };
    full.get(..7).unwrap_or("?").to_string()
}

/// The original content at `[off, off + buf.len())` (`off` 8-aligned).
pub fn gen(off: u64, buf: &mut [u8]) {
    debug_assert_eq!(off % 8, 0);
    for (i, w) in buf.chunks_mut(8).enumerate() {
        let v = splitmix(crate::SEED ^ (off / 8 + i as u64)).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
}

pub fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        Duration::ZERO
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2
    }
}

pub fn parse_size(s: &str) -> u64 {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        _ => (s, 1),
    };
    num.parse::<u64>().expect("size") * mul
}

/// Fraction of the file's pages in the page cache.
pub fn resident(path: &Path) -> f64 {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    if len == 0 {
        return 1.0;
    }
    // SAFETY: a fresh read-only shared mapping of a file we opened; only
    // passed to mincore and unmapped here, never dereferenced.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let pages = len.div_ceil(PAGE as usize);
        let mut v = vec![0u8; pages];
        let r = libc::mincore(p, len, v.as_mut_ptr());
        assert_eq!(r, 0);
        libc::munmap(p, len);
        v.iter().filter(|&&b| b & 1 != 0).count() as f64 / pages as f64
    }
}

/// The load averages (`/proc/loadavg`).
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A directory argument, `LABEL:DIR` or `DIR` (labelled with its name).
pub fn dir_arg(s: &str) -> (String, PathBuf) {
    match s.split_once(':') {
        Some((l, d)) => (l.to_string(), PathBuf::from(d)),
        None => (
            Path::new(s)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            PathBuf::from(s),
        ),
    }
}

/// The directories of `BUDGE_TEST_FS` (`label:dir,label:dir`), where none
/// are given.
pub fn env_dirs() -> Vec<(String, PathBuf)> {
    let env = std::env::var("BUDGE_TEST_FS").expect("give directories or set BUDGE_TEST_FS");
    env.split(',')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (l, d) = e.split_once(':').expect("BUDGE_TEST_FS: label:dir,...");
            (l.to_string(), PathBuf::from(d))
        })
        .collect()
}

pub fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn syncfs(dir: &Path) {
    let d = File::open(dir).unwrap();
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::syncfs(d.as_raw_fd()) };
    assert_eq!(r, 0, "syncfs: {}", std::io::Error::last_os_error());
}

/// Reads the whole file (into the page cache).
pub fn warm(path: &Path) {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; (8 * MIB) as usize];
    while f.read(&mut buf).unwrap() > 0 {}
}

/// Prints the command, date, machine (cores, CPU, memory, kernel) and code
/// commit: the first lines of every benchmark's output.
pub fn print_run() {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("date: {}", sh("date", &["-u"]));
    println!(
        "machine: {} cores, {cpu}, MemTotal {mem}, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sh("uname", &["-r"])
    );
    println!(
        "code: commit {} (plus uncommitted changes in the tree)",
        code_commit()
    );
}
