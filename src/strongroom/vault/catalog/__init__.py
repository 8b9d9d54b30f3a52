"""The catalog: machines, credentials, packs, blobs and recovery points, in SQL.

The catalog is an index of the vault's storage, never its only memory: every record that
matters is written to storage first (see vault/records.py), and `vault rebuild-catalog`
rebuilds this database from storage alone. Nothing here names a row id that a rebuild would
not reproduce: points reference blobs by their IDs (kept in storage, vault/refs.py).

SQL goes through SQLAlchemy Core so that the same code serves SQLite (embedded) and,
later, PostgreSQL (many vault servers). Blob IDs are keyed hashes and point manifests are
sealed, so nothing here needs or reveals the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
)

from strongroom.errors import VaultReadOnly
from strongroom.vault.idsql import EACH_ID, ID_AT, id_params
from strongroom.vault.wire import ID_SIZE

metadata = MetaData()

credentials = Table(
    "credentials", metadata,
    Column("id", Integer, primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("issued", Integer, nullable=False),
    Column("expires", Integer, nullable=False),
)
# The catalog's own facts: its format, and an incarnation that changes with every rebuild,
# so that agents know their cached view of the vault's blobs is void.
catalog_meta = Table(
    "catalog_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
machines = Table(
    "machines", metadata,
    Column("id", Integer, primary_key=True),
    Column("uid", String(32), nullable=False, unique=True),  # its name in storage
    Column("name", String(255), nullable=False, unique=True),
    Column("registered", Integer, nullable=False),
    Column("keyfile", Text, nullable=False),
    Column("token_hash", String(64), nullable=False),
    # Raised with every pack indexed (packs.seq) and every blob dropped (drops): what an
    # agent needs to bring its cached set of this machine's blob IDs up to date.
    Column("pack_seq", Integer, nullable=False, default=0),
    Column("drops", Integer, nullable=False, default=0),
    # machines remove / rename / register --replace (vault/machine_admin.py)
    Column("removed_ns", Integer),  # removed then: its token revoked, its points soft-deleted
    Column("former_names", Text),  # JSON list: names its points may be sealed under
    Column("key_check", String(64)),  # BLAKE3 hex of the key's replace proof (register --replace)
    Column("revoked", Text),  # JSON list of token hashes no longer accepted (to say why)
)
packs = Table(
    "packs", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("machine_id", Integer, ForeignKey("machines.id"), nullable=False, index=True),
    Column("size", Integer, nullable=False),
    Column("created", Integer, nullable=False),
    Column("seq", Integer, nullable=False, default=0),  # machines.pack_seq when it was indexed
)
blobs = Table(
    "blobs", metadata,
    Column("id", Integer, primary_key=True),
    # Unique per machine, not vault-wide: one machine cannot squat another's blob IDs.
    Column("machine_id", Integer, ForeignKey("machines.id"), nullable=False),
    Column("blob_id", LargeBinary(32), nullable=False),
    Column("pack_id", Integer, ForeignKey("packs.id"), nullable=False, index=True),
    Column("kind", Integer, nullable=False),
    Column("offset", Integer, nullable=False),
    Column("length", Integer, nullable=False),
    UniqueConstraint("machine_id", "blob_id", name="blobs_machine_blob"),
)
points = Table(
    "points", metadata,
    Column("id", String(32), primary_key=True),
    Column("machine_id", Integer, ForeignKey("machines.id"), nullable=False, index=True),
    Column("created_ns", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("stats", Text, nullable=False),
    Column("manifest", LargeBinary, nullable=False),
    Column("refs_count", Integer, nullable=False),  # the refs themselves live in storage
    Column("deleted_ns", Integer),  # soft-deleted then; the refs keep its data until purged
    Column("retain_until_ns", Integer),  # an on-demand backup's own retention
)
settings = Table(
    "settings", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
pins = Table(
    "pins", metadata,
    Column("hash", String(64), primary_key=True),
    Column("expires", Integer, nullable=False),
)
policies = Table(
    "policies", metadata,
    Column("machine_id", Integer, ForeignKey("machines.id"), primary_key=True),
    Column("version", Integer, primary_key=True),  # every change is a new version; the newest applies
    Column("created_ns", Integer, nullable=False),
    Column("doc", Text, nullable=False),
)
jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),  # chosen by the agent, so that retries are idempotent
    Column("machine_id", Integer, ForeignKey("machines.id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("source_machine_id", Integer, ForeignKey("machines.id")),  # restore from another machine
    Column("started_ns", Integer, nullable=False),
    Column("ended_ns", Integer),
    Column("status", String(32), nullable=False),
    Column("mode", String(16), nullable=False, default=""),
    Column("point_id", String(32)),
    Column("files", Integer, nullable=False, default=0),
    Column("bytes", Integer, nullable=False, default=0),
    Column("failed", Text, nullable=False, default="[]"),
    Column("message", Text, nullable=False, default=""),
    Column("mode_reason", Text),  # why a backup ran optimized or unoptimized (added later: nullable)
    # Set while a backup runs: unique, so that the database itself refuses a second backup
    # of the same machine; the lease lets another take over once the agent stops renewing.
    Column("lease_key", String(64), unique=True),
    Column("lease_expires", Integer),
)


def open_engine(url: str, writes_refused: Callable[[], VaultReadOnly] | None = None) -> Engine:
    """The catalog's engine. `writes_refused`: the catalog of a vault that cannot be written
    (its disk full, its file system read-only) is opened read-only, so that points can still be
    listed and restored, and a write raises what this gives."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions begin as _begin says, not as the driver guesses
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # A transaction that reads and then writes cannot wait for another writer in
            # SQLite (it would fail "database is locked" at once): writers take the write
            # lock up front and wait their turn (busy_timeout) instead.
            if writes_refused and conn.get_execution_options().get("write"):
                raise writes_refused()
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")
    metadata.create_all(engine)
    _add_new_columns(engine)
    return engine


def _add_new_columns(engine: Engine) -> None:
    """Catalogs made by an earlier version get the nullable columns added since."""
    found = inspect(engine)
    missing: list[tuple[str, Column]] = []
    for table in metadata.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)}
        missing += [(table.name, c) for c in table.columns if c.name not in have and c.nullable]
    if not missing:
        return  # the usual case: no write lock taken just for opening the catalog
    with write(engine) as db:
        for table_name, column in missing:
            db.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {column.name} "
                               f"{column.type.compile(engine.dialect)}")


def write(engine: Engine) -> Any:
    """A transaction that writes: `with write(engine) as db: ...` commits at the end."""
    return engine.execution_options(write=True).begin()


def driver_sql(db: Connection, sql: str, params: Any = ()) -> Any:
    """A statement written with `?` marks (a list of parameter tuples: an executemany), straight
    to the driver: SQLAlchemy's compile and result processing cost ~0.3-0.7 ms a statement,
    which indexing each pack paid for five of them (a fifth of the uploader's CPU, 25 packs)."""
    if db.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    return db.exec_driver_sql(sql, params)


_INSERT_BATCH = 10_000  # rows per executemany: bounded memory for a pack of many blobs


def insert_blobs(db: Connection, machine_id: int, pack_id: int, rows: list[tuple[bytes, int, int, int]]) -> None:
    """Indexes a pack's blobs (id, kind, offset, length); a blob the machine has indexed
    already keeps its place.

    Straight to the driver's executemany: SQLAlchemy's per-row processing cost more than
    the rest of a backup's catalog work together (measured on 50,000 blobs).
    """
    sql = ("INSERT INTO blobs (machine_id, blob_id, pack_id, kind, \"offset\", length) "
           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (machine_id, blob_id) DO NOTHING")
    for start in range(0, len(rows), _INSERT_BATCH):
        driver_sql(db, sql, [(machine_id, b, pack_id, k, o, n) for b, k, o, n in rows[start:start + _INSERT_BATCH]])


def absent_by_chunk(where: Engine | Connection, machine_id: int,
                    chunks: Iterable[bytes]) -> Iterator[tuple[bytes, list[bytes]]]:
    """(chunk, its IDs the machine has no blob for) for chunks of 32-byte IDs back to back;
    a transaction of its own per chunk when given the engine."""
    for chunk in chunks:
        if isinstance(where, Engine):
            with where.begin() as db:
                missing = _absent(db, machine_id, chunk)
        else:
            missing = _absent(where, machine_id, chunk)
        yield chunk, missing


# SQLite: the chunk goes in as one parameter (vault/idsql.py), each ID probing the blobs index:
# 3x cheaper than filling a temporary table row by row first (0.021 against 0.061-0.073 CPU-s
# for 22,479 IDs), which a point's check pays for every ID it references.
_COUNT_PRESENT_SQLITE = (EACH_ID + "SELECT count(*) FROM pos WHERE EXISTS "
                         f"(SELECT 1 FROM blobs WHERE machine_id = :machine AND blob_id = {ID_AT})")


def _absent(db: Connection, machine_id: int, chunk: bytes) -> list[bytes]:
    if not chunk:
        return []
    if db.dialect.name == "sqlite" and len(chunk) % ID_SIZE == 0:
        present = db.exec_driver_sql(_COUNT_PRESENT_SQLITE, {**id_params(chunk), "machine": machine_id}).scalar_one()
        if present == len(chunk) // ID_SIZE:
            return []
    ids = [chunk[i:i + ID_SIZE] for i in range(0, len(chunk), ID_SIZE)]
    # Counted first: a point's check almost always finds every blob, and counting them costs
    # far less than reading back tens of thousands of rows (0.35 s a point of 20,000 files).
    mark = _wanted(db, ids)
    present = db.exec_driver_sql(f"SELECT count(*) FROM blobs WHERE machine_id = {mark} "
                                 "AND blob_id IN (SELECT blob_id FROM wanted_blobs)", (machine_id,)).scalar_one()
    if present == len(set(ids)):
        db.exec_driver_sql("DELETE FROM wanted_blobs")
        return []
    found = find_blobs(db, machine_id, ids)
    return [i for i in ids if i not in found]


def _wanted(db: Connection, ids: list[bytes]) -> str:
    """Fills the temporary table of wanted blob IDs; returns the driver's parameter mark."""
    mark = "?" if db.dialect.paramstyle == "qmark" else "%s"
    db.exec_driver_sql("CREATE TEMPORARY TABLE IF NOT EXISTS wanted_blobs (blob_id BLOB PRIMARY KEY)"
                       if db.dialect.name == "sqlite" else
                       "CREATE TEMPORARY TABLE IF NOT EXISTS wanted_blobs (blob_id BYTEA PRIMARY KEY)")
    db.exec_driver_sql("DELETE FROM wanted_blobs")
    db.exec_driver_sql(f"INSERT INTO wanted_blobs (blob_id) VALUES ({mark}) ON CONFLICT DO NOTHING",
                       [(i,) for i in ids])
    return mark


class BlobRow(NamedTuple):
    row_id: int
    pack: str
    offset: int
    length: int
    kind: int


# SQLite: the IDs as one parameter (vault/idsql.py), walked outside (CROSS JOIN), each probing
# the blobs index: 3.6-4.5 against 5.6-6.8 µs a blob through the temporary table, for a
# restore's locates (the temporary table's rows cost the most).
_FIND_SQLITE = (EACH_ID + "SELECT b.blob_id, b.id, p.name, b.\"offset\", b.length, b.kind FROM pos CROSS JOIN "
                f"blobs b ON b.machine_id = :machine AND b.blob_id = {ID_AT} JOIN packs p ON p.id = b.pack_id")


def find_blobs(db: Connection, machine_id: int, ids: list[bytes]) -> dict[bytes, BlobRow]:
    """Where the given blob IDs of one machine are (those present): on SQLite in one statement,
    elsewhere through a temporary table (a point references tens of thousands of blobs, too
    many for IN lists)."""
    if db.dialect.name == "sqlite" and all(len(i) == ID_SIZE for i in ids):
        if not ids:
            return {}
        rows = db.exec_driver_sql(_FIND_SQLITE, {**id_params(ids), "machine": machine_id})
        return {bytes(blob_id): BlobRow(*rest) for blob_id, *rest in rows}
    mark = _wanted(db, ids)
    rows = db.exec_driver_sql(
        # IN (subquery), not a join: SQLite's planner, without statistics, would scan all
        # blobs for each lookup; this way it probes the blob_id index per wanted ID.
        f"SELECT b.blob_id, b.id, p.name, b.\"offset\", b.length, b.kind FROM blobs b "
        f"JOIN packs p ON p.id = b.pack_id WHERE b.machine_id = {mark} "
        "AND b.blob_id IN (SELECT blob_id FROM wanted_blobs)", (machine_id,))
    found = {bytes(blob_id): BlobRow(*rest) for blob_id, *rest in rows}
    db.exec_driver_sql("DELETE FROM wanted_blobs")
    return found
