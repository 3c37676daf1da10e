"""A group's questions to a DuckDB file, asked on two connections at once.

The checks after a load (the values check's destination side, the whole-table figures)
ask one query for many tables. DuckDB spends such a query binding and planning its
expressions (~2.5 ms a table; executing it over 1,000-row tables is nearly free), on the
calling thread and without Python's lock. One after another, fifty tables a query, they
kept one core busy while the other waited: ~4.8 s of a 1,000-table first sync. Here the
statements of one call run on two cursors of the client's connection (connections of
their own to the same database), the calling thread asking half of them, and cover fewer
tables each (`DUCKDB_QUERY_TABLES`).

The statements name their tables in full and depend on no session setting (the time zone
is set for the whole database), so a cursor answers them as the client would. Elsewhere
(BigQuery) the statements run one after another on the client, as before.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# Connections a call's statements are spread over: the load is done when these run, so
# nothing else of the step competes (on one core the two take turns, as one would alone).
QUERY_CONNECTIONS = 2
# Tables one DuckDB query covers. DuckDB holds a query's plan (hundreds of expressions for
# fifty tables) while it runs, and two run at once: at 1,000 tables, fifty a query peaked
# at 425 MB, twelve at 402 MB (one query of fifty at a time: 414 MB), for the same time.
DUCKDB_QUERY_TABLES = 12


def chunks(items: Sequence[T], most: int, ways: int = QUERY_CONNECTIONS) -> list[Sequence[T]]:
    """`items` in chunks of at most `most`, at least `ways` of them (when there are that
    many items), of sizes that differ by one at most, in order."""
    if not items:
        return []
    count = min(len(items), max(ways, math.ceil(len(items) / most)))
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def chunks_for(client: Any, items: Sequence[T], most: int) -> list[Sequence[T]]:
    """`items` (tables) in the chunks `client` is asked them in: at most `most` a query
    where each query is a round trip (BigQuery); in DuckDB, `DUCKDB_QUERY_TABLES` a query,
    spread over its connections."""
    if duckdb_connection(client) is None:
        return chunks(items, most, 1)
    return chunks(items, min(most, DUCKDB_QUERY_TABLES), QUERY_CONNECTIONS)


def duckdb_connection(client: Any) -> Any | None:
    """The DuckDB connection under `client`, pg_to_bq's (`DuckDBClient.connection`) or dlt's
    (`native_connection`), or None for any other client. A process that has not imported
    DuckDB has no DuckDB connection: it is not imported here for the question (a BigQuery
    load never imports it)."""
    duckdb = sys.modules.get("duckdb")
    if duckdb is None:
        return None
    for name in ("connection", "native_connection"):
        connection = getattr(client, name, None)
        if isinstance(connection, duckdb.DuckDBPyConnection):
            return connection
    return None


def answers(client: Any, statements: Sequence[str]) -> list[list[tuple] | Exception]:
    """The rows of each of `statements` (or the exception it raised), in order; on a DuckDB
    client, over `QUERY_CONNECTIONS` cursors at once (see the module's docstring): the
    calling thread asks its share on one, the process's query threads the rest."""
    connection = duckdb_connection(client) if len(statements) > 1 else None
    if connection is None:
        return [_rows(lambda s: client.execute_sql(s) or [], s) for s in statements]
    count = min(QUERY_CONNECTIONS, len(statements))
    cursors = [connection.cursor() for _ in range(count)]
    try:
        def run(way: int) -> list[tuple[int, list[tuple] | Exception]]:
            cursor = cursors[way]
            return [(i, _rows(lambda s: cursor.execute(s).fetchall(), statements[i]))
                    for i in range(way, len(statements), count)]

        others = [_pool().submit(run, way) for way in range(1, count)]
        found = dict(run(0))
        for other in others:
            found.update(other.result())
    finally:
        for cursor in cursors:
            cursor.close()
    return [found[i] for i in range(len(statements))]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The process's query threads, made once and kept for later calls (a step asks twice,
    a run of 1,000 tables ~60 times)."""
    return ThreadPoolExecutor(QUERY_CONNECTIONS - 1,
                              thread_name_prefix="pg_to_bq-destination-query")


def _rows(ask: Any, statement: str) -> list[tuple] | Exception:
    try:
        return list(ask(statement))
    except Exception as exc:  # noqa: BLE001 - handed to the caller, which says what failed
        return exc
