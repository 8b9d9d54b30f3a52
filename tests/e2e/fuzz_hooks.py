"""Schemathesis hooks for the API fuzz test: msgpack bodies, and which token each call carries.

Loaded by the `schemathesis` CLI through $SCHEMATHESIS_HOOKS; the tokens come from the
environment that test_api_fuzz.py sets (the admin token for /admin calls, a machine's for the rest).
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import schemathesis


@schemathesis.serializer("application/x-msgpack")
def to_msgpack(_ctx: Any, value: Any) -> bytes:
    return msgpack.packb(_fit(value))


def _fit(value: Any) -> Any:
    """msgpack has no integers beyond 64 bits: the largest it has are still out of bounds."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(-2**63, min(value, 2**64 - 1))
    if isinstance(value, list):
        return [_fit(v) for v in value]
    if isinstance(value, dict):
        return {k: _fit(v) for k, v in value.items()}
    return value


@schemathesis.serializer("application/octet-stream")
def to_bytes(_ctx: Any, value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@schemathesis.auth(refresh_interval=None)
class VaultTokens:
    def get(self, case: Any, _ctx: Any) -> str:
        admin = case.operation.path.startswith("/api/v1/admin/")
        return os.environ["FUZZ_ADMIN_TOKEN" if admin else "FUZZ_MACHINE_TOKEN"]

    def set(self, case: Any, token: str, _ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
