//! Pure arithmetic on byte ranges: alignment, overflow, size parsing and
//! formatting. No I/O here, so it is unit-tested (and fuzzable) without a
//! filesystem.

/// Rounds `x` down to a multiple of `align` (a power of two or any non-zero value).
pub fn align_down(x: u64, align: u64) -> u64 {
    debug_assert!(align > 0);
    x - x % align
}

/// Rounds `x` up to a multiple of `align`; `None` on overflow.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align > 0);
    match x % align {
        0 => Some(x),
        r => x.checked_add(align - r),
    }
}

/// Whether `x` is a multiple of `align`.
pub fn is_aligned(x: u64, align: u64) -> bool {
    align != 0 && x % align == 0
}

/// Whether `[a, a+len)` and `[b, b+len)` overlap (both non-empty).
pub fn overlaps(a: u64, b: u64, len: u64) -> bool {
    len > 0 && a < b.saturating_add(len) && b < a.saturating_add(len)
}

/// The largest file offset the kernel accepts (`MAX_LFS_FILESIZE` on 64-bit).
pub const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

/// Splits `[0, total)` into chunks of at most `chunk` bytes, in the order a
/// same-file move from `src` to `dst` must copy them so that no chunk
/// overwrites bytes not yet copied (memmove order): descending when moving
/// to higher offsets, ascending otherwise. Each item is `(offset_in_range, len)`.
pub fn memmove_chunks(src: u64, dst: u64, total: u64, chunk: u64) -> Vec<(u64, u64)> {
    assert!(chunk > 0);
    let mut out = Vec::with_capacity(usize::try_from(total / chunk + 1).unwrap_or(0));
    let mut at = 0;
    while at < total {
        let n = chunk.min(total - at);
        out.push((at, n));
        at += n;
    }
    if dst > src {
        out.reverse();
    }
    out
}

/// The chunk size to use for a same-file move by `distance` bytes: no larger
/// than the distance (so a chunk's source and destination never overlap) and
/// no larger than `max`.
pub fn move_chunk(distance: u64, max: u64) -> u64 {
    distance.clamp(1, max.max(1))
}

/// Formats a byte count for humans: `64 KiB`, `1 GiB`, `1.5 MiB`, `4097 B`.
pub fn fmt_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut div = 1u64;
    while unit + 1 < UNITS.len() && n / div >= 1024 {
        div *= 1024;
        unit += 1;
    }
    if n % div == 0 {
        format!("{} {}", n / div, UNITS[unit])
    } else {
        #[allow(clippy::cast_precision_loss)]
        let v = n as f64 / div as f64;
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// Parses a size with an optional binary suffix: `4096`, `4k`, `64KiB`, `1G`,
/// `2 MB` (all suffixes are powers of 1024). Returns `None` on bad syntax or
/// overflow.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        assert_eq!(align_down(4097, 4096), 4096);
        assert_eq!(align_up(4097, 4096), Some(8192));
        assert_eq!(align_up(8192, 4096), Some(8192));
        assert_eq!(align_up(u64::MAX, 4096), None);
        assert!(is_aligned(0, 4096));
        assert!(!is_aligned(1, 4096));
        assert!(!is_aligned(1, 0));
    }

    #[test]
    fn overlap() {
        assert!(overlaps(0, 10, 11));
        assert!(!overlaps(0, 10, 10));
        assert!(!overlaps(10, 0, 10));
        assert!(!overlaps(0, 0, 0));
        assert!(overlaps(5, 5, 1));
    }

    #[test]
    fn chunks_in_memmove_order() {
        assert_eq!(
            memmove_chunks(0, 10, 25, 10),
            vec![(20, 5), (10, 10), (0, 10)]
        );
        assert_eq!(
            memmove_chunks(10, 0, 25, 10),
            vec![(0, 10), (10, 10), (20, 5)]
        );
        assert!(memmove_chunks(0, 1, 0, 1).is_empty());
        assert_eq!(move_chunk(64 << 10, 8 << 20), 64 << 10);
        assert_eq!(move_chunk(1 << 30, 8 << 20), 8 << 20);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2 MB"), Some(2 << 20));
        assert_eq!(parse_size("16e"), None);
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("1x"), None);
        assert_eq!(fmt_size(65536), "64 KiB");
        assert_eq!(fmt_size(1 << 30), "1 GiB");
        assert_eq!(fmt_size(1536), "1.50 KiB");
        assert_eq!(fmt_size(100), "100 B");
        assert_eq!(fmt_size(4 << 60), "4 EiB");
    }

    proptest::proptest! {
        #[test]
        fn chunks_cover_range_without_overlap(src in 0u64..1000, dst in 0u64..1000, total in 0u64..5000, any in 1u64..300, bounce: bool) {
            // Distance-sized chunks (the engines) or any size read whole
            // before writing (the buffered move): both are memmove.
            let chunk = if bounce { any } else { move_chunk(src.abs_diff(dst), 64) };
            let chunks = memmove_chunks(src, dst, total, chunk);
            let mut covered: Vec<_> = chunks.clone();
            covered.sort_unstable();
            let mut at = 0;
            for (o, l) in covered { proptest::prop_assert_eq!(o, at); at += l; }
            proptest::prop_assert_eq!(at, total);
            // Simulate the move on a model: byte-identical to memmove.
            let size = (src.max(dst) + total) as usize;
            let mut buf: Vec<u32> = (0..size as u32).collect();
            let mut want = buf.clone();
            want.copy_within(src as usize..(src + total) as usize, dst as usize);
            for (o, l) in chunks {
                let (s, d, l) = ((src + o) as usize, (dst + o) as usize, l as usize);
                let tmp: Vec<u32> = buf[s..s + l].to_vec();
                buf[d..d + l].copy_from_slice(&tmp);
            }
            proptest::prop_assert_eq!(buf, want);
        }

        #[test]
        fn size_roundtrip(n in 0u64..(1u64 << 40)) {
            proptest::prop_assert_eq!(parse_size(&n.to_string()), Some(n));
        }
    }
}
