//! What the bench reads about the machine: CPU, kernel, date, the block
//! device under a directory and its I/O counters, and the page cache switch.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The machine, for the report header.
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub mem_bytes: u64,
    pub date: String,
    pub command: String,
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

impl Machine {
    pub fn get() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "?".into(), |(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            // What `uname -srm` prints.
            kernel: format!(
                "{} {} {}",
                read_trim("/proc/sys/kernel/ostype"),
                read_trim("/proc/sys/kernel/osrelease"),
                std::env::consts::ARCH
            ),
            mem_bytes: mem_kib * 1024,
            date: utc_now(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` from the system clock.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The block device a filesystem lives on, with its `/sys` I/O counters.
#[derive(Clone)]
pub struct Device {
    /// Kernel name, e.g. `loop0`.
    pub name: String,
    stat: PathBuf,
}

/// Sectors read and written so far (512-byte units, whatever the device's
/// block size).
#[derive(Clone, Copy)]
pub struct DevCounters {
    read_sectors: u64,
    write_sectors: u64,
}

impl DevCounters {
    /// Bytes read and written since `earlier`.
    pub fn since(self, earlier: DevCounters) -> (u64, u64) {
        (
            self.read_sectors.saturating_sub(earlier.read_sectors) * 512,
            self.write_sectors.saturating_sub(earlier.write_sectors) * 512,
        )
    }
}

impl Device {
    /// The device holding `dir`, from `/proc/self/mountinfo` (the mount whose
    /// mount point is the longest prefix of `dir`): its source when that is a
    /// `/dev` node (btrfs reports an anonymous `st_dev`, so the source is what
    /// names the device), else its major:minor. `None` for tmpfs and the like.
    pub fn of(dir: &Path) -> Option<Device> {
        let dir = std::fs::canonicalize(dir).ok()?;
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mut best: Option<(usize, String, String)> = None;
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (Some(majmin), Some(mnt), Some(source)) = (l.get(2), l.get(4), r.get(1)) else {
                continue;
            };
            let mnt = unescape(mnt);
            if dir.starts_with(&mnt) {
                let depth = Path::new(&mnt).components().count();
                if !matches!(&best, Some((d, _, _)) if *d > depth) {
                    best = Some((depth, (*majmin).to_string(), unescape(source)));
                }
            }
        }
        let (_, majmin, source) = best?;
        if source.starts_with("/dev/") {
            let real = std::fs::canonicalize(&source).ok()?;
            let name = real.file_name()?.to_string_lossy().into_owned();
            let stat = PathBuf::from(format!("/sys/class/block/{name}/stat"));
            if stat.exists() {
                return Some(Device { name, stat });
            }
        }
        let stat = PathBuf::from(format!("/sys/dev/block/{majmin}/stat"));
        if stat.exists() {
            let link = std::fs::read_link(format!("/sys/dev/block/{majmin}")).ok()?;
            let name = link.file_name()?.to_string_lossy().into_owned();
            return Some(Device { name, stat });
        }
        None
    }

    /// The counters now: fields 3 and 7 of `/sys/block/<dev>/stat`.
    pub fn counters(&self) -> Option<DevCounters> {
        let s = std::fs::read_to_string(&self.stat).ok()?;
        let f: Vec<u64> = s
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        Some(DevCounters {
            read_sectors: *f.get(2)?,
            write_sectors: *f.get(6)?,
        })
    }
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Drops the clean page cache, dentries and inodes of the whole machine
/// (`echo 3 > /proc/sys/vm/drop_caches`; root only). Dirty data stays:
/// sync first.
pub fn drop_caches() -> std::io::Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("x\\"), "x\\");
    }

    #[test]
    fn date_format() {
        let d = utc_now();
        assert_eq!(d.len(), "2026-11-21 00:00:00 UTC".len());
        assert!(d.ends_with(" UTC"));
    }
}
