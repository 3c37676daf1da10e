"""Schema changes between PostgreSQL and the loaded table, and what a load does about them.

Each load compares the table's live columns (what the run reads) with the columns the
destination table has (asked of the destination, `pg_to_bq.destinations.schema`), so the
decision never depends on a snapshot or on anything a killed run may have left half done:

- **new column**: loaded from this run on. A replaced table is read whole anyway; on a
  merged table (whose existing rows would keep NULL), the key and the new columns of every
  row are read and the existing rows updated (`pg_to_bq.load.fill`), in the same run: the copy
  equals the source. Until that succeeds, a marker in the table's state makes every later
  run do it again.
- **dropped column**: no longer read; kept in the destination (its history) and made
  nullable, so rows loaded from now on hold NULL there. Said once: from the next load on it
  is `kept`, which asks nothing of a load (a table whose rows did not change stays
  unchanged).
- **column added back** (dropped in PostgreSQL, or left out, and later loaded again under
  the same name): the destination column holds values PostgreSQL no longer has, so it is
  handled as a new column (every row's value loaded again), never taken as loaded.
- **column derived another way** (another PostgreSQL column under its name, hashed or cast
  by the tables file, or hashed with another salt; `pg_to_bq.planning.derivation`): every
  row's value is loaded again, as for a new column.
- **column in the destination that pg_to_bq never wrote** (added there by hand): left as it
  is, said once, then `kept`.
- **type change** the destination can hold without touching a value (`widens`): the column
  is widened in place (`ALTER ... SET DATA TYPE`).
- **any other type change**: the table is dropped and loaded whole under the new type. A
  run killed midway leaves no table, which the next run loads whole.

Types are compared as the destination names them (`normalize_type`): a change PostgreSQL
makes without changing the destination type (`varchar(20)` → `text`) needs nothing there;
if PostgreSQL rewrote the table for it (a `USING` may have changed the values), the column
is derived another way and loaded again.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pg_to_bq.planning.derivation import what_changed
from pg_to_bq.planning.naming import SOFT_DELETE_COLUMN

# Integer types by width, as DuckDB names them; BigQuery has only INT64.
_DUCKDB_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
_INTEGER_DIGITS = {"TINYINT": 3, "SMALLINT": 5, "INTEGER": 10, "BIGINT": 19, "INT64": 19,
                   "HUGEINT": 39}
_DECIMAL = re.compile(r"^(DECIMAL|NUMERIC|BIGNUMERIC)\((\d+),(\d+)\)$")


@dataclass(frozen=True)
class StoredColumn:
    """A column of the destination table, as the destination describes it."""

    name: str
    type: str
    nullable: bool


@dataclass(frozen=True)
class Change:
    """One difference between PostgreSQL and the loaded table, and what is done about it."""

    kind: str  # "added", "dropped", "widened", "retyped", "created"
    column: str
    old_type: str | None = None
    new_type: str | None = None

    def describe(self, action: str) -> str:
        if self.kind == "added":
            return f"column {self.column} added in PostgreSQL: {action}"
        if self.kind == "dropped":
            return (f"column {self.column} dropped in PostgreSQL: kept in the destination, "
                    "NULL for rows loaded from now on")
        if self.kind == "widened":
            return (f"column {self.column} changed type: widened in place "
                    f"({self.old_type} → {self.new_type})")
        return (f"column {self.column} changed type ({self.old_type} → {self.new_type}): "
                "table reloaded under the new type")


@dataclass(frozen=True)
class Evolution:
    """What a load must do about the differences between the plan and the destination."""

    exists: bool
    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    widened: tuple[Change, ...] = ()
    retyped: tuple[Change, ...] = ()
    # Columns the destination declares NOT NULL that rows loaded from now on may leave NULL.
    relax: tuple[str, ...] = ()
    # Columns not loaded any more that an earlier load already left in the destination.
    kept: tuple[str, ...] = ()
    # Of `added`, those the destination has, with values the last load did not write.
    again: tuple[str, ...] = ()
    # Of `added`, those the last load wrote, derived another way now, and why
    # (`pg_to_bq.planning.derivation`).
    rederived: tuple[tuple[str, str], ...] = ()

    @property
    def reload(self) -> bool:
        """The table must be dropped and loaded whole (a type it cannot widen to)."""
        return bool(self.retyped)

    @property
    def stale(self) -> tuple[str, ...]:
        """Of `added`, those the destination already has, with values derived another way
        than this load's (`again` and `rederived`)."""
        return (*self.again, *(name for name, _ in self.rederived))

    @property
    def changed(self) -> bool:
        """Whether the load must do something about the table's columns (a change seen
        before and already dealt with, `kept`, is not one)."""
        return bool(self.added or self.dropped or self.widened or self.retyped or self.relax)


def normalize_type(type_: str) -> str:
    """A type as the destination names it, spelled one way (`NUMERIC(12, 2)` →
    `NUMERIC(12,2)`, `timestamp with time zone` → `TIMESTAMP WITH TIME ZONE`)."""
    text = re.sub(r"\s*([(),])\s*", r"\1", type_.strip().upper())
    return re.sub(r"\s+", " ", text)


def diff(planned: Mapping[str, str], stored: Mapping[str, StoredColumn] | None,
         kind: str, keys: frozenset[str] = frozenset(),
         created: Mapping[str, str] | None = None, loaded: Collection[str] | None = None,
         kept: Collection[str] | None = None,
         derived: tuple[Mapping[str, Mapping[str, Any]], Mapping[str, Mapping[str, Any]]]
         | None = None) -> Evolution:
    """Compare the planned columns (destination name → destination type) with the stored
    table (None: it does not exist). `keys` are the primary key's destination columns.
    `created`: the parameterized types (`NUMERIC(10,2)`) pg_to_bq gave the columns at the
    table's last load, which speak for a destination that reports a type without its
    parameters. `loaded` and `kept`: the columns the table's last load wrote, and those it
    found in the destination and left as they were (None: a state from before they were
    stored). `derived`: each column's derivation at the last load and now (by destination
    name; None, or a column missing from the first, compares none)."""
    if not stored:
        return Evolution(exists=False)
    by_folded = {name.casefold(): column for name, column in stored.items()}
    wrote = None if loaded is None else {name.casefold() for name in loaded}
    added, again, rederived, widened, retyped = [], [], [], [], []
    before, now = derived or ({}, {})
    for name, type_ in planned.items():
        column = by_folded.get(name.casefold())
        if column is None:
            added.append(name)
            continue
        if wrote is not None and name.casefold() not in wrote:
            # Present with values the last load did not write (the column was dropped in
            # PostgreSQL, or left out, and is back): every row's value is loaded again.
            added.append(name)
            again.append(name)
        elif name in before and name in now:
            why = what_changed(before[name], now[name])
            if why is not None:
                # Written by the last load, derived another way now: loaded again too.
                added.append(name)
                rederived.append((name, why))
        old, new = normalize_type(column.type), normalize_type(type_)
        remembered = normalize_type((created or {}).get(name, ""))
        if _unparameterized(old) and remembered.split("(")[0] == old:
            # The destination reports the type without its parameters (the BigQuery
            # emulator's INFORMATION_SCHEMA says NUMERIC for NUMERIC(12,2), and keeps the
            # scale: a value of more decimals would be rounded); the type the column was
            # created with at the last load says them.
            old = remembered
        if old == new or _unparameterized(old) == new.split("(")[0]:
            # Without a type remembered, a change of parameters cannot be seen there
            # (BigQuery itself reports them).
            continue
        if widens(old, new, kind):
            widened.append(Change("widened", name, old, new))
        else:
            retyped.append(Change("retyped", name, old, new))
    planned_folded = {name.casefold() for name in planned}
    others = [c.name for c in stored.values() if c.name.casefold() not in planned_folded
              and not c.name.startswith("_dlt_") and c.name != SOFT_DELETE_COLUMN]
    left = None if kept is None else {name.casefold() for name in kept}
    # Dealt with by an earlier load: not written by it, and found there by it (where the
    # state says; a column it did not find was added by hand since, and is said once).
    earlier = {name for name in others if wrote is not None and name.casefold() not in wrote
               and (left is None or name.casefold() in left)}
    relax = [name for name in others if not by_folded[name.casefold()].nullable]
    return Evolution(exists=True, added=tuple(added),
                     dropped=tuple(n for n in others if n not in earlier),
                     widened=tuple(widened), retyped=tuple(retyped),
                     relax=tuple(n for n in relax if n.casefold() not in
                                 {k.casefold() for k in keys}),
                     kept=tuple(n for n in others if n in earlier), again=tuple(again),
                     rederived=tuple(rederived))


def _unparameterized(type_: str) -> str | None:
    return type_ if "(" not in type_ else None


def widens(old: str, new: str, kind: str) -> bool:
    """Whether a column of type `old` can become `new` in place without changing a value.

    Integers to wider integers (DuckDB), and decimals (or integers) to decimals with at
    least as many digits before and after the point (both destinations). A timestamp
    without time zone never becomes one with a time zone in place: what instant a
    wall-clock value meant depends on a time zone the destination does not know, so the
    table is reloaded with PostgreSQL's conversion instead.
    """
    if old in _DUCKDB_INTEGERS and new in _DUCKDB_INTEGERS:
        return _DUCKDB_INTEGERS.index(new) > _DUCKDB_INTEGERS.index(old)
    if old == "FLOAT" and new == "DOUBLE":
        return True
    new_decimal = _DECIMAL.match(new)
    if new_decimal is None:
        return False
    new_kind, precision, scale = new_decimal.group(1), int(new_decimal.group(2)), \
        int(new_decimal.group(3))
    old_decimal = _DECIMAL.match(old)
    if old_decimal is not None:
        old_kind, old_precision, old_scale = old_decimal.group(1), int(old_decimal.group(2)), \
            int(old_decimal.group(3))
        if kind == "bigquery" and old_kind == "BIGNUMERIC" and new_kind == "NUMERIC":
            return False
        return scale >= old_scale and precision - scale >= old_precision - old_scale
    digits = _INTEGER_DIGITS.get(old)
    return digits is not None and precision - scale >= digits
