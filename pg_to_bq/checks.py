"""Pure checks on a finished load; the asset turns each `CheckOutcome` into a Dagster check result."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pg_to_bq.catalog import Table

ROW_COUNT = "row_count_matches_source"
SCHEMA_DRIFT = "schema_unchanged_since_discovery"
FRESHNESS = "cursor_is_fresh"


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


def schema_drift(planned: Table, live: Table | None) -> CheckOutcome:
    """Columns added, dropped or retyped in PostgreSQL since the catalog snapshot was taken."""
    if live is None:
        return CheckOutcome(SCHEMA_DRIFT, False, "WARN", "the table was not found in PostgreSQL")
    before = {c.name: c.type for c in planned.columns}
    after = {c.name: c.type for c in live.columns}
    added = sorted(set(after) - set(before))
    dropped = sorted(set(before) - set(after))
    retyped = sorted(f"{n}: {before[n]} → {after[n]}" for n in set(before) & set(after)
                     if before[n] != after[n])
    metadata = {"added": ", ".join(added) or "-", "dropped": ", ".join(dropped) or "-",
                "retyped": ", ".join(retyped) or "-"}
    if not (added or dropped or retyped):
        return CheckOutcome(SCHEMA_DRIFT, True, "WARN", "no change since discovery", metadata)
    parts = [f"added {added}" if added else "", f"dropped {dropped}" if dropped else "",
             f"retyped {retyped}" if retyped else ""]
    return CheckOutcome(
        SCHEMA_DRIFT, False, "WARN",
        "PostgreSQL changed since the catalog snapshot (" + "; ".join(p for p in parts if p)
        + "); run `pg-to-bq discover` and reload the code location", metadata)


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
