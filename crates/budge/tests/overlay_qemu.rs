//! An outside check of overlays: the same random sequence of writes and
//! zeroes goes into qcow2 overlays through `qemu-io` (cluster sizes 4 KiB and
//! the default 64 KiB) and into budge overlays (committed with every
//! strategy), each over its own copy of one base; after `qemu-img commit` and
//! [`Overlay::commit`] the bases must be byte-identical to each other and to
//! an in-memory model.
//!
//! Needs `qemu-io` and `qemu-img` (Debian: `apt-get install qemu-utils`;
//! `scripts/testfs.sh up` installs them). Without them the test fails under
//! `CI=true` and prints SKIPPED on stderr otherwise.
//!
//! The writes carry random bytes (`qemu-io write -s FILE`, one source file
//! per write), at random byte offsets and lengths: unaligned, partial pages,
//! page runs, the last (partial) page. Zeroes are `write -z` for qemu and
//! [`Overlay::zero`] for budge. qemu rounds an image's size up to 512 bytes,
//! so the base's size is a multiple of 512 but not of 4096 (budge's last
//! page is partial). `BUDGE_OVERLAY_QEMU_SEED` repeats a run.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use budge::overlay::{CommitOptions, CommitStrategy, Overlay, OverlayOptions};
use common::qemu::{qemu_img_commit, qemu_img_create, qemu_io};
use common::{data, in_ci, read_all, seed, Rng, TestFs};

/// One step of the sequence.
#[derive(Clone, Debug)]
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Flush,
}

/// Whether `qemu-io` and `qemu-img` run. Outside CI a missing tool skips
/// (loudly); under CI it fails.
fn have_qemu(kind: &str) -> bool {
    let ok = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("qemu-io") && ok("qemu-img") {
        return true;
    }
    if in_ci() {
        panic!("qemu-io/qemu-img not found: under CI the qemu comparison must run (apt-get install qemu-utils, or scripts/testfs.sh up)");
    }
    eprintln!("SKIPPED on {kind}: qemu-io/qemu-img not found (apt-get install qemu-utils)");
    false
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the random sequence over a `size`-byte file.
fn ops(rng: &mut Rng, size: u64) -> Vec<Op> {
    let n = rng.between(150, 300);
    let mut v = Vec::new();
    for _ in 0..n {
        let r = rng.below(100);
        // Where: anywhere, a page boundary, or up to the very end.
        let off = match rng.below(4) {
            0 => rng.below(size / 4096) * 4096,
            1 => size - rng.log_between(1, size.min(64 << 10)),
            _ => rng.below(size),
        };
        let room = size - off;
        if r < 75 {
            let len = if rng.one_in(4) {
                (rng.between(1, 16) * 4096).min(room)
            } else {
                rng.log_between(1, room.min(192 << 10))
            };
            v.push(Op::Write(off, rng.bytes(len as usize)));
        } else if r < 95 {
            let len = rng.log_between(1, room.min(256 << 10));
            v.push(Op::Zero(off, len));
        } else {
            v.push(Op::Flush);
        }
    }
    v
}

/// Feeds `ops` to one `qemu-io` process (commands on stdin) for the qcow2
/// overlay `image`; the data of each write comes from its own file in
/// `srcdir`. Fails on any output besides the prompts (qemu-io reports a
/// failed command on its output, not in its exit status).
fn qemu_apply(image: &Path, ops: &[Op], srcdir: &Path) {
    let mut script = String::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Write(off, d) => {
                let src = srcdir.join(format!("w{i}"));
                if !src.exists() {
                    std::fs::write(&src, d).unwrap();
                }
                script.push_str(&format!(
                    "write -q -s {} {off} {}\n",
                    src.display(),
                    d.len()
                ));
            }
            Op::Zero(off, len) => script.push_str(&format!("write -q -z {off} {len}\n")),
            Op::Flush => script.push_str("flush\n"),
        }
    }
    script.push_str("flush\nquit\n");
    let r = qemu_io(image, "writeback", script);
    assert!(
        r.ok(),
        "qemu-io on {} ({}):\nstdout: {}\nstderr: {}",
        image.display(),
        r.status,
        r.out,
        r.err
    );
}

/// Applies `ops` to `model` (the bytes of the merged view).
fn model_apply(model: &mut [u8], ops: &[Op]) {
    for op in ops {
        match op {
            Op::Write(off, d) => model[*off as usize..*off as usize + d.len()].copy_from_slice(d),
            Op::Zero(off, len) => model[*off as usize..(*off + *len) as usize].fill(0),
            Op::Flush => {}
        }
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn assert_same(what: &str, got: &[u8], want: &[u8], ctx: &str) {
    if let Some(at) = first_diff(got, want) {
        panic!(
            "{ctx}: {what} differs at byte {at} (page {}): lengths {} and {}, bytes {:?} and {:?}",
            at / 4096,
            got.len(),
            want.len(),
            got.get(at),
            want.get(at)
        );
    }
}

fn qemu_vs_budge(fs: &TestFs) {
    if !have_qemu(fs.kind) {
        return;
    }
    let s = seed("BUDGE_OVERLAY_QEMU_SEED", fs.kind);
    let ctx = format!(
        "{}: seed {s:#x} (BUDGE_OVERLAY_QEMU_SEED={s:#x} to repeat)",
        fs.kind
    );
    eprintln!("{ctx}");
    let mut rng = Rng(s);
    // A multiple of 512 (qemu's unit), usually not of 4096 or 64 KiB.
    let size = rng.between(8 << 20, 32 << 20) / 512 * 512;
    let base = data(size as usize, s);
    let ops = ops(&mut rng, size);
    let mut model = base.clone();
    model_apply(&mut model, &ops);
    let srcdir = fs.path("src");
    std::fs::create_dir(&srcdir).unwrap();

    // qcow2 overlays, one per cluster size, each over its own base.
    let mut committed: Vec<(String, PathBuf)> = Vec::new();
    for cluster in ["4k", "64k"] {
        let b = fs.path(&format!("base-q{cluster}"));
        let q = fs.path(&format!("ov-{cluster}.qcow2"));
        fs.file_with(&format!("base-q{cluster}"), &base);
        run(&mut qemu_img_create(&b, cluster, &q), "qemu-img create");
        qemu_apply(&q, &ops, &srcdir);
        run(&mut qemu_img_commit(&q), "qemu-img commit");
        committed.push((format!("qcow2 cluster {cluster}"), b));
    }

    // budge overlays, one per commit strategy the filesystem can run.
    let mut strategies = vec![
        CommitStrategy::Auto,
        CommitStrategy::Copy,
        CommitStrategy::InPlace,
    ];
    if fs.caps().ficlone.works {
        strategies.push(CommitStrategy::Reflink);
    }
    for strategy in strategies {
        let name = format!("base-b-{strategy}");
        let b = fs.path(&name);
        fs.file_with(&name, &base);
        let o = fs.path(&format!("ov-{strategy}"));
        let mut ov = Overlay::create(&b, &o, &OverlayOptions::default()).unwrap();
        for op in &ops {
            match op {
                Op::Write(off, d) => ov.write_at(*off, d).unwrap(),
                Op::Zero(off, len) => ov.zero(*off, *len).unwrap(),
                Op::Flush => ov.flush().unwrap(),
            }
        }
        let mut view = vec![0u8; size as usize];
        ov.read_at(0, &mut view).unwrap();
        assert_same(
            &format!("budge's view before the {strategy} commit"),
            &view,
            &model,
            &ctx,
        );
        let r = ov
            .commit(&CommitOptions {
                strategy,
                progress: None,
            })
            .unwrap_or_else(|e| panic!("{ctx}: {strategy} commit: {e}"));
        eprintln!("{}: budge {strategy} commit ran {}", fs.kind, r.strategy);
        // The overlay is empty now and shows the new base.
        assert_eq!(ov.changes(), vec![], "{ctx}: overlay not emptied");
        ov.read_at(0, &mut view).unwrap();
        assert_same(
            &format!("budge's view after the {strategy} commit"),
            &view,
            &model,
            &ctx,
        );
        ov.close().unwrap();
        committed.push((format!("budge {strategy} ({})", r.strategy), b));
    }

    // Byte for byte: every committed base against the model and against
    // the first qemu one.
    let bytes: Vec<(String, Vec<u8>)> = committed
        .into_iter()
        .map(|(what, p)| (what, read_all(&std::fs::File::open(p).unwrap())))
        .collect();
    for (what, b) in &bytes {
        assert_same(&format!("{what}: committed base vs model"), b, &model, &ctx);
        assert_same(
            &format!("{what}: committed base vs {}", bytes[0].0),
            b,
            &bytes[0].1,
            &ctx,
        );
    }
}

fs_test!(qemu_same_writes, qemu_vs_budge);
