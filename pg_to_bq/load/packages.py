"""dlt's side of a load: pipelines, the settings they load with, and one load package for
many tables' parquet files.

A package holds the parquet files of every table a step read; dlt loads their jobs in
parallel threads. A table whose job fails is recorded and the others complete
(`load.raise_on_failed_jobs` off); when dlt fails the package as a whole, each table is
loaded again on its own, so only the culprit fails.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
from dlt.common.schema import Schema
from dlt.common.schema.utils import new_table

from pg_to_bq.destinations import soft_deletes
from pg_to_bq.destinations.bigquery import bigquery_hints
from pg_to_bq.destinations.lazy import duckdb_global_config
from pg_to_bq.load import loader_imports
from pg_to_bq.load.pipelines import pipelines_dir
from pg_to_bq.load.results import TableRead
from pg_to_bq.planning.errors import describe
from pg_to_bq.planning.tables import TablePlan

log = logging.getLogger(__name__)


class _QuietHintOverride(logging.Filter):
    """JSON columns travel as Arrow strings with a dlt `json` hint, on purpose; dlt warns about
    every such column on every load ("several column hints were different")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "several column hints were different" not in record.getMessage()


logging.getLogger("dlt").addFilter(_QuietHintOverride())
# dlt's anonymous usage telemetry (a request to dltHub per pipeline step) stays off unless
# the user turns it on: a mirror of someone's database does not report on itself by default
# (the container image sets the same). dlt starts it when a pipeline is made.
TELEMETRY_SETTING = "RUNTIME__DLTHUB_TELEMETRY"




def make_pipeline(plan: TablePlan, destination: Any, dataset: str, work_dir: Path) -> dlt.Pipeline:
    """The pipeline of `plan`'s table loaded alone; its working files live under `work_dir`."""
    return group_pipeline(plan.pipeline_name, destination, dataset, work_dir)


def group_pipeline(name: str, destination: Any, dataset: str, work_dir: Path) -> dlt.Pipeline:
    """The dlt pipeline `name` (a group's, or a table's); its files live under `work_dir`.
    dlt's telemetry is off unless `RUNTIME__DLTHUB_TELEMETRY` says otherwise (set only while
    the pipeline is made: the process's environment, which child processes inherit, stays
    as it was)."""
    loader_imports.finish()
    if TELEMETRY_SETTING in os.environ:
        return _pipeline(name, destination, dataset, work_dir)
    os.environ[TELEMETRY_SETTING] = "false"
    try:
        return _pipeline(name, destination, dataset, work_dir)
    finally:
        os.environ.pop(TELEMETRY_SETTING, None)


def _pipeline(name: str, destination: Any, dataset: str, work_dir: Path) -> dlt.Pipeline:
    return dlt.pipeline(
        pipeline_name=name,
        destination=destination,
        dataset_name=dataset,
        pipelines_dir=str(pipelines_dir(work_dir)),
        # A trace file per step, rewritten after each of them: nothing here reads it.
        enable_runtime_trace=False,
    )


def dlt_settings(destination: Any) -> dict[str, Any]:
    """dlt settings for our loads, applied while a group loads. They are defaults in dlt's
    `config.toml` layer, so environment variables (e.g. `LOAD__TRUNCATE_STAGING_DATASET`)
    still override them."""
    values: dict[str, Any] = {
        # Loaded parquet files are not kept in the working directory (a container's /tmp):
        # they would otherwise pile up, one copy of every table per run.
        "load.delete_completed_jobs": True,
        # Replace and merge go through staging tables; empty them after the load instead of
        # keeping a second copy of every table in the destination.
        "load.truncate_staging_dataset": True,
        # A table whose load job fails is recorded in the package and the other tables'
        # jobs complete; `load_files` reads the failures from the load info.
        "load.raise_on_failed_jobs": False,
    }
    if destination.destination_name == "duckdb":
        # A local file read once by DuckDB: compressing it only costs CPU on both sides.
        values["data_writer.compression"] = "none"
        values["destination.duckdb.credentials.global_config"] = duckdb_global_config(
            getattr(destination, "duckdb_settings", {}))
    return values


def load_files(pipeline: dlt.Pipeline, read: list[TableRead]) -> tuple[dict[str, str], str | None]:
    """Load the files of `read` (tables to drop and create again in a package of their own);
    returns the failed tables' errors (by destination table) and the load id.

    When dlt fails a package as a whole (not one table's job), the package is dropped and
    each of its tables is loaded again on its own, so that only the culprit fails.
    """
    failures: dict[str, str] = {}
    load_id = None
    try:
        for refresh in (True, False):
            part = [item for item in read if item.refresh is refresh]
            if not part:
                continue
            try:
                failed, load_id = _load_package(pipeline, part, refresh)
                failures.update(failed)
                continue
            except Exception as exc:  # noqa: BLE001 - isolated below
                pipeline.drop_pending_packages()
                if len(part) == 1:
                    failures[part[0].plan.destination_table] = describe(exc)
                    continue
                log.warning("loading %d tables together failed (%s); loading each alone",
                            len(part), describe(exc))
            for item in part:
                try:
                    failed, load_id = _load_package(pipeline, [item], refresh)
                    failures.update(failed)
                except Exception as exc:  # noqa: BLE001 - this table's own failure
                    pipeline.drop_pending_packages()
                    failures[item.plan.destination_table] = describe(exc)
        return failures, load_id
    finally:
        for item in read:
            item.path.unlink(missing_ok=True)


def _load_package(pipeline: dlt.Pipeline, read: list[TableRead], refresh: bool = False
                  ) -> tuple[dict[str, str], str | None]:
    schema = Schema(pipeline.pipeline_name, normalizers={"names": "direct"})
    resources = [_resource(pipeline, item, schema) for item in read]
    # extract, normalize and load rather than `run`: `run` would query the destination's
    # state a second time, and with a package left over from an interrupted run it loads
    # only that package and returns without reading the tables. `drop_resources` drops the
    # tables (and their staging copies) in the load step, before loading them again.
    pipeline.extract(resources, schema=schema, loader_file_format="parquet",
                     refresh="drop_resources" if refresh else None)
    _align_empty_files(pipeline, schema.name,
                       {item.plan.destination_table for item in read
                        if item.reader.stats.rows == 0})
    pipeline.normalize()
    info = pipeline.load()
    failures: dict[str, str] = {}
    jobs: set[str] = set()
    for package in info.load_packages:
        for state, state_jobs in package.jobs.items():
            jobs.update(job.job_file_info.table_name for job in state_jobs)
            if state == "failed_jobs":
                for job in state_jobs:
                    failures.setdefault(job.job_file_info.table_name,
                                        job_error(job.failed_message))
    for item in read:
        table = item.plan.destination_table
        if table not in jobs and table not in failures:
            # Never a table reported loaded that dlt did not load.
            failures[table] = (f"table {item.plan.name}: dlt made no load job of its file "
                               f"({item.reader.stats.rows} rows); nothing was changed")
    return failures, info.loads_ids[-1] if info.loads_ids else None


def _align_empty_files(pipeline: dlt.Pipeline, schema_name: str, tables: set[str]) -> None:
    """Give the empty files of `tables` exactly the columns of their dlt table.

    dlt rewrites a parquet file whose columns differ from its table's (a column dropped in
    PostgreSQL but kept in the destination is one), batch by batch; an empty file has no
    batch, so the rewrite writes nothing and the table gets no load job: a table emptied in
    PostgreSQL kept its old rows, and a column added to an empty table was never created.
    An empty file with the table's columns in its order is imported as it is."""
    if not tables:
        return
    import pyarrow.parquet as pq
    from dlt.common.libs.pyarrow import columns_to_arrow, should_normalize_arrow_schema
    from dlt.common.storages.load_package import ParsedLoadJobFileName

    dlt_schema = pipeline.schemas[schema_name]
    caps = pipeline.destination.capabilities()
    storage = pipeline._get_normalize_storage().extracted_packages  # noqa: SLF001 - no public way
    dlt_columns = {dlt_schema.naming.normalize_identifier(c) for c in ("_dlt_load_id", "_dlt_id")}
    for load_id in pipeline.list_extracted_load_packages():
        for job_file in storage.list_new_jobs(load_id):
            table = ParsedLoadJobFileName.parse(job_file).table_name
            if table not in tables or not job_file.endswith(".parquet"):
                continue
            path = storage.storage.make_full_path(job_file)
            present = pq.read_schema(path)
            columns = dlt_schema.get_table_columns(table)
            if not should_normalize_arrow_schema(present, columns, dlt_schema.naming, caps)[0]:
                continue
            wanted = {name: column for name, column in columns.items()
                      if name not in dlt_columns or name in present.names}
            aligned = columns_to_arrow(wanted, caps, "UTC")
            Path(path).unlink()  # it may be a hard link to the step's own file
            pq.write_table(aligned.empty_table(), path)


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception): (.+)$")


def job_error(failed_message: str | None) -> str:
    """The cause of a failed dlt load job in one line: dlt records the whole stack trace,
    whose last exception line says what the destination refused."""
    lines = (failed_message or "").strip().splitlines()
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return match.group(1).strip()[:2000]
    return lines[-1].strip()[:2000] if lines else "the load job failed"


def _columns(pipeline: dlt.Pipeline, item: TableRead) -> tuple[dict[str, dict[str, Any]],
                                                              dict[str, Any]]:
    """The dlt hints of `item`'s columns (by name, in the table's order) and its table's own
    hints (BigQuery's description and clustering)."""
    plan = item.plan
    columns = {c.name: c.dlt_hint() for c in plan.columns}
    if plan.soft_deletes:
        # Absent from the file: dlt writes it NULL for every row it loads (a row inserted
        # again under a deleted key is live again). A whole read of a table holding rows
        # marked deleted merges (`merges_whole`): replacing the table would drop them.
        columns[soft_deletes.HINT["name"]] = dict(soft_deletes.HINT)
    table_hints: dict[str, Any] = {}
    if pipeline.destination.destination_name == "bigquery":
        table_hints = bigquery_hints(plan, columns)
    return columns, table_hints


def _resource(pipeline: dlt.Pipeline, item: TableRead, schema: Schema) -> Any:
    """`item`'s file as a dlt resource; its columns go into `schema`, the package's.

    The columns are declared in the package's schema, not as the resource's hints: dlt
    validates a resource's hints and writes them out as YAML for its metrics on every
    extract (a 100-table step's extract: 0.41-0.67 s of CPU with the hints on the
    resources, 0.30-0.34 s in the schema). The key columns stay on the resource, so that
    dlt applies the key as it always does (replacing the old key, if it changed, rather
    than adding to it)."""
    plan = item.plan
    path = item.path
    table = plan.destination_table
    columns, table_hints = _columns(pipeline, item)
    disposition = "replace" if item.mode == "full" and not item.merges_whole else "merge"
    schema.update_table(new_table(table, write_disposition=disposition,
                                  columns=list(columns.values()), resource=table,
                                  file_format="parquet"))
    key = list(plan.destination_primary_key)

    def table_file() -> Iterator[Any]:
        # An empty file still has the columns: dlt creates (or, on replace, empties) the table.
        yield dlt.mark.with_file_import(str(path), "parquet",
                                        items_count=item.reader.stats.rows)

    resource = dlt.resource(
        table_file,
        name=table,
        # A file holds each key once (one snapshot of a table whose key PostgreSQL keeps
        # unique), so dlt's merge skips its deduplication: a window over every staged row,
        # which under DuckDB's small buffer pool took 6.5 of a 1M-row merge's ~8 s. (Under a
        # key the tables file declares and the data does not keep, every row is loaded;
        # deduplicating kept one of them, and the table failed its check every run.)
        write_disposition="replace" if disposition == "replace"
        else {"disposition": "merge", "deduplicated": True},
        primary_key=key or None,
        columns=[columns[name] for name in key if name in columns] or None,
        file_format="parquet",
    )
    if table_hints:
        resource.apply_hints(additional_table_hints=table_hints)
    return resource


def sync_once(pipeline: dlt.Pipeline) -> None:
    """Restore state and schema from the destination (a fresh container has neither), then
    finish any package an interrupted run left behind, as `pipeline.run` would: its tables
    were loaded, or not, as a whole; cursors are stored only after a load (see the module's
    docstring), so finishing it never skips rows."""
    try:
        pipeline.sync_destination()
    except Exception as exc:  # noqa: BLE001 - `run` used to try again; so does this
        log.debug("restoring state for %s failed once, trying again: %s",
                  pipeline.pipeline_name, exc)
        pipeline.sync_destination()
    if pipeline.list_extracted_load_packages():
        pipeline.normalize()
    if pipeline.list_normalized_load_packages():
        log.info("loading the package an interrupted run of %s left behind",
                 pipeline.pipeline_name)
        try:
            pipeline.load()
        except Exception as exc:  # noqa: BLE001 - stale: this run reads the tables again
            log.warning("the package an interrupted run of %s left behind did not load (%s); "
                        "it is dropped and its tables are read again", pipeline.pipeline_name,
                        describe(exc))
            pipeline.drop_pending_packages()


