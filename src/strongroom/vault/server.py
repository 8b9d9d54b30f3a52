"""Running a served vault: the API on uvicorn, over TLS unless told otherwise."""

from __future__ import annotations

import gc
import json
import logging
import resource
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from strongroom.errors import UsageError, VaultError, VaultReadOnly
from strongroom.fsutil import write_private
from strongroom.mallocctl import M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, malloc_call
from strongroom.vault.limits import Limits
from strongroom.vault.limits import load as load_limits
from strongroom.vault.service import VaultService
from strongroom.vault.selfsigned import ensure_self_signed
from strongroom.vault.tls import fingerprint_of

log = logging.getLogger("strongroom.vault")
# What the server sets glibc's malloc options to (_keep_freed_memory)
_MALLOC_OPTIONS = {M_TRIM_THRESHOLD: 64 * 1024 * 1024, M_MMAP_THRESHOLD: 4 * 1024 * 1024, M_ARENA_MAX: 2}
SERVE_FILE = "serve.json"  # how the vault was last served: what `vault credentials FOLDER` puts in files


@dataclass(frozen=True)
class Listener:
    url: str
    fingerprint: str | None
    cert: Path | None
    key: Path | None


def prepare(service: VaultService, host: str, port: int, cert: Path | None, key: Path | None,
            tls: bool) -> Listener:
    """Chooses the certificate (the given one, else the vault's own self-signed one) and
    records the URL and fingerprint in the vault folder for `vault credentials`."""
    if tls and cert is None:
        cert, key = ensure_self_signed(service.root, host)
    fingerprint = _checked_fingerprint(cert, key) if tls and cert else None
    shown = f"[{host}]" if ":" in host else host
    url = f"{'https' if tls else 'http'}://{shown}:{port}"
    try:
        write_private(service.root / SERVE_FILE, json.dumps({"url": url, "fingerprint": fingerprint}).encode(),
                      mode=0o644)
    except OSError as exc:
        if (read_only := VaultReadOnly.of(exc)) is None:
            raise
        # A vault that cannot be written still serves what needs no writing: restores, first of all
        log.error("%s: %s not updated, so `vault credentials FOLDER` may name an earlier address; every write "
                  "is refused", read_only, SERVE_FILE)
    return Listener(url, fingerprint, cert if tls else None, key if tls else None)


def _checked_fingerprint(cert: Path, key: Path | None) -> str:
    """The certificate's fingerprint, once it and its key are known to load together: a damaged
    file (a disk that failed under the vault's own) is said in one line before the server starts."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        return fingerprint_of(cert.read_bytes())
    except (ssl.SSLError, ValueError):
        raise UsageError(f"the certificate {cert} or its key {key or cert} is damaged or they do not match: "
                         "restore them, or, for the vault's own, move its tls folder away to make a new one "
                         "(machines then need new credentials)") from None


def last_served(root: Path) -> dict[str, str | None]:
    try:
        served = json.loads((root / SERVE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        served = None
    if not isinstance(served, dict):
        raise VaultError(f"{root / SERVE_FILE} is damaged: `vault serve` writes it again, or give --url (and "
                         "--fingerprint) to say how machines reach the vault")
    return served


def run(service: VaultService, host: str, port: int, listener: Listener, prune_every_s: float) -> None:
    import uvicorn  # the server's libraries load only in the server

    from strongroom.vault import guard
    from strongroom.vault.api import clean_spool, make_app

    _keep_freed_memory()
    limits = load_limits()
    clean_spool(service)
    if prune_every_s > 0:
        threading.Thread(target=_prune_loop, args=(service, prune_every_s), name="prune", daemon=True).start()
    _raise_open_files(limits)
    app = make_app(service, limits)
    # The libraries' and the app's objects live as long as the server: out of the collector's
    # scans, which a pack's index rows (8,192 a pack) otherwise triggered over all of them
    gc.freeze()
    # httptools, guarded (vault/guard.py); X-Forwarded-For is not trusted, so that rate
    # limits count the address that really connected
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                ssl_certfile=str(listener.cert) if listener.cert else None,
                ssl_keyfile=str(listener.key) if listener.key else None,
                http=guard.protocol_class(limits), loop=guard.loop_class(limits.tls_handshake_s),
                timeout_keep_alive=limits.keepalive_s, proxy_headers=False, server_header=False,
                timeout_graceful_shutdown=10)


def _keep_freed_memory() -> None:
    """Has glibc keep the memory a request freed for the next one, instead of giving it back
    at once: the pieces of every uploaded pack (and of every answer) were allocated at the top
    of the heap, freed, the heap shrunk and grown again, ~80 times a pack, each growth paying a
    page fault and a zeroed page per 4 KiB (105,000 faults in a first backup of 316 MiB; perf:
    ~20 % of the server's CPU). Allocations up to 4 MiB (an answer of 2 MiB included) come from
    the heap; the heap gives back what is free beyond 64 MiB at its top. Measured: server CPU
    of a first backup 0.80-1.00 -> 0.59-0.71 s. The thread pool's threads share two arenas (as
    the agent's, agent/arenas.py), each of which keeps its own free memory: peak RSS of a
    served backup and restore 155-159 -> 144-161 MiB (medians 157 -> 152) at the same CPU.
    Not glibc: nothing."""
    for option, value in _MALLOC_OPTIONS.items():
        malloc_call("mallopt", option, value)


def _raise_open_files(limits: Limits) -> None:
    """Every connection is a file descriptor: the soft limit (often 1024) must leave room
    for the connection cap and the vault's own files, up to what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard),
                                                    hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("only %d open files allowed (ulimit -n): fewer than the %d connections the limits allow",
                    soft, limits.max_connections)


def _prune_loop(service: VaultService, every_s: float) -> None:
    """Retention is the vault's job: prune at start, then every `every_s` seconds."""
    from strongroom.vault.prune import prune

    while True:
        try:
            report = prune(service)
            log.warning("prune: %d points expired, %d purged, %d packs deleted, %d repacked, %d -> %d bytes",
                        len(report.points_expired), len(report.points_purged), report.packs_deleted,
                        report.packs_repacked, report.bytes_before, report.bytes_after)
        except Exception as exc:  # noqa: BLE001 - the server goes on; the next round tries again
            log.error("prune failed: %s", exc)
        time.sleep(every_s)
