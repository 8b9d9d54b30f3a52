"""The agent's known-blob index (agent/blobcache.py) after real backups: it holds exactly the
machine's blobs in the vault and is caught up, so that the next backup asks the vault for
nothing it uploaded itself (the last backup's own blobs used to come back, a million IDs
after a first backup of a million files)."""

from __future__ import annotations

import sqlite3

import pytest

from strongroom.agent.home import AgentHome
from strongroom.errors import VaultError
from strongroom.vault.wire import ID_SIZE


def _known(agent: AgentHome) -> tuple[set[bytes], str, int]:
    db = sqlite3.connect(agent.cache / "blobs.sqlite")
    try:
        ids = {row[0] for row in db.execute("SELECT id FROM known")}
        facts = dict(db.execute("SELECT key, value FROM facts"))
    finally:
        db.close()
    return ids, facts["epoch"], int(facts["seq"])


def _in_vault(agent: AgentHome) -> set[bytes]:
    vault, found, after = agent.vault(), set(), b""
    while True:
        _epoch, _seq, page = vault.blob_ids_since(None, 0, after)
        if not page:
            return found
        found |= {page[i:i + ID_SIZE] for i in range(0, len(page), ID_SIZE)}
        after = page[-ID_SIZE:]


def test_after_each_backup_the_index_is_the_vault_s_set_and_caught_up(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}").write_bytes(bytes([i]) * (1000 + i))
    agent = AgentHome(registered.home)
    for round_ in range(3):
        registered.backup(src)
        known, epoch, seq = _known(agent)
        assert known == _in_vault(agent)  # every blob it knows is there, and it knows them all
        assert agent.vault().blob_ids_since(epoch, seq) == (epoch, seq, b"")  # nothing left to fetch
        (src / f"new{round_}").write_bytes(b"new %d" % round_ * 500)


def test_the_vault_refuses_a_point_naming_blobs_it_does_not_hold(registered, tmp_path):
    # What makes a wrong "known" claim harmless: the point is checked against the vault's index.
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_bytes(bytes([i]) * 3000)
    registered.backup(src)
    agent = AgentHome(registered.home)
    vault = agent.vault()
    held = sorted(_in_vault(agent))
    stats = {"files_new": 0, "files_changed": 0, "files_unchanged": 0, "bytes_added": 0}
    lacking = sorted(held + [b"\x00" * ID_SIZE, b"\xfe" * ID_SIZE])
    with pytest.raises(VaultError, match="references 2 blobs this machine does not have"):
        vault.add_point("files", "unoptimized", stats, b"manifest", [b"".join(lacking)])
    assert len(vault.points()) == 1  # nothing recorded
