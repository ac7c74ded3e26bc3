//! Byte-moving engines shared by the copy and shift strategies: the kernel's
//! `copy_file_range` (no data through user space) and a plain
//! `pread`/`pwrite` loop. Both move a range in memmove order with chunks no
//! larger than the move distance, so no chunk overwrites bytes another chunk
//! has yet to read, and a failure leaves a precisely known state: the chunks
//! counted in [`Partial::done`] are complete, and the source bytes of every
//! chunk not yet done are intact.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::range::{memmove_chunks, move_chunk};
use crate::sys;

/// Called with `(bytes_done, bytes_total)` as an O(n) copy advances.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Which engine moves the bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// `copy_file_range` (may reflink on XFS/btrfs).
    Kernel,
    /// `pread` + `pwrite` through a buffer.
    User,
}

/// A move that stopped early.
#[derive(Debug)]
pub(crate) struct Partial {
    /// Bytes completed, counted in memmove order: the top `done` bytes when
    /// moving up, the bottom `done` bytes when moving down.
    pub done: u64,
    /// The call that failed.
    pub call: &'static str,
    /// Its error.
    pub err: io::Error,
}

/// The largest chunk one call moves; also bounds progress granularity.
const MAX_CHUNK: u64 = 16 << 20;

/// Copies `len` bytes from `src` to `dst`, each given as (file, offset).
/// When `same_file` (the caller knows), the ranges may overlap (memmove
/// semantics).
pub(crate) fn move_bytes(
    engine: Engine,
    (src, src_off): (&File, u64),
    (dst, dst_off): (&File, u64),
    len: u64,
    same_file: bool,
    progress: Option<Progress<'_>>,
) -> Result<(), Partial> {
    let chunk = if same_file {
        move_chunk(src_off.abs_diff(dst_off), MAX_CHUNK)
    } else {
        MAX_CHUNK
    };
    let mut buf = match engine {
        Engine::User => vec![0u8; usize::try_from(chunk.min(len)).unwrap_or(1 << 20)],
        Engine::Kernel => Vec::new(),
    };
    let mut done = 0;
    for (at, n) in memmove_chunks(src_off, dst_off, len, chunk) {
        fail::fail_point!("budge::move-chunk", |_| Err(injected(done)));
        let r = match engine {
            Engine::Kernel => kernel_copy(src, src_off + at, dst, dst_off + at, n),
            Engine::User => user_copy(src, src_off + at, dst, dst_off + at, n, &mut buf),
        };
        if let Err((call, err)) = r {
            return Err(Partial { done, call, err });
        }
        done += n;
        if let Some(p) = progress {
            p(done, len);
        }
    }
    Ok(())
}

/// `copy_file_range` until `n` bytes moved (it returns short counts on XFS
/// and btrfs when the length has an unaligned tail).
fn kernel_copy(
    src: &File,
    so: u64,
    dst: &File,
    d: u64,
    n: u64,
) -> Result<(), (&'static str, io::Error)> {
    let mut at = 0;
    while at < n {
        let want = usize::try_from(n - at).unwrap_or(usize::MAX);
        match sys::copy_file_range(src, so + at, dst, d + at, want) {
            Ok(0) => return Err(("copy_file_range", io::ErrorKind::UnexpectedEof.into())),
            Ok(k) => at += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(("copy_file_range", e)),
        }
    }
    Ok(())
}

fn user_copy(
    src: &File,
    so: u64,
    dst: &File,
    d: u64,
    n: u64,
    buf: &mut Vec<u8>,
) -> Result<(), (&'static str, io::Error)> {
    let mut at = 0;
    while at < n {
        let k = usize::try_from(n - at)
            .unwrap_or(usize::MAX)
            .min(buf.len().max(1));
        if buf.len() < k {
            buf.resize(k, 0);
        }
        src.read_exact_at(&mut buf[..k], so + at)
            .map_err(|e| ("pread", e))?;
        dst.write_all_at(&buf[..k], d + at)
            .map_err(|e| ("pwrite", e))?;
        at += k as u64;
    }
    Ok(())
}

/// The error a `budge::move-chunk` failpoint injects (tests only).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected(done: u64) -> Partial {
    Partial {
        done,
        call: "failpoint",
        err: io::Error::other("injected failure"),
    }
}

/// Below this move distance, an overlapping same-file copy goes through
/// [`move_buffered`] instead of distance-sized chunks.
pub(crate) const BOUNCE_BELOW: u64 = 64 << 10;

/// A same-file memmove of `len` bytes from `src_off` to `dst_off` in
/// memmove-ordered chunks of up to 1 MiB, each read whole into memory before
/// it is written, so the chunk size does not depend on the move distance.
/// On failure, `done` counts the completed chunks; the failing chunk's own
/// source may be partly overwritten (callers report, not roll back).
pub(crate) fn move_buffered(
    file: &File,
    src_off: u64,
    dst_off: u64,
    len: u64,
    progress: Option<Progress<'_>>,
) -> Result<(), Partial> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; usize::try_from(CHUNK.min(len)).unwrap_or(1 << 20)];
    let mut done = 0;
    for (at, n) in memmove_chunks(src_off, dst_off, len, CHUNK) {
        let b = &mut buf[..usize::try_from(n).unwrap_or(0)];
        file.read_exact_at(b, src_off + at).map_err(|err| Partial {
            done,
            call: "pread",
            err,
        })?;
        file.write_all_at(b, dst_off + at).map_err(|err| Partial {
            done,
            call: "pwrite",
            err,
        })?;
        done += n;
        if let Some(p) = progress {
            p(done, len);
        }
    }
    Ok(())
}

/// Writes `len` zero bytes at `offset` (the last resort for zeroing).
pub(crate) fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(1 << 20)];
    let mut at = 0;
    while at < len {
        let k = usize::try_from(len - at)
            .unwrap_or(usize::MAX)
            .min(zeros.len());
        file.write_all_at(&zeros[..k], offset + at)?;
        at += k as u64;
    }
    Ok(())
}
