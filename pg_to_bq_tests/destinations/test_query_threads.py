"""A check's queries to a DuckDB file on two connections at once
(`pg_to_bq.destinations.query_threads`): chunking (pure), then a real DuckDB file through
pg_to_bq's client and through a dlt pipeline's."""

from __future__ import annotations

import threading
from pathlib import Path

import dlt
import pytest

from pg_to_bq.destinations.duckdb_session import DuckDBFile
from pg_to_bq.destinations.query_threads import (
    DUCKDB_QUERY_TABLES,
    QUERY_CONNECTIONS,
    answers,
    chunks,
    chunks_for,
)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 49, 50, 51, 64, 100, 101, 1000])
@pytest.mark.parametrize("most", [1, 7, 50])
def test_chunks_keep_every_item_in_order_within_the_bound_and_balanced(count: int, most: int):
    items = list(range(count))
    parts = chunks(items, most)
    assert [i for part in parts for i in part] == items
    assert all(1 <= len(part) <= most for part in parts)
    if parts:
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        # Spread over the connections whenever there are enough items.
        assert len(parts) >= min(count, QUERY_CONNECTIONS)


def test_sixty_four_tables_are_asked_as_two_equal_queries():
    """(A step of 64 tables once asked 50, then 14: one connection did most of the work.)"""
    assert [len(p) for p in chunks(list(range(64)), 50)] == [32, 32]


def _meeting(connection) -> None:
    """`meet(x)`: returns x once two statements are inside it at the same time; raises after
    20 s alone (statements asked one after another never meet)."""
    barrier = threading.Barrier(2, timeout=20)

    def meet(x: int) -> int:
        barrier.wait()
        return x

    connection.create_function("meet", meet, ["BIGINT"], "BIGINT", side_effects=True)


def test_statements_run_at_once_and_answer_in_order(tmp_path: Path):
    file = DuckDBFile(str(tmp_path / "q.duckdb"), "raw", {})
    with file.sql_client() as client:
        client.execute_sql("CREATE SCHEMA raw")
        client.execute_sql("CREATE TABLE raw.t AS SELECT range AS id FROM range(10)")
        _meeting(client.connection)
        # DuckDB: small queries (a query's plan is held while it runs), over both connections.
        parts = chunks_for(client, list(range(64)), 50)
        assert len(parts) >= QUERY_CONNECTIONS and max(map(len, parts)) <= DUCKDB_QUERY_TABLES
        found = answers(client, ["SELECT meet(1)", "SELECT meet(2)",
                                 "SELECT count(*), sum(id) FROM raw.t", "SELECT 4"])
    assert found == [[(1,)], [(2,)], [(10, 45)], [(4,)]]


def test_a_failing_statement_is_its_own_answer_and_the_others_are_answered(tmp_path: Path):
    file = DuckDBFile(str(tmp_path / "q.duckdb"), "raw", {})
    with file.sql_client() as client:
        found = answers(client, ["SELECT 1", "SELECT * FROM raw.missing", "SELECT 3"])
    assert found[0] == [(1,)] and found[2] == [(3,)]
    assert isinstance(found[1], Exception) and "missing" in str(found[1])


def test_a_dlt_pipelines_duckdb_client_is_asked_on_cursors_of_its_connection(tmp_path: Path):
    """After a load, the checks ask through the group's dlt pipeline."""
    pipeline = dlt.pipeline(pipeline_name="query_threads", destination=dlt.destinations.duckdb(
        str(tmp_path / "d.duckdb")), dataset_name="raw", pipelines_dir=str(tmp_path / "p"))
    pipeline.run([{"id": i} for i in range(5)], table_name="t")
    with pipeline.sql_client() as client:
        _meeting(client.native_connection)
        table = client.make_qualified_table_name("t")
        found = answers(client, ["SELECT meet(7)", "SELECT meet(8)",
                                 f"SELECT count(*) FROM {table}"])
    assert found == [[(7,)], [(8,)], [(5,)]]


class _Client:
    """A client with no DuckDB connection under it (as BigQuery's): asked in turn."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def execute_sql(self, sql: str):
        self.asked.append(sql)
        if sql == "bad":
            raise ValueError("refused")
        return [(sql,)]


def test_any_other_client_is_asked_one_statement_after_another():
    """(BigQuery: its tables are not split into more queries than their number needs.)"""
    client = _Client()
    assert [len(p) for p in chunks_for(client, list(range(80)), 50)] == [40, 40]
    assert [len(p) for p in chunks_for(client, list(range(30)), 50)] == [30]
    found = answers(client, ["a", "bad", "c"])
    assert client.asked == ["a", "bad", "c"]
    assert found[0] == [("a",)] and found[2] == [("c",)]
    assert isinstance(found[1], ValueError)
