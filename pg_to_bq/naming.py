"""Deterministic, collision-checked names for the destination and for Dagster.

Destination names keep PostgreSQL's names wherever BigQuery and DuckDB accept them
(Unicode letters and digits included, so Japanese names stay Japanese). A character
neither accepts becomes `_`; when that happens two different sources could meet in
one name, which `check_unique` turns into an error naming both before anything loads.
Dagster op and group names only allow `[A-Za-z0-9_]`, so those get an ASCII form with
a short hash of the original whenever characters had to be replaced.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

# BigQuery's limits: 1,024 characters for a table name, 300 for a column name.
MAX_TABLE_NAME = 1024
MAX_COLUMN_NAME = 300
_ASCII_NAME = re.compile(r"^[A-Za-z0-9_]+$")
RESERVED_PREFIXES = ("_dlt_", "_table_", "_file_", "_partition", "_row_timestamp")


class NameCollisionError(ValueError):
    """Two different source names would land in one destination or Dagster name."""


def _is_allowed(char: str) -> bool:
    return char == "_" or unicodedata.category(char)[0] in ("L", "N", "M")


def destination_name(source: str, max_length: int = MAX_COLUMN_NAME) -> str:
    """The destination identifier for a PostgreSQL table or column name.

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


def check_unique(pairs: Iterable[tuple[str, str]], what: str) -> None:
    """Fail when two sources map to one target (compared case-insensitively, as BigQuery does).

    `pairs` holds (source name, target name).
    """
    seen: dict[str, str] = {}
    for source, target in pairs:
        key = target.casefold()
        if key in seen and seen[key] != source:
            raise NameCollisionError(
                f"{what}: {seen[key]!r} and {source!r} would both be loaded as {target!r}; "
                "rename one of them or exclude one in the settings"
            )
        seen[key] = source


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
