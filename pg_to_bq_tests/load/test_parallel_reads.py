"""Tier 2: a step reads its tables over more than one connection — real PostgreSQL, DuckDB.

A small table's read mostly waits for PostgreSQL, so a step reads `PG_TO_BQ_PARALLEL_STREAMS` (2) tables
at once (`pg_to_bq.load.read.TableReads.read_all`). Nothing about one table may stop or slow
another: a table whose read waits (on a lock, a slow query) must not hold up the others.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from pg_to_bq.destinations.duckdb_file import duckdb_destination
from pg_to_bq.load.group import load_group
from pg_to_bq.load.results import TableLoad
from pg_to_bq.planning.settings import DEFAULT_PARALLEL_STREAMS
from pg_to_bq.planning.tables import build_plans
from pg_to_bq.postgres.discovery import discover
from pg_to_bq_tests.conftest import duck_rows, run_sql


def _plans(url: str, *tables: str) -> list:
    with psycopg.connect(url) as conn:
        catalog = discover(conn, schemas=["public"])
    plans = {plan.name: plan for plan in build_plans(catalog, "duckdb")}
    return [plans[f"public.{table}"] for table in tables]


def test_a_table_waiting_on_a_lock_does_not_hold_up_the_others(pg_url: str,
                                                                tmp_path: Path) -> None:
    assert DEFAULT_PARALLEL_STREAMS >= 2  # (what `load_group` reads with by default)
    run_sql(pg_url, """
        CREATE TABLE locked (id int PRIMARY KEY, v text);
        INSERT INTO locked SELECT g, 'l' || g FROM generate_series(1, 10) g;
        CREATE TABLE free_a (id int PRIMARY KEY, v text);
        INSERT INTO free_a SELECT g, 'a' || g FROM generate_series(1, 20) g;
        CREATE TABLE free_b (id int PRIMARY KEY, v text);
        INSERT INTO free_b SELECT g, 'b' || g FROM generate_series(1, 30) g;
    """)
    loads = [TableLoad(plan) for plan in _plans(pg_url, "locked", "free_a", "free_b")]
    read: set[str] = set()
    both_free_read = threading.Event()

    def on_batch(table: str, rows: int) -> None:
        read.add(table)
        if {"public.free_a", "public.free_b"} <= read:
            both_free_read.set()

    path = tmp_path / "dest.duckdb"
    results: list = []
    with psycopg.connect(pg_url) as holder:
        # The first table of the step cannot be read until this transaction ends.
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        step = threading.Thread(target=lambda: results.extend(load_group(
            loads, pipeline_name="parallel", source_url=pg_url,
            destination=duckdb_destination(str(path)), dataset="raw",
            work_dir=tmp_path / "work", on_batch=on_batch)))
        step.start()
        try:
            # Over one connection the other tables would wait behind the locked one.
            assert both_free_read.wait(60), f"read while the first table waited: {read}"
            assert "public.locked" not in read
        finally:
            holder.rollback()
        step.join(120)
    assert not step.is_alive()
    # Every table loaded, and the results are in the order of the step's tables.
    assert [(r.table, r.status, r.rows) for r in results] == [
        ("public.locked", "loaded", 10), ("public.free_a", "loaded", 20),
        ("public.free_b", "loaded", 30)]
    assert duck_rows(path, "SELECT (SELECT count(*) FROM raw.locked), "
                           "(SELECT count(*) FROM raw.free_a), "
                           "(SELECT count(*) FROM raw.free_b)") == [(10, 20, 30)]


def test_a_step_reads_over_as_many_connections_as_it_is_given(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`read_connections` (the step passes `PG_TO_BQ_PARALLEL_STREAMS`) is how many
    connections a step's reads open; `1` reads one table after another over one."""
    from pg_to_bq.postgres import session

    run_sql(pg_url, "".join(f"CREATE TABLE t{i} (id int PRIMARY KEY);"
                            f"INSERT INTO t{i} SELECT generate_series(1, {i + 1});"
                            for i in range(4)))
    plans = _plans(pg_url, "t0", "t1", "t2", "t3")
    opened: list[str] = []
    connect = session.AdbcSession.__init__

    def counted(self: session.AdbcSession, uri: str) -> None:
        opened.append(uri)
        connect(self, uri)

    monkeypatch.setattr(session.AdbcSession, "__init__", counted)
    for connections, pipeline in ((1, "one"), (3, "three")):
        opened.clear()
        results = load_group([TableLoad(plan, full_refresh=True) for plan in plans],
                             pipeline_name=pipeline, source_url=pg_url,
                             destination=duckdb_destination(str(tmp_path / f"{pipeline}.duckdb")),
                             dataset="raw", work_dir=tmp_path / "work",
                             read_connections=connections)
        assert [(r.status, r.rows) for r in results] == [("loaded", i + 1) for i in range(4)]
        assert len(opened) == connections


def test_a_role_allowed_one_connection_still_loads_every_table(pg_url: str,
                                                              tmp_path: Path) -> None:
    """A role whose connection limit leaves no room for a second reading connection: the
    step reads every table over its first one, and no table fails for it."""
    role = f"one_conn_{pg_url.rsplit('_', 1)[1]}"
    run_sql(pg_url, "".join(f"CREATE TABLE c{i} (id int PRIMARY KEY);"
                            f"INSERT INTO c{i} SELECT generate_series(1, {i + 1});"
                            for i in range(4))
            + f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1;"
              f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};")
    try:
        plans = _plans(pg_url, "c0", "c1", "c2", "c3")
        results = load_group([TableLoad(plan, full_refresh=True) for plan in plans],
                             pipeline_name="limited",
                             source_url=pg_url.replace("postgres@", f"{role}@", 1),
                             destination=duckdb_destination(str(tmp_path / "dest.duckdb")),
                             dataset="raw", work_dir=tmp_path / "work", read_connections=2)
        assert [(r.status, r.rows) for r in results] == [("loaded", i + 1) for i in range(4)]
    finally:
        run_sql(pg_url, f"DROP OWNED BY {role}; DROP ROLE {role}")
