"""The destination's row counts, and which loads it has a record of: asked of a dlt pipeline
or of pg_to_bq's own connection (`pg_to_bq.destinations.duckdb_session`), one query for
many tables."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from pg_to_bq.destinations.soft_deletes import rows_of

# Row counts of this many tables are asked of the destination in one query.
COUNT_QUERY_TABLES = 200
# dlt's record of its loads (dlt's `LOADS_TABLE_NAME`; a test keeps the two equal).
LOADS_TABLE = "_dlt_loads"


def destination_counts(queries: Any, tables: Sequence[str], load_ids: Sequence[str] = (),
                       live: Collection[str] = ()) -> tuple[dict[str, int], set[str]]:
    """Rows in each of `tables` (destination names; only the live rows of those in `live`,
    which keep soft-deleted rows), and which of `load_ids` the destination has a record of
    (`_dlt_loads`), asked in one query per 200 tables."""
    counts: dict[str, int] = {}
    known: set[str] = set()
    items: list[tuple[str, str]] = [("table", t) for t in tables] + \
        [("load", i) for i in load_ids]
    if not items:
        return counts, known
    with queries.sql_client() as client:
        literal = client.capabilities.escape_literal
        loads = client.make_qualified_table_name(LOADS_TABLE)
        for start in range(0, len(items), COUNT_QUERY_TABLES):
            chunk = items[start:start + COUNT_QUERY_TABLES]
            sql = " UNION ALL ".join(
                f"SELECT {i} AS i, count(*) AS n FROM {rows_of(client, name, name in live)}"
                if kind == "table" else
                f"SELECT {i} AS i, count(*) AS n FROM {loads} WHERE load_id = {literal(name)}"
                for i, (kind, name) in enumerate(chunk))
            with client.execute_query(sql) as cursor:
                for i, n in cursor.fetchall():
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
