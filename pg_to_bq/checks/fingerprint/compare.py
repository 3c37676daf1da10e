"""Both sides of a fingerprint parsed and compared: the values check's outcome, naming
every column that differs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from pg_to_bq.checks import outcomes as checks
from pg_to_bq.checks.fingerprint.scope import FINGERPRINT, METHODS, ColumnDigest, Fingerprint, Scope, digested
from pg_to_bq.checks.fingerprint.sql import WIDTHS
from pg_to_bq.planning.tables import TablePlan


def parse(plan: TablePlan, row: Sequence[Any], scope: Scope) -> Fingerprint:
    """The fingerprint in a row that `source_sql` or `destination_sql` returned.

    Values may arrive as int, Decimal, str (`destination_sql_many`) or None (a sum over no
    rows); the digest holds ints, and a Decimal for a decimal column's sum.

    Raises:
        ValueError: the row does not have the plan's shape.
    """
    columns_read = digested(plan, scope)
    expected = 1 + sum(WIDTHS[m] for _, m in columns_read)
    values = list(row)
    if len(values) < expected or any(v is not None for v in values[expected:]):
        raise ValueError(f"a fingerprint row of {plan.name} has {expected} values, not "
                         f"{len(values)}")
    position = 1
    columns: dict[str, ColumnDigest] = {}
    for column, method in columns_read:
        part = values[position:position + WIDTHS[method]]
        position += WIDTHS[method]
        digest: tuple[int | Decimal, ...]
        if method == "decimal":
            digest = (_decimal(part[1]) + _decimal(part[2]), _integer(part[3]))
        else:
            digest = tuple(_integer(v) for v in part[1:])
        columns[column.source.name] = ColumnDigest(_integer(part[0]), digest, method)
    return Fingerprint(rows=_integer(values[0]), columns=columns, scope=scope.description)


def _integer(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    number = _decimal(value)
    if number != number.to_integral_value():
        raise ValueError(f"an integer aggregate was {value!r}")
    return int(number)


def _decimal(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, float):
        raise ValueError(f"an exact aggregate came back as a float ({value!r})")
    return value if isinstance(value, Decimal) else Decimal(str(value))


def compare(
    source: Fingerprint,
    destination: Fingerprint,
    *,
    skipped: Mapping[str, str],
    disposition: str = "replace",
) -> checks.CheckOutcome:
    """Source against destination fingerprint: the values part of `matches_source`.

    Args:
        source / destination: Fingerprints over the same scope.
        skipped: Columns whose values are not compared, and why (`not_compared(plan)`).
        disposition: The table's. A merged table may hold rows deleted in the source since
            the last delete pass, which changes every column: a warning, as for the row
            count, not an error.

    Returns:
        A passing outcome, or a failed one (severity ERROR) whose description names each
        differing column and what differed. The metadata holds the scope, the rows, the
        compared and skipped columns with their methods, and both sides' values for each
        differing column.
    """
    names = list(dict.fromkeys([*source.columns, *destination.columns]))
    problems: list[str] = []
    differences: dict[str, Any] = {}
    for name in names:
        ours, theirs = source.columns.get(name), destination.columns.get(name)
        if ours is None or theirs is None:
            side = "destination" if theirs is None else "source"
            problems.append(f"{name} (not in the {side} fingerprint)")
            differences[name] = {"missing_in": side}
            continue
        what = []
        if ours.non_null != theirs.non_null:
            what.append(f"non-null count: source {ours.non_null:,}, destination "
                        f"{theirs.non_null:,}")
        if ours.digest != theirs.digest or ours.method != theirs.method:
            what.append("values differ too" if what else "values differ")
        if what:
            problems.append(f"{name} ({'; '.join(what)})")
            differences[name] = {"method": METHODS[ours.method], "source": _shown(ours),
                                 "destination": _shown(theirs)}
    compared = [n for n, d in source.columns.items() if d.method != "count"]
    metadata: dict[str, Any] = {
        "scope": source.scope,
        "rows": {"source": source.rows, "destination": destination.rows},
        "compared_columns": compared,
        "methods": {n: METHODS[d.method] for n, d in source.columns.items()},
        "not_compared": dict(skipped),
    }
    if differences:
        metadata["differences"] = differences
    unchecked = f"; not compared: {', '.join(skipped)}" if skipped else ""
    if not problems and source.rows == destination.rows:
        what = (f"values of {len(compared)} column(s)" if compared
                else "non-null counts (values not compared)")
        return checks.CheckOutcome(
            FINGERPRINT, True, "ERROR",
            f"{what} match the source over {source.scope}{unchecked}", metadata)
    parts = []
    if source.rows != destination.rows:
        parts.append(f"rows in scope: source {source.rows:,}, destination {destination.rows:,}")
    if problems:
        parts.append(f"{len(problems)} of {len(names)} column(s) differ: {', '.join(problems)}")
    description = "; ".join(parts) + f" (scope: {source.scope}){unchecked}"
    if disposition == "merge" and destination.rows > source.rows:
        return checks.CheckOutcome(
            FINGERPRINT, False, "WARN",
            f"the destination holds {destination.rows - source.rows:,} more row(s) in scope "
            "than the source (rows deleted in the source since the last delete pass), so "
            f"values cannot be compared until that pass runs: {description}", metadata)
    return checks.CheckOutcome(FINGERPRINT, False, "ERROR", description, metadata)


def _shown(digest: ColumnDigest) -> dict[str, Any]:
    # The aggregates as text: they exceed JSON's safe integers, and a Decimal is no JSON.
    return {"non_null": digest.non_null, "digest": [str(v) for v in digest.digest]}
