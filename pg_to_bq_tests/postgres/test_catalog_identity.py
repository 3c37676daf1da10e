"""Tier 2 (real PostgreSQL): what the catalog says about a column's and a table's identity,
on which `pg_to_bq.planning.derivation` decides when values must be loaded again: each
column's attribute number, and the table's storage (new exactly when PostgreSQL rewrites it).
"""

from __future__ import annotations

import psycopg

from pg_to_bq.planning.catalog import Catalog
from pg_to_bq.postgres.discovery import discover
from pg_to_bq_tests.conftest import run_sql


def _table(url: str, name: str):
    with psycopg.connect(url) as conn:
        return discover(conn, schemas=["public"], table=name).tables[0]


def test_attribute_numbers_follow_columns_and_storage_follows_rewrites(pg_url: str) -> None:
    run_sql(pg_url, "CREATE TABLE t (id int PRIMARY KEY, a varchar(10), b text);"
                    "INSERT INTO t SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 50) g")
    first = _table(pg_url, "t")
    assert [c.name for c in first.columns] == ["id", "a", "b"]
    assert first.column_numbers == (1, 2, 3) and first.storage

    # A rename keeps the number; a drop and an add of the same name does not.
    run_sql(pg_url, "ALTER TABLE t RENAME COLUMN a TO a2; ALTER TABLE t DROP COLUMN b;"
                    "ALTER TABLE t ADD COLUMN b text")
    renamed = _table(pg_url, "t")
    assert dict(zip((c.name for c in renamed.columns), renamed.column_numbers, strict=True)) \
        == {"id": 1, "a2": 2, "b": 4}
    assert renamed.storage == first.storage  # nothing rewrote the table

    # A type change that keeps every value keeps the storage; one with a USING that changes
    # values rewrites the table.
    run_sql(pg_url, "ALTER TABLE t ALTER COLUMN a2 TYPE varchar(100)")
    assert _table(pg_url, "t").storage == first.storage
    run_sql(pg_url, "ALTER TABLE t ALTER COLUMN a2 TYPE varchar(100) USING upper(a2)")
    rewritten = _table(pg_url, "t")
    assert rewritten.storage != first.storage

    # The snapshot keeps both.
    again = Catalog.from_json(Catalog(tables=(rewritten,)).to_json()).tables[0]
    assert (again.column_numbers, again.storage) == (rewritten.column_numbers, rewritten.storage)


def test_a_partitioned_table_has_the_storage_of_its_leaves(pg_url: str) -> None:
    run_sql(pg_url, "CREATE TABLE p (id int, at date, v text) PARTITION BY RANGE (at);"
                    "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM ('2026-01-01') TO "
                    "('2026-02-01');"
                    "CREATE TABLE p2 PARTITION OF p FOR VALUES FROM ('2026-02-01') TO "
                    "('2026-03-01');"
                    "INSERT INTO p VALUES (1, '2026-01-05', 'x'), (2, '2026-02-05', 'y')")
    before = _table(pg_url, "p").storage
    assert before is not None and len(before.split(",")) == 2
    run_sql(pg_url, "VACUUM FULL p2")
    assert _table(pg_url, "p").storage != before
