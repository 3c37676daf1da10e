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

A state is only as good as the rows it covers: each row also records how many rows the
destination table held when it was written (`ROWS_KEY`), and a run trusts it only while
the table still holds that many and the destination still knows its load (`doubt`). A
table dropped, truncated or trimmed by hand, a state restored from another time, or a
reload that did not finish (its state is replaced by `invalidated(...)` before its rows
are removed) make the next run read the table whole, saying why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pg_to_bq.destinations.duckdb_session import is_missing_relation

log = logging.getLogger(__name__)

STATE_TABLE = "_pg_to_bq_state"
_COLUMN_TYPES = {
    "duckdb": ("VARCHAR", "TIMESTAMP WITH TIME ZONE"),
    "bigquery": ("STRING", "TIMESTAMP"),
}


# The destination table's rows when the state was written.
ROWS_KEY = "destination_rows"
LOAD_ID_KEY = "load_id"
# The PostgreSQL table's object id: a table dropped and created again under the same name
# is another table, whose rows the state does not cover.
SOURCE_OID_KEY = "source_oid"
# Set instead of a state when the rows it covered are being (or were) removed.
INVALIDATED_KEY = "invalidated"
# Set while a load of the table runs: left behind, the load was killed after (perhaps) it
# wrote rows and before it recorded them (the cursor is behind them, which only re-reads).
LOADING_KEY = "loading"


def invalidated(reason: str) -> dict[str, Any]:
    """The state of a table whose rows are about to be removed or are known to be wrong:
    nothing to trust, and why."""
    return {INVALIDATED_KEY: reason}


def doubt(state: Mapping[str, Any], *, exists: bool, rows: int | None,
          load_known: bool, source_oid: int | None = None) -> str | None:
    """Why `state` cannot be trusted for the destination table as it is now (`exists`,
    holding `rows`; `load_known`: the destination has a record of the state's load) and the
    PostgreSQL table now (`source_oid`), or None when it can. A table without a state has
    nothing to trust."""
    if not state:
        return None
    if INVALIDATED_KEY in state:
        return str(state[INVALIDATED_KEY])
    stored_oid = state.get(SOURCE_OID_KEY)
    if stored_oid is not None and source_oid is not None and stored_oid != source_oid:
        return ("the PostgreSQL table was dropped and created again under its name since its "
                "last load")
    if not exists:
        return "the destination table is missing"
    recorded = state.get(ROWS_KEY)
    if recorded is None:
        return "its stored state has no row count (written by an earlier pg_to_bq)"
    if rows != recorded:
        shown = "?" if rows is None else f"{rows:,}"
        return f"the destination table holds {shown} row(s) where its last load left {recorded:,}"
    if not load_known:
        return (f"its state names load {state.get(LOAD_ID_KEY)}, which the destination has no "
                "record of (a state or dataset restored from another time)")
    return None


def read_states(pipeline: Any, tables: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The stored state of each of `tables` that has one (none before the first load)."""
    if not tables:
        return {}
    with pipeline.sql_client() as client:
        literal = client.capabilities.escape_literal
        names = ", ".join(literal(t) for t in tables)
        sql = (f"SELECT table_name, state FROM {client.make_qualified_table_name(STATE_TABLE)} "
               f"WHERE table_name IN ({names}) ORDER BY updated_at")
        try:
            rows = client.execute_sql(sql) or []
        except Exception as exc:  # noqa: BLE001 - re-raised unless a missing table
            if not is_missing_relation(exc):
                raise
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
