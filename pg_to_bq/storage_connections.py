"""A step holds its connections to Dagster's storage instead of opening one per statement.

Outside the webserver, Dagster's PostgreSQL storage (`dagster-postgres`, what
`deploy/dagster.yaml` configures) uses no connection pool: every event a step writes opens
a new PostgreSQL connection (a TCP connection, authentication and a server process), several
per table (its materialization, three checks, their outputs). On the 100-table benchmark
that was most of the job's time and 16 CPU-s of PostgreSQL's. The webserver avoids it with
`DagsterInstance.optimize_for_webserver`, which gives each storage a pool of one held
connection (more while threads need them); a step process does the same, once. Storages
without a pool to set (SQLite, in-memory) ignore the call.
"""

from __future__ import annotations

import functools
from typing import Any

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


@functools.cache
def _pooled_postgres_storage() -> type:
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

    class PooledPostgresStorage(DagsterPostgresStorage):
        """dagster-postgres's storage holding its connections in every process that uses it
        (the daemon creating a scheduled run writes four events a table before any step
        runs). `deploy/dagster.yaml` configures it as `storage: custom:`."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
                storage.optimize_for_webserver(statement_timeout=STATEMENT_TIMEOUT_MS,
                                               pool_recycle=POOL_RECYCLE_S,
                                               max_overflow=MAX_OVERFLOW)

        @classmethod
        def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledPostgresStorage:
            return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                       should_autocreate_tables=config_value.get("should_autocreate_tables",
                                                                 True),
                       token_provider=get_token_provider_from_config(config_value))

    return PooledPostgresStorage


def __getattr__(name: str) -> Any:
    # dagster-postgres is imported only where the class is configured (module __getattr__).
    if name == "PooledPostgresStorage":
        return _pooled_postgres_storage()
    raise AttributeError(name)
