"""Change capture's spool rows as Arrow tables, the form the capture appends them in
(`pg_to_bq.load.capture`): the spool's columns, key changes a batch at a time, and the run
marker. Apart from `pg_to_bq.load.changes`, which reads the spool with plain SQL: a step
that applies changes never needs Arrow for it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from pg_to_bq.load.changes import RUN_MARKER

SPOOL_SCHEMA = pa.schema([("table_name", pa.string()), ("lsn", pa.int64()),
                          ("op", pa.string()), ("key", pa.string())])


def spool_batches(changes: Iterable[Any], batch_rows: int = 50_000) -> Iterator[pa.Table]:
    """Key changes (`pg_to_bq.postgres.cdc.keys.KeyChange`) as spool rows, a batch at a time."""
    rows: list[tuple] = []
    for change in changes:
        rows.append((f"{change.schema}.{change.table}", change.lsn, change.op,
                     json.dumps(list(change.key))))
        if len(rows) >= batch_rows:
            yield _table(rows)
            rows = []
    if rows:
        yield _table(rows)


def _table(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.table([pa.array(c, type=f.type) for c, f in zip(columns, SPOOL_SCHEMA, strict=True)],
                    schema=SPOOL_SCHEMA)


def marker(run_id: str, position: int) -> pa.Table:
    """The spool row saying run `run_id` read the slot up to `position`."""
    return _table([("", position, RUN_MARKER, run_id)])
