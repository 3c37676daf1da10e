"""Change capture in the destination: the spool of changed keys, and a table's changes
applied by key.

The capture step (`pg_to_bq.load.capture`) reads the keys that changed since the last run
from the replication slot and appends them to one table beside the data,
`_pg_to_bq_changes` (table, position, operation, key); only then is the slot advanced.
Each table's step takes the keys spooled for it after the position its state recorded,
reads those rows again from PostgreSQL (the same COPY path as any load: every value exactly
as a snapshot read delivers it), merges them, and deletes the keys PostgreSQL no longer
has. Its state records the new position after the rows, so a run killed anywhere applies
the same keys again, which changes nothing. Spooled keys every captured table has applied
are deleted by the next capture.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pg_to_bq.destinations.duckdb_session import is_missing_relation
from pg_to_bq.destinations.soft_deletes import live as live_row
from pg_to_bq.destinations.soft_deletes import mark_deleted
from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.planning.types import quote_ident
from pg_to_bq.postgres.sql import literal, qualified_name

SPOOL_TABLE = "_pg_to_bq_changes"
# Keys a step reads again by key at most; more (or a truncate) and the table is read whole,
# which costs about the same and is simpler for PostgreSQL.
MAX_KEYS = 50_000
MAX_KEY_SHARE = 0.2
# Spooled instead of a table's keys past MAX_KEYS in one read: the table is read whole.
MANY = "many"
# A run's marker in the spool (table_name '', key: the run's id): it read the slot.
RUN_MARKER = "run"
# Why a table without a primary key is not captured.
NO_KEY = ("no primary key: changes are applied by key (declare one, or name a unique column "
          "set as its primary_key in the tables file and set REPLICA IDENTITY FULL)")
# Keys one destination DELETE names at most.
DELETE_CHUNK = 10_000
# Tables one spool query names at most.
QUERY_TABLES = 200
_INTEGER_TYPES = ("smallint", "integer", "bigint")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


@dataclass(frozen=True)
class Pending:
    """A table's spooled changes after its applied position."""

    keys: int
    last_lsn: int
    truncated: bool
    # More keys changed in one read of the slot than are worth spooling (`MANY`).
    many: bool = False
    # The spooled changes by kind (an update of the key is a delete and an update).
    inserts: int = 0
    updates: int = 0
    deletes: int = 0


@dataclass(frozen=True)
class CaptureState:
    """What a step knows of change capture when it starts: the spool's newest position (a
    table read whole now covers every key spooled up to it), the publication its captured
    tables are in, and the spooled changes (and keys, for tables applied by key) of the
    tables that applied changes before."""

    publication: str
    spool_now: int
    pending: Mapping[str, Pending]
    keys: Mapping[str, list[tuple]]
    # Tables with pending changes that are read whole instead, and why.
    whole: Mapping[str, str]
    # Whether this run read the slot (its capture left a marker): when not (one table
    # materialized on its own, without the catalog step), what is spooled is not all that
    # changed, and the captured tables load by their cursor this time.
    fresh: bool = True


def capture_state(client: Any, publication: str, applied: Mapping[str, int],
                  estimated_rows: Mapping[str, int | None], run_id: str | None = None
                  ) -> CaptureState:
    """The step's `CaptureState`, asked of the destination (a few queries for the step)."""
    now = spool_position(client)
    if run_id is not None and not captured_in(client, run_id):
        return CaptureState(publication, now, {}, {}, {}, fresh=False)
    try:
        found = pending(client, applied) if applied and now else {}
    except Exception as exc:  # noqa: BLE001 - re-raised unless a missing table
        if not is_missing_relation(exc):
            raise
        found = {}
    whole = {name: why for name, changes in found.items()
             if (why := read_whole(changes, estimated_rows.get(name))) is not None}
    keys = spooled_keys(client, {name: (applied[name], changes.last_lsn)
                                 for name, changes in found.items() if name not in whole})
    return CaptureState(publication, now, found, keys, whole)


def pending(client: Any, applied: Mapping[str, int]) -> dict[str, Pending]:
    """Each table's spooled changes after its applied position (`applied`: source table
    name -> position), one query; a table with none is left out."""
    if not applied:
        return {}
    spool = client.make_qualified_table_name(SPOOL_TABLE)
    literal_ = client.capabilities.escape_literal
    names = list(applied)
    found: dict[str, Pending] = {}
    for start in range(0, len(names), QUERY_TABLES):
        chunk = names[start:start + QUERY_TABLES]
        sql = " UNION ALL ".join(
            f"SELECT {i} AS i, count(DISTINCT key) AS n, max(lsn) AS last, "
            f"max(CASE WHEN op = 'truncate' THEN 1 ELSE 0 END) AS t, "
            f"max(CASE WHEN op = '{MANY}' THEN 1 ELSE 0 END) AS m, "
            + ", ".join(f"sum(CASE WHEN op = '{op}' THEN 1 ELSE 0 END) AS {op}s"
                        for op in ("insert", "update", "delete"))
            + f" FROM {spool} WHERE table_name = {literal_(name)} AND lsn > {int(applied[name])}"
            for i, name in enumerate(chunk))
        for index, keys, last, truncated, many, inserts, updates, deletes in \
                client.execute_sql(sql) or []:
            if last is not None:
                found[chunk[int(index)]] = Pending(int(keys), int(last), bool(truncated),
                                                   bool(many), int(inserts or 0),
                                                   int(updates or 0), int(deletes or 0))
    return found


def captured_in(client: Any, run_id: str) -> bool:
    """Whether run `run_id` read the slot (its marker is in the spool)."""
    try:
        rows = client.execute_sql(
            f"SELECT count(*) FROM {client.make_qualified_table_name(SPOOL_TABLE)} WHERE "
            f"table_name = '' AND op = '{RUN_MARKER}' AND "
            f"key = {client.capabilities.escape_literal(run_id)}") or []
    except Exception as exc:  # noqa: BLE001 - re-raised unless a missing table
        if not is_missing_relation(exc):
            raise
        return False
    return bool(rows and rows[0][0])


def spool_position(client: Any) -> int:
    """The newest position in the spool (0 when it is empty or missing)."""
    try:
        rows = client.execute_sql(
            f"SELECT max(lsn) FROM {client.make_qualified_table_name(SPOOL_TABLE)}") or []
    except Exception as exc:  # noqa: BLE001 - re-raised unless a missing table
        if not is_missing_relation(exc):
            raise
        return 0
    return int(rows[0][0] or 0) if rows else 0


def spooled_keys(client: Any, spans: Mapping[str, tuple[int, int]]) -> dict[str, list[tuple]]:
    """The distinct keys spooled for each table (source name) in its span (after, through],
    one query per `QUERY_TABLES` tables."""
    spool = client.make_qualified_table_name(SPOOL_TABLE)
    literal_ = client.capabilities.escape_literal
    found: dict[str, list[tuple]] = {name: [] for name in spans}
    names = list(spans)
    for start in range(0, len(names), QUERY_TABLES):
        condition = " OR ".join(
            f"(table_name = {literal_(name)} AND lsn > {int(spans[name][0])} AND "
            f"lsn <= {int(spans[name][1])})" for name in names[start:start + QUERY_TABLES])
        rows = client.execute_sql(
            f"SELECT DISTINCT table_name, key FROM {spool} WHERE ({condition}) AND "
            f"op NOT IN ('truncate', '{MANY}')") or []
        for table, key in rows:
            found[table].append(tuple(json.loads(key)))
    return found


def read_whole(pending_: Pending, estimated_rows: int | None) -> str | None:
    """Why a table's changes are applied by reading it whole, or None (by key)."""
    if pending_.truncated:
        return "truncated in PostgreSQL: read whole"
    if pending_.many:
        return f"more than {MAX_KEYS:,} changed rows: read whole (cheaper than by key)"
    share = (estimated_rows or 0) * MAX_KEY_SHARE
    if pending_.keys > MAX_KEYS or (estimated_rows and pending_.keys > max(share, 1_000)):
        return f"{pending_.keys:,} changed rows: read whole (cheaper than by key)"
    return None


def _key_types(plan: TablePlan) -> list[str]:
    return [plan.table.column(k).type for k in plan.primary_key]


def key_condition(plan: TablePlan, keys: Sequence[tuple]) -> str:
    """A WHERE condition selecting exactly the rows of `keys` (the primary key's values as
    text): ranges of a single integer key, else a list of typed literals."""
    types = _key_types(plan)
    columns = [quote_ident(k) for k in plan.primary_key]
    present = [k for k in keys if all(v is not None for v in k)]
    if not present:
        return "false"
    if len(columns) == 1 and types[0] in _INTEGER_TYPES:
        # Runs of consecutive keys as ranges, the rest as one array: an index scan each,
        # where thousands of ORed equalities would be tested against every row.
        values = sorted({int(k[0]) for k in present})
        ranges, single, start, previous = [], [], values[0], values[0]
        for value in [*values[1:], None]:
            if value is not None and value == previous + 1:
                previous = value
                continue
            if previous - start >= 2:
                ranges.append((start, previous))
            else:
                single.extend(range(start, previous + 1))
            if value is not None:
                start = previous = value
        column = columns[0]
        parts = [f"{column} BETWEEN {a} AND {b}" for a, b in ranges]
        if single:
            parts.append(f"{column} = ANY('{{{','.join(map(str, single))}}}'::{types[0]}[])")
        return " OR ".join(parts)
    listed = ", ".join("(" + ", ".join(literal(v, t) for v, t in zip(k, types, strict=True)) + ")"
                       for k in present)
    return f"({', '.join(columns)}) IN (VALUES {listed})"


def absent_keys_sql(plan: TablePlan, keys: Sequence[tuple]) -> str:
    """The keys among `keys` that the table no longer has (run in the read's snapshot)."""
    types = _key_types(plan)
    names = [f"k{i}" for i in range(len(types))]
    values = ", ".join(
        "(" + ", ".join(literal(v, t) if v is not None else f"NULL::{t}"
                        for v, t in zip(k, types, strict=True)) + ")"
        for k in keys)
    matches = " AND ".join(f"t.{quote_ident(c)} = v.{n}"
                           for c, n in zip(plan.primary_key, names, strict=True))
    return (f"SELECT {', '.join(f'v.{n}::text' for n in names)} FROM (VALUES {values}) AS "
            f"v({', '.join(names)}) WHERE NOT EXISTS (SELECT 1 FROM {qualified_name(plan)} "
            f"AS t WHERE {matches})")


def delete_keys(client: Any, plan: TablePlan, keys: Sequence[tuple], live: bool = False) -> int:
    """Delete the destination rows of `keys` (text values; integers compared as numbers),
    or mark them deleted, for a table with soft deletes. `live`: the table has the
    soft-delete column, whose marked rows are never deleted (soft deletes turned off)."""
    if not keys:
        return 0
    table = client.make_qualified_table_name(plan.destination_table)
    columns = [client.escape_column_name(plan.column_for(k).name) for k in plan.primary_key]
    types = _key_types(plan)
    quote = client.capabilities.escape_literal

    def value(text: str, pg_type: str) -> str:
        if pg_type in _INTEGER_TYPES:
            return str(int(text))
        if pg_type.startswith("numeric") and _NUMBER.fullmatch(text):
            # A number as a number: BigQuery compares no string with a NUMERIC column.
            return text
        return quote(text)

    size = DELETE_CHUNK if len(columns) == 1 else 500
    for start in range(0, len(keys), size):
        chunk = keys[start:start + size]
        if len(columns) == 1:
            # One IN list: a hash lookup per row, where ORed equalities test each of them.
            condition = f"{columns[0]} IN ({', '.join(value(k[0], types[0]) for k in chunk)})"
        else:
            condition = " OR ".join(
                "(" + " AND ".join(f"{c} = {value(v, t)}"
                                   for c, v, t in zip(columns, k, types, strict=True)) + ")"
                for k in chunk)
        if plan.soft_deletes:
            mark_deleted(client, plan.destination_table, condition)
        else:
            kept = f" AND {live_row(client)}" if live else ""
            client.execute_sql(f"DELETE FROM {table} WHERE ({condition}){kept}")
    return len(keys)


def clean_spool(client: Any, applied: Mapping[str, int], others_through: int = 0,
                run_id: str | None = None) -> None:
    """Delete the spooled keys each table has applied (`applied`: source name -> position),
    and those of every other table up to `others_through`: a table without an applied
    position is read whole by its next step, which covers every key spooled before it."""
    spool = client.make_qualified_table_name(SPOOL_TABLE)
    literal_ = client.capabilities.escape_literal
    names = list(applied)
    statements = []
    for start in range(0, len(names), QUERY_TABLES):
        chunk = names[start:start + QUERY_TABLES]
        condition = " OR ".join(f"(table_name = {literal_(n)} AND lsn <= {int(applied[n])})"
                                for n in chunk)
        statements.append(f"DELETE FROM {spool} WHERE {condition}")
    if others_through:
        kept = ", ".join(literal_(n) for n in [*names, ""])
        statements.append(f"DELETE FROM {spool} WHERE lsn <= {int(others_through)} AND "
                          f"table_name NOT IN ({kept})")
    if run_id is not None:
        # Earlier runs' markers (a run's own steps look for its marker only).
        statements.append(f"DELETE FROM {spool} WHERE table_name = '' AND "
                          f"key <> {literal_(run_id)}")
    for statement in statements:
        try:
            client.execute_sql(statement)
        except Exception as exc:  # noqa: BLE001 - re-raised unless a missing table
            if not is_missing_relation(exc):
                raise
            return  # no change was ever spooled: nothing to clean
