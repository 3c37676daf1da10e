"""Tier 2: real PostgreSQL → real DuckDB file, through the same Dagster assets the UI runs."""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from pg_to_bq.orchestration.code_location import NIGHTLY_JOB, build_definitions
from pg_to_bq.planning.settings import Settings
from pg_to_bq_tests.conftest import duck_rows, pg_rows, run_sql

SAMPLE_TABLES = ["audit_log", "customers", "order_items", "orders", "page_views", "products",
                 "顧客メモ"]


def materialize_all(defs: dg.Definitions, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        list(defs.assets or []),
        selection=dg.AssetSelection.kind("dlt"),
        resources=defs.resources,
        raise_on_error=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def loaded_sample(sample_db_url: str, tmp_path_factory: pytest.TempPathFactory):
    """The sample database loaded once into DuckDB through the Dagster assets."""
    root = tmp_path_factory.mktemp("sample_load")
    duckdb_path = root / "dest.duckdb"
    env = {
        "PG_TO_BQ_SOURCE_URL": sample_db_url,
        "PG_TO_BQ_DESTINATION": f"duckdb:///{duckdb_path}",
        "PG_TO_BQ_WORK_DIR": str(root / "work"),
        "PG_TO_BQ_DATASET": "raw",
    }
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    defs = build_definitions(Settings.from_env())
    result = materialize_all(defs)
    yield defs, result, duckdb_path
    mp.undo()


def test_every_table_loads_with_source_row_counts(loaded_sample, sample_db_url: str) -> None:
    _, result, path = loaded_sample
    assert result.success
    for table in SAMPLE_TABLES:
        [(source,)] = pg_rows(sample_db_url, f'SELECT count(*) FROM public."{table}"')
        [(dest,)] = duck_rows(path, f'SELECT count(*) FROM raw."{table}"')
        assert dest == source, table
    # The partitioned table loads once, through its parent; no partition appears on its own.
    tables = {r[0] for r in duck_rows(path, "SELECT table_name FROM information_schema.tables "
                                            "WHERE table_schema = 'raw'")}
    assert not any(t.startswith("page_views_2026") for t in tables)


def test_values_match_postgres_one_by_one(loaded_sample, sample_db_url: str) -> None:
    _, _, path = loaded_sample
    source = pg_rows(sample_db_url, """
        SELECT id, email, full_name, country, signup_ip::text, birth_date, is_active,
               preferences::text, created_at, updated_at
        FROM customers ORDER BY id""")
    dest = duck_rows(path, """
        SELECT id, email, full_name, country, signup_ip, birth_date, is_active,
               preferences::varchar, created_at, updated_at
        FROM raw.customers ORDER BY id""")
    assert len(source) == len(dest) == 5000
    for s, d in zip(source, dest, strict=True):
        assert s[:7] == d[:7]
        assert (json.loads(s[7]) if s[7] else None) == (json.loads(d[7]) if d[7] else None)
        assert s[8] == d[8] and s[9] == d[9]  # the same instants (tz-aware on both sides)

    source = pg_rows(sample_db_url, "SELECT id, sku, name, price, weight_kg, tags, description "
                                    "FROM products ORDER BY id")
    dest = duck_rows(path, "SELECT id, sku, name, price, weight_kg, tags::varchar, description "
                           "FROM raw.products ORDER BY id")
    for s, d in zip(source, dest, strict=True):
        assert (s[0], str(s[1]), s[2]) == (d[0], d[1], d[2])
        assert isinstance(d[3], Decimal) and s[3] == d[3]
        # real → DOUBLE widens the float32 exactly; psycopg reads PostgreSQL's shortest text.
        assert (None if s[4] is None else struct.pack("f", s[4])) == \
            (None if d[4] is None else struct.pack("f", d[4]))
        assert s[5] == (json.loads(d[5]) if d[5] is not None else None)
        assert s[6] == d[6]

    source = pg_rows(sample_db_url, "SELECT id, status::text, ordered_at, delivery_slot::text, "
                                    "local_time, total FROM orders ORDER BY id")
    dest = duck_rows(path, "SELECT id, status, ordered_at, delivery_slot, local_time, total "
                           "FROM raw.orders ORDER BY id")
    assert source == dest  # naive local_time is not shifted; numeric exact; range as text


def test_table_and_column_names_are_kept(loaded_sample, sample_db_url: str) -> None:
    _, _, path = loaded_sample
    assert duck_rows(path, 'SELECT "顧客ID", "メモ" FROM raw."顧客メモ" ORDER BY id LIMIT 1') \
        == pg_rows(sample_db_url, 'SELECT "顧客ID", "メモ" FROM "顧客メモ" ORDER BY id LIMIT 1')


def test_sensitive_column_never_reaches_destination(loaded_sample) -> None:
    _, _, path = loaded_sample
    columns = [r[0] for r in duck_rows(path, "SELECT column_name FROM information_schema.columns "
                                             "WHERE table_name = 'customers'")]
    assert "password_hash" not in columns and "email" in columns


def test_duplicates_survive_in_tables_without_a_key(loaded_sample) -> None:
    _, _, path = loaded_sample
    assert duck_rows(path, "SELECT count(*) FROM raw.audit_log "
                           "WHERE json_extract(payload, '$.dup')::varchar = 'true'") == [(2,)]


def test_materialization_metadata_and_checks(loaded_sample) -> None:
    _, result, _ = loaded_sample
    materializations = {
        e.event_specific_data.materialization.asset_key.to_user_string():
            e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    orders = materializations["duckdb/raw/orders"]
    assert orders["rows_loaded"].value == 20000
    assert orders["dagster/row_count"].value == 20000
    assert orders["dlt_load_id"].value
    assert orders["destination_table"].value == "dest.raw.orders"
    assert orders["duration_s"].value > 0
    failed = [(e.asset_key.to_user_string(), e.check_name)
              for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed == []
    # One check a table: rows, values and drift in one evaluation.
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {"matches_source"}
    assert len(result.get_asset_check_evaluations()) == len(materializations)
    # The newest cursor value and its age are information, not a check.
    assert orders["newest_cursor"].value and orders["newest_cursor_age_hours"].value >= 0


def test_rerun_does_not_duplicate_rows(sample_db_url: str, settings_env) -> None:
    path = settings_env(sample_db_url, INCLUDE="public.audit_log,public.order_items")
    defs = build_definitions(Settings.from_env())
    for _ in range(2):
        assert materialize_all(defs).success
    assert duck_rows(path, "SELECT count(*) FROM raw.audit_log") == [(4002,)]
    assert duck_rows(path, "SELECT count(*) FROM raw.order_items") == \
        pg_rows(sample_db_url, "SELECT count(*) FROM order_items")


def test_one_failing_table_does_not_hide_the_others(pg_url: str, settings_env) -> None:
    run_sql(pg_url, """
        CREATE TABLE good_a (id int PRIMARY KEY, v text);
        INSERT INTO good_a SELECT g, 'a' || g FROM generate_series(1, 100) g;
        CREATE TABLE bad (id int PRIMARY KEY, valid_to timestamptz);
        INSERT INTO bad VALUES (1, now()), (2, 'infinity');
        CREATE TABLE good_b (id int PRIMARY KEY, v text);
        INSERT INTO good_b SELECT g, 'b' || g FROM generate_series(1, 50) g;
    """)
    path = settings_env(pg_url)
    defs = build_definitions(Settings.from_env())
    job = defs.resolve_job_def(NIGHTLY_JOB)
    result = job.execute_in_process(raise_on_error=False, instance=dg.DagsterInstance.ephemeral())
    assert not result.success
    # The three small tables share a step: it fails naming the bad table alone, after the
    # two good ones materialized, each with its own event.
    [failure] = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("1 of 3 table(s) failed: public.bad.")
    assert "valid_to" in message and "timestamp with time zone" in message
    assert "cast: text" in message
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert materialized == {"good_a", "good_b", "catalog"}
    # The failed table's own record, on its asset: why it was not loaded.
    [observation] = [e.event_specific_data.asset_observation for e in result.all_events
                     if e.event_type_value == "ASSET_OBSERVATION"]
    assert observation.asset_key.path[-1] == "bad"
    assert "valid_to" in observation.metadata["pg_to_bq/load_failed"].value
    assert duck_rows(path, "SELECT count(*) FROM raw.good_a") == [(100,)]
    assert duck_rows(path, "SELECT count(*) FROM raw.good_b") == [(50,)]
    tables = {r[0] for r in duck_rows(path, "SELECT table_name FROM information_schema.tables")}
    assert "bad" not in tables


def test_empty_table_exists_with_its_columns(pg_url: str, settings_env) -> None:
    run_sql(pg_url, "CREATE TABLE empty_one (id bigint PRIMARY KEY, name text, at timestamptz);"
                    "CREATE TABLE no_columns ();")
    path = settings_env(pg_url)
    defs = build_definitions(Settings.from_env())
    assert materialize_all(defs).success
    assert duck_rows(path, "SELECT count(*) FROM raw.empty_one") == [(0,)]
    columns = duck_rows(path, "SELECT column_name, data_type FROM information_schema.columns "
                              "WHERE table_schema = 'raw' AND table_name = 'empty_one' "
                              "ORDER BY ordinal_position")
    assert columns == [("id", "BIGINT"), ("name", "VARCHAR"), ("at", "TIMESTAMP WITH TIME ZONE")]
    # The table without columns is still visible as a source asset, not silently lost.
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "postgres/public/no_columns" in keys and "duckdb/raw/no_columns" not in keys


def test_replace_empties_a_table_that_became_empty(pg_url: str, settings_env) -> None:
    run_sql(pg_url, "CREATE TABLE shrink (v text); INSERT INTO shrink VALUES ('x'), ('y');")
    path = settings_env(pg_url)
    defs = build_definitions(Settings.from_env())
    assert materialize_all(defs).success
    run_sql(pg_url, "DELETE FROM shrink")
    assert materialize_all(defs).success
    assert duck_rows(path, "SELECT count(*) FROM raw.shrink") == [(0,)]


def test_odd_identifiers_are_quoted(pg_url: str, settings_env) -> None:
    run_sql(pg_url, """
        CREATE SCHEMA "Sales Team";
        CREATE TABLE "Sales Team"."Order ""Lines""; DROP TABLE x" (
            "Line Id" int PRIMARY KEY, "select" text, "Üml" text);
        INSERT INTO "Sales Team"."Order ""Lines""; DROP TABLE x" VALUES (1, 'a', 'ä');
    """)
    path = settings_env(pg_url)
    defs = build_definitions(Settings.from_env())
    assert materialize_all(defs).success
    [(table,)] = duck_rows(path, "SELECT table_name FROM information_schema.tables "
                                 "WHERE table_schema = 'raw' AND table_name LIKE 'Sales%'")
    assert table == "Sales_Team__Order__Lines___DROP_TABLE_x"
    assert duck_rows(path, f'SELECT "Line_Id", "select", "Üml" FROM raw."{table}"') \
        == [(1, "a", "ä")]


def test_state_restored_from_destination_in_a_fresh_container(pg_url: str, settings_env,
                                                              tmp_path: Path) -> None:
    run_sql(pg_url, """
        CREATE TABLE events (id int PRIMARY KEY, updated_at timestamptz NOT NULL, v text);
        INSERT INTO events SELECT g, now() - interval '200 hours' + g * interval '1 hour', 'v' || g
        FROM generate_series(1, 100) g;
    """)
    path = settings_env(pg_url, read_whole_bytes="0")  # (merged by cursor)
    defs = build_definitions(Settings.from_env())
    assert materialize_all(defs).success
    # A new container: an empty working directory; the cursor comes back from DuckDB.
    import os
    import shutil

    shutil.rmtree(os.environ["PG_TO_BQ_WORK_DIR"] + "/pipelines")
    run_sql(pg_url, "INSERT INTO events VALUES (101, now(), 'new'); "
                    "UPDATE events SET v = 'changed', updated_at = now() WHERE id = 5;")
    result = materialize_all(defs)
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.event_specific_data.materialization.metadata
    assert metadata["load_mode"].value == "incremental"
    # The two changed rows, plus the newest old row (within the 10-minute lookback).
    assert metadata["rows_loaded"].value == 3
    assert duck_rows(path, "SELECT count(*), count(*) FILTER (WHERE v = 'changed') "
                           "FROM raw.events") == [(101, 1)]


def test_naive_timestamps_are_not_shifted(pg_url: str, settings_env) -> None:
    run_sql(pg_url, """
        SET TimeZone = 'Asia/Tokyo';
        CREATE TABLE t (id int PRIMARY KEY, local timestamp, instant timestamptz, d date);
        INSERT INTO t VALUES (1, '2026-01-01 09:00:00.123456', '2026-01-01 09:00:00+09',
                              '2026-01-01');
    """)
    path = settings_env(pg_url)
    assert materialize_all(build_definitions(Settings.from_env())).success
    [(local, instant, day)] = duck_rows(path, "SELECT local, instant, d FROM raw.t")
    assert local == dt.datetime(2026, 1, 1, 9, 0, 0, 123456)
    assert instant == dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.UTC)
    assert day == dt.date(2026, 1, 1)


def test_uuid_and_bytes(pg_url: str, settings_env) -> None:
    value = uuid.uuid4()
    run_sql(pg_url, f"CREATE TABLE b (id int PRIMARY KEY, u uuid, raw bytea); "
                    f"INSERT INTO b VALUES (1, '{value}', '\\x00ff10'), (2, NULL, NULL);")
    path = settings_env(pg_url)
    assert materialize_all(build_definitions(Settings.from_env())).success
    assert duck_rows(path, "SELECT u, raw FROM raw.b ORDER BY id") == \
        [(str(value), b"\x00\xff\x10"), (None, None)]


def test_each_check_names_its_tables_materialization_of_this_run(sample_db_url: str,
                                                                 settings_env) -> None:
    """A step's checks are evaluated after all its tables' materializations, which are looked
    up in one batch (`steps._look_up_materializations`): each evaluation must still name its
    own table's materialization of this run (the UI links the check to it), and Dagster must
    not have looked the tables up one by one. The instance's `get_asset_records` is wrapped
    to count calls, and passes every call through."""
    settings_env(sample_db_url, INCLUDE="public.orders,public.customers,public.products,"
                                        "public.audit_log")
    defs = build_definitions(Settings.from_env())
    instance = dg.DagsterInstance.ephemeral()
    asked: list[list[dg.AssetKey]] = []
    lookup = instance.get_asset_records

    def counted(keys=None):
        asked.append(list(keys or []))
        return lookup(keys)

    instance.get_asset_records = counted  # type: ignore[method-assign]
    result = materialize_all(defs, instance=instance)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert len(materialized) == 4
    assert {e.asset_key for e in evaluations} == materialized
    for evaluation in evaluations:
        [record] = instance.fetch_materializations(evaluation.asset_key, limit=1).records
        target = evaluation.target_materialization_data
        assert target is not None, evaluation.asset_key
        assert (target.storage_id, target.run_id) == (record.storage_id, result.run_id)
    one_by_one = [keys for keys in asked if len(keys) == 1 and keys[0] in materialized]
    assert one_by_one == []
