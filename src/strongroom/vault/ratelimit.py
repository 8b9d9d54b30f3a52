"""Rate limits of the served vault: token buckets in memory, one per client address or machine.

Guessing a token, a registration secret or a PIN must be slow: each such attempt takes a
token from its bucket, and an empty bucket answers HTTP 429 with how long to wait. The
buckets live in the server process (a restart refills them; several servers behind a load
balancer each keep their own), which is enough to turn thousands of guesses a second
into a few a minute. The numbers are in vault/limits.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

_MAX_KEYS = 100_000  # buckets kept; the least recently used full ones go first


class RateLimited(Exception):
    def __init__(self, what: str, wait_s: float) -> None:
        self.wait_s = max(1, math.ceil(wait_s))
        super().__init__(f"too many {what}: wait {self.wait_s} s and try again")


class Buckets:
    """`burst` attempts at once per key, then one more every `per_s` seconds."""

    def __init__(self, what: str, burst: int, per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.burst, self.per_s, self.clock = what, burst, per_s, clock
        self._level: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)
        self._lock = threading.Lock()  # sync endpoints run in a thread pool

    def _tokens(self, key: str, now: float) -> float:
        tokens, when = self._level.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - when) / self.per_s)

    def check(self, key: str) -> None:
        """Refuses when `key` has no attempt left, without spending one."""
        with self._lock:
            tokens = self._tokens(key, self.clock())
        if tokens < 1:
            raise RateLimited(self.what, (1 - tokens) * self.per_s)

    def spend(self, key: str) -> None:
        """Spends one attempt of `key`, or refuses when none is left."""
        with self._lock:
            now = self.clock()
            tokens = self._tokens(key, now)
            if tokens < 1:
                raise RateLimited(self.what, (1 - tokens) * self.per_s)
            self._level[key] = (tokens - 1, now)
            self._level.move_to_end(key)
            while len(self._level) > _MAX_KEYS:  # an attacker with many addresses: forget the oldest
                self._level.popitem(last=False)
