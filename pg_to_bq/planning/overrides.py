"""Per-table overrides from a YAML file (`PG_TO_BQ_TABLES_FILE`), validated when read.

    defaults:
      sensitive_columns: true        # hash/exclude columns named like password, token, secret
    tables:
      public.orders:
        disposition: merge           # replace | merge
        primary_key: [id]
        cursor: updated_at
        lookback: 1h                 # re-read rows whose cursor is this close to the last value
        partition: {column: created_at, granularity: day, start: 2024-01-01}
        schedule: false              # leave the table out of the nightly schedule
        bigquery: {partition: created_at, cluster: [customer_id]}
        columns:
          card_number: {exclude: true}
          email: {hash: true}
          valid_to: {cast: text}

Every error names the file, the table and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from pg_to_bq.planning.settings import DEFAULT_READ_WHOLE_BYTES
from pg_to_bq.planning.types import ColumnOverride

DISPOSITIONS = ("replace", "merge")
GRANULARITIES = ("day", "month")
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class OverridesError(ValueError):
    """The tables file is malformed; the message names the file, table and field."""


@dataclass(frozen=True)
class PartitionSpec:
    column: str
    granularity: str
    start: date


@dataclass(frozen=True)
class TableOverride:
    disposition: str | None = None
    primary_key: tuple[str, ...] | None = None
    cursor: str | None = None
    lookback: timedelta | None = None
    partition: PartitionSpec | None = None
    schedule: bool = True
    columns: Mapping[str, ColumnOverride] = field(default_factory=dict)
    bigquery_partition: str | None = None
    bigquery_cluster: tuple[str, ...] = ()
    # How long the table may go without a load before it shows stale (Dagster's freshness
    # policy); False: never stale; None: derived from the schedule.
    freshness: timedelta | bool | None = None
    # Keep rows deleted in PostgreSQL, marked deleted (None: the default's choice).
    soft_deletes: bool | None = None


@dataclass(frozen=True)
class Overrides:
    tables: Mapping[str, TableOverride] = field(default_factory=dict)
    sensitive_columns: bool = True
    lookback: timedelta = timedelta(minutes=10)
    source: str = "(no tables file)"
    # The default for tables that do not say (None: `PG_TO_BQ_SOFT_DELETES` decides).
    soft_deletes: bool | None = None
    # `PG_TO_BQ_READ_WHOLE_BYTES` (`DEFAULT_READ_WHOLE_BYTES`; 0: every merged table by cursor).
    read_whole_bytes: int = DEFAULT_READ_WHOLE_BYTES

    def for_table(self, qualified_name: str) -> TableOverride:
        return self.tables.get(qualified_name, TableOverride())


def parse_duration(value: Any, where: str) -> timedelta:
    match = _DURATION.match(str(value).strip())
    if not match:
        raise OverridesError(f"{where}: {value!r} is not a duration like 10m, 1h or 2d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def load_overrides(path: Path | None) -> Overrides:
    """Read and validate the tables file; no file means no overrides."""
    if path is None:
        return Overrides()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise OverridesError(f"{path}: not valid YAML: {exc}") from exc
    return parse_overrides(data, str(path))


def parse_overrides(data: Any, source: str) -> Overrides:
    if not isinstance(data, dict):
        raise OverridesError(f"{source}: the top level must be a mapping with 'tables:'")
    unknown = set(data) - {"tables", "defaults"}
    if unknown:
        raise OverridesError(f"{source}: unknown top-level key(s) {sorted(unknown)}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise OverridesError(f"{source}: 'defaults' must be a mapping")
    unknown = set(defaults) - {"sensitive_columns", "lookback", "soft_deletes"}
    if unknown:
        raise OverridesError(f"{source}: defaults: unknown field(s) {sorted(unknown)}")
    tables_data = data.get("tables") or {}
    if not isinstance(tables_data, dict):
        raise OverridesError(f"{source}: 'tables' must map schema.table to its settings")
    tables = {
        name: _parse_table(spec or {}, f"{source}: table {name}")
        for name, spec in tables_data.items()
    }
    for name in tables:
        if "." not in name:
            raise OverridesError(f"{source}: table {name}: write the table as schema.table")
    return Overrides(
        tables=tables,
        sensitive_columns=_boolean(defaults.get("sensitive_columns", True),
                                   f"{source}: defaults.sensitive_columns"),
        lookback=parse_duration(defaults.get("lookback", "10m"), f"{source}: defaults.lookback"),
        source=source,
        soft_deletes=_optional_boolean(defaults.get("soft_deletes"),
                                       f"{source}: defaults.soft_deletes"),
    )


def _parse_table(spec: Any, where: str) -> TableOverride:
    if not isinstance(spec, dict):
        raise OverridesError(f"{where}: must be a mapping of fields")
    allowed = {"disposition", "primary_key", "cursor", "lookback", "partition", "schedule", "columns",
               "bigquery", "freshness", "soft_deletes"}
    unknown = set(spec) - allowed
    if unknown:
        raise OverridesError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(allowed)}")
    disposition = spec.get("disposition")
    if disposition is not None and disposition not in DISPOSITIONS:
        raise OverridesError(f"{where}: disposition {disposition!r} must be one of {DISPOSITIONS}")
    primary_key = spec.get("primary_key")
    if primary_key is not None:
        if isinstance(primary_key, str):
            primary_key = [primary_key]
        if not isinstance(primary_key, list) or not all(isinstance(c, str) for c in primary_key):
            raise OverridesError(f"{where}: primary_key must be a column name or a list of them")
        primary_key = tuple(primary_key)
    cursor = spec.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise OverridesError(f"{where}: cursor must be a column name")
    lookback = spec.get("lookback")
    bigquery = spec.get("bigquery") or {}
    if not isinstance(bigquery, dict) or set(bigquery) - {"partition", "cluster"}:
        raise OverridesError(f"{where}: bigquery takes partition (a column) and cluster (columns)")
    cluster = bigquery.get("cluster") or []
    if isinstance(cluster, str):
        cluster = [cluster]
    if not all(isinstance(c, str) for c in cluster) or len(cluster) > 4:
        raise OverridesError(f"{where}: bigquery.cluster must list up to 4 column names")
    return TableOverride(
        disposition=disposition,
        primary_key=primary_key,
        cursor=cursor,
        lookback=parse_duration(lookback, f"{where}: lookback") if lookback is not None else None,
        partition=_parse_partition(spec.get("partition"), f"{where}: partition"),
        schedule=_boolean(spec.get("schedule", True), f"{where}: schedule"),
        columns=_parse_columns(spec.get("columns") or {}, where),
        bigquery_partition=bigquery.get("partition"),
        bigquery_cluster=tuple(cluster),
        freshness=_parse_freshness(spec.get("freshness"), f"{where}: freshness"),
        soft_deletes=_optional_boolean(spec.get("soft_deletes"), f"{where}: soft_deletes"),
    )


def _optional_boolean(value: Any, where: str) -> bool | None:
    return None if value is None else _boolean(value, where)


def _parse_freshness(value: Any, where: str) -> timedelta | bool | None:
    """`false` (never stale), a duration (stale after that long without a load), or unset."""
    if value is None:
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() in ("false", "off")):
        return False
    if value is True:
        return None
    duration = parse_duration(value, where)
    if duration < timedelta(minutes=1):
        raise OverridesError(f"{where}: {value!r} is shorter than a minute (Dagster's shortest)")
    return duration


def _parse_partition(spec: Any, where: str) -> PartitionSpec | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or "column" not in spec or "start" not in spec:
        raise OverridesError(f"{where}: needs column, granularity (day or month) and start")
    granularity = spec.get("granularity", "day")
    if granularity not in GRANULARITIES:
        raise OverridesError(f"{where}: granularity {granularity!r} must be day or month")
    start = spec["start"]
    if isinstance(start, str):
        try:
            start = date.fromisoformat(start)
        except ValueError:
            raise OverridesError(f"{where}: start {start!r} is not a date (YYYY-MM-DD)") from None
    if not isinstance(start, date):
        raise OverridesError(f"{where}: start must be a date (YYYY-MM-DD)")
    return PartitionSpec(column=str(spec["column"]), granularity=granularity, start=start)


def _parse_columns(spec: Any, where: str) -> dict[str, ColumnOverride]:
    if not isinstance(spec, dict):
        raise OverridesError(f"{where}: columns must map column names to settings")
    columns: dict[str, ColumnOverride] = {}
    for name, options in spec.items():
        here = f"{where}: column {name}"
        if not isinstance(options, dict):
            raise OverridesError(f"{here}: must be a mapping such as {{exclude: true}}")
        unknown = set(options) - {"exclude", "hash", "cast"}
        if unknown:
            raise OverridesError(f"{here}: unknown field(s) {sorted(unknown)}")
        cast = options.get("cast")
        if cast is not None and cast not in ("text", "json"):
            raise OverridesError(f"{here}: cast {cast!r} must be text or json")
        override = ColumnOverride(
            exclude=_boolean(options.get("exclude", False), f"{here}: exclude"),
            hash=_boolean(options.get("hash", False), f"{here}: hash"),
            cast=cast,
        )
        if sum([override.exclude, override.hash, override.cast is not None]) > 1:
            raise OverridesError(f"{here}: choose one of exclude, hash or cast")
        columns[str(name)] = override
    return columns


def _boolean(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise OverridesError(f"{where}: {value!r} must be true or false")
