"""Tier 2: a full replace into DuckDB is one transaction — real PostgreSQL, real DuckDB file.

`pg_to_bq.destinations.duckdb_file` loads a replaced table's file straight into the destination
table inside the transaction that empties it (no staging copy). These tests hold it to
what dlt's `insert-from-staging` promised: the new rows exactly, and the old rows intact
whenever the load fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dlt
import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pg_to_bq.destinations.duckdb_file import ReplaceInTransactionJob, duckdb_destination
from pg_to_bq.load.group import load_table
from pg_to_bq.planning.tables import TablePlan, build_plans
from pg_to_bq.postgres.discovery import discover
from pg_to_bq_tests.conftest import duck_rows, run_sql


def _plan(url: str, table: str) -> TablePlan:
    with psycopg.connect(url) as conn:
        catalog = discover(conn, schemas=["public"], table=table)
    (plan,) = build_plans(catalog, "duckdb")
    return plan


def _replace(url: str, table: str, path: Path, work_dir: Path, **kwargs):
    return load_table(_plan(url, table), source_url=url, destination=duckdb_destination(str(path)),
                      dataset="raw", work_dir=work_dir, full_refresh=True, **kwargs)


def test_replace_writes_the_new_rows_once_and_leaves_no_staging_copy(pg_url: str,
                                                                     tmp_path: Path) -> None:
    run_sql(pg_url, "CREATE TABLE items (id int PRIMARY KEY, v text);"
                    "INSERT INTO items SELECT g, 'old' || g FROM generate_series(1, 1000) g;")
    path = tmp_path / "dest.duckdb"
    assert _replace(pg_url, "items", path, tmp_path / "work").rows == 1000
    run_sql(pg_url, "DELETE FROM items WHERE id > 600; UPDATE items SET v = 'new' || id;"
                    "INSERT INTO items VALUES (5000, 'added');")
    # Small batches: the table arrives as many Arrow batches, still in one file.
    result = _replace(pg_url, "items", path, tmp_path / "work", batch_bytes=4096)
    assert result.rows == 601 and result.batches > 1
    assert duck_rows(path, "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE v LIKE 'new%') "
                       "FROM raw.items") == [(601, 601, 600)]
    # Nothing was staged: the staging dataset holds no copy of the table.
    assert duck_rows(path, "SELECT count(*) FROM information_schema.tables "
                       "WHERE table_schema = 'raw_staging' AND table_name = 'items'") == [(0,)]


def test_a_replace_that_fails_in_duckdb_keeps_the_old_rows(pg_url: str, tmp_path: Path) -> None:
    run_sql(pg_url, "CREATE TABLE amounts (id int PRIMARY KEY, n bigint);"
                    "INSERT INTO amounts SELECT g, g FROM generate_series(1, 100) g;")
    path = tmp_path / "dest.duckdb"
    _replace(pg_url, "amounts", path, tmp_path / "work")
    # Make DuckDB reject the next load midway: a constraint dlt's schema does not know of
    # (a narrower type would be widened by the schema check), and a new row breaking it
    # (the rows before it would already be inserted).
    with duckdb.connect(str(path)) as conn:
        conn.execute("ALTER TABLE raw.amounts ALTER COLUMN n SET NOT NULL")
    run_sql(pg_url, "UPDATE amounts SET n = n + 1000; INSERT INTO amounts VALUES (101, NULL);")
    with pytest.raises(Exception, match="(?i)not null"):
        _replace(pg_url, "amounts", path, tmp_path / "work")
    assert duck_rows(path, "SELECT count(*), min(n), max(n) FROM raw.amounts") == [(100, 1, 100)]


def test_a_replace_split_over_two_files_is_refused_and_keeps_the_old_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pg_to_bq writes one file per table; should a package ever hold two for a replaced table
    (another writer, a dlt file size setting), loading the second would delete the first one's
    rows, so the destination refuses, before either file's job runs. Driven through dlt directly
    with two imported files.

    When each job checked for itself in its own thread, one of them could miss the other's file
    while dlt's main thread moved that file back from `started_jobs` to `new_jobs` (dlt retries
    a failed job there): it loaded its 10 rows over the old 2,000 (CI saw it once). Counting the
    jobs that ran holds the check to the main thread, where no file moves beside it."""
    path = tmp_path / "dest.duckdb"
    ran: list[str] = []
    job_run = ReplaceInTransactionJob.run

    def counted_run(job: ReplaceInTransactionJob) -> None:
        ran.append(job.load_table_name)
        job_run(job)

    monkeypatch.setattr(ReplaceInTransactionJob, "run", counted_run)

    def files(*chunks: range):
        def resource():
            for number, chunk in enumerate(chunks):
                file = tmp_path / f"chunk{number}.parquet"
                pq.write_table(pa.table({"id": pa.array(list(chunk), pa.int64())}), file)
                yield dlt.mark.with_file_import(str(file), "parquet", items_count=len(chunk))
        return dlt.resource(resource, name="split", write_disposition="replace",
                            columns=[{"name": "id", "data_type": "bigint"}], file_format="parquet")

    pipeline = dlt.pipeline("split", destination=duckdb_destination(str(path)), dataset_name="raw",
                            pipelines_dir=str(tmp_path / "pipelines"))
    pipeline.run(files(range(2000)), loader_file_format="parquet").raise_on_failed_jobs()
    assert duck_rows(path, "SELECT count(*) FROM raw.split") == [(2000,)]
    assert ran == ["split"]
    with pytest.raises(Exception, match="arrived in 2 files"):
        pipeline.run(files(range(10), range(10, 20)), loader_file_format="parquet")
    assert duck_rows(path, "SELECT count(*) FROM raw.split") == [(2000,)]
    assert ran == ["split"], "a job of the split table ran"


def test_the_table_file_is_loaded_as_written(pg_url: str, tmp_path: Path) -> None:
    """pg_to_bq's parquet file matches the table dlt expects (names, types, nullability), so
    dlt imports it as it is: a mismatch would make dlt's normalize step read and rewrite every
    table once more. Asks dlt's own test (`should_normalize_arrow_schema`) after a load."""
    from dlt.common.libs.pyarrow import should_normalize_arrow_schema

    from pg_to_bq.load.packages import make_pipeline
    from pg_to_bq.postgres.values import arrow_schema

    run_sql(pg_url, """
        CREATE TABLE shaped (id bigint PRIMARY KEY, name text NOT NULL, note text,
                             amount numeric(12,2), at timestamptz NOT NULL, day date,
                             payload jsonb, ref uuid NOT NULL);
        INSERT INTO shaped SELECT g, 'n' || g, CASE WHEN g % 2 = 0 THEN 'x' END, g / 3.0,
               now(), current_date, '{"a": 1}', gen_random_uuid()
        FROM generate_series(1, 500) g;
    """)
    path, work = tmp_path / "dest.duckdb", tmp_path / "work"
    assert _replace(pg_url, "shaped", path, work).rows == 500
    plan = _plan(pg_url, "shaped")
    pipeline = make_pipeline(plan, duckdb_destination(str(path)), "raw", work)
    columns = pipeline.default_schema.get_table_columns("shaped")
    assert set(columns) == {c.name for c in plan.columns}
    rewrite, *_ = should_normalize_arrow_schema(
        arrow_schema(plan), columns, pipeline.default_schema.naming,
        pipeline.destination.capabilities())
    assert not rewrite


def test_a_loading_process_never_imports_pandas_or_sqlalchemy(pg_url: str, tmp_path: Path) -> None:
    """pandas costs ~40 MB per loading process and pg_to_bq has no use for it; pyarrow and the
    ADBC DB-API layer import it on the slightest occasion (`pa.scalar`, a zoned scalar's
    `as_py`, `pyarrow.dataset`). SQLAlchemy (~10 MB, 0.1 s) is what dlt parses and shows
    DuckDB credentials with. A full load and an incremental one of a table with a
    timestamptz cursor, in a fresh interpreter, must leave both unimported."""
    run_sql(pg_url, """
        CREATE TABLE events (id bigint PRIMARY KEY, v numeric(10,2), updated_at timestamptz NOT NULL);
        INSERT INTO events SELECT g, g / 7.0, now() - g * interval '1 minute'
        FROM generate_series(1, 3000) g;
    """)
    code = f"""
import sys
from pathlib import Path
from pg_to_bq.postgres.discovery import discover
from pg_to_bq.destinations.duckdb_file import duckdb_destination
from pg_to_bq.load.group import load_table
from pg_to_bq.planning.overrides import Overrides
from pg_to_bq.planning.tables import build_plans
from pg_to_bq.postgres.connect import connect
# (merged by cursor, as a table above PG_TO_BQ_READ_WHOLE_BYTES is)
with connect({pg_url!r}) as conn:
    (plan,) = build_plans(discover(conn, schemas=["public"], table="events"), "duckdb",
                          Overrides(read_whole_bytes=0))
modes = []
for _ in range(2):
    result = load_table(plan, source_url={pg_url!r}, dataset="raw", work_dir=Path({str(tmp_path)!r}),
                        destination=duckdb_destination({str(tmp_path / "dest.duckdb")!r}))
    modes.append(result.mode)
print(modes, "pandas" in sys.modules, "sqlalchemy" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['full', 'incremental'] False False"


def test_a_step_of_replaced_tables_never_lists_its_package_per_job(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table replaced in place has no follow-up job, so its job is not one dlt completes
    by listing every job of the package (work that grew with the square of a step's
    tables); the tables still load, each exactly."""
    from dlt.common.storages.load_package import PackageStorage

    from pg_to_bq.load.group import load_group
    from pg_to_bq.load.results import TableLoad

    names = [f"t{i}" for i in range(6)]
    run_sql(pg_url, "".join(f"CREATE TABLE {n} (id int PRIMARY KEY, v text);"
                            f"INSERT INTO {n} SELECT g, '{n}' || g FROM generate_series(1, {i + 1}) g;"
                            for i, n in enumerate(names)))
    listings: list[str] = []
    listing = PackageStorage.list_all_jobs_with_states
    monkeypatch.setattr(PackageStorage, "list_all_jobs_with_states",
                        lambda self, load_id: listings.append(load_id) or listing(self, load_id))
    path = tmp_path / "dest.duckdb"
    results = load_group([TableLoad(_plan(pg_url, n), full_refresh=True) for n in names],
                         pipeline_name="replaced", source_url=pg_url,
                         destination=duckdb_destination(str(path)), dataset="raw",
                         work_dir=tmp_path / "work")
    assert [(r.status, r.rows) for r in results] == [("loaded", i + 1) for i in range(6)]
    for i, n in enumerate(names):
        assert duck_rows(path, f"SELECT count(*), min(v) FROM raw.{n}") == [(i + 1, f"{n}1")]
    # One listing at most: the job of dlt's own state row, not one per table.
    assert len(listings) <= 1, listings
