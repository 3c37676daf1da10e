"""Pure checks on a finished load; the asset turns each `CheckOutcome` into a Dagster check result."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

ROW_COUNT = "row_count_matches_source"
FINGERPRINT = "values_match_source"
FRESHNESS = "cursor_is_fresh"
# Tables up to this many rows have every value compared; larger ones, key ranges. Digesting
# a row costs about as much as loading it: at 5,000 rows the check adds ~9% to a table's load,
# at 20,000 ~22%, while 3 ranges of 1,000 rows cost ~5% at any size.
DEFAULT_FINGERPRINT_ROWS = 5_000


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    severity: str  # "ERROR" or "WARN"
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def reconcile_row_counts(source_rows: int, destination_rows: int, disposition: str) -> CheckOutcome:
    """Source rows (counted in the extraction snapshot) against destination rows.

    A replaced table must match exactly. A merged table with fewer rows than the source
    lost rows (error); with more, rows were deleted in the source since the last delete
    pass (warning until that pass runs).
    """
    difference = destination_rows - source_rows
    metadata = {"source_rows": source_rows, "destination_rows": destination_rows,
                "difference": difference}
    if difference == 0:
        return CheckOutcome(ROW_COUNT, True, "ERROR", "row counts match", metadata)
    if disposition == "merge" and difference > 0:
        return CheckOutcome(
            ROW_COUNT, False, "WARN",
            f"the destination has {difference} more row(s) than the source: rows deleted in "
            "the source since the last delete pass", metadata)
    return CheckOutcome(
        ROW_COUNT, False, "ERROR",
        f"the destination has {abs(difference)} {'fewer' if difference < 0 else 'more'} row(s) "
        "than the source snapshot", metadata)


def row_count_outcome(*, mode: str, disposition: str, destination_rows: int | None,
                      snapshot_rows: int | None, table_rows: int | None,
                      source_rows_after_deletes: int | None = None) -> CheckOutcome | None:
    """The row count check of one load (None when the destination was not counted).

    A whole read is compared with the rows it read (`snapshot_rows`); any other read with
    the whole table in the snapshot the rows were read in (`table_rows`: rows inserted in
    PostgreSQL since are the next run's, not missing ones). After a delete pass, with the
    source's rows in the pass's own snapshot, taken after the load's: fewer rows in the
    destination than there may be rows inserted in between, which the next run loads and
    checks exactly, so that is a warning.
    """
    if destination_rows is None or mode == "window":
        # (A run of one partition loads part of the table: whole tables are compared.)
        return None
    if source_rows_after_deletes is not None:
        outcome = reconcile_row_counts(source_rows_after_deletes, destination_rows, disposition)
        if outcome.passed or destination_rows > source_rows_after_deletes:
            return outcome
        return CheckOutcome(
            ROW_COUNT, False, "WARN",
            f"after the delete pass the destination has {source_rows_after_deletes - destination_rows} "
            "fewer row(s) than the source's snapshot of keys, taken after the load's: rows "
            "inserted in between, which the next run loads (and checks exactly)",
            outcome.metadata)
    if mode == "full" and snapshot_rows is not None:
        return reconcile_row_counts(snapshot_rows, destination_rows, "replace")
    if table_rows is not None:
        return reconcile_row_counts(table_rows, destination_rows, disposition)
    return None


def cursor_freshness(latest: Any, max_age: timedelta, now: datetime | None = None) -> CheckOutcome:
    """Is the newest cursor value in the source recent enough?"""
    now = now or datetime.now(UTC)
    if latest is None:
        return CheckOutcome(FRESHNESS, False, "WARN", "the table has no cursor values",
                            {"max_age_hours": max_age.total_seconds() / 3600})
    if isinstance(latest, datetime):
        value = latest if latest.tzinfo else latest.replace(tzinfo=UTC)
    else:  # a date
        value = datetime(latest.year, latest.month, latest.day, tzinfo=UTC)
    age = now - value
    metadata = {"latest_cursor": value.isoformat(), "age_hours": round(age.total_seconds() / 3600, 2),
                "max_age_hours": max_age.total_seconds() / 3600}
    if age <= max_age:
        return CheckOutcome(FRESHNESS, True, "WARN", "the cursor is fresh", metadata)
    return CheckOutcome(FRESHNESS, False, "WARN",
                        f"the newest row is {metadata['age_hours']} h old", metadata)
