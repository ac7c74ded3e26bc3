//! The real-filesystem test matrix. `scripts/test.sh` mounts XFS (reflink),
//! btrfs, ext4 and tmpfs and exports their mount points in `BUDGE_TEST_FS`
//! (`kind:/path,...`) and small ones for ENOSPC tests in
//! `BUDGE_TEST_FS_SMALL`. [`fs_test!`] turns one test body into one test per
//! filesystem. A filesystem that is missing fails the test under `CI=true`
//! and is reported as skipped (loudly, on stderr) otherwise.
#![allow(dead_code)]

pub mod qemu;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use budge::store::{Growth, StoreOptions};
pub use budge::{ShiftOptions, Strategy};

/// One filesystem of the matrix, with a fresh directory for this test.
pub struct TestFs {
    /// `xfs`, `btrfs`, `ext4` or `tmpfs`.
    pub kind: &'static str,
    /// A directory on it that is removed when the test ends.
    pub dir: tempfile::TempDir,
}

impl TestFs {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates `name` holding `data`, opened read-write.
    pub fn file_with(&self, name: &str, data: &[u8]) -> File {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path(name))
            .unwrap();
        f.write_all_at(data, 0).unwrap();
        f
    }

    pub fn caps(&self) -> std::sync::Arc<budge::Capabilities> {
        budge::probe(self.dir.path()).unwrap()
    }
}

pub const KINDS: [&str; 4] = ["xfs", "btrfs", "ext4", "tmpfs"];

fn lookup(var: &str, kind: &str) -> Option<PathBuf> {
    let v = std::env::var(var).ok()?;
    v.split(',').find_map(|e| {
        let (k, p) = e.split_once(':')?;
        (k == kind && Path::new(p).is_dir()).then(|| PathBuf::from(p))
    })
}

/// Whether this runs under CI (`CI=true`), where skipping is failing.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn get(var: &str, kind: &'static str) -> Option<TestFs> {
    match lookup(var, kind) {
        Some(root) => {
            let dir = tempfile::Builder::new().prefix("t-").tempdir_in(root).unwrap();
            Some(TestFs { kind, dir })
        }
        None if in_ci() => panic!("{kind} is not in {var}: under CI every filesystem of the matrix must be mounted (scripts/testfs.sh up)"),
        None => {
            eprintln!("SKIPPED on {kind}: not mounted ({var} unset or lacks it; run scripts/test.sh)");
            None
        }
    }
}

/// Runs `body` on the filesystem `kind` of the main matrix.
pub fn run(kind: &'static str, body: impl FnOnce(&TestFs)) {
    if let Some(fs) = get("BUDGE_TEST_FS", kind) {
        body(&fs);
    }
}

/// Runs `body` on the small (ENOSPC) filesystem `kind`. Tests that fill a
/// small filesystem would disturb each other, so they run one at a time.
pub fn run_small(kind: &'static str, body: impl FnOnce(&TestFs)) {
    static SMALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SMALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(fs) = get("BUDGE_TEST_FS_SMALL", kind) {
        // btrfs frees a deleted file's extents only when its transaction
        // commits: without this, what an earlier test removed still counts
        // as used (seen: 0 bytes free on an empty small btrfs).
        rustix::fs::syncfs(File::open(fs.dir.path()).unwrap()).unwrap();
        body(&fs);
    }
}

/// Closes and removes the file [`fill_fs`] made, then waits (up to 30 s)
/// until the filesystem reports at least `need` bytes free again. Space
/// does not come back at once: btrfs frees extents when its transaction
/// commits, and a child forked by another test thread holds a duplicate of
/// every descriptor until it execs.
pub fn free_filler(fs: &TestFs, filler: File, need: u64) {
    drop(filler);
    std::fs::remove_file(fs.path("filler")).unwrap();
    let dir = File::open(fs.dir.path()).unwrap();
    let t = Instant::now();
    loop {
        rustix::fs::syncfs(&dir).unwrap();
        let avail = budge::sys::fs_info(&dir).unwrap().avail_bytes;
        if avail >= need {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{}: only {avail} bytes free 30 s after removing the filler; {need} needed",
            fs.kind
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `fs_test!(name, |fs| { ... })` defines `name::{xfs, btrfs, ext4, tmpfs}`.
#[macro_export]
macro_rules! fs_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn xfs() {
                $crate::common::run("xfs", $body)
            }
            #[test]
            fn btrfs() {
                $crate::common::run("btrfs", $body)
            }
            #[test]
            fn ext4() {
                $crate::common::run("ext4", $body)
            }
            #[test]
            fn tmpfs() {
                $crate::common::run("tmpfs", $body)
            }
        }
    };
}

/// `kind_tests!(f; f_xfs = "xfs", f_ext4 = "ext4")` defines one test per
/// name that calls `f(kind)`: for tests that set up their filesystem
/// themselves ([`run_small`], a loop mount). `kind_tests!(f; a, b, c, d)`
/// names one test for each of [`KINDS`], in that order.
#[macro_export]
macro_rules! kind_tests {
    ($f:ident; $xfs:ident, $btrfs:ident, $ext4:ident, $tmpfs:ident) => {
        $crate::kind_tests!($f; $xfs = "xfs", $btrfs = "btrfs", $ext4 = "ext4", $tmpfs = "tmpfs");
    };
    ($f:ident; $($name:ident = $kind:literal),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $f($kind)
            }
        )+
    };
}

/// Deterministic bytes: `n` bytes from a seed, no two blocks alike.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn read_all(f: &File) -> Vec<u8> {
    let n = f.metadata().unwrap().len() as usize;
    let mut v = vec![0; n];
    f.read_exact_at(&mut v, 0).unwrap();
    v
}

/// `v` with `n` zeros inserted at `at`.
pub fn model_insert(v: &[u8], at: usize, n: usize) -> Vec<u8> {
    let mut m = v[..at].to_vec();
    m.extend(std::iter::repeat_n(0, n));
    m.extend_from_slice(&v[at..]);
    m
}

/// `v` with `[at, at+n)` removed.
pub fn model_collapse(v: &[u8], at: usize, n: usize) -> Vec<u8> {
    let mut m = v[..at].to_vec();
    m.extend_from_slice(&v[at + n..]);
    m
}

/// Options forcing one strategy.
pub fn forced(s: Strategy) -> ShiftOptions<'static> {
    ShiftOptions {
        strategy: Some(s),
        ..ShiftOptions::default()
    }
}

/// The strategies that can run on this filesystem for block-aligned shifts.
pub fn shift_strategies(fs: &TestFs) -> Vec<Strategy> {
    let c = fs.caps();
    let mut v = Vec::new();
    if c.insert_range.works && c.collapse_range.works {
        v.push(Strategy::Native);
    }
    if c.ficlonerange.works {
        v.push(Strategy::Reflink);
    }
    if c.copy_file_range.works {
        v.push(Strategy::KernelCopy);
    }
    v.push(Strategy::UserCopy);
    v
}

/// Fills the (small) filesystem with one preallocated filler file until less
/// than `leave` bytes remain (fallocate, so it is fast). Remove it to free
/// the space.
pub fn fill_fs(fs: &TestFs, leave: u64) -> File {
    let filler = fs.file_with("filler", &[]);
    allocate_greedily(&filler, 64 << 20, |f| {
        budge::sys::fs_info(f).unwrap().avail_bytes < leave
    });
    filler
}

/// Preallocates `f` from its start in pieces of `chunk` bytes, halving the
/// piece whenever the filesystem has no room for it, until a 4 KiB piece
/// fails too or `enough` says so.
pub fn allocate_greedily(f: &File, mut chunk: u64, enough: impl Fn(&File) -> bool) {
    let mut at = 0;
    while chunk >= 4096 {
        match budge::sys::fallocate(f, budge::sys::Falloc::Allocate, at, chunk) {
            Ok(()) => at += chunk,
            Err(_) => chunk /= 2,
        }
        if enough(f) {
            break;
        }
    }
}

/// Store options with exact growth (every region's capacity is its
/// length, rounded up to the alignment), forcing `strategy` if given.
pub fn store_opts(strategy: Option<Strategy>) -> StoreOptions {
    StoreOptions {
        strategy,
        growth: Growth::Exact,
        ..StoreOptions::default()
    }
}

/// The strategies a store can be forced to use here (`None` = automatic).
pub fn store_strategies(fs: &TestFs) -> Vec<Option<Strategy>> {
    store_strategies_in(fs.dir.path())
}

/// [`store_strategies`] for the filesystem at `dir`.
pub fn store_strategies_in(dir: &Path) -> Vec<Option<Strategy>> {
    let c = budge::probe(dir).unwrap();
    let mut v = vec![None];
    if c.insert_range.works && c.collapse_range.works {
        v.push(Some(Strategy::Native));
    }
    if c.ficlonerange.works {
        v.push(Some(Strategy::Reflink));
    }
    if c.copy_file_range.works {
        v.push(Some(Strategy::KernelCopy));
    }
    v.push(Some(Strategy::UserCopy));
    v
}

// ---------------------------------------------------------------------------
// Seeded randomness.

/// A small deterministic PRNG (splitmix64), so a run reproduces from its
/// seed without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `[lo, hi]`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        lo + self.below(hi - lo + 1)
    }

    /// Log-uniform in `[lo, hi]` (`lo >= 1`): as many small values as large.
    pub fn log_between(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo as f64).ln(), ((hi + 1) as f64).ln());
        let x = a + (b - a) * (self.below(1 << 20) as f64 / f64::from(1 << 20));
        (x.exp() as u64).clamp(lo, hi)
    }

    /// True `pct` percent of the time.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        for c in v.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            c.copy_from_slice(&x[..c.len()]);
        }
        v
    }
}

/// A test's seed: `var` (decimal or 0x-hex) as is, so a printed seed
/// reproduces the test; otherwise a random one, mixed with `label` so the
/// tests of one run differ.
pub fn seed(var: &str, label: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        })
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            let h = Rng(t ^ u64::from(std::process::id())).next();
            label.bytes().fold(h, |h, b| Rng(h ^ u64::from(b)).next())
        })
}

// ---------------------------------------------------------------------------
// Worker processes: the test binary re-executed to run one test.

/// Prints a protocol line (`@@ line`) for the parent, from a worker.
pub fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "@@ {line}");
    let _ = o.flush();
}

/// The test binary, as it was when this process started: an inherited
/// descriptor of it (`/proc/self/fd/N`), so workers run the same code even
/// if cargo rebuilds the binary during a long run.
fn worker_exe() -> &'static str {
    static EXE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        use std::os::fd::{AsFd, IntoRawFd};
        let f = File::open(std::env::current_exe().unwrap()).unwrap();
        rustix::io::fcntl_setfd(f.as_fd(), rustix::io::FdFlags::empty()).unwrap();
        format!("/proc/self/fd/{}", f.into_raw_fd())
    })
}

/// A command that runs only the test `test` of this test binary (stdin
/// null); add the worker's environment and pass it to [`Worker::spawn`].
pub fn worker_command(test: &str) -> Command {
    let mut cmd = Command::new(worker_exe());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null());
    cmd
}

/// A running worker and the protocol lines (`@@ ...` on stdout) it printed,
/// each with the time it was read. Killed if dropped while running.
pub struct Worker {
    child: Child,
    rx: Receiver<(Instant, String)>,
    pub lines: Vec<(Instant, String)>,
    stderr: Option<std::thread::JoinHandle<String>>,
    eof: bool,
}

impl Worker {
    /// Starts `cmd` (see [`worker_command`]) with stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> Worker {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if let Some(rest) = l.strip_prefix("@@ ") {
                    if tx.send((Instant::now(), rest.to_string())).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Worker {
            child,
            rx,
            lines: Vec::new(),
            stderr: Some(stderr),
            eof: false,
        }
    }

    /// The lines so far, without their times.
    pub fn texts(&self) -> Vec<&str> {
        self.lines.iter().map(|(_, l)| l.as_str()).collect()
    }

    /// Reads lines until one satisfies `pred` (returned), the worker's
    /// output ends, or `deadline`.
    pub fn wait_for(
        &mut self,
        deadline: Instant,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        while !self.eof {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok((t, l)) => {
                    self.lines.push((t, l.clone()));
                    if pred(&l) {
                        return Some(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
            }
        }
        None
    }

    /// Whether the worker has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
    }

    /// Waits for the worker to end (killing it after `timeout`); returns
    /// its lines, its exit status and its stderr.
    pub fn finish(mut self, timeout: Duration) -> (Vec<(Instant, String)>, ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                self.kill();
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        while let Ok(l) = self.rx.recv() {
            self.lines.push(l);
        }
        let err = self.stderr.take().unwrap().join().unwrap_or_default();
        (std::mem::take(&mut self.lines), status, err)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Only if a test fails part-way: do not leave the worker running.
        if !self.exited() {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

/// The piece size of [`fragmented`] files.
pub const PIECE: usize = 64 << 10;

/// A file of `size` bytes whose `PIECE`-sized pieces were written
/// interleaved with a filler file, each write synced and each file reopened
/// for it (closing drops ext4's per-inode preallocation) and both sized in
/// advance (no XFS speculative preallocation), so its extents are
/// physically scattered; the filler is then removed, leaving free gaps.
pub fn fragmented(fs: &TestFs, name: &str, size: usize, seed: u64) -> (File, Vec<u8>) {
    let d = data(size, seed);
    let fname = format!("{name}.filler");
    fs.file_with(name, &[]).set_len(size as u64).unwrap();
    fs.file_with(&fname, &[]).set_len(size as u64).unwrap();
    let junk = data(PIECE, seed + 1);
    let open = |n: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(fs.path(n))
            .unwrap()
    };
    for (i, piece) in d.chunks(PIECE).enumerate() {
        let f = open(name);
        f.write_all_at(piece, (i * PIECE) as u64).unwrap();
        f.sync_data().unwrap();
        drop(f);
        let g = open(&fname);
        g.write_all_at(&junk, (i * PIECE) as u64).unwrap();
        g.sync_data().unwrap();
    }
    std::fs::remove_file(fs.path(&fname)).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fs.path(name))
        .unwrap();
    if fs.kind == "ext4" {
        scatter_ext4(fs, &f, size);
    }
    (f, d)
}

/// A file of `size` bytes fragmented the way budge's own users fragment
/// theirs: `inserts` random one-block inserts (the best strategy here), each
/// inserted block then written. Returns the file and its expected content.
pub fn fragment_by_inserts(fs: &TestFs, name: &str, size: usize, inserts: u64) -> (File, Vec<u8>) {
    let bs = budge::sys::fs_info(fs.file_with("probe", &[]))
        .unwrap()
        .block_size
        .max(4096);
    let f = fs.file_with(name, &data(size - (inserts * bs) as usize, 11));
    // Durable first, as a user's file would be: on btrfs this puts the
    // data's extent in the log tree, and the inserts then share pieces of
    // it that no committed transaction has seen yet.
    f.sync_all().unwrap();
    let mut model = read_all(&f);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..inserts {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % (model.len() as u64 / bs + 1)) * bs;
        let piece = data(bs as usize, 1000 + i);
        budge::insert(&f, at, bs, &budge::ShiftOptions::default()).unwrap();
        f.write_all_at(&piece, at).unwrap();
        let at = at as usize;
        model.splice(at..at, piece);
    }
    f.sync_all().unwrap();
    assert!(read_all(&f) == model, "{}: the inserts themselves", fs.kind);
    (f, model)
}

/// A fragmented file that surely has chunks to move: on XFS and btrfs made
/// by inserts (the interleaved writes of `fragmented` can come out whole on
/// XFS, seen on a fresh loop XFS and after cow relocations; on btrfs the
/// inserts' reflink-shift pieces are shared within the file), elsewhere by
/// `fragmented` with `seed`.
pub fn surely_fragmented(fs: &TestFs, name: &str, size: usize, seed: u64) -> (File, Vec<u8>) {
    if matches!(fs.kind, "xfs" | "btrfs") {
        fragment_by_inserts(fs, name, size, 100)
    } else {
        fragmented(fs, name, size, seed)
    }
}

/// ext4's allocator places each write right after the file's previous
/// extent whatever else is written in between, so the interleaving above
/// leaves one extent. Scatter the odd pieces instead: move each onto blocks
/// preallocated in its own donor file (all kept open until the end, so freed
/// blocks are not reused in place).
pub fn scatter_ext4(fs: &TestFs, f: &File, size: usize) {
    let bs = budge::sys::fs_info(f).unwrap().block_size;
    let mut donors = Vec::new();
    for i in (1..size / PIECE).step_by(2) {
        let off = (i * PIECE) as u64;
        let donor = tempfile::tempfile_in(fs.dir.path()).unwrap();
        donor.set_len(size as u64).unwrap();
        budge::sys::fallocate(
            &donor,
            budge::sys::Falloc::AllocateKeepSize,
            off,
            PIECE as u64,
        )
        .unwrap();
        let n =
            budge::sys::ext4_move_ext(f, &donor, off / bs, off / bs, PIECE as u64 / bs).unwrap();
        assert_eq!(n, PIECE as u64 / bs);
        donors.push(donor);
    }
    f.sync_all().unwrap();
}
