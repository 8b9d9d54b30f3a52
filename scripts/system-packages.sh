#!/usr/bin/env bash
# System packages the tests need beyond Python: FUSE 3 (strongroom mount, and pyfuse3's
# build), rsync (the mount tests copy out of a mount with it) and btrfs-progs (snapshots,
# tested on a btrfs file system in a loop device).
# Installs only what is missing; without root it says what to install and goes on, and
# the tests that need these parts skip with that reason.
set -euo pipefail
need=()
# qemu-utils: qemu-img checks exported VHD and raw images (image points); e2fsprogs, fdisk and
# util-linux: mkfs.ext4, fsck, sfdisk, blkid, findmnt for volume, image and system-state points.
for pkg in fuse3 libfuse3-dev pkg-config rsync btrfs-progs qemu-utils e2fsprogs fdisk util-linux; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "not root: install ${need[*]} (apt-get install ${need[*]}) for the mount and snapshot tests" >&2
    exit 0
fi
apt-get update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need[@]}"
