"""Tier 1 (with an in-memory DuckDB): the drift figures' row figure (`pg_to_bq.checks.drift`).

Per column, a sum of hashes sees a value changed, added or removed, but not values moved
from one row to another; the row figure (the sum of a hash of each row's values) does. A
table whose stored figures have it is asked only its rows and that figure: both must be what
the whole figures hold, whatever order the columns are given in (stored figures list them
sorted by name).
"""

from __future__ import annotations

import duckdb
import pytest

from pg_to_bq.checks import drift

COLUMNS = [("id", "integer"), ("name", "text"), ("Amount x", "decimal"), ("doc", "json")]


@pytest.fixture
def conn():
    conn = duckdb.connect()
    conn.execute("""
        CREATE TABLE t AS SELECT i AS id, 'v' || i AS name,
            CASE WHEN i % 3 = 0 THEN NULL ELSE i * 1.25 END::DECIMAL(12,2) AS "Amount x",
            ('{"k": ' || i || '}')::JSON AS doc FROM range(5000) r(i);
    """)
    return conn


def _figures(conn, columns=COLUMNS) -> drift.Figures:
    [(_, answer)] = conn.execute(drift.figures_sql("duckdb", [("t", columns)])).fetchall()
    return drift.parse("duckdb", answer, [name for name, _ in columns])


def _rows_only(conn, columns=COLUMNS) -> tuple[int, int]:
    [(_, answer)] = conn.execute(drift.figures_sql("duckdb", [("t", columns)],
                                                   rows_only=True)).fetchall()
    return drift.parse_rows(answer)


def test_the_row_figure_asked_alone_is_the_whole_figures_one_in_any_column_order(conn) -> None:
    whole = _figures(conn)
    assert whole.rows == 5000 and whole.row is not None
    assert _rows_only(conn) == (whole.rows, whole.row)
    shuffled = [COLUMNS[2], COLUMNS[0], COLUMNS[3], COLUMNS[1]]
    assert _rows_only(conn, shuffled) == (whole.rows, whole.row)
    assert whole.same_rows(*_rows_only(conn, sorted(COLUMNS)))
    stored = drift.Figures.from_state(whole.to_state())
    assert stored == whole and list(stored.columns) == [name for name, _ in COLUMNS]


def test_values_moved_between_rows_change_only_the_row_figure(conn) -> None:
    before = _figures(conn)
    conn.execute("UPDATE t SET name = CASE id WHEN 7 THEN 'v8' ELSE 'v7' END WHERE id IN (7, 8)")
    now = _figures(conn)
    assert now.columns == before.columns and now.row != before.row
    assert not before.same_rows(*_rows_only(conn))
    assert drift.changes(before, now) == [
        "rows: values moved between rows (each column holds the values it held after the "
        "last load, not in the same rows)"]


def test_a_changed_value_is_named_by_its_column_not_as_moved(conn) -> None:
    before = _figures(conn)
    conn.execute("UPDATE t SET doc = '{\"k\": 0}' WHERE id = 4000")
    now = _figures(conn)
    assert not before.same_rows(*_rows_only(conn))
    assert drift.changes(before, now) == ["doc: values changed (5,000 non-null either way)"]


def test_figures_without_the_row_figure_compare_by_their_columns(conn) -> None:
    """Figures stored by an earlier version (no row figure) are never taken as asked alone,
    and are compared column by column as before; nor is a row figure over other columns
    (one dropped from the destination) taken for values that moved."""
    whole = _figures(conn)
    earlier = drift.Figures.from_state({k: v for k, v in whole.to_state().items() if k != "row"})
    assert earlier.row is None and not earlier.same_rows(*_rows_only(conn))
    assert drift.changes(earlier, whole) == []
    fewer = _figures(conn, COLUMNS[:3])
    assert drift.changes(whole, fewer) == ["doc: no longer in the destination table"]


def test_bigquery_figures_have_the_row_figure_and_read_earlier_ones() -> None:
    """BigQuery's figures hold the row figure too (`FARM_FINGERPRINT` of each row's JSON,
    the columns by name), asked alone or with the columns' figures; the text answers of
    earlier versions (no row figure) still read, as figures without it, compared column by
    column. (The SQL runs on the BigQuery emulator in `test_drift.py`.)"""
    text = drift.figures_sql("bigquery", [("t", COLUMNS)])
    assert "FARM_FINGERPRINT(TO_JSON_STRING(STRUCT(`Amount x`, `doc`, `id`, `name`)))" in text
    assert "hash(" not in text and "COUNT(`name`)" in text
    alone = drift.figures_sql("bigquery", [("t", COLUMNS)], rows_only=True)
    assert "TO_JSON_STRING(STRUCT(" in alone and "COUNT(`name`)" not in alone
    now = drift.parse("bigquery", "3,-41,3,12,2,7.0", ["id", "name"])
    assert (now.rows, now.row, dict(now.columns)) == (3, -41, {"id": (3, 12), "name": (2, 7)})
    assert drift.parse_rows("3,-41") == (3, -41) and now.same_rows(3, -41)
    earlier = drift.parse("bigquery", "3,3,12,2,7", ["id", "name"])
    assert earlier.row is None and earlier.columns == now.columns
    assert drift.changes(earlier, now) == [] and not earlier.same_rows(3, -41)
    no_columns = drift.figures_sql("duckdb", [("t", [])], rows_only=True)
    assert duckdb.connect().execute(no_columns.replace("FROM t", "FROM range(3)")).fetchall() \
        == [(0, [3, 0])]


def test_generated_edits_are_seen_exactly_when_the_rows_change() -> None:
    """Generated tables and edits by hand (a value changed, set to NULL, values swapped
    between rows, a row replaced by another, nothing): the figures report a change, and the
    row figure asked alone differs, exactly when the table's rows (as a multiset) differ."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    value = st.one_of(st.none(), st.text(max_size=3))
    amount = st.one_of(st.none(), st.decimals(min_value=-99, max_value=99, places=2))
    rows = st.lists(st.tuples(value, amount), min_size=1, max_size=12)
    edit = st.tuples(st.sampled_from(["set", "null", "swap", "replace", "none"]),
                     st.integers(0, 11), st.integers(0, 11), st.sampled_from(["a", "b"]),
                     value, amount)
    columns = [("id", "integer"), ("a", "text"), ("b", "decimal")]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rows, edit)
    def check(data: list[tuple], change: tuple) -> None:
        conn = duckdb.connect()
        conn.execute("CREATE TABLE t (id INTEGER, a VARCHAR, b DECIMAL(12,2))")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                         [(i, a, b) for i, (a, b) in enumerate(data)])
        kind, i, j, column, text, number = change
        i, j = i % len(data), j % len(data)
        new = text if column == "a" else number
        if kind == "set":
            conn.execute(f"UPDATE t SET {column} = ? WHERE id = ?", [new, i])
        elif kind == "null":
            conn.execute(f"UPDATE t SET {column} = NULL WHERE id = ?", [i])
        elif kind == "swap":
            conn.execute(f"UPDATE t SET {column} = CASE id WHEN ? THEN (SELECT {column} FROM t "
                         f"WHERE id = ?) ELSE (SELECT {column} FROM t WHERE id = ?) END "
                         "WHERE id IN (?, ?)", [i, j, i, i, j])
        elif kind == "replace":
            conn.execute("DELETE FROM t WHERE id = ?", [i])
            conn.execute("INSERT INTO t VALUES (?, ?, ?)", [i, text, number])
        before = _figures_of(data, columns)
        after = _figures(conn, columns)
        now = sorted(conn.execute("SELECT id, a, b FROM t").fetchall(), key=repr)
        then = sorted([(k, a, b) for k, (a, b) in enumerate(data)], key=repr)
        changed = now != then
        assert bool(drift.changes(before, after)) == changed, (data, change)
        assert (not before.same_rows(*_rows_only(conn, columns))) == changed

    check()


def _figures_of(data: list[tuple], columns) -> drift.Figures:
    """The figures of `data` (rows without their ids) as loaded, in a table of their own."""
    other = duckdb.connect()
    other.execute("CREATE TABLE t (id INTEGER, a VARCHAR, b DECIMAL(12,2))")
    other.executemany("INSERT INTO t VALUES (?, ?, ?)",
                      [(i, a, b) for i, (a, b) in enumerate(data)])
    return _figures(other, columns)
