"""The values check (`pg_to_bq.checks.fingerprint`), in tiers.

1. Pure: the SQL builders quote odd identifiers, the scope is chosen as documented, and
   `compare` names exactly the differing columns.
2. Real PostgreSQL and a real DuckDB file: a table of many types loaded by `load_table`
   has equal fingerprints on both sides; one changed value per class in the DuckDB copy
   fails the check naming exactly that column; so do 19,389 NULLs out of 20,000 rows, a
   change inside a sampled key range, a column NULLed in a table without a key.
3. The BigQuery emulator: the same table loaded by dlt's BigQuery destination has the
   source's fingerprint (see `test_bigquery_fingerprint_equals_the_source` for what the
   emulator cannot do).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from pg_to_bq.checks import fingerprint as fp
from pg_to_bq.checks.outcomes import FINGERPRINT
from pg_to_bq.destinations.duckdb_file import duckdb_destination
from pg_to_bq.load.group import load_table
from pg_to_bq.planning.catalog import Column, Table
from pg_to_bq.planning.overrides import Overrides, parse_overrides
from pg_to_bq.planning.tables import TablePlan, build_plans, plan_table
from pg_to_bq.planning.types import quote_ident
from pg_to_bq.postgres.discovery import discover
from pg_to_bq.postgres.sql import SESSION  # the extraction's session settings, exactly

SALT = b"fingerprint-test-salt"

# -- tier 1: pure ------------------------------------------------------------------------

ODD_SCHEMA = 'we ird; sch"ema'
ODD_TABLE = "select"
ODD_COLUMNS = ('a"b', "with space", "semi;colon", "日本語", "select", "1st")


def _odd_plan(destination: str) -> TablePlan:
    columns = (
        Column(name="id", type="bigint", type_name="int8"),
        Column(name=ODD_COLUMNS[0], type="text", type_name="text"),
        Column(name=ODD_COLUMNS[1], type="integer", type_name="int4"),
        Column(name=ODD_COLUMNS[2], type="numeric(5,1)", type_name="numeric",
               typmod=((5 << 16) | 1) + 4),
        Column(name=ODD_COLUMNS[3], type="double precision", type_name="float8"),
        Column(name=ODD_COLUMNS[4], type="boolean", type_name="bool"),
        Column(name=ODD_COLUMNS[5], type="timestamp with time zone", type_name="timestamptz"),
    )
    table = Table(schema=ODD_SCHEMA, name=ODD_TABLE, columns=columns, primary_key=("id",))
    return plan_table(table, destination, overrides=Overrides(sensitive_columns=False))


def test_source_sql_quotes_every_identifier() -> None:
    plan = _odd_plan("duckdb")
    scope = fp.scope_for(plan, 50_000, "seed", bounds=(1, 50_000))
    sql = fp.source_sql(plan, scope)
    assert f"FROM {quote_ident(ODD_SCHEMA)}.{quote_ident(ODD_TABLE)} WHERE" in sql
    for name in ODD_COLUMNS:
        assert quote_ident(name) in sql, name
    assert '"id" BETWEEN' in sql and scope.source_where in sql


def test_text_is_hashed_as_utf8_whatever_the_server_encoding() -> None:
    plan = _odd_plan("duckdb")
    scope = fp.scope_for(plan, 1, "seed")
    assert "convert_to" not in fp.source_sql(plan, scope)  # UTF8: md5(text) is over UTF-8
    assert f"md5(convert_to(({quote_ident(ODD_COLUMNS[0])})::text, 'UTF8'))" in fp.source_sql(
        plan, scope, server_encoding="LATIN1")


def test_duckdb_sql_quotes_every_identifier_and_runs() -> None:
    plan = _odd_plan("duckdb")
    con = duckdb.connect()
    con.execute(f"CREATE SCHEMA {fp.qualified_name('duckdb', ODD_SCHEMA)}")
    table = fp.qualified_name("duckdb", ODD_SCHEMA, plan.destination_table)
    columns = ", ".join(f"{fp.qualified_name('duckdb', c.name)} {c.duckdb_type}"
                        for c in plan.columns)
    con.execute(f"CREATE TABLE {table} ({columns})")
    con.execute(f"INSERT INTO {table} VALUES (1, 'x', 2, 3.5, 0.1, true, "
                "TIMESTAMPTZ '2024-01-01 00:00:00+00'), (2, NULL, NULL, NULL, NULL, NULL, NULL)")
    for scope in (fp.scope_for(plan, 2, "seed"),
                  fp.scope_for(plan, 50_000, "seed", bounds=(1, 50_000)),
                  fp.scope_for(plan, 50_000, "seed", full_rows=0, bounds=None)):
        sql = fp.destination_sql(plan, "duckdb", table, scope)
        for column in plan.columns:
            assert fp.qualified_name("duckdb", column.name) in sql, column.name
        found = fp.parse(plan, con.execute(sql).fetchone(), scope)
        assert found.rows == (2 if not scope.ranges else sum(
            1 for k in (1, 2) if any(a <= k <= b for a, b in scope.ranges)))


def test_bigquery_sql_quotes_with_backticks() -> None:
    plan = _odd_plan("bigquery")
    table = fp.qualified_name("bigquery", "my-project", "raw", plan.destination_table)
    scope = fp.scope_for(plan, 50_000, "seed", bounds=(1, 50_000))
    sql = fp.destination_sql(plan, "bigquery", table, scope)
    assert table == f"`my-project`.`raw`.`{plan.destination_table}`"
    for column in plan.columns:
        assert f"`{column.name}`" in sql, column.name
    assert "`id` BETWEEN" in sql and '"' not in sql  # BigQuery reads "x" as a string
    assert fp.qualified_name("bigquery", "a`b\\c") == "`a\\`b\\\\c`"


def _plan_with_key(key_type: str | None, primary_key: tuple[str, ...] = ("id",)) -> TablePlan:
    columns = [Column(name="id", type=key_type or "bigint", type_name=key_type or "int8"),
               Column(name="other", type="integer", type_name="int4")]
    table = Table(schema="public", name="t", columns=tuple(columns),
                  primary_key=primary_key if key_type else ())
    return plan_table(table, "duckdb")


def test_scope_is_the_whole_table_when_small() -> None:
    plan = _plan_with_key("int8")
    scope = fp.scope_for(plan, fp.DEFAULT_FULL_ROWS, "seed", bounds=(1, 10**9))
    assert (scope.values, scope.ranges, scope.source_where) == (True, (), None)
    assert scope.destination_where("duckdb") is None
    assert scope.description == f"whole table ({fp.DEFAULT_FULL_ROWS:,} rows)"


def test_scope_of_a_large_table_is_key_ranges_chosen_by_the_seed() -> None:
    plan = _plan_with_key("int4")
    first = fp.scope_for(plan, 1_000_000, "load-1", ranges=3, range_rows=10_000,
                         bounds=(1, 1_000_000))
    assert first == fp.scope_for(plan, 1_000_000, "load-1", ranges=3, range_rows=10_000,
                                 bounds=(1, 1_000_000))
    second = fp.scope_for(plan, 1_000_000, "load-2", ranges=3, range_rows=10_000,
                          bounds=(1, 1_000_000))
    assert first.ranges != second.ranges
    for scope in (first, second):
        assert len(scope.ranges) == 3 and scope.values
        for index, (low, high) in enumerate(scope.ranges):
            assert high - low + 1 == 10_000
            # one range in each third of the key's span, so they never overlap
            assert 1 + index * 333_333 <= low and high < 1 + (index + 1) * 333_333
        shown = ", ".join(f"[{a}, {b}]" for a, b in scope.ranges)
        assert shown in scope.description and "key id" in scope.description
        assert scope.source_where == " OR ".join(f'("id" BETWEEN {a} AND {b})'
                                                 for a, b in scope.ranges)
        assert scope.destination_where("bigquery") == scope.source_where.replace('"', "`")
    # A sparse key: ranges are wider in key values, for about range_rows rows each.
    sparse = fp.scope_for(plan, 100_000, "s", ranges=2, range_rows=1_000, bounds=(0, 999_999))
    assert all(b - a + 1 == 10_000 for a, b in sparse.ranges)
    # Ranges that would cover the table: the whole table.
    assert fp.scope_for(plan, 8_000, "s", full_rows=10, ranges=4, range_rows=2_000,
                        bounds=(1, 8_000)).ranges == ()


@pytest.mark.parametrize(("key_type", "primary_key", "bounds", "says"), [
    (None, (), (1, 10), "no single integer primary key"),
    ("text", ("id",), (1, 10), "no single integer primary key"),
    ("uuid", ("id",), (1, 10), "no single integer primary key"),
    ("int8", ("id", "other"), (1, 10), "no single integer primary key"),
    ("int8", ("id",), None, "bounds of key id are not known"),
])
def test_a_large_table_without_an_integer_key_compares_counts_only(
        key_type: str | None, primary_key: tuple[str, ...], bounds: Any, says: str) -> None:
    plan = _plan_with_key(key_type, primary_key)
    scope = fp.scope_for(plan, 10**7, "seed", bounds=bounds)
    assert not scope.values and scope.ranges == ()
    assert scope.description.startswith("not sampled") and says in scope.description
    assert "not values" in scope.description
    sql = fp.source_sql(plan, scope)
    assert "md5" not in sql and "sum(" not in sql  # counts only


def _digests(**columns: tuple[int, tuple[int | Decimal, ...]]) -> dict[str, fp.ColumnDigest]:
    return {name: fp.ColumnDigest(count, digest, "integer")
            for name, (count, digest) in columns.items()}


SCOPE = "whole table (10 rows)"


def test_compare_passes_when_equal_and_lists_what_it_did_not_compare() -> None:
    columns = _digests(a=(10, (45, 285)), b=(3, (Decimal("1.50"), 7)))
    outcome = fp.compare(fp.Fingerprint(10, columns, SCOPE),
                         fp.Fingerprint(10, dict(columns), SCOPE),
                         skipped={"card": "hashed", "api_token": "excluded"})
    assert outcome.passed and outcome.name == FINGERPRINT == "values"
    assert outcome.description == f"values of 2 column(s) match the source over {SCOPE}; " \
        "not compared: card, api_token"
    assert outcome.metadata["not_compared"] == {"card": "hashed", "api_token": "excluded"}
    assert outcome.metadata["compared_columns"] == ["a", "b"]
    assert "differences" not in outcome.metadata


def test_compare_names_only_the_differing_column() -> None:
    source = _digests(a=(10, (45, 285)), b=(10, (7, 49)), c=(10, (1, 1)))
    changed = {**source, "b": fp.ColumnDigest(10, (8, 64), "integer")}
    outcome = fp.compare(fp.Fingerprint(10, source, SCOPE), fp.Fingerprint(10, changed, SCOPE),
                         skipped={})
    assert not outcome.passed and outcome.severity == "ERROR"
    assert outcome.description == f"1 of 3 column(s) differ: b (values differ) (scope: {SCOPE})"
    assert list(outcome.metadata["differences"]) == ["b"]
    assert outcome.metadata["differences"]["b"]["source"] == {"non_null": 10,
                                                             "digest": ["7", "49"]}
    assert outcome.metadata["differences"]["b"]["destination"]["digest"] == ["8", "64"]


def test_compare_names_non_null_counts_and_rows() -> None:
    source = _digests(email=(20_000, (123, 456)), id=(20_000, (1, 2)))
    nulled = {**source, "email": fp.ColumnDigest(611, (12, 34), "integer")}
    outcome = fp.compare(fp.Fingerprint(20_000, source, SCOPE),
                         fp.Fingerprint(19_999, nulled, SCOPE), skipped={})
    assert not outcome.passed
    assert outcome.description.startswith("rows in scope: source 20,000, destination 19,999")
    assert ("email (non-null count: source 20,000, destination 611; values differ too)"
            in outcome.description)
    assert "id" not in outcome.metadata["differences"]


def test_compare_warns_when_a_merged_table_holds_rows_deleted_in_the_source() -> None:
    source, more = _digests(a=(10, (45, 285))), _digests(a=(11, (55, 385)))
    outcome = fp.compare(fp.Fingerprint(10, source, SCOPE), fp.Fingerprint(11, more, SCOPE),
                         skipped={}, disposition="merge")
    assert not outcome.passed and outcome.severity == "WARN"
    assert "delete pass" in outcome.description
    fewer = fp.compare(fp.Fingerprint(11, more, SCOPE), fp.Fingerprint(10, source, SCOPE),
                       skipped={}, disposition="merge")
    assert fewer.severity == "ERROR"


def test_parse_reads_ints_decimals_text_and_empty_sums() -> None:
    plan = _plan_with_key("int8")
    scope = fp.Scope("whole table (0 rows)")
    assert fp.parse(plan, (0, 0, None, None, 0, None, None), scope).columns["id"] == \
        fp.ColumnDigest(0, (0, 0), "integer")
    assert fp.parse(plan, ("2", "2", "3", "5", "1", Decimal("7"), "49"), scope).columns[
        "other"] == fp.ColumnDigest(1, (7, 49), "integer")
    with pytest.raises(ValueError, match="7 values"):
        fp.parse(plan, (1, 2, 3), scope)


# -- tier 2: PostgreSQL → DuckDB -----------------------------------------------------------

KINDS_SQL = r"""
CREATE TYPE mood AS ENUM ('sad', 'happy 😀', 'it''s');
CREATE TABLE kinds (
    id bigint PRIMARY KEY, i2 int2, i4 int4, i8 int8, n12 numeric(12,2),
    n38 numeric(38,10), nfree numeric, f4 real, f8 double precision, b boolean, t text,
    vc varchar(8), ch char(5), jb jsonb, j json, u uuid, by bytea, d date, ts timestamp,
    tz timestamptz, tm time, iv interval, mo mood, ai int[], "Odd ""col""; 日本" integer);
INSERT INTO kinds VALUES
 (1, -32768, -2147483648, -9223372036854775808, -9999999999.99,
  -1234567890123456789012345678.0123456789, 'NaN', 'NaN', 'NaN', true, '', '', '',
  '{"b": 1, "a": [1, 2]}', '{"a": 1,  "a": 2}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x',
  '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00', '00:00:00',
  '1 year 2 months 3 days 04:05:06.789', 'sad', '{1,NULL,3}', 1),
 (2, 32767, 2147483647, 9223372036854775807, 9999999999.99,
  1234567890123456789012345678.0123456789, 'Infinity', 'Infinity', 'Infinity', false,
  'ünïcödé 日本語 😀', 'abcdefgh', 'ab', 'null', '[]', '00000000-0000-0000-0000-000000000000',
  '\x00ff10', '9999-12-31', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999+00',
  '23:59:59.999999', '-1 month +1 day', 'happy 😀', '{}', -1),
 (3, 0, 0, 0, 0, -0.0000000001, '-Infinity', '-Infinity', '-Infinity', NULL,
  E'line\nbreak\ttab \\ "q" ''s''', NULL, 'abcde', '"str"', 'null', NULL,
  decode(repeat('ab', 5000), 'hex'), '1970-01-01', '1969-12-31 23:59:59.999999',
  '1969-12-31 23:59:59.999999+00', '12:34:56.789', '0', 'it''s', '{{1,2},{3,NULL}}', 0),
 (4, 1, 1, 1, -0.01, 0, '1.2300', '-0', '-0', true, 'e' || chr(769), 'x', 'x',
  '123456789012345678901234567890.123456789', '{"n": 1e400}', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12',
  '\x00', '2000-02-29', '2024-03-10 02:30:00', '2024-03-10 02:30:00-08', '00:00:00.000001',
  '00:00:00.000001', 'sad', '{5}', NULL),
 (5, 2, 2, 2, 0.01, 1, '-0.000000000000000000000000000001', '0.1', '0.1', false, chr(233),
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2024-11-03 01:30:00 America/New_York',
  NULL, NULL, NULL, NULL, NULL),
 (6, NULL, NULL, NULL, NULL, NULL, NULL, '1.4e-45', '4.9e-324', NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (7, NULL, NULL, NULL, NULL, NULL, NULL, '3.4028235e38', '1e308', NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (8, NULL, NULL, NULL, NULL, NULL, NULL, '-1e-40', '-2.2250738585072014e-308', NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (9, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '1e20', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (10, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

CREATE TABLE people (id bigint PRIMARY KEY, email text, amount numeric(12,2),
                     created_at timestamptz);
INSERT INTO people SELECT g, 'user' || g || '@example.com', g / 100.0,
    timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, 20000) AS g;

CREATE TABLE heap (n integer, t text);
INSERT INTO heap SELECT g, 'row ' || g FROM generate_series(1, 3000) AS g;

CREATE TABLE guarded (id integer PRIMARY KEY, api_token text, card text, note text);
INSERT INTO guarded VALUES (1, 'tok-1', '4111 1111 1111 1111', 'a'), (2, NULL, NULL, 'b'),
                           (3, 'tok-3', '5500 0000 0000 0004', NULL);
"""
OVERRIDES = {"tables": {"public.guarded": {"columns": {"card": {"hash": True}}}}}
TABLES = ("kinds", "people", "heap", "guarded")


@dataclass
class Loaded:
    url: str
    plans: dict[str, TablePlan]
    duckdb_path: Path
    work_dir: Path


def _plans(url: str, destination: str) -> dict[str, TablePlan]:
    with psycopg.connect(url) as conn:
        catalog = discover(conn, schemas=["public"])
    plans = build_plans(catalog, destination, parse_overrides(OVERRIDES, "test"))
    return {p.table.name: p for p in plans}


@pytest.fixture(scope="module")
def source(pg_server) -> Iterator[str]:
    # Values are written in another time zone: no offset may leak into a digest.
    with pg_server.database("fingerprint", "SET TimeZone = 'Asia/Tokyo';" + KINDS_SQL) as url:
        yield url


@pytest.fixture(scope="module")
def loaded(source: str, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    root = tmp_path_factory.mktemp("fingerprint_duckdb")
    plans = _plans(source, "duckdb")
    for name in TABLES:
        load_table(plans[name], source_url=source,
                   destination=duckdb_destination(str(root / "dest.duckdb")), dataset="raw",
                   work_dir=root / "work", hash_salt=SALT)
    return Loaded(source, plans, root / "dest.duckdb", root / "work")


def source_fingerprint(url: str, plan: TablePlan, scope: fp.Scope) -> fp.Fingerprint:
    """The PostgreSQL side, in a transaction with the extraction's session settings."""
    with psycopg.connect(url) as conn:
        for statement in SESSION:
            conn.execute(statement)
        sql = fp.source_sql(plan, scope)
        assert SALT.decode() not in sql
        return fp.parse(plan, conn.execute(sql).fetchone(), scope)


def source_rows(url: str, plan: TablePlan) -> int:
    with psycopg.connect(url) as conn:
        [(rows,)] = conn.execute(f"SELECT count(*) FROM {quote_ident(plan.table.name)}").fetchall()
    return rows


def duckdb_fingerprint(con: duckdb.DuckDBPyConnection, plan: TablePlan,
                       scope: fp.Scope) -> fp.Fingerprint:
    table = fp.qualified_name("duckdb", "raw", plan.destination_table)
    return fp.parse(plan, con.execute(fp.destination_sql(plan, "duckdb", table, scope)
                                      ).fetchone(), scope)


def check(loaded: Loaded, table: str, scope: fp.Scope | None = None, tamper: str | None = None):
    """The values check of `table`, with `tamper` (DuckDB SQL on `raw.<table>`) applied to
    the loaded copy for the duration (rolled back)."""
    plan = loaded.plans[table]
    scope = scope or fp.scope_for(plan, source_rows(loaded.url, plan), "seed")
    expected = source_fingerprint(loaded.url, plan, scope)
    with duckdb.connect(str(loaded.duckdb_path)) as con:
        con.execute("BEGIN")
        try:
            if tamper:
                con.execute(tamper)
            found = duckdb_fingerprint(con, plan, scope)
        finally:
            con.execute("ROLLBACK")
    return fp.compare(expected, found, skipped=fp.not_compared(plan),
                      disposition=plan.disposition)


def test_every_type_has_the_source_fingerprint(loaded: Loaded) -> None:
    plan = loaded.plans["kinds"]
    methods = {c.source.name: fp.column_method(c) for c in plan.columns}
    assert set(methods.values()) == set(fp.METHODS) - {"count"}  # every class is present
    outcome = check(loaded, "kinds")
    assert outcome.passed, outcome.description
    assert outcome.metadata["compared_columns"] == [c.source.name for c in plan.columns]
    assert outcome.metadata["rows"] == {"source": 10, "destination": 10}


def test_one_query_checks_many_tables(loaded: Loaded) -> None:
    scopes = {name: fp.scope_for(loaded.plans[name], 100, "seed", bounds=(1, 20_000))
              for name in TABLES}
    items = [(loaded.plans[n], fp.qualified_name("duckdb", "raw", loaded.plans[n].destination_table),
              scopes[n]) for n in TABLES]
    with duckdb.connect(str(loaded.duckdb_path), read_only=True) as con:
        rows = fp.split_many(con.execute(fp.destination_sql_many(items, "duckdb")).fetchall())
    assert sorted(rows) == [0, 1, 2, 3]
    for index, name in enumerate(TABLES):
        plan = loaded.plans[name]
        found = fp.parse(plan, rows[index], scopes[name])
        expected = source_fingerprint(loaded.url, plan, scopes[name])
        outcome = fp.compare(expected, found, skipped=fp.not_compared(plan))
        assert outcome.passed, (name, outcome.description)


ODD = 'Odd "col"; 日本'
# One change per class (and the edge cases of each), made in the loaded copy.
TAMPERING = [
    ("i8", "UPDATE raw.kinds SET i8 = i8 - 1 WHERE id = 2"),
    ("i2", "UPDATE raw.kinds SET i2 = NULL WHERE id = 3"),  # a 0 becoming NULL
    # Compensating changes: the sum stays, the sum of squares does not.
    ("i4", "UPDATE raw.kinds SET i4 = CASE id WHEN 4 THEN 0 WHEN 5 THEN 3 END "
           "WHERE id IN (4, 5)"),  # 1 + 2 = 0 + 3
    ("n12", "UPDATE raw.kinds SET n12 = n12 + 0.01 WHERE id = 1"),
    ("n12", "UPDATE raw.kinds SET n12 = CASE id WHEN 4 THEN 0.00 WHEN 5 THEN 0.00 END "
            "WHERE id IN (4, 5)"),  # -0.01 and 0.01 both become 0: the same sum
    ("n38", "UPDATE raw.kinds SET n38 = n38 + 0.0000000001 WHERE id = 2"),
    ("nfree", "UPDATE raw.kinds SET nfree = '1.23' WHERE id = 4"),  # the scale is kept
    ("f8", "UPDATE raw.kinds SET f8 = nextafter(f8, 1.0) WHERE id = 5"),  # one ulp
    # -0 became 0 (through 1: DuckDB skips an UPDATE to a value equal to the stored one)
    ("f8", "UPDATE raw.kinds SET f8 = 1 WHERE id = 4; UPDATE raw.kinds SET f8 = 0 WHERE id = 4"),
    ("f8", "UPDATE raw.kinds SET f8 = 5e-324 * 2 WHERE id = 6"),  # a subnormal
    ("f4", "UPDATE raw.kinds SET f4 = 0.1::DOUBLE WHERE id = 5"),  # not float32's 0.1
    ("f4", "UPDATE raw.kinds SET f4 = NULL WHERE id = 1"),  # NaN became NULL
    ("b", "UPDATE raw.kinds SET b = NOT b WHERE id = 1"),
    ("t", "UPDATE raw.kinds SET t = 'ünïcödé 日本語 😁' WHERE id = 2"),
    ("t", "UPDATE raw.kinds SET t = chr(233) WHERE id = 4"),  # é decomposed → composed
    ("t", "UPDATE raw.kinds SET t = NULL WHERE id = 1"),  # '' became NULL
    ("ch", "UPDATE raw.kinds SET ch = 'ab' WHERE id = 2"),  # char(5)'s padding lost
    ("vc", "UPDATE raw.kinds SET vc = 'abcdefg' WHERE id = 2"),
    ("jb", "UPDATE raw.kinds SET jb = '{\"b\": 1, \"a\": [1, 2]}' WHERE id = 1"),  # key order
    ("j", "UPDATE raw.kinds SET j = '{\"a\": 1, \"a\": 2}' WHERE id = 1"),  # spacing
    ("u", "UPDATE raw.kinds SET u = upper(u) WHERE id = 1"),
    ("by", "UPDATE raw.kinds SET \"by\" = '\\x00\\xFF\\x11'::BLOB WHERE id = 2"),
    ("d", "UPDATE raw.kinds SET d = d + 1 WHERE id = 4"),
    ("ts", "UPDATE raw.kinds SET ts = ts + INTERVAL 1 MICROSECOND WHERE id = 1"),
    ("tz", "UPDATE raw.kinds SET tz = tz + INTERVAL 1 HOUR WHERE id = 5"),  # a time zone slip
    ("tm", "UPDATE raw.kinds SET tm = TIME '23:59:59.999998' WHERE id = 2"),
    ("iv", "UPDATE raw.kinds SET iv = 'P1Y2M3DT4H5M6.78S' WHERE id = 1"),
    ("mo", "UPDATE raw.kinds SET mo = 'happy 😀' WHERE id = 1"),
    ("ai", "UPDATE raw.kinds SET ai = '[1, 3, null]' WHERE id = 1"),
    (ODD, "UPDATE raw.kinds SET {odd} = 2 WHERE id = 1"),  # its destination name differs
]


@pytest.mark.parametrize(("column", "tamper"), TAMPERING,
                         ids=[f"{c}-{i}" for i, (c, _) in enumerate(TAMPERING)])
def test_a_single_changed_value_fails_naming_its_column(loaded: Loaded, column: str,
                                                         tamper: str) -> None:
    plan = loaded.plans["kinds"]
    assert column in {c.source.name for c in plan.columns}
    tamper = tamper.replace("raw.kinds", fp.qualified_name("duckdb", "raw", plan.destination_table))
    outcome = check(loaded, "kinds", tamper=tamper.replace(
        "{odd}", fp.qualified_name("duckdb", plan.column_for(ODD).name)))
    assert not outcome.passed and outcome.severity == "ERROR"
    assert list(outcome.metadata["differences"]) == [column], outcome.description
    assert f" column(s) differ: {column} (" in outcome.description


def test_19389_nulls_of_20000_rows_fail_naming_the_column(loaded: Loaded) -> None:
    plan = loaded.plans["people"]
    nulls = "UPDATE raw.people SET email = NULL WHERE id > 611"
    # Compared whole, and as the default sample of key ranges.
    for scope in (fp.scope_for(plan, 20_000, "load-7", full_rows=20_000),
                  fp.scope_for(plan, 20_000, "load-7", bounds=(1, 20_000))):
        assert check(loaded, "people", scope).passed
        outcome = check(loaded, "people", scope, tamper=nulls)
        assert not outcome.passed and list(outcome.metadata["differences"]) == ["email"]
        if not scope.ranges:
            assert ("email (non-null count: source 20,000, destination 611; values differ "
                    "too)") in outcome.description


def test_a_change_inside_a_sampled_range_is_caught(loaded: Loaded) -> None:
    plan = loaded.plans["people"]
    scope = fp.scope_for(plan, 20_000, "load-42", full_rows=1_000, ranges=3, range_rows=500,
                         bounds=(1, 20_000))
    assert len(scope.ranges) == 3
    assert all(f"[{a}, {b}]" in scope.description for a, b in scope.ranges)
    assert check(loaded, "people", scope).passed
    low, high = scope.ranges[1]
    inside = check(loaded, "people", scope,
                   f"UPDATE raw.people SET amount = amount + 0.01 WHERE id = {(low + high) // 2}")
    assert not inside.passed and list(inside.metadata["differences"]) == ["amount"]
    assert scope.description in inside.description
    assert inside.metadata["rows"] == {"source": 1_500, "destination": 1_500}
    # A sample: a row outside every range is not looked at (another seed's run may).
    outside = next(k for k in range(1, 20_001)
                   if not any(a <= k <= b for a, b in scope.ranges))
    assert check(loaded, "people", scope,
                 f"UPDATE raw.people SET amount = amount + 0.01 WHERE id = {outside}").passed


def test_a_large_table_without_a_key_compares_counts(loaded: Loaded) -> None:
    plan = loaded.plans["heap"]
    scope = fp.scope_for(plan, 3_000, "seed", full_rows=100)
    assert not scope.values and "no single integer primary key" in scope.description
    outcome = check(loaded, "heap", scope)
    assert outcome.passed and "(values not compared)" in outcome.description
    assert check(loaded, "heap", scope, "UPDATE raw.heap SET t = 'x' WHERE n = 5").passed
    nulled = check(loaded, "heap", scope, "UPDATE raw.heap SET t = NULL WHERE n = 5")
    assert not nulled.passed and list(nulled.metadata["differences"]) == ["t"]


def test_hashed_and_excluded_columns_are_listed_not_compared(loaded: Loaded) -> None:
    plan = loaded.plans["guarded"]
    assert plan.hashed == ("card",) and plan.excluded == ("api_token",)
    outcome = check(loaded, "guarded")
    assert outcome.passed, outcome.description
    assert set(outcome.metadata["not_compared"]) == {"card", "api_token"}
    assert "excluded" in outcome.metadata["not_compared"]["api_token"]
    assert "salt" in outcome.metadata["not_compared"]["card"]
    assert outcome.metadata["compared_columns"] == ["id", "note"]
    # The hash is not compared, but a lost value is (its non-null count).
    assert check(loaded, "guarded", tamper="UPDATE raw.guarded SET card = 'x' WHERE id = 1").passed
    lost = check(loaded, "guarded", tamper="UPDATE raw.guarded SET card = NULL WHERE id = 1")
    assert not lost.passed and list(lost.metadata["differences"]) == ["card"]


def test_the_digest_does_not_depend_on_row_order(loaded: Loaded, tmp_path: Path) -> None:
    plan = loaded.plans["people"]
    scope = fp.scope_for(plan, 20_000, "seed", full_rows=20_000)
    table = fp.qualified_name("duckdb", "raw", plan.destination_table)
    with duckdb.connect(str(loaded.duckdb_path), read_only=True) as con:
        first = duckdb_fingerprint(con, plan, scope)
    copy = duckdb.connect(str(tmp_path / "shuffled.duckdb"))
    copy.execute(f"ATTACH '{loaded.duckdb_path}' AS loaded (READ_ONLY)")
    copy.execute("CREATE SCHEMA raw")
    copy.execute(f"CREATE TABLE {table} AS SELECT * FROM loaded.{table} ORDER BY hash(id)")
    assert duckdb_fingerprint(copy, plan, scope) == first


# -- tier 3: the BigQuery emulator -----------------------------------------------------------


@pytest.mark.bigquery
def test_bigquery_fingerprint_equals_the_source(source: str, bigquery_emulator, tmp_path: Path
                                                ) -> None:
    """The loaded copy in the emulator has the source's fingerprint, and a changed value
    fails the check naming its column.

    Everything the fingerprint uses on BigQuery ran through the emulator: MD5, TO_HEX,
    SUBSTR, CAST of a hex STRING to INT64, UNIX_MICROS, UNIX_DATE, TIME_DIFF, IS_NAN,
    IS_INF, IEEE_DIVIDE, LOG, POW, FLOOR, LEAST, GREATEST, TRUNC, MOD, COUNTIF and SUM over
    BIGNUMERIC (the emulator translates them to DuckDB with SQLGlot). What it cannot show:

    - BIGNUMERIC: bqemulator 1.4.0 keeps BIGNUMERIC(39,10) (numeric(38,10)) as a DuckDB
      DECIMAL(38,5)/DOUBLE, so `n38` arrives rounded; the check must then name `n38`, and
      does, while real BigQuery stores it exactly. `CAST(x AS BIGNUMERIC)` also becomes
      DECIMAL(38,5) there: sums above 10^33 would overflow in the emulator only.
    - SQLGlot writes `MOD(a, P) * MOD(a, P)` as `a % P * a % P`, dropping the parentheses;
      the query squares a column holding the residue instead, which is the same SQL on
      real BigQuery.
    - Results say nothing of real BigQuery's LOG and POW accuracy: the float formula
      corrects LOG's rounding by one either way and divides only by exact powers of two
      (its docstring), and it was checked against IEEE bits for 200,000 random doubles.
    """
    project = bigquery_emulator.project_id
    dataset = f"fingerprint_{uuid.uuid4().hex[:8]}"
    plans = _plans(source, "bigquery")
    for name in ("kinds", "people"):
        load_table(plans[name], source_url=source, destination=bigquery_emulator.dlt_destination(),
                   dataset=dataset, work_dir=tmp_path / "work", hash_salt=SALT)
    client = bigquery_emulator.client()

    def table(name: str) -> str:
        return fp.qualified_name("bigquery", project, dataset, plans[name].destination_table)

    def bigquery_rows(sql: str) -> list[tuple]:
        return [tuple(row.values()) for row in client.query_and_wait(sql)]

    plan = plans["kinds"]
    scope = fp.scope_for(plan, 10, "seed")
    expected = source_fingerprint(source, plan, scope)
    [row] = bigquery_rows(fp.destination_sql(plan, "bigquery", table("kinds"), scope))
    outcome = fp.compare(expected, fp.parse(plan, row, scope), skipped={})
    # Whether the emulator kept n38 exactly decides whether the check may name it.
    stored = bigquery_rows(f"SELECT `id`, `n38` FROM {table('kinds')} ORDER BY `id`")
    with psycopg.connect(source) as conn:
        exact = conn.execute("SELECT id, n38 FROM kinds ORDER BY id").fetchall()
    rounded = {"n38"} if stored != exact else set()
    assert set(outcome.metadata.get("differences", {})) == rounded, outcome.description
    assert outcome.metadata["rows"] == {"source": 10, "destination": 10}

    others = dataclasses.replace(plan, columns=tuple(
        c for c in plan.columns if c.source.name not in rounded))
    expected = source_fingerprint(source, others, scope)

    # Many tables in one query: its text values parse the same.
    people = plans["people"]
    sampled = fp.scope_for(people, 20_000, "load-3", bounds=(1, 20_000))
    rows = fp.split_many(bigquery_rows(fp.destination_sql_many(
        [(others, table("kinds"), scope), (people, table("people"), sampled)], "bigquery")))
    assert fp.compare(expected, fp.parse(others, rows[0], scope), skipped={}).passed
    assert fp.compare(source_fingerprint(source, people, sampled),
                      fp.parse(people, rows[1], sampled), skipped={}).passed

    # One change per class of digest, one after the other (the emulator runs DML): the
    # check names exactly the columns changed so far.
    changed: list[str] = []
    for column, update in (("i8", "`i8` = `i8` - 1 WHERE `id` = 2"),
                           ("f8", "`f8` = 0.2 WHERE `id` = 5"),
                           ("t", "`t` = 'x' WHERE `id` = 3"),
                           ("by", "`by` = FROM_HEX('00ff11') WHERE `id` = 2"),
                           ("ts", "`ts` = TIMESTAMP '2024-03-10 02:30:00.000001' WHERE `id` = 4")):
        bigquery_rows(f"UPDATE {table('kinds')} SET {update}")
        changed.append(column)
        [row] = bigquery_rows(fp.destination_sql(others, "bigquery", table("kinds"), scope))
        outcome = fp.compare(expected, fp.parse(others, row, scope), skipped={})
        assert list(outcome.metadata.get("differences", {})) == changed, outcome.description

    # 19,389 NULLs in the sampled ranges of the 20,000-row table.
    bigquery_rows(f"UPDATE {table('people')} SET `email` = NULL WHERE `id` > 611")
    [row] = bigquery_rows(fp.destination_sql(people, "bigquery", table("people"), sampled))
    nulled = fp.compare(source_fingerprint(source, people, sampled),
                        fp.parse(people, row, sampled), skipped={})
    assert list(nulled.metadata["differences"]) == ["email"]
