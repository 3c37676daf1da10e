"""The messages pgoutput sends, as Python objects (PostgreSQL's "Logical Replication
Message Formats"), the values in their tuples, and LSNs as text and as integers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple


class DecodeError(ValueError):
    """A payload that is not a well-formed pgoutput message."""


class _UnchangedToast:
    """The type of `UNCHANGED_TOAST` (one instance)."""

    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST = _UnchangedToast()


class BinaryValue(bytes):
    """A column value sent in the type's binary (send/recv) format (`b` in tuple data)."""

    __slots__ = ()


# PostgreSQL's epoch for timestamps: microseconds since 2000-01-01 00:00 UTC.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _timestamp(micros: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=micros)


def format_lsn(lsn: int) -> str:
    """`0x16B3748` → `'0/16B3748'`, PostgreSQL's text form of a `pg_lsn`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """`'0/16B3748'` → `0x16B3748`."""
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


class Begin(NamedTuple):
    """Start of a committed transaction; its changes follow, then its `Commit`."""

    final_lsn: int  # the LSN of the transaction's commit record
    commit_time: datetime
    xid: int


class Commit(NamedTuple):
    """End of a transaction. `end_lsn` is the position to confirm once it is applied."""

    commit_lsn: int
    end_lsn: int
    commit_time: datetime
    flags: int = 0


class Origin(NamedTuple):
    """The transaction was replayed from another server (a replication origin)."""

    origin_lsn: int
    name: str


class RelationColumn(NamedTuple):
    """One published column of a `Relation`."""

    name: str
    type_oid: int
    type_modifier: int  # atttypmod: -1 when the type has none
    is_key: bool  # part of the replica identity (every column under REPLICA IDENTITY FULL)


class Relation(NamedTuple):
    """What the columns of a table are now; precedes its first change in a session and
    follows every schema change. Dropped and (before PG 18) generated columns are absent."""

    relid: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default (primary key), 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]
    xid: int | None = None  # only inside a streamed transaction


class Type(NamedTuple):
    """A non-built-in type used by the next `Relation`."""

    type_oid: int
    namespace: str
    name: str
    xid: int | None = None


class Insert(NamedTuple):
    relid: int
    new: tuple[Any, ...]
    xid: int | None = None


class Update(NamedTuple):
    """`old` is absent (None) unless the key changed ('K': key columns only, others None)
    or the table has REPLICA IDENTITY FULL ('O': the whole old row)."""

    relid: int
    new: tuple[Any, ...]
    old: tuple[Any, ...] | None = None
    old_kind: str | None = None  # 'K', 'O' or None
    xid: int | None = None


class Delete(NamedTuple):
    """`old` holds the key columns ('K', other columns None) or, under REPLICA IDENTITY FULL,
    the whole old row ('O')."""

    relid: int
    old: tuple[Any, ...]
    old_kind: str
    xid: int | None = None


class Truncate(NamedTuple):
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


class LogicalMessage(NamedTuple):
    """A message written with `pg_logical_emit_message()` (sent with `messages 'true'`)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


class StreamStart(NamedTuple):
    xid: int
    first_segment: bool


class StreamStop(NamedTuple):
    pass


class StreamCommit(NamedTuple):
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime
    flags: int = 0


class StreamAbort(NamedTuple):
    xid: int
    subxid: int
    abort_lsn: int | None = None  # protocol 4 with streaming 'parallel' only
    abort_time: datetime | None = None


class BeginPrepare(NamedTuple):
    prepare_lsn: int
    end_lsn: int
    prepare_time: datetime
    xid: int
    gid: str


class Prepare(NamedTuple):
    prepare_lsn: int
    end_lsn: int
    prepare_time: datetime
    xid: int
    gid: str
    flags: int = 0


class StreamPrepare(NamedTuple):
    prepare_lsn: int
    end_lsn: int
    prepare_time: datetime
    xid: int
    gid: str
    flags: int = 0


class CommitPrepared(NamedTuple):
    commit_lsn: int
    end_lsn: int
    commit_time: datetime
    xid: int
    gid: str
    flags: int = 0


class RollbackPrepared(NamedTuple):
    prepare_end_lsn: int
    rollback_end_lsn: int
    prepare_time: datetime
    rollback_time: datetime
    xid: int
    gid: str
    flags: int = 0
