"""Dagster's SQL event log writes, with each statement built once (`pg-to-bq sync`'s log).

Dagster builds a new SQLAlchemy statement for every event it stores, with the event's values
inside it (`Table.insert().values(**row)`), and SQLAlchemy then derives a cache key from
those values to find the compiled SQL: building and keying took about half of the time
`pg-to-bq sync` spends storing events (six a table, ~4 s of an unchanged 1,000-table
re-sync). Here each statement is built once and the values are passed as parameters; the
rows written are Dagster's, value for value (`pg_to_bq_tests/cli/test_event_statements.py`
stores a real run's events through both and compares every table). The event is also
serialized once, not again for its asset's row or its check's row.

These are the write paths of `SqlEventLogStorage` (dagster 1.13, pinned) that a run takes:
the event row, its asset's row and its asset check's row. The asset's row is one upsert, as
dagster-postgres writes it, where Dagster's SQLite code inserts and, when that fails, updates.
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
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._serdes import serialize_value
from dagster._time import datetime_from_timestamp
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

_INSERT_EVENT = SqlEventLogStorageTable.insert()
_INSERT_CHECK = AssetCheckExecutionsTable.insert()
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
    module's docstring). For a SQLite database."""

    # The event being stored and its text, per thread (steps log from the threads a load
    # starts, and each thread stores its own events).
    _being_stored = threading.local()

    def store_event(self, event: Any) -> None:
        row = self._event_to_row(event)
        if event.dagster_event_type == DagsterEventType.ASSET_OBSERVATION:
            self._observed().add(event.dagster_event.asset_key)
        # The event's own text, for its asset check row below (the same event, not a copy).
        self._being_stored.event, self._being_stored.text = event, row["event"]
        try:
            with self.run_connection(event.run_id) as conn:
                event_id = conn.execute(_INSERT_EVENT, row).inserted_primary_key[0]
            if not event.is_dagster_event:
                return
            if event.dagster_event_type in ASSET_EVENTS and event.dagster_event.asset_key:
                with self.index_transaction() as conn:
                    self._store_asset_event_tags(conn, [event], [event_id])
                    self._store_asset_event(conn, event, event_id)
            if event.dagster_event_type in ASSET_CHECK_EVENTS:
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
        conn.execute(self._asset_upsert(tuple(sorted(values))),
                     {"asset_key": event.dagster_event.asset_key.to_string(), **values})

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

    def _store_asset_check_evaluation_planned(self, event: Any, event_id: int | None) -> None:
        planned = event.dagster_event.event_specific_data
        if planned.partitions_subset:  # (pg_to_bq's assets are not partitioned)
            super()._store_asset_check_evaluation_planned(event, event_id)
            return
        with self.index_connection() as conn:
            conn.execute(_INSERT_CHECK, {
                "asset_key": planned.asset_key.to_string(), "check_name": planned.check_name,
                "partition": None, "run_id": event.run_id,
                "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                "evaluation_event": self._serialized_event(event),
                "evaluation_event_timestamp": self._event_insert_timestamp(event),
                "evaluation_event_storage_id": event_id})

    def _update_asset_check_evaluation(self, event: Any, event_id: int | None) -> None:
        evaluation = event.dagster_event.event_specific_data
        if evaluation.partition is not None:  # (pg_to_bq's assets are not partitioned)
            super()._update_asset_check_evaluation(event, event_id)
            return
        status = (AssetCheckExecutionRecordStatus.SUCCEEDED if evaluation.passed
                  else AssetCheckExecutionRecordStatus.FAILED).value
        values = {
            "execution_status": status,
            "evaluation_event": self._serialized_event(event),
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
            "materialization_event_storage_id": (
                evaluation.target_materialization_data.storage_id
                if evaluation.target_materialization_data else None),
            "partition": evaluation.partition,
        }
        key = {"asset_key": evaluation.asset_key.to_string(),
               "check_name": evaluation.check_name, "run_id": event.run_id}
        with self.index_connection() as conn:
            params = {**{f"v_{k}": v for k, v in values.items()},
                      **{f"k_{k}": v for k, v in key.items()}}
            if conn.execute(_UPDATE_CHECK, params).rowcount == 0:
                # No planned row (as in Dagster: an evaluation of a check not planned).
                conn.execute(_INSERT_CHECK, {**key, **values})

