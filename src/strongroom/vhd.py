"""Fixed VHD (Virtual Hard Disk, format 1.0): the raw disk followed by a 512-byte footer.

The layout follows Microsoft's "Virtual Hard Disk Image Format Specification" (2006): a
fixed disk is its sectors, then the footer below, all fields big-endian. The creator
application is written as "win " (as Hyper-V writes it), so readers take the disk's size from
the footer's current size rather than from the CHS geometry, which cannot express every size
(QEMU's vpc driver documents this rule). The disk size must be a whole number of 512-byte
sectors: `vhd_size` rounds an image up, and the padding reads as zeros.
"""

from __future__ import annotations

import struct
import time
import uuid

FOOTER_SIZE = 512
_EPOCH_2000 = 946684800  # 2000-01-01T00:00:00Z, the VHD time origin
_FORMAT = ">8sIIQI4sI4sQQHBBII16sB427s"
_FIXED = 2


def vhd_size(size: int) -> int:
    """The disk size a VHD of an image of `size` bytes has: whole sectors."""
    return -(-size // 512) * 512


def chs(size: int) -> tuple[int, int, int]:
    """Cylinders, heads, sectors per track for `size` bytes (the specification's algorithm)."""
    total = min(size // 512, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def checksum(footer: bytes) -> int:
    """One's complement of the byte sum, the checksum field counted as zero."""
    return ~(sum(footer[:64]) + sum(footer[68:])) & 0xFFFFFFFF


def vhd_footer(size: int, *, now: float | None = None, unique: bytes | None = None) -> bytes:
    """The footer of a fixed VHD whose disk holds `size` bytes (a multiple of 512)."""
    if size % 512:
        raise ValueError("a VHD disk is whole sectors")
    cyl, heads, spt = chs(size)
    stamp = max(0, int((time.time() if now is None else now) - _EPOCH_2000)) & 0xFFFFFFFF
    fields = [b"conectix", 2, 0x00010000, 0xFFFFFFFFFFFFFFFF, stamp, b"win ", 0x000A0000, b"Wi2k",
              size, size, cyl, heads, spt, _FIXED, 0, unique or uuid.uuid4().bytes, 0, bytes(427)]
    footer = struct.pack(_FORMAT, *fields)
    fields[14] = checksum(footer)
    return struct.pack(_FORMAT, *fields)


def read_footer(footer: bytes) -> dict[str, object]:
    """The fields of a footer (for tests and checks); ValueError if it is not one."""
    if len(footer) != FOOTER_SIZE:
        raise ValueError("a VHD footer is 512 bytes")
    (cookie, features, version, offset, stamp, app, app_version, host, original, current, cyl, heads, spt,
     disk_type, check, unique, saved, _reserved) = struct.unpack(_FORMAT, footer)
    if cookie != b"conectix" or check != checksum(footer):
        raise ValueError("not a VHD footer, or its checksum is wrong")
    return {"features": features, "version": version, "data_offset": offset, "timestamp": stamp, "creator": app,
            "creator_version": app_version, "host": host, "original_size": original, "size": current,
            "geometry": (cyl, heads, spt), "disk_type": disk_type, "unique_id": unique, "saved_state": saved}
