"""The Dagster instance `pg-to-bq sync` runs in when DAGSTER_HOME is not set.

It is Dagster's ephemeral instance (in-memory run storage, nothing kept), with its event
log changed twice: every statement goes over one held connection (Dagster's in-memory
event log opens a new SQLite connection and sets two pragmas for each statement, and a
table's load writes about twelve events, each one to three statements: the largest cost
of an unchanged 100-table re-sync), and the log is a temporary file, not memory (it grew
by ~35 KB a table: 1,000 tables, peak RSS 354 → 319 MB of an unchanged re-sync, for
28.1 → 29.6 s).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster._core.instance import InstanceType
from dagster._core.launcher.sync_in_memory_run_launcher import SyncInMemoryRunLauncher
from dagster._core.run_coordinator import DefaultRunCoordinator
from dagster._core.storage.event_log import InMemoryEventLogStorage, in_memory
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager
from dagster._core.storage.root import TemporaryLocalArtifactStorage
from dagster._core.storage.runs import InMemoryRunStorage
from dagster._core.storage.sql import get_alembic_config, stamp_alembic_rev
from sqlalchemy.pool import NullPool

from pg_to_bq.cli.event_statements import StatementsBuiltOnce
from pg_to_bq.processes import alive


class OneConnectionEventLog(InMemoryEventLogStorage, StatementsBuiltOnce):
    """Dagster's ephemeral event log, in a temporary SQLite file on one held connection.

    In memory, the log grew by ~35 KB a table (35 MB of a 1,000-table run's peak); a file
    with SQLite's page cache keeps the process's memory independent of the table count.
    Nothing is kept: no fsync, no journal on disk, and the file goes when the process ends;
    the folder of a process that was killed goes when the next one starts
    (`remove_orphans`). Every statement runs on the one connection, under Dagster's lock
    (steps log from the threads a load starts).
    """

    def __init__(self) -> None:
        self._tables: dict[str, bool] = {}
        self._asset_key_columns: dict[str, bool] = {}
        super().__init__()
        remove_orphans(Path(tempfile.gettempdir()))
        self._directory = tempfile.mkdtemp(prefix=f"{EVENTS_PREFIX}{os.getpid()}_")
        atexit.register(shutil.rmtree, self._directory, True)
        engine = sa.create_engine(f"sqlite:///{Path(self._directory) / 'events.db'}",
                                  poolclass=NullPool, connect_args={"check_same_thread": False})
        one = engine.connect()
        for pragma in ("journal_mode=MEMORY", "synchronous=OFF", "foreign_keys=ON"):
            one.exec_driver_sql(f"PRAGMA {pragma}").close()
        one.commit()
        with one.begin():
            SqlEventLogStorageMetadata.create_all(one)
            stamp_alembic_rev(get_alembic_config(in_memory.__file__, "sqlite/alembic/alembic.ini"),
                              one)
        # Dagster's in-memory database, made in __init__, is dropped: everything goes here.
        self._held_conn.close()
        self._engine.dispose()
        self._engine, self._held_conn = engine, one

    def has_table(self, table_name: str) -> bool:
        # Dagster asks before storing each asset event and check evaluation, on a connection
        # of its own (a new SQLite connection each time here); the tables, made above, do
        # not change.
        known = self._tables.get(table_name)
        if known is None:
            known = self._tables[table_name] = super().has_table(table_name)
        return known

    def _has_asset_key_col_on_connection(self, conn: Any, column_name: str) -> bool:
        # (asked, by inspecting the table, for each asset event)
        known = self._asset_key_columns.get(column_name)
        if known is None:
            known = self._asset_key_columns[column_name] = \
                super()._has_asset_key_col_on_connection(conn, column_name)
        return known

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        with self._db_lock, self._held_conn.begin():
            yield self._held_conn

    def dispose(self) -> None:
        super().dispose()
        shutil.rmtree(self._directory, ignore_errors=True)


# A sync's event log folder: this prefix, its process id, "_", a random part.
EVENTS_PREFIX = "pg_to_bq_events_"


def remove_orphans(directory: Path) -> list[Path]:
    """Remove the event log folders in `directory` whose process no longer runs (a sync
    killed before its exit handlers ran); returns them. A folder of a running process, of
    another user's, or not named by this version is left alone."""
    removed = []
    for path in directory.glob(f"{EVENTS_PREFIX}*_*"):
        pid = path.name[len(EVENTS_PREFIX):].partition("_")[0]
        if not pid.isdigit() or alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


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
