"""Where a destination column's values come from, and when they must be loaded again.

A merged table reads only recent rows; the rows loaded before keep the values they were
loaded with. That is exact only while each destination column is derived the same way:

- from the same PostgreSQL column: its attribute number, which a rename or a type change
  keeps and a drop followed by an add of the same name does not;
- of the same PostgreSQL type: a type change rewrites every value as its `USING` says,
  which nothing outside PostgreSQL can see. One that leaves every value as it was does not
  rewrite the table, whose storage (kept in the state) then stays the same, and is not
  compared;
- read the same way: as it is, cast by the tables file, or hashed with the same salt.

When a column's derivation changes, the values of every row are loaded again
(`pg_to_bq.planning.evolution.diff`: filled by key on a merged table). Each load stores its
columns' derivations in the table's state.

Nothing here holds the salt: a hashed column's derivation names a fingerprint of it, which
tells one salt from another and nothing more than the hashed values already do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pg_to_bq.planning.tables import TablePlan

_NUMBER, _TYPE, _HASH, _CAST = "number", "type", "hash", "cast"


def salt_mark(salt: bytes | None) -> str | None:
    """A fingerprint of the hash salt (the first 12 hex digits of a SHA-256 of it)."""
    if not salt:
        return None
    return hashlib.sha256(b"pg_to_bq salt\x00" + salt).hexdigest()[:12]


def derivations(plan: TablePlan, salt: bytes | None, types: bool = True
                ) -> dict[str, dict[str, Any]]:
    """Each planned column's derivation, by destination name. Without `types` (the table was
    not rewritten since the last load: a type change left every value as it was), the
    PostgreSQL types are left out, and so out of the comparison."""
    mark = salt_mark(salt)
    table = plan.table
    numbers = dict(zip((c.name for c in table.columns), table.column_numbers, strict=True)) \
        if len(table.column_numbers) == len(table.columns) else {}
    found: dict[str, dict[str, Any]] = {}
    for column in plan.columns:
        how: dict[str, Any] = {}
        number = numbers.get(column.source.name)
        if number is not None:
            how[_NUMBER] = number
        if types:
            how[_TYPE] = column.source.type
        if column.transform == "hash":
            how[_HASH] = mark
        if column.rule.startswith("cast_"):
            how[_CAST] = column.rule.removeprefix("cast_")
        found[column.name] = how
    return found


def what_changed(before: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """Why a column derived as `before` at the last load is not derived the same way now, or
    None. An attribute number missing on either side (a state or a catalog snapshot from
    before they were kept) is not compared."""
    if _NUMBER in before and _NUMBER in now and before[_NUMBER] != now[_NUMBER]:
        return ("another PostgreSQL column has its name now (dropped and added again, or "
                "renamed)")
    if _TYPE in before and _TYPE in now and before[_TYPE] != now[_TYPE]:
        # `ALTER COLUMN … TYPE … USING` may change every value, whatever the destination's
        # type does (varchar(10) → varchar(5) USING left(…), int → bigint USING n * 10).
        return f"its PostgreSQL type changed ({before[_TYPE]} → {now[_TYPE]})"
    if (_HASH in before) != (_HASH in now):
        return "hashed now" if _HASH in now else "no longer hashed"
    if before.get(_HASH) != now.get(_HASH):
        return "the hash salt changed"
    if before.get(_CAST) != now.get(_CAST):
        cast = now.get(_CAST)
        return f"cast to {cast} now" if cast else "no longer cast"
    return None
