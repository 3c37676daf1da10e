"""Read the committed changes of a logical slot, up to a point fixed when the read starts.

    with ChangeStream(conninfo, slot="pg_to_bq", publications=["pg_to_bq"],
                      start_lsn=stored_position) as stream:
        for txn in stream.transactions():
            for change in txn:            # Relation, Type, Insert, Update, Delete, Truncate...
                ...                       # write it out; memory stays bounded
            # txn.commit is set here: txn.commit.end_lsn is this transaction's position
        position = stream.position        # store it with the applied rows, then:
    advance_slot(conn, "pg_to_bq", position)   # (slot.py) only after the destination commit

What a read delivers, and why:

- **Committed transactions only, whole, in commit order.** pgoutput without the `streaming`
  option sends a transaction only when its commit is decoded; a transaction still open when
  the read ends is not sent and arrives, once, in the read during which it commits. (With
  `streaming` on, PostgreSQL would send open transactions in pieces and possibly abort them:
  the consumer would have to buffer or undo, so this reader never asks for it. A large
  transaction costs server-side disk instead: beyond `logical_decoding_work_mem` the
  walsender spills it under `pg_replslot/`.)
- **Up to an end point fixed at the start**: `pg_current_wal_insert_lsn()` taken before
  `START_REPLICATION` (the insert position, not the write position: with
  `synchronous_commit = off` a transaction acknowledged to its client may not be written
  yet, and it committed before this read began). A transaction is delivered if its commit
  record starts before the end point; the first one at or past it stops the read, so a run
  never chases a busy server. The next read delivers it.
- **Stops promptly when there is nothing more**: the walsender sends a keepalive with the
  position it has decoded up to (`wal_end`) whenever it waits for WAL; once that reaches
  the end point outside a transaction, nothing before the end point is left.
- **Streams**: `transactions()` yields each transaction as an iterator over its changes,
  pulled from the socket one message at a time; nothing is accumulated. A transaction of
  millions of rows uses as much client memory as one row. The consumer must pull at least
  every `wal_sender_timeout` (60 s by default) or the server drops the connection: write
  changes to local files inside the loop, load into the destination after it.
- **Confirms nothing by itself.** Status updates report the position the caller confirmed
  (`confirm()`), initially none. `position` says what may be confirmed once everything
  delivered so far is durably applied: the last delivered commit's `end_lsn`, and after a
  complete read the end point itself, even when no captured table changed, so the slot
  can release the WAL of other tables' traffic.
- **Starts after what the caller already applied**: `start_lsn` (the position stored in the
  destination) makes the server skip transactions whose commit is before it, even if the
  slot was not advanced (killed between the destination commit and the advance) or went
  back (the server crashed before saving the slot's new position: a slot's confirmed
  position is kept in shared memory and written to disk only at checkpoints).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from .errors import CdcError, ReplicationError, SlotBusy, SlotInvalidated, SlotMissing
from .pgoutput import (
    Begin,
    Commit,
    LogicalMessage,
    Relation,
    StreamStart,
    decode_message,
    format_lsn,
)
from .walsender import ReplicationConnection, parse_keepalive

__all__ = ["ChangeStream", "Transaction", "end_point", "quote_literal", "valid_slot_name"]

_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def valid_slot_name(name: str) -> str:
    """Return `name` if PostgreSQL accepts it as a replication slot name, else raise.

    Slot names may hold only lower-case letters, digits and underscores (at most 63), so
    they can be written into replication commands without quoting."""
    if not _SLOT_NAME.match(name):
        raise ValueError(f"invalid replication slot name {name!r}: use lower-case letters, "
                         "digits and underscores (at most 63)")
    return name


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The end point of a read. On a standby (PG 16+ decodes there) the replayed position is
# the newest WAL there is. pg_current_wal_insert_lsn() is in "record pointer" form: at a
# page boundary it points past the page header, where no record ends; end_point() takes
# the header off so the comparison with a decoded record's end is exact.
_END_POINT_SQL = """
SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_insert_lsn() END - '0/0'::pg_lsn)::bigint AS lsn,
       current_setting('wal_block_size')::bigint AS block_size,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') AS segment_size
"""

_SHORT_PAGE_HEADER = 24  # MAXALIGN(SizeOfXLogShortPHD) on 64-bit builds
_LONG_PAGE_HEADER = 40  # MAXALIGN(SizeOfXLogLongPHD): the first page of each segment


def end_point(lsn: int, block_size: int, segment_size: int) -> int:
    """`lsn` as the end of the last record before it (page header removed at a boundary)."""
    if lsn % segment_size == _LONG_PAGE_HEADER:
        return lsn - _LONG_PAGE_HEADER
    if lsn % block_size == _SHORT_PAGE_HEADER:
        return lsn - _SHORT_PAGE_HEADER
    return lsn


def _flush_wal(conn: ReplicationConnection) -> None:
    """Have the WAL up to the end point flushed: the walsender decodes flushed WAL only, and
    WAL no commit is waiting for (hint bits logged by reads, an asynchronous commit) may
    otherwise sit in the server's buffers until a checkpoint, minutes later on an idle
    server, while this read waits for it. A transaction with an xid, committed with
    `synchronous_commit = on`, flushes everything before it. Not possible on a standby
    (nothing to flush there) or where refused: then the read waits for the server."""
    try:
        conn.command("SET synchronous_commit = on")
        conn.command("SELECT pg_current_xact_id()")
    except (CdcError, psycopg.Error):
        pass


class Transaction:
    """One committed transaction of a read: `begin`, its changes (iterate once), `commit`.

    The changes come straight off the socket; `commit` is set once they were all read. What
    the consumer leaves unread of a transaction is read and discarded when the next one is
    requested — and the stream's `position` moves past it all the same.
    """

    __slots__ = ("_source", "_started", "begin", "commit")

    def __init__(self, begin: Begin, source: Iterator[Any]) -> None:
        self.begin = begin
        self.commit: Commit | None = None
        self._source = source
        self._started = False

    @property
    def xid(self) -> int:
        return self.begin.xid

    def __iter__(self) -> Iterator[Any]:
        if self._started:
            raise RuntimeError("a transaction's changes can be read only once")
        self._started = True
        for message in self._source:
            if type(message) is Commit:
                self.commit = message
                return
            yield message
        raise ReplicationError(f"the stream ended inside transaction {self.begin.xid}")

    def _finish(self) -> None:
        """Read (and discard) whatever the consumer left of this transaction."""
        if self.commit is not None:
            return
        self._started = True
        for message in self._source:
            if type(message) is Commit:
                self.commit = message
                return
        raise ReplicationError(f"the stream ended inside transaction {self.begin.xid}")

    def __repr__(self) -> str:
        return (f"Transaction(xid={self.begin.xid}, commit_lsn={format_lsn(self.begin.final_lsn)}, "
                f"committed={self.commit is not None})")


class ChangeStream:
    """One read of logical slot `slot` through the publications `publications`.

    Opening it connects, fixes the end point (`end_lsn`) and starts replication; nothing is
    confirmed unless `confirm()` is called. Use it as a context manager (the connection is
    closed on exit, which releases the slot for the next reader).

    Args:
        conninfo: libpq connection string or URL of the database the slot belongs to.
        slot: the logical slot (plugin pgoutput).
        publications: publication names (unquoted, as in `pg_publication.pubname`).
        start_lsn: the position the caller already applied (stored in the destination):
            transactions committed before it are skipped by the server. None: the slot's
            confirmed position.
        end_lsn: a fixed end point instead of the current WAL insert position (tests,
            benchmarks, or reading up to a position recorded elsewhere).
        proto_version: pgoutput protocol version (1 works on PostgreSQL 10+; 2-4 change
            nothing unless `streaming` or two-phase options are asked for, which this reader
            does not do).
        binary: ask for values in binary (PG 14+; `BinaryValue`s in the tuples). Off by
            default: text is what every type has, and what the snapshot read compares to.
        messages: also deliver `pg_logical_emit_message()` messages (PG 14+).
        busy_timeout: seconds to keep retrying while another connection holds the slot (a
            reader killed a moment ago leaves a walsender that takes a moment to exit).
        status_interval: seconds between status updates (keep well under the server's
            `wal_sender_timeout`).
        stall_timeout: raise if the server sends nothing new (no message, no progress of
            its decoded position) for this many seconds; None waits forever.
    """

    def __init__(self, conninfo: str, slot: str, publications: Sequence[str], *,
                 start_lsn: int | None = None, end_lsn: int | None = None,
                 proto_version: int = 1, binary: bool = False, messages: bool = False,
                 busy_timeout: float = 15.0, status_interval: float = 10.0,
                 stall_timeout: float | None = 300.0,
                 application_name: str = "pg_to_bq_cdc") -> None:
        self.slot = valid_slot_name(slot)
        if not publications:
            raise ValueError("at least one publication is needed")
        self.publications = tuple(publications)
        self.status_interval = status_interval
        self.stall_timeout = stall_timeout
        self.relations: dict[int, Relation] = {}
        self.confirmed = 0
        self.finished = False
        self.delivered_transactions = 0
        self._conn: ReplicationConnection | None = None
        self._iterating = False
        deadline = time.monotonic() + busy_timeout
        while True:
            conn = ReplicationConnection(conninfo, application_name=application_name)
            try:
                self._start(conn, start_lsn, end_lsn, proto_version, binary, messages)
            except SlotBusy:
                conn.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
                continue
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            break

    def _start(self, conn: ReplicationConnection, start_lsn: int | None, end_lsn: int | None,
               proto_version: int, binary: bool, messages: bool) -> None:
        rows = conn.command(
            "SELECT plugin, active_pid, wal_status, "
            "(confirmed_flush_lsn - '0/0'::pg_lsn)::bigint AS confirmed "
            f"FROM pg_replication_slots WHERE slot_name = {quote_literal(self.slot)} "
            "AND database = current_database()")
        if not rows:
            raise SlotMissing(f'replication slot "{self.slot}" does not exist in this database')
        info = rows[0]
        if info["wal_status"] == "lost":
            raise SlotInvalidated(
                f'replication slot "{self.slot}" was invalidated (wal_status = lost): the WAL '
                "it needed is gone; its tables need a fresh copy and the slot a re-creation")
        if info["plugin"] != "pgoutput":
            raise ReplicationError(
                f'replication slot "{self.slot}" uses plugin {info["plugin"]!r}, not pgoutput')
        slot_position = int(info["confirmed"] or 0)
        self.start_lsn = max(slot_position, start_lsn or 0)
        if end_lsn is None:
            [point] = conn.command(_END_POINT_SQL)
            end_lsn = end_point(int(point["lsn"]), int(point["block_size"]),
                                int(point["segment_size"]))
            _flush_wal(conn)
        self.end_lsn = end_lsn
        # Reported until the caller confirms: "nothing new", never a position we made up.
        self.position = self.start_lsn
        options = [f"proto_version {quote_literal(str(proto_version))}",
                   "publication_names "
                   + quote_literal(",".join(quote_ident(p) for p in self.publications))]
        if binary:
            options.append("binary 'true'")
        if messages:
            options.append("messages 'true'")
        conn.start_replication(
            f"START_REPLICATION SLOT {self.slot} LOGICAL {format_lsn(self.start_lsn)} "
            f"({', '.join(options)})")
        conn.last_status = time.monotonic()

    # -- reading ---------------------------------------------------------------------------

    def messages(self) -> Iterator[Any]:
        """Every decoded message up to the end point, in order: Begin, the transaction's
        Relation/Type/Insert/Update/Delete/Truncate/LogicalMessage/Origin, Commit, ... and
        non-transactional LogicalMessages between transactions. Can be iterated once."""
        if self._iterating:
            raise RuntimeError("a ChangeStream can be read only once")
        self._iterating = True
        conn = self._conn
        if conn is None:
            raise RuntimeError("the stream is closed")
        pgconn = conn.pgconn
        get = pgconn.get_copy_data
        decode = decode_message
        end = self.end_lsn
        relations = self.relations
        in_transaction = False
        wal_end = 0
        silent_since = time.monotonic()
        count = 0
        drained = False  # the last read found libpq's buffer and the socket both empty
        progress, progress_wal, progress_at = count, wal_end, time.monotonic()
        try:
            while True:
                size, data = get(1)
                if size > 0:
                    drained = False
                    buf = bytes(data)
                    if buf[0] == 119:  # 'w': XLogData, the pgoutput message starts at 25
                        kind = buf[25]
                        count += 1
                        if in_transaction:
                            if kind == 67:  # 'C'
                                message = decode(buf, 25)
                                in_transaction = False
                                self.delivered_transactions += 1
                                # Delivered whole: what the caller applies up to here is this.
                                self.position = max(self.position, message.end_lsn)
                                yield message
                                if message.end_lsn >= end:
                                    break
                            elif kind == 82:  # 'R'
                                message = decode(buf, 25)
                                relations[message.relid] = message
                                yield message
                            else:
                                yield decode(buf, 25)
                            if count & 0xFFF == 0 and (time.monotonic() - conn.last_status
                                                       >= self.status_interval):
                                self._send_status()
                            continue
                        if kind == 66:  # 'B'
                            message = decode(buf, 25)
                            if message.final_lsn >= end:
                                break  # commits at or after the end point: the next read's
                            in_transaction = True
                            yield message
                            continue
                        message = decode(buf, 25)
                        if type(message) is LogicalMessage:  # non-transactional
                            if message.lsn >= end:
                                break
                            yield message
                            continue
                        if type(message) is StreamStart:
                            raise ReplicationError("the server streams an open transaction "
                                                   "(streaming was not requested)")
                        raise ReplicationError(f"unexpected message outside a transaction: {message!r}")
                    if buf[0] == 107:  # 'k': keepalive
                        keepalive = parse_keepalive(buf)
                        wal_end = max(wal_end, keepalive.wal_end)
                        if keepalive.reply_requested:
                            self._send_status()
                        if not in_transaction and wal_end >= end:
                            break
                        silent_since = time.monotonic()
                        continue
                    raise ReplicationError(f"unexpected replication message type {buf[:1]!r}")
                if size == 0:
                    if drained:
                        # Nothing buffered, nothing on the socket: wait, keep the server talking.
                        now = time.monotonic()
                        if now - conn.last_status >= self.status_interval:
                            self._send_status()
                        if progress != count or wal_end != progress_wal:
                            progress, progress_wal, progress_at = count, wal_end, now
                        elif (self.stall_timeout is not None
                              and now - progress_at >= self.stall_timeout):
                            raise ReplicationError(
                                f"no progress for {self.stall_timeout:.0f} s: decoded up to "
                                f"{format_lsn(wal_end)}, end point {format_lsn(end)}")
                        if now - silent_since >= 1.0:
                            # Ask for a keepalive: its wal_end tells whether the end was reached.
                            self._send_status(reply=True)
                            silent_since = now
                        conn.wait_readable(0.2)
                    pgconn.consume_input()
                    drained = True
                    continue
                # -1: the server ended the copy (e.g. it shut down); -2: an error.
                conn.finish_copy()
                raise ReplicationError("the server ended the replication stream early "
                                       f"(at {format_lsn(wal_end)}, end point {format_lsn(end)})")
        except psycopg.OperationalError as error:
            raise ReplicationError(f"replication connection lost: {error}") from error
        self.finished = True
        self.position = max(self.position, end)

    def transactions(self) -> Iterator[Transaction | LogicalMessage]:
        """The read as `Transaction`s (and, with `messages=True`, non-transactional
        `LogicalMessage`s between them), in commit order."""
        source = self.messages()
        for message in source:
            if type(message) is Begin:
                transaction = Transaction(message, source)
                yield transaction
                transaction._finish()
            else:
                yield message

    # -- confirming ------------------------------------------------------------------------

    def confirm(self, lsn: int) -> None:
        """Tell the server everything before `lsn` is applied (the slot's confirmed position
        moves there and WAL before it may be released). Call it only after the destination
        committed the changes and stored `lsn` with them. Positions never move back."""
        if lsn > self.confirmed:
            self.confirmed = lsn
            self._send_status()

    def _send_status(self, *, reply: bool = False) -> None:
        assert self._conn is not None
        # write = flush = apply = the caller's confirmed position; 0 (none) until it confirms.
        self._conn.send_status(self.confirmed, self.confirmed, self.confirmed, reply=reply)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ChangeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
