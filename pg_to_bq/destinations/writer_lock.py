"""One writer at a time for a DuckDB destination file (or a dlt pipeline's working
directory), across processes.

DuckDB lets one process open a database file for writing; a second process fails at once
("Could not set lock on file"). Dagster's multiprocess executor runs table steps in
parallel processes, and the UI can start several runs, so without this lock loads into the
same DuckDB file failed at random. `exclusive(path)` holds an advisory lock on a file next to
the database while a table loads: a second load waits for it instead of failing. The
operating system releases the lock when its process ends, even on a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

WAIT_LOG_EVERY_S = 30.0
_POLL_S = 0.1


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".pg_to_bq.lock")


@contextlib.contextmanager
def exclusive(database: Path, on_wait: Callable[[float], None] | None = None) -> Iterator[None]:
    """Hold the writer lock of the DuckDB file `database` for the block. `on_wait(seconds)` is
    called when the lock is busy, then every WAIT_LOG_EVERY_S while waiting."""
    path = lock_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        started = time.monotonic()
        next_report = started
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if on_wait is not None and now >= next_report:
                    on_wait(now - started)
                    next_report = now + WAIT_LOG_EVERY_S
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
