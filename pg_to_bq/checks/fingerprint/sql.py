"""The fingerprint query, whatever the system: per-row canonical values, their aggregates
in a fixed order, and the dialect each system fills in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pg_to_bq.checks.fingerprint.scope import Kind, Scope, digested, quote_for
from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.planning.types import ColumnMapping

# Aggregates per method, in this order on every side: the non-null count, then the digest.
WIDTHS: Mapping[str, int] = {"count": 1, "boolean": 2, "float": 2, "text": 2, "bytes": 2,
                              "decimal": 4, "integer": 3, "timestamp": 3, "date": 3, "time": 3}


# Methods digesting Σc and Σ(c mod P)² of one canonical integer c per row.
_RESIDUES = frozenset({"integer", "timestamp", "date", "time"})


_Inner = Callable[[ColumnMapping, str], list[str]]


_Aggregates = Callable[[str, list[str], ColumnMapping], list[str]]


@dataclass(frozen=True)
class Dialect:
    """How one system computes the per-row canonical values and their aggregates."""

    quote: Callable[[str], str]
    inner: _Inner
    aggregates: _Aggregates
    residue: str  # `c mod P` (the sign of c's), `{}` standing for c


def generic_aggregates(method: str, names: list[str], count: str, total: str,
                        trues: str) -> list[str]:
    """Per method: the non-null count, then the digest (`WIDTHS` values in all).

    `names` are the per-row values: [c] or [c, c mod P]; for decimals [v, u mod P].
    """
    value = names[0]
    first = [count.format(value)]
    if method == "count":
        return first
    if method == "boolean":
        return [*first, trues.format(value)]
    if method in ("float", "text", "bytes"):
        return [*first, total.format(value)]
    squares = total.format(f"{names[1]} * {names[1]}")
    if method == "decimal":
        return [*first, total.format(value), "0", squares]
    return [*first, total.format(value), squares]


def qualified_name(kind: Kind, *parts: str) -> str:
    """A destination table's name, each part quoted for `kind`: dataset and table, or
    project, dataset and table on BigQuery."""
    return ".".join(quote_for(kind)(p) for p in parts)


def select_parts(plan: TablePlan, scope: Scope, dialect: Dialect, table: str,
            where: str | None, inner_suffix: str = "") -> tuple[list[str], str]:
    """The select list and FROM clause of the fingerprint query:

        SELECT count(*), <aggregates>
        FROM (SELECT <values>, <residues of values> FROM
              (SELECT <per-row canonical values> FROM table WHERE ...) AS fingerprint_values
             ) AS fingerprint_rows

    Per-row values get generated aliases (`v0_0`, `r0`, ...), so no column of the table
    can collide with them, and each is computed once however many aggregates use it. The
    residues (`c mod P`) have a level of their own, so the squares multiply two column
    references: the BigQuery emulator's translation drops the parentheses of
    `MOD(c, P) * MOD(c, P)`.
    """
    values: list[str] = []
    passed: list[str] = []
    select = ["count(*)"]
    for index, (column, method) in enumerate(digested(plan, scope)):
        names = []
        for part, expression in enumerate(dialect.inner(column, method)):
            names.append(f"v{index}_{part}")
            values.append(f"{expression} AS {names[-1]}")
            passed.append(names[-1])
        if method in _RESIDUES:
            names.append(f"r{index}")
            passed.append(f"{dialect.residue.format(names[0])} AS {names[-1]}")
        select.extend(dialect.aggregates(method, names, column))
    condition = f" WHERE {where}" if where else ""
    if not values:
        return select, f"{table}{condition}"
    inner = f"SELECT {', '.join(values)} FROM {table}{condition}{inner_suffix}"
    return select, (f"(SELECT {', '.join(passed)} FROM ({inner}) AS fingerprint_values) "
                    "AS fingerprint_rows")
