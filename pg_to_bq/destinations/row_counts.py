"""The destination's row counts, and which loads it has a record of: asked of a dlt pipeline
or of pg_to_bq's own connection (`pg_to_bq.destinations.duckdb_session`), one query for
many tables."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from pg_to_bq.destinations import query_threads
from pg_to_bq.destinations.soft_deletes import rows_of

# Row counts of this many tables are asked in one query where a query is a round trip
# (BigQuery); DuckDB's are asked a few tables a query (`destination_counts`).
COUNT_QUERY_TABLES = 200
# dlt's record of its loads (dlt's `LOADS_TABLE_NAME`; a test keeps the two equal).
LOADS_TABLE = "_dlt_loads"


def destination_counts(queries: Any, tables: Sequence[str], load_ids: Sequence[str] = (),
                       live: Collection[str] = ()) -> tuple[dict[str, int], set[str]]:
    """Rows in each of `tables` (destination names; only the live rows of those in `live`,
    which keep soft-deleted rows), and which of `load_ids` the destination has a record of
    (`_dlt_loads`): one query per 200 tables where each query is a round trip (BigQuery);
    in DuckDB a few tables a query, over its query connections
    (`pg_to_bq.destinations.query_threads`). DuckDB pins a block of every table a query
    counts at once, so a query of 200 tables needed ~50 MB of its buffer pool: a
    `memory_limit` a user set lower failed every table of a step after their load."""
    counts: dict[str, int] = {}
    known: set[str] = set()
    items: list[tuple[str, str]] = [("table", t) for t in tables] + \
        [("load", i) for i in load_ids]
    if not items:
        return counts, known
    with queries.sql_client() as client:
        literal = client.capabilities.escape_literal
        loads = client.make_qualified_table_name(LOADS_TABLE)

        def count_sql(chunk: Sequence[tuple[str, str]]) -> str:
            return " UNION ALL ".join(
                f"SELECT {i} AS i, count(*) AS n FROM {rows_of(client, name, name in live)}"
                if kind == "table" else
                f"SELECT {i} AS i, count(*) AS n FROM {loads} WHERE load_id = {literal(name)}"
                for i, (kind, name) in enumerate(chunk))

        parts = query_threads.chunks_for(client, items, COUNT_QUERY_TABLES)
        for chunk, answer in zip(parts, query_threads.answers(client, [count_sql(c) for c in parts]),
                                 strict=True):
            if isinstance(answer, Exception):
                raise answer
            for i, n in answer:
                kind, name = chunk[int(i)]
                if kind == "table":
                    counts[name] = int(n)
                elif int(n):
                    known.add(name)
    return counts, known


@contextlib.contextmanager
def one_connection(queries: Any) -> Iterator[None]:
    """Within a write section, every DuckDB client (of a dlt pipeline, or of pg_to_bq's own
    `DuckDBFile`) uses one open connection: dlt opens the file for each client it makes (a
    dozen per group: load jobs, state, schema queries), and opening a file holding 1,000
    tables takes ~40 ms with a checkpoint on each close, a fifth of loading 1,000 small
    tables. The connection closes at the end of the section, so another process can take
    the file."""
    if queries.destination.destination_name != "duckdb":
        yield
        return
    with queries.sql_client():
        yield
