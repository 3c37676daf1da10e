"""Each table's load state, kept in the destination beside its data: `_pg_to_bq_state`.

A row per loaded table: its incremental cursor, the digest of its lookback window's rows,
the source columns it was last loaded with, and the dlt load id. Keyed by the destination
table, so a table keeps its state whichever step loads it (small tables share steps, and
a table moves when it grows), and concurrent loads of different tables never overwrite
each other's (dlt's resource state is one document per pipeline).

A row is written after the table's load succeeded, never before: a table that failed keeps
its previous cursor, and a run killed between the load and this write leaves cursors
behind, which only re-reads rows. Reading and writing are one statement each for a whole
group of tables.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

STATE_TABLE = "_pg_to_bq_state"
_COLUMN_TYPES = {
    "duckdb": ("VARCHAR", "TIMESTAMP WITH TIME ZONE"),
    "bigquery": ("STRING", "TIMESTAMP"),
}


def read_states(pipeline: Any, tables: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The stored state of each of `tables` that has one (none before the first load)."""
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    if not tables:
        return {}
    with pipeline.sql_client() as client:
        literal = client.capabilities.escape_literal
        names = ", ".join(literal(t) for t in tables)
        sql = (f"SELECT table_name, state FROM {client.make_qualified_table_name(STATE_TABLE)} "
               f"WHERE table_name IN ({names}) ORDER BY updated_at")
        try:
            rows = client.execute_sql(sql) or []
        except DatabaseUndefinedRelation:
            return {}
    # Ordered by time: should two rows exist (two writers), the newest wins.
    return {name: json.loads(state) for name, state in rows}


def write_states(pipeline: Any, states: Mapping[str, Mapping[str, Any]]) -> None:
    """Store `states` (destination table → state), replacing their previous rows."""
    if not states:
        return
    kind = pipeline.destination.destination_name
    text, timestamp = _COLUMN_TYPES.get(kind, _COLUMN_TYPES["duckdb"])
    now = datetime.now(UTC).isoformat()
    with pipeline.sql_client() as client:
        literal = client.capabilities.escape_literal
        table = client.make_qualified_table_name(STATE_TABLE)
        client.execute_sql(f"CREATE TABLE IF NOT EXISTS {table} (table_name {text}, "
                           f"state {text}, updated_at {timestamp})")
        names = ", ".join(literal(t) for t in states)
        values = ", ".join(
            f"({literal(name)}, {literal(json.dumps(state, sort_keys=True))}, "
            f"CAST({literal(now)} AS {timestamp}))"
            for name, state in states.items())
        statements = [f"DELETE FROM {table} WHERE table_name IN ({names})",
                      f"INSERT INTO {table} (table_name, state, updated_at) VALUES {values}"]
        if kind == "duckdb":
            with client.begin_transaction():
                for statement in statements:
                    client.execute_sql(statement)
        else:
            # Deleted, then inserted: a failure in between leaves no state, and the table is
            # read whole next time (never a cursor ahead of the data).
            for statement in statements:
                client.execute_sql(statement)
