"""Tier 1: plans, names, overrides and secrets are pure functions of their inputs."""

from datetime import timedelta

import pytest

from pg_to_bq.catalog import Catalog, Column, Table
from pg_to_bq.naming import NameCollisionError, dagster_name, destination_name
from pg_to_bq.overrides import OverridesError, parse_overrides
from pg_to_bq.plan import PlanError, build_plans, detect_cursor, plan_table
from pg_to_bq.typemap import numeric_typmod


def col(name: str, type_name: str = "int4", type_: str | None = None, **kw) -> Column:
    return Column(name=name, type=type_ or type_name, type_name=type_name, **kw)


ORDERS = Table(
    schema="public", name="orders",
    columns=(col("id", "int8"), col("total", "numeric", "numeric(12,2)", typmod=(12 << 16 | 2) + 4),
             col("updated_at", "timestamptz", "timestamp with time zone"),
             col("api_token", "text")),
    primary_key=("id",),
)
LOG = Table(schema="public", name="log", columns=(col("at", "timestamptz"), col("msg", "text")))


def test_table_with_key_and_cursor_merges_incrementally() -> None:
    plan = plan_table(ORDERS, "duckdb")
    assert plan.disposition == "merge" and plan.cursor == "updated_at" and plan.incremental
    assert plan.primary_key == ("id",)


def test_table_without_key_is_replaced() -> None:
    plan = plan_table(LOG, "duckdb")
    assert plan.disposition == "replace" and plan.cursor is None


def test_sensitive_columns_are_excluded_by_default_and_rule_can_be_off() -> None:
    plan = plan_table(ORDERS, "duckdb")
    assert plan.excluded == ("api_token",)
    assert "api_token" not in [c.name for c in plan.columns]
    overrides = parse_overrides({"defaults": {"sensitive_columns": False}}, "t.yaml")
    plan = plan_table(ORDERS, "duckdb", overrides=overrides)
    assert plan.excluded == ()


def test_overrides_apply() -> None:
    overrides = parse_overrides(
        {"tables": {"public.orders": {"disposition": "replace", "schedule": False,
                                      "columns": {"total": {"cast": "text"}}}}},
        "tables.yaml")
    [plan] = build_plans(Catalog(tables=(ORDERS,)), "duckdb", overrides)
    assert plan.disposition == "replace" and not plan.scheduled
    assert plan.column_for("total").logical == "text"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"tables": {"public.orders": {"disposition": "upsert"}}},
         "tables.yaml: table public.orders: disposition 'upsert'"),
        ({"tables": {"public.orders": {"colums": {}}}},
         "tables.yaml: table public.orders: unknown field"),
        ({"tables": {"public.orders": {"columns": {"total": {"cast": "money"}}}}},
         "tables.yaml: table public.orders: column total: cast 'money'"),
        ({"tables": {"orders": {}}}, "write the table as schema.table"),
        ({"tables": {"public.orders": {"lookback": "soon"}}}, "lookback: 'soon' is not a duration"),
        ({"tables": {"public.orders": {"bigquery": {"partition_by": "x"}}}},
         "tables.yaml: table public.orders: bigquery takes partition"),
    ],
)
def test_override_errors_name_file_table_and_field(spec: dict, message: str) -> None:
    with pytest.raises(OverridesError, match=message):
        parse_overrides(spec, "tables.yaml")


def test_override_of_missing_column_or_table_is_an_error() -> None:
    overrides = parse_overrides({"tables": {"public.orders": {"cursor": "changed"}}}, "t.yaml")
    with pytest.raises(PlanError, match="t.yaml: table public.orders: cursor column 'changed'"):
        build_plans(Catalog(tables=(ORDERS,)), "duckdb", overrides)
    overrides = parse_overrides({"tables": {"public.nope": {}}}, "t.yaml")
    with pytest.raises(PlanError, match=r"public.nope"):
        build_plans(Catalog(tables=(ORDERS,)), "duckdb", overrides)
    overrides = parse_overrides({"tables": {"public.log": {"disposition": "merge"}}}, "t.yaml")
    with pytest.raises(PlanError, match="needs a primary key"):
        build_plans(Catalog(tables=(LOG,)), "duckdb", overrides)


def test_lookback_default_and_override() -> None:
    overrides = parse_overrides({"defaults": {"lookback": "1h"},
                                 "tables": {"public.orders": {"lookback": "2d"}}}, "t.yaml")
    assert plan_table(ORDERS, "duckdb", overrides.for_table("public.orders"), overrides).lookback \
        == timedelta(days=2)
    assert plan_table(LOG, "duckdb", overrides=overrides).lookback == timedelta(hours=1)


def test_destination_names_keep_postgres_names() -> None:
    assert destination_name("顧客メモ") == "顧客メモ"
    assert destination_name("CustomerID") == "CustomerID"
    assert destination_name("order total ($)") == "order_total____"
    assert destination_name("1st") == "_1st"
    assert destination_name("_dlt_id") == "src_dlt_id"
    assert len(destination_name("x" * 400)) == 300


def test_column_collision_names_both_sources() -> None:
    table = Table(schema="public", name="t", columns=(col("a-b"), col("a_b")))
    with pytest.raises(NameCollisionError, match="'a-b' and 'a_b' would both be loaded as 'a_b'"):
        build_plans(Catalog(tables=(table,)), "duckdb")


def test_case_insensitive_collision_is_detected() -> None:
    table = Table(schema="public", name="t", columns=(col("Name"), col("name")))
    with pytest.raises(NameCollisionError, match="'Name' and 'name'"):
        build_plans(Catalog(tables=(table,)), "bigquery")


def test_table_collision_across_schemas() -> None:
    a = Table(schema="sales", name="orders", columns=(col("id"),))
    b = Table(schema="public", name="sales__orders", columns=(col("id"),))
    with pytest.raises(NameCollisionError, match="sales.orders.*public.sales__orders|"
                                                 "public.sales__orders.*sales.orders"):
        build_plans(Catalog(tables=(a, b)), "duckdb")


def test_dagster_names_are_ascii_and_distinct() -> None:
    first, second = dagster_name("load", "public", "顧客メモ"), dagster_name("load", "public", "注文")
    assert first != second
    assert first.isascii() and second.isascii()
    assert dagster_name("load", "public", "orders") == "load__public__orders"


def test_cursor_detection_needs_a_time_or_integer_type() -> None:
    assert detect_cursor(ORDERS) == "updated_at"
    assert detect_cursor(Table(schema="s", name="t", columns=(col("updated_at", "text"),))) is None


def test_numeric_typmod() -> None:
    assert numeric_typmod(-1) == (None, None)
    assert numeric_typmod((12 << 16 | 2) + 4) == (12, 2)
    assert numeric_typmod((38 << 16 | 0) + 4) == (38, 0)


def test_include_exclude_and_unmatched_patterns() -> None:
    catalog = Catalog(tables=(ORDERS, LOG, Table(schema="sales", name="orders")))
    assert [t.qualified_name for t in catalog.select(["public.*"], ["*.log"]).tables] \
        == ["public.orders"]
    assert [t.qualified_name for t in catalog.select(["orders"]).tables] \
        == ["public.orders", "sales.orders"]
    assert catalog.unmatched_patterns(["public.*", "nope.*"]) == ["nope.*"]
    with pytest.raises(KeyError, match="ambiguous"):
        catalog.find("orders")
    assert catalog.find("sales.orders").schema == "sales"


def test_snapshot_round_trip() -> None:
    catalog = Catalog(tables=(ORDERS, LOG), database="shop")
    again = Catalog.from_json(catalog.to_json())
    assert again.tables == catalog.tables and again.database == "shop"


def test_bigquery_partition_and_cluster_columns_must_be_loaded() -> None:
    overrides = parse_overrides(
        {"tables": {"public.orders": {"bigquery": {"partition": "updated_at", "cluster": "id"}}}},
        "t.yaml")
    [plan] = build_plans(Catalog(tables=(ORDERS,)), "bigquery", overrides)
    assert (plan.bigquery_partition, plan.bigquery_cluster) == ("updated_at", ("id",))
    overrides = parse_overrides(
        {"tables": {"public.orders": {"bigquery": {"cluster": ["api_token"]}}}}, "t.yaml")
    with pytest.raises(PlanError, match="t.yaml: table public.orders: bigquery partition/cluster "
                                        "column 'api_token' is not loaded"):
        build_plans(Catalog(tables=(ORDERS,)), "bigquery", overrides)
