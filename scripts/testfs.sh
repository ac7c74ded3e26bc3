#!/usr/bin/env bash
# Creates (up) or removes (down) the real filesystems budge's tests run on:
# loop-mounted XFS (reflink=1), btrfs and ext4 images plus a tmpfs, each in a
# large and a small (for ENOSPC tests) size. Images are sparse files.
#
#   scripts/testfs.sh up     # prints BUDGE_TEST_FS=... and BUDGE_TEST_FS_SMALL=... lines
#   scripts/testfs.sh down
#   scripts/testfs.sh env    # prints the export lines for what is mounted now
#
# Root is needed (mount, losetup). Missing mkfs tools are installed with apt.
# BUDGE_TESTFS_ROOT picks the directory (default /var/tmp/budge-testfs).
set -euo pipefail

root=${BUDGE_TESTFS_ROOT:-/var/tmp/budge-testfs}
kinds=(xfs btrfs ext4 tmpfs)
# Large images are sparse: they only use the disk space the tests write.
declare -A big=([xfs]=6G [btrfs]=6G [ext4]=6G [tmpfs]=3G)
declare -A small=([xfs]=320M [btrfs]=128M [ext4]=64M [tmpfs]=64M)

log() { echo "testfs: $*" >&2; }

need_tools() {
  local missing=()
  command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
  command -v mkfs.btrfs >/dev/null || missing+=(btrfs-progs)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  # tests/overlay_qemu.rs and benches/overlay.rs compare with qcow2.
  { command -v qemu-io && command -v qemu-img; } >/dev/null || missing+=(qemu-utils)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || true
    apt-get install -y -qq "${missing[@]}" >&2 || log "apt-get install ${missing[*]} failed"
  fi
}

mkfs_for() { # kind image
  case "$1" in
    xfs) mkfs.xfs -q -f -m reflink=1 "$2" ;;
    btrfs) mkfs.btrfs -q -f "$2" >/dev/null ;;
    ext4) mkfs.ext4 -q -F "$2" ;;
  esac
}

mount_one() { # kind name size -> prints mountpoint or nothing
  local kind=$1 name=$2 size=$3 dir="$root/$2"
  mkdir -p "$dir"
  if [ "$kind" = tmpfs ]; then
    mount -t tmpfs -o "size=$size" "budge-$name" "$dir" || { log "mount tmpfs $name failed"; return 1; }
  else
    local img="$root/$name.img"
    rm -f "$img"
    truncate -s "$size" "$img"
    if ! mkfs_for "$kind" "$img" >&2; then log "mkfs.$kind failed"; return 1; fi
    mount -o loop "$img" "$dir" || { log "mount $kind ($name) failed"; return 1; }
  fi
  chmod 1777 "$dir"
  echo "$kind:$dir"
}

down() {
  for kind in "${kinds[@]}"; do
    for name in "$kind" "small-$kind"; do
      local dir="$root/$name"
      if mountpoint -q "$dir" 2>/dev/null; then
        umount "$dir" 2>/dev/null || umount -l "$dir" || log "could not unmount $dir"
      fi
      rm -f "$root/$name.img"
      rmdir "$dir" 2>/dev/null || true
    done
  done
}

env_lines() {
  local bigl=() smalll=()
  for kind in "${kinds[@]}"; do
    mountpoint -q "$root/$kind" 2>/dev/null && bigl+=("$kind:$root/$kind")
    mountpoint -q "$root/small-$kind" 2>/dev/null && smalll+=("$kind:$root/small-$kind")
  done
  (IFS=,; echo "export BUDGE_TEST_FS=${bigl[*]:-}"; echo "export BUDGE_TEST_FS_SMALL=${smalll[*]:-}")
}

up() {
  if [ "$(id -u)" != 0 ]; then log "not root: cannot create loop filesystems"; fi
  need_tools
  down
  mkdir -p "$root"
  for kind in "${kinds[@]}"; do
    mount_one "$kind" "$kind" "${big[$kind]}" >/dev/null || true
    mount_one "$kind" "small-$kind" "${small[$kind]}" >/dev/null || true
  done
  env_lines
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_lines ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
