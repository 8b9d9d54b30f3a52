"""Mount points as /proc/self/mountinfo escapes them (space, tab, newline, backslash as \\ooo)
read back to the same bytes: a mount inside a snapshotted source is found whatever its name."""

from hypothesis import given
from hypothesis import strategies as st

from strongroom.agent.snapshot import _unescape


def _kernel_escape(path: bytes) -> bytes:
    return b"".join(b"\\%03o" % c if c in b" \t\n\\" else bytes([c]) for c in path)


@given(st.binary(min_size=1, max_size=200).filter(lambda b: b"\0" not in b))
def test_unescape_reverses_the_kernels_escapes(path: bytes) -> None:
    assert _unescape(_kernel_escape(path)) == path


def test_a_backslash_not_followed_by_three_digits_stays() -> None:
    assert _unescape(b"a\\x") == b"a\\x" and _unescape(b"\\04") == b"\\04"
