//! Snapshots against other processes, on every filesystem of the matrix:
//!
//! - isolation: external processes (`dd`, `truncate`, `rm`, `mv`) write,
//!   truncate, unlink and replace the file while a `Snapshot` and a
//!   `SnapshotMut` of it are mapped; after every action all their bytes are
//!   read (a SIGBUS would kill the test) and compared;
//! - commit atomicity: the parent commits a stream of self-describing
//!   versions (every 4 KiB page stamped with the version, its length and
//!   the page number; sizes go up and down) while a reader process (this
//!   binary re-executed) keeps opening the path and checking that it holds
//!   exactly one complete version; in a variant the reader keeps mappings
//!   of old versions across commits and checks they never change;
//! - a directory that cannot be written (a read-only bind mount): snapshots
//!   go to memory, commits fail naming the directory, nothing changes;
//! - ENOSPC on the small filesystems: a commit that must copy fails with
//!   `NoSpace`, the file is untouched and nothing stray is left.
//!
//! `BUDGE_SNAP_SEED` reuses a seed (printed by each test).

mod common;
mod snapver;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use budge::snap::{self, Backing, OnConflict, SnapOptions, Snapshot, SnapshotMut};
use budge::{ErrorKind, Strategy};
use common::{data, say, Rng, TestFs, Worker};
use snapver::{check_version, fill_version, version_len, PAGE};

// ---------------------------------------------------------------------------
// Self-describing versions (tests/snapver).

#[test]
fn version_check_detects_mixes() {
    let mut a = vec![0u8; version_len(5, 100)];
    fill_version(&mut a, 7);
    assert_eq!(check_version(&a), Ok(7));
    let mut b = vec![0u8; version_len(3, 0)];
    fill_version(&mut b, 8);
    assert_eq!(check_version(&b), Ok(8));
    // A page of another version, a body byte, a truncated or extended file.
    let mut mixed = a.clone();
    mixed[PAGE..2 * PAGE].copy_from_slice(&b[PAGE..2 * PAGE]);
    assert!(check_version(&mixed).is_err());
    let mut body = a.clone();
    body[3 * PAGE + 100] ^= 1;
    assert!(check_version(&body).is_err());
    assert!(check_version(&a[..4 * PAGE]).is_err());
    let mut longer = b.clone();
    longer.extend_from_slice(&a[3 * PAGE..]);
    assert!(check_version(&longer).is_err());
    assert!(check_version(&[]).is_err());
}

fn seed(label: &str) -> u64 {
    snapver::seed("BUDGE_SNAP_SEED", label)
}

// ---------------------------------------------------------------------------
// Worker processes: this test binary re-executed with `WORKER_ENV` set.

const WORKER_ENV: &str = "BUDGE_SNAP_WORKER";
const WORKER_TEST: &str = "snap_proc_worker";

/// The worker: does nothing unless re-executed by a test.
#[test]
fn snap_proc_worker() {
    let Ok(role) = std::env::var(WORKER_ENV) else {
        return;
    };
    // Exit when the parent goes away (it holds our stdin open).
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(4);
    });
    let path = PathBuf::from(std::env::var("BUDGE_SNAP_PATH").unwrap());
    let last: u64 = std::env::var("BUDGE_SNAP_LAST").unwrap().parse().unwrap();
    match role.as_str() {
        "reader" => reader(&path, last, false),
        "map-reader" => reader(&path, last, true),
        r => panic!("unknown worker role {r}"),
    }
}

/// A read-only shared mapping of a whole file.
struct Map {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl Map {
    fn new(f: &File, len: usize) -> Map {
        assert!(len > 0);
        #[allow(unsafe_code)]
        // SAFETY: a fresh mapping at an address the kernel picks; the
        // pointer is only read through `bytes` while `self` lives.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                f,
                0,
            )
        }
        .expect("mmap");
        Map { ptr, len }
    }

    fn bytes(&self) -> &[u8] {
        #[allow(unsafe_code)]
        // SAFETY: `ptr` is a live mapping of `len` readable bytes. Nobody
        // truncates a published version (that is what the test checks: a
        // SIGBUS here fails it).
        unsafe {
            std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len)
        }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: unmaps the mapping made in `new`, no longer borrowed.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

/// Keeps opening `path` and checking it holds exactly one complete
/// version until it sees version `last`. With `hold`, reads through a
/// mapping and keeps the mappings of the first and the last few versions
/// seen, checking on every round that they still hold what they held.
fn reader(path: &Path, last: u64, hold: bool) {
    let (mut reads, mut mixes, mut errors, mut regressions, mut held_checks) = (0u64, 0, 0, 0, 0);
    let mut held_changed = 0u64;
    let mut seen = BTreeSet::new();
    let mut newest = 0u64;
    let mut buf = Vec::new();
    let mut first: Option<(Map, u64)> = None;
    let mut recent: std::collections::VecDeque<(Map, u64)> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    say("ready");
    while Instant::now() < deadline {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                errors += 1;
                say(&format!("error open {e}"));
                continue;
            }
        };
        let r = if hold {
            let len = f.metadata().unwrap().len() as usize;
            if len == 0 {
                Err("an empty file".to_string())
            } else {
                let m = Map::new(&f, len);
                let r = check_version(m.bytes());
                if let Ok(v) = r {
                    if first.is_none() {
                        first = Some((m, v));
                    } else if recent.back().is_none_or(|(_, w)| *w != v) {
                        recent.push_back((m, v));
                        if recent.len() > 6 {
                            recent.pop_front();
                        }
                    }
                }
                r
            }
        } else {
            buf.clear();
            (&f).read_to_end(&mut buf).unwrap();
            check_version(&buf)
        };
        reads += 1;
        match r {
            Ok(v) => {
                if v < newest {
                    regressions += 1;
                    say(&format!("regression: read version {v} after {newest}"));
                }
                newest = newest.max(v);
                if seen.insert(v) {
                    say(&format!("saw {v}"));
                }
            }
            Err(e) => {
                mixes += 1;
                if mixes <= 5 {
                    say(&format!("mix {e}"));
                }
            }
        }
        for (m, v) in first.iter().chain(recent.iter()) {
            held_checks += 1;
            if check_version(m.bytes()) != Ok(*v) {
                held_changed += 1;
                say(&format!("held mapping of version {v} changed"));
            }
        }
        if newest >= last {
            break;
        }
    }
    say(&format!(
        "summary reads {reads} distinct {} mixes {mixes} errors {errors} regressions {regressions} held_checks {held_checks} held_changed {held_changed} newest {newest}",
        seen.len()
    ));
}

/// Starts a worker in `role` on `path`; it exits when we close its stdin
/// (drop it).
fn spawn_worker(role: &str, path: &Path, last: u64) -> Worker {
    Worker::spawn(
        common::worker_command(WORKER_TEST)
            .env(WORKER_ENV, role)
            .env("BUDGE_SNAP_PATH", path)
            .env("BUDGE_SNAP_LAST", last.to_string())
            .stdin(Stdio::piped()),
    )
}

/// `w.wait_for` with a deadline of 120 s.
fn wait_for(w: &mut Worker, pred: impl FnMut(&str) -> bool) -> Option<String> {
    w.wait_for(Instant::now() + Duration::from_secs(120), pred)
}

// ---------------------------------------------------------------------------
// 1. Isolation against external processes.

/// Runs `script` with `sh -c`, `$F` set to `path`; panics unless it succeeds.
fn sh(script: &str, path: &Path) {
    let out = Command::new("sh")
        .args(["-c", script])
        .env("F", path)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "sh -c {script:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn reflinks(fs: &TestFs) -> bool {
    matches!(fs.kind, "xfs" | "btrfs")
}

/// Every way a snapshot can be made on this filesystem.
fn snap_variants(fs: &TestFs) -> Vec<SnapOptions<'static>> {
    let mut v: Vec<SnapOptions<'static>> =
        [None, Some(Strategy::KernelCopy), Some(Strategy::UserCopy)]
            .into_iter()
            .map(|strategy| SnapOptions {
                strategy,
                ..SnapOptions::default()
            })
            .collect();
    if reflinks(fs) {
        v.push(SnapOptions {
            strategy: Some(Strategy::Reflink),
            ..SnapOptions::default()
        });
    }
    v.push(SnapOptions {
        in_memory: true,
        ..SnapOptions::default()
    });
    v
}

/// Asserts the snapshots still hold what they were given, reading every
/// byte of both mappings.
fn check_snaps(s: &Snapshot, m: &SnapshotMut, want: &[u8], want_mut: &[u8], what: &str) {
    assert_eq!(s.len(), want.len(), "read-only snapshot length {what}");
    assert!(s[..] == want[..], "read-only snapshot bytes changed {what}");
    assert_eq!(
        m.len() as usize,
        want_mut.len(),
        "writable snapshot length {what}"
    );
    assert!(
        m[..] == want_mut[..],
        "writable snapshot bytes changed {what}"
    );
}

fs_test!(isolation_from_external_processes, |fs: &TestFs| {
    let path = fs.path("f");
    let len = (3 << 20) + 4321;
    for (k, opts) in snap_variants(fs).iter().enumerate() {
        let what = format!("{opts:?}");
        let d = data(len, 11 + k as u64);
        std::fs::write(&path, &d).unwrap();
        let s = Snapshot::open_with(&path, opts).unwrap();
        let mut m = SnapshotMut::open_with(&path, opts).unwrap();
        assert_eq!(
            s.report().backing,
            if opts.in_memory {
                Backing::Memory
            } else {
                Backing::TmpFile
            },
            "{what}"
        );
        // The writable snapshot gets its own changes, before and during.
        let mut model = d.clone();
        m[100..200].fill(0xC3);
        model[100..200].fill(0xC3);
        let steps: [(&str, &str); 9] = [
                (
                    "overwrite in place",
                    "dd if=/dev/urandom of=\"$F\" bs=64k count=16 conv=notrunc status=none",
                ),
                ("truncate to 10 bytes", "truncate -s 10 \"$F\""),
                ("truncate to 0", "truncate -s 0 \"$F\""),
                ("extend with a hole", "truncate -s 8M \"$F\""),
                (
                    "write past the old end",
                    "dd if=/dev/urandom of=\"$F\" bs=4k count=3 seek=1500 conv=notrunc status=none",
                ),
                ("punch-free shrink", "truncate -s 5000 \"$F\""),
                ("unlink", "rm \"$F\""),
                (
                    "replace by rename",
                    "printf other > \"$F.new\" && mv \"$F.new\" \"$F\"",
                ),
                (
                    "replace by rename with a big file",
                    "dd if=/dev/zero of=\"$F.new\" bs=1M count=5 status=none && mv -f \"$F.new\" \"$F\"",
                ),
            ];
        for (i, (name, script)) in steps.iter().enumerate() {
            sh(script, &path);
            check_snaps(&s, &m, &d, &model, &format!("after {name} ({what})"));
            // And the writable one stays writable, everywhere.
            let at = (i * 337_411) % model.len();
            m[at] ^= 0x5A;
            model[at] ^= 0x5A;
            assert_eq!(m[at], model[at]);
        }
        assert!(s.changed().unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 5 << 20);
        // Grow the writable snapshot after all that.
        m.resize(len as u64 + 70_000).unwrap();
        model.resize(len + 70_000, 0);
        m[len + 69_999] = 7;
        model[len + 69_999] = 7;
        check_snaps(&s, &m, &d, &model, &format!("after resize ({what})"));
        // With Refuse it would be a conflict; Overwrite publishes it.
        let mut r = SnapshotMut::open_with(
            &path,
            &SnapOptions {
                on_conflict: OnConflict::Refuse,
                ..*opts
            },
        )
        .unwrap();
        sh("printf changed > \"$F\"", &path);
        r[0] = 1;
        let e = r.commit().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"changed");
        m.commit().unwrap();
        assert!(
            std::fs::read(&path).unwrap() == model,
            "{what}: committed content"
        );
        check_snaps(&s, &m, &d, &model, &format!("after commit ({what})"));
        drop((s, m, r));
        std::fs::remove_file(&path).unwrap();
    }
});

fs_test!(
    isolation_from_a_concurrent_external_writer,
    |fs: &TestFs| {
        // A shell loop keeps overwriting, truncating, growing, unlinking
        // and replacing the file while we keep reading every byte of both
        // snapshots (and writing to the writable one).
        let path = fs.path("f");
        let len = (2 << 20) + 777;
        for opts in [
            SnapOptions::default(),
            SnapOptions {
                in_memory: true,
                ..SnapOptions::default()
            },
        ] {
            let d = data(len, 5);
            std::fs::write(&path, &d).unwrap();
            let s = Snapshot::open_with(&path, &opts).unwrap();
            let mut m = SnapshotMut::open_with(&path, &opts).unwrap();
            let mut model = d.clone();
            let script = r#"i=0
while [ $i -lt 40 ]; do
  dd if=/dev/urandom of="$F" bs=64k count=8 conv=notrunc status=none || exit 1
  truncate -s 4096 "$F" || exit 1
  truncate -s 3M "$F" || exit 1
  dd if=/dev/urandom of="$F.n" bs=64k count=4 status=none || exit 1
  mv -f "$F.n" "$F" || exit 1
  rm -f "$F" || exit 1
  printf x > "$F" || exit 1
  i=$((i+1))
done
echo done-$i"#;
            let mut child = Command::new("sh")
                .args(["-c", script])
                .env("F", &path)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut rounds = 0u64;
            let status = loop {
                let exited = child.try_wait().unwrap();
                let at = (rounds as usize * 104_729) % len;
                m[at] = m[at].wrapping_add(1);
                model[at] = model[at].wrapping_add(1);
                check_snaps(&s, &m, &d, &model, &format!("in round {rounds} ({opts:?})"));
                rounds += 1;
                if let Some(st) = exited {
                    break st;
                }
            };
            let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
            assert!(status.success(), "the external writer failed: {status}");
            assert_eq!(out.trim(), "done-40", "the external writer did not finish");
            assert!(rounds >= 1);
            assert_eq!(std::fs::read(&path).unwrap(), b"x");
            check_snaps(&s, &m, &d, &model, "at the end");
            eprintln!(
                "{}: {rounds} full reads during the external writer ({opts:?})",
                fs.kind
            );
        }
    }
);

// ---------------------------------------------------------------------------
// 2. Commit atomicity with a concurrent reader process.

fn parse_summary(line: &str) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    let rest = line.strip_prefix("summary ").unwrap();
    let w: Vec<&str> = rest.split_whitespace().collect();
    for kv in w.chunks(2) {
        out.insert(kv[0].to_string(), kv[1].parse().unwrap());
    }
    out
}

/// Commits `n` versions of varied sizes (up to 4 MiB, growing and
/// shrinking) with every commit method while a reader process checks each
/// file it opens.
fn commit_stream(fs: &TestFs, hold: bool) {
    let label = format!(
        "commit stream with a {} reader on {}",
        if hold { "mapping" } else { "reading" },
        fs.kind
    );
    let mut rng = Rng(seed(&label));
    let path = fs.path("v");
    let n: u64 = 48;
    let lens: Vec<usize> = (0..=n)
        .map(|_| {
            let pages = rng.between(1, 1024) as usize;
            let tail = if rng.chance(50) {
                0
            } else {
                rng.between(1, PAGE as u64 - 1) as usize
            };
            version_len(pages, tail)
        })
        .collect();
    let shrinks = lens.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(
        shrinks >= 3 && shrinks + 3 <= n as usize,
        "seed gives {shrinks} shrinks"
    );
    let mut v0 = vec![0u8; lens[0]];
    fill_version(&mut v0, 0);
    std::fs::write(&path, &v0).unwrap();
    // The parent keeps a read-only snapshot of version 0 throughout.
    let snap0 = Snapshot::open(&path).unwrap();
    let mut w = spawn_worker(if hold { "map-reader" } else { "reader" }, &path, n);
    assert!(
        wait_for(&mut w, |l| l == "saw 0").is_some(),
        "reader did not start: {:?}",
        w.texts()
    );
    let mut seen_max = 0u64;
    let mut cur: Option<(SnapshotMut, OnConflict)> = None;
    let mut methods = std::collections::BTreeMap::<String, u64>::new();
    for v in 1..=n {
        let (mut m, on_conflict) = match cur.take() {
            Some(c) => c,
            None => {
                let on_conflict = if rng.chance(50) {
                    OnConflict::Refuse
                } else {
                    OnConflict::Overwrite
                };
                let opts = SnapOptions {
                    on_conflict,
                    in_memory: rng.chance(15),
                    ..SnapOptions::default()
                };
                let m = SnapshotMut::open_with(&path, &opts)
                    .unwrap_or_else(|e| panic!("{label}: open for version {v}: {e}"));
                (m, on_conflict)
            }
        };
        m.resize(lens[v as usize] as u64).unwrap();
        fill_version(&mut m, v);
        let close = rng.chance(35);
        let method = format!(
            "{} {on_conflict:?}{}",
            if close { "commit_and_close" } else { "commit" },
            if m.report().backing == Backing::Memory {
                " (memory)"
            } else {
                ""
            }
        );
        let r = if close {
            m.commit_and_close().map_err(budge::Error::from)
        } else {
            let r = m.commit();
            cur = Some((m, on_conflict));
            r
        }
        .unwrap_or_else(|e| panic!("{label}: {method} of version {v}: {e}"));
        assert_eq!(r.len, lens[v as usize] as u64);
        *methods.entry(method).or_default() += 1;
        // Now and then wait for the reader to catch up, so it sees many
        // versions; in between it races with the commits.
        if v % 4 == 0 && seen_max < v {
            let got = wait_for(&mut w, |l| {
                l.strip_prefix("saw ")
                    .is_some_and(|s| s.parse::<u64>().unwrap() >= v)
            });
            assert!(
                got.is_some(),
                "{label}: reader never saw version {v}: {:?}",
                w.texts()
            );
            seen_max = v;
        }
        // The latest version is what a fresh open reads.
        if v % 8 == 0 {
            assert_eq!(check_version(&std::fs::read(&path).unwrap()), Ok(v));
        }
    }
    drop(cur);
    let (lines, status, stderr) = w.finish(Duration::from_secs(120));
    assert!(status.success(), "{label}: reader {status}: {stderr}");
    let lines: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    let problems: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.starts_with("mix")
                || l.starts_with("error")
                || l.starts_with("held mapping")
                || l.starts_with("regression")
        })
        .collect();
    assert!(problems.is_empty(), "{label}: {problems:?}");
    let summary = lines
        .iter()
        .find(|l| l.starts_with("summary"))
        .unwrap_or_else(|| panic!("{label}: no summary: {lines:?}"));
    let s = parse_summary(summary);
    eprintln!("{label}: {summary}; methods {methods:?}");
    assert_eq!(s["mixes"], 0, "{label}: {summary}");
    assert_eq!(s["errors"], 0, "{label}: {summary}");
    assert_eq!(s["regressions"], 0, "{label}: {summary}");
    assert_eq!(s["held_changed"], 0, "{label}: {summary}");
    assert_eq!(s["newest"], n, "{label}: {summary}");
    assert!(
        s["distinct"] > n / 4,
        "{label}: too few versions seen: {summary}"
    );
    assert!(s["reads"] >= s["distinct"], "{label}: {summary}");
    if hold {
        assert!(s["held_checks"] > s["reads"], "{label}: {summary}");
    }
    for m in ["commit ", "commit_and_close ", " Refuse", " Overwrite"] {
        assert!(
            methods.keys().any(|k| k.contains(m)),
            "{label}: no {m:?} in {methods:?} (seed {:#x})",
            rng.0
        );
    }
    assert_eq!(check_version(&std::fs::read(&path).unwrap()), Ok(n));
    assert_eq!(
        check_version(&snap0),
        Ok(0),
        "{label}: the parent's snapshot of version 0"
    );
    assert_no_strays(fs.dir.path(), &["v"]);
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Asserts `dir` holds exactly `names` (nothing stray from commits).
fn assert_no_strays(dir: &Path, names: &[&str]) {
    let got = names_in(dir);
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{}", dir.display());
}

fs_test!(commits_are_atomic_for_a_reader_process, |fs: &TestFs| {
    commit_stream(fs, false)
});

fs_test!(
    old_mappings_survive_commits_in_a_reader_process,
    |fs: &TestFs| { commit_stream(fs, true) }
);

// ---------------------------------------------------------------------------
// 3. A directory that cannot be written: a read-only bind mount.

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `src` bind-mounted read-only at `mnt`; unmounted on drop (also when the
/// test panics).
struct RoBind {
    mnt: PathBuf,
    mounted: bool,
}

impl RoBind {
    fn new(src: &Path, mnt: &Path) -> Result<RoBind, String> {
        std::fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
        let (s, m) = (src.to_str().unwrap(), mnt.to_str().unwrap());
        run("mount", &["--bind", s, m])?;
        let g = RoBind {
            mnt: mnt.to_path_buf(),
            mounted: true,
        };
        // (On failure `g` is dropped: unmounted.)
        run("mount", &["-o", "remount,bind,ro", m])?;
        Ok(g)
    }
}

impl Drop for RoBind {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let m = self.mnt.to_str().unwrap();
        for _ in 0..50 {
            if run("umount", &[m]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = run("umount", &["-l", m]);
    }
}

fs_test!(read_only_directory, |fs: &TestFs| {
    if !rustix::process::geteuid().is_root() {
        assert!(
            !common::in_ci(),
            "the read-only directory test needs root under CI"
        );
        eprintln!(
            "SKIPPED read_only_directory on {}: not root (needs mount)",
            fs.kind
        );
        return;
    }
    let rw = fs.path("rw");
    std::fs::create_dir(&rw).unwrap();
    let d = data((1 << 20) + 99, 21);
    std::fs::write(rw.join("f"), &d).unwrap();
    let ro = fs.path("ro");
    let _guard = RoBind::new(&rw, &ro).unwrap_or_else(|e| panic!("read-only bind mount: {e}"));
    let path = ro.join("f");
    // The setup: nothing can be created there.
    let e = std::fs::write(ro.join("x"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let dir = ro.display().to_string();

    // A read-only snapshot goes to memory and says why.
    let s = Snapshot::open(&path).unwrap();
    assert_eq!(s.report().backing, Backing::Memory);
    let note = s.report().note.clone().unwrap_or_default();
    assert!(note.contains(&dir), "the note should name {dir}: {note:?}");
    assert!(s.report().strategy.copies_data(), "{:?}", s.report());
    assert!(s[..] == d[..]);
    // Changing the file through the writable path does not reach it.
    std::fs::write(rw.join("f"), b"changed").unwrap();
    assert!(s.changed().unwrap());
    assert!(s[..] == d[..]);
    std::fs::write(rw.join("f"), &d).unwrap();

    // A writable snapshot works in memory, but cannot be committed.
    for close in [false, true] {
        for on_conflict in [OnConflict::Overwrite, OnConflict::Refuse] {
            let opts = SnapOptions {
                on_conflict,
                ..SnapOptions::default()
            };
            let mut m = SnapshotMut::open_with(&path, &opts).unwrap();
            assert_eq!(m.report().backing, Backing::Memory);
            let note = m.report().note.clone().unwrap_or_default();
            assert!(note.contains(&dir), "{note:?}");
            m[0] ^= 0xFF;
            m.resize(3 << 20).unwrap();
            m[(3 << 20) - 1] = 1;
            let e = if close {
                m.commit_and_close().unwrap_err().error
            } else {
                m.commit().unwrap_err()
            };
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("through {dir}")) && msg.contains("writable"),
                "the error should name the directory {dir}: {msg}"
            );
            assert!(msg.contains("Read-only file system"), "{msg}");
            assert_eq!(e.kind(), ErrorKind::Io, "{msg}");
            assert!(
                std::fs::read(&path).unwrap() == d,
                "the file changed: {msg}"
            );
            assert!(std::fs::read(rw.join("f")).unwrap() == d);
        }
    }
    // Nor can a snapshot be written there.
    let e = snap::snapshot_to(&path, ro.join("copy"), false, &SnapOptions::default()).unwrap_err();
    assert!(e.to_string().contains(&dir), "{e}");
    assert!(!rw.join("copy").exists());
    // cleanup() there finds nothing and fails nothing.
    assert_eq!(snap::cleanup(&path).unwrap(), Vec::<PathBuf>::new());
    assert_no_strays(&rw, &["f"]);
    drop(s);
});

// ---------------------------------------------------------------------------
// 4. ENOSPC on the small filesystems.

/// A writable snapshot of `path` in memory.
fn open_in_memory(path: &Path) -> SnapshotMut {
    let opts = SnapOptions {
        in_memory: true,
        ..SnapOptions::default()
    };
    SnapshotMut::open_with(path, &opts).unwrap()
}

/// Asserts `e` is `NoSpace` and names `path`, which still holds `want`.
fn assert_no_space(kind: &str, e: &budge::Error, path: &Path, want: &[u8]) {
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{kind}: {e}");
    assert!(
        e.to_string().contains(&path.display().to_string()),
        "{kind}: {e}"
    );
    assert!(
        std::fs::read(path).unwrap() == want,
        "{kind}: the file changed"
    );
}

fn enospc(kind: &'static str) {
    common::run_small(kind, |fs| {
        let path = fs.path("f");
        let len = 8 << 20;
        let d = data(len, 31);
        std::fs::write(&path, &d).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        // Snapshots made (and changed) while there is space: one in a file
        // on the filesystem (reflinked on XFS/btrfs, a copy elsewhere), and
        // one in memory, whose commit must copy everywhere.
        let mut on_disk = SnapshotMut::open(&path).unwrap();
        let mut in_mem = open_in_memory(&path);
        assert_eq!(on_disk.report().backing, Backing::TmpFile);
        assert_eq!(in_mem.report().backing, Backing::Memory);
        for m in [&mut on_disk, &mut in_mem] {
            m[1000..5000].fill(0xEE);
            m[len - 1] = 0;
        }
        let mut model = d.clone();
        model[1000..5000].fill(0xEE);
        model[len - 1] = 0;
        // Get the changed pages written (their blocks allocated) now.
        rustix::fs::syncfs(File::open(fs.dir.path()).unwrap()).unwrap();
        let filler = common::fill_fs(fs, 256 << 10);
        let avail = budge::sys::fs_info(&filler).unwrap().avail_bytes;
        assert!(avail < 1 << 20, "{kind}: {avail} bytes still free");
        let names = names_in(fs.dir.path());

        // A commit from memory must copy 8 MiB: no space.
        let e = in_mem.commit().unwrap_err();
        eprintln!("{kind}: commit from memory on a full filesystem: {e}");
        assert_no_space(kind, &e, &path, &d);
        assert_eq!(names_in(fs.dir.path()), names, "{kind}: stray files");

        // A commit from the snapshot's file: a reflink needs no data space
        // on XFS and btrfs; a copy (ext4, tmpfs) does.
        match on_disk.commit() {
            Ok(r) => {
                assert!(
                    reflinks(fs),
                    "{kind}: a copying commit on a full filesystem: {r:?}"
                );
                assert_eq!(r.strategy, Strategy::Reflink);
                assert!(std::fs::read(&path).unwrap() == model, "{kind}");
            }
            Err(e) => {
                eprintln!("{kind}: commit from a copy on a full filesystem: {e}");
                assert!(!reflinks(fs), "{kind}: {e}");
                assert_no_space(kind, &e, &path, &d);
            }
        }
        let committed = std::fs::read(&path).unwrap();
        assert_eq!(names_in(fs.dir.path()), names, "{kind}: stray files");

        // commit_and_close of the in-memory snapshot copies too.
        let (e, back) = in_mem.commit_and_close().unwrap_err().into_parts();
        assert_eq!(e.kind(), ErrorKind::NoSpace, "{kind}: {e}");
        assert!(
            back[..] == model[..],
            "{kind}: the snapshot handed back lost its changes"
        );
        drop(back);
        assert!(
            std::fs::read(&path).unwrap() == committed,
            "{kind}: the file changed"
        );
        assert_eq!(names_in(fs.dir.path()), names, "{kind}: stray files");

        // A new snapshot that must copy (by read and write: XFS and btrfs
        // reflink even under copy_file_range) cannot be made either, and
        // does not fall back to memory.
        let e = Snapshot::open_with(
            &path,
            &SnapOptions {
                strategy: Some(Strategy::UserCopy),
                ..SnapOptions::default()
            },
        );
        match e {
            Ok(s) => panic!(
                "{kind}: a copying snapshot on a full filesystem: {:?}",
                s.report()
            ),
            Err(e) => {
                eprintln!("{kind}: copying snapshot on a full filesystem: {e}");
                assert_eq!(e.kind(), ErrorKind::NoSpace, "{kind}: {e}");
            }
        }
        assert_eq!(names_in(fs.dir.path()), names, "{kind}: stray files");

        // With space back, the commit works.
        common::free_filler(fs, filler, 2 * len as u64);
        let mut m = open_in_memory(&path);
        m.copy_from_slice(&model);
        m.commit_and_close().unwrap();
        assert!(std::fs::read(&path).unwrap() == model, "{kind}");
        on_disk.commit().unwrap();
        assert!(std::fs::read(&path).unwrap() == model, "{kind}");
        drop(on_disk);
        assert_eq!(names_in(fs.dir.path()), vec!["f".to_string()], "{kind}");
    });
}

kind_tests!(enospc; enospc_xfs, enospc_btrfs, enospc_ext4, enospc_tmpfs);
