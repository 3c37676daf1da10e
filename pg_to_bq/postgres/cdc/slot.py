"""The publication and the logical replication slot: create, export a snapshot, watch, advance, drop.

Starting without a gap or an overlap — which method, and why:

- **First start: the slot's exported snapshot** (`exported_snapshot()`). The slot is created
  on a replication connection with `(SNAPSHOT 'export')`; PostgreSQL returns the slot's
  consistent point and a snapshot name that shows exactly the transactions committed before
  it. Every table copied in a transaction that imported that snapshot, followed by the
  slot's changes, is exact: no change is in both, none in neither, and no key is needed to
  make the replay idempotent (REPLICA IDENTITY FULL tables without a primary key, whose
  rows cannot be told apart, start exactly too). The price: the replication connection must
  stay open and idle until every copying transaction has run `SET TRANSACTION SNAPSHOT`, and
  those transactions hold back vacuum while they copy (as any consistent snapshot read does).
- **A table added later, or re-copied, while the others keep streaming: copy, then replay
  from the slot's position idempotently** (see `replay.py`). A slot exports a snapshot only
  when it is created, and a second slot per added table (what PostgreSQL's own table
  synchronisation does) would double the WAL kept and the decoding work. Instead: add the
  table to the publication first (changes are published only from the publication change
  on: pgoutput decides with the catalog as of each change), then copy it in an ordinary
  REPEATABLE READ snapshot, then let the next reads deliver its changes from the slot's
  confirmed position on. Those include changes already in the copy; applied in commit order
  with the last change of a key winning they converge to the source. `replay.CopyPoint`
  goes further: it records the copy's snapshot, so the changes of transactions the copy
  already saw can be skipped exactly, by transaction id.
- **A slot someone else created** (a DBA, with `pg_create_logical_replication_slot`) has no
  snapshot to offer: every table then starts the second way.

Privileges: creating a publication needs CREATE on the database and ownership of each
table (or superuser); a slot needs the REPLICATION attribute (on RDS, membership of
`rds_replication`). Where the role lacks them, `DbaActionRequired` carries the exact SQL,
and whatever already exists is used as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq, sql

from pg_to_bq.postgres.cdc.publication import (
    Publication,
    drop_publication,
    ensure_publication,
    publication_sql,
)

from .errors import CdcError, DbaActionRequired, SlotBusy, SlotCreationTimeout, SlotMissing
from .pgoutput import parse_lsn
from .stream import quote_literal, valid_slot_name
from .walsender import ReplicationConnection, error_for, raise_for_result

__all__ = [
    "ExportedSnapshot",
    "Publication",
    "SlotStatus",
    "advance_slot",
    "create_slot",
    "drop_publication",
    "drop_slot",
    "ensure_publication",
    "exported_snapshot",
    "publication_sql",
    "slot_status",
    "use_snapshot",
]





















# -- the slot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedSnapshot:
    """A slot just created, and the snapshot that sees exactly what precedes its changes."""

    slot: str
    snapshot_name: str
    consistent_lsn: int  # the slot's first change is at or after this


def _slot_dba_sql(conn_user: str, slot: str, rds: bool = False) -> str:
    grant = (f'GRANT rds_replication TO "{conn_user}";' if rds
             else f'ALTER ROLE "{conn_user}" WITH REPLICATION;')
    return (f"{grant}\n-- or let a DBA create the slot (no snapshot: tables then start with a "
            f"copy and an idempotent replay):\nSELECT pg_create_logical_replication_slot("
            f"{quote_literal(slot)}, 'pgoutput');")


def _blockers(conninfo: str, walsender_pid: int) -> list[dict]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT a.pid, a.usename, a.state, now() - a.xact_start AS age, "
            "left(a.query, 200) AS query FROM pg_stat_activity a "
            "WHERE a.pid = ANY(pg_blocking_pids(%s)) OR (a.backend_xid IS NOT NULL "
            "AND a.pid <> %s AND a.backend_type = 'client backend') ORDER BY a.xact_start",
            (walsender_pid, walsender_pid)).fetchall()
    return [{"pid": pid, "user": user, "state": state, "age": str(age), "query": query}
            for pid, user, state, age, query in rows]


@contextmanager
def exported_snapshot(conninfo: str, slot: str, *, timeout: float = 300.0,
                      failover: bool = False) -> Iterator[ExportedSnapshot]:
    """Create logical slot `slot` (pgoutput) and hold the snapshot it exports while inside.

    Inside the block, start each copying transaction with `use_snapshot(conn, name)`: it
    sees exactly the data before the slot's first change. The replication connection that
    exported the snapshot stays open and idle until the block ends (any command on it, or
    closing it, ends the snapshot); a transaction that imported the snapshot keeps it after.

    Creating a slot waits until every transaction running at that moment has ended (a
    session idle in a transaction blocks it forever): after `timeout` seconds the creation
    is cancelled (nothing is left behind) and `SlotCreationTimeout` lists the blockers.
    `failover` (PG 17+): the slot is synchronised to physical standbys that have
    `sync_replication_slots` on, so it survives a failover.

    Raises `DbaActionRequired` (the role lacks REPLICATION) with the SQL that fixes it, and
    `CdcError` if the slot exists already (drop it, or read it: a slot exports a snapshot
    only when it is created).
    """
    valid_slot_name(slot)
    conn = ReplicationConnection(conninfo)
    try:
        version = conn.server_version
        if version >= 150000:
            options = ["SNAPSHOT 'export'"]
            if failover and version >= 170000:
                options.append("FAILOVER true")
            command = f"CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput ({', '.join(options)})"
        else:
            command = f"CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput EXPORT_SNAPSHOT"
        pgconn = conn.pgconn
        pgconn.send_query(command.encode())
        deadline = time.monotonic() + timeout
        while True:
            try:
                pgconn.consume_input()
            except psycopg.OperationalError as error:
                raise CdcError(f"replication connection lost: {error}") from error
            if not pgconn.is_busy():
                break
            if time.monotonic() >= deadline:
                blockers = _blockers(conninfo, pgconn.backend_pid)
                cancel = pgconn.get_cancel()
                cancel.cancel()
                while pgconn.get_result() is not None:  # the cancellation's error
                    pass
                raise SlotCreationTimeout(
                    f'creating replication slot "{slot}" waited {timeout:.0f} s for transactions '
                    f"that were open when it started: {blockers}", blockers)
            conn.wait_readable(min(0.5, max(0.0, deadline - time.monotonic())))
        result = pgconn.get_result()
        assert result is not None
        try:
            raise_for_result(result, "CREATE_REPLICATION_SLOT")
        except CdcError as error:
            if error.sqlstate == "42501":
                user = psycopg.conninfo.conninfo_to_dict(conninfo).get("user") or "<role>"
                raise DbaActionRequired(str(error), _slot_dba_sql(str(user), slot),
                                        sqlstate=error.sqlstate) from error
            raise
        while pgconn.get_result() is not None:
            pass
        row = {(result.fname(i) or b"").decode(): (result.get_value(0, i) or b"").decode()
               for i in range(result.nfields)}
        yield ExportedSnapshot(slot, row["snapshot_name"], parse_lsn(row["consistent_point"]))
    finally:
        conn.close()


def use_snapshot(conn: psycopg.Connection, snapshot_name: str) -> None:
    """Start a REPEATABLE READ, READ ONLY transaction on `conn` that sees `snapshot_name`.

    `conn` must be in autocommit mode and idle; the transaction stays open until the caller
    commits or rolls back (`conn.commit()`)."""
    if not conn.autocommit:
        raise ValueError("use_snapshot needs a connection in autocommit mode")
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))


def create_slot(conn: psycopg.Connection, slot: str, *, failover: bool = False) -> int:
    """Create logical slot `slot` (pgoutput) without a snapshot; return its consistent LSN.

    For when no initial copy needs the snapshot (every table will start with a copy and an
    idempotent replay). Raises `DbaActionRequired` when the role lacks REPLICATION."""
    valid_slot_name(slot)
    args: list[sql.Composable] = [sql.Literal(slot), sql.Literal("pgoutput"), sql.Literal(False),
                                  sql.Literal(False)]
    if failover and conn.info.server_version >= 170000:
        args.append(sql.Literal(True))
    try:
        row = conn.execute(sql.SQL(
            "SELECT (lsn - '0/0'::pg_lsn)::bigint FROM pg_create_logical_replication_slot({})"
        ).format(sql.SQL(", ").join(args))).fetchone()
    except pg_errors.InsufficientPrivilege as error:
        raise DbaActionRequired(str(error).strip(), _slot_dba_sql(conn.info.user, slot),
                                sqlstate=error.sqlstate) from error
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class SlotStatus:
    """A slot as `pg_replication_slots` shows it, with the lag and retained WAL in bytes.

    `lag_bytes`: WAL written since the confirmed position (what the next read may have to
    decode). `retained_bytes`: WAL kept on disk for the slot (from `restart_lsn`, which can
    be far behind the confirmed position while a long transaction is open). `wal_status`:
    'reserved', 'extended', 'unreserved' (about to be lost) or 'lost' (invalidated).
    `safe_wal_size`: bytes that can still be written before the slot is lost (None when
    `max_slot_wal_keep_size` is -1, unlimited). `max_slot_wal_keep_size` in bytes (None =
    unlimited: the slot can fill the disk).
    """

    name: str
    exists: bool
    current_lsn: int
    max_slot_wal_keep_size: int | None
    plugin: str | None = None
    database: str | None = None
    active: bool = False
    active_pid: int | None = None
    restart_lsn: int | None = None
    confirmed_flush_lsn: int | None = None
    wal_status: str | None = None
    safe_wal_size: int | None = None
    invalidation_reason: str | None = None  # PG 17+
    failover: bool | None = None  # PG 17+
    inactive_since: str | None = None  # PG 17+
    extra: dict = field(default_factory=dict)

    @property
    def lost(self) -> bool:
        """Invalidated: its changes cannot be read any more (the tables need a new copy)."""
        return self.wal_status == "lost" or self.invalidation_reason is not None

    @property
    def lag_bytes(self) -> int | None:
        if self.confirmed_flush_lsn is None:
            return None
        return max(0, self.current_lsn - self.confirmed_flush_lsn)

    @property
    def retained_bytes(self) -> int | None:
        if self.restart_lsn is None:
            return None
        return max(0, self.current_lsn - self.restart_lsn)


# to_jsonb(s): every column the server's version has, without naming the newer ones.
_STATUS_SQL = """
SELECT to_jsonb(s),
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size')
FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = %s
"""


def slot_status(conn: psycopg.Connection, slot: str) -> SlotStatus:
    """The state of slot `slot` (`exists=False` if there is none), in one query."""
    raw, current, keep_mb = conn.execute(_STATUS_SQL, (slot,)).fetchone()  # type: ignore[misc]
    keep = None if keep_mb is None or keep_mb < 0 else int(keep_mb) * 1024 * 1024
    if raw is None:
        return SlotStatus(slot, False, int(current), keep)
    data = raw if isinstance(raw, dict) else json.loads(raw)

    def lsn(key: str) -> int | None:
        return parse_lsn(data[key]) if data.get(key) else None

    known = {"slot_name", "plugin", "database", "active", "active_pid", "restart_lsn",
             "confirmed_flush_lsn", "wal_status", "safe_wal_size", "invalidation_reason",
             "failover", "inactive_since"}
    return SlotStatus(
        slot, True, int(current), keep, plugin=data.get("plugin"), database=data.get("database"),
        active=bool(data.get("active")), active_pid=data.get("active_pid"),
        restart_lsn=lsn("restart_lsn"), confirmed_flush_lsn=lsn("confirmed_flush_lsn"),
        wal_status=data.get("wal_status"), safe_wal_size=data.get("safe_wal_size"),
        invalidation_reason=data.get("invalidation_reason"), failover=data.get("failover"),
        inactive_since=data.get("inactive_since"),
        extra={k: v for k, v in data.items() if k not in known})


def _slot_error(error: psycopg.Error) -> CdcError:
    return error_for(error.sqlstate, str(error).strip())


def _retry_busy(conn: psycopg.Connection, busy_timeout: float, action):  # type: ignore[no-untyped-def]
    """Run `action()`, retrying while the slot is busy: the walsender of a reader that just
    closed its connection (or was killed) holds the slot until it notices, a moment later."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return action()
        except psycopg.Error as error:
            mapped = _slot_error(error)
            if not conn.autocommit:
                conn.rollback()
            if not isinstance(mapped, SlotBusy) or time.monotonic() >= deadline:
                raise mapped from error
            time.sleep(0.05)


def advance_slot(conn: psycopg.Connection, slot: str, lsn: int, *,
                 busy_timeout: float = 10.0) -> int:
    """Confirm everything before `lsn` on slot `slot` (no replication connection needed).

    Call it after the destination committed the rows and the position `lsn` with them —
    also after a read that delivered nothing, with the read's `position`, so the slot
    releases the WAL of other tables' traffic. Never moves the slot back (an `lsn` at or
    before its confirmed position is a no-op) and never past the server's flushed WAL.
    PostgreSQL decodes (without output) from the slot's restart_lsn up to `lsn` to find the
    new restart_lsn, so this costs about as much WAL reading as the changes it confirms.
    Returns the slot's confirmed position afterwards.

    Raises `SlotMissing`, `SlotInvalidated`, or `SlotBusy` (a reader still holds the slot
    after `busy_timeout` seconds: confirm through that reader's `ChangeStream.confirm()`).
    """
    row = _retry_busy(conn, busy_timeout, lambda: conn.execute(
        "SELECT (end_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slot_advance(%s, "
        "greatest(%s::pg_lsn, (SELECT confirmed_flush_lsn FROM pg_replication_slots "
        "WHERE slot_name = %s)))", (slot, _lsn_text(lsn), slot)).fetchone())
    if conn.info.transaction_status == pq.TransactionStatus.INTRANS:
        conn.commit()
    assert row is not None
    return int(row[0])


def drop_slot(conn: psycopg.Connection, slot: str, *, missing_ok: bool = True,
              busy_timeout: float = 10.0) -> bool:
    """Drop slot `slot` (its retained WAL is released). False if it did not exist.

    Raises `SlotBusy` while a reader holds it (after `busy_timeout` seconds)."""
    try:
        _retry_busy(conn, busy_timeout,
                    lambda: conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,)))
    except SlotMissing:
        if missing_ok:
            return False
        raise
    if not conn.autocommit:
        conn.commit()
    return True


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
