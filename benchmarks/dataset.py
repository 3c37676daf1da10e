"""The benchmark dataset: a 12-column table built inside PostgreSQL (no client round trips).

Columns follow DESIGN.md's measured table — bigint, int, text ×3, numeric(12,2), float8,
bool, timestamptz ×2, jsonb, uuid — with a primary key and an `updated_at` cursor, so
pg_to_bq plans it as an incremental merge. Values are deterministic functions of `id`,
so every run (and every path in a run) reads the same bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

TABLE = "bench12"
SLICE_TABLE = "bench12_slice"

CREATE_SQL = """
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} (
    id          bigint PRIMARY KEY,
    quantity    integer NOT NULL,
    name        text NOT NULL,
    email       text,
    note        text,
    amount      numeric(12,2),
    score       double precision,
    active      boolean NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    payload     jsonb,
    ref         uuid NOT NULL
);
"""

# md5() gives deterministic pseudo-random text; updated_at spreads over 2025 (all in the past).
INSERT_SQL = """
INSERT INTO {table}
SELECT i,
       (i * 7919) % 100000,
       'customer ' || md5(i::text),
       CASE WHEN i % 10 = 0 THEN NULL ELSE 'user' || i || '@example.com' END,
       CASE WHEN i % 4 = 0 THEN NULL
            ELSE 'order note ' || md5((i * 31)::text) || ' '
                 || repeat(chr((97 + i % 26)::int), (10 + i % 40)::int) END,
       ((i * 37) % 10000000) / 100.0,
       (i % 1000) / 7.0,
       i % 3 <> 0,
       timestamptz '2024-01-01 00:00:00+00' + (i % 31536000) * interval '1 second',
       timestamptz '2025-01-01 00:00:00+00' + (i % 31536000) * interval '1 second',
       jsonb_build_object('k', i % 100, 'tag', 't' || (i % 17), 'ok', i % 2 = 0),
       md5('ref' || i)::uuid
FROM generate_series({start}::bigint, {stop}::bigint) AS g(i);
"""


def build(url: str, rows: int, slice_rows: int, log=print) -> dict:
    """Create (or reuse, when it already holds exactly `rows`) the benchmark tables."""
    with psycopg.connect(url, autocommit=True) as conn:
        existing = _row_count(conn, TABLE)
        if existing != rows:
            started = time.monotonic()
            conn.execute(CREATE_SQL.format(table=TABLE))
            step = 1_000_000
            for start in range(1, rows + 1, step):
                stop = min(rows, start + step - 1)
                conn.execute(INSERT_SQL.format(table=TABLE, start=start, stop=stop))
                log(f"  {TABLE}: {stop:,}/{rows:,} rows")
            conn.execute(f"CREATE INDEX {TABLE}_updated_at ON {TABLE} (updated_at)")
            conn.execute(f"VACUUM ANALYZE {TABLE}")
            log(f"  built {TABLE} in {time.monotonic() - started:.1f}s")
        if _row_count(conn, SLICE_TABLE) != min(slice_rows, rows):
            conn.execute(f"DROP TABLE IF EXISTS {SLICE_TABLE}")
            conn.execute(f"CREATE TABLE {SLICE_TABLE} AS SELECT * FROM {TABLE} "
                         f"WHERE id <= {int(slice_rows)}")
            conn.execute(f"ALTER TABLE {SLICE_TABLE} ADD PRIMARY KEY (id)")
            conn.execute(f"VACUUM ANALYZE {SLICE_TABLE}")
        size = conn.execute(f"SELECT pg_total_relation_size('{TABLE}'), "
                            f"pg_relation_size('{TABLE}')").fetchone()
        version = conn.execute("SHOW server_version").fetchone()[0]
    return {"table": TABLE, "rows": rows, "slice_table": SLICE_TABLE,
            "slice_rows": min(slice_rows, rows), "total_bytes": size[0], "heap_bytes": size[1],
            "server_version": version}


def _row_count(conn: psycopg.Connection, table: str) -> int | None:
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
    if not exists:
        return None
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def start_server(data_dir: Path):
    from pg_to_bq.postgres.embedded import EmbeddedPostgres

    return EmbeddedPostgres(data_dir).start()
