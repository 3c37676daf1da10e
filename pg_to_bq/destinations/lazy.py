"""A destination as a group's load needs it: its kind at once, pg_to_bq's own connection
for its questions where there is one without dlt (a DuckDB file,
`pg_to_bq.destinations.duckdb_session`), and dlt's destination only once something loads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pg_to_bq.destinations.duckdb_session import DuckDBFile, keeps_name

# DuckDB's buffer pool defaults to 80% of RAM and holds the loaded table's blocks, so the
# process grew with the table (1.3 GB at 5M rows); bounded, DuckDB spills to disk instead.
# 88 MB holds the row groups two threads build for a ~300-byte row (64 MB spilled ~100 MB and
# took 40% more CPU); wider rows get more (`pg_to_bq.destinations.duckdb_file`).
# Not keeping insertion order lets it insert with bounded memory (tables are unordered).
DUCKDB_GLOBAL_CONFIG = {"memory_limit": "88MB", "preserve_insertion_order": False}


def duckdb_global_config(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """DuckDB's settings for pg_to_bq's connections: its defaults, then the user's."""
    return {**DUCKDB_GLOBAL_CONFIG, **(settings or {})}


def check_settings(settings: Mapping[str, Any]) -> None:
    """Fail, naming the setting, when DuckDB refuses one of the user's `settings`."""
    import duckdb as duckdb_engine

    try:
        duckdb_engine.connect(":memory:", config=dict(settings)).close()
    except duckdb_engine.Error as exc:
        raise ValueError(
            f"PG_TO_BQ_DESTINATION: DuckDB does not accept the settings {settings}: "
            f"{str(exc).splitlines()[0]}"
        ) from None


@dataclass
class LazyDestination:
    """See the module's docstring. `make` returns dlt's destination (called once)."""

    destination_name: str
    make: Callable[[], Any]
    duckdb_path: str | None = None
    duckdb_settings: Mapping[str, Any] = field(default_factory=dict)
    _made: Any = None

    def dlt(self) -> Any:
        if self._made is None:
            self._made = self.make()
        return self._made

    def queries(self, dataset: str) -> DuckDBFile | None:
        """pg_to_bq's own connection for `dataset`'s questions, or None where only a dlt
        pipeline can ask them (BigQuery, whose client libraries dlt's client uses anyway; a
        dataset name dlt changes)."""
        if self.destination_name != "duckdb" or not self.duckdb_path or not keeps_name(dataset):
            return None
        return DuckDBFile(self.duckdb_path, dataset, duckdb_global_config(self.duckdb_settings))


def lazy(destination: Any) -> LazyDestination:
    """`destination` (a `LazyDestination`, a dlt destination or its name) as a
    `LazyDestination`; pg_to_bq's DuckDB destination object keeps its own connection."""
    if isinstance(destination, LazyDestination):
        return destination
    name = getattr(destination, "destination_name", None)
    if name is None:  # a destination's name, which dlt resolves
        return LazyDestination(str(destination), lambda: destination)
    path = None
    if name == "duckdb":
        database = getattr(getattr(destination, "config_params", {}).get("credentials"),
                           "database", None)
        path = database if isinstance(database, str) and database != ":memory:" else None
    return LazyDestination(name, lambda: destination, path,
                           getattr(destination, "duckdb_settings", {}) or {})
