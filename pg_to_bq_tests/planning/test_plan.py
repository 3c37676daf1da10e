"""Tier 1: plans, names, overrides and secrets are pure functions of their inputs."""

import dataclasses
from datetime import timedelta

import pytest

from pg_to_bq.planning.catalog import Catalog, Column, Table, with_former_names
from pg_to_bq.planning.naming import dagster_name, destination_name, unique_names
from pg_to_bq.planning.overrides import OverridesError, parse_overrides
from pg_to_bq.planning.settings import Settings, SettingsError
from pg_to_bq.planning.tables import (
    build_plans,
    detect_cursor,
    plan_table,
    plans_for,
    replan,
    unknown_tables,
    unused_settings,
)
from pg_to_bq.planning.types import numeric_typmod


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
        ({"tables": {"public.orders": {"soft_deletes": "yes"}}},
         "tables.yaml: table public.orders: soft_deletes: 'yes' must be true or false"),
        ({"defaults": {"soft_deletes": 1}}, "tables.yaml: defaults.soft_deletes: 1 must be"),
    ],
)
def test_override_errors_name_file_table_and_field(spec: dict, message: str) -> None:
    with pytest.raises(OverridesError, match=message):
        parse_overrides(spec, "tables.yaml")


def test_an_override_that_does_not_fit_fails_that_table_alone() -> None:
    """A cursor column that no longer exists, merge without a key: that table's plan has
    the error (its load fails with it); the other tables plan as usual."""
    overrides = parse_overrides({"tables": {"public.orders": {"cursor": "changed"}}}, "t.yaml")
    orders, log = build_plans(Catalog(tables=(ORDERS, LOG)), "duckdb", overrides)
    assert orders.error is not None and not orders.loadable
    assert "t.yaml: table public.orders: cursor column 'changed' does not exist" in orders.error
    assert log.error is None and log.loadable
    overrides = parse_overrides({"tables": {"public.log": {"disposition": "merge"}}}, "t.yaml")
    [log] = build_plans(Catalog(tables=(LOG,)), "duckdb", overrides)
    assert "needs a primary key" in log.error


def test_soft_deletes_the_setting_the_file_default_and_a_table() -> None:
    """`PG_TO_BQ_SOFT_DELETES` is the default; the tables file's default overrides it and
    a table's own setting both; a table without a primary key cannot keep deleted rows,
    and its plan says so."""
    from pg_to_bq.planning.settings import Settings

    env = {"PG_TO_BQ_SOURCE_URL": "postgresql://x@h/d", "PG_TO_BQ_SOFT_DELETES": "true"}
    overrides = Settings.from_env(env).overrides()
    orders, log = build_plans(Catalog(tables=(ORDERS, LOG)), "duckdb", overrides)
    assert orders.soft_deletes and not log.soft_deletes
    assert any("soft deletes need a primary key" in note for note in log.notes)
    assert not Settings.from_env({**env, "PG_TO_BQ_SOFT_DELETES": "false"}).soft_deletes
    overrides = parse_overrides({"defaults": {"soft_deletes": False},
                                 "tables": {"public.orders": {"soft_deletes": True}}}, "t.yaml")
    orders, log = build_plans(Catalog(tables=(ORDERS, LOG)), "duckdb", overrides)
    assert orders.soft_deletes and not log.soft_deletes and not log.notes
    overrides = parse_overrides({"tables": {"public.orders": {"soft_deletes": False}}}, "t.yaml")
    [orders] = build_plans(Catalog(tables=(ORDERS,)), "duckdb", overrides)
    assert not orders.soft_deletes


def test_an_inheritance_parent_is_replaced_unless_the_file_merges_it() -> None:
    """A read of a table others INHERIT from returns their rows, whose keys PostgreSQL
    does not keep unique across the tables: merged by key, two rows sharing one would
    become one. Replaced, said; `disposition: merge` in the file is the user's word that
    the key is unique across them; soft deletes (a merge by key) are off, said."""
    parent = dataclasses.replace(ORDERS, inherited_by=("public.orders_2023", "shop.archive"))
    plan = plan_table(parent, "duckdb")
    assert plan.disposition == "replace" and plan.cursor is None
    assert plan.primary_key == ("id",)
    [note] = plan.notes
    assert note.startswith("an inheritance parent: a read of it returns the rows of the tables "
                           "that inherit from it (public.orders_2023, shop.archive) too, and "
                           "PostgreSQL keeps its key (id) unique within each table")
    assert "set disposition: merge for public.orders in the tables file " \
           "(PG_TO_BQ_TABLES_FILE) if the key is unique across them" in note
    overrides = parse_overrides({"tables": {"public.orders": {"disposition": "merge"}}},
                                "t.yaml")
    merged = plan_table(parent, "duckdb", overrides.for_table("public.orders"), overrides)
    assert merged.disposition == "merge" and merged.incremental and not merged.notes
    soft = parse_overrides({"defaults": {"soft_deletes": True}}, "t.yaml")
    plan = plan_table(parent, "duckdb", overrides=soft)
    assert not plan.soft_deletes
    assert any(n.startswith("soft deletes need a key unique across the tables that inherit")
               for n in plan.notes), plan.notes
    assert "t.yaml" in plan.notes[0]
    # Without a key nothing is merged: no note. A child is planned as any table.
    assert plan_table(dataclasses.replace(LOG, inherited_by=("public.log_1",)),
                      "duckdb").notes == ()
    assert plan_table(ORDERS, "duckdb").disposition == "merge"


def test_tables_file_naming_a_missing_table_plans_the_others_and_says_so(tmp_path) -> None:
    """A name the catalog lacks (renamed, dropped, not discovered yet, a typo) stops no
    other table: before, it raised, and no table loaded."""
    overrides = parse_overrides({"tables": {"public.nope": {}}}, "t.yaml")
    [plan] = build_plans(Catalog(tables=(ORDERS,)), "duckdb", overrides)
    assert plan.name == "public.orders" and plan.error is None
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables: {public.nope: {}, public.log: {}, public.orders: {}}\n")
    settings = Settings.from_env({"PG_TO_BQ_SOURCE_URL": "postgresql://x@h/d",
                                  "PG_TO_BQ_TABLES_FILE": str(tables),
                                  "PG_TO_BQ_INCLUDE": "public.orders,public.ordres"})
    catalog = Catalog(tables=(ORDERS, LOG))
    assert [p.name for p in plans_for(settings, catalog)] == ["public.orders"]
    assert unused_settings(settings, catalog) == [
        "PG_TO_BQ_INCLUDE pattern 'public.ordres' matches no table: it selects nothing "
        "(check the name)",
        f"{tables}: table public.nope is not in the catalog (renamed or dropped in "
        "PostgreSQL, or check the name): its entry is not used",
        f"{tables}: table public.log is not selected (PG_TO_BQ_INCLUDE / PG_TO_BQ_EXCLUDE): "
        "its entry is not used",
    ]
    assert unknown_tables(settings, catalog, ["log", "fresh"]) == ["fresh", "public.nope"]
    # A table renamed since an earlier discovery (the same oid) is named by its new name.
    before = Catalog(tables=(dataclasses.replace(ORDERS, name="nope", oid=7),))
    renamed = with_former_names(
        Catalog(tables=(dataclasses.replace(ORDERS, name="orders", oid=7), LOG)), before)
    assert f"{tables}: table public.nope was renamed to public.orders in PostgreSQL, which has " \
           "its own: its entry is not used" in unused_settings(settings, renamed)
    # No pattern matching anything selects nothing at all: an error, before any load.
    only_typo = Settings.from_env({"PG_TO_BQ_SOURCE_URL": "postgresql://x@h/d",
                                   "PG_TO_BQ_INCLUDE": "public.ordres"})
    with pytest.raises(SettingsError, match=r"PG_TO_BQ_INCLUDE.*'public.ordres'.*match no table"):
        plans_for(only_typo, catalog)
    assert unused_settings(only_typo, Catalog(tables=())) == []


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


def test_column_collision_is_resolved_by_a_suffix_and_reported() -> None:
    """`a-b` and `a_b` both become `a_b`: the unchanged name keeps it, the other gets the
    first 6 hex digits of the SHA-1 of its PostgreSQL name."""
    import hashlib

    table = Table(schema="public", name="t", columns=(col("a-b"), col("a_b")))
    [plan] = build_plans(Catalog(tables=(table,)), "duckdb")
    suffix = hashlib.sha1(b"a-b").hexdigest()[:6]
    assert [(c.source.name, c.name) for c in plan.columns] == [("a-b", f"a_b_{suffix}"),
                                                               ("a_b", "a_b")]
    [renaming] = plan.renamings
    assert renaming.source == "a-b" and renaming.target == f"a_b_{suffix}"
    assert "`a_b` is loaded as `a_b`" in renaming.reason


def test_case_only_twins_get_distinct_names_whatever_their_order() -> None:
    """BigQuery and DuckDB compare names without case: `Name` and `name` cannot both be
    `Name`. The lower-case one keeps its name, in either column order."""
    for columns in ((col("Name"), col("name")), (col("name"), col("Name"))):
        table = Table(schema="public", name="t", columns=columns)
        [plan] = build_plans(Catalog(tables=(table,)), "bigquery")
        names = {c.source.name: c.name for c in plan.columns}
        assert names["name"] == "name"
        assert names["Name"].startswith("Name_") and len(names["Name"]) == len("Name_") + 6
        assert plan.error is None


def test_table_collision_across_schemas_is_resolved() -> None:
    a = Table(schema="sales", name="orders", columns=(col("id"),))
    b = Table(schema="public", name="sales__orders", columns=(col("id"),))
    plans = {p.name: p for p in build_plans(Catalog(tables=(a, b)), "duckdb")}
    assert plans["public.sales__orders"].destination_table == "sales__orders"
    assert plans["sales.orders"].destination_table.startswith("sales__orders_")
    assert plans["sales.orders"].table_renaming is not None
    # Loading a part of the catalog gives the same names: plans are built for all of it.
    again = {p.name: p for p in build_plans(Catalog(tables=(b, a)), "duckdb")}
    assert {n: p.destination_table for n, p in again.items()} == \
        {n: p.destination_table for n, p in plans.items()}


def test_unique_names_rule_is_deterministic_and_cut_to_the_limit() -> None:
    names, renamings = unique_names(["x" * 70, "X" * 70, "ok"], max_length=63)
    assert names["ok"] == "ok"
    assert len(names["x" * 70]) == 63 and len(names["X" * 70]) == 63
    assert names["x" * 70].casefold() != names["X" * 70].casefold()
    assert unique_names(["X" * 70, "x" * 70, "ok"], max_length=63)[0] == names
    assert {r.source for r in renamings} == {"x" * 70, "X" * 70}


@pytest.mark.parametrize(("name", "type_name", "excluded"), [
    ("password_hash", "text", True), ("api_key", "varchar", True), ("apiKey", "text", True),
    ("private_key", "bytea", True), ("access_token", "text", True), ("token", "jsonb", True),
    ("client_secret", "text", True), ("passwd", "text", True),
    # numbers, dates and booleans are never excluded by name
    ("token_count", "int4", False), ("used_token", "int8", False), ("secret", "bool", False),
    ("password_changed_at", "timestamptz", False),
    # whole words only
    ("passenger_count", "text", False), ("compass", "text", False),
    ("bypass_rule", "text", False), ("secretary_id", "text", False),
    ("tokenizer", "text", False),
    # a credential's name, type or id describes it without holding it
    ("api_key_name", "text", False), ("token_type", "text", False), ("secret_id", "text", False),
    ("access_token_hash", "text", True),
])
def test_sensitive_columns_match_whole_words_of_text_types(name: str, type_name: str,
                                                           excluded: bool) -> None:
    table = Table(schema="public", name="t", columns=(col("id"), col(name, type_name)))
    plan = plan_table(table, "duckdb")
    assert (name in plan.excluded) is excluded
    if excluded:
        [left_out] = plan.left_out
        assert "sensitive-column rule" in left_out.setting
        assert f"{{{name}: {{exclude: false}}}}" in left_out.setting


def test_an_excluded_column_is_loaded_with_exclude_false() -> None:
    overrides = parse_overrides(
        {"tables": {"public.orders": {"columns": {"api_token": {"exclude": False}}}}}, "t.yaml")
    [plan] = build_plans(Catalog(tables=(ORDERS,)), "duckdb", overrides)
    assert plan.excluded == () and "api_token" in [c.name for c in plan.columns]


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
    [plan] = build_plans(Catalog(tables=(ORDERS,)), "bigquery", overrides)
    assert "t.yaml: table public.orders: bigquery partition/cluster column 'api_token' is " \
           "not loaded" in plan.error


def test_a_renamed_table_keeps_its_former_names_from_one_discovery_to_the_next() -> None:
    first = Catalog(tables=(dataclasses.replace(ORDERS, oid=7), dataclasses.replace(LOG, oid=8)))
    second = with_former_names(Catalog(tables=(
        dataclasses.replace(ORDERS, name="orders_v2", oid=7), dataclasses.replace(LOG, oid=8))),
        first)
    assert [t.former_names for t in second.tables] == [("public.orders",), ()]
    # A discovery that knows no former names (PostgreSQL does not keep them) keeps them.
    third = with_former_names(Catalog(tables=(
        dataclasses.replace(ORDERS, name="orders_v3", oid=7),)), second)
    assert third.tables[0].former_names == ("public.orders", "public.orders_v2")
    # Renamed back: its own name is not a former one.
    back = with_former_names(Catalog(tables=(dataclasses.replace(ORDERS, oid=7),)), third)
    assert back.tables[0].former_names == ("public.orders_v2", "public.orders_v3")
    assert Catalog.from_json(third.to_json()).tables == third.tables
    assert with_former_names(first, None) is first


def test_an_entry_left_under_a_former_name_that_hashes_or_excludes_holds_the_table() -> None:
    """Loading the renamed table without that entry would put plain values in the
    destination, where they cannot be taken back: it waits for the entry, alone."""
    renamed = dataclasses.replace(ORDERS, name="orders_v2", former_names=("public.orders",))
    for column in ({"hash": True}, {"exclude": True}):
        overrides = parse_overrides({"tables": {"public.orders": {"columns": {
            "total": column}}}}, "t.yaml")
        [plan] = build_plans(Catalog(tables=(renamed,)), "duckdb", overrides)
        assert plan.error == ("t.yaml: table public.orders_v2 was public.orders (renamed in "
                              "PostgreSQL), whose entry excludes or hashes columns: not loaded "
                              "until the entry is moved to public.orders_v2 (or "
                              "public.orders_v2 has an entry of its own)")
        # Live columns planned again in a run keep the hold.
        live = dataclasses.replace(renamed, former_names=(), estimated_rows=5)
        assert replan(plan, live, "duckdb", overrides).error == plan.error
    moved = parse_overrides({"tables": {"public.orders_v2": {"columns": {
        "total": {"hash": True}}}}}, "t.yaml")
    [plan] = build_plans(Catalog(tables=(renamed,)), "duckdb", moved)
    assert plan.error is None and plan.hashed == ("total",)
    harmless = parse_overrides({"tables": {"public.orders": {"lookback": "1h"}}}, "t.yaml")
    [plan] = build_plans(Catalog(tables=(renamed,)), "duckdb", harmless)
    assert plan.error is None
