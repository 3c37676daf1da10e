"""The column types part of `matches_source`: after a load that created a table or changed
its columns, the destination's columns (asked again) compared with the plan's types.

A schema change said to be handled but not applied leaves a column under its old type, with
the new values cast back into it. Where they still print as PostgreSQL's text (`'4500.0000'`
in a DECIMAL(14,4) column that PostgreSQL now has as text), the values part passes: this part
fails it, naming the column and both types. The comparison is the one each load starts with
(`pg_to_bq.planning.evolution.diff`), so what passes here is what the next load finds
unchanged. Columns kept in the destination after PostgreSQL dropped them are not asked about.
"""

from __future__ import annotations

from collections.abc import Mapping

from pg_to_bq.checks.outcomes import CheckOutcome
from pg_to_bq.planning.evolution import StoredColumn, diff

TYPES = "types"


def types_outcome(planned: Mapping[str, str], stored: Mapping[str, StoredColumn] | None,
                  kind: str) -> CheckOutcome:
    """The destination's columns of one table after its load (`stored`; None: the table is
    not there) against the types the load planned (destination name → type)."""
    if not stored:
        return CheckOutcome(TYPES, False, "ERROR",
                            "the table is missing from the destination after its load")
    found = diff(planned, stored, kind)
    reported = {change.column: change.old_type for change in (*found.widened, *found.retyped)}
    # (in the table's order; a missing column is reported as None)
    wrong = {name: {"destination": reported.get(name), "planned": type_}
             for name, type_ in planned.items() if name in reported or name in found.added}
    if not wrong:
        return CheckOutcome(TYPES, True, "ERROR",
                            f"column types as planned ({len(planned)} column(s) asked after "
                            "this load created or changed them)")
    said = "; ".join(
        f"{name} is missing (planned {types['planned']})" if types["destination"] is None
        else f"{name} is {types['destination']} where {types['planned']} was planned"
        for name, types in wrong.items())
    return CheckOutcome(TYPES, False, "ERROR",
                        f"{len(wrong)} column type(s) differ from the plan: {said}",
                        {"columns": wrong})
