"""The pgoutput decoder against what a real PostgreSQL sends (through the SQL interface
`pg_logical_slot_peek_binary_changes`, so every message is seen exactly as the plugin wrote it)."""

from __future__ import annotations

import struct
import time

import psycopg
import pytest

from pg_to_bq.postgres.cdc.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryValue,
    Commit,
    CommitPrepared,
    DecodeError,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    decode_message,
    format_lsn,
    parse_lsn,
)

from .conftest import rows, run

# A value PostgreSQL stores out of line (TOASTed): long and incompressible.
BIG = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g)"


def peek(url: str, slot: str, publication: str = "pub", *, proto: int = 1, **options: str) -> list:
    """Every pgoutput message the slot holds, decoded (the slot is not consumed)."""
    args = ["'proto_version'", f"'{proto}'", "'publication_names'", f"'{publication}'"]
    for key, value in options.items():
        args += [f"'{key}'", f"'{value}'"]
    decoder = Decoder()
    with psycopg.connect(url, autocommit=True) as conn:
        # The SQL interface decodes only WAL already flushed, and the test server runs with
        # synchronous_commit = off: wait for the WAL writer to flush what was inserted.
        wait_for_flush(conn)
        if "streaming" in options:
            conn.execute("SET logical_decoding_work_mem = '64kB'")
        data = conn.execute(f"SELECT data FROM pg_logical_slot_peek_binary_changes("
                            f"'{slot}', NULL, NULL, {', '.join(args)})").fetchall()
    return [decoder.decode(bytes(d)) for (d,) in data]


def wait_for_flush(conn: psycopg.Connection) -> None:
    [(target,)] = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchall()
    deadline = time.monotonic() + 10
    while conn.execute("SELECT pg_current_wal_flush_lsn() < %s::pg_lsn", (target,)).fetchone()[0]:
        assert time.monotonic() < deadline, "WAL not flushed within 10 s"
        time.sleep(0.05)


def changes(messages: list) -> list:
    return [m for m in messages if not isinstance(m, Begin | Commit | Relation | Type)]


def test_every_message_kind_of_protocol_1(db: str) -> None:
    run(db, "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, mood mood, price numeric(8,2))",
        "CREATE TABLE other (id int PRIMARY KEY)",
        "CREATE PUBLICATION pub FOR TABLE items, other",
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    run(db, "INSERT INTO items VALUES (1, 'one', 'ok', 1.50), (2, NULL, 'sad', 2)",
        "UPDATE items SET name = 'uno' WHERE id = 1",
        "UPDATE items SET id = 10 WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        "INSERT INTO other VALUES (1)",
        "TRUNCATE items, other RESTART IDENTITY CASCADE",
        "SELECT pg_logical_emit_message(true, 'pg_to_bq', 'in a transaction')",
        "SELECT pg_logical_emit_message(false, 'pg_to_bq', 'outside')")
    run(db, "SELECT pg_replication_origin_create('upstream')")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT pg_replication_origin_session_setup('upstream')")
        with conn.transaction():
            conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
            conn.execute("INSERT INTO other VALUES (2)")
        conn.execute("SELECT pg_replication_origin_session_reset()")
    messages = peek(db, "s", messages="true")
    oids = dict(rows(db, "SELECT relname, oid::int FROM pg_class WHERE relname IN ('items', 'other')"))
    mood = rows(db, "SELECT oid::int FROM pg_type WHERE typname = 'mood'")[0][0]
    kinds = {type(m).__name__ for m in messages}
    assert kinds == {"Begin", "Commit", "Relation", "Type", "Insert", "Update", "Delete",
                     "Truncate", "LogicalMessage", "Origin"}

    # A Type message precedes each Relation message of a table using the enum (sent again
    # after anything invalidates the relation, TRUNCATE included).
    assert {m for m in messages if isinstance(m, Type)} == {Type(mood, "public", "mood")}
    relation = next(m for m in messages if isinstance(m, Relation) and m.name == "items")
    assert relation.relid == oids["items"] and relation.namespace == "public"
    assert relation.replica_identity == "d"
    assert [(c.name, c.type_oid, c.type_modifier, c.is_key) for c in relation.columns] == [
        ("id", 20, -1, True), ("name", 25, -1, False), ("mood", mood, -1, False),
        ("price", 1700, (8 << 16 | 2) + 4, False)]

    assert changes(messages) == [
        Insert(oids["items"], (b"1", b"one", b"ok", b"1.50")),
        Insert(oids["items"], (b"2", None, b"sad", b"2.00")),
        Update(oids["items"], (b"1", b"uno", b"ok", b"1.50")),
        # A key change sends the old key ('K'), the other old columns as NULL.
        Update(oids["items"], (b"10", b"uno", b"ok", b"1.50"), (b"1", None, None, None), "K"),
        Delete(oids["items"], (b"2", None, None, None), "K"),
        Insert(oids["other"], (b"1",)),
        Truncate(tuple(sorted((oids["items"], oids["other"]))), cascade=True,
                 restart_identity=True),
        LogicalMessage(True, _message_lsn(messages, True), "pg_to_bq", b"in a transaction"),
        LogicalMessage(False, _message_lsn(messages, False), "pg_to_bq", b"outside"),
        Origin(parse_lsn("0/ABCDEF"), "upstream"),
        Insert(oids["other"], (b"2",)),
    ]

    begins = [m for m in messages if isinstance(m, Begin)]
    commits = [m for m in messages if isinstance(m, Commit)]
    assert len(begins) == len(commits) == 8  # the non-transactional message has neither
    for begin, commit in zip(begins, commits, strict=True):
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert begin.commit_time == commit.commit_time
        assert begin.commit_time.tzinfo is not None
    assert [b.final_lsn for b in begins] == sorted(b.final_lsn for b in begins)


def _message_lsn(messages: list, transactional: bool) -> int:
    return next(m.lsn for m in messages
                if isinstance(m, LogicalMessage) and m.transactional == transactional)


def test_unchanged_toast_and_replica_identity_full(db: str) -> None:
    run(db, "CREATE TABLE docs (id int PRIMARY KEY, title text, body text)",
        "CREATE TABLE logs (id int PRIMARY KEY, note text, body text)",
        "ALTER TABLE logs REPLICA IDENTITY FULL",
        f"INSERT INTO docs VALUES (1, 'a', {BIG}), (2, 'b', {BIG})",
        f"INSERT INTO logs VALUES (1, 'x', {BIG})",
        "CREATE PUBLICATION pub FOR TABLE docs, logs",
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
        "UPDATE docs SET title = 'A' WHERE id = 1",
        "UPDATE docs SET id = 20 WHERE id = 2",
        "UPDATE docs SET body = 'short' WHERE id = 1",
        "DELETE FROM docs WHERE id = 20",
        "UPDATE logs SET note = 'y'",
        "DELETE FROM logs")
    big = rows(db, f"SELECT {BIG}")[0][0].encode()
    assert len(big) == 12800
    docs, logs = (r[0] for r in rows(db, "SELECT oid::int FROM pg_class WHERE relname IN "
                                         "('docs', 'logs') ORDER BY relname"))
    found = changes(peek(db, "s"))
    assert found == [
        # The body was stored out of line and not touched: no value, not NULL.
        Update(docs, (b"1", b"A", UNCHANGED_TOAST)),
        # A key change with the TOASTed column untouched: the new row lacks the body too;
        # the consumer takes it from the row of the *old* key.
        Update(docs, (b"20", b"b", UNCHANGED_TOAST), (b"2", None, None), "K"),
        Update(docs, (b"1", b"A", b"short")),
        Delete(docs, (b"20", None, None), "K"),
        # REPLICA IDENTITY FULL: the old row whole, TOASTed value included, yet the new row
        # still says "unchanged" for it.
        Update(logs, (b"1", b"y", UNCHANGED_TOAST), (b"1", b"x", big), "O"),
        Delete(logs, (b"1", b"y", big), "O"),
    ]
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST" and UNCHANGED_TOAST is not None


def test_binary_values_and_generated_columns(db: str) -> None:
    run(db, "CREATE TABLE g (id bigint PRIMARY KEY, x int, doubled int GENERATED ALWAYS AS "
            "(x * 2) STORED, note text)")
    from pg_to_bq.postgres.cdc.slot import ensure_publication

    with psycopg.connect(db, autocommit=True) as conn:
        ensure_publication(conn, "pub", [("public", "g")])
        version = conn.info.server_version
    run(db, "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
        "INSERT INTO g (id, x, note) VALUES (7, 21, 'hi')")
    relation = next(m for m in peek(db, "s", binary="true") if isinstance(m, Relation))
    [insert] = changes(peek(db, "s", binary="true"))
    if version >= 180000:  # publish_generated_columns = stored (set by ensure_publication)
        assert [c.name for c in relation.columns] == ["id", "x", "doubled", "note"]
        assert insert.new == (struct.pack(">q", 7), struct.pack(">i", 21),
                              struct.pack(">i", 42), b"hi")
    else:
        assert [c.name for c in relation.columns] == ["id", "x", "note"]
    assert all(isinstance(v, BinaryValue) for v in insert.new)
    [text_insert] = changes(peek(db, "s"))
    assert not any(isinstance(v, BinaryValue) for v in text_insert.new)


def test_streamed_transactions_protocol_2(db: str) -> None:
    run(db, "CREATE TABLE big (id int PRIMARY KEY, pad text)",
        "CREATE PUBLICATION pub FOR TABLE big",
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    with psycopg.connect(db, autocommit=True) as conn, conn.transaction():
        conn.execute("INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
        conn.execute("SAVEPOINT sp")
        conn.execute("INSERT INTO big SELECT g, 'gone' FROM generate_series(2001, 3000) g")
        conn.execute("ROLLBACK TO SAVEPOINT sp")
    messages = peek(db, "s", proto=2, streaming="on")
    kinds = {type(m) for m in messages}
    assert {StreamStart, StreamStop, StreamCommit, StreamAbort, Insert} <= kinds
    inserts = [m for m in messages if isinstance(m, Insert)]
    [commit] = [m for m in messages if isinstance(m, StreamCommit)]
    [abort] = [m for m in messages if isinstance(m, StreamAbort)]
    # Streamed data carries the id of the (sub)transaction that wrote it; a rolled-back
    # subtransaction's rows were sent before its abort, which the consumer must undo.
    assert abort.xid == commit.xid and abort.subxid != commit.xid
    assert {m.xid for m in inserts if m.new[1] != b"gone"} == {commit.xid}
    assert {m.xid for m in inserts if m.new[1] == b"gone"} == {abort.subxid}
    assert commit.commit_lsn < commit.end_lsn
    assert len([m for m in inserts if m.new[1] != b"gone"]) == 2000


def test_two_phase_messages_protocol_3(db: str) -> None:
    run(db, "CREATE TABLE t (id int PRIMARY KEY)",
        "CREATE PUBLICATION pub FOR TABLE t",
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput', false, true)")
    run(db, "BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'g1'",
        "COMMIT PREPARED 'g1'",
        "BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'g2'",
        "ROLLBACK PREPARED 'g2'")
    messages = peek(db, "s", proto=3, two_phase="on")
    kinds = [type(m) for m in messages if not isinstance(m, Relation)]
    assert kinds == [BeginPrepare, Insert, Prepare, CommitPrepared,
                     BeginPrepare, Insert, Prepare, RollbackPrepared]
    begin, prepare, commit = [m for m in messages if not isinstance(m, Relation | Insert)][:3]
    assert begin.gid == prepare.gid == commit.gid == "g1"
    assert begin.xid == prepare.xid == commit.xid
    rollback = messages[-1]
    assert rollback.gid == "g2" and rollback.rollback_end_lsn > rollback.prepare_end_lsn


def test_malformed_messages_raise() -> None:
    begin = b"B" + struct.pack(">QqI", 100, 0, 7)
    assert decode_message(begin) == Begin(100, decode_message(begin).commit_time, 7)
    for bad in (b"B\x00\x00", b"Z", b"I\x00\x00\x00\x01X\x00\x00",
                b"I\x00\x00\x00\x01N\x00\x01q", b"R\x00\x00\x00\x01public"):
        with pytest.raises(DecodeError):
            decode_message(bad)


def test_lsn_text_round_trip() -> None:
    assert format_lsn(0x16B3748) == "0/16B3748"
    assert parse_lsn("1A/2B") == (0x1A << 32) | 0x2B
    assert parse_lsn(format_lsn(123456789012345)) == 123456789012345
    with pytest.raises(ValueError):
        parse_lsn("nope")
