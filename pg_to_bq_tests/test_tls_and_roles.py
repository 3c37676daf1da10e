"""Transport and privileges of the source connection, as a user runs `pg-to-bq sync`.

TLS: a PostgreSQL 15 server with `ssl=on` and only `hostssl` rules
(`pg_to_bq_tests/support/tls_postgres.py`, Debian's `postgresql-15` binaries). A sync with
`sslmode=verify-full&sslrootcert=<ca.pem>` loads; a plain connection is refused; a wrong CA
is one error line before any table is tried (also when a catalog snapshot exists and the
catalog needs no connection); the COPY reads (the ADBC driver) verify the server too.

Least privilege: the role of docs/security.md, created with exactly that SQL on the
suite's embedded server, loads every table it was granted (also one created after the
grants) and a table outside its grants fails alone, naming the GRANT to add.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pg_to_bq.catalog import discover
from pg_to_bq.duckdb_destination import duckdb_destination
from pg_to_bq.load import load_table
from pg_to_bq.plan import build_plans
from pg_to_bq.source import SourceUnreachable
from pg_to_bq_tests.conftest import duck_rows
from pg_to_bq_tests.support.tls_postgres import TlsPostgres, debian_pg15_missing

REPO_ROOT = Path(__file__).resolve().parents[1]
LOADER, LOADER_PASSWORD = "loader", "Tls-s3cret-pw"
SHOP_SQL = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 3000) g;
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, total numeric(12,2),
                     ordered_at timestamptz NOT NULL DEFAULT now());
INSERT INTO orders SELECT g, g % 3000 + 1, g * 1.25, now() FROM generate_series(1, 20000) g;
CREATE TABLE notes (body text);
INSERT INTO notes VALUES ('a'), ('b');
"""
SHOP_ROWS = {"customers": 3000, "orders": 20000, "notes": 2}


def sync(*args: str) -> subprocess.CompletedProcess:
    """`python -m pg_to_bq.cli sync ARGS` with this environment (PG_TO_BQ_* set by
    `settings_env`), running this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "pg_to_bq.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsPostgres]:
    reason = debian_pg15_missing()
    if reason:
        pytest.skip(reason)
    # Not under pytest's temporary root (private to root; the server runs as another user).
    with TlsPostgres.started(Path(tempfile.mkdtemp(prefix="pg_to_bq_tls_"))) as server:
        server.admin_sql("CREATE DATABASE shop")
        server.admin_sql(SHOP_SQL, "shop")
        server.admin_sql(f"CREATE ROLE {LOADER} LOGIN PASSWORD '{LOADER_PASSWORD}';"
                         f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {LOADER}", "shop")
        yield server


def loader_url(server: TlsPostgres, **params: str) -> str:
    return server.url_for(LOADER, LOADER_PASSWORD, "shop", **params)


def verified(server: TlsPostgres, ca: Path | None = None) -> dict[str, str]:
    return {"sslmode": "verify-full", "sslrootcert": str(ca or server.tls.ca)}


def test_verify_full_with_the_right_ca_loads(tls_server: TlsPostgres, settings_env) -> None:
    duckdb_path = settings_env(loader_url(tls_server, **verified(tls_server)))
    result = sync("sync")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 loaded, 0 failed, 23,002 rows" in result.stdout, result.stdout
    for table, rows in SHOP_ROWS.items():
        assert duck_rows(duckdb_path, f"SELECT count(*) FROM raw.{table}") == [(rows,)]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """What a failed sync said: every line of both streams."""
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_a_plain_connection_is_refused_with_one_clear_line(tls_server: TlsPostgres,
                                                           settings_env) -> None:
    settings_env(loader_url(tls_server, sslmode="disable"))
    result = sync("sync")
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = error_lines(result)
    assert line.startswith(f"error: cannot connect to PostgreSQL at localhost:{tls_server.port}"
                           "/shop: "), line
    assert 'no pg_hba.conf entry for host "127.0.0.1", user "loader", database "shop", ' \
           "no encryption; the server accepts only TLS connections: add sslmode=verify-full" \
           in line, line
    assert LOADER_PASSWORD not in line


@pytest.mark.parametrize("snapshot", [False, True], ids=["live catalog", "catalog snapshot"])
def test_a_wrong_ca_is_one_line_before_any_table(tls_server: TlsPostgres, settings_env,
                                                 snapshot: bool) -> None:
    """With a snapshot the catalog needs no connection: before the check each table
    failed with the same SSL error (3 progress lines, 3 summary lines, exit 1)."""
    if snapshot:
        settings_env(loader_url(tls_server, **verified(tls_server)))
        discovered = sync("discover")
        assert discovered.returncode == 0, discovered.stdout + discovered.stderr
    duckdb_path = settings_env(
        loader_url(tls_server, **verified(tls_server, tls_server.tls.wrong_ca)))
    result = sync("sync")
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = error_lines(result)
    assert line == (
        f"error: cannot connect to PostgreSQL at localhost:{tls_server.port}/shop: connection "
        f'failed: connection to server at "127.0.0.1", port {tls_server.port} failed: SSL '
        "error: certificate verify failed; the server's certificate is not signed by a CA "
        "in sslrootcert (for RDS: the region's certificate bundle from AWS)"), line
    assert not duckdb_path.exists()


def test_the_copy_reads_verify_the_server_too(tls_server: TlsPostgres, tmp_path: Path) -> None:
    """The rows are read by the ADBC driver (its own libpq and OpenSSL), not psycopg: with
    verify-full and the right CA a load reads them over TLS; with a CA that did not sign
    the server's certificate the same load fails at the driver's connection."""
    with psycopg.connect(loader_url(tls_server, **verified(tls_server))) as conn:
        (plan,) = build_plans(discover(conn, schemas=["public"], table="orders"), "duckdb")
    destination = duckdb_destination(str(tmp_path / "adbc.duckdb"))

    def load(ca: Path):
        return load_table(plan, source_url=loader_url(tls_server, **verified(tls_server, ca)),
                          destination=destination, dataset="raw", work_dir=tmp_path / "work",
                          full_refresh=True)

    assert load(tls_server.tls.ca).rows == SHOP_ROWS["orders"]
    with pytest.raises(SourceUnreachable) as failure:
        load(tls_server.tls.wrong_ca)
    message = str(failure.value)
    # The driver's words ("IO: [libpq]"), psycopg's are "connection failed: …".
    assert message.startswith(f"cannot connect to PostgreSQL at localhost:{tls_server.port}/"
                              "shop: IO: [libpq] Failed to connect"), message
    assert "SSL error: certificate verify failed" in message and LOADER_PASSWORD not in message
