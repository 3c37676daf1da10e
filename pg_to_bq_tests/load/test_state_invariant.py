"""Tier 2: never a cursor without its rows (issue 21), PostgreSQL → DuckDB.

A table's stored state (cursor, row-version token, window digest, fill markers) is trusted
only while the destination table holds the rows it covers. These tests break that the ways
a night of migrations, a failed reload or a human can, and then compare every row of the
source with the copy after the next plain run — through `pg-to-bq sync` and through the
scheduled job run the way the run worker runs it (`dagster job execute`, a persistent
`DAGSTER_HOME`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq_tests.conftest import duck_rows, run_sql
from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

# The shape: a merged table (primary key + updated_at) and two others.
SHOP = """
    CREATE TABLE events (id int PRIMARY KEY, title text NOT NULL, amount numeric(12,2),
                         n int, updated_at timestamptz NOT NULL);
    INSERT INTO events SELECT g, 't' || g, g * 1.5, g,
                              now() - interval '30 days' + g * interval '1 minute'
    FROM generate_series(1, 20000) g;
    CREATE TABLE plain (a int, b text);
    INSERT INTO plain SELECT g, 'b' || g FROM generate_series(1, 100) g;
    CREATE TABLE other (id int PRIMARY KEY, v text);
    INSERT INTO other SELECT g, 'v' || g FROM generate_series(1, 100) g;
"""
# One sprint's migration on the merged table.
MIGRATION = """
    ALTER TABLE events ADD COLUMN status text DEFAULT 'open';
    UPDATE events SET status = 'closed', updated_at = now() WHERE id % 1000 = 0;
    ALTER TABLE events DROP COLUMN n;
    ALTER TABLE events ALTER COLUMN amount TYPE text;
    UPDATE events SET amount = 'n/a', updated_at = now() WHERE id IN (3, 4, 5);
"""
TABLES = ("events", "plain", "other")


def assert_exact(url: str, path: Path) -> None:
    for table in TABLES:
        assert_mirrored_in_duckdb(url, path, table)


def sync(capsys, *args: str, status: int = 0) -> str:
    code = main(["sync", *args])
    out = capsys.readouterr().out
    assert code == status, out
    return out


@pytest.fixture
def shop(pg_url: str, settings_env, capsys):
    run_sql(pg_url, SHOP)
    path = settings_env(pg_url)
    sync(capsys, "--refresh-catalog")
    return pg_url, path


def test_a_sprint_of_migrations_is_exact_after_one_night(shop, capsys) -> None:
    """The issue's night: before, the reload failed on DuckDB (the staging dataset had no
    `_dlt_version`) after dropping the table, and the next night appended 616 rows to it."""
    url, path = shop
    run_sql(url, MIGRATION)
    out = sync(capsys)
    assert "public.events: ok, 20,000 rows (full)" in out, out
    assert "column amount changed type (DECIMAL(12,2) → VARCHAR): table reloaded under the " \
           "new type" in out
    assert_exact(url, path)
    assert duck_rows(path, "SELECT count(*) FILTER (WHERE status = 'closed'), "
                     "count(*) FILTER (WHERE amount = 'n/a') FROM raw.events") == [(20, 3)]
    # The second night has nothing to do and stays exact.
    out = sync(capsys)
    assert "public.events: unchanged" in out, out
    assert_exact(url, path)


def test_the_type_change_alone_on_a_merged_table(shop, capsys) -> None:
    """The smallest case of the issue: a merged table only ever replaced in place has a
    staging dataset without a version table; dropping it for the reload failed there."""
    url, path = shop
    run_sql(url, "ALTER TABLE events ALTER COLUMN amount TYPE text;"
                 "UPDATE events SET amount = 'abc', updated_at = now() WHERE id <= 5")
    sync(capsys)
    assert_exact(url, path)
    assert duck_rows(path, "SELECT data_type FROM information_schema.columns WHERE "
                     "table_schema = 'raw' AND table_name = 'events' AND column_name = 'amount'"
                     ) == [("VARCHAR",)]


def test_the_migration_through_the_scheduled_job(shop, tmp_path: Path, capsys) -> None:
    url, path = shop
    run_sql(url, MIGRATION)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    dagster = Path(sys.executable).parent / "dagster"
    for night in (1, 2):
        out = subprocess.run([str(dagster), "job", "execute", "-m", "pg_to_bq.definitions",
                              "-j", "mirror_all_tables"], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, (night, out.stderr[-5000:])
        assert_exact(url, path)


def test_a_truncated_table_reloaded_with_old_cursor_values_is_read_whole(shop, capsys) -> None:
    """TRUNCATE, then rows put back with other values and their old `updated_at`s (a restore
    from a dump, a re-seed): the stored cursor has passed every one of them. Before, the
    merged table read its window (nothing), kept 20,000 rows PostgreSQL no longer had (until
    a delete pass) and the old values of the 5,000 it did, for good; the check said only
    that rows were awaiting the delete pass. PostgreSQL gave the table new storage, so the
    state's cursor is not trusted: the table is read whole, once."""
    url, path = shop
    run_sql(url, "TRUNCATE events; INSERT INTO events SELECT g, 'restored ' || g, g, g, "
                 "now() - interval '60 days' FROM generate_series(1, 5000) g;")
    out = sync(capsys)
    assert "public.events: ok, 5,000 rows (full: its PostgreSQL storage was replaced since " \
           "its last load (TRUNCATE, a restore, VACUUM FULL, CLUSTER, pg_repack or a " \
           "rewriting ALTER TABLE): rows may have changed or gone without their cursor " \
           "moving)" in out, out
    assert "public.plain: unchanged" in out and "public.other: unchanged" in out, out
    assert_exact(url, path)
    assert "public.events: unchanged" in sync(capsys)
    # The same through the scheduled job's steps (what `dagster job execute` runs).
    run_sql(url, "TRUNCATE events; INSERT INTO events SELECT g, 'again ' || g, g, g, "
                 "now() - interval '90 days' FROM generate_series(1, 300) g;")
    env = {**os.environ, "DAGSTER_HOME": str(path.parent / "home")}
    Path(env["DAGSTER_HOME"]).mkdir(exist_ok=True)
    out = subprocess.run([str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m",
                          "pg_to_bq.definitions", "-j", "mirror_all_tables"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-5000:]
    assert_exact(url, path)


def test_a_rewrite_that_keeps_every_row_is_read_whole_once(shop, capsys) -> None:
    """VACUUM FULL gives the table new storage too, and pg_to_bq cannot tell it from a
    TRUNCATE and a reload: one whole read (said), then unchanged again."""
    url, path = shop
    run_sql(url, "VACUUM FULL events")
    out = sync(capsys)
    assert "public.events: ok, 20,000 rows (full: its PostgreSQL storage was replaced" in out, \
        out
    assert_exact(url, path)
    assert "public.events: unchanged" in sync(capsys)


def _state(path: Path, table: str) -> dict:
    [(text,)] = duck_rows(path, f"SELECT state FROM raw._pg_to_bq_state WHERE table_name = "
                                f"'{table}'")
    return json.loads(text)


def test_what_a_human_does_to_the_destination_is_noticed(shop, capsys) -> None:
    url, path = shop
    run_sql(url, "UPDATE events SET title = 'moved', updated_at = now() WHERE id = 7")
    with duckdb.connect(str(path)) as conn:
        conn.execute("TRUNCATE raw.events")
        conn.execute("DROP TABLE raw.plain")
        conn.execute("DELETE FROM raw._pg_to_bq_state WHERE table_name = 'other'")
        conn.execute("DELETE FROM raw.other WHERE id > 50")
    out = sync(capsys)
    assert "public.events: ok, 20,000 rows (full: the destination table holds 0 row(s) where " \
           "its last load left 20,000)" in out, out
    assert "public.plain: ok, 100 rows (full: the destination table is missing)" in out, out
    # No state: nothing to trust, read whole as a first load is.
    assert "public.other: ok, 100 rows (full)" in out, out
    assert_exact(url, path)


def test_a_state_restored_from_another_time_is_not_trusted(shop, capsys, monkeypatch) -> None:
    """The state table restored from a backup taken before the last load: its row count
    and load no longer describe the table. (Merged by cursor, as a table above
    PG_TO_BQ_READ_WHOLE_BYTES is: its incremental read would trust the state.)"""
    url, path = shop
    monkeypatch.setenv("PG_TO_BQ_READ_WHOLE_BYTES", "0")
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE TABLE raw.state_backup AS SELECT * FROM raw._pg_to_bq_state")
    run_sql(url, "INSERT INTO events SELECT g, 't' || g, 1, g, now() "
                 "FROM generate_series(20001, 20100) g")
    out = sync(capsys, "public.events")
    assert "public.events: ok, 111 rows (incremental)" in out, out  # 11 in the lookback
    with duckdb.connect(str(path)) as conn:
        conn.execute("DELETE FROM raw._pg_to_bq_state")
        conn.execute("INSERT INTO raw._pg_to_bq_state SELECT * FROM raw.state_backup")
        # and a backup of the data from before the first load's id (another dataset's)
        conn.execute("UPDATE raw._pg_to_bq_state SET state = replace(state, '\"load_id\": \"',"
                     " '\"load_id\": \"1') WHERE table_name = 'other'")
    out = sync(capsys)
    assert "public.events: ok, 20,100 rows (full: the destination table holds 20,100 row(s) " \
           "where its last load left 20,000)" in out, out
    assert "public.other: ok, 100 rows (full: its state names load 1" in out, out
    assert_exact(url, path)


def test_a_state_written_by_an_earlier_version_is_read_whole_once(shop, capsys) -> None:
    url, path = shop
    with duckdb.connect(str(path)) as conn:
        rows = conn.execute("SELECT table_name, state FROM raw._pg_to_bq_state").fetchall()
        for table, text in rows:
            state = json.loads(text)
            state.pop("destination_rows")
            conn.execute("UPDATE raw._pg_to_bq_state SET state = ? WHERE table_name = ?",
                         [json.dumps(state), table])
    out = sync(capsys)
    assert "public.events: ok, 20,000 rows (full: its stored state has no row count (written " \
           "by an earlier pg_to_bq))" in out, out
    assert _state(path, "events")["destination_rows"] == 20000
    assert "public.events: unchanged" in sync(capsys)
    assert_exact(url, path)


def test_a_reload_that_fails_leaves_no_cursor_behind(shop, capsys) -> None:
    """A reload under a new type fails after the table was dropped: its state was
    invalidated before the drop, so the next run reads it whole instead of appending to an
    empty table (the issue's second night)."""
    url, path = shop
    run_sql(url, "ALTER TABLE events ALTER COLUMN amount TYPE text")
    # A view where dlt drops and creates the staging copy makes the reload fail after the
    # table itself was dropped.
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS raw_staging")
        conn.execute("CREATE VIEW raw_staging.events AS SELECT 1 AS x")
    out = sync(capsys, status=1)
    assert "public.events: FAILED" in out, out
    assert _state(path, "events") == {
        "invalidated": "its reload under a new column type did not finish"}
    with duckdb.connect(str(path)) as conn:
        conn.execute("DROP VIEW raw_staging.events")
    out = sync(capsys)
    assert "public.events: ok, 20,000 rows (full" in out, out
    assert_exact(url, path)
