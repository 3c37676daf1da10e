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
transaction with the extraction's session settings (`pg_to_bq.extract._SESSION`: the text
of intervals, ranges and the like depends on them) and, to be exact under concurrent
writes, inside the snapshot the rows were extracted in. Rows written to the source after
that snapshot would otherwise show as differences.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pg_to_bq import checks
from pg_to_bq.plan import TablePlan
from pg_to_bq.typemap import ColumnMapping, quote_ident

FINGERPRINT = checks.FINGERPRINT

# Whole tables are compared up to this many rows; larger tables, key ranges. Measured on
# the benchmark's 12-column table (2 cores): digesting every column costs about as much
# per row as loading it, so comparing a whole table fits in 10% of its load only while the
# load's fixed cost dominates (see docs and the module tests for the numbers).
DEFAULT_FULL_ROWS = 20_000
DEFAULT_RANGES = 3
DEFAULT_RANGE_ROWS = 5_000
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
        return _ranges_condition(_quoter(kind)(self.destination_key), self.ranges)


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
    return name if column.type_name in _INTEGER_KEYS else None


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
    """The `METHODS` key a column is digested with."""
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


# -- PostgreSQL ---------------------------------------------------------------------------


def source_sql(plan: TablePlan, scope: Scope, *, server_encoding: str = "UTF8") -> str:
    """One SELECT returning one row: the fingerprint of `plan`'s table in PostgreSQL.

    Args:
        plan: The table's plan (its `select_sql` expressions are what is digested).
        scope: From `scope_for`.
        server_encoding: The database's `server_encoding`. Text is hashed as UTF-8, as it
            was loaded; in a database with another encoding it is converted first.
    """
    return _sql(
        plan, scope, _source_table(plan), scope.source_where,
        lambda column, method: _pg_inner(column, method, server_encoding), _PG_AGGREGATES,
        # OFFSET 0 keeps the subquery from being merged into the aggregate, which would
        # evaluate each per-row expression once per aggregate using it.
        inner_suffix=" OFFSET 0")


def _source_table(plan: TablePlan) -> str:
    return f"{quote_ident(plan.table.schema)}.{quote_ident(plan.table.name)}"


def _pg_inner(column: ColumnMapping, method: str, server_encoding: str) -> list[str]:
    value = f"({column.select_sql})"
    if method == "count":
        # Every select_sql is NULL exactly when its column is: count the column itself.
        return [quote_ident(column.source.name)]
    if method == "integer":
        return [f"{value}::int8"]
    if method == "boolean":
        return [f"{value}::int4"]
    if method == "decimal":
        scale = column.scale or 0
        return [value, f"mod({value} * 1{'0' * scale}::numeric, {MODULUS})::int8"]
    if method == "timestamp":
        # The binary form is exactly the int8 microseconds since 2000-01-01, in every
        # PostgreSQL version (extract(epoch ...) is a double before PostgreSQL 14).
        send = "timestamptz_send" if column.logical == "timestamptz" else "timestamp_send"
        return [f"('x' || encode({send}({value}), 'hex'))::bit(64)::int8"]
    if method == "date":
        return [f"({value} - DATE '1970-01-01')::int8"]
    if method == "time":
        return [f"('x' || encode(time_send({value}), 'hex'))::bit(64)::int8"]
    if method == "float":
        double = f"{value}::float8"
        return [f"CASE WHEN {double} = 'NaN'::float8 THEN {_NAN_BITS} "
                f"ELSE ('x' || encode(float8send({double}), 'hex'))::bit(64)::int8 END"]
    if method == "text":
        text = _pg_text(column, value)
        if server_encoding.upper().replace("-", "") not in ("UTF8", "UNICODE"):
            text = f"convert_to({text}, 'UTF8')"
        return [_pg_md5_60(text)]
    if method == "bytes":
        return [_pg_md5_60(value)]
    raise ValueError(f"no fingerprint method {method!r}")


def _pg_text(column: ColumnMapping, value: str) -> str:
    """The text the extraction loads for a text or JSON column."""
    base = column.source.base_type_name or column.source.type_name
    if column.rule == "text" and base == "bpchar":
        # char(n) loads with its padding (bpchar's output); a cast to text strips it.
        return f"textin(bpcharout({value}))"
    return f"{value}::text"


def _pg_md5_60(value: str) -> str:
    return f"('x' || left(md5({value}), 15))::bit(60)::int8"


def _pg_aggregates(method: str, names: list[str], column: ColumnMapping) -> list[str]:
    first = names[0]
    count = f"count({first})"
    if method == "count":
        return [count]
    if method == "boolean":
        return [count, f"sum({first})"]
    if method in ("float", "text", "bytes"):
        return [count, f"sum({first})"]
    if method == "decimal":
        residue = names[1]
        return [count, f"sum({first})", "0", f"sum({residue} * {residue})"]
    return [count, f"sum({first})", _squares(f"({first} % {MODULUS})", "sum({})")]


_PG_AGGREGATES = _pg_aggregates


def _squares(residue: str, total: str) -> str:
    return total.format(f"{residue} * {residue}")


# -- DuckDB and BigQuery ------------------------------------------------------------------


def destination_sql(plan: TablePlan, kind: Kind, qualified_table: str, scope: Scope) -> str:
    """One SELECT returning one row: the fingerprint of the loaded table.

    Args:
        plan: The table's plan (destination column names and types).
        kind: `duckdb` or `bigquery`.
        qualified_table: The loaded table's name, qualified and quoted for `kind` (what
            dlt's `sql_client.make_qualified_table_name` returns, or `qualified_name`).
        scope: The same scope as the source's.
    """
    inner, aggregates = _destination_parts(kind)
    return _sql(plan, scope, qualified_table, scope.destination_where(kind), inner, aggregates)


def destination_sql_many(items: Sequence[tuple[TablePlan, str, Scope]], kind: Kind) -> str:
    """One query for many tables (one round trip, which matters on BigQuery): a row per
    item, its index in `items` first, then the row `destination_sql` would return, every
    value as text and padded with NULLs to a common width (UNION ALL needs one column
    type per position; `parse` reads the text). Use `split_many` to get the rows back."""
    inner, aggregates = _destination_parts(kind)
    text = "VARCHAR" if kind == "duckdb" else "STRING"
    selects = []
    widths = [1 + sum(len(_outer_for(m, c, aggregates)) for c, m in _digested(p, s))
              for p, _, s in items]
    width = max(widths, default=1)
    for index, (plan, table, scope) in enumerate(items):
        sql = _sql(plan, scope, table, scope.destination_where(kind), inner, aggregates,
                   cast_to=text)
        padding = "".join(f", CAST(NULL AS {text})" for _ in range(width - widths[index]))
        selects.append(f"SELECT {index} AS item{padding_alias(sql, padding)}")
    return " UNION ALL ".join(selects)


def padding_alias(sql: str, padding: str) -> str:
    """`, <columns of sql's SELECT>, <padding> FROM ...`: the item's own query, widened."""
    assert sql.startswith("SELECT ")
    head, separator, tail = sql[len("SELECT "):].partition(" FROM ")
    return f", {head}{padding}{separator}{tail}"


def split_many(rows: Sequence[Sequence[Any]]) -> dict[int, Sequence[Any]]:
    """`destination_sql_many`'s rows by item index, each as `parse` takes it."""
    return {int(row[0]): row[1:] for row in rows}


def qualified_name(kind: Kind, *parts: str) -> str:
    """A destination table name, each part quoted for `kind` (dataset, table; or project,
    dataset, table on BigQuery)."""
    return ".".join(_quoter(kind)(p) for p in parts)


def _quoter(kind: Kind) -> Callable[[str], str]:
    if kind == "duckdb":
        return lambda name: '"' + name.replace('"', '""') + '"'
    if kind == "bigquery":
        # Quoted identifiers take string-literal escapes in BigQuery.
        return lambda name: "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
    raise ValueError(f"unknown destination kind {kind!r} (duckdb or bigquery)")


_Inner = Callable[[ColumnMapping, str], list[str]]
_Aggregates = Callable[[str, list[str], ColumnMapping], list[str]]


def _destination_parts(kind: Kind) -> tuple[_Inner, _Aggregates]:
    if kind == "duckdb":
        return _duckdb_inner, _duckdb_aggregates
    if kind == "bigquery":
        return _bigquery_inner, _bigquery_aggregates
    raise ValueError(f"unknown destination kind {kind!r} (duckdb or bigquery)")


def _duckdb_inner(column: ColumnMapping, method: str) -> list[str]:
    value = _quoter("duckdb")(column.name)
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
        return [f"CAST(date_diff('microsecond', TIME '00:00:00', {value}) AS BIGINT)"]
    if method == "float":
        # DuckDB casts a DOUBLE to its 64 bits, and BIT to BIGINT: the IEEE-754 bits.
        return [f"CASE WHEN isnan({value}) THEN {_NAN_BITS} "
                f"ELSE CAST(CAST(CAST({value} AS DOUBLE) AS BIT) AS BIGINT) END"]
    if method == "text":
        # md5 of VARCHAR (JSON converts to its text) hashes the UTF-8 bytes.
        return [f"CAST('0x' || left(md5(CAST({value} AS VARCHAR)), 15) AS BIGINT)"]
    if method == "bytes":
        return [f"CAST('0x' || left(md5({value}), 15) AS BIGINT)"]
    raise ValueError(f"no fingerprint method {method!r}")


def _duckdb_unscaled(value: str, column: ColumnMapping) -> str:
    """The DECIMAL's unscaled integer as HUGEINT (exact: precision ≤ 38 fits)."""
    precision, scale = column.precision or 38, column.scale or 0
    if precision + scale <= 38:
        # DuckDB multiplies the internal integers: v·10^s·10^s must fit 38 digits.
        return f"CAST({value} * {10 ** scale} AS HUGEINT)"
    return f"CAST(replace(CAST({value} AS VARCHAR), '.', '') AS HUGEINT)"


def _duckdb_aggregates(method: str, names: list[str], column: ColumnMapping) -> list[str]:
    first = names[0]
    count = f"count({first})"
    if method == "count":
        return [count]
    if method == "boolean":
        return [count, f"count_if({first})"]
    if method in ("float", "text", "bytes"):
        return [count, f"sum({first})"]
    if method == "decimal":
        residue = names[1]
        squares = f"sum({residue} * {residue})"
        if (column.precision or 38) <= _DUCKDB_DECIMAL_SUM_PRECISION:
            return [count, f"sum({first})", "0", squares]
        # Integer and fractional parts apart: SUM(DECIMAL(38,s)) overflows at 10^(38-s).
        return [count, f"sum(CAST(trunc({first}) AS HUGEINT))",
                f"sum({first} - trunc({first}))", squares]
    return [count, f"sum({first})", _squares(f"({first} % {MODULUS})", "sum({})")]


def _bigquery_inner(column: ColumnMapping, method: str) -> list[str]:
    # Functions used (all GoogleSQL, https://cloud.google.com/bigquery/docs/reference/
    # standard-sql/functions-and-operators): MD5, TO_HEX, SUBSTR, CAST(hex STRING AS
    # INT64), UNIX_MICROS, UNIX_DATE, TIME_DIFF, IS_NAN, IS_INF, IEEE_DIVIDE, LOG, POW,
    # FLOOR, LEAST, GREATEST, TRUNC, MOD, COUNTIF, SUM over BIGNUMERIC.
    value = _quoter("bigquery")(column.name)
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
    if method == "text":
        return [_bigquery_md5_60(value)]
    if method == "bytes":
        return [_bigquery_md5_60(value)]
    raise ValueError(f"no fingerprint method {method!r}")


def _bigquery_md5_60(value: str) -> str:
    # MD5 of a STRING hashes its UTF-8 bytes; a '0x' STRING casts to INT64 as hex.
    return f"CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5({value})), 1, 15)) AS INT64)"


def _bigquery_unscaled_residue(value: str, scale: int) -> str:
    """(v·10^scale) mod P for a NUMERIC or BIGNUMERIC v, exactly.

    The unscaled integer of a BIGNUMERIC(76,38) has 76 digits, more than BIGNUMERIC
    holds, so it is taken apart: integer part and fraction·10^scale (each fits), each
    reduced mod P, then combined. Both parts carry v's sign, so the result has it too, as
    PostgreSQL's mod() and DuckDB's % give it.
    """
    exact = f"CAST({value} AS BIGNUMERIC)"
    power = f"BIGNUMERIC '1{'0' * scale}'"
    integer = f"TRUNC({exact})"
    fraction = f"(({exact} - {integer}) * {power})"
    factor = pow(10, scale, MODULUS)
    return (f"CAST(MOD(MOD({integer}, {MODULUS}) * {factor} + MOD({fraction}, {MODULUS}), "
            f"{MODULUS}) AS INT64)")


def _bigquery_float_bits(value: str) -> str:
    """The IEEE-754 bits of a FLOAT64 as a signed INT64, from arithmetic alone.

    BigQuery has no bit access to FLOAT64. For |x| = M·2^(E-52) with M a 53-bit integer,
    the bits are (E + 1022)·2^52 + M (the exponent field is E + 1023, and M's leading 1
    is implicit); subnormals have E = -1022 and M < 2^52, which the same formula covers.
    E starts as FLOOR(LOG(|x|, 2)), clamped to the doubles' range so POW never overflows,
    and is corrected by one either way (LOG may round across an integer); dividing by a
    power of two and multiplying by 2^52 are exact, so M is exact.
    """
    magnitude = f"ABS({value})"
    estimate = f"LEAST(GREATEST(FLOOR(LOG({magnitude}, 2)), -1074), 1023)"
    ratio = f"({magnitude} / POW(2, {estimate}))"
    exponent = f"({estimate} + IF({ratio} >= 2, 1, 0) - IF({ratio} < 1, 1, 0))"
    clamped = f"GREATEST({exponent}, -1022)"
    bits = (f"(CAST({clamped} + 1022 AS INT64) * {_TWO_52} "
            f"+ CAST({magnitude} / POW(2, {clamped}) * {_TWO_52} AS INT64))")
    negative_zero = f"IEEE_DIVIDE(1, {value}) < 0"
    return (
        f"CASE WHEN IS_NAN({value}) THEN {_NAN_BITS} "
        f"WHEN IS_INF({value}) THEN IF({value} > 0, {_INF_BITS}, {_INF_BITS - _TWO_63}) "
        f"WHEN {value} = 0 THEN IF({negative_zero}, {-_TWO_63 + 1} - 1, 0) "
        f"WHEN {value} < 0 THEN {bits} - {_TWO_63 - 1} - 1 "
        f"ELSE {bits} END"
    )


def _bigquery_aggregates(method: str, names: list[str], column: ColumnMapping) -> list[str]:
    first = names[0]
    count = f"COUNT({first})"
    # SUM(INT64) overflows INT64; BIGNUMERIC holds 38 integer digits.
    total = "SUM(CAST({} AS BIGNUMERIC))"
    if method == "count":
        return [count]
    if method == "boolean":
        return [count, f"COUNTIF({first})"]
    if method in ("float", "text", "bytes"):
        return [count, total.format(first)]
    if method == "decimal":
        residue = names[1]
        return [count, total.format(first), "0", total.format(f"{residue} * {residue}")]
    return [count, total.format(first), _squares(f"MOD({first}, {MODULUS})", total)]


# -- the query's shape, shared ------------------------------------------------------------


def _outer_for(method: str, column: ColumnMapping, aggregates: _Aggregates) -> list[str]:
    return aggregates(method, ["v"] * 2, column)


def _sql(
    plan: TablePlan,
    scope: Scope,
    table: str,
    where: str | None,
    inner: _Inner,
    aggregates: _Aggregates,
    *,
    inner_suffix: str = "",
    cast_to: str | None = None,
) -> str:
    """`SELECT count(*), <aggregates> FROM (SELECT <per-row values> FROM table WHERE ...)`.

    Per-row values get generated aliases (`v0_0`, ...), so no column name of the table
    can collide with them, and each is computed once however many aggregates use it.
    """
    projections: list[str] = []
    outer = ["count(*)"]
    for index, (column, method) in enumerate(_digested(plan, scope)):
        names = []
        for part, expression in enumerate(inner(column, method)):
            name = f"v{index}_{part}"
            projections.append(f"{expression} AS {name}")
            names.append(name)
        outer.extend(aggregates(method, names, column))
    if cast_to:
        outer = [f"CAST({a} AS {cast_to})" for a in outer]
    condition = f" WHERE {where}" if where else ""
    if not projections:
        return f"SELECT {', '.join(outer)} FROM {table}{condition}"
    return (f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(projections)} "
            f"FROM {table}{condition}{inner_suffix}) AS fingerprint_rows")


# -- reading and comparing ----------------------------------------------------------------


def parse(plan: TablePlan, row: Sequence[Any], scope: Scope) -> Fingerprint:
    """The fingerprint in a row `source_sql` or `destination_sql` returned.

    Values may arrive as int, Decimal, str (`destination_sql_many`) or None (a sum over no
    rows); integers come back as int, decimal sums as Decimal.
    """
    values = list(row)
    rows = _integer(values[0])
    position = 1
    columns: dict[str, ColumnDigest] = {}
    for column, method in _digested(plan, scope):
        width = len(_outer_for(method, column, _pg_aggregates))
        part = values[position:position + width]
        position += width
        non_null = _integer(part[0])
        if method == "decimal":
            total = _decimal(part[1]) + _decimal(part[2])
            digest: tuple[int | Decimal, ...] = (total, _integer(part[3]))
        else:
            digest = tuple(_integer(v) for v in part[1:])
        columns[column.source.name] = ColumnDigest(non_null, digest, method)
    if position != len(values) and any(v is not None for v in values[position:]):
        raise ValueError(f"fingerprint row for {plan.name} has {len(values)} values, "
                         f"expected {position}")
    return Fingerprint(rows=rows, columns=columns, scope=scope.description)


def _integer(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    number = Decimal(str(value)) if not isinstance(value, Decimal) else value
    if number != number.to_integral_value():
        raise ValueError(f"expected an integer aggregate, got {value!r}")
    return int(number)


def _decimal(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
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
        source / destination: Fingerprints of the same scope.
        skipped: Columns whose values are not compared and why (`not_compared(plan)`).
        disposition: The table's; a merged table may hold rows the source has deleted
            since the last delete pass, which makes every column differ: that is a
            warning (as for the row count), not an error.

    Returns:
        A passing outcome, or a failed one (severity ERROR) whose description names each
        differing column and what differed; the metadata has the scope, the compared and
        skipped columns and both sides' values of each differing column.
    """
    differences: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name in sorted(set(source.columns) | set(destination.columns),
                       key=_order(source, destination)):
        ours, theirs = source.columns.get(name), destination.columns.get(name)
        if ours is None or theirs is None:
            differences[name] = {"missing_in": "destination" if theirs is None else "source"}
            problems.append(f"{name} (not in the {'destination' if theirs is None else 'source'} "
                            "fingerprint)")
            continue
        what = []
        if ours.non_null != theirs.non_null:
            what.append(f"non-null count: source {ours.non_null:,}, destination "
                        f"{theirs.non_null:,}")
        if ours.digest != theirs.digest:
            what.append("values differ" if ours.non_null == theirs.non_null
                        else "values differ too")
        if what:
            problems.append(f"{name} ({'; '.join(what)})")
            differences[name] = {
                "method": METHODS.get(ours.method, ours.method),
                "source": _shown(ours), "destination": _shown(theirs)}
    compared = [n for n, d in source.columns.items() if d.method != "count"]
    metadata: dict[str, Any] = {
        "scope": source.scope,
        "rows": {"source": source.rows, "destination": destination.rows},
        "compared_columns": compared,
        "methods": {n: METHODS.get(d.method, d.method) for n, d in source.columns.items()},
        "not_compared": dict(skipped),
    }
    if differences:
        metadata["differences"] = differences
    rows_differ = source.rows != destination.rows
    if not problems and not rows_differ:
        note = "" if not skipped else f"; not compared: {', '.join(skipped)}"
        values = (f"values of {len(compared)} column(s)" if compared
                  else "non-null counts (values not compared)")
        return checks.CheckOutcome(
            FINGERPRINT, True, "ERROR", f"{values} match the source over {source.scope}{note}",
            metadata)
    parts = []
    if rows_differ:
        parts.append(f"rows in scope: source {source.rows:,}, destination {destination.rows:,}")
    if problems:
        parts.append(f"{len(problems)} of {len(source.columns)} column(s) differ: "
                     + ", ".join(problems))
    description = "; ".join(parts) + f" (scope: {source.scope})"
    if disposition == "merge" and destination.rows > source.rows:
        return checks.CheckOutcome(
            FINGERPRINT, False, "WARN",
            f"the destination holds {destination.rows - source.rows:,} more row(s) in scope "
            "than the source (rows deleted in the source since the last delete pass), so "
            f"values cannot be compared until that pass runs: {description}", metadata)
    return checks.CheckOutcome(FINGERPRINT, False, "ERROR", description, metadata)


def _order(source: Fingerprint, destination: Fingerprint) -> Callable[[str], int]:
    """Columns in the table's order (the source fingerprint's), extra ones last."""
    position = {name: i for i, name in enumerate([*source.columns, *destination.columns])}
    return lambda name: position[name]


def _shown(digest: ColumnDigest) -> dict[str, Any]:
    # Text for the aggregates: they exceed JSON's safe integers, and Decimal is not JSON.
    return {"non_null": digest.non_null, "digest": [str(v) for v in digest.digest]}


__all__ = [
    "DEFAULT_FULL_ROWS",
    "DEFAULT_RANGES",
    "DEFAULT_RANGE_ROWS",
    "FINGERPRINT",
    "METHODS",
    "ColumnDigest",
    "Fingerprint",
    "Scope",
    "bounds_sql",
    "column_method",
    "compare",
    "destination_sql",
    "destination_sql_many",
    "field",
    "integer_key",
    "not_compared",
    "parse",
    "qualified_name",
    "scope_for",
    "source_sql",
    "split_many",
]
