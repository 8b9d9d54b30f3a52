"""Every bound the served vault puts on a client, in one place (docs/vault-server.md lists them).

Connection limits keep a client that opens connections and then dawdles (slowloris: headers
a byte at a time, bodies trickling in, responses never read) from tying up the server;
rate limits keep a client from guessing tokens, registration secrets or PINs at speed.
The defaults suit agents on slow links (a pack must average 4 KiB/s); an operator may
change any of them with $STRONGROOM_VAULT_LIMITS, e.g. `header_s=5,max_connections=4096`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from strongroom.errors import UsageError

LIMITS_ENV = "STRONGROOM_VAULT_LIMITS"


@dataclass(frozen=True)
class Limits:
    # -- connections (vault/guard.py) --------------------------------------------------------
    tls_handshake_s: float = 10.0  # accepted to TLS handshake done; also closed to TLS shutdown done
    header_s: float = 10.0  # connection made, or a request's first byte, to the end of its headers
    header_bytes: int = 32 * 1024  # request line and headers of one request
    header_count: int = 64  # header lines of one request
    body_grace_s: float = 20.0  # any body may take this long ...
    body_min_rate: int = 4 * 1024  # ... after which it must have averaged this many bytes per second
    send_stall_s: float = 60.0  # a client that reads none of its answer for this long is cut off
    keepalive_s: int = 5  # an idle connection between requests (uvicorn's timeout_keep_alive)
    max_connections: int = 1024  # open connections per server process
    max_connections_per_client: int = 128  # per client address (an agent uses up to 32)
    # -- rates per client address, and per machine where one is known (vault/ratelimit.py) -------
    # Each is a token bucket: `burst` at once, then one more every `per_s` seconds.
    failed_auth_burst: int = 20  # wrong machine or admin tokens, wrong registration secrets
    failed_auth_per_s: float = 2.0
    register_burst: int = 20  # registrations, successful or not
    register_per_s: float = 3.0
    pin_burst: int = 5  # calls that carry a PIN (deleting data, shortening retention)
    pin_per_s: float = 30.0


def load(text: str | None = None) -> Limits:
    """The defaults, changed by $STRONGROOM_VAULT_LIMITS (`name=value,...`) where it says so."""
    text = os.environ.get(LIMITS_ENV, "") if text is None else text
    known = {f.name: f.type for f in fields(Limits)}
    changes: dict[str, float | int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in known:
            raise UsageError(f"${LIMITS_ENV}: unknown limit {name!r} (known: {', '.join(known)})")
        try:
            number = float(value) if known[name] == "float" else int(value)
        except ValueError:
            raise UsageError(f"${LIMITS_ENV}: {name} must be a number, not {value.strip()!r}") from None
        if number <= 0:
            raise UsageError(f"${LIMITS_ENV}: {name} must be more than 0")
        changes[name] = number
    return replace(Limits(), **changes)
