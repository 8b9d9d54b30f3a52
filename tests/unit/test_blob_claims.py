"""The agent's claims on blobs (agent/blobcache.py), on real SQLite: a blob is stored by
exactly one caller, never when the vault has it, whether claimed one at a time or in batches."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.agent.blobcache import KnownBlobs


class _Vault:
    """The one vault call `sync` makes, answering from a fixed set (a real vault is in e2e)."""

    def __init__(self, ids: list[bytes]) -> None:
        self.page = b"".join(sorted(ids))

    def blob_ids_since(self, epoch: str | None, since: int, after: bytes = b"") -> tuple[str, int, bytes]:
        return "e1", 1, b"" if after else self.page


def _known(tmp: Path, in_vault: list[bytes]) -> KnownBlobs:
    known = KnownBlobs(tmp / f"cache-{os.urandom(4).hex()}")
    known.sync(_Vault(in_vault))  # type: ignore[arg-type]
    return known


ids = st.lists(st.sampled_from([bytes([i]) * 32 for i in range(40)]), max_size=600)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(in_vault=st.lists(st.sampled_from([bytes([i]) * 32 for i in range(40)]), unique=True),
       batches=st.lists(ids, max_size=4))
def test_a_batch_claims_what_one_by_one_claims(tmp_path: Path, in_vault: list[bytes], batches: list[list[bytes]]) -> None:
    one, many = _known(tmp_path, in_vault), _known(tmp_path, in_vault)
    try:
        won: list[bytes] = []
        for batch in batches:
            answers = many.claim_many(batch)
            assert answers == [one.claim(i) for i in batch]
            won += [i for i, ok in zip(batch, answers) if ok]
        # Each blob the vault lacks is claimed exactly once over all batches; others never.
        assert sorted(won) == sorted({i for batch in batches for i in batch} - set(in_vault))
    finally:
        one.close()
        many.close()


def test_claims_from_threads_store_each_blob_once(tmp_path: Path) -> None:
    known = _known(tmp_path, [])
    wanted = [os.urandom(32) for _ in range(3000)]
    won: list[bytes] = []
    lock = threading.Lock()

    def claim(part: list[bytes]) -> None:
        mine = [i for i, ok in zip(part, known.claim_many(part)) if ok]
        mine += [i for i in part if known.claim(i)]
        with lock:
            won.extend(mine)

    threads = [threading.Thread(target=claim, args=(wanted[k::3] + wanted[:500],)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    known.close()
    assert sorted(won) == sorted(wanted)
