"""Tier 2: soft deletes (issue 24), PostgreSQL → DuckDB through `pg-to-bq sync`.

With `PG_TO_BQ_SOFT_DELETES=true`, a row deleted in PostgreSQL stays in the destination
with `_pg_to_bq_deleted_at` set; a key inserted again is live again. Every test compares
the live rows with the source exactly, checks the kept rows are the rows PostgreSQL had,
and that the table's check passes (the kept rows are not "extra rows").
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import duckdb
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq_tests.conftest import duck_rows, pg_rows, run_sql
from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

SHOP = """
    CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, amount numeric(12,2),
                         updated_at timestamptz NOT NULL DEFAULT now());
    INSERT INTO orders SELECT g, 'new', g * 1.25, now() - interval '30 days' + g * interval '1 s'
    FROM generate_series(1, 2000) g;
    CREATE TABLE tags (name text PRIMARY KEY, colour text);
    INSERT INTO tags SELECT 'tag ' || g, 'c' || g FROM generate_series(1, 30) g;
    CREATE TABLE plain (x int, y text);
    INSERT INTO plain SELECT g, 'y' || g FROM generate_series(1, 20) g;
"""
README = Path(__file__).resolve().parents[2] / "README.md"
KEPT = "SELECT {cols} FROM raw.{table} WHERE _pg_to_bq_deleted_at IS NOT NULL ORDER BY 1"


def sync(capsys, *args: str, status: int = 0) -> str:
    code = main(["sync", *args])
    out = capsys.readouterr().out
    assert code == status, out
    assert "checks failed" not in out, out
    return out


def assert_live_exact(url: str, path: Path, tables=("orders", "tags")) -> None:
    for table in tables:
        assert_mirrored_in_duckdb(url, path, table, live_only=True)


def kept(path: Path, table: str, cols: str = "id, status") -> list[tuple]:
    return duck_rows(path, KEPT.format(cols=cols, table=table))


@pytest.fixture(params=["cdc", "cursor", "whole"])
def shop(request, pg_url: str, settings_env, capsys):
    """The shop, synced once with soft deletes on: with change capture; merged by cursor
    (`PG_TO_BQ_READ_WHOLE_BYTES=0`: the delete pass, and every whole read, marks what
    PostgreSQL deleted); and as its small tables are by default, read whole when they
    change (merged whole: the rows PostgreSQL no longer has are marked)."""
    run_sql(pg_url, SHOP)
    extra = {"cdc": {"cdc": "true"}, "cursor": {"read_whole_bytes": "0"}, "whole": {}}
    path = settings_env(pg_url, soft_deletes="true", **extra[request.param])
    sync(capsys)
    return pg_url, path, request.param


def deletes_args(mode: str) -> tuple[str, ...]:
    return () if mode == "cdc" else ("--apply-deletes",)


def test_deleted_rows_stay_marked_and_a_key_inserted_again_is_live(shop, capsys) -> None:
    url, path, mode = shop
    run_sql(url, """
        UPDATE orders SET status = 'paid', updated_at = now() WHERE id <= 5;
        DELETE FROM orders WHERE id BETWEEN 3 AND 12;
        UPDATE orders SET id = 900001, updated_at = now() WHERE id = 20;
        DELETE FROM tags WHERE name = 'tag 3';
    """)
    out = sync(capsys, *deletes_args(mode))
    assert "(kept, marked in _pg_to_bq_deleted_at)" in out, out
    assert_live_exact(url, path)
    # The rows PostgreSQL deleted, as the destination last had them (3, 4 and 5 were paid
    # and deleted between two runs: the copy never held them paid); the old key of 20.
    assert kept(path, "orders") == [(i, "new") for i in range(3, 13)] + [(20, "new")]
    assert kept(path, "tags", "name, colour") == [("tag 3", "c3")]

    # Inserted again under a deleted key: live again, with its new values.
    run_sql(url, "INSERT INTO orders (id, status, amount) VALUES (4, 'again', 9.99)")
    out = sync(capsys, *deletes_args(mode))
    assert_live_exact(url, path)
    assert (4, "paid") not in kept(path, "orders")
    assert duck_rows(path, "SELECT status, _pg_to_bq_deleted_at IS NULL FROM raw.orders "
                           "WHERE id = 4") == [("again", True)]
    # Nothing changed: the state, counting live rows, is trusted (no whole read).
    out = sync(capsys)
    assert "public.orders: unchanged" in out and "public.tags: unchanged" in out, out
    # The README's query for what PostgreSQL has now, as written there.
    [query] = [q for q in re.findall(r"```sql\n(.*?)```", README.read_text(encoding="utf-8"),
                                     re.S) if "_pg_to_bq_deleted_at" in q]
    with duckdb.connect(str(path), read_only=True) as conn:
        live = conn.execute(query.split("--")[0]).fetchall()
    assert len(live) == pg_rows(url, "SELECT count(*) FROM orders")[0][0]


def test_whole_reads_keep_the_marked_rows(shop, capsys) -> None:
    """A full refresh (and so every whole read: a truncate, a slot lost, a state in doubt)
    merges, and marks what PostgreSQL no longer has: history is never replaced away."""
    url, path, mode = shop
    run_sql(url, "DELETE FROM orders WHERE id <= 3")
    sync(capsys, *deletes_args(mode))
    run_sql(url, "DELETE FROM orders WHERE id = 4")  # seen first by the whole read
    out = sync(capsys, "--full-refresh")
    assert "public.orders: ok, 1,996 rows (full" in out, out
    assert [r[0] for r in kept(path, "orders")] == [1, 2, 3, 4]
    assert_live_exact(url, path)
    # A truncate marks every row.
    run_sql(url, "TRUNCATE tags")
    sync(capsys, *deletes_args(mode))
    assert len(kept(path, "tags", "name")) == 30
    assert_live_exact(url, path)


def test_a_reload_under_a_new_type_keeps_the_marked_rows_aside(shop, capsys) -> None:
    url, path, mode = shop
    run_sql(url, "DELETE FROM tags WHERE name IN ('tag 1', 'tag 2')")
    sync(capsys, *deletes_args(mode))
    # text -> integer: the destination cannot change the column in place; the table is
    # dropped and loaded again, and the two deleted rows go to a table of their own.
    run_sql(url, "UPDATE tags SET colour = '7'; "
                 "ALTER TABLE tags ALTER COLUMN colour TYPE integer USING colour::integer")
    out = sync(capsys)
    assert "its 2 soft-deleted row(s) kept in table tags__deleted_before_" in out, out
    assert_live_exact(url, path)
    with duckdb.connect(str(path), read_only=True) as conn:
        [(aside,)] = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw' "
            "AND table_name LIKE 'tags__deleted_before_%'").fetchall()
        assert conn.execute(f"SELECT name, colour FROM raw.{aside} ORDER BY 1").fetchall() == \
            [("tag 1", "c1"), ("tag 2", "c2")]


def test_turned_on_for_a_loaded_table_and_off_again(pg_url, settings_env, capsys,
                                                     monkeypatch) -> None:
    """A mirror loaded without soft deletes turns them on: a table not loaded since gets
    the column from its delete pass. Turned off again, the marked rows stay (through a
    whole read too), and still do not count as rows PostgreSQL lacks."""
    run_sql(pg_url, SHOP)
    path = settings_env(pg_url, read_whole_bytes="0")  # (merged by cursor)
    sync(capsys)
    monkeypatch.setenv("PG_TO_BQ_SOFT_DELETES", "true")
    run_sql(pg_url, "DELETE FROM orders WHERE id IN (1, 2)")
    sync(capsys, "--apply-deletes")
    assert [r[0] for r in kept(path, "orders")] == [1, 2]
    assert_live_exact(pg_url, path, tables=("orders",))
    monkeypatch.setenv("PG_TO_BQ_SOFT_DELETES", "false")
    run_sql(pg_url, "DELETE FROM orders WHERE id = 3")
    out = sync(capsys, "--apply-deletes")
    # (no row to load, one deleted: a change, said `ok`)
    assert "public.orders: ok, 0 rows (incremental), 1 deleted in" in out, out
    assert [r[0] for r in kept(path, "orders")] == [1, 2]
    assert_live_exact(pg_url, path, tables=("orders",))
    out = sync(capsys)
    assert "public.orders: unchanged" in out, out
    # A whole read, soft deletes off: merged too, so the marked rows stay; a row deleted
    # since leaves (hard).
    run_sql(pg_url, "DELETE FROM orders WHERE id = 4")
    out = sync(capsys, "--full-refresh")
    assert "public.orders: ok, 1,996 rows (full), 1 deleted in" in out, out
    assert [r[0] for r in kept(path, "orders")] == [1, 2]
    assert_live_exact(pg_url, path, tables=("orders",))


def test_the_tables_file_decides_per_table(pg_url, settings_env, capsys, tmp_path) -> None:
    run_sql(pg_url, SHOP)
    tables = tmp_path / "tables.yaml"
    tables.write_text("defaults: {soft_deletes: true}\n"
                      "tables:\n  public.tags: {soft_deletes: false}\n", encoding="utf-8")
    path = settings_env(pg_url, tables_file=str(tables), cdc="true")
    assert main(["discover"]) == 0
    out = capsys.readouterr().out
    orders = next(line for line in out.splitlines() if "public.orders" in line)
    assert "soft deletes: rows deleted in PostgreSQL stay" in orders, out
    tags = next(line for line in out.splitlines() if "public.tags" in line)
    assert "soft deletes" not in tags
    plain = next(line for line in out.splitlines() if "public.plain" in line)
    assert "soft deletes need a primary key" in plain, out
    sync(capsys)
    run_sql(pg_url, "DELETE FROM orders WHERE id = 1; DELETE FROM tags WHERE name = 'tag 1'")
    sync(capsys)
    assert [r[0] for r in kept(path, "orders")] == [1]
    with duckdb.connect(str(path), read_only=True) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'tags'"
        ).fetchall()]
    assert "_pg_to_bq_deleted_at" not in columns
    assert_live_exact(pg_url, path, tables=("orders",))
    assert_mirrored_in_duckdb(pg_url, path, "tags")


def test_a_column_hashed_now_keeps_no_plain_value_in_the_kept_rows(shop, capsys, monkeypatch,
                                                                    tmp_path) -> None:
    """The rows PostgreSQL deleted (kept, marked) cannot be filled from it: when their column
    is derived another way (here hashed through the tables file), their old values are set to
    NULL, so no plain value stays behind in the copy of a column the user hashes."""
    url, path, mode = shop
    run_sql(url, "DELETE FROM orders WHERE id <= 3")
    sync(capsys, *deletes_args(mode))
    assert kept(path, "orders") == [(1, "new"), (2, "new"), (3, "new")]
    tables = tmp_path / "hashed.yaml"
    tables.write_text("tables:\n  public.orders:\n    columns:\n      status: {hash: true}\n")
    monkeypatch.setenv("PG_TO_BQ_TABLES_FILE", str(tables))
    monkeypatch.setenv("PG_TO_BQ_HASH_SALT", "pepper")
    out = sync(capsys, *deletes_args(mode))
    assert "public.orders: set status to NULL in 3 row(s) PostgreSQL no longer has (their " \
           "values were derived the old way)" in out, out
    assert kept(path, "orders") == [(1, None), (2, None), (3, None)]
    hashed = hashlib.sha256(b"pepper" + b"new").hexdigest()
    assert duck_rows(path, f"SELECT count(*), count(*) FILTER (WHERE status = '{hashed}') "
                           "FROM raw.orders WHERE _pg_to_bq_deleted_at IS NULL") == [(1997, 1997)]
