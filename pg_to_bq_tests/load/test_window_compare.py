"""Tier 1 (pure logic): the cursor comparisons of the incremental window tracker.

`pg_to_bq.load.group` compares timestamps, dates and integers as integer ticks and reads zoned
maxima through their naive form, because pyarrow imports pandas (~40 MB per loading
process) for `pa.scalar` and for a zoned scalar's `as_py`. These must give exactly what
pyarrow's own comparison gives, including at the bound and before 1970.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pg_to_bq.load.cursor_window import _comparable, _py_max

CASES = [
    (pa.timestamp("us", tz="UTC"),
     [datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
      datetime(2025, 3, 1, 12, 0, 0, 1, tzinfo=UTC), None, datetime(1, 1, 1, tzinfo=UTC)],
     datetime(2025, 3, 1, 12, 0, tzinfo=UTC)),
    (pa.timestamp("us", tz="UTC"),
     [datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)],
     datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    (pa.timestamp("us"),
     [datetime(2024, 2, 29, 23, 59, 59), datetime(2024, 3, 1), None, datetime(9999, 12, 31)],
     datetime(2024, 3, 1)),
    (pa.date32(), [date(2024, 1, 1), date(1900, 5, 5), None, date(2024, 1, 2)], date(2024, 1, 1)),
    (pa.int32(), [-5, 0, 7, None, 2**31 - 1], 0),
    (pa.int64(), [-(2**63), 2**62, None], 2**62),
    (pa.string(), ["a", "b", None, "c"], "b"),
]


@pytest.mark.parametrize(("kind", "values", "bound"), CASES)
def test_comparison_matches_pyarrow(kind: pa.DataType, values: list, bound: object) -> None:
    array = pa.array(values, kind)
    left, right = _comparable(array, bound)
    expected = pc.greater_equal(array, pa.scalar(bound, kind))
    assert pc.greater_equal(left, right).to_pylist() == expected.to_pylist()


@pytest.mark.parametrize(("kind", "values", "bound"), CASES)
def test_maximum_matches_pyarrow(kind: pa.DataType, values: list, bound: object) -> None:
    array = pa.array(values, kind)
    assert _py_max(array) == pc.max(array).as_py()


def test_offset_zones_keep_their_offset() -> None:
    array = pa.array([datetime(2025, 1, 1, 9, 0, tzinfo=UTC)], pa.timestamp("us", tz="+09:00"))
    newest = _py_max(array)
    assert newest == datetime(2025, 1, 1, 18, 0, tzinfo=timezone(timedelta(hours=9)))
    assert newest.utcoffset() == timedelta(hours=9)


def test_all_null_maximum_is_none() -> None:
    assert _py_max(pa.array([None, None], pa.timestamp("us", tz="UTC"))) is None


def test_tracking_a_zoned_cursor_does_not_import_pandas() -> None:
    code = (
        "import sys, datetime as d, pyarrow as pa\n"
        "from pg_to_bq.load.cursor_window import _comparable, _py_max\n"
        "a = pa.Array.from_buffers(pa.timestamp('us', tz='UTC'), 2, "
        "[None, pa.py_buffer((1).to_bytes(8, 'little') * 2)])\n"
        "m = _py_max(a)\n"
        "v, b = _comparable(a, m - d.timedelta(minutes=10))\n"
        "import pyarrow.compute as pc; pc.greater_equal(v, b)\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_table_read_whole_follows_its_cursor_and_keeps_no_window() -> None:
    """A table read whole when it changes reads no lookback window next run: its tracker
    follows the cursor's maximum (stored, for the day it grows past the size) and keeps,
    digests and stores no rows; a merged-by-cursor table's tracker keeps its window."""
    from pg_to_bq.load.cursor_window import WindowTracker
    from pg_to_bq.planning.catalog import Catalog, Column, Table
    from pg_to_bq.planning.overrides import Overrides
    from pg_to_bq.planning.tables import build_plans

    table = Table("public", "orders", size_bytes=8192, primary_key=("id",), columns=(
        Column(name="id", type="bigint", type_name="int8", nullable=False),
        Column(name="updated_at", type="timestamp with time zone", type_name="timestamptz",
               nullable=False)))
    (whole,) = build_plans(Catalog(tables=(table,)), "duckdb", Overrides())
    (merged,) = build_plans(Catalog(tables=(table,)), "duckdb", Overrides(read_whole_bytes=0))
    assert whole.reads_whole and merged.incremental and whole.cursor == "updated_at"
    times = [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(3)]
    batch = pa.record_batch({"id": pa.array([1, 2, 3], pa.int64()),
                             "updated_at": pa.array(times, pa.timestamp("us", tz="UTC"))})
    followed = WindowTracker(whole, "full", window=False)
    kept = WindowTracker(merged, "full")
    for tracker in (followed, kept):
        tracker.add(batch)
        tracker.finish(batch.schema)
        assert tracker.max == times[-1]
    assert followed.window is None
    assert kept.window is not None and kept.window["rows"] >= 1
