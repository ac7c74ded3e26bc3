//! `budge store bench`: the store scenario from issue 3 (placeholder; the
//! benchmark helper fills this in).

use std::path::PathBuf;

use clap::Args;

/// Arguments of `budge store bench`.
#[derive(Args)]
pub struct StoreBenchArgs {
    /// Directories, each on a filesystem to measure [default: .]
    pub dirs: Vec<PathBuf>,
    /// Small sizes, few runs: a smoke test of the harness.
    #[arg(long)]
    pub quick: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Runs the store benchmark.
pub fn run(_args: &StoreBenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("budge store bench: not implemented yet".into())
}
