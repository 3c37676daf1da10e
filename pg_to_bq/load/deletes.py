"""The delete pass for merged tables: remove destination rows whose key left the source.

Merging by primary key never removes anything, so rows deleted in PostgreSQL would live on
in the destination. The pass reads the source's primary keys (through the same COPY path,
in one snapshot), loads them into a keys table beside the destination table, and deletes
the rows without a matching key — in the destination, with one SQL statement. A table with
soft deletes keeps them, marked deleted (`pg_to_bq.destinations.soft_deletes`); its pass
also runs after every whole read, which merges instead of replacing the table.

It must run after the table's own load, never before: a row inserted in the source between
a keys snapshot and a later load would otherwise be loaded and then deleted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from pg_to_bq.destinations.soft_deletes import live as live_row
from pg_to_bq.destinations.soft_deletes import mark_deleted, rows_of
from pg_to_bq.load.fill import clear_stale
from pg_to_bq.planning.tables import TablePlan

KEYS_PREFIX = "_pg_to_bq_keys__"


def keys_plan(plan: TablePlan) -> TablePlan:
    """A plan that reads only the primary key columns into the keys table, replacing it."""
    if not plan.primary_key:
        raise ValueError(f"table {plan.name} has no primary key: nothing to compare")
    columns = tuple(plan.column_for(name) for name in plan.primary_key)
    return dataclasses.replace(
        plan,
        destination_table=KEYS_PREFIX + plan.destination_table,
        columns=columns,
        disposition="replace",
        cursor=None,
        partition=None,
        left_out=(),
        bigquery_partition=None,
        bigquery_cluster=(),
        soft_deletes=False,
    )


def absent_sql(keys_table: str, key_columns: tuple[str, ...], quote) -> str:
    """The condition on `t` (a destination table's row) that its key is not in `keys_table`."""
    condition = " AND ".join(f"k.{quote(c)} = t.{quote(c)}" for c in key_columns)
    return f"NOT EXISTS (SELECT 1 FROM {keys_table} AS k WHERE {condition})"


def delete_absent(plan: TablePlan, client: Any, live: bool = False,
                  stale: Sequence[str] = ()) -> tuple[int, int]:
    """Delete the destination rows of `plan`'s table whose primary key is gone from the
    source, comparing with the source's keys, loaded into the keys table (`keys_plan`) by
    the pass's side load; `client` is an open SQL client of the destination's dataset (one
    for a whole pass).

    A table with soft deletes has them marked deleted instead. `live`: the destination
    table has the soft-delete column, so only its live rows count, and the rows it keeps
    marked are never deleted (soft deletes turned off since).

    `stale`: columns (destination names) whose values were derived another way before this
    run's whole read (a column hashed now, loaded again, ...): in the rows kept for keys
    PostgreSQL no longer has (marked deleted), no value derived the new way exists, so they
    are set to NULL rather than keep, say, the plain value of a column hashed now.

    Returns the number of rows deleted (or marked), and of rows whose `stale` columns were
    set to NULL.
    """
    keys = keys_plan(plan)
    target = client.make_qualified_table_name(plan.destination_table)
    keys_table = client.make_qualified_table_name(keys.destination_table)
    quote = client.escape_column_name
    absent = absent_sql(keys_table, plan.destination_primary_key, quote)
    rows = rows_of(client, plan.destination_table, live, alias="t")
    with client.execute_query(f"SELECT count(*) FROM {rows} WHERE {absent}") as cursor:
        doomed = int(cursor.fetchone()[0])
    if doomed and plan.soft_deletes:
        mark_deleted(client, plan.destination_table, absent, alias="t")
    elif doomed:
        kept = f" AND {live_row(client, 't')}" if live else ""
        client.execute_sql(f"DELETE FROM {target} AS t WHERE {absent}{kept}")
    return doomed, clear_stale(client, target, stale, absent)
