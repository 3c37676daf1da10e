"""dagster-postgres's storage holding its connections, for `deploy/dagster.yaml`.

dagster-postgres opens a new PostgreSQL connection for every statement outside the
webserver (`pg_to_bq.orchestration.storage_connections` says why that costs so much). This class is its
storage with the webserver's pooling applied as it is built, so every process that uses the
instance holds its connections: the daemon creating a scheduled run (which writes four
events a table before any step runs), run workers, step processes. `deploy/dagster.yaml`
configures it as `storage: custom:` with the `postgres:` block's config. Its own module, so
that only processes configured with it import dagster-postgres.
"""

from __future__ import annotations

from typing import Any

from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from pg_to_bq.orchestration.storage_connections import MAX_OVERFLOW, POOL_RECYCLE_S, STATEMENT_TIMEOUT_MS


class PooledPostgresStorage(DagsterPostgresStorage):
    """dagster-postgres's storage, its run, event log and schedule storages pooled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            storage.optimize_for_webserver(statement_timeout=STATEMENT_TIMEOUT_MS,
                                           pool_recycle=POOL_RECYCLE_S, max_overflow=MAX_OVERFLOW)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledPostgresStorage:
        # dagster-postgres builds its own class here, not `cls`.
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value))
