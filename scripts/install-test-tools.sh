#!/usr/bin/env bash
# System tools the tests use to build tricky trees (POSIX ACLs, xattrs). Needs root and
# Debian's package registry; skipped quietly where they are already present.
set -euo pipefail
if command -v setfacl >/dev/null && command -v getfattr >/dev/null; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "note: setfacl/getfattr missing and not root; ACL tests will be skipped" >&2
  exit 0
fi
apt-get update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq acl attr >/dev/null
