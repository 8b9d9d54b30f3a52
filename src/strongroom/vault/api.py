"""The vault's HTTP API (/api/v1): the service's calls, for agents on other machines.

Every call but registration carries a bearer token: a machine's (issued at registration)
or the vault admin's (`admin.token` in the vault folder). A machine writes only its own
data (the token decides whose; no call takes a machine to write for) and may read any
machine's encrypted data, for restores elsewhere. Binary payloads travel as msgpack or raw
bytes; pack uploads are streamed to a spool file, never held whole in memory.
"""

from __future__ import annotations

import hmac
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from dataclasses import asdict
from typing import Annotated, Any

import msgpack
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.exc import DatabaseError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from strongroom import __version__
from strongroom.credentials import Credentials
from strongroom.errors import CredentialsError, StrongroomError, UsageError, VaultError
from strongroom.fsutil import write_private
from strongroom.vault import machine_admin, protection
from strongroom.vault.jobs import MAX_SEALED_FAILED
from strongroom.vault.limits import Limits
from strongroom.vault.ratelimit import Buckets, RateLimited
from strongroom.vault.service import (
    ADMIN_TOKEN_FILE,
    PointRecord,
    VaultService,
)
from strongroom.vault.hotpath import (
    BINARY,
    NAME,
    NAME_MAX,
    OPENAPI_PATHS,
    PACK_NAME,
    ASGIApp,
    Caller,
    HotRoutes,
    check_pack_name,
    error_response,
    owner_id,
    request_body,
    unpack,
)
from strongroom.vault.upload import PackReceiver
from strongroom.vault.wire import ID_SIZE, MAX_PACK_BYTES, MAX_REFS_PARTS, MSGPACK, REFS_PART_IDS

MAX_JSON_BYTES = 1024 * 1024
# A point's manifest (its refs travel apart, in parts); a location query; a batched read.
MAX_POINT_BYTES = 16 * 1024 * 1024
MAX_REFS_PART_BYTES = REFS_PART_IDS * ID_SIZE
INT64 = 2**63 - 1  # what the catalog's integer columns hold
_POINT_ID = re.compile(r"^[0-9a-f]{1,32}$")
_RANGE = re.compile(r"^bytes=(\d{1,12})-(\d{1,12})$")
# Tokens and texts: no control characters (as names, hotpath.py NAME)
TEXT = r"^[^\x00-\x1f\x7f]*$"


MachineName = Annotated[str, PathParam(min_length=1, max_length=NAME_MAX, pattern=NAME)]
MachineQuery = Annotated[str | None, Query(alias="machine", min_length=1, max_length=NAME_MAX, pattern=NAME)]
ShortId = Annotated[str, PathParam(min_length=1, max_length=32, pattern=NAME)]  # point and job IDs
PackName = Annotated[str, PathParam(pattern=PACK_NAME.pattern)]
# The bodies FastAPI does not parse itself, described for the OpenAPI document (and its fuzzers)
POINT_SCHEMA: dict[str, Any] = {"type": "object", "required": ["id", "kind", "mode", "stats", "manifest", "refs_parts"],
                                "properties": {"id": {"type": "string"}, "kind": {"type": "string"},
                                               "mode": {"type": "string"}, "stats": {"type": "object"},
                                               "manifest": BINARY, "refs_parts": {"type": "integer"},
                                               "retain_until_ns": {"type": ["integer", "null"]},
                                               # refs as a change to point `base`'s: the parts from
                                               # `removed_from_part` on are IDs removed, those before added
                                               "base": {"type": "string"}, "removed_from_part": {"type": "integer"},
                                               "refs_count": {"type": "integer"},
                                               # the BLAKE3 of the point's refs, sorted: checked when given
                                               "refs_blake3": {"type": "string"}}}


def _body(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": request_body(media_type, schema)}


class BodyTooLarge(Exception):
    pass


def _body_limit(path: str) -> int:
    if path.startswith("/api/v1/packs/"):
        return MAX_PACK_BYTES
    if path.startswith("/api/v1/points/") and "/refs/" in path:
        return MAX_REFS_PART_BYTES
    if path in ("/api/v1/points", "/api/v1/blobs/locate", "/api/v1/blobs/read"):
        return MAX_POINT_BYTES
    return MAX_JSON_BYTES


class BodyLimitMiddleware:
    """Refuses request bodies over the route's limit, by Content-Length or while they stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = _body_limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(send, limit)
        seen = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)
        except ClientDisconnect:
            pass  # the client went, or the connection guard cut a body that trickled: no one to answer


async def _too_large(send: Callable, limit: int) -> None:
    body = f'{{"error": "UsageError", "detail": "request body larger than {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class CredentialsMachine(BaseModel):
    """The fields of a credentials file, and the machine they are used for."""
    vault_id: str = Field(max_length=64, pattern=TEXT)
    credential_id: int = Field(ge=1, le=INT64)
    secret: str = Field(max_length=200, pattern=TEXT)
    issued: int = Field(ge=0, le=INT64)
    expires: int = Field(ge=0, le=INT64)
    machine: str = Field(min_length=1, max_length=NAME_MAX, pattern=NAME)


class RegisterRequest(CredentialsMachine):
    keyfile: str = Field(max_length=16384, pattern=r"^[^\x00]*$")  # JSON, over several lines
    key_check: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class ReplaceRequest(CredentialsMachine):
    """register --replace: the credentials, the machine's name and, to take it, the key's proof."""
    proof: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class KeyfileRequest(BaseModel):
    keyfile: str = Field(max_length=16384, pattern=r"^[^\x00]*$")
    proof: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class MachineActRequest(BaseModel):
    new_name: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=NAME)
    pin: str | None = Field(None, max_length=64, pattern=TEXT)


class CredentialsRequest(BaseModel):
    url: str = Field(max_length=2000, pattern=TEXT)
    valid_days: int = Field(ge=1, le=365)


PIN = Field(None, max_length=64, pattern=TEXT)


class PolicyRequest(BaseModel):
    policy: dict[str, Any] | None
    pin: str | None = PIN


class StopRequest(BaseModel):
    delete_data: bool
    pin: str | None = PIN


class ForgetRequest(BaseModel):
    points: list[Annotated[str, Field(min_length=1, max_length=32, pattern=NAME)]] = Field(min_length=1,
                                                                                         max_length=10000)
    pin: str | None = PIN


class PinRequest(BaseModel):
    machine: str = Field(max_length=NAME_MAX)
    act: str = Field(max_length=32)


class SettingsRequest(BaseModel):
    soft_delete_days: int | None = Field(None, ge=0, le=100000)
    immutable: bool | None = None


class PruneRequest(BaseModel):
    dry_run: bool = False
    repack_below: float = Field(0.5, ge=0, le=1)


class JobStart(BaseModel):
    id: str = Field(min_length=1, max_length=32, pattern=NAME)
    kind: str = Field(max_length=32)
    source_machine: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=NAME)


class JobFinish(BaseModel):
    status: str = Field(max_length=32)
    mode: str = Field("", max_length=32)
    point_id: str | None = Field(None, max_length=32, pattern=NAME)
    files: int = Field(0, ge=0, le=INT64)
    bytes: int = Field(0, ge=0, le=INT64)
    failed_count: int = Field(0, ge=0, le=2**31)
    failed_sealed: str | None = Field(None, max_length=MAX_SEALED_FAILED)
    message: str = Field("", max_length=65536)
    mode_reason: str = Field("", max_length=1000)


def msgpack_response(doc: Any, status: int = 200) -> Response:
    return Response(msgpack.packb(doc), status_code=status, media_type=MSGPACK)


def point_doc(p: PointRecord) -> dict[str, Any]:
    return asdict(p)


def make_app(service: VaultService, limits: Limits | None = None) -> BodyLimitMiddleware:
    """The API: the hot calls (vault/hotpath.py) in front of FastAPI, request bodies bounded."""
    app = FastAPI(title="Strongroom vault", version=__version__,
                  description="One vault for many machines: packs, recovery points, jobs.")
    admin_token = (service.root / ADMIN_TOKEN_FILE).read_text().strip()
    bearer = HTTPBearer(auto_error=False)
    limits = limits or Limits()
    failed_auth = Buckets("refused tokens or registration secrets from this address",
                          limits.failed_auth_burst, limits.failed_auth_per_s)
    registrations = Buckets("registrations from this address", limits.register_burst, limits.register_per_s)
    pins = Buckets("PIN attempts", limits.pin_burst, limits.pin_per_s)
    packs_in = PackReceiver(service)

    # StarletteHTTPException: FastAPI's own, and routing's 404 and 405; OSError and DatabaseError:
    # the vault's storage failing (or a bug, which error_response raises again)
    for refused in (StrongroomError, RateLimited, StarletteHTTPException, OSError, DatabaseError):
        app.add_exception_handler(refused, error_response)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "UsageError", "detail": _first_problem(exc)}, status_code=400)

    def _token(auth: HTTPAuthorizationCredentials | None) -> str:
        if auth is None or auth.scheme.lower() != "bearer":
            raise HTTPException(401, {"error": "VaultError", "detail": "no token: this call needs a machine's token"})
        return auth.credentials

    async def machine(request: Request, auth: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
        # async: a known token is a dictionary lookup, not worth a hop to the thread pool
        token = _token(auth)
        failed_auth.check(_address(request))  # before the token is looked at: no guess is answered
        try:
            return Caller(*service.authenticate(token))
        except VaultError as exc:
            failed_auth.spend(_address(request))
            raise HTTPException(401, {"error": "VaultError", "detail": str(exc)}) from None

    async def admin(request: Request, auth: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        token = _token(auth)
        failed_auth.check(_address(request))
        if not hmac.compare_digest(token.encode(), admin_token.encode()):
            failed_auth.spend(_address(request))
            raise HTTPException(401, {"error": "VaultError", "detail": "the vault refused the admin token"})

    async def reader(request: Request, auth: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller | None:
        """A machine or the admin (None): both may see what the vault holds (never plaintext)."""
        if hmac.compare_digest(_token(auth).encode(), admin_token.encode()):
            return None
        return await machine(request, auth)

    def pin_attempt(request: Request, pin: str | None, m: Caller) -> None:
        """A call that carries a PIN is a guess at it: few per address and per machine."""
        if pin:
            pins.spend(f"address {_address(request)}")
            pins.spend(f"machine {m.id}")

    # -- vault and registration -------------------------------------------------------------

    @app.get("/api/v1/vault")
    def vault_info() -> dict[str, Any]:
        return {"id": service.id, "version": __version__}

    @app.post("/api/v1/register")
    def register(req: RegisterRequest, request: Request) -> dict[str, str]:
        failed_auth.check(_address(request))
        registrations.spend(_address(request))
        creds = Credentials("", req.vault_id, req.credential_id, req.secret, req.issued, req.expires)
        try:
            return {"token": service.register(creds, req.machine, req.keyfile, req.key_check), "machine": req.machine}
        except CredentialsError:
            failed_auth.spend(_address(request))
            raise

    def _replace_call(request: Request, req: ReplaceRequest, call: Callable[..., Any], *args: Any) -> Any:
        failed_auth.check(_address(request))
        registrations.spend(_address(request))
        creds = Credentials("", req.vault_id, req.credential_id, req.secret, req.issued, req.expires)
        try:
            return call(service, creds, req.machine, *args)
        except CredentialsError:
            failed_auth.spend(_address(request))
            raise

    @app.post("/api/v1/register/keyfile")
    def replace_keyfile(req: ReplaceRequest, request: Request) -> dict[str, str]:
        """The wrapped key of a machine a rebuilt one is about to take back (changes nothing)."""
        return {"keyfile": _replace_call(request, req, machine_admin.replace_keyfile)}

    @app.post("/api/v1/register/replace")
    def replace_machine(req: ReplaceRequest, request: Request) -> dict[str, str]:
        return {"token": _replace_call(request, req, machine_admin.replace_machine, req.proof),
                "machine": req.machine}

    @app.put("/api/v1/keyfile")
    def change_keyfile(req: KeyfileRequest, m: Caller = Depends(machine)) -> dict[str, str]:
        machine_admin.change_keyfile(service, m.id, req.keyfile, req.proof)
        return {"machine": m.name}

    @app.get("/api/v1/machines/{name}/names")
    def machine_names(name: MachineName, _m: Caller = Depends(machine)) -> dict[str, list[str]]:
        return {"former_names": machine_admin.names_of(service, name)}

    @app.post("/api/v1/machines/{name}/remove")
    def remove_machine(name: MachineName, req: MachineActRequest, request: Request,
                       m: Caller = Depends(machine)) -> dict[str, int]:
        pin_attempt(request, req.pin, m)
        return {"deleted": machine_admin.remove_machine(service, name, req.pin)}

    @app.post("/api/v1/machines/{name}/rename")
    def rename_machine(name: MachineName, req: MachineActRequest, request: Request,
                       m: Caller = Depends(machine)) -> dict[str, str]:
        pin_attempt(request, req.pin, m)
        machine_admin.rename_machine(service, name, _new_name(req), req.pin)
        return {"name": _new_name(req)}

    @app.post("/api/v1/admin/machines/{name}/remove", dependencies=[Depends(admin)])
    def admin_remove_machine(name: MachineName) -> dict[str, int]:
        return {"deleted": machine_admin.remove_machine(service, name, admin=True)}

    @app.post("/api/v1/admin/machines/{name}/rename", dependencies=[Depends(admin)])
    def admin_rename_machine(name: MachineName, req: MachineActRequest) -> dict[str, str]:
        machine_admin.rename_machine(service, name, _new_name(req), admin=True)
        return {"name": _new_name(req)}

    @app.post("/api/v1/admin/credentials", dependencies=[Depends(admin)])
    def issue_credentials(req: CredentialsRequest) -> dict[str, Any]:
        return asdict(service.issue_credentials(req.url, req.valid_days))

    @app.get("/api/v1/me")
    def me(m: Caller = Depends(machine)) -> dict[str, str]:
        return {"machine": m.name}

    @app.get("/api/v1/machines", dependencies=[Depends(reader)])
    def machines() -> list[dict[str, Any]]:
        return service.machines()

    @app.get("/api/v1/machines/{name}/keyfile")
    def keyfile(name: MachineName, m: Caller = Depends(machine)) -> dict[str, str]:
        return {"keyfile": service.keyfile(owner_id(service, name, m))}

    # -- recovery points --------------------------------------------------------------------

    @app.get("/api/v1/machines/{name}/points", response_class=Response)
    def points(name: MachineName, deleted: bool = False, m: Caller = Depends(machine)) -> Response:
        return msgpack_response([point_doc(p) for p in service.points(owner_id(service, name, m), deleted)])

    @app.post("/api/v1/points/{point_id}/undelete")
    def undelete(point_id: ShortId, m: Caller = Depends(machine)) -> dict[str, str]:
        service.undelete_point(m.id, point_id)
        return {"point": point_id}

    @app.post("/api/v1/points/forget")
    def forget(req: ForgetRequest, request: Request, m: Caller = Depends(machine)) -> dict[str, Any]:
        pin_attempt(request, req.pin, m)
        return service.forget_points(m.id, req.points, req.pin)

    @app.get("/api/v1/usage")
    def usage(point: str | None = Query(None, min_length=1, max_length=32, pattern=NAME),
              m: Caller = Depends(machine)) -> dict[str, Any]:
        from strongroom.vault.usage import usage as measure
        return measure(service, m.id, point)

    # -- policy -----------------------------------------------------------------------------

    @app.put("/api/v1/policy")
    def set_policy(req: PolicyRequest, request: Request, m: Caller = Depends(machine)) -> dict[str, int]:
        pin_attempt(request, req.pin, m)
        return {"version": service.set_policy(m.id, req.policy, req.pin)}

    @app.post("/api/v1/protection/stop")
    def stop_protection(req: StopRequest, request: Request, m: Caller = Depends(machine)) -> dict[str, int]:
        pin_attempt(request, req.pin, m)
        return {"deleted": service.stop_protection(m.id, req.delete_data, req.pin)}

    @app.post("/api/v1/admin/pin", dependencies=[Depends(admin)])
    def make_pin(req: PinRequest) -> dict[str, str]:
        return {"pin": protection.make_pin(service, req.machine, req.act)}

    @app.put("/api/v1/admin/settings", dependencies=[Depends(admin)])
    def change_settings(req: SettingsRequest) -> dict[str, Any]:
        return protection.change_settings(service, req.soft_delete_days, req.immutable)

    @app.get("/api/v1/machines/{name}/policy")
    def policy(name: MachineName, m: Caller = Depends(machine)) -> dict[str, Any] | None:
        if name != m.name:  # its schedule, retention and sealed paths are that machine's business
            raise VaultError("a machine may read only its own policy")
        found = service.policy(m.id)
        return {"version": found[0], "policy": found[1]} if found else None

    @app.post("/api/v1/admin/prune", dependencies=[Depends(admin)])
    def prune_now(req: PruneRequest) -> dict[str, Any]:
        from strongroom.vault.prune import prune
        return prune(service, dry_run=req.dry_run, repack_below=req.repack_below).to_dict()

    @app.put("/api/v1/points/{point_id}/refs/{part}", status_code=201,
             openapi_extra=_body("application/octet-stream", BINARY))
    async def put_refs_part(point_id: str, part: int, request: Request, m: Caller = Depends(machine)) -> dict:
        """One part of a point's refs (blob IDs, ascending, back to back), before the point."""
        _check_point_id(point_id)
        if not 0 <= part < MAX_REFS_PARTS:
            raise UsageError(f"refs parts are numbered 0 to {MAX_REFS_PARTS - 1}")
        body = await request.body()
        if not body or len(body) % ID_SIZE:
            raise UsageError(f"a refs part is 1 to {REFS_PART_IDS} blob IDs of {ID_SIZE} bytes")
        folder = _refs_spool(m, point_id)
        await run_in_threadpool(_write_part, folder, part, body)
        return {"point": point_id, "part": part}

    @app.post("/api/v1/points", response_class=Response, status_code=201, openapi_extra=_body(MSGPACK, POINT_SCHEMA))
    async def add_point(request: Request, m: Caller = Depends(machine)) -> Response:
        doc = unpack(await request.body(), dict)
        try:
            retain = doc.get("retain_until_ns")
            point_id, parts = str(doc["id"]), int(doc["refs_parts"])
            args = (m.id, str(doc["kind"])[:16], str(doc["mode"])[:16], dict(doc["stats"]), bytes(doc["manifest"]))
            retain_until = int(retain) if retain is not None else None
            base = str(doc["base"]) if "base" in doc else None
            split, count = (int(doc["removed_from_part"]), int(doc["refs_count"])) if base else (parts, 0)
            checksum = str(doc["refs_blake3"]) if base and "refs_blake3" in doc else None
        except (KeyError, TypeError, ValueError):
            raise UsageError("malformed point") from None
        if checksum is not None and not re.fullmatch("[0-9a-f]{64}", checksum):
            raise UsageError("malformed point")
        _check_point_id(point_id)
        if base is not None:
            _check_point_id(base)
        if not 0 <= parts <= MAX_REFS_PARTS or not _json_fits(args[3]) or not 0 <= split <= parts \
                or not 0 <= count <= INT64 or (retain_until is not None and not 0 <= retain_until <= INT64):
            raise UsageError("malformed point")
        folder = _refs_spool(m, point_id)
        if base is None:
            point = await run_in_threadpool(service.add_point, *args, _read_parts(folder, parts), point_id,
                                            retain_until)
        else:
            added, removed = _read_parts(folder, split), _read_parts(folder, parts, split)
            point = await run_in_threadpool(service.add_point_delta, *args, added, removed, base, count,
                                            point_id, retain_until, checksum)
        await run_in_threadpool(shutil.rmtree, folder, True)
        return msgpack_response(point_doc(point), 201)

    def _refs_spool(m: Caller, point_id: str) -> Path:
        return service.spool_dir() / f"refs-{m.id}-{point_id}"

    # -- blobs and packs --------------------------------------------------------------------

    @app.get("/api/v1/blobs", response_class=Response)
    def blob_ids(epoch: str = Query("", max_length=80), since: int = Query(0, ge=0, le=2**62),
                 after: str = Query("", pattern="^([0-9a-f]{64})?$"), m: Caller = Depends(machine)) -> Response:
        """A page of this machine's blob IDs (32 bytes each, back to back), in packs indexed
        after `since` in `epoch` (all when the epoch changed), ascending after `after`: what
        need not be uploaded again. The headers say the current epoch and sequence."""
        current, seq, ids = service.blob_ids_since(m.id, epoch or None, since, bytes.fromhex(after))
        return Response(ids, media_type="application/octet-stream",
                        headers={"X-Blob-Epoch": current, "X-Blob-Seq": str(seq)})

    @app.get("/api/v1/packs", dependencies=[Depends(reader)])
    def pack_names(machine_name: MachineQuery = None) -> list[str]:
        return service.pack_names(service.machine_id(machine_name) if machine_name else None)

    @app.get("/api/v1/packs/{name}", response_class=Response, dependencies=[Depends(reader)])
    def get_pack(name: PackName, range_: str | None = Header(None, alias="Range", max_length=64)) -> Response:
        check_pack_name(name)
        if range_ is None:
            return Response(service.read_pack(name), media_type="application/octet-stream")
        match = _RANGE.match(range_)
        if not match or not 0 <= int(match[2]) - int(match[1]) < MAX_PACK_BYTES:
            raise HTTPException(416, {"error": "UsageError", "detail": f"unsupported range {range_!r}"})
        start, end = int(match[1]), int(match[2])
        data = service.read_range(name, start, end - start + 1)
        return Response(data, status_code=206, media_type="application/octet-stream",
                        headers={"Content-Range": f"bytes {start}-{end}/*"})

    # -- checks -----------------------------------------------------------------------------

    @app.get("/api/v1/check/structure")
    def check_structure(m: Caller = Depends(machine)) -> list[dict[str, Any]]:
        return service.check_structure(m.id)

    @app.get("/api/v1/check/orphans", dependencies=[Depends(reader)])
    def orphan_packs() -> list[str]:
        return service.orphan_packs()

    # -- jobs -------------------------------------------------------------------------------

    @app.post("/api/v1/jobs", status_code=201)
    def start_job(req: JobStart, m: Caller = Depends(machine)) -> dict[str, Any]:
        source = service.machine_id(req.source_machine) if req.source_machine else None
        return service.jobs.start(m.id, req.id, req.kind, source).to_dict()

    @app.post("/api/v1/jobs/{job_id}/renew")
    def renew_job(job_id: ShortId, m: Caller = Depends(machine)) -> dict[str, str]:
        service.jobs.renew(m.id, job_id)
        return {"job": job_id}

    @app.post("/api/v1/jobs/{job_id}/finish")
    def finish_job(job_id: ShortId, req: JobFinish, m: Caller = Depends(machine)) -> dict[str, Any]:
        return service.jobs.finish(m.id, job_id, req.status, req.mode, req.point_id, req.files, req.bytes,
                                   req.failed_count, req.failed_sealed, req.message, req.mode_reason).to_dict()

    @app.get("/api/v1/jobs")
    def jobs(machine_name: MachineQuery = None, limit: int = Query(100, ge=1, le=10000),
             viewer: Caller | None = Depends(reader)) -> list[dict[str, Any]]:
        """The admin sees every job; a machine its own and restores of its data elsewhere."""
        mid = service.machine_id(machine_name) if machine_name else None
        return [j.to_dict() for j in service.jobs.list(mid, limit, viewer.id if viewer else None)]

    async def authorized(request: Request) -> Caller:
        return await machine(request, await bearer(request))

    described = app.openapi

    def openapi() -> dict[str, Any]:
        schema = described()
        for path, operations in OPENAPI_PATHS.items():
            schema["paths"].setdefault(path, {}).update(operations)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return BodyLimitMiddleware(HotRoutes(app, service, packs_in, authorized))


def _new_name(req: MachineActRequest) -> str:
    if not req.new_name:
        raise UsageError("a rename needs the new name")
    return req.new_name


def _check_point_id(point_id: str) -> None:
    if not _POINT_ID.match(point_id):
        raise UsageError("a point ID is 1 to 32 lowercase hex digits")


def _write_part(folder: Path, part: int, body: bytes) -> None:
    folder.mkdir(exist_ok=True)
    write_private(folder / f"{part:08d}", body)


def _read_parts(folder: Path, parts: int, first: int = 0) -> Iterator[bytes]:
    for part in range(first, parts):
        try:
            yield (folder / f"{part:08d}").read_bytes()
        except FileNotFoundError:
            raise UsageError(f"part {part} of the point's refs was not received") from None


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _first_problem(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors, as one line about the first."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "path", "query", "header"))
    problem = "has characters that are not allowed" if first.get("type") == "string_pattern_mismatch" \
        else str(first.get("msg", "is invalid")).lower()
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"invalid {where or 'request'}: {problem}{more}"


def _json_fits(stats: dict[str, Any]) -> bool:
    """Whether a point's stats can be stored (as JSON: no bytes, no 100-bit integers, bounded)."""
    try:
        return len(json.dumps(stats)) <= MAX_JSON_BYTES
    except (TypeError, ValueError, RecursionError):
        return False


def clean_spool(service: VaultService) -> None:
    """Uploads a previous server was receiving when it stopped: never verified, never used."""
    for leftover in service.spool_dir().iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
