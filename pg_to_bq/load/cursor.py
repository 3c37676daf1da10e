"""Which rows a table's read asks for: the whole table, one partition, or the rows at or
after its stored cursor (minus the lookback). Plain values and SQL, no Arrow: a step decides
this for every table, also for those it then finds unchanged and never reads."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.planning.types import quote_ident
from pg_to_bq.postgres.sql import literal

if TYPE_CHECKING:
    from pg_to_bq.load.results import Window

# The stored cursor in a table's state (`pg_to_bq.load.state`).
CURSOR_STATE_KEY = "pg_to_bq_cursor"


def lookback_of(plan: TablePlan) -> timedelta | None:
    """The lookback applied to the cursor (only timestamp and date cursors have one)."""
    assert plan.cursor is not None
    pg_type = plan.table.column(plan.cursor).type
    if plan.lookback and pg_type.startswith(("timestamp", "date")):
        return timedelta(seconds=int(plan.lookback.total_seconds()))
    return None




def state_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def choose_mode(
    plan: TablePlan, state: dict[str, Any], full_refresh: bool, window: Window | None,
    keeps_columns: bool = False,
) -> tuple[str, str | None, Any]:
    """How a table is read: `full` (whole), `window` (one partition) or `incremental`
    (from its stored cursor, less the lookback), with the condition and the cursor it
    starts from. A small table (`TablePlan.reads_whole`) is read whole, unless its
    destination table keeps columns PostgreSQL no longer has (`keeps_columns`): a whole
    read would replace their history with NULLs, which a merge by cursor keeps for the rows
    it does not touch."""
    if full_refresh or plan.disposition == "replace":
        return "full", None, None
    if window is not None:
        column = quote_ident(window.column)
        pg_type = plan.table.column(window.column).type
        where = (f"{column} >= {literal(window.start, pg_type)} AND "
                 f"{column} < {literal(window.end, pg_type)}")
        return "window", where, window.start
    previous = state.get(CURSOR_STATE_KEY)
    if previous is None or plan.cursor is None or plan.reads_whole and not keeps_columns:
        return "full", None, None
    pg_type = plan.table.column(plan.cursor).type
    bound = literal(previous, pg_type)
    if lookback_of(plan):
        bound = f"{bound} - {literal(f'{int(plan.lookback.total_seconds())} seconds', 'interval')}"
    return "incremental", f"{quote_ident(plan.cursor)} >= {bound}", previous




def written_since(snapshot_xmin: int) -> str:
    """The rows written by a transaction that was running, or not yet begun, when a read's
    snapshot was taken (`snapshot_xmin`: its oldest running transaction, 64-bit), as a
    condition: what that read could not see, whatever their cursor says.

    A cursor column is stamped when the row is written (`now()` is the transaction's
    start), and its transaction may commit after a read has taken a later cursor: a
    transaction longer than the lookback, a row restored or backdated, an update that
    forgot `updated_at`. Compared on the 32-bit `xmin` of each row version, modulo 2^32
    (a row far older than 2^31 transactions can compare as newer: read again, no loss).
    Without an index on `xmin` this is a scan: asked only of tables small enough that
    their row-version token scans them anyway (`row_versions.applies`).
    """
    low = int(snapshot_xmin) % 2**32
    return f"((xmin::text::bigint - {low} + 4294967296) % 4294967296) < 2147483648"
