"""Per-table outcomes as a step produces them, for whoever watches in the same process.

Dagster records every outcome in its event log (materializations, check results, the
step's failure); `pg-to-bq sync`, which runs the steps in its own process, also prints a
line per table the moment it is known. A step publishes each table's `TableOutcome`
here; a listener (the CLI) receives it. With no listener, publishing costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class TableOutcome:
    """What happened to one table in a step.

    Attributes:
        table: `schema.table`.
        status: `loaded`, `unchanged` (nothing new to merge), `failed`, or `gone` (not in
            PostgreSQL any more: dropped or renamed).
        rows: Rows read and loaded.
        mode: `full`, `incremental` or `window`.
        seconds: Time spent on the table.
        error: Why it failed, in one line (`failed`), or what happened (`gone`).
        trace: The stack trace of a failure (for `--verbose`).
        notes: Things the user should know: schema changes handled, columns left out or
            renamed.
        failed_checks: Checks that did not pass, with their reason.
        deleted: Rows deleted by a delete pass or by change capture.
        soft_deletes: Those rows are kept, marked deleted (`_pg_to_bq_deleted_at`).
        new: A table new in PostgreSQL, found and loaded by the catalog step.
        reason: Why a table was read whole although its state would have allowed less
            (the destination no longer held the rows its state covered); for an unchanged
            table, how it was found unchanged.
    """

    table: str
    status: str
    rows: int = 0
    mode: str = "-"
    seconds: float = 0.0
    error: str | None = None
    trace: str | None = None
    notes: tuple[str, ...] = ()
    failed_checks: tuple[str, ...] = ()
    deleted: int | None = None
    soft_deletes: bool = False
    new: bool = False
    reason: str | None = None


_listeners: list[Callable[[TableOutcome], None]] = []
_notice_listeners: list[Callable[[str], None]] = []


def publish(outcome: TableOutcome) -> None:
    for listener in list(_listeners):
        listener(outcome)


def notice(line: str) -> None:
    """A line about the run rather than one table (change capture's state, say)."""
    for listener in list(_notice_listeners):
        listener(line)


@contextlib.contextmanager
def listening(listener: Callable[[TableOutcome], None],
              notices: Callable[[str], None] | None = None) -> Iterator[None]:
    """Call `listener` with every outcome published in this process during the block (and
    `notices` with every notice)."""
    _listeners.append(listener)
    if notices is not None:
        _notice_listeners.append(notices)
    try:
        yield
    finally:
        _listeners.remove(listener)
        if notices is not None:
            _notice_listeners.remove(notices)
