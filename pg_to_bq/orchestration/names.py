"""The names one mirrored database gives its Dagster definitions: asset keys, groups, tags,
pool, resource and job names, and what every table's step knows of the deployment
(`AssetContext`).

Keys: `postgres/<schema>/<table>` for the source and `<destination>/<dataset>/<table>` for
the loaded table (under the component's key prefix, if any); the loaded tables' group is
their schema, the sources' `postgres_<schema>` (so the asset list and the sidebar tell a
source from its loaded table).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg

from pg_to_bq.checks import outcomes as checks
from pg_to_bq.planning.catalog import Table
from pg_to_bq.planning.naming import dagster_name
from pg_to_bq.planning.overrides import Overrides
from pg_to_bq.planning.settings import (
    DEFAULT_DRIFT_MAX_ROWS,
    DEFAULT_OWN_STEP_BYTES,
    DEFAULT_STEP_TABLES,
)
from pg_to_bq.planning.tables import TablePlan

# An asset-key part keeps the name when it is made of (Unicode) letters, digits, `_`, `-`
# and `.`; anything else (spaces, quotes, `/`, `;`) gets `dagster_name`'s ASCII form with a
# hash, and the real name leads the asset's description.
_KEY_SAFE = re.compile(r"^[\w][\w.-]*$")


POOL = "pg_to_bq_source"


FULL_REFRESH_TAG = "pg_to_bq/full_refresh"


APPLY_DELETES_TAG = "pg_to_bq/apply_deletes"
# A run of change capture's short schedule: only the tables with a primary key load.
CHANGES_ONLY_TAG = "pg_to_bq/changes_only"


SCHEDULE_TAG = "pg_to_bq/schedule"


PARTITIONED_TAG = "pg_to_bq/partitioned"


ESTIMATED_ROWS = "pg_to_bq/estimated_rows"


@dataclass(frozen=True)
class LoadConfig:
    """Launchpad options for a table load (the op config of every table asset)."""

    full_refresh: bool = False
    apply_deletes: bool = False


# One config schema shared by every step's op, converted once: a plain dict (what
# `multi_asset` requires) is converted to Dagster's config types again for every op.
LOAD_CONFIG_SCHEMA = dg.Field(dg.Shape({
    "full_refresh": dg.Field(
        bool, default_value=False,
        description="Replace the destination table (and reset the incremental cursor) instead "
                    "of merging."),
    "apply_deletes": dg.Field(
        bool, default_value=False,
        description="After merging, delete destination rows whose primary key no longer "
                    "exists in PostgreSQL."),
}))


@dataclass(frozen=True)
class InstanceNames:
    """The names one mirrored database gives its definitions.

    Standalone (`prefix` empty) the names are the historical ones: keys `postgres/…` and
    `duckdb/raw/…`, job `mirror_all_tables`, resources `source` and `destination`. A
    Dagster component instance (several databases in one project) puts its name first:
    keys `shop/postgres/…`, job `shop__mirror_all_tables`, resource `shop__source`, pool
    `shop__pg_to_bq_source`, groups `shop__public`, so no two instances ever meet.
    """

    prefix: str = ""

    @property
    def key_prefix(self) -> tuple[str, ...]:
        return (self.prefix,) if self.prefix else ()

    def name(self, base: str) -> str:
        return f"{self.prefix}__{base}" if self.prefix else base

    @property
    def source(self) -> str:
        return self.name("source")

    @property
    def destination(self) -> str:
        return self.name("destination")

    @property
    def secrets(self) -> str:
        return self.name("secrets")


@dataclass(frozen=True)
class AssetContext:
    """What every table asset needs to know about the deployment (not secrets).

    `names` keeps several databases apart in one project (asset keys; op, job, schedule,
    resource and pool names). `overrides`, `schemas` and `include_views` let a run plan a
    table again from its live columns.
    """

    destination_kind: str
    dataset: str
    qualified_prefix: str
    owners: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    # How long a scheduled table may go without a load before Dagster shows it stale (the
    # schedule's longest gap plus the run budget); None: no freshness policy.
    freshness_window: timedelta | None = None
    retries: int = 3
    names: InstanceNames = field(default_factory=InstanceNames)
    overrides: Overrides = field(default_factory=Overrides)
    schemas: tuple[str, ...] = ()
    include_views: bool = False
    step_tables: int = DEFAULT_STEP_TABLES
    own_step_bytes: int = DEFAULT_OWN_STEP_BYTES
    fingerprint: bool = True
    fingerprint_rows: int = checks.DEFAULT_FINGERPRINT_ROWS
    # Tables up to this many rows have their destination's figures compared every run (0: no).
    drift_max_rows: int = DEFAULT_DRIFT_MAX_ROWS
    # Change capture's publication when it is on (tables it publishes load from their
    # captured changes, after the catalog step read the slot); None: off.
    cdc_publication: str | None = None

    def freshness_policy(self, plan: TablePlan) -> dg.FreshnessPolicy | None:
        """The table's freshness policy: its own window from the tables file, none when the
        file says `freshness: false`, else the schedule's for a table the nightly job loads."""
        if plan.freshness is False:
            return None
        if isinstance(plan.freshness, timedelta):
            return dg.FreshnessPolicy.time_window(fail_window=plan.freshness)
        if self.freshness_window is None or not plan.scheduled or plan.partition is not None:
            return None
        return dg.FreshnessPolicy.time_window(fail_window=self.freshness_window)

    @property
    def key_prefix(self) -> tuple[str, ...]:
        return self.names.key_prefix

    @property
    def pool(self) -> str:
        return self.names.name(POOL)

    def group(self, schema_group: str) -> str:
        return self.names.name(schema_group)


# The catalog asset's key (under the instance's prefix).
CATALOG_KEY = ("postgres", "catalog")
# The catalog asset's step (op) name, before the mirror's prefix (`Names.name`).
CATALOG_STEP = "discover_tables"


def catalog_key(ctx: AssetContext) -> dg.AssetKey:
    return dg.AssetKey([*ctx.key_prefix, *CATALOG_KEY])


def captured_by(plans: Sequence[TablePlan], ctx: AssetContext) -> bool:
    """Whether change capture may follow any of `plans` (it is on, and one has a primary
    key): their step then runs after the catalog step, which reads the changes."""
    return ctx.cdc_publication is not None and any(p.primary_key for p in plans)


def key_part(name: str) -> str:
    """An asset-key part for a PostgreSQL or destination name (see `_KEY_SAFE`)."""
    return name if _KEY_SAFE.match(name) else dagster_name(name)


def source_key(table: Table, ctx: AssetContext | None = None) -> dg.AssetKey:
    prefix = ctx.key_prefix if ctx else ()
    return dg.AssetKey([*prefix, "postgres", key_part(table.schema), key_part(table.name)])


def destination_key(plan: TablePlan, ctx: AssetContext) -> dg.AssetKey:
    return dg.AssetKey([*ctx.key_prefix, ctx.destination_kind, ctx.dataset,
                        key_part(plan.destination_table)])


def partitions_for(plan: TablePlan) -> dg.PartitionsDefinition | None:
    if plan.partition is None:
        return None
    start = plan.partition.start.isoformat()
    if plan.partition.granularity == "month":
        return dg.MonthlyPartitionsDefinition(start_date=start, end_offset=1)
    return dg.DailyPartitionsDefinition(start_date=start, end_offset=1)
