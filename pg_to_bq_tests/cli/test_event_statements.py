"""Tier 1: `pg-to-bq sync`'s event log writes exactly the rows Dagster's own would.

`pg_to_bq.cli.event_statements` writes a run's events with statements built once, instead
of Dagster's code building one per event. The events of real Dagster runs (assets with data
versions and tags, checks that pass and fail with metadata, a second run over the first, a
failed step whose check stays planned, an observation, a log line) are stored through
Dagster's `InMemoryEventLogStorage` and through the CLI's `OneConnectionEventLog`, and every
table of both must be equal, row for row.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
from dagster._core.storage.event_log import InMemoryEventLogStorage
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata

from pg_to_bq.cli.sync_instance import OneConnectionEventLog


def _runs_events() -> list[Any]:
    @dg.asset(check_specs=[dg.AssetCheckSpec("matches_source", asset="orders")])
    def orders():
        yield dg.MaterializeResult(
            metadata={"rows": 3, "outcome": "loaded", "columns": dg.MetadataValue.json(
                {"id": "bigint", "note": "text 日本語"})},
            data_version=dg.DataVersion("v1"), tags={"pg_to_bq/outcome": "loaded"})
        yield dg.AssetCheckResult(check_name="matches_source", passed=True,
                                  metadata={"rows": 3})

    @dg.asset(deps=[orders], check_specs=[dg.AssetCheckSpec("matches_source", asset="items")])
    def items():
        yield dg.MaterializeResult(metadata={"rows": 2}, data_version=dg.DataVersion("v2"))
        yield dg.AssetCheckResult(
            check_name="matches_source", passed=False,
            severity=dg.AssetCheckSeverity.ERROR, description="column note differs",
            metadata={"differs": dg.MetadataValue.json({"note": [1, 2]})})

    @dg.asset(check_specs=[dg.AssetCheckSpec("matches_source", asset="broken")])
    def broken():  # (its check is planned, never evaluated)
        raise ValueError("a table's failure")

    @dg.asset
    def watched(context):
        context.log_event(dg.AssetObservation(asset_key="watched", metadata={"seen": 1}))
        context.log.info("a log line")

    instance = dg.DagsterInstance.ephemeral()
    runs = [dg.materialize([orders, items], instance=instance),
            dg.materialize([orders, items], instance=instance),
            dg.materialize([broken], instance=instance, raise_on_error=False),
            dg.materialize([watched], instance=instance)]
    return [entry for result in runs for entry in instance.all_logs(result.run_id)]


def _tables(storage: Any) -> dict[str, list[tuple]]:
    with storage.index_connection() as conn:
        return {table.name: [tuple(row) for row in conn.execute(
                    table.select().order_by(*table.primary_key.columns or table.columns))]
                for table in SqlEventLogStorageMetadata.sorted_tables}


@pytest.fixture(scope="module")
def events() -> list[Any]:
    return _runs_events()


def test_the_cli_event_log_stores_what_dagsters_stores(events: list[Any]) -> None:
    kinds = {entry.dagster_event_type for entry in events if entry.is_dagster_event}
    assert {dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
            dg.DagsterEventType.ASSET_MATERIALIZATION,
            dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
            dg.DagsterEventType.ASSET_CHECK_EVALUATION,
            dg.DagsterEventType.ASSET_OBSERVATION,
            dg.DagsterEventType.STEP_FAILURE} <= kinds
    dagsters, ours = InMemoryEventLogStorage(), OneConnectionEventLog()
    try:
        for entry in events:
            dagsters.store_event(entry)
            ours.store_event(entry)
        expected, got = _tables(dagsters), _tables(ours)
        assert len(expected["event_logs"]) == len(events)
        assert len(expected["asset_check_executions"]) == 5
        assert len(expected["asset_keys"]) == 4  # (orders, items, broken, watched)
        for name, rows in expected.items():
            assert got[name] == rows, f"table {name} differs"
        # Observations, which the CLI's log answers without a query for an asset it never saw
        # observed (a source table).
        for key in ("watched", "orders", "a_source_table"):
            for cursor in (None, ours.fetch_observations(dg.AssetKey(key), 1).cursor):
                theirs = dagsters.fetch_observations(dg.AssetKey(key), 5, cursor)
                mine = ours.fetch_observations(dg.AssetKey(key), 5, cursor)
                assert [r.storage_id for r in mine.records] == \
                    [r.storage_id for r in theirs.records]
                assert (mine.cursor, mine.has_more) == (theirs.cursor, theirs.has_more)
        assert len(ours.fetch_observations(dg.AssetKey("watched"), 5).records) == 1
    finally:
        ours.dispose()
        dagsters.dispose()


def test_the_cli_event_log_reads_back_the_last_materialization(events: list[Any]) -> None:
    """What Dagster reads from the asset's row: the last materialization's record, which the
    CLI's log writes from the event's text instead of serializing the record again."""
    ours = OneConnectionEventLog()
    try:
        for entry in events:
            ours.store_event(entry)
        (record,) = ours.get_asset_records([dg.AssetKey("items")])
        materialization = record.asset_entry.last_materialization
        assert materialization is not None
        assert materialization.asset_materialization.metadata["rows"] == dg.MetadataValue.int(2)
        check = ours.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("items"), "matches_source")])
        (execution,) = check.values()
        assert execution.status.value == "FAILED"
        assert execution.event.dagster_event.event_specific_data.description == \
            "column note differs"
    finally:
        ours.dispose()


def test_events_stored_from_several_threads_keep_their_own_texts(events: list[Any]) -> None:
    """Steps log from the threads a load starts. Each asset's and check's row must hold the
    text of the event stored under its storage id, never another thread's event."""
    from concurrent.futures import ThreadPoolExecutor

    from dagster._serdes import deserialize_value, serialize_value

    runs: dict[str, list[Any]] = {}
    for entry in events:
        runs.setdefault(entry.run_id, []).append(entry)
    ours = OneConnectionEventLog()
    try:
        with ThreadPoolExecutor(8) as pool:
            for _ in range(5):
                list(pool.map(lambda run: [ours.store_event(e) for e in run], runs.values()))
        with ours.index_connection() as conn:
            texts = dict(conn.exec_driver_sql("SELECT id, event FROM event_logs").fetchall())
            assets = conn.exec_driver_sql(
                "SELECT last_materialization FROM asset_keys "
                "WHERE last_materialization IS NOT NULL").fetchall()
            checks = conn.exec_driver_sql(
                "SELECT evaluation_event, evaluation_event_storage_id "
                "FROM asset_check_executions").fetchall()
        assert len(texts) == 5 * len(events)
        assert len(assets) == 3 and len(checks) == 5 * 5  # (orders, items, watched)
        for (text,) in assets:
            record = deserialize_value(text)
            assert serialize_value(record.event_log_entry) == texts[record.storage_id]
        for text, storage_id in checks:
            assert text == texts[storage_id]
    finally:
        ours.dispose()
