"""A step holds its connections to Dagster's storage instead of opening one per statement.

Outside the webserver, Dagster's PostgreSQL storage (`dagster-postgres`, what
`deploy/dagster.yaml` configures) uses no connection pool: every event a step writes opens
a new PostgreSQL connection (a TCP connection, authentication and a server process), several
per table (its materialization, three checks, their outputs). On the 100-table benchmark
that was most of the job's time and 16 CPU-s of PostgreSQL's. The webserver avoids it with
`DagsterInstance.optimize_for_webserver`, which gives each storage a pool of one held
connection (more while threads need them); a step process does the same, once. Storages
without a pool to set (SQLite, in-memory) ignore the call. `pg_to_bq.orchestration.pooled_storage` does it
for every process that uses `deploy/dagster.yaml`'s storage.
"""

from __future__ import annotations

import dagster as dg

_HELD = "_pg_to_bq_holds_storage_connections"
# No statement timeout on the storage (a webserver sets one; a run's writes must not be cut
# off), connections recycled after an hour, up to 8 at once beyond the held one.
STATEMENT_TIMEOUT_MS = 0
POOL_RECYCLE_S = 3600
MAX_OVERFLOW = 8


def hold_storage_connections(instance: dg.DagsterInstance) -> None:
    """Pool `instance`'s storage connections for the rest of this process (idempotent)."""
    if getattr(instance, _HELD, False):
        return
    instance.optimize_for_webserver(statement_timeout=STATEMENT_TIMEOUT_MS,
                                    pool_recycle=POOL_RECYCLE_S, max_overflow=MAX_OVERFLOW)
    setattr(instance, _HELD, True)
