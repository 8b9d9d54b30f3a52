"""The vault client's reads of pack ranges (HttpVault.read_ranges, read_range) against a real
HTTP server on 127.0.0.1: the answer is read into one buffer of the size asked for as it
arrives, so an answer of any other size is refused, and an error answer is still the
vault's error. Any other answer is read whole, up to the largest the vault sends (a pack):
past it, sent as it is or inflated from a small gzip body, it is refused. And a vault that
does not answer: the calls of one outage share its retry window."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import zlib

import pytest

from strongroom.errors import UsageError, VaultError, VaultUnreachable
from strongroom.vault.client import MAX_ANSWER, HttpVault


def _serve(answers: list[tuple[int, bytes]], headers: bytes = b"", port: int = 0) -> int:
    """A one-connection HTTP/1.1 server answering each request in turn with (status, body),
    `headers` among its own."""
    listener = socket.create_server(("127.0.0.1", port))

    def run() -> None:
        conn, _addr = listener.accept()
        with conn:
            for status, body in answers:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _sep, rest = request.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 %d X\r\n%sContent-Length: %d\r\n\r\n" % (status, headers, len(body)) + body)
        listener.close()
    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


def _vault(port: int) -> HttpVault:
    return HttpVault(f"http://127.0.0.1:{port}", retry_seconds=0)


def test_ranges_arrive_exactly_as_views_of_one_buffer() -> None:
    parts = [os.urandom(n) for n in (3 * 1024 * 1024 + 7, 1, 70_000)]
    single = os.urandom(5000)
    vault = _vault(_serve([(200, b"".join(parts)), (206, single)]))
    got = vault.read_ranges([("p1", 0, len(parts[0])), ("p2", 10, 1), ("p1", 9, len(parts[2]))])
    assert [bytes(g) for g in got] == parts
    assert bytes(vault.read_range("p3", 100, len(single))) == single


@pytest.mark.parametrize("sent", [99, 101, 0])
def test_an_answer_of_another_size_is_refused(sent: int) -> None:
    vault = _vault(_serve([(200, os.urandom(sent))]))
    with pytest.raises(VaultError, match="bytes"):
        vault.read_ranges([("p1", 0, 60), ("p1", 100, 40)])


def test_an_error_answer_is_the_vaults_error() -> None:
    body = json.dumps({"error": "UsageError", "detail": "send 1 to 4096 ranges"}).encode()
    vault = _vault(_serve([(400, body)]))
    with pytest.raises(UsageError, match="send 1 to 4096 ranges"):
        vault.read_ranges([("p1", 0, 60)])


def _gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # the gzip wrapper
    zeros = bytes(1 << 20)
    return b"".join([*(packer.compress(zeros) for _ in range(size >> 20)), packer.flush()])


def test_an_answer_larger_than_any_the_vault_sends_is_refused_even_inflated() -> None:
    bomb = _gzip_of_zeros(MAX_ANSWER + (16 << 20))
    assert len(bomb) < 1 << 20  # a small body on the wire
    vault = _vault(_serve([(200, bomb)], headers=b"Content-Encoding: gzip\r\nContent-Type: application/json\r\n"))
    with pytest.raises(VaultError, match=r"the vault sent an answer larger than 257 MiB to GET /api/v1/packs/p1; refused"):
        vault.read_pack("p1")
    fine = _gzip_of_zeros(4 << 20)  # an answer within the bound is still read as sent
    vault = _vault(_serve([(200, fine)], headers=b"Content-Encoding: gzip\r\n"))
    assert vault.read_pack("p2") == bytes(4 << 20)


def _failing_for(vault: HttpVault) -> float:
    """Seconds a call to a vault that does not answer took to fail."""
    started = time.monotonic()
    with pytest.raises(VaultUnreachable, match="is unreachable .*; gave up after 2 s"):
        vault.read_pack("p")
    return time.monotonic() - started


def test_the_calls_of_one_outage_share_its_window_and_an_answer_or_a_quiet_window_ends_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed: connections are refused until a server takes it
    vault = HttpVault(f"http://127.0.0.1:{port}", retry_seconds=2)
    assert _failing_for(vault) >= 1.5  # retried (0.25 + 0.5 + 1 s of waits) until the window ran out
    assert _failing_for(vault) < 1.0  # the same outage: one try (a restore's folders waited 120 s each)
    time.sleep(2.5)  # a window with no failure: the next call meets a new outage (the daemon's next job)
    assert _failing_for(vault) >= 1.5
    _serve([(200, b"answered")], port=port)  # the vault is back, for one answer
    assert vault.read_pack("p") == b"answered"
    assert _failing_for(vault) >= 1.5  # the answer ended the outage: the next one waits its window
