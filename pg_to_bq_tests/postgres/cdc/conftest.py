"""Fixtures for the change-capture tests: a PostgreSQL server with wal_level=logical for the
session, a fresh database per test (its slots dropped with it), helpers to run SQL and to
read a slot completely."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pg_to_bq.postgres.cdc.stream import ChangeStream
from pg_to_bq.postgres.embedded import EmbeddedPostgres

LOGICAL = {"wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20",
           # two-phase decoding needs prepared transactions
           "max_prepared_transactions": "10"}


class Server:
    """A running test server and its admin URL."""

    def __init__(self, server: EmbeddedPostgres) -> None:
        self.server = server
        self.admin_url = server.url("postgres")

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.server.port}/{database}"

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        name = f"cdc_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.url(name)
        finally:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                # A database with a slot cannot be dropped; a reader a test left behind
                # must not hold its slot either.
                for (slot, pid) in conn.execute(
                        "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                        (name,)).fetchall():
                    if pid:
                        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_server(prefix: str, settings: dict[str, str]) -> EmbeddedPostgres:
    # Not under pytest's tmp dir: it is private (0700) and the server may run as another user.
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix=prefix)), settings=settings)
    return server.start()


@pytest.fixture(scope="session")
def logical_server() -> Iterator[Server]:
    server = start_server("pg_to_bq_cdc_pg_", LOGICAL)
    try:
        yield Server(server)
    finally:
        server.destroy()


@pytest.fixture
def db(logical_server: Server) -> Iterator[str]:
    """The URL of a fresh database on the wal_level=logical server."""
    with logical_server.database() as url:
        yield url


def run(url: str, *statements: str) -> None:
    """Run each statement in its own autocommit transaction."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def rows(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def read_all(url: str, slot: str, publication: str = "pub", **options) -> tuple[list, ChangeStream]:
    """Every transaction of one read as (begin, [changes], commit), and the closed stream."""
    out = []
    with ChangeStream(url, slot, [publication], **options) as stream:
        for txn in stream.transactions():
            changes = list(txn)
            out.append((txn.begin, changes, txn.commit))
    return out, stream
