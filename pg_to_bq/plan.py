"""Per-table load plans: pure functions from catalog tables, settings and overrides.

A plan says everything about loading one table — destination names, the column type
map, write disposition, primary key, cursor, partitions, excluded and hashed columns —
so the assets, the CLI and the docs all show the same decisions.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from pg_to_bq.catalog import Catalog, Table
from pg_to_bq.naming import (
    MAX_TABLE_NAME,
    check_unique,
    dagster_name,
    destination_name,
)
from pg_to_bq.overrides import Overrides, PartitionSpec, TableOverride
from pg_to_bq.typemap import ColumnMapping, ColumnOverride, map_column

CURSOR_NAMES = ("updated_at", "modified_at", "last_modified", "last_updated", "updated_on",
                "modified_on", "update_time", "updated", "modified")
CURSOR_TYPES = ("timestamptz", "timestamp", "date", "int8", "int4")
SENSITIVE = re.compile(r"(pass(word|wd)?|secret|token|api_?key|private_?key)", re.IGNORECASE)


# `map_column` is pure and its result immutable; equal columns recur across tables (`id bigint`,
# `created_at timestamptz`, ...), so a large catalog maps each distinct column once.
_map_column = functools.lru_cache(maxsize=16384)(map_column)


class PlanError(ValueError):
    """An override does not fit the table (unknown column, no key for merge, ...)."""


@dataclass(frozen=True)
class TablePlan:
    """How one table is loaded."""

    table: Table
    destination_table: str
    columns: tuple[ColumnMapping, ...]
    disposition: str
    primary_key: tuple[str, ...]
    cursor: str | None
    lookback: timedelta
    partition: PartitionSpec | None
    scheduled: bool
    excluded: tuple[str, ...]
    hashed: tuple[str, ...]
    notes: tuple[str, ...] = ()
    bigquery_partition: str | None = None
    bigquery_cluster: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.table.qualified_name

    @property
    def op_name(self) -> str:
        return dagster_name("load", self.table.schema, self.table.name)

    @property
    def pipeline_name(self) -> str:
        return dagster_name("pg_to_bq", self.table.schema, self.table.name)

    @property
    def group_name(self) -> str:
        return dagster_name(self.table.schema)

    @property
    def incremental(self) -> bool:
        return self.disposition == "merge" and self.cursor is not None

    def column_for(self, source_name: str) -> ColumnMapping:
        for column in self.columns:
            if column.source.name == source_name:
                return column
        raise KeyError(source_name)

    @property
    def destination_primary_key(self) -> tuple[str, ...]:
        return tuple(self.column_for(c).name for c in self.primary_key)


def destination_table_name(table: Table) -> str:
    """`public` tables keep their name; other schemas prefix theirs (`sales__orders`)."""
    if table.schema == "public":
        return destination_name(table.name, MAX_TABLE_NAME)
    return destination_name(f"{table.schema}__{table.name}", MAX_TABLE_NAME)


def build_plans(
    catalog: Catalog,
    destination: str,
    overrides: Overrides | None = None,
) -> list[TablePlan]:
    """Plan every table of `catalog` for `destination` (`duckdb` or `bigquery`).

    Raises:
        NameCollisionError: two tables or two columns would share a destination name.
        PlanError: an override names something the table does not have.
    """
    overrides = overrides or Overrides()
    plans = [plan_table(t, destination, overrides.for_table(t.qualified_name), overrides)
             for t in catalog.tables]
    check_unique(((p.name, p.destination_table) for p in plans), "destination tables")
    check_unique(((p.name, p.op_name) for p in plans), "Dagster op names")
    unknown = set(overrides.tables) - {t.qualified_name for t in catalog.tables}
    if unknown:
        raise PlanError(
            f"{overrides.source}: table(s) {sorted(unknown)} are not in the catalog "
            "(check the name, or the include/exclude settings)"
        )
    return plans


def plan_table(
    table: Table,
    destination: str,
    override: TableOverride | None = None,
    overrides: Overrides | None = None,
) -> TablePlan:
    override = override or TableOverride()
    overrides = overrides or Overrides()
    where = f"{overrides.source}: table {table.qualified_name}"
    column_names = {c.name for c in table.columns}
    for name in override.columns:
        if name not in column_names:
            raise PlanError(f"{where}: column {name!r} does not exist")

    notes: list[str] = []
    excluded: list[str] = []
    hashed: list[str] = []
    mappings: list[ColumnMapping] = []
    primary_key = override.primary_key if override.primary_key is not None else table.primary_key
    for column in table.columns:
        column_override = override.columns.get(column.name)
        if (column_override is None and overrides.sensitive_columns
                and SENSITIVE.search(column.name) and column.name not in primary_key):
            column_override = ColumnOverride(exclude=True)
            notes.append(f"{column.name}: excluded by the sensitive-column rule")
        if column_override and column_override.exclude:
            excluded.append(column.name)
            continue
        if column_override and column_override.hash:
            hashed.append(column.name)
        mappings.append(_map_column(column, destination_name(column.name), destination,
                                    column_override))
    check_unique(((m.source.name, m.name) for m in mappings),
                 f"columns of {table.qualified_name}")

    for name in primary_key:
        if name not in column_names:
            raise PlanError(f"{where}: primary_key column {name!r} does not exist")
        if name in excluded or name in hashed:
            raise PlanError(f"{where}: primary_key column {name!r} cannot be excluded or hashed")

    cursor = override.cursor if override.cursor is not None else detect_cursor(table)
    if cursor is not None:
        if cursor not in column_names:
            raise PlanError(f"{where}: cursor column {cursor!r} does not exist")
        if cursor in excluded:
            raise PlanError(f"{where}: cursor column {cursor!r} cannot be excluded")

    disposition = override.disposition or ("merge" if primary_key and cursor else "replace")
    if disposition == "merge" and not primary_key:
        raise PlanError(f"{where}: disposition merge needs a primary key (set primary_key)")
    if disposition == "replace":
        cursor = None if override.cursor is None else cursor
    if override.partition is not None:
        if override.partition.column not in column_names:
            raise PlanError(f"{where}: partition column {override.partition.column!r} does not exist")
        if not primary_key:
            raise PlanError(f"{where}: partitions merge by primary key; this table has none")
        disposition = "merge"
    for name in (override.bigquery_partition, *override.bigquery_cluster):
        if name is not None and (name not in column_names or name in excluded):
            raise PlanError(f"{where}: bigquery partition/cluster column {name!r} is not loaded")
    if not table.columns:
        notes.append("the table has no columns: it is reported and skipped")
    return TablePlan(
        table=table,
        destination_table=destination_table_name(table),
        columns=tuple(mappings),
        disposition=disposition,
        primary_key=tuple(primary_key),
        cursor=cursor,
        lookback=override.lookback or overrides.lookback,
        partition=override.partition,
        scheduled=override.schedule,
        excluded=tuple(excluded),
        hashed=tuple(hashed),
        notes=tuple(notes),
        bigquery_partition=override.bigquery_partition,
        bigquery_cluster=override.bigquery_cluster,
    )


def detect_cursor(table: Table) -> str | None:
    """A column named like an update timestamp (updated_at, modified_at, ...), if any."""
    by_name = {c.name.lower(): c for c in table.columns}
    for candidate in CURSOR_NAMES:
        column = by_name.get(candidate)
        if column is not None and (column.base_type_name or column.type_name) in CURSOR_TYPES:
            return column.name
    return None


def select_plans(plans: Sequence[TablePlan], names: Sequence[str]) -> list[TablePlan]:
    """The plans for `names` (schema.table or an unambiguous bare name), in that order."""
    catalog = Catalog(tables=tuple(p.table for p in plans))
    chosen = []
    for name in names:
        table = catalog.find(name)
        chosen.extend(p for p in plans if p.table is table)
    return chosen
