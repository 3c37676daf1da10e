"""BigQuery tier: schema changes through dlt's real BigQuery destination into the emulator.

The emulator's INFORMATION_SCHEMA (and its tables API) reports NUMERIC without the
precision and scale BigQuery reports (`NUMERIC(12, 2)`), while it keeps the scale the column
was created with: the widening of a decimal is found from the types the last load created,
kept in the table's state, and tested here. A new column filled by key (UPDATE … FROM), a
dropped column kept (and added back), and a type change reloading the table are tested here
too, row for row.
"""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq_tests.conftest import run_sql

pytestmark = [pytest.mark.bigquery]


def bq(emulator, sql: str) -> list[tuple]:
    return [tuple(row.values()) for row in emulator.client().query_and_wait(sql)]


def first_sync_into(emulator, dataset: str, pg_url: str, settings_env, tmp_path) -> None:
    """Settings for the emulator's `dataset`, and a first `pg-to-bq sync`."""
    settings_env(pg_url, destination="bigquery", bigquery_project=emulator.project_id,
                 bigquery_key_file=str(emulator.key_file(tmp_path)), dataset=dataset)
    assert main(["sync", "--refresh-catalog"]) == 0


def sync_after(pg_url: str, statements: str, capsys) -> str:
    """Run `statements` in PostgreSQL, then `pg-to-bq sync`, which must succeed: its output."""
    run_sql(pg_url, statements)
    capsys.readouterr()
    status = main(["sync"])
    out = capsys.readouterr().out
    assert status == 0, out
    return out


def test_schema_changes_load_themselves_into_bigquery(pg_url: str, settings_env, tmp_path,
                                                      bigquery_emulator, capsys) -> None:
    run_sql(pg_url, """
        CREATE TABLE events (id int PRIMARY KEY, title text, amount numeric(12,2),
                             updated_at timestamptz NOT NULL);
        INSERT INTO events SELECT g, 't' || g, g * 1.5,
                                  now() - interval '30 days' + g * interval '1 minute'
        FROM generate_series(1, 2000) g;
    """)
    # (merged by cursor, as a table above PG_TO_BQ_READ_WHOLE_BYTES is: filled by key)
    settings_env(pg_url, destination="bigquery", bigquery_project=bigquery_emulator.project_id,
                 bigquery_key_file=str(bigquery_emulator.key_file(tmp_path)), dataset="evolving",
                 read_whole_bytes="0")
    table = f"`{bigquery_emulator.project_id}.evolving.events`"
    assert main(["sync", "--refresh-catalog"]) == 0

    run_sql(pg_url, "ALTER TABLE events ADD COLUMN extra text DEFAULT 'x';"
                    "ALTER TABLE events DROP COLUMN title;"
                    "UPDATE events SET extra = 'new', updated_at = now() WHERE id <= 10")
    capsys.readouterr()
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "column extra added in PostgreSQL: its values filled for the rows loaded before" in out
    assert "column title dropped in PostgreSQL: kept in the destination" in out
    assert bq(bigquery_emulator, f"SELECT count(*), count(extra), "
                                 f"countif(extra = 'new'), count(title) FROM {table}") \
        == [(2000, 2000, 10, 2000 - 10 - 11)]

    # Added back under its name: every row's title is PostgreSQL's again, not the old one
    # the destination kept; two rows deleted in PostgreSQL have no value derived the new
    # way: NULL, until the delete pass this small table gets in the same run (its copy
    # holds more rows than PostgreSQL) removes them.
    run_sql(pg_url, "DELETE FROM events WHERE id <= 2;"
                    "ALTER TABLE events ADD COLUMN title text DEFAULT 'back'")
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "column title is loaded again (dropped in PostgreSQL or left out before; the " \
           "destination kept the column): its values filled for the rows loaded before" in out
    assert "set title to NULL in 2 row(s) PostgreSQL no longer has" in out, out
    assert bq(bigquery_emulator, f"SELECT count(*), countif(title = 'back'), count(title) "
                                 f"FROM {table}") == [(1998, 1998, 1998)]

    run_sql(pg_url, "ALTER TABLE events ALTER COLUMN amount TYPE text;"
                    "UPDATE events SET amount = 'abc', updated_at = now() WHERE id = 5")
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "column amount changed type" in out and "table reloaded under the new type" in out
    with psycopg.connect(pg_url) as conn:
        source = conn.execute("SELECT id, amount, extra FROM events ORDER BY id").fetchall()
    loaded = bq(bigquery_emulator, f"SELECT id, amount, extra FROM {table} ORDER BY id")
    assert loaded == [(i, str(a), e) for i, a, e in source]
    by_id = {row[0]: row for row in loaded}
    assert by_id[5] == (5, "abc", "new")
    assert Decimal(by_id[7][1]) == Decimal("10.50")


def test_a_sprint_of_migrations_and_a_truncate_by_hand_into_bigquery(
        pg_url: str, settings_env, tmp_path, bigquery_emulator, capsys) -> None:
    """Issue 21 through dlt's BigQuery destination: the night of migrations is exact after one
    run, and a table emptied by hand behind pg_to_bq's back is loaded whole the next run."""
    from collections import Counter

    from pg_to_bq_tests.load.test_state_invariant import MIGRATION, SHOP, TABLES
    from pg_to_bq_tests.support.mirror_compare import assert_mirrored, canonical

    run_sql(pg_url, SHOP)
    settings_env(pg_url, destination="bigquery", bigquery_project=bigquery_emulator.project_id,
                 bigquery_key_file=str(bigquery_emulator.key_file(tmp_path)), dataset="sprint")
    project = bigquery_emulator.project_id

    def copy_of(table: str):
        def read(columns) -> Counter:
            listed = ", ".join(f"`{c}`" for c in columns)
            rows = bq(bigquery_emulator, f"SELECT {listed} FROM `{project}.sprint.{table}`")
            return Counter(tuple(canonical(v) for v in row) for row in rows)
        return read

    assert main(["sync", "--refresh-catalog"]) == 0
    run_sql(pg_url, MIGRATION)
    capsys.readouterr()
    assert main(["sync"]) == 0, capsys.readouterr().out
    for table in TABLES:
        assert_mirrored(pg_url, table, copy_of(table))

    bigquery_emulator.client().query_and_wait(f"DELETE FROM `{project}.sprint.events` WHERE true")
    capsys.readouterr()
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "public.events: ok, 20,000 rows (full: the destination table holds 0 row(s) where " \
           "its last load left 20,000)" in out, out
    for table in TABLES:
        assert_mirrored(pg_url, table, copy_of(table))


def test_a_table_emptied_while_its_columns_changed_into_bigquery(
        pg_url: str, settings_env, tmp_path, bigquery_emulator, capsys) -> None:
    """An empty table whose file dlt would rewrite (a column dropped and kept) still gets a
    load job: its old rows go, a column added is created (dlt made no job before)."""
    run_sql(pg_url, "CREATE TABLE plain (a int, b text);"
                    "INSERT INTO plain SELECT g, 'b' || g FROM generate_series(1, 50) g")
    first_sync_into(bigquery_emulator, "emptied", pg_url, settings_env, tmp_path)
    sync_after(pg_url, "DELETE FROM plain; ALTER TABLE plain DROP COLUMN a;"
                       "ALTER TABLE plain ADD COLUMN c3 int", capsys)
    project = bigquery_emulator.project_id
    assert bq(bigquery_emulator, f"SELECT count(*) FROM `{project}.emptied.plain`") == [(0,)]
    columns = {row[0] for row in bq(bigquery_emulator,
                                    f"SELECT column_name FROM `{project}.emptied`."
                                    "INFORMATION_SCHEMA.COLUMNS WHERE table_name = 'plain'")}
    assert {"a", "b", "c3"} <= columns


def test_a_decimal_widened_in_postgresql_keeps_its_new_decimals_in_bigquery(
        pg_url: str, settings_env, tmp_path, bigquery_emulator, capsys) -> None:
    """numeric(10,2) → numeric(14,4), then a value of four decimals: the column is widened in
    place and the value arrives exact. The emulator reports the column as NUMERIC either way
    and rounds a value to the scale it was created with; before the types the last load
    created were kept in the table's state, the widening went unseen there and the value
    arrived as 3656.30 (the check then failed the table on every run). Found by the
    migration fuzzer (`test_migration_fuzzer.py`, a random seed)."""
    run_sql(pg_url, "CREATE TABLE prices (id bigint PRIMARY KEY, w numeric(10,2),"
                    " updated_at timestamptz NOT NULL);"
                    "INSERT INTO prices VALUES (1, 1.5, now()), (2, 2.25, now())")
    first_sync_into(bigquery_emulator, "widened", pg_url, settings_env, tmp_path)
    out = sync_after(pg_url, "ALTER TABLE prices ALTER COLUMN w TYPE numeric(14,4);"
                             "INSERT INTO prices VALUES (3, 3656.2994, now())", capsys)
    assert "column w changed type: widened in place (NUMERIC(10,2) → NUMERIC(14,4))" in out
    project = bigquery_emulator.project_id
    assert bq(bigquery_emulator, f"SELECT id, w FROM `{project}.widened.prices` ORDER BY id") \
        == [(1, Decimal("1.5")), (2, Decimal("2.25")), (3, Decimal("3656.2994"))]
