//! # budge: mremap for files
//!
//! Insert or remove space in the middle of a large (memory-mapped) file by
//! changing filesystem metadata instead of moving bytes, and fall back,
//! visibly, where the filesystem cannot.
//!
//! A short tour:
//! - [`probe`] says what the filesystem under a directory can do (by trying it).
//! - [`insert`] and [`collapse`] shift a file's tail up or down, with the best
//!   [`Strategy`] the filesystem allows under the caller's [`Policy`], and
//!   report which ran and how many data bytes it copied.
//! - [`copy`] clones, copies (sparse-aware), punches and zeroes ranges.
//! - [`extents`] lists extents (FIEMAP) and data/hole maps (SEEK_DATA).
//!
//! ```no_run
//! use std::fs::OpenOptions;
//! use budge::{insert, ShiftOptions};
//!
//! let file = OpenOptions::new().read(true).write(true).open("data.bin")?;
//! // Make 64 KiB of room at 1 GiB; everything after it moves up.
//! let report = insert(&file, 1 << 30, 64 << 10, &ShiftOptions::default())?;
//! println!("{} copied {} bytes", report.strategy, report.bytes_copied);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The layers, in the order data flows: [`sys`] (the only code that calls the
//! kernel) → [`shift`] and [`copy`] (strategy chains) → features → the CLI.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod copy;
pub mod error;
pub mod extents;
pub mod map;
pub mod overlay;
pub mod range;
pub mod relocate;
pub mod shift;
pub mod snap;
pub mod store;
pub mod strategy;
pub mod sys;

pub use error::{Error, ErrorKind, Result};
pub use overlay::{Overlay, OverlayOptions};
pub use relocate::{relocate, relocate_path, RelocateOptions, RelocateReport, RelocateStrategy};
pub use shift::{collapse, insert, ShiftOptions, ShiftReport};
pub use store::{Store, StoreOptions};
pub use strategy::{Policy, Strategy};
pub use sys::probe::{probe, probe_file, probe_uncached, Capabilities, Support};
pub use sys::{FsInfo, FsKind};
