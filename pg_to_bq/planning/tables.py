"""Per-table load plans: pure functions from catalog tables, settings and overrides.

A plan says everything about loading one table — destination names, the column type
map, write disposition, primary key, cursor, partitions, excluded and hashed columns —
so the assets, the CLI and the docs all show the same decisions.

Nothing about one table stops another: an override that does not fit a table (a column
it no longer has, merge without a key) gives that table a plan with an `error`, which
the table's load reports; every other table plans and loads as usual.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from pg_to_bq.planning.catalog import Catalog, Table
from pg_to_bq.planning.naming import (
    MAX_COLUMN_NAME,
    MAX_TABLE_NAME,
    SOFT_DELETE_COLUMN,
    Renaming,
    dagster_name,
    unique_names,
)
from pg_to_bq.planning.overrides import Overrides, PartitionSpec, TableOverride
from pg_to_bq.planning.sensitive import sensitive_reason
from pg_to_bq.planning.settings import PREFIX, Settings, SettingsError
from pg_to_bq.planning.types import ColumnMapping, map_column

CURSOR_NAMES = ("updated_at", "modified_at", "last_modified", "last_updated", "updated_on",
                "modified_on", "update_time", "updated", "modified")
CURSOR_TYPES = ("timestamptz", "timestamp", "date", "int8", "int4")
# What a table with soft deletes says of them (discover, the asset's plan and metadata).
SOFT_DELETES_NOTE = (f"soft deletes: rows deleted in PostgreSQL stay, marked in "
                     f"{SOFT_DELETE_COLUMN} (WHERE {SOFT_DELETE_COLUMN} IS NULL: the rows "
                     "PostgreSQL has)")


# `map_column` is pure and its result immutable; equal columns recur across tables (`id bigint`,
# `created_at timestamptz`, ...), so a large catalog maps each distinct column once.
_map_column = functools.lru_cache(maxsize=16384)(map_column)


class PlanError(ValueError):
    """An override does not fit the table (unknown column, no key for merge, ...)."""


@dataclass(frozen=True)
class LeftOut:
    """A source column that is not loaded as it is: excluded, or replaced by a hash."""

    column: str
    action: str  # "excluded" or "hashed"
    reason: str
    setting: str  # the setting that decides it, and how to change it

    def describe(self) -> str:
        return f"{self.column}: {self.action}, {self.reason} ({self.setting})"


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
    left_out: tuple[LeftOut, ...] = ()
    notes: tuple[str, ...] = ()
    bigquery_partition: str | None = None
    bigquery_cluster: tuple[str, ...] = ()
    # Columns and the table whose destination name is not their PostgreSQL name.
    renamings: tuple[Renaming, ...] = ()
    table_renaming: Renaming | None = None
    # Why this table cannot be loaded as configured; its load fails with this message.
    error: str | None = None
    # The tables file's freshness: a window, False (never stale), None (from the schedule).
    freshness: timedelta | bool | None = None
    # Rows deleted in PostgreSQL stay, with `SOFT_DELETE_COLUMN` set (a primary key needed).
    soft_deletes: bool = False
    # Up to this size on disk, a merged table is read whole when its rows change
    # (`reads_whole`); 0: merged by its cursor whatever its size.
    read_whole_bytes: int = 0

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
        """Merged by its cursor: each run reads the rows at or after the last load's cursor
        (less the lookback) and merges them by key."""
        return self.disposition == "merge" and self.cursor is not None and not self.reads_whole

    @property
    def reads_whole(self) -> bool:
        """A small merged table with a cursor, read whole and replaced whenever its rows
        change (and not read when they did not: its row versions say so), rather than
        merged by its cursor: exact with no delete pass and no cursor to trust (a delete, an
        update that left `updated_at` alone), and cheaper on a night most small tables
        change (see `DEFAULT_READ_WHOLE_BYTES`). Tables with row versions only (views have
        none), and only when the tables file did not ask for `disposition: merge`."""
        size = self.table.size_bytes
        return self.disposition == "merge" and self.cursor is not None \
            and self.table.has_row_versions and size is not None \
            and size <= self.read_whole_bytes

    def describe_disposition(self, long: bool = False) -> str:
        """The disposition in a few words (the CLI's `discover`), or a sentence (`long`: the
        asset's plan)."""
        if not self.reads_whole:
            by = " (incremental by cursor)" if long else " (incremental)"
            return self.disposition + (by if self.incremental else "")
        if not long:
            return "whole when changed"
        kept = ("merged whole, the rows PostgreSQL no longer has marked deleted"
                if self.soft_deletes else "replaced")
        return (f"read whole when its rows change, and {kept}: it is small "
                f"({_megabytes(self.table.size_bytes)} on disk, up to {PREFIX}READ_WHOLE_BYTES "
                f"{_megabytes(self.read_whole_bytes)}), and a whole read takes every change "
                f"(a delete, an update that left {self.cursor} alone) for less than a merge by "
                f"cursor; above that size, merged by cursor {self.cursor}")

    @property
    def excluded(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.left_out if c.action == "excluded")

    @property
    def hashed(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.left_out if c.action == "hashed")

    @property
    def loadable(self) -> bool:
        return self.error is None and bool(self.columns)

    def column_for(self, source_name: str) -> ColumnMapping:
        for column in self.columns:
            if column.source.name == source_name:
                return column
        raise KeyError(source_name)

    @property
    def destination_primary_key(self) -> tuple[str, ...]:
        return tuple(self.column_for(c).name for c in self.primary_key)


def _megabytes(size: int | None) -> str:
    return f"{(size or 0) / 1024**2:.1f} MB"


def destination_table_base(table: Table) -> str:
    """`public` tables keep their name; other schemas prefix theirs (`sales__orders`)."""
    return table.name if table.schema == "public" else f"{table.schema}__{table.name}"


def build_plans(
    catalog: Catalog,
    destination: str,
    overrides: Overrides | None = None,
) -> list[TablePlan]:
    """Plan every table of `catalog` for `destination` (`duckdb` or `bigquery`).

    Destination table names are made distinct over the whole catalog (`naming`'s rule), so
    plan the full selection even to load a part of it. A table whose overrides do not fit
    gets a plan with `error` set; an entry of the tables file for a table not in `catalog`
    plans nothing (`unused_settings` says so).
    """
    overrides = overrides or Overrides()
    by_name = {t.qualified_name: t for t in catalog.tables}
    names, renamings = unique_names(by_name, MAX_TABLE_NAME,
                                    natural=lambda name: destination_table_base(by_name[name]))
    renamed = {r.source: r for r in renamings}
    plans = []
    for table in catalog.tables:
        name = table.qualified_name
        plans.append(plan_table(table, destination, overrides.for_table(name), overrides,
                                destination_table=names[name], table_renaming=renamed.get(name)))
    return plans


def _guarding_former_name(table: Table, overrides: Overrides) -> str | None:
    """A name `table` had before a rename whose tables-file entry excludes or hashes
    columns: loading it without that entry could put what the user kept out in the
    destination, where it cannot be taken back."""
    for former in reversed(table.former_names):
        entry = overrides.tables.get(former)
        if entry is not None and any(c.exclude or c.hash for c in entry.columns.values()):
            return former
    return None


def plan_table(
    table: Table,
    destination: str,
    override: TableOverride | None = None,
    overrides: Overrides | None = None,
    *,
    destination_table: str | None = None,
    table_renaming: Renaming | None = None,
) -> TablePlan:
    """The plan of one table; an override that does not fit gives a plan with `error`."""
    if destination_table is None:
        names, renamings = unique_names([table.qualified_name], MAX_TABLE_NAME,
                                        natural=lambda _: destination_table_base(table))
        destination_table = names[table.qualified_name]
        table_renaming = renamings[0] if renamings else None
    try:
        overrides = overrides or Overrides()
        name = table.qualified_name
        guarded = None if name in overrides.tables else _guarding_former_name(table, overrides)
        if guarded is not None:
            raise PlanError(
                f"{overrides.source}: table {name} was {guarded} (renamed in PostgreSQL), whose "
                f"entry excludes or hashes columns: not loaded until the entry is moved to "
                f"{name} (or {name} has an entry of its own)")
        return _plan_table(table, destination, override or TableOverride(),
                           overrides, destination_table, table_renaming)
    except PlanError as exc:
        return TablePlan(
            table=table, destination_table=destination_table, columns=(), disposition="replace",
            primary_key=(), cursor=None, lookback=timedelta(0), partition=None,
            scheduled=(override or TableOverride()).schedule, table_renaming=table_renaming,
            error=str(exc))


def _plan_table(
    table: Table,
    destination: str,
    override: TableOverride,
    overrides: Overrides,
    destination_table: str,
    table_renaming: Renaming | None,
) -> TablePlan:
    where = f"{overrides.source}: table {table.qualified_name}"
    column_names = {c.name for c in table.columns}
    for name in override.columns:
        if name not in column_names:
            raise PlanError(f"{where}: column {name!r} does not exist (remove it from the file)")

    notes: list[str] = []
    left_out: list[LeftOut] = []
    kept = []
    primary_key = override.primary_key if override.primary_key is not None else table.primary_key
    for column in table.columns:
        column_override = override.columns.get(column.name)
        if column_override is None and overrides.sensitive_columns \
                and column.name not in primary_key:
            reason = sensitive_reason(column)
            if reason is not None:
                left_out.append(LeftOut(
                    column.name, "excluded", reason,
                    f"the sensitive-column rule; to load it, set columns: {{{column.name}: "
                    f"{{exclude: false}}}} for {table.qualified_name} in PG_TO_BQ_TABLES_FILE, "
                    "or defaults: {sensitive_columns: false}"))
                continue
        if column_override and column_override.exclude:
            left_out.append(LeftOut(column.name, "excluded", "excluded in the tables file",
                                    f"{overrides.source}: columns.{column.name}.exclude"))
            continue
        if column_override and column_override.hash:
            left_out.append(LeftOut(column.name, "hashed", "loaded as a salted SHA-256",
                                    f"{overrides.source}: columns.{column.name}.hash"))
        kept.append((column, column_override))
    names, renamings = unique_names((c.name for c, _ in kept), MAX_COLUMN_NAME)
    mappings = [_map_column(column, names[column.name], destination, column_override)
                for column, column_override in kept]

    excluded = {c.column for c in left_out if c.action == "excluded"}
    hashed = {c.column for c in left_out if c.action == "hashed"}
    for name in primary_key:
        if name not in column_names:
            raise PlanError(f"{where}: primary_key column {name!r} does not exist")
        if name in excluded or name in hashed:
            raise PlanError(f"{where}: primary_key column {name!r} cannot be excluded or hashed")

    cursor = override.cursor if override.cursor is not None else detect_cursor(table)
    if cursor is not None:
        if cursor not in column_names:
            raise PlanError(f"{where}: cursor column {cursor!r} does not exist "
                            "(set another cursor, or remove the cursor setting)")
        if cursor in excluded:
            raise PlanError(f"{where}: cursor column {cursor!r} cannot be excluded")

    disposition = override.disposition or ("merge" if primary_key and cursor else "replace")
    # A key two rows of a read may share (an inheritance parent's) merges one over the
    # other: such a table is replaced unless the tables file says otherwise.
    shared_key = bool(table.inherited_by and primary_key) and override.disposition is None \
        and override.partition is None
    if shared_key and disposition == "merge":
        disposition = "replace"
        notes.append(inheritance_note(table, primary_key, overrides.source))
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
    soft_deletes = override.soft_deletes if override.soft_deletes is not None \
        else bool(overrides.soft_deletes)
    if soft_deletes and not primary_key:
        notes.append("soft deletes need a primary key (set primary_key): rows deleted in "
                     "PostgreSQL leave this table when it is next read whole")
        soft_deletes = False
    elif soft_deletes and shared_key:
        notes.append("soft deletes need a key unique across the tables that inherit from it "
                     "(see disposition): rows deleted in PostgreSQL leave this table when it "
                     "is next read whole")
        soft_deletes = False
    elif soft_deletes:
        notes.append(SOFT_DELETES_NOTE)
    if table.foreign_parts:
        notes.append(foreign_note(table, merged=disposition == "merge" and cursor is not None))
    if not table.columns:
        notes.append("the table has no columns: it is reported and skipped")
    elif not mappings:
        notes.append("every column is excluded: the table is reported and skipped")
    return TablePlan(
        table=table,
        destination_table=destination_table,
        columns=tuple(mappings),
        disposition=disposition,
        primary_key=tuple(primary_key),
        cursor=cursor,
        lookback=override.lookback or overrides.lookback,
        partition=override.partition,
        scheduled=override.schedule,
        left_out=tuple(left_out),
        notes=tuple(notes),
        bigquery_partition=override.bigquery_partition,
        bigquery_cluster=override.bigquery_cluster,
        renamings=tuple(renamings),
        table_renaming=table_renaming,
        freshness=override.freshness,
        soft_deletes=soft_deletes,
        # The tables file's `disposition: merge` (or partitions) is the user's word: merged.
        read_whole_bytes=0 if override.disposition is not None or override.partition
        is not None else overrides.read_whole_bytes,
    )


def inheritance_note(table: Table, primary_key: Sequence[str], source: str) -> str:
    """Why an inheritance parent is replaced, not merged by its primary key."""
    children = first_names(table.inherited_by)
    key = ", ".join(primary_key)
    source = "the tables file (PG_TO_BQ_TABLES_FILE)" if source.startswith("(") else source
    return (f"an inheritance parent: a read of it returns the rows of the tables that inherit "
            f"from it ({children}) too, and PostgreSQL keeps its key ({key}) unique within each "
            "table, not across them: replaced whenever its rows change, not merged by a key "
            "two of its rows may share (set disposition: merge for "
            f"{table.qualified_name} in {source} if the key is unique across them)")


def first_names(names: Sequence[str]) -> str:
    """The first five of `names`, and `...` for more."""
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def foreign_note(table: Table, merged: bool) -> str:
    """Why a table with foreign partitions (or inheriting foreign tables) is read every run."""
    one = len(table.foreign_parts) == 1
    text = (f"{first_names(table.foreign_parts)} "
            f"{'is a foreign table' if one else 'are foreign tables'}, whose rows have "
            "no row versions: the table is never found unchanged, it is read every run")
    if merged:
        text += ("; merged by its cursor (above PG_TO_BQ_READ_WHOLE_BYTES), a change to a row "
                 "there is seen by its cursor alone")
    return text


def replan(plan: TablePlan, live: Table, destination: str, overrides: Overrides) -> TablePlan:
    """`plan` again for the table's live columns (a run loads what PostgreSQL has now, not
    what the snapshot said), keeping its destination table name."""
    if plan.table.former_names and not live.former_names:
        live = dataclasses.replace(live, former_names=plan.table.former_names)
    if live == plan.table:
        return plan
    return plan_table(live, destination, overrides.for_table(live.qualified_name), overrides,
                      destination_table=plan.destination_table,
                      table_renaming=plan.table_renaming)


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


def plans_for(settings: Settings, catalog: Catalog) -> list[TablePlan]:
    """Select tables by the include/exclude settings and plan them.

    Raises:
        SettingsError: no `PG_TO_BQ_INCLUDE` pattern matches a table (a pattern matching
            none while others match is said by `unused_settings`).
    """
    if catalog.tables and settings.include:
        unmatched = catalog.unmatched_patterns(settings.include)
        if len(unmatched) == len(settings.include):
            raise SettingsError(
                f"{PREFIX}INCLUDE pattern(s) {unmatched} match no table; tables look like "
                f"{', '.join(t.qualified_name for t in catalog.tables[:3])}"
            )
    selected = catalog.select(settings.include, settings.exclude)
    return build_plans(selected, settings.destination.kind, settings.overrides())


def unused_settings(settings: Settings, catalog: Catalog) -> list[str]:
    """What the settings name that selects no table of `catalog`, a sentence each (a table
    renamed since is named with its new name).

    Said (the CLI's warnings, the catalog asset's description and metadata, the code
    location's log), never fatal: a table renamed or dropped in PostgreSQL, or one the
    catalog snapshot does not have yet, must not stop every other table's load.
    """
    if not catalog.tables:
        return []
    said = [f"{PREFIX}INCLUDE pattern {p!r} matches no table: it selects nothing (check "
            "the name)"
            for p in catalog.unmatched_patterns(settings.include)]
    overrides = settings.overrides()
    if overrides.tables:
        selected = {t.qualified_name for t in catalog.select(settings.include, settings.exclude)
                    .tables}
        present = {t.qualified_name for t in catalog.tables}
        for name in overrides.tables:
            if name in selected:
                continue
            renamed = next((t for t in catalog.tables if name in t.former_names), None)
            if name in present:
                why = f"is not selected ({PREFIX}INCLUDE / {PREFIX}EXCLUDE)"
            elif renamed is None:
                why = "is not in the catalog (renamed or dropped in PostgreSQL, or check the name)"
            elif renamed.qualified_name in overrides.tables:
                why = f"was renamed to {renamed.qualified_name} in PostgreSQL, which has its own"
            else:
                new_name = renamed.qualified_name
                then = (f"{new_name} is not loaded until then: the entry excludes or hashes "
                        "columns" if _guarding_former_name(renamed, overrides) == name
                        else f"{new_name} loads without it")
                why = f"was renamed to {new_name} in PostgreSQL (move its entry there: {then})"
            said.append(f"{overrides.source}: table {name} {why}: its entry is not used")
    return said


def unknown_tables(settings: Settings, catalog: Catalog, names: Sequence[str] = ()) -> list[str]:
    """The tables `names` (a command's) and the tables file name that `catalog` does not
    have at all: a rediscovery may find them (created or renamed since the snapshot)."""
    wanted = [*names, *settings.overrides().tables]
    return [n for n in wanted if not _finds(catalog, n)]


def _finds(catalog: Catalog, name: str) -> bool:
    try:
        catalog.find(name)
    except KeyError as exc:
        return "ambiguous" in str(exc)
    return True
