"""Formats written by the read commands: roff text in the man page, POSIX ACL text in tar
streams, and the point resolver's refusals."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strongroom.agent.dump import acl_text
from strongroom.agent.points import find_point
from strongroom.cli.docs_cmds import roff
from strongroom.errors import UsageError


@given(st.text())
def test_roff_text_never_makes_a_request_and_keeps_backslashes(text):
    out = roff(text)
    for line in out.splitlines():
        assert not line.startswith((".", "'"))
    assert out.replace("\\e", "").count("\\") == out.count("\\-") + out.count("\\&")


def _acl(*entries):
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_acl_text_as_gnu_tar_keeps_it():
    raw = _acl((0x01, 6, 0xFFFFFFFF), (0x02, 6, 1234), (0x04, 4, 0xFFFFFFFF), (0x08, 5, 5678),
               (0x10, 7, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))
    assert acl_text(raw) == "user::rw-,user:1234:rw-,group::r--,group:5678:r-x,mask::rwx,other::---"
    assert acl_text(b"") is None and acl_text(_acl((0x40, 7, 0))) is None
    assert acl_text(struct.pack("<I", 1)) is None and acl_text(_acl((0x01, 6, 0))[:-1]) is None


@dataclass
class P:
    id: str


def test_point_prefixes_resolve_once_or_say_why_not():
    points = [P("ab12"), P("ab34"), P("cd56")]
    assert find_point(points, "latest").id == "ab12" and find_point(points, "cd").id == "cd56"
    with pytest.raises(UsageError, match="'ab' matches 2 recovery points; give more of the id"):
        find_point(points, "ab")
    with pytest.raises(UsageError, match="no recovery point 'ef'"):
        find_point(points, "ef")
    with pytest.raises(UsageError, match="there are no recovery points yet"):
        find_point([], "latest")
