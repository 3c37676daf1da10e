"""The `pg-to-bq` command: demo, discover, sync."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pg_to_bq.destinations.writer_lock import kept
from pg_to_bq.planning.catalog import Catalog
from pg_to_bq.planning.naming import SOFT_DELETE_COLUMN
from pg_to_bq.planning.overrides import OverridesError
from pg_to_bq.planning.secrets import SecretError
from pg_to_bq.planning.settings import SettingsError
from pg_to_bq.planning.tables import PlanError, TablePlan
from pg_to_bq.postgres.connect import SourceUnreachable

USER_ERRORS = (SettingsError, SourceUnreachable, SecretError, OverridesError, PlanError,
               KeyError)


def run() -> NoReturn:
    """The `pg-to-bq` console script: `main`, then `exit_now` with its status."""
    from pg_to_bq import collector

    collector.short_lived_process()
    sys.stdout = _ClosedPipeTolerant(sys.stdout)
    exit_now(main())


class _ClosedPipeTolerant:
    """Standard output that drops what is written once its reader has gone (`pg-to-bq sync |
    head`): the lines are the run's report, not its work, so the loads go on and the exit
    status is still theirs. Writing to the closed pipe raised BrokenPipeError inside the
    step that published a table's outcome, which failed that step's tables."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        # (what is still buffered for the closed pipe is dropped with it)
        self._stream = open(os.devnull, "w")  # noqa: SIM115 - standard output from now on

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def exit_now(code: int) -> NoReturn:
    """End the process with `code` without tearing the interpreter down: with Dagster and
    the load libraries imported, freeing every module and object of a process about to end
    took ~0.4 s, a sixth of an unchanged one-table sync. Output is flushed and the exit
    handlers run (temporary directories, logging), as at a normal exit; while a thread that
    is not a daemon still runs, the exit is the normal one, which waits for it."""
    import atexit
    import contextlib
    import threading

    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # noqa: SLF001 - the handlers a normal exit runs, run here
    for stream in (sys.stdout, sys.stderr):
        # (a closed pipe, a closed stream: nothing to flush into)
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


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
    sync.add_argument("--verbose", "-v", action="store_true",
                      help="also print Dagster's log and failed tables' stack traces")

    cdc = commands.add_parser("cdc", help="change capture: the slot's state, or drop it")
    cdc.add_argument("action", choices=("status", "drop"),
                     help="status: the slot's lag and retained WAL and the publication; "
                          "drop: remove the slot and the publication")

    args = parser.parse_args(argv)
    _quiet_library_warnings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from pg_to_bq.cli.demo import run_demo

            return run_demo(args.dir, args.host, args.port, open_ui=not args.no_ui)
        if args.command == "discover":
            return cmd_discover(offline=args.offline)
        if args.command == "cdc":
            from pg_to_bq.cli.cdc import cmd_cdc

            return cmd_cdc(args.action)
        return cmd_sync(args.tables, args.full_refresh, args.partition, args.refresh_catalog,
                        args.apply_deletes, args.verbose)
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
    from pg_to_bq.orchestration.code_location import load_catalog, plans_for, refresh_catalog
    from pg_to_bq.planning.settings import Settings
    from pg_to_bq.planning.tables import unused_settings

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
    for sentence in unused_settings(settings, catalog):
        print(f"warning: {sentence}", file=sys.stderr)
    if settings.cdc and not offline:
        from pg_to_bq.cli.cdc import format_prerequisites
        from pg_to_bq.orchestration.code_location import resolve_source_url

        print()
        print(format_prerequisites(settings, resolve_source_url(settings),
                                   [p for p in plans if p.loadable]))
    return 0


def format_plans(plans: Sequence[TablePlan], catalog: Catalog) -> str:
    header = ("table", "destination", "disposition", "cursor", "primary key", "est. rows", "notes")
    rows = [header]
    for plan in plans:
        notes = list(plan.notes)
        if plan.error:
            notes.append(f"NOT LOADABLE: {plan.error}")
        notes.extend(f"{c.action}: {c.column} ({c.reason}; {c.setting})" for c in plan.left_out)
        notes.extend(f"column {r.describe()}" for r in plan.renamings)
        if plan.table_renaming is not None:
            notes.append(f"table {plan.table_renaming.describe()}")
        if plan.partition:
            notes.append(f"{plan.partition.granularity} partitions on {plan.partition.column}")
        if plan.table.kind == "p":
            notes.append("partitioned table: loaded through the parent")
        rows.append((
            plan.name,
            plan.destination_table,
            plan.describe_disposition(),
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
    apply_deletes: bool = False, verbose: bool = False,
) -> int:
    """Materialize the selected tables' assets in one Dagster run, in this process."""
    from pg_to_bq import collector

    # What the run starts with (modules, settings, definitions) lives to the process's end:
    # the collector waits, then leaves it out (`collector.long_lived`).
    with collector.long_lived():
        import dagster as dg

        from pg_to_bq.orchestration import progress
        from pg_to_bq.orchestration.code_location import (
            asset_context,
            build_definitions,
            load_catalog,
            plans_for,
            resolve_source_url,
        )
        from pg_to_bq.orchestration.names import (
            APPLY_DELETES_TAG,
            CATALOG_STEP,
            FULL_REFRESH_TAG,
            catalog_key,
            destination_key,
        )
        from pg_to_bq.planning.settings import Settings
        from pg_to_bq.planning.tables import select_plans, unknown_tables, unused_settings
        from pg_to_bq.postgres.connect import check_reachable

        settings = Settings.from_env()
        # One line (exit 2) for a source no table can reach (TLS, login, network), before any
        # table is tried: the catalog snapshot alone would not notice.
        check_reachable(resolve_source_url(settings))
        loaded = load_catalog(settings, refresh=refresh, empty_when_unreachable=False)
        if loaded.origin == "snapshot" and unknown_tables(settings, loaded.catalog, names):
            # Created or renamed in PostgreSQL since the snapshot: one discovery (saved to the
            # snapshot) finds them, rather than a table left out or an entry left unused.
            loaded = load_catalog(settings, refresh=True, empty_when_unreachable=False)
        if loaded.warning:
            print(f"warning: {loaded.warning}", file=sys.stderr)
        warned = {f"warning: {s}" for s in unused_settings(settings, loaded.catalog)}
        for line in sorted(warned):
            print(line, file=sys.stderr)
        plans = plans_for(settings, loaded.catalog)
        chosen = select_plans(plans, names) if names else plans
        skipped = [p for p in chosen if not p.columns and p.error is None]
        chosen = [p for p in chosen if p.columns or p.error]
        for plan in skipped:
            print(f"skip  {plan.name}: {'; '.join(plan.notes) or 'no loadable columns'}")
        if not chosen:
            print("nothing to load")
            return 1 if skipped or names else 0
        for plan in chosen:
            if plan.partition is not None and partition is None:
                raise SettingsError(
                    f"table {plan.name} is partitioned by {plan.partition.granularity}: pass "
                    "--partition KEY (e.g. --partition 2026-11-01)")
        defs = build_definitions(settings)
        ctx = asset_context(settings)
        if os.environ.get("DAGSTER_HOME"):
            # Runs are recorded where the UI reads them; a new home is created, not an error.
            Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
            instance = dg.DagsterInstance.get()
        else:
            from pg_to_bq.cli.sync_instance import ephemeral_instance

            instance = ephemeral_instance()
        assets = list(defs.assets or [])
        report = _Report(len(chosen), verbose)
        print(f"loading {len(chosen)} table(s) into {settings.destination.describe()} "
              f"dataset {settings.dataset}", flush=True)
    tags = {**({FULL_REFRESH_TAG: "true"} if full_refresh else {}),
            **({APPLY_DELETES_TAG: "true"} if apply_deletes else {})}
    # One run for the unpartitioned tables, one per kind of partitions (a run has one key).
    runs: dict[str | None, list[TablePlan]] = {}
    for plan in chosen:
        runs.setdefault(plan.partition.granularity if plan.partition else None, []).append(plan)
    # The DuckDB file stays open from one step to the next (`writer_lock.kept`): the steps
    # run one after another in this process, and another process that waits for the file
    # gets it between two of them.
    def notice(line: str) -> None:
        if line not in warned:  # (the catalog step's warnings, unless said above)
            warned.add(line)
            print(line, file=sys.stderr if line.startswith("warning: ") else sys.stdout,
                  flush=True)

    with progress.listening(report.table, notice), kept():
        for granularity, run_plans in runs.items():
            keys = [destination_key(p, ctx) for p in run_plans]
            if granularity is None and (not names or settings.cdc):
                # Everything: the catalog step too, which keeps the snapshot up to date and
                # loads tables new in PostgreSQL; with change capture, always: it reads the
                # changes the tables' steps apply.
                keys.append(catalog_key(ctx))
            result = dg.materialize(
                assets,
                selection=dg.AssetSelection.assets(*keys),
                resources=defs.resources,
                instance=instance,
                partition_key=partition if granularity else None,
                tags=tags,
                run_config={"loggers": {"console": {"config": {
                    "log_level": "INFO" if verbose else "CRITICAL"}}}},
                raise_on_error=False,
            )
            if not result.success:
                catalog_failure = _failure_message(result, ctx.names.name(CATALOG_STEP))
                if catalog_failure:
                    report.step_failed("the catalog step", catalog_failure)
                    # The tables whose steps wait for it (change capture) did not run.
                    report.unreported(run_plans, "not loaded: the catalog step, which reads "
                                      "the changes captured tables apply, failed (above); the "
                                      "next run loads them")
                report.unreported(run_plans, _failure_message(result))
    return report.summary()


class _Report:
    """Prints a line per table as its outcome arrives, then the summary."""

    def __init__(self, total: int, verbose: bool) -> None:
        self.total, self.verbose = total, verbose
        self.outcomes: dict[str, Any] = {}
        self.done = 0
        self.started = time.monotonic()
        self.failed_steps: list[str] = []

    def table(self, outcome: Any) -> None:
        self.outcomes[outcome.table] = outcome
        self.done += not outcome.new
        position = "new" if outcome.new else f"{self.done}/{self.total}"
        prefix = f"[{position}] {outcome.table}"
        if outcome.status == "failed":
            print(f"{prefix}: FAILED: {outcome.error}", flush=True)
            if self.verbose and outcome.trace:
                print(outcome.trace.rstrip(), flush=True)
            return
        if outcome.status == "gone":
            print(f"{prefix}: not loaded: {outcome.error}", flush=True)
            return
        deleted = "" if outcome.deleted is None else f", {outcome.deleted:,} deleted" + (
            f" (kept, marked in {SOFT_DELETE_COLUMN})"
            if outcome.soft_deletes and outcome.deleted else "")
        checks = f"; checks failed: {', '.join(outcome.failed_checks)}" \
            if outcome.failed_checks else ""
        if outcome.status == "unchanged":
            # ("0 rows (full)" said that it was read whole and found empty.)
            what = f"unchanged ({outcome.reason})" if outcome.reason else "unchanged"
        else:
            mode = f"{outcome.mode}: {outcome.reason}" if outcome.reason else outcome.mode
            what = f"ok, {outcome.rows:,} rows ({mode})"
        print(f"{prefix}: {what}{deleted} in {outcome.seconds:.1f}s{checks}", flush=True)

    def step_failed(self, what: str, message: str) -> None:
        """A step that loads no table of its own failed (the catalog step)."""
        self.failed_steps.append(f"{what}: {message}")
        print(f"FAILED {what}: {message}", flush=True)

    def unreported(self, plans: Sequence[TablePlan], message: str | None) -> None:
        """Tables of a failed run that no step reported (the step failed as a whole)."""
        from pg_to_bq.orchestration.progress import TableOutcome

        for plan in plans:
            if plan.name not in self.outcomes:
                self.table(TableOutcome(plan.name, "failed",
                                        error=message or "failed (see the Dagster logs)"))

    def summary(self) -> int:
        outcomes = list(self.outcomes.values())
        failed = [o for o in outcomes if o.status == "failed"]
        gone = [o for o in outcomes if o.status == "gone"]
        loaded = [o for o in outcomes if o.status == "loaded"]
        unchanged = [o for o in outcomes if o.status == "unchanged"]
        rows = sum(o.rows for o in loaded)
        print(f"\n{len(loaded)} loaded"
              + (f", {len(unchanged)} unchanged" if unchanged else "")
              + f", {len(failed)} failed"
              + (f", {len(gone)} not in PostgreSQL" if gone else "")
              + f", {rows:,} rows in {time.monotonic() - self.started:.1f}s")
        for step in self.failed_steps:
            print(f"  FAILED {step}")
        for outcome in failed:
            print(f"  FAILED {outcome.table}: {outcome.error}")
        for outcome in gone:
            print(f"  NOT LOADED {outcome.table}: {outcome.error}")
        # (a table that failed its check after loading says what its load changed, too)
        noted = [o for o in outcomes if o.notes and o.status != "gone"]
        if noted:
            print("notes:")
            for outcome in noted:
                for note in outcome.notes:
                    print(f"  {outcome.table}: {note}")
        if failed and not self.verbose:
            print("(stack traces are in the Dagster event log; --verbose prints them here)")
        return 1 if failed or self.failed_steps else 0


def _failure_message(result: Any, step: str | None = None) -> str | None:
    """The first line of the first step failure of a Dagster run (of `step`, if given)."""
    for event in result.get_step_failure_events():
        if step is not None and event.step_key != step:
            continue
        failure = event.step_failure_data
        if failure is None:
            continue
        if failure.user_failure_data is not None and failure.user_failure_data.description:
            return failure.user_failure_data.description.splitlines()[0]
        if failure.error is not None:
            # The exception that started it, not the wrappers (Dagster's, dlt's) around it.
            error = failure.error
            while error.cause is not None:
                error = error.cause
            line = error.message.strip().splitlines()[0]
            return re.sub(r"\s+", " ", re.sub(r"^(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*: ", "", line))
    return None


if __name__ == "__main__":
    raise SystemExit(main())
