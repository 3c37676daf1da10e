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


def test_a_drop_is_a_change_once_then_kept() -> None:
    """A column the last load wrote and PostgreSQL no longer has is dropped (the load makes
    it nullable and says so); from the next load on it is kept, which asks nothing."""
    now = stored(id="BIGINT", title="VARCHAR")
    first = diff({"id": "BIGINT"}, now, "duckdb", loaded=["id", "title"], kept=[])
    assert (first.dropped, first.kept, first.changed) == (("title",), (), True)
    later = diff({"id": "BIGINT"}, now, "duckdb", loaded=["id"], kept=["title"])
    assert (later.dropped, later.kept, later.changed) == ((), ("title",), False)
    # A state from before the columns were stored: every such column is a change, as before.
    assert diff({"id": "BIGINT"}, now, "duckdb").dropped == ("title",)


def test_a_kept_column_made_not_null_again_is_a_change() -> None:
    now = {"id": StoredColumn("id", "BIGINT", False), "title": StoredColumn("title", "VARCHAR",
                                                                            False)}
    evolution = diff({"id": "BIGINT"}, now, "duckdb", keys=frozenset({"id"}), loaded=["id"],
                     kept=["title"])
    assert (evolution.kept, evolution.relax, evolution.changed) == (("title",), ("title",), True)


def test_a_column_loaded_again_is_added_though_the_destination_has_it() -> None:
    """Dropped in PostgreSQL (kept in the destination with its old values) and added back
    under the same name: its values must be loaded again, never taken as loaded."""
    evolution = diff({"id": "BIGINT", "title": "VARCHAR"}, stored(id="BIGINT", title="VARCHAR"),
                     "duckdb", loaded=["id"], kept=["title"])
    assert (evolution.added, evolution.again, evolution.kept) == (("title",), ("title",), ())
    assert evolution.changed and not evolution.reload
    # Back under another type: loaded again and retyped (the table is reloaded).
    retyped = diff({"id": "BIGINT", "title": "BIGINT"}, stored(id="BIGINT", title="VARCHAR"),
                   "duckdb", loaded=["id"], kept=["title"])
    assert retyped.again == ("title",) and retyped.reload
    # The columns of the last load, as case-insensitive as the destination's names.
    assert not diff({"ID": "BIGINT"}, stored(id="BIGINT"), "duckdb", loaded=["id"]).changed


def test_a_column_no_load_wrote_or_found_was_added_by_hand() -> None:
    """Not planned, not written by the last load and not found by it: added in the
    destination since. A change (said once, by the load that finds it), then kept."""
    evolution = diff({"id": "BIGINT"}, stored(id="BIGINT", extra="INTEGER"), "duckdb",
                     loaded=["id"], kept=[])
    assert (evolution.dropped, evolution.kept, evolution.changed) == (("extra",), (), True)
    # A state that did not record what it found: taken as dealt with.
    assert diff({"id": "BIGINT"}, stored(id="BIGINT", extra="INTEGER"), "duckdb",
                loaded=["id"]).kept == ("extra",)


def test_a_column_derived_another_way_is_loaded_again() -> None:
    """`derived`: how the last load derived each column, and how this one would
    (`pg_to_bq.planning.derivation`); a column derived another way is loaded again."""
    now = stored(id="BIGINT", email="VARCHAR")
    plain = {"id": {"number": 1}, "email": {"number": 2}}
    hashed = {"id": {"number": 1}, "email": {"number": 2, "hash": "aaa"}}
    evolution = diff({"id": "BIGINT", "email": "VARCHAR"}, now, "duckdb", loaded=["id", "email"],
                     derived=(plain, hashed))
    assert (evolution.added, evolution.rederived, evolution.again) == \
        (("email",), (("email", "hashed now"),), ())
    same = diff({"id": "BIGINT", "email": "VARCHAR"}, now, "duckdb", loaded=["id", "email"],
                derived=(hashed, hashed))
    assert not same.changed
    # A column the last state does not describe is not compared.
    assert not diff({"id": "BIGINT", "email": "VARCHAR"}, now, "duckdb",
                    loaded=["id", "email"], derived=({"id": {"number": 1}}, hashed)).changed


@pytest.mark.parametrize("before, now, expected", [
    ({"number": 3}, {"number": 3}, None),
    ({"number": 3}, {"number": 5},
     "another PostgreSQL column has its name now (dropped and added again, or renamed)"),
    # A state or a snapshot from before the numbers were kept: not compared.
    ({}, {"number": 5}, None),
    ({"number": 3}, {}, None),
    ({"number": 3}, {"number": 3, "hash": "a1"}, "hashed now"),
    ({"number": 3, "hash": "a1"}, {"number": 3}, "no longer hashed"),
    ({"number": 3, "hash": "a1"}, {"number": 3, "hash": "b2"}, "the hash salt changed"),
    ({"number": 3}, {"number": 3, "cast": "text"}, "cast to text now"),
    ({"number": 3, "cast": "json"}, {"number": 3, "cast": "text"}, "cast to text now"),
    ({"number": 3, "cast": "json"}, {"number": 3}, "no longer cast"),
])
def test_what_changed_in_a_derivation(before, now, expected) -> None:
    from pg_to_bq.planning.derivation import what_changed

    assert what_changed(before, now) == expected


def test_the_salt_is_told_apart_and_never_kept() -> None:
    from pg_to_bq.planning.derivation import salt_mark

    one, other = salt_mark(b"pepper"), salt_mark(b"paprika")
    assert one and other and one != other and salt_mark(b"pepper") == one
    assert "pepper" not in one and salt_mark(None) is None and salt_mark(b"") is None


@pytest.mark.parametrize("before, now, expected", [
    ({"number": 3, "type": "integer"}, {"number": 3, "type": "integer"}, None),
    ({"number": 3, "type": "character varying(10)"},
     {"number": 3, "type": "character varying(5)"},
     "its PostgreSQL type changed (character varying(10) → character varying(5))"),
    ({"number": 3}, {"number": 3, "type": "text"}, None),
])
def test_a_postgresql_type_change_is_a_change_of_derivation(before, now, expected) -> None:
    """`ALTER COLUMN … TYPE … USING` can rewrite every value while the destination's type
    stays (varchar(10) → varchar(5) USING left(…)): the values are loaded again."""
    from pg_to_bq.planning.derivation import what_changed

    assert what_changed(before, now) == expected
