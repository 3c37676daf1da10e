"""A tiny code location for the launcher tests: two "table" assets with size estimates.

The assets carry the definition metadata `pg_to_bq/estimated_rows` that the project's
table assets carry, so the routing launcher can size a run from the code location's
snapshot. They do no I/O, so a run of them finishes in a second.
"""

import dagster as dg

ESTIMATED_ROWS_KEY = "pg_to_bq/estimated_rows"
SMALL_ROWS = 1_000
BIG_ROWS = 50_000_000


@dg.asset(metadata={ESTIMATED_ROWS_KEY: SMALL_ROWS})
def small_table() -> None:
    """Stands in for a table with a thousand rows."""


@dg.asset(metadata={ESTIMATED_ROWS_KEY: BIG_ROWS})
def big_table() -> None:
    """Stands in for a table with fifty million rows."""


defs = dg.Definitions(
    assets=[small_table, big_table],
    jobs=[
        dg.define_asset_job("small_job", selection=[small_table]),
        dg.define_asset_job("big_job", selection=[big_table]),
    ],
    # One process per run: the test executes the run worker's command directly.
    executor=dg.in_process_executor,
)
