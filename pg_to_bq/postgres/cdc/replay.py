"""Copying a table while the slot keeps streaming, then replaying its changes idempotently.

For a table that joins the capture after the slot exists (added to the selection, a
single-table backfill or re-copy while the other tables keep streaming), and for every
table when the slot was created by someone else (no exported snapshot to copy in):

1. **Publish first.** Add the table to the publication and commit (`ensure_publication`).
   pgoutput decides whether a change is published with the catalog as of that change, so
   changes committed before this are never sent, even by a read that starts later.
2. **Then copy**, in a REPEATABLE READ transaction whose first statement is
   `copy_point(conn)` (it records the copy's snapshot and the WAL position).
3. **Then replay** the table's changes from the slot's confirmed position on, in commit
   order. Some were committed before the copy's snapshot and are already in it. Two ways to
   make that harmless, both provided:
   - *idempotent*: apply every change with the last change of a key winning
     (`LastChangeWins`): an insert of a row the copy has becomes an overwrite with the same
     or a later value, a delete of a row already gone deletes nothing, and the replay ends
     with the newest change of each key, so the table converges to the source;
   - *exact*: skip the transactions the copy saw (`CopyPoint.saw(begin.xid)`): a committed
     transaction is visible to a snapshot exactly when its id is below the snapshot's xmax
     and was not running when it was taken. This also works for tables without a key
     (REPLICA IDENTITY FULL), where last-change-wins cannot tell rows apart.

   The slot must not have been confirmed past the publication change (step 1) before the
   replay starts: a read in between delivers the table's first changes, and advancing the
   slot after it without applying them to this table would lose them. One run doing
   publish → copy → read keeps that true, since runs of one mirror do not overlap (the
   slot admits one reader at a time).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from .pgoutput import UNCHANGED_TOAST, Delete, Insert, Relation, Truncate, Update

__all__ = ["CopyPoint", "LastChangeWins", "RowChange", "copy_point"]

_XID_SPACE = 1 << 32


@dataclass(frozen=True)
class CopyPoint:
    """Where a copy stands in the change stream: its snapshot (64-bit transaction ids, as
    `pg_current_snapshot()` gives them) and the WAL insert position when it was taken."""

    xmin: int
    xmax: int
    running: frozenset[int]
    wal_lsn: int

    def full_xid(self, xid: int) -> int:
        """The 64-bit id of a 32-bit transaction id from the stream (its epoch is the one
        that puts it nearest to this snapshot: ids never span 2^31 transactions)."""
        delta = (xid - self.xmax) % _XID_SPACE
        if delta >= _XID_SPACE // 2:
            delta -= _XID_SPACE
        return self.xmax + delta

    def saw(self, xid: int) -> bool:
        """Whether the copy already contains the changes of committed transaction `xid`
        (a `Begin.xid`): then replaying them is redundant and can be skipped."""
        full = self.full_xid(xid)
        return full < self.xmin or (full < self.xmax and full not in self.running)


def copy_point(conn: psycopg.Connection) -> CopyPoint:
    """Record the copy's position; run it first in the REPEATABLE READ copy transaction."""
    row = conn.execute(
        "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint, "
        "array(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x), "
        "(pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint "
        "FROM pg_current_snapshot() AS s").fetchone()
    assert row is not None
    xmin, xmax, running, lsn = row
    return CopyPoint(int(xmin), int(xmax), frozenset(int(x) for x in running), int(lsn))


@dataclass(frozen=True)
class RowChange:
    """The net effect on one key. `upsert`: `row` is the row now; its `UNCHANGED_TOAST`
    values must be taken from the destination's row with key `toast_from` (the key itself,
    or the old key when the change moved the row to a new key). `delete`: remove the key."""

    op: Literal["upsert", "delete"]
    key: tuple[Any, ...]
    row: tuple[Any, ...] | None = None
    toast_from: tuple[Any, ...] | None = None


class LastChangeWins:
    """Folds one table's changes, in commit order, into the last change of each key.

    Feed it the table's `Relation` (again after every new one: columns may change) and its
    Insert/Update/Delete/Truncate messages; `result()` gives what to apply: whether the
    table was truncated first (TRUNCATE: empty the destination table, then apply), then
    one `RowChange` per key. Memory grows with the number of distinct keys changed, so a
    caller folds a batch, applies it, and starts a new fold: applied in order, batches
    compose the same way changes do.

    The key is the relation's replica identity (its primary key). A table with REPLICA
    IDENTITY FULL and no key cannot be folded (identical rows cannot be told apart): use
    `CopyPoint.saw` and apply its changes as they come.
    """

    def __init__(self, relation: Relation) -> None:
        self.truncated = False
        self._state: dict[tuple, RowChange] = {}
        self._key_positions: list[int] = []
        self.relation(relation)

    def relation(self, relation: Relation) -> None:
        if relation.replica_identity == "f" or relation.replica_identity == "n":
            raise ValueError(f"{relation.namespace}.{relation.name}: replica identity "
                             f"{relation.replica_identity!r} has no key to fold changes by")
        positions = [i for i, column in enumerate(relation.columns) if column.is_key]
        if not positions:
            raise ValueError(f"{relation.namespace}.{relation.name} has no key columns")
        if self._key_positions and positions != self._key_positions:
            raise ValueError(f"{relation.namespace}.{relation.name}: its key changed")
        self._key_positions = positions
        self._relid = relation.relid

    def _key(self, row: tuple) -> tuple:
        return tuple(row[i] for i in self._key_positions)

    def _merge(self, row: tuple, previous: RowChange | None, key: tuple) -> RowChange:
        """`row` with its unchanged TOASTed values taken from what this fold already knows
        about the row (`previous`), or else left for the destination to fill in."""
        if UNCHANGED_TOAST not in row:
            return RowChange("upsert", key, row)
        if previous is not None and previous.op == "upsert" and previous.row is not None:
            merged = tuple(old if new is UNCHANGED_TOAST else new
                           for new, old in zip(row, previous.row, strict=True))
            return RowChange("upsert", key, merged, previous.toast_from
                             if UNCHANGED_TOAST in merged else None)
        if previous is not None and previous.op == "delete":
            raise ValueError(f"an update of deleted key {key!r} left TOASTed values unchanged")
        return RowChange("upsert", key, row, previous.key if previous else None)

    def add(self, change: Any) -> None:
        kind = type(change)
        if kind is Relation:
            self.relation(change)
            return
        if kind is Truncate:
            if self._relid in change.relids:
                self.truncated = True
                self._state.clear()
            return
        if change.relid != self._relid:
            return
        state = self._state
        if kind is Insert:
            key = self._key(change.new)
            state[key] = RowChange("upsert", key, change.new)
        elif kind is Update:
            key = self._key(change.new)
            old_key = self._key(change.old) if change.old is not None else key
            if old_key != key:
                # The row moved to a new key: the old key goes; unchanged TOASTed values
                # live in the old key's row.
                previous = state.get(old_key)
                merged = self._merge(change.new, previous, key)
                if UNCHANGED_TOAST in (merged.row or ()) and merged.toast_from is None:
                    merged = RowChange("upsert", key, merged.row, old_key)
                state[old_key] = RowChange("delete", old_key)
                state[key] = merged
            else:
                previous = state.get(key)
                merged = self._merge(change.new, previous, key)
                if merged.toast_from is None and UNCHANGED_TOAST in (merged.row or ()):
                    merged = RowChange("upsert", key, merged.row, key)
                state[key] = merged
        elif kind is Delete:
            key = self._key(change.old)
            state[key] = RowChange("delete", key)

    def extend(self, changes: Iterable[Any]) -> None:
        for change in changes:
            self.add(change)

    def result(self) -> tuple[bool, list[RowChange]]:
        """(truncated first?, the net change of each key), upserts first.

        Apply the upserts first: their unchanged TOASTed values are read from the
        destination's current rows (`toast_from`), which may be rows this batch deletes."""
        changes = sorted(self._state.values(), key=lambda c: c.op == "delete")
        return self.truncated, changes
