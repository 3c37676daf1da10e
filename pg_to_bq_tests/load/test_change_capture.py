"""Tier 2: change capture (issue 24), PostgreSQL (wal_level=logical) → DuckDB.

Every test runs `pg-to-bq sync` with `PG_TO_BQ_CDC=true`, changes the source the ways an
application does that a cursor cannot see (updates that leave `updated_at` alone, deletes,
an update of the primary key, a TOASTed value left alone, a truncate), syncs again and
compares every row of the source with the copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq_tests.conftest import duck_rows, kill_sync_when, pg_rows, run_sql
from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

SHOP = """
    CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, amount numeric(12,2),
                         note text, updated_at timestamptz NOT NULL DEFAULT now());
    INSERT INTO orders SELECT g, 'new', g * 1.25, NULL,
                              now() - interval '30 days' + g * interval '1 second'
    FROM generate_series(1, 5000) g;
    CREATE TABLE tags (name text PRIMARY KEY, colour text);
    INSERT INTO tags SELECT 'tag ' || g, 'c' || g FROM generate_series(1, 300) g;
    CREATE TABLE pairs (a int, b uuid, v text, PRIMARY KEY (a, b));
    INSERT INTO pairs SELECT g % 7, md5(g::text)::uuid, 'v' || g FROM generate_series(1, 200) g;
    CREATE TABLE plain (x int, y text);
    INSERT INTO plain SELECT g, 'y' || g FROM generate_series(1, 50) g;
"""
TABLES = ("orders", "tags", "pairs", "plain")


def sync(capsys, *args: str, status: int = 0) -> str:
    code = main(["sync", *args])
    out = capsys.readouterr().out
    assert code == status, out
    return out


def assert_exact(url: str, path: Path, tables=TABLES) -> None:
    for table in tables:
        assert_mirrored_in_duckdb(url, path, table)


def slot_lag(url: str, slot: str) -> int:
    return pg_rows(url, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) "
                        f"FROM pg_replication_slots WHERE slot_name = '{slot}'")[0][0]


@pytest.fixture
def shop(pg_url: str, settings_env, capsys):
    run_sql(pg_url, SHOP)
    path = settings_env(pg_url, cdc="true")
    out = sync(capsys)
    return pg_url, path, out


def test_first_run_creates_the_slot_and_copies_every_table(shop) -> None:
    url, path, out = shop
    assert "public.orders: ok, 5,000 rows (full)" in out, out
    assert "public.plain: ok, 50 rows (full)" in out
    slots = pg_rows(url, "SELECT slot_name, plugin FROM pg_replication_slots")
    assert slots == [("pg_to_bq_raw", "pgoutput")]
    published = pg_rows(url, "SELECT tablename FROM pg_publication_tables "
                             "WHERE pubname = 'pg_to_bq_raw' ORDER BY 1")
    # Tables with a primary key are captured; `plain` has none, and its line says so.
    assert published == [("orders",), ("pairs",), ("tags",)]
    assert "public.plain: not captured (no primary key)" in out
    assert_exact(url, path)


def test_changes_a_cursor_cannot_see_arrive_exactly(shop, capsys) -> None:
    url, path, _ = shop
    run_sql(url, """
        UPDATE orders SET status = 'paid' WHERE id % 50 = 0;      -- updated_at left alone
        DELETE FROM orders WHERE id BETWEEN 100 AND 199;
        INSERT INTO orders (id, status, amount) SELECT g, 'new', 1 FROM generate_series(6001, 6100) g;
        UPDATE orders SET id = 900001 WHERE id = 7;                -- the key itself
        UPDATE tags SET colour = 'red' WHERE name IN ('tag 1', 'tag 2');
        DELETE FROM tags WHERE name = 'tag 3';
        UPDATE pairs SET v = 'changed' WHERE a = 3;
        DELETE FROM pairs WHERE a = 4;
    """)
    out = sync(capsys)
    assert "public.orders: ok" in out and "(changes)" in out, out
    assert_exact(url, path)
    assert duck_rows(path, "SELECT count(*) FROM raw.orders WHERE status = 'paid'") == \
        pg_rows(url, "SELECT count(*) FROM orders WHERE status = 'paid'")
    # Nothing changed since: nothing is read, and the slot holds back nothing it needs.
    out = sync(capsys)
    assert "public.orders: unchanged" in out, out
    assert "public.tags: unchanged" in out
    assert_exact(url, path)


def test_an_unchanged_toasted_value_and_a_truncate(shop, capsys) -> None:
    url, path, _ = shop
    run_sql(url, "UPDATE orders SET note = repeat(md5(id::text), 4000) WHERE id <= 3")
    sync(capsys)
    # An update that leaves the TOASTed column alone: pgoutput sends it as unchanged.
    run_sql(url, "UPDATE orders SET status = 'shipped' WHERE id <= 3")
    run_sql(url, "TRUNCATE tags; INSERT INTO tags VALUES ('only', 'one')")
    out = sync(capsys)
    assert "public.tags: ok, 1 rows (full" in out or "public.tags: ok, 1 row (full" in out, out
    assert "truncated in PostgreSQL" in out
    assert_exact(url, path)
    assert duck_rows(path, "SELECT length(note) FROM raw.orders WHERE id = 2") == [(128000,)]


def test_keys_of_other_types(pg_url, settings_env, capsys) -> None:
    """Keys that are not integers: numeric, timestamptz, date + text with a quote; updated
    and deleted by key in DuckDB (the text of pgoutput's key compared as the column's type)."""
    run_sql(pg_url, """
        CREATE TABLE prices (code numeric(10,2) PRIMARY KEY, v text);
        INSERT INTO prices SELECT g / 4.0, 'p' || g FROM generate_series(1, 60) g;
        CREATE TABLE readings (at timestamptz PRIMARY KEY, v int);
        INSERT INTO readings SELECT timestamptz '2026-01-01 00:00:00.123456+09' + g * interval '1 h', g
        FROM generate_series(1, 60) g;
        CREATE TABLE notes (day date, who text, v text, PRIMARY KEY (day, who));
        INSERT INTO notes SELECT date '2026-01-01' + g, 'o''brien ' || g, 'n' FROM generate_series(1, 60) g;
    """)
    path = settings_env(pg_url, cdc="true")
    sync(capsys)
    run_sql(pg_url, """
        UPDATE prices SET v = 'changed' WHERE code IN (0.25, 7.5); DELETE FROM prices WHERE code = 10.00;
        UPDATE readings SET v = -1 WHERE v IN (3, 4); DELETE FROM readings WHERE v = 5;
        UPDATE notes SET v = 'x' WHERE who = 'o''brien 3'; DELETE FROM notes WHERE who = 'o''brien 4';
    """)
    out = sync(capsys)
    assert out.count("(changes), 1 deleted") == 3, out
    for table in ("prices", "readings", "notes"):
        assert_mirrored_in_duckdb(pg_url, path, table)


def test_many_changes_read_the_table_whole(shop, capsys) -> None:
    url, path, _ = shop
    run_sql(url, "UPDATE orders SET status = 'bulk' WHERE id <= 2000")
    out = sync(capsys)
    assert "changed rows: read whole" in out, out
    assert_exact(url, path)


def test_a_column_added_is_filled_and_changes_still_apply(shop, capsys) -> None:
    url, path, _ = shop
    run_sql(url, """
        ALTER TABLE orders ADD COLUMN channel text NOT NULL DEFAULT 'web';
        UPDATE orders SET channel = 'shop', status = 'x' WHERE id % 100 = 0;
        ALTER TABLE tags ADD COLUMN rank int DEFAULT 7;
        UPDATE tags SET colour = 'blue' WHERE name = 'tag 9';
    """)
    sync(capsys)
    assert_exact(url, path)


def test_a_run_after_reads_that_left_wal_unflushed_ends_promptly(shop, capsys,
                                                                    monkeypatch) -> None:
    """The run's own reads set hint bits after a checkpoint: WAL that no commit flushes
    (synchronous_commit=off on this server), which the walsender does not decode until
    something does. The read of the slot flushes it; before, every idle run waited ~18 s
    for the server's next running-xacts record (the benchmark's unchanged run took 22 s).
    Here a read with no progress for 5 s fails the run."""
    from pg_to_bq.load import capture

    url, path, _ = shop
    monkeypatch.setattr(capture, "STALL_S", 5.0)
    run_sql(url, "UPDATE orders SET status = 'hint' WHERE id <= 300")
    run_sql(url, "CHECKPOINT")
    sync(capsys)
    [(insert, flush)] = pg_rows(url, "SELECT pg_current_wal_insert_lsn(), "
                                     "pg_current_wal_flush_lsn()")
    out = sync(capsys)
    assert "public.orders: unchanged" in out, (out, insert, flush)
    assert_exact(url, path)


def test_the_slot_is_released_after_every_run(shop, capsys) -> None:
    """Other tables' traffic must not pile up behind the slot: everything written before a
    run (20 MB of another table's rows) is behind the slot's confirmed position after it.
    Measured from the WAL position before the run, not the server's position now: the
    server may write WAL after the run, which no run could have confirmed (once 193 KB in a
    full test run; autovacuum of those rows and hint bits are the likely writers)."""
    url, _, _ = shop
    run_sql(url, "CREATE TABLE noise (v text); INSERT INTO noise SELECT repeat('x', 1000) "
                 "FROM generate_series(1, 20000)")
    [(before_run,)] = pg_rows(url, "SELECT pg_current_wal_lsn()")
    assert slot_lag(url, "pg_to_bq_raw") > 1024 * 1024  # (the noise is behind it now)
    sync(capsys, "public.orders")
    [(behind,)] = pg_rows(url, "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, "
                               f"'{before_run}') FROM pg_replication_slots "
                               "WHERE slot_name = 'pg_to_bq_raw'")
    assert behind >= 0


def test_a_dropped_slot_recopies_with_the_reason(shop, capsys) -> None:
    url, path, _ = shop
    run_sql(url, "SELECT pg_drop_replication_slot('pg_to_bq_raw')")
    # Changed while nobody captured them: only a whole read can find these.
    run_sql(url, "UPDATE orders SET status = 'lost?' WHERE id <= 10; "
                 "DELETE FROM tags WHERE name = 'tag 5'")
    out = sync(capsys)
    assert "public.orders: ok, 5,000 rows (full" in out, out
    assert "replication slot was dropped since the last run" in out
    assert_exact(url, path)


def test_a_run_killed_mid_load_repeats_exactly(shop, capsys) -> None:
    url, path, _ = shop
    run_sql(url, "UPDATE orders SET status = 'k' WHERE id % 3 = 0 AND id < 600; "
                 "DELETE FROM pairs WHERE a = 1")
    files = Path(os.environ["PG_TO_BQ_WORK_DIR"])

    def loading() -> bool:
        return any(files.rglob("*.parquet"))

    kill_sync_when(loading, what="a parquet file was written")
    run_sql(url, "UPDATE orders SET status = 'after' WHERE id = 2")
    sync(capsys)
    assert_exact(url, path)
    sync(capsys)
    assert_exact(url, path)


def test_cdc_status_and_drop(shop, capsys) -> None:
    url, _, _ = shop
    assert main(["cdc", "status"]) == 0
    out = capsys.readouterr().out
    assert "slot pg_to_bq_raw: idle" in out and "WAL held back" in out, out
    assert "publication pg_to_bq_raw: 3 table(s)" in out
    assert main(["cdc", "drop"]) == 0
    out = capsys.readouterr().out
    assert pg_rows(url, "SELECT count(*) FROM pg_replication_slots") == [(0,)], out
    assert pg_rows(url, "SELECT count(*) FROM pg_publication") == [(0,)]


def test_discover_says_what_change_capture_needs(shop, capsys) -> None:
    url, _, _ = shop
    assert main(["discover"]) == 0
    out = capsys.readouterr().out
    assert "slot pg_to_bq_raw, publication pg_to_bq_raw: the server and the role allow it" \
        in out, out
    assert "3 table(s) captured; 1 loaded as without change capture" in out
    assert "public.plain: no primary key and no REPLICA IDENTITY FULL" in out
    assert 'fix: ALTER TABLE "public"."plain" ADD PRIMARY KEY' in out


def test_a_table_without_a_replication_right_keeps_todays_mode(pg_url, settings_env,
                                                                 capsys) -> None:
    """A role without REPLICATION: no slot, every table loads as without change capture,
    and the line says why (the DBA's SQL is printed)."""
    run_sql(pg_url, SHOP)
    run_sql(pg_url, "DROP ROLE IF EXISTS cdc_reader; CREATE ROLE cdc_reader LOGIN; "
                    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO cdc_reader")
    base, _, database = pg_url.rpartition("/")
    url = base.replace("postgres@", "cdc_reader@") + "/" + database
    path = settings_env(url, cdc="true")
    out = sync(capsys)
    assert "change capture is NOT running" in out, out
    assert "REPLICATION" in out
    assert_exact(pg_url, path)
    run_sql(pg_url, "UPDATE orders SET status = 'z', updated_at = now() WHERE id = 1")
    sync(capsys)
    assert_exact(pg_url, path)


def test_an_inheritance_parent_keeps_todays_mode(pg_url, settings_env, capsys) -> None:
    """A read of a table others INHERIT from returns their rows too, but PostgreSQL
    publishes a child's changes as the child's: captured, the parent's copy of them went
    stale for good (`unchanged` every run, a row deleted and one updated in the child kept,
    a new one missing). The parent keeps its cursor mode, said; the child is captured."""
    run_sql(pg_url, """
        CREATE TABLE cities (id int PRIMARY KEY, name text,
                             updated_at timestamptz NOT NULL DEFAULT now() - interval '1 day');
        CREATE TABLE capitals (id int PRIMARY KEY, state text) INHERITS (cities);
        INSERT INTO cities (id, name) SELECT g, 'c' || g FROM generate_series(1, 10) g;
        INSERT INTO capitals (id, name, state) SELECT g, 'cap' || g, 's'
        FROM generate_series(11, 13) g;""")
    path = settings_env(pg_url, cdc="true")
    out = sync(capsys)
    assert "public.cities: not in the publication" in out, out
    assert main(["discover"]) == 0
    assert 'public.cities: an inheritance parent: a read of it returns the rows of the tables ' \
           'that inherit from it ("public"."capitals") too, whose changes PostgreSQL publishes ' \
           "as theirs, not its own" in capsys.readouterr().out
    run_sql(pg_url, "UPDATE capitals SET name = 'moved', updated_at = now() WHERE id = 11; "
                    "DELETE FROM capitals WHERE id = 12; "
                    "INSERT INTO capitals (id, name, state) VALUES (14, 'new', 's')")
    out = sync(capsys, "--apply-deletes")
    assert "public.capitals: ok, 2 rows (changes), 1 deleted" in out, out
    for table in ("cities", "capitals"):
        assert_mirrored_in_duckdb(pg_url, path, table)


def test_the_scheduled_job_applies_changes(shop, tmp_path) -> None:
    """The nightly job as the run worker runs it (`dagster job execute`): the catalog step
    reads the slot, the table steps apply it."""
    url, path, _ = shop
    run_sql(url, "UPDATE orders SET status = 'sched' WHERE id < 40; DELETE FROM tags "
                 "WHERE name = 'tag 10'")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "dagster", "job", "execute", "-m",
                           "pg_to_bq.definitions", "-j", "mirror_all_tables"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_exact(url, path)


def test_the_short_schedule_loads_only_captured_tables(shop, tmp_path) -> None:
    """`captured_changes` runs the nightly job with the changes-only tag: the captured
    tables are exact, a table without a key waits for the nightly run."""
    from pg_to_bq.orchestration.mirror import CHANGES_SCHEDULE
    from pg_to_bq.orchestration.names import CHANGES_ONLY_TAG

    url, path, _ = shop
    run_sql(url, "UPDATE orders SET status = 'short' WHERE id < 30; "
                 "INSERT INTO plain VALUES (999, 'new')")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    listed = subprocess.run([sys.executable, "-m", "dagster", "schedule", "list", "-m",
                             "pg_to_bq.definitions"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert CHANGES_SCHEDULE in listed.stdout, listed.stdout + listed.stderr
    done = subprocess.run([sys.executable, "-m", "dagster", "job", "execute", "-m",
                           "pg_to_bq.definitions", "-j", "mirror_all_tables", "--tags",
                           f'{{"{CHANGES_ONLY_TAG}": "true"}}'],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_exact(url, path, ("orders", "tags", "pairs"))
    assert duck_rows(path, "SELECT count(*) FROM raw.plain WHERE x = 999") == [(0,)]


def test_a_long_transaction_across_two_runs(shop, capsys) -> None:
    """Rows written by a transaction open while a run reads the slot, committed after it:
    the next run has them (the slot delivers a transaction at its commit)."""
    url, path, _ = shop
    with psycopg.connect(url) as open_transaction:
        open_transaction.execute("UPDATE orders SET status = 'late' WHERE id <= 20")
        open_transaction.execute("DELETE FROM tags WHERE name = 'tag 20'")
        run_sql(url, "UPDATE orders SET status = 'early' WHERE id = 4000")
        sync(capsys)
        open_transaction.commit()
    assert duck_rows(path, "SELECT status FROM raw.orders WHERE id = 4000") == [("early",)]
    sync(capsys)
    assert_exact(url, path)


def test_an_invalidated_slot_recopies_with_the_reason(shop, capsys) -> None:
    """max_slot_wal_keep_size passed while nobody read the slot: PostgreSQL invalidates it
    (wal_status lost); the next run says so, creates it again and reads the tables whole."""
    url, path, _ = shop
    run_sql(url, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    run_sql(url, "SELECT pg_reload_conf()")
    try:
        run_sql(url, "UPDATE orders SET status = 'unseen' WHERE id <= 50")
        for _ in range(6):
            run_sql(url, "CREATE TABLE IF NOT EXISTS filler (v text); "
                         "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000);"
                         "SELECT pg_switch_wal(); CHECKPOINT")
        status = pg_rows(url, "SELECT wal_status FROM pg_replication_slots "
                              "WHERE slot_name = 'pg_to_bq_raw'")
        assert status == [("lost",)], status
    finally:
        run_sql(url, "ALTER SYSTEM RESET max_slot_wal_keep_size")
        run_sql(url, "SELECT pg_reload_conf()")
    out = sync(capsys, "public.orders", "public.tags", "public.pairs")
    assert "the replication slot was invalidated (wal_status lost" in out, out
    assert "public.orders: ok, 5,000 rows (full" in out
    assert_exact(url, path, ("orders", "tags", "pairs"))


def test_a_failed_capture_stops_the_captured_tables_only(shop, capsys, monkeypatch) -> None:
    """The slot held by another reader past the wait: the catalog step fails with one line,
    the captured tables are not loaded (none is called unchanged while its changes are
    unread), the table without a key loads, and the exit status is 1. The next run is
    exact."""
    from pg_to_bq.load import capture
    from pg_to_bq.postgres.cdc.stream import ChangeStream

    url, path, _ = shop
    run_sql(url, "UPDATE orders SET status = 'held' WHERE id < 10; INSERT INTO plain VALUES (7, 'x')")
    monkeypatch.setattr(capture, "BUSY_WAIT_S", 1.0)
    with ChangeStream(url, "pg_to_bq_raw", ["pg_to_bq_raw"]):
        out = sync(capsys, status=1)
    assert "FAILED the catalog step: " in out and "is active" in out, out
    assert "public.orders: FAILED: not loaded: the catalog step" in out
    assert "public.plain: ok, 51 rows" in out
    out = sync(capsys)
    assert "public.orders: ok, 9 rows (changes)" in out, out
    assert_exact(url, path)


def test_one_table_materialized_alone_is_read_whole(shop, capsys) -> None:
    """A run without the catalog step (one table materialized from the UI, as
    `dg.materialize` of that asset alone does) has not read the slot, and its cursor cannot
    see updates that leave it alone: the table is read whole, and its materialization says
    why; the next run that reads the slot applies what changed since, exactly."""
    import dagster as dg

    from pg_to_bq.orchestration.code_location import build_definitions
    from pg_to_bq.planning.settings import Settings

    url, path, _ = shop
    run_sql(url, "UPDATE orders SET status = 'quiet' WHERE id <= 5; "
                 "UPDATE orders SET status = 'loud', updated_at = now() WHERE id = 6")
    defs = build_definitions(Settings.from_env())
    orders = dg.AssetKey(["duckdb", "raw", "orders"])
    result = dg.materialize(list(defs.assets), resources=defs.resources,
                            selection=dg.AssetSelection.assets(orders))
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert "did not read change capture's slot" in \
        metadata["pg_to_bq/read_whole_because"].value, metadata
    assert_exact(url, path, ("orders",))
    run_sql(url, "UPDATE orders SET status = 'after' WHERE id <= 3; DELETE FROM orders "
                 "WHERE id = 4")
    out = sync(capsys)
    # Keys 1-6 changed before this capture (re-read: the copy had them), 4 deleted since.
    assert "public.orders: ok, 5 rows (changes), 1 deleted" in out, out
    assert_exact(url, path)


def test_a_slot_of_another_database_is_named_in_the_error(shop, pg_server, settings_env,
                                                          capsys) -> None:
    """Slot names are the server's: a second database mirrored into a dataset of the same
    name finds the first one's slot, and says which setting gives it its own."""
    with pg_server.database("second", SHOP) as second:
        settings_env(second, cdc="true", work_dir=str(Path(os.environ["PG_TO_BQ_WORK_DIR"])
                                                     .parent / "second"))
        out = sync(capsys, status=1)
        assert "FAILED the catalog step: replication slot pg_to_bq_raw belongs to database" \
            in out, out
        assert "set PG_TO_BQ_CDC_SLOT" in out
        assert "public.plain: ok" in out  # not captured: not stopped
        settings_env(second, cdc="true", cdc_slot="second_raw", cdc_publication="second_raw",
                     work_dir=str(Path(os.environ["PG_TO_BQ_WORK_DIR"])))
        sync(capsys)


def test_two_runs_at_once_take_turns_on_the_slot(shop) -> None:
    url, path, _ = shop
    run_sql(url, "UPDATE orders SET status = 'twice' WHERE id < 100")
    runs = [subprocess.Popen([sys.executable, "-m", "pg_to_bq.cli", "sync"],
                             env=dict(os.environ), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [r.communicate(timeout=600)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    assert_exact(url, path)


def test_changes_during_the_copy_are_neither_lost_nor_doubled(pg_url, settings_env,
                                                                capsys) -> None:
    """Writes while the first copy runs: the copy's snapshot has some, the slot all; the
    next run re-reads the latter by key (idempotent), so the copy ends exact."""
    run_sql(pg_url, SHOP)
    path = settings_env(pg_url, cdc="true")
    stop = time.monotonic() + 600
    writer = subprocess.Popen([sys.executable, "-c", WRITER, pg_url],
                              stdout=subprocess.PIPE, text=True)
    try:
        sync(capsys)
    finally:
        writer.terminate()
        writer.wait(timeout=30)
    assert time.monotonic() < stop
    sync(capsys)
    assert_exact(pg_url, path)


WRITER = """
import sys, time, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    i = 0
    while True:
        i += 1
        conn.execute("UPDATE orders SET status = %s WHERE id = %s", (f"w{i}", i % 5000 + 1))
        conn.execute("INSERT INTO orders (id, status) VALUES (%s, 'w') ON CONFLICT DO NOTHING",
                     (100000 + i,))
        if i % 7 == 0:
            conn.execute("DELETE FROM orders WHERE id = %s", (100000 + i - 3,))
        time.sleep(0.002)
"""
