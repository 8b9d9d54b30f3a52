"""Unit tests of the kinds' pure parts: retention per kind, the VHD footer, the zero-skipping
reader, mountinfo parsing and refusals, the names `system-state apply` accepts."""

from __future__ import annotations

import os
import struct
from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.agent.image import GRAIN, ZeroSkippingReader
from strongroom.agent.volume import Mount, refusal
from strongroom.vault.retention import Retention, expired, expired_per_kind
from strongroom.vhd import _FORMAT, checksum, chs, read_footer, vhd_footer, vhd_size

UTC = ZoneInfo("UTC")


def ns(day: int, hour: int = 21) -> int:
    return int(datetime(2027, 3, day, hour, tzinfo=UTC).timestamp() * 1e9)


def test_weekly_retention_keeps_each_kinds_first_point_of_the_week():
    # Mon 1 March 2027: a files point at 01:00, a volume point at 02:00; more of both later that week.
    points = {"f1": ns(1, 1), "v1": ns(1, 2), "f2": ns(2), "v2": ns(3), "f3": ns(4), "v3": ns(4, 22)}
    kinds = {p: ("files" if p[0] == "f" else "volume") for p in points}
    now = datetime(2027, 3, 20, tzinfo=UTC)
    policy = Retention(weekly=4)
    # all kinds in one series: the week's volume point goes, since the files point came first
    assert "v1" in expired(points, policy, now)
    assert expired_per_kind(points, kinds, policy, now) == {"f2", "f3", "v2", "v3"}


def test_no_kind_loses_its_last_point_to_expiry():
    points = {"f": ns(1), "i": ns(2), "s": ns(3)}
    kinds = {"f": "files", "i": "image", "s": "system-state"}
    assert expired_per_kind(points, kinds, Retention(daily=7), datetime(2027, 12, 1, tzinfo=UTC)) == set()


@given(st.integers(min_value=0, max_value=2**41).map(lambda n: n * 512), st.floats(0, 2**31))
@settings(max_examples=200)
def test_vhd_footer_reads_back(size, now):
    footer = vhd_footer(size, now=946684800 + now)
    fields = read_footer(footer)
    assert fields["size"] == fields["original_size"] == size and fields["disk_type"] == 2
    assert fields["data_offset"] == 2**64 - 1 and fields["creator"] == b"win "
    cyl, heads, spt = fields["geometry"]
    assert (cyl, heads, spt) == chs(size) and cyl * heads * spt * 512 <= max(size, 0) + 0
    unpacked = list(struct.unpack(_FORMAT, footer))
    stored, unpacked[14] = unpacked[14], 0
    zeroed = struct.pack(_FORMAT, *unpacked)
    assert checksum(zeroed) == stored == (~sum(zeroed)) & 0xFFFFFFFF


def test_vhd_footer_known_values():
    # 64 MiB: the specification's algorithm gives 963 cylinders, 8 heads, 17 sectors per track
    assert chs(64 * 1024 * 1024) == (963, 8, 17)
    assert vhd_size(1) == 512 and vhd_size(512) == 512 and vhd_size(513) == 1024
    footer = bytearray(vhd_footer(1024 * 1024))
    footer[100] ^= 1
    try:
        read_footer(bytes(footer))
    except ValueError:
        pass
    else:
        raise AssertionError("a damaged footer was read")


@given(st.lists(st.tuples(st.sampled_from(["zero", "data", "mixed"]), st.integers(1, 3 * GRAIN)), max_size=12))
@settings(max_examples=60, deadline=None)
def test_zero_skipping_reader_keeps_every_nonzero_byte(tmp_path_factory, runs):
    path = tmp_path_factory.mktemp("z") / "img"
    data = bytearray()
    for kind, length in runs:
        if kind == "zero":
            data += bytes(length)
        elif kind == "data":
            data += os.urandom(length).replace(b"\0", b"\1")
        else:
            data += bytes(length // 2) + b"\7" * (length - length // 2)
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = ZeroSkippingReader(fd, [[0, len(data)]] if data else [], len(data), lambda n: None)
        out = bytearray()
        buf = memoryview(bytearray(100_000))
        while n := reader.readinto(buf):
            out += buf[:n]
    finally:
        os.close(fd)
    rebuilt = bytearray(len(data))
    at = 0
    for offset, length in reader.found:
        assert offset % GRAIN == 0 or offset == 0
        rebuilt[offset:offset + length] = out[at:at + length]
        at += length
    assert at == len(out) and rebuilt == data
    # what was left out is whole zero grains only
    assert len(out) <= len(data)


def mount(fstype: str, source: str = "/dev/x", options: tuple[str, ...] = ("rw",)) -> Mount:
    return Mount(1, 0, b"/m", options, fstype, source, ("rw",))


def test_refusals_name_the_reason():
    assert "network filesystem" in refusal(mount("nfs4", "server:/export"), False)
    assert "network filesystem" in refusal(mount("cifs", "//server/share"), False)
    assert "network filesystem" in refusal(mount("fuse.sshfs", "user@host:"), False)
    assert "FUSE mount" in refusal(mount("fuse.rclone"), False)
    assert "pseudo filesystem" in refusal(mount("proc"), False)
    assert "tmpfs" in refusal(mount("tmpfs"), False) and refusal(mount("tmpfs"), True) is None
    assert "read-only" in refusal(mount("ext4", options=("ro",)), False)
    assert "read-only media" in refusal(mount("iso9660"), False)
    assert refusal(mount("ext4"), False) is None and refusal(mount("btrfs"), False) is None


def test_a_source_that_ends_early_is_an_error(tmp_path):
    # what a detached device or a truncated image file looks like to the reader: reads return 0
    import pytest

    from strongroom.errors import StrongroomError

    path = tmp_path / "short"
    path.write_bytes(b"\1" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = ZeroSkippingReader(fd, [[0, 5000]], 5000, lambda n: None)
        buf = memoryview(bytearray(10_000))
        with pytest.raises(StrongroomError, match="ended at byte 1000 of 5000"):
            while reader.readinto(buf):
                pass
    finally:
        os.close(fd)


def test_image_extents_from_a_hostile_point_are_refused():
    import pytest

    from strongroom.agent.image import image_extents
    from strongroom.errors import StrongroomError

    assert image_extents({"s": 100, "sp": [[0, 10], [20, 80]]}) == [(0, 10), (20, 80)]
    assert image_extents({"s": 100}) == [(0, 100)]
    for bad in ([[20, 10], [0, 10]], [[0, 10], [5, 10]], [[90, 20]], [[-1, 5]], [[0, -5]], [["0", 5]]):
        with pytest.raises(StrongroomError, match="damaged"):
            image_extents({"s": 100, "sp": bad})
