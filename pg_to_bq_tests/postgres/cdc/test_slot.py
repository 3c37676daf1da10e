"""The publication and the slot: an exported snapshot without gap or overlap, slot creation
blocked by an open transaction, partitioned tables through their root, tables that must not
be published, and a role that may not create what it needs."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from pg_to_bq.postgres.cdc.errors import CdcError, DbaActionRequired, SlotCreationTimeout
from pg_to_bq.postgres.cdc.pgoutput import Delete, Insert, Relation, Update
from pg_to_bq.postgres.cdc.slot import (
    create_slot,
    drop_publication,
    ensure_publication,
    exported_snapshot,
    slot_status,
    use_snapshot,
)

from .conftest import read_all, rows, run


def test_exported_snapshot_copy_plus_changes_is_exact_under_concurrent_writes(db: str) -> None:
    run(db, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)",
        "INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000) g")
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_publication(conn, "pub", [("public", "t")])
    stop = threading.Event()

    def writer() -> None:  # inserts, updates and deletes all through slot creation and the copy
        with psycopg.connect(db, autocommit=True) as conn:
            i = 1000
            while not stop.is_set():
                i += 1
                conn.execute("INSERT INTO t VALUES (%s, 0)", (i,))
                conn.execute("UPDATE t SET v = v + 1 WHERE id = %s", (i % 997 + 1,))
                conn.execute("DELETE FROM t WHERE id = %s", (i - 500,))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        with exported_snapshot(db, "s") as snapshot, \
                psycopg.connect(db, autocommit=True) as copier:
            use_snapshot(copier, snapshot.snapshot_name)
            time.sleep(0.2)  # the writer keeps writing after the snapshot
            copy = dict(copier.execute("SELECT id, v FROM t").fetchall())
            copier.commit()
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    with psycopg.connect(db, autocommit=True) as conn:
        assert slot_status(conn, "s").confirmed_flush_lsn == snapshot.consistent_lsn
    mirror = dict(copy)
    txns, _ = read_all(db, "s")
    assert txns, "the writer's changes after the snapshot"
    for _, changes, _ in txns:
        for change in changes:
            if isinstance(change, Insert):
                key = int(change.new[0])
                assert key not in mirror, f"insert of {key} is already in the copy: overlap"
                mirror[key] = int(change.new[1])
            elif isinstance(change, Update):
                key = int(change.new[0])
                assert key in mirror, f"update of {key} missing from the copy: gap"
                mirror[key] = int(change.new[1])
            elif isinstance(change, Delete):
                key = int(change.old[0])
                assert key in mirror, f"delete of {key} missing from the copy: gap"
                del mirror[key]
    assert mirror == dict(rows(db, "SELECT id, v FROM t"))


def test_slot_creation_waits_for_open_transactions_and_times_out_cleanly(db: str) -> None:
    run(db, "CREATE TABLE t (id int PRIMARY KEY)")
    with psycopg.connect(db, autocommit=True) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("INSERT INTO t VALUES (1)")  # holds a transaction id, then idles
        pid = blocker.info.backend_pid
        started = time.monotonic()
        with pytest.raises(SlotCreationTimeout) as timeout, exported_snapshot(db, "s", timeout=2):
            pass
        assert 2 <= time.monotonic() - started < 10
        assert pid in [b["pid"] for b in timeout.value.blockers]
        blocker.execute("ROLLBACK")
    with psycopg.connect(db, autocommit=True) as conn:
        assert not slot_status(conn, "s").exists  # nothing left behind
    with exported_snapshot(db, "s", timeout=10) as snapshot:
        assert snapshot.snapshot_name
    with pytest.raises(CdcError, match="already exists"), exported_snapshot(db, "s"):
        pass


def test_partitioned_table_changes_arrive_as_the_root(db: str) -> None:
    run(db, "CREATE TABLE m (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
        "CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
    with psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(ValueError, match="m_2025: a partition"):
            ensure_publication(conn, "pub", [("public", "m_2025")])
        publication = ensure_publication(conn, "pub", [("public", "m")])
        assert publication.created and publication.via_partition_root
        assert publication.tables == {("public", "m")}
        create_slot(conn, "s")
    run(db, "INSERT INTO m VALUES (1, '2025-06-01', 'a'), (2, '2026-06-01', 'b')",
        "UPDATE m SET at = '2026-02-01' WHERE id = 1")  # moves the row between partitions
    txns, stream = read_all(db, "s")
    names = {r.relid: r.name for r in stream.relations.values()}
    # PostgreSQL also sends a Relation message for each partition a change touched (before
    # the change, which names the root): relations seen are not "tables changed".
    assert set(names.values()) == {"m", "m_2025", "m_2026"}
    kinds = [(type(c).__name__, names[c.relid]) for _, changes, _ in txns for c in changes
             if not isinstance(c, Relation)]
    # A row moving partitions is a delete and an insert of the root: the consumer, keyed on
    # (id, at), sees the old key go and the new one arrive.
    assert kinds == [("Insert", "m"), ("Insert", "m"), ("Delete", "m"), ("Insert", "m")]


def test_tables_that_publishing_would_break_are_refused(db: str) -> None:
    run(db, "CREATE TABLE nokey (a int)", "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY)",
        "CREATE TABLE full_identity (a int)", "ALTER TABLE full_identity REPLICA IDENTITY FULL")
    with psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(ValueError, match="nokey: no primary key") as refused:
            ensure_publication(conn, "pub", [("public", "nokey"), ("public", "scratch"),
                                             ("public", "full_identity")])
        assert "scratch: unlogged" in str(refused.value)
        assert not rows(conn.info.dsn, "SELECT 1 FROM pg_publication")
        ensure_publication(conn, "pub", [("public", "full_identity")])
    # Why refusing matters: published without a replica identity, UPDATE and DELETE fail.
    run(db, "CREATE PUBLICATION everything FOR ALL TABLES")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="replica identity"):
        run(db, "UPDATE nokey SET a = 1")
    run(db, "DROP PUBLICATION everything")


def test_existing_publication_is_extended_and_trimmed(db: str) -> None:
    run(db, "CREATE TABLE a (id int PRIMARY KEY)", "CREATE TABLE b (id int PRIMARY KEY)",
        "CREATE PUBLICATION pub FOR TABLE a WITH (publish = 'insert')")
    with psycopg.connect(db, autocommit=True) as conn:
        publication = ensure_publication(conn, "pub", [("public", "b")])
        assert publication.altered and publication.tables == {("public", "b")}
        assert publication.publishes == {"insert", "update", "delete", "truncate"}
        assert publication.via_partition_root
        assert ensure_publication(conn, "pub", [("public", "b")]) == publication.__class__(
            **{**publication.__dict__, "altered": False, "created": False})
        assert drop_publication(conn, "pub") and not drop_publication(conn, "pub")


@pytest.fixture
def limited_role(db: str):
    """A role that owns nothing and may not replicate (dropped afterwards)."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    run(db, f"CREATE ROLE {role} LOGIN", f"GRANT USAGE ON SCHEMA public TO {role}")
    try:
        yield role, db.replace("postgres@", f"{role}@", 1)
    finally:
        run(db, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_a_role_that_may_not_create_gets_the_sql_for_a_dba(db: str, limited_role) -> None:
    role, url = limited_role
    run(db, "CREATE TABLE t (id int PRIMARY KEY)", f"GRANT SELECT ON t TO {role}")
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(DbaActionRequired) as no_publication:
            ensure_publication(conn, "pub", [("public", "t")])
        assert no_publication.value.sql == ('CREATE PUBLICATION "pub" FOR TABLE "public"."t" WITH '
                                            "(publish_via_partition_root = true, "
                                            "publish_generated_columns = stored);")
        with pytest.raises(DbaActionRequired) as no_slot:
            create_slot(conn, "s")
        assert f'ALTER ROLE "{role}" WITH REPLICATION;' in no_slot.value.sql
    with pytest.raises(DbaActionRequired) as no_slot, exported_snapshot(url, "s"):
        pass
    assert f'ALTER ROLE "{role}" WITH REPLICATION;' in str(no_slot.value)
    # The DBA runs the SQL; what exists is then used as it is.
    run(db, no_publication.value.sql, f"ALTER ROLE {role} WITH REPLICATION")
    run(db, "CREATE TABLE u (id int PRIMARY KEY)")
    with psycopg.connect(url, autocommit=True) as conn:
        assert ensure_publication(conn, "pub", [("public", "t")]).tables == {("public", "t")}
        partial = ensure_publication(conn, "pub", [("public", "t"), ("public", "u")],
                                     partial_ok=True)
        assert partial.missing == {("public", "u")}
        assert partial.dba_sql == 'ALTER PUBLICATION "pub" ADD TABLE "public"."u";'
        with pytest.raises(DbaActionRequired, match='ADD TABLE "public"."u"'):
            ensure_publication(conn, "pub", [("public", "t"), ("public", "u")])
        create_slot(conn, "s")  # with REPLICATION the role creates and reads its slot
    run(db, "INSERT INTO t VALUES (1)")
    txns, _ = read_all(url, "s")
    assert [c.new for _, changes, _ in txns for c in changes if isinstance(c, Insert)] == [(b"1",)]
