//! A shared (`MAP_SHARED`) mapping of a file: the view of the page cache that
//! budge keeps coherent across inserts and collapses.
//!
//! The mapping owns its address range; bytes are read and written by copying
//! through [`SharedMap::read`] and [`SharedMap::write`], or borrowed through
//! [`SharedMap::as_slice`] while `&self` is held. Anything that changes the
//! file's layout takes the file, not the map, so the caller decides when to
//! re-read.
#![allow(unsafe_code)]

use std::fs::File;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, MsyncFlags, ProtFlags};

use crate::error::{Error, ErrorKind, Result};

/// A `MAP_SHARED` mapping of the first `len` bytes of a file.
#[derive(Debug)]
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain memory owned by this value; no thread-local
// state is involved, and all mutation goes through `&mut self`.
unsafe impl Send for SharedMap {}
// SAFETY: shared access only reads (`&self` methods never write).
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps `len` bytes of `file` from offset 0, read-write if `writable`.
    ///
    /// # Safety
    /// The caller promises that while the map lives, no other process
    /// modifies or truncates the mapped range of the file, except through
    /// budge operations this process performs while it holds no borrowed
    /// slice from [`as_slice`](Self::as_slice). (Truncating below the mapping
    /// makes accesses raise SIGBUS.)
    ///
    /// # Errors
    /// `InvalidArgument` for `len == 0`; `Io` from `mmap`.
    pub unsafe fn new(file: &File, len: usize, writable: bool) -> Result<Self> {
        if len == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "map 0 bytes")
                .with_hint("a mapping needs at least one byte"));
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping at a kernel-chosen address (null hint), so it
        // cannot alias any Rust object; `len > 0` was checked above.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, file, 0) }
                .map_err(|e| Error::os(format!("map {len} bytes"), "mmap", e.into()))?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::new(ErrorKind::Io, "map").with_hint("mmap returned null"))?;
        Ok(SharedMap { ptr, len, writable })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `new` refuses 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, n: usize) -> Result<()> {
        match offset.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("access {n} bytes at {offset}"),
            )
            .with_hint(format!("outside the {}-byte mapping", self.len))),
        }
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a live mapping owned by `self`; the
        // contract of `new` excludes concurrent modification while borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, writable; `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: `ptr..ptr+len` is a live, writable (checked) mapping owned
        // by `self`, and `&mut self` excludes every other borrow of it.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    /// Copies `buf.len()` bytes at `offset` out of the mapping.
    ///
    /// # Errors
    /// `InvalidArgument` if the range is outside the mapping.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        buf.copy_from_slice(&self.as_slice()[offset..offset + buf.len()]);
        Ok(())
    }

    /// Copies `data` into the mapping at `offset` (dirtying those pages).
    ///
    /// # Errors
    /// `InvalidArgument` if the range is outside the mapping or the map is
    /// read-only.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(
                Error::new(ErrorKind::InvalidArgument, "write through mapping")
                    .with_hint("the mapping is read-only"),
            );
        }
        self.check(offset, data.len())?;
        // SAFETY: bounds checked just above; the mapping is writable (checked)
        // and `&mut self` excludes any outstanding borrow of it.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len());
        }
        Ok(())
    }

    /// `msync(MS_SYNC)`: writes dirty pages back and waits.
    ///
    /// # Errors
    /// `Io` from `msync`.
    pub fn flush(&self) -> Result<()> {
        // SAFETY: the whole range is our live mapping.
        unsafe { rustix::mm::msync(self.ptr.as_ptr().cast(), self.len, MsyncFlags::SYNC) }
            .map_err(|e| Error::os("flush mapping", "msync", e.into()))
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` was returned by mmap in `new` and is unmapped
        // only here; no borrow can outlive `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// How the kernel should expect a mapped range to be accessed (`madvise`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Advice {
    /// `MADV_NORMAL`: the kernel's default readahead.
    #[default]
    Normal,
    /// `MADV_RANDOM`: no readahead around faults. It does not shrink folios
    /// already in the page cache: measured on XFS and ext4 (Linux 6.18), a
    /// one-byte store into a cache filled by large writes still writes back
    /// 2 MiB with either advice; from a cold cache both write 4 KiB, and
    /// `Random` only saves the read-around.
    Random,
    /// `MADV_SEQUENTIAL`: aggressive readahead.
    Sequential,
}

impl Advice {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Advice::Normal => "normal",
            Advice::Random => "random",
            Advice::Sequential => "sequential",
        }
    }
}

impl std::str::FromStr for Advice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "normal" => Ok(Advice::Normal),
            "random" => Ok(Advice::Random),
            "sequential" => Ok(Advice::Sequential),
            _ => Err(format!("unknown advice {s:?} (normal, random, sequential)")),
        }
    }
}

/// The PMD size on x86_64 and arm64 with 4 KiB pages: the boundary a
/// reservation starts on, so that 2 MiB folios can be mapped with one PMD.
const HUGE_ALIGN: usize = 2 << 20;

/// A large reserved range of virtual addresses (`PROT_NONE`, no memory
/// committed) whose first [`mapped`](Reservation::mapped) bytes map a file
/// `MAP_SHARED` from offset 0.
///
/// Growing the mapped length maps only the new part, right after the old, so
/// every address below the old end stays valid and keeps its page-table
/// entries; shrinking turns the cut-off part back into reservation. The base
/// address never changes while the reservation lives: this is what keeps a
/// store's earlier regions at the same address when a later one moves.
#[derive(Debug)]
pub struct Reservation {
    base: NonNull<u8>,
    reserved: usize,
    mapped: usize,
    writable: bool,
}

// SAFETY: plain memory owned by this value; mutation only through `&mut self`.
unsafe impl Send for Reservation {}
// SAFETY: `&self` methods only read.
unsafe impl Sync for Reservation {}

impl Reservation {
    /// Reserves `reserve` bytes of address space (a multiple of the page
    /// size), mapping nothing yet. A reservation of 2 MiB or more starts on a
    /// 2 MiB boundary, so that file offset and address agree modulo the PMD
    /// size and faults can map 2 MiB folios of the page cache with one PMD.
    ///
    /// # Errors
    /// `InvalidArgument` for 0 or an unaligned size; `Io` (ENOMEM) when the
    /// address space is exhausted.
    pub fn new(reserve: usize, writable: bool) -> Result<Self> {
        let page = rustix::param::page_size();
        if reserve == 0 || reserve % page != 0 {
            return Err(
                Error::new(ErrorKind::InvalidArgument, "reserve address space").with_hint(format!(
                    "{reserve} bytes is not a positive multiple of the {page}-byte page"
                )),
            );
        }
        let align = if reserve >= HUGE_ALIGN && HUGE_ALIGN > page {
            HUGE_ALIGN
        } else {
            page
        };
        let total = reserve.checked_add(align - page).ok_or_else(|| {
            Error::new(ErrorKind::InvalidArgument, "reserve address space")
                .with_hint(format!("{reserve} bytes is too large"))
        })?;
        // SAFETY: a fresh anonymous PROT_NONE mapping at a kernel-chosen
        // address; it aliases nothing and nothing can be read through it.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| {
            Error::os(
                format!("reserve {reserve} bytes of address space"),
                "mmap",
                e.into(),
            )
        })?;
        let start = ptr as usize;
        let head = start.next_multiple_of(align) - start;
        let tail = total - head - reserve;
        // SAFETY: `[start, start + head)` and `[start + head + reserve,
        // start + total)` lie inside the PROT_NONE mapping just made, which
        // nothing references yet; trimming them leaves `reserve` bytes that
        // start on an `align` boundary (both are page multiples: `start`,
        // `align` and `total` are).
        unsafe {
            if head > 0 {
                let _ = rustix::mm::munmap(ptr, head);
            }
            if tail > 0 {
                let _ = rustix::mm::munmap(ptr.cast::<u8>().add(head + reserve).cast(), tail);
            }
        }
        // SAFETY: `head < total`, so the pointer stays inside the mapping.
        let base = NonNull::new(unsafe { ptr.cast::<u8>().add(head) }).ok_or_else(|| {
            Error::new(ErrorKind::Io, "reserve address space").with_hint("mmap returned null")
        })?;
        Ok(Reservation {
            base,
            reserved: reserve,
            mapped: 0,
            writable,
        })
    }

    /// Bytes of address space reserved.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Bytes of the file currently mapped at the base.
    pub fn mapped(&self) -> usize {
        self.mapped
    }

    /// The base address (for reports; never dereference it directly).
    pub fn base(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// Makes the first `len` bytes of the reservation map the first `len`
    /// bytes of `file`: maps `[mapped, len)` if growing, returns
    /// `[len, mapped)` to the reservation if shrinking.
    ///
    /// # Safety
    /// The contract of [`SharedMap::new`]; in addition `file` is the same file
    /// every earlier call mapped (the already-mapped part is not remapped).
    ///
    /// # Errors
    /// `InvalidArgument` if `len` is unaligned or larger than the reservation;
    /// `Io` from `mmap`.
    pub unsafe fn map_file(&mut self, file: &File, len: usize) -> Result<()> {
        let page = rustix::param::page_size();
        if len % page != 0 || len > self.reserved {
            return Err(
                Error::new(ErrorKind::InvalidArgument, format!("map {len} bytes")).with_hint(
                    format!(
                        "needs a multiple of the {page}-byte page within the {}-byte reservation",
                        self.reserved
                    ),
                ),
            );
        }
        let prot = if self.writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        if len > self.mapped {
            // SAFETY: `mapped < len <= reserved` (checked above), so the target
            // lies inside our own reservation and MAP_FIXED replaces only
            // PROT_NONE pages no Rust reference can point into.
            unsafe {
                rustix::mm::mmap(
                    self.base.as_ptr().add(self.mapped).cast(),
                    len - self.mapped,
                    prot,
                    MapFlags::SHARED | MapFlags::FIXED,
                    file,
                    self.mapped as u64,
                )
            }
            .map_err(|e| Error::os(format!("map {len} bytes"), "mmap", e.into()))?;
        } else if len < self.mapped {
            // SAFETY: `len < mapped <= reserved`; the caller holds `&mut self`,
            // so no borrowed slice points into `[len, mapped)`.
            unsafe {
                rustix::mm::mmap_anonymous(
                    self.base.as_ptr().add(len).cast(),
                    self.mapped - len,
                    ProtFlags::empty(),
                    MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
                )
            }
            .map_err(|e| Error::os(format!("unmap down to {len} bytes"), "mmap", e.into()))?;
        }
        self.mapped = len;
        Ok(())
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.mapped => Ok(()),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("access {len} bytes at {offset}"),
            )
            .with_hint(format!("outside the {}-byte mapping", self.mapped))),
        }
    }

    /// The mapped bytes `[offset, offset + len)`.
    ///
    /// # Errors
    /// `InvalidArgument` outside the mapped part.
    pub fn bytes(&self, offset: usize, len: usize) -> Result<&[u8]> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(&[]);
        }
        // SAFETY: bounds checked just above: the range is inside the live
        // shared mapping, which stays mapped while `&self` is borrowed.
        Ok(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset), len) })
    }

    /// The mapped bytes `[offset, offset + len)`, writable.
    ///
    /// # Errors
    /// `InvalidArgument` outside the mapped part or on a read-only mapping.
    pub fn bytes_mut(&mut self, offset: usize, len: usize) -> Result<&mut [u8]> {
        let mut v = self.many_mut(&[(offset, len)])?;
        Ok(v.pop().unwrap_or_default())
    }

    /// Several disjoint writable ranges at once.
    ///
    /// # Errors
    /// `InvalidArgument` if any range is outside the mapping, two overlap, or
    /// the mapping is read-only.
    pub fn many_mut(&mut self, ranges: &[(usize, usize)]) -> Result<Vec<&mut [u8]>> {
        if !self.writable {
            return Err(
                Error::new(ErrorKind::InvalidArgument, "write through mapping")
                    .with_hint("the store is open read-only"),
            );
        }
        for (i, &(o, l)) in ranges.iter().enumerate() {
            self.check(o, l)?;
            for &(o2, l2) in &ranges[..i] {
                if l > 0 && l2 > 0 && o < o2 + l2 && o2 < o + l {
                    return Err(Error::new(ErrorKind::InvalidArgument, "borrow ranges")
                        .with_hint("two requested ranges overlap"));
                }
            }
        }
        Ok(ranges
            .iter()
            .map(|&(o, l)| {
                if l == 0 {
                    return Default::default();
                }
                // SAFETY: each range was bounds-checked and checked disjoint
                // from the others above; the mapping is writable and `&mut
                // self` excludes any other borrow for the slices' lifetime.
                unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(o), l) }
            })
            .collect())
    }

    /// `madvise` over `[offset, offset + len)` of the mapped part.
    ///
    /// # Errors
    /// `InvalidArgument` outside the mapping; `Io` from `madvise`.
    pub fn advise(&self, offset: usize, len: usize, advice: Advice) -> Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let a = match advice {
            Advice::Normal => rustix::mm::Advice::Normal,
            Advice::Random => rustix::mm::Advice::Random,
            Advice::Sequential => rustix::mm::Advice::Sequential,
        };
        // SAFETY: bounds checked; madvise with these hints never changes
        // memory contents.
        unsafe { rustix::mm::madvise(self.base.as_ptr().add(offset).cast(), len, a) }
            .map_err(|e| Error::os("advise mapping", "madvise", e.into()))
    }

    /// `msync(MS_SYNC)` over the mapped part.
    ///
    /// # Errors
    /// `Io` from `msync`.
    pub fn flush(&self) -> Result<()> {
        if self.mapped == 0 {
            return Ok(());
        }
        // SAFETY: `[base, base + mapped)` is our live mapping.
        unsafe { rustix::mm::msync(self.base.as_ptr().cast(), self.mapped, MsyncFlags::SYNC) }
            .map_err(|e| Error::os("flush mapping", "msync", e.into()))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: `[base, base + reserved)` was reserved in `new` and is
        // released only here; no borrow outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.reserved) };
    }
}

/// A read-only view stitched together from several files: a range of
/// address space in which each page-aligned piece maps some file at some
/// offset (`MAP_SHARED`, so writes to the file through `pwrite` show at
/// once) or the zero page. An overlay's merged view: the base mapped whole,
/// the overlay's runs mapped over it with `MAP_FIXED`.
#[derive(Debug)]
pub struct PatchMap {
    base: NonNull<u8>,
    /// Bytes the view shows.
    len: usize,
    /// `len` rounded up to the page size: what is reserved.
    reserved: usize,
}

// SAFETY: plain memory owned by this value; changed only through `&mut self`.
unsafe impl Send for PatchMap {}
// SAFETY: `&self` methods only read.
unsafe impl Sync for PatchMap {}

impl PatchMap {
    /// Reserves a view of `len` bytes, all reading as zeros.
    ///
    /// # Errors
    /// `InvalidArgument` for 0; `Io` (ENOMEM) when address space runs out.
    pub fn new(len: usize) -> Result<Self> {
        let page = rustix::param::page_size();
        if len == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "map 0 bytes")
                .with_hint("a mapping needs at least one byte"));
        }
        let reserved = len.next_multiple_of(page);
        // SAFETY: a fresh anonymous read-only mapping at a kernel-chosen
        // address; it aliases nothing.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                reserved,
                ProtFlags::READ,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| {
            Error::os(
                format!("reserve {len} bytes of address space"),
                "mmap",
                e.into(),
            )
        })?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| {
            Error::new(ErrorKind::Io, "reserve address space").with_hint("mmap returned null")
        })?;
        Ok(PatchMap {
            base,
            len,
            reserved,
        })
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        let page = rustix::param::page_size();
        match offset.checked_add(len) {
            Some(end) if end <= self.reserved && offset % page == 0 && len % page == 0 => Ok(()),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("map {len} bytes at {offset}"),
            )
            .with_hint(format!(
                "needs whole {page}-byte pages within the {}-byte view",
                self.reserved
            ))),
        }
    }

    /// Makes `[offset, offset + len)` of the view show `file` from
    /// `file_offset` (read-only, shared).
    ///
    /// # Safety
    /// The contract of [`SharedMap::new`] for that range of `file`: no
    /// process truncates it below the mapped range while the view lives
    /// (that would raise SIGBUS on access).
    ///
    /// # Errors
    /// `InvalidArgument` for unaligned or out-of-view ranges; `Io` from `mmap`.
    pub unsafe fn map_file(
        &mut self,
        offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
    ) -> Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the target range lies inside our own reservation (checked
        // above) and `&mut self` guarantees no slice borrowed from the view
        // is alive, so replacing the pages there cannot invalidate a
        // reference.
        unsafe {
            rustix::mm::mmap(
                self.base.as_ptr().add(offset).cast(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED | MapFlags::FIXED,
                file,
                file_offset,
            )
        }
        .map_err(|e| {
            let hint = if e == rustix::io::Errno::NOMEM {
                " (too many separate mappings: vm.max_map_count; use larger pages or read_at)"
            } else {
                ""
            };
            Error::os(
                format!("map {len} bytes at {offset}{hint}"),
                "mmap",
                e.into(),
            )
        })?;
        Ok(())
    }

    /// Makes `[offset, offset + len)` of the view read as zeros.
    ///
    /// # Errors
    /// `InvalidArgument` for unaligned or out-of-view ranges; `Io` from `mmap`.
    pub fn map_zero(&mut self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: inside our reservation (checked) and no borrow of the view
        // is alive (`&mut self`); anonymous pages alias nothing.
        unsafe {
            rustix::mm::mmap_anonymous(
                self.base.as_ptr().add(offset).cast(),
                len,
                ProtFlags::READ,
                MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
            )
        }
        .map_err(|e| Error::os(format!("map zeros at {offset}"), "mmap", e.into()))?;
        Ok(())
    }

    /// The view.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `[base, base + len)` is inside our live reservation, every
        // page of which is mapped readable; the contract of `map_file`
        // excludes truncation of the files behind it.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }
}

impl Drop for PatchMap {
    fn drop(&mut self) {
        // SAFETY: `[base, base + reserved)` was mapped in `new` (and only
        // replaced piecewise since); no borrow outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.reserved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_start_on_a_pmd_boundary() {
        for size in [HUGE_ALIGN, 3 * HUGE_ALIGN, 1 << 30] {
            let r = Reservation::new(size, false).unwrap();
            assert_eq!(r.base() % HUGE_ALIGN, 0, "{size}");
            assert_eq!(r.reserved(), size);
        }
        let page = rustix::param::page_size();
        let r = Reservation::new(page, false).unwrap();
        assert_eq!(r.base() % page, 0);
    }

    #[test]
    fn advice_names_round_trip() {
        for a in [Advice::Normal, Advice::Random, Advice::Sequential] {
            assert_eq!(a.name().parse::<Advice>(), Ok(a));
        }
    }
}
