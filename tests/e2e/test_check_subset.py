"""check --read-data-subset N/M | P%: M runs of N/M read every pack once, the same group each
time (a pack's group follows from its name); P% reads a random share. Embedded and served."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
from conftest import assert_clean_failure, packs_in, saying
from strongroom.packs import KIND_DATA, read_header


def group_of(name: str, m: int) -> int:
    """The documented rule: the first 16 hex digits of the pack's name, modulo M, plus one."""
    return int(name[:16], 16) % m + 1


@pytest.fixture(params=["embedded", "served"])
def machine(request, tmp_path, registered_factory):
    """A machine with several backups (a data and a tree pack each), embedded or served."""
    if request.param == "embedded":
        sr = registered_factory(tmp_path)
        folder, server = sr.vault, None
    else:
        from conftest import Strongroom
        from served import VaultServer
        admin = Strongroom(tmp_path / "admin-home")
        folder = admin.create_vault(tmp_path / "vault")
        server = VaultServer(admin, folder).start()
        sr = Strongroom(tmp_path / "home").register(server.credentials(tmp_path / "cred"), "sub-01")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.bin").write_bytes(os.urandom(50_000))
        sr.backup(src)
    yield SimpleNamespace(sr=sr, folder=folder, packs=sorted(p.name for p in packs_in(folder)))
    if server:
        server.stop()


def test_m_runs_of_n_of_m_read_every_pack_once(machine):
    total = len(machine.packs)
    assert total >= 10
    seen = 0
    for n in (1, 2, 3):
        doc = machine.sr.json("check", "--read-data-subset", f"{n}/3")
        assert doc["ok"] and doc["subset"] == f"{n}/3" and doc["packs_total"] == total
        assert doc["packs_checked"] == sum(group_of(p, 3) == n for p in machine.packs)
        seen += doc["packs_checked"]
    assert seen == total


def test_a_damaged_pack_is_found_by_its_group_only_every_time(machine):
    # a data pack (trees are read by every check, subset or not); one byte inside a blob
    pack = next(p for p in packs_in(machine.folder) if all(r.kind == KIND_DATA for r in read_header(p.read_bytes())))
    data = bytearray(pack.read_bytes())
    ref = max(read_header(bytes(data)), key=lambda r: r.length)
    data[ref.offset + ref.length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    mine = group_of(pack.name, 4)
    for _round in range(2):  # deterministic: the same group each run
        for n in range(1, 5):
            res = machine.sr.run("check", "--read-data-subset", f"{n}/4", "--json", check=False)
            doc = json.loads(res.stdout)
            if n == mine:
                assert res.returncode == 1 and [e["pack"] for e in doc["errors"]] == [pack.name]
            else:
                assert res.returncode == 0 and doc["errors"] == [], n


def test_percentage_reads_that_share_of_packs(machine):
    total = len(machine.packs)
    for share, want in (("100%", total), ("25%", math.ceil(total / 4)), ("0.1%", 1)):
        doc = machine.sr.json("check", "--read-data-subset", share)
        assert doc["packs_checked"] == want and doc["ok"], share
    text = machine.sr.run("check", "--read-data-subset", "1/2").stdout
    assert "subset 1/2 of" in text


@pytest.mark.parametrize("bad,words", [("0/3", ("1 <= N <= M",)), ("4/3", ("1 <= N <= M",)),
                                       ("0%", ("more than 0",)), ("150%", ("at most 100",)),
                                       ("half", ("N/M", "percentage"))])
def test_bad_subsets_are_refused_in_one_line(registered, bad, words):
    res = registered.run("check", "--read-data-subset", bad, check=False)
    assert_clean_failure(res, 2, saying(*words))
