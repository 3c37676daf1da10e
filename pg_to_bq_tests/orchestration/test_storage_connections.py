"""Tier 2: Dagster's PostgreSQL storage holds its connections — real PostgreSQL, real DuckDB.

dagster-postgres opens a new connection for every statement outside the webserver; a
1,000-table nightly run opened one per event (305 s, 214 PostgreSQL CPU-s in
`benchmarks/many_tables.py`). `deploy/dagster.yaml` configures `PooledPostgresStorage`
(`pg_to_bq.orchestration.pooled_storage`), and a step holds whatever storage its instance has
(`pg_to_bq.orchestration.storage_connections`). Connections are counted as SQLAlchemy opens them on the
storages' engines.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import sqlalchemy as sa
import yaml

from pg_to_bq.orchestration.code_location import build_definitions
from pg_to_bq.planning.settings import Settings
from pg_to_bq_tests.conftest import run_sql

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"


def _instance(tmp_path: Path, storage: dict) -> dg.DagsterInstance:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": storage,
                                                       "telemetry": {"enabled": False}}))
    return dg.DagsterInstance.from_config(str(home))


def _storage_url(pg_url: str) -> str:
    return pg_url.replace("postgresql://", "postgresql+psycopg2://", 1)


def _report_events(instance: dg.DagsterInstance, count: int) -> None:
    for i in range(count):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=["t", str(i)], metadata={"i": i}))


def test_the_deployed_storage_class_holds_its_connections(pg_url: str, tmp_path: Path) -> None:
    """`deploy/dagster.yaml`'s own storage block, pointed at the test PostgreSQL."""
    storage = yaml.safe_load(DEPLOY.read_text())["storage"]
    assert storage["custom"]["class"] == "PooledPostgresStorage"
    config = {"postgres_url": _storage_url(pg_url)}
    instance = _instance(tmp_path, {"custom": {**storage["custom"], "config": config}})
    engine = instance.event_log_storage._engine
    assert not isinstance(engine.pool, sa.pool.NullPool)
    opened = [0]
    sa.event.listen(engine, "connect", lambda *_: opened.__setitem__(0, opened[0] + 1))
    _report_events(instance, 50)
    assert opened[0] <= 2, opened
    assert len(instance.fetch_materializations(dg.AssetKey(["t", "7"]), limit=1).records) == 1


def test_dagster_postgres_alone_opens_a_connection_per_event(pg_url: str, tmp_path: Path) -> None:
    """Why the class exists: the plain `postgres:` storage, the same 50 events."""
    instance = _instance(tmp_path, {"postgres": {"postgres_url": _storage_url(pg_url)}})
    opened = [0]
    sa.event.listen(instance.event_log_storage._engine, "connect",
                    lambda *_: opened.__setitem__(0, opened[0] + 1))
    _report_events(instance, 50)
    assert opened[0] >= 50, opened


def test_a_step_holds_the_connections_of_a_plain_postgres_storage(
        pg_url: str, settings_env, tmp_path: Path) -> None:
    """Projects that keep `storage: postgres:` (the component in someone else's Dagster):
    the load step pools the instance's storage connections for the rest of its process."""
    run_sql(pg_url, "CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a VALUES (1);"
                    "CREATE TABLE b (id int PRIMARY KEY); INSERT INTO b VALUES (1), (2);")
    settings_env(pg_url)
    defs = build_definitions(Settings.from_env())
    instance = _instance(tmp_path, {"postgres": {"postgres_url": _storage_url(pg_url)}})
    assert isinstance(instance.event_log_storage._engine.pool, sa.pool.NullPool)
    result = dg.materialize(list(defs.assets or []), selection=dg.AssetSelection.kind("dlt"),
                            resources=defs.resources, instance=instance)
    assert result.success
    assert len(result.get_asset_materialization_events()) == 2
    for storage in (instance.event_log_storage, instance.run_storage):
        assert not isinstance(storage._engine.pool, sa.pool.NullPool)
