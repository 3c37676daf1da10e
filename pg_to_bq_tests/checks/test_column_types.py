"""The column types part of `matches_source` (pure logic): the destination's columns after a
load that created or changed them, against the planned types."""

from pg_to_bq.checks import outcomes as checks
from pg_to_bq.checks.column_types import TYPES, types_outcome
from pg_to_bq.planning.evolution import StoredColumn
from pg_to_bq.planning.naming import SOFT_DELETE_COLUMN


def stored(**types: str) -> dict[str, StoredColumn]:
    return {name: StoredColumn(name, type_, True) for name, type_ in types.items()}


PLANNED = {"id": "BIGINT", "qty": "VARCHAR", "amount": "DECIMAL(12,2)"}


def test_the_planned_types_pass_however_the_destination_spells_them() -> None:
    outcome = types_outcome(PLANNED, stored(
        id="bigint", qty="VARCHAR", amount="DECIMAL(12, 2)", old_column="INTEGER",
        _dlt_id="VARCHAR", **{SOFT_DELETE_COLUMN: "TIMESTAMP WITH TIME ZONE"}), "duckdb")
    assert outcome.passed and outcome.name == TYPES
    assert outcome.description == ("column types as planned (3 column(s) asked after this "
                                   "load created or changed them)")


def test_a_column_left_under_its_old_type_fails_naming_both_types() -> None:
    """The silent case: the values print as PostgreSQL's text, the type is stale."""
    outcome = types_outcome(PLANNED, stored(id="BIGINT", qty="DECIMAL(14,4)",
                                            amount="DECIMAL(10,2)"), "duckdb")
    assert not outcome.passed and outcome.severity == "ERROR"
    assert outcome.description == (
        "2 column type(s) differ from the plan: qty is DECIMAL(14,4) where VARCHAR was "
        "planned; amount is DECIMAL(10,2) where DECIMAL(12,2) was planned")
    assert outcome.metadata == {"columns": {
        "qty": {"destination": "DECIMAL(14,4)", "planned": "VARCHAR"},
        "amount": {"destination": "DECIMAL(10,2)", "planned": "DECIMAL(12,2)"}}}


def test_a_missing_column_or_table_fails() -> None:
    missing = types_outcome(PLANNED, stored(id="BIGINT", amount="DECIMAL(12,2)"), "duckdb")
    assert not missing.passed and missing.description == (
        "1 column type(s) differ from the plan: qty is missing (planned VARCHAR)")
    gone = types_outcome(PLANNED, None, "duckdb")
    assert not gone.passed and gone.severity == "ERROR"
    assert gone.description == "the table is missing from the destination after its load"


def test_a_destination_without_parameters_is_judged_by_the_type_it_reports() -> None:
    """The BigQuery emulator reports NUMERIC for NUMERIC(12,2): the parameters cannot be
    seen there, the type can."""
    planned = {"id": "INT64", "amount": "NUMERIC(12,2)"}
    assert types_outcome(planned, stored(id="INT64", amount="NUMERIC"), "bigquery").passed
    stale = types_outcome(planned, stored(id="INT64", amount="STRING"), "bigquery")
    assert not stale.passed and "amount is STRING where NUMERIC(12,2) was planned" \
        in stale.description


def test_stale_types_fail_the_one_check_with_an_error() -> None:
    rows = checks.reconcile_row_counts(10, 10, "replace")
    values = checks.CheckOutcome(checks.FINGERPRINT, True, "ERROR", "values of 3 column(s) match")
    stale = types_outcome(PLANNED, stored(id="BIGINT", qty="DECIMAL(14,4)",
                                          amount="DECIMAL(12,2)"), "duckdb")
    check = checks.matches_source([rows, values, stale])
    assert not check.passed and check.severity == "ERROR"
    assert check.description == ("1 column type(s) differ from the plan: qty is DECIMAL(14,4) "
                                 "where VARCHAR was planned")
    assert check.metadata[TYPES] == stale.metadata
    passed = checks.matches_source([rows, values, types_outcome(
        PLANNED, stored(id="BIGINT", qty="VARCHAR", amount="DECIMAL(12,2)"), "duckdb")])
    assert passed.passed and passed.description.endswith("column types as planned (3 column(s) "
                                                         "asked after this load created or "
                                                         "changed them)")
