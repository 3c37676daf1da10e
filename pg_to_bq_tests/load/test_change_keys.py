"""Tier 1: change capture's pure parts (`pg_to_bq.load.changes`): which rows a step reads
again, when a table is read whole instead, and the spool's batches. The SQL they build runs
against PostgreSQL in `test_change_capture`."""

from __future__ import annotations

from pg_to_bq.load.changes import (
    MAX_KEYS,
    Pending,
    absent_keys_sql,
    key_condition,
    read_whole,
)
from pg_to_bq.load.spool_rows import spool_batches
from pg_to_bq.planning.catalog import Column, Table
from pg_to_bq.planning.tables import plan_table
from pg_to_bq.postgres.cdc.keys import KeyChange


def plan(key_types: dict[str, str]):
    columns = tuple(Column(name, type_, type_.split("(")[0]) for name, type_ in
                    {**key_types, "v": "text"}.items())
    return plan_table(Table("public", "t", columns=columns, primary_key=tuple(key_types)),
                      "duckdb")


def test_integer_keys_become_ranges_and_one_array() -> None:
    condition = key_condition(plan({"id": "bigint"}), [(str(k),) for k in
                                                       (1, 2, 3, 4, 10, 12, 13, 40)])
    assert condition == '"id" BETWEEN 1 AND 4 OR "id" = ANY(\'{10,12,13,40}\'::bigint[])'


def test_other_keys_are_a_list_of_typed_values() -> None:
    condition = key_condition(plan({"a": "integer", "b": "uuid"}),
                              [("1", "c4ca4238-a0b9-2382-0dcc-509a6f75849b"), ("2", "it's")])
    assert condition.startswith('("a", "b") IN (VALUES (')
    assert "'it''s'" in condition and "::uuid" in condition


def test_a_key_with_a_null_part_selects_nothing_and_no_key_selects_nothing() -> None:
    assert key_condition(plan({"id": "bigint"}), [(None,)]) == "false"
    assert key_condition(plan({"id": "bigint"}), []) == "false"


def test_absent_keys_are_asked_of_the_table() -> None:
    sql = absent_keys_sql(plan({"id": "integer"}), [("5",), ("6",)])
    assert "NOT EXISTS" in sql and '"public"."t"' in sql


def test_when_a_table_is_read_whole() -> None:
    assert read_whole(Pending(3, 10, truncated=True), 100) == \
        "truncated in PostgreSQL: read whole"
    assert "read whole" in read_whole(Pending(1, 10, False, many=True), 10**9)
    assert read_whole(Pending(MAX_KEYS + 1, 10, False), 10**9) is not None
    # A fifth of a large table's rows; small tables up to 1,000 keys by key.
    assert read_whole(Pending(30_000, 10, False), 100_000) is not None
    assert read_whole(Pending(900, 10, False), 1_000) is None
    assert read_whole(Pending(10, 10, False), None) is None


def test_the_spool_is_written_a_batch_at_a_time() -> None:
    changes = (KeyChange("public", "t", n, "update", (str(n),)) for n in range(25))
    batches = list(spool_batches(changes, batch_rows=10))
    assert [b.num_rows for b in batches] == [10, 10, 5]
    assert batches[0].column("key").to_pylist()[:2] == ['["0"]', '["1"]']
