"""Soft deletes: rows deleted in PostgreSQL kept in the destination, marked as deleted.

A table with soft deletes (`TablePlan.soft_deletes`: the `PG_TO_BQ_SOFT_DELETES` setting,
or `soft_deletes` in the tables file) has one more column, `_pg_to_bq_deleted_at`
(TIMESTAMP): NULL while PostgreSQL has the row, and the time pg_to_bq found the row
deleted once it has not. A row inserted again under the same key is live again: a merge
writes the whole row, the column NULL.

Every comparison with the source (row counts, the values check, the drift figures, the row
count a table's state records) reads only the live rows of a table whose destination has
the column, whatever the setting says now: a mirror that turns soft deletes off keeps the
rows it marked, and they never count as rows PostgreSQL lacks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from pg_to_bq.planning.naming import SOFT_DELETE_COLUMN, SOFT_DELETE_DESCRIPTION

# The alias of a table's live rows in a query's FROM clause.
LIVE_ALIAS = "live_rows"
# The column, for dlt.
HINT = {"name": SOFT_DELETE_COLUMN, "data_type": "timestamp", "timezone": True,
        "precision": 6, "nullable": True, "description": SOFT_DELETE_DESCRIPTION}
# What dlt creates for `HINT` in each destination (a test keeps them equal).
COLUMN_TYPES = {"duckdb": "TIMESTAMP WITH TIME ZONE", "bigquery": "TIMESTAMP"}


def live_tables(columns_now: Mapping[str, Collection[str]]) -> set[str]:
    """The destination tables (of `columns_now`: table -> its columns) that keep
    soft-deleted rows."""
    return {table for table, columns in columns_now.items() if SOFT_DELETE_COLUMN in columns}


def live(client: Any, alias: str | None = None) -> str:
    """The condition that a row (of `alias`, when given) is live: not marked deleted."""
    column = client.escape_column_name(SOFT_DELETE_COLUMN)
    return f"{alias}.{column} IS NULL" if alias else f"{column} IS NULL"


def rows_of(client: Any, table: str, live_only: bool, alias: str | None = None) -> str:
    """What a query reads `table`'s rows from (as `alias`, when given): the table, or only
    its live rows."""
    qualified = client.make_qualified_table_name(table)
    if not live_only:
        return f"{qualified} AS {alias}" if alias else qualified
    return f"(SELECT * FROM {qualified} WHERE {live(client)}) AS {alias or LIVE_ALIAS}"


def add_column(queries: Any, table: str) -> None:
    """Give `table` the column (a table loaded before soft deletes were turned on, and not
    loaded since); dlt finds it there when it next loads the table, and leaves it."""
    type_ = COLUMN_TYPES[queries.destination.destination_name]
    with queries.sql_client() as client:
        client.execute_sql(f"ALTER TABLE {client.make_qualified_table_name(table)} ADD COLUMN "
                           f"{client.escape_column_name(SOFT_DELETE_COLUMN)} {type_}")


def mark_deleted(client: Any, table: str, condition: str, alias: str | None = None) -> None:
    """Mark the live rows of `table` that match `condition` (SQL over its columns; over
    `alias`'s, when given) as deleted now."""
    qualified = client.make_qualified_table_name(table)
    column = client.escape_column_name(SOFT_DELETE_COLUMN)
    target = f"{qualified} AS {alias}" if alias else qualified
    client.execute_sql(f"UPDATE {target} SET {column} = CURRENT_TIMESTAMP "
                       f"WHERE {live(client)} AND ({condition})")


def keep_aside(client: Any, table: str, now: datetime | None = None) -> tuple[str, int] | None:
    """Before `table` is dropped to load it again (a column's type changed in a way the
    destination cannot change in place), copy its soft-deleted rows, with their old
    column types, into a table of their own; returns its name and rows, or None when
    there is none to keep."""
    qualified = client.make_qualified_table_name(table)
    column = client.escape_column_name(SOFT_DELETE_COLUMN)
    rows = client.execute_sql(f"SELECT count(*) FROM {qualified} WHERE {column} IS NOT NULL")
    count = int(rows[0][0]) if rows else 0
    if not count:
        return None
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    name = f"{table}__deleted_before_{stamp}"
    client.execute_sql(f"CREATE TABLE {client.make_qualified_table_name(name)} AS SELECT * "
                       f"FROM {qualified} WHERE {column} IS NOT NULL")
    return name, count
