"""The served vault's limits, tried with real sockets against a real `vault serve` on 127.0.0.1:
slow or huge headers, trickling bodies, floods of unfinished connections, and guessing
tokens, registration secrets and PINs at speed."""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
from conftest import Strongroom, assert_clean_failure, saying

# Short deadlines so that the tests take seconds; the defaults are in vault/limits.py.
FAST = {"header_s": 2, "tls_handshake_s": 2, "keepalive_s": 2, "body_grace_s": 2, "body_min_rate": 4096}
HOLD = 30  # how long the header deadline is for the flood test: long enough that only the caps act


def _serve(tmp_path: Path, name: str = "vault", **limits: float):
    from served import VaultServer

    admin = Strongroom(tmp_path / f"admin-{name}")
    folder = admin.create_vault(tmp_path / name)
    text = ",".join(f"{k}={v}" for k, v in limits.items())
    return VaultServer(admin, folder, env={"STRONGROOM_VAULT_LIMITS": text}).start()


@pytest.fixture
def fast(tmp_path):
    server = _serve(tmp_path, **FAST)
    yield server
    server.stop()


def _tls(server, source: str = "127.0.0.1") -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(server.folder / "tls" / "cert.pem"))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=(source, 0))
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _answer(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {within} s (got {data[:200]!r})") from None
    return data, time.monotonic() - started


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (after its answer, if it gave one)."""
    sock.settimeout(0.2)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except (ConnectionResetError, ssl.SSLError):
        pass
    return True


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Sends what the server may refuse half-way (it closes the connection once it has answered)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass


def _vault_answers(server, within: float = 5.0) -> float:
    started = time.monotonic()
    with server.client() as c:
        c.timeout = httpx.Timeout(within)
        assert c.get("/api/v1/vault").status_code == 200
    return time.monotonic() - started


# -- slowloris --------------------------------------------------------------------------------

def test_a_slow_header_sender_is_cut_off_within_the_deadline(fast):
    with _tls(fast) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/v1/vault HTTP/1.1\r\nHost: vault\r\n")
        sock.settimeout(0.3)
        closed = None
        for i in range(40):  # a header byte every 0.3 s, as slowloris sends them
            try:
                sock.sendall(b"x" if i else b"X-Slow: ")
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                answer = b""
            closed = time.monotonic() - started
            break
    assert closed is not None, "a connection dribbling its headers stayed open 12 s"
    assert FAST["header_s"] - 0.1 <= closed <= FAST["header_s"] + 1.5, closed
    assert _status(answer) == 408 and b"request headers not received within 2 s" in answer
    assert _vault_answers(fast) < 5


def test_a_connection_that_sends_nothing_is_closed(fast):
    with socket.create_connection(("127.0.0.1", fast.port), timeout=30) as raw:  # not even a TLS handshake
        _, took = _answer(raw, within=FAST["tls_handshake_s"] + 3)
        assert took <= FAST["tls_handshake_s"] + 1.5
    with _tls(fast) as sock:  # a handshake, then silence
        answer, took = _answer(sock, within=FAST["header_s"] + 3)
        assert took <= FAST["header_s"] + 1.5 and _status(answer) == 408


def test_an_idle_keep_alive_connection_is_closed(fast):
    with _tls(fast) as sock:
        sock.sendall(b"GET /api/v1/vault HTTP/1.1\r\nHost: vault\r\n\r\n")
        sock.settimeout(10)
        assert _status(sock.recv(65536)) == 200
        _, idle = _answer(sock, within=FAST["keepalive_s"] + 3)
        assert idle <= FAST["keepalive_s"] + 1.5


def test_a_huge_header_block_is_refused(fast):
    with _tls(fast) as sock:
        line = b"X-Filler: " + b"a" * 10_000 + b"\r\n"
        _send_quietly(sock, b"GET /api/v1/vault HTTP/1.1\r\nHost: vault\r\n" + line * 2)  # 20 KB: allowed so far
        _send_quietly(sock, line * 20)  # 200 KB more: refused, without waiting for the end
        answer, _ = _answer(sock, within=5)
    assert _status(answer) == 431 and b"request headers larger than 32768 bytes" in answer
    with _tls(fast) as sock:
        sock.sendall(b"GET /api/v1/vault HTTP/1.1\r\nHost: vault\r\n" + b"".join(
            b"X-H%d: 1\r\n" % i for i in range(100)) + b"\r\n")
        answer, _ = _answer(sock, within=5)
    assert _status(answer) == 431 and b"more than 64 request headers" in answer
    with _tls(fast) as sock:
        _send_quietly(sock, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: vault\r\n\r\n")
        answer, _ = _answer(sock, within=5)
    assert _status(answer) == 414
    assert _vault_answers(fast) < 5


def test_a_trickling_body_is_cut_and_leaves_no_spool_file(fast, tmp_path):
    machine = Strongroom(tmp_path / "home")
    machine.register(fast.credentials(tmp_path / "cred"), "web-01")
    token = (machine.home / "token").read_text().strip()
    with _tls(fast) as sock:
        sock.sendall(f"PUT /api/v1/packs/{'0' * 64} HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Length: 1048576\r\n\r\n".encode())
        started = time.monotonic()
        sock.settimeout(0.25)
        answer = b""
        while time.monotonic() - started < 15:  # 100 bytes every 0.25 s: 400 B/s
            try:
                sock.sendall(b"p" * 100)
                answer = sock.recv(4096)
                break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                break
        cut = time.monotonic() - started
    assert cut <= FAST["body_grace_s"] + 2, f"a body trickling at 400 B/s stayed open {cut:.1f} s"
    assert _status(answer) == 408 and b"request body slower than 4096 bytes/s" in answer
    time.sleep(0.5)
    assert not list((fast.folder / "incoming").iterdir()), "the cut upload left its spool file"
    assert "Traceback" not in fast.log.read_text()


def test_a_prompt_body_larger_than_the_grace_allows_is_not_cut(fast, tmp_path):
    """The rate is an average: a client that keeps up is not cut however long it takes."""
    machine = Strongroom(tmp_path / "home")
    machine.register(fast.credentials(tmp_path / "cred"), "web-01")
    token = (machine.home / "token").read_text().strip()
    size = 64 * 1024
    with _tls(fast) as sock:
        sock.sendall(f"PUT /api/v1/packs/{'0' * 64} HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        for _ in range(size // 8192):  # 8 KiB every 0.5 s: 16 KiB/s for 4 s, twice the grace
            sock.sendall(b"p" * 8192)
            time.sleep(0.5)
        answer, _ = _answer(sock, within=10)
    assert _status(answer) == 422, answer[:300]  # heard out: then refused as the junk pack it is


def test_a_burst_of_unfinished_connections_does_not_lock_out_a_prompt_client(tmp_path):
    server = _serve(tmp_path, header_s=HOLD, max_connections_per_client=40, max_connections=60)
    burst: list[ssl.SSLSocket] = []
    try:
        for i in range(100):  # beyond both caps, from two addresses
            sock = _tls(server, source="127.0.0.2" if i % 2 else "127.0.0.1")
            sock.sendall(b"GET /api/v1/vault HTTP/1.1\r\nHost: vault\r\n")  # and never the end
            burst.append(sock)
        took = _vault_answers(server)  # long before the header deadline ends the burst
        assert took < 5, f"a prompt client waited {took:.1f} s behind 100 unfinished connections"
        still_open = sum(not _closed(sock) for sock in burst)
        assert still_open <= 60, f"{still_open} unfinished connections held open with a cap of 60"
    finally:
        for sock in burst:
            sock.close()
        server.stop()


# -- rate limits ------------------------------------------------------------------------------

RATES = {"failed_auth_burst": 5, "failed_auth_per_s": 600, "register_burst": 3, "register_per_s": 600,
         "pin_burst": 3, "pin_per_s": 600}


@pytest.fixture
def rated(tmp_path):
    server = _serve(tmp_path, **RATES)
    yield server
    server.stop()


def _client(server, token: str | None = None, source: str = "127.0.0.1") -> httpx.Client:
    context = ssl.create_default_context(cafile=str(server.folder / "tls" / "cert.pem"))
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"} if token else {},
                        transport=httpx.HTTPTransport(verify=context, local_address=source), timeout=30)


def test_failed_tokens_are_limited_per_address_with_a_429_that_says_to_wait(rated, tmp_path):
    machine = Strongroom(tmp_path / "home")
    machine.register(rated.credentials(tmp_path / "cred"), "web-01")
    good = (machine.home / "token").read_text().strip()
    with _client(rated, "guess") as guesser:
        codes = [guesser.get("/api/v1/me").status_code for _ in range(8)]
        assert codes == [401] * 5 + [429] * 3
        refused = guesser.get("/api/v1/me")
        assert refused.json()["detail"].startswith("the vault refused: too many refused tokens")
        assert "wait" in refused.json()["detail"] and int(refused.headers["Retry-After"]) >= 1
        # while the address is barred, a right token is not even looked at: no guess is answered
        assert guesser.get("/api/v1/me", headers={"Authorization": f"Bearer {good}"}).status_code == 429
        # the calls answered beside FastAPI (vault/hotpath.py) count and refuse alike
        assert guesser.post("/api/v1/blobs/read", content=b"\x90",
                            headers={"Authorization": f"Bearer {good}"}).status_code == 429
    with _client(rated, good, source="127.0.0.2") as elsewhere:  # another address is not barred
        assert elsewhere.get("/api/v1/me").json() == {"machine": "web-01"}
    # and the agent says it in one line
    with_wrong_token = Strongroom(tmp_path / "home")
    (with_wrong_token.home / "token").write_text("not-the-token")
    res = with_wrong_token.run("jobs", check=False)
    assert_clean_failure(res, 1, saying("too many refused tokens"))
    assert "too many refused tokens or registration secrets from this address: wait" in res.stderr
    assert "try again" in res.stderr


def test_registrations_are_limited_per_address(rated, tmp_path):
    cred = rated.credentials(tmp_path / "cred")
    for i in range(3):
        Strongroom(tmp_path / f"home{i}").register(cred, f"web-{i}")
    res = Strongroom(tmp_path / "home3").run("register", "--credentials", cred, "--machine", "web-3", check=False)
    assert_clean_failure(res, 1, saying("too many registrations"))
    assert "strongroom: error: the vault refused: too many registrations from this address: wait" in res.stderr


def test_pin_attempts_are_limited_per_address_and_per_machine(rated, tmp_path):
    tokens = {}
    for name in ("web-01", "web-02"):
        machine = Strongroom(tmp_path / name)
        machine.register(rated.credentials(tmp_path / f"cred-{name}"), name)
        tokens[name] = (machine.home / "token").read_text().strip()
    admin_token = (rated.folder / "admin.token").read_text().strip()
    with _client(rated, tokens["web-01"]) as web1:
        wrong = [web1.post("/api/v1/protection/stop", json={"delete_data": True, "pin": f"{i:08d}"})
                 for i in range(3)]
        assert [r.status_code for r in wrong] == [403] * 3
        with _client(rated, admin_token) as admin:
            pin = admin.post("/api/v1/admin/pin", json={"machine": "web-01", "act": "delete-data"}).json()["pin"]
        limited = web1.post("/api/v1/protection/stop", json={"delete_data": True, "pin": pin})
        assert limited.status_code == 429 and "too many PIN attempts" in limited.json()["detail"]
    with _client(rated, tokens["web-01"], source="127.0.0.2") as web1_elsewhere:  # the machine is barred
        assert web1_elsewhere.put("/api/v1/policy", json={"policy": None, "pin": pin}).status_code == 429
    with _client(rated, tokens["web-02"], source="127.0.0.3") as web2:  # another machine, another address
        assert web2.post("/api/v1/protection/stop", json={"delete_data": False, "pin": pin}).status_code == 200


def test_a_client_that_reads_nothing_of_its_answer_is_cut_off(tmp_path):
    server = _serve(tmp_path, send_stall_s=2)
    try:
        machine = Strongroom(tmp_path / "home").register(server.credentials(tmp_path / "cred"), "web-01")
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
        machine.backup(tmp_path / "src")
        token = (machine.home / "token").read_text().strip()
        with _client(server, token) as c:
            packs = c.get("/api/v1/packs", params={"machine": "web-01"}).json()
            sizes = {p: len(c.get(f"/api/v1/packs/{p}").content) for p in packs}
        name, size = max(sizes.items(), key=lambda item: item[1])
        context = ssl.create_default_context(cafile=str(server.folder / "tls" / "cert.pem"))
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server must wait on us
        raw.connect(("127.0.0.1", server.port))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(f"GET /api/v1/packs/{name} HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {token}\r\n"
                         f"\r\n".encode())
            time.sleep(10)  # reading nothing: the stall allowed, and the kernel's probes backing off
            answer, _ = _answer(sock, within=10)
        assert _status(answer) == 200 and len(answer) < size, \
            f"{len(answer)} bytes of a {size}-byte pack reached a client that read none for 10 s"
    finally:
        server.stop()
