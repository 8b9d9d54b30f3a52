"""A point's refs sent as a change to its parent's with the BLAKE3 of the full list (what an
unoptimized backup sends): the vault records them when the change leads to exactly those
refs, and refuses the point, recording nothing, when it leads to others of the same count."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from strongroom.errors import VaultError
from strongroom.vault.service import VaultService
from test_point_refs_check import _machine, _store


def _digest(ids: list[bytes]) -> str:
    return blake3.blake3(b"".join(ids)).hexdigest()


def _add(service: VaultService, machine_id: int, refs: list[bytes], point_id: str) -> None:
    service.add_point(machine_id, "files", "unoptimized", {}, b"manifest", [b"".join(refs)], point_id)


def test_a_change_is_recorded_only_if_it_leads_to_the_listed_refs(tmp_path: Path) -> None:
    service = VaultService.create(tmp_path / "vault")
    mine = _machine(service, "mine")
    have = sorted(os.urandom(32) for _ in range(40))
    _store(service, mine, have)
    base = have[:30]
    _add(service, mine, base, "0a")
    uid = service.machine_uid(mine)

    wanted = sorted(set(base) - {have[0], have[1]} | {have[30]})
    service.add_point_delta(mine, "files", "unoptimized", {}, b"manifest", [have[30]], [have[0], have[1]],
                            "0a", len(wanted), "0b", checksum=_digest(wanted))
    assert b"".join(service.point_refs(uid, "0b")) == b"".join(wanted)

    # Counts of the parent that were off (have[3] where the parent had have[2]): the change
    # leads to as many refs as listed, but not to those. The checksum tells.
    listed = sorted(set(base) - {have[3]} | {have[31]})
    with pytest.raises(VaultError, match="checksums differ"):
        service.add_point_delta(mine, "files", "unoptimized", {}, b"manifest", [have[31]], [have[2]], "0a",
                                len(listed), "0c", checksum=_digest(listed))
    assert "0c" not in [p.id for p in service.points(mine)]
