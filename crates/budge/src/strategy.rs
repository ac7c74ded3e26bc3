//! The names of the ways budge can carry out an operation, and the policy
//! that limits them. Pure data: no I/O.

use std::fmt;
use std::str::FromStr;

/// How an operation was (or must be) carried out.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The filesystem's own metadata operation: `fallocate`
    /// INSERT_RANGE/COLLAPSE_RANGE/ZERO_RANGE/PUNCH_HOLE. Copies nothing.
    Native,
    /// Sharing blocks with FICLONERANGE (for a shift: through a temporary
    /// file). Copies nothing but unaligned edges.
    Reflink,
    /// `copy_file_range`: data moves, but not through user space.
    KernelCopy,
    /// `pread`/`pwrite` through a buffer: the last resort.
    UserCopy,
    /// An insert at EOF: the file was extended with zeros (`ftruncate`).
    Extend,
    /// A collapse reaching EOF: the file was truncated.
    Truncate,
    /// Nothing to do (zero length).
    Nothing,
}

impl Strategy {
    /// The name used by the CLI and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Native => "native",
            Strategy::Reflink => "reflink",
            Strategy::KernelCopy => "kernel-copy",
            Strategy::UserCopy => "user-copy",
            Strategy::Extend => "extend",
            Strategy::Truncate => "truncate",
            Strategy::Nothing => "none",
        }
    }

    /// Whether this strategy moves data bytes (O(n)) rather than metadata.
    pub fn copies_data(self) -> bool {
        matches!(self, Strategy::KernelCopy | Strategy::UserCopy)
    }

    /// The strategies a caller may force, best first.
    pub const FORCEABLE: [Strategy; 4] = [
        Strategy::Native,
        Strategy::Reflink,
        Strategy::KernelCopy,
        Strategy::UserCopy,
    ];
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::FORCEABLE
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown strategy {s:?} (expected native, reflink, kernel-copy or user-copy)"
                )
            })
    }
}

/// What the caller allows.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Only metadata strategies (native, reflink); refuse, touching nothing,
    /// when only a copy could do it.
    MetadataOnly,
    /// Fall back to copying data when metadata strategies cannot run.
    #[default]
    AllowCopy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        for s in Strategy::FORCEABLE {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
        }
        assert!("nope".parse::<Strategy>().is_err());
        assert!(Strategy::UserCopy.copies_data());
        assert!(!Strategy::Reflink.copies_data());
    }
}
