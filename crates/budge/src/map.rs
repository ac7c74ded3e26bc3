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
