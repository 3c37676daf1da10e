"""Turn table plans into Dagster assets: one external PostgreSQL asset and one loaded asset per table.

Keys: `postgres/<schema>/<table>` for the source and `<destination>/<dataset>/<table>` for
the loaded table (under the component's key prefix, if any); the loaded tables' group is
their schema, the sources' `postgres_<schema>` (so the asset list and the sidebar tell a
source from its loaded table); kinds are postgres, dlt and the destination.

Every table is its own asset, with its own materializations, metadata and checks; steps
are shared (`pg_to_bq.planning.groups`): small tables load many to a step, each step a subsettable
multi-asset, so materializing one table runs just that table. The step's work is
`pg_to_bq.orchestration.steps.run_step`.

Building the definitions must stay cheap for 1,000+ tables: dlt is imported only inside a
running load, each step's op and asset are constructed directly (not through
`@multi_asset`, see `build_group_asset`), and what is identical across tables (the config
schema, the check outputs, equal column-schema entries) is built once.
"""


import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dagster as dg

from pg_to_bq.checks import outcomes as checks
from pg_to_bq.planning.catalog import Table
from pg_to_bq.planning.groups import DEFAULT_OWN_STEP_BYTES, DEFAULT_STEP_TABLES, LoadGroup, group_plans
from pg_to_bq.planning.naming import dagster_name
from pg_to_bq.planning.overrides import Overrides
from pg_to_bq.planning.tables import TablePlan

# An asset-key part keeps the name when it is made of (Unicode) letters, digits, `_`, `-`
# and `.`; anything else (spaces, quotes, `/`, `;`) gets `dagster_name`'s ASCII form with a
# hash, and the real name leads the asset's description.
_KEY_SAFE = re.compile(r"^[\w][\w.-]*$")
POOL = "pg_to_bq_source"
FULL_REFRESH_TAG = "pg_to_bq/full_refresh"
APPLY_DELETES_TAG = "pg_to_bq/apply_deletes"
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
    freshness: timedelta = timedelta(hours=48)
    retries: int = 3
    names: InstanceNames = field(default_factory=InstanceNames)
    overrides: Overrides = field(default_factory=Overrides)
    schemas: tuple[str, ...] = ()
    include_views: bool = False
    step_tables: int = DEFAULT_STEP_TABLES
    own_step_bytes: int = DEFAULT_OWN_STEP_BYTES
    fingerprint: bool = True
    fingerprint_rows: int = checks.DEFAULT_FINGERPRINT_ROWS

    @property
    def key_prefix(self) -> tuple[str, ...]:
        return self.names.key_prefix

    @property
    def pool(self) -> str:
        return self.names.name(POOL)

    def group(self, schema_group: str) -> str:
        return self.names.name(schema_group)


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


@functools.lru_cache(maxsize=16384)
def _table_column(name: str, type_: str, description: str | None, nullable: bool) -> dg.TableColumn:
    """One column of a `dagster/column_schema`; immutable, so equal columns (most tables have
    an `id bigint`) share one object instead of being built and validated again."""
    return dg.TableColumn(name=name, type=type_, description=description,
                          constraints=dg.TableColumnConstraints(nullable=nullable))


def source_spec(plan: TablePlan, ctx: AssetContext) -> dg.AssetSpec:
    table = plan.table
    metadata: dict[str, Any] = {
        "dagster/column_schema": dg.TableSchema(
            columns=[_table_column(c.name, c.type, c.comment, c.nullable) for c in table.columns]
        ),
        "dagster/table_name": table.qualified_name,
        "pg_to_bq/primary_key": ", ".join(table.primary_key) or "(none)",
        "pg_to_bq/foreign_keys": dg.MetadataValue.md(_foreign_keys_md(table)),
    }
    if table.estimated_rows is not None:
        metadata[ESTIMATED_ROWS] = table.estimated_rows
    if not plan.loadable:
        metadata["pg_to_bq/not_loaded"] = plan.error or "; ".join(plan.notes)
    return dg.AssetSpec(
        key=source_key(table, ctx),
        description=_describe(table, table.comment,
                              f"PostgreSQL {table.kind_label} `{table.qualified_name}`"),
        group_name=ctx.group("postgres_" + plan.group_name),
        kinds={"postgres"},
        metadata=metadata,
    )


def _describe(table: Table, comment: str | None, origin: str) -> str:
    """The real name first when the key could not show it, then the table comment (what
    analysts read), then where the data lives."""
    parts = []
    if key_part(table.name) != table.name:
        parts.append(f"**{table.qualified_name}**")
    if comment:
        parts.append(comment)
    parts.append(origin)
    return "\n\n".join(parts)


def _foreign_keys_md(table: Table) -> str:
    if not table.foreign_keys:
        return "(none)"
    return "\n".join(
        f"- `{', '.join(fk.columns)}` → `{fk.referred_schema}.{fk.referred_table}"
        f"({', '.join(fk.referred_columns)})`"
        for fk in table.foreign_keys
    )


def plan_markdown(plan: TablePlan) -> str:
    if plan.error:
        return f"- **not loadable**: {plan.error}"
    lines = [
        f"- **disposition**: {plan.disposition}"
        + (" (incremental by cursor)" if plan.incremental else ""),
        f"- **primary key**: {', '.join(plan.primary_key) or '(none: replaced each load)'}",
        f"- **cursor**: {plan.cursor or '(none)'}"
        + (f", lookback {plan.lookback}" if plan.cursor else ""),
    ]
    if plan.partition:
        lines.append(f"- **partitions**: {plan.partition.granularity} on `{plan.partition.column}`"
                     f" from {plan.partition.start}")
    if plan.bigquery_partition or plan.bigquery_cluster:
        lines.append(f"- **BigQuery**: partitioned by `{plan.bigquery_partition or '-'}`, "
                     f"clustered by `{', '.join(plan.bigquery_cluster) or '-'}`")
    if plan.excluded:
        lines.append(f"- **excluded columns**: {', '.join(plan.excluded)}")
    if plan.hashed:
        lines.append(f"- **hashed columns**: {', '.join(plan.hashed)}")
    lines.extend(f"  - `{c.column}`: {c.reason}; {c.setting}" for c in plan.left_out)
    if plan.renamings:
        lines.append("- **renamed columns**: " + "; ".join(r.describe() for r in plan.renamings))
    if plan.table_renaming:
        lines.append(f"- **destination table**: {plan.table_renaming.describe()}")
    lines.extend(f"- note: {n}" for n in plan.notes)
    return "\n".join(lines)


def destination_metadata(plan: TablePlan, ctx: AssetContext) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "dagster/column_schema": dg.TableSchema(
            columns=[
                _table_column(
                    c.name,
                    c.destination_type(ctx.destination_kind),
                    (f"{c.source.comment} (PostgreSQL {c.source.type})"
                     if c.source.comment else f"PostgreSQL {c.source.type}"),
                    c.source.nullable,
                )
                for c in plan.columns
            ]
        ),
        "dagster/table_name": f"{ctx.qualified_prefix}.{plan.destination_table}",
        "pg_to_bq/source_table": plan.name,
        "pg_to_bq/plan": dg.MetadataValue.md(plan_markdown(plan)),
        "pg_to_bq/disposition": plan.disposition,
        "pg_to_bq/foreign_keys": dg.MetadataValue.md(_foreign_keys_md(plan.table)),
        **({ESTIMATED_ROWS: plan.table.estimated_rows}
           if plan.table.estimated_rows is not None else {}),
    }
    if plan.left_out:
        metadata["pg_to_bq/left_out_columns"] = dg.MetadataValue.md(
            "\n".join(f"- `{c.column}`: {c.action}, {c.reason} ({c.setting})"
                      for c in plan.left_out))
    if plan.error:
        metadata["pg_to_bq/not_loadable"] = plan.error
    return metadata


def check_specs(plan: TablePlan, key: dg.AssetKey, fingerprint: bool = True
                ) -> list[dg.AssetCheckSpec]:
    # Blocking: rows or values lost (a failure of severity ERROR) fail the step, so the run
    # fails and nothing downstream runs on the table.
    specs = [dg.AssetCheckSpec(checks.ROW_COUNT, asset=key, description=_ROW_COUNT_DESCRIPTION,
                               blocking=True)]
    if fingerprint:
        specs.append(dg.AssetCheckSpec(checks.FINGERPRINT, asset=key,
                                       description=_FINGERPRINT_DESCRIPTION, blocking=True))
    if plan.cursor:
        specs.append(dg.AssetCheckSpec(checks.FRESHNESS, asset=key,
                                       description=f"Newest {plan.cursor} is recent"))
    return specs


_ROW_COUNT_DESCRIPTION = "Rows in the destination equal rows in the source snapshot"
_FINGERPRINT_DESCRIPTION = ("Every column's values equal the source's: non-null counts and "
                            "order-independent value digests, the whole table when small, "
                            "primary-key ranges when large")


# Parts identical across ops, built (and their Dagster types resolved) once.
_SOURCE_IN = dg.In(dg.Nothing)
_CHECK_OUT = dg.Out(None, is_required=False)


def _output_name(key: dg.AssetKey, *extra: str) -> str:
    """The output name `@multi_asset` gives an asset (or its check) when that is a valid
    Dagster name; otherwise (Unicode or odd key parts) an ASCII form with a hash."""
    name = "_".join([key.to_python_identifier(), *extra])
    return name if re.fullmatch(r"[A-Za-z0-9_]+", name) else dagster_name(*key.path, *extra)


def _input_name(key: dg.AssetKey) -> str:
    """The input name Dagster's asset decorators give a dependency (`postgres_public_orders`):
    a copy of Dagster's private `stringify_asset_key_to_input_name`, which
    `test_group_asset_is_what_multi_asset_would_build` holds it to; an ASCII form with a hash
    for keys Dagster would refuse as a name."""
    name = "_".join(key.path).replace("-", "_").replace(".", "_")
    return name if re.fullmatch(r"[A-Za-z0-9_]+", name) else dagster_name(*key.path)


def table_spec(plan: TablePlan, ctx: AssetContext) -> dg.AssetSpec:
    """The loaded table's asset spec (its upstream is `source_spec(plan)`)."""
    tags = {"pg_to_bq/source_schema": plan.group_name, **dict(ctx.tags)}
    if plan.scheduled and plan.partition is None:
        tags[SCHEDULE_TAG] = "nightly"
    if plan.partition is not None:
        tags[PARTITIONED_TAG] = plan.partition.granularity
    return dg.AssetSpec(
        key=destination_key(plan, ctx),
        deps=[source_key(plan.table, ctx)],
        description=_describe(
            plan.table, plan.table.comment,
            f"PostgreSQL `{plan.name}` loaded by dlt into "
            f"`{ctx.qualified_prefix}.{plan.destination_table}`"),
        group_name=ctx.group(plan.group_name),
        kinds={"dlt", ctx.destination_kind},
        owners=list(ctx.owners),
        tags=tags,
        metadata=destination_metadata(plan, ctx),
        partitions_def=partitions_for(plan),
        skippable=True,
    )


def build_group_asset(group: LoadGroup, ctx: AssetContext) -> dg.AssetsDefinition:
    """The step loading `group`'s tables: one asset per table, subsettable.

    What `@multi_asset(specs=..., check_specs=..., can_subset=True)` builds, constructed
    directly from an `OpDefinition` and an `AssetsDefinition`: the decorator inspects the
    compute function and re-derives and re-validates every input, output and the config
    schema per op, which took half the time of loading a 1,000-table code location. The
    compute function takes `(context, inputs)` (the form Dagster runs a directly constructed
    op with); `context` is the `AssetExecutionContext`. Names are the decorator's where
    Dagster accepts them (`_output_name`, `_input_name`).
    """
    specs = [table_spec(plan, ctx) for plan in group.plans]
    keys_by_input: dict[str, dg.AssetKey] = {}
    keys_by_output: dict[str, dg.AssetKey] = {}
    outs: dict[str, dg.Out] = {}
    checks_by_output: dict[str, dg.AssetCheckSpec] = {}
    for plan, spec in zip(group.plans, specs, strict=True):
        upstream = source_key(plan.table, ctx)
        keys_by_input[_input_name(upstream)] = upstream
        output = _output_name(spec.key)
        keys_by_output[output] = spec.key
        outs[output] = dg.Out(dg.Nothing, description=spec.description, metadata=spec.metadata,
                              is_required=False)
        for check in check_specs(plan, spec.key, ctx.fingerprint):
            checks_by_output[_output_name(spec.key, check.name)] = check
    outs.update(dict.fromkeys(checks_by_output, _CHECK_OUT))

    def _load(context: dg.AssetExecutionContext, inputs: Mapping[str, Any]
              ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        from pg_to_bq.orchestration.steps import run_step  # dlt: only when a step runs

        config = LoadConfig(**(context.op_execution_context.op_config or {}))
        resources = context.resources
        yield from run_step(context, group, ctx, config,
                            getattr(resources, ctx.names.source),
                            getattr(resources, ctx.names.destination))

    tags = {"pg_to_bq/tables": str(len(group.plans))}
    if group.single:
        tags["pg_to_bq/table"] = group.plans[0].name
    op = dg.OpDefinition(
        compute_fn=_load,
        name=group.name,
        ins=dict.fromkeys(keys_by_input, _SOURCE_IN),
        outs=outs,
        config_schema=LOAD_CONFIG_SCHEMA,
        required_resource_keys={ctx.names.source, ctx.names.destination},
        tags=tags,
        retry_policy=dg.RetryPolicy(max_retries=ctx.retries, delay=5,
                                    backoff=dg.Backoff.EXPONENTIAL),
        pool=ctx.pool,
    )
    return dg.AssetsDefinition(
        keys_by_input_name=keys_by_input,
        keys_by_output_name=keys_by_output,
        node_def=op,
        check_specs_by_output_name=checks_by_output,
        specs=specs,
        can_subset=True,
    )


def build_assets(
    plans: Sequence[TablePlan], ctx: AssetContext
) -> tuple[list[dg.AssetSpec], list[dg.AssetsDefinition]]:
    """Source specs for every table; loaded-table assets, in steps, for those with columns.

    A table without loadable columns keeps its source asset (so it is visible), whose
    metadata says why it is not loaded. A table whose overrides do not fit it keeps its
    loaded asset: materializing it fails with the reason.
    """
    loaded = [p for p in plans if p.columns or p.error]
    groups = group_plans(loaded, ctx.step_tables, ctx.own_step_bytes,
                         prefix=ctx.names.name("") if ctx.names.prefix else "")
    return [source_spec(p, ctx) for p in plans], [build_group_asset(g, ctx) for g in groups]
