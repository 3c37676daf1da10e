"""Tier 2: schema changes in PostgreSQL load themselves, PostgreSQL → DuckDB (issue 16).

Every test migrates a real PostgreSQL database between plain `pg-to-bq sync` runs (the
command a user runs, in this process) and then compares every row of the source with the
destination, value for value.
"""

from __future__ import annotations

import hashlib
import json
import os
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq.orchestration.code_location import NIGHTLY_JOB, build_definitions
from pg_to_bq.planning.settings import Settings
from pg_to_bq_tests.conftest import duck_rows, kill_sync_when, pg_rows, run_sql

EVENTS = """
    CREATE TABLE events (id int PRIMARY KEY, title text NOT NULL, amount numeric(12,2),
                         n int, code varchar(10),
                         updated_at timestamptz NOT NULL DEFAULT now() - interval '1 day');
    INSERT INTO events SELECT g, 't' || g, g * 1.5, g, 'c' || (g % 100),
                              now() - interval '30 days' + g * interval '1 minute'
    FROM generate_series(1, 20000) g;
    CREATE TABLE plain (a int, b text);
    INSERT INTO plain SELECT g, 'b' || g FROM generate_series(1, 100) g;
"""


def columns_of(path: Path, table: str) -> dict[str, str]:
    return dict(duck_rows(path, "SELECT column_name, data_type FROM information_schema.columns "
                           f"WHERE table_schema = 'raw' AND table_name = '{table}'"))


def assert_equal(url: str, path: Path, table: str, columns: list[str], key: str) -> None:
    """Every row of the source equals the destination's, in the given columns."""
    listed = ", ".join(columns)
    source = pg_rows(url, f"SELECT {listed} FROM {table} ORDER BY {key}")
    loaded = duck_rows(path, f"SELECT {listed} FROM raw.{table} ORDER BY {key}")
    assert len(source) == len(loaded)
    differing = [(s, d) for s, d in zip(source, loaded, strict=True) if _norm(s) != _norm(d)]
    assert not differing, differing[:3]


def _norm(row: tuple) -> tuple:
    return tuple(Decimal(str(v)) if isinstance(v, (Decimal, float)) else v for v in row)


def sync(capsys, *args: str) -> str:
    assert main(["sync", *args]) == 0, capsys.readouterr().out
    return capsys.readouterr().out


def amount_to_text(url: str, path: Path, table: str, capsys, marker: str, marker_id: int) -> str:
    """`amount` becomes text in PostgreSQL and one row's is set to `marker`: the next sync
    loads the table under VARCHAR, every row equal to the source's. The sync's output."""
    run_sql(url, f"ALTER TABLE {table} ALTER COLUMN amount TYPE text USING amount::text;"
                 f"UPDATE {table} SET amount = '{marker}', updated_at = now() "
                 f"WHERE id = {marker_id}")
    out = sync(capsys)
    assert columns_of(path, table)["amount"] == "VARCHAR"
    assert_equal(url, path, table, ["id", "title", "amount", "n", "code"], "id")
    return out


@pytest.fixture
def evolving(pg_url: str, settings_env, capsys):
    run_sql(pg_url, EVENTS)
    # Merged by cursor, as tables above PG_TO_BQ_READ_WHOLE_BYTES are: the fills, kept
    # columns and windows these tests follow (test_read_whole.py: small tables read whole).
    path = settings_env(pg_url, read_whole_bytes="0")
    assert main(["sync", "--refresh-catalog"]) == 0
    capsys.readouterr()
    return pg_url, path


def test_new_column_on_a_merged_table_is_filled_for_existing_rows(evolving, capsys) -> None:
    """The commonest migration: before, 19,389 of 20,000 rows kept NULL for good."""
    url, path = evolving
    run_sql(url, "ALTER TABLE events ADD COLUMN extra text DEFAULT 'x';"
                 "ALTER TABLE plain ADD COLUMN c int DEFAULT 7;"
                 "UPDATE events SET extra = 'changed', updated_at = now() WHERE id <= 611")
    out = sync(capsys)
    assert "public.events: column extra added in PostgreSQL: its values filled for the rows " \
           "loaded before" in out
    assert "public.plain: column c added in PostgreSQL: loaded with every row" in out
    assert duck_rows(path, "SELECT count(*) FILTER (WHERE extra = 'x'), "
                      "count(*) FILTER (WHERE extra = 'changed') FROM raw.events") \
        == [(19389, 611)]
    assert_equal(url, path, "events", ["id", "title", "amount", "n", "code", "extra"], "id")
    assert_equal(url, path, "plain", ["a", "b", "c"], "a")
    # Said once: the next run has nothing to say.
    assert "notes:" not in sync(capsys)


def test_dropped_column_is_kept_nullable_and_said_once(evolving, capsys) -> None:
    url, path = evolving
    # A table an earlier version of pg_to_bq loaded kept PostgreSQL's NOT NULL.
    with duckdb.connect(str(path)) as conn:
        conn.execute("ALTER TABLE raw.events ALTER COLUMN title SET NOT NULL")
    run_sql(url, "ALTER TABLE events DROP COLUMN title;"
                 "INSERT INTO events (id, amount, n, code, updated_at) "
                 "VALUES (20001, 1, 1, 'new', now())")
    out = sync(capsys)
    assert "public.events: column title dropped in PostgreSQL: kept in the destination, " \
           "NULL for rows loaded from now on" in out
    # Rows read again (the new one, and those in the lookback window of the cursor) have
    # no title any more; every other row keeps its own.
    assert duck_rows(path, "SELECT count(title) FILTER (WHERE id <= 19000), "
                      "count(*) FILTER (WHERE title IS NULL AND id = 20001) FROM raw.events") \
        == [(19000, 1)]
    assert_equal(url, path, "events", ["id", "amount", "n", "code"], "id")
    run_sql(url, "UPDATE events SET n = -1, updated_at = now() WHERE id = 7")
    out = sync(capsys)
    assert "title" not in out
    assert duck_rows(path, "SELECT n, title FROM raw.events WHERE id = 7") == [(-1, None)]


def test_a_dropped_column_asks_nothing_of_later_runs(evolving, capsys) -> None:
    """Said once, dealt with once: from the run after, a table whose rows did not change is
    unchanged (before, the kept column counted as a change at every run: the table was read
    again every night and its column types asked again)."""
    url, path = evolving
    run_sql(url, "ALTER TABLE events DROP COLUMN code; ALTER TABLE plain DROP COLUMN b")
    out = sync(capsys)
    assert "public.events: column code dropped in PostgreSQL" in out
    assert "public.plain: column b dropped in PostgreSQL" in out
    out = sync(capsys)
    assert "public.events: unchanged" in out and "public.plain: unchanged" in out, out
    assert "notes:" not in out
    # A reload under a new type drops the kept column's history: said.
    run_sql(url, "ALTER TABLE events ALTER COLUMN amount TYPE text USING amount::text")
    out = sync(capsys)
    assert "public.events: column code (no longer in PostgreSQL, kept in the destination " \
           "until now) is not in the reloaded table" in out, out
    assert "code" not in columns_of(path, "events")
    assert_equal(url, path, "events", ["id", "title", "amount", "n"], "id")


def test_a_column_dropped_and_added_back_is_loaded_again(evolving, capsys) -> None:
    """A column dropped in PostgreSQL keeps its old values in the destination; added back
    under the same name (with a default, which PostgreSQL stores without touching a row),
    every row's value is PostgreSQL's again. Before, the destination's column was taken
    for the loaded one: the merged table kept the old titles of 20,000 rows for good, its
    check passing."""
    url, path = evolving
    run_sql(url, "ALTER TABLE events DROP COLUMN title; ALTER TABLE plain DROP COLUMN b")
    sync(capsys)
    sync(capsys)
    run_sql(url, "ALTER TABLE events ADD COLUMN title text DEFAULT 'back';"
                 "ALTER TABLE plain ADD COLUMN b text DEFAULT 'back'")
    out = sync(capsys)
    assert "public.events: column title is loaded again (dropped in PostgreSQL or left out " \
           "before; the destination kept the column): its values filled for the rows " \
           "loaded before" in out, out
    assert "public.plain: column b is loaded again" in out
    assert duck_rows(path, "SELECT count(*) FILTER (WHERE title = 'back') FROM raw.events") \
        == [(20000,)]
    assert_equal(url, path, "events", ["id", "title", "amount", "n", "code"], "id")
    assert_equal(url, path, "plain", ["a", "b"], "a")
    out = sync(capsys)
    assert "public.events: unchanged" in out and "notes:" not in out, out


def test_a_column_added_by_hand_to_the_destination_is_said_once_and_left(evolving,
                                                                          capsys) -> None:
    """Not PostgreSQL's, never written by pg_to_bq: left as it is (rows loaded from now on
    get its default), said by the first run that finds it; then the table is unchanged."""
    url, path = evolving
    with duckdb.connect(str(path)) as conn:
        conn.execute("ALTER TABLE raw.plain ADD COLUMN mine INTEGER DEFAULT 5")
    out = sync(capsys)
    assert "public.plain: column mine is in the destination table, not in PostgreSQL, and " \
           "pg_to_bq never wrote it (added there by hand): left as it is" in out, out
    assert duck_rows(path, "SELECT count(*), count(*) FILTER (WHERE mine = 5) FROM raw.plain") \
        == [(100, 100)]
    assert_equal(url, path, "plain", ["a", "b"], "a")
    out = sync(capsys)
    assert "public.plain: unchanged" in out and "notes:" not in out, out


def test_a_column_hashed_now_is_hashed_in_every_row_of_a_merged_table(
        evolving, capsys, monkeypatch, tmp_path: Path) -> None:
    """Hashing a column of a merged table through the tables file (its type stays VARCHAR),
    changing the salt, then hashing it no more: each time every row's value is derived the
    new way. Before, only the rows the cursor read again were: a column the user had
    hashed kept its plain values in 19,000 rows, and a new salt left old hashes beside new
    ones (a join on them silently matched nothing)."""
    url, path = evolving
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.events:\n    columns:\n      title: {hash: true}\n")
    monkeypatch.setenv("PG_TO_BQ_TABLES_FILE", str(tables))
    for salt in ("pepper", "paprika"):
        monkeypatch.setenv("PG_TO_BQ_HASH_SALT", salt)
        out = sync(capsys)
        why = "hashed now" if salt == "pepper" else "the hash salt changed"
        assert f"public.events: column title is loaded again ({why}): its values filled for " \
               "the rows loaded before" in out, out
        expected = [(i, hashlib.sha256(salt.encode() + f"t{i}".encode()).hexdigest())
                    for i in range(1, 20001)]
        assert duck_rows(path, "SELECT id, title FROM raw.events ORDER BY id") == expected
    out = sync(capsys)
    assert "public.events: unchanged" in out and "loaded again" not in out, out
    tables.write_text("tables: {}\n")
    out = sync(capsys)
    assert "public.events: column title is loaded again (no longer hashed)" in out, out
    assert_equal(url, path, "events", ["id", "title", "amount", "n", "code"], "id")


def test_a_column_excluded_then_included_again(evolving, capsys, monkeypatch,
                                              tmp_path: Path) -> None:
    """Excluded through the tables file, a column PostgreSQL still has is said to be kept in
    the destination with its old values (not "dropped in PostgreSQL"); included again, every
    row's value is loaded (the destination's were those of before)."""
    url, path = evolving
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.events:\n    columns:\n      amount: {exclude: true}\n")
    monkeypatch.setenv("PG_TO_BQ_TABLES_FILE", str(tables))
    run_sql(url, "UPDATE events SET amount = -1 WHERE id > 100")  # the cursor does not move
    out = sync(capsys)
    assert "public.events: column amount is excluded now (see its note): kept in the " \
           "destination with the values loaded before, NULL for rows loaded from now on (drop " \
           "the column there to remove them)" in out, out
    assert "dropped in PostgreSQL" not in out
    out = sync(capsys)
    assert "is excluded now" not in out
    tables.write_text("tables: {}\n")
    out = sync(capsys)
    assert "public.events: column amount is loaded again (dropped in PostgreSQL or left out " \
           "before; the destination kept the column)" in out, out
    assert_equal(url, path, "events", ["id", "title", "amount", "n", "code"], "id")


def test_columns_that_swapped_names_are_loaded_again(evolving, capsys) -> None:
    """Two columns of one type swap names (three renames, no row written: PostgreSQL keeps
    each column's attribute number). The destination's `title` must hold what PostgreSQL's
    `title` holds now, in every row of the merged table."""
    url, path = evolving
    run_sql(url, "ALTER TABLE events ALTER COLUMN code TYPE text;")
    sync(capsys)
    run_sql(url, "ALTER TABLE events RENAME COLUMN title TO swap;"
                 "ALTER TABLE events RENAME COLUMN code TO title;"
                 "ALTER TABLE events RENAME COLUMN swap TO code;")
    out = sync(capsys)
    for column in ("title", "code"):
        assert f"public.events: column {column} is loaded again (another PostgreSQL column " \
               "has its name now (dropped and added again, or renamed)): its values filled " \
               "for the rows loaded before" in out, out
    assert_equal(url, path, "events", ["id", "title", "amount", "n", "code"], "id")
    assert "public.events: unchanged" in sync(capsys)


def test_a_type_change_that_rewrites_values_reaches_every_row(evolving, capsys) -> None:
    """`USING` rewrites every value in PostgreSQL without touching the cursor: a type the
    destination keeps (VARCHAR) and a type it widens in place (INTEGER → BIGINT) both have
    every row's new value after one run of the merged table (before, the rows the cursor did
    not read again kept the old ones). The rewrite gave the table new storage, so the run
    reads it whole (`test_a_truncated_table_reloaded_with_old_cursor_values_is_read_whole`);
    a state that knows no storage fills the column
    (`test_a_state_from_before_derivations_still_sees_a_type_change`)."""
    url, path = evolving
    run_sql(url, "ALTER TABLE events ALTER COLUMN code TYPE varchar(2) USING left(code, 2);"
                 "ALTER TABLE events ALTER COLUMN n TYPE bigint USING n * 10")
    out = sync(capsys)
    assert "public.events: ok, 20,000 rows (full: its PostgreSQL storage was replaced since " \
           "its last load" in out, out
    assert "public.events: column n changed type: widened in place (INTEGER → BIGINT)" in out
    assert_equal(url, path, "events", ["id", "title", "amount", "n", "code"], "id")
    assert "public.events: unchanged" in sync(capsys)


def test_a_state_from_before_derivations_still_sees_a_type_change(evolving, capsys) -> None:
    """A table last loaded by a version that kept no derivations (nor the table's storage):
    the PostgreSQL types its state lists are compared, and a type change counts."""
    url, path = evolving
    with duckdb.connect(str(path)) as conn:
        rows = conn.execute("SELECT table_name, state FROM raw._pg_to_bq_state").fetchall()
        for table, state in rows:
            old = {k: v for k, v in json.loads(state).items() if k not in ("derived", "storage")}
            conn.execute("UPDATE raw._pg_to_bq_state SET state = ? WHERE table_name = ?",
                         [json.dumps(old), table])
    run_sql(url, "ALTER TABLE events ALTER COLUMN code TYPE varchar(2) USING left(code, 2)")
    out = sync(capsys)
    assert "public.events: column code is loaded again (its PostgreSQL type changed " \
           "(character varying(10) → character varying(2)))" in out, out
    assert_equal(url, path, "events", ["id", "title", "amount", "n", "code"], "id")


def test_a_type_change_that_keeps_every_value_loads_nothing_again(evolving, capsys) -> None:
    """varchar(10) → varchar(100), then text: PostgreSQL changes neither a value nor the
    table's storage, and nothing is loaded again (a 20,000-row merged table, read by its
    cursor). (text → varchar(100) would rewrite the table, to check the lengths.)"""
    url, path = evolving
    run_sql(url, "ALTER TABLE events ALTER COLUMN code TYPE varchar(100)")
    out = sync(capsys)
    assert "loaded again" not in out and "filled" not in out, out
    run_sql(url, "ALTER TABLE events ALTER COLUMN code TYPE text")
    out = sync(capsys)
    assert "loaded again" not in out and "filled" not in out, out
    assert_equal(url, path, "events", ["id", "title", "amount", "n", "code"], "id")


def test_types_widen_in_place_and_other_changes_reload(evolving, capsys) -> None:
    url, path = evolving
    run_sql(url, "ALTER TABLE events ALTER COLUMN n TYPE bigint;"
                 "ALTER TABLE events ALTER COLUMN amount TYPE numeric(14,4);"
                 "ALTER TABLE events ALTER COLUMN code TYPE text;"
                 "UPDATE events SET n = 10000000000, amount = 12345678.1234, updated_at = now() "
                 "WHERE id = 5")
    out = sync(capsys)
    assert "column n changed type: widened in place (INTEGER → BIGINT)" in out
    assert "column amount changed type: widened in place (DECIMAL(12,2) → DECIMAL(14,4))" in out
    # varchar(10) → text: the destination type is the same; but PostgreSQL rewrote the table
    # (for the other two), so every value is read again, as a `USING` may have changed them
    # (`test_a_type_change_that_keeps_every_value_loads_nothing_again`).
    assert "column code changed type" not in out
    assert "public.events: ok, 20,000 rows (full: its PostgreSQL storage was replaced since " \
           "its last load" in out, out
    assert columns_of(path, "events")["n"] == "BIGINT"
    assert_equal(url, path, "events", ["id", "title", "amount", "n", "code"], "id")

    # numeric to text cannot be widened: the table is loaded again under the new type.
    out = amount_to_text(url, path, "events", capsys, marker="abc", marker_id=6)
    assert "column amount changed type (DECIMAL(14,4) → VARCHAR): table reloaded under the new " \
           "type; PostgreSQL numeric(14,4) → text" in out


def test_two_changes_in_one_night_then_the_scheduled_job(evolving, capsys) -> None:
    """A rename (one column dropped, one added) and a retype at once; then the same kind of
    night run by the nightly job instead of the CLI."""
    url, path = evolving
    run_sql(url, "ALTER TABLE events RENAME COLUMN title TO headline;"
                 "ALTER TABLE events ADD COLUMN score int DEFAULT 3;")
    out = sync(capsys)
    assert "column headline added" in out and "column score added" in out
    assert "column title dropped" in out
    assert_equal(url, path, "events", ["id", "headline", "score", "amount", "n"], "id")
    # the renamed column's old name keeps its values (history), but in rows read again
    assert duck_rows(path, "SELECT count(title) FILTER (WHERE id <= 19000) FROM raw.events") \
        == [(19000,)]

    run_sql(url, "ALTER TABLE events ADD COLUMN flag bool DEFAULT true;"
                 "ALTER TABLE events ALTER COLUMN n TYPE text USING 'n' || n")
    defs = build_definitions(Settings.from_env())
    result = defs.resolve_job_def(NIGHTLY_JOB).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert result.success
    changes = {e.asset_key.path[-1]: e.event_specific_data.materialization.metadata
               for e in result.get_asset_materialization_events()}
    text = changes["events"]["pg_to_bq/schema_changes"].value
    assert "column n changed type (BIGINT → VARCHAR)" in text or \
           "column n changed type (INTEGER → VARCHAR)" in text, text
    assert "column flag added" in text
    assert_equal(url, path, "events", ["id", "headline", "score", "amount", "n", "flag"], "id")


def test_a_fill_a_killed_run_left_undone_is_done_by_the_next_run(evolving, capsys) -> None:
    """A column is added, and the run that loads it is killed (SIGKILL, the whole process
    group) before it is done; the next plain run leaves no row without its value."""
    url, path = evolving
    run_sql(url, """
        CREATE TABLE big (id bigint PRIMARY KEY, payload text,
                          updated_at timestamptz NOT NULL DEFAULT now() - interval '1 day');
        INSERT INTO big SELECT g, repeat(md5(g::text), 4),
                               now() - interval '30 days' + g * interval '1 second'
        FROM generate_series(1, 300000) g;
    """)
    assert main(["sync", "--refresh-catalog"]) == 0
    run_sql(url, "ALTER TABLE big ADD COLUMN extra int DEFAULT 42;"
                 "UPDATE big SET payload = 'new', updated_at = now() WHERE id <= 100")
    work = Path(os.environ["PG_TO_BQ_WORK_DIR"])
    # The fill reads the key and the new column into a side table: kill while it does.
    kill_sync_when(lambda: any((work / "pipelines").glob("pg_to_bq__side_loads__*")),
                   "public.big", what="its fill began")
    # Killed between the load (the column exists, new rows have it) and the fill.
    [(with_value,)] = duck_rows(path, "SELECT count(extra) FROM raw.big")
    assert with_value < 300000
    capsys.readouterr()
    out = sync(capsys, "public.big")
    assert "extra" in out
    assert duck_rows(path, "SELECT count(*), count(extra), min(extra), max(extra) FROM raw.big") \
        == [(300000, 300000, 42, 42)]
    assert duck_rows(path, "SELECT count(*) FROM raw.big WHERE payload = 'new'") == [(100,)]


def test_a_partition_backfill_after_a_new_column(pg_url: str, settings_env, tmp_path: Path,
                                                 capsys) -> None:
    run_sql(pg_url, """
        CREATE TABLE visits (id bigint PRIMARY KEY, visited_at timestamptz NOT NULL, page text);
        INSERT INTO visits SELECT g, TIMESTAMPTZ '2026-11-01 00:00:00+00' + g * interval '1 hour',
                                  '/p' || g FROM generate_series(0, 71) g;
    """)
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.visits:\n    partition: {column: visited_at, "
                      "granularity: day, start: 2026-11-01}\n")
    path = settings_env(pg_url, TABLES_FILE=str(tables))
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        assert main(["sync", "--partition", day]) == 0
    run_sql(pg_url, "ALTER TABLE visits ADD COLUMN referrer text DEFAULT 'direct';"
                    "UPDATE visits SET referrer = 'ad' WHERE id = 30")
    capsys.readouterr()
    out = sync(capsys, "--partition", "2026-11-02")
    assert "column referrer added in PostgreSQL: its values filled" in out
    assert_equal(pg_url, path, "visits", ["id", "visited_at", "page", "referrer"], "id")


def test_dropped_and_renamed_tables_are_reported_not_failed(evolving, capsys) -> None:
    url, path = evolving
    run_sql(url, "ALTER TABLE plain RENAME TO plain_v2")
    out = sync(capsys)  # the snapshot still names public.plain
    assert "public.plain: not loaded: table public.plain is renamed to public.plain_v2 in " \
           "PostgreSQL: not loaded; dest.raw.plain stays as it was" in out
    # Under its new name it is a new table, loaded the same night.
    assert "[new] public.plain_v2: ok, 100 rows (full)" in out
    # (the fixture's other table did not change: it is counted as such, not as loaded)
    assert "1 loaded, 1 unchanged, 0 failed, 1 not in PostgreSQL" in out, out
    assert duck_rows(path, "SELECT count(*) FROM raw.plain") == [(100,)]
    assert duck_rows(path, "SELECT count(*) FROM raw.plain_v2") == [(100,)]
    # The catalog was kept: public.plain is gone from the definitions now (its destination
    # table stays); public.plain_v2 is an asset of its own.
    keys = {k.path[-1] for k in build_definitions(Settings.from_env()).resolve_asset_graph()
            .get_all_asset_keys()}
    assert "plain_v2" in keys and "plain" not in keys
    run_sql(url, "DROP TABLE plain_v2")
    out = sync(capsys)
    assert "table public.plain_v2 is no longer in PostgreSQL (dropped, or renamed): not " \
           "loaded; dest.raw.plain_v2 stays as it was" in out
    assert "0 loaded, 1 unchanged, 0 failed, 1 not in PostgreSQL" in out, out


def test_a_new_table_is_loaded_by_the_next_sync_and_becomes_its_own_asset(evolving,
                                                                          capsys) -> None:
    """No discovery by hand: the catalog step of the next plain sync (or nightly run) finds
    the table, keeps the catalog, and loads it; the definitions built next have its asset."""
    url, path = evolving
    run_sql(url, "CREATE TABLE invoices (id int PRIMARY KEY, total numeric(10,2));"
                 "INSERT INTO invoices SELECT g, g * 2.5 FROM generate_series(1, 250) g")
    out = sync(capsys)
    assert "[new] public.invoices: ok, 250 rows (full)" in out
    assert_equal(url, path, "invoices", ["id", "total"], "id")
    defs = build_definitions(Settings.from_env())
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"duckdb/raw/invoices", "postgres/public/invoices"} <= keys
    # Now an asset like the others: no longer new.
    out = sync(capsys)
    assert "[new]" not in out and "public.invoices: unchanged" in out


def test_a_column_of_a_table_first_loaded_as_new_is_retyped_by_its_reload(evolving,
                                                                          capsys) -> None:
    """A table found new in PostgreSQL (here: renamed) is loaded by a pipeline of its own;
    from the next sync it loads with its step's. A type change then reloads it under the new
    type: pg_to_bq drops the table itself. Before, the reload relied on dlt's drop, which
    drops only what its pipeline's schema holds: the table was kept with its old column type,
    the text values were cast back into DECIMAL(12,2), and one that was not a number failed
    the table on every run (found by the migration fuzzer with a random seed). A table that
    moves to another step (`PG_TO_BQ_STEP_TABLES`) loads with another pipeline the same way."""
    url, path = evolving
    run_sql(url, "ALTER TABLE events RENAME TO events_v2")
    assert "[new] public.events_v2: ok, 20,000 rows (full)" in sync(capsys)
    assert "public.events_v2: unchanged" in sync(capsys)
    out = amount_to_text(url, path, "events_v2", capsys, marker="n/a", marker_id=7)
    assert "public.events_v2: column amount changed type (DECIMAL(12,2) → VARCHAR): table " \
           "reloaded under the new type" in out
    assert duck_rows(path, "SELECT amount FROM raw.events_v2 WHERE id IN (7, 8) ORDER BY id") \
        == [("n/a",), ("12.00",)]


def test_a_reload_that_left_the_old_column_type_fails_the_check(evolving, capsys,
                                                              monkeypatch) -> None:
    """After a load that changed a table's columns, the check asks the destination's column
    types again. A reload that left the table under its old type (as dlt's drop did for a
    table its pipeline never loaded, until pg_to_bq dropped tables itself) fails
    `matches_source`, naming the column and both types, although every value, cast back into
    DECIMAL(12,2), prints as PostgreSQL's text and the values part passes. The stale drop is
    injected (pg_to_bq's `drop_table` made a no-op; dlt's own drop does not know a table
    first loaded as new): a healthy product never leaves one, which is why a check must say
    so if it ever does. The next run, without the fault, reloads the table under the new type."""
    url, path = evolving
    run_sql(url, "ALTER TABLE events RENAME TO events_v2")
    assert "[new] public.events_v2: ok, 20,000 rows (full)" in sync(capsys)
    assert "public.events_v2: unchanged" in sync(capsys)
    with monkeypatch.context() as patched:
        patched.setattr("pg_to_bq.load.schema_changes.drop_table",
                        lambda pipeline, table: None)
        run_sql(url, "ALTER TABLE events_v2 ALTER COLUMN amount TYPE text USING amount::text;"
                     "UPDATE events_v2 SET updated_at = now() WHERE id = 7")
        assert main(["sync"]) == 1
        out = capsys.readouterr().out
        assert "public.events_v2: column amount changed type (DECIMAL(12,2) → VARCHAR): table " \
               "reloaded under the new type" in out
        assert "public.events_v2: FAILED: table public.events_v2: loaded, but the destination " \
               "differs from the source: matches_source (1 column type(s) differ from the plan: " \
               "amount is DECIMAL(12,2) where VARCHAR was planned)" in out
        assert columns_of(path, "events_v2")["amount"] == "DECIMAL(12,2)"
    out = sync(capsys)
    assert "public.events_v2: column amount changed type (DECIMAL(12,2) → VARCHAR)" in out
    assert "public.events_v2: ok, 20,000 rows (full" in out and "checks failed" not in out
    assert columns_of(path, "events_v2")["amount"] == "VARCHAR"
    assert_equal(url, path, "events_v2", ["id", "title", "amount", "n", "code"], "id")


def test_a_table_emptied_while_a_column_was_dropped_is_empty(evolving, capsys) -> None:
    """A column dropped (kept in the destination) makes dlt rewrite the table's file; an
    empty file had nothing to rewrite, so dlt made no load job: the destination kept the
    100 rows the source had deleted, run after run."""
    url, path = evolving
    run_sql(url, "ALTER TABLE plain DROP COLUMN a; DELETE FROM plain")
    out = sync(capsys)
    assert "public.plain: column a dropped in PostgreSQL: kept in the destination" in out
    assert duck_rows(path, "SELECT count(*) FROM raw.plain") == [(0,)]


def test_columns_added_to_an_empty_table_are_created(evolving, capsys) -> None:
    """The same with columns renamed and added while the table is empty: the line said
    `column c3 added … loaded with every row`, and the column was never created."""
    url, path = evolving
    run_sql(url, "DELETE FROM plain; ALTER TABLE plain DROP COLUMN a;"
                 "ALTER TABLE plain RENAME COLUMN b TO r2;"
                 "ALTER TABLE plain ADD COLUMN c3 timestamptz DEFAULT now()")
    out = sync(capsys)
    assert "public.plain: column c3 added in PostgreSQL: loaded with every row" in out
    assert {"a", "b", "r2", "c3"} <= set(columns_of(path, "plain"))
    assert duck_rows(path, "SELECT count(*) FROM raw.plain") == [(0,)]
    run_sql(url, "INSERT INTO plain (r2) VALUES ('back')")
    sync(capsys)
    assert duck_rows(path, "SELECT r2, c3 IS NOT NULL, a, b FROM raw.plain") \
        == [("back", True, None, None)]
