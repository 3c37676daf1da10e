"""Reading a slot: commit order, the end point fixed at the start, open transactions,
confirming, a slot dropped, invalidated or busy — against a real wal_level=logical server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from pg_to_bq.postgres.cdc.errors import ReplicationError, SlotBusy, SlotInvalidated, SlotMissing
from pg_to_bq.postgres.cdc.pgoutput import Delete, Insert, Relation, Truncate, Update
from pg_to_bq.postgres.cdc.slot import (
    advance_slot,
    create_slot,
    drop_slot,
    ensure_publication,
    slot_status,
)
from pg_to_bq.postgres.cdc.stream import ChangeStream, end_point

from .conftest import read_all, rows, run, start_server


def setup(url: str, *tables: str) -> None:
    """Tables `name (id int PRIMARY KEY, v text)`, publication `pub` over them, slot `s`."""
    for table in tables:
        run(url, f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_publication(conn, "pub", [("public", t) for t in tables])
        create_slot(conn, "s")


def ids(transactions: list) -> list[list]:
    """Each transaction as its changes' (kind, id) pairs."""
    out = []
    for _, changes, _ in transactions:
        row = []
        for c in changes:
            if isinstance(c, Insert | Update):
                row.append((type(c).__name__, int(c.new[0])))
            elif isinstance(c, Delete):
                row.append(("Delete", int(c.old[0])))
            elif isinstance(c, Truncate):
                row.append(("Truncate", len(c.relids)))
        out.append(row)
    return out


def test_transactions_in_commit_order_and_prompt_end(db: str) -> None:
    setup(db, "a", "b")
    with psycopg.connect(db, autocommit=True) as first, psycopg.connect(db, autocommit=True) as second:
        first.execute("BEGIN")
        first.execute("INSERT INTO a VALUES (1, 'first began')")
        second.execute("INSERT INTO b VALUES (2, 'second committed first')")
        first.execute("COMMIT")
    run(db, "UPDATE a SET v = 'x' WHERE id = 1", "DELETE FROM b", "TRUNCATE a")
    started = time.monotonic()
    txns, stream = read_all(db, "s")
    assert time.monotonic() - started < 5
    assert ids(txns) == [[("Insert", 2)], [("Insert", 1)], [("Update", 1)], [("Delete", 2)],
                         [("Truncate", 1)]]
    assert [c.end_lsn for _, _, c in txns] == sorted(c.end_lsn for _, _, c in txns)
    assert {r.name for r in stream.relations.values()} == {"a", "b"}
    assert isinstance(txns[0][1][0], Relation)  # a relation precedes its first change
    assert stream.finished and stream.position >= stream.end_lsn >= txns[-1][2].end_lsn
    # Nothing confirmed: the same transactions again, and an idle read ends at once.
    again, _ = read_all(db, "s")
    assert ids(again) == ids(txns)
    with psycopg.connect(db, autocommit=True) as conn:
        advance_slot(conn, "s", stream.position)
    started = time.monotonic()
    empty, idle = read_all(db, "s")
    assert empty == [] and idle.finished and time.monotonic() - started < 3


def test_end_point_is_fixed_when_the_read_starts(db: str) -> None:
    setup(db, "t")
    run(db, "INSERT INTO t VALUES (1, 'before')")
    with ChangeStream(db, "s", ["pub"]) as stream:
        # Commits after the end point was fixed, before anything was read.
        run(db, "INSERT INTO t VALUES (2, 'after the end point')")
        got = [[type(c).__name__ for c in txn] for txn in stream.transactions()]
        position = stream.position
    assert got == [["Relation", "Insert"]]
    with psycopg.connect(db, autocommit=True) as conn:
        advance_slot(conn, "s", position)
    later, _ = read_all(db, "s")
    assert ids(later) == [[("Insert", 2)]]


def test_a_transaction_open_across_two_reads_is_delivered_once_when_it_commits(db: str) -> None:
    setup(db, "t")
    with psycopg.connect(db, autocommit=True) as long:
        long.execute("BEGIN")
        long.execute("INSERT INTO t SELECT g, 'long' FROM generate_series(1, 100) g")
        run(db, "INSERT INTO t VALUES (1000, 'short')")
        first, stream = read_all(db, "s")
        assert ids(first) == [[("Insert", 1000)]]
        with psycopg.connect(db, autocommit=True) as conn:
            # Confirmed past the long transaction's first change: it must still come.
            advance_slot(conn, "s", stream.position)
        long.execute("INSERT INTO t VALUES (101, 'long')")
        long.execute("COMMIT")
    second, stream = read_all(db, "s")
    assert ids(second) == [[("Insert", i) for i in range(1, 102)]]
    with psycopg.connect(db, autocommit=True) as conn:
        advance_slot(conn, "s", stream.position)
    third, _ = read_all(db, "s")
    assert third == []


def test_start_lsn_skips_what_the_destination_already_has(db: str) -> None:
    setup(db, "t")
    for i in range(3):
        run(db, f"INSERT INTO t VALUES ({i}, 'x')")
    txns, _ = read_all(db, "s")
    applied = txns[0][2].end_lsn  # the destination stored this with transaction 0
    rest, _ = read_all(db, "s", start_lsn=applied)  # the slot was never advanced
    assert ids(rest) == [[("Insert", 1)], [("Insert", 2)]]


def test_confirm_on_the_open_stream_moves_the_slot(db: str) -> None:
    setup(db, "t")
    for i in range(3):
        run(db, f"INSERT INTO t VALUES ({i}, 'x')")
    with ChangeStream(db, "s", ["pub"]) as stream:
        for txn in stream.transactions():
            list(txn)
            if stream.delivered_transactions == 2:
                stream.confirm(txn.commit.end_lsn)
                confirmed = txn.commit.end_lsn
                break
    with psycopg.connect(db, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while slot_status(conn, "s").active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slot_status(conn, "s").confirmed_flush_lsn == confirmed
    rest, _ = read_all(db, "s")
    assert ids(rest) == [[("Insert", 2)]]


def test_advancing_with_no_captured_changes_releases_other_traffic_wal(db: str) -> None:
    setup(db, "captured")
    run(db, "CREATE TABLE busy (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off)")

    def idle_run(conn: psycopg.Connection) -> ChangeStream:
        conn.execute("CHECKPOINT")  # also logs the running transactions, which move restart_lsn
        txns, stream = read_all(db, "s")
        assert txns == []
        advance_slot(conn, "s", stream.position)
        return stream

    with psycopg.connect(db, autocommit=True) as conn:
        before = slot_status(conn, "s")
        for round_ in range(3):
            conn.execute("INSERT INTO busy SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g "
                         "ON CONFLICT (id) DO UPDATE SET pad = excluded.pad || %s", (str(round_),))
            stream = idle_run(conn)
        after = slot_status(conn, "s")
        assert after.confirmed_flush_lsn >= stream.end_lsn - 1024 * 1024 > before.confirmed_flush_lsn
        assert after.restart_lsn > before.restart_lsn + 10 * 1024 * 1024  # 30 MB of WAL written
        # restart_lsn can move only to the start of the oldest transaction open anywhere in
        # the cluster when the running transactions were logged (PostgreSQL's rule): under a
        # loaded test server (autovacuum of other databases) that can be the last round's
        # start. The next runs with nothing to capture release it.
        for _ in range(10):
            if after.retained_bytes < 5 * 1024 * 1024:
                break
            idle_run(conn)
            after = slot_status(conn, "s")
    assert after.retained_bytes < 5 * 1024 * 1024
    assert after.lag_bytes < 1024 * 1024


def test_a_dropped_slot_is_detected(db: str) -> None:
    setup(db, "t")
    with psycopg.connect(db, autocommit=True) as conn:
        assert drop_slot(conn, "s")
        assert not drop_slot(conn, "s")
        assert not slot_status(conn, "s").exists
        with pytest.raises(SlotMissing):
            advance_slot(conn, "s", 1)
    with pytest.raises(SlotMissing, match='"s" does not exist'):
        ChangeStream(db, "s", ["pub"])


def test_a_second_reader_finds_the_slot_busy(db: str) -> None:
    setup(db, "t")
    with ChangeStream(db, "s", ["pub"]) as stream:
        started = time.monotonic()
        with pytest.raises(SlotBusy) as busy:
            ChangeStream(db, "s", ["pub"], busy_timeout=1)
        assert time.monotonic() - started >= 1
        assert busy.value.pid == rows(db, "SELECT active_pid FROM pg_replication_slots")[0][0]
        with psycopg.connect(db, autocommit=True) as conn, pytest.raises(SlotBusy):
            advance_slot(conn, "s", stream.end_lsn, busy_timeout=0.5)
    # The slot is free again once the reader closed (retried within busy_timeout).
    with ChangeStream(db, "s", ["pub"], busy_timeout=10) as stream:
        assert list(stream.messages()) == []


def test_end_point_page_header_is_removed() -> None:
    assert end_point(8192 * 5 + 24, 8192, 16 << 20) == 8192 * 5
    assert end_point((16 << 20) * 3 + 40, 8192, 16 << 20) == (16 << 20) * 3
    assert end_point(8192 * 5 + 100, 8192, 16 << 20) == 8192 * 5 + 100


@pytest.fixture
def small_wal_server(tmp_path: Path):
    """A server whose slots may keep at most 1 MB of WAL (so one can be invalidated)."""
    server = start_server("pg_to_bq_cdc_lost_", {
        "wal_level": "logical", "max_slot_wal_keep_size": "1MB", "wal_keep_size": "0",
        "max_wal_size": "64MB", "min_wal_size": "32MB"})
    try:
        yield server
    finally:
        server.destroy()


def test_an_invalidated_slot_is_detected(small_wal_server) -> None:
    url = small_wal_server.url("postgres")
    setup(url, "t")
    run(url, "CREATE TABLE filler (id int, pad text)")
    with psycopg.connect(url, autocommit=True) as conn:
        status = slot_status(conn, "s")
        assert status.max_slot_wal_keep_size == 1024 * 1024 and not status.lost
        for _ in range(4):  # several segments past the slot, then a checkpoint removes them
            conn.execute("INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 5000) g")
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")
        status = slot_status(conn, "s")
    assert status.lost and status.wal_status == "lost"
    assert status.exists and status.restart_lsn is None
    with pytest.raises(SlotInvalidated, match="invalidated"):
        ChangeStream(url, "s", ["pub"])
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(SlotInvalidated):
        advance_slot(conn, "s", status.current_lsn)


def test_reading_while_a_writer_is_busy_stops_at_the_end_point(db: str) -> None:
    """Concurrent writers during the read: the read ends, and the next read continues
    exactly where it stopped (every row once)."""
    setup(db, "t")
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                conn.execute("INSERT INTO t VALUES (%s, 'w')", (i,))
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[int] = []
    try:
        for _ in range(3):
            time.sleep(0.3)
            txns, stream = read_all(db, "s")
            seen += [int(c.new[0]) for _, changes, _ in txns for c in changes
                     if isinstance(c, Insert)]
            with psycopg.connect(db, autocommit=True) as conn:
                advance_slot(conn, "s", stream.position)
    finally:
        stop.set()
        thread.join()
    txns, _ = read_all(db, "s")
    seen += [int(c.new[0]) for _, changes, _ in txns for c in changes if isinstance(c, Insert)]
    total = rows(db, "SELECT count(*) FROM t")[0][0]
    assert seen == list(range(total)) and total > 10


def test_a_transaction_left_half_read_is_finished_before_the_next(db: str) -> None:
    setup(db, "t")
    run(db, "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 50) g",
        "INSERT INTO t VALUES (100, 'next')")
    seen = []
    with ChangeStream(db, "s", ["pub"]) as stream:
        for txn in stream.transactions():
            for change in txn:
                if isinstance(change, Insert):
                    seen.append(int(change.new[0]))
                    break  # the consumer stops reading this transaction after one row
        assert stream.finished and stream.delivered_transactions == 2
    assert seen == [1, 100]


def test_a_read_that_makes_no_progress_gives_up(db: str) -> None:
    setup(db, "t")
    with ChangeStream(db, "s", ["pub"], stall_timeout=2) as stream:
        stream.end_lsn += 1 << 40  # an end point the server will not reach
        started = time.monotonic()
        with pytest.raises(ReplicationError, match="no progress for 2 s"):
            list(stream.messages())
        assert 2 <= time.monotonic() - started < 6

