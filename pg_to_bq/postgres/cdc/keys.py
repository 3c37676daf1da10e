"""Which rows changed: the keys of every insert, update and delete a slot delivers.

pg_to_bq applies change capture by key: a run reads the keys that changed since the last
run (this module), and each table's step reads those rows again from PostgreSQL through the
same COPY path as any load, merging what it finds and deleting the keys it does not find.
So every value arrives exactly as a snapshot read delivers it (no second decoder of
PostgreSQL's types), an update that leaves a TOASTed column unchanged needs no special
case (the row is read whole), an update of the primary key is a delete of the old key and
an upsert of the new one, and applying the same keys twice changes nothing, which makes a
run killed at any moment safe to repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .messages import UNCHANGED_TOAST, Delete, Insert, Relation, Truncate, Update
from .stream import ChangeStream

# What a key change says happened to the row; a truncate names no key.
INSERT, UPDATE, DELETE, TRUNCATE = "insert", "update", "delete", "truncate"


@dataclass(frozen=True)
class KeyChange:
    """One changed row's key (text values as PostgreSQL writes them), or a truncate."""

    schema: str
    table: str
    lsn: int
    op: str
    key: tuple[str | None, ...] = ()


def _text(value: object) -> str | None:
    if value is None or value is UNCHANGED_TOAST:
        return None
    return bytes(value).decode("utf-8") if isinstance(value, bytes | bytearray | memoryview) \
        else str(value)


class KeyReader:
    """The key changes of one read of a slot (see `ChangeStream` for what a read covers).

    Args:
        stream: An open `ChangeStream`.
        key_columns: The primary key's column names of a table (schema, name), or None for a
            table whose changes are not wanted.
    """

    def __init__(self, stream: ChangeStream,
                 key_columns: Callable[[str, str], Sequence[str] | None]) -> None:
        self.stream = stream
        self._key_columns = key_columns
        self._positions: dict[int, tuple[str, str, tuple[int, ...]] | None] = {}

    def _relation(self, relation: Relation) -> None:
        wanted = self._key_columns(relation.namespace, relation.name)
        if wanted is None:
            self._positions[relation.relid] = None
            return
        names = [c.name for c in relation.columns]
        self._positions[relation.relid] = (relation.namespace, relation.name,
                                           tuple(names.index(k) for k in wanted))

    def _key(self, relid: int, values: tuple[object, ...]) -> tuple[str, str, tuple] | None:
        found = self._positions.get(relid)
        if found is None:
            return None
        schema, table, positions = found
        return schema, table, tuple(_text(values[i]) for i in positions)

    def changes(self) -> Iterator[KeyChange]:
        """Every key change of the read, in commit order (one per row change: an update of
        the key yields the old key as a delete and the new one as an update)."""
        for transaction in self.stream.transactions():
            if not hasattr(transaction, "begin"):
                continue  # a non-transactional logical message
            lsn = transaction.begin.final_lsn
            for change in transaction:
                kind = type(change)
                if kind is Relation:
                    self._relation(change)
                elif kind is Insert:
                    found = self._key(change.relid, change.new)
                    if found:
                        yield KeyChange(found[0], found[1], lsn, INSERT, found[2])
                elif kind is Update:
                    found = self._key(change.relid, change.new)
                    if found is None:
                        continue
                    if change.old is not None:
                        old = self._key(change.relid, change.old)
                        if old is not None and old[2] != found[2]:
                            yield KeyChange(old[0], old[1], lsn, DELETE, old[2])
                    yield KeyChange(found[0], found[1], lsn, UPDATE, found[2])
                elif kind is Delete:
                    found = self._key(change.relid, change.old)
                    if found:
                        yield KeyChange(found[0], found[1], lsn, DELETE, found[2])
                elif kind is Truncate:
                    for relid in change.relids:
                        found = self._positions.get(relid)
                        if found is not None:
                            yield KeyChange(found[0], found[1], lsn, TRUNCATE)
