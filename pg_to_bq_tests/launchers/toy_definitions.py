"""A tiny code location for the Lambda launcher tests.

`quick_table` finishes at once and records the process and environment it ran in;
`slow_table` sleeps far longer than any test waits, so only a deadline or a cancellation
ends it. The jobs keep Dagster's default executor (multiprocess, or in-process when
configured): the Lambda handler must run them in-process anyway.
"""

import os
import time

import dagster as dg

SLOW_SECONDS = 600


@dg.asset
def quick_table(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Stands in for a small table; reports where it ran."""
    return dg.MaterializeResult(
        metadata={
            "pid": os.getpid(),
            "work_dir": os.environ.get("PG_TO_BQ_WORK_DIR", ""),
            "home_set": "HOME" in os.environ,
            "storage_dir": context.instance.storage_directory(),
        }
    )


@dg.asset
def slow_table() -> None:
    """Stands in for a table too big for one Lambda invocation."""
    time.sleep(SLOW_SECONDS)


defs = dg.Definitions(
    assets=[quick_table, slow_table],
    jobs=[
        dg.define_asset_job("quick_job", selection=[quick_table]),
        dg.define_asset_job("slow_job", selection=[slow_table]),
    ],
)
