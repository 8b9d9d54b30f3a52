"""Reaching a vault by its URL: a folder in-process (`file://`), a served one over HTTPS."""

from __future__ import annotations

from strongroom.errors import UsageError
from strongroom.vault.interface import Vault


def connect(url: str, pin: str | None = None, insecure_http: bool = False) -> Vault:
    """The vault at `url`; `pin` is the certificate fingerprint a served vault must present;
    `insecure_http` allows a plain http:// URL off loopback."""
    if url.startswith("file:"):
        from strongroom.vault.embedded import EmbeddedVault
        return EmbeddedVault(url)
    if url.startswith(("https://", "http://")):
        from strongroom.vault.client import (
            HttpVault,  # httpx only where a served vault is used
        )
        return HttpVault(url, pin, insecure_http=insecure_http)
    raise UsageError(f"unsupported vault URL {url!r} (file://, https:// or http://)")
