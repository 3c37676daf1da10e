"""The exact map from PostgreSQL types to Arrow, dlt and the destinations.

Each PostgreSQL column becomes a `ColumnMapping`: the SQL expression that reads it (a
cast where the wire type is not the one we want), the Arrow type of the batches sent to
dlt, the dlt column hints, the destination types, and the value checks that make a load
fail rather than change a value. The rules and their reasons are in docs/type-map.md;
`TYPE_RULES` below is the same table in code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pg_to_bq.catalog import Column

# BigQuery NUMERIC holds up to 29 integer digits and 9 decimals; BIGNUMERIC 38 and 38.
BQ_NUMERIC_INT_DIGITS, BQ_NUMERIC_SCALE = 29, 9
BQ_BIGNUMERIC_INT_DIGITS, BQ_BIGNUMERIC_SCALE = 38, 38
DUCKDB_MAX_DECIMAL_PRECISION = 38

# Wire types the extractor receives natively (PostgreSQL binary COPY → Arrow).
_INTEGERS = {"int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64()}
_FLOATS = {"float4": pa.float32(), "float8": pa.float64()}
_TEXT = {"text", "varchar", "bpchar", "name", "char"}
_JSON = {"json", "jsonb"}


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
        checks: Value checks applied to every batch (see `pg_to_bq.extract`).
        rule: The type-map rule applied (a row of docs/type-map.md).
        transform: `hash` when the column is replaced by a salted hash.
    """

    source: Column
    name: str
    logical: str
    select_sql: str
    arrow_type: pa.DataType
    precision: int | None = None
    scale: int | None = None
    checks: tuple[str, ...] = ()
    rule: str = ""
    transform: str | None = None
    bigquery_type: str = ""
    duckdb_type: str = ""

    def dlt_hint(self) -> dict[str, Any]:
        """The dlt column schema for this column."""
        hint: dict[str, Any] = {"name": self.name, "nullable": self.source.nullable}
        if self.transform == "hash":
            hint["nullable"] = True
        hint.update(_DLT_TYPES[self.logical])
        if self.logical == "decimal":
            hint["precision"], hint["scale"] = self.precision, self.scale
        if self.source.comment:
            hint["description"] = self.source.comment
        return hint

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

_ARROW_TYPES: Mapping[str, pa.DataType] = {
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
}

_DUCKDB_TYPES: Mapping[str, str] = {
    "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT", "float32": "DOUBLE",
    "float64": "DOUBLE", "bool": "BOOLEAN", "text": "VARCHAR", "timestamptz": "TIMESTAMP WITH TIME ZONE",
    "timestamp": "TIMESTAMP", "date": "DATE", "time": "TIME", "json": "JSON", "binary": "BLOB",
}
_BIGQUERY_TYPES: Mapping[str, str] = {
    "int16": "INT64", "int32": "INT64", "int64": "INT64", "float32": "FLOAT64",
    "float64": "FLOAT64", "bool": "BOOL", "text": "STRING", "timestamptz": "TIMESTAMP",
    "timestamp": "DATETIME", "date": "DATE", "time": "TIME", "json": "JSON", "binary": "BYTES",
}

# (PostgreSQL type, how it is read, logical type, why) — rendered into docs/type-map.md.
TYPE_RULES: tuple[tuple[str, str, str, str], ...] = (
    ("smallint, integer, bigint", "native", "int16/int32/int64", "exact"),
    ("real, double precision", "native", "float32/float64",
     "NaN and ±Infinity kept (both destinations store them)"),
    ("numeric(p,s)", "native, exact decimal text → decimal(p,s)", "decimal",
     "DuckDB DECIMAL(p,s) when p ≤ 38; BigQuery NUMERIC when it fits, else BIGNUMERIC; "
     "else STRING. NaN/±Infinity fail the load (no decimal can hold them)"),
    ("numeric (unconstrained)", "::text", "text",
     "any precision and scale, NaN and Infinity: no decimal type holds every value, and a "
     "type chosen from today's data would change tomorrow; STRING keeps the exact digits"),
    ("boolean", "native", "bool", "exact"),
    ("text, varchar(n), char(n), name, \"char\"", "native", "text",
     "char(n) keeps its blank padding, as PostgreSQL stores it"),
    ("citext", "::text", "text", "exact"),
    ("timestamp with time zone", "native", "timestamptz",
     "an instant, stored in UTC (DuckDB TIMESTAMPTZ, BigQuery TIMESTAMP)"),
    ("timestamp without time zone", "native", "timestamp",
     "wall-clock value never shifted (DuckDB TIMESTAMP, BigQuery DATETIME)"),
    ("date", "native", "date", "exact"),
    ("'infinity', '-infinity', years outside 1–9999", "check", "—",
     "fail the load: no destination type holds them; override the column with cast: text"),
    ("time", "native", "time", "exact; 24:00:00 fails the load (BigQuery TIME ends at 23:59:59.999999)"),
    ("time with time zone", "::text", "text", "'12:34:56+09' keeps the offset"),
    ("interval", "::text with IntervalStyle iso_8601", "text",
     "'P1Y2M3DT4H5M6S' keeps months, days and microseconds apart (no destination "
     "interval type dlt can load)"),
    ("json, jsonb", "native", "json", "JSON text, loaded as JSON"),
    ("arrays (any element type, any dimension)", "to_jsonb()", "json",
     "JSON array: keeps NULL elements and nested dimensions, which BigQuery ARRAY cannot"),
    ("pgvector vector", "::real[] → to_jsonb()", "json", "JSON array of numbers"),
    ("uuid", "::text", "text", "canonical lowercase form"),
    ("bytea", "native", "binary", "exact bytes (BigQuery BYTES, DuckDB BLOB)"),
    ("enum types", "::text", "text", "the label"),
    ("inet, cidr, macaddr, macaddr8", "::text", "text", "PostgreSQL's canonical text"),
    ("money", "::numeric::text", "text", "the exact amount without the locale's currency format"),
    ("bit(n), bit varying", "::text", "text", "the bit string, e.g. '1011'"),
    ("tsvector, tsquery, xml", "::text", "text", "PostgreSQL's text form"),
    ("range and multirange types", "::text", "text", "e.g. '[1,10)', bounds kept"),
    ("hstore", "::jsonb", "json", "a JSON object of its keys and values"),
    ("domains", "cast to the base type", "as the base type", "the domain's base type rule"),
    ("composite types", "to_jsonb()", "json", "a JSON object of its fields"),
    ("any other type", "::text", "text", "PostgreSQL's text output"),
)


class UnsupportedOverride(ValueError):
    """An override names a cast the type map does not know."""


@dataclass(frozen=True)
class ColumnOverride:
    """A per-column override from the tables file: exclude, hash, or cast."""

    exclude: bool = False
    hash: bool = False
    cast: str | None = None  # "text" or "json"


@dataclass(frozen=True)
class _Context:
    quoted: str
    destination: str
    extra: dict = field(default_factory=dict)


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
    quoted = quote_ident(column.name)
    if override and override.hash:
        return _mapping(column, destination_name, "text", f"{quoted}::text", "salted hash",
                        transform="hash")
    if override and override.cast == "text":
        return _mapping(column, destination_name, "text", f"{quoted}::text", "override: cast to text")
    if override and override.cast == "json":
        return _mapping(column, destination_name, "json", f"to_jsonb({quoted})::text",
                        "override: cast to json")
    if override and override.cast:
        raise UnsupportedOverride(f"cast {override.cast!r} is not supported (use text or json)")

    type_name = column.type_name
    expression = quoted
    if column.type_kind == "d" and column.base_type:
        # A domain reads as its base type; the base type's rule applies.
        expression = f"{quoted}::{column.base_type}"
        type_name = column.base_type_name or type_name
        base_is_array = column.element_type_name is not None
    else:
        base_is_array = column.type_category == "A"

    if base_is_array:
        element = column.element_type_name or ""
        source = f"{expression}::real[]" if element == "vector" else expression
        return _mapping(column, destination_name, "json", f"to_jsonb({source})::text", "array → JSON")
    if type_name in _INTEGERS:
        logical = {"int2": "int16", "int4": "int32", "int8": "int64"}[type_name]
        return _mapping(column, destination_name, logical, expression, "integer")
    if type_name in _FLOATS:
        return _mapping(column, destination_name, "float32" if type_name == "float4" else "float64",
                        expression, "float")
    if type_name == "bool":
        return _mapping(column, destination_name, "bool", expression, "boolean")
    if type_name in _TEXT:
        return _mapping(column, destination_name, "text", expression, "text")
    if type_name == "numeric":
        return _map_numeric(column, destination_name, destination, expression)
    if type_name in ("timestamptz", "timestamp", "date"):
        return _mapping(column, destination_name, type_name, expression, type_name,
                        checks=("finite_range",))
    if type_name == "time":
        return _mapping(column, destination_name, "time", expression, "time",
                        checks=("time_of_day",))
    if type_name in _JSON:
        return _mapping(column, destination_name, "json", expression, "json")
    if type_name == "bytea":
        return _mapping(column, destination_name, "binary", expression, "bytea")
    if type_name == "hstore":
        return _mapping(column, destination_name, "json", f"{expression}::jsonb", "hstore → JSON")
    if column.type_kind == "c":
        return _mapping(column, destination_name, "json", f"to_jsonb({expression})::text",
                        "composite → JSON")
    if type_name == "money":
        return _mapping(column, destination_name, "text", f"{expression}::numeric::text",
                        "money → exact amount text")
    return _mapping(column, destination_name, "text", f"{expression}::text", "text form")


def _map_numeric(column: Column, name: str, destination: str, expression: str) -> ColumnMapping:
    precision, scale = numeric_typmod(column.typmod)
    if precision is None:
        return _mapping(column, name, "text", f"{expression}::text", "unconstrained numeric → text")
    assert scale is not None
    int_digits = precision - scale
    if destination == "bigquery":
        if scale <= BQ_NUMERIC_SCALE and int_digits <= BQ_NUMERIC_INT_DIGITS:
            bq_type, dlt_precision = f"NUMERIC({precision},{scale})", precision
        elif scale <= BQ_BIGNUMERIC_SCALE and int_digits <= BQ_BIGNUMERIC_INT_DIGITS:
            # dlt picks BIGNUMERIC only above precision 38 or scale 9; a wider declared
            # precision is harmless and keeps numeric(38,2) out of an invalid NUMERIC(38,2).
            dlt_precision = max(precision, 39)
            bq_type = f"BIGNUMERIC({dlt_precision},{scale})"
        else:
            return _mapping(column, name, "text", f"{expression}::text",
                            "numeric too wide for BIGNUMERIC → text")
        arrow = pa.decimal128(dlt_precision, scale) if dlt_precision <= 38 else pa.decimal256(
            dlt_precision, scale)
        return ColumnMapping(
            source=column, name=name, logical="decimal", select_sql=expression, arrow_type=arrow,
            precision=dlt_precision, scale=scale, checks=("decimal",), rule="numeric(p,s)",
            bigquery_type=bq_type, duckdb_type=f"DECIMAL({precision},{scale})",
        )
    if precision > DUCKDB_MAX_DECIMAL_PRECISION:
        return _mapping(column, name, "text", f"{expression}::text",
                        "numeric wider than DECIMAL(38) → text")
    return ColumnMapping(
        source=column, name=name, logical="decimal", select_sql=expression,
        arrow_type=pa.decimal128(precision, scale), precision=precision, scale=scale,
        checks=("decimal",), rule="numeric(p,s)",
        bigquery_type=f"NUMERIC({precision},{scale})", duckdb_type=f"DECIMAL({precision},{scale})",
    )


def numeric_typmod(typmod: int) -> tuple[int | None, int | None]:
    """Decode numeric's typmod into (precision, scale); (None, None) when unconstrained."""
    if typmod < 4:
        return None, None
    value = typmod - 4
    precision = (value >> 16) & 0xFFFF
    scale = value & 0x7FF
    if scale & 0x400:  # negative scales (PostgreSQL 15+) are stored in 11-bit two's complement
        scale -= 0x800
    if scale < 0:
        return None, None
    return precision, scale


def _mapping(
    column: Column,
    name: str,
    logical: str,
    select_sql: str,
    rule: str,
    checks: tuple[str, ...] = (),
    transform: str | None = None,
) -> ColumnMapping:
    return ColumnMapping(
        source=column,
        name=name,
        logical=logical,
        select_sql=select_sql,
        arrow_type=_ARROW_TYPES[logical],
        checks=checks,
        rule=rule,
        transform=transform,
        bigquery_type=_BIGQUERY_TYPES[logical],
        duckdb_type=_DUCKDB_TYPES[logical],
    )
