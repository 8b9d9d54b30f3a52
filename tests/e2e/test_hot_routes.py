"""The calls answered beside FastAPI (vault/hotpath.py) against a real `vault serve` on
127.0.0.1: each refuses what its FastAPI declaration refused, in the same one-line JSON."""

from __future__ import annotations

import os

import msgpack


def _backed_up(served, served_machine, tmp_path, name: str = "web-01"):
    machine = served_machine(name)
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(3000))
    machine.backup(src)
    return machine, (machine.home / "token").read_text().strip()


def _refused(res, status: int, saying: str) -> None:
    assert res.status_code == status, (res.status_code, res.text[:300])
    doc = res.json()
    assert set(doc) == {"error", "detail"} and saying in doc["detail"], doc


def test_the_hot_calls_need_a_machines_token(served, served_machine, tmp_path):
    _machine, token = _backed_up(served, served_machine, tmp_path)
    with served.client(token) as c:
        pack = c.get("/api/v1/packs").json()[0]
    admin_token = (served.folder / "admin.token").read_text().strip()
    calls = [("POST", "/api/v1/blobs/read", msgpack.packb([[pack, 0, 8]])),
             ("POST", "/api/v1/blobs/locate", os.urandom(32)),
             ("PUT", f"/api/v1/packs/{'0' * 64}", b"SRPACK01")]
    for wrong, saying in ((None, "no token: this call needs a machine's token"),
                          ("x" * 43, "token was refused"),
                          (admin_token, "token was refused")):  # the admin's token is no machine's
        with served.client(wrong) as c:
            for method, path, body in calls:
                _refused(c.request(method, path, content=body), 401, saying)
    with served.client(token) as c:
        with_basic = c.post("/api/v1/blobs/read", content=msgpack.packb([[pack, 0, 8]]),
                            headers={"Authorization": f"Basic {token}"})
        _refused(with_basic, 401, "no token")
        assert c.post("/api/v1/blobs/read", content=msgpack.packb([[pack, 0, 8]])).content == b"SRPACK01"


def test_the_hot_calls_refuse_malformed_requests_in_one_line(served, served_machine, tmp_path):
    _machine, token = _backed_up(served, served_machine, tmp_path)
    with served.client(token) as c:
        pack = c.get("/api/v1/packs").json()[0]
        _refused(c.put("/api/v1/packs/NOT-A-PACK-NAME", content=b"x"), 400, "a pack name is 64 lowercase hex digits")
        _refused(c.put(f"/api/v1/packs/{'A' * 64}", content=b"x"), 400, "a pack name is 64 lowercase hex digits")
        for named in ("", "bell\x07name", "a/b", "m" * 256):
            res = c.post("/api/v1/blobs/locate", params={"machine": named}, content=os.urandom(32))
            _refused(res, 400, "invalid machine: a machine name is 1 to 255 characters")
        _refused(c.post("/api/v1/blobs/locate", params={"machine": "no-such-machine"}, content=os.urandom(32)),
                 400, "no machine named 'no-such-machine'")
        _refused(c.post("/api/v1/blobs/locate", content=os.urandom(33)), 400, "send 1 to 65536 blob IDs of 32 bytes")
        _refused(c.post("/api/v1/blobs/read", content=b"\xc1"), 400, "malformed msgpack body")
        _refused(c.post("/api/v1/blobs/read", content=msgpack.packb({"a": 1})), 400, "malformed msgpack body")
        _refused(c.post("/api/v1/blobs/read", content=msgpack.packb([["0" * 64, 0, 8]])), 404,
                 f"object packs/00/{'0' * 64} is missing from the vault")
        for outside in ([[pack, 0, 0]], [[pack, -1, 8]], [[pack, 0, 65 * 1024 * 1024]], [[pack, 0, True]]):
            res = c.post("/api/v1/blobs/read", content=msgpack.packb(outside))
            assert res.status_code in (400, 409), (outside, res.status_code, res.text[:200])
            assert set(res.json()) == {"error", "detail"} and "\n" not in res.json()["detail"]
        _refused(c.post("/api/v1/blobs/read", content=msgpack.packb([[pack, 0, 8]] * 131073)), 400,
                 "send 1 to 131072 ranges [pack, offset, length] within packs")


def test_a_machine_locates_another_machines_blobs_by_name(served, served_machine, tmp_path):
    """As before the hot path: any machine may locate and read any machine's (encrypted) blobs."""
    web1, token1 = _backed_up(served, served_machine, tmp_path, "web-01")
    _web2, token2 = _backed_up(served, served_machine, tmp_path, "web-02")
    theirs = served.get("/api/v1/blobs", token2).content[:32]
    with served.client(token1) as c:
        assert c.post("/api/v1/blobs/locate", content=theirs).content == msgpack.packb({})  # not web-01's
        found = msgpack.unpackb(c.post("/api/v1/blobs/locate", params={"machine": "web-02"}, content=theirs).content)
        ((blob, (pack, offset, length, _kind)),) = found.items()
        assert blob == theirs
        assert len(c.post("/api/v1/blobs/read", content=msgpack.packb([[pack, offset, length]])).content) == length


def test_a_hot_call_sent_with_another_method_is_told_which_it_takes(served, served_machine, tmp_path):
    _machine, token = _backed_up(served, served_machine, tmp_path)
    pack_path = f"/api/v1/packs/{'0' * 64}"
    with served.client(token) as c:
        for method, path, allowed in (("GET", "/api/v1/blobs/read", "POST"), ("PUT", "/api/v1/blobs/locate", "POST"),
                                      ("DELETE", pack_path, "GET, PUT"), ("POST", pack_path, "GET, PUT")):
            res = c.request(method, path)
            _refused(res, 405, f"this call takes {allowed}, not {method}")
            assert res.headers["allow"] == allowed
        missing = c.get(pack_path)  # GET still reaches FastAPI's route
        _refused(missing, 404, "is missing from the vault")
        assert missing.json()["error"] == "MissingObject"
