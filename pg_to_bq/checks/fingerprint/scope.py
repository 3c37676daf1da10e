"""What a fingerprint compares (its scope: the whole table, or ranges of its integer key),
how each column is digested (its method), and the constants every side shares."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from pg_to_bq.checks import outcomes as checks
from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.planning.types import ColumnMapping, quote_ident

FINGERPRINT = checks.FINGERPRINT


# Digesting a row costs about what loading it costs (the benchmark's 12-column table, 2
# cores: ~3-4 µs a row in PostgreSQL and ~1-2 µs in DuckDB, against ~3.5 µs for the whole
# load), so only a load's fixed cost pays for comparing every row. Against `load_table` of
# that table alone, a whole-table fingerprint cost 3.5% at 1,000 rows, 9% at 5,000, 13% at
# 10,000, 22% at 20,000, 64% at 100,000 and 118% at 1,000,000; 3 key ranges of 1,000 rows
# cost 5.3% at 10,000 and 20,000 rows, 5.1% at 100,000 and 1.2% at 1,000,000.
DEFAULT_FULL_ROWS = 5_000


DEFAULT_RANGES = 3


DEFAULT_RANGE_ROWS = 1_000


# A Mersenne prime below 2^31: residues fit 31 bits, so their squares (< 2^62) and sums
# of a few of them never overflow a signed 64-bit integer in any of the three systems.
MODULUS = 2_147_483_647
# PostgreSQL's timestamps count microseconds from 2000-01-01; 1970-01-01 is this many before.
PG_EPOCH_US = 946_684_800_000_000
# The bits of the quiet NaN PostgreSQL, DuckDB and Python produce; every NaN digests as it
# (a NaN's sign and payload are not kept the same by every system).
NAN_BITS = 0x7FF8_0000_0000_0000


_INTEGER_KEYS = ("int2", "int4", "int8")


Kind = Literal["duckdb", "bigquery"]


# How each class of column is digested, as shown in the check's metadata.
METHODS: Mapping[str, str] = {
    "integer": "exact: non-null count, Σv, Σ(v mod 2³¹−1)²",
    "boolean": "exact: non-null count, count of true",
    "decimal": "exact: non-null count, Σv, Σ(unscaled v mod 2³¹−1)²",
    "timestamp": "exact: non-null count, Σ and Σ(· mod 2³¹−1)² of microseconds since 2000-01-01",
    "date": "exact: non-null count, Σ and Σ(· mod 2³¹−1)² of days since 1970-01-01",
    "time": "exact: non-null count, Σ and Σ(· mod 2³¹−1)² of microseconds since midnight",
    "float": "exact: non-null count, Σ of the IEEE-754 bits (NaN canonical)",
    "text": "exact: non-null count, Σ of 60-bit MD5 prefixes of the UTF-8 text",
    "bytes": "exact: non-null count, Σ of 60-bit MD5 prefixes of the bytes",
    "count": "non-null count only",
}


_CLASSES: Mapping[str, str] = {
    "int16": "integer", "int32": "integer", "int64": "integer", "bool": "boolean",
    "decimal": "decimal", "timestamptz": "timestamp", "timestamp": "timestamp",
    "date": "date", "time": "time", "float32": "float", "float64": "float",
    "text": "text", "json": "text", "binary": "bytes",
}


@dataclass(frozen=True)
class ColumnDigest:
    """One column reduced: its non-null count and the digest of its values.

    Attributes:
        non_null: Rows in scope where the column is not NULL.
        digest: Exact aggregates of the values (ints, and a Decimal for decimal sums);
            empty when only the non-null count is compared.
        method: The key of `METHODS` that produced the digest.
    """

    non_null: int
    digest: tuple[int | Decimal, ...] = ()
    method: str = "count"


@dataclass(frozen=True)
class Fingerprint:
    """A table in one scope: its rows and its columns' digests by SOURCE column name."""

    rows: int
    columns: Mapping[str, ColumnDigest]
    scope: str


@dataclass(frozen=True)
class Scope:
    """Which rows a fingerprint covers, the same on both sides.

    Attributes:
        description: In words, for the check (`whole table (1,234 rows)`, the ranges, or
            why values are not compared).
        values: False when only rows and non-null counts are compared.
        key / destination_key: The integer primary key's source and destination names
            when the scope is key ranges.
        ranges: Inclusive (low, high) key ranges; empty for the whole table.
    """

    description: str
    values: bool = True
    key: str | None = None
    destination_key: str | None = None
    ranges: tuple[tuple[int, int], ...] = ()

    @property
    def source_where(self) -> str | None:
        """The PostgreSQL WHERE condition (None: every row)."""
        return _ranges_condition(quote_ident(self.key), self.ranges) if self.key else None

    def destination_where(self, kind: Kind) -> str | None:
        """The destination's WHERE condition. A method, not a field: BigQuery reads a
        double-quoted name as a string, so each destination quotes the key its own way."""
        if not self.destination_key:
            return None
        return _ranges_condition(quote_for(kind)(self.destination_key), self.ranges)


def integer_key(plan: TablePlan) -> str | None:
    """The table's primary key column when it is one integer column (smallint, integer,
    bigint); key ranges are taken over it."""
    if len(plan.primary_key) != 1:
        return None
    name = plan.primary_key[0]
    try:
        column = plan.table.column(name)
    except KeyError:
        return None
    return name if (column.base_type_name or column.type_name) in _INTEGER_KEYS else None


def bounds_sql(plan: TablePlan) -> str | None:
    """`SELECT min(key), max(key)` for `scope_for`'s `bounds`; None without an integer key."""
    key = integer_key(plan)
    if key is None:
        return None
    quoted = quote_ident(key)
    return f"SELECT min({quoted}), max({quoted}) FROM {source_table(plan)}"


def scope_for(
    plan: TablePlan,
    table_rows: int,
    seed: str,
    *,
    full_rows: int = DEFAULT_FULL_ROWS,
    ranges: int = DEFAULT_RANGES,
    range_rows: int = DEFAULT_RANGE_ROWS,
    bounds: tuple[int, int] | None = None,
) -> Scope:
    """Which rows to compare for a table of `table_rows` rows.

    Args:
        plan: The table's plan.
        table_rows: Rows in the source table (the extraction snapshot's count).
        seed: Chooses the key ranges; pass something that changes every run (the load
            id), so that over many runs every part of the table is looked at.
        full_rows: Tables with at most this many rows are compared whole.
        ranges: How many key ranges a larger table is sampled in.
        range_rows: About how many rows each range holds (estimated from the key's
            density, `table_rows / (max - min + 1)`).
        bounds: The key's (min, max) in the source (`bounds_sql`); without them a large
            table has only its counts compared.

    Returns:
        The scope: the whole table, key ranges (one in each of `ranges` equal slices of
        the key's span, at a place drawn from `seed`), or counts only.
    """
    if table_rows <= full_rows:
        return Scope(f"whole table ({table_rows:,} rows)")
    key = integer_key(plan)
    if key is None:
        return Scope(
            f"not sampled: no single integer primary key; only the rows and non-null counts "
            f"of the whole table ({table_rows:,} rows) are compared, not values", values=False)
    if bounds is None or bounds[0] is None or bounds[1] is None:
        return Scope(
            f"not sampled: the bounds of key {key} are not known; only the rows and non-null "
            f"counts of the whole table ({table_rows:,} rows) are compared, not values",
            values=False)
    low, high = int(bounds[0]), int(bounds[1])
    span = high - low + 1
    width = max(1, math.ceil(range_rows * span / table_rows))
    if ranges < 1 or width * ranges >= span:
        return Scope(f"whole table ({table_rows:,} rows; key ranges would cover it)")
    stride = span // ranges
    chosen = []
    for index in range(ranges):
        start = low + index * stride + _draw(seed, plan.name, index, stride - width + 1)
        chosen.append((start, start + width - 1))
    shown = ", ".join(f"[{a}, {b}]" for a, b in chosen)
    destination_key = plan.column_for(key).name
    return Scope(
        f"{ranges} ranges of key {key}: {shown} (about {min(range_rows * ranges, table_rows):,} "
        f"of {table_rows:,} rows; seed {seed!r})",
        key=key, destination_key=destination_key, ranges=tuple(chosen))


def _draw(seed: str, table: str, index: int, choices: int) -> int:
    """A number in [0, choices) fixed by seed, table and index (not Python's salted hash)."""
    digest = hashlib.sha256(f"{seed}\0{table}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(choices, 1)


def _ranges_condition(quoted_key: str, ranges: Sequence[tuple[int, int]]) -> str | None:
    # BETWEEN (inclusive) rather than < high + 1: the key's maximum plus one overflows bigint.
    if not ranges:
        return None
    return " OR ".join(f"({quoted_key} BETWEEN {int(a)} AND {int(b)})" for a, b in ranges)


def column_method(column: ColumnMapping) -> str:
    """The `METHODS` key a column is digested with (by its loaded type)."""
    if column.transform == "hash":
        return "count"
    return _CLASSES[column.logical]


def not_compared(plan: TablePlan) -> dict[str, str]:
    """Source columns whose values the fingerprint does not compare, with the reason."""
    reasons = {c.column: f"excluded: not loaded ({c.reason})"
               for c in plan.left_out if c.action == "excluded"}
    for column in plan.columns:
        if column.transform == "hash":
            reasons[column.source.name] = (
                "hashed with a salt that never appears in SQL: only its non-null count is "
                "compared")
    return reasons


def digested(plan: TablePlan, scope: Scope) -> list[tuple[ColumnMapping, str]]:
    return [(c, column_method(c) if scope.values else "count") for c in plan.columns]


def _duckdb_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bigquery_quote(name: str) -> str:
    # A quoted identifier takes the escapes of a string literal in BigQuery.
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_for(kind: str) -> Callable[[str], str]:
    """How `kind` ("duckdb" or "bigquery") quotes an identifier."""
    if kind == "duckdb":
        return _duckdb_quote
    if kind == "bigquery":
        return _bigquery_quote
    raise ValueError(f"unknown destination kind {kind!r} (duckdb or bigquery)")


def source_table(plan: TablePlan) -> str:
    return f"{quote_ident(plan.table.schema)}.{quote_ident(plan.table.name)}"
