"""The client's TLS stream (vault/httpstream.py) over a real TLS server on 127.0.0.1: a large
answer arrives byte for byte through fewer, larger reads, and small answers and a dropped
connection behave as through httpx's own stream."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

import httpx
import pytest

from strongroom.vault import httpstream
from strongroom.vault.selfsigned import ensure_self_signed


def _listen(tmp_path: Path) -> tuple[ssl.SSLContext, socket.socket]:
    cert, key = ensure_self_signed(tmp_path, "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, socket.create_server(("127.0.0.1", 0))


def _serve(tmp_path: Path, answers: list[bytes]) -> int:
    """A one-connection HTTP/1.1 server: answers each request in turn, then closes."""
    context, listener = _listen(tmp_path)

    def run() -> None:
        conn, _addr = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            for body in answers:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        listener.close()
    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


def _client(tmp_path: Path, port: int) -> httpx.Client:
    cert, _key = ensure_self_signed(tmp_path, "127.0.0.1")  # made by _serve: the one to trust
    return httpx.Client(base_url=f"https://127.0.0.1:{port}",
                        transport=httpstream.transport(ssl.create_default_context(cafile=str(cert)),
                                                       httpx.Limits(max_connections=1)))


def test_a_large_answer_arrives_exactly_in_fewer_reads(tmp_path, monkeypatch) -> None:
    big, small = os.urandom(5 * 1024 * 1024 + 123), b"tiny"
    port = _serve(tmp_path, [big, small, big])
    reads: list[int] = []
    real = httpstream._GatheringStream.read

    def counted(self, max_bytes, timeout=None):
        data = real(self, max_bytes, timeout)
        reads.append(len(data))
        return data
    monkeypatch.setattr(httpstream._GatheringStream, "read", counted)
    with _client(tmp_path, port) as client:
        assert client.get("/a").content == big
        assert client.get("/b").content == small
        assert client.get("/c").content == big
    assert max(reads) > 16 * 1024  # records gathered, not one per read
    assert sum(reads) >= 2 * len(big) + len(small)


def test_a_connection_dropped_mid_answer_is_a_transport_error(tmp_path) -> None:
    context, listener = _listen(tmp_path)

    def run() -> None:
        conn, _addr = listener.accept()
        tls = context.wrap_socket(conn, server_side=True)
        tls.recv(65536)
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + os.urandom(300_000))
        tls.close()
        listener.close()
    threading.Thread(target=run, daemon=True).start()
    with _client(tmp_path, listener.getsockname()[1]) as client, pytest.raises(httpx.TransportError):
        client.get("/")
