"""A minimal client of PostgreSQL's streaming replication protocol, on libpq via `psycopg.pq`.

A replication connection (`replication=database`) talks to a walsender: it runs
replication commands (`CREATE_REPLICATION_SLOT`, `START_REPLICATION`, ...) and then
exchanges CopyData messages: XLogData (`w`) and keepalives (`k`) from the server, standby
status updates (`r`) from the client.

Why not psycopg2's `LogicalReplicationConnection`: psycopg2 moves the flush position it
reports on its own. When a keepalive arrives and the client has confirmed the last data
message it received (at the start of a session: no data message yet), psycopg2 sets the
reported flush LSN to the keepalive's `wal_end`, and its automatic status updates then
confirm that position on the slot (psycopg2's `pq_read_replication_message`). Change
capture needs the opposite guarantee: the slot moves only when the caller, having stored
the applied position in the destination, says so. Here every status update reports exactly
the position the caller confirmed (0 = none), and nothing else moves the slot. It is also
cheaper: one `memoryview` per message, no Python object per keepalive.
"""

from __future__ import annotations

import selectors
import struct
import time
from typing import NamedTuple

from psycopg import conninfo as _conninfo
from psycopg import pq

from .errors import CdcError, DbaActionRequired, ReplicationError, SlotBusy, SlotInvalidated, SlotMissing

__all__ = ["Keepalive", "ReplicationConnection", "error_for", "parse_keepalive", "raise_for_result"]

# PostgreSQL timestamps count microseconds from 2000-01-01; Unix time from 1970-01-01.
_PG_EPOCH_OFFSET_US = 946_684_800 * 1_000_000
_status = struct.Struct(">cQQQqB")  # 'r', write, flush, apply, client time, reply requested
_keepalive = struct.Struct(">QqB").unpack_from  # wal_end, server time, reply requested


class Keepalive(NamedTuple):
    wal_end: int
    reply_requested: bool


def _pg_now() -> int:
    return time.time_ns() // 1000 - _PG_EPOCH_OFFSET_US


def raise_for_result(result: pq.PGresult, what: str) -> None:
    """Raise the error a failed replication command or query reported, as a `CdcError`
    subclass where one fits (missing, invalidated or busy slot)."""
    if result.status in (pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.BAD_RESPONSE,
                         pq.ExecStatus.NONFATAL_ERROR):
        sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode() or None
        message = (result.error_message or b"").decode(errors="replace").strip()
        raise error_for(sqlstate, f"{what}: {message}")


def error_for(sqlstate: str | None, message: str) -> CdcError:
    """The `CdcError` subclass for a PostgreSQL error about a replication slot."""
    if sqlstate == "42704" and "replication slot" in message:
        return SlotMissing(message, sqlstate=sqlstate)
    if sqlstate == "55006":  # object_in_use: "replication slot ... is active for PID n"
        pid = None
        words = message.replace(".", " ").split()
        if "PID" in words:
            index = words.index("PID")
            if index + 1 < len(words) and words[index + 1].isdigit():
                pid = int(words[index + 1])
        return SlotBusy(message, pid=pid, sqlstate=sqlstate)
    if sqlstate == "55000" and ("invalidated" in message or "can no longer" in message):
        return SlotInvalidated(message, sqlstate=sqlstate)
    return ReplicationError(message, sqlstate=sqlstate)


class ReplicationConnection:
    """One replication-protocol connection to the database named in `conninfo`.

    `conninfo` is a libpq connection string or URL. The connection always uses UTF-8 as
    client encoding: pgoutput converts text values and names to it, so the decoder's bytes
    are UTF-8 whatever the database's encoding.
    """

    def __init__(self, conninfo: str, *, application_name: str = "pg_to_bq_cdc",
                 connect_timeout: int = 30) -> None:
        params = _conninfo.conninfo_to_dict(conninfo)
        params.setdefault("application_name", application_name)
        params.setdefault("connect_timeout", str(connect_timeout))
        params.update(replication="database", client_encoding="UTF8")
        self.pgconn = pq.PGconn.connect(_conninfo.make_conninfo("", **params).encode())
        if self.pgconn.status != pq.ConnStatus.OK:
            message = self.pgconn.get_error_message()
            self.pgconn.finish()
            if "REPLICATION attribute" in message or "start WAL sender" in message:
                role = params.get("user") or "<role>"
                raise DbaActionRequired(
                    f"the role may not open a replication connection: {message.strip()}",
                    f'ALTER ROLE "{role}" WITH REPLICATION;  -- on RDS/Aurora: '
                    f'GRANT rds_replication TO "{role}";', sqlstate="42501")
            raise ReplicationError(f"cannot open a replication connection: {message}")
        self.server_version = self.pgconn.server_version
        self._selector: selectors.DefaultSelector | None = None
        self.last_status = 0.0

    # -- commands ------------------------------------------------------------------------

    def command(self, sql: str) -> list[dict[str, str | None]]:
        """Run one replication command (or SQL statement) and return its rows as dicts."""
        result = self.pgconn.exec_(sql.encode())
        raise_for_result(result, sql.split(" (")[0])
        names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
        rows = []
        for row in range(result.ntuples):
            values = (result.get_value(row, col) for col in range(result.nfields))
            rows.append({name: (None if value is None else value.decode())
                         for name, value in zip(names, values, strict=True)})
        return rows

    def start_replication(self, sql: str) -> None:
        """Send a `START_REPLICATION ...` command and enter the CopyBoth exchange."""
        self.pgconn.send_query(sql.encode())
        result = self.pgconn.get_result()
        if result is None:
            raise ReplicationError("START_REPLICATION returned no result")
        raise_for_result(result, "START_REPLICATION")
        if result.status != pq.ExecStatus.COPY_BOTH:
            raise ReplicationError(f"START_REPLICATION answered {pq.ExecStatus(result.status).name}")

    # -- the CopyBoth exchange -----------------------------------------------------------

    def wait_readable(self, timeout: float) -> bool:
        """Block until the socket has data or `timeout` seconds passed."""
        if self._selector is None:
            self._selector = selectors.DefaultSelector()
            self._selector.register(self.pgconn.socket, selectors.EVENT_READ)
        return bool(self._selector.select(timeout))

    def finish_copy(self) -> None:
        """The server ended the copy (CopyDone or an error): collect its result, raise an error."""
        while True:
            result = self.pgconn.get_result()
            if result is None:
                return
            raise_for_result(result, "replication stream")

    def send_status(self, write: int, flush: int, apply: int, *, reply: bool = False) -> None:
        """Send a standby status update. `flush` is what the slot may consider confirmed; 0
        confirms nothing (PostgreSQL ignores an invalid flush position)."""
        message = _status.pack(b"r", write, flush, apply, _pg_now(), 1 if reply else 0)
        if self.pgconn.put_copy_data(message) != 1 or self.pgconn.flush() != 0:
            raise ReplicationError(
                f"cannot send a status update: {self.pgconn.get_error_message()}")
        self.last_status = time.monotonic()

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        self.pgconn.finish()  # idempotent; closing the socket ends the walsender

    def __enter__(self) -> ReplicationConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_keepalive(buf: bytes) -> Keepalive:
    wal_end, _, reply = _keepalive(buf, 1)
    return Keepalive(wal_end, bool(reply))
