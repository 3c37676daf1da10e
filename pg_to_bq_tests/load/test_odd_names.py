"""Tier 2 and BigQuery tier: a database of odd names loads every table once, alone.

Tables and columns named with quotes, `;`, spaces, reserved words, leading digits, Japanese
and accented letters, twins differing only in case or punctuation, and PostgreSQL's
longest (63-byte) names: through `pg-to-bq sync` into DuckDB, and through dlt's BigQuery
destination into the emulator. Every table loads, row and column counts equal the source,
and every renaming (a collision resolved by a suffix) is said.
"""

from __future__ import annotations

import duckdb
import psycopg
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq_tests.conftest import run_sql

LONG = "a" * 63
ODD_SCHEMA = '''
    CREATE TABLE "my table" (id int PRIMARY KEY, "first name" text, "x;y" int,
                             "select" text, "1st" int, "CamelCol" text, camelcol text,
                             "a-b" int, a_b int, "say ""hi""" text);
    INSERT INTO "my table" SELECT g, 'n' || g, g, 's', 1, 'C', 'c', 2, 3, 'q'
    FROM generate_series(1, 30) g;
    CREATE TABLE "Orders" (id int PRIMARY KEY, v text);
    INSERT INTO "Orders" VALUES (1, 'upper');
    CREATE TABLE orders (id int PRIMARY KEY, v text);
    INSERT INTO orders VALUES (1, 'lower'), (2, 'lower');
    CREATE TABLE "order" (id int PRIMARY KEY, "group" text, "from" text);
    INSERT INTO "order" VALUES (1, 'g', 'f');
    CREATE TABLE "2024_sales" (id int, amount numeric(10,2));
    INSERT INTO "2024_sales" VALUES (1, 9.99);
    CREATE TABLE "drop table x; --" (id int);
    INSERT INTO "drop table x; --" VALUES (1);
    CREATE TABLE 顧客メモ (id int PRIMARY KEY, メモ text, "Ünïcödé" text);
    INSERT INTO 顧客メモ VALUES (1, 'こんにちは', 'é');
    CREATE TABLE "{long}" (id int, "{long}" int, "{upper}" int);
    INSERT INTO "{long}" VALUES (1, 2, 3);
    CREATE SCHEMA sales;
    CREATE TABLE sales.orders (id int PRIMARY KEY);
    INSERT INTO sales.orders VALUES (7);
    CREATE TABLE public.sales__orders (id int PRIMARY KEY);
    INSERT INTO public.sales__orders VALUES (8), (9);
'''.format(long=LONG, upper="A" * 63)


def source_shape(url: str) -> dict[str, tuple[int, int]]:
    """(rows, columns) of every table, by `schema.table`."""
    shape = {}
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'sales')").fetchall()
        for schema, table in tables:
            quoted = f'"{schema}"."' + table.replace('"', '""') + '"'
            rows = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
            columns = conn.execute(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s", (schema, table)).fetchone()[0]
            shape[f"{schema}.{table}"] = (rows, columns)
    return shape


def test_odd_names_all_load_into_duckdb(pg_url: str, settings_env, capsys) -> None:
    run_sql(pg_url, ODD_SCHEMA)
    path = settings_env(pg_url)
    assert main(["discover"]) == 0
    discovered = capsys.readouterr().out
    assert main(["sync"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    source = source_shape(pg_url)
    assert f"{len(source)} loaded, 0 failed" in out
    with duckdb.connect(str(path), read_only=True) as conn:
        loaded = {}
        for (table,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw' "
                "AND NOT starts_with(table_name, '_dlt_') "
                "AND NOT starts_with(table_name, '_pg_to_bq_')").fetchall():
            quoted = '"' + table.replace('"', '""') + '"'
            loaded[table] = (conn.execute(f"SELECT count(*) FROM raw.{quoted}").fetchone()[0],
                             conn.execute("SELECT count(*) FROM information_schema.columns "
                                          "WHERE table_schema = 'raw' AND table_name = ?",
                                          [table]).fetchone()[0])
        assert sorted(loaded.values()) == sorted(source.values())
        # Case-only twins both arrive, each with its own rows.
        twins = {t: v for t, v in loaded.items() if t.lower().startswith("orders")}
        assert sorted(twins.values()) == [(1, 2), (2, 2)]
        # The PostgreSQL names are kept where the destination takes them.
        assert {"my_table", "顧客メモ", "order", "_2024_sales", LONG} <= set(loaded)
        columns = {c for (c,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'my_table'"
        ).fetchall()}
        assert {"first_name", "x_y", "select", "_1st", "camelcol", "a_b"} <= columns
        assert any(c.startswith("CamelCol_") for c in columns)
        assert any(c.startswith("a_b_") for c in columns)
    # Every renaming is said: in discover's plan and in the sync's notes.
    assert "CamelCol" in discovered and "a_b_" in discovered
    assert "column `CamelCol` → `CamelCol_" in out
    assert "loaded as `sales.orders` → `sales__orders_" in out


@pytest.mark.bigquery
def test_odd_names_all_load_into_bigquery(pg_url: str, settings_env, tmp_path,
                                          bigquery_emulator, capsys) -> None:
    run_sql(pg_url, ODD_SCHEMA)
    settings_env(pg_url, destination="bigquery", bigquery_project=bigquery_emulator.project_id,
                 bigquery_key_file=str(bigquery_emulator.key_file(tmp_path)), dataset="odd_names")
    assert main(["sync", "--refresh-catalog"]) == 0, capsys.readouterr().out
    source = source_shape(pg_url)
    client = bigquery_emulator.client()
    loaded = {}
    for table in client.list_tables(f"{bigquery_emulator.project_id}.odd_names"):
        if table.table_id.startswith(("_dlt_", "_pg_to_bq_")):
            continue
        full = client.get_table(table)
        rows = list(client.query_and_wait(
            f"SELECT count(*) AS n FROM `{bigquery_emulator.project_id}.odd_names."
            f"{table.table_id}`"))[0]["n"]
        loaded[table.table_id] = (rows, len(full.schema))
    assert sorted(loaded.values()) == sorted(source.values())
    assert "顧客メモ" in loaded


SEED_SECRETS = {("dim_users", "password_hash"), ("dim_users", "access_token"),
                ("social_posts", "misskey_token"), ("llm_usage", "openai_api_key")}


def test_the_seed_applications_schema_loads_every_table_and_every_non_secret_column(
        pg_url: str, settings_env, capsys) -> None:
    """12/12 tables, and every column but the four that hold secrets: `token_count` and
    `used_token` (counts of LLM tokens), `total_token`, `api_key_name` are loaded; each
    left-out column is said, with the setting that decides it."""
    from pathlib import Path

    run_sql(pg_url, (Path(__file__).parents[1] / "data" / "seed_app_schema.sql").read_text())
    path = settings_env(pg_url)
    assert main(["discover"]) == 0
    discovered = capsys.readouterr().out
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "12 loaded, 0 failed" in out
    with psycopg.connect(pg_url) as conn:
        source = set(conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public'").fetchall())
        rows = dict(conn.execute(
            "SELECT relname, n_live_tup FROM pg_stat_user_tables").fetchall())
    with duckdb.connect(str(path), read_only=True) as conn:
        loaded = set(conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'raw' AND NOT starts_with(table_name, '_')").fetchall())
        for table in {t for t, _ in source}:
            assert conn.execute(f"SELECT count(*) FROM raw.{table}").fetchone()[0] == rows[table]
    assert len({t for t, _ in loaded}) == 12
    assert source - loaded == SEED_SECRETS
    assert {("llm_usage", "token_count"), ("llm_usage", "used_token"),
            ("llm_usage", "api_key_name")} <= loaded
    for table, column in SEED_SECRETS:
        line = f"{table}: column {column} excluded: named like a credential"
        assert line in out, out
        assert f"excluded: {column} (named like a credential" in discovered
        assert f"set columns: {{{column}: {{exclude: false}}}} for public.{table}" in out
