"""The vault's job book on a real SQLite catalog: one backup per machine, and leases that lapse."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, update

from strongroom.errors import VaultError
from strongroom.vault import catalog as cat
from strongroom.vault.jobs import JobBook


@pytest.fixture
def book(tmp_path):
    engine = cat.open_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    with engine.begin() as db:
        for name in ("m1", "m2"):
            db.execute(insert(cat.machines).values(uid=name, name=name, registered=0, keyfile="{}", token_hash="x"))
    return JobBook(engine)


def test_one_backup_per_machine_while_its_lease_lives(book):
    book.start(1, "a", "backup")
    with pytest.raises(VaultError, match="another backup"):
        book.start(1, "b", "backup")
    book.start(2, "c", "backup")  # another machine is not held up
    book.start(1, "r", "restore")  # restores take no lease
    assert book.start(1, "a", "backup").status == "running"  # a retried start finds its job
    book.finish(1, "a", "completed", files=3, nbytes=10)
    book.start(1, "b", "backup")


def test_an_expired_lease_is_taken_over_and_its_job_marked_failed(book):
    book.start(1, "a", "backup")
    with book.engine.begin() as db:
        db.execute(update(cat.jobs).where(cat.jobs.c.id == "a").values(lease_expires=1))
    book.start(1, "b", "backup")
    dead = book.get("a")
    assert dead.status == "failed" and "lease expired" in dead.message
    with pytest.raises(VaultError, match="no longer running"):
        book.renew(1, "a")


def test_jobs_of_other_machines_cannot_be_finished(book):
    book.start(1, "a", "backup")
    with pytest.raises(VaultError):
        book.finish(2, "a", "failed")
    with pytest.raises(VaultError, match="another machine"):
        book.start(2, "a", "backup")
    assert [j.id for j in book.list(1)] == ["a"]


def test_a_prune_and_a_backup_of_one_machine_exclude_each_other(book):
    book.start(1, "b", "backup")
    with pytest.raises(VaultError, match="another backup"):
        book.start(1, "p", "prune")
    book.finish(1, "b", "completed")
    book.start(1, "p", "prune")
    with pytest.raises(VaultError, match="another prune"):
        book.start(1, "b2", "backup")
