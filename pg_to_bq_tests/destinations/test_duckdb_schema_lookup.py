"""The destination's columns of a group of tables, asked of a real DuckDB file: by
pg_to_bq (`pg_to_bq.destinations.schema.stored_columns`) and by dlt's client through
pg_to_bq's destination (its `get_storage_tables`). Both look the tables up as one list
(a subquery, not `IN ('a', 'b', ...)`, which DuckDB compares name by name with every
column of the file): the answers must be exactly the tables asked for, odd names included,
and nothing else."""

from __future__ import annotations

from pathlib import Path

import duckdb

from pg_to_bq.destinations.duckdb_file import duckdb_destination
from pg_to_bq.destinations.duckdb_session import DuckDBFile
from pg_to_bq.destinations.lazy import duckdb_global_config
from pg_to_bq.destinations.schema import stored_columns
from pg_to_bq.load.packages import group_pipeline
from pg_to_bq.planning.evolution import StoredColumn

ASKED = ["plain", "it's", "Mixed Case", "日本語", "not there"]


def make_file(path: Path) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE SCHEMA raw")
        conn.execute('CREATE TABLE raw.plain (id BIGINT NOT NULL, amount DECIMAL(12,2))')
        conn.execute('CREATE TABLE raw."it\'s" (a VARCHAR)')
        conn.execute('CREATE TABLE raw."Mixed Case" ("Col A" TIMESTAMP WITH TIME ZONE)')
        conn.execute('CREATE TABLE raw."日本語" (列 INTEGER[])')
        conn.execute("CREATE TABLE raw.other (x INTEGER)")  # not asked
        conn.execute("CREATE SCHEMA elsewhere")
        conn.execute("CREATE TABLE elsewhere.plain (y INTEGER)")  # another dataset


def test_pg_to_bq_finds_exactly_the_tables_it_asks_for(tmp_path: Path) -> None:
    path = tmp_path / "d.duckdb"
    make_file(path)
    found = stored_columns(DuckDBFile(str(path), "raw", duckdb_global_config(None)), ASKED)
    assert found == {
        "plain": {"id": StoredColumn("id", "BIGINT", False),
                  "amount": StoredColumn("amount", "DECIMAL(12,2)", True)},
        "it's": {"a": StoredColumn("a", "VARCHAR", True)},
        "Mixed Case": {"Col A": StoredColumn("Col A", "TIMESTAMP WITH TIME ZONE", True)},
        "日本語": {"列": StoredColumn("列", "INTEGER[]", True)},
    }


def test_dlt_finds_exactly_the_tables_it_asks_for(tmp_path: Path) -> None:
    path = tmp_path / "d.duckdb"
    make_file(path)
    pipeline = group_pipeline("lookup", duckdb_destination(str(path)), "raw", tmp_path / "work")
    with pipeline.destination_client() as client:
        query, params = client._get_info_schema_columns_query(None, "raw", list(ASKED))
        assert "unnest" in query and params[-1] == ASKED  # (the list, not one name a place)
        found = {name: {c: column["data_type"] for c, column in columns.items()}
                 for name, columns in client.get_storage_tables(ASKED)}
    assert {name for name, columns in found.items() if columns} == set(ASKED) - {"not there"}
    assert found["plain"] == {"id": "bigint", "amount": "decimal"}
    assert found["Mixed Case"] == {"Col A": "timestamp"}
