"""Exact comparison of a PostgreSQL table with its copy, value for value.

Every column PostgreSQL has now is compared with the destination column of the same name
(columns dropped in PostgreSQL stay in the destination, by design, and are not compared);
rows are compared as a multiset, so keyless tables with duplicate rows compare too. Values
are put in one canonical form on both sides: numbers by value (`1.50` equals `1.5`, as
BigQuery's NUMERIC drops trailing zeros), timestamps as UTC instants, the rest as Python
gives them. Used by the regression tests and the migration fuzzer.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg


def canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, Decimal)):
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        return ("n", number.normalize() if number.is_finite() else str(number))
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return ("ts", value.isoformat())
        return ("tstz", value.astimezone(dt.UTC).isoformat())
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return str(value)  # DuckDB's copy holds a uuid as its text
    return value


def source_columns(url: str, table: str, schema: str = "public") -> list[str]:
    with psycopg.connect(url) as conn:
        return [name for (name,) in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", (_quoted([schema, table]).replace(", ", "."),)
        ).fetchall()]


def _quoted(names: Sequence[str]) -> str:
    return ", ".join('"' + n.replace('"', '""') + '"' for n in names)


def source_rows(url: str, table: str, columns: Sequence[str], schema: str = "public"
                ) -> Counter:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f'SELECT {_quoted(columns)} FROM "{schema}"."{table}"').fetchall()
    return Counter(tuple(canonical(v) for v in row) for row in rows)


def duckdb_rows(path: Path, dataset: str, table: str, columns: Sequence[str], where: str = ""
                ) -> Counter:
    with duckdb.connect(str(path), read_only=True) as conn:
        rows = conn.execute(f'SELECT {_quoted(columns)} FROM "{dataset}"."{table}" '
                            f'{where}').fetchall()
    return Counter(tuple(canonical(v) for v in row) for row in rows)


def differences(source: Counter, copy: Counter, limit: int = 5) -> str:
    """The rows only one side has (a few of each), or '' when both hold the same rows."""
    missing = list((source - copy).elements())
    extra = list((copy - source).elements())
    if not missing and not extra:
        return ""
    return (f"{len(missing)} source row(s) missing or different in the copy, e.g. "
            f"{missing[:limit]}; {len(extra)} row(s) only in the copy, e.g. {extra[:limit]}")


def assert_mirrored(url: str, table: str, read_copy: Callable[[Sequence[str]], Counter],
                    schema: str = "public") -> None:
    """The copy holds exactly the source table's rows in every column PostgreSQL has."""
    columns = source_columns(url, table, schema)
    problem = differences(source_rows(url, table, columns, schema), read_copy(columns))
    assert not problem, f"{schema}.{table}: {problem}"


def assert_mirrored_in_duckdb(url: str, path: Path, table: str, dataset: str = "raw",
                              schema: str = "public", live_only: bool = False) -> None:
    """... (`live_only`: the copy's rows not marked deleted, for a table with soft deletes)."""
    where = "WHERE _pg_to_bq_deleted_at IS NULL" if live_only else ""
    assert_mirrored(url, table,
                    lambda columns: duckdb_rows(path, dataset, table, columns, where), schema)
