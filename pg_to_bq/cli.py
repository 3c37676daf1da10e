"""The `pg-to-bq` command: demo, discover, sync."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pg_to_bq.catalog import Catalog
from pg_to_bq.naming import NameCollisionError
from pg_to_bq.overrides import OverridesError
from pg_to_bq.plan import PlanError, TablePlan
from pg_to_bq.secrets import SecretError
from pg_to_bq.settings import SettingsError
from pg_to_bq.source import SourceUnreachable

USER_ERRORS = (SettingsError, SourceUnreachable, SecretError, OverridesError, PlanError,
               NameCollisionError, KeyError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pg-to-bq",
        description="Mirror every table of a PostgreSQL database into BigQuery (or DuckDB) "
        "as Dagster assets loaded by dlt. Settings come from PG_TO_BQ_* environment variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="embedded PostgreSQL with sample data + Dagster UI")
    demo.add_argument("--dir", default=".pg_to_bq", type=Path,
                      help="where the demo keeps its data (default: .pg_to_bq)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", default=3000, type=int)
    demo.add_argument("--no-ui", action="store_true",
                      help="prepare the database and catalog, then exit")

    discover = commands.add_parser(
        "discover", help="query the catalog (one query), save the snapshot, print the plan")
    discover.add_argument("--offline", action="store_true",
                          help="print the plan from the saved snapshot without querying PostgreSQL")

    sync = commands.add_parser("sync", help="load tables in-process, without the UI")
    sync.add_argument("tables", nargs="*", help="schema.table (or table) names; default: all")
    sync.add_argument("--full-refresh", action="store_true",
                      help="replace the tables (and reset incremental cursors)")
    sync.add_argument("--partition", help="partition key for partitioned tables (e.g. 2026-11-01)")
    sync.add_argument("--apply-deletes", action="store_true",
                      help="after merging, delete rows whose primary key left the source")
    sync.add_argument("--refresh-catalog", action="store_true",
                      help="rediscover tables before loading")

    args = parser.parse_args(argv)
    _quiet_library_warnings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from pg_to_bq.demo import run_demo

            return run_demo(args.dir, args.host, args.port, open_ui=not args.no_ui)
        if args.command == "discover":
            return cmd_discover(offline=args.offline)
        return cmd_sync(args.tables, args.full_refresh, args.partition, args.refresh_catalog,
                        args.apply_deletes)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


def _quiet_library_warnings() -> None:
    """Dagster's beta/preview notices mean nothing to someone running the CLI."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview).*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def cmd_discover(offline: bool = False) -> int:
    from pg_to_bq.project import load_catalog, plans_for, refresh_catalog
    from pg_to_bq.settings import Settings

    settings = Settings.from_env()
    if offline:
        loaded = load_catalog(settings)
        catalog = loaded.catalog
        origin = f"snapshot {settings.snapshot_path} ({catalog.discovered_at})"
    else:
        catalog = refresh_catalog(settings)
        origin = f"PostgreSQL {settings.redacted_source()} (snapshot saved to {settings.snapshot_path})"
    plans = plans_for(settings, catalog)
    print(f"{len(plans)} table(s) from {origin} → {settings.destination.describe()} "
          f"dataset {settings.dataset}")
    print(format_plans(plans, catalog))
    return 0


def format_plans(plans: Sequence[TablePlan], catalog: Catalog) -> str:
    header = ("table", "destination", "disposition", "cursor", "primary key", "est. rows", "notes")
    rows = [header]
    for plan in plans:
        notes = list(plan.notes)
        if plan.excluded:
            notes.append("excluded: " + ", ".join(plan.excluded))
        if plan.hashed:
            notes.append("hashed: " + ", ".join(plan.hashed))
        if plan.partition:
            notes.append(f"{plan.partition.granularity} partitions on {plan.partition.column}")
        if plan.table.kind == "p":
            notes.append("partitioned table: loaded through the parent")
        rows.append((
            plan.name,
            plan.destination_table,
            plan.disposition + (" (incremental)" if plan.incremental else ""),
            plan.cursor or "-",
            ", ".join(plan.primary_key) or "-",
            f"{plan.table.estimated_rows:,}" if plan.table.estimated_rows is not None else "?",
            "; ".join(notes) or "-",
        ))
    widths = [max(_width(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell + " " * (widths[i] - _width(cell)) for i, cell in enumerate(row))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _width(text: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def cmd_sync(
    names: Sequence[str], full_refresh: bool, partition: str | None, refresh: bool,
    apply_deletes: bool = False,
) -> int:
    import dagster as dg

    from pg_to_bq.assets import APPLY_DELETES_TAG, FULL_REFRESH_TAG, destination_key
    from pg_to_bq.plan import select_plans
    from pg_to_bq.project import asset_context, build_definitions, load_catalog, plans_for
    from pg_to_bq.settings import Settings

    settings = Settings.from_env()
    loaded = load_catalog(settings, refresh=refresh)
    if loaded.warning:
        print(f"warning: {loaded.warning}", file=sys.stderr)
    plans = plans_for(settings, loaded.catalog)
    chosen = select_plans(plans, names) if names else plans
    skipped = [p for p in chosen if not p.columns]
    chosen = [p for p in chosen if p.columns]
    for plan in skipped:
        print(f"skip  {plan.name}: no loadable columns")
    if not chosen:
        print("nothing to load")
        return 1 if skipped or names else 0
    for plan in chosen:
        if plan.partition is not None and partition is None:
            raise SettingsError(f"table {plan.name} is partitioned by {plan.partition.granularity}:"
                                " pass --partition KEY (e.g. --partition 2026-11-01)")
    defs = build_definitions(settings)
    ctx = asset_context(settings)
    if os.environ.get("DAGSTER_HOME"):
        # Runs are recorded where the UI reads them; a new home is created, not an error.
        Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        instance = dg.DagsterInstance.get()
    else:
        instance = dg.DagsterInstance.ephemeral()
    assets = list(defs.assets or [])
    failures: list[tuple[str, str]] = []
    total_rows, started = 0, time.monotonic()
    print(f"loading {len(chosen)} table(s) into {settings.destination.describe()} "
          f"dataset {settings.dataset}")
    for index, plan in enumerate(chosen, start=1):
        key = destination_key(plan, ctx)
        prefix = f"[{index}/{len(chosen)}] {plan.name}"
        print(f"{prefix} …", flush=True)
        table_started = time.monotonic()
        result = dg.materialize(
            assets,
            selection=dg.AssetSelection.assets(key),
            resources=defs.resources,
            instance=instance,
            partition_key=partition if plan.partition is not None else None,
            tags={**({FULL_REFRESH_TAG: "true"} if full_refresh else {}),
                  **({APPLY_DELETES_TAG: "true"} if apply_deletes else {})},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=False,
        )
        elapsed = time.monotonic() - table_started
        if result.success:
            metadata = _materialization_metadata(result, key)
            rows = int(metadata.get("rows_loaded", 0))
            total_rows += rows
            failed_checks = _failed_checks(result)
            suffix = f"; checks failed: {', '.join(failed_checks)}" if failed_checks else ""
            deleted = metadata.get("rows_deleted")
            deleted_text = f", {deleted:,} deleted" if isinstance(deleted, int) else ""
            print(f"{prefix}: ok, {rows:,} rows ({metadata.get('load_mode', '?')}){deleted_text} "
                  f"in {elapsed:.1f}s{suffix}", flush=True)
        else:
            message = _failure_message(result) or "failed (see the Dagster logs)"
            failures.append((plan.name, message))
            print(f"{prefix}: FAILED: {message}", flush=True)
    print(f"\n{len(chosen) - len(failures)} loaded, {len(failures)} failed, "
          f"{total_rows:,} rows in {time.monotonic() - started:.1f}s")
    for name, message in failures:
        print(f"  FAILED {name}: {message}")
    return 1 if failures else 0


def _materialization_metadata(result, key) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key == key:
            return {k: v.value for k, v in materialization.metadata.items()}
    return {}


def _failed_checks(result) -> list[str]:
    failed = []
    for event in result.get_asset_check_evaluations():
        if not event.passed:
            failed.append(f"{event.check_name} ({event.description})")
    return failed


def _failure_message(result) -> str | None:
    for event in result.get_step_failure_events():
        failure = event.step_failure_data
        if failure is None:
            continue
        if failure.user_failure_data is not None and failure.user_failure_data.description:
            return failure.user_failure_data.description
        if failure.error is not None:
            return failure.error.message.strip().splitlines()[0]
    return None


if __name__ == "__main__":
    raise SystemExit(main())
