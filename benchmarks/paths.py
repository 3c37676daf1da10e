"""One function per benchmarked path; `run.py` runs each in its own fresh process.

    python benchmarks/paths.py PATH '{"url": ..., "table": ..., "work_dir": ...}'

prints one JSON line: rows moved and `seconds`, the time from the first byte of work (after
the interpreter has imported the path's libraries) to the rows being in DuckDB. Imports are
timed separately (`import_s`), so no path pays for another's import cost. Every DuckDB path
writes its own file under `work_dir`, so no path reads another's output.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DATASET = "bench"

_started = time.perf_counter()


def copy_ceiling(url: str, table: str, **_: object) -> dict:
    """`COPY table TO STDOUT (FORMAT binary)` read by psycopg and discarded: the ceiling."""
    import psycopg

    imported = time.perf_counter()
    nbytes = 0
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f'COPY "{table}" TO STDOUT (FORMAT binary)') as copy:
            for block in copy:
                nbytes += len(block)
        rows = cur.rowcount
    return {"rows": rows, "seconds": time.perf_counter() - imported, "bytes": nbytes,
            "import_s": imported - _started}


def _preimport_dlt_duckdb(sqlalchemy: bool = True) -> None:
    """Modules dlt imports lazily on its first DuckDB pipeline (sqlalchemy for the
    credentials parser, among others): imports, not work, so outside the timed part.

    pg_to_bq's DuckDB destination never has dlt parse or show its credentials with SQLAlchemy
    (`pg_to_bq.destinations.duckdb_file.FileCredentials`), so its path preloads none."""
    import dlt
    import dlt.common.configuration.plugins  # noqa: F401 - dlt's plugins, on the first pipeline
    import dlt.common.libs.pyarrow  # noqa: F401
    import dlt.sources.helpers.requests  # noqa: F401 - imported by dlt's runtime setup
    import duckdb  # noqa: F401
    from dlt.destinations.impl.duckdb import duck  # noqa: F401

    if sqlalchemy:
        import sqlalchemy  # noqa: F401

        dlt.destinations.duckdb(credentials=":memory:")


def pg_to_bq(url: str, table: str, work_dir: str, full_refresh: bool = False,
             batch_bytes: int | None = None, streams: int | None = None,
             replace_strategy: str = "insert-from-staging",
             duckdb_settings: dict[str, str] | None = None, **_: object) -> dict:
    """pg_to_bq's own path: one-table catalog query, plan, `load_table` (ADBC COPY → Arrow →
    dlt parquet → DuckDB), over as many COPY streams as pg_to_bq's defaults give the table
    (`pg_to_bq.planning.settings.streams_for`) unless `streams` says otherwise."""
    import psycopg  # noqa: F401 - pg_to_bq.postgres.connect imports it on first use

    import pg_to_bq.destinations.duckdb_file  # noqa: F401
    import pg_to_bq.load.parquet_files  # noqa: F401
    import pg_to_bq.postgres.session  # noqa: F401
    from pg_to_bq.load.group import load_table
    from pg_to_bq.planning.settings import streams_for
    from pg_to_bq.planning.tables import plan_table
    from pg_to_bq.postgres.connect import connect
    from pg_to_bq.postgres.discovery import discover

    _preimport_dlt_duckdb(sqlalchemy=False)
    assert "sqlalchemy" not in sys.modules, "the pg_to_bq path must not import SQLAlchemy early"

    imported = time.perf_counter()
    duckdb_path = str(Path(work_dir) / "pg_to_bq.duckdb")
    with connect(url) as conn:
        catalog = discover(conn, schemas=["public"], table=table)
    plan = plan_table(catalog.tables[0], "duckdb")
    extra: dict = {"batch_bytes": batch_bytes} if batch_bytes else {}
    extra["streams"] = streams_for(plan.table.size_bytes) if streams is None else streams
    destination = pg_to_bq_destination(duckdb_path, replace_strategy, duckdb_settings)
    result = load_table(plan, source_url=url, destination=destination,
                        dataset=DATASET, work_dir=Path(work_dir), full_refresh=full_refresh,
                        **extra)
    done = time.perf_counter()
    return {"rows": result.rows, "seconds": done - imported, "import_s": imported - _started,
            "mode": result.mode, "disposition": plan.disposition, "cursor": plan.cursor,
            "load_table_s": result.duration_s, "batches": result.batches,
            "duckdb": duckdb_path, "dataset": DATASET, "unchanged": result.extra.get("unchanged"),
            "streams": result.streams,
            "destination_table": plan.destination_table}


def pg_to_bq_destination(duckdb_path: str, replace_strategy: str = "insert-from-staging",
                         duckdb_settings: dict[str, str] | None = None):
    """What `pg_to_bq.orchestration.resources.Destination.dlt_destination()` returns for DuckDB; built here
    so the measured process does not import Dagster (~100 MB and seconds of imports that
    a Dagster step process has already paid for). `replace_strategy` other than the
    resource's is only for measuring what that choice costs."""
    import dlt

    from pg_to_bq.destinations.duckdb_file import REPLACE_STRATEGY, duckdb_destination

    if replace_strategy == REPLACE_STRATEGY:
        return duckdb_destination(duckdb_path, duckdb_settings)
    return dlt.destinations.duckdb(credentials=duckdb_path, replace_strategy=replace_strategy)


def _dlt_sql_table(backend: str, url: str, table: str, work_dir: str, **_: object) -> dict:
    import dlt
    from dlt.sources.sql_database import sql_table

    _preimport_dlt_duckdb()
    if backend == "connectorx":
        import connectorx  # noqa: F401

    imported = time.perf_counter()
    duckdb_path = str(Path(work_dir) / f"dlt_{backend}.duckdb")
    pipeline = dlt.pipeline(pipeline_name=f"bench_sql_table_{backend}",
                            destination=dlt.destinations.duckdb(credentials=duckdb_path),
                            dataset_name=DATASET, pipelines_dir=str(Path(work_dir) / "pipelines"))
    resource = sql_table(credentials=url, table=table, backend=backend)
    info = pipeline.run(resource, write_disposition="replace")
    info.raise_on_failed_jobs()
    done = time.perf_counter()
    rows = pipeline.last_trace.last_normalize_info.row_counts.get(table)
    return {"rows": rows, "seconds": done - imported, "import_s": imported - _started,
            "duckdb": duckdb_path, "dataset": DATASET, "destination_table": table}


def dlt_sqlalchemy(**kw: object) -> dict:
    """dlt `sql_table(backend="sqlalchemy")` (dlt's default backend)."""
    return _dlt_sql_table("sqlalchemy", **kw)


def dlt_pyarrow(**kw: object) -> dict:
    """dlt `sql_table(backend="pyarrow")`."""
    return _dlt_sql_table("pyarrow", **kw)


def dlt_connectorx(**kw: object) -> dict:
    """dlt `sql_table(backend="connectorx")` (dlt's default: the whole table as one Arrow table)."""
    return _dlt_sql_table("connectorx", **kw)


def old_approach(url: str, table: str, work_dir: str, **_: object) -> dict:
    """The Lambda this project replaces (shared/seed), per table: SQLAlchemy rows straight into
    `pipeline.run(..., write_disposition="replace")`. Only the destination differs (DuckDB here,
    BigQuery there); psycopg2, as in the seed's requirements.txt."""
    import dlt
    import psycopg2  # noqa: F401
    from sqlalchemy import create_engine, text

    _preimport_dlt_duckdb()
    imported = time.perf_counter()
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    duckdb_path = str(Path(work_dir) / "old_approach.duckdb")
    table_name = table
    with engine.connect() as conn:
        query = f"SELECT * FROM {table_name}"
        rows = conn.execute(text(query))
        pipeline = dlt.pipeline(
            pipeline_name=f"extract_{table_name}",
            destination=dlt.destinations.duckdb(credentials=duckdb_path),
            dataset_name=DATASET,
            pipelines_dir=str(Path(work_dir) / "pipelines"),
        )
        pipeline.run(
            rows,
            table_name=table_name,
            write_disposition="replace",
        )
    done = time.perf_counter()
    count = pipeline.last_trace.last_normalize_info.row_counts.get(table_name)
    return {"rows": count, "seconds": done - imported, "import_s": imported - _started,
            "duckdb": duckdb_path, "dataset": DATASET, "destination_table": table_name}


def pg_to_bq_truncate(**kw: object) -> dict:
    """pg_to_bq with dlt's stock DuckDB destination and its `truncate-and-insert` replace
    strategy (empties the table first, in a transaction of its own: not atomic)."""
    return pg_to_bq(**{**kw, "replace_strategy": "truncate-and-insert"})


def pg_to_bq_1stream(**kw: object) -> dict:
    """pg_to_bq reading the table over one COPY connection (`PG_TO_BQ_PARALLEL_STREAMS=1`)."""
    return pg_to_bq(**{**kw, "streams": 1})


def pg_to_bq_duckdb1gb(**kw: object) -> dict:
    """pg_to_bq with `PG_TO_BQ_DESTINATION=duckdb:///…?memory_limit=1GB`: DuckDB's buffer pool
    at 1 GB instead of pg_to_bq's 88 MB default (what a bigger machine can afford)."""
    return pg_to_bq(**{**kw, "duckdb_settings": {"memory_limit": "1GB"}})


PATHS = {
    "copy": copy_ceiling,
    "pg_to_bq": pg_to_bq,
    "pg_to_bq_truncate": pg_to_bq_truncate,
    "pg_to_bq_1stream": pg_to_bq_1stream,
    "pg_to_bq_duckdb1gb": pg_to_bq_duckdb1gb,
    "dlt_connectorx": dlt_connectorx,
    "dlt_pyarrow": dlt_pyarrow,
    "dlt_sqlalchemy": dlt_sqlalchemy,
    "old": old_approach,
}


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    if args.pop("quiet_dlt", True):
        # dlt warns once per arrow table about the json hint; keep stderr for errors
        import logging

        logging.getLogger("dlt").setLevel(logging.ERROR)
    result = PATHS[name](**args)
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
