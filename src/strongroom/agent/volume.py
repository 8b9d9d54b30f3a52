"""Volume backups (kind `volume`): one whole filesystem, named by its mount point.

What a volume is comes from /proc/self/mountinfo: the mount whose mount point is the path
given. Like MARS, it refuses what it cannot protect, with one line each: a path that is not a
mount point, network and FUSE filesystems, pseudo filesystems (proc, sysfs, ..., and tmpfs
unless asked), read-only media. The walk stays on the volume's device: nested mounts are not
entered, and the summary lists them. The point records the filesystem's type, UUID, label
and size (sealed, in the manifest's `volume` field).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from strongroom.agent.backup import Backup, _dir_entry
from strongroom.errors import StrongroomError, UsageError
from strongroom.model import Entry, display_path

NETWORK = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "ceph", "glusterfs", "afs", "coda",
           "davfs", "ocfs2", "gfs2", "lustre", "beegfs", "orangefs", "sshfs", "virtiofs"}
PSEUDO = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "securityfs", "tracefs",
          "pstore", "bpf", "configfs", "mqueue", "hugetlbfs", "autofs", "binfmt_misc", "fusectl",
          "efivarfs", "rpc_pipefs", "nsfs", "selinuxfs"}
_READ_ONLY_MEDIA = {"squashfs", "iso9660", "udf", "erofs", "cramfs"}
_TMPFS = {"tmpfs", "ramfs"}
_BLKID_TIMEOUT_S = 10


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    device: int  # st_dev of the filesystem (major:minor)
    mount_point: bytes
    options: tuple[str, ...]  # the mount's own
    fstype: str
    source: str
    super_options: tuple[str, ...]  # the filesystem's

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "ro" in self.super_options


def _unescape(field: bytes) -> bytes:
    # mountinfo writes space, tab, newline and backslash as \ooo
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field)


def mounts() -> list[Mount]:
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            major, minor = fields[2].split(b":")
            out.append(Mount(int(fields[0]), os.makedev(int(major), int(minor)), _unescape(fields[4]),
                             tuple(fields[5].decode().split(",")), fields[sep + 1].decode(),
                             _unescape(fields[sep + 2]).decode("utf-8", "backslashreplace"),
                             tuple(fields[sep + 3].decode().split(",")) if len(fields) > sep + 3 else ()))
        except (ValueError, IndexError):
            continue
    return out


def mount_at(path: bytes) -> Mount | None:
    """The mount whose mount point is `path` (the last one mounted there: the one seen)."""
    found = [m for m in mounts() if m.mount_point == path]
    return found[-1] if found else None


def refusal(m: Mount, allow_tmpfs: bool) -> str | None:
    """Why this mount cannot be backed up as a volume, or None."""
    where = display_path(m.mount_point)
    kind = m.fstype.split(".")[0]
    if kind in NETWORK or m.source.startswith("//") or (":" in m.source and kind in ("fuse", "fuseblk")
                                                         and "sshfs" in m.fstype):
        return f"{where} is a network filesystem ({m.fstype}): back up the server's volume on the server"
    if kind in ("fuse", "fuseblk"):
        return f"{where} is a FUSE mount ({m.fstype}): its files may live anywhere; back them up as files"
    if m.fstype in _READ_ONLY_MEDIA:
        return f"{where} is read-only media ({m.fstype}): nothing on it can change"
    if m.fstype in PSEUDO:
        return f"{where} is a pseudo filesystem ({m.fstype}): it holds no data of its own"
    if m.fstype in _TMPFS and not allow_tmpfs:
        return f"{where} is a tmpfs (in memory, gone at reboot): add --allow-tmpfs to back it up anyway"
    if m.read_only:
        return f"{where} is mounted read-only (read-only media): nothing on it can change"
    return None


def _blkid(device: str) -> dict[str, str]:
    if not device.startswith("/dev/"):
        return {}
    try:
        out = subprocess.run(["blkid", "-o", "export", "--", device], capture_output=True, text=True,
                             timeout=_BLKID_TIMEOUT_S, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@dataclass(frozen=True)
class VolumeInfo:
    """What a volume point records of its filesystem (the manifest's `volume` field)."""

    mount: bytes
    device: str
    fstype: str
    uuid: str | None
    label: str | None
    size: int  # bytes the filesystem holds (statvfs)
    used: int

    def doc(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def shown(doc: dict[str, Any]) -> dict[str, Any]:
        """For JSON and tables: the mount point as text."""
        return {**doc, "mount": display_path(doc["mount"])}


def check_volume(path: bytes, allow_tmpfs: bool) -> tuple[Mount, VolumeInfo]:
    """The volume mounted at `path`, refused with one line if it cannot be protected."""
    shown = display_path(path)
    real = os.path.realpath(os.path.abspath(path))
    if not os.path.isdir(real):
        raise UsageError(f"{shown} is not a directory (give the mount point of the volume)")
    m = mount_at(real)
    if m is None:
        raise UsageError(f"{shown} is not a mount point (a volume is named by where it is mounted; "
                         "back up a folder as files instead)")
    why = refusal(m, allow_tmpfs)
    if why:
        raise UsageError(why)
    st = os.statvfs(real)
    ids = _blkid(m.source)
    info = VolumeInfo(real, m.source, m.fstype, ids.get("UUID"), ids.get("LABEL"),
                      st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize)
    again = mount_at(real)  # (btrfs shows another device number in stat than in the mount table)
    if again is None or again.mount_id != m.mount_id:
        raise StrongroomError(f"{shown} was mounted or unmounted while being looked at: try again")
    return m, info


class VolumeBackup(Backup):
    """A backup of one filesystem: directories of another device are not entered. The device
    is the source's as the walk reads it (its snapshot's, when agent/snapshot.py took one); in a
    snapshot, a nested mount shows as the folder under it, which the view marks."""

    def set_volume(self, mount: Mount, info: VolumeInfo) -> None:
        self.kind = "volume"
        self.mount = mount
        self.device = mount.device
        self.not_crossed: list[bytes] = []
        self.manifest_extra.update({"volume": info.doc(), "not_crossed": self.not_crossed})
        self.before_point.append(self._check_still_mounted)

    def _scan_subdir(self, dfd: int, full: bytes, name: bytes, st: os.stat_result, prev: Entry | None) -> Any:
        if full in self.sources:
            self.device = st.st_dev
        elif st.st_dev != self.device or (self.view is not None and self.view.live_instead(full, st)):
            # Another filesystem mounted inside the volume: its mount point is kept as an empty
            # folder (as rsync -x does), so a restore has it to mount on.
            self.not_crossed.append(full)
            sub = self._queue([], None)
            sub.entry = _dir_entry(name, st)
            return sub
        return super()._scan_subdir(dfd, full, name, st, prev)

    def _check_still_mounted(self) -> None:
        still_mounted(self.mount)
        self.stats_extra["mounts_not_crossed"] = len(self.not_crossed)
        if remounted_read_only(self.mount):
            self.warnings.append((self.mount.mount_point, "the volume was remounted read-only during the backup"))


def still_mounted(mount: Mount) -> None:
    """After the walk: the volume must still be the same mount, else the point is not made
    (what was read may be a mix of the volume and what lies under its mount point)."""
    now = mount_at(mount.mount_point)
    if now is None or now.mount_id != mount.mount_id:
        raise StrongroomError(f"{display_path(mount.mount_point)} was unmounted during the backup; "
                              "no recovery point was recorded")


def remounted_read_only(mount: Mount) -> bool:
    now = mount_at(mount.mount_point)
    return bool(now and now.read_only and not mount.read_only)
