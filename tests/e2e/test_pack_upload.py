"""Pack uploads to a real `vault serve` on 127.0.0.1: every size and framing is stored whole
(in memory up to a bound, through the spool file beyond it), several at once, and an upload
cut short stores nothing and leaves nothing behind."""

from __future__ import annotations

import os
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from strongroom import packs
from strongroom.vault.upload import MEMORY_UPLOAD_MAX, MEMORY_UPLOADS

MiB = 1024 * 1024


def _pack(size: int) -> tuple[str, bytes]:
    """A pack of random blobs of at most 4 MiB, about `size` bytes (the vault does not decrypt)."""
    builder = packs.PackBuilder(bytearray(size + MiB))
    left = size
    while left > 0:
        length = min(left, 4 * MiB)
        builder.add(os.urandom(32), packs.KIND_DATA, os.urandom(length))
        left -= length
    name, data, _refs = builder.finish()
    return name, bytes(data)


def _spool_left(served) -> list[str]:
    spool = served.folder / "incoming"
    return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


def test_packs_of_every_size_and_framing_are_stored_whole(served, served_machine):
    token = (served_machine("web-01").home / "token").read_text().strip()
    tiny, usual, large = _pack(100), _pack(8 * MiB), _pack(MEMORY_UPLOAD_MAX + 3 * MiB)
    crowd = [_pack(6 * MiB) for _ in range(MEMORY_UPLOADS + 3)]  # more at once than memory takes
    chunked = _pack(5 * MiB)
    with served.client(token) as c:
        for name, data in (tiny, usual, large):
            assert c.put(f"/api/v1/packs/{name}", content=data).status_code == 201
        # No Content-Length: the body comes in chunks of unknown total, so it goes to the spool.
        answer = c.put(f"/api/v1/packs/{chunked[0]}", content=iter([chunked[1][:MiB], chunked[1][MiB:]]))
        assert answer.status_code == 201 and "content-length" not in answer.request.headers
        with ThreadPoolExecutor(len(crowd)) as pool:
            codes = list(pool.map(lambda p: c.put(f"/api/v1/packs/{p[0]}", content=p[1]).status_code, crowd))
        assert codes == [201] * len(crowd)
        every = [tiny, usual, large, chunked, *crowd]
        assert sorted(c.get("/api/v1/packs").json()) == sorted(name for name, _ in every)
        for name, data in every:
            assert c.get(f"/api/v1/packs/{name}").content == data, f"pack {name} of {len(data)} bytes"
    assert _spool_left(served) == []
    assert "Traceback" not in served.log.read_text()


def test_an_upload_cut_short_stores_nothing_and_the_vault_goes_on(served, served_machine):
    token = (served_machine("web-01").home / "token").read_text().strip()
    name, data = _pack(8 * MiB)
    context = ssl.create_default_context(cafile=str(served.folder / "tls" / "cert.pem"))
    for sent in (MiB, len(data) - 1):  # a little of it, and all but its last byte
        with context.wrap_socket(socket.create_connection(("127.0.0.1", served.port), timeout=30),
                                 server_hostname="127.0.0.1") as sock:
            sock.sendall(f"PUT /api/v1/packs/{name} HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Length: {len(data)}\r\n\r\n".encode())
            sock.sendall(data[:sent])
    time.sleep(0.5)  # the server notices the closed connections
    with served.client(token) as c:
        assert c.get("/api/v1/packs").json() == []
        assert c.put(f"/api/v1/packs/{name}", content=data).status_code == 201
        assert c.get(f"/api/v1/packs/{name}").content == data
    assert _spool_left(served) == []
    assert "Traceback" not in served.log.read_text()
