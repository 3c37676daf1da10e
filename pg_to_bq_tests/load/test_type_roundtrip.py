"""Every row of the type map, round-tripped from PostgreSQL into DuckDB value by value.

One database for the module. All loadable values share one wide table (one load); each
value that must fail the table has its own table, and one table shows the `cast: text`,
`cast: json` and `hash` overrides. Values are compared semantically with what
PostgreSQL returns: decimals digit for digit, floats bit for bit, timestamptz as UTC
instants, naive timestamps unshifted, JSON parsed, other types by PostgreSQL's text.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import dlt
import duckdb
import psycopg
import pytest
from psycopg.types import TypeInfo
from psycopg.types.composite import CompositeInfo, register_composite
from psycopg.types.hstore import register_hstore
from psycopg.types.string import TextLoader

from pg_to_bq.destinations.duckdb_file import duckdb_destination
from pg_to_bq.destinations.schema import planned_types
from pg_to_bq.load.group import load_table
from pg_to_bq.planning.catalog import Column
from pg_to_bq.planning.errors import LossyValueError, root_cause
from pg_to_bq.planning.overrides import Overrides, parse_overrides
from pg_to_bq.planning.tables import TablePlan, build_plans
from pg_to_bq.planning.type_rules import RULES, TYPE_TABLE_BEGIN, TYPE_TABLE_END, render_type_rules
from pg_to_bq.planning.types import (
    _BIGQUERY_TYPES,
    _DLT_TYPES,
    _DUCKDB_TYPES,
    ColumnOverride,
    map_column,
)
from pg_to_bq.postgres.discovery import discover

SALT = b"pepper"
DOC = Path(__file__).resolve().parents[2] / "docs" / "type-map.md"

SETUP_SQL = """
CREATE EXTENSION hstore;
CREATE EXTENSION citext;
CREATE EXTENSION vector;
CREATE TYPE mood AS ENUM ('sad', 'happy 😀', 'it''s');
CREATE TYPE pair AS (a int, b text, c float8, d numeric, e timestamptz, f int[]);
CREATE DOMAIN money2 AS numeric(10,2) CHECK (VALUE >= 0);
CREATE DOMAIN short_text AS varchar(10);
CREATE DOMAIN id_list AS int[];
CREATE DOMAIN day AS date;
"""


def _bits(fmt: str) -> Callable[[Any, Any], bool]:
    """PostgreSQL's float4send/float8send bytes equal the DuckDB double packed the same way."""
    return lambda pg, duck: pg == struct.pack(fmt, duck)


def _decimal_exact(pg: Decimal, duck: Decimal) -> bool:
    return isinstance(duck, Decimal) and pg.as_tuple() == duck.as_tuple()


def _utc_instant(pg: datetime, duck: datetime) -> bool:
    return pg == duck and duck.utcoffset() is not None


def _naive_equal(pg: datetime, duck: datetime) -> bool:
    return pg == duck and duck.tzinfo is None


def _json_equal(pg: str, duck: str) -> bool:
    return pg == duck and json.loads(pg) == json.loads(duck)


def _json_float(pg: float, value: Any) -> bool:
    if math.isnan(pg):
        return value == "NaN"
    if math.isinf(pg):
        return value == ("Infinity" if pg > 0 else "-Infinity")
    # -0 becomes 0 inside JSON (documented in the array row).
    return isinstance(value, int | Decimal) and float(value) == pg


def _json_numeric(pg: Decimal, value: Any) -> bool:
    if pg.is_nan():
        return value == "NaN"
    return Decimal(value).as_tuple() == pg.as_tuple() if not isinstance(value, str) else False


def _json_timestamptz_text(pg: str, value: Any) -> bool:
    if pg in ("infinity", "-infinity"):
        return value == pg
    return datetime.fromisoformat(value) == datetime.fromisoformat(pg)


def _nested(element: Callable[[Any, Any], bool]) -> Callable[[Any, str], bool]:
    """PostgreSQL's array (nested lists) equals the JSON array loaded into DuckDB."""

    def same(pg: Any, value: Any) -> bool:
        if isinstance(pg, list):
            return (isinstance(value, list) and len(pg) == len(value)
                    and all(same(p, v) for p, v in zip(pg, value, strict=True)))
        if pg is None:
            return value is None
        return element(pg, value)

    return lambda pg, duck: same(pg, json.loads(duck, parse_float=Decimal))


def _float32_list(pg: str, duck: str) -> bool:
    expected, loaded = json.loads(pg), json.loads(duck)
    return len(expected) == len(loaded) and all(
        struct.pack(">f", a) == struct.pack(">f", b) for a, b in zip(expected, loaded, strict=True)
    )


def _composite(pg: Any, duck: str) -> bool:
    loaded = json.loads(duck, parse_float=Decimal)
    checks = {
        "a": lambda p, v: p == v,
        "b": lambda p, v: p == v,
        "c": _json_float,
        "d": _json_numeric,
        "e": lambda p, v: datetime.fromisoformat(v) == p,
        "f": lambda p, v: p == v,
    }
    return set(loaded) == set(checks) and all(
        (loaded[k] is None) if getattr(pg, k) is None else check(getattr(pg, k), loaded[k])
        for k, check in checks.items()
    )


def _money(pg: Decimal, duck: str) -> bool:
    return Decimal(duck).as_tuple() == pg.as_tuple()


def _hstore(pg: dict, duck: str) -> bool:
    return json.loads(duck) == pg


def _equal(pg: Any, duck: Any) -> bool:
    return pg == duck


@dataclass(frozen=True)
class Col:
    """One column of the wide table: its type, its values (SQL literals) and how to compare."""

    name: str
    sql_type: str
    values: tuple[str, ...]
    pg_expr: str = "{c}"
    duck_expr: str = "{c}"
    same: Callable[[Any, Any], bool] = _equal
    mapping_rule: str | None = None  # the rule the column's mapping records (domains: the base's)
    duckdb_type: str | None = None


TEXT = {"pg_expr": "{c}::text"}

CASES: dict[str, list[Col]] = {
    "integer": [
        Col("i2", "smallint", ("-32768", "32767", "0", "NULL"), duckdb_type="SMALLINT"),
        Col("i4", "integer", ("-2147483648", "2147483647", "NULL"), duckdb_type="INTEGER"),
        Col("i8", "bigint", ("-9223372036854775808", "9223372036854775807", "NULL"),
            duckdb_type="BIGINT"),
    ],
    "float": [
        Col("f8", "double precision",
            ("'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "0", "1e308", "4.9e-324",
             "-2.2250738585072014e-308", "0.1", "NULL"),
            pg_expr="float8send({c})", same=_bits(">d"), duckdb_type="DOUBLE"),
        Col("f4", "real",
            ("'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "3.4028235e38", "1.4e-45", "0.1",
             "NULL"),
            pg_expr="float4send({c})", same=_bits(">f"), duckdb_type="DOUBLE"),
    ],
    "numeric": [
        Col("n10_2", "numeric(10,2)", ("12345678.91", "-0.01", "0", "99999999.99", "NULL"),
            same=_decimal_exact, duckdb_type="DECIMAL(10,2)"),
        Col("n38_0", "numeric(38,0)", ("99999999999999999999999999999999999999", "-1", "NULL"),
            same=_decimal_exact, duckdb_type="DECIMAL(38,0)"),
        Col("n38_10", "numeric(38,10)",
            ("1234567890123456789012345678.0123456789", "-0.0000000001", "NULL"),
            same=_decimal_exact, duckdb_type="DECIMAL(38,10)"),
        Col("n2_5", "numeric(2,5)", ("0.00012", "-0.00099", "NULL"), same=_decimal_exact,
            duckdb_type="DECIMAL(5,5)"),
        Col("n3_m2", "numeric(3,-2)", ("99900", "-12300", "0", "NULL"), same=_decimal_exact,
            duckdb_type="DECIMAL(5,0)"),
        Col("n50_10", "numeric(50,10)",
            ("1234567890123456789012345678901234567890.0123456789", "-1.5", "NULL"), **TEXT,
            duckdb_type="VARCHAR"),
    ],
    "numeric_unconstrained": [
        Col("nu", "numeric",
            ("'NaN'", "'Infinity'", "'-Infinity'", "1.2300", "0",
             "-0.000000000000000000000000000000000000000001",
             "123456789012345678901234567890123456789012345678901234567890.5", "NULL"),
            **TEXT, duckdb_type="VARCHAR"),
    ],
    "boolean": [Col("b", "boolean", ("true", "false", "NULL"), duckdb_type="BOOLEAN")],
    "text": [
        Col("t", "text",
            ("''", "'plain'", "E'line\\nbreak\\ttab \\\\ back'", "'quote '' and \"double\"'",
             "'ünïcödé 日本語 😀'", "repeat('x', 100000)", "NULL"), duckdb_type="VARCHAR"),
        Col("vc", "varchar(5)", ("'abcde'", "''", "NULL"), duckdb_type="VARCHAR"),
        Col("ch", "char(5)", ("'ab'", "''", "NULL"), duckdb_type="VARCHAR"),
        Col("qc", '"char"', ("'x'", "NULL"), duckdb_type="VARCHAR"),
        Col("nm", "name", ("'pg_name'", "NULL"), duckdb_type="VARCHAR"),
    ],
    "citext": [Col("ci", "citext", ("'MiXeD Case'", "''", "NULL"), **TEXT, duckdb_type="VARCHAR")],
    "timestamptz": [
        Col("tz", "timestamptz",
            ("'0001-01-01 00:00:00+00'", "'9999-12-31 23:59:59.999999+00'",
             "'1970-01-01 00:00:00+00'", "'1969-12-31 23:59:59.999999+00'",
             "'2024-03-10 02:30:00-08'", "'2024-11-03 01:30:00 America/New_York'", "NULL"),
            same=_utc_instant, duckdb_type="TIMESTAMP WITH TIME ZONE"),
    ],
    "timestamp": [
        Col("ts", "timestamp",
            ("'0001-01-01 00:00:00'", "'9999-12-31 23:59:59.999999'", "'2024-03-10 02:30:00'",
             "'1969-12-31 23:59:59.999999'", "NULL"),
            same=_naive_equal, duckdb_type="TIMESTAMP"),
    ],
    "date": [
        Col("d", "date", ("'0001-01-01'", "'9999-12-31'", "'2000-02-29'", "'1970-01-01'", "NULL"),
            duckdb_type="DATE"),
    ],
    "time": [
        Col("tm", "time", ("'00:00:00'", "'23:59:59.999999'", "'12:34:56.789'", "NULL"),
            duckdb_type="TIME"),
    ],
    "timetz": [
        Col("ttz", "timetz",
            ("'12:34:56+09'", "'00:00:00-15:59'", "'23:59:59.999999+15:59'", "'24:00:00+00'",
             "NULL"), **TEXT, duckdb_type="VARCHAR"),
    ],
    "interval": [
        Col("iv", "interval",
            ("'1 year 2 months 3 days 04:05:06.789'", "'-1 month +1 day'", "'1 day -1 hour'",
             "'0'", "'-178000000 years'", "'00:00:00.000001'", "NULL"),
            **TEXT, duckdb_type="VARCHAR"),
    ],
    "json": [
        Col("j", "json",
            ("'{\"a\": 1,  \"a\": 2}'", "'[]'", "'\"str\"'", "'null'",
             "'{\"n\": 1e400, \"u\": \"\\u00e9\"}'", "NULL"),
            pg_expr="{c}::text", duck_expr="{c}::VARCHAR", same=_json_equal, duckdb_type="JSON"),
        Col("jb", "jsonb",
            ("'{\"b\": [1, 2.50, null], \"a\": \"x\"}'", "'null'",
             "'123456789012345678901234567890.123456789'", "NULL"),
            pg_expr="{c}::text", duck_expr="{c}::VARCHAR", same=_json_equal, duckdb_type="JSON"),
    ],
    "array": [
        Col("ai", "int[]", ("'{1,2,3}'", "'{}'", "'{NULL}'", "'{{1,2},{3,NULL}}'", "NULL"),
            same=_nested(lambda p, v: p == v), duckdb_type="JSON"),
        Col("ai2", "int[][]", ("'{{1,2},{3,4}}'", "'{{{1}}}'", "NULL"),
            same=_nested(lambda p, v: p == v), duckdb_type="JSON"),
        Col("atext", "text[]", ("ARRAY['a', 'b,c', '', NULL, '\"q\"', 'NULL']", "'{}'", "NULL"),
            same=_nested(lambda p, v: p == v), duckdb_type="JSON"),
        Col("af", "float8[]", ("ARRAY['NaN', 'Infinity', '-Infinity', 0.1, 1e308, 4.9e-324]::float8[]",),
            same=_nested(_json_float), duckdb_type="JSON"),
        Col("an", "numeric[]", ("ARRAY[1.50, 'NaN', 12345678901234567890.123456789]::numeric[]",),
            same=_nested(_json_numeric), duckdb_type="JSON"),
        Col("ats", "timestamptz[]",
            ("ARRAY['2024-01-01 12:00:00+02', 'infinity', '0001-01-01 00:00:00+00']::timestamptz[]",),
            pg_expr="{c}::text[]", same=_nested(_json_timestamptz_text), duckdb_type="JSON"),
        Col("ajb", "jsonb[]", ("ARRAY['{\"a\": 1}'::jsonb, 'null'::jsonb, NULL]",),
            same=_nested(lambda p, v: p == v), duckdb_type="JSON"),
    ],
    "vector": [
        Col("v", "vector", ("'[1,2,3]'", "'[0.1,-1e-30,3.4028235e38]'", "NULL"),
            pg_expr="{c}::text", same=_float32_list, duckdb_type="JSON"),
    ],
    "uuid": [
        Col("u", "uuid",
            ("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "'00000000-0000-0000-0000-000000000000'",
             "NULL"), **TEXT, duckdb_type="VARCHAR"),
    ],
    "bytea": [
        Col("by", "bytea", ("'\\x'", "'\\x00ff10'", "decode(repeat('ab', 50000), 'hex')", "NULL"),
            same=lambda pg, duck: pg == bytes(duck), duckdb_type="BLOB"),
    ],
    "enum": [Col("mo", "mood", ("'sad'", "'happy 😀'", "'it''s'", "NULL"), **TEXT,
                 duckdb_type="VARCHAR")],
    "network": [
        Col("ip", "inet", ("'192.168.0.1/24'", "'::1'", "'10.0.0.1'", "NULL"), **TEXT,
            duckdb_type="VARCHAR"),
        Col("cid", "cidr", ("'10.0.0.0/8'", "'2001:db8::/32'", "NULL"), **TEXT, duckdb_type="VARCHAR"),
        Col("mac", "macaddr", ("'08:00:2B:01:02:03'", "NULL"), **TEXT, duckdb_type="VARCHAR"),
        Col("mac8", "macaddr8", ("'08:00:2b:01:02:03:04:05'", "NULL"), **TEXT,
            duckdb_type="VARCHAR"),
    ],
    "money": [
        Col("mn", "money", ("'12.34'", "'-92233720368547758.08'", "'92233720368547758.07'", "'0'",
                            "NULL"), pg_expr="{c}::numeric", same=_money, duckdb_type="VARCHAR"),
    ],
    "bit": [
        Col("bt", "bit(4)", ("B'1010'", "B'0000'", "NULL"), **TEXT, duckdb_type="VARCHAR"),
        Col("vb", "bit varying(12)", ("B''", "B'1'", "B'010101010101'", "NULL"), **TEXT,
            duckdb_type="VARCHAR"),
    ],
    "text_search": [
        Col("tsv", "tsvector", ("'a fat cat:3A sat'", "''", "NULL"), **TEXT, duckdb_type="VARCHAR"),
        Col("tsq", "tsquery", ("'fat & (rat | cat)'", "NULL"), **TEXT, duckdb_type="VARCHAR"),
    ],
    "xml": [Col("x", "xml", ("NULL",), **TEXT, duckdb_type="VARCHAR")],  # values: see _xml_values
    "range": [
        Col("r4", "int4range", ("'[1,10)'", "'empty'", "'(,)'", "NULL"), **TEXT,
            duckdb_type="VARCHAR"),
        Col("rtz", "tstzrange", ("'[2024-01-01 00:00+02, infinity)'", "NULL"), **TEXT,
            duckdb_type="VARCHAR"),
        Col("rn", "numrange", ("'(1.5,2.50]'", "NULL"), **TEXT, duckdb_type="VARCHAR"),
        Col("rd", "daterange", ("'[2024-01-01,2024-02-01)'", "NULL"), **TEXT, duckdb_type="VARCHAR"),
        Col("rm", "int4multirange", ("'{[1,3), [5,7)}'", "'{}'", "NULL"), **TEXT,
            duckdb_type="VARCHAR"),
    ],
    "hstore": [
        Col("hs", "hstore", ("'a=>1, b=>NULL, \"c d\"=>\"e=>f\"'", "''", "NULL"), same=_hstore,
            duckdb_type="JSON"),
    ],
    "domain": [
        Col("dm", "money2", ("'1.50'", "'99999999.99'", "NULL"), same=_decimal_exact,
            mapping_rule="numeric", duckdb_type="DECIMAL(10,2)"),
        Col("dst", "short_text", ("'abc'", "NULL"), mapping_rule="text", duckdb_type="VARCHAR"),
        Col("dl", "id_list", ("'{1,NULL}'", "'{}'", "NULL"), same=_nested(lambda p, v: p == v),
            mapping_rule="array", duckdb_type="JSON"),
        Col("dd", "day", ("'2024-02-29'", "NULL"), mapping_rule="date", duckdb_type="DATE"),
    ],
    "composite": [
        Col("cp", "pair",
            ("ROW(1, 'x', 'NaN', 1.50, '2024-01-01 00:00:00+00', '{1,NULL}')::pair",
             "ROW(NULL, NULL, NULL, NULL, NULL, NULL)::pair", "NULL"),
            same=_composite, duckdb_type="JSON"),
    ],
    "other": [
        Col("pt", "point", ("'(1,2.5)'", "NULL"), **TEXT, duckdb_type="VARCHAR"),
        Col("lsn", "pg_lsn", ("'16/B374D848'", "NULL"), **TEXT, duckdb_type="VARCHAR"),
        Col("hv", "halfvec", ("'[1,2.5,-3]'", "NULL"), **TEXT, duckdb_type="VARCHAR"),
    ],
}

_XML_VALUES = ("'<a b=\"1\">text</a>'", "'fragment <b/>'", "NULL")


@dataclass(frozen=True)
class Failing:
    """A value the map refuses: the table must fail, naming everything needed to fix it."""

    case: str
    sql_type: str
    value: str
    says: str
    rule: str = field(default="infinity")


FAILING = [
    Failing("numeric_nan", "numeric(10,2)", "'NaN'", "'NaN'", rule="numeric"),
    Failing("timestamp_infinity", "timestamp", "'infinity'", "'infinity'"),
    Failing("timestamptz_minus_infinity", "timestamptz", "'-infinity'", "'-infinity'"),
    Failing("date_infinity", "date", "'infinity'", "'infinity'"),
    Failing("domain_date_infinity", "day", "'infinity'", "'infinity'", rule="domain"),
    Failing("time_24", "time", "'24:00:00'", "'24:00:00'", rule="time"),
    Failing("timestamp_year_10000", "timestamp", "'10000-01-01 00:00:00'", "year 10000"),
    Failing("date_bc", "date", "'0044-03-15 BC'", "year 44 BC"),
    Failing("array_lower_bound", "int[]", "'[0:2]={1,2,3}'", "[0:2]", rule="array"),
]


@dataclass
class Loaded:
    url: str
    duckdb_path: Path
    work_dir: Path
    plan: TablePlan
    xml_supported: bool


def _plan(url: str, table: str, overrides: Overrides | None = None) -> TablePlan:
    with psycopg.connect(url) as conn:
        catalog = discover(conn, schemas=["public"], table=table)
    (plan,) = build_plans(catalog, "duckdb", overrides)
    return plan


def _load(loaded: Loaded, plan: TablePlan) -> None:
    load_table(
        plan, source_url=loaded.url, destination=duckdb_destination(str(loaded.duckdb_path)),
        dataset="raw", work_dir=loaded.work_dir, hash_salt=SALT,
    )


def _pg(url: str) -> psycopg.Connection:
    """A connection that reads values as the extractor's session writes their text."""
    conn = psycopg.connect(url, autocommit=True)
    for setting in ("IntervalStyle = 'iso_8601'", "DateStyle = 'ISO, YMD'", "TimeZone = 'UTC'",
                    "extra_float_digits = 3", "bytea_output = 'hex'"):
        conn.execute(f"SET {setting}")
    register_hstore(TypeInfo.fetch(conn, "hstore"), conn)
    register_composite(CompositeInfo.fetch(conn, "pair"), conn)
    conn.adapters.register_loader("money", TextLoader)
    return conn


def create_table(url: str, table: str, columns: list) -> tuple[bool, int]:
    """Create `table` with `columns` (the type setup first) and insert their values, one row
    per value index, NULL where a column has fewer values. Returns whether xml works and the
    number of rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP_SQL)
        try:
            conn.execute("SELECT '<a/>'::xml")
            xml_supported = True
        except psycopg.errors.FeatureNotSupported:  # server built without libxml
            xml_supported = False
        values = {c.name: list(c.values) for c in columns}
        if xml_supported and "x" in values:
            values["x"] = list(_XML_VALUES)
        rows = max(len(v) for v in values.values())
        conn.execute(
            f"CREATE TABLE {table} (id int PRIMARY KEY, "
            + ", ".join(f"{c.name} {c.sql_type}" for c in columns) + ")"
        )
        conn.execute("SET TimeZone = 'America/New_York'")  # offsets must not leak
        for row in range(rows):
            literals = [values[c.name][row] if row < len(values[c.name]) else "NULL"
                        for c in columns]
            conn.execute(f"INSERT INTO {table} VALUES ({row}, {', '.join(literals)})")
    return xml_supported, rows


@pytest.fixture(scope="module")
def loaded(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    name = pg_server.create_database("types")
    url = pg_server.url(name)
    root = tmp_path_factory.mktemp("roundtrip")
    try:
        xml_supported, _ = create_table(url, "roundtrip",
                                        [c for cols in CASES.values() for c in cols])
        result = Loaded(url, root / "dest.duckdb", root / "work", _plan(url, "roundtrip"),
                        xml_supported)
        _load(result, result.plan)
        yield result
    finally:
        pg_server.drop_database(name)


def compare_values(col: Col, expected: list[tuple[int, Any]], actual: list[tuple[int, Any]],
                   same: Callable[[Any, Any], bool], destination: str) -> int:
    """Compare (id, value) rows from PostgreSQL and a destination one by one: NULL stays NULL,
    every other value is `same`. Returns how many non-NULL values were compared."""
    compared = 0
    for (row, pg_value), (_, value) in zip(expected, actual, strict=True):
        if pg_value is None:
            assert value is None, f"{col.name} row {row}: NULL became {value!r}"
            continue
        assert value is not None, f"{col.name} row {row}: {pg_value!r} became NULL"
        assert same(pg_value, value), (
            f"{col.name} ({col.sql_type}) row {row}: PostgreSQL {pg_value!r}, "
            f"{destination} {value!r}"
        )
        compared += 1
    return compared


def _duck(loaded: Loaded) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(loaded.duckdb_path), read_only=True)


@pytest.mark.parametrize("rule", list(CASES))
def test_roundtrip(loaded: Loaded, rule: str) -> None:
    with _pg(loaded.url) as pg, _duck(loaded) as duck:
        described = {row[0]: row[1] for row in duck.execute("DESCRIBE raw.roundtrip").fetchall()}
        for col in CASES[rule]:
            mapping = loaded.plan.column_for(col.name)
            assert mapping.rule == (col.mapping_rule or rule), col.name
            assert described[col.name] == mapping.duckdb_type == col.duckdb_type, col.name
            if col.mapping_rule is None and rule not in ("numeric",):
                assert mapping.duckdb_type in RULES[rule].duckdb, col.name
            quoted = f'"{col.name}"'
            expected = pg.execute(
                f"SELECT id, {col.pg_expr.format(c=quoted)} FROM roundtrip ORDER BY id"
            ).fetchall()
            actual = duck.execute(
                f"SELECT id, {col.duck_expr.format(c=quoted)} FROM raw.roundtrip ORDER BY id"
            ).fetchall()
            assert [r[0] for r in actual] == [r[0] for r in expected]
            compared = compare_values(col, expected, actual, col.same, "DuckDB")
            if col.name != "x" or loaded.xml_supported:
                assert compared >= 1, f"{col.name}: no value compared"


@pytest.mark.parametrize("case", FAILING, ids=[f.case for f in FAILING])
def test_lossy_value_fails_the_table(loaded: Loaded, case: Failing) -> None:
    table = f"fails_{case.case}"
    with psycopg.connect(loaded.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int, val {case.sql_type})")
        conn.execute(f"INSERT INTO {table} VALUES (1, NULL), (2, {case.value})")
    plan = _plan(loaded.url, table)
    with pytest.raises(Exception) as raised:
        _load(loaded, plan)
    error = root_cause(raised.value)
    assert isinstance(error, LossyValueError), repr(raised.value)
    message = str(error)
    for part in (f"public.{table}", "'val'", f"({plan.table.column('val').type})", case.says,
                 "cast: text", "exclude: true"):
        assert part in message, f"{part!r} not in {message!r}"
    with _duck(loaded) as duck:
        tables = {r[0] for r in duck.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw'"
        ).fetchall()}
    assert table not in tables


def test_cast_text_and_other_overrides_load_what_the_map_refuses(loaded: Loaded) -> None:
    refused = {f.case: f for f in FAILING}
    text_cases = ["numeric_nan", "timestamp_infinity", "date_bc", "time_24", "array_lower_bound",
                  "timestamp_year_10000"]
    columns = {name: refused[name] for name in text_cases}
    with psycopg.connect(loaded.url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE overridden (id int, "
            + ", ".join(f"{n} {f.sql_type}" for n, f in columns.items())
            + ", as_json int[], hashed text)"
        )
        conn.execute(
            "INSERT INTO overridden VALUES (1, "
            + ", ".join(f.value for f in columns.values())
            + ", '{1,NULL}', 'secret value'), (2, "
            + ", ".join("NULL" for _ in columns) + ", NULL, NULL)"
        )
    overrides = parse_overrides({"tables": {"public.overridden": {"columns": {
        **{name: {"cast": "text"} for name in columns},
        "as_json": {"cast": "json"},
        "hashed": {"hash": True},
    }}}}, "tables.yaml")
    assert overrides.for_table("public.overridden").columns["time_24"] == ColumnOverride(cast="text")
    plan = _plan(loaded.url, "overridden", overrides)
    assert {c.rule for c in plan.columns if c.name in columns} == {"cast_text"}
    assert plan.column_for("as_json").rule == "cast_json"
    assert plan.column_for("hashed").rule == "hash"
    _load(loaded, plan)
    names = [*columns, "as_json", "hashed"]
    with _pg(loaded.url) as pg, _duck(loaded) as duck:
        expected = pg.execute(
            f"SELECT {', '.join(f'{n}::text' for n in columns)}, to_jsonb(as_json)::text, "
            "hashed FROM overridden ORDER BY id"
        ).fetchall()
        actual = duck.execute(
            f"SELECT {', '.join(n + '::VARCHAR' for n in names)} FROM raw.overridden ORDER BY id"
        ).fetchall()
        described = dict(duck.execute("SELECT column_name, data_type FROM "
                                      "information_schema.columns WHERE table_name = 'overridden'"
                                      ).fetchall())
    assert described["as_json"] == "JSON" and described["numeric_nan"] == "VARCHAR"
    assert actual[1] == (None,) * len(names)
    for name, pg_value, duck_value in zip(names, expected[0], actual[0], strict=True):
        if name == "hashed":
            pg_value = hashlib.sha256(SALT + pg_value.encode()).hexdigest()
        elif name == "as_json":
            assert json.loads(duck_value) == json.loads(pg_value) == [1, None]
            continue
        assert duck_value == pg_value, name
    assert actual[0][: len(columns)] == ("NaN", "infinity", "0044-03-15 BC", "24:00:00",
                                         "[0:2]={1,2,3}", "10000-01-01 00:00:00")


def test_every_type_map_row_has_a_roundtrip_test() -> None:
    tested = set(CASES) | {f.rule for f in FAILING} | {"cast_text", "cast_json", "hash"}
    assert tested == set(RULES)


def test_docs_table_is_type_rules() -> None:
    text = DOC.read_text(encoding="utf-8")
    generated = text.split(TYPE_TABLE_BEGIN, 1)[1].split(TYPE_TABLE_END, 1)[0].strip()
    assert generated == render_type_rules(), (
        "docs/type-map.md is out of date: run python -c \"from pg_to_bq.planning.types import "
        "write_type_map_doc; write_type_map_doc()\""
    )


@pytest.mark.parametrize("destination", ["duckdb", "bigquery"])
def test_declared_destination_types_are_what_dlt_creates(destination: str) -> None:
    factory = getattr(dlt.destinations, destination)()
    mapper = factory.capabilities().get_type_mapper()
    declared = _DUCKDB_TYPES if destination == "duckdb" else _BIGQUERY_TYPES
    for logical, hint in _DLT_TYPES.items():
        if logical == "decimal":
            continue
        if logical == "json":
            # The hint a JSON column really gets (text for BigQuery: see ColumnMapping.dlt_hint).
            hint = map_column(Column(name="c", type="jsonb", type_name="jsonb"), "c",
                              destination).dlt_hint()
        created = mapper.to_destination_type({"name": "c", **hint}, {"name": "t"})
        assert created == declared[logical], logical


@pytest.mark.parametrize("destination", ["duckdb", "bigquery"])
def test_planned_types_are_what_dlt_creates_for_every_column(loaded: Loaded,
                                                             destination: str) -> None:
    """Schema changes are decided (`pg_to_bq.load.schema_changes.evolutions_of`) from the
    types the mappings declare, without asking dlt: each must be what dlt creates, for every
    column of every type rule, casts and hashes included."""
    overrides = parse_overrides({"tables": {"public.roundtrip": {"columns": {
        "tm": {"cast": "text"}, "i4": {"cast": "json"}, "t": {"hash": True}}}}},
        "tables.yaml")
    with psycopg.connect(loaded.url) as conn:
        catalog = discover(conn, schemas=["public"], table="roundtrip")
    (plan,) = build_plans(catalog, destination, overrides)
    assert {"cast_text", "cast_json", "hash"} <= {c.rule for c in plan.columns}
    mapper = getattr(dlt.destinations, destination)().capabilities().get_type_mapper()
    hints = [c.dlt_hint() for c in plan.columns]
    table = {"name": plan.destination_table, "columns": {h["name"]: h for h in hints},
             "write_disposition": "replace"}
    created = {h["name"]: mapper.to_destination_type(h, table) for h in hints}
    assert planned_types(plan, destination) == created


@pytest.mark.parametrize(
    ("declared", "bigquery", "duckdb"),
    [
        ((10, 2), "NUMERIC(10,2)", "DECIMAL(10,2)"),
        ((29, 0), "NUMERIC(29,0)", "DECIMAL(29,0)"),
        ((30, 0), "BIGNUMERIC(39,0)", "DECIMAL(30,0)"),
        ((38, 2), "BIGNUMERIC(39,2)", "DECIMAL(38,2)"),
        ((38, 10), "BIGNUMERIC(39,10)", "DECIMAL(38,10)"),
        ((76, 38), "BIGNUMERIC(76,38)", "VARCHAR"),
        ((50, 2), "STRING", "VARCHAR"),
        ((2, 5), "NUMERIC(5,5)", "DECIMAL(5,5)"),
        ((3, -2), "NUMERIC(5,0)", "DECIMAL(5,0)"),
    ],
)
def test_numeric_types_are_what_dlt_creates(declared: tuple[int, int], bigquery: str, duckdb: str) -> None:
    precision, scale = declared
    column = Column(name="n", type=f"numeric({precision},{scale})", type_name="numeric",
                    typmod=((precision << 16) | (scale & 0x7FF)) + 4)
    for destination, expected in (("bigquery", bigquery), ("duckdb", duckdb)):
        mapping = map_column(column, "n", destination)
        assert mapping.destination_type(destination) == expected
        assert mapping.rule == "numeric"
        mapper = getattr(dlt.destinations, destination)().capabilities().get_type_mapper()
        created = mapper.to_destination_type(mapping.dlt_hint(), {"name": "t"})
        assert created == expected, destination
