"""Load one table with its own dlt pipeline, fed Arrow batches from `pg_to_bq.extract`.

Each table has its own pipeline name and working directory, so runs of different tables
never share state; the pipeline state (including the incremental cursor) is stored in
the destination with each load, so a fresh container resumes where the last one stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.schema import Schema

from pg_to_bq.extract import TableReader, arrow_schema, literal
from pg_to_bq.plan import TablePlan
from pg_to_bq.typemap import quote_ident

log = logging.getLogger(__name__)


class _QuietHintOverride(logging.Filter):
    """JSON columns travel as Arrow strings with a dlt `json` hint, on purpose; dlt warns about
    every such column on every load ("several column hints were different")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "several column hints were different" not in record.getMessage()


logging.getLogger("dlt").addFilter(_QuietHintOverride())

CURSOR_STATE_KEY = "pg_to_bq_cursor"


class EmptyTableError(ValueError):
    """A table without columns cannot be loaded; it is reported, not silently skipped."""


@dataclass(frozen=True)
class Window:
    """A half-open range [start, end) of the partition column, for backfills."""

    column: str
    start: Any
    end: Any


@dataclass
class LoadResult:
    table: str
    destination_table: str
    rows: int
    snapshot_rows: int | None
    load_id: str | None
    duration_s: float
    mode: str
    cursor_from: Any = None
    cursor_to: Any = None
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def pipelines_dir(work_dir: Path) -> Path:
    return work_dir / "pipelines"


def make_pipeline(plan: TablePlan, destination: Any, dataset: str, work_dir: Path) -> dlt.Pipeline:
    """The table's own dlt pipeline; its working files live under `work_dir`."""
    return dlt.pipeline(
        pipeline_name=plan.pipeline_name,
        destination=destination,
        dataset_name=dataset,
        pipelines_dir=str(pipelines_dir(work_dir)),
    )


def load_table(
    plan: TablePlan,
    *,
    source_url: str,
    destination: Any,
    dataset: str,
    work_dir: Path,
    full_refresh: bool = False,
    window: Window | None = None,
    batch_bytes: int = 16 * 1024 * 1024,
    hash_salt: bytes | None = None,
    statement_timeout_s: int = 3600,
    on_batch: Callable[[int], None] | None = None,
) -> LoadResult:
    """Extract `plan`'s table and load it; returns what was loaded.

    `full_refresh` replaces the destination table (and resets the incremental cursor);
    `window` re-reads one partition and merges it. Otherwise a merge plan with a cursor
    reads rows at or after the last cursor minus the lookback, and others are replaced.
    """
    if not plan.columns:
        raise EmptyTableError(
            f"table {plan.name} has no loadable columns (it has {len(plan.table.columns)} in "
            f"PostgreSQL, {len(plan.excluded)} excluded); nothing was loaded"
        )
    started = time.monotonic()
    pipeline = make_pipeline(plan, destination, dataset, work_dir)
    mode, where, cursor_from = _choose_mode(plan, pipeline, full_refresh, window)
    disposition = "replace" if mode == "full" else "merge"
    cursor_column = plan.column_for(plan.cursor).name if plan.cursor else None
    reader = TableReader(
        source_url, plan, where=where, batch_bytes=batch_bytes, hash_salt=hash_salt,
        statement_timeout_s=statement_timeout_s,
    )
    observed: dict[str, Any] = {"max": None}

    def batches() -> Iterator[pa.RecordBatch]:
        with reader:
            yielded = False
            for batch in reader.batches():
                if cursor_column is not None and batch.num_rows:
                    _track_max(observed, batch.column(cursor_column))
                if on_batch is not None:
                    on_batch(batch.num_rows)
                yielded = True
                yield batch
            if not yielded:
                # dlt creates nothing for a resource without data; an empty batch with the
                # schema makes it create (or, on replace, empty) the destination table.
                yield arrow_schema(plan).empty_table()
        if plan.cursor is not None and mode != "window":
            # The next run reads from this value (minus the lookback). Taking the newest value
            # seen, even when older than the stored one, can only re-read rows, never skip them.
            state = dlt.current.resource_state()
            if observed["max"] is not None:
                state[CURSOR_STATE_KEY] = _state_value(observed["max"])
            elif mode == "full":
                state.pop(CURSOR_STATE_KEY, None)

    resource = dlt.resource(
        batches,
        name=plan.destination_table,
        write_disposition=disposition,
        primary_key=list(plan.destination_primary_key) or None,
        columns=[c.dlt_hint() for c in plan.columns],
        file_format="parquet",
    )
    schema = Schema(plan.pipeline_name, normalizers={"names": "direct"})
    info = pipeline.run(resource, schema=schema, loader_file_format="parquet")
    info.raise_on_failed_jobs()
    return LoadResult(
        table=plan.name,
        destination_table=plan.destination_table,
        rows=reader.stats.rows,
        snapshot_rows=reader.stats.snapshot_rows,
        load_id=info.loads_ids[-1] if info.loads_ids else None,
        duration_s=time.monotonic() - started,
        mode=mode,
        cursor_from=cursor_from,
        cursor_to=observed["max"],
        batches=reader.stats.batches,
    )


def _choose_mode(
    plan: TablePlan, pipeline: dlt.Pipeline, full_refresh: bool, window: Window | None
) -> tuple[str, str | None, Any]:
    if full_refresh or plan.disposition == "replace":
        return "full", None, None
    if window is not None:
        column = quote_ident(window.column)
        pg_type = plan.table.column(window.column).type
        where = (f"{column} >= {literal(window.start, pg_type)} AND "
                 f"{column} < {literal(window.end, pg_type)}")
        return "window", where, window.start
    previous = _stored_cursor(plan, pipeline)
    if previous is None or plan.cursor is None:
        return "full", None, None
    pg_type = plan.table.column(plan.cursor).type
    bound = literal(previous, pg_type)
    if plan.lookback and pg_type.startswith(("timestamp", "date")):
        bound = f"{bound} - {literal(f'{int(plan.lookback.total_seconds())} seconds', 'interval')}"
    return "incremental", f"{quote_ident(plan.cursor)} >= {bound}", previous


def _stored_cursor(plan: TablePlan, pipeline: dlt.Pipeline) -> Any:
    """The last cursor, from local state or, in a fresh container, restored from the destination."""
    try:
        pipeline.sync_destination()
    except Exception as exc:  # a destination without state yet is the first run
        log.debug("no state restored for %s: %s", plan.name, exc)
    sources = pipeline.state.get("sources", {})
    resource_state = (
        sources.get(plan.pipeline_name, {}).get("resources", {}).get(plan.destination_table, {})
    )
    return resource_state.get(CURSOR_STATE_KEY)


def _track_max(observed: dict[str, Any], column: pa.Array) -> None:
    value = pc.max(column).as_py()
    if value is not None and (observed["max"] is None or value > observed["max"]):
        observed["max"] = value


def _state_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value
