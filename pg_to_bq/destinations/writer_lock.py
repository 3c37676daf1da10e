"""One writer at a time for a DuckDB destination file (or a dlt pipeline's working
directory), across processes.

DuckDB lets one process open a database file for writing; a second process fails at once
("Could not set lock on file"). Dagster's multiprocess executor runs table steps in
parallel processes, and the UI can start several runs, so without this lock loads into the
same DuckDB file failed at random. `exclusive(path)` holds an advisory lock on a file next to
the database while a table loads: a second load waits for it instead of failing. The
operating system releases the lock when its process ends, even on a crash.

**Keeping the file between sections.** A step writes in three short sections (what the
destination holds, the load, the checks and states) with PostgreSQL reads in between, and
each section opened the file and closed it again. Opening a DuckDB file that holds 1,000
tables takes ~0.15 s (its catalog is read) and the close checkpoints: ~5 s of an unchanged
1,000-table re-sync and ~8 s of its first sync. Inside `kept()` (a `pg-to-bq sync` run, a
step's load) a process keeps the lock and, through `keep`, the file open (one connection,
so every later open in the process attaches to the open database) after a section ends,
and lets both go when the scope ends, or as soon as another process waits for the lock: a
waiting process holds a shared lock on `<file>.pg_to_bq.waiting`, and a thread of the
keeping process, polling every `_POLL_S`, lets go once no section of its own is running.
So a waiting load waits for at most the section running when it arrived, as without
keeping.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# A wait is announced (`on_wait`) once it has lasted this long, then every WAIT_LOG_EVERY_S:
# waiting for another process's section to end usually takes well under a second, and a
# line for each such wait was noise.
WAIT_FIRST_REPORT_S = 2.0
WAIT_LOG_EVERY_S = 30.0
_POLL_S = 0.1


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".pg_to_bq.lock")


def waiting_path(database: Path) -> Path:
    return database.with_name(database.name + ".pg_to_bq.waiting")


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _lock(database: Path, on_wait: Callable[[float], None] | None) -> int:
    """The writer lock of `database`, waited for (and the wait announced) when busy: its fd."""
    fd = _open(lock_path(database))
    announced: int | None = None
    try:
        started = time.monotonic()
        next_report = started + WAIT_FIRST_REPORT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if announced is None:
                    # Seen by a process keeping the lock between its sections (`kept`).
                    announced = _open(waiting_path(database))
                    fcntl.flock(announced, fcntl.LOCK_SH)
                now = time.monotonic()
                if on_wait is not None and now >= next_report:
                    on_wait(now - started)
                    next_report = now + WAIT_LOG_EVERY_S
                time.sleep(_POLL_S)
    except BaseException:
        os.close(fd)
        raise
    finally:
        if announced is not None:
            os.close(announced)  # (closing releases its lock)


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _someone_waits(database: Path) -> bool:
    fd = _open(waiting_path(database))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class _Lease:
    """This process's hold on one database's writer lock. `section` admits one section at a
    time (threads of one process wait for each other, as separate processes do); the
    watcher takes it too, so it lets the lock go only between sections."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.section = threading.Lock()
        self.fd: int | None = None
        self.keeper: Any = None
        self.keeps = False  # entered with `keep`: kept between sections inside `kept()`
        self.watcher: threading.Thread | None = None

    def enter(self, on_wait: Callable[[float], None] | None,
              keep: Callable[[], Any] | None) -> None:
        self.section.acquire()
        try:
            if self.fd is None:
                self.fd = _lock(self.database, on_wait)
            self.keeps = keep is not None
            if self.keeps and self.keeper is None and _keeping():
                with contextlib.suppress(Exception):
                    # (a file that does not open is the section's own failure to report)
                    self.keeper = keep()
        except BaseException:
            self.section.release()
            raise

    def leave(self) -> None:
        try:
            if not (self.keeps and _keeping()) or _someone_waits(self.database):
                self.release()
                return
            if self.keeper is not None and hasattr(self.keeper, "settle"):
                try:
                    self.keeper.settle()
                except Exception:  # noqa: BLE001 - not kept then: closed as without keeping
                    self.release()
                    return
            if self.watcher is None or not self.watcher.is_alive():
                self.watcher = threading.Thread(target=self._watch, daemon=True,
                                                name="pg_to_bq-writer-lock")
                self.watcher.start()
        finally:
            self.section.release()

    def release(self) -> None:
        """Let the file and the lock go (the caller holds `section`)."""
        keeper, self.keeper = self.keeper, None
        fd, self.fd = self.fd, None
        try:
            if keeper is not None:
                keeper.close()  # the last connection: DuckDB checkpoints and closes the file
        finally:
            if fd is not None:
                _unlock(fd)

    def release_between_sections(self) -> None:
        with self.section:
            self.release()

    def _watch(self) -> None:
        while True:
            time.sleep(_POLL_S)
            if not self.section.acquire(blocking=False):
                continue  # a section runs: it decides when it ends
            try:
                if self.fd is None:
                    return
                if not _keeping() or _someone_waits(self.database):
                    self.release()
                    return
            finally:
                self.section.release()


_leases: dict[Path, _Lease] = {}
_leases_lock = threading.Lock()
_scopes = 0


def _keeping() -> bool:
    return _scopes > 0


def _lease(database: Path) -> _Lease:
    key = database.resolve()
    with _leases_lock:
        lease = _leases.get(key)
        if lease is None:
            lease = _leases[key] = _Lease(database)
        return lease


@contextlib.contextmanager
def exclusive(database: Path, on_wait: Callable[[float], None] | None = None,
              keep: Callable[[], Any] | None = None) -> Iterator[None]:
    """Hold the writer lock of the DuckDB file `database` for the block. `on_wait(seconds)` is
    called when the lock is busy, then every WAIT_LOG_EVERY_S while waiting. Inside `kept()`
    the lock outlives the block (see the module's docstring), and `keep()`, called once with
    the lock held, opens what keeps the file open until then (closed with `.close()`, or
    None; its `settle()`, if it has one, runs after each section). Without `keep` the lock
    is let go at the end of the block, always."""
    lease = _lease(database)
    lease.enter(on_wait, keep)
    try:
        yield
    finally:
        lease.leave()


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Writer locks (and files) taken in this process during the block are kept between
    their sections until it ends, unless another process waits for one. Nests."""
    global _scopes
    with _leases_lock:
        _scopes += 1
    try:
        yield
    finally:
        with _leases_lock:
            _scopes -= 1
            leases = list(_leases.values()) if _scopes == 0 else []
        for lease in leases:
            lease.release_between_sections()
