"""The served vault as the agent sees it: the Vault interface over HTTPS, with retries.

The network is not reliable and a vault restarts now and then, so every call is retried
with exponential backoff for a bounded time ($STRONGROOM_VAULT_RETRY_SECONDS, default 120)
before it fails in one line. Every call can be retried safely: packs are named by their
content, and points and jobs carry IDs the agent chose. The calls made during one outage
share its window: once it has passed, a call tries once, so that a command's threads and
its many calls after the first that gave up wait 120 s in all, not 120 s each (a restore
of 500 folders waited for the vault 500 times over). An outage ends with the first call
that gets through, or when no call has failed for a window's length (the daemon's next
job, hours later, waits again).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

import msgpack

from strongroom.credentials import Credentials
from strongroom.errors import StrongroomError, UsageError, VaultError, VaultUnreachable
from strongroom.vault import httpstream
from strongroom.vault.httplibs import httpx
from strongroom.vault.refs import rechunk
from strongroom.vault.shapes import BlobLocation, JobRecord, PointRecord
from strongroom.vault.tls import pinned_context
from strongroom.vault.wire import ERROR_CLASSES, MAX_LOCATE, MAX_PACK_BYTES, MSGPACK, REFS_PART_IDS

RETRY_ENV = "STRONGROOM_VAULT_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 120.0
_TRANSIENT_STATUS = {502, 503, 504}
_CONNECT_TIMEOUT = 10.0
_SEND_SLICE = 256 * 1024
MAX_ANSWER = MAX_PACK_BYTES + (1 << 20)  # a whole pack, or a page of the blob index (8 MiB), with room


def _retry_seconds() -> float:
    text = os.environ.get(RETRY_ENV, str(DEFAULT_RETRY_SECONDS))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise UsageError(f"${RETRY_ENV} must be a number of seconds (0 to 86400), not {text!r}")
    return value


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback (by address, or the name `localhost`);
    other names are not resolved: a resolver may answer anything."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_plain_http(url: str, insecure_http: bool) -> None:
    """Refuses a plain http:// vault URL off loopback unless asked for by name: the
    registration secret, the machine's token and its wrapped key would cross the network
    unencrypted (readable, and a token replayable, by anyone on the path)."""
    parsed = urlparse(url)
    if parsed.scheme == "http" and not insecure_http and not is_loopback(parsed.hostname or ""):
        raise UsageError(f"refusing plain http:// to {parsed.hostname}: tokens, the registration secret and the "
                         "wrapped key would cross the network unencrypted; use the vault's https:// URL, or pass "
                         "--insecure-http if the network between is trusted")


def _creds_doc(creds: Credentials) -> dict[str, Any]:
    return {"vault_id": creds.vault_id, "credential_id": creds.credential_id, "secret": creds.secret,
            "issued": creds.issued, "expires": creds.expires}


class _Transient(Exception):
    """A failure worth retrying: the vault unreachable, restarting or overloaded."""


def _read_into(response: httpx.Response, into: bytearray) -> None:
    view, pos = memoryview(into), 0
    for piece in response.iter_bytes():
        end = pos + len(piece)
        if end > len(into):
            raise VaultError("the vault sent more bytes than were asked for")
        view[pos:end] = piece
        pos = end
    if pos != len(into):
        raise VaultError(f"the vault sent {pos} bytes where {len(into)} were asked for")


def _read_bounded(response: httpx.Response) -> None:
    """Reads an answer whole, refusing one larger than any the vault sends (a pack, at most):
    a hostile or broken vault must not take the agent's memory, nor a small gzip body that
    httpx would inflate to gigabytes (it decodes whatever encoding it is sent)."""
    pieces, size = [], 0
    for piece in response.iter_bytes():
        size += len(piece)
        if size > MAX_ANSWER:
            raise VaultError(f"the vault sent an answer larger than {MAX_ANSWER >> 20} MiB to {response.request.method} "
                             f"{response.request.url.path}; refused")
        pieces.append(piece)
    response._content = b"".join(pieces)  # where httpx's own read() keeps it, for .content and .json()


class HttpVault:
    local = False

    def __init__(self, url: str, pin: str | None = None, retry_seconds: float | None = None,
                 insecure_http: bool = False) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            raise UsageError(f"not a vault URL: {url}")
        check_plain_http(url, insecure_http)
        self.url = url.rstrip("/")
        self.host, self.port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
        self.pin = pin
        self.retry_seconds = retry_seconds if retry_seconds is not None else _retry_seconds()
        self.headers: dict[str, str] = {}
        self.machine: str | None = None
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self.warned = False
        self._outage: tuple[float, float] | None = None  # (first, last) failed attempt of the outage

    # -- transport --------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                verify: Any = True
                if self.url.startswith("https:") and self.pin:
                    verify = pinned_context(self.host, self.port, self.pin, _CONNECT_TIMEOUT)
                limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
                self._client = httpx.Client(  # verify and limits still for a proxy's transport
                    base_url=self.url, verify=verify, timeout=httpx.Timeout(300.0, connect=_CONNECT_TIMEOUT),
                    limits=limits, transport=httpstream.transport(verify, limits))
            return self._client

    def _once(self, method: str, path: str, headers: dict[str, str] | None = None, into: bytearray | None = None,
              **kw: Any) -> httpx.Response:
        """One request; with `into`, a successful answer's body is read into it (it must be
        exactly its size) instead of into the response."""
        try:
            client = self._http()
            response = client.send(client.build_request(method, path, headers={**self.headers, **(headers or {})},
                                                        **kw), stream=True)
            try:
                if into is None or response.status_code >= 400:
                    _read_bounded(response)
                else:
                    _read_into(response, into)
            finally:
                response.close()
        except ConnectionError as exc:
            raise _Transient(str(exc)) from None
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise VaultError(f"the vault at {self.url} presented a certificate this machine does not trust "
                                 f"({exc}); the credentials pin another one") from None
            raise _Transient(str(exc) or type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise _Transient(str(exc) or type(exc).__name__) from None
        if response.status_code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {response.status_code}")
        self._outage = None  # the vault answered
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request, retried with backoff while the vault is unreachable, until the
        outage's window (shared by every call it meets) has passed."""
        delay = 0.25
        while True:
            try:
                return self._once(method, path, **kw)
            except _Transient as exc:
                now = time.monotonic()
                with self._lock:
                    ongoing = self._outage is not None and now - self._outage[1] <= self.retry_seconds
                    first = self._outage[0] if ongoing else now
                    self._outage = (first, now)
                deadline = first + self.retry_seconds
                if now + delay > deadline:
                    raise VaultUnreachable(f"the vault at {self.url} is unreachable ({exc}); gave up after "
                                           f"{self.retry_seconds:.0f} s") from None
                if not self.warned and sys.stderr.isatty():  # a person waiting should know why
                    self.warned = True
                    print(f"strongroom: the vault at {self.url} does not answer ({exc}); retrying for up to "
                          f"{self.retry_seconds:.0f} s (${RETRY_ENV})", file=sys.stderr)
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def _error(self, response: httpx.Response) -> StrongroomError:
        try:
            doc = response.json()
            cls, detail = ERROR_CLASSES.get(doc.get("error"), VaultError), str(doc["detail"])
        except (ValueError, KeyError, AttributeError):
            cls, detail = VaultError, f"the vault answered HTTP {response.status_code}"
        return cls(detail)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._call(method, path, **kw).json()

    def _msgpack(self, method: str, path: str, **kw: Any) -> Any:
        return msgpack.unpackb(self._call(method, path, **kw).content)

    # -- registration -----------------------------------------------------------------------

    def register(self, creds: Credentials, machine: str, keyfile: str, key_check: str | None = None) -> str:
        doc = self._json("POST", "/api/v1/register", json={
            **_creds_doc(creds), "machine": machine, "keyfile": keyfile, "key_check": key_check})
        self.bind(doc["token"])
        return doc["token"]

    # -- a machine's registration (vault/machine_admin.py) ---------------------------------------

    def replace_keyfile(self, creds: Credentials, machine: str) -> str:
        return self._json("POST", "/api/v1/register/keyfile", json={**_creds_doc(creds), "machine": machine})["keyfile"]

    def replace_machine(self, creds: Credentials, machine: str, proof: str | None) -> str:
        doc = self._json("POST", "/api/v1/register/replace", json={**_creds_doc(creds), "machine": machine,
                                                                   "proof": proof})
        self.bind(doc["token"])
        return doc["token"]

    def change_keyfile(self, keyfile: str, proof: str | None = None) -> None:
        self._call("PUT", "/api/v1/keyfile", json={"keyfile": keyfile, "proof": proof})

    def former_names(self, machine: str) -> list[str]:
        return self._json("GET", f"/api/v1/machines/{machine}/names")["former_names"]

    def remove_machine(self, name: str, pin: str | None = None) -> int:
        return self._json("POST", f"/api/v1/machines/{name}/remove", json={"pin": pin})["deleted"]

    def rename_machine(self, old: str, new: str, pin: str | None = None) -> None:
        self._call("POST", f"/api/v1/machines/{old}/rename", json={"new_name": new, "pin": pin})

    def admin_remove_machine(self, name: str) -> int:
        return self._json("POST", f"/api/v1/admin/machines/{name}/remove", json={})["deleted"]

    def admin_rename_machine(self, old: str, new: str) -> None:
        self._call("POST", f"/api/v1/admin/machines/{old}/rename", json={"new_name": new})

    def bind(self, token: str) -> str:
        self.headers["Authorization"] = f"Bearer {token}"
        self.machine = self._json("GET", "/api/v1/me")["machine"]
        return self.machine

    def issue_credentials(self, valid_days: int) -> Credentials:
        doc = self._json("POST", "/api/v1/admin/credentials", json={"url": self.url, "valid_days": valid_days})
        return Credentials(**{**doc, "fingerprint": self.pin})

    def vault_id(self) -> str:
        return self._json("GET", "/api/v1/vault")["id"]

    def _name(self, machine: str | None) -> str:
        name = machine or self.machine
        if not name:
            raise VaultError("this machine is not registered with the vault")
        return name

    def keyfile(self, machine: str | None = None) -> str:
        return self._json("GET", f"/api/v1/machines/{self._name(machine)}/keyfile")["keyfile"]

    def machines(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/v1/machines")

    # -- packs and blobs --------------------------------------------------------------------

    def blob_ids_since(self, epoch: str | None, since: int, after: bytes = b"") -> tuple[str, int, bytes]:
        response = self._call("GET", "/api/v1/blobs", params={"epoch": epoch or "", "since": since,
                                                                "after": after.hex()})
        try:
            return response.headers["X-Blob-Epoch"], int(response.headers["X-Blob-Seq"]), response.content
        except (KeyError, ValueError):
            raise VaultError("the vault's answer to a blob listing is malformed") from None

    def store_pack(self, name: str, data: bytes | memoryview) -> None:
        # Slices of the pack buffer, not a copy of it: each copy of an 8 MiB pack left the
        # allocator holding more memory (peak RSS 390 MiB instead of 180 for one backup).
        view = memoryview(data)
        parts = [view[i:i + _SEND_SLICE] for i in range(0, len(view), _SEND_SLICE)]
        self._call("PUT", f"/api/v1/packs/{name}", content=parts,
                   headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(view))})

    def blob_locations(self, ids: list[bytes], machine: str | None = None) -> dict[bytes, BlobLocation]:
        found: dict[bytes, BlobLocation] = {}
        packs: dict[str, str] = {}  # one string per pack, not one per blob (a restore keeps them all)
        for start in range(0, len(ids), MAX_LOCATE):
            doc = self._msgpack("POST", "/api/v1/blobs/locate", params={"machine": self._name(machine)},
                                content=b"".join(ids[start:start + MAX_LOCATE]))
            found.update((k, BlobLocation(packs.setdefault(v[0], v[0]), v[1], v[2], v[3])) for k, v in doc.items())
        return found

    def read_range(self, pack: str, offset: int, length: int) -> bytearray:
        data = bytearray(length)
        self._call("GET", f"/api/v1/packs/{pack}", headers={"Range": f"bytes={offset}-{offset + length - 1}"},
                   into=data)
        return data

    def read_ranges(self, ranges: list[tuple[str, int, int]]) -> list[memoryview]:
        # Read into one buffer as it arrives, not joined from pieces at the end (a copy, and
        # twice a batch's size held meanwhile, per thread).
        data = bytearray(sum(n for _p, _o, n in ranges))
        self._call("POST", "/api/v1/blobs/read", content=msgpack.packb(ranges), headers={"Content-Type": MSGPACK},
                   into=data)
        body = memoryview(data)  # views, not copies: a batch is several MiB
        parts, pos = [], 0
        for _pack, _offset, length in ranges:
            parts.append(body[pos:pos + length])
            pos += length
        return parts

    def read_pack(self, pack: str) -> bytes:
        return self._call("GET", f"/api/v1/packs/{pack}").content

    def pack_names(self) -> list[str]:
        return self._json("GET", "/api/v1/packs", params={"machine": self._name(None)})

    # -- points -----------------------------------------------------------------------------

    def add_point(self, kind: str, mode: str, stats: dict[str, Any], manifest: bytes,
                  refs: Iterable[bytes], point_id: str | None = None,
                  retain_until_ns: int | None = None) -> PointRecord:
        # The refs travel in parts of bounded size, each one request that can be retried
        # alone: a point of any size, with bounded memory at both ends.
        point_id = point_id or secrets.token_hex(8)
        parts = self._send_refs(point_id, refs, 0)
        body = msgpack.packb({"id": point_id, "kind": kind, "mode": mode, "stats": stats, "manifest": manifest,
                              "refs_parts": parts, "retain_until_ns": retain_until_ns})
        return PointRecord(**self._msgpack("POST", "/api/v1/points", content=body,
                                           headers={"Content-Type": MSGPACK}))

    def add_point_delta(self, kind: str, mode: str, stats: dict[str, Any], manifest: bytes,
                        added: Iterable[bytes], removed: Iterable[bytes], base: str, count: int,
                        point_id: str | None = None, retain_until_ns: int | None = None,
                        checksum: str | None = None) -> PointRecord:
        # The same parts as add_point's: the added IDs first, then the removed ones.
        point_id = point_id or secrets.token_hex(8)
        first_removed = self._send_refs(point_id, added, 0)
        parts = self._send_refs(point_id, removed, first_removed)
        body = msgpack.packb({"id": point_id, "kind": kind, "mode": mode, "stats": stats, "manifest": manifest,
                              "refs_parts": parts, "retain_until_ns": retain_until_ns, "base": base,
                              "removed_from_part": first_removed, "refs_count": count,
                              **({"refs_blake3": checksum} if checksum is not None else {})})
        return PointRecord(**self._msgpack("POST", "/api/v1/points", content=body,
                                           headers={"Content-Type": MSGPACK}))

    def _send_refs(self, point_id: str, refs: Iterable[bytes], first: int) -> int:
        """Uploads refs as parts numbered from `first`; the number after the last."""
        parts = first
        for part in rechunk(refs, REFS_PART_IDS):
            self._call("PUT", f"/api/v1/points/{point_id}/refs/{parts}", content=part,
                       headers={"Content-Type": "application/octet-stream"})
            parts += 1
        return parts

    def points(self, machine: str | None = None, deleted: bool = False) -> list[PointRecord]:
        return [PointRecord(**d) for d in self._msgpack("GET", f"/api/v1/machines/{self._name(machine)}/points",
                                                        params={"deleted": deleted})]

    def undelete_point(self, point_id: str) -> None:
        self._call("POST", f"/api/v1/points/{point_id}/undelete")

    def usage(self, point_id: str | None = None) -> dict[str, Any]:
        return self._json("GET", "/api/v1/usage", params={"point": point_id} if point_id else None)

    def forget_points(self, point_ids: list[str], pin: str | None = None) -> dict[str, Any]:
        return self._json("POST", "/api/v1/points/forget", json={"points": point_ids, "pin": pin})

    def set_policy(self, doc: dict[str, Any] | None, pin: str | None = None) -> int:
        return self._json("PUT", "/api/v1/policy", json={"policy": doc, "pin": pin})["version"]

    def stop_protection(self, delete_data: bool, pin: str | None = None) -> int:
        return self._json("POST", "/api/v1/protection/stop", json={"delete_data": delete_data, "pin": pin})["deleted"]

    def policy(self, machine: str | None = None) -> tuple[int, dict[str, Any] | None] | None:
        doc = self._json("GET", f"/api/v1/machines/{self._name(machine)}/policy")
        return (doc["version"], doc["policy"]) if doc else None

    # -- as the vault's admin (the admin token in `headers`) ------------------------------------

    def prune(self, dry_run: bool, repack_below: float) -> dict[str, Any]:
        return self._json("POST", "/api/v1/admin/prune", json={"dry_run": dry_run, "repack_below": repack_below})

    def make_pin(self, machine: str, act: str) -> str:
        return self._json("POST", "/api/v1/admin/pin", json={"machine": machine, "act": act})["pin"]

    def change_settings(self, soft_delete_days: int | None, immutable: bool | None) -> dict[str, Any]:
        return self._json("PUT", "/api/v1/admin/settings",
                          json={"soft_delete_days": soft_delete_days, "immutable": immutable})

    # -- jobs -------------------------------------------------------------------------------

    def start_job(self, job_id: str, kind: str, source_machine: str | None = None) -> JobRecord:
        return JobRecord(**self._json("POST", "/api/v1/jobs",
                                      json={"id": job_id, "kind": kind, "source_machine": source_machine}))

    def renew_job(self, job_id: str) -> None:
        self._call("POST", f"/api/v1/jobs/{job_id}/renew")

    def finish_job(self, job_id: str, status: str, **fields: Any) -> JobRecord:
        return JobRecord(**self._json("POST", f"/api/v1/jobs/{job_id}/finish", json={"status": status, **fields}))

    def jobs(self, machine: str | None = None, limit: int = 100) -> list[JobRecord]:
        params: dict[str, Any] = {"limit": limit}
        if machine:
            params["machine"] = machine
        return [JobRecord(**d) for d in self._json("GET", "/api/v1/jobs", params=params)]

    # -- verification -----------------------------------------------------------------------

    def check_structure(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/v1/check/structure")

    def orphan_packs(self) -> list[str]:
        return self._json("GET", "/api/v1/check/orphans")
