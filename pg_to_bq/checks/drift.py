"""Drift: has the destination table changed since pg_to_bq last loaded it?

Every run computes, inside the destination, cheap whole-table figures of each loaded table:
its rows and, per column, the non-null count and the sum of a fast hash of every value
(DuckDB's `hash()`, BigQuery's `FARM_FINGERPRINT`). After a load they are stored with the
table's state; the next run computes them again and compares. Equal figures mean the
table holds what the last load left (a value changed, set to NULL, added or removed
changes its column's figures); unequal ones name the columns that changed behind
pg_to_bq's back, with both sides' figures — the `matches_source` check then fails, so an
unchanged table is checked without reading PostgreSQL at all.

The hash is the destination's own, so the figures are only compared with figures of the
same engine (`engine` names it, with its version: a DuckDB upgrade may hash differently;
then the run stores new figures and compares nothing). Cost, measured on a 12-column table
in DuckDB: 3 ms at 1,000 rows, 12 ms at 100,000 and 84 ms at 1,000,000 (an MD5 of every
value's text, the cross-system digest, takes 9 ms, 364 ms and 2.9 s).

The figures also hold one for the whole rows: the sum of a hash of each row's values
(DuckDB's `hash(a, b, ...)`, BigQuery's `FARM_FINGERPRINT` of the row's JSON; the columns
taken in the order of their names), which changes with any value, and also when values move
from one row to another (which the columns' sums do not see). A table whose stored figures
have it is first asked only that and its rows (`rows_only`): DuckDB spends such a query
planning its expressions (per table, ~0.75 ms for seven columns' figures, a third of that
for the row figure alone); BigQuery bills the same bytes either way. A table whose two
numbers are those of its last load holds what that load left. Only a table whose numbers
differ is asked again, column by column, to name what changed. (BigQuery figures stored
before they had the row figure are compared column by column, and stored again with it.)

One query answers for many tables (a row per table); this module only builds its SQL and
reads its answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pg_to_bq.checks.fingerprint.scope import quote_for

# Tables one figures query covers (in DuckDB, fewer: `pg_to_bq.destinations.query_threads`).
QUERY_TABLES = 50


@dataclass(frozen=True)
class Figures:
    """A table's whole-table figures: rows, per column [non-null count, hash sum], and the
    sum of a hash of each row's values of `columns`, taken in the order of their names (None
    in figures stored by an earlier version)."""

    engine: str
    rows: int
    columns: Mapping[str, tuple[int, int]]
    row: int | None = None

    def to_state(self) -> dict[str, Any]:
        # Sums exceed JSON's safe integers: kept as text.
        data: dict[str, Any] = {
            "engine": self.engine, "rows": self.rows,
            "columns": {name: [n, str(s)] for name, (n, s) in self.columns.items()}}
        if self.row is not None:
            data["row"] = str(self.row)
        return data

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Figures:
        return cls(str(data["engine"]), int(data["rows"]),
                   {name: (int(n), int(s)) for name, (n, s) in data["columns"].items()},
                   int(data["row"]) if data.get("row") is not None else None)

    def same_rows(self, rows: int, row: int | None) -> bool:
        """Whether `rows` and a row figure asked alone (`rows_only`) are this table's: then
        it holds what these figures describe, column by column too."""
        return self.row is not None and (self.rows, self.row) == (rows, row)


def _value(kind: str, column: str, logical: str) -> str:
    quoted = quote_for(kind)(column)
    if kind == "duckdb":
        # (DuckDB sums UBIGINTs into a HUGEINT: exact, and faster than casting each first)
        return f"hash({quoted})"
    text = f"TO_BASE64({quoted})" if logical == "binary" else f"CAST({quoted} AS STRING)"
    return f"CAST(FARM_FINGERPRINT({text}) AS BIGNUMERIC)"


def _row_figure(kind: str, columns: Sequence[tuple[str, str]]) -> str:
    """The sum of a hash of each row's values of `columns`, taken in the order of their
    names (stored figures list them in the state's order, sorted): DuckDB's `hash` of the
    values, BigQuery's `FARM_FINGERPRINT` of the row as JSON (the struct of the values,
    each column by name)."""
    if not columns:
        return "0"
    names = [quote_for(kind)(name) for name in sorted(n for n, _ in columns)]
    if kind == "duckdb":
        return f"coalesce(sum(hash({', '.join(names)})), 0)"
    return ("COALESCE(SUM(CAST(FARM_FINGERPRINT(TO_JSON_STRING(STRUCT("
            f"{', '.join(names)}))) AS BIGNUMERIC)), 0)")


def _select(kind: str, index: int, table: str, columns: Sequence[tuple[str, str]],
            rows_only: bool = False) -> str:
    """One row: the table's index, then its figures: the rows, the row figure, then the
    columns' unless `rows_only` (a list in DuckDB; a comma-separated text in BigQuery)."""
    parts = ["count(*)" if kind == "duckdb" else "COUNT(*)", _row_figure(kind, columns)]
    for name, logical in () if rows_only else columns:
        quoted = quote_for(kind)(name)
        value = _value(kind, name, logical)
        if kind == "duckdb":
            parts += [f"count({quoted})", f"coalesce(sum({value}), 0)"]
        else:
            parts += [f"COUNT({quoted})", f"COALESCE(SUM({value}), 0)"]
    if kind == "duckdb":
        # A list of numbers: a third cheaper than joining them as text (1,000-row tables)
        return f"SELECT {index} AS i, [{', '.join(parts)}] AS f FROM {table}"
    listed = ", ".join(f"CAST({p} AS STRING)" for p in parts)
    return f"SELECT {index} AS i, ARRAY_TO_STRING([{listed}], ',') AS f FROM {table}"


def figures_sql(kind: str, items: Sequence[tuple[str, Sequence[tuple[str, str]]]],
                rows_only: bool = False) -> str:
    """One query for `items`: (the qualified destination table, its (column, logical type)
    pairs), answering a row (index, figures) per table; with `rows_only`, only the rows and
    the row figure."""
    return " UNION ALL ".join(_select(kind, i, table, columns, rows_only)
                              for i, (table, columns) in enumerate(items))


def parse(engine: str, answer: str | Sequence[int], columns: Sequence[str]) -> Figures:
    """The figures in one answer row (DuckDB's list of numbers and BigQuery's text, with the
    row figure second; the text of earlier versions, without it), for `columns` in the order
    they were asked."""
    values = _numbers(answer)
    if isinstance(answer, str) and len(values) == 1 + 2 * len(columns):
        row, first = None, 1
    else:
        row, first = (values[1] if len(values) > 1 else None), 2
    if len(values) != first + 2 * len(columns):
        raise ValueError(f"figures of {len(columns)} column(s) expected, got {len(values)} values")
    return Figures(engine, values[0], {name: (values[first + 2 * i], values[first + 1 + 2 * i])
                                       for i, name in enumerate(columns)}, row)


def parse_rows(answer: str | Sequence[int]) -> tuple[int, int]:
    """The rows and the row figure of an answer asked with `rows_only`."""
    rows, row = _numbers(answer)
    return rows, row


def _numbers(answer: str | Sequence[int]) -> list[int]:
    """An answer's numbers: DuckDB's list, or BigQuery's comma-separated text (its sums of
    BIGNUMERIC print as whole numbers, with a `.0` at times)."""
    if isinstance(answer, str):
        return [int(v.split(".")[0]) for v in answer.split(",")]
    return [int(v) for v in answer]


def changes(before: Figures, now: Figures) -> list[str]:
    """What differs between the figures the last load left and the table's now, in words
    (one item per column or for the rows); empty when the table holds what was loaded."""
    found = []
    if now.rows != before.rows:
        found.append(f"rows: {before.rows:,} after the last load, {now.rows:,} now")
    for name, (count, total) in before.columns.items():
        if name not in now.columns:
            found.append(f"{name}: no longer in the destination table")
            continue
        count_now, total_now = now.columns[name]
        if count_now != count:
            found.append(f"{name}: {count:,} non-null value(s) after the last load, "
                         f"{count_now:,} now")
        elif total_now != total:
            found.append(f"{name}: values changed ({count:,} non-null either way)")
    if not found and before.row is not None and now.row is not None and before.row != now.row \
            and set(before.columns) == set(now.columns):
        found.append("rows: values moved between rows (each column holds the values it held "
                     "after the last load, not in the same rows)")
    return found
