"""Bandwidth limits: a token bucket on the bytes the agent sends to and reads from the vault,
with one rate for work hours and another for the rest, as the policy says."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from strongroom.policy import DAYS, Policy
from strongroom.vault.interface import Vault

_BURST_S = 1.0  # a second's worth of tokens may be spent at once


def rate_now(policy: Policy, now: datetime | None = None) -> int | None:
    """The policy's limit at `now` in bytes per second (None: unlimited)."""
    local = (now or datetime.now(timezone.utc)).astimezone(ZoneInfo(policy.timezone))
    start, end = policy.work_hours
    working = DAYS[local.weekday()] in policy.work_days and start <= local.strftime("%H:%M") < end
    return policy.throttle_work if working else policy.throttle_off


class TokenBucket:
    def __init__(self, rate: Callable[[], int | None], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.tokens = 0.0
        self.stamp = clock()
        self.lock = threading.Lock()  # uploads and reads come from several threads: one queue

    def consume(self, nbytes: int) -> None:
        """Waits until `nbytes` may pass. Debt is allowed (a pack is larger than a second's
        worth at low rates): the next caller waits it off, so the average holds."""
        with self.lock:
            rate = self.rate()
            now = self.clock()
            if rate is None:
                self.tokens, self.stamp = 0.0, now
                return
            self.tokens = min(rate * _BURST_S, self.tokens + (now - self.stamp) * rate)
            self.stamp = now
            self.tokens -= nbytes
            wait = -self.tokens / rate if self.tokens < 0 else 0.0
            if wait:
                self.sleep(wait)
                self.tokens, self.stamp = 0.0, self.clock()


class ThrottledVault:
    """A vault whose pack uploads and blob reads pass through the bucket; all else as is."""

    def __init__(self, vault: Vault, bucket: TokenBucket) -> None:
        self._vault, self._bucket = vault, bucket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vault, name)

    def store_pack(self, name: str, data: bytes | memoryview) -> None:
        self._bucket.consume(len(data))
        self._vault.store_pack(name, data)

    def read_range(self, pack: str, offset: int, length: int) -> bytes | bytearray:
        self._bucket.consume(length)
        return self._vault.read_range(pack, offset, length)

    def read_ranges(self, ranges: list[tuple[str, int, int]]) -> Any:
        self._bucket.consume(sum(n for _p, _o, n in ranges))
        return self._vault.read_ranges(ranges)

    def read_pack(self, pack: str) -> bytes:
        data = self._vault.read_pack(pack)
        self._bucket.consume(len(data))
        return data
