"""A tiny code location the image tests execute inside the container.

`test_image.py` mounts this file read-only into the container, creates a run of
`image_check_job` in an instance on a shared bind mount, and has the image execute
it the way ECS (`dagster api execute_run`) and Lambda (the awslambdaric handler)
do. The asset runs a real dlt pipeline into DuckDB, so the run proves that dlt,
Dagster and DuckDB only need the writable /tmp the image is given, and reports
where it ran so the test can check it.
"""

import os
import sys

import dagster as dg


@dg.asset
def image_check() -> dg.MaterializeResult:
    """Load two rows with dlt into a DuckDB file under the work directory."""
    import dlt

    work_dir = os.environ["PG_TO_BQ_WORK_DIR"]
    pipeline = dlt.pipeline(
        pipeline_name="image_check",
        destination=dlt.destinations.duckdb(os.path.join(work_dir, "check.duckdb")),
        dataset_name="image_check",
    )
    pipeline.run([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], table_name="rows")
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM rows")[0][0]
    return dg.MaterializeResult(
        metadata={
            "rows": int(rows),
            "uid": os.getuid(),
            "pid": os.getpid(),
            "executable": sys.executable,
            "work_dir": work_dir,
            "pipelines_dir": pipeline.pipelines_dir,
            "dagster_home": os.environ.get("DAGSTER_HOME", ""),
            "home": os.path.expanduser("~"),
        }
    )


defs = dg.Definitions(
    assets=[image_check],
    jobs=[dg.define_asset_job("image_check_job", selection=[image_check])],
)
