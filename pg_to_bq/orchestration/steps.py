"""What a table step does when it runs: load its selected tables, report each one.

A step (`pg_to_bq.orchestration.step_assets.build_group_asset`) loads the tables selected in the run:

1. The live catalog, one query per run (cached in the process by run id): each table is
   planned again from the columns PostgreSQL has now, whatever the snapshot said; a table
   no longer in PostgreSQL (dropped or renamed) is reported, not failed, and its
   destination table stays as it was.
2. `pg_to_bq.load.group.load_group` loads them (one dlt pipeline for the step).
3. Each table gets its own materialization, metadata and checks, and its outcome is
   published (`pg_to_bq.orchestration.progress`) for the CLI. A failed table is logged with its stack
   trace in the event log; the others still materialize; the step fails at the end,
   naming every failed table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg

from pg_to_bq.destinations.writer_lock import kept
from pg_to_bq.load.group import load_group
from pg_to_bq.load.results import CAPTURED, NOT_CAPTURED, LoadResult, TableLoad, Window
from pg_to_bq.orchestration import progress
from pg_to_bq.orchestration.names import (
    APPLY_DELETES_TAG,
    CHANGES_ONLY_TAG,
    FULL_REFRESH_TAG,
    AssetContext,
    LoadConfig,
    destination_key,
)
from pg_to_bq.orchestration.resources import Destination, SourceDatabase
from pg_to_bq.orchestration.specs import destination_metadata
from pg_to_bq.orchestration.storage_connections import hold_storage_connections
from pg_to_bq.planning.catalog import Catalog
from pg_to_bq.planning.errors import describe, is_transient
from pg_to_bq.planning.groups import LoadGroup
from pg_to_bq.planning.tables import SOFT_DELETES_NOTE, TablePlan, replan
from pg_to_bq.postgres.connect import connect
from pg_to_bq.postgres.discovery import discover

PROGRESS_EVERY_S = 10.0

# The live catalog of the run being executed in this process (one query per run).
_live_catalogs: dict[str, Catalog] = {}


def live_catalog(run_id: str, url: str, ctx: AssetContext, statement_timeout_s: int) -> Catalog:
    """PostgreSQL's catalog now, queried once per run in this process."""
    catalog = _live_catalogs.get(run_id)
    if catalog is None:
        with connect(url, statement_timeout_s=statement_timeout_s) as conn:
            catalog = discover(conn, ctx.schemas, include_views=True)
        _live_catalogs.clear()  # one run at a time is kept: the catalog is per run
        _live_catalogs[run_id] = catalog
    return catalog


def run_step(
    context: dg.AssetExecutionContext,
    group: LoadGroup,
    ctx: AssetContext,
    config: LoadConfig,
    source: SourceDatabase,
    destination: Destination,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    hold_storage_connections(context.instance)
    selected = context.selected_asset_keys
    plans = [p for p in group.plans if destination_key(p, ctx) in selected]
    tags = context.run.tags
    if tags.get(CHANGES_ONLY_TAG) == "true":
        # Change capture's short schedule: tables without a primary key (not captured) wait
        # for the nightly run.
        plans = [p for p in plans if p.primary_key]
    full_refresh = config.full_refresh or tags.get(FULL_REFRESH_TAG) == "true"
    deletes = (config.apply_deletes or tags.get(APPLY_DELETES_TAG) == "true") and not full_refresh
    window = _window(context, plans)
    step_started = time.monotonic()
    try:
        url = source.resolved_url()
        live = live_catalog(context.run.run_id, url, ctx, source.statement_timeout_s)
        loads: list[TableLoad] = []
        for plan in plans:
            table = live.get(plan.table.schema, plan.table.name)
            if table is None:
                _report_gone(context, plan, ctx, live)
                continue
            live_plan = replan(plan, table, ctx.destination_kind, ctx.overrides)
            loads.append(TableLoad(live_plan, full_refresh=full_refresh, window=window,
                                   streams=source.streams_for(table.size_bytes),
                                   apply_deletes=deletes))

        context.log.info(f"loading {len(loads)} table(s) into {ctx.qualified_prefix}"
                         + (" (full refresh)" if full_refresh else ""))
        results = load_with(context, loads, group.pipeline_name, source, destination, url, ctx)
    except Exception as exc:
        # What every table of the step needs failed (the source, a secret, the destination):
        # each selected table fails with that cause.
        message = describe(exc)
        for plan in plans:
            progress.publish(progress.TableOutcome(plan.name, "failed", error=message))
        raise dg.Failure(description=f"{len(plans)} table(s) not loaded: {message}",
                         metadata={"tables": ", ".join(p.name for p in plans)[:2000]},
                         allow_retries=is_transient(exc)) from exc

    snapshots = {plan.name: plan for plan in plans}
    failed: list[LoadResult] = []
    checked: list[dg.AssetKey] = []
    # Every table's materialization first, then the checks: a check's evaluation names the
    # materialization it checked, which Dagster looks up in its storage per table unless it
    # is known (`_look_up_materializations`).
    for load, result in zip(loads, results, strict=True):
        if not result.ok:
            failed.append(result)
            context.log.error(f"{result.error}\n\n{result.trace or ''}".rstrip())
            # On the table's own asset: why this run did not load it (Dagster records the
            # step's failure, which names every failed table, on the run).
            context.log_event(dg.AssetObservation(
                asset_key=destination_key(load.plan, ctx),
                metadata={"pg_to_bq/load_failed": result.error or "failed"}))
            continue
        yield _materialization(load.plan, snapshots[load.plan.name], result, ctx)
        if result.check is not None:
            checked.append(destination_key(load.plan, ctx))
    _look_up_materializations(context, checked)
    for load, result in zip(loads, results, strict=True):
        if not result.ok:
            progress.publish(progress.TableOutcome(
                load.plan.name, "failed", mode=result.mode, seconds=result.duration_s,
                error=result.error, trace=result.trace))
            continue
        yield from _checked(context, load.plan, result, ctx)
    if failed:
        names = ", ".join(r.table for r in failed)
        raise dg.Failure(
            description=f"{len(failed)} of {len(plans)} table(s) failed: {names}. "
                        + " | ".join(r.error or "" for r in failed[:20]),
            metadata={r.table: r.error or "" for r in failed[:100]},
            # Only a step in which nothing loaded is worth retrying as a whole: the tables
            # were already tried again inside the step.
            allow_retries=len(failed) == len(plans) and all(r.transient for r in failed),
        )
    context.log.info(f"{len(loads)} table(s) in {time.monotonic() - step_started:.1f} s")


def load_with(context: dg.OpExecutionContext | dg.AssetExecutionContext,
              loads: Sequence[TableLoad], pipeline_name: str, source: SourceDatabase,
              destination: Destination, url: str, ctx: AssetContext) -> list[LoadResult]:
    """`load_group` with the run's resources: the DuckDB file's writer lock (a waiting load
    says so in the run's log), the hash salt when a table hashes, progress in the log, the
    values check and drift as the settings say."""

    def waiting(seconds: float) -> None:
        context.log.info(f"waiting for the DuckDB file {destination.duckdb_path}, which "
                         f"another load is writing ({seconds:.0f} s so far)")

    hashing = any(load.plan.hashed for load in loads)
    with kept():  # the file stays open between the group's sections
        return load_group(
            loads, pipeline_name=pipeline_name, source_url=url,
            destination=destination.for_loads(), dataset=destination.dataset,
            work_dir=destination.work_path, batch_bytes=source.batch_bytes,
            hash_salt=source.resolved_hash_salt() if hashing else None,
            statement_timeout_s=source.statement_timeout_s, on_batch=_Progress(context),
            destination_lock=lambda: destination.writing(on_wait=waiting),
            fingerprint_rows=ctx.fingerprint_rows if ctx.fingerprint else None,
            drift_max_rows=ctx.drift_max_rows or None, cdc_publication=ctx.cdc_publication,
            run_id=context.run.run_id,
            # A step of small tables reads as many at once as a large table has streams.
            read_connections=source.parallel_streams)


def _window(context: dg.AssetExecutionContext, plans: Sequence[TablePlan]) -> Window | None:
    partitioned = [p for p in plans if p.partition is not None]
    if not partitioned or not context.has_partition_key:
        return None
    time_window = context.partition_time_window
    return Window(partitioned[0].partition.column, time_window.start, time_window.end)


def _report_gone(context: dg.AssetExecutionContext, plan: TablePlan, ctx: AssetContext,
                 live: Catalog) -> None:
    """A table of the definitions that PostgreSQL no longer has: reported, not failed."""
    renamed = next((t for t in live.tables
                    if plan.table.oid is not None and t.oid == plan.table.oid), None)
    what = (f"renamed to {renamed.qualified_name} in PostgreSQL" if renamed
            else "no longer in PostgreSQL (dropped, or renamed)")
    message = (f"table {plan.name} is {what}: not loaded; "
               f"{ctx.qualified_prefix}.{plan.destination_table} stays as it was")
    context.log.warning(message)
    context.log_event(dg.AssetObservation(
        asset_key=destination_key(plan, ctx),
        metadata={"pg_to_bq/source_status": "renamed" if renamed else "gone",
                  "pg_to_bq/source_note": message}))
    progress.publish(progress.TableOutcome(plan.name, "gone", error=message))


def _materialization(plan: TablePlan, snapshot_plan: TablePlan, result: LoadResult,
                     ctx: AssetContext) -> dg.MaterializeResult:
    """The table's materialization. The data version is the dlt load that wrote the table's
    rows and the rows the table holds: an unchanged table keeps its last load's, so Dagster
    (and automation downstream) sees no new data, while its freshness is renewed; one whose
    delete pass removed rows (a load of nothing) gets a new one."""
    metadata = materialization_metadata(plan, snapshot_plan, result, ctx,
                                        result.destination_rows, result.deleted)
    return dg.MaterializeResult(
        asset_key=destination_key(plan, ctx), metadata=metadata,
        data_version=data_version(result))


def data_version(result: LoadResult) -> dg.DataVersion | None:
    """`load id/rows` (the load id alone where the rows were not counted)."""
    if not result.load_id:
        return None
    rows = result.destination_rows
    return dg.DataVersion(result.load_id if rows is None else f"{result.load_id}/{rows}")


def _look_up_materializations(context: dg.AssetExecutionContext,
                              keys: Sequence[dg.AssetKey]) -> None:
    """Look up, 100 at a time, the materializations just recorded for `keys`, which their
    checks' evaluations name (Dagster's `AssetCheckResult` asks its storage one asset at a
    time: 3 s of an unchanged 1,000-table run). This fills the step's own cache with what
    Dagster's per-asset lookup finds (its `DataVersionCache`, private: where it is not what
    this expects, nothing is done and Dagster looks each one up itself)."""
    step = getattr(context.op_execution_context, "_step_execution_context", None)
    cache = getattr(step, "_data_version_cache", None)
    known = getattr(cache, "input_asset_version_info", None)
    fetch = getattr(cache, "_fetch_input_asset_version_info", None)
    if not isinstance(known, dict) or not callable(fetch):
        return
    missing = [key for key in keys if key not in known]
    if missing:
        fetch(missing)


def _checked(
    context: dg.AssetExecutionContext,
    plan: TablePlan,
    result: LoadResult,
    ctx: AssetContext,
) -> Iterator[dg.AssetCheckResult]:
    """The table's check, after its materialization, and its outcome for the CLI. A failed
    ERROR check (rows or values lost or changed) is blocking: the step fails once every
    table is reported (Dagster raises after the step's last event), downstream assets do not
    run on the table, and the CLI reports the table as failed."""
    key = destination_key(plan, ctx)
    notes = [*result.changes, *_notes(plan)]
    if result.extra.get(NOT_CAPTURED):
        notes.append(result.extra[NOT_CAPTURED])
    outcomes = [result.check] if result.check is not None else []
    wanted = context.selected_asset_check_keys
    failed_checks, lost = [], []
    for outcome in outcomes:
        if dg.AssetCheckKey(key, outcome.name) not in wanted:
            continue
        if not outcome.passed:
            failed = f"{outcome.name} ({outcome.description})"
            (lost if outcome.severity == "ERROR" else failed_checks).append(failed)
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity(outcome.severity),
            description=outcome.description,
            metadata=outcome.metadata,
        )
    if lost:
        done = "unchanged in PostgreSQL" if result.unchanged else "loaded"
        message = (f"table {plan.name}: {done}, but the destination differs from the source: "
                   + "; ".join(lost) + " (the next run reads the table whole)")
        context.log.error(message)
        progress.publish(progress.TableOutcome(
            plan.name, "failed", rows=result.rows, mode=result.mode, seconds=result.duration_s,
            error=message, notes=tuple(notes), failed_checks=tuple(failed_checks)))
        return
    progress.publish(progress.TableOutcome(
        plan.name, "unchanged" if result.unchanged else "loaded", rows=result.rows,
        mode=result.mode, seconds=result.duration_s, notes=tuple(notes),
        failed_checks=tuple(failed_checks), deleted=result.deleted,
        reason=unchanged_because(result) if result.unchanged else result.reason,
        soft_deletes=plan.soft_deletes))


def unchanged_because(result: LoadResult) -> str:
    """How an unchanged table was found unchanged (its materialization's `unchanged`, and
    its CLI line)."""
    return {
        "versions": "the table's row versions are those of the last load",
        "changes": "no change captured since the last load, not read",
    }.get(result.extra.get("unchanged"),
          "the rows of the lookback window read back as last loaded")


def materialization_metadata(plan: TablePlan, snapshot_plan: TablePlan | None,
                             result: LoadResult, ctx: AssetContext,
                             destination_rows: int | None, deleted: int | None
                             ) -> dict[str, Any]:
    """What a table's materialization records: rows, mode, load id, cursors, the schema
    changes the load handled, columns left out or renamed, and (while the definitions were
    built from an older catalog) the columns loaded now."""
    metadata: dict[str, Any] = {
        "rows_loaded": result.rows,
        "load_mode": result.mode,
        "duration_s": round(result.duration_s, 3),
        "dlt_load_id": result.load_id or "",
        "destination_table": f"{ctx.qualified_prefix}.{plan.destination_table}",
    }
    if destination_rows is not None:
        metadata["dagster/row_count"] = destination_rows
    if result.unchanged:
        metadata["unchanged"] = unchanged_because(result)
    if plan.soft_deletes:
        metadata["soft_deletes"] = SOFT_DELETES_NOTE
    optional = {"source_rows_in_snapshot": result.snapshot_rows, "rows_deleted": deleted,
                "cursor_from": result.cursor_from, "cursor_to": result.cursor_to}
    metadata.update({k: v if isinstance(v, int) else str(v)
                     for k, v in optional.items() if v is not None})
    newest = _parse_cursor(result.cursor_to if result.cursor_to is not None
                           else result.cursor_from)
    if plan.cursor and newest is not None:
        # How recent the source's newest row is: information, not a check (an old table
        # that loads every night is healthy; whether it loaded is its freshness policy's).
        metadata["newest_cursor"] = str(newest)
        metadata["newest_cursor_age_hours"] = _age_hours(newest)
    if result.reason:
        metadata["pg_to_bq/read_whole_because"] = result.reason
    if result.extra.get(NOT_CAPTURED):
        metadata["pg_to_bq/change_capture"] = result.extra[NOT_CAPTURED]
    if captured := result.extra.get(CAPTURED):
        metadata.update({f"cdc/{kind}": captured[kind]
                         for kind in ("inserts", "updates", "deletes", "keys")})
        metadata["cdc/positions"] = f"{_lsn(captured['from'])} → {_lsn(captured['to'])}"
    if result.changes:
        metadata["pg_to_bq/schema_changes"] = dg.MetadataValue.md(
            "\n".join(f"- {change}" for change in result.changes))
    if snapshot_plan is None or \
            [c.source for c in plan.columns] != [c.source for c in snapshot_plan.columns]:
        # The columns loaded now, until the definitions are built from a newer catalog.
        metadata["dagster/column_schema"] = destination_metadata(plan, ctx)[
            "dagster/column_schema"]
    if plan.left_out:
        metadata["pg_to_bq/left_out_columns"] = dg.MetadataValue.md(
            "\n".join(f"- {c.describe()}" for c in plan.left_out))
    if plan.renamings:
        metadata["pg_to_bq/renamed_columns"] = dg.MetadataValue.md(
            "\n".join(f"- {r.describe()}" for r in plan.renamings))
    return metadata


def _notes(plan: TablePlan) -> list[str]:
    notes = [f"column {c.column} {c.action}: {c.reason} ({c.setting})" for c in plan.left_out]
    notes += [f"column {r.describe()}" for r in plan.renamings]
    if plan.table_renaming is not None:
        notes.append(f"loaded as {plan.table_renaming.describe()}")
    return notes


def _age_hours(value: Any) -> float | None:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        return None
    return round((datetime.now(UTC) - moment).total_seconds() / 3600, 2)


def _parse_cursor(value: Any) -> Any:
    """A timestamp or date cursor as stored (ISO text) back to its value; others as they are."""
    if isinstance(value, str):
        for parse in (datetime.fromisoformat, date.fromisoformat):
            try:
                return parse(value)
            except ValueError:
                continue
    return value


class _Progress:
    """Logs rows read so far, at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self.context = context
        self.rows: dict[str, int] = {}
        self.last = time.monotonic()

    def __call__(self, table: str, rows: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + rows
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.context.log.info(f"{table}: {self.rows[table]:,} rows read")


def _lsn(position: int) -> str:
    """A WAL position as PostgreSQL writes it (`16/B374D848`)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"
