//! `budge bench`: insert/collapse strategies side by side with the naive
//! rewrite. (Filled in below.)

use clap::Args;

/// Arguments of `budge bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Directory on the filesystem to measure [default: .]
    pub dir: Option<std::path::PathBuf>,
}

pub fn run(_args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("budge bench: not written yet".into())
}
