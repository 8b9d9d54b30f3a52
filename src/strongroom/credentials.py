"""Vault credentials files: which vault, how to reach it, a registration secret, an expiry."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from strongroom.errors import CredentialsError, UsageError

DEFAULT_VALID_DAYS = 10  # as MARS


@dataclass(frozen=True)
class Credentials:
    vault_url: str
    vault_id: str
    credential_id: int
    secret: str
    issued: int
    expires: int
    # SHA-256 of the served vault's certificate: the agent trusts that one and no other.
    fingerprint: str | None = None

    def dump(self, path: Path) -> None:
        from strongroom.fsutil import write_private
        write_private(path, json.dumps({"strongroom_credentials": 1, **asdict(self)}, indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> "Credentials":
        try:
            doc = json.loads(path.read_text())
            if doc.pop("strongroom_credentials") != 1:
                raise ValueError
            creds = cls(**doc)
        except FileNotFoundError:
            raise UsageError(f"credentials file {path} does not exist") from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            raise CredentialsError(f"{path} is not a Strongroom credentials file") from None
        if creds.expires <= time.time():
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(creds.expires))
            raise CredentialsError(f"these vault credentials expired on {stamp}; download new ones")
        return creds
