//! The `budge` binary end to end on every filesystem of the matrix: output,
//! `--json`, exit codes (2 usage, 1 failure, 0 on a broken pipe) and error
//! messages that name the file, the operation and the reason.

#[path = "../../budge/tests/common/mod.rs"]
mod common;

use std::process::{Command, Output, Stdio};

use common::{data, read_all};

fn budge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_budge"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(budge(&["insert"]).status.code(), Some(2));
    assert_eq!(budge(&["insert", "f", "12q", "4k"]).status.code(), Some(2));
    let out = budge(&["insert", "f", "0", "4k", "--strategy", "magic"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown strategy"));
}

#[test]
fn probe_of_a_missing_path_fails() {
    let out = budge(&["probe", "/nonexistent/budge-dir"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("budge: probe in /nonexistent/budge-dir: stat:"),
        "{err}"
    );
}

#[test]
fn missing_file_exits_1_naming_it() {
    let out = budge(&["insert", "/nonexistent/budge-file", "0", "4k"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("budge: insert in /nonexistent/budge-file: open:"),
        "{err}"
    );
}

fs_test!(probe_json, |fs| {
    let v = json(&budge(&[
        "probe",
        fs.dir.path().to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["filesystem"], fs.kind);
    assert_eq!(v["block_size"], 4096);
    let native = matches!(fs.kind, "xfs" | "ext4");
    assert_eq!(v["capabilities"]["insert_range"]["works"], native);
    let table = budge(&["probe", fs.dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("insert_range"));
});

fs_test!(insert_and_collapse_report_strategy, |fs| {
    let orig = data(1 << 20, 1);
    drop(fs.file_with("f", &orig));
    let p = fs.path("f");
    let p = p.to_str().unwrap();
    let v = json(&budge(&["insert", p, "256k", "64KiB", "--json"]));
    let want = match fs.kind {
        "xfs" | "ext4" => "native",
        "btrfs" => "reflink",
        _ => "kernel-copy",
    };
    assert_eq!(v["strategy"], want);
    assert_eq!(v["new_size"], (1 << 20) + (64 << 10));
    let copied = v["bytes_copied"].as_u64().unwrap();
    assert_eq!(copied == 0, want != "kernel-copy");
    // Human output names the strategy and bytes copied.
    let out = budge(&["collapse", p, "256k", "64k", "--strategy", "user-copy"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // The 768 KiB tail moves, and the removed 64 KiB is saved first for roll-back.
    assert!(
        text.contains("strategy user-copy") && text.contains("851968 data bytes copied"),
        "{text}"
    );
    assert!(read_all(&std::fs::File::open(p).unwrap()) == orig);
});

fs_test!(metadata_only_failure_exits_1_and_explains, |fs| {
    let orig = data(64 << 10, 2);
    drop(fs.file_with("f", &orig));
    let p = fs.path("f");
    let out = budge(&[
        "insert",
        p.to_str().unwrap(),
        "1000",
        "100",
        "--metadata-only",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "budge: insert 100 B at 1000 B in {}: metadata-only:",
            p.display()
        )),
        "{err}"
    );
    assert!(err.contains("only a copy could do it"), "{err}");
    assert!(std::fs::read(&p).unwrap() == orig);
});

fs_test!(copy_clone_punch_zero_extents, |fs| {
    let orig = data(256 << 10, 3);
    drop(fs.file_with("src", &orig));
    let src = fs.path("src");
    let dst = fs.path("dst");
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let v = json(&budge(&["copy", s, d, "--json"]));
    assert!(std::fs::read(&dst).unwrap() == orig);
    let reflinks = fs.caps().ficlone.works;
    assert_eq!(
        v["strategy"],
        if reflinks { "reflink" } else { "kernel-copy" }
    );
    let out = budge(&[
        "clone",
        s,
        d,
        "--src-offset",
        "4k",
        "--dst-offset",
        "0",
        "--len",
        "8k",
    ]);
    assert_eq!(
        out.status.success(),
        reflinks,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if !reflinks {
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reflink"));
    }
    assert!(budge(&["punch", d, "0", "64k"]).status.success());
    assert!(budge(&["zero", d, "64k", "4k"]).status.success());
    let got = std::fs::read(&dst).unwrap();
    assert!(got[..68 << 10].iter().all(|&b| b == 0) && got[68 << 10..] == orig[68 << 10..]);
    let v = json(&budge(&["extents", d, "--json"]));
    if fs.kind == "tmpfs" {
        assert_eq!(v["fiemap"], false);
        assert_eq!(v["segments"][0]["kind"], "hole");
    } else {
        assert!(v["summary"]["extents"].as_u64().unwrap() >= 1);
        assert_eq!(v["summary"]["size"], 256 << 10);
    }
});

fs_test!(broken_pipe_exits_0, |fs| {
    // Thousands of data segments: far more output than a pipe buffer holds.
    let f = fs.file_with("f", &[]);
    for i in 0..3000u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", i * 8192).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_budge"))
        .args(["extents", fs.path("f").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
});

fs_test!(demo_runs_and_verifies, |fs| {
    let out = budge(&[
        "demo",
        fs.dir.path().to_str().unwrap(),
        "--size",
        "16M",
        "--json",
    ]);
    let v = json(&out);
    assert_eq!(v["verified"], true);
    assert_eq!(v["filesystem"], fs.kind);
    assert_eq!(v["naive"]["bytes_copied"], 8 << 20);
    // It cleans up after itself.
    assert_eq!(std::fs::read_dir(fs.dir.path()).unwrap().count(), 0);
});

fs_test!(snap_copies_point_in_time_and_refuses_to_clobber, |fs| {
    let src = fs.path("src");
    let out = fs.path("out");
    let d = data(3 << 20, 5);
    std::fs::write(&src, &d).unwrap();
    let p = |s: &std::path::Path| s.to_str().unwrap().to_string();
    let j = json(&budge(&["snap", &p(&src), &p(&out), "--json"]));
    let reflinks = matches!(fs.kind, "xfs" | "btrfs");
    let want = if reflinks { "reflink" } else { "kernel-copy" };
    assert_eq!(j["strategy"], want, "{j}");
    assert_eq!(j["bytes_copied"].as_u64().unwrap() == 0, reflinks, "{j}");
    assert_eq!(std::fs::read(&out).unwrap(), d);
    // OUT exists: refused, exit 1, naming it; --force replaces it.
    std::fs::write(&src, b"v2").unwrap();
    let o = budge(&["snap", &p(&src), &p(&out)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&p(&out)) && err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), d);
    let o = budge(&[
        "snap",
        &p(&src),
        &p(&out),
        "--force",
        "--strategy",
        "user-copy",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("strategy user-copy"));
    assert_eq!(std::fs::read(&out).unwrap(), b"v2");
    // --metadata-only where only a copy works: refused, OUT untouched.
    let o = budge(&["snap", &p(&src), &p(&out), "--force", "--metadata-only"]);
    assert_eq!(
        o.status.success(),
        reflinks,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"v2");
});

fs_test!(defrag_reports_and_keeps_content, |fs| {
    let (f, d) = common::surely_fragmented(fs, "f", 4 << 20, 11);
    drop(f);
    let p = fs.path("f");
    let p = p.to_str().unwrap();
    let extents = matches!(fs.kind, "xfs" | "btrfs" | "ext4");
    // Dry run: reports, changes nothing.
    let v = json(&budge(&[
        "defrag",
        p,
        "--chunk",
        "1M",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["extents_after"], v["extents_before"], "{v}");
    let v = json(&budge(&["defrag", p, "--chunk", "1M", "--json"]));
    assert_eq!(v["operation"], "defrag");
    assert_eq!(std::fs::read(fs.path("f")).unwrap(), d);
    let (before, after) = (
        v["extents_before"].as_u64().unwrap(),
        v["extents_after"].as_u64().unwrap(),
    );
    if extents {
        assert!(after < before, "{v}");
        assert!(v["bytes_moved"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["coherent"], true, "{v}");
        let want = match fs.kind {
            "ext4" => "move-ext",
            "btrfs" => "btrfs-defrag",
            // The matrix's XFS has no rmapbt, which swapext needs.
            _ => "cow",
        };
        assert_eq!(v["strategy"], want, "{v}");
    }
    if fs.kind == "xfs" {
        // cow says it updated the times; --keep-times moves by dedupe and
        // leaves them.
        assert!(v["notes"].to_string().contains("times were updated"), "{v}");
        let (g, dg) = common::surely_fragmented(fs, "g", 4 << 20, 12);
        let mtime = g.metadata().unwrap().modified().unwrap();
        let pg = fs.path("g");
        let v = json(&budge(&[
            "defrag",
            pg.to_str().unwrap(),
            "--chunk",
            "1M",
            "--keep-times",
            "--json",
        ]));
        assert_eq!(v["strategy"], "dedupe", "{v}");
        assert_eq!(g.metadata().unwrap().modified().unwrap(), mtime, "{v}");
        assert_eq!(std::fs::read(&pg).unwrap(), dg);
    }
    if !extents {
        assert_eq!(v["strategy"], "none", "{v}");
    }
    // Text output, a range, a forced strategy.
    let o = budge(&[
        "defrag",
        p,
        "--range",
        "0",
        "1M",
        "--strategy",
        "copy-rename",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("strategy copy-rename") && out.contains("not coherent"),
        "{out}"
    );
    assert_eq!(std::fs::read(fs.path("f")).unwrap(), d);
    // Bad strategy: usage error; missing file: failure naming it.
    assert_eq!(
        budge(&["defrag", p, "--strategy", "magic"]).status.code(),
        Some(2)
    );
    let o = budge(&["defrag", "/nonexistent/budge-f"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/budge-f"));
});

fs_test!(store_compact_reports_each_region, |fs| {
    let p = fs.path("st");
    let p = p.to_str().unwrap();
    assert!(budge(&["store", "create", p]).status.success());
    for n in ["a", "b"] {
        let o = budge(&["store", "add", p, n, "64K"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Interleaved growth of both regions, each step written.
    let mut want = [Vec::new(), Vec::new()];
    for i in 0..12u8 {
        let k = usize::from(i % 2);
        want[k].extend(std::iter::repeat_n(i, 64 << 10));
        let o = budge_stdin(&["store", "put", p, ["a", "b"][k]], &want[k]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let v = json(&budge(&["store", "compact", p, "--json"]));
    assert_eq!(v["operation"], "compact", "{v}");
    let regions = v["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2, "{v}");
    assert_eq!(regions[0]["region"], "a", "{v}");
    assert!(regions.iter().all(|r| r["coherent"] == true), "{v}");
    for (k, n) in ["a", "b"].iter().enumerate() {
        let o = budge(&["store", "cat", p, n]);
        assert!(o.stdout == want[k], "region {n} changed");
    }
    let o = budge(&["store", "compact", p, "--dry-run"]);
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("region \"b\" (dry run)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = budge(&["store", "compact", p, "--strategy", "copy-rename"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in place"));
});

fn budge_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_budge"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fs_test!(overlay_create_write_read_diff_export_commit_discard, |fs| {
    let p = |s: &std::path::Path| s.to_str().unwrap().to_string();
    let (base, ov, out) = (p(&fs.path("base")), p(&fs.path("ov")), p(&fs.path("out")));
    let d = data(1 << 20, 8);
    std::fs::write(&base, &d).unwrap();
    let j = json(&budge(&["overlay", "create", &base, &ov, "--json"]));
    assert_eq!(j["status"]["size"], 1 << 20, "{j}");
    let o = budge_stdin(&["overlay", "write", &ov, "5000"], b"hello overlay");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    json(&budge(&["overlay", "zero", &ov, "64K", "128K", "--json"]));
    let o = budge(&["overlay", "read", &ov, "5000", "13"]);
    assert_eq!(o.stdout, b"hello overlay");
    let j = json(&budge(&["overlay", "diff", &ov, "--json"]));
    let changes = j["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{j}");
    assert_eq!(changes[0]["offset"], 4096);
    assert_eq!(changes[0]["kind"], "data");
    assert_eq!(changes[1]["offset"], 65536);
    assert_eq!(changes[1]["len"], 131072);
    assert_eq!(changes[1]["kind"], "zero");
    let j = json(&budge(&["overlay", "status", &ov, "--json"]));
    assert_eq!(j["present_pages"], 1, "{j}");
    assert_eq!(j["zero_pages"], 32, "{j}");
    let mut want = d.clone();
    want[5000..5013].copy_from_slice(b"hello overlay");
    want[65536..65536 + 131072].fill(0);
    json(&budge(&["overlay", "export", &ov, &out, "--json"]));
    assert!(std::fs::read(&out).unwrap() == want);
    // The base is untouched until commit.
    assert!(std::fs::read(&base).unwrap() == d);
    let j = json(&budge(&["overlay", "commit", &ov, "--json"]));
    let atomic = matches!(fs.kind, "xfs" | "btrfs");
    assert_eq!(j["atomic"], atomic, "{j}");
    assert_eq!(j["pages"], 33, "{j}");
    assert!(std::fs::read(&base).unwrap() == want);
    let j = json(&budge(&["overlay", "diff", &ov, "--json"]));
    assert!(j["changes"].as_array().unwrap().is_empty());
    // Errors name the file, the operation and the reason; exit 1.
    let o = budge(&["overlay", "read", &ov, "1M", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&ov) && err.contains("past the end"), "{err}");
    let o = budge(&["overlay", "commit", &ov, "--strategy", "sideways"]);
    assert_eq!(o.status.code(), Some(2));
    json(&budge(&["overlay", "discard", &ov, "--json"]));
    assert!(!fs.path("ov").exists());
    assert!(std::fs::read(&base).unwrap() == want);
});
