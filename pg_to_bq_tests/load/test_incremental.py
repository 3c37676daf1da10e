"""Tier 2: incremental merges, deletes, backfills, checks and sensitive columns, PostgreSQL → DuckDB."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest

from pg_to_bq.orchestration.code_location import build_definitions
from pg_to_bq.orchestration.names import APPLY_DELETES_TAG, FULL_REFRESH_TAG
from pg_to_bq.planning.settings import Settings
from pg_to_bq_tests.conftest import duck_rows, kill_sync_when, run_sql

ORDERS_SQL = """
    CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL,
                         amount numeric(10,2), updated_at timestamptz NOT NULL);
    INSERT INTO orders
    SELECT g, 'new', g * 1.25, now() - interval '30 days' + g * interval '1 minute'
    FROM generate_series(1, 1000) g;
"""


def materialize(defs: dg.Definitions, tags: dict | None = None, partition_key: str | None = None,
                selection: dg.AssetSelection | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        list(defs.assets or []),
        selection=selection or dg.AssetSelection.kind("dlt"),
        resources=defs.resources,
        tags=tags,
        partition_key=partition_key,
        raise_on_error=False,
    )


def metadata_of(result: dg.ExecuteInProcessResult) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, str]]:
    return {e.check_name: (e.passed, e.severity.value) for e in result.get_asset_check_evaluations()}


def test_incremental_merge_picks_changes_and_skips_unchanged_rows(pg_url: str, settings_env) -> None:
    run_sql(pg_url, ORDERS_SQL)
    path = settings_env(pg_url, read_whole_bytes="0")
    defs = build_definitions(Settings.from_env())
    first = materialize(defs)
    assert first.success and metadata_of(first)["load_mode"] == "full"
    assert metadata_of(first)["rows_loaded"] == 1000

    unchanged = materialize(defs)
    assert metadata_of(unchanged)["load_mode"] == "incremental"
    # Not one row version changed: nothing is read (pg_to_bq.postgres.row_versions).
    assert metadata_of(unchanged)["rows_loaded"] == 0
    assert metadata_of(unchanged)["unchanged"] == \
        "the table's row versions are those of the last load"

    run_sql(pg_url, """
        UPDATE orders SET status = 'paid', updated_at = now() WHERE id IN (3, 4);
        INSERT INTO orders VALUES (1001, 'new', 9.99, now());
    """)
    changed = materialize(defs)
    # The 3 changed rows plus the 11 rows inside the lookback window (10 minutes, bounds
    # included) of the previous cursor: rows 990 to 1000.
    assert metadata_of(changed)["rows_loaded"] == 14
    assert duck_rows(path, "SELECT count(*), count(DISTINCT id) FROM raw.orders") == [(1001, 1001)]
    assert duck_rows(path, "SELECT id, status FROM raw.orders WHERE status = 'paid' ORDER BY id") \
        == [(3, "paid"), (4, "paid")]
    assert check_results(changed)["matches_source"] == (True, "ERROR")

    again = materialize(defs)  # idempotent: nothing new, nothing duplicated
    assert again.success
    assert duck_rows(path, "SELECT count(*), count(DISTINCT id) FROM raw.orders") == [(1001, 1001)]


def test_rows_written_under_a_cursor_already_passed_arrive_the_next_run(
        pg_url: str, settings_env, capsys) -> None:
    """What a cursor cannot see: a transaction open longer than the lookback (`now()` is its
    start; its row commits after a read took a later cursor), an update that kept its
    `updated_at`, a row put back with an old one. A merged table small enough for its row
    versions to be scanned anyway (up to 32 MiB) also reads every row written by a
    transaction its last read could not see. Before, all three kept their old values (or
    stayed missing) for good, and the run said `unchanged`."""
    from pg_to_bq.cli.main import main

    run_sql(pg_url, ORDERS_SQL)
    path = settings_env(pg_url, read_whole_bytes="0")
    assert main(["sync"]) == 0
    late = psycopg.connect(pg_url)  # the long transaction, still open at the next read
    late.execute("UPDATE orders SET status = 'late', updated_at = now() WHERE id = 1")
    # An hour of other commits, stood for by one stamped an hour on.
    run_sql(pg_url, "UPDATE orders SET status = 'later', updated_at = now() + interval '1 hour' "
                    "WHERE id = 2")
    assert main(["sync"]) == 0
    late.commit()
    late.close()
    run_sql(pg_url, "UPDATE orders SET status = 'forgot' WHERE id = 3; "
                    "INSERT INTO orders VALUES (5000, 'restored', 1, now() - interval '90 days')")
    capsys.readouterr()
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "public.orders: ok, 4 rows (incremental)" in out, out
    assert duck_rows(path, "SELECT id, status FROM raw.orders WHERE id IN (1, 2, 3, 4, 5000) "
                           "ORDER BY id") == [(1, "late"), (2, "later"), (3, "forgot"),
                                              (4, "new"), (5000, "restored")]
    assert duck_rows(path, "SELECT count(*) FROM raw.orders") == [(1001,)]
    assert main(["sync"]) == 0
    assert "public.orders: unchanged" in capsys.readouterr().out


def test_a_large_table_gets_what_its_cursor_missed_with_the_delete_pass(
        pg_url: str, settings_env, capsys) -> None:
    """Above 32 MiB a merged table's nightly read is its cursor window alone (a condition
    on `xmin` would scan the table every night). The delete pass scans it anyway: that run
    also reads every row written by a transaction the previous such read (or the first,
    whole, read) could not see. A held transaction, an update that forgot `updated_at` and a
    row restored with an old one arrive with the pass, and every row matches PostgreSQL.
    A real table of ~45 MB, so that discovery sizes it as production would."""
    from pg_to_bq.cli.main import main
    from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

    run_sql(pg_url, """
        CREATE TABLE events (id int PRIMARY KEY, status text NOT NULL, pad text NOT NULL,
                             updated_at timestamptz NOT NULL);
        INSERT INTO events SELECT g, 'new', repeat('x', 250),
                                  now() - interval '30 days' + g * interval '10 seconds'
        FROM generate_series(1, 150000) g;""")
    path = settings_env(pg_url)
    assert main(["sync", "--refresh-catalog"]) == 0
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT pg_total_relation_size('events')").fetchone()[0] \
            > 32 * 1024 * 1024
    late = psycopg.connect(pg_url)  # a long transaction, open across the next read
    late.execute("UPDATE events SET status = 'late', updated_at = now() WHERE id = 1")
    run_sql(pg_url, "UPDATE events SET status = 'later', updated_at = now() + interval '1 hour' "
                    "WHERE id = 2")
    assert main(["sync"]) == 0
    late.commit()
    late.close()
    run_sql(pg_url, "UPDATE events SET status = 'forgot' WHERE id = 3; "
                    "INSERT INTO events VALUES (200000, 'restored', 'r', "
                    "now() - interval '90 days')")
    capsys.readouterr()
    assert main(["sync", "--apply-deletes"]) == 0
    out = capsys.readouterr().out
    assert "public.events: ok, 4 rows (incremental)" in out, out
    assert_mirrored_in_duckdb(pg_url, path, "events")
    # The next pass starts from this one's snapshot: a row forgotten since arrives with it.
    run_sql(pg_url, "UPDATE events SET status = 'forgot again' WHERE id = 4")
    assert main(["sync", "--apply-deletes"]) == 0
    out = capsys.readouterr().out
    assert "public.events: ok, 2 rows (incremental)" in out, out
    assert_mirrored_in_duckdb(pg_url, path, "events")


def test_rows_inserted_while_a_merge_reads_are_the_next_runs(pg_url: str, settings_env) -> None:
    """The row-count check compares the destination with the whole table in the snapshot
    the rows were read in. A row committed in PostgreSQL while the load is reading (after
    its snapshot) is not missing: the next run loads it. Real concurrency: a second
    connection inserts the row once the load's COPY shows in pg_stat_activity."""
    run_sql(pg_url, """
        CREATE TABLE events (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, pad text);
        INSERT INTO events SELECT g, now(), repeat('x', 200) FROM generate_series(1, 300000) g;
        CREATE INDEX ON events (updated_at);
    """)
    path = settings_env(pg_url)
    defs = build_definitions(Settings.from_env())
    assert materialize(defs).success

    inserted_during_copy = threading.Event()

    def insert_once_the_copy_runs() -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                active = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_to_bq' "
                    "AND state = 'active' AND query LIKE 'COPY (SELECT%%events%%'").fetchone()[0]
                if active:
                    conn.execute("INSERT INTO events VALUES (300001, now(), 'late')")
                    inserted_during_copy.set()
                    return
                time.sleep(0.002)

    inserter = threading.Thread(target=insert_once_the_copy_runs)
    inserter.start()
    # Every row is inside the lookback window: this incremental run re-reads (and merges)
    # all 300,000, long enough for the insert to land mid-read.
    during = materialize(defs)
    inserter.join()
    assert inserted_during_copy.is_set()
    assert metadata_of(during)["load_mode"] == "incremental"
    assert metadata_of(during)["rows_loaded"] == 300000
    assert check_results(during)["matches_source"] == (True, "ERROR")

    after = materialize(defs)
    assert check_results(after)["matches_source"] == (True, "ERROR")
    assert duck_rows(path, "SELECT count(*), max(id) FROM raw.events") == [(300001, 300001)]


def data_version(result: dg.ExecuteInProcessResult) -> str:
    [event] = result.get_asset_materialization_events()
    return event.event_specific_data.materialization.tags["dagster/data_version"]


def test_rows_deleted_from_a_small_table_leave_its_copy_in_the_same_run(
        pg_url: str, settings_env) -> None:
    """A merge adds and replaces rows, never removes them: a small merged table (up to 32
    MiB, its row versions read every run) whose copy holds more rows after its merge than
    PostgreSQL held when it was read has lost rows in PostgreSQL; its delete pass runs in
    that run. Before, they stayed until the weekly pass, the check warning every night.
    A run that only deleted rows gives the asset a new data version (downstream sees the
    change); an unchanged run keeps it."""
    from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

    run_sql(pg_url, ORDERS_SQL)
    path = settings_env(pg_url, read_whole_bytes="0")
    defs = build_definitions(Settings.from_env())
    loaded = materialize(defs)
    run_sql(pg_url, "DELETE FROM orders WHERE id IN (10, 20, 30)")
    deleted = materialize(defs)
    assert deleted.success
    assert metadata_of(deleted)["rows_deleted"] == 3
    assert "unchanged" not in metadata_of(deleted)  # (no row to load; three deleted)
    assert check_results(deleted)["matches_source"] == (True, "ERROR")
    assert duck_rows(path, "SELECT count(*) FROM raw.orders") == [(997,)]
    assert data_version(deleted) != data_version(loaded)
    unchanged = materialize(defs)
    assert "rows_deleted" not in metadata_of(unchanged) and "unchanged" in metadata_of(unchanged)
    assert data_version(unchanged) == data_version(deleted)
    # A delete beside an insert: the counts alone would balance had the insert not loaded.
    run_sql(pg_url, "DELETE FROM orders WHERE id = 40; "
                    "INSERT INTO orders VALUES (5001, 'new', 1, now())")
    both = materialize(defs)
    assert metadata_of(both)["rows_deleted"] == 1
    assert check_results(both)["matches_source"] == (True, "ERROR")
    assert_mirrored_in_duckdb(pg_url, path, "orders")


def test_a_sprint_across_many_tables_fills_and_deletes_in_one_side_load(
        pg_url: str, settings_env, capsys) -> None:
    """A migration adding a column to every table and a night of deletes in each: every
    table's new column is filled for its rows and every deleted row leaves, each table's
    keys or columns read into a side table, all of them loaded in one side package (one
    dlt load, `_GroupRun.side_load_many`), not one package per table."""
    from pg_to_bq.cli.main import main
    from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

    names = [f"t{i}" for i in range(6)]
    run_sql(pg_url, "".join(ORDERS_SQL.replace("orders", name) for name in names))
    path = settings_env(pg_url, read_whole_bytes="0")
    assert main(["sync", "--refresh-catalog"]) == 0
    run_sql(pg_url, "".join(
        f"ALTER TABLE {name} ADD COLUMN region text DEFAULT 'r{i}'; "
        f"DELETE FROM {name} WHERE id % 100 = {i}; " for i, name in enumerate(names)))
    packages_before = duck_rows(path, "SELECT count(*) FROM raw._dlt_loads")[0][0]
    capsys.readouterr()
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    for name in names:
        assert f"public.{name}: filled region for 990 existing row(s)" in out, out
        assert f"public.{name}: ok, " in out and ", 10 deleted in" in out, out
        assert_mirrored_in_duckdb(pg_url, path, name)
    # The tables' own package, the fills' and the keys': three loads, whatever the tables.
    assert duck_rows(path, "SELECT count(*) FROM raw._dlt_loads")[0][0] \
        == packages_before + 3


def test_deletes_are_applied_on_demand(pg_url: str, settings_env,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A merged table above 32 MiB (stood for by a lower bound: the size alone decides) keeps
    rows deleted in PostgreSQL until its delete pass (weekly, or asked), with a warning."""
    monkeypatch.setattr("pg_to_bq.postgres.row_versions.MERGE_MAX_BYTES", 0)
    run_sql(pg_url, ORDERS_SQL)
    path = settings_env(pg_url, read_whole_bytes="0")
    defs = build_definitions(Settings.from_env())
    assert materialize(defs).success
    run_sql(pg_url, "DELETE FROM orders WHERE id IN (10, 20, 30)")
    pending = materialize(defs)
    assert check_results(pending)["matches_source"] == (False, "WARN")
    assert duck_rows(path, "SELECT count(*) FROM raw.orders") == [(1000,)]

    applied = materialize(defs, tags={APPLY_DELETES_TAG: "true"})
    assert applied.success
    assert metadata_of(applied)["rows_deleted"] == 3
    assert check_results(applied)["matches_source"] == (True, "ERROR")
    assert duck_rows(path, "SELECT count(*) FROM raw.orders WHERE id IN (10, 20, 30)") == [(0,)]
    assert duck_rows(path, "SELECT count(*) FROM raw.orders") == [(997,)]


def test_full_refresh_replaces_and_resets_the_cursor(pg_url: str, settings_env) -> None:
    run_sql(pg_url, ORDERS_SQL)
    path = settings_env(pg_url)
    defs = build_definitions(Settings.from_env())
    assert materialize(defs).success
    run_sql(pg_url, "DELETE FROM orders WHERE id > 500")
    refreshed = materialize(defs, tags={FULL_REFRESH_TAG: "true"})
    assert metadata_of(refreshed)["load_mode"] == "full"
    assert duck_rows(path, "SELECT count(*) FROM raw.orders") == [(500,)]


def test_rows_removed_by_hand_are_noticed_and_the_table_reloaded(pg_url: str,
                                                                  settings_env) -> None:
    """Issue 21: the state's cursor covered rows the destination no longer holds; the next
    run does not trust it, reads the table whole and says why."""
    run_sql(pg_url, ORDERS_SQL)
    path = settings_env(pg_url)
    defs = build_definitions(Settings.from_env())
    assert materialize(defs).success
    with duckdb.connect(str(path)) as conn:
        conn.execute("DELETE FROM raw.orders WHERE id <= 5")  # tampering
    result = materialize(defs)
    assert result.success
    metadata = metadata_of(result)
    assert metadata["load_mode"] == "full"
    assert metadata["pg_to_bq/read_whole_because"] == \
        "the destination table holds 995 row(s) where its last load left 1,000"
    assert check_results(result)["matches_source"] == (True, "ERROR")
    assert duck_rows(path, "SELECT count(*) FROM raw.orders") == [(1000,)]


def test_values_lost_fail_the_step_and_the_next_run_reads_the_table_whole(
        pg_url: str, settings_env) -> None:
    """A failed ERROR check is a failed table: the run fails (the check is blocking), and the
    table's state is invalidated so the next run reads it whole."""
    run_sql(pg_url, ORDERS_SQL)
    path = settings_env(pg_url, read_whole_bytes="0")
    defs = build_definitions(Settings.from_env())
    assert materialize(defs).success
    with duckdb.connect(str(path)) as conn:  # a value changed behind pg_to_bq's back
        conn.execute("UPDATE raw.orders SET amount = -1 WHERE id = 3")
    run_sql(pg_url, "UPDATE orders SET status = 'paid', updated_at = now() WHERE id = 900")
    failed = materialize(defs)
    assert not failed.success
    assert check_results(failed)["matches_source"] == (False, "ERROR")
    assert metadata_of(failed)["load_mode"] == "incremental"
    [failure] = failed.get_step_failure_events()
    assert "blocking asset check" in failure.step_failure_data.error.message
    again = materialize(defs)
    assert again.success
    assert metadata_of(again)["load_mode"] == "full"
    assert "its last check found the destination differs from the source" in \
        metadata_of(again)["pg_to_bq/read_whole_because"]
    assert check_results(again)["matches_source"] == (True, "ERROR")
    assert duck_rows(path, "SELECT amount FROM raw.orders WHERE id = 3") == \
        [(Decimal("3.75"),)]


def test_one_day_partition_backfill(pg_url: str, settings_env, tmp_path: Path) -> None:
    run_sql(pg_url, """
        CREATE TABLE visits (id bigint PRIMARY KEY, visited_at timestamptz NOT NULL, page text);
        INSERT INTO visits
        SELECT g, TIMESTAMPTZ '2026-11-01 00:00:00+00' + g * interval '1 hour', '/p' || g
        FROM generate_series(0, 71) g;
    """)
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.visits:\n    partition: {column: visited_at, "
                      "granularity: day, start: 2026-11-01}\n")
    path = settings_env(pg_url, TABLES_FILE=str(tables))
    defs = build_definitions(Settings.from_env())
    result = materialize(defs, partition_key="2026-11-02",
                         selection=dg.AssetSelection.tag("pg_to_bq/partitioned", "day"))
    assert result.success
    assert metadata_of(result)["load_mode"] == "window"
    assert duck_rows(path, "SELECT count(*), min(id), max(id) FROM raw.visits") == [(24, 24, 47)]
    run_sql(pg_url, "UPDATE visits SET page = '/changed' WHERE id = 30")
    assert materialize(defs, partition_key="2026-11-02",
                       selection=dg.AssetSelection.tag("pg_to_bq/partitioned", "day")).success
    assert duck_rows(path, "SELECT count(*) FROM raw.visits") == [(24,)]
    assert duck_rows(path, "SELECT page FROM raw.visits WHERE id = 30") == [("/changed",)]


def test_excluded_and_hashed_columns_never_reach_the_destination(
    pg_url: str, settings_env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_sql(pg_url, """
        CREATE TABLE users (id int PRIMARY KEY, email text, api_token text, card text);
        INSERT INTO users VALUES (1, 'a@example.com', 'tok-SECRET-1', '4111-VISIBLE-NEVER'),
                                 (2, NULL, 'tok-SECRET-2', NULL);
    """)
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.users:\n    columns:\n      email: {hash: true}\n"
                      "      card: {exclude: true}\n")
    path = settings_env(pg_url, TABLES_FILE=str(tables), HASH_SALT="pepper")
    caplog.set_level("DEBUG")
    result = materialize(build_definitions(Settings.from_env()))
    assert result.success
    columns = [r[0] for r in duck_rows(path, "SELECT column_name FROM information_schema.columns "
                                        "WHERE table_schema = 'raw' AND table_name = 'users'")]
    assert sorted(columns) == ["email", "id"]
    expected = hashlib.sha256(b"pepper" + b"a@example.com").hexdigest()
    assert duck_rows(path, "SELECT id, email FROM raw.users ORDER BY id") == [(1, expected), (2, None)]
    secrets = [b"tok-SECRET", b"4111-VISIBLE-NEVER", b"a@example.com"]
    for file in Path(os.environ["PG_TO_BQ_WORK_DIR"]).rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            assert not any(s in data for s in secrets), file
    logs = caplog.text + "".join(str(e.message) for e in result.all_events)
    assert not any(s.decode() in logs for s in secrets)
    # The plan in the asset's metadata lists what was excluded and hashed.
    node = build_definitions(Settings.from_env()).resolve_asset_graph().get(
        dg.AssetKey(["duckdb", "raw", "users"]))
    plan_md = node.metadata["pg_to_bq/plan"].value
    assert "excluded columns**: api_token, card" in plan_md and "hashed columns**: email" in plan_md


def test_killed_load_then_rerun_has_no_duplicates_or_gaps(pg_url: str, settings_env) -> None:
    run_sql(pg_url, """
        CREATE TABLE big (id bigint PRIMARY KEY, payload text, updated_at timestamptz NOT NULL);
        INSERT INTO big SELECT g, repeat(md5(g::text), 8), now() - interval '1 day'
        FROM generate_series(1, 400000) g;
    """)
    path = settings_env(pg_url, BATCH_BYTES=str(4 * 1024 * 1024))
    work = Path(os.environ["PG_TO_BQ_WORK_DIR"])
    # Kill as soon as dlt has written part of the extract, i.e. mid-way through the load
    # (the parquet files exist for about a second: the helper polls every 10 ms).
    kill_sync_when(lambda: any(p.suffix == ".parquet" for p in work.rglob("*.parquet")),
                   "public.big", what="a parquet file was written")
    # The file the killed extraction was writing stays behind; made an hour old, the next
    # run of the table removes it (a recent file could be another run's, still being written).
    leftovers = list((work / "pg_to_bq_files").rglob("*.parquet"))
    assert leftovers  # killed while writing its file (the first parquet file to appear)
    for leftover in leftovers:
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))

    rerun = subprocess.run([sys.executable, "-m", "pg_to_bq.cli", "sync", "public.big"],
                           env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert duck_rows(path, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM raw.big") \
        == [(400000, 400000, 1, 400000)]
    assert not any(p.exists() for p in leftovers)
    assert not list((work / "pg_to_bq_files").rglob("*.parquet"))


def test_full_refresh_from_the_launchpad_config(pg_url: str, settings_env) -> None:
    run_sql(pg_url, ORDERS_SQL)
    path = settings_env(pg_url)
    defs = build_definitions(Settings.from_env())
    assert materialize(defs).success
    run_sql(pg_url, "DELETE FROM orders WHERE id > 900")
    step = defs.resolve_assets_def(dg.AssetKey(["duckdb", "raw", "orders"])).op.name
    result = dg.materialize(
        list(defs.assets or []), selection=dg.AssetSelection.kind("dlt"), resources=defs.resources,
        run_config={"ops": {step: {"config": {"full_refresh": True}}}},
    )
    assert metadata_of(result)["load_mode"] == "full"
    assert duck_rows(path, "SELECT count(*) FROM raw.orders") == [(900,)]


def test_a_declared_key_the_data_does_not_keep_loses_no_row(pg_url: str, settings_env,
                                                             tmp_path: Path, capsys) -> None:
    """A key named in the tables file for a table without one, which the data does not keep
    unique: a merge loads every row of the key, so the copy still equals the source (dlt's
    deduplication of the staged rows kept one of them: the table failed every run)."""
    from pg_to_bq.cli.main import main
    from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

    run_sql(pg_url, """
        CREATE TABLE visits (k int, v text, updated_at timestamptz NOT NULL);
        INSERT INTO visits SELECT g, 'v' || g, now() - interval '1 day' FROM generate_series(1, 50) g;
    """)
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.visits: {primary_key: [k], cursor: updated_at}\n",
                      encoding="utf-8")
    path = settings_env(pg_url, tables_file=str(tables))
    assert main(["sync"]) == 0, capsys.readouterr().out
    run_sql(pg_url, "INSERT INTO visits VALUES (7, 'again', now()), (7, 'and again', now())")
    assert main(["sync"]) == 0, capsys.readouterr().out
    assert duck_rows(path, "SELECT count(*) FROM raw.visits WHERE k = 7") == [(3,)]
    assert_mirrored_in_duckdb(pg_url, path, "visits")


def test_a_lookback_window_read_back_as_last_loaded_is_not_loaded_again(
        pg_url: str, settings_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A merged table too big for its row versions to be asked (`row_versions.applies`) reads
    its lookback window each run; the window's digest, taken in the thread that read the
    table (`WindowTracker.finish`) and stored with the state, says when those rows are the
    ones last loaded. Then nothing is loaded; a change inside the window is."""
    monkeypatch.setattr("pg_to_bq.postgres.row_versions.MERGE_MAX_BYTES", 0)
    run_sql(pg_url, ORDERS_SQL)
    path = settings_env(pg_url, read_whole_bytes="0")
    defs = build_definitions(Settings.from_env())
    assert metadata_of(materialize(defs))["load_mode"] == "full"

    again = metadata_of(materialize(defs))
    assert again["load_mode"] == "incremental" and again["rows_loaded"] == 0
    assert again["unchanged"] == "the rows of the lookback window read back as last loaded"

    run_sql(pg_url, "UPDATE orders SET status = 'paid' WHERE id = 1000")
    changed = metadata_of(materialize(defs))
    assert changed["load_mode"] == "incremental" and changed["rows_loaded"] >= 1
    assert "unchanged" not in changed
    assert duck_rows(path, "SELECT status FROM raw.orders WHERE id = 1000") == [("paid",)]
