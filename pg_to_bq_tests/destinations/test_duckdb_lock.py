"""Tier 2: loads into one DuckDB file from several processes wait their turn — real
PostgreSQL, real DuckDB file, real processes.

DuckDB lets one process write a database file; another process opening it fails at once.
Concurrent runs from the UI, `pg-to-bq sync` next to a running job, and the multiprocess
executor (`PG_TO_BQ_EXECUTOR=multiprocess`, the default before DuckDB got `in_process`) all
load from parallel processes; a nightly run of 60 tables into one DuckDB file failed 3 of
them with "Could not set lock on file" before `pg_to_bq.destinations.writer_lock`.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

from pg_to_bq.destinations.duckdb_session import KeptFile
from pg_to_bq.destinations.writer_lock import (
    WAIT_FIRST_REPORT_S,
    exclusive,
    kept,
    lock_path,
    waiting_path,
)
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
    holder = _holder(database, seconds=600)
    try:
        waits: list[float] = []
        blocked = threading.Thread(target=lambda: _acquire(database, waits), daemon=True)
        blocked.start()
        blocked.join(timeout=WAIT_FIRST_REPORT_S + 1.0)  # (a wait is announced after that)
        assert blocked.is_alive() and waits, "the lock was not held by the other process"
    finally:
        holder.kill()
        holder.wait()
    blocked.join(timeout=30)
    assert not blocked.is_alive()
    assert lock_path(database).exists()


def test_a_short_wait_is_not_announced(tmp_path: Path) -> None:
    """Waiting for another process's section to end usually takes well under a second: the
    waiter gets the lock without a line in its log (each such wait logged one, noise)."""
    database = tmp_path / "d.duckdb"
    holder = _holder(database, seconds=0.3)
    try:
        waits: list[float] = []
        started = time.monotonic()
        _acquire(database, waits)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert waited < WAIT_FIRST_REPORT_S, "the holder held the lock longer than expected"
    assert waits == []


def _holder(database: Path, seconds: float) -> subprocess.Popen:
    """Another process holding `database`'s writer lock for `seconds`, once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; "
         "from pg_to_bq.destinations.writer_lock import exclusive\n"
         f"with exclusive(Path({str(database)!r})):\n"
         f"    print('held', flush=True); time.sleep({seconds})"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _acquire(database: Path, waits: list[float]) -> None:
    with exclusive(database, on_wait=waits.append):
        pass


def test_bigquery_takes_no_lock(tmp_path: Path) -> None:
    with Destination(kind="bigquery", dataset="raw", work_dir=str(tmp_path)).writing():
        assert not list(tmp_path.iterdir())


def _keep(database: Path) -> Any:
    return lambda: KeptFile(str(database), "88MB")


def _busy(path: Path) -> bool:
    """Whether another open file description fails to take an exclusive lock on `path`
    (without waiting, and without announcing a wait)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _held_elsewhere(database: Path) -> bool:
    return _busy(lock_path(database))


OPEN_ELSEWHERE = ("import sys, duckdb\n"
                  "try:\n"
                  "    duckdb.connect(sys.argv[1]).close()\n"
                  "except duckdb.IOException as exc:\n"
                  "    print('locked' if 'lock' in str(exc) else exc)\n"
                  "else:\n"
                  "    print('opened')\n")


def _open_elsewhere(database: Path) -> str:
    return subprocess.run([sys.executable, "-c", OPEN_ELSEWHERE, str(database)],
                          capture_output=True, text=True, timeout=60).stdout.strip()


def test_a_kept_lock_and_file_outlive_their_section_until_the_scope_ends(tmp_path: Path) -> None:
    """Inside `kept()` the lock and the open file stay after a section (so the next section
    opens nothing); a block without `keep` (a pipeline's folder) lets go as before; the
    scope's end lets both go, checkpointed: another process opens the file and sees the rows."""
    database = tmp_path / "d.duckdb"
    folder = tmp_path / "pipeline"
    with kept():
        with exclusive(database, keep=_keep(database)), duckdb.connect(str(database)) as conn:
            conn.execute("CREATE TABLE t AS SELECT range AS i FROM range(1000)")
        with exclusive(folder):
            pass
        assert _held_elsewhere(database)
        assert not _held_elsewhere(folder)
        assert _open_elsewhere(database) == "locked"
        with exclusive(database, keep=_keep(database)), duckdb.connect(str(database)) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    assert not _held_elsewhere(database)
    assert _open_elsewhere(database) == "opened"
    assert not Path(f"{database}.wal").exists() or Path(f"{database}.wal").stat().st_size == 0


def test_without_a_scope_the_lock_goes_at_the_end_of_each_block(tmp_path: Path) -> None:
    database = tmp_path / "d.duckdb"
    with exclusive(database, keep=_keep(database)):
        duckdb.connect(str(database)).close()
    assert not _held_elsewhere(database)
    assert _open_elsewhere(database) == "opened"


WAITER = ("import sys, duckdb\n"
          "from pathlib import Path\n"
          "from pg_to_bq.destinations.writer_lock import exclusive\n"
          "print('started', flush=True)\n"
          "with exclusive(Path(sys.argv[1])):\n"
          "    with duckdb.connect(sys.argv[1]) as conn:\n"
          "        conn.execute('INSERT INTO t VALUES (2)')\n"
          "print('wrote', flush=True)\n")


def test_a_process_waiting_gets_a_kept_lock_between_sections(tmp_path: Path) -> None:
    """A process that waits for a kept lock gets it while its holder is between sections
    (reading PostgreSQL, say), within the watcher's poll, not when the holder's run ends; the
    holder's next section waits its turn and sees what the other process wrote."""
    database = tmp_path / "d.duckdb"
    with kept():
        with exclusive(database, keep=_keep(database)), duckdb.connect(str(database)) as conn:
            conn.execute("CREATE TABLE t (i int)")
            conn.execute("INSERT INTO t VALUES (1)")
        waiter = subprocess.run([sys.executable, "-c", WAITER, str(database)],
                                capture_output=True, text=True, timeout=120)
        assert waiter.stdout.split() == ["started", "wrote"], waiter.stderr
        with exclusive(database, keep=_keep(database)), duckdb.connect(str(database)) as conn:
            assert conn.execute("SELECT i FROM t ORDER BY i").fetchall() == [(1,), (2,)]


def test_a_process_waiting_during_a_section_gets_the_lock_when_it_ends(tmp_path: Path) -> None:
    """The waiter arrives while a section runs: the section's end lets the lock go (the
    waiter is seen there, not only by the watcher)."""
    database = tmp_path / "d.duckdb"
    with kept():
        with exclusive(database, keep=_keep(database)):
            with duckdb.connect(str(database)) as conn:
                conn.execute("CREATE TABLE t (i int)")
            waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(database)],
                                      stdout=subprocess.PIPE, text=True)
            assert waiter.stdout.readline().strip() == "started"
            deadline = time.monotonic() + 60
            while not waiting_path(database).exists() or not _busy(waiting_path(database)):
                assert time.monotonic() < deadline, "the waiter never announced itself"
                time.sleep(0.05)
        assert waiter.wait(timeout=60) == 0
        assert waiter.stdout.read().strip() == "wrote"


def test_a_kept_file_lets_its_cached_blocks_go_after_each_section(tmp_path: Path) -> None:
    """Between sections a kept file holds no cached table blocks (a run of 1,000 tables kept
    75 MB more without this), and its memory limit is the configured one again."""
    database = tmp_path / "d.duckdb"
    with kept():
        with exclusive(database, keep=lambda: KeptFile(str(database), "64MB")), \
                duckdb.connect(str(database)) as conn:
            conn.execute("SET GLOBAL memory_limit = '64MB'")
            conn.execute("CREATE TABLE t AS SELECT range AS i, md5(range::text) AS s "
                         "FROM range(1000000)")
            conn.execute("CHECKPOINT")
            conn.execute("SELECT sum(hash(i, s)) FROM t").fetchall()
            assert _cached_mb(conn) > 8
        with duckdb.connect(str(database)) as conn:  # attaches to the kept database
            assert _cached_mb(conn) < 2
            limit = conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]
            assert limit.startswith("61.0 MiB") or limit.startswith("64"), limit


def _cached_mb(conn: Any) -> float:
    return conn.execute("SELECT coalesce(sum(memory_usage_bytes), 0) / 1048576 "
                        "FROM duckdb_memory() WHERE tag = 'BASE_TABLE'").fetchone()[0]
