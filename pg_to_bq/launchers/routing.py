"""Where a run executes, ECS or Lambda: the routing policy as pure functions.

The routing run launcher (`pg_to_bq.launchers.router`) gathers the inputs (run tags, the
estimated size of the tables the run loads) and records the decision; the policy itself
lives here so it can be read, and tested, without Dagster.

The policy, in order:

1. A run tagged `pg_to_bq/compute: ecs` goes to ECS.
2. A full refresh (`pg_to_bq/full_refresh: true`) or a backfill (`dagster/backfill`) of
   tables estimated above `lambda_max_rows` goes to ECS, even when tagged
   `pg_to_bq/compute: lambda`: such a run reloads whole tables and would be cut off by
   Lambda's 15-minute limit half way.
3. A run tagged `pg_to_bq/compute: lambda` goes to Lambda.
4. Otherwise the estimate decides: unknown size, more than `lambda_max_tables` tables or
   more than `lambda_max_rows` rows go to ECS; the rest to Lambda.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

COMPUTE_TAG = "pg_to_bq/compute"
"""Run tag: the compute a run asks for (`lambda` or `ecs`); the router records its choice here."""

COMPUTE_REASON_TAG = "pg_to_bq/compute_reason"
"""Run tag the router writes: why the run went where it went."""

FULL_REFRESH_TAG = "pg_to_bq/full_refresh"
"""Run tag marking a full refresh (`true`): tables are reloaded from scratch."""

ESTIMATED_ROWS_TAG = "pg_to_bq/estimated_rows"
"""Run tag with the run's estimated row count, used when the code location cannot be asked."""

ESTIMATED_ROWS_METADATA_KEY = "pg_to_bq/estimated_rows"
"""Definition metadata key holding a table asset's estimated row count."""

BACKFILL_TAG = "dagster/backfill"
"""Tag Dagster puts on every run that belongs to a backfill."""

ECS: Literal["ecs"] = "ecs"
LAMBDA: Literal["lambda"] = "lambda"
Target = Literal["ecs", "lambda"]
TARGETS: tuple[Target, ...] = (ECS, LAMBDA)

_TRUE_VALUES = frozenset({"true", "1", "yes"})


@dataclass(frozen=True)
class SizeEstimate:
    """How much a run loads, as far as is known before it starts.

    Attributes:
        rows: Estimated rows over all tables of the run, or None when unknown.
        tables: Number of tables the estimate covers, or None when unknown.
        source: Where the estimate came from, for the recorded reason.
    """

    rows: int | None
    tables: int | None = None
    source: str = "unknown"

    def describe(self) -> str:
        if self.rows is None:
            return f"size unknown ({self.source})"
        tables = "" if self.tables is None else f" in {self.tables} table(s)"
        return f"~{self.rows:,} rows{tables} ({self.source})"


UNKNOWN_SIZE = SizeEstimate(rows=None, tables=None, source="no estimate on the assets or tags")


@dataclass(frozen=True)
class Decision:
    """Where a run goes and why.

    Attributes:
        target: `"ecs"` or `"lambda"`.
        reason: One sentence for humans, recorded on the run.
    """

    target: Target
    reason: str


def _int_or_none(value: Any) -> int | None:
    """An int from an int-like value (including Dagster metadata values), else None."""
    value = getattr(value, "value", value)  # IntMetadataValue and friends wrap the number
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", "").replace(",", ""))
        except ValueError:
            return None
    return None


def estimate_from_metadata(asset_metadata: Iterable[Mapping[str, Any]]) -> SizeEstimate:
    """Sum the `pg_to_bq/estimated_rows` definition metadata of the assets a run materializes.

    Assets without the key (assets that are not tables) are not counted. When no asset
    carries it, the size is unknown.

    Args:
        asset_metadata: The definition metadata of each asset the run materializes.

    Returns:
        The summed estimate and the number of tables it covers.
    """
    rows = 0
    tables = 0
    for metadata in asset_metadata:
        estimate = _int_or_none(metadata.get(ESTIMATED_ROWS_METADATA_KEY))
        if estimate is not None:
            rows += max(estimate, 0)
            tables += 1
    if tables == 0:
        return SizeEstimate(rows=None, tables=None, source="no asset carries an estimate")
    return SizeEstimate(rows=rows, tables=tables, source="asset metadata")


def estimate_from_tags(tags: Mapping[str, str]) -> SizeEstimate:
    """The estimate the project's schedule or CLI put on the run as `pg_to_bq/estimated_rows`."""
    raw = tags.get(ESTIMATED_ROWS_TAG)
    if raw is None:
        return UNKNOWN_SIZE
    rows = _int_or_none(raw)
    if rows is None:
        return SizeEstimate(rows=None, source=f"unreadable tag {ESTIMATED_ROWS_TAG}={raw!r}")
    return SizeEstimate(rows=max(rows, 0), source=f"tag {ESTIMATED_ROWS_TAG}")


def requested_target(tags: Mapping[str, str]) -> Target | None:
    """The compute a run's `pg_to_bq/compute` tag asks for, or None without the tag.

    Raises:
        ValueError: The tag holds something other than `lambda` or `ecs`.
    """
    raw = tags.get(COMPUTE_TAG)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value == ECS:
        return ECS
    if value == LAMBDA:
        return LAMBDA
    raise ValueError(f"run tag {COMPUTE_TAG} must be 'lambda' or 'ecs', got {raw!r}")


def reloads_whole_tables(tags: Mapping[str, str]) -> str | None:
    """Why the run reloads whole tables (full refresh or backfill), or None if it does not."""
    if tags.get(FULL_REFRESH_TAG, "").strip().lower() in _TRUE_VALUES:
        return "a full refresh"
    if BACKFILL_TAG in tags:
        return f"backfill {tags[BACKFILL_TAG]}"
    return None


def choose_compute(
    tags: Mapping[str, str],
    estimate: SizeEstimate | int | None,
    *,
    lambda_max_rows: int,
    lambda_max_tables: int | None = None,
) -> Decision:
    """Decide whether a run executes on ECS or Lambda (the policy is in the module docstring).

    Args:
        tags: The run's tags.
        estimate: What the run loads: a `SizeEstimate`, a row count, or None when unknown.
        lambda_max_rows: The largest estimated row count that still goes to Lambda.
        lambda_max_tables: The most tables a Lambda run may load; None for no limit.

    Returns:
        The target and a one-line reason.

    Raises:
        ValueError: The `pg_to_bq/compute` tag holds something other than `lambda` or `ecs`.
    """
    if not isinstance(estimate, SizeEstimate):
        estimate = UNKNOWN_SIZE if estimate is None else SizeEstimate(rows=estimate, source="given")
    requested = requested_target(tags)
    whole_tables = reloads_whole_tables(tags)
    size = estimate.describe()
    too_many_rows = estimate.rows is not None and estimate.rows > lambda_max_rows

    if requested == ECS:
        return Decision(ECS, f"run tag {COMPUTE_TAG}=ecs")
    if whole_tables and too_many_rows:
        overridden = f"; run tag {COMPUTE_TAG}=lambda overridden" if requested == LAMBDA else ""
        return Decision(
            ECS,
            f"{whole_tables} of large tables always runs on ECS: {size} > "
            f"lambda_max_rows {lambda_max_rows:,}{overridden}",
        )
    if requested == LAMBDA:
        return Decision(LAMBDA, f"run tag {COMPUTE_TAG}=lambda")
    if estimate.rows is None:
        return Decision(ECS, f"{size}: ECS has no time limit")
    if (
        lambda_max_tables is not None
        and estimate.tables is not None
        and estimate.tables > lambda_max_tables
    ):
        return Decision(ECS, f"{size}: more than lambda_max_tables {lambda_max_tables:,} tables")
    if too_many_rows:
        return Decision(ECS, f"{size} > lambda_max_rows {lambda_max_rows:,}")
    return Decision(LAMBDA, f"{size} <= lambda_max_rows {lambda_max_rows:,}")
