"""Tier 2: loads into one DuckDB file from several processes wait their turn — real
PostgreSQL, real DuckDB file, real processes.

DuckDB lets one process write a database file; another process opening it fails at once.
Concurrent runs from the UI, `pg-to-bq sync` next to a running job, and the multiprocess
executor (`PG_TO_BQ_EXECUTOR=multiprocess`, the default before DuckDB got `in_process`) all
load from parallel processes; a nightly run of 60 tables into one DuckDB file failed 3 of
them with "Could not set lock on file" before `pg_to_bq.destinations.writer_lock`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb

from pg_to_bq.destinations.writer_lock import exclusive, lock_path
from pg_to_bq.orchestration.resources import Destination
from pg_to_bq_tests.conftest import run_sql

MATERIALIZE = (
    "import dagster as dg\n"
    "from pg_to_bq.orchestration.code_location import build_definitions\n"
    "defs = build_definitions()\n"
    "result = dg.materialize(list(defs.assets), selection=dg.AssetSelection.kind('dlt'),\n"
    "                        resources=defs.resources, raise_on_error=False)\n"
    "print('SUCCESS' if result.success else 'FAILED')\n"
)


def test_a_load_waits_while_another_process_writes_the_duckdb_file(pg_url: str, settings_env,
                                                                    tmp_path: Path) -> None:
    """This process holds the writer lock and the DuckDB file itself open for writing, as a
    running load does. A load started in another process must wait (and say so in its log),
    then load once the file is free; without the lock it would fail at once on DuckDB's."""
    run_sql(pg_url, "CREATE TABLE items (id int PRIMARY KEY, v text);"
                    "INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 500) g;")
    path = settings_env(pg_url)
    waiting = threading.Event()
    output: list[str] = []

    with exclusive(path):
        holder = duckdb.connect(str(path))
        holder.execute("CREATE TABLE held_by_another_load AS SELECT 1 AS x")
        proc = subprocess.Popen([sys.executable, "-c", MATERIALIZE], env=dict(os.environ),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def read() -> None:
            for line in proc.stdout:
                output.append(line)
                if "waiting for the DuckDB file" in line:
                    waiting.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 120
            while not waiting.wait(0.2) and proc.poll() is None and time.monotonic() < deadline:
                pass
            assert waiting.is_set(), "".join(output[-40:])
        finally:
            holder.close()
    assert proc.wait(timeout=300) == 0, "".join(output[-40:])
    reader.join(timeout=10)
    assert output[-1].strip() == "SUCCESS", "".join(output[-40:])
    with duckdb.connect(str(path), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM raw.items").fetchone() == (500,)
        assert conn.execute("SELECT x FROM held_by_another_load").fetchone() == (1,)


def test_the_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    """A load killed mid-write must not leave the file locked for every later load."""
    database = tmp_path / "d.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from pg_to_bq.destinations.writer_lock import exclusive\n"
         f"with exclusive(Path({str(database)!r})):\n"
         "    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waits: list[float] = []
        blocked = threading.Thread(target=lambda: _acquire(database, waits), daemon=True)
        blocked.start()
        blocked.join(timeout=1.0)
        assert blocked.is_alive() and waits, "the lock was not held by the other process"
    finally:
        holder.kill()
        holder.wait()
    blocked.join(timeout=30)
    assert not blocked.is_alive()
    assert lock_path(database).exists()


def _acquire(database: Path, waits: list[float]) -> None:
    with exclusive(database, on_wait=waits.append):
        pass


def test_bigquery_takes_no_lock(tmp_path: Path) -> None:
    with Destination(kind="bigquery", dataset="raw", work_dir=str(tmp_path)).writing():
        assert not list(tmp_path.iterdir())
