"""The exact map from PostgreSQL types to Arrow, dlt and the destinations.

Each PostgreSQL column becomes a `ColumnMapping`: the SQL expression that reads it (a
cast where the wire type is not the one we want), the Arrow type of the batches sent to
dlt, the dlt column hints, the destination types, and the value checks that make a load
fail rather than change a value. `TYPE_RULES` is the table of rules with their reasons;
docs/type-map.md shows the same table (`render_type_rules()` writes it, a test keeps the
two equal), and every mapping names the rule it applied in `ColumnMapping.rule`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pg_to_bq.planning.catalog import Column
from pg_to_bq.planning.type_rules import RULES

if TYPE_CHECKING:
    import pyarrow as pa

# BigQuery NUMERIC holds up to 29 integer digits and 9 decimals; BIGNUMERIC 38 and 38.
BQ_NUMERIC_INT_DIGITS, BQ_NUMERIC_SCALE = 29, 9
BQ_BIGNUMERIC_INT_DIGITS, BQ_BIGNUMERIC_SCALE = 38, 38
DUCKDB_MAX_DECIMAL_PRECISION = 38

# Wire types the extractor receives natively (PostgreSQL binary COPY → Arrow).
_INTEGERS = {"int2": "int16", "int4": "int32", "int8": "int64"}
_FLOATS = {"float4": "float32", "float8": "float64"}
_TEXT = {"text", "varchar", "bpchar", "name", "char"}
_JSON = {"json", "jsonb"}
_NETWORK = {"inet", "cidr", "macaddr", "macaddr8"}
_BITS = {"bit", "varbit"}
_TEXT_SEARCH = {"tsvector", "tsquery"}
_NUMERIC_TYPMOD = re.compile(r"^numeric\((\d+)(?:,(-?\d+))?\)$")
# True (as text naming the bounds) when a dimension of the array does not start at 1.
# to_jsonb() drops lower bounds, so such a value would change silently.
_ARRAY_BOUNDS_GUARD = (
    "CASE WHEN regexp_replace(array_dims({expr}), '\\[1:-?[0-9]+\\]', '', 'g') <> '' "
    "THEN 'array with bounds ' || array_dims({expr}) "
    "|| ' (JSON arrays always start at index 1)' END"
)







@dataclass(frozen=True)
class ColumnMapping:
    """How one source column is read, checked and loaded.

    Attributes:
        source: The PostgreSQL column.
        name: The destination column name.
        logical: Our logical type: int16/int32/int64, float32/float64, bool, text, decimal,
            timestamptz, timestamp, date, time, json or binary.
        select_sql: The SQL expression for the COPY query (identifiers already quoted).
        arrow_type: The Arrow type of the batches sent to dlt.
        precision / scale: For decimals.
        checks: Value checks applied to every batch (see `pg_to_bq.postgres.reader`).
        rule: The key of the `TYPE_RULES` row applied (a row of docs/type-map.md).
        transform: `hash` when the column is replaced by a salted hash.
        bigquery_type / duckdb_type: The column type in each destination.
        guard_sql: An SQL expression read next to the value: NULL when the value loads
            unchanged, else text saying why it cannot (the table then fails).
    """

    source: Column
    name: str
    logical: str
    select_sql: str
    precision: int | None = None
    scale: int | None = None
    checks: tuple[str, ...] = ()
    rule: str = ""
    transform: str | None = None
    bigquery_type: str = ""
    duckdb_type: str = ""
    guard_sql: str | None = None
    destination: str = "duckdb"

    def dlt_hint(self) -> dict[str, Any]:
        """The dlt column schema for this column."""
        # Nullable in the destination whatever PostgreSQL says (the column metadata shows
        # PostgreSQL's constraint): a column dropped in PostgreSQL stays in the destination,
        # NULL for rows loaded from then on (`pg_to_bq.planning.evolution`). dlt keeps primary key
        # columns NOT NULL itself.
        hint: dict[str, Any] = {"name": self.name, "nullable": True}
        hint.update(_DLT_TYPES[self.logical])
        if self.logical == "json" and self.destination == "bigquery":
            # BigQuery batch-loads its JSON type only from CSV/JSONL/Avro, never parquet, and
            # parses JSON numbers as FLOAT64; the exact JSON text goes to a STRING column,
            # which JSON_VALUE/JSON_QUERY read directly (PARSE_JSON gives the JSON type).
            hint["data_type"] = "text"
        if self.logical == "decimal":
            hint["precision"], hint["scale"] = self.precision, self.scale
        if self.source.comment:
            hint["description"] = self.source.comment
        return hint

    @property
    def arrow_type(self) -> pa.DataType:
        return arrow_type_of(self.logical, self.precision, self.scale)

    def destination_type(self, destination: str) -> str:
        return self.bigquery_type if destination == "bigquery" else self.duckdb_type


_DLT_TYPES: Mapping[str, dict[str, Any]] = {
    "int16": {"data_type": "bigint", "precision": 16},
    "int32": {"data_type": "bigint", "precision": 32},
    "int64": {"data_type": "bigint", "precision": 64},
    "float32": {"data_type": "double"},
    "float64": {"data_type": "double"},
    "bool": {"data_type": "bool"},
    "text": {"data_type": "text"},
    "decimal": {"data_type": "decimal"},
    "timestamptz": {"data_type": "timestamp", "timezone": True, "precision": 6},
    "timestamp": {"data_type": "timestamp", "timezone": False, "precision": 6},
    "date": {"data_type": "date"},
    "time": {"data_type": "time", "precision": 6},
    "json": {"data_type": "json"},
    "binary": {"data_type": "binary"},
}

@functools.cache
def arrow_type_of(logical: str, precision: int | None = None,
                  scale: int | None = None) -> pa.DataType:
    """The Arrow type of a logical type's batches. pyarrow is imported here, when a table
    is read, not when the code location plans its tables."""
    import pyarrow as pa

    if logical == "decimal":
        assert precision is not None and scale is not None
        return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    return {
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "text": pa.string(),
        "timestamptz": pa.timestamp("us", tz="UTC"),
        "timestamp": pa.timestamp("us"),
        "date": pa.date32(),
        "time": pa.time64("us"),
        "json": pa.string(),
        "binary": pa.binary(),
    }[logical]

# What dlt 1.31's DuckDB and BigQuery type mappers create for the hints above (a test
# compares these with dlt's own mappers).
_DUCKDB_TYPES: Mapping[str, str] = {
    "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT", "float32": "DOUBLE",
    "float64": "DOUBLE", "bool": "BOOLEAN", "text": "VARCHAR",
    "timestamptz": "TIMESTAMP WITH TIME ZONE", "timestamp": "TIMESTAMP", "date": "DATE",
    "time": "TIME", "json": "JSON", "binary": "BLOB",
}
_BIGQUERY_TYPES: Mapping[str, str] = {
    "int16": "INT64", "int32": "INT64", "int64": "INT64", "float32": "FLOAT64",
    "float64": "FLOAT64", "bool": "BOOL", "text": "STRING", "timestamptz": "TIMESTAMP",
    "timestamp": "TIMESTAMP", "date": "DATE", "time": "TIME", "json": "STRING",
    "binary": "BYTES",
}


class UnsupportedOverride(ValueError):
    """An override names a cast the type map does not know."""


@dataclass(frozen=True)
class ColumnOverride:
    """A per-column override from the tables file: exclude, hash, or cast."""

    exclude: bool = False
    hash: bool = False
    cast: str | None = None  # "text" or "json"


def quote_ident(name: str) -> str:
    """Quote a PostgreSQL identifier (double quotes, embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def map_column(
    column: Column,
    destination_name: str,
    destination: str,
    override: ColumnOverride | None = None,
) -> ColumnMapping:
    """Map one column for `destination` (`duckdb` or `bigquery`)."""
    mapping = _map_column(column, destination_name, destination, override)
    return dataclasses.replace(mapping, destination=destination)


def _map_column(
    column: Column,
    destination_name: str,
    destination: str,
    override: ColumnOverride | None,
) -> ColumnMapping:
    quoted = quote_ident(column.name)
    name = destination_name
    if override and override.hash:
        return _mapping(column, name, "text", f"{quoted}::text", "hash", transform="hash")
    if override and override.cast == "text":
        return _mapping(column, name, "text", f"{quoted}::text", "cast_text")
    if override and override.cast == "json":
        return _mapping(column, name, "json", f"to_jsonb({quoted})::text", "cast_json")
    if override and override.cast:
        raise UnsupportedOverride(f"cast {override.cast!r} is not supported (use text or json)")

    if column.type_kind == "d" and column.base_type:
        # A domain reads as its base type; the base type's rule applies. Domains over
        # domains, enums or composites fall through to the text form.
        expression = f"{quoted}::{column.base_type}"
        return _map_type(
            column, name, destination, expression,
            type_name=column.base_type_name or "",
            type_kind="b",
            is_array=column.element_type_name is not None,
            typmod=_typmod_from_text(column.base_type),
        )
    return _map_type(
        column, name, destination, quoted,
        type_name=column.type_name,
        type_kind=column.type_kind,
        is_array=column.type_category == "A",
        typmod=column.typmod,
    )


def _map_type(
    column: Column,
    name: str,
    destination: str,
    expression: str,
    *,
    type_name: str,
    type_kind: str,
    is_array: bool,
    typmod: int,
) -> ColumnMapping:
    if is_array:
        return _mapping(column, name, "json", f"to_jsonb({expression})::text", "array",
                        guard_sql=_ARRAY_BOUNDS_GUARD.format(expr=expression))
    if type_name in _INTEGERS:
        return _mapping(column, name, _INTEGERS[type_name], expression, "integer")
    if type_name in _FLOATS:
        return _mapping(column, name, _FLOATS[type_name], expression, "float")
    if type_name == "bool":
        return _mapping(column, name, "bool", expression, "boolean")
    if type_name in _TEXT:
        return _mapping(column, name, "text", expression, "text")
    if type_name == "numeric":
        return _map_numeric(column, name, destination, expression, typmod)
    if type_name in ("timestamptz", "timestamp", "date"):
        return _mapping(column, name, type_name, expression, type_name, checks=("finite_range",))
    if type_name == "time":
        return _mapping(column, name, "time", expression, "time", checks=("time_of_day",))
    if type_name in _JSON:
        return _mapping(column, name, "json", expression, "json")
    if type_name == "bytea":
        return _mapping(column, name, "binary", expression, "bytea")
    if type_name == "hstore":
        return _mapping(column, name, "json", f"{expression}::jsonb", "hstore")
    if type_name == "vector":
        return _mapping(column, name, "json", f"to_jsonb({expression}::real[])::text", "vector")
    if type_name == "money":
        return _mapping(column, name, "text", f"{expression}::numeric::text", "money")
    if type_kind == "c":
        return _mapping(column, name, "json", f"to_jsonb({expression})::text", "composite")
    rule = (
        "timetz" if type_name == "timetz"
        else "interval" if type_name == "interval"
        else "uuid" if type_name == "uuid"
        else "citext" if type_name == "citext"
        else "xml" if type_name == "xml"
        else "network" if type_name in _NETWORK
        else "bit" if type_name in _BITS
        else "text_search" if type_name in _TEXT_SEARCH
        else "enum" if type_kind == "e"
        else "range" if type_kind in ("r", "m")
        else "other"
    )
    return _mapping(column, name, "text", f"{expression}::text", rule)


def _map_numeric(
    column: Column, name: str, destination: str, expression: str, typmod: int
) -> ColumnMapping:
    precision, scale = numeric_typmod(typmod)
    if precision is None or scale is None:
        return _mapping(column, name, "text", f"{expression}::text", "numeric_unconstrained")
    if scale < 0:
        # numeric(p,-k) rounds to 10^k and so holds integers of up to p+k digits.
        precision, scale = precision - scale, 0
    precision = max(precision, scale)  # numeric(2,5) holds |x| < 0.001: DECIMAL(5,5)
    bigquery_type, bigquery_precision = _bigquery_decimal(precision, scale)
    duckdb_type = (f"DECIMAL({precision},{scale})"
                   if precision <= DUCKDB_MAX_DECIMAL_PRECISION else "VARCHAR")
    dlt_precision = bigquery_precision if destination == "bigquery" else precision
    fits = (bigquery_precision is not None if destination == "bigquery"
            else precision <= DUCKDB_MAX_DECIMAL_PRECISION)
    if not fits or dlt_precision is None:
        return ColumnMapping(
            source=column, name=name, logical="text", select_sql=f"{expression}::text",
            rule="numeric", bigquery_type=bigquery_type,
            duckdb_type=duckdb_type,
        )
    return ColumnMapping(
        source=column, name=name, logical="decimal", select_sql=expression,
        precision=dlt_precision, scale=scale, checks=("decimal",), rule="numeric",
        bigquery_type=bigquery_type, duckdb_type=duckdb_type,
    )


def _bigquery_decimal(precision: int, scale: int) -> tuple[str, int | None]:
    """BigQuery's type for DECIMAL(precision, scale) and the precision to declare to dlt."""
    if scale <= BQ_NUMERIC_SCALE and precision - scale <= BQ_NUMERIC_INT_DIGITS:
        return f"NUMERIC({precision},{scale})", precision
    if scale <= BQ_BIGNUMERIC_SCALE and precision - scale <= BQ_BIGNUMERIC_INT_DIGITS:
        # dlt picks BIGNUMERIC only above precision 38 or scale 9; a wider declared
        # precision is harmless and keeps numeric(38,2) out of an invalid NUMERIC(38,2).
        wide = max(precision, 39)
        return f"BIGNUMERIC({wide},{scale})", wide
    return "STRING", None


def numeric_typmod(typmod: int) -> tuple[int | None, int | None]:
    """Decode numeric's typmod into (precision, scale); (None, None) when unconstrained.

    The scale may be negative (PostgreSQL 15+ allows numeric(p,-k)) or above the precision.
    """
    if typmod < 4:
        return None, None
    value = typmod - 4
    precision = (value >> 16) & 0xFFFF
    scale = value & 0x7FF
    if scale & 0x400:  # scales are stored in 11-bit two's complement
        scale -= 0x800
    return precision, scale


def _typmod_from_text(type_text: str) -> int:
    """numeric's typmod from format_type() text such as `numeric(10,2)`; -1 otherwise."""
    match = _NUMERIC_TYPMOD.match(type_text)
    if not match:
        return -1
    precision, scale = int(match.group(1)), int(match.group(2) or 0)
    return ((precision << 16) | (scale & 0x7FF)) + 4


def _mapping(
    column: Column,
    name: str,
    logical: str,
    select_sql: str,
    rule: str,
    checks: tuple[str, ...] = (),
    transform: str | None = None,
    guard_sql: str | None = None,
) -> ColumnMapping:
    assert rule in RULES, rule
    return ColumnMapping(
        source=column,
        name=name,
        logical=logical,
        select_sql=select_sql,
        checks=checks,
        rule=rule,
        transform=transform,
        bigquery_type=_BIGQUERY_TYPES[logical],
        duckdb_type=_DUCKDB_TYPES[logical],
        guard_sql=guard_sql,
    )






