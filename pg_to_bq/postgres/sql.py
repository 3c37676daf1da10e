"""The SQL pg_to_bq sends PostgreSQL to read a table: the session it reads in, the SELECT
of its columns, its quoted name, literals for cursor and window bounds. Every identifier is
quoted; nothing from the catalog or settings is pasted in unquoted."""

from __future__ import annotations

from datetime import date, datetime

from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.planning.types import ColumnMapping, quote_ident

# Session settings every reading transaction uses, so text forms never depend on the
# server's or the role's defaults (interval and date styles, time zone, float digits).
SESSION = (
    "SET LOCAL IntervalStyle = 'iso_8601'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
)


def guarded(plan: TablePlan) -> list[ColumnMapping]:
    """The columns read with a guard (`ColumnMapping.guard_sql`) beside their value."""
    return [c for c in plan.columns if c.guard_sql]


def qualified_name(plan: TablePlan) -> str:
    return f"{quote_ident(plan.table.schema)}.{quote_ident(plan.table.name)}"


def select_sql(plan: TablePlan, where: str | None = None) -> str:
    """The SELECT that reads `plan`'s columns, then their guards; every identifier quoted."""
    columns = [f"{c.select_sql} AS {quote_ident(c.name)}" for c in plan.columns]
    columns += [f"{c.guard_sql} AS {quote_ident(f'__pg_to_bq_guard_{i}')}"
                for i, c in enumerate(guarded(plan))]
    sql = f"SELECT {', '.join(columns)} FROM {qualified_name(plan)}"
    return f"{sql} WHERE {where}" if where else sql


def literal(value: object, pg_type: str) -> str:
    """A safely quoted SQL literal with an explicit cast, for cursor and window bounds."""
    text = value.isoformat() if isinstance(value, datetime | date) else str(value)
    return "'" + text.replace("'", "''") + "'::" + pg_type
