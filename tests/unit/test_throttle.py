"""The token bucket against an injected clock, and the work-hours rule in the policy's zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from strongroom.agent.throttle import TokenBucket, rate_now
from strongroom.policy import Policy

MiB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# The clock is injected, so the times are exact: a bound wider than float rounding would let
# a bucket that grants a free second at start, or none after idle time, pass.
EXACT = 1e-9


def test_bucket_holds_the_average_rate():
    clock = FakeClock()
    bucket = TokenBucket(lambda: MiB, clock, clock.sleep)
    for _ in range(80):
        bucket.consume(MiB // 8)  # 10 MiB in pieces, from an empty bucket: 10 s
    assert abs(clock.now - 10.0) < EXACT
    clock.now += 100  # idle time earns at most a second's worth
    start = clock.now
    for _ in range(3):
        bucket.consume(MiB)
    assert abs(clock.now - start - 2.0) < EXACT


def test_the_rate_of_the_moment_applies():
    clock = FakeClock()
    rate = {"now": MiB}
    bucket = TokenBucket(lambda: rate["now"], clock, clock.sleep)
    bucket.consume(2 * MiB)
    assert abs(clock.now - 2.0) < EXACT
    rate["now"] = 4 * MiB  # off hours begin: four times faster
    bucket.consume(2 * MiB)
    assert abs(clock.now - 2.5) < EXACT


def test_unlimited_never_waits_and_large_pieces_are_paid_off():
    clock = FakeClock()
    TokenBucket(lambda: None, clock, clock.sleep).consume(10**12)
    assert clock.now == 0
    bucket = TokenBucket(lambda: MiB, clock, clock.sleep)
    bucket.consume(8 * MiB)  # a whole pack at 1 MiB/s
    assert abs(clock.now - 8.0) < EXACT


def test_work_hours_in_the_policy_zone():
    policy = Policy(("/srv",), throttle_work=4 * MiB, throttle_off=None, work_days=("mon", "tue", "wed", "thu", "fri"),
                    work_hours=("08:00", "18:00"), timezone="Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    assert rate_now(policy, datetime(2027, 6, 7, 9, 0, tzinfo=berlin)) == 4 * MiB  # Monday 09:00
    assert rate_now(policy, datetime(2027, 6, 7, 18, 0, tzinfo=berlin)) is None  # the end is outside
    assert rate_now(policy, datetime(2027, 6, 5, 10, 0, tzinfo=berlin)) is None  # Saturday
    assert rate_now(policy, datetime(2027, 6, 7, 6, 30, tzinfo=ZoneInfo("UTC"))) == 4 * MiB  # 08:30 in Berlin
