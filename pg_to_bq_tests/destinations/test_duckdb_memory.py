"""Tier 2: tables of wide rows load into DuckDB under its bounded memory limit — real
PostgreSQL, real DuckDB file.

DuckDB builds row groups of ~123k rows per thread, so what an insert holds grows with the
width of the rows: 2,000 rows of 58 KB failed with "Out of Memory Error" at the 64 MB
pg_to_bq used to give DuckDB (and at 88 MB). A job that runs out of memory runs again with
twice the limit (`pg_to_bq.destinations.duckdb_file`); a limit the user chose is kept, and the
error names the table and the setting to raise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import psycopg
import pytest

from pg_to_bq.destinations.duckdb_file import (
    duckdb_destination,
    is_out_of_memory,
    memory_cap,
)
from pg_to_bq.destinations.lazy import DUCKDB_GLOBAL_CONFIG
from pg_to_bq.load.group import load_table
from pg_to_bq.planning.tables import TablePlan, build_plans
from pg_to_bq.postgres.discovery import discover
from pg_to_bq_tests.conftest import run_sql

ROWS = 2000
# Three columns of 19,200 hex digits (random, so neither PostgreSQL nor DuckDB can shrink
# them much): rows of ~58 KB, 115 MB in all.
_WIDE = ("(SELECT string_agg(md5(random()::text || g || i || {k}), '') "
         "FROM generate_series(1, 600) i)")


def _create(url: str) -> None:
    columns = ", ".join(_WIDE.format(k=k) for k in range(3))
    run_sql(url, f"""
        CREATE TABLE documents (id int PRIMARY KEY, a text, b text, c text,
                                updated_at timestamptz NOT NULL DEFAULT now());
        CREATE INDEX ON documents (updated_at);
        INSERT INTO documents (id, a, b, c)
            SELECT g, {columns} FROM generate_series(1, {ROWS}) g;
    """)


def _plan(url: str) -> TablePlan:
    with psycopg.connect(url) as conn:
        (plan,) = build_plans(discover(conn, schemas=["public"], table="documents"), "duckdb")
    return plan


def _digests(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, md5(a || b || c) FROM documents ORDER BY id").fetchall()


def _loaded(path: Path) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute("SELECT id, md5(a || b || c) FROM raw.documents ORDER BY id").fetchall()


def _memory_limit(path: Path) -> str:
    with duckdb.connect(str(path)) as conn:
        return conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_wide_rows_load_with_more_memory_replaced_then_merged(
        pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _create(pg_url)
    plan = _plan(pg_url)
    assert plan.disposition == "merge", plan  # the second run merges through staging
    path = tmp_path / "wide.duckdb"
    destination = duckdb_destination(str(path))
    kwargs = {"source_url": pg_url, "destination": destination, "dataset": "raw",
              "work_dir": tmp_path / "work"}

    with caplog.at_level(logging.WARNING, logger="pg_to_bq.destinations.duckdb_file"):
        first = load_table(plan, **kwargs)
    assert (first.mode, first.rows) == ("full", ROWS)
    assert _loaded(path) == _digests(pg_url)
    grew = [r.getMessage() for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert grew and "documents" in grew[0], caplog.text
    caplog.clear()

    # Every row changes: the incremental run copies them all into the staging table and
    # merges them (dlt's jobs, not the replace), and runs out of memory there too.
    run_sql(pg_url, "UPDATE documents SET a = reverse(a), updated_at = now() + interval '1 hour'")
    with caplog.at_level(logging.WARNING, logger="pg_to_bq.destinations.duckdb_file"):
        second = load_table(plan, **kwargs)
    assert (second.mode, second.rows) == ("incremental", ROWS)
    assert _loaded(path) == _digests(pg_url)
    assert any("ran out of memory" in r.getMessage() for r in caplog.records), caplog.text
    # The bound applies again to the next table.
    assert float(_memory_limit(path).split()[0]) < 100, DUCKDB_GLOBAL_CONFIG


def test_a_memory_limit_the_user_set_is_kept_and_named_in_the_error(pg_url: str,
                                                                   tmp_path: Path) -> None:
    _create(pg_url)
    plan = _plan(pg_url)
    path = tmp_path / "wide.duckdb"
    kwargs = {"source_url": pg_url, "dataset": "raw", "full_refresh": True}
    load_table(plan, destination=duckdb_destination(str(path)), work_dir=tmp_path / "w1",
               **kwargs)
    before = _loaded(path)

    run_sql(pg_url, "UPDATE documents SET a = reverse(a)")
    tight = duckdb_destination(str(path), {"memory_limit": "32MB"})
    with pytest.raises(Exception) as failure:
        load_table(plan, destination=tight, work_dir=tmp_path / "w2", **kwargs)
    message = str(failure.value)
    assert "table documents" in message and "memory_limit" in message, message
    assert "PG_TO_BQ_DESTINATION" in message, message
    # The replace rolled back: the previous load's rows are all there, unchanged.
    assert _loaded(path) == before


def test_out_of_memory_is_recognised_through_dlts_wrapping() -> None:
    from dlt.destinations.exceptions import DatabaseTransientException

    with duckdb.connect(config={"memory_limit": "1MB"}) as conn, \
            pytest.raises(duckdb.Error) as raised:
        conn.execute("SELECT list(range) FROM range(10000000)").fetchall()
    assert is_out_of_memory(DatabaseTransientException(raised.value))
    assert not is_out_of_memory(DatabaseTransientException(ValueError("Catalog Error: no table")))


def test_memory_grows_to_half_of_the_containers_limit_not_the_hosts(tmp_path: Path) -> None:
    """An ECS task sees the host's RAM; its cgroup file holds its own limit ("max" when none)."""
    host = memory_cap(())
    limited = tmp_path / "memory.max"
    limited.write_text("2147483648\n")
    assert memory_cap((str(limited),)) == min(host, 2**31 // 2)
    unlimited = tmp_path / "unlimited"
    unlimited.write_text("max\n")
    assert memory_cap((str(tmp_path / "missing"), str(unlimited))) == host
