"""Decoder of the messages of PostgreSQL's `pgoutput` logical decoding plugin.

The format is PostgreSQL's "Logical Replication Message Formats" chapter (protocol
versions 1 to 4). Each message is one `bytes` payload, as carried by an XLogData message of
the replication protocol or returned by `pg_logical_slot_peek_binary_changes()`.

Decisions:

- Messages are `NamedTuple`s: cheap to build (the decoder makes millions of them), immutable,
  and still readable (`change.relid`, `change.new`).
- Tuple data (the column values of a row) is a plain `tuple`, one item per *published*
  column, in the order of the preceding `Relation` message's columns:
  - a value sent as text (the default) is `bytes`, exactly as the type's output function
    wrote it, in the connection's client encoding (UTF-8 for the reader in `stream`).
    Not `str`: decoding UTF-8 costs time per value and the consumer converts anyway (Arrow
    parses UTF-8 bytes into strings, numbers or timestamps in C);
  - a value sent in binary (the `binary` option, PG 14+) is a `BinaryValue`, a `bytes`
    subclass, so it is never mistaken for text;
  - SQL NULL is `None`;
  - an unchanged TOASTed value (`u`: an UPDATE that did not touch a large out-of-line
    value sends no value at all) is the sentinel `UNCHANGED_TOAST`, distinct from NULL:
    the consumer must keep the value it already has.
- Streaming (protocol 2+, `streaming` on) prefixes data messages with a transaction id
  inside a Stream Start/Stop block; `Decoder` tracks that state. `decode_message` decodes
  one message outside such a block.
- LSNs are `int`s (`format_lsn` / `parse_lsn` convert from and to PostgreSQL's `X/Y`),
  timestamps are timezone-aware `datetime`s (one per transaction, so the conversion is
  cheap), transaction ids the 32-bit ids the protocol sends.
- Malformed input raises `DecodeError`, never returns a half-decoded message.
"""

from __future__ import annotations

import struct
from typing import Any

from pg_to_bq.postgres.cdc.messages import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryValue,
    Commit,
    CommitPrepared,
    DecodeError,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Prepare,
    Relation,
    RelationColumn,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    _timestamp,
    format_lsn,
    parse_lsn,
)

__all__ = [
    "UNCHANGED_TOAST",
    "Begin",
    "BeginPrepare",
    "BinaryValue",
    "Commit",
    "CommitPrepared",
    "DecodeError",
    "Decoder",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Origin",
    "Prepare",
    "Relation",
    "RelationColumn",
    "RollbackPrepared",
    "StreamAbort",
    "StreamCommit",
    "StreamPrepare",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Type",
    "Update",
    "decode_message",
    "format_lsn",
    "parse_lsn",
]






"""The value of a column whose TOASTed value an UPDATE left unchanged (`u` in tuple data).

PostgreSQL sends no value for it: the row keeps the value it had before this change."""




















































# Precompiled readers: struct.Struct.unpack_from is the cheapest way to read a big-endian
# integer at an offset without slicing.
_u8 = struct.Struct(">B").unpack_from
_u16 = struct.Struct(">H").unpack_from
_i32 = struct.Struct(">i").unpack_from
_u32 = struct.Struct(">I").unpack_from
_u64 = struct.Struct(">Q").unpack_from
_i64 = struct.Struct(">q").unpack_from
_begin = struct.Struct(">QqI").unpack_from  # final_lsn, commit_time, xid
_commit = struct.Struct(">BQQq").unpack_from  # flags, commit_lsn, end_lsn, commit_time
_rel_header = struct.Struct(">I").unpack_from
_column_tail = struct.Struct(">Ii").unpack_from  # type oid, typmod
_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__

_T, _N, _U, _B = ord("t"), ord("n"), ord("u"), ord("b")


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise DecodeError(f"unterminated string at offset {pos}")
    return buf[pos:end].decode(), end + 1


def _tuple_data(buf: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
    """Decode TupleData at `pos`; return the values and the offset after them."""
    (count,) = _u16(buf, pos)
    pos += 2
    values: list[Any] = []
    append = values.append
    u32 = _u32
    for _ in range(count):
        kind = buf[pos]
        if kind == _T:
            (length,) = u32(buf, pos + 1)
            start = pos + 5
            pos = start + length
            append(buf[start:pos])
        elif kind == _N:
            append(None)
            pos += 1
        elif kind == _U:
            append(UNCHANGED_TOAST)
            pos += 1
        elif kind == _B:
            (length,) = u32(buf, pos + 1)
            start = pos + 5
            pos = start + length
            append(BinaryValue(buf[start:pos]))
        else:
            raise DecodeError(f"unknown tuple data kind {kind!r} at offset {pos}")
    if pos > len(buf):
        raise DecodeError("tuple data runs past the end of the message")
    return tuple(values), pos


def _relation(buf: bytes, pos: int, xid: int | None) -> Relation:
    (relid,) = _u32(buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    identity = chr(buf[pos])
    (count,) = _u16(buf, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = buf[pos]
        column, pos = _cstring(buf, pos + 1)
        type_oid, typmod = _column_tail(buf, pos)
        pos += 8
        columns.append(RelationColumn(column, type_oid, typmod, bool(flags & 1)))
    # pgoutput writes an empty namespace for pg_catalog to save space.
    return Relation(relid, namespace or "pg_catalog", name, identity, tuple(columns), xid)


def _old_and_new(buf: bytes, pos: int) -> tuple[tuple | None, str | None, tuple]:
    kind = buf[pos]
    if kind == 78:  # 'N'
        new, _ = _tuple_data(buf, pos + 1)
        return None, None, new
    if kind not in (75, 79):  # 'K', 'O'
        raise DecodeError(f"expected 'K', 'O' or 'N' in an update, got {kind!r}")
    old, pos = _tuple_data(buf, pos + 1)
    if buf[pos] != 78:
        raise DecodeError(f"expected 'N' after the old tuple of an update, got {buf[pos]!r}")
    new, _ = _tuple_data(buf, pos + 1)
    return old, chr(kind), new


def _gid_tail(buf: bytes, pos: int) -> tuple[int, str]:
    (xid,) = _u32(buf, pos)
    gid, _ = _cstring(buf, pos + 4)
    return xid, gid


def decode_message(buf: bytes, pos: int = 0, *, in_stream: bool = False) -> Any:
    """Decode the pgoutput message starting at `buf[pos]` (to the end of `buf`).

    `in_stream`: inside a Stream Start/Stop block, where data messages carry a transaction
    id (protocol 2+ with `streaming` on). Returns one of this module's message tuples.
    """
    try:
        kind = buf[pos]
        # The most frequent messages first: one Begin/Commit per transaction, one change per row.
        if kind == 85:  # 'U'
            if in_stream:
                xid, relid = _u32(buf, pos + 1)[0], _u32(buf, pos + 5)[0]
                old, old_kind, new = _old_and_new(buf, pos + 9)
                return _new(Update, (relid, new, old, old_kind, xid))
            (relid,) = _u32(buf, pos + 1)
            if buf[pos + 5] == 78:  # 'N': no old tuple, the common case
                new, _ = _tuple_data(buf, pos + 6)
                return _new(Update, (relid, new, None, None, None))
            old, old_kind, new = _old_and_new(buf, pos + 5)
            return _new(Update, (relid, new, old, old_kind, None))
        if kind == 73:  # 'I'
            xid = None
            if in_stream:
                (xid,) = _u32(buf, pos + 1)
                pos += 4
            (relid,) = _u32(buf, pos + 1)
            if buf[pos + 5] != 78:
                raise DecodeError(f"expected 'N' in an insert, got {buf[pos + 5]!r}")
            new, _ = _tuple_data(buf, pos + 6)
            return _new(Insert, (relid, new, xid))
        if kind == 68:  # 'D'
            xid = None
            if in_stream:
                (xid,) = _u32(buf, pos + 1)
                pos += 4
            (relid,) = _u32(buf, pos + 1)
            old_kind = buf[pos + 5]
            if old_kind not in (75, 79):
                raise DecodeError(f"expected 'K' or 'O' in a delete, got {old_kind!r}")
            old, _ = _tuple_data(buf, pos + 6)
            return _new(Delete, (relid, old, chr(old_kind), xid))
        if kind == 66:  # 'B'
            final_lsn, micros, xid = _begin(buf, pos + 1)
            return _new(Begin, (final_lsn, _timestamp(micros), xid))
        if kind == 67:  # 'C'
            flags, commit_lsn, end_lsn, micros = _commit(buf, pos + 1)
            return _new(Commit, (commit_lsn, end_lsn, _timestamp(micros), flags))
        if kind == 82:  # 'R'
            xid = None
            if in_stream:
                (xid,) = _u32(buf, pos + 1)
                pos += 4
            return _relation(buf, pos + 1, xid)
        if kind == 89:  # 'Y'
            xid = None
            if in_stream:
                (xid,) = _u32(buf, pos + 1)
                pos += 4
            (type_oid,) = _u32(buf, pos + 1)
            namespace, end = _cstring(buf, pos + 5)
            name, _ = _cstring(buf, end)
            return Type(type_oid, namespace or "pg_catalog", name, xid)
        if kind == 84:  # 'T'
            xid = None
            if in_stream:
                (xid,) = _u32(buf, pos + 1)
                pos += 4
            (count,) = _u32(buf, pos + 1)
            options = buf[pos + 5]
            relids = struct.unpack_from(f">{count}I", buf, pos + 6)
            return Truncate(relids, bool(options & 1), bool(options & 2), xid)
        if kind == 79:  # 'O'
            (origin_lsn,) = _u64(buf, pos + 1)
            name, _ = _cstring(buf, pos + 9)
            return Origin(origin_lsn, name)
        if kind == 77:  # 'M'
            xid = None
            if in_stream:
                (xid,) = _u32(buf, pos + 1)
                pos += 4
            flags = buf[pos + 1]
            (lsn,) = _u64(buf, pos + 2)
            prefix, end = _cstring(buf, pos + 10)
            (length,) = _u32(buf, end)
            content = bytes(buf[end + 4:end + 4 + length])
            if len(content) != length:
                raise DecodeError("message content runs past the end of the message")
            return LogicalMessage(bool(flags & 1), lsn, prefix, content, xid)
        if kind == 83:  # 'S'
            (xid,) = _u32(buf, pos + 1)
            return StreamStart(xid, buf[pos + 5] == 1)
        if kind == 69:  # 'E'
            return StreamStop()
        if kind == 99:  # 'c'
            (xid,) = _u32(buf, pos + 1)
            flags, commit_lsn, end_lsn, micros = _commit(buf, pos + 5)
            return StreamCommit(xid, commit_lsn, end_lsn, _timestamp(micros), flags)
        if kind == 65:  # 'A'
            xid, subxid = _u32(buf, pos + 1)[0], _u32(buf, pos + 5)[0]
            if len(buf) - pos >= 25:  # protocol 4, streaming 'parallel': abort LSN and time
                (abort_lsn,) = _u64(buf, pos + 9)
                (micros,) = _i64(buf, pos + 17)
                return StreamAbort(xid, subxid, abort_lsn, _timestamp(micros))
            return StreamAbort(xid, subxid)
        if kind == 98:  # 'b'
            prepare_lsn, end_lsn = _u64(buf, pos + 1)[0], _u64(buf, pos + 9)[0]
            (micros,) = _i64(buf, pos + 17)
            xid, gid = _gid_tail(buf, pos + 25)
            return BeginPrepare(prepare_lsn, end_lsn, _timestamp(micros), xid, gid)
        if kind in (80, 112):  # 'P' prepare, 'p' stream prepare
            flags = buf[pos + 1]
            prepare_lsn, end_lsn = _u64(buf, pos + 2)[0], _u64(buf, pos + 10)[0]
            (micros,) = _i64(buf, pos + 18)
            xid, gid = _gid_tail(buf, pos + 26)
            cls = Prepare if kind == 80 else StreamPrepare
            return cls(prepare_lsn, end_lsn, _timestamp(micros), xid, gid, flags)
        if kind == 75:  # 'K'
            flags = buf[pos + 1]
            commit_lsn, end_lsn = _u64(buf, pos + 2)[0], _u64(buf, pos + 10)[0]
            (micros,) = _i64(buf, pos + 18)
            xid, gid = _gid_tail(buf, pos + 26)
            return CommitPrepared(commit_lsn, end_lsn, _timestamp(micros), xid, gid, flags)
        if kind == 114:  # 'r'
            flags = buf[pos + 1]
            prepare_end, rollback_end = _u64(buf, pos + 2)[0], _u64(buf, pos + 10)[0]
            prepare_micros, rollback_micros = _i64(buf, pos + 18)[0], _i64(buf, pos + 26)[0]
            xid, gid = _gid_tail(buf, pos + 34)
            return RollbackPrepared(prepare_end, rollback_end, _timestamp(prepare_micros),
                                    _timestamp(rollback_micros), xid, gid, flags)
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise DecodeError(f"truncated or malformed pgoutput message: {error}") from error
    raise DecodeError(f"unknown pgoutput message type {chr(kind)!r}")


class Decoder:
    """Decodes a session's messages in order, tracking Stream Start/Stop blocks.

    Only needed with `streaming` on (protocol 2+); without it, `decode_message` is enough.
    """

    def __init__(self) -> None:
        self.in_stream = False

    def decode(self, buf: bytes, pos: int = 0) -> Any:
        message = decode_message(buf, pos, in_stream=self.in_stream)
        kind = type(message)
        if kind is StreamStart:
            self.in_stream = True
        elif kind is StreamStop:
            self.in_stream = False
        return message
