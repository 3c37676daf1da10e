"""Value reconciliation of a loaded table against its PostgreSQL source ("fingerprint").

Row counts say every row arrived; they do not say the values did. A fingerprint reduces
each loaded column, on both sides, to its non-null count and an exact, order-independent
digest of its values, computed by one SQL query in PostgreSQL and one in the destination
(DuckDB or BigQuery). Equal fingerprints mean equal multisets of values per column; a
value changed, lost to NULL or rounded changes its column's digest, and the check names
that column.

How each column is digested is decided by the loaded type (`ColumnMapping.logical`). Every
digest is built from integers the three systems compute identically, summed exactly
(PostgreSQL `numeric`, DuckDB `HUGEINT`, BigQuery `BIGNUMERIC`), so the order of the
rows and the engines' parallelism never change a digest:

- integers: the value `c`; digest Σc and Σ(c mod P)², P = 2³¹−1. Σc changes with any
  single value; the sum of squares also catches changes that cancel in Σc (one value up
  by d, another down by d), except values swapped between rows (the same multiset).
- bool: the number of `true`.
- decimal: Σv exactly and Σ(u mod P)² of the unscaled integer u = v·10^scale.
- timestamps: `c` = microseconds since 2000-01-01 (PostgreSQL's binary form; DuckDB
  `epoch_us`, BigQuery `UNIX_MICROS`), digested like integers; dates as days since
  1970-01-01, times as microseconds since midnight.
- floats: `c` = the IEEE-754 bits of the double as a signed 64-bit integer (PostgreSQL
  `float8send`; DuckDB `CAST(x AS BIT)`; BigQuery, which has no bit access, rebuilds
  them exactly from exponent and mantissa), every NaN as the one canonical quiet NaN;
  digest Σc. Exact: 0.1 and 0.1 + 1 ulp differ, -0 and 0 differ, float32 rounding shows.
  (Summing the floats themselves depends on the order of the rows; their text forms
  differ between the systems: BigQuery documents its FLOAT64 → STRING cast as
  approximate.)
- text, JSON and everything read as text (uuid, interval, enums, arrays as JSON,
  numeric too wide for the destination, ...): `h` = the first 15 hex digits of the MD5 of
  the value's UTF-8 bytes, a 60-bit integer; digest Σh. Binary: the same over the bytes.
- hashed columns (`hash: true`): the salt never appears in SQL, so their values cannot
  be compared; their non-null counts are (a salted hash is NULL exactly when the value
  is). They are listed as not compared, with the reason.

What is compared ("scope") depends on the table's size: the whole table up to
`full_rows` rows; above, `ranges` ranges of about `range_rows` rows each of a
single-column integer primary key, placed by a seed (pass the load id, so successive
runs look at different rows); a large table without such a key has only its rows and
non-null counts compared, over the whole table, and the scope says so.

The PostgreSQL query reads each column through `ColumnMapping.select_sql`, the
expression the extraction copies, so it digests exactly what was loaded. Run it in a
transaction with the extraction's session settings (`pg_to_bq.postgres.reader.SESSION`: the text
of intervals, ranges and the like depends on them) and, to be exact under concurrent
writes, inside the snapshot the rows were extracted in. Rows written to the source after
that snapshot would otherwise show as differences.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

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
_INTEGER_KEYS = ("int2", "int4", "int8")
# PostgreSQL's timestamps count microseconds from 2000-01-01; 1970-01-01 is this many before.
_PG_EPOCH_US = 946_684_800_000_000
# The bits of the quiet NaN PostgreSQL, DuckDB and Python produce; every NaN digests as it
# (a NaN's sign and payload are not kept the same by every system).
_NAN_BITS = 0x7FF8_0000_0000_0000
_INF_BITS = 0x7FF0_0000_0000_0000
_TWO_52 = 2**52
_TWO_63 = 2**63
# In DuckDB, SUM over DECIMAL(p,s) returns DECIMAL(38,s) and fails on overflow; below
# this precision ten billion rows fit, above it the integer parts are summed as HUGEINT.
_DUCKDB_DECIMAL_SUM_PRECISION = 28

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
        return _ranges_condition(_dialect(kind).quote(self.destination_key), self.ranges)


# -- scope -------------------------------------------------------------------------------


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
    return f"SELECT min({quoted}), max({quoted}) FROM {_source_table(plan)}"


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


# -- which columns, how ------------------------------------------------------------------


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


def _digested(plan: TablePlan, scope: Scope) -> list[tuple[ColumnMapping, str]]:
    return [(c, column_method(c) if scope.values else "count") for c in plan.columns]


# Aggregates per method, in this order on every side: the non-null count, then the digest.
_WIDTHS: Mapping[str, int] = {"count": 1, "boolean": 2, "float": 2, "text": 2, "bytes": 2,
                              "decimal": 4, "integer": 3, "timestamp": 3, "date": 3, "time": 3}

# Methods digesting Σc and Σ(c mod P)² of one canonical integer c per row.
_RESIDUES = frozenset({"integer", "timestamp", "date", "time"})

_Inner = Callable[[ColumnMapping, str], list[str]]
_Aggregates = Callable[[str, list[str], ColumnMapping], list[str]]


@dataclass(frozen=True)
class _Dialect:
    """How one system computes the per-row canonical values and their aggregates."""

    quote: Callable[[str], str]
    inner: _Inner
    aggregates: _Aggregates
    residue: str  # `c mod P` (the sign of c's), `{}` standing for c


# -- PostgreSQL ---------------------------------------------------------------------------


def source_sql(plan: TablePlan, scope: Scope, *, server_encoding: str = "UTF8") -> str:
    """One SELECT returning one row: the fingerprint of `plan`'s table in PostgreSQL.

    Run it with the extraction's session settings, in its snapshot if possible (see the
    module's docstring).

    Args:
        plan: The table's plan (its `select_sql` expressions are what is digested).
        scope: From `scope_for`.
        server_encoding: The database's `server_encoding`. Text is hashed as the UTF-8 it
            was loaded as; in a database with another encoding it is converted first.
    """
    utf8 = server_encoding.upper().replace("-", "").replace("_", "") in ("UTF8", "UNICODE")
    dialect = _Dialect(quote_ident, lambda c, m: _pg_inner(c, m, utf8), _pg_aggregates,
                       f"({{}} % {MODULUS})")
    # OFFSET 0 keeps PostgreSQL from merging the subquery into the aggregate, which would
    # compute each per-row value again for every aggregate using it.
    select, source = _select(plan, scope, dialect, _source_table(plan), scope.source_where,
                             inner_suffix=" OFFSET 0")
    return f"SELECT {', '.join(select)} FROM {source}"


def _source_table(plan: TablePlan) -> str:
    return f"{quote_ident(plan.table.schema)}.{quote_ident(plan.table.name)}"


def _pg_inner(column: ColumnMapping, method: str, utf8: bool) -> list[str]:
    value = f"({column.select_sql})"
    if method == "count":
        # Every select_sql, and a salted hash, is NULL exactly when its column is.
        return [quote_ident(column.source.name)]
    if method == "integer":
        return [f"{value}::int8"]
    if method == "boolean":
        return [f"{value}::int4"]
    if method == "decimal":
        power = "1" + "0" * (column.scale or 0)
        return [value, f"mod({value} * {power}::numeric, {MODULUS})::int8"]
    if method == "timestamp":
        # The binary form is the int8 of microseconds since 2000-01-01 in every version
        # (extract(epoch ...) is a double, inexact, before PostgreSQL 14, and slower after).
        send = "timestamptz_send" if column.logical == "timestamptz" else "timestamp_send"
        return [_pg_int8_of_bytes(f"{send}({value})")]
    if method == "date":
        return [f"({value} - DATE '1970-01-01')::int8"]
    if method == "time":
        return [_pg_int8_of_bytes(f"time_send({value})")]
    if method == "float":
        double = f"{value}::float8"  # a real widens exactly, as it does on its way to a double
        return [f"CASE WHEN {double} = 'NaN'::float8 THEN {_NAN_BITS} "
                f"ELSE {_pg_int8_of_bytes(f'float8send({double})')} END"]
    if method == "text":
        text = _pg_text(column, value)
        return [_pg_md5_60(text if utf8 else f"convert_to({text}, 'UTF8')")]
    if method == "bytes":
        return [_pg_md5_60(value)]
    raise ValueError(f"no fingerprint method {method!r}")


def _pg_int8_of_bytes(eight_bytes: str) -> str:
    return f"('x' || encode({eight_bytes}, 'hex'))::bit(64)::int8"


def _pg_text(column: ColumnMapping, value: str) -> str:
    """The text the extraction loads for a text or JSON column."""
    base = column.source.base_type_name or column.source.type_name
    if column.rule == "text" and base == "bpchar":
        # char(n) loads with its padding (binary COPY sends it); a cast to text strips it.
        return f"textin(bpcharout({value}))"
    return f"{value}::text"


def _pg_md5_60(value: str) -> str:
    return f"('x' || left(md5({value}), 15))::bit(60)::int8"


def _pg_aggregates(method: str, names: list[str], column: ColumnMapping) -> list[str]:
    # sum(int8) is numeric in PostgreSQL: exact at any size.
    return _generic_aggregates(method, names, "count({})", "sum({})", "sum({})")


def _generic_aggregates(method: str, names: list[str], count: str, total: str,
                        trues: str) -> list[str]:
    """Per method: the non-null count, then the digest (`_WIDTHS` values in all).

    `names` are the per-row values: [c] or [c, c mod P]; for decimals [v, u mod P].
    """
    value = names[0]
    first = [count.format(value)]
    if method == "count":
        return first
    if method == "boolean":
        return [*first, trues.format(value)]
    if method in ("float", "text", "bytes"):
        return [*first, total.format(value)]
    squares = total.format(f"{names[1]} * {names[1]}")
    if method == "decimal":
        return [*first, total.format(value), "0", squares]
    return [*first, total.format(value), squares]


# -- DuckDB and BigQuery ------------------------------------------------------------------


def destination_sql(plan: TablePlan, kind: Kind, qualified_table: str, scope: Scope) -> str:
    """One SELECT returning one row: the fingerprint of the loaded table.

    Args:
        plan: The table's plan (destination column names and types).
        kind: `duckdb` or `bigquery`.
        qualified_table: The loaded table, qualified and quoted for `kind` (as dlt's
            `sql_client.make_qualified_table_name` or `qualified_name` returns it).
        scope: The scope the source side was computed over.
    """
    select, source = _select(plan, scope, _dialect(kind), qualified_table,
                             scope.destination_where(kind))
    return f"SELECT {', '.join(select)} FROM {source}"


def destination_sql_many(items: Sequence[tuple[TablePlan, str, Scope]], kind: Kind) -> str:
    """One query for many tables (one round trip, which matters on BigQuery).

    Returns a row per item: its index in `items`, then the values `destination_sql` would
    return, as text and padded with NULLs to a common width (UNION ALL needs one type per
    column; DuckDB would otherwise unify HUGEINT and DECIMAL as DOUBLE). An index rather
    than the table's name: nothing from the catalog needs quoting as a string literal.
    `split_many` gives each item's row to `parse`.
    """
    dialect = _dialect(kind)
    text = "VARCHAR" if kind == "duckdb" else "STRING"
    parts = [_select(plan, scope, dialect, table, scope.destination_where(kind))
             for plan, table, scope in items]
    width = max((len(select) for select, _ in parts), default=1)
    selects = []
    for index, (select, source) in enumerate(parts):
        values = [f"CAST({v} AS {text})" for v in select]
        values += [f"CAST(NULL AS {text})"] * (width - len(select))
        selects.append(f"SELECT {index} AS item, {', '.join(values)} FROM {source}")
    return " UNION ALL ".join(selects)


def split_many(rows: Sequence[Sequence[Any]]) -> dict[int, Sequence[Any]]:
    """`destination_sql_many`'s rows by item index, each as `parse` takes it."""
    return {int(row[0]): tuple(row[1:]) for row in rows}


def qualified_name(kind: Kind, *parts: str) -> str:
    """A destination table's name, each part quoted for `kind`: dataset and table, or
    project, dataset and table on BigQuery."""
    return ".".join(_dialect(kind).quote(p) for p in parts)


def _duckdb_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bigquery_quote(name: str) -> str:
    # A quoted identifier takes the escapes of a string literal in BigQuery.
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _dialect(kind: str) -> _Dialect:
    if kind == "duckdb":
        return _Dialect(_duckdb_quote, _duckdb_inner, _duckdb_aggregates, f"({{}} % {MODULUS})")
    if kind == "bigquery":
        return _Dialect(_bigquery_quote, _bigquery_inner, _bigquery_aggregates,
                        f"MOD({{}}, {MODULUS})")
    raise ValueError(f"unknown destination kind {kind!r} (duckdb or bigquery)")


def _duckdb_inner(column: ColumnMapping, method: str) -> list[str]:
    value = _duckdb_quote(column.name)
    if method in ("count", "boolean"):
        return [value]
    if method == "integer":
        return [f"CAST({value} AS BIGINT)"]
    if method == "decimal":
        return [value, f"CAST({_duckdb_unscaled(value, column)} % {MODULUS} AS BIGINT)"]
    if method == "timestamp":
        return [f"epoch_us({value}) - {_PG_EPOCH_US}"]
    if method == "date":
        return [f"CAST({value} - DATE '1970-01-01' AS BIGINT)"]
    if method == "time":
        return [f"date_diff('microsecond', TIME '00:00:00', {value})"]
    if method == "float":
        # A DOUBLE casts to BIT as its 64 bits, and BIT to BIGINT: the IEEE-754 bits.
        return [f"CASE WHEN isnan({value}) THEN {_NAN_BITS} "
                f"ELSE CAST(CAST(CAST({value} AS DOUBLE) AS BIT) AS BIGINT) END"]
    if method == "text":
        # md5 of a VARCHAR hashes its UTF-8 bytes; a JSON column casts to its exact text.
        return [f"CAST('0x' || left(md5(CAST({value} AS VARCHAR)), 15) AS BIGINT)"]
    if method == "bytes":
        return [f"CAST('0x' || left(md5({value}), 15) AS BIGINT)"]
    raise ValueError(f"no fingerprint method {method!r}")


def _duckdb_unscaled(value: str, column: ColumnMapping) -> str:
    """The DECIMAL's unscaled integer (v·10^scale) as HUGEINT, exactly."""
    precision, scale = column.precision or 38, column.scale or 0
    if precision + scale <= 38:
        # DuckDB multiplies the unscaled integers: v·10^s is held as v·10^s·10^s.
        return f"CAST({value} * {10 ** scale} AS HUGEINT)"
    # Wider: the decimal's text without its point (38 digits fit a HUGEINT).
    return f"CAST(replace(CAST({value} AS VARCHAR), '.', '') AS HUGEINT)"


def _duckdb_aggregates(method: str, names: list[str], column: ColumnMapping) -> list[str]:
    # SUM(BIGINT) is a HUGEINT: exact for 2^64 rows of 63-bit values.
    aggregates = _generic_aggregates(method, names, "count({})", "sum({})", "count_if({})")
    if method == "decimal" and (column.precision or 38) > _DUCKDB_DECIMAL_SUM_PRECISION:
        # SUM(DECIMAL(p,s)) is a DECIMAL(38,s) and fails above 10^(38-s): sum the integer
        # parts as HUGEINT and the fractions apart (parse adds them).
        value = names[0]
        aggregates[1:3] = [f"sum(CAST(trunc({value}) AS HUGEINT))",
                           f"sum({value} - trunc({value}))"]
    return aggregates


def _bigquery_inner(column: ColumnMapping, method: str) -> list[str]:
    # Every function is GoogleSQL's (cloud.google.com/bigquery/docs/reference/standard-sql/):
    # MD5, TO_HEX, SUBSTR, CONCAT and CAST of a '0x' hex STRING to INT64 (string and
    # conversion functions); UNIX_MICROS, UNIX_DATE, TIME_DIFF (date and time functions);
    # IS_NAN, IS_INF, IEEE_DIVIDE, LOG, POW, FLOOR, ABS, LEAST, GREATEST, TRUNC, MOD
    # (mathematical functions); COUNT, COUNTIF, SUM over BIGNUMERIC (aggregate functions).
    value = _bigquery_quote(column.name)
    if method in ("count", "boolean"):
        return [value]
    if method == "integer":
        return [f"CAST({value} AS INT64)"]
    if method == "decimal":
        return [value, _bigquery_unscaled_residue(value, column.scale or 0)]
    if method == "timestamp":
        # dlt creates naive timestamps as TIMESTAMP too (the same digits, labelled UTC).
        return [f"UNIX_MICROS({value}) - {_PG_EPOCH_US}"]
    if method == "date":
        return [f"UNIX_DATE({value})"]
    if method == "time":
        return [f"TIME_DIFF({value}, TIME '00:00:00', MICROSECOND)"]
    if method == "float":
        return [_bigquery_float_bits(value)]
    if method in ("text", "bytes"):
        # MD5 of a STRING hashes its UTF-8 bytes; MD5 of BYTES, the bytes.
        return [f"CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5({value})), 1, 15)) AS INT64)"]
    raise ValueError(f"no fingerprint method {method!r}")


def _bigquery_unscaled_residue(value: str, scale: int) -> str:
    """(v·10^scale) mod P of a NUMERIC or BIGNUMERIC v, exactly.

    A BIGNUMERIC(76,38)'s unscaled integer has 76 digits, more than BIGNUMERIC holds, so
    it is taken apart: the integer part and the fraction·10^scale (each fits), each reduced
    mod P, then combined. Both parts carry v's sign, so the result has it too, as
    PostgreSQL's mod() and DuckDB's % give it.
    """
    exact = f"CAST({value} AS BIGNUMERIC)"
    integer = f"TRUNC({exact})"
    fraction = f"(({exact} - {integer}) * BIGNUMERIC '1{'0' * scale}')"
    factor = pow(10, scale, MODULUS)
    return (f"CAST(MOD(MOD({integer}, {MODULUS}) * {factor} + MOD({fraction}, {MODULUS}), "
            f"{MODULUS}) AS INT64)")


def _bigquery_float_bits(value: str) -> str:
    """The IEEE-754 bits of a FLOAT64 as a signed INT64, from arithmetic alone.

    BigQuery has no bit access to a FLOAT64. With |x| = M·2^(E-52), M a 53-bit integer,
    the bits of |x| are (E + 1022)·2^52 + M (the exponent field is E + 1023 and M's
    leading 1 is implicit); subnormals have E = -1022 and M < 2^52, which the same
    formula covers. E starts as FLOOR(LOG(|x|, 2)), clamped to the doubles' exponents so
    POW never overflows, and is corrected by one either way (LOG may round across an
    integer); dividing by a power of two and multiplying by 2^52 are exact, so M is.
    Negative numbers set the sign bit (subtract 2^63), as the signed bits do elsewhere.
    """
    magnitude = f"ABS({value})"
    estimate = f"LEAST(GREATEST(FLOOR(LOG({magnitude}, 2)), -1074), 1023)"
    ratio = f"({magnitude} / POW(2, {estimate}))"
    exponent = f"GREATEST({estimate} + IF({ratio} >= 2, 1, 0) - IF({ratio} < 1, 1, 0), -1022)"
    bits = (f"(CAST({exponent} + 1022 AS INT64) * {_TWO_52} "
            f"+ CAST({magnitude} / POW(2, {exponent}) * {_TWO_52} AS INT64))")
    sign = f"{_TWO_63 - 1} - 1"  # 2^63 itself is no INT64 literal
    return (
        f"CASE WHEN IS_NAN({value}) THEN {_NAN_BITS} "
        f"WHEN IS_INF({value}) THEN IF({value} > 0, {_INF_BITS}, {_INF_BITS} - {sign}) "
        # -0 = 0, but 1 / -0 is -inf
        f"WHEN {value} = 0 THEN IF(IEEE_DIVIDE(1, {value}) < 0, -{sign}, 0) "
        f"WHEN {value} < 0 THEN {bits} - {sign} "
        f"ELSE {bits} END"
    )


def _bigquery_aggregates(method: str, names: list[str], column: ColumnMapping) -> list[str]:
    # SUM(INT64) fails on overflow; a BIGNUMERIC sum holds 38 integer digits.
    return _generic_aggregates(method, names, "COUNT({})", "SUM(CAST({} AS BIGNUMERIC))",
                               "COUNTIF({})")


# -- the query's shape, shared ------------------------------------------------------------


def _select(plan: TablePlan, scope: Scope, dialect: _Dialect, table: str,
            where: str | None, inner_suffix: str = "") -> tuple[list[str], str]:
    """The select list and FROM clause of the fingerprint query:

        SELECT count(*), <aggregates>
        FROM (SELECT <values>, <residues of values> FROM
              (SELECT <per-row canonical values> FROM table WHERE ...) AS fingerprint_values
             ) AS fingerprint_rows

    Per-row values get generated aliases (`v0_0`, `r0`, ...), so no column of the table
    can collide with them, and each is computed once however many aggregates use it. The
    residues (`c mod P`) have a level of their own, so the squares multiply two column
    references: the BigQuery emulator's translation drops the parentheses of
    `MOD(c, P) * MOD(c, P)`.
    """
    values: list[str] = []
    passed: list[str] = []
    select = ["count(*)"]
    for index, (column, method) in enumerate(_digested(plan, scope)):
        names = []
        for part, expression in enumerate(dialect.inner(column, method)):
            names.append(f"v{index}_{part}")
            values.append(f"{expression} AS {names[-1]}")
            passed.append(names[-1])
        if method in _RESIDUES:
            names.append(f"r{index}")
            passed.append(f"{dialect.residue.format(names[0])} AS {names[-1]}")
        select.extend(dialect.aggregates(method, names, column))
    condition = f" WHERE {where}" if where else ""
    if not values:
        return select, f"{table}{condition}"
    inner = f"SELECT {', '.join(values)} FROM {table}{condition}{inner_suffix}"
    return select, (f"(SELECT {', '.join(passed)} FROM ({inner}) AS fingerprint_values) "
                    "AS fingerprint_rows")


# -- reading and comparing ----------------------------------------------------------------


def parse(plan: TablePlan, row: Sequence[Any], scope: Scope) -> Fingerprint:
    """The fingerprint in a row that `source_sql` or `destination_sql` returned.

    Values may arrive as int, Decimal, str (`destination_sql_many`) or None (a sum over no
    rows); the digest holds ints, and a Decimal for a decimal column's sum.

    Raises:
        ValueError: the row does not have the plan's shape.
    """
    digested = _digested(plan, scope)
    expected = 1 + sum(_WIDTHS[m] for _, m in digested)
    values = list(row)
    if len(values) < expected or any(v is not None for v in values[expected:]):
        raise ValueError(f"a fingerprint row of {plan.name} has {expected} values, not "
                         f"{len(values)}")
    position = 1
    columns: dict[str, ColumnDigest] = {}
    for column, method in digested:
        part = values[position:position + _WIDTHS[method]]
        position += _WIDTHS[method]
        digest: tuple[int | Decimal, ...]
        if method == "decimal":
            digest = (_decimal(part[1]) + _decimal(part[2]), _integer(part[3]))
        else:
            digest = tuple(_integer(v) for v in part[1:])
        columns[column.source.name] = ColumnDigest(_integer(part[0]), digest, method)
    return Fingerprint(rows=_integer(values[0]), columns=columns, scope=scope.description)


def _integer(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    number = _decimal(value)
    if number != number.to_integral_value():
        raise ValueError(f"an integer aggregate was {value!r}")
    return int(number)


def _decimal(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, float):
        raise ValueError(f"an exact aggregate came back as a float ({value!r})")
    return value if isinstance(value, Decimal) else Decimal(str(value))


def compare(
    source: Fingerprint,
    destination: Fingerprint,
    *,
    skipped: Mapping[str, str],
    disposition: str = "replace",
) -> checks.CheckOutcome:
    """Source against destination fingerprint: the `values_match_source` check.

    Args:
        source / destination: Fingerprints over the same scope.
        skipped: Columns whose values are not compared, and why (`not_compared(plan)`).
        disposition: The table's. A merged table may hold rows deleted in the source since
            the last delete pass, which changes every column: a warning, as for the row
            count, not an error.

    Returns:
        A passing outcome, or a failed one (severity ERROR) whose description names each
        differing column and what differed. The metadata holds the scope, the rows, the
        compared and skipped columns with their methods, and both sides' values for each
        differing column.
    """
    names = list(dict.fromkeys([*source.columns, *destination.columns]))
    problems: list[str] = []
    differences: dict[str, Any] = {}
    for name in names:
        ours, theirs = source.columns.get(name), destination.columns.get(name)
        if ours is None or theirs is None:
            side = "destination" if theirs is None else "source"
            problems.append(f"{name} (not in the {side} fingerprint)")
            differences[name] = {"missing_in": side}
            continue
        what = []
        if ours.non_null != theirs.non_null:
            what.append(f"non-null count: source {ours.non_null:,}, destination "
                        f"{theirs.non_null:,}")
        if ours.digest != theirs.digest or ours.method != theirs.method:
            what.append("values differ too" if what else "values differ")
        if what:
            problems.append(f"{name} ({'; '.join(what)})")
            differences[name] = {"method": METHODS[ours.method], "source": _shown(ours),
                                 "destination": _shown(theirs)}
    compared = [n for n, d in source.columns.items() if d.method != "count"]
    metadata: dict[str, Any] = {
        "scope": source.scope,
        "rows": {"source": source.rows, "destination": destination.rows},
        "compared_columns": compared,
        "methods": {n: METHODS[d.method] for n, d in source.columns.items()},
        "not_compared": dict(skipped),
    }
    if differences:
        metadata["differences"] = differences
    unchecked = f"; not compared: {', '.join(skipped)}" if skipped else ""
    if not problems and source.rows == destination.rows:
        what = (f"values of {len(compared)} column(s)" if compared
                else "non-null counts (values not compared)")
        return checks.CheckOutcome(
            FINGERPRINT, True, "ERROR",
            f"{what} match the source over {source.scope}{unchecked}", metadata)
    parts = []
    if source.rows != destination.rows:
        parts.append(f"rows in scope: source {source.rows:,}, destination {destination.rows:,}")
    if problems:
        parts.append(f"{len(problems)} of {len(names)} column(s) differ: {', '.join(problems)}")
    description = "; ".join(parts) + f" (scope: {source.scope}){unchecked}"
    if disposition == "merge" and destination.rows > source.rows:
        return checks.CheckOutcome(
            FINGERPRINT, False, "WARN",
            f"the destination holds {destination.rows - source.rows:,} more row(s) in scope "
            "than the source (rows deleted in the source since the last delete pass), so "
            f"values cannot be compared until that pass runs: {description}", metadata)
    return checks.CheckOutcome(FINGERPRINT, False, "ERROR", description, metadata)


def _shown(digest: ColumnDigest) -> dict[str, Any]:
    # The aggregates as text: they exceed JSON's safe integers, and a Decimal is no JSON.
    return {"non_null": digest.non_null, "digest": [str(v) for v in digest.digest]}
