"""Fill columns added in PostgreSQL for the rows a merged table already holds.

A merge loads only rows whose cursor moved; a new column would stay NULL in every other
row. So the key and the new columns of every row are read (through the same COPY path, in
one snapshot) into a table beside the destination table, and the existing rows are
updated from it by key, in the destination, with one statement. Reading two or three
columns of a table costs far less than reading all of them again, and columns dropped in
PostgreSQL keep their history (a reload would empty them).

It runs after the table's own load in the same run: rows the load read later than the
fill's snapshot are read again by the next incremental run, whose cursor covers them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from pg_to_bq.planning.tables import TablePlan

FILL_PREFIX = "_pg_to_bq_fill__"


def fill_plan(plan: TablePlan, columns: Sequence[str]) -> TablePlan:
    """A plan reading the key and `columns` (destination names) into the fill table."""
    wanted = set(columns)
    keep = [c for c in plan.columns if c.source.name in plan.primary_key or c.name in wanted]
    return dataclasses.replace(
        plan, destination_table=FILL_PREFIX + plan.destination_table, columns=tuple(keep),
        disposition="replace", cursor=None, partition=None, bigquery_partition=None,
        bigquery_cluster=(), soft_deletes=False)


def clear_stale(client: Any, target: str, stale: Sequence[str], gone: str) -> int:
    """Set the `stale` columns (destination names: values derived another way than this
    run's) to NULL in the rows of `target` (a qualified name, aliased `t`) matching `gone`
    (the rows PostgreSQL no longer has, which no value derived the new way exists for);
    returns how many rows."""
    if not stale:
        return 0
    with client.execute_query(f"SELECT count(*) FROM {target} AS t WHERE {gone}") as cursor:
        cleared = int(cursor.fetchone()[0])
    if cleared:
        nulls = ", ".join(f"{client.escape_column_name(c)} = NULL" for c in stale)
        client.execute_sql(f"UPDATE {target} AS t SET {nulls} WHERE {gone}")
    return cleared


def fill_from(plan: TablePlan, columns: Sequence[str], client: Any,
              stale: Sequence[str] = ()) -> tuple[int, int]:
    """Set `columns` (destination names) of every existing row of `plan`'s table to the
    source's values, by primary key, from its fill table (`fill_plan`), which the side load
    loaded; `client` is an open SQL client of the destination's dataset (one for all the
    fills of a group). `stale`: those of `columns` whose values in the destination were
    derived another way (a column added back, hashed now, …); in the rows PostgreSQL no
    longer has (kept as soft deletes, or not yet removed by a delete pass) they are set to
    NULL, as no value derived the new way exists. Returns the rows updated and the rows set
    to NULL."""
    side = fill_plan(plan, columns)
    quote = client.escape_column_name
    target = client.make_qualified_table_name(plan.destination_table)
    fill = client.make_qualified_table_name(side.destination_table)
    keys = plan.destination_primary_key
    assignments = ", ".join(f"{quote(c)} = f.{quote(c)}" for c in columns)
    matches = " AND ".join(f"t.{quote(k)} = f.{quote(k)}" for k in keys)
    with client.execute_query(f"SELECT count(*) FROM {target} AS t WHERE EXISTS "
                              f"(SELECT 1 FROM {fill} AS f WHERE {matches})") as cursor:
        rows = int(cursor.fetchone()[0])
    client.execute_sql(f"UPDATE {target} AS t SET {assignments} FROM {fill} AS f "
                       f"WHERE {matches}")
    cleared = clear_stale(client, target, stale,
                          f"NOT EXISTS (SELECT 1 FROM {fill} AS f WHERE {matches})")
    # Emptied, not dropped: the side pipeline's schema still lists the table, so dlt
    # would not create it again.
    client.execute_sql(f"DELETE FROM {fill} WHERE 1 = 1")
    return rows, cleared
