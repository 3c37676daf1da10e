"""Stream a PostgreSQL table as Arrow record batches through binary COPY.

The ADBC PostgreSQL driver runs `COPY (SELECT ...) TO STDOUT (FORMAT binary)` and decodes
it into Arrow in C++, a batch at a time; a reader thread keeps at most `QUEUE_DEPTH`
batches ahead of the consumer, so memory is bounded by the batch size, not the table
size, and decoding overlaps with whatever the consumer does (writing parquet). The whole
read happens in one REPEATABLE READ, READ ONLY transaction, so the row count taken for
reconciliation and the rows read describe the same snapshot.

With `streams > 1` a large table is read by several connections at once, each over one
range of the table (of an integer primary key, else of ctid blocks), all inside the
snapshot the first connection exports: the rows are exactly those one stream would read.
Each stream's batches are a share of `batch_bytes`, so memory does not grow with streams.

Every batch is converted to the plan's Arrow types and checked: a value the destination
cannot hold exactly fails the table with `LossyValueError`, never a silent change.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.planning.types import quote_ident
from pg_to_bq.postgres import row_versions
from pg_to_bq.postgres.connect import SourceUnreachable, describe, with_options
from pg_to_bq.postgres.session import AdbcSession
from pg_to_bq.postgres.sql import SESSION, qualified_name, select_sql
from pg_to_bq.postgres.values import arrow_schema, convert_batch

QUEUE_DEPTH = 2
# A read is split into streams only when each gets at least this many rows: below, the extra
# connection, snapshot export and range query cost more than they save (an incremental read
# of a few hundred rows took 0.44 s over two streams, ~0.3 s over one).
MIN_ROWS_PER_STREAM = 100_000
_INTEGER_KEYS = {"int2": "smallint", "int4": "integer", "int8": "bigint"}












@dataclass
class ExtractStats:
    rows: int = 0
    batches: int = 0
    bytes: int = 0
    snapshot_rows: int | None = None
    # The whole table's rows in the same snapshot (with `count_table`); equals
    # `snapshot_rows` when the read has no `where`.
    table_rows: int | None = None
    streams: int = 1


class TableReader:
    """Reads one table (optionally filtered by `where`) inside one read-only snapshot.

    Use as a context manager; iterate `batches()`; `stats` fills as batches arrive.
    `count_table` also counts the whole table in the same snapshot (`stats.table_rows`), what
    a merged destination table should hold once these rows are merged. `versions` counts a
    read without `where` with the inputs of the table's row-version token in one query
    (`versions_row`, which `row_versions.token` then uses). `snapshot_xmin` asks the
    oldest transaction the snapshot saw running (`self.snapshot_xmin`, a 64-bit id): rows
    it or any later transaction writes are not in this read, whatever their cursor says.
    With `streams > 1` the table is split into that many ranges (of its single-column
    integer primary key, else of ctid blocks) read in parallel by connections sharing the
    exported snapshot; batches arrive interleaved, at most `QUEUE_DEPTH` (or `streams`)
    of them held at once. A read that cannot be split (a view, an empty table, fewer
    rows or blocks than streams) or is too small to gain from it (fewer than
    `min_rows_per_stream` rows to read per stream, counted first) is read by one stream.
    """

    def __init__(
        self,
        url: str,
        plan: TablePlan,
        *,
        where: str | None = None,
        batch_bytes: int = 16 * 1024 * 1024,
        count_rows: bool = True,
        count_table: bool = False,
        hash_salt: bytes | None = None,
        statement_timeout_s: int = 3600,
        application_name: str = "pg_to_bq",
        streams: int = 1,
        min_rows_per_stream: int = MIN_ROWS_PER_STREAM,
        session: AdbcSession | None = None,
        versions: bool = False,
        snapshot_xmin: bool = False,
    ) -> None:
        if streams < 1:
            raise ValueError(f"streams must be at least 1, not {streams}")
        self.url = url
        self.plan = plan
        self.where = where
        self.batch_bytes = batch_bytes
        self.count_rows = count_rows
        self.count_table = count_table
        self.hash_salt = hash_salt
        self.statement_timeout_s = statement_timeout_s
        self.application_name = application_name
        self.streams = streams
        self.min_rows_per_stream = min_rows_per_stream
        self.versions = versions
        # The row of `row_versions.versions_sql`, when the count was asked with it.
        self.versions_row: tuple | None = None
        self.ask_snapshot_xmin = snapshot_xmin
        self.snapshot_xmin: int | None = None
        self.stats = ExtractStats()
        self.schema = arrow_schema(plan)
        self._conn: AdbcSession | None = None
        # A session lent by the caller (many small tables, one connection): each read is its
        # own transaction on it, ended (not closed) when the reader exits.
        self._lent = session
        self._snapshot: str | None = None
        self._ranges: list[str | None] = [None]
        if plan.hashed and not hash_salt:
            raise ValueError(
                f"table {plan.name} hashes column(s) {list(plan.hashed)} but no salt is "
                "configured: set PG_TO_BQ_HASH_SALT or PG_TO_BQ_HASH_SALT_SECRET"
            )

    def __enter__(self) -> TableReader:
        self._conn = session = self._lent or self._connect()
        try:
            _begin(session)
            if self.ask_snapshot_xmin:
                (xmin,) = session.fetchone(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                self.snapshot_xmin = int(xmin)
            if self.count_rows and self.versions and self.where is None:
                # The count and the row versions' token, in one scan and one round trip.
                self.versions_row = session.fetchone(row_versions.versions_sql(self.plan))
                (count, *_) = self.versions_row or (0,)
                self.stats.snapshot_rows = int(count)
            elif self.count_rows:
                (count,) = session.fetchone(
                    f"SELECT count(*) FROM {qualified_name(self.plan)}{self._where()}")
                self.stats.snapshot_rows = int(count)
            if self.count_table:
                if self.where or not self.count_rows:
                    (count,) = session.fetchone(f"SELECT count(*) FROM {qualified_name(self.plan)}")
                self.stats.table_rows = int(count)
            rows = self.stats.snapshot_rows
            if self.streams > 1 and (rows is None or rows >= self.streams * self.min_rows_per_stream):
                self._ranges = self._split(session)
                if len(self._ranges) > 1:
                    (snapshot,) = session.fetchone("SELECT pg_export_snapshot()")
                    self._snapshot = str(snapshot)
            self.stats.streams = len(self._ranges)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            if self._conn is self._lent:
                self._conn.rollback()
            else:
                self._conn.close()
            self._conn = None

    def query_one(self, sql: str) -> tuple | None:
        """One row of `sql`, in the reader's snapshot (after `batches`, before exiting)."""
        assert self._conn is not None, "use TableReader as a context manager"
        return self._conn.fetchone(sql)

    def query_all(self, sql: str) -> list[tuple]:
        """Every row of `sql`, in the reader's snapshot (after `batches`, before exiting)."""
        assert self._conn is not None, "use TableReader as a context manager"
        return self._conn.fetchall(sql)

    def server_encoding(self) -> str:
        """The database's `server_encoding`, asked once per session."""
        assert self._conn is not None, "use TableReader as a context manager"
        encoding = self._conn.server_encoding
        if encoding is None:
            (encoding,) = self._conn.fetchone("SELECT current_setting('server_encoding')")
            self._conn.server_encoding = encoding
        return str(encoding)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Converted, checked batches. An empty table yields nothing."""
        assert self._conn is not None, "use TableReader as a context manager"
        if self._snapshot is None:
            source = _read_ahead(lambda put: self._read(self._conn, None, put, self.batch_bytes))
        else:
            source = self._read_parallel()
        for batch in source:
            self.stats.rows += batch.num_rows
            self.stats.batches += 1
            self.stats.bytes += batch.nbytes
            yield batch

    def _connect(self) -> AdbcSession:
        uri = with_options(self.url, self.application_name, self.statement_timeout_s)
        try:
            return AdbcSession(uri)
        except Exception as exc:  # the driver raises its own error classes
            raise SourceUnreachable(
                f"cannot connect to PostgreSQL at {describe(self.url)} to read {self.plan.name}: "
                f"{str(exc).splitlines()[0]}"
            ) from None

    def _conditions(self, range_condition: str | None = None) -> str | None:
        """The reader's `where` and one range's condition, ANDed; None when neither."""
        return " AND ".join(f"({p})" for p in (self.where, range_condition) if p) or None

    def _where(self) -> str:
        return f" WHERE {self.where}" if self.where else ""

    def _read(self, session: AdbcSession, where: str | None,
              put: Callable[[pa.RecordBatch], bool], batch_bytes: int) -> None:
        """COPY one range on `session`, converting each batch and handing it to `put`."""
        sql = select_sql(self.plan, self._conditions(where))
        with session.stream(sql, batch_bytes) as reader:
            for raw in reader:
                if not put(convert_batch(self.plan, raw, self.schema, self.hash_salt)):
                    return

    def _split(self, session: AdbcSession) -> list[str | None]:
        """Conditions dividing the table into up to `streams` ranges covering every row."""
        key = _integer_key(self.plan)
        if key is not None:
            quoted, pg_type = quote_ident(key), _INTEGER_KEYS[self.plan.table.column(key).type_name]
            low, high = session.fetchone(f"SELECT min({quoted}), max({quoted}) "
                                         f"FROM {qualified_name(self.plan)}{self._where()}")
            if low is None:
                return [None]
            return _range_conditions(
                quoted, _boundaries(int(low), int(high) + 1, self.streams),
                lambda v: f"'{int(v)}'::{pg_type}",
            )
        if not self.plan.table.rows_have_system_columns:
            return [None]
        # The relation's size now covers every row version our snapshot sees; the last
        # range is open-ended anyway. A partitioned table is split by its largest leaf's
        # blocks, and the ctid condition applies to each partition.
        relation = "'" + qualified_name(self.plan).replace("'", "''") + "'::regclass"
        (blocks,) = session.fetchone(
            "SELECT greatest(pg_relation_size(r), coalesce((SELECT max(pg_relation_size(p.relid)) "
            "FROM pg_partition_tree(r) p WHERE p.isleaf), 0)) "
            f"/ current_setting('block_size')::bigint FROM (SELECT {relation} AS r) s"
        )
        return _range_conditions(
            "ctid", _boundaries(0, int(blocks or 0), self.streams), lambda v: f"'({int(v)},0)'::tid"
        )

    def _read_parallel(self) -> Iterator[pa.RecordBatch]:
        items: queue.Queue = queue.Queue(maxsize=max(QUEUE_DEPTH, len(self._ranges)))
        # Each stream's batches are a share of `batch_bytes`, so more streams do not hold
        # more data in flight.
        batch_bytes = max(1, self.batch_bytes // len(self._ranges))
        stop = threading.Event()
        finished = object()

        def put(item: object) -> bool:
            return _put(items, item, stop)

        def work(where: str | None, exporter: bool) -> None:
            session = None
            try:
                if exporter:  # the connection that exported the snapshot reads the first range
                    session = self._conn
                else:
                    session = self._connect()
                    _begin(session, snapshot=self._snapshot)
                self._read(session, where, put, batch_bytes)
                put(finished)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)
            finally:
                if session is not None and not exporter:
                    session.close()

        threads = [
            threading.Thread(target=work, args=(where, i == 0), name=f"pg_to_bq-stream-{i}",
                             daemon=True)
            for i, where in enumerate(self._ranges)
        ]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                item = items.get()
                if item is finished:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            _drain(items)
            for thread in threads:
                thread.join(timeout=5)


def _begin(session: AdbcSession, snapshot: str | None = None) -> None:
    """Start the read-only snapshot transaction (the driver has opened it: autocommit off),
    its settings in one round trip (a table of a group is read in a transaction of its own)."""
    session.execute("; ".join((
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        *(["SET TRANSACTION SNAPSHOT '" + snapshot.replace("'", "''") + "'"]
          if snapshot is not None else []),
        *SESSION)))


def _integer_key(plan: TablePlan) -> str | None:
    """The table's primary key column when it is a single integer column."""
    if len(plan.table.primary_key) != 1:
        return None
    column = plan.table.column(plan.table.primary_key[0])
    return column.name if column.type_name in _INTEGER_KEYS else None


def _boundaries(start: int, stop: int, parts: int) -> list[int]:
    """Up to `parts - 1` increasing cut points dividing [start, stop) into equal ranges."""
    cuts = {start + (stop - start) * i // parts for i in range(1, parts)}
    return sorted(c for c in cuts if start < c < stop)


def _range_conditions(
    expression: str, cuts: list[int], literal_of: Callable[[int], str]
) -> list[str | None]:
    """`expr < c1`, `expr >= c1 AND expr < c2`, ..., `expr >= cN`: every value in one range."""
    if not cuts:
        return [None]
    bounds: list[int | None] = [None, *cuts, None]
    conditions: list[str | None] = []
    for low, high in zip(bounds, bounds[1:], strict=False):
        parts = []
        if low is not None:
            parts.append(f"{expression} >= {literal_of(low)}")
        if high is not None:
            parts.append(f"{expression} < {literal_of(high)}")
        conditions.append(" AND ".join(parts))
    return conditions


def _put(items: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item` unless the consumer has stopped; False when it has."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(items: queue.Queue) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            items.get_nowait()


def _read_ahead(
    produce: Callable[[Callable[[pa.RecordBatch], bool]], None],
) -> Iterator[pa.RecordBatch]:
    """Run `produce(put)` in a background thread, at most QUEUE_DEPTH batches ahead."""
    items: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    done = object()

    def run() -> None:
        try:
            produce(lambda batch: _put(items, batch, stop))
            _put(items, done, stop)
        except BaseException as exc:  # handed to the consumer, raised there
            _put(items, exc, stop)

    thread = threading.Thread(target=run, name="pg_to_bq-copy-reader", daemon=True)
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
        _drain(items)
        thread.join(timeout=5)






















