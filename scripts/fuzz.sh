#!/usr/bin/env bash
# A bounded cargo-fuzz run of the store's header and table parser
# (fuzz/fuzz_targets/store_header.rs).
#
#   scripts/fuzz.sh [SECONDS] [TARGET]     # default: 60 s of store_header
#
# Exits non-zero if the target crashes (the input is saved under
# fuzz/artifacts/TARGET/) or cannot be built.
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, -Cpasses=...)
# to rustc. This machine has only a stable toolchain, so the script sets
# RUSTC_BOOTSTRAP=1, which lets stable rustc accept them (the sanitizer
# runtimes ship with the stable x86_64-unknown-linux-gnu std). If the ASan
# build fails anyway it retries with `--sanitizer none` (libFuzzer's coverage
# guidance still works; only memory-error detection is lost, which matters
# little for safe Rust). BUDGE_FUZZ_SANITIZER=none|address|... forces one.
#
# The corpus grows in fuzz/corpus/TARGET (not committed); the committed seeds
# in fuzz/seeds/TARGET (valid encoded headers) are read as a second corpus.
set -euo pipefail

secs=${1:-60}
target=${2:-store_header}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

log() { echo "fuzz: $*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked >&2
fi

export RUSTC_BOOTSTRAP=1
sanitizer=${BUDGE_FUZZ_SANITIZER:-}
if [ -z "$sanitizer" ]; then
  if cargo fuzz build "$target" >&2; then
    sanitizer=address
  else
    log "the ASan build failed; falling back to --sanitizer none"
    sanitizer=none
  fi
fi
cargo fuzz build --sanitizer "$sanitizer" "$target" >&2

corpus="corpus/$target"
seeds="seeds/$target"
mkdir -p "$corpus" "artifacts/$target"
args=("$corpus")
[ -d "$seeds" ] && args+=("$seeds")

log "running $target for ${secs}s (sanitizer: $sanitizer)"
logfile=$(mktemp)
trap 'rm -f "$logfile"' EXIT
set +e
cargo fuzz run --sanitizer "$sanitizer" "$target" "${args[@]}" -- \
  -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=4096 \
  -print_final_stats=1 2>&1 | tee "$logfile" | grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE|pulse)|Done|stat::|==[0-9]+==|SUMMARY|.*panicked|artifact_prefix|Test unit written)' >&2
rc=${PIPESTATUS[0]}
set -e

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logfile" | tail -1)
speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logfile" | tail -1)
cov=$(grep -oE 'cov: [0-9]+' "$logfile" | tail -1 || true)
log "$target: ${runs:-?} runs, ${speed:-?} exec/s, ${cov:-cov: ?}, corpus $(find "$corpus" -type f | wc -l) files, exit $rc"
if [ "$rc" -ne 0 ]; then
  log "CRASH or failure (exit $rc); see the log above and fuzz/artifacts/$target/"
  tail -60 "$logfile" >&2
  exit "$rc"
fi
