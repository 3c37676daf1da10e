"""Parallel extraction: several streams over ranges of one exported snapshot.

The rows read with `streams=4` must be exactly those read with one stream (the same
multiset), for a table split by its integer primary key, one split by ctid blocks and a
partitioned one; changes committed after the reader opened must not appear in any stream.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from pg_to_bq.planning.errors import LossyValueError
from pg_to_bq.planning.tables import TablePlan, build_plans
from pg_to_bq.postgres.discovery import discover
from pg_to_bq.postgres.reader import TableReader

SETUP_SQL = """
CREATE TABLE with_pk (id bigint PRIMARY KEY, label text, amount numeric(12,2), at timestamptz);
INSERT INTO with_pk
SELECT g * 3 - 1000, 'row ' || g, g / 7.0, '2024-01-01'::timestamptz + g * interval '1 minute'
FROM generate_series(1, 20000) g;

CREATE TABLE no_pk (a int, b text);
INSERT INTO no_pk SELECT g % 500, repeat('x', g % 50) FROM generate_series(1, 20000) g;
INSERT INTO no_pk SELECT a, b FROM no_pk WHERE a < 10;  -- duplicate rows must survive

CREATE TABLE parted (k int, v text) PARTITION BY RANGE (k);
CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (5000);
CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (5000) TO (20000);
INSERT INTO parted SELECT g, md5(g::text) FROM generate_series(0, 19999) g;
"""


@pytest.fixture(scope="module")
def source(pg_server) -> Iterator[str]:
    with pg_server.database("parallel", SETUP_SQL, "ANALYZE") as url:
        yield url


def _plan(url: str, table: str) -> TablePlan:
    with psycopg.connect(url) as conn:
        (plan,) = build_plans(discover(conn, schemas=["public"], table=table), "duckdb")
    return plan


def _rows(reader: TableReader) -> Counter:
    rows: Counter = Counter()
    for batch in reader.batches():
        rows.update(zip(*(column.to_pylist() for column in batch.columns), strict=True))
    return rows


def _read(url: str, plan: TablePlan, streams: int, where: str | None = None) -> tuple[Counter, TableReader]:
    with TableReader(url, plan, streams=streams, where=where, batch_bytes=64 * 1024,
                     min_rows_per_stream=1) as reader:
        rows = _rows(reader)
    return rows, reader


@pytest.mark.parametrize("table", ["with_pk", "no_pk", "parted"])
def test_four_streams_read_exactly_what_one_stream_reads(source: str, table: str) -> None:
    plan = _plan(source, table)
    single, one = _read(source, plan, 1)
    parallel, four = _read(source, plan, 4)
    assert one.stats.streams == 1
    assert four.stats.streams == 4
    assert parallel == single
    assert four.stats.rows == four.stats.snapshot_rows == sum(single.values())


@pytest.fixture
def opened(monkeypatch) -> list[int]:
    """Records every connection a `TableReader` opens (each still a real one)."""
    calls: list[int] = []
    connect = TableReader._connect

    def counting(self):
        calls.append(1)
        return connect(self)

    monkeypatch.setattr(TableReader, "_connect", counting)
    return calls


def test_n_streams_use_n_connections(source: str, opened: list[int]) -> None:
    """The connection that exported the snapshot reads the first range itself."""
    plan = _plan(source, "with_pk")
    parallel, reader = _read(source, plan, 4)
    assert reader.stats.streams == 4 and len(opened) == 4
    assert sum(parallel.values()) == reader.stats.snapshot_rows == 20000


def test_streams_share_the_batch_size(source: str) -> None:
    """Each of n streams asks for batches of `batch_bytes / n`, so more streams do not hold
    more data in flight (the queue holds as many batches either way)."""
    plan = _plan(source, "with_pk")

    def batch_sizes(streams: int) -> list[int]:
        with TableReader(source, plan, streams=streams, batch_bytes=256 * 1024,
                         min_rows_per_stream=1) as reader:
            return [batch.nbytes for batch in reader.batches()]

    one, four = batch_sizes(1), batch_sizes(4)
    assert sum(one) == sum(four)
    assert max(four) <= max(one) / 3
    assert len(four) >= 3 * len(one)


def test_a_read_too_small_to_split_uses_one_stream(source: str, opened: list[int]) -> None:
    """An incremental window of a few rows is not worth a second connection: with fewer rows
    to read than `min_rows_per_stream` per stream, one connection reads them (no snapshot
    export, no range query)."""
    plan = _plan(source, "with_pk")
    where = '"id" >= 58000'  # ~334 rows: under 2 × 500, over 2 × 100
    with TableReader(source, plan, streams=2, where=where, min_rows_per_stream=500) as reader:
        small = _rows(reader)
    assert 200 < reader.stats.snapshot_rows < 1000
    assert reader.stats.streams == 1 and len(opened) == 1
    with TableReader(source, plan, streams=2, where=where, min_rows_per_stream=100) as reader:
        split = _rows(reader)
    assert reader.stats.streams == 2 and len(opened) == 3
    assert small == split


def test_streams_respect_the_where_filter(source: str) -> None:
    plan = _plan(source, "with_pk")
    single, _ = _read(source, plan, 1, where='"id" >= 20000')
    parallel, reader = _read(source, plan, 3, where='"id" >= 20000')
    assert reader.stats.streams == 3
    assert parallel == single and len(single) == sum(1 for g in range(1, 20001) if g * 3 - 1000 >= 20000)


@pytest.mark.parametrize("table", ["with_pk", "no_pk"])
def test_changes_committed_after_the_snapshot_appear_in_no_stream(source: str, table: str) -> None:
    plan = _plan(source, table)
    before, _ = _read(source, plan, 1)
    changes = {
        "with_pk": "INSERT INTO with_pk VALUES (10000000, 'late', 1, now()), (-10000000, 'early', 1, now()); "
                   "UPDATE with_pk SET label = 'changed' WHERE id % 5 = 0; "
                   "DELETE FROM with_pk WHERE id % 7 = 0",
        "no_pk": "INSERT INTO no_pk SELECT a + 1000, b FROM no_pk; "
                 "UPDATE no_pk SET b = 'changed' WHERE a % 5 = 0; DELETE FROM no_pk WHERE a % 7 = 0",
    }[table]
    with TableReader(source, plan, streams=4, batch_bytes=64 * 1024, min_rows_per_stream=1) as reader:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(f"BEGIN; {changes}; COMMIT")
        during = _rows(reader)
    assert reader.stats.streams == 4
    assert during == before
    after, _ = _read(source, plan, 4)
    assert after != before  # the changes were real


def test_a_lossy_value_in_one_stream_fails_the_read(source: str) -> None:
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE lossy (id int PRIMARY KEY, at date)")
        conn.execute("INSERT INTO lossy SELECT g, '2024-01-01' FROM generate_series(1, 4000) g")
        conn.execute("UPDATE lossy SET at = 'infinity' WHERE id = 3999")
    plan = _plan(source, "lossy")
    with pytest.raises(LossyValueError, match="'infinity'"):
        _read(source, plan, 4)


def test_stopping_early_closes_every_stream(source: str) -> None:
    plan = _plan(source, "no_pk")
    started = time.monotonic()
    with TableReader(source, plan, streams=4, batch_bytes=16 * 1024, min_rows_per_stream=1) as reader:
        batches = reader.batches()
        next(batches)
        batches.close()
    assert time.monotonic() - started < 10
    with psycopg.connect(source, autocommit=True) as conn:
        deadline = time.monotonic() + 5
        while True:
            open_readers = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'pg_to_bq'"
            ).fetchone()[0]
            if open_readers == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert open_readers == 0
