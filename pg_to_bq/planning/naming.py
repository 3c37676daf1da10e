"""Deterministic, collision-free names for the destination and for Dagster.

Destination names keep PostgreSQL's names wherever BigQuery and DuckDB accept them
(Unicode letters and digits included, so Japanese names stay Japanese). A character
neither accepts becomes `_`, a leading digit gets a `_` prefix, and a name dlt reserves
gets a `src` prefix. Both destinations compare names without case, so after that two
different sources can meet in one name (`"CamelCol"` and `camelcol`, `"a b"` and `a_b`).

The rule for such a meeting (`unique_names`), applied per table for columns and per
dataset for tables, depends only on the set of names, never on their order in PostgreSQL:

1. the source whose name needed no change and is written in lower case keeps the name;
   otherwise the source that needed no change; otherwise the first in code-point order;
2. every other source gets `_` and the first 6 hex digits of the SHA-1 of its PostgreSQL
   name appended (`CamelCol_5b1c0e`), cut to the length limit; should that name be taken
   too, more digits are used.

Every renaming is reported (discover, sync, the asset's metadata). Dagster op, group and
pool names only allow `[A-Za-z0-9_]`, so those get an ASCII form with a short hash of the
original whenever characters had to be replaced.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# BigQuery's limits: 1,024 characters for a table name, 300 for a column name.
MAX_TABLE_NAME = 1024
MAX_COLUMN_NAME = 300
_ASCII_NAME = re.compile(r"^[A-Za-z0-9_]+$")
RESERVED_PREFIXES = ("_dlt_", "_table_", "_file_", "_partition", "_row_timestamp", "_pg_to_bq_")
# The column a table with soft deletes gets in the destination: when the row was found
# deleted in PostgreSQL (NULL while it is not), instead of deleting it.
SOFT_DELETE_COLUMN = "_pg_to_bq_deleted_at"
SOFT_DELETE_DESCRIPTION = "when pg_to_bq found the row deleted in PostgreSQL (NULL while it is not)"
SUFFIX_DIGITS = 6


def _is_allowed(char: str) -> bool:
    return char == "_" or unicodedata.category(char)[0] in ("L", "N", "M")


def destination_name(source: str, max_length: int = MAX_COLUMN_NAME) -> str:
    """The destination identifier for a PostgreSQL table or column name, before collisions.

    Unicode letters, marks, digits and `_` are kept; every other character becomes `_`;
    a leading digit gets a `_` prefix (BigQuery's rule); names dlt reserves get a `src`
    prefix; a name that is too long is cut and given a short hash of the original.
    """
    if _ASCII_NAME.fullmatch(source):  # the common case: nothing to normalize or replace
        cleaned = source
    else:
        normalized = unicodedata.normalize("NFC", source)
        cleaned = "".join(c if _is_allowed(c) else "_" for c in normalized)
    if not cleaned or cleaned[0].isdigit():
        cleaned = "_" + cleaned
    if cleaned.lower().startswith(RESERVED_PREFIXES):
        cleaned = "src" + cleaned
    if len(cleaned) > max_length:
        cleaned = cleaned[: max_length - 9] + "_" + _short_hash(source)
    return cleaned


@dataclass(frozen=True)
class Renaming:
    """A source whose destination name is not its PostgreSQL name, and why."""

    source: str
    target: str
    reason: str

    def describe(self) -> str:
        return f"`{self.source}` → `{self.target}` ({self.reason})"


def unique_names(sources: Iterable[str], max_length: int = MAX_COLUMN_NAME,
                 natural: Callable[[str], str] | None = None
                 ) -> tuple[dict[str, str], list[Renaming]]:
    """Destination names for `sources`, distinct without regard to case (the module's rule).

    `natural(source)` is the name a source would have before any change (for a table
    outside `public`, `schema__table`); by default the source itself. Returns the name of
    each source and the renamings: characters replaced, and collisions resolved with a
    suffix (their reason names the source that kept the name).
    """
    natural = natural or (lambda source: source)
    sources = list(dict.fromkeys(sources))
    wanted = {s: natural(s) for s in sources}
    base = {s: destination_name(wanted[s], max_length) for s in sources}
    meeting: dict[str, list[str]] = {}
    for source in sources:
        meeting.setdefault(base[source].casefold(), []).append(source)
    names: dict[str, str] = {}
    taken = set(meeting)
    renamings: list[Renaming] = []
    for group in meeting.values():
        keeper, *others = sorted(group, key=lambda s: (base[s] != wanted[s],
                                                       wanted[s] != wanted[s].lower(), s))
        names[keeper] = base[keeper]
        for source in others:
            target = _suffixed(base[source], source, max_length, taken)
            taken.add(target.casefold())
            names[source] = target
            renamings.append(Renaming(
                source, target, f"`{keeper}` is loaded as `{base[keeper]}`; names differing "
                                "only in case or punctuation would meet in the destination"))
    suffixed = {r.source for r in renamings}
    for source in sources:
        if source not in suffixed and names[source] != wanted[source]:
            renamings.append(Renaming(source, names[source],
                                      _why_changed(wanted[source], names[source])))
    return {s: names[s] for s in sources}, renamings


def _suffixed(name: str, source: str, max_length: int, taken: set[str]) -> str:
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()
    for digits in range(SUFFIX_DIGITS, len(digest) + 1, 2):
        suffix = "_" + digest[:digits]
        candidate = name[: max_length - len(suffix)] + suffix
        if candidate.casefold() not in taken:
            return candidate
    raise ValueError(f"no free destination name for {source!r}")  # 2**160 names taken


def _why_changed(source: str, target: str) -> str:
    if target.startswith("src") and source.lower().startswith(RESERVED_PREFIXES):
        return "dlt reserves names starting with " + source[:5]
    if target.startswith("_") and source[:1].isdigit():
        return "a name may not start with a digit"
    if len(target) < len(source) or target.endswith(_short_hash(source)):
        return "too long for the destination"
    return "characters the destination does not accept became _"


def dagster_name(*parts: str) -> str:
    """An ASCII name for ops, groups and pools, unique per input thanks to a hash when needed."""
    joined = "__".join(parts)
    if _ASCII_NAME.fullmatch(joined) and not joined[0].isdigit():
        return joined
    ascii_form = re.sub(r"[^A-Za-z0-9_]", "_", unicodedata.normalize("NFKD", joined))
    ascii_form = re.sub(r"_+", "_", ascii_form).strip("_") or "table"
    if ascii_form[0].isdigit():
        ascii_form = "_" + ascii_form
    return f"{ascii_form[:80]}_{_short_hash(joined)}"


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
