"""BigQuery tier: change capture (issue 24) into the BigQuery emulator, over HTTP.

The same night as `test_change_capture` (updates that leave the cursor alone, deletes, an
update of the key, inserts, a truncate): the spool table, the merge by key and the deletes
are BigQuery SQL here, and every row of the source is compared with the copy.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pg_to_bq.cli.main import main
from pg_to_bq_tests.conftest import run_sql
from pg_to_bq_tests.load.test_change_capture import SHOP
from pg_to_bq_tests.support.mirror_compare import assert_mirrored, canonical

pytestmark = [pytest.mark.bigquery]


def test_changes_arrive_exactly_in_bigquery(pg_url: str, settings_env, tmp_path,
                                            bigquery_emulator, capsys) -> None:
    run_sql(pg_url, SHOP + """
        CREATE TABLE prices (code numeric(10,2) PRIMARY KEY, v text);
        INSERT INTO prices SELECT g / 4.0, 'p' || g FROM generate_series(1, 60) g;
        CREATE TABLE readings (at timestamptz PRIMARY KEY, v int);
        INSERT INTO readings SELECT timestamptz '2026-01-01 00:00:00.123456+09'
                                    + g * interval '1 h', g FROM generate_series(1, 60) g;
    """)
    settings_env(pg_url, destination="bigquery", bigquery_project=bigquery_emulator.project_id,
                 bigquery_key_file=str(bigquery_emulator.key_file(tmp_path)), dataset="captured",
                 cdc="true")
    project = bigquery_emulator.project_id

    def copy(table: str):
        def rows(columns):
            listed = ", ".join(f"`{c}`" for c in columns)
            result = bigquery_emulator.client().query_and_wait(
                f"SELECT {listed} FROM `{project}.captured.{table}`")
            return Counter(tuple(canonical(v) for v in row.values()) for row in result)
        return rows

    def exact() -> None:
        for table in ("orders", "tags", "pairs", "plain", "prices", "readings"):
            assert_mirrored(pg_url, table, copy(table))

    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "first run with change capture" in out, out
    exact()
    run_sql(pg_url, """
        UPDATE orders SET status = 'paid', amount = amount + 0.01 WHERE id % 50 = 0;
        DELETE FROM orders WHERE id BETWEEN 100 AND 149;
        INSERT INTO orders (id, status, amount) SELECT g, 'new', 1 FROM generate_series(6001, 6020) g;
        UPDATE orders SET id = 900001 WHERE id = 7;
        UPDATE tags SET colour = 'red' WHERE name = 'tag 1';
        DELETE FROM pairs WHERE a = 4;
        UPDATE pairs SET v = 'x' WHERE a = 2;
        UPDATE prices SET v = 'changed' WHERE code IN (0.25, 7.5);
        DELETE FROM prices WHERE code = 10.00;
        UPDATE readings SET v = -1 WHERE v IN (3, 4);
        DELETE FROM readings WHERE v = 5;
    """)
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "public.orders: ok" in out and "(changes)" in out, out
    exact()
    run_sql(pg_url, "TRUNCATE tags; INSERT INTO tags VALUES ('only', 'one')")
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "truncated in PostgreSQL" in out, out
    exact()


def test_soft_deletes_in_bigquery(pg_url: str, settings_env, tmp_path, bigquery_emulator,
                                  capsys) -> None:
    """Soft deletes (`PG_TO_BQ_SOFT_DELETES`) as BigQuery SQL: the deletes change capture
    applies are UPDATEs of `_pg_to_bq_deleted_at`, a truncate (a whole read) merges and
    marks, a key inserted again is live again; the live rows are exact, the marked ones
    the rows the copy had, and the check (live rows only) passes."""
    run_sql(pg_url, SHOP)
    settings_env(pg_url, destination="bigquery", bigquery_project=bigquery_emulator.project_id,
                 bigquery_key_file=str(bigquery_emulator.key_file(tmp_path)), dataset="soft",
                 cdc="true", soft_deletes="true")
    project = bigquery_emulator.project_id

    def query(sql: str) -> list[tuple]:
        return [tuple(row.values()) for row in bigquery_emulator.client().query_and_wait(sql)]

    def live(table: str):
        def rows(columns):
            listed = ", ".join(f"`{c}`" for c in columns)
            return Counter(tuple(canonical(v) for v in row) for row in query(
                f"SELECT {listed} FROM `{project}.soft.{table}` "
                "WHERE _pg_to_bq_deleted_at IS NULL"))
        return rows

    def kept(table: str, key: str) -> list:
        return sorted(r[0] for r in query(f"SELECT {key} FROM `{project}.soft.{table}` "
                                          "WHERE _pg_to_bq_deleted_at IS NOT NULL"))

    def sync() -> str:
        code = main(["sync"])
        out = capsys.readouterr().out
        assert code == 0 and "checks failed" not in out, out
        return out

    sync()
    run_sql(pg_url, """
        DELETE FROM orders WHERE id BETWEEN 100 AND 104;
        UPDATE orders SET id = 900001 WHERE id = 7;
        DELETE FROM pairs WHERE a = 4;
    """)
    out = sync()
    assert "(kept, marked in _pg_to_bq_deleted_at)" in out, out
    assert kept("orders", "id") == [7, 100, 101, 102, 103, 104]
    run_sql(pg_url, "INSERT INTO orders (id, status) VALUES (101, 'again'); TRUNCATE tags; "
                    "INSERT INTO tags VALUES ('only', 'one')")
    out = sync()
    assert "truncated in PostgreSQL" in out, out
    assert kept("orders", "id") == [7, 100, 102, 103, 104]
    assert len(kept("tags", "name")) == 300
    for table in ("orders", "tags", "pairs"):
        assert_mirrored(pg_url, table, live(table))
    out = sync()
    assert "public.orders: unchanged" in out, out
