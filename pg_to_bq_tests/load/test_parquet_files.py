"""Tier 1: the table's parquet load file — row groups sized for the destination, no file left
behind by a failed or killed extraction."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pg_to_bq.load.parquet_files import (
    DUCKDB_ROW_GROUP_BYTES,
    MIN_ROW_GROUP_ROWS,
    STALE_AFTER_S,
    remove_stale_files,
    write_table_file,
)

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("text", pa.string())])


def _batch(rows: int, width: int, start: int = 0) -> pa.RecordBatch:
    return pa.record_batch([pa.array(range(start, start + rows), pa.int64()),
                            pa.array(["x" * width] * rows)], schema=SCHEMA)


def _row_groups(path: Path) -> list[tuple[int, int]]:
    meta = pq.ParquetFile(path).metadata
    return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size)
            for i in range(meta.num_row_groups)]


def test_duckdb_row_groups_are_about_two_megabytes_whatever_the_row_width(tmp_path: Path) -> None:
    """DuckDB's reading threads each hold a row group: 16 MB groups (one per batch) made the
    insert spill under its memory limit."""
    batches = [_batch(40_000, 100), _batch(400, 50_000, start=40_000)]
    path, rows = write_table_file(batches, SCHEMA, tmp_path, "duckdb")
    assert rows == 40_400
    groups = _row_groups(path)
    assert sum(n for n, _ in groups) == 40_400
    assert all(size <= 1.5 * DUCKDB_ROW_GROUP_BYTES for _, size in groups), groups
    assert len(groups) > 4, groups  # ~4 MB of narrow rows and ~20 MB of wide ones
    assert pq.read_table(path).column("id").to_pylist() == list(range(40_400))


def test_very_wide_rows_still_make_row_groups_of_several_rows(tmp_path: Path) -> None:
    path, _ = write_table_file([_batch(100, 1_000_000)], SCHEMA, tmp_path, "duckdb")
    assert {n for n, _ in _row_groups(path)} <= {MIN_ROW_GROUP_ROWS, 100 % MIN_ROW_GROUP_ROWS}


def test_bigquery_keeps_one_row_group_per_batch(tmp_path: Path) -> None:
    path, _ = write_table_file([_batch(40_000, 100), _batch(10, 100, start=40_000)], SCHEMA,
                               tmp_path, "bigquery")
    assert [n for n, _ in _row_groups(path)] == [40_000, 10]


def test_an_empty_table_gives_a_file_with_its_columns(tmp_path: Path) -> None:
    path, rows = write_table_file([], SCHEMA, tmp_path, "duckdb")
    assert rows == 0
    assert pq.read_schema(path).names == ["id", "text"]


def test_a_failed_extraction_leaves_no_file(tmp_path: Path) -> None:
    def failing():
        yield _batch(10, 10)
        raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError, match="connection lost"):
        write_table_file(failing(), SCHEMA, tmp_path, "duckdb")
    assert list(tmp_path.iterdir()) == []


def test_only_files_nobody_wrote_to_for_an_hour_are_removed(tmp_path: Path) -> None:
    old, recent = tmp_path / "old.parquet", tmp_path / "recent.parquet"
    for path in (old, recent):
        path.write_bytes(b"PAR1")
    now = recent.stat().st_mtime
    os.utime(old, (now - STALE_AFTER_S - 1, now - STALE_AFTER_S - 1))
    assert remove_stale_files(tmp_path, now=now) == [old]
    assert not old.exists() and recent.exists()
    assert remove_stale_files(tmp_path / "missing") == []
