"""pg_to_bq's code location with Dagster's stock multiprocess executor (`spawn`: every step
starts from an empty interpreter), for `benchmarks/nightly_steps.py` to compare with.

Spawned steps import this module again, so they run with the same executor."""

import dagster as dg

import pg_to_bq.orchestration.code_location as project

_executor_for = project.executor_for
project.executor_for = lambda name: (dg.multiprocess_executor if name == "multiprocess"
                                     else _executor_for(name))

defs = project.build_definitions()
