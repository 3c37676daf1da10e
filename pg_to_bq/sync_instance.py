"""The Dagster instance `pg-to-bq sync` runs in when DAGSTER_HOME is not set.

It is Dagster's ephemeral instance (in-memory SQLite run and event storage, nothing kept),
with one change to its event log: every statement goes over one held connection. Dagster's
in-memory event log opens a new SQLite connection and sets two pragmas for each statement;
a table's load writes about twelve events (planned, materialized, three checks planned and
evaluated, their outputs), each one to three statements, which made the event log the
largest cost of an unchanged 100-table re-sync (`benchmarks/many_tables.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster._core.instance import InstanceType
from dagster._core.launcher.sync_in_memory_run_launcher import SyncInMemoryRunLauncher
from dagster._core.run_coordinator import DefaultRunCoordinator
from dagster._core.storage.event_log import InMemoryEventLogStorage
from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager
from dagster._core.storage.root import TemporaryLocalArtifactStorage
from dagster._core.storage.runs import InMemoryRunStorage
from sqlalchemy.pool import NullPool


class OneConnectionEventLog(InMemoryEventLogStorage):
    """Dagster's in-memory event log, every statement on one connection (under its lock)."""

    def __init__(self) -> None:
        super().__init__()
        # The same named in-memory database (shared cache), on a connection any thread may
        # use: steps log from the threads a load starts. Dagster's lock serializes them.
        engine = sa.create_engine(self._engine.url, poolclass=NullPool,
                                  connect_args={"check_same_thread": False})
        self._one_engine = engine
        self._one = engine.connect()
        self._one.execute(sa.text("PRAGMA foreign_keys=ON;")).close()
        self._one.commit()

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        with self._db_lock, self._one.begin():
            yield self._one

    def dispose(self) -> None:
        self._one.close()
        self._one_engine.dispose()
        super().dispose()


def ephemeral_instance() -> dg.DagsterInstance:
    """Dagster's `DagsterInstance.ephemeral()`, with `OneConnectionEventLog`."""
    return dg.DagsterInstance(
        instance_type=InstanceType.EPHEMERAL,
        local_artifact_storage=TemporaryLocalArtifactStorage(),
        run_storage=InMemoryRunStorage(),
        event_storage=OneConnectionEventLog(),
        compute_log_manager=NoOpComputeLogManager(),
        run_coordinator=DefaultRunCoordinator(),
        run_launcher=SyncInMemoryRunLauncher(),
    )
