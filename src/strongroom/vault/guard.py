"""Connection guards for the served vault: uvicorn's HTTP protocol with deadlines and caps.

uvicorn (with httptools) bounds neither the size nor the time of a request's headers, nor
how slowly a body may arrive, and its own concurrency limit answers 503 to everyone once
dawdlers hold the slots. This protocol adds, per connection (numbers in vault/limits.py):
headers must end within `header_s` and stay under `header_bytes` and `header_count`; a body
must average `body_min_rate` once `body_grace_s` has passed (time the server itself stopped
reading does not count); a client that reads nothing of its answer for `send_stall_s` is
cut off (by the kernel, with TCP_USER_TIMEOUT). When a client address, or the whole server, is at its connection cap, a new
connection evicts the one that has waited longest without a request in progress (a
dawdler, or an idle keep-alive), so that a flood of unfinished connections cannot lock
out a client that sends its requests promptly; if every connection is busy, the new one
gets 503 (which the agent retries).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import uvloop
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from strongroom.vault.limits import Limits

log = logging.getLogger("strongroom.vault")
_TICK_S = 0.5  # how often a connection checks its deadlines


class Phase(enum.Enum):
    HEADERS = "headers"  # waiting for (the rest of) a request's headers
    BODY = "body"  # the request's body is arriving
    APP = "app"  # the request is in; the answer is being made or sent
    IDLE = "idle"  # between requests (uvicorn's keep-alive timeout closes it)


class _QuietLog:
    """A line per refusal, but at most one every few seconds: a flood of dawdlers must not
    fill the server's log (and disk) with its own account."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s, self.last, self.skipped = every_s, -every_s, 0

    def warning(self, line: str) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.skipped += 1
            return
        more = f" ({self.skipped} more refusals since the last line)" if self.skipped else ""
        log.warning("%s%s", line, more)
        self.last, self.skipped = now, 0


_quiet_log = _QuietLog()


class _Refused(Exception):
    """Raised inside the parser's callbacks: the request broke a limit (see `_refusal`)."""


class GuardedProtocol(HttpToolsProtocol):
    limits: Limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase = Phase.HEADERS
        self.since = time.monotonic()  # when the current phase began
        self._header_bytes = 0
        self._header_count = 0
        self._body_bytes = 0
        self._body_reading_s = 0.0  # time the body phase lasted while the server was reading
        self._last_tick = self.since
        self._refusal: tuple[int, str] | None = None
        self._ticker: asyncio.TimerHandle | None = None

    # -- connections ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.since = self._last_tick = time.monotonic()
        if not self._admit():
            return
        self._bound_unread_answers(transport)
        self._ticker = self.loop.call_later(_TICK_S, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        super().connection_lost(exc)

    def _admit(self) -> bool:
        """Makes room under the caps by evicting a dawdler, or refuses this connection."""
        host = self.client[0] if self.client else None
        # a closing connection no longer counts (TLS may keep it a few seconds for the shutdown)
        others = [c for c in self.connections
                  if isinstance(c, GuardedProtocol) and c is not self and not c.transport.is_closing()]
        same = [c for c in others if c.client and c.client[0] == host]
        for crowd, cap in ((same, self.limits.max_connections_per_client), (others, self.limits.max_connections)):
            if len(crowd) < cap:
                continue
            waiting = [c for c in crowd if c.phase in (Phase.HEADERS, Phase.IDLE)]
            if not waiting:
                self._refuse(503, "the vault has too many connections open; try again shortly")
                return False
            victim = min(waiting, key=lambda c: c.since)
            others.remove(victim)  # room made under both caps at once, if it is the same room
            if victim.phase is Phase.HEADERS:
                victim._refuse(503, "connection closed to make room for another")
            else:
                victim.transport.close()
        return True

    def _bound_unread_answers(self, transport: asyncio.Transport) -> None:
        """A client that stops reading (a zero TCP window) is dropped by the kernel after
        `send_stall_s`: over TLS the transport takes whatever is written without ever pausing
        the writer, so the protocol cannot see the stall itself."""
        sock = transport.get_extra_info("socket")
        if sock is None or not hasattr(socket, "TCP_USER_TIMEOUT") or sock.family not in (socket.AF_INET,
                                                                                             socket.AF_INET6):
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.limits.send_stall_s * 1000))
        except OSError:
            log.warning("cannot bound unread answers on this system (TCP_USER_TIMEOUT)")

    # -- headers ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.IDLE:
            self._enter(Phase.HEADERS)
        if self.phase is Phase.HEADERS:
            self._header_bytes += len(data)
        super().data_received(data)
        if self.phase is Phase.HEADERS and self._header_bytes > self.limits.header_bytes \
                and not self.transport.is_closing():
            self._refuse(431, f"request headers larger than {self.limits.header_bytes} bytes")

    def on_message_begin(self) -> None:
        if self.phase is not Phase.HEADERS:  # a pipelined request: its own deadline
            self._enter(Phase.HEADERS)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        # the URL arrives in pieces; a long one must not grow past the bound in between
        if len(self.url) + len(url) > self.limits.header_bytes:
            self._refusal = (414, f"request line longer than {self.limits.header_bytes} bytes")
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.header_count:
            self._refusal = (431, f"more than {self.limits.header_count} request headers")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._enter(Phase.BODY)
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to any parser error, including the ones our callbacks raise."""
        status, detail = self._refusal or (400, "malformed HTTP request")
        self._refuse(status, detail)

    # -- body and answer --------------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if not self.cycle.body:
            # uvicorn appends each piece of a body to a bytearray, which its `receive` copies
            # into bytes for the app: two copies of every uploaded byte on the event loop
            # (3.3 % of the server's CPU while it takes packs, perf). From an empty bytes
            # object, its `+=` keeps the parser's piece itself (CPython returns the other
            # operand of a concatenation with b"") and `bytes()` hands that on as it is; a
            # second piece before the app's `receive` is joined as before.
            self.cycle.body = b""  # type: ignore[assignment]
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self.phase is Phase.BODY:
            self._enter(Phase.APP)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.phase is Phase.APP:
            self._enter(Phase.IDLE)
        super().on_response_complete()

    # -- deadlines --------------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        self.phase, self.since = phase, time.monotonic()
        self._header_bytes = self._header_count = self._body_bytes = 0
        self._body_reading_s = 0.0

    def _tick(self) -> None:
        now = time.monotonic()
        elapsed, self._last_tick = now - self._last_tick, now
        self._ticker = None
        if self.transport.is_closing():
            return
        limits = self.limits
        if self.phase is Phase.HEADERS and now - self.since > limits.header_s:
            return self._refuse(408, f"request headers not received within {limits.header_s:g} s")
        if self.phase is Phase.BODY:
            if not self.flow.read_paused:  # the server's own pauses are not the client's fault
                self._body_reading_s += elapsed
            if self._body_reading_s > limits.body_grace_s \
                    and self._body_bytes < limits.body_min_rate * self._body_reading_s:
                return self._refuse(408, f"request body slower than {limits.body_min_rate} bytes/s")
        self._ticker = self.loop.call_later(_TICK_S, self._tick)

    def _refuse(self, status: int, detail: str) -> None:
        """Answers one line of JSON (unless an answer has begun) and closes the connection."""
        _quiet_log.warning(f"{self._peer()}: {detail}")
        if not (self.cycle and self.cycle.response_started):
            body = json.dumps({"error": "UsageError" if status != 503 else "VaultError", "detail": detail}).encode()
            head = b"".join([STATUS_LINE[status], b"content-type: application/json\r\n",
                             b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)])
            self.transport.write(head + body)
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"


def protocol_class(limits: Limits) -> type[GuardedProtocol]:
    """The protocol uvicorn runs (its `http=` option), bound to these limits."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


def loop_class(handshake_s: float) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop uvicorn runs (its `loop=` option): uvloop, whose servers bound the TLS
    handshake and shutdown (uvloop's defaults are 60 and 30 s: a connection still in its
    handshake is not yet one the protocol can see or evict, and one being shut down still
    reads, and throws away, whatever the client sends until the client says goodbye)."""

    class Loop(uvloop.Loop):  # type: ignore[misc, name-defined]
        async def create_server(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", handshake_s)
                kwargs.setdefault("ssl_shutdown_timeout", handshake_s)
            return await super().create_server(*args, **kwargs)

    return Loop
