"""Tier 2: small merged tables are read whole when their rows change, PostgreSQL → DuckDB
through `pg-to-bq sync` (`TablePlan.reads_whole`, `PG_TO_BQ_READ_WHOLE_BYTES`).

A table with a key and a cursor up to 8 MiB on disk is not merged by its cursor: it is
skipped while its row versions are those of its last load, and read whole (replaced) when
they are not. Every change arrives in that run — an update that left `updated_at` alone, a
delete, a row restored under an old cursor — with no delete pass and no side load. Larger
tables, and tables the tables file says to merge, are merged by their cursor; a table that
grows past the size goes on from the cursor its whole reads stored.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import psycopg
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq.orchestration.specs import plan_markdown
from pg_to_bq.planning.settings import Settings, SettingsError
from pg_to_bq.planning.tables import build_plans
from pg_to_bq.postgres.discovery import discover
from pg_to_bq_tests.conftest import duck_rows, run_sql
from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

ORDERS = """
    CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, amount numeric(12,2),
                         updated_at timestamptz NOT NULL);
    INSERT INTO orders SELECT g, 'new', g * 1.25, now() - interval '30 days' + g * interval '1 s'
    FROM generate_series(1, 2000) g;
    CREATE TABLE events (id bigint PRIMARY KEY, payload text NOT NULL,
                         updated_at timestamptz NOT NULL);
    INSERT INTO events SELECT g, repeat('x', 400), now() - interval '30 days' + g * interval '1 s'
    FROM generate_series(1, 3000) g;
"""
# What an application does in a night that a cursor cannot see: an update that leaves
# `updated_at` alone, deletes, a row restored with its old cursor; and one it can.
NIGHT = """
    UPDATE {t} SET {col} = {val} WHERE id = 7;
    DELETE FROM {t} WHERE id IN (3, 1500);
    INSERT INTO {t} SELECT 3, {restored}, now() - interval '400 days';
    UPDATE {t} SET {col} = {val}, updated_at = now() WHERE id = 9;
"""


def sync(capsys, *args: str) -> str:
    code = main(["sync", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "checks failed" not in out and "WARN" not in out, out
    return out


def line(out: str, table: str) -> str:
    return next(x for x in out.splitlines() if f"public.{table}:" in x and "] " in x)


def loads(path: Path) -> int:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute("SELECT count(*) FROM raw._dlt_loads").fetchone()[0]


def night(url: str) -> None:
    run_sql(url, NIGHT.format(t="orders", col="status", val="'paid'", restored="'back', 1.00"))
    run_sql(url, NIGHT.format(t="events", col="payload", val="'edited'", restored="'back'"))


def test_a_small_merged_table_takes_every_change_in_the_run_after_it(pg_url, settings_env,
                                                                      capsys) -> None:
    """Under the size, read whole when changed, every change arrives with one load and no
    pass; above it (`events`, ~1.4 MB, over a 1 MB bound), merged by cursor, where the rows
    its cursor missed still arrive (read since the last read's snapshot) and the deleted
    ones leave with the same-run pass. Both exact after every sync."""
    run_sql(pg_url, ORDERS)
    path = settings_env(pg_url, read_whole_bytes=str(1024**2))
    assert main(["discover"]) == 0
    out = capsys.readouterr().out
    assert "whole when changed" in line_of(out, "public.orders"), out
    assert "merge (incremental)" in line_of(out, "public.events"), out
    sync(capsys)
    unchanged = sync(capsys)
    assert "unchanged" in line(unchanged, "orders") and "unchanged" in line(unchanged, "events")

    night(pg_url)
    before = loads(path)
    out = sync(capsys)
    # (2,000 - 2 + 1 rows, read whole; no delete pass: replaced)
    assert "ok, 1,999 rows (full) in" in line(out, "orders"), out
    assert "(incremental), 1 deleted" in line(out, "events"), out
    for table in ("orders", "events"):
        assert_mirrored_in_duckdb(pg_url, path, table)
    # One package of the tables, and the keys of `events` for its pass: not one for orders.
    assert loads(path) - before == 2
    assert "unchanged" in line(sync(capsys), "orders")


def test_the_tables_file_and_the_setting_merge_by_cursor(pg_url, settings_env, capsys,
                                                         tmp_path) -> None:
    """`disposition: merge` in the tables file is the user's word: merged by cursor whatever
    the size; `PG_TO_BQ_READ_WHOLE_BYTES=0` merges every table by cursor. A table read whole
    so far goes on from the cursor its whole reads stored (as one growing past the size
    does), and stays exact."""
    run_sql(pg_url, ORDERS)
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.events: {disposition: merge}\n", encoding="utf-8")
    path = settings_env(pg_url, tables_file=str(tables))
    sync(capsys)
    night(pg_url)
    out = sync(capsys)
    assert "(full)" in line(out, "orders") and "(incremental)" in line(out, "events"), out
    for table in ("orders", "events"):
        assert_mirrored_in_duckdb(pg_url, path, table)

    settings_env(pg_url, tables_file=str(tables), read_whole_bytes="0")
    run_sql(pg_url, "UPDATE orders SET status = 'late', updated_at = now() WHERE id = 11")
    out = sync(capsys)
    # The cursor stored by the whole read, less the lookback: the rows of the last ten
    # minutes (ids 3, 9 and 11 written this test).
    assert "(incremental)" in line(out, "orders"), out
    assert_mirrored_in_duckdb(pg_url, path, "orders")


def test_the_plan_says_it_on_the_asset(pg_url, settings_env) -> None:
    run_sql(pg_url, ORDERS)
    with psycopg.connect(pg_url) as conn:
        catalog = discover(conn, schemas=["public"])
    settings_env(pg_url, read_whole_bytes=str(1024**2))
    plans = {p.table.name: p for p in build_plans(catalog, "duckdb",
                                                  Settings.from_env().overrides())}
    assert plans["orders"].reads_whole and not plans["orders"].incremental
    text = plan_markdown(plans["orders"])
    assert "read whole when its rows change, and replaced" in text, text
    assert "up to PG_TO_BQ_READ_WHOLE_BYTES 1.0 MB" in text, text
    assert "merged by cursor updated_at" in text, text
    assert "incremental by cursor" in plan_markdown(plans["events"])


@pytest.mark.parametrize("value, message", [
    ("40000000", "must be at most 33554432 (32 MiB)"),
    ("8MB", "must be a whole number"),
    ("-1", "must not be negative"),
])
def test_a_wrong_size_is_refused_by_name(value, message, monkeypatch) -> None:
    monkeypatch.setenv("PG_TO_BQ_SOURCE_URL", "postgresql://localhost/x")
    monkeypatch.setenv("PG_TO_BQ_READ_WHOLE_BYTES", value)
    with pytest.raises(SettingsError, match=r"PG_TO_BQ_READ_WHOLE_BYTES=.*" + re.escape(message)):
        Settings.from_env()


def line_of(out: str, name: str) -> str:
    return next(x for x in out.splitlines() if x.startswith(name + " "))


def test_a_dropped_column_keeps_its_history_and_a_copy_edited_by_hand_is_said(
        pg_url, settings_env, capsys) -> None:
    """A column dropped in PostgreSQL is kept in the copy with the values loaded before: a
    whole read would replace them with NULLs, so a table whose copy keeps such a column is
    merged by its cursor (its line says `incremental`), still exact in every column
    PostgreSQL has. A copy changed by hand while PostgreSQL did not change fails its check,
    naming the column, and the next run's whole read says why."""
    run_sql(pg_url, ORDERS)
    path = settings_env(pg_url)
    sync(capsys)
    run_sql(pg_url, "ALTER TABLE orders DROP COLUMN amount")
    out = sync(capsys)
    assert "(incremental)" in line(out, "orders"), out
    assert "column amount dropped in PostgreSQL" in out, out
    # (the rows of the lookback window were loaded again, NULL in it; none other)
    [(kept,)] = duck_rows(path, "SELECT count(amount) FROM raw.orders")
    assert 1000 < kept < 2000
    # (its update of `status` leaves `updated_at` alone)
    run_sql(pg_url, NIGHT.format(t="orders", col="status", val="'paid'", restored="'back'"))
    out = sync(capsys)
    assert "(incremental)" in line(out, "orders"), out
    # (the rows it read again: 7 and 9 updated, 3 restored; 1500 deleted)
    [(after,)] = duck_rows(path, "SELECT count(amount) FROM raw.orders")
    assert kept - 4 <= after < kept, (kept, after)
    assert_mirrored_in_duckdb(pg_url, path, "orders")
    assert "unchanged" in line(sync(capsys), "orders")

    # A copy changed by hand while PostgreSQL did not change: the table is unchanged, and
    # its check (the destination's figures against those its last load left) fails,
    # naming the column; the next run reads it whole, and says why.
    with duckdb.connect(str(path)) as conn:
        conn.execute("UPDATE raw.events SET payload = 'tampered' WHERE id = 10")
    assert main(["sync"]) == 1
    out = capsys.readouterr().out
    assert "public.events: FAILED" in out and "payload" in line(out, "events"), out
    out = sync(capsys)
    assert "(full: its last check found the destination differs from the source" \
        in line(out, "events"), out
    assert_mirrored_in_duckdb(pg_url, path, "events")


def test_a_copy_edited_by_hand_on_a_night_the_source_changed_is_said(
        pg_url, settings_env, capsys) -> None:
    """A copy changed by hand on a night PostgreSQL changed too: the table's whole read
    replaces it (the copy is exact again), and its check says, as a warning naming the
    column, that the destination had changed behind pg_to_bq's back: the whole read
    compares the destination with what the last load left before replacing it. So for a
    small merged table and for a keyless (replaced) one. The run succeeds; the next is quiet."""
    run_sql(pg_url, ORDERS + """
        CREATE TABLE notes (body text, added date);
        INSERT INTO notes SELECT 'note ' || g, date '2026-01-01' + g FROM generate_series(1, 50) g;
    """)
    path = settings_env(pg_url)
    sync(capsys)
    with duckdb.connect(str(path)) as conn:
        conn.execute("UPDATE raw.orders SET status = 'tampered' WHERE id = 10")
        conn.execute("UPDATE raw.notes SET added = NULL WHERE body = 'note 5'")
    night(pg_url)
    run_sql(pg_url, "INSERT INTO notes VALUES ('note 51', date '2026-03-01')")
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    said = "checks failed: matches_source (the destination had changed since the last load " \
           "(not by pg_to_bq), and this run's whole read replaced it with the source's rows: "
    orders = line(out, "orders")
    assert "ok, 1,999 rows (full)" in orders and said in orders, out
    assert "status: values changed (2,000 non-null either way)" in orders, out
    notes = line(out, "notes")
    assert "ok, 51 rows (full)" in notes and said in notes, out
    assert "added: 50 non-null value(s) after the last load, 49 now" in notes, out
    # Not said of the table nobody edited.
    assert "checks failed" not in line(out, "events"), out
    for table in ("orders", "notes", "events"):
        assert_mirrored_in_duckdb(pg_url, path, table)
    again = sync(capsys)
    assert "unchanged" in line(again, "orders") and "unchanged" in line(again, "notes"), again


def test_a_view_merged_by_its_cursor_takes_its_delete_pass(pg_url, settings_env, tmp_path,
                                                           capsys) -> None:
    """A view (`PG_TO_BQ_INCLUDE_VIEWS`) with a key and a cursor from the tables file is
    merged by its cursor: its rows have no `xmin`, so its reads never ask which rows were
    written since the last one (the weekly delete pass's read failed on `column "xmin" does
    not exist`); the pass removes what PostgreSQL deleted, and the copy is exact."""
    run_sql(pg_url, """
        CREATE TABLE base (id int PRIMARY KEY, v text,
                           updated_at timestamptz NOT NULL DEFAULT now() - interval '1 day');
        INSERT INTO base SELECT g, 'x' FROM generate_series(1, 50) g;
        CREATE VIEW vbase AS SELECT * FROM base;
    """)
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.vbase:\n    primary_key: [id]\n    cursor: updated_at\n")
    path = settings_env(pg_url, include_views="true", tables_file=str(tables))
    assert "public.vbase: ok, 50 rows (full)" in sync(capsys)
    run_sql(pg_url, "UPDATE base SET v = 'y', updated_at = now() WHERE id = 3; "
                    "DELETE FROM base WHERE id = 9")
    out = sync(capsys, "--apply-deletes")
    assert "(incremental), 1 deleted" in line(out, "vbase"), out
    assert_mirrored_in_duckdb(pg_url, path, "vbase")
