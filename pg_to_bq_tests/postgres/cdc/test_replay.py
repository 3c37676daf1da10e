"""A table added while another keeps streaming: published first, copied, then its changes
replayed — idempotently (last change of a key wins) or exactly (skipping what the copy saw).
And the last-change-wins fold itself."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pg_to_bq.postgres.cdc.pgoutput import (
    UNCHANGED_TOAST,
    Delete,
    Insert,
    Relation,
    RelationColumn,
    Truncate,
    Update,
)
from pg_to_bq.postgres.cdc.replay import CopyPoint, LastChangeWins, RowChange, copy_point
from pg_to_bq.postgres.cdc.slot import advance_slot, create_slot, ensure_publication

from .conftest import read_all, rows, run

REL = Relation(1, "public", "t", "d", (RelationColumn("id", 23, -1, True),
                                       RelationColumn("v", 25, -1, False),
                                       RelationColumn("body", 25, -1, False)))


def apply(table: dict, fold: LastChangeWins) -> dict:
    """Apply a fold's result to a dict destination {key: row}."""
    truncated, changes = fold.result()
    out = {} if truncated else dict(table)
    upserts = [c for c in changes if c.op == "upsert"]
    filled = []
    for change in upserts:  # unchanged values come from the destination as it was
        assert change.row is not None
        source = out.get(change.toast_from) if change.toast_from is not None else None
        filled.append((change.key, tuple(
            source[i] if v is UNCHANGED_TOAST and source else v for i, v in enumerate(change.row))))
    for change in changes:
        if change.op == "delete":
            out.pop(change.key, None)
    for key, row in filled:
        out[key] = row
    return out


def test_last_change_of_a_key_wins() -> None:
    fold = LastChangeWins(REL)
    fold.extend([
        Insert(1, (b"1", b"a", b"big")),
        Update(1, (b"1", b"b", UNCHANGED_TOAST)),  # keeps the body inserted above
        Insert(1, (b"2", b"x", b"y")),
        Delete(1, (b"2", None, None), "K"),
        Update(1, (b"3", b"moved", UNCHANGED_TOAST), (b"4", None, None), "K"),  # key 4 → 3
        Update(1, (b"5", b"five", UNCHANGED_TOAST)),  # body stays what the destination has
        Insert(2, (b"9", b"other table", b"")),
    ])
    truncated, changes = fold.result()
    assert not truncated
    assert changes == [
        RowChange("upsert", (b"1",), (b"1", b"b", b"big")),
        RowChange("upsert", (b"3",), (b"3", b"moved", UNCHANGED_TOAST), (b"4",)),
        RowChange("upsert", (b"5",), (b"5", b"five", UNCHANGED_TOAST), (b"5",)),
        RowChange("delete", (b"2",)),
        RowChange("delete", (b"4",)),
    ]
    destination = {(b"4",): (b"4", b"old", b"kept body"), (b"5",): (b"5", b"old", b"body 5")}
    assert apply(destination, fold) == {
        (b"1",): (b"1", b"b", b"big"), (b"3",): (b"3", b"moved", b"kept body"),
        (b"5",): (b"5", b"five", b"body 5")}
    fold.add(Truncate((1, 2), False, False))
    fold.add(Insert(1, (b"7", b"after", b"")))
    assert apply(destination, fold) == {(b"7",): (b"7", b"after", b"")}
    with pytest.raises(ValueError, match="no key"):
        LastChangeWins(REL._replace(replica_identity="f"))


def test_copy_point_sees_by_transaction_id() -> None:
    point = CopyPoint(xmin=100, xmax=110, running=frozenset({103, 107}), wal_lsn=0)
    assert point.saw(99) and point.saw(104) and point.saw(109)
    assert not point.saw(103) and not point.saw(110) and not point.saw(500)
    # 32-bit ids from the stream across a wraparound of the epoch.
    wrapped = CopyPoint(xmin=(1 << 32) - 5, xmax=(1 << 32) + 5, running=frozenset(), wal_lsn=0)
    assert wrapped.full_xid((1 << 32) - 2) == (1 << 32) - 2 and wrapped.saw((1 << 32) - 2)
    assert wrapped.full_xid(3) == (1 << 32) + 3 and wrapped.saw(3)
    assert not wrapped.saw(6)


@pytest.mark.parametrize("exact", [False, True], ids=["idempotent", "exact"])
def test_a_table_added_while_another_streams(db: str, exact: bool) -> None:
    run(db, "CREATE TABLE a (id int PRIMARY KEY, v int)",
        "CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL)",
        "INSERT INTO b SELECT g, 0 FROM generate_series(1, 500) g")
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_publication(conn, "pub", [("public", "a")])
        create_slot(conn, "s")
    run(db, "INSERT INTO a VALUES (1, 1)")
    _, stream = read_all(db, "s")  # a streams on
    with psycopg.connect(db, autocommit=True) as conn:
        advance_slot(conn, "s", stream.position)
    stop = threading.Event()

    def writer() -> None:  # b keeps changing before, during and after its copy
        with psycopg.connect(db, autocommit=True) as conn:
            i = 500
            while not stop.is_set():
                i += 1
                with conn.transaction():
                    conn.execute("INSERT INTO b VALUES (%s, 0)", (i,))
                    conn.execute("UPDATE b SET v = v + 1 WHERE id = %s", (i % 499 + 1,))
                conn.execute("DELETE FROM b WHERE id = %s", (i - 300,))
                conn.execute("INSERT INTO a VALUES (%s, 0) ON CONFLICT (id) DO UPDATE SET v = a.v + 1",
                             (i % 7,))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        with psycopg.connect(db, autocommit=True) as conn:
            ensure_publication(conn, "pub", [("public", "a"), ("public", "b")])  # 1. publish
        time.sleep(0.2)
        with psycopg.connect(db) as copier:  # 2. copy, in its own snapshot
            copier.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            point = copy_point(copier)
            time.sleep(0.1)
            copy = {(str(k).encode(),): (str(k).encode(), str(v).encode())
                    for k, v in copier.execute("SELECT id, v FROM b").fetchall()}
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    txns, _ = read_all(db, "s")  # 3. replay everything since the slot's position
    relid = rows(db, "SELECT 'b'::regclass::oid::int")[0][0]
    destination = dict(copy)
    relation = Relation(relid, "public", "b", "d", (RelationColumn("id", 23, -1, True),
                                                    RelationColumn("v", 23, -1, False)))
    skipped = 0
    for begin, changes, _ in txns:
        mine = [c for c in changes if getattr(c, "relid", None) == relid]
        if not mine:
            continue
        if exact:
            if point.saw(begin.xid):
                skipped += 1
                continue
            for change in mine:  # applied as they come: every one must fit exactly
                if isinstance(change, Insert):
                    assert change.new[:1] not in destination, "overlap"
                    destination[change.new[:1]] = change.new
                elif isinstance(change, Update):
                    assert change.new[:1] in destination, "gap"
                    destination[change.new[:1]] = change.new
                elif isinstance(change, Delete):
                    assert destination.pop(change.old[:1], None) is not None, "gap"
        else:
            fold = LastChangeWins(relation)
            fold.extend(mine)
            destination = apply(destination, fold)
    source = {(str(k).encode(),): (str(k).encode(), str(v).encode())
              for k, v in rows(db, "SELECT id, v FROM b")}
    assert destination == source
    if exact:
        assert skipped > 0, "some replayed transactions were already in the copy"
