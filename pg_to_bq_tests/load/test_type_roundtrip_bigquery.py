"""Every row of the type map, round-tripped from PostgreSQL into BigQuery (the emulator).

The same wide table as `test_type_roundtrip` (its `CASES`, values and comparison helpers
are reused), planned for BigQuery, loaded with dlt's real BigQuery destination into the
emulator over HTTP, read back with google-cloud-bigquery and compared value by value with
what PostgreSQL returns. Where BigQuery's semantics differ from DuckDB's the comparison
is BigQuery's own (see `_bq_same`); emulator limitations are named where they apply.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pg_to_bq.load.group import load_table
from pg_to_bq.planning.errors import LossyValueError, root_cause
from pg_to_bq.planning.tables import TablePlan, build_plans
from pg_to_bq.planning.types import RULES
from pg_to_bq.postgres.discovery import discover
from pg_to_bq_tests.load.test_type_roundtrip import (
    CASES,
    FAILING,
    SALT,
    Col,
    _naive_equal,
    _pg,
    compare_values,
    create_table,
)

pytestmark = pytest.mark.bigquery

# BigQuery's type per numeric column (the DuckDB module's `duckdb_type` has no BigQuery twin).
NUMERIC_TYPES = {
    "n10_2": "NUMERIC(10,2)",
    "n38_0": "BIGNUMERIC(39,0)",
    "n38_10": "BIGNUMERIC(39,10)",
    "n2_5": "NUMERIC(5,5)",
    "n3_m2": "NUMERIC(5,0)",
    "n50_10": "STRING",  # 40 integer digits: more than BIGNUMERIC's 38, so the text form
    "dm": "NUMERIC(10,2)",
}
# The three refusals that matter for BigQuery: no TIMESTAMP holds infinity, TIME ends at
# 23:59:59.999999 and no NUMERIC/BIGNUMERIC holds NaN.
BQ_FAILING = [f for f in FAILING if f.case in ("timestamp_infinity", "time_24", "numeric_nan")]
# Emulator limitation (bqemulator 1.4.0, DuckDB inside): it stores BIGNUMERIC as a DuckDB
# DECIMAL(38,s) and reads a parquet decimal256 column (what dlt writes for BIGNUMERIC(39,s))
# as DOUBLE, so the load job itself fails ("Could not cast value 9999...97748809823456034029568
# to DECIMAL(38,0)") or would round. Real BigQuery loads parquet DECIMAL up to 76 digits into
# BIGNUMERIC. These columns go to their own table (`test_bignumeric_roundtrip`), so the
# emulator's failure on them does not hide the comparison of every other column.
BIGNUMERIC = {name for name, t in NUMERIC_TYPES.items() if t.startswith("BIGNUMERIC")}


def _bq_naive(pg: datetime, bq: datetime) -> bool:
    """dlt creates a naive timestamp as TIMESTAMP: the same digits, labelled UTC."""
    return bq.utcoffset() == timedelta(0) and _naive_equal(pg, bq.replace(tzinfo=None))


def _bq_same(col: Col) -> Callable[[Any, Any], bool]:
    """The DuckDB module's comparison, or BigQuery's where the two differ."""
    if col.same is _naive_equal:
        return _bq_naive
    # Decimals digit for digit with their scale (Decimal.as_tuple(); the emulator returns
    # NUMERIC(10,2)'s 0 as `0.00`), floats bit for bit, timestamptz as the same UTC instant,
    # JSON/arrays/vector/composite/hstore as the STRING's exact JSON text, bytes exactly,
    # everything else by equality: these helpers take BigQuery's Python values (Decimal,
    # float, aware datetime, str, bytes) unchanged.
    return col.same


@dataclass
class Loaded:
    url: str
    project: str
    dataset: str
    work_dir: Path
    plan: TablePlan
    xml_supported: bool
    schema: dict[str, Any]
    pg_rows: dict[str, list[tuple[int, Any]]]
    bq_rows: dict[str, list[tuple[int, Any]]]


def _plan(url: str, table: str) -> TablePlan:
    with psycopg.connect(url) as conn:
        catalog = discover(conn, schemas=["public"], table=table)
    (plan,) = build_plans(catalog, "bigquery")
    return plan


def _load(url: str, emulator: Any, plan: TablePlan, dataset: str, work_dir: Path) -> None:
    load_table(plan, source_url=url, destination=emulator.dlt_destination(), dataset=dataset,
               work_dir=work_dir, hash_salt=SALT)


@pytest.fixture(scope="module")
def loaded(pg_server, bigquery_emulator, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Loaded]:
    name = pg_server.create_database("bqtypes")
    url = pg_server.url(name)
    root = tmp_path_factory.mktemp("bq_roundtrip")
    dataset = f"roundtrip_{uuid.uuid4().hex[:10]}"
    columns = [c for cols in CASES.values() for c in cols if c.name not in BIGNUMERIC]
    big = [c for cols in CASES.values() for c in cols if c.name in BIGNUMERIC]
    try:
        xml_supported, rows = create_table(url, "roundtrip", columns)
        # SETUP_SQL ran above; the second table only needs its own columns.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE roundtrip_bignumeric (id int PRIMARY KEY, "
                         + ", ".join(f"{c.name} {c.sql_type}" for c in big) + ")")
            for row in range(max(len(c.values) for c in big)):
                literals = [c.values[row] if row < len(c.values) else "NULL" for c in big]
                conn.execute(f"INSERT INTO roundtrip_bignumeric VALUES ({row}, "
                             f"{', '.join(literals)})")
        plan = _plan(url, "roundtrip")
        _load(url, bigquery_emulator, plan, dataset, root / "work")

        project = bigquery_emulator.project_id
        client = bigquery_emulator.client()
        table = client.get_table(f"{project}.{dataset}.roundtrip")
        schema = {f.name: f for f in table.schema}
        # One query each side for the whole table (the emulator is slow per query).
        with _pg(url) as pg:
            selected = ", ".join(c.pg_expr.format(c=f'"{c.name}"') for c in columns)
            pg_result = pg.execute(f"SELECT id, {selected} FROM roundtrip ORDER BY id").fetchall()
        bq_result = [tuple(r.values()) for r in client.query_and_wait(
            f"SELECT id, {', '.join(f'`{c.name}`' for c in columns)} "
            f"FROM `{project}.{dataset}.roundtrip` ORDER BY id")]
        assert [r[0] for r in bq_result] == [r[0] for r in pg_result] == list(range(rows))
        by_column = {c.name: i + 1 for i, c in enumerate(columns)}
        yield Loaded(
            url, project, dataset, root / "work", plan, xml_supported, schema,
            {n: [(r[0], r[i]) for r in pg_result] for n, i in by_column.items()},
            {n: [(r[0], r[i]) for r in bq_result] for n, i in by_column.items()},
        )
    finally:
        pg_server.drop_database(name)


# The REST API (real BigQuery too) reports legacy SQL names in a table's schema.
_LEGACY_NAMES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


def _schema_type(field: Any) -> str:
    if field.field_type in ("NUMERIC", "BIGNUMERIC") and field.precision is not None:
        return f"{field.field_type}({field.precision},{field.scale or 0})"
    return _LEGACY_NAMES.get(field.field_type, field.field_type)


def _check_column(col: Col, rule: str, plan: TablePlan, schema: dict[str, Any],
                  pg_rows: list[tuple[int, Any]], bq_rows: list[tuple[int, Any]]) -> int:
    """Check the column's mapping and BigQuery type, then every value; returns how many."""
    mapping = plan.column_for(col.name)
    assert mapping.rule == (col.mapping_rule or rule), col.name
    expected_type = NUMERIC_TYPES.get(col.name, mapping.bigquery_type)
    assert mapping.bigquery_type == expected_type, col.name
    if col.mapping_rule is None and rule != "numeric":
        assert mapping.bigquery_type in RULES[rule].bigquery, col.name
    field = schema[col.name]
    if expected_type.startswith(("NUMERIC", "BIGNUMERIC")) and field.precision is None:
        # Emulator limitation: its schema carries no precision/scale for decimal columns.
        assert field.field_type == expected_type.split("(")[0], (col.name, field.field_type)
    else:
        assert _schema_type(field) == expected_type, (col.name, _schema_type(field))

    return compare_values(col, pg_rows, bq_rows, _bq_same(col), "BigQuery")


@pytest.mark.parametrize("rule", list(CASES))
def test_roundtrip(loaded: Loaded, rule: str) -> None:
    for col in CASES[rule]:
        if col.name in BIGNUMERIC:
            continue  # test_bignumeric_roundtrip
        compared = _check_column(col, rule, loaded.plan, loaded.schema,
                                 loaded.pg_rows[col.name], loaded.bq_rows[col.name])
        if col.name != "x" or loaded.xml_supported:
            assert compared >= 1, f"{col.name}: no value compared"


def test_bignumeric_roundtrip(loaded: Loaded, bigquery_emulator) -> None:
    columns = [c for c in CASES["numeric"] if c.name in BIGNUMERIC]
    plan = _plan(loaded.url, "roundtrip_bignumeric")
    for col in columns:  # the plan is what real BigQuery needs, whatever the emulator does
        mapping = plan.column_for(col.name)
        assert mapping.bigquery_type == NUMERIC_TYPES[col.name], col.name
        assert mapping.logical == "decimal" and mapping.precision == 39, col.name
    try:
        _load(loaded.url, bigquery_emulator, plan, loaded.dataset, loaded.work_dir)
    except Exception as exc:  # noqa: BLE001 - only the named emulator failure is tolerated
        if "Could not cast value" in str(exc) and "to DECIMAL(38," in str(exc):
            pytest.xfail("bqemulator 1.4.0 reads parquet decimal256 (BIGNUMERIC(39,s)) as DOUBLE "
                         "into DECIMAL(38,s); real BigQuery loads it exactly")
        raise
    project = bigquery_emulator.project_id
    client = bigquery_emulator.client()
    schema = {f.name: f for f in client.get_table(
        f"{project}.{loaded.dataset}.roundtrip_bignumeric").schema}
    bq = [tuple(r.values()) for r in client.query_and_wait(
        f"SELECT id, {', '.join(f'`{c.name}`' for c in columns)} "
        f"FROM `{project}.{loaded.dataset}.roundtrip_bignumeric` ORDER BY id")]
    with _pg(loaded.url) as conn:
        pg = conn.execute(f"SELECT id, {', '.join(c.name for c in columns)} "
                          "FROM roundtrip_bignumeric ORDER BY id").fetchall()
    for i, col in enumerate(columns, start=1):
        compared = _check_column(col, "numeric", plan, schema, [(r[0], r[i]) for r in pg],
                                 [(r[0], r[i]) for r in bq])
        assert compared >= 1, col.name


@pytest.mark.parametrize("case", BQ_FAILING, ids=[f.case for f in BQ_FAILING])
def test_lossy_value_fails_the_table(loaded: Loaded, bigquery_emulator, case) -> None:
    table = f"fails_{case.case}"
    with psycopg.connect(loaded.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int, val {case.sql_type})")
        conn.execute(f"INSERT INTO {table} VALUES (1, NULL), (2, {case.value})")
    plan = _plan(loaded.url, table)
    with pytest.raises(Exception) as raised:
        _load(loaded.url, bigquery_emulator, plan, loaded.dataset, loaded.work_dir)
    error = root_cause(raised.value)
    assert isinstance(error, LossyValueError), repr(raised.value)
    message = str(error)
    for part in (f"public.{table}", "'val'", f"({plan.table.column('val').type})", case.says,
                 "cast: text", "exclude: true"):
        assert part in message, f"{part!r} not in {message!r}"
    client = bigquery_emulator.client()
    tables = {t.table_id for t in client.list_tables(f"{loaded.project}.{loaded.dataset}")}
    assert "roundtrip" in tables and table not in tables
