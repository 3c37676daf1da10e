"""The type map as a table: each family of PostgreSQL types, how it is read, its Arrow,
DuckDB and BigQuery types, and why. `docs/type-map.md` is generated from it
(`write_type_map_doc`); `pg_to_bq.planning.types` maps columns by it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TypeRule:
    """One row of the type map: a family of PostgreSQL types and how it is loaded."""

    key: str
    postgres: str
    read: str
    arrow: str
    duckdb: str
    bigquery: str
    why: str


TYPE_RULES: tuple[TypeRule, ...] = (
    TypeRule(
        "integer", "smallint, integer, bigint", "binary COPY", "int16, int32, int64",
        "SMALLINT, INTEGER, BIGINT", "INT64", "Exact, minimum and maximum included."),
    TypeRule(
        "float", "real, double precision", "binary COPY", "float32, float64", "DOUBLE",
        "FLOAT64",
        "Bit for bit: a real widens exactly to a double. NaN, Infinity, -Infinity and -0 are "
        "kept; both destinations store them."),
    TypeRule(
        "numeric", "numeric(p,s)", "binary COPY, decimal text → Arrow decimal",
        "decimal128(p,s); decimal256 above 38 digits",
        "DECIMAL(p,s) when p ≤ 38, else VARCHAR (the text form)",
        "NUMERIC(p,s) when s ≤ 9 and p−s ≤ 29; else BIGNUMERIC(max(p,39),s) when s ≤ 38 and "
        "p−s ≤ 38; else STRING (the text form)",
        "Never rounded: the declared precision and scale fit the chosen type, and a value that "
        "does not convert exactly fails the table. NaN fails the table (no decimal type holds "
        "it; numeric(p,s) cannot hold ±Infinity). Scale above precision (numeric(2,5), "
        "PostgreSQL 15+) loads as DECIMAL(s,s); a negative scale (numeric(p,-k)) holds integers "
        "and loads as DECIMAL(p+k,0)."),
    TypeRule(
        "numeric_unconstrained", "numeric (no precision)", "`::text`", "string", "VARCHAR",
        "STRING",
        "Chosen over BIGNUMERIC because no decimal type holds every value: unconstrained "
        "numeric has up to 131072 digits before the point and 16383 after, plus NaN, Infinity "
        "and -Infinity, while BIGNUMERIC stops at 38 decimals and DuckDB's DECIMAL at 38 "
        "digits. A type picked from today's values could fail tomorrow. The text keeps every "
        "digit and the scale (`1.2300`); cast downstream where the values are known to fit."),
    TypeRule("boolean", "boolean", "binary COPY", "bool", "BOOLEAN", "BOOL", "Exact."),
    TypeRule(
        "text", "text, varchar(n), char(n), name, \"char\"", "binary COPY", "string",
        "VARCHAR", "STRING", "Exact; char(n) keeps the blank padding PostgreSQL returns."),
    TypeRule(
        "citext", "citext", "`::text`", "string", "VARCHAR", "STRING",
        "The stored spelling, case kept; comparing without case is up to the query."),
    TypeRule(
        "timestamptz", "timestamp with time zone", "binary COPY", "timestamp[us, tz=UTC]",
        "TIMESTAMP WITH TIME ZONE", "TIMESTAMP",
        "The instant in UTC, microseconds kept. Years 1–9999 (see the infinity row)."),
    TypeRule(
        "timestamp", "timestamp without time zone", "binary COPY", "timestamp[us]",
        "TIMESTAMP", "TIMESTAMP (not DATETIME, see notes)",
        "The wall-clock value, never shifted by a time zone. dlt 1.31 creates every BigQuery "
        "timestamp column as TIMESTAMP, so BigQuery shows the same digits labelled UTC."),
    TypeRule("date", "date", "binary COPY", "date32", "DATE", "DATE",
             "Exact; years 1–9999 (see the infinity row)."),
    TypeRule(
        "infinity", "'infinity', '-infinity'; dates and timestamps outside years 1–9999",
        "value check", "—", "—", "—",
        "The table fails, naming the column and the `cast: text` override. BigQuery's DATE, "
        "DATETIME and TIMESTAMP span years 1–9999 and no destination type holds infinity; "
        "a far date or NULL instead would change the value. With `cast: text` the column "
        "loads as PostgreSQL's text (`infinity`, `0044-03-15 BC`)."),
    TypeRule(
        "time", "time", "binary COPY", "time64[us]", "TIME", "TIME",
        "Exact. `24:00:00`, which PostgreSQL allows, fails the table: TIME ends at "
        "23:59:59.999999."),
    TypeRule(
        "timetz", "time with time zone", "`::text`", "string", "VARCHAR", "STRING",
        "`12:34:56+09` keeps the offset. dlt can create no time-with-offset type, and "
        "converting to UTC would drop the offset and can move the time across midnight."),
    TypeRule(
        "interval", "interval", "`::text` with IntervalStyle iso_8601", "string", "VARCHAR",
        "STRING",
        "ISO 8601 duration (`P1Y2M3DT4H5M6.789S`): months, days and microseconds stay apart "
        "with their own signs (a month is not 30 days, a day is not 24 hours across DST). "
        "dlt has no interval type, so DuckDB's and BigQuery's INTERVAL cannot be created "
        "through it, and a number of seconds would merge the parts."),
    TypeRule(
        "json", "json, jsonb", "binary COPY", "string (arrow.json storage)", "JSON", "STRING (JSON text)",
        "json keeps its text exactly (spacing, key order, duplicate keys); jsonb is its "
        "canonical text. JSON `null` and SQL NULL stay apart. BigQuery gets the exact text "
        "in a STRING: its JSON type cannot be batch-loaded from parquet and would parse "
        "numbers as FLOAT64; JSON_VALUE/JSON_QUERY read the STRING, PARSE_JSON makes JSON."),
    TypeRule(
        "array", "arrays of any element type and any number of dimensions",
        "`to_jsonb()` text", "string", "JSON", "STRING (JSON text)",
        "A JSON array, nested for several dimensions, NULL elements kept; elements as "
        "`to_jsonb` writes them (NaN and ±Infinity as the strings \"NaN\", \"Infinity\"; "
        "types without a JSON form as their text). JSON, not ARRAY: see notes. A dimension "
        "not starting at 1 (`'[0:2]={1,2,3}'`) has no JSON form and fails the table; "
        "`cast: text` keeps PostgreSQL's text."),
    TypeRule(
        "vector", "pgvector vector", "`::real[]` → `to_jsonb()` text", "string", "JSON", "STRING (JSON text)",
        "A JSON array of numbers, each the shortest decimal that reads back as the same real "
        "(pgvector allows no NaN or Infinity). JSON, not ARRAY<FLOAT64>: see notes."),
    TypeRule("uuid", "uuid", "`::text`", "string", "VARCHAR", "STRING",
             "Canonical lowercase text; neither destination has a UUID type dlt creates."),
    TypeRule("bytea", "bytea", "binary COPY", "binary", "BLOB", "BYTES", "Exact bytes."),
    TypeRule("enum", "enum types", "`::text`", "string", "VARCHAR", "STRING", "The label."),
    TypeRule(
        "network", "inet, cidr, macaddr, macaddr8", "`::text`", "string", "VARCHAR", "STRING",
        "PostgreSQL's canonical text (`192.168.0.1/24`, `08:00:2b:01:02:03`)."),
    TypeRule(
        "money", "money", "`::numeric::text`", "string", "VARCHAR", "STRING",
        "The exact amount (`-12.34`) without currency symbol or grouping. Not NUMERIC: the "
        "number of decimals comes from the server's lc_monetary, not from the column, so no "
        "scale can be declared ahead of the data."),
    TypeRule("bit", "bit(n), bit varying(n)", "`::text`", "string", "VARCHAR", "STRING",
             "The bit string (`0101`), leading zeros and length kept."),
    TypeRule("text_search", "tsvector, tsquery", "`::text`", "string", "VARCHAR", "STRING",
             "PostgreSQL's text form: lexemes, positions and weights."),
    TypeRule("xml", "xml", "`::text`", "string", "VARCHAR", "STRING",
             "The document or fragment as PostgreSQL returns it."),
    TypeRule(
        "range", "range and multirange types", "`::text`", "string", "VARCHAR", "STRING",
        "`[1,10)`, `empty`, `{[1,3),[5,7)}`: bounds and their inclusivity kept; timestamps "
        "inside in UTC, ISO style."),
    TypeRule("hstore", "hstore", "`::jsonb` text", "string", "JSON", "STRING (JSON text)",
             "A JSON object of string values; a NULL value is JSON null."),
    TypeRule(
        "domain", "domains", "cast to the base type", "as the base type", "as the base type",
        "as the base type",
        "The base type's row applies (a domain over numeric(10,2) is DECIMAL(10,2)); its "
        "constraints are not carried."),
    TypeRule(
        "composite", "composite types", "`to_jsonb()` text", "string", "JSON", "STRING (JSON text)",
        "A JSON object of the fields, NULL fields as JSON null; values as `to_jsonb` writes "
        "them (see the array row). Lower bounds of arrays inside are not kept."),
    TypeRule(
        "other", "any other type (point, box, pg_lsn, oid, halfvec, ...)", "`::text`",
        "string", "VARCHAR", "STRING", "PostgreSQL's text output, which its input reads back."),
    TypeRule(
        "cast_text", "any column overridden with `cast: text`", "`::text`", "string",
        "VARCHAR", "STRING",
        "The way to load values a row above refuses (infinity, years outside 1–9999, "
        "24:00:00, numeric NaN, array bounds)."),
    TypeRule(
        "cast_json", "any column overridden with `cast: json`", "`to_jsonb()` text", "string",
        "JSON", "STRING (JSON text)", "`to_jsonb` of the value."),
    TypeRule(
        "hash", "any column overridden with `hash: true`",
        "`::text`, then SHA-256 of salt and text", "string", "VARCHAR", "STRING",
        "The hex digest: equal values stay equal (joins work), the value cannot be read back."),
)


RULES: Mapping[str, TypeRule] = {rule.key: rule for rule in TYPE_RULES}


TYPE_TABLE_BEGIN = "<!-- BEGIN TYPE_RULES (generated by pg_to_bq.planning.type_rules.write_type_map_doc) -->"


TYPE_TABLE_END = "<!-- END TYPE_RULES -->"


def render_type_rules() -> str:
    """`TYPE_RULES` as the Markdown table of docs/type-map.md (between its markers)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| PostgreSQL type | How it is read | Arrow type | DuckDB type | BigQuery type "
        "| Why, and edge cases | Rule |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in TYPE_RULES:
        lines.append("| " + " | ".join(cell(c) for c in (
            rule.postgres, rule.read, rule.arrow, rule.duckdb, rule.bigquery, rule.why,
            f"`{rule.key}`")) + " |")
    return "\n".join(lines)


def write_type_map_doc(path: Path | None = None) -> Path:
    """Rewrite the generated table in docs/type-map.md from `TYPE_RULES`."""
    path = path or Path(__file__).resolve().parents[2] / "docs" / "type-map.md"
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(TYPE_TABLE_BEGIN)
    _, _, tail = rest.partition(TYPE_TABLE_END)
    path.write_text(
        f"{head}{TYPE_TABLE_BEGIN}\n{render_type_rules()}\n{TYPE_TABLE_END}{tail}",
        encoding="utf-8",
    )
    return path
