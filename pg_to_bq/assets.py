"""Turn table plans into Dagster assets: one external PostgreSQL asset and one loaded asset per table.

Each loaded table is its own op (one step per table), so tables retry and fail alone. Keys:
`postgres/<schema>/<table>` for the source and `<destination>/<dataset>/<table>` for the
loaded table; group = the source schema; kinds = postgres, dlt and the destination.

Building the definitions must stay cheap for 1,000+ tables: dlt (`pg_to_bq.load`) is imported
only inside a running load, each table's op and asset are constructed directly (not through
`@multi_asset`, see `build_table_asset`), and what is identical across tables (the config
schema, the check outputs, equal column-schema entries) is built once.
"""


import functools
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dagster as dg

from pg_to_bq import checks
from pg_to_bq.catalog import Table, discover
from pg_to_bq.deletes import apply_deletes
from pg_to_bq.errors import describe, is_transient
from pg_to_bq.naming import dagster_name
from pg_to_bq.plan import TablePlan
from pg_to_bq.resources import Destination, SourceDatabase
from pg_to_bq.source import connect

_KEY_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
POOL = "pg_to_bq_source"
FULL_REFRESH_TAG = "pg_to_bq/full_refresh"
APPLY_DELETES_TAG = "pg_to_bq/apply_deletes"
SCHEDULE_TAG = "pg_to_bq/schedule"
PARTITIONED_TAG = "pg_to_bq/partitioned"
ESTIMATED_ROWS = "pg_to_bq/estimated_rows"
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class LoadConfig:
    """Launchpad options for a table load (the op config of every table asset)."""

    full_refresh: bool = False
    apply_deletes: bool = False


# One config schema shared by every table's op, converted once: a plain dict (what
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
class AssetContext:
    """What every table asset needs to know about the deployment (not secrets)."""

    destination_kind: str
    dataset: str
    qualified_prefix: str
    owners: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    freshness: timedelta = timedelta(hours=48)
    retries: int = 3


def key_part(name: str) -> str:
    """An asset-key component. Dagster derives op input/output names from keys and accepts
    only ASCII there, so other names get `dagster_name`'s ASCII form with a hash; the real
    name stays in the asset's description and `dagster/table_name` metadata."""
    return name if _KEY_SAFE.match(name) else dagster_name(name)


def source_key(table: Table) -> dg.AssetKey:
    return dg.AssetKey(["postgres", key_part(table.schema), key_part(table.name)])


def destination_key(plan: TablePlan, ctx: AssetContext) -> dg.AssetKey:
    return dg.AssetKey([ctx.destination_kind, ctx.dataset, key_part(plan.destination_table)])


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


def source_spec(plan: TablePlan) -> dg.AssetSpec:
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
    return dg.AssetSpec(
        key=source_key(table),
        description=_describe(table.comment,
                              f"PostgreSQL {table.kind_label} `{table.qualified_name}`"),
        group_name=plan.group_name,
        kinds={"postgres"},
        metadata=metadata,
    )


def _describe(comment: str | None, origin: str) -> str:
    """The table comment first (what analysts read), then where the data lives."""
    return f"{comment}\n\n{origin}" if comment else origin


def _foreign_keys_md(table: Table) -> str:
    if not table.foreign_keys:
        return "(none)"
    return "\n".join(
        f"- `{', '.join(fk.columns)}` → `{fk.referred_schema}.{fk.referred_table}"
        f"({', '.join(fk.referred_columns)})`"
        for fk in table.foreign_keys
    )


def plan_markdown(plan: TablePlan) -> str:
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
    renamed = [(c.source.name, c.name) for c in plan.columns if c.source.name != c.name]
    if renamed:
        lines.append("- **renamed columns**: " + ", ".join(f"`{a}` → `{b}`" for a, b in renamed))
    if plan.table.name != plan.destination_table:
        lines.append(f"- **destination table**: `{plan.destination_table}`")
    lines.extend(f"- note: {n}" for n in plan.notes)
    return "\n".join(lines)


def destination_metadata(plan: TablePlan, ctx: AssetContext) -> dict[str, Any]:
    return {
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


def check_specs(plan: TablePlan, key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(checks.ROW_COUNT, asset=key, description=_ROW_COUNT_DESCRIPTION),
        dg.AssetCheckSpec(checks.SCHEMA_DRIFT, asset=key, description=_SCHEMA_DRIFT_DESCRIPTION),
    ]
    if plan.cursor:
        specs.append(dg.AssetCheckSpec(checks.FRESHNESS, asset=key,
                                       description=f"Newest {plan.cursor} is recent"))
    return specs


_ROW_COUNT_DESCRIPTION = "Rows in the destination equal rows in the source snapshot"
_SCHEMA_DRIFT_DESCRIPTION = "PostgreSQL columns unchanged since the catalog snapshot"


# Parts identical across table ops, built (and their Dagster types resolved) once.
_SOURCE_IN = dg.In(dg.Nothing)
_CHECK_OUT = dg.Out(None)


def build_table_asset(plan: TablePlan, ctx: AssetContext) -> dg.AssetsDefinition:
    """The loaded-table asset for one plan (its upstream is `source_spec(plan)`).

    What `@multi_asset(specs=[spec], check_specs=...)` builds, constructed directly from an
    `OpDefinition` and an `AssetsDefinition`: the decorator inspects the compute function and
    re-derives and re-validates every input, output and the config schema per op, which took
    half the time of loading a 1,000-table code location. The op's compute function takes
    `(context, inputs)` (the form Dagster runs a directly constructed op with); `context` is
    the `AssetExecutionContext`. Names are the decorator's: the input is named after the
    source key the way Dagster names a dependency's input, outputs after the asset and check
    keys.
    """
    key = destination_key(plan, ctx)
    upstream = source_key(plan.table)
    tags = {"pg_to_bq/source_schema": plan.group_name, **dict(ctx.tags)}
    if plan.scheduled and plan.partition is None:
        tags[SCHEDULE_TAG] = "nightly"
    if plan.partition is not None:
        tags[PARTITIONED_TAG] = plan.partition.granularity
    spec = dg.AssetSpec(
        key=key,
        deps=[upstream],
        description=_describe(
            plan.table.comment,
            f"PostgreSQL `{plan.name}` loaded by dlt into "
            f"`{ctx.qualified_prefix}.{plan.destination_table}`"),
        group_name=plan.group_name,
        kinds={"dlt", ctx.destination_kind},
        owners=list(ctx.owners),
        tags=tags,
        metadata=destination_metadata(plan, ctx),
        partitions_def=partitions_for(plan),
    )
    checks_by_output = {c.get_python_identifier(): c for c in check_specs(plan, key)}
    input_name = _input_name(upstream)
    output_name = key.to_python_identifier()

    def _load(context: dg.AssetExecutionContext, inputs: Mapping[str, Any]
              ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        config = LoadConfig(**(context.op_execution_context.op_config or {}))
        yield from run_table_load(context, plan, ctx, config, context.resources.source,
                                  context.resources.destination)

    op = dg.OpDefinition(
        compute_fn=_load,
        name=plan.op_name,
        ins={input_name: _SOURCE_IN},
        outs={output_name: dg.Out(dg.Nothing, description=spec.description,
                                  metadata=spec.metadata),
              **dict.fromkeys(checks_by_output, _CHECK_OUT)},
        config_schema=LOAD_CONFIG_SCHEMA,
        required_resource_keys={"source", "destination"},
        tags={"pg_to_bq/table": plan.name},
        retry_policy=dg.RetryPolicy(max_retries=ctx.retries, delay=5,
                                    backoff=dg.Backoff.EXPONENTIAL),
        pool=POOL,
    )
    return dg.AssetsDefinition(
        keys_by_input_name={input_name: upstream},
        keys_by_output_name={output_name: key},
        node_def=op,
        check_specs_by_output_name=checks_by_output,
        specs=[spec],
    )


def _input_name(key: dg.AssetKey) -> str:
    """The input name Dagster's asset decorators give a dependency (`postgres_public_orders`):
    a copy of Dagster's private `stringify_asset_key_to_input_name`, which
    `test_table_asset_is_what_multi_asset_would_build` holds it to."""
    return "_".join(key.path).replace("-", "_").replace(".", "_")


def run_table_load(
    context: dg.AssetExecutionContext,
    plan: TablePlan,
    ctx: AssetContext,
    config: LoadConfig,
    source: SourceDatabase,
    destination: Destination,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    from pg_to_bq.load import Window, load_table, make_pipeline  # dlt: only when a table loads

    key = destination_key(plan, ctx)
    full_refresh = config.full_refresh or context.run.tags.get(FULL_REFRESH_TAG) == "true"
    deletes = (config.apply_deletes or context.run.tags.get(APPLY_DELETES_TAG) == "true") \
        and plan.disposition == "merge" and not full_refresh
    window = None
    if plan.partition is not None and context.has_partition_key:
        time_window = context.partition_time_window
        window = Window(plan.partition.column, time_window.start, time_window.end)
    progress = _Progress(context, plan)
    try:
        url = source.resolved_url()
        with connect(url, statement_timeout_s=source.statement_timeout_s) as conn:
            live = discover(conn, schemas=[plan.table.schema], include_views=True,
                            table=plan.table.name)
        dlt_destination = destination.dlt_destination()

        def waiting(seconds: float) -> None:
            context.log.info(f"{plan.name}: waiting for the DuckDB file {destination.duckdb_path}, "
                             f"which another load is writing ({seconds:.0f} s so far)")

        with destination.writing(on_wait=waiting):
            context.log.info(
                f"loading {plan.name} → {ctx.qualified_prefix}.{plan.destination_table} "
                f"({'full refresh' if full_refresh else plan.disposition})"
            )
            result = load_table(
                plan,
                source_url=url,
                destination=dlt_destination,
                dataset=destination.dataset,
                work_dir=destination.work_path,
                full_refresh=full_refresh,
                window=window,
                batch_bytes=source.batch_bytes,
                hash_salt=source.resolved_hash_salt(),
                statement_timeout_s=source.statement_timeout_s,
                on_batch=progress,
                streams=source.streams_for(plan.table.size_bytes),
            )
            deleted = apply_deletes(
                plan, source_url=url, destination=dlt_destination, dataset=destination.dataset,
                work_dir=destination.work_path, batch_bytes=source.batch_bytes,
                statement_timeout_s=source.statement_timeout_s,
            ) if deletes else None
            pipeline = make_pipeline(plan, dlt_destination, destination.dataset, destination.work_path)
            destination_rows = count_destination_rows(pipeline, plan.destination_table)
    except Exception as exc:
        retryable = is_transient(exc)
        raise dg.Failure(
            description=f"table {plan.name} failed: {describe(exc)}",
            metadata={"table": plan.name, "retryable": retryable},
            allow_retries=retryable,
        ) from exc

    if result.snapshot_rows is not None and result.mode == "full":
        # The source node shows the row count PostgreSQL had when it was read.
        context.log_event(dg.AssetObservation(
            asset_key=source_key(plan.table),
            metadata={"dagster/row_count": result.snapshot_rows},
        ))
    metadata: dict[str, Any] = {
        "dagster/row_count": destination_rows,
        "rows_loaded": result.rows,
        "load_mode": result.mode,
        "duration_s": round(result.duration_s, 3),
        "dlt_load_id": result.load_id or "",
        "destination_table": f"{ctx.qualified_prefix}.{plan.destination_table}",
    }
    optional = {"source_rows_in_snapshot": result.snapshot_rows, "rows_deleted": deleted,
                "cursor_from": result.cursor_from, "cursor_to": result.cursor_to}
    metadata.update({k: v if isinstance(v, int) else str(v)
                     for k, v in optional.items() if v is not None})
    yield dg.MaterializeResult(asset_key=key, metadata=metadata)
    live_table = next(iter(live.tables), None)
    outcomes = [checks.schema_drift(plan.table, live_table)]
    if result.snapshot_rows is not None and window is None and result.mode == "full":
        outcomes.append(checks.reconcile_row_counts(result.snapshot_rows, destination_rows,
                                                    "replace"))
    elif result.table_rows is not None and deleted is None:
        # The whole table as the rows were read: rows inserted in PostgreSQL since then are
        # the next run's, not missing ones.
        outcomes.append(checks.reconcile_row_counts(result.table_rows, destination_rows,
                                                    plan.disposition))
    else:
        outcomes.append(_reconcile_whole_table(plan, url, source, destination_rows))
    if plan.cursor:
        latest = result.cursor_to if result.cursor_to is not None else result.cursor_from
        outcomes.append(checks.cursor_freshness(_parse_cursor(latest), ctx.freshness))
    for outcome in outcomes:
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity(outcome.severity),
            description=outcome.description,
            metadata=outcome.metadata,
        )


def _reconcile_whole_table(
    plan: TablePlan, url: str, source: SourceDatabase, destination_rows: int
) -> checks.CheckOutcome:
    """After a delete pass (its own snapshot, later than the load's), the table as it is now."""
    from pg_to_bq.extract import qualified_name

    with connect(url, statement_timeout_s=source.statement_timeout_s) as conn:
        source_rows = conn.execute(f"SELECT count(*) FROM {qualified_name(plan)}").fetchone()[0]
    return checks.reconcile_row_counts(int(source_rows), destination_rows, plan.disposition)


def _parse_cursor(value: Any) -> Any:
    if isinstance(value, str):
        from datetime import date, datetime

        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return date.fromisoformat(value)
    return value


def count_destination_rows(pipeline: Any, table: str) -> int:
    """Rows in the loaded table, asked of the destination itself."""
    with pipeline.sql_client() as client:
        qualified = client.make_qualified_table_name(table)
        with client.execute_query(f"SELECT count(*) FROM {qualified}") as cursor:
            return int(cursor.fetchone()[0])


class _Progress:
    """Logs rows read so far, at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, context: dg.AssetExecutionContext, plan: TablePlan) -> None:
        self.context, self.plan = context, plan
        self.rows = 0
        self.last = time.monotonic()

    def __call__(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.context.log.info(f"{self.plan.name}: {self.rows:,} rows read")


def build_assets(
    plans: Sequence[TablePlan], ctx: AssetContext
) -> tuple[list[dg.AssetSpec], list[dg.AssetsDefinition]]:
    """Source specs for every table; loaded-table assets for those with columns to load.

    A table without loadable columns keeps its source asset (so it is visible) and its plan
    notes say why it is skipped.
    """
    return [source_spec(p) for p in plans], [build_table_asset(p, ctx) for p in plans if p.columns]
