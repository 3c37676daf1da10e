"""Stream a PostgreSQL table as Arrow record batches through binary COPY.

The ADBC PostgreSQL driver runs `COPY (SELECT ...) TO STDOUT (FORMAT binary)` and decodes
it into Arrow in C++, a batch at a time; a reader thread keeps at most `QUEUE_DEPTH`
batches ahead of the consumer, so memory is bounded by the batch size, not the table
size, and decoding overlaps with whatever the consumer does (writing parquet). The whole
read happens in one REPEATABLE READ, READ ONLY transaction, so the row count taken for
reconciliation and the rows read describe the same snapshot.

Every batch is converted to the plan's Arrow types and checked: a value the destination
cannot hold exactly fails the table with `LossyValueError`, never a silent change.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

import pyarrow as pa
import pyarrow.compute as pc

from pg_to_bq.plan import TablePlan
from pg_to_bq.source import SourceUnreachable, describe, with_options
from pg_to_bq.typemap import ColumnMapping, quote_ident

QUEUE_DEPTH = 2
# BigQuery's DATE/DATETIME/TIMESTAMP span years 1 to 9999; infinity sentinels fall outside.
_MIN_DAY = (date(1, 1, 1) - date(1970, 1, 1)).days
_MAX_DAY = (date(9999, 12, 31) - date(1970, 1, 1)).days
_MIN_US = _MIN_DAY * 86_400_000_000
_MAX_US = (_MAX_DAY + 1) * 86_400_000_000 - 1
_DAY_US = 86_400_000_000


class LossyValueError(ValueError):
    """A value cannot be loaded without changing it. Names table, column, type and the fix."""

    def __init__(self, plan: TablePlan, column: ColumnMapping, problem: str):
        self.table = plan.name
        self.column = column.source.name
        self.pg_type = column.source.type
        super().__init__(
            f"table {plan.name}, column {column.source.name!r} ({column.source.type}): {problem}. "
            f"Nothing was loaded for this table. To load it, override the column in the tables "
            f"file (PG_TO_BQ_TABLES_FILE): tables: {{{plan.name}: {{columns: "
            f"{{{column.source.name}: {{cast: text}}}}}}}} keeps the value as text, or "
            f"{{exclude: true}} leaves the column out."
        )


def qualified_name(plan: TablePlan) -> str:
    return f"{quote_ident(plan.table.schema)}.{quote_ident(plan.table.name)}"


def select_sql(plan: TablePlan, where: str | None = None) -> str:
    """The SELECT that reads `plan`'s columns; every identifier quoted."""
    columns = ", ".join(f"{c.select_sql} AS {quote_ident(c.name)}" for c in plan.columns)
    sql = f"SELECT {columns} FROM {qualified_name(plan)}"
    return f"{sql} WHERE {where}" if where else sql


def arrow_schema(plan: TablePlan) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, c.arrow_type, nullable=True) for c in plan.columns]
    )


@dataclass
class ExtractStats:
    rows: int = 0
    batches: int = 0
    bytes: int = 0
    snapshot_rows: int | None = None


class TableReader:
    """Reads one table (optionally filtered by `where`) inside one read-only snapshot.

    Use as a context manager; iterate `batches()`; `stats` fills as batches arrive.
    """

    def __init__(
        self,
        url: str,
        plan: TablePlan,
        *,
        where: str | None = None,
        batch_bytes: int = 16 * 1024 * 1024,
        count_rows: bool = True,
        hash_salt: bytes | None = None,
        statement_timeout_s: int = 3600,
        application_name: str = "pg_to_bq",
    ) -> None:
        self.url = url
        self.plan = plan
        self.where = where
        self.batch_bytes = batch_bytes
        self.count_rows = count_rows
        self.hash_salt = hash_salt
        self.statement_timeout_s = statement_timeout_s
        self.application_name = application_name
        self.stats = ExtractStats()
        self.schema = arrow_schema(plan)
        self._conn = None
        if plan.hashed and not hash_salt:
            raise ValueError(
                f"table {plan.name} hashes column(s) {list(plan.hashed)} but no salt is "
                "configured: set PG_TO_BQ_HASH_SALT or PG_TO_BQ_HASH_SALT_SECRET"
            )

    def __enter__(self) -> TableReader:
        import adbc_driver_postgresql.dbapi as adbc

        uri = with_options(self.url, self.application_name, self.statement_timeout_s)
        try:
            self._conn = adbc.connect(uri)
        except Exception as exc:  # the driver raises its own error classes
            raise SourceUnreachable(
                f"cannot connect to PostgreSQL at {describe(self.url)} to read {self.plan.name}: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        cur = self._conn.cursor()
        # Must be the transaction's first statement; the driver has opened it (autocommit off).
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SET LOCAL IntervalStyle = 'iso_8601'")
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        cur.execute("SET LOCAL extra_float_digits = 3")
        if self.count_rows:
            where = f" WHERE {self.where}" if self.where else ""
            cur.execute(f"SELECT count(*) FROM {qualified_name(self.plan)}{where}")
            self.stats.snapshot_rows = int(cur.fetchone()[0])
        cur.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.rollback()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Converted, checked batches. An empty table yields nothing."""
        assert self._conn is not None, "use TableReader as a context manager"
        cur = self._conn.cursor()
        cur.adbc_statement.set_options(
            **{"adbc.postgresql.batch_size_hint_bytes": str(self.batch_bytes)}
        )
        cur.execute(select_sql(self.plan, self.where))
        reader = cur.fetch_record_batch()
        try:
            for raw in _read_ahead(reader):
                batch = convert_batch(self.plan, raw, self.schema, self.hash_salt)
                self.stats.rows += batch.num_rows
                self.stats.batches += 1
                self.stats.bytes += batch.nbytes
                yield batch
        finally:
            with contextlib.suppress(Exception):
                reader.close()
            with contextlib.suppress(Exception):
                cur.close()


def _read_ahead(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """Iterate `reader` from a background thread, at most QUEUE_DEPTH batches ahead."""
    items: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in reader:
                while not stop.is_set():
                    try:
                        items.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)

    thread = threading.Thread(target=produce, name="pg_to_bq-copy-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                items.get_nowait()
        thread.join(timeout=5)


def convert_batch(
    plan: TablePlan, raw: pa.RecordBatch, schema: pa.Schema, hash_salt: bytes | None = None
) -> pa.RecordBatch:
    """Convert one driver batch to the plan's Arrow types, checking every value."""
    arrays = []
    for index, column in enumerate(plan.columns):
        array = raw.column(index)
        if isinstance(array, pa.ExtensionArray):
            array = array.storage
        arrays.append(_convert(plan, column, array, hash_salt))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _convert(
    plan: TablePlan, column: ColumnMapping, array: pa.Array, hash_salt: bytes | None
) -> pa.Array:
    if column.transform == "hash":
        return _salted_hash(array, hash_salt or b"")
    if column.logical == "decimal":
        return _to_decimal(plan, column, array)
    if "finite_range" in column.checks:
        _check_range(plan, column, array)
    if "time_of_day" in column.checks:
        _check_time(plan, column, array)
    if array.type != column.arrow_type:
        array = array.cast(column.arrow_type)
    return array


def _check_range(plan: TablePlan, column: ColumnMapping, array: pa.Array) -> None:
    if array.null_count == len(array):
        return
    is_date = pa.types.is_date32(array.type)
    raw = array.view(pa.int32() if is_date else pa.int64())
    low, high = (_MIN_DAY, _MAX_DAY) if is_date else (_MIN_US, _MAX_US)
    bounds = pc.min_max(raw)
    lowest, highest = bounds["min"].as_py(), bounds["max"].as_py()
    if lowest >= low and highest <= high:
        return
    bad = lowest if lowest < low else highest
    limit_low, limit_high = (-(2**31), 2**31 - 1) if is_date else (-(2**63), 2**63 - 1)
    if bad in (limit_low, limit_high):
        shown = "'-infinity'" if bad == limit_low else "'infinity'"
    else:
        shown = _describe_out_of_range(bad, is_date)
    raise LossyValueError(
        plan, column,
        f"value {shown} is outside the years 1 to 9999 that the destination's "
        f"{column.destination_type('bigquery')} can hold",
    )


def _describe_out_of_range(value: int, is_date: bool) -> str:
    days = value if is_date else value // _DAY_US
    years = days / 365.2425 + 1970
    return f"in the year {int(years)}" if years > 0 else f"in the year {int(years) - 1} (BC)"


def _check_time(plan: TablePlan, column: ColumnMapping, array: pa.Array) -> None:
    if array.null_count == len(array):
        return
    highest = pc.max(array.view(pa.int64())).as_py()
    if highest is not None and highest >= _DAY_US:
        raise LossyValueError(plan, column, "value '24:00:00' is past the destination TIME's end "
                                            "23:59:59.999999")


def _to_decimal(plan: TablePlan, column: ColumnMapping, array: pa.Array) -> pa.Array:
    try:
        return pc.cast(array, column.arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for value in array.to_pylist():
        if value is None:
            continue
        try:
            pc.cast(pa.array([value]), column.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise LossyValueError(
                plan, column,
                f"value {value!r} does not fit DECIMAL({column.precision},{column.scale}) "
                "exactly (NaN and Infinity have no decimal form)",
            ) from None
    raise LossyValueError(plan, column, "values do not convert to an exact decimal")


def _salted_hash(array: pa.Array, salt: bytes) -> pa.Array:
    if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    return pa.array(
        [None if v is None else hashlib.sha256(salt + v.encode("utf-8")).hexdigest()
         for v in array.to_pylist()],
        type=pa.string(),
    )


def literal(value: object, pg_type: str) -> str:
    """A safely quoted SQL literal with an explicit cast, for cursor and window bounds."""
    if isinstance(value, datetime | date):
        text = value.isoformat()
    else:
        text = str(value)
    return "'" + text.replace("'", "''") + "'::" + pg_type
