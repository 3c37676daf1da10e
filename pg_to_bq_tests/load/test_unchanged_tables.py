"""Tier 2: a table whose row versions did not change is not read again — and every change is.

Real PostgreSQL, real DuckDB file. `pg_to_bq.postgres.row_versions` lets a re-sync skip a table
whose rows are exactly those of its last load; a skip that missed a change would leave a
stale value behind, the worst kind of loss, so each way a value can change is made here and
must be loaded.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb
import psycopg
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq.destinations.duckdb_file import duckdb_destination
from pg_to_bq.load.group import load_table
from pg_to_bq.load.results import LoadResult
from pg_to_bq.planning.overrides import Overrides, load_overrides
from pg_to_bq.planning.tables import build_plans
from pg_to_bq.postgres import row_versions
from pg_to_bq.postgres.discovery import discover
from pg_to_bq.postgres.row_versions import _dollar_quoted
from pg_to_bq_tests.conftest import duck_rows, pg_rows, run_sql
from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb


def _load(url: str, table: str, tmp_path: Path, **kwargs) -> LoadResult:
    with psycopg.connect(url) as conn:
        catalog = discover(conn, schemas=["public"], table=table)
    (plan,) = build_plans(catalog, "duckdb", Overrides(read_whole_bytes=0))
    return load_table(plan, source_url=url, destination=duckdb_destination(
        str(tmp_path / "dest.duckdb")), dataset="raw", work_dir=tmp_path / "work", **kwargs)


def _assert_skipped(result: LoadResult) -> None:
    assert (result.status, result.rows, result.extra.get("unchanged")) == \
        ("unchanged", 0, "versions")


KEYLESS = """
    CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE TABLE notes (n int, body text, feeling mood);
    INSERT INTO notes SELECT g, 'note ' || g, 'happy' FROM generate_series(1, 50) g;
"""


@pytest.mark.parametrize("change, expected", [
    ("UPDATE notes SET body = 'edited' WHERE n = 7",
     [(50, 1, 1)]),
    # Same value, new row version: read again (a skip is only ever on exact sameness).
    ("UPDATE notes SET body = body WHERE n = 7",
     [(50, 0, 1)]),
    ("DELETE FROM notes WHERE n = 7",
     [(49, 0, 0)]),
    ("INSERT INTO notes VALUES (51, 'note 51', 'sad')",
     [(51, 0, 1)]),
    ("TRUNCATE notes; INSERT INTO notes SELECT g, 'note ' || g, 'happy' "
     "FROM generate_series(1, 50) g",
     [(50, 0, 1)]),
    ("VACUUM FULL notes",
     [(50, 0, 1)]),
    # No row version changes, yet every loaded value does: the catalog is part of the token.
    ("ALTER TYPE mood RENAME VALUE 'happy' TO 'glad'",
     [(50, 0, 0)]),
])
def test_a_replaced_table_is_skipped_only_while_nothing_changed(
        pg_url: str, tmp_path: Path, change: str, expected: list[tuple]) -> None:
    run_sql(pg_url, KEYLESS)
    first = _load(pg_url, "notes", tmp_path)
    assert (first.status, first.rows, first.mode) == ("loaded", 50, "full")
    _assert_skipped(_load(pg_url, "notes", tmp_path))

    run_sql(pg_url, change)
    again = _load(pg_url, "notes", tmp_path)
    assert again.status == "loaded" and again.rows == expected[0][0]
    assert duck_rows(tmp_path / "dest.duckdb", "SELECT count(*), count(*) FILTER (WHERE body = 'edited'), "
                           "count(*) FILTER (WHERE n = 7 AND feeling = 'happy') "
                           "FROM raw.notes") == expected
    # And once loaded, it is skipped again.
    _assert_skipped(_load(pg_url, "notes", tmp_path))


def test_a_new_column_with_a_default_is_loaded_though_no_row_was_rewritten(
        pg_url: str, tmp_path: Path) -> None:
    run_sql(pg_url, KEYLESS)
    _load(pg_url, "notes", tmp_path)
    run_sql(pg_url, "ALTER TABLE notes ADD COLUMN extra text DEFAULT 'x'")
    assert _load(pg_url, "notes", tmp_path).status == "loaded"
    assert duck_rows(tmp_path / "dest.duckdb", "SELECT count(*) FROM raw.notes WHERE extra = 'x'") == [(50,)]


def test_a_full_refresh_and_a_new_salt_read_the_table_again(pg_url: str, tmp_path: Path) -> None:
    run_sql(pg_url, "CREATE TABLE people (n int, email text);"
                    "INSERT INTO people SELECT g, g || '@example.com' FROM generate_series(1, 5) g;")
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.people:\n    columns:\n      email: {hash: true}\n")
    with psycopg.connect(pg_url) as conn:
        catalog = discover(conn, schemas=["public"], table="people")
    (plan,) = build_plans(catalog, "duckdb", load_overrides(tables))
    assert plan.hashed

    def load(salt: bytes, **kwargs) -> LoadResult:
        return load_table(plan, source_url=pg_url, destination=duckdb_destination(
            str(tmp_path / "dest.duckdb")), dataset="raw", work_dir=tmp_path / "work",
            hash_salt=salt, **kwargs)

    assert load(b"one").status == "loaded"
    first = duck_rows(tmp_path / "dest.duckdb", "SELECT email FROM raw.people ORDER BY n")
    _assert_skipped(load(b"one"))
    assert load(b"one", full_refresh=True).status == "loaded"
    assert load(b"two").status == "loaded"
    assert duck_rows(tmp_path / "dest.duckdb", "SELECT email FROM raw.people ORDER BY n") != first


def test_a_small_merged_table_skips_its_window_but_not_a_late_commit(
        pg_url: str, tmp_path: Path) -> None:
    run_sql(pg_url, """
        CREATE TABLE orders (id int PRIMARY KEY, status text, updated_at timestamptz NOT NULL);
        INSERT INTO orders SELECT g, 'new', now() - interval '1 day' + g * interval '1 minute'
        FROM generate_series(1, 100) g;""")
    assert _load(pg_url, "orders", tmp_path).rows == 100
    _assert_skipped(_load(pg_url, "orders", tmp_path))
    # A commit that arrives late, its cursor value inside the lookback window (10 minutes)
    # but before the newest one: the versions changed, so the window is read and merged.
    run_sql(pg_url, "INSERT INTO orders SELECT 101, 'late', max(updated_at) - interval '5 min' "
                    "FROM orders")
    late = _load(pg_url, "orders", tmp_path)
    assert (late.status, late.mode) == ("loaded", "incremental") and late.rows < 101
    assert duck_rows(tmp_path / "dest.duckdb", "SELECT count(*), count(*) FILTER (WHERE status = 'late') "
                           "FROM raw.orders") == [(101, 1)]
    _assert_skipped(_load(pg_url, "orders", tmp_path))


def test_odd_table_names_are_quoted_in_the_catalog_query(pg_url: str, tmp_path: Path) -> None:
    assert _dollar_quoted("a'b\\c") == "$q$a'b\\c$q$"
    assert _dollar_quoted("x$q$y") == "$q1$x$q$y$q1$"
    run_sql(pg_url, 'CREATE TABLE "it\'s $q$ odd" (n int); INSERT INTO "it\'s $q$ odd" VALUES (1);')
    assert _load(pg_url, "it's $q$ odd", tmp_path).rows == 1
    _assert_skipped(_load(pg_url, "it's $q$ odd", tmp_path))


@pytest.mark.parametrize("rows", ["", "INSERT INTO \"Mixed 'Case'\" SELECT g, -g * 1000003 "
                                      "FROM generate_series(1, 300) g"])
def test_the_token_before_the_read_is_the_reads_own(pg_url: str, rows: str) -> None:
    """The step looks for unchanged tables over psycopg before any read
    (`pg_to_bq.load.unchanged`); the read computes the token over the ADBC driver, which
    returns numerics as text where psycopg returns `Decimal`s. Both must give one token (and
    the same row count), or no table would ever be found unchanged before its read; so must
    a whole read, which asks its count and its token in one query."""
    from pg_to_bq.postgres.reader import TableReader
    from pg_to_bq.postgres.row_versions import token, token_and_rows
    from pg_to_bq.postgres.session import AdbcSession

    run_sql(pg_url, f"CREATE TABLE \"Mixed 'Case'\" (n int, v bigint); {rows}")
    with psycopg.connect(pg_url) as conn:
        catalog = discover(conn, schemas=["public"], table="Mixed 'Case'")
        (plan,) = build_plans(catalog, "duckdb")
        before, counted = token_and_rows(lambda sql: conn.execute(sql).fetchone(), plan, None)
    with TableReader(pg_url, plan) as reader:
        assert token(reader, plan, None) == before
        assert reader.stats.snapshot_rows == counted == (300 if rows else 0)
    # A whole read counts its rows and its token's inputs in one query.
    session = AdbcSession(pg_url)
    asked: list[str] = []
    one_row = session.fetchone
    session.fetchone = lambda sql: asked.append(sql) or one_row(sql)  # type: ignore[method-assign]
    try:
        with TableReader(pg_url, plan, versions=True, count_table=True,
                         session=session) as reader:
            assert token(reader, plan, None) == before
            assert reader.stats.snapshot_rows == reader.stats.table_rows == counted
    finally:
        session.close()
    assert len(asked) == 1, asked


def test_a_changed_table_keeps_the_token_found_before_its_read(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table found changed before the reads (`pg_to_bq.load.unchanged`) is read without
    scanning its row headers again: its read stores the token found then, which the next
    run finds unchanged; a change after it is still loaded."""
    from pg_to_bq.postgres import row_versions

    run_sql(pg_url, KEYLESS)
    assert _load(pg_url, "notes", tmp_path).status == "loaded"
    run_sql(pg_url, "UPDATE notes SET body = 'edited' WHERE n = 7")

    def no_second_scan(*args: object) -> str:
        raise AssertionError("the read scanned the row headers again")

    with monkeypatch.context() as patch:
        patch.setattr(row_versions, "token", no_second_scan)
        assert _load(pg_url, "notes", tmp_path).status == "loaded"
    _assert_skipped(_load(pg_url, "notes", tmp_path))
    run_sql(pg_url, "UPDATE notes SET body = 'again' WHERE n = 8")
    assert _load(pg_url, "notes", tmp_path).status == "loaded"
    assert duck_rows(tmp_path / "dest.duckdb", "SELECT body FROM raw.notes WHERE n IN (7, 8) "
                                               "ORDER BY n") == [("edited",), ("again",)]


def test_a_token_asked_with_the_databases_part_once_equals_one_asked_alone(
        pg_url: str, tmp_path: Path) -> None:
    """A step asks the database's part of its tables' tokens (enum labels, composite types)
    once for all of them; the tokens must equal those a read computes alone in the same
    snapshot, or every stored token would differ and every table be read again."""
    from pg_to_bq.postgres import row_versions

    run_sql(pg_url, KEYLESS + "CREATE TYPE pair AS (a int, b text);")
    with psycopg.connect(pg_url) as conn:
        catalog = discover(conn, schemas=["public"], table="notes")
    (plan,) = build_plans(catalog, "duckdb", Overrides(read_whole_bytes=0))
    with psycopg.connect(pg_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

        def query_one(sql: str) -> tuple | None:
            return conn.execute(sql).fetchone()

        alone = row_versions.token_and_rows(query_one, plan, None)
        database = row_versions.database_catalog(query_one)
        assert len(database) == 2 and all(database)
        # as a step asks it: the table's part alone, the database's part given
        row = query_one(row_versions.versions_sql(plan, with_database=False))
        assert row_versions.token_of_row(row, plan, None, database) == alone
        assert alone[1] == 50



def test_tokens_stored_by_the_numeric_sums_stay_valid(pg_url: str) -> None:
    """The row versions' hashes are summed as bigints (PostgreSQL adds them up exactly, in a
    numeric) where they were each cast to numeric first: the figures, and so every token
    stored by an earlier version, must be the same, or every table would be read again.
    20,000 rows: their hashes' sums go far beyond a bigint's range."""
    from pg_to_bq.postgres import row_versions

    run_sql(pg_url, "CREATE TABLE many_rows (n int, body text); INSERT INTO many_rows "
                    "SELECT g, 'row ' || g FROM generate_series(1, 20000) g; "
                    "UPDATE many_rows SET body = body || '!' WHERE n % 7 = 0;")
    with psycopg.connect(pg_url) as conn:
        catalog = discover(conn, schemas=["public"], table="many_rows")
    (plan,) = build_plans(catalog, "duckdb", Overrides(read_whole_bytes=0))
    now = row_versions.versions_sql(plan)
    assert "::numeric" not in now
    version = "t.tableoid::text || ':' || t.ctid::text || ':' || t.xmin::text"
    before = now
    for seed in (0, 1):
        before = before.replace(f"sum(hashtextextended({version}, {seed}))",
                                f"sum(hashtextextended({version}, {seed})::numeric)")
    assert before.count("::numeric") == 2
    with psycopg.connect(pg_url) as conn:
        row_now, row_before = conn.execute(now).fetchone(), conn.execute(before).fetchone()
    assert row_now == row_before
    assert max(abs(row_now[1]), abs(row_now[2])) > 2 ** 63
    assert row_versions.token_of_row(row_now, plan, None) == \
        row_versions.token_of_row(row_before, plan, None)


STEP = '''
    CREATE TABLE notes (n int, body text);
    INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 40) g;
    CREATE TABLE orders (id int PRIMARY KEY, total numeric(10, 2), updated_at timestamptz);
    INSERT INTO orders SELECT g, g * 1.25, '2026-01-01'::timestamptz + g * interval '1 h'
        FROM generate_series(1, 60) g;
    CREATE TABLE kinds (code text PRIMARY KEY, label text);
    INSERT INTO kinds VALUES ('a', 'A'), ('b', 'B');
    CREATE TABLE "Odd ""Name""" (k int PRIMARY KEY, v text, updated_at timestamptz);
    INSERT INTO "Odd ""Name""" SELECT g, 'v' || g, '2026-02-01' FROM generate_series(1, 5) g;
'''
STEP_TABLES = ("notes", "orders", "kinds", 'Odd "Name"')
STEP_COLUMNS = {"notes": ("n, body", "n, body"),
                "orders": ("id, total, updated_at", "id, total, updated_at"),
                "kinds": ("code, label", "code, label"),
                'Odd "Name"': ("k, v, updated_at", "k")}


def _step(url: str, tmp_path: Path, source_url: str | None = None) -> dict[str, LoadResult]:
    from pg_to_bq.load.group import load_group
    from pg_to_bq.load.results import TableLoad

    with psycopg.connect(url) as conn:
        catalog = discover(conn, schemas=["public"])
    # (Merged by cursor, as larger tables are: the window's rows are what is asked.)
    plans = {plan.table.name: plan
             for plan in build_plans(catalog, "duckdb", Overrides(read_whole_bytes=0))}
    results = load_group([TableLoad(plans[name]) for name in STEP_TABLES], pipeline_name="step",
                         source_url=source_url or url,
                         destination=duckdb_destination(str(tmp_path / "dest.duckdb")),
                         dataset="raw", work_dir=tmp_path / "work")
    return {plans[name].table.name: result for name, result in zip(STEP_TABLES, results,
                                                                     strict=True)}


def _assert_step_matches_source(url: str, tmp_path: Path,
                                results: dict[str, LoadResult]) -> None:
    for table, (columns, order) in STEP_COLUMNS.items():
        quoted = '"' + table.replace('"', '""') + '"'
        loaded = '"' + results[table].destination_table.replace('"', '""') + '"'
        assert duck_rows(tmp_path / "dest.duckdb",
                         f"SELECT {columns} FROM raw.{loaded} ORDER BY {order}") == \
            pg_rows(url, f"SELECT {columns} FROM public.{quoted} ORDER BY {order}"), table


def test_a_step_asks_its_tables_together_and_reads_each_changed_one(
        pg_url: str, tmp_path: Path) -> None:
    """A step asks the row versions of all its candidate tables together (one round trip,
    `pg_to_bq.load.unchanged`): each answer must go to its own table. Unchanged tables —
    replaced, merged by a cursor, an odd name — are skipped; a table updated, one with a
    row inserted past its cursor are read, and the destination equals the source."""
    run_sql(pg_url, STEP)
    assert {t: r.status for t, r in _step(pg_url, tmp_path).items()} == \
        dict.fromkeys(STEP_TABLES, "loaded")
    again = _step(pg_url, tmp_path)
    for result in again.values():
        _assert_skipped(result)
    # (A table merged by its cursor counts the rows its read would: its lookback window.)
    assert {t: (r.mode, r.snapshot_rows) for t, r in again.items()} == \
        {"notes": ("full", 40), "orders": ("incremental", 1), "kinds": ("full", 2),
         'Odd "Name"': ("incremental", 5)}

    run_sql(pg_url, """
        UPDATE notes SET body = 'edited' WHERE n = 7;
        INSERT INTO orders VALUES (61, 99.99, '2026-03-01');
    """)
    third = _step(pg_url, tmp_path)
    assert {t: r.status for t, r in third.items()} == \
        {"notes": "loaded", "orders": "loaded", "kinds": "unchanged", 'Odd "Name"': "unchanged"}
    assert third['Odd "Name"'].snapshot_rows == 5
    # (The incremental read starts at its cursor, inclusive: the last row loaded and the new one.)
    assert (third["notes"].rows, third["orders"].rows) == (40, 2)
    _assert_step_matches_source(pg_url, tmp_path, third)



def test_what_postgresql_finds_unchanged_is_kept_only_where_the_destination_agrees(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL is asked about every table with a stored state while the destination is
    asked its schema and whether each state can be trusted: a table unchanged in
    PostgreSQL is still read when the destination says otherwise — a column dropped by
    hand (its schema changed: the column is added back; every load of the table failed on
    it before), rows deleted by hand (its state is no longer trusted) — and the destination
    equals the source again."""
    from pg_to_bq.load import group

    run_sql(pg_url, STEP)
    assert {t: r.status for t, r in _step(pg_url, tmp_path).items()} == \
        dict.fromkeys(STEP_TABLES, "loaded")
    asked: list[set[str]] = []

    def spy(loads, states, evolutions, doubts, **kwargs):
        found, tokens = settle(loads, states, evolutions, doubts, **kwargs)
        asked.append({loads[i].plan.table.name for i in found})
        return found, tokens

    settle = group.settle_unchanged
    monkeypatch.setattr(group, "settle_unchanged", spy)
    with duckdb.connect(str(tmp_path / "dest.duckdb")) as conn:
        conn.execute("ALTER TABLE raw.notes DROP COLUMN body")
        conn.execute("DELETE FROM raw.kinds WHERE code = 'a'")
    again = _step(pg_url, tmp_path)
    assert asked == [set(STEP_TABLES)]  # (all four unchanged in PostgreSQL)
    assert {t: r.status for t, r in again.items()} == \
        {"notes": "loaded", "orders": "unchanged", "kinds": "loaded", 'Odd "Name"': "unchanged"}
    assert again["kinds"].mode == "full" and "holds 1 row(s)" in (again["kinds"].reason or "")
    assert again["notes"].changes == (
        "column body was missing from the destination (dropped there, not in PostgreSQL): "
        "added back, loaded with every row",)
    _assert_step_matches_source(pg_url, tmp_path, again)



def test_a_column_dropped_by_hand_from_a_merged_table_is_added_back_and_filled(
        pg_url: str, tmp_path: Path) -> None:
    """A table merged by its cursor reads only recent rows: the column dropped from the
    destination by hand is added back and its values filled for every row loaded before.
    The change by hand is still reported (the check's drift names the column), so the next
    run reads the table whole, as after any change by hand; then it is unchanged."""
    run_sql(pg_url, STEP)
    _step(pg_url, tmp_path)
    with duckdb.connect(str(tmp_path / "dest.duckdb")) as conn:
        conn.execute("ALTER TABLE raw.orders DROP COLUMN total")
    again = _step(pg_url, tmp_path)["orders"]
    assert again.status == "loaded", again.error
    assert again.changes == (
        "column total was missing from the destination (dropped there, not in PostgreSQL): "
        "added back, its values filled for the rows loaded before",
        "filled total for 60 existing row(s)")
    assert again.drift == ("total: no longer in the destination table",)
    assert again.lost and not again.check.passed
    assert duck_rows(tmp_path / "dest.duckdb", "SELECT id, total FROM raw.orders ORDER BY id") \
        == pg_rows(pg_url, "SELECT id, total FROM orders ORDER BY id")
    third = _step(pg_url, tmp_path)
    assert (third["orders"].status, third["orders"].mode) == ("loaded", "full")
    assert third["orders"].check.passed
    _assert_step_matches_source(pg_url, tmp_path, third)
    assert _step(pg_url, tmp_path)["orders"].status == "unchanged"


def test_a_table_whose_row_versions_cannot_be_asked_fails_alone(pg_url: str,
                                                                 tmp_path: Path) -> None:
    """When asking one table's row versions fails (here the role lost its SELECT), the step
    looks for no unchanged table before its reads: every table is read and compares its
    own, the one that cannot be read fails with PostgreSQL's reason, and the others load
    exactly."""
    role = "versions_" + pg_url.rsplit("/", 1)[1]
    run_sql(pg_url, STEP + f"CREATE ROLE {role} LOGIN; "
                           f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};")
    as_role = pg_url.replace("postgres@", f"{role}@", 1)
    try:
        assert {r.status for r in _step(pg_url, tmp_path, as_role).values()} == {"loaded"}
        run_sql(pg_url, f"REVOKE SELECT ON kinds FROM {role}; "
                        "UPDATE notes SET body = 'edited' WHERE n = 3;")
        results = _step(pg_url, tmp_path, as_role)
        assert results["kinds"].status == "failed"
        assert "permission denied for table kinds" in (results["kinds"].error or "")
        assert all(results[t].status in ("loaded", "unchanged")
                   for t in STEP_TABLES if t != "kinds")
        assert results["notes"].status == "loaded"
        _assert_step_matches_source(pg_url, tmp_path, results)
    finally:
        run_sql(pg_url, f"DROP OWNED BY {role}; DROP ROLE {role};")


REMOTE = """
    CREATE TABLE sales_remote (id bigint NOT NULL, note text, region int NOT NULL);
    INSERT INTO sales_remote SELECT g, 'remote', 2 FROM generate_series(1001, 1100) g;
    CREATE TABLE archive (id bigint NOT NULL, note text);
    INSERT INTO archive SELECT g, 'archived' FROM generate_series(501, 520) g;
"""


def _foreign(url: str, remote: str) -> str:
    """SQL making, in `url`'s database, a partitioned table with a foreign partition and a
    table with a foreign table inheriting from it, both over postgres_fdw to `remote`."""
    there, here = urlparse(remote), urlparse(url)
    password = f", password '{unquote(there.password)}'" if there.password else ""
    return f"""
        CREATE EXTENSION postgres_fdw;
        CREATE SERVER remote FOREIGN DATA WRAPPER postgres_fdw
            OPTIONS (host '{there.hostname}', port '{there.port}',
                     dbname '{there.path.lstrip("/")}');
        CREATE USER MAPPING FOR CURRENT_USER SERVER remote
            OPTIONS (user '{unquote(there.username or here.username or "postgres")}'{password});
        CREATE TABLE sales (id bigint NOT NULL, note text, region int NOT NULL)
            PARTITION BY LIST (region);
        CREATE TABLE sales_local PARTITION OF sales FOR VALUES IN (1);
        INSERT INTO sales_local SELECT g, 'local', 1 FROM generate_series(1, 1000) g;
        CREATE FOREIGN TABLE sales_far PARTITION OF sales FOR VALUES IN (2)
            SERVER remote OPTIONS (table_name 'sales_remote');
        CREATE TABLE ledger (id bigint NOT NULL, note text);
        INSERT INTO ledger SELECT g, 'kept' FROM generate_series(1, 500) g;
        CREATE FOREIGN TABLE ledger_archive () INHERITS (ledger)
            SERVER remote OPTIONS (table_name 'archive');
    """


def _ctid(url: str, table: str, key: int) -> str:
    return pg_rows(url, f"SELECT ctid::text FROM {table} WHERE id = {key}")[0][0]


@pytest.fixture
def csv_file():
    """A CSV file the PostgreSQL server (another user when the tests run as root) can read."""
    folder = Path(tempfile.mkdtemp(prefix="pg_to_bq_file_fdw_"))
    folder.chmod(0o755)
    path = folder / "events.csv"
    path.write_text("1,first\n2,second\n")
    path.chmod(0o644)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


def test_rows_of_a_foreign_table_are_read_every_run(pg_server, pg_url, settings_env, capsys,
                                                     csv_file) -> None:
    """A foreign table's rows (a partition's, or an inheriting table's) have no row versions:
    postgres_fdw gives them `xmin` 0 and the remote server's `ctid`, a place an update can
    take again after a VACUUM. Here a remote value changes twice, VACUUMed between, so that
    its row ends where it was at the last load: the token would be that load's, and the
    table was found `unchanged`, keeping the old value. file_fdw's rows cannot be asked
    `ctid` or `xmin` at all: a partitioned table with such a partition failed every run. A
    table with foreign rows is read every run (said `ok`, never `unchanged`, and why), not
    asked its rows' system columns, and stays exact; a table without is skipped."""
    with pg_server.database("remote", REMOTE) as remote:
        run_sql(pg_url, _foreign(pg_url, remote) + f"""
            CREATE TABLE plain (id bigint, note text);
            INSERT INTO plain SELECT g, 'p' FROM generate_series(1, 10) g;
            CREATE EXTENSION file_fdw;
            CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
            CREATE TABLE events (id bigint, note text) PARTITION BY RANGE (id);
            CREATE TABLE events_new PARTITION OF events FOR VALUES FROM (100) TO (200);
            INSERT INTO events VALUES (150, 'live');
            CREATE FOREIGN TABLE events_file PARTITION OF events FOR VALUES FROM (0) TO (100)
                SERVER files OPTIONS (filename '{csv_file}', format 'csv');
        """)
        path = settings_env(pg_url)

        def sync() -> str:
            assert main(["sync"]) == 0
            return capsys.readouterr().out

        assert main(["discover"]) == 0
        out = capsys.readouterr().out
        assert "public.sales_far is a foreign table, whose rows have no row versions: the " \
               "table is never found unchanged, it is read every run" in out, out
        assert "public.ledger_archive is a foreign table" in out, out
        out = sync()
        for table, rows in (("sales", "1,100"), ("ledger", "520"), ("events", "3")):
            assert f"public.{table}: ok, {rows} rows (full)" in out, out
        # A re-sync with nothing changed: only the table without foreign rows is skipped.
        out = sync()
        assert "public.plain: unchanged" in out, out
        why = "(full: some of its rows are a foreign table's, which have no row versions to " \
              "compare: read every run)"
        assert f"public.sales: ok, 1,100 rows {why}" in out, out
        assert f"public.ledger: ok, 520 rows {why}" in out, out
        assert f"public.events: ok, 3 rows {why}" in out, out
        # The file edited in place, as many rows as before.
        csv_file.write_text("1,first\n2,edited\n")
        sync()
        assert duck_rows(path, "SELECT note FROM raw.events WHERE id = 2") == [("edited",)]

        for table, key in (("sales_remote", 1001), ("archive", 501)):
            run_sql(remote, f"UPDATE {table} SET note = 'first' WHERE id = {key}")
        sync()
        loaded_at = {t: _ctid(remote, t, k) for t, k in (("sales_remote", 1001),
                                                         ("archive", 501))}
        for table, key in (("sales_remote", 1001), ("archive", 501)):
            for note in ("second", "third"):
                run_sql(remote, f"VACUUM {table}")
                run_sql(remote, f"UPDATE {table} SET note = '{note}' WHERE id = {key}")
        # (the scenario: each remote row is back at the place it had at the last load)
        assert {t: _ctid(remote, t, k) for t, k in (("sales_remote", 1001),
                                                    ("archive", 501))} == loaded_at
        out = sync()
        assert "public.sales: ok" in out and "public.ledger: ok" in out, out
        assert duck_rows(path, "SELECT note FROM raw.sales WHERE id = 1001") == [("third",)]
        assert duck_rows(path, "SELECT note FROM raw.ledger WHERE id = 501") == [("third",)]
        for table in ("sales", "ledger", "plain", "events"):
            assert_mirrored_in_duckdb(pg_url, path, table)


def test_foreign_rows_the_catalog_does_not_know_make_a_new_token_each_time(
        pg_server, pg_url) -> None:
    """A foreign partition attached after the catalog was read: the row-version scan itself
    sees rows without an `xmin` (postgres_fdw's) and gives a token that never equals
    another, so the table is still never found unchanged; a table without such rows has
    the same token while its rows stay."""
    with pg_server.database("remote", REMOTE) as remote:
        run_sql(pg_url, _foreign(pg_url, remote) + """
            CREATE TABLE plain (id bigint, note text);
            INSERT INTO plain SELECT g, 'p' FROM generate_series(1, 10) g;
        """)
        with psycopg.connect(pg_url) as conn:
            catalog = discover(conn, schemas=["public"])
        plans = {p.name: p for p in build_plans(catalog, "duckdb", Overrides())}
        assert plans["public.sales"].table.foreign_parts == ("public.sales_far",)
        unknown = dataclasses.replace(plans["public.sales"],
                                      table=dataclasses.replace(plans["public.sales"].table,
                                                                foreign_parts=()))
        with psycopg.connect(pg_url) as conn:
            def ask(plan):
                return row_versions.token_and_rows(
                    lambda sql: conn.execute(sql).fetchone(), plan, None)
            first, second = ask(unknown), ask(unknown)
            assert first[1] == second[1] == 1100
            assert row_versions.unversioned(first[0]) and first[0] != second[0]
            assert ask(plans["public.plain"]) == ask(plans["public.plain"])
            assert not row_versions.unversioned(ask(plans["public.plain"])[0])
