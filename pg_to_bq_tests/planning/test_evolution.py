"""Pure logic: how a schema change is classified (`pg_to_bq.planning.evolution.diff`),
including for a destination that reports types without their parameters."""

from __future__ import annotations

import pytest

from pg_to_bq.planning.evolution import StoredColumn, diff


def stored(**types: str) -> dict[str, StoredColumn]:
    return {name: StoredColumn(name, type_, True) for name, type_ in types.items()}


def test_a_reported_decimal_widening_is_seen() -> None:
    evolution = diff({"w": "NUMERIC(14,4)"}, stored(w="NUMERIC(10, 2)"), "bigquery")
    assert [(c.column, c.old_type, c.new_type) for c in evolution.widened] == \
        [("w", "NUMERIC(10,2)", "NUMERIC(14,4)")]
    assert not evolution.retyped


def test_a_type_reported_without_parameters_is_read_from_what_the_last_load_created() -> None:
    """The BigQuery emulator says NUMERIC for NUMERIC(10,2) and keeps scale 2."""
    evolution = diff({"w": "NUMERIC(14,4)"}, stored(w="NUMERIC"), "bigquery",
                     created={"w": "NUMERIC(10,2)"})
    assert [(c.column, c.old_type, c.new_type) for c in evolution.widened] == \
        [("w", "NUMERIC(10,2)", "NUMERIC(14,4)")]
    narrowed = diff({"w": "NUMERIC(10,2)"}, stored(w="NUMERIC"), "bigquery",
                    created={"w": "NUMERIC(14,4)"})
    assert [(c.column, c.old_type, c.new_type) for c in narrowed.retyped] == \
        [("w", "NUMERIC(14,4)", "NUMERIC(10,2)")]


@pytest.mark.parametrize("created", [None, {}, {"w": "NUMERIC(14,4)"}, {"x": "NUMERIC(10,2)"},
                                     {"w": "BIGNUMERIC(39,2)"}])
def test_nothing_to_do_when_nothing_says_the_type_changed(created) -> None:
    """Without a remembered type of the same kind, an unparameterized report cannot show a
    change of parameters (nothing is done, as before); the same type remembered is no
    change."""
    evolution = diff({"w": "NUMERIC(14,4)"}, stored(w="NUMERIC"), "bigquery", created=created)
    assert not evolution.changed


def test_a_reported_type_with_parameters_wins_over_a_remembered_one() -> None:
    """DuckDB and BigQuery report the parameters: what the destination says is the truth."""
    evolution = diff({"w": "DECIMAL(14,4)"}, stored(w="DECIMAL(14,4)"), "duckdb",
                     created={"w": "DECIMAL(10,2)"})
    assert not evolution.changed
