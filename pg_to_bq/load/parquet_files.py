"""The parquet load file of one table, written from its Arrow batches and handed to dlt.

pg_to_bq writes the file itself and gives it to dlt as an imported load file
(`dlt.mark.with_file_import`): dlt's own Arrow writer runs per batch through its schema
inference and always dictionary-encodes and gathers statistics. Those were most of the
extraction's CPU (the DuckDB destination reads the file once, locally, and needs neither),
and the types are already exact: the dlt column hints come from the plan, not from the file.

For BigQuery the file keeps dlt's defaults (dictionary pages and snappy make the upload
smaller), one row group per batch. The file is written a batch at a time: memory stays
bounded by the batch size.

For DuckDB a batch is cut into row groups of about `DUCKDB_ROW_GROUP_BYTES`: each of
DuckDB's reading threads holds a whole row group, and with its bounded buffer pool
(`pg_to_bq.destinations.lazy.DUCKDB_GLOBAL_CONFIG`) 16 MB groups made the insert spill to
disk (1M rows of the benchmark table: 3.4-3.9 CPU-s with 16 MB groups, 2.6-2.8 with 2 MB groups).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# What dlt 1.31's `ParquetDataWriter` passes pyarrow by default.
_DLT_DEFAULTS: dict[str, Any] = {"version": "2.4", "use_compliant_nested_type": True,
                                 "compression": "snappy"}
_DESTINATION_OPTIONS: dict[str, dict[str, Any]] = {
    "duckdb": {"compression": "none", "use_dictionary": False, "write_statistics": False},
}


# Target size of one row group, by destination (else one row group per batch).
DUCKDB_ROW_GROUP_BYTES = 2 * 1024 * 1024
_ROW_GROUP_BYTES: dict[str, int] = {"duckdb": DUCKDB_ROW_GROUP_BYTES}
# Row groups never shorter than this, however wide the rows.
MIN_ROW_GROUP_ROWS = 16


def writer_options(destination_name: str) -> dict[str, Any]:
    return {**_DLT_DEFAULTS, **_DESTINATION_OPTIONS.get(destination_name, {})}


def row_group_rows(batch: pa.RecordBatch, destination_name: str) -> int | None:
    """Rows per row group for `batch` (its rows' average width against the destination's
    target), or None for one row group per batch."""
    target = _ROW_GROUP_BYTES.get(destination_name)
    if target is None or not batch.num_rows:
        return None
    per_row = max(1, batch.nbytes // batch.num_rows)
    return max(MIN_ROW_GROUP_ROWS, target // per_row)


# A file not written to for this long belongs to a process that died mid-extraction.
STALE_AFTER_S = 3600


def remove_stale_files(directory: Path, now: float | None = None) -> list[Path]:
    """Remove the files a killed extraction left in `directory` (a running extraction writes
    its file continuously, so a recent file is never touched); returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for path in directory.glob("*.parquet") if directory.is_dir() else ():
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_AFTER_S:
                path.unlink()
                removed.append(path)
    return removed


def write_table_file(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, directory: Path, destination_name: str
) -> tuple[Path, int]:
    """Write `batches` (all of `schema`) to a new parquet file under `directory`; returns the
    file and its row count. An empty `batches` gives a file with the columns and no rows
    (so dlt creates, or on replace empties, the table). A failure removes the partial file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid.uuid4().hex}.parquet"
    rows = 0
    try:
        with pq.ParquetWriter(path, schema, **writer_options(destination_name)) as writer:
            for batch in batches:
                if batch.num_rows:
                    writer.write_batch(batch, row_group_size=row_group_rows(
                        batch, destination_name))
                    rows += batch.num_rows
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return path, rows
