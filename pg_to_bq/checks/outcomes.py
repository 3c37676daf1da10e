"""Pure checks on a load. A table has one check, `matches_source`: its rows (counted in the
snapshot the rows were read in), its values (`pg_to_bq.checks.fingerprint`, where they
were compared this run), its column types (`pg_to_bq.checks.column_types`, after a load
that created or changed them) and its drift (`pg_to_bq.checks.drift`: whether the
destination changed behind pg_to_bq's back since the last load, or had changed before this
run's whole read replaced it), in one evaluation that names everything that differs. The step
turns it into Dagster's check result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MATCHES_SOURCE = "matches_source"
# The parts of `matches_source`, by the names their metadata is filed under.
ROW_COUNT = "rows"
FINGERPRINT = "values"
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
    if mode == "changes" and table_rows is not None:
        # The changes applied end at the run's capture point; the rows were counted later,
        # in the read's snapshot: rows written in between are the next run's.
        outcome = reconcile_row_counts(table_rows, destination_rows, "merge")
        if outcome.passed:
            return outcome
        return CheckOutcome(
            ROW_COUNT, False, "WARN",
            f"{outcome.description}, counted after this run's capture point: rows written in "
            "PostgreSQL since are the next run's (a difference that stays means rows are lost)",
            outcome.metadata)
    if table_rows is not None:
        return reconcile_row_counts(table_rows, destination_rows, disposition)
    return None


def not_computed(name: str, why: str) -> CheckOutcome:
    """A part of the check that was not computed this run (a partition's run compares no
    whole table, a side failed): said in the check, never a failure of it."""
    return CheckOutcome(name, True, "WARN", why, {"not_computed": True})


def matches_source(parts: Sequence[CheckOutcome], drift: Sequence[str] = (),
                   replaced: Sequence[str] = ()) -> CheckOutcome:
    """The table's one check: `parts` (the row count, values and column types, those that
    ran), `drift` (what changed in the destination since the last load) and `replaced` (what
    had changed there since the last load when this run's whole read replaced it).

    It fails with ERROR when rows, values or types are lost or changed, and with WARN when the
    only difference is rows the delete pass will remove (a merged table keeps rows deleted
    in PostgreSQL until then) or a change made behind pg_to_bq's back that this run's whole
    read already undid (the copy is exact again; something writes to it). Its description
    names every difference; its metadata holds each part's figures.
    """
    failed = [p for p in parts if not p.passed]
    if drift:
        failed.append(CheckOutcome(
            "drift", False, "ERROR",
            "the destination changed since the last load (not by pg_to_bq): "
            + "; ".join(drift)))
    if replaced:
        failed.append(CheckOutcome(
            "drift", False, "WARN",
            "the destination had changed since the last load (not by pg_to_bq), and this "
            "run's whole read replaced it with the source's rows: " + "; ".join(replaced)))
    metadata: dict[str, Any] = {p.name: p.metadata for p in parts if p.metadata}
    if drift:
        metadata["drift"] = list(drift)
    if replaced:
        metadata["drift_replaced"] = list(replaced)
    if not failed:
        said = "; ".join(p.description for p in parts) or "nothing to compare"
        return CheckOutcome(MATCHES_SOURCE, True, "ERROR", said, metadata)
    severity = "ERROR" if any(p.severity == "ERROR" for p in failed) else "WARN"
    return CheckOutcome(MATCHES_SOURCE, False, severity,
                        "; ".join(p.description for p in failed), metadata)
