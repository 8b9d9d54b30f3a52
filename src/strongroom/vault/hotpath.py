"""The calls a backup and a restore make by the hundred, answered beside FastAPI, not through it.

A pack upload, a blob location query and a batched read cost the server ~1 ms of CPU each in
FastAPI's stack (its middleware, routing, dependency injection, response building), apart from
their bytes: a restore makes one per 2 MiB it reads and one per few thousand blobs it locates.
These three are answered by a plain ASGI app in front of FastAPI, which hands it every other
request. What they check is what their FastAPI declarations checked: the machine's token
through the same function as every other call's (api.py `machine`: bearer token, rate limit
of failed guesses, 401), the request body's bound (api.py `BodyLimitMiddleware`, outside
this app), each field's shape and range; errors travel as every other call's do (`error_response`).
Their OpenAPI description (`OPENAPI_PATHS`) joins FastAPI's document, so that the fuzzer
(tests/e2e/test_api_fuzz.py) sends them its inputs too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import msgpack
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DatabaseError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from strongroom.errors import StrongroomError, UsageError, VaultReadOnly
from strongroom.vault.ratelimit import RateLimited
from strongroom.vault.service import MAX_READ_BYTES, VaultService
from strongroom.vault.storage_errors import storage_failure
from strongroom.vault.upload import PackReceiver
from strongroom.vault.wire import ERROR_STATUS, ID_SIZE, MAX_LOCATE, MAX_PACK_BYTES, MSGPACK

MAX_READ_RANGES = 131072  # ranges in one batched read: 2 MiB of the smallest envelopes (16 bytes)
PACK_NAME = re.compile(r"^[0-9a-f]{64}$")
# Names: no control characters (they would reach terminals and logs, and PostgreSQL refuses NUL)
NAME = r"^[^\x00-\x1f\x7f/]+$"
NAME_MAX = 255  # characters: the API's bound on any name it is sent (registration takes fewer)
_NAME = re.compile(NAME)
_PACKS = "/api/v1/packs/"
log = logging.getLogger("strongroom.vault")
_ALLOWED = {"/api/v1/blobs/read": "POST", "/api/v1/blobs/locate": "POST"}  # methods of the paths this app owns

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Caller:
    """The machine a request's token belongs to."""

    def __init__(self, id: int, name: str) -> None:
        self.id, self.name = id, name


def owner_id(service: VaultService, name: str, me: Caller) -> int:
    """The ID of machine `name`, whose data `me` asks about (any machine may read any other's)."""
    return me.id if name == me.name else service.machine_id(name)


async def error_response(request: Request | None, exc: Exception) -> Response:
    """How a refusal travels, from FastAPI's routes and from these alike: one line of JSON
    naming the error's class, which the agent raises again (vault/wire.py). The storage's
    failures travel so too (vault/storage_errors.py); any other exception is a bug, re-raised."""
    logged = None  # the storage's failures are the operator's to see too
    if isinstance(exc, (OSError, DatabaseError)):
        failure = storage_failure(exc)
        if failure is None:
            raise exc
        logged = f"{failure} ({exc.filename})" if isinstance(exc, OSError) and exc.filename else str(failure)
        exc = failure
    elif isinstance(exc, VaultReadOnly):
        logged = str(exc)
    if logged:
        log.error("%s: %s", f"{request.method} {request.url.path}" if request else "a request", logged)
    if isinstance(exc, StrongroomError):
        status = next(code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls))
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)
    if isinstance(exc, RateLimited):
        return JSONResponse({"error": "VaultError", "detail": f"the vault refused: {exc}"}, status_code=429,
                            headers={"Retry-After": str(exc.wait_s)})
    assert isinstance(exc, HTTPException)  # FastAPI's own, routing's 404 and 405, and a refused token
    detail = exc.detail if isinstance(exc.detail, dict) else {"error": "VaultError", "detail": str(exc.detail)}
    return JSONResponse(detail, status_code=exc.status_code, headers=exc.headers)


class HotRoutes:
    """PUT /api/v1/packs/{name}, POST /api/v1/blobs/locate and POST /api/v1/blobs/read;
    every other request goes to `app`."""

    def __init__(self, app: ASGIApp, service: VaultService, packs_in: PackReceiver,
                 authorize: Callable[[Request], Awaitable[Caller]]) -> None:
        self.app, self.service, self.packs_in, self.authorize = app, service, packs_in, authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "POST" and path == "/api/v1/blobs/read":
                return await self._answer(scope, receive, send, self._read)
            if method == "POST" and path == "/api/v1/blobs/locate":
                return await self._answer(scope, receive, send, self._locate)
            a_pack = path.startswith(_PACKS) and "/" not in path[len(_PACKS):]
            if method == "PUT" and a_pack:
                return await self._answer(scope, receive, send, self._put_pack)
            # FastAPI knows only its own routes: without this, GET on a hot call's path would be
            # "404 Not Found" and a pack's path would claim "Allow: GET" alone.
            allowed = _ALLOWED.get(path) or ("GET, PUT" if a_pack and method != "GET" else None)
            if allowed:
                refusal = HTTPException(405, f"this call takes {allowed}, not {method}", headers={"Allow": allowed})
                return await (await error_response(None, refusal))(scope, receive, send)
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send,
                      handler: Callable[[Request, Caller], Awaitable[Response]]) -> None:
        request = Request(scope, receive)
        try:
            response = await handler(request, await self.authorize(request))
        except (StrongroomError, RateLimited, HTTPException, OSError, DatabaseError) as exc:
            response = await error_response(request, exc)
        await response(scope, receive, send)

    async def _read(self, request: Request, _caller: Caller) -> Response:
        """Many ranges in one request (body: msgpack [[pack, offset, length], ...]); the answer
        is their bytes back to back: one round trip for a directory's trees or small files."""
        ranges = unpack(await request.body(), list)
        if not 1 <= len(ranges) <= MAX_READ_RANGES or not all(map(_is_range, ranges)):
            raise UsageError(f"send 1 to {MAX_READ_RANGES} ranges [pack, offset, length] within packs")
        parts = await run_in_threadpool(self.service.read_ranges, ranges)
        # One range (a large file's chunk) goes out as the view read_ranges gives: no copy of it.
        return Response(parts[0] if len(parts) == 1 else b"".join(parts), media_type="application/octet-stream")

    async def _locate(self, request: Request, caller: Caller) -> Response:
        """Where one machine's blobs lie (the caller's unless `?machine=` names another): the
        body is IDs back to back; the answer maps the present ones."""
        named = dict(parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)).get("machine")
        if named is not None and not (len(named) <= NAME_MAX and _NAME.match(named)):
            raise UsageError(f"invalid machine: a machine name is 1 to {NAME_MAX} characters, without control "
                             "characters or '/'")
        body = await request.body()
        if not body or len(body) % ID_SIZE or len(body) // ID_SIZE > MAX_LOCATE:
            raise UsageError(f"send 1 to {MAX_LOCATE} blob IDs of {ID_SIZE} bytes")
        ids = [body[i:i + ID_SIZE] for i in range(0, len(body), ID_SIZE)]

        def locate() -> bytes:
            owner = owner_id(self.service, named, caller) if named else caller.id
            found = self.service.blob_locations(owner, ids)
            return msgpack.packb({k: [v.pack, v.offset, v.length, v.kind] for k, v in found.items()})

        return Response(await run_in_threadpool(locate), media_type=MSGPACK)

    async def _put_pack(self, request: Request, caller: Caller) -> Response:
        """A pack, named by its content: streamed to memory or a spool file, verified, stored."""
        name = request.scope["path"][len(_PACKS):]
        check_pack_name(name)
        declared = request.headers.get("content-length", "")
        await self.packs_in.receive(caller.id, name, int(declared) if declared.isdigit() else None,
                                    request.stream())
        return JSONResponse({"pack": name}, status_code=201)


def check_pack_name(name: str) -> None:
    if not PACK_NAME.match(name):
        raise UsageError("a pack name is 64 lowercase hex digits")


def _is_range(item: Any) -> bool:
    return (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and PACK_NAME.match(item[0])
            and _is_int(item[1], 0, MAX_PACK_BYTES) and _is_int(item[2], 1, MAX_READ_BYTES)) is True


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def unpack(body: bytes, kind: type) -> Any:
    try:
        doc = msgpack.unpackb(body)
    except (ValueError, msgpack.UnpackException):
        raise UsageError("malformed msgpack body") from None
    if not isinstance(doc, kind):
        raise UsageError("malformed msgpack body")
    return doc


_BEARER = [{"HTTPBearer": []}]
_ERRORS = {"400": {"description": "a malformed request"}, "401": {"description": "no token, or a refused one"},
           "413": {"description": "a request body over the call's limit"}}


def request_body(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI request body FastAPI does not describe itself (it does not parse it)."""
    return {"required": True, "content": {media_type: {"schema": schema}}}


BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
_RANGES: dict[str, Any] = {"type": "array", "items": {"type": "array", "items": [
    {"type": "string"}, {"type": "integer"}, {"type": "integer"}], "minItems": 3, "maxItems": 3}}
# The OpenAPI description of these routes, as FastAPI would have written it
OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/blobs/locate": {"post": {
        "summary": "Locate", "operationId": "locate_api_v1_blobs_locate_post", "security": _BEARER,
        "parameters": [{"name": "machine", "in": "query", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME}}],
        "requestBody": request_body("application/octet-stream", BINARY),
        "responses": {"200": {"description": "msgpack {blob ID: [pack, offset, length, kind]}"}, **_ERRORS}}},
    "/api/v1/blobs/read": {"post": {
        "summary": "Read Ranges", "operationId": "read_ranges_api_v1_blobs_read_post", "security": _BEARER,
        "requestBody": request_body(MSGPACK, _RANGES),
        "responses": {"200": {"description": "the ranges' bytes back to back"}, **_ERRORS}}},
    "/api/v1/packs/{name}": {"put": {
        "summary": "Put Pack", "operationId": "put_pack_api_v1_packs__name__put", "security": _BEARER,
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": PACK_NAME.pattern}}],
        "requestBody": request_body("application/octet-stream", BINARY),
        "responses": {"201": {"description": "stored"}, "422": {"description": "not the pack its name says"},
                      **_ERRORS}}},
}
