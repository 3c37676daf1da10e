"""One PostgreSQL connection through the ADBC driver manager's low-level API.

The driver's DB-API layer (`adbc_driver_postgresql.dbapi`) imports pandas through
`pyarrow.dataset`: about 45 MB in every loading process, for nothing pg_to_bq uses. This
is the little of it pg_to_bq needs: statements, a one-row query, and a query streamed as
Arrow record batches (the driver runs it as `COPY (...) TO STDOUT (FORMAT binary)`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import adbc_driver_manager
import adbc_driver_postgresql

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_SIZE_HINT = "adbc.postgresql.batch_size_hint_bytes"


class AdbcSession:
    """A connection with autocommit off: statements run inside one transaction, which
    `close` rolls back (pg_to_bq only reads)."""

    def __init__(self, uri: str) -> None:
        # The database's encoding once a reader asked for it (`TableReader.server_encoding`).
        self.server_encoding: str | None = None
        self._db = adbc_driver_postgresql.connect(uri)
        try:
            self._conn = adbc_driver_manager.AdbcConnection(self._db)
        except BaseException:
            self._db.close()
            raise
        try:
            self._conn.set_autocommit(False)
        except BaseException:
            self.close()
            raise

    def execute(self, sql: str) -> None:
        with self._statement(sql) as statement:
            statement.execute_update()

    def fetchone(self, sql: str) -> tuple[Any, ...] | None:
        """The first row, by position (columns may share a name)."""
        with self.stream(sql) as reader:
            table = reader.read_all().slice(0, 1)
        if not table.num_rows:
            return None
        return tuple(column[0].as_py() for column in table.columns)

    def fetchall(self, sql: str) -> list[tuple[Any, ...]]:
        """Every row, by position."""
        with self.stream(sql) as reader:
            table = reader.read_all()
        return list(zip(*(column.to_pylist() for column in table.columns), strict=True))

    @contextlib.contextmanager
    def stream(self, sql: str, batch_bytes: int | None = None) -> Iterator[pa.RecordBatchReader]:
        """The query's result as a record batch reader of about `batch_bytes` per batch
        (pyarrow is imported here: a connection that only checks it can connect needs none)."""
        import pyarrow as pa

        with self._statement(sql) as statement:
            if batch_bytes:
                statement.set_options(**{BATCH_SIZE_HINT: str(batch_bytes)})
            handle, _ = statement.execute_query()
            reader = pa.RecordBatchReader._import_from_c(handle.address)
            try:
                yield reader
            finally:
                with contextlib.suppress(Exception):
                    reader.close()

    def rollback(self) -> None:
        """End the current transaction; the next statement starts a new one."""
        self._conn.rollback()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.rollback()
        with contextlib.suppress(Exception):
            self._conn.close()
        with contextlib.suppress(Exception):
            self._db.close()

    @contextlib.contextmanager
    def _statement(self, sql: str) -> Iterator[adbc_driver_manager.AdbcStatement]:
        statement = adbc_driver_manager.AdbcStatement(self._conn)
        try:
            statement.set_sql_query(sql)
            yield statement
        finally:
            with contextlib.suppress(Exception):
                statement.close()
