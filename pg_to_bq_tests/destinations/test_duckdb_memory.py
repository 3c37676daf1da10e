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

from pg_to_bq.cli.main import main
from pg_to_bq.destinations.duckdb_file import (
    duckdb_destination,
    is_out_of_memory,
    memory_cap,
)
from pg_to_bq.destinations.lazy import DUCKDB_GLOBAL_CONFIG
from pg_to_bq.load.group import load_table
from pg_to_bq.planning.errors import describe
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


def test_many_tables_load_and_count_under_a_low_limit_the_user_set(pg_url: str, settings_env,
                                                                  capsys) -> None:
    """`pg-to-bq sync` of 80 small tables with `memory_limit=16MB` in PG_TO_BQ_DESTINATION:
    each table's load fits; the step's row counts after the load asked 200 tables a query,
    and DuckDB pins a block of each table a query counts (~20 MB for 80): every table of
    the step FAILED after its rows had loaded, each on eight lines of DuckDB's advice. The
    counts are now asked a few tables a query, so the memory they take does not grow with
    the step's tables."""
    tables = [f"small_{i:02d}" for i in range(80)]
    run_sql(pg_url, "".join(
        f"CREATE TABLE {t} (id int PRIMARY KEY, v text); "
        f"INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, {i % 7 + 1}) g; "
        for i, t in enumerate(tables)))
    path = settings_env(pg_url)
    settings_env(pg_url, destination=f"duckdb:///{path}?memory_limit=16MB")
    assert main(["sync"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "80 loaded, 0 failed" in out, out
    with duckdb.connect(str(path), read_only=True) as conn:
        for i, table in enumerate(tables):
            assert conn.execute(f"SELECT count(*), min(v), count(DISTINCT id) FROM raw.{table}"
                                ).fetchone() == (i % 7 + 1, "v1", i % 7 + 1), table


def test_a_failure_is_one_line_with_duckdbs_memory_named() -> None:
    """DuckDB follows "Out of Memory Error" with a blank line and a list of generic advice;
    a failed table is one line of the CLI, with the setting that gives DuckDB more memory
    (the whole message stays in the exception, for the event log)."""
    with duckdb.connect(config={"memory_limit": "1MB"}) as conn, \
            pytest.raises(duckdb.Error) as raised:
        conn.execute("SELECT list(range) FROM range(10000000)").fetchall()
    assert "\n\n" in str(raised.value)
    line = describe(raised.value)
    assert "\n" not in line and "Possible solutions" not in line, line
    assert line.startswith("OutOfMemoryException: Out of Memory Error: "), line
    assert line.endswith("; to fix: give DuckDB more memory: memory_limit in "
                         "PG_TO_BQ_DESTINATION, e.g. duckdb:///file.duckdb?memory_limit=1GB")
    # A driver's hint on a line of its own stays, on the same line.
    assert describe(OSError("connection failed: refused\n\tIs the server running?")) == \
        "OSError: connection failed: refused Is the server running?"
