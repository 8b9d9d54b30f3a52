"""Which packs `check --read-data-subset` reads: N/M (deterministic) or P% (random).

N/M takes the packs whose name, read as a number from its first 16 hex digits, leaves
remainder N-1 when divided by M. A pack's name is the BLAKE3 hash of its bytes, so the M
groups are of about equal size, each pack is in exactly one, and a pack stays in its group
as packs come and go: running 1/M, 2/M, ... M/M (a week of nightly runs with 1/7 ... 7/7)
reads every pack that existed throughout. P% takes a fresh random sample of ceil(P% of the
packs), at least one when P > 0, different each run.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable

from strongroom.errors import UsageError

_FRACTION = re.compile(r"^(\d{1,9})/(\d{1,9})$")
_PERCENT = re.compile(r"^(\d{1,3}(?:\.\d+)?)%$")


def in_group(name: str, n: int, m: int) -> bool:
    return int(name[:16], 16) % m == n - 1


def parse_subset(text: str) -> Callable[[list[str]], list[str]]:
    """The chooser for an N/M or P% subset; a usage error for anything else."""
    fraction, percent = _FRACTION.match(text.strip()), _PERCENT.match(text.strip())
    if fraction:
        n, m = int(fraction[1]), int(fraction[2])
        if not 1 <= n <= m:
            raise UsageError(f"--read-data-subset {text}: N/M needs 1 <= N <= M")
        return lambda names: [name for name in names if in_group(name, n, m)]
    if percent:
        share = float(percent[1])
        if not 0 < share <= 100:
            raise UsageError(f"--read-data-subset {text}: a percentage is more than 0 and at most 100")
        return lambda names: sorted(random.SystemRandom().sample(names, min(len(names),
                                                                            math.ceil(len(names) * share / 100))))
    raise UsageError(f"--read-data-subset {text}: give N/M (e.g. 2/7) or a percentage (e.g. 10%)")
