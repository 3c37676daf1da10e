"""The DuckDB destination, with a replace that is one transaction and no second copy.

dlt's atomic replace (`insert-from-staging`) loads the table into the staging dataset and
then, in one transaction, empties the destination table and copies the staging table into
it: every replaced row is written twice. Its cheaper `truncate-and-insert` empties the
table first, in a transaction of its own, so a load that fails midway leaves it empty.

Here a replaced table's file is loaded straight into the destination table inside the
transaction that empties it: readers see the old rows until the new ones commit, a failed
load rolls back to the old rows, and each row is written once. This needs the table to
arrive in ONE file (dlt rotates files only when told a size, which pg_to_bq never sets);
a second file for the same table fails the load instead of deleting the first one's rows.
Merges and appends are dlt's, unchanged.

DuckDB loads with a small, bounded buffer pool
(`pg_to_bq.destinations.lazy.DUCKDB_GLOBAL_CONFIG`), but
what an insert must hold in memory grows with the width of the rows (each thread builds a
row group of ~123k rows): a table of 60 KB rows failed with "Out of Memory Error" at any
bound under 512 MB. When a job runs out of memory, its transaction has rolled back; it runs
again with twice the memory limit, up to half the memory the process may use (the
machine's, or its container's limit). A limit the user set in
`PG_TO_BQ_DESTINATION` is kept as set, and the error says how to raise it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from dlt.common.configuration import configspec
from dlt.common.destination.client import LoadJob, RunnableLoadJob
from dlt.common.destination.exceptions import DestinationTerminalException
from dlt.common.destination.typing import PreparedTableSchema
from dlt.common.storages.load_package import ParsedLoadJobFileName
from dlt.destinations import duckdb as dlt_duckdb
from dlt.destinations.impl.duckdb.configuration import (
    DuckDbClientConfiguration,
    DuckDbCredentials,
)
from dlt.destinations.impl.duckdb.duck import DuckDbClient

from pg_to_bq.destinations.dlt_config import ResolvedOnce
from pg_to_bq.destinations.lazy import check_settings
from pg_to_bq.planning.errors import DUCKDB_OUT_OF_MEMORY

log = logging.getLogger(__name__)

REPLACE_STRATEGY = "insert-from-staging"
# The job folders of a load package (dlt's PackageStorage layout).
_JOB_FOLDERS = ("new_jobs", "started_jobs", "completed_jobs", "failed_jobs")


def replaces_in_place(table: PreparedTableSchema) -> bool:
    return table["write_disposition"] == "replace" and \
        table.get("x-replace-strategy") == REPLACE_STRATEGY  # type: ignore[comparison-overlap]


class ReplaceInTransactionJob(RunnableLoadJob):
    """Empties the destination table and inserts the file's rows in one transaction.

    Not a `HasFollowupJobs` (dlt's `DuckDbCopyJob` is): a table replaced in place has no
    follow-up job (`AtomicReplaceDuckDbClient._create_replace_followup_jobs`), and dlt looks
    for one after each such job by listing every job of the package: work that grew with
    the square of a step's tables (0.66 s of 2.0 s loading 100 small tables, profiled).
    """

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path)
        self._job_client: DuckDbClient = None  # type: ignore[assignment]  # set by dlt

    def run(self) -> None:
        self._sql_client = self._job_client.sql_client
        table = self._sql_client.make_qualified_table_name(self.load_table_name)
        with self._sql_client.begin_transaction():
            self._sql_client.execute_sql(f"DELETE FROM {table}")
            self._sql_client.execute_sql(
                f"INSERT INTO {table} BY NAME SELECT * FROM "
                f"read_parquet('{_sql_string(self._file_path)}', union_by_name=true)"
            )


class AtomicReplaceDuckDbClient(DuckDbClient):
    """dlt's DuckDB client, except that replaced tables skip the staging dataset, and a job
    that runs out of memory runs again with more (see the module's docstring)."""

    # False when the user chose the memory limit (set per client by `duckdb.client`).
    grow_memory = True

    def should_load_data_to_staging_dataset(self, table_name: str) -> bool:
        if replaces_in_place(self.prepare_load_table(table_name)):
            return False
        return super().should_load_data_to_staging_dataset(table_name)

    def _get_info_schema_columns_query(self, catalog_name: str | None, schema_name: str,
                                       folded_table_names: list[str]) -> tuple[str, list[Any]]:
        """dlt's, with the tables looked up as one list (`pg_to_bq.destinations.schema.
        in_list`): dlt asks this for every table of a package whose schema is new to it."""
        query, params = super()._get_info_schema_columns_query(catalog_name, schema_name,
                                                               folded_table_names)
        listed = "table_name IN (" + ",".join(["%s"] * len(folded_table_names)) + ")"
        if not folded_table_names or listed not in query:
            return query, params
        return (query.replace(listed, "table_name IN (SELECT unnest(%s))"),
                [*params[:len(params) - len(folded_table_names)], list(folded_table_names)])

    def _delete_schema_in_storage(self, schema: Any) -> None:
        """dlt's, except that a dataset without a version table has nothing to delete (dlt
        says it "fails silently if versions table does not exist", but DuckDB raises). The
        staging dataset of a table that was only ever replaced in place has none: dropping
        that table for a reload under a new type failed there, after its rows were gone."""
        name = self.schema.version_table_name
        dataset = self.sql_client.dataset_name
        rows = self.sql_client.execute_sql(
            "SELECT 1 FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_schema = %s AND table_name = %s", dataset, name)
        if rows:
            super()._delete_schema_in_storage(schema)

    def _create_replace_followup_jobs(self, table_chain: Any) -> list:
        if replaces_in_place(table_chain[0]):
            return []
        return super()._create_replace_followup_jobs(table_chain)

    def create_load_job(self, table: PreparedTableSchema, file_path: str, load_id: str,
                        restore: bool = False) -> LoadJob:
        if replaces_in_place(table) and file_path.endswith(".parquet"):
            # Checked here, in the loader's main thread, before the job is started: only that
            # thread moves a package's files, so it sees all of them. A job's own thread saw
            # a file of the same table leave `started_jobs` for `new_jobs` (dlt retries a
            # failed job there) after it had listed `new_jobs`, missed it, and loaded.
            _check_single_file(file_path)
            job: LoadJob = ReplaceInTransactionJob(file_path)
        else:
            job = super().create_load_job(table, file_path, load_id, restore)
        if isinstance(job, RunnableLoadJob):
            job.run = _retried_with_more_memory(job, table["name"])  # type: ignore[method-assign]
        return job


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is DuckDB running out of its memory limit."""
    seen: BaseException | None = exc
    while seen is not None:
        if DUCKDB_OUT_OF_MEMORY.search(str(seen)):
            return True
        seen = getattr(seen, "dbapi_exception", None) or seen.__cause__
    return False


# Where a container's memory limit is (cgroup v2, then v1): an ECS task or a Lambda function
# sees the host's RAM in sysconf, and growing past its own limit would get it killed.
CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_cap(limit_files: tuple[str, ...] = CGROUP_LIMIT_FILES) -> int:
    """The largest memory limit a load grows to: half the memory this process may use (the
    machine's RAM, or its container's limit when lower)."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for name in limit_files:
        try:
            with open(name) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            available = min(available, int(text))
        break
    return available // 2


def _retried_with_more_memory(job: RunnableLoadJob, table: str) -> Callable[[], None]:
    """`job.run`, run again with twice DuckDB's memory limit each time it runs out of memory
    (its transaction has rolled back, so nothing is written twice); the limit is put back
    after."""
    run = job.run

    def run_growing() -> None:
        # The client running the job (dlt hands each job its worker's client).
        client: AtomicReplaceDuckDbClient = job._job_client  # type: ignore[assignment]
        sql_client = client.sql_client
        original: str | None = None
        limit = 0
        try:
            while True:
                try:
                    run()
                    return
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    if original is None:
                        original, limit = _memory_limit(sql_client)
                    if not client.grow_memory or limit * 2 > memory_cap():
                        raise DestinationTerminalException(
                            f"DuckDB ran out of memory loading table {table} with "
                            f"memory_limit={limit // 2**20} MiB (its rows are too wide for that "
                            "bound); raise it in PG_TO_BQ_DESTINATION, e.g. "
                            "duckdb:///file.duckdb?memory_limit=2GB: "
                            f"{str(exc).splitlines()[0]}"
                        ) from exc
                    log.warning("DuckDB ran out of memory loading table %s with memory_limit="
                                "%d MiB (wide rows); loading it again with %d MiB", table,
                                limit // 2**20, limit * 2 // 2**20)
                    limit *= 2
                    _set_memory_limit(sql_client, f"{limit}B")
        finally:
            if original is not None:
                _set_memory_limit(sql_client, original)

    return run_growing


_UNITS = {"bytes": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _memory_limit(sql_client: Any) -> tuple[str, int]:
    """DuckDB's memory limit as it reports it (e.g. '83.9 MiB') and in bytes."""
    ((text,),) = sql_client.execute_sql("SELECT current_setting('memory_limit')")
    number, _, unit = str(text).partition(" ")
    return str(text), int(float(number) * _UNITS[unit.lower() or "bytes"])


def _set_memory_limit(sql_client: Any, limit: str) -> None:
    sql_client.execute_sql(f"SET GLOBAL memory_limit = '{limit}'")


@configspec(init=False)
class FileCredentials(DuckDbCredentials):
    """A DuckDB file, shown as its path. dlt shows credentials as a URL it builds with
    SQLAlchemy: importing it (~0.1 s, ~10 MB) was the only use of SQLAlchemy in a load."""

    def __str__(self) -> str:
        return str(self.database)


@configspec(init=False)
class FileConfiguration(DuckDbClientConfiguration):
    credentials: FileCredentials = None


class duckdb(ResolvedOnce, dlt_duckdb):  # noqa: N801 - dlt derives the destination's name from the class name
    """`dlt.destinations.duckdb` with `AtomicReplaceDuckDbClient`, resolved once per process
    (`pg_to_bq.destinations.dlt_config`)."""

    spec = FileConfiguration

    duckdb_settings: dict[str, str] = {}  # noqa: RUF012 - replaced per instance, never mutated

    @property
    def client_class(self) -> type[DuckDbClient]:
        return AtomicReplaceDuckDbClient

    def client(self, schema: Any, initial_config: Any = None) -> Any:
        client = super().client(schema, initial_config)
        client.grow_memory = "memory_limit" not in self.duckdb_settings
        return client


def duckdb_destination(path: str, settings: Mapping[str, str] | None = None,
                       **kwargs: Any) -> duckdb:
    """pg_to_bq's DuckDB destination for the file at `path`. `settings` (DuckDB's own names
    and values, from `PG_TO_BQ_DESTINATION`'s query) apply while a table loads, over
    `pg_to_bq.destinations.lazy.DUCKDB_GLOBAL_CONFIG`; DuckDB checks them here, so a wrong name or value
    fails before anything is read."""
    settings = dict(settings or {})
    if settings:
        check_settings(settings)
    # The path set on credentials, not given as a string: dlt parses a string as a URL with
    # SQLAlchemy (see `FileCredentials`).
    credentials = FileCredentials()
    credentials.database = path
    destination = duckdb(credentials=credentials, replace_strategy=REPLACE_STRATEGY, **kwargs)
    destination.duckdb_settings = settings
    return destination


def _check_single_file(file_path: str) -> None:
    """Refuse a replaced table that arrived in several files: loading the second would
    delete the first one's rows."""
    parsed = ParsedLoadJobFileName.parse(file_path)
    package = os.path.dirname(os.path.dirname(file_path))
    files = _package_files(package).get(parsed.table_name, set()) | {parsed.file_id}
    if len(files) > 1:
        raise DestinationTerminalException(
            f"table {parsed.table_name} arrived in {len(files)} files; its replace loads one "
            "file inside the transaction that empties the table (set no data_writer file size)"
        )


# The parquet files of the package being loaded, by table (`_package_files`).
_listed: dict[str, dict[str, set[str]]] = {}


def _package_files(package: str) -> dict[str, set[str]]:
    """The file ids of each table's parquet files in `package`, in any of its job folders,
    listed once per package: every file of a package is there before its load starts (dlt
    only moves them between folders, keeping their ids, and adds no parquet file), so one
    listing holds them all; listing for each job took time growing with the square of a
    step's tables."""
    found = _listed.get(package)
    if found is None:
        found = {}
        for folder in _JOB_FOLDERS:
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(os.path.join(package, folder)):
                    if name.endswith(".parquet"):
                        job = ParsedLoadJobFileName.parse(name)
                        found.setdefault(job.table_name, set()).add(job.file_id)
        _listed.clear()  # (the package loaded before this one is done)
        _listed[package] = found
    return found


def _sql_string(text: str) -> str:
    return text.replace("'", "''")
