"""Dagster's SQL event log writes, with each statement built once (`pg-to-bq sync`'s log).

Dagster builds a new SQLAlchemy statement for every event it stores, with the event's values
inside it (`Table.insert().values(**row)`), and SQLAlchemy then derives a cache key from
those values to find the compiled SQL: building and keying took about half of the time
`pg-to-bq sync` spends storing events (six a table, ~4 s of an unchanged 1,000-table
re-sync). Here each statement is compiled once and run on the DBAPI connection with the
values as parameters (SQLAlchemy's `execute` alone cost ~70 µs a statement, more than
SQLite's insert), and an event and its rows are written in one transaction (Dagster
commits each write on its own): storing the 6,076 events of an unchanged 1,000-table
re-sync took 2.06 s that way and 1.55 s this way, of which 0.8 s is Dagster's
serialization of the events. The rows written are Dagster's, value for value
(`pg_to_bq_tests/cli/test_event_statements.py` stores a real run's events through both and
compares every table). The event is also serialized once, not again for its asset's row or
its check's row.

These are the write paths of `SqlEventLogStorage` (dagster 1.13, pinned) that a run takes:
the event row, its asset's row, its indexed tags and its asset check's row. The asset's row
is one upsert, as dagster-postgres writes it, where Dagster's SQLite code inserts and, when
that fails, updates.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import sqlalchemy as sa
from dagster._core.definitions.events import AssetKey
from dagster._core.event_api import EventLogCursor, EventRecordsResult
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS, DagsterEventType
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetEventTagsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._serdes import serialize_value
from dagster._time import datetime_from_timestamp
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

_INSERT_EVENT = SqlEventLogStorageTable.insert()
_INSERT_CHECK = AssetCheckExecutionsTable.insert()
_INSERT_TAG = AssetEventTagsTable.insert()
_CHECK = AssetCheckExecutionsTable.c
_CHECK_VALUES = {name: sa.bindparam(f"v_{name}") for name in (
    "execution_status", "evaluation_event", "evaluation_event_timestamp",
    "evaluation_event_storage_id", "materialization_event_storage_id", "partition")}
# The row an unpartitioned check's planned event made, found as Dagster finds it.
_UPDATE_CHECK = AssetCheckExecutionsTable.update().where(
    _CHECK.asset_key == sa.bindparam("k_asset_key"),
    _CHECK.check_name == sa.bindparam("k_check_name"),
    _CHECK.run_id == sa.bindparam("k_run_id"),
    _CHECK.partition.is_(None),
).values(_CHECK_VALUES)

# How Dagster's serializer writes an EventLogRecord (its fields in order, JSON's separators).
_RECORD = '{{"__class__": "EventLogRecord", "event_log_entry": {event}, "storage_id": {storage_id}}}'
# By the columns they set.
_ASSET_UPSERTS: dict[tuple[str, ...], Any] = {}


class StatementsBuiltOnce(SqlEventLogStorage):
    """`SqlEventLogStorage`'s writes of a run's events, each statement built once (see the
    module's docstring). For a SQLite database whose runs and index are one database (its
    `index_connection` is its `run_connection`), as in Dagster's in-memory log."""

    # The event being stored and its text, per thread (steps log from the threads a load
    # starts, and each thread stores its own events).
    _being_stored = threading.local()

    def store_event(self, event: Any) -> None:
        row = self._event_to_row(event)
        if event.dagster_event_type == DagsterEventType.ASSET_OBSERVATION:
            self._observed().add(event.dagster_event.asset_key)
        # The event's own text, for its asset check row below (the same event, not a copy).
        self._being_stored.event, self._being_stored.text = event, row["event"]
        later = False
        try:
            # One transaction for the event and its rows (the log's runs and index are one
            # database): a commit each, where each of Dagster's writes commits on its own.
            with self.index_connection() as conn:
                event_id = _run(conn, _INSERT_EVENT, row).lastrowid
                if not event.is_dagster_event:
                    return
                if event.dagster_event_type in ASSET_EVENTS and event.dagster_event.asset_key:
                    self._insert_asset_event_tags(conn, event, event_id)
                    self._store_asset_event(conn, event, event_id)
                if event.dagster_event_type in ASSET_CHECK_EVENTS:
                    later = not self._store_check_row(conn, event, event_id)
            if later:  # (rows this module does not write: Dagster's own code, after the commit)
                self.store_asset_check_event(event, event_id)
        finally:
            self._being_stored.event = self._being_stored.text = None

    def fetch_observations(self, records_filter: Any, limit: int, cursor: str | None = None,
                           ascending: bool = False) -> Any:
        """Dagster's, except that an asset never observed in this log is answered without a
        query. Dagster asks it for each source table a step's assets depend on, to find its
        data version; in `pg-to-bq sync`'s log no source table is ever observed."""
        key = records_filter if isinstance(records_filter, AssetKey) else None
        if key is not None and key not in self._observed():
            return EventRecordsResult(records=[], cursor=cursor or
                                      EventLogCursor.from_storage_id(-1).to_string(),
                                      has_more=limit == 0)
        return super().fetch_observations(records_filter, limit, cursor, ascending)

    def _observed(self) -> set[Any]:
        """The assets this log stored an observation of."""
        return self.__dict__.setdefault("_observed_assets", set())  # (one set, in any thread)

    def _serialized_event(self, event: Any) -> str:
        text = self._text_of(event)
        return text if text is not None else serialize_value(event)

    def _text_of(self, event: Any) -> str | None:
        """The text of `event` when this thread is storing it."""
        if getattr(self._being_stored, "event", None) is event:
            return self._being_stored.text
        return None

    def _store_asset_event(self, conn: Any, event: Any, event_id: int) -> None:
        if not (event.dagster_event and event.dagster_event.asset_key):
            return
        values = self._get_asset_entry_values(
            event, event_id, self._has_asset_key_index_cols_on_connection(conn))
        _run(conn, self._asset_upsert(tuple(sorted(values))),
             {"asset_key": event.dagster_event.asset_key.to_string(), **values})

    def _insert_asset_event_tags(self, conn: Any, event: Any, event_id: int) -> None:
        """Dagster's `_store_asset_event_tags` for one event."""
        tags = self._tags_for_asset_event(event)
        if tags and self.has_table(AssetEventTagsTable.name):
            key, timestamp = (event.dagster_event.asset_key.to_string(),
                              self._event_insert_timestamp(event))
            for name, value in tags.items():
                _run(conn, _INSERT_TAG, {"event_id": event_id, "asset_key": key, "key": name,
                                         "value": value, "event_timestamp": timestamp})

    def _get_asset_entry_values(self, event: Any, event_id: int,
                                has_asset_key_index_cols: bool) -> dict[str, Any]:
        text = self._text_of(event)
        if not event.dagster_event.is_step_materialization or text is None:
            return super()._get_asset_entry_values(event, event_id, has_asset_key_index_cols)
        # Dagster's values for a materialization, its record's text made from the event's
        # (`serialize_value(EventLogRecord(storage_id=event_id, event_log_entry=event))`).
        values = {"last_materialization": _RECORD.format(event=text,
                                                         storage_id=json.dumps(event_id)),
                  "last_run_id": event.run_id}
        if has_asset_key_index_cols:
            values["last_materialization_timestamp"] = datetime_from_timestamp(event.timestamp)
        return values

    @staticmethod
    def _asset_upsert(columns: tuple[str, ...]) -> Any:
        """The upsert of an asset's row that sets `columns` (a materialization sets others
        than a planned event)."""
        statement = _ASSET_UPSERTS.get(columns)
        if statement is None:
            insert = sqlite_insert(AssetKeyTable)
            statement = _ASSET_UPSERTS[columns] = insert.on_conflict_do_update(
                index_elements=[AssetKeyTable.c.asset_key],
                set_={name: insert.excluded[name] for name in columns},
            ) if columns else insert.on_conflict_do_nothing()
        return statement

    def _store_check_row(self, conn: Any, event: Any, event_id: int) -> bool:
        """Write the asset check row of a check's planned event or evaluation, as Dagster's
        `store_asset_check_event` would; False for one this module leaves to Dagster's code
        (a partitioned check's, a run-less evaluation)."""
        data = event.dagster_event.event_specific_data
        if event.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED:
            if data.partitions_subset:  # (pg_to_bq's assets are not partitioned)
                return False
            _run(conn, _INSERT_CHECK, {
                "asset_key": data.asset_key.to_string(), "check_name": data.check_name,
                "partition": None, "run_id": event.run_id,
                "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                "evaluation_event": self._serialized_event(event),
                "evaluation_event_timestamp": self._event_insert_timestamp(event),
                "evaluation_event_storage_id": event_id})
            return True
        if data.partition is not None or not event.run_id:
            return False
        status = (AssetCheckExecutionRecordStatus.SUCCEEDED if data.passed
                  else AssetCheckExecutionRecordStatus.FAILED).value
        values = {
            "execution_status": status,
            "evaluation_event": self._serialized_event(event),
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
            "materialization_event_storage_id": (
                data.target_materialization_data.storage_id
                if data.target_materialization_data else None),
            "partition": data.partition,
        }
        key = {"asset_key": data.asset_key.to_string(),
               "check_name": data.check_name, "run_id": event.run_id}
        params = {**{f"v_{k}": v for k, v in values.items()},
                  **{f"k_{k}": v for k, v in key.items()}}
        if _run(conn, _UPDATE_CHECK, params).rowcount == 0:
            # No planned row (as in Dagster: an evaluation of a check not planned).
            _run(conn, _INSERT_CHECK, {**key, **values})
        return True


class _Compiled:
    """A statement compiled once for one set of columns and run on the DBAPI connection:
    SQLAlchemy's `Connection.execute` costs ~70 µs a statement in Python, more than SQLite's
    insert itself. Values go through each column type's bind processor (SQLite keeps a
    `TIMESTAMP` as text), as SQLAlchemy would pass them."""

    def __init__(self, statement: Any, dialect: Any, keys: tuple[str, ...]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        if compiled.positiontup is None or dialect.paramstyle != "qmark":
            raise TypeError(f"{dialect.name}: only qmark-style statements are run directly")
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup)
        self.processors = {
            name: processor for name in set(self.names)
            if (processor := compiled.binds[name].type.dialect_impl(dialect)
                .bind_processor(dialect)) is not None}

    def parameters(self, values: dict[str, Any]) -> tuple[Any, ...]:
        processors = self.processors
        return tuple(processors[name](values[name]) if name in processors else values[name]
                     for name in self.names)


# By statement (DML statements compare and hash by identity) and the columns given.
_COMPILED: dict[tuple[Any, tuple[str, ...]], _Compiled] = {}


def _run(conn: Any, statement: Any, values: dict[str, Any]) -> Any:
    """Execute `statement` with `values` on `conn`'s DBAPI connection (inside the transaction
    `conn` has begun); returns the DBAPI cursor (`lastrowid`, `rowcount`)."""
    keys = tuple(sorted(values))
    compiled = _COMPILED.get((statement, keys))
    if compiled is None:
        compiled = _COMPILED[(statement, keys)] = _Compiled(statement, conn.dialect, keys)
    return conn.connection.dbapi_connection.execute(compiled.sql, compiled.parameters(values))
