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
