#!/usr/bin/env bash
# The whole test suite, on real filesystems: mounts loop XFS (reflink), btrfs,
# ext4 and a tmpfs (scripts/testfs.sh), runs `cargo test` for the workspace
# with BUDGE_TEST_FS pointing at them, and tears them down afterwards.
#
# Under CI=true a filesystem that cannot be mounted fails the run; otherwise
# the script says loudly which ones it skipped. Needs root for mount/losetup.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p budge shift).
set -euo pipefail
cd "$(dirname "$0")/.."

ci=false
case "${CI:-}" in true|1) ci=true ;; esac

command -v cargo >/dev/null || { echo "test.sh: cargo is not installed" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then
  eval "$(scripts/testfs.sh up)"
  trap 'scripts/testfs.sh down' EXIT
else
  echo "test.sh: not root: cannot mount test filesystems" >&2
  export BUDGE_TEST_FS="" BUDGE_TEST_FS_SMALL=""
fi

missing=()
for kind in xfs btrfs ext4 tmpfs; do
  case ",${BUDGE_TEST_FS}," in *",$kind:"*) ;; *) missing+=("$kind") ;; esac
  case ",${BUDGE_TEST_FS_SMALL}," in *",$kind:"*) ;; *) missing+=("small-$kind") ;; esac
done
if [ ${#missing[@]} -gt 0 ]; then
  if $ci; then
    echo "test.sh: FAIL: under CI these test filesystems are required but missing: ${missing[*]}" >&2
    exit 1
  fi
  echo "################################################################" >&2
  echo "# test.sh: SKIPPING filesystems that could not be mounted: ${missing[*]}" >&2
  echo "# tests on them will print SKIPPED and pass vacuously" >&2
  echo "################################################################" >&2
fi
echo "test.sh: filesystems: $BUDGE_TEST_FS" >&2

cargo test --workspace --features budge/failpoints "$@"

if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: WARNING: skipped filesystems: ${missing[*]}" >&2
fi
