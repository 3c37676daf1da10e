"""pg_to_bq's own connection to a DuckDB file, for the questions a load asks before (and
instead of) loading: the tables' columns, states, row counts and figures.

A step whose tables are all unchanged only asks questions; dlt is needed to load. Importing
dlt and making a pipeline cost ~0.7 s and ~50 MB in every process, the largest share of an
unchanged `pg-to-bq sync` after Dagster's own start; so a group asks through this
connection, and makes its dlt pipeline only when it has rows to load
(`pg_to_bq.load.group`).

The connection is set up as dlt's DuckDB client sets up its own (the same global settings:
UTC as the session time zone, which the text of a timestamp in the figures depends on;
pg_to_bq's memory bound; the user's settings), opened with the same (empty) connect
configuration, so that both share DuckDB's one database instance per file within the
process. `DuckDBFile` offers what pg_to_bq's query functions use of a dlt pipeline
(`sql_client()`, `destination.destination_name`), and its client what they use of dlt's
SQL client, so each of those functions takes either.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

# What dlt's DuckDB client sets on each connection it opens (dlt 1.x: `DuckDbSqlClient`),
# besides pg_to_bq's `DUCKDB_GLOBAL_CONFIG` and the user's settings.
DLT_GLOBAL_CONFIG = {"checkpoint_threshold": "1gb", "TimeZone": "UTC"}
DLT_PRAGMAS = ("enable_checkpoint_on_shutdown",)
# Dataset names dlt's naming convention (snake_case) keeps as they are; any other is
# renamed by dlt, and only a dlt pipeline knows the name it loads into.
_PLAIN_DATASET = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def keeps_name(dataset: str) -> bool:
    """Whether dlt loads into a schema named exactly `dataset` (a test checks this against
    dlt's naming convention)."""
    return _PLAIN_DATASET.fullmatch(dataset) is not None


class MissingRelation(Exception):  # noqa: N818 - named as dlt's DatabaseUndefinedRelation
    """A query named a table or schema that does not exist."""


def is_missing_relation(exc: BaseException) -> bool:
    """Whether `exc` says a queried table or dataset does not exist: dlt's
    `DatabaseUndefinedRelation` (its SQL clients'), or `MissingRelation` (this module's)."""
    return isinstance(exc, MissingRelation) or any(
        cls.__name__ == "DatabaseUndefinedRelation" for cls in type(exc).__mro__)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def escape_literal(value: Any) -> str:
    """A value as a DuckDB SQL literal (strings as standard SQL strings: DuckDB reads
    backslashes in them as they are)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("a DuckDB string literal cannot hold a NUL character")
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no DuckDB literal for a {type(value).__name__}")


class _Capabilities:
    escape_literal = staticmethod(escape_literal)


class DuckDBClient:
    """The calls pg_to_bq's queries make of dlt's SQL client, over one DuckDB connection."""

    capabilities = _Capabilities()

    def __init__(self, connection: Any, dataset: str) -> None:
        self.connection, self.dataset_name = connection, dataset

    def make_qualified_table_name(self, table: str, quote: bool = True,
                                  casefold: bool = True) -> str:
        return ".".join(self.make_qualified_table_name_path(table, quote=quote))

    def make_qualified_table_name_path(self, table: str | None, quote: bool = True,
                                       casefold: bool = True) -> list[str]:
        parts = [self.dataset_name] + ([table] if table is not None else [])
        return [quote_identifier(p) for p in parts] if quote else parts

    def fully_qualified_dataset_name(self, quote: bool = True) -> str:
        return self.make_qualified_table_name_path(None, quote=quote)[0]

    def escape_column_name(self, name: str, quote: bool = True, casefold: bool = True) -> str:
        return quote_identifier(name) if quote else name

    def execute_sql(self, sql: str, *args: Any) -> list[tuple] | None:
        with self.execute_query(sql, *args) as cursor:
            return None if cursor.description is None else cursor.fetchall()

    @contextlib.contextmanager
    def execute_query(self, sql: str, *args: Any) -> Iterator[Any]:
        import duckdb

        try:
            cursor = self.connection.execute(sql.replace("%s", "?") if args else sql,
                                             list(args) if args else None)
        except duckdb.CatalogException as exc:
            if "does not exist" in str(exc):
                raise MissingRelation(str(exc)) from exc
            raise
        yield cursor

    def has_dataset(self) -> bool:
        rows = self.execute_sql(
            "SELECT 1 FROM information_schema.schemata WHERE catalog_name = current_database() "
            "AND schema_name = %s", self.dataset_name)
        return bool(rows)

    @contextlib.contextmanager
    def begin_transaction(self) -> Iterator[None]:
        self.connection.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")


class DuckDBFile:
    """A DuckDB file as pg_to_bq's queries see it (see the module's docstring). Clients
    made while one is open share its connection (`sql_client()` nests, as
    `pg_to_bq.destinations.row_counts.one_connection` relies on); the connection closes when the
    outermost client does, so another process can take the file."""

    destination_name = "duckdb"

    def __init__(self, path: str, dataset: str, settings: Mapping[str, Any]) -> None:
        self.path, self.dataset, self.settings = path, dataset, dict(settings)
        self._client: DuckDBClient | None = None
        self._depth = 0

    @property
    def destination(self) -> DuckDBFile:
        """As a dlt pipeline's `destination` (its `destination_name`)."""
        return self

    @contextlib.contextmanager
    def sql_client(self) -> Iterator[DuckDBClient]:
        if self._client is None:
            self._client = DuckDBClient(self._connect(), self.dataset)
        self._depth += 1
        try:
            yield self._client
        finally:
            self._depth -= 1
            if self._depth == 0:
                client, self._client = self._client, None
                client.connection.close()

    def _connect(self) -> Any:
        import duckdb

        connection = duckdb.connect(self.path)
        try:
            # (dlt's own settings win over the user's, as in dlt's client)
            for name, value in {**self.settings, **DLT_GLOBAL_CONFIG}.items():
                connection.execute(f"SET GLOBAL {name} = ?", [value])
            for pragma in DLT_PRAGMAS:
                connection.execute(f"PRAGMA {pragma}")
        except Exception:
            connection.close()
            raise
        return connection


class KeptFile:
    """What keeps a DuckDB file open between a process's write sections
    (`pg_to_bq.destinations.writer_lock.kept`): one connection, so later opens in the
    process attach to the open database instead of reading its catalog again."""

    def __init__(self, path: str, memory_limit: str) -> None:
        import duckdb

        self.connection = duckdb.connect(path)
        self.memory_limit = memory_limit

    def settle(self) -> None:
        """After a section: what it wrote goes into the file (a checkpoint, free when nothing
        was written) and DuckDB lets its cached blocks go (a limit below them, then the
        configured one), so that between sections the process holds what it held when each
        section closed the file (a run of 1,000 tables kept 75 MB more without)."""
        import duckdb

        connection = self.connection
        with contextlib.suppress(duckdb.Error):
            connection.execute("CHECKPOINT")
        try:
            with contextlib.suppress(duckdb.Error):
                connection.execute("SET GLOBAL memory_limit = '1MB'")
        finally:
            connection.execute("SET GLOBAL memory_limit = ?", [self.memory_limit])

    def close(self) -> None:
        self.connection.close()
