"""The fingerprint's destination side: one query for many loaded tables, in DuckDB's or BigQuery's dialect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pg_to_bq.checks.fingerprint import bigquery, duckdb
from pg_to_bq.checks.fingerprint.scope import MODULUS, Kind, Scope, quote_for
from pg_to_bq.checks.fingerprint.sql import Dialect, select_parts
from pg_to_bq.planning.tables import TablePlan


def destination_sql(plan: TablePlan, kind: Kind, qualified_table: str, scope: Scope) -> str:
    """One SELECT returning one row: the fingerprint of the loaded table.

    Args:
        plan: The table's plan (destination column names and types).
        kind: `duckdb` or `bigquery`.
        qualified_table: The loaded table, qualified and quoted for `kind` (as dlt's
            `sql_client.make_qualified_table_name` or `qualified_name` returns it).
        scope: The scope the source side was computed over.
    """
    select, source = select_parts(plan, scope, dialect_for(kind), qualified_table,
                             scope.destination_where(kind))
    return f"SELECT {', '.join(select)} FROM {source}"


def destination_sql_many(items: Sequence[tuple[TablePlan, str, Scope]], kind: Kind) -> str:
    """One query for many tables (one round trip, which matters on BigQuery).

    Returns a row per item: its index in `items`, then the values `destination_sql` would
    return, as text and padded with NULLs to a common width (UNION ALL needs one type per
    column; DuckDB would otherwise unify HUGEINT and DECIMAL as DOUBLE). An index rather
    than the table's name: nothing from the catalog needs quoting as a string literal.
    `split_many` gives each item's row to `parse`.
    """
    dialect = dialect_for(kind)
    text = "VARCHAR" if kind == "duckdb" else "STRING"
    parts = [select_parts(plan, scope, dialect, table, scope.destination_where(kind))
             for plan, table, scope in items]
    width = max((len(select) for select, _ in parts), default=1)
    selects = []
    for index, (select, source) in enumerate(parts):
        values = [f"CAST({v} AS {text})" for v in select]
        values += [f"CAST(NULL AS {text})"] * (width - len(select))
        selects.append(f"SELECT {index} AS item, {', '.join(values)} FROM {source}")
    return " UNION ALL ".join(selects)


def split_many(rows: Sequence[Sequence[Any]]) -> dict[int, Sequence[Any]]:
    """`destination_sql_many`'s rows by item index, each as `parse` takes it."""
    return {int(row[0]): tuple(row[1:]) for row in rows}


def dialect_for(kind: str) -> Dialect:
    if kind == "duckdb":
        return Dialect(quote_for("duckdb"), duckdb.inner, duckdb.aggregates, f"({{}} % {MODULUS})")
    if kind == "bigquery":
        return Dialect(quote_for("bigquery"), bigquery.inner, bigquery.aggregates,
                        f"MOD({{}}, {MODULUS})")
    raise ValueError(f"unknown destination kind {kind!r} (duckdb or bigquery)")
