"""Discover a PostgreSQL database's tables in one query, and keep a snapshot of the result.

The code location is loaded often (the daemon and webserver reload it), so it reads the
snapshot written by the last deliberate refresh instead of querying PostgreSQL each time.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1



@dataclass(frozen=True)
class Column:
    """One column of a source table, as PostgreSQL describes it."""

    name: str
    type: str
    type_name: str
    type_kind: str = "b"
    type_category: str = ""
    type_schema: str = "pg_catalog"
    typmod: int = -1
    base_type: str | None = None
    base_type_name: str | None = None
    element_type_name: str | None = None
    element_type_kind: str | None = None
    dimensions: int = 0
    nullable: bool = True
    comment: str | None = None


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    referred_schema: str
    referred_table: str
    referred_columns: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """One source relation: a table, a partitioned table's parent, or (when asked) a view."""

    schema: str
    name: str
    kind: str = "r"
    comment: str | None = None
    # PostgreSQL's object id: it stays when a table is renamed (how a rename is told from a
    # dropped table and a new one).
    oid: int | None = None
    estimated_rows: int | None = None
    size_bytes: int | None = None
    columns: tuple[Column, ...] = ()
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    # Each column's attribute number, in the order of `columns` (empty in a snapshot written
    # before they were discovered). It stays when a column is renamed or changes type, and
    # is new when a column is dropped and one of the same name added
    # (`pg_to_bq.planning.derivation`).
    column_numbers: tuple[int, ...] = ()
    # The file(s) holding its rows (`pg_relation_filenode`, each leaf's for a partitioned
    # table): new when PostgreSQL rewrites the table (a type change whose `USING` changes
    # values, VACUUM FULL, TRUNCATE), the same otherwise.
    storage: str | None = None
    # The `schema.table` names it had before PostgreSQL renamed it, learned by comparing
    # oids with an earlier discovery (`with_former_names`) and kept from one to the next.
    former_names: tuple[str, ...] = ()
    # The `schema.table` names of the tables that INHERIT from it (classic inheritance, not
    # a partitioned table's partitions): a read of it returns their rows too, and PostgreSQL
    # keeps its primary key unique within each table, not across them.
    inherited_by: tuple[str, ...] = ()
    # The `schema.table` names of the foreign tables among its partitions or the tables
    # inheriting from it: their rows have no row versions (`xmin`, `ctid`; file_fdw's cannot
    # be asked them at all), so the table is read every run and never split by `ctid`.
    foreign_parts: tuple[str, ...] = ()

    @property
    def qualified_name(self) -> str:
        """`schema.table`, the name users write in settings and on the command line."""
        return f"{self.schema}.{self.name}"

    @property
    def has_row_versions(self) -> bool:
        """Ordinary and partitioned tables and materialized views have row versions
        (`ctid`, `xmin`: `pg_to_bq.postgres.row_versions`); views and foreign tables do not."""
        return self.kind in ("r", "p", "m")

    @property
    def rows_have_system_columns(self) -> bool:
        """Every row it returns can be asked its `ctid` and `xmin`: it has row versions and
        no foreign partition or inheriting foreign table (file_fdw's rows cannot answer)."""
        return self.has_row_versions and not self.foreign_parts

    @property
    def kind_label(self) -> str:
        return {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view",
                "f": "foreign table"}.get(self.kind, self.kind)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.qualified_name} has no column {name!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any],
                  columns: dict[tuple, Column] | None = None) -> Table:
        """A table from its JSON form. `columns`, shared across the tables of one catalog,
        interns equal columns (`id bigint NOT NULL` is the same in hundreds of tables), which
        makes reading a large catalog, and everything keyed by column later, cheaper."""
        return cls(
            schema=data["schema"],
            name=data["name"],
            kind=data.get("kind", "r"),
            comment=data.get("comment"),
            # (json_build_object writes an oid as a string)
            oid=int(data["oid"]) if data.get("oid") is not None else None,
            estimated_rows=data.get("estimated_rows"),
            size_bytes=data.get("size_bytes"),
            columns=tuple(_column(c, columns) for c in data.get("columns") or ()),
            column_numbers=tuple(int(n) for n in data.get("column_numbers") or ()),
            storage=data.get("storage"),
            former_names=tuple(data.get("former_names") or ()),
            inherited_by=tuple(data.get("inherited_by") or ()),
            foreign_parts=tuple(data.get("foreign_parts") or ()),
            primary_key=tuple(data.get("primary_key") or ()),
            foreign_keys=tuple(
                ForeignKey(
                    name=fk["name"],
                    columns=tuple(fk["columns"]),
                    referred_schema=fk["referred_schema"],
                    referred_table=fk["referred_table"],
                    referred_columns=tuple(fk["referred_columns"]),
                )
                for fk in data.get("foreign_keys") or ()
            ),
        )


def _column(data: dict[str, Any], interned: dict[tuple, Column] | None) -> Column:
    if interned is None:
        return Column(**data)
    key = tuple(data.items())
    try:
        column = interned.get(key)
    except TypeError:  # an unhashable value: build it without interning
        return Column(**data)
    if column is None:
        column = interned[key] = Column(**data)
    return column


def _table_json(table: Table) -> dict[str, Any]:
    """`dataclasses.asdict(table)`, without its deep copies (tuples serialize as lists)."""
    return {**vars(table), "columns": [vars(c) for c in table.columns],
            "foreign_keys": [vars(fk) for fk in table.foreign_keys]}


@dataclass(frozen=True)
class Catalog:
    """The tables of one database, as discovered at `discovered_at`."""

    tables: tuple[Table, ...]
    database: str = ""
    discovered_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def select(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Catalog:
        """Tables whose `schema.table` matches an include glob (all when none) and no exclude glob."""
        tables = tuple(
            t
            for t in self.tables
            if (not include or any(_matches(t, p) for p in include))
            and not any(_matches(t, p) for p in exclude)
        )
        return Catalog(tables=tables, database=self.database, discovered_at=self.discovered_at)

    def get(self, schema: str, name: str) -> Table | None:
        """The table `schema.name` (exact names), or None."""
        index = self.__dict__.get("_index")
        if index is None:
            index = {(t.schema, t.name): t for t in self.tables}
            object.__setattr__(self, "_index", index)
        return index.get((schema, name))

    def unmatched_patterns(self, patterns: Iterable[str]) -> list[str]:
        """The patterns that match no table (a typo in an include list should not pass silently)."""
        return [p for p in patterns if not any(_matches(t, p) for t in self.tables)]

    def find(self, name: str) -> Table:
        """Look a table up by `schema.table`, or by bare name when that is unambiguous."""
        exact = [t for t in self.tables if t.qualified_name == name]
        if exact:
            return exact[0]
        bare = [t for t in self.tables if t.name == name]
        if len(bare) == 1:
            return bare[0]
        if len(bare) > 1:
            options = ", ".join(t.qualified_name for t in bare)
            raise KeyError(f"table {name!r} is ambiguous: write one of {options}")
        raise KeyError(f"no table {name!r} in the catalog")

    def to_json(self) -> str:
        """The snapshot: one table a line (a rediscovery's diff shows the tables that changed),
        written by json's C encoder (an indented dump of 1,000 tables took ~0.7 s)."""
        header = json.dumps({"version": SNAPSHOT_VERSION, "database": self.database,
                             "discovered_at": self.discovered_at}, ensure_ascii=False)
        tables = ",\n".join(json.dumps(_table_json(t), ensure_ascii=False) for t in self.tables)
        return f'{header[:-1]}, "tables": [\n{tables}\n]}}\n'

    @classmethod
    def from_json(cls, text: str) -> Catalog:
        data = json.loads(text)
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"catalog snapshot version {data.get('version')} is not supported")
        columns: dict[tuple, Column] = {}
        return cls(
            tables=tuple(Table.from_dict(t, columns) for t in data["tables"]),
            database=data.get("database", ""),
            discovered_at=data.get("discovered_at", ""),
        )


def _matches(table: Table, pattern: str) -> bool:
    target = table.qualified_name if "." in pattern else table.name
    return fnmatch.fnmatchcase(target, pattern)






def with_former_names(live: Catalog, before: Catalog | None) -> Catalog:
    """`live`, where each table carries the names it had in `before` (an earlier discovery
    of the same database) and under earlier names still: a rename keeps PostgreSQL's oid.
    What the tables file says under a former name is not silently dropped (`plan_table`)."""
    if before is None:
        return live
    earlier = {t.oid: t for t in before.tables if t.oid is not None}
    tables = []
    for table in live.tables:
        old = earlier.get(table.oid) if table.oid is not None else None
        if old is not None:
            names = [*old.former_names]
            if old.qualified_name != table.qualified_name:
                names.append(old.qualified_name)
            names = [n for n in dict.fromkeys(names) if n != table.qualified_name]
            if tuple(names) != table.former_names:
                table = dataclasses.replace(table, former_names=tuple(names))
        tables.append(table)
    return dataclasses.replace(live, tables=tuple(tables))


def write_snapshot(catalog: Catalog, path: Path) -> None:
    """Write atomically, so a reader never sees half a snapshot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".catalog-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(catalog.to_json())
    os.replace(tmp, path)


def read_snapshot(path: Path) -> Catalog | None:
    """The snapshot at `path`, or None when there is none (or it cannot be read)."""
    if not path.is_file():
        return None
    try:
        return Catalog.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable catalog snapshot %s: %s", path, exc)
        return None
