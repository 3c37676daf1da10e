"""The cursor of an incremental table and the rows of its lookback window.

While a table streams by, `WindowTracker` follows the cursor's maximum and keeps the rows
the next incremental run will read again (cursor ≥ maximum − lookback). Their digest is
stored with the load; when the next run reads back exactly those rows (and nothing newer),
a merge would change nothing and the load is skipped.

Values are compared through Arrow's integer views: `pa.scalar` from a Python value, and
`as_py` on a zoned timestamp, import pandas (~40 MB per loading process).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from pg_to_bq.load.cursor import lookback_of
from pg_to_bq.planning.tables import TablePlan

log = logging.getLogger(__name__)

# The rows of the lookback window are kept (to digest them) only up to these sizes; a
# larger window is not digested and the next run simply merges it.
WINDOW_MAX_ROWS = 200_000
WINDOW_MAX_BYTES = 32 * 1024 * 1024


class WindowTracker:
    """Follows the cursor's maximum while the table streams by, and keeps the rows the next
    incremental run will read again (cursor ≥ maximum − lookback), to digest them."""

    def __init__(self, plan: TablePlan, mode: str, window: bool = True) -> None:
        """Without `window`, only the cursor's maximum is followed: a table read whole
        when it changes (`TablePlan.reads_whole`) reads no window next run (digesting it
        cost ~5 ms a 1,000-row table); should it grow past that size, its first incremental
        run merges its window instead of skipping it."""
        assert plan.cursor is not None
        self.mode = mode
        self.windowed = window
        self.column = plan.column_for(plan.cursor).name
        self.lookback = lookback_of(plan)
        self.max: Any = None
        self.kept: list[pa.RecordBatch] = []
        self.overflow = False
        # What the next incremental run must read back to skip its load (or None), once
        # the table is read (`finish`).
        self.window: dict[str, Any] | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        column = batch.column(self.column)
        newest = _py_max(column)
        if newest is None:
            return
        if self.max is None or newest > self.max:
            self.max = newest
            self.kept = [b for b in (self._in_window(k) for k in self.kept) if b.num_rows]
        if self.overflow or not self.windowed:
            return
        kept = self._in_window(batch)
        if kept.num_rows:
            self.kept.append(kept)
        if (sum(b.num_rows for b in self.kept) > WINDOW_MAX_ROWS
                or sum(b.nbytes for b in self.kept) > WINDOW_MAX_BYTES):
            self.overflow, self.kept = True, []

    def _in_window(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        values, bound = _comparable(batch.column(self.column), _minus(self.max, self.lookback))
        return batch.filter(pc.greater_equal(values, bound))

    def finish(self, schema: pa.Schema) -> None:
        """The table is read: digest the kept rows (`window`) and let them go. Called in the
        thread that read the table, so that DuckDB digests while other tables are read
        (digesting 1,000 small tables' windows after their load took ~1.3 s of a step's
        main thread)."""
        self.window = self._digest(schema)
        self.kept = []

    def _digest(self, schema: pa.Schema) -> dict[str, Any] | None:
        if self.overflow or not self.windowed \
                or (self.max is None and self.mode != "incremental"):
            return None
        # (An incremental run that read nothing keeps its cursor: the next run reads the
        # same, empty, window again.)
        value = window_digest(self.kept, schema)
        return None if value is None else {"rows": sum(b.num_rows for b in self.kept),
                                           "digest": value}


def _minus(value: Any, lookback: timedelta | None) -> Any:
    """`value` − `lookback` as the next run's query computes it."""
    if lookback is None:
        return value
    if isinstance(value, datetime):
        return value - lookback
    if isinstance(value, date):
        # PostgreSQL's date − interval is a timestamp within an earlier day; the dates at or
        # after it are those from `value` − whole days of the lookback.
        return value - timedelta(days=lookback.days)
    return value


def window_digest(batches: list[pa.RecordBatch], schema: pa.Schema) -> str | None:
    """An order-independent digest of whole rows — their count and the sum and xor of
    DuckDB's hash of each row — and of the Arrow schema; equal digests mean the same rows.
    None when DuckDB cannot hash a column type (then nothing is skipped)."""
    import duckdb

    try:
        table = pa.Table.from_batches(batches, schema=schema)
        con = _digest_connection().cursor()
        try:
            con.register("w", table)
            count, total, xor = con.execute(
                "SELECT count(*), coalesce(sum(h), 0)::VARCHAR, coalesce(bit_xor(h), 0)::VARCHAR "
                "FROM (SELECT hash(*COLUMNS(*)) AS h FROM w)"
            ).fetchone()
        finally:
            con.close()
    except (duckdb.Error, pa.ArrowException) as exc:
        log.debug("no window digest: %s", exc)
        return None
    shape = hashlib.sha256(str(schema).encode("utf-8")).hexdigest()[:16]
    return f"{count}:{total}:{xor}:{shape}"


@functools.cache
def _digest_connection() -> Any:
    """One in-memory DuckDB for the process's digests (opening one took ~15 ms a table);
    each digest runs on a cursor of its own."""
    import duckdb

    return duckdb.connect(config={"threads": 1})


def max_of(batches: list[pa.RecordBatch], plan: TablePlan) -> Any:
    if plan.cursor is None:
        return None
    column = plan.column_for(plan.cursor).name
    values = [_py_max(b.column(column)) for b in batches if b.num_rows]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _py_max(array: pa.Array) -> Any:
    """The array's largest value as a Python object. A zoned timestamp is read through its
    naive form (its UTC wall time): pyarrow's `as_py` on a zoned timestamp scalar imports
    pandas (~40 MB per loading process) to find the zone."""
    kind = array.type
    if pa.types.is_timestamp(kind) and kind.tz:
        naive = pc.max(array.view(pa.timestamp(kind.unit))).as_py()
        return None if naive is None else naive.replace(tzinfo=UTC).astimezone(_zone(kind.tz))
    return pc.max(array).as_py()


_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _comparable(array: pa.Array, value: Any) -> tuple[pa.Array, pa.Scalar]:
    """`array` and `value` in a form `pc` compares. Timestamps, dates and integers compare as
    integers: `pa.scalar` from a Python value imports pandas (see `_py_max`)."""
    kind = array.type
    if pa.types.is_timestamp(kind):
        epoch = _EPOCH if kind.tz else _EPOCH.replace(tzinfo=None)
        delta = value - epoch
        per_second = _UNITS_PER_SECOND[kind.unit]
        ticks = (delta.days * 86_400 + delta.seconds) * per_second \
            + delta.microseconds * per_second // 1_000_000
        return array.view(pa.int64()), _int64(ticks)
    if pa.types.is_date32(kind):
        return array.view(pa.int32()).cast(pa.int64()), _int64((value - _EPOCH.date()).days)
    if pa.types.is_integer(kind):
        return array.cast(pa.int64()), _int64(int(value))
    return array, pa.scalar(value, kind)


def _int64(value: int) -> pa.Scalar:
    return pa.Array.from_buffers(
        pa.int64(), 1, [None, pa.py_buffer(value.to_bytes(8, "little", signed=True))])[0]


def _zone(name: str) -> tzinfo:
    if name in ("UTC", "+00:00", "Z"):
        return UTC
    if name[:1] in "+-":
        hours, _, minutes = name[1:].partition(":")
        offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
        return timezone(-offset if name[0] == "-" else offset)
    return ZoneInfo(name)
