//! The naive way to insert or remove bytes in the middle of a file, written
//! the way an application without budge would: read the tail and write it
//! back at its new offset through a buffer, then fsync. The demo and the
//! benchmark compare against it; it shares no code with the library.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const BUF: usize = 1 << 20;

/// Inserts `len` zero bytes at `offset` by rewriting everything after it.
pub fn naive_insert(f: &File, offset: u64, len: u64) -> io::Result<()> {
    let size = f.metadata()?.len();
    f.set_len(size + len)?;
    let mut buf = vec![0u8; BUF];
    let mut end = size;
    while end > offset {
        let n = (end - offset).min(BUF as u64) as usize;
        let start = end - n as u64;
        f.read_exact_at(&mut buf[..n], start)?;
        f.write_all_at(&buf[..n], start + len)?;
        end = start;
    }
    let zeros = vec![0u8; BUF];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(BUF as u64) as usize;
        f.write_all_at(&zeros[..n], offset + at)?;
        at += n as u64;
    }
    f.sync_all()
}

/// Removes `[offset, offset+len)` by rewriting everything after it.
pub fn naive_collapse(f: &File, offset: u64, len: u64) -> io::Result<()> {
    let size = f.metadata()?.len();
    let mut buf = vec![0u8; BUF];
    let mut at = offset + len;
    while at < size {
        let n = (size - at).min(BUF as u64) as usize;
        f.read_exact_at(&mut buf[..n], at)?;
        f.write_all_at(&buf[..n], at - len)?;
        at += n as u64;
    }
    f.set_len(size - len)?;
    f.sync_all()
}
