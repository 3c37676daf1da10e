"""Tier 2: tables others INHERIT from, PostgreSQL → DuckDB through `pg-to-bq sync`.

A read of an inheritance parent returns its children's rows too, and PostgreSQL keeps the
parent's primary key unique within each table, not across them (`capitals` may hold an
`id` that `cities` holds too). Merged by that key, one of two such rows overwrote the other
in the copy whenever either was read again (the check said so, and the next run read the
table whole, until the next such change). Children come and go without a cursor moving
(`CREATE TABLE ... INHERITS`, `ALTER TABLE ... [NO] INHERIT`). Every test ends in an
exact comparison of every row with PostgreSQL.
"""

from __future__ import annotations

import psycopg

from pg_to_bq.cli.main import main
from pg_to_bq.postgres.discovery import discover
from pg_to_bq_tests.conftest import run_sql
from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

HIERARCHY = """
    CREATE TABLE cities (id int PRIMARY KEY, name text NOT NULL,
                         updated_at timestamptz NOT NULL);
    CREATE TABLE capitals (state text, PRIMARY KEY (id)) INHERITS (cities);
    CREATE TABLE villages (PRIMARY KEY (id)) INHERITS (cities);
    INSERT INTO cities (id, name, updated_at)
    SELECT g, 'city' || g, now() - interval '60 days' + g * interval '1 hour'
    FROM generate_series(1, 50) g;
    -- ids the parent holds too
    INSERT INTO capitals (id, name, state, updated_at)
    SELECT g, 'cap' || g, 's' || g, now() - interval '90 days' + g * interval '1 hour'
    FROM generate_series(1, 5) g;
    INSERT INTO villages (id, name, updated_at)
    SELECT g, 'village' || g, now() - interval '90 days' + g * interval '1 hour'
    FROM generate_series(4, 8) g;
"""


def sync(capsys, *args: str, status: int = 0) -> str:
    code = main(["sync", *args])
    out = capsys.readouterr().out
    assert code == status, out
    return out


def assert_exact(url: str, path, *tables: str) -> None:
    for table in tables or ("cities", "capitals", "villages"):
        assert_mirrored_in_duckdb(url, path, table)


def test_discovery_knows_what_inherits_from_a_table(pg_url) -> None:
    run_sql(pg_url, HIERARCHY + "CREATE TABLE hamlets () INHERITS (villages);")
    with psycopg.connect(pg_url) as conn:
        tables = {t.name: t for t in discover(conn).tables}
        own = dict(conn.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relname IN "
            "('cities', 'capitals', 'villages', 'hamlets')").fetchall())
    assert tables["cities"].inherited_by == ("public.capitals", "public.villages")
    assert tables["villages"].inherited_by == ("public.hamlets",)
    assert tables["capitals"].inherited_by == ()
    # A read of the parent returns every descendant's rows: its size and storage are theirs
    # too (how large a step it needs; whether rows were put back under old cursors).
    assert tables["cities"].size_bytes == sum(own.values())
    assert len(tables["cities"].storage.split(",")) == 4
    assert len(tables["capitals"].storage.split(",")) == 1


def test_a_key_shared_with_a_child_loses_no_row(pg_url, settings_env, capsys) -> None:
    """The loss: cities id 1 and capitals id 1, the capital updated; merged by `id`, the
    copy of `cities` kept one row for the two. Now the parent is replaced when its rows
    change (and skipped when they did not), said by `discover`."""
    run_sql(pg_url, HIERARCHY)
    path = settings_env(pg_url)
    sync(capsys, "--refresh-catalog")
    assert_exact(pg_url, path)
    run_sql(pg_url, "UPDATE capitals SET name = 'moved', updated_at = now() WHERE id = 1; "
                    "UPDATE villages SET name = 'v5', updated_at = now() WHERE id = 5")
    out = sync(capsys)
    assert "public.cities: ok, 60 rows (full)" in out, out
    assert_exact(pg_url, path)
    assert main(["discover"]) == 0
    listed = capsys.readouterr().out
    assert "an inheritance parent: a read of it returns the rows of the tables that inherit " \
           "from it (public.capitals, public.villages) too, and PostgreSQL keeps its key (id) " \
           "unique within each table, not across them" in listed, listed
    out = sync(capsys)
    assert "public.cities: unchanged" in out, out
    # A child that stops inheriting takes its rows with it; one that starts brings its
    # rows, under cursor values older than any the parent's copy has seen.
    run_sql(pg_url, """ALTER TABLE villages NO INHERIT cities;
        CREATE TABLE towns (pop int) INHERITS (cities);
        INSERT INTO towns (id, name, updated_at, pop)
        VALUES (2, 'old town', now() - interval '400 days', 9)""")
    out = sync(capsys)
    assert "public.cities: ok, 56 rows (full)" in out, out
    assert_exact(pg_url, path, "cities", "capitals", "villages", "towns")


def test_a_merge_the_tables_file_asks_for_sees_children_come(pg_url, settings_env,
                                                              tmp_path, capsys) -> None:
    """`disposition: merge` (the key is unique across the hierarchy, the user says) merges
    by key; a child that starts inheriting brings rows under old cursor values, which a
    cursor would skip: the parent is read whole that run, and says why."""
    run_sql(pg_url, HIERARCHY.replace("generate_series(1, 5)", "generate_series(101, 105)")
            .replace("generate_series(4, 8)", "generate_series(201, 205)"))
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.cities: {disposition: merge}\n")
    path = settings_env(pg_url, tables_file=str(tables))
    sync(capsys, "--refresh-catalog")
    run_sql(pg_url, "UPDATE capitals SET name = 'moved', updated_at = now() WHERE id = 101")
    out = sync(capsys)
    # (the newest city, inside the lookback window, and the capital)
    assert "public.cities: ok, 2 rows (incremental)" in out, out
    assert_exact(pg_url, path)
    run_sql(pg_url, """CREATE TABLE towns (pop int) INHERITS (cities);
        INSERT INTO towns (id, name, updated_at, pop)
        VALUES (301, 'old town', now() - interval '400 days', 9)""")
    out = sync(capsys)
    assert "public.cities: ok, 61 rows (full: its PostgreSQL storage, or that of a table " \
           "inheriting from it, was replaced since its last load, or a table began or ceased " \
           "to inherit from it" in out, out
    assert_exact(pg_url, path, "cities", "capitals", "villages", "towns")
    run_sql(pg_url, "ALTER TABLE capitals NO INHERIT cities")
    out = sync(capsys)
    assert "public.cities: ok, 56 rows (full: its PostgreSQL storage, or" in out, out
    assert_exact(pg_url, path, "cities", "capitals", "villages", "towns")
