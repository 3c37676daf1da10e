"""Structure: the definitions built from a catalog snapshot, without touching PostgreSQL."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from pg_to_bq.orchestration.code_location import (
    NIGHTLY_JOB,
    NIGHTLY_SCHEDULE,
    REFRESH_JOB,
    asset_context,
    build_definitions,
    load_catalog,
    plans_for,
)
from pg_to_bq.orchestration.resources import SecretsManager
from pg_to_bq.planning.catalog import Catalog, Column, ForeignKey, Table, write_snapshot
from pg_to_bq.planning.settings import Settings

CUSTOMERS = Table(
    schema="public", name="customers", comment="People who signed up", estimated_rows=5000,
    columns=(Column("id", "bigint", "int8", nullable=False, comment="Customer id"),
             Column("email", "text", "text", comment="Login e-mail"),
             Column("updated_at", "timestamp with time zone", "timestamptz")),
    primary_key=("id",),
)
ORDERS = Table(
    schema="public", name="orders", comment="One row per checkout", estimated_rows=20000,
    columns=(Column("id", "bigint", "int8", nullable=False),
             Column("customer_id", "bigint", "int8"),
             Column("total", "numeric(14,2)", "numeric", typmod=(14 << 16 | 2) + 4)),
    primary_key=("id",),
    foreign_keys=(ForeignKey("orders_customer_id_fkey", ("customer_id",), "public", "customers",
                             ("id",)),),
)
EVENTS = Table(schema="analytics", name="events", columns=(Column("at", "date", "date"),))
MEMO = Table(schema="public", name="顧客メモ", columns=(Column("メモ", "text", "text"),))


class ConnectionCounter:
    """A TCP listener standing in for PostgreSQL that only counts connection attempts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def counter():
    listener = ConnectionCounter()
    yield listener
    listener.close()


@pytest.fixture
def snapshot_env(tmp_path: Path, settings_env, counter: ConnectionCounter):
    snapshot = tmp_path / "catalog.json"
    write_snapshot(Catalog(tables=(CUSTOMERS, ORDERS, EVENTS, MEMO), database="shop"), snapshot)
    settings_env(f"postgresql://app:pw@127.0.0.1:{counter.port}/shop",
                 CATALOG_PATH=str(snapshot), OWNERS="data-team@acme.io", TAGS="domain=shop",
                 SCHEDULE_TIMEZONE="Asia/Tokyo", SCHEDULE_CRON="0 1 * * *")
    return snapshot


def test_keys_deps_groups_and_kinds(snapshot_env, counter: ConnectionCounter) -> None:
    defs = build_definitions(Settings.from_env())
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "postgres/public/customers", "postgres/public/orders", "postgres/analytics/events",
        "duckdb/raw/customers", "duckdb/raw/orders", "duckdb/raw/analytics__events",
        "postgres/public/顧客メモ", "duckdb/raw/顧客メモ", "postgres/catalog",
    }
    node = graph.get(dg.AssetKey(["duckdb", "raw", "orders"]))
    assert node.parent_keys == {dg.AssetKey(["postgres", "public", "orders"])}
    assert node.group_name == "public"
    # A source and its loaded table share a name, never a group: the sidebar and the asset
    # list tell them apart.
    assert graph.get(dg.AssetKey(["postgres", "public", "orders"])).group_name == \
        "postgres_public"
    assert graph.get(dg.AssetKey(["duckdb", "raw", "analytics__events"])).group_name == "analytics"
    assert node.kinds == {"dlt", "duckdb"}
    assert graph.get(dg.AssetKey(["postgres", "public", "orders"])).kinds == {"postgres"}
    assert graph.get(dg.AssetKey(["postgres", "public", "orders"])).is_external
    assert node.owners == ["data-team@acme.io"]
    assert node.tags["domain"] == "shop"
    assert counter.count == 0


def test_metadata_visible_before_first_materialization(snapshot_env) -> None:
    defs = build_definitions(Settings.from_env())
    node = defs.resolve_asset_graph().get(dg.AssetKey(["duckdb", "raw", "customers"]))
    assert node.description == ("People who signed up\n\n"
                                "PostgreSQL `public.customers` loaded by dlt into `dest.raw.customers`")
    schema = node.metadata["dagster/column_schema"]
    assert [(c.name, c.type) for c in schema.columns] == [
        ("id", "BIGINT"), ("email", "VARCHAR"), ("updated_at", "TIMESTAMP WITH TIME ZONE")]
    assert schema.columns[0].description == "Customer id (PostgreSQL bigint)"
    assert not schema.columns[0].constraints.nullable
    assert node.metadata["dagster/table_name"] == "dest.raw.customers"
    assert "merge" in node.metadata["pg_to_bq/plan"].value
    orders = defs.resolve_asset_graph().get(dg.AssetKey(["duckdb", "raw", "orders"]))
    assert "public.customers(id)" in orders.metadata["pg_to_bq/foreign_keys"].value
    assert orders.metadata["pg_to_bq/estimated_rows"] == 20000
    memo = defs.resolve_asset_graph().get(dg.AssetKey(["duckdb", "raw", _memo_key()]))
    assert memo.metadata["dagster/table_name"] == "dest.raw.顧客メモ"


def test_soft_deletes_show_on_the_table_page(snapshot_env, monkeypatch) -> None:
    """With soft deletes, an analyst sees the extra column in the table's schema and the
    plan says how to read the live rows; a table without a key says it cannot keep them."""
    monkeypatch.setenv("PG_TO_BQ_SOFT_DELETES", "true")
    graph = build_definitions(Settings.from_env()).resolve_asset_graph()
    customers = graph.get(dg.AssetKey(["duckdb", "raw", "customers"]))
    deleted_at = customers.metadata["dagster/column_schema"].columns[-1]
    assert (deleted_at.name, deleted_at.type) == ("_pg_to_bq_deleted_at",
                                                   "TIMESTAMP WITH TIME ZONE")
    assert "WHERE _pg_to_bq_deleted_at IS NULL" in customers.metadata["pg_to_bq/plan"].value
    events = graph.get(dg.AssetKey(["duckdb", "raw", "analytics__events"]))
    assert "_pg_to_bq_deleted_at" not in [c.name for c in
                                          events.metadata["dagster/column_schema"].columns]
    assert "soft deletes need a primary key" in events.metadata["pg_to_bq/plan"].value


def test_small_tables_share_a_step_and_every_table_has_its_checks(snapshot_env) -> None:
    defs = build_definitions(Settings.from_env())
    job = defs.resolve_job_def(NIGHTLY_JOB)
    assert sorted(node.name for node in job.graph.node_defs) == ["discover_tables", "load_tables"]
    [step] = [a for a in defs.resolve_asset_graph().assets_defs
              if a.is_executable and a.op.name == "load_tables"]
    assert step.can_subset
    assert len(step.keys) == 4
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys
              if k.asset_key == dg.AssetKey(["duckdb", "raw", "customers"])}
    assert checks == {"matches_source"}  # rows, values and drift in one evaluation


def test_every_scheduled_table_has_a_freshness_policy_from_its_schedule(
        snapshot_env, tmp_path, monkeypatch) -> None:
    """Freshness is Dagster's (issue 23): a nightly table not loaded by the tick plus the run
    budget shows stale; a table's own window, or none, from the tables file."""
    def policies() -> dict[str, dg.FreshnessPolicy | None]:
        graph = build_definitions(Settings.from_env()).resolve_asset_graph()
        return {k.path[-1]: graph.get(k).freshness_policy for k in graph.get_all_asset_keys()
                if k.path[0] == "duckdb"}

    found = policies()
    # 01:00 Tokyo every day, and the default budget of 3 h: stale after 27 h.
    assert found["orders"] == dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=27))
    assert set(found.values()) == {found["orders"]}
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.orders: {freshness: false}\n"
                      "  public.customers: {freshness: 6h, schedule: false}\n")
    monkeypatch.setenv("PG_TO_BQ_TABLES_FILE", str(tables))
    monkeypatch.setenv("PG_TO_BQ_FRESHNESS", "1h")
    found = policies()
    assert found["orders"] is None
    assert found["customers"] == dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=6))
    assert found["analytics__events"] == \
        dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=25))
    monkeypatch.setenv("PG_TO_BQ_FRESHNESS", "off")
    assert policies()["analytics__events"] is None


def test_large_and_partitioned_tables_have_a_step_of_their_own(snapshot_env, tmp_path,
                                                                monkeypatch) -> None:
    from pg_to_bq.planning.settings import DEFAULT_OWN_STEP_BYTES

    big = Table(schema="public", name="events_big", size_bytes=DEFAULT_OWN_STEP_BYTES,
                columns=(Column("id", "bigint", "int8", nullable=False),), primary_key=("id",))
    write_snapshot(Catalog(tables=(CUSTOMERS, ORDERS, EVENTS, MEMO, big), database="shop"),
                   snapshot_env)
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.orders:\n    partition: {column: id, granularity: "
                      "month, start: 2026-01-01}\n")
    monkeypatch.setenv("PG_TO_BQ_TABLES_FILE", str(tables))
    graph = build_definitions(Settings.from_env()).resolve_asset_graph()
    steps = {a.op.name: sorted(k.path[-1] for k in a.keys)
             for a in graph.assets_defs if a.is_executable}
    assert steps == {"discover_tables": ["catalog"],
                     "load__public__events_big": ["events_big"],
                     "load__public__orders": ["orders"],
                     "load_tables": sorted(["analytics__events", "customers", "顧客メモ"])}


def test_many_small_tables_spread_over_stable_steps() -> None:
    """1,000 small tables: 16 steps of ~62; adding a table moves no other table."""
    from pg_to_bq.planning.groups import group_plans
    from pg_to_bq.planning.tables import plan_table

    plans = [plan_table(Table(schema="public", name=f"t{i:04d}", columns=(
        Column("id", "bigint", "int8"),)), "duckdb") for i in range(1000)]
    groups = group_plans(plans)
    assert len(groups) == 16 and max(len(g.plans) for g in groups) < 100
    assert sorted(p.name for g in groups for p in g.plans) == sorted(p.name for p in plans)
    where = {p.name: g.name for g in groups for p in g.plans}
    extra = plan_table(Table(schema="public", name="new_table", columns=(
        Column("id", "bigint", "int8"),)), "duckdb")
    again = {p.name: g.name for g in group_plans([*plans, extra]) for p in g.plans}
    assert all(again[name] == group for name, group in where.items())


def test_schedule_targets_every_table_by_tag(snapshot_env) -> None:
    defs = build_definitions(Settings.from_env())
    schedule = defs.resolve_schedule_def(NIGHTLY_SCHEDULE)
    assert schedule.cron_schedule == "0 1 * * *"
    assert schedule.execution_timezone == "Asia/Tokyo"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    selected = defs.resolve_job_def(NIGHTLY_JOB).asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in selected} == {
        "duckdb/raw/customers", "duckdb/raw/orders", "duckdb/raw/analytics__events",
        "duckdb/raw/顧客メモ", "postgres/catalog"}
    assert defs.resolve_job_def(REFRESH_JOB) is not None


def test_default_schedule_is_01_00_tokyo(tmp_path: Path, settings_env, counter) -> None:
    snapshot = tmp_path / "catalog.json"
    write_snapshot(Catalog(tables=(CUSTOMERS,)), snapshot)
    settings_env(f"postgresql://app@127.0.0.1:{counter.port}/shop", CATALOG_PATH=str(snapshot))
    schedule = build_definitions(Settings.from_env()).get_schedule_def(NIGHTLY_SCHEDULE)
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 16 * * *", "UTC")


def test_import_of_code_location_does_not_query_postgres(snapshot_env, counter) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", "import pg_to_bq.definitions as d; "
                             "print(len(d.defs.resolve_asset_graph().get_all_asset_keys()))"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "9"  # 4 tables, each twice, and the catalog
    assert counter.count == 0
    assert time.monotonic() - started < 120


def test_unreachable_postgres_without_snapshot_still_loads(tmp_path: Path, settings_env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings_env(f"postgresql://app:hunter2@127.0.0.1:{closed_port}/shop",
                 CATALOG_PATH=str(tmp_path / "missing.json"))
    defs = build_definitions(Settings.from_env())
    # Only the catalog asset: the nightly job discovers the tables and loads them.
    assert [k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()] == \
        ["postgres/catalog"]
    assert defs.resolve_job_def(REFRESH_JOB) is not None
    assert defs.resolve_job_def(NIGHTLY_JOB) is not None


def test_include_pattern_matching_nothing_is_an_error(snapshot_env, monkeypatch) -> None:
    from pg_to_bq.planning.settings import SettingsError

    monkeypatch.setenv("PG_TO_BQ_INCLUDE", "public.custmers")
    with pytest.raises(SettingsError, match=r"PG_TO_BQ_INCLUDE.*'public.custmers'.*match no table"):
        build_definitions(Settings.from_env())


def _memo_key() -> str:
    from pg_to_bq.orchestration.names import key_part

    return key_part("顧客メモ")


def _memo_op() -> str:
    from pg_to_bq.planning.naming import dagster_name

    return dagster_name("load", "public", "顧客メモ")


@pytest.mark.parametrize(("setting", "executor"), [("multiprocess", "multiprocess"),
                                                   ("in_process", "in_process"), ("ecs", "ecs")])
def test_nightly_executor_setting(snapshot_env, monkeypatch, setting: str, executor: str) -> None:
    monkeypatch.setenv("PG_TO_BQ_EXECUTOR", setting)
    job = build_definitions(Settings.from_env()).resolve_job_def(NIGHTLY_JOB)
    assert job.executor_def.name == executor


def test_multiprocess_steps_fork_from_a_server_with_the_code_location_loaded(snapshot_env,
                                                                            monkeypatch) -> None:
    """Dagster's default `spawn` starts every table's step in an empty interpreter (imports,
    then the whole code location again: ~5 CPU-s a table); the fork server loads them once."""
    from pg_to_bq.orchestration.code_location import FORKSERVER_PRELOAD

    monkeypatch.setenv("PG_TO_BQ_EXECUTOR", "multiprocess")
    defs = build_definitions(Settings.from_env())
    for job in (defs.resolve_job_def(NIGHTLY_JOB), defs.resolve_implicit_global_asset_job_def()):
        config = job.executor_def.config_schema.resolve_config({}).value["config"]
        assert config["start_method"] == {
            "forkserver": {"preload_modules": list(FORKSERVER_PRELOAD)}}, config
    assert "pg_to_bq.definitions" in FORKSERVER_PRELOAD


def test_the_fork_servers_modules_start_no_thread_when_imported(
        snapshot_env, counter: ConnectionCounter) -> None:
    """Forking is safe only from a process without threads: importing what the fork server
    preloads (the code location included, from its snapshot) must start none, and connect
    to nothing (the source points at a listener that counts connections)."""
    from pg_to_bq.orchestration.code_location import FORKSERVER_PRELOAD

    code = ("import threading, importlib\n"
            f"for name in {list(FORKSERVER_PRELOAD)!r}:\n"
            "    importlib.import_module(name)\n"
            "print(threading.active_count(), sorted(t.name for t in threading.enumerate()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1 ['MainThread']", out.stdout
    assert counter.count == 0


@pytest.mark.parametrize(("destination", "executor"), [
    ("duckdb:////tmp/x.duckdb", "in_process"), ("bigquery", "multiprocess")])
def test_default_executor_follows_the_destination(snapshot_env, monkeypatch, destination: str,
                                                  executor: str) -> None:
    """DuckDB takes one writer at a time: its loads run in one process (the nightly job and
    the UI's materializations); BigQuery's in parallel processes."""
    monkeypatch.setenv("PG_TO_BQ_DESTINATION", destination)
    monkeypatch.setenv("PG_TO_BQ_BIGQUERY_PROJECT", "p")
    defs = build_definitions(Settings.from_env())
    assert defs.resolve_job_def(NIGHTLY_JOB).executor_def.name == executor
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == executor


def test_large_tables_read_over_two_streams_by_default(snapshot_env) -> None:
    """By default a table of 256 MiB or more on disk is read over two COPY streams."""
    source = build_definitions(Settings.from_env()).resources["source"]
    assert source.streams_for(256 * 1024**2) == 2
    assert source.streams_for(256 * 1024**2 - 1) == 1
    assert source.streams_for(None) == 1


def test_parallel_streams_only_for_large_tables(snapshot_env, monkeypatch) -> None:
    monkeypatch.setenv("PG_TO_BQ_PARALLEL_STREAMS", "4")
    monkeypatch.setenv("PG_TO_BQ_PARALLEL_MIN_BYTES", "1000000")
    source = build_definitions(Settings.from_env()).resources["source"]
    assert source.streams_for(5_000_000) == 4
    assert source.streams_for(10_000) == 1
    assert source.streams_for(None) == 1


@pytest.mark.parametrize("secret_id", [False, True])
def test_code_location_imports_neither_dlt_nor_dagster_aws(snapshot_env, monkeypatch,
                                                           secret_id: bool) -> None:
    """dlt and pyarrow are needed only inside a run, psycopg only to discover the catalog live,
    boto3 only to read a secret, and dagster-aws not at all (its `SecretsManagerResource`
    import costs ~0.9 s); importing them while loading the code location costs ~0.2-0.9 s
    each per load, in the code server and in every step process (issue 3, item 6). The same
    holds with the source given as a Secrets Manager secret id, as in production."""
    if secret_id:
        monkeypatch.delenv("PG_TO_BQ_SOURCE_URL")
        monkeypatch.setenv("PG_TO_BQ_SOURCE_SECRET", "prod/pg")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; import pg_to_bq.definitions as d; "
         "d.defs.get_repository_def(); print('secrets' in d.defs.resources, sorted(m for m in "
         "('dlt', 'dagster_aws', 'boto3', 'pg_to_bq.load.group', 'pyarrow', 'psycopg') "
         "if m in sys.modules))"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{secret_id} []"


def test_secrets_resource_only_with_a_secret_id(snapshot_env, monkeypatch) -> None:
    defs = build_definitions(Settings.from_env())
    assert "secrets" not in defs.resources
    assert defs.resources["source"].secrets is None
    assert defs.resources["destination"].secrets is None

    monkeypatch.delenv("PG_TO_BQ_SOURCE_URL")
    monkeypatch.setenv("PG_TO_BQ_SOURCE_SECRET", "prod/pg")
    monkeypatch.setenv("PG_TO_BQ_AWS_REGION", "eu-west-1")
    defs = build_definitions(Settings.from_env())
    secrets = defs.resources["secrets"]
    assert isinstance(secrets, SecretsManager)
    assert secrets.region_name == "eu-west-1"
    assert defs.resources["source"].secrets is secrets
    assert defs.resources["destination"].secrets is secrets
    assert defs.resources["source"].secret_id == "prod/pg"
    assert {"secrets", "source", "destination"} <= set(
        defs.get_repository_def().get_top_level_resources())


def test_every_step_op_keeps_its_own_compute_function(snapshot_env, monkeypatch) -> None:
    """Step ops are built directly (not by `@multi_asset`): each has its own compute
    function, and they share one config schema object."""
    from pg_to_bq.orchestration.names import LOAD_CONFIG_SCHEMA

    monkeypatch.setenv("PG_TO_BQ_STEP_TABLES", "1")
    graph = build_definitions(Settings.from_env()).resolve_asset_graph()
    ops = [a.op for a in graph.assets_defs if a.is_executable and a.op.name != "discover_tables"]
    functions = {op.compute_fn for op in ops}
    assert len(functions) == len(ops) > 1
    assert all(list(inspect.signature(f).parameters) == ["context", "inputs"] for f in functions)
    assert all(op.config_schema.as_field() is LOAD_CONFIG_SCHEMA for op in ops)
    assert all(op.config_schema.as_field().config_type.fields.keys() == {"full_refresh", "apply_deletes"}
               for op in ops)


@pytest.mark.parametrize("step_tables", ["50", "1"])
def test_group_asset_is_what_multi_asset_would_build(snapshot_env, tmp_path, monkeypatch,
                                                     step_tables: str) -> None:
    """`build_group_asset` constructs what `@multi_asset(specs=..., check_specs=...,
    can_subset=True)` builds from the same parts: same op name, input and output names and
    types, keys, checks, spec attributes, partitions, tags, retry policy, pool and resource
    keys. (The Japanese table is left out: the decorator cannot name its input and output,
    which `build_group_asset` names with an ASCII form.)"""
    from pg_to_bq.orchestration.names import LOAD_CONFIG_SCHEMA
    from pg_to_bq.orchestration.specs import check_specs
    from pg_to_bq.orchestration.step_assets import build_group_asset
    from pg_to_bq.planning.groups import group_plans

    write_snapshot(Catalog(tables=(CUSTOMERS, ORDERS, EVENTS), database="shop"), snapshot_env)
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  analytics.events:\n    primary_key: [at]\n"
                      "    partition: {column: at, granularity: month, "
                      "start: 2026-01-01}\n")
    monkeypatch.setenv("PG_TO_BQ_TABLES_FILE", str(tables))
    monkeypatch.setenv("PG_TO_BQ_STEP_TABLES", step_tables)
    settings = Settings.from_env()
    ctx = asset_context(settings)
    plans = [p for p in plans_for(settings, load_catalog(settings).catalog) if p.columns]
    assert any(p.partition is not None for p in plans)
    for group in group_plans(plans, settings.step_tables):
        built = build_group_asset(group, ctx)
        specs = list(built.specs)
        partitions = {spec.partitions_def for spec in specs}
        assert len(partitions) == 1

        @dg.multi_asset(name=group.name,
                        specs=[s.replace_attributes(partitions_def=None) for s in specs],
                        check_specs=[c for p, s in zip(group.plans, specs, strict=True)
                                     for c in check_specs(p, s.key)],
                        partitions_def=next(iter(partitions)), pool=ctx.pool,
                        op_tags=built.op.tags, can_subset=True,
                        retry_policy=built.op.retry_policy,
                        config_schema=dict(LOAD_CONFIG_SCHEMA.config_type.fields),
                        required_resource_keys={"source", "destination"})
        def reference(context):
            raise NotImplementedError

        for attribute in ("keys", "check_keys", "keys_by_input_name", "keys_by_output_name",
                          "check_specs_by_output_name", "partitions_def", "specs",
                          "required_resource_keys", "can_subset"):
            ours, theirs = getattr(built, attribute), getattr(reference, attribute)
            if attribute == "specs":
                ours, theirs = list(ours), list(theirs)
            assert ours == theirs, attribute
        ops = built.op, reference.op
        assert len({op.name for op in ops}) == 1
        assert len({op.pool for op in ops}) == 1
        assert ops[0].tags == ops[1].tags
        assert ops[0].retry_policy == ops[1].retry_policy
        for a, b in ((ops[0].input_defs, ops[1].input_defs), (ops[0].output_defs, ops[1].output_defs)):
            assert [(d.name, d.dagster_type.key) for d in a] == [(d.name, d.dagster_type.key) for d in b]
        assert [(o.is_required, o.description, o.metadata) for o in ops[0].output_defs] == \
            [(o.is_required, o.description, o.metadata) for o in ops[1].output_defs]


def test_names_dagster_refuses_get_an_ascii_form_and_keep_their_key(snapshot_env) -> None:
    """A Japanese table keeps its name in its asset keys; its op input and output names (which
    Dagster restricts to ASCII) get an ASCII form with a hash. A name with a space or quote
    gets an ASCII key part, and its real name leads the description."""
    from pg_to_bq.orchestration.step_assets import build_group_asset
    from pg_to_bq.planning.groups import LoadGroup

    odd = Table(schema="public", name='my "odd" table', columns=(Column("id", "bigint", "int8"),))
    write_snapshot(Catalog(tables=(MEMO, odd), database="shop"), snapshot_env)
    settings = Settings.from_env()
    plans = plans_for(settings, load_catalog(settings).catalog)
    built = build_group_asset(LoadGroup("g", "p", tuple(plans)), asset_context(settings))
    keys = {k.path[-1] for k in built.keys}
    assert "顧客メモ" in keys
    [odd_key] = [k for k in built.keys if k.path[-1] != "顧客メモ"]
    assert odd_key.path[-1].isascii() and " " not in odd_key.path[-1]
    assert built.specs_by_key[odd_key].description.startswith('**public.my "odd" table**')
    assert all(name.isascii() for name in built.keys_by_output_name)
    assert all(name.isascii() for name in built.keys_by_input_name)


def test_snapshot_json_is_the_dataclasses_form_and_interns_columns() -> None:
    import dataclasses
    import json

    copy = Table(schema="public", name="orders_copy", columns=ORDERS.columns)
    catalog = Catalog(tables=(CUSTOMERS, ORDERS, copy, EVENTS, MEMO), database="shop")
    expected = {"version": 1, "database": "shop", "discovered_at": catalog.discovered_at,
                "tables": [json.loads(json.dumps(dataclasses.asdict(t))) for t in catalog.tables]}
    text = catalog.to_json()
    assert json.loads(text) == expected
    # one table a line, names readable (not \u-escaped)
    lines = text.splitlines()
    assert len(lines) == 2 + len(catalog.tables)
    assert [json.loads(line.rstrip(","))["name"] for line in lines[1:-1]] == \
        [t.name for t in catalog.tables]
    assert "顧客メモ" in text
    again = Catalog.from_json(text)
    assert again == catalog
    # equal columns of different tables are one object after reading
    assert again.tables[1].columns == again.tables[2].columns
    assert all(a is b for a, b in zip(again.tables[1].columns, again.tables[2].columns, strict=True))
    assert again.tables[0].columns[0] is not again.tables[1].columns[0]  # different comments
