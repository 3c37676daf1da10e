"""Transport and privileges of the source connection, as a user runs `pg-to-bq sync`.

TLS: a PostgreSQL 15 server with `ssl=on` and only `hostssl` rules
(`pg_to_bq_tests/support/tls_postgres.py`, Debian's `postgresql-15` binaries). A sync with
`sslmode=verify-full&sslrootcert=<ca.pem>` loads; a plain connection is refused; a wrong CA
is one error line before any table is tried (also when a catalog snapshot exists and the
catalog needs no connection); the COPY reads (the ADBC driver) verify the server too;
PGSSLMODE/PGSSLROOTCERT (for secrets in the RDS layout, a URL without a query) work alike.

Least privilege: the role of docs/security.md, created with exactly that SQL on the
suite's embedded server, loads every table it was granted (also one created after the
grants) and a table outside its grants fails alone, naming the GRANT to add; with the
change-capture grants of the same document it reads a replication slot.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pg_to_bq.destinations.duckdb_file import duckdb_destination
from pg_to_bq.load.group import load_table
from pg_to_bq.planning.errors import describe
from pg_to_bq.planning.tables import build_plans
from pg_to_bq.postgres.connect import SourceUnreachable
from pg_to_bq.postgres.discovery import discover
from pg_to_bq.postgres.embedded import EmbeddedPostgres
from pg_to_bq.postgres.reader import TableReader
from pg_to_bq_tests.conftest import PgServer, duck_rows, pg_rows, run_sql
from pg_to_bq_tests.support.tls_postgres import TlsPostgres, debian_pg15_missing

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m pg_to_bq.cli ARGS` (`pg-to-bq ARGS`) with this environment (PG_TO_BQ_* set
    by `settings_env`), running this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "pg_to_bq.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsPostgres]:
    reason = debian_pg15_missing()
    # install.sh installs Debian's postgresql-15: missing, the install is broken, not the test.
    assert reason is None, f"{reason} (bash install.sh installs it)"
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
    result = cli("sync")
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
    result = cli("sync")
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
        discovered = cli("discover")
        assert discovered.returncode == 0, discovered.stdout + discovered.stderr
    duckdb_path = settings_env(
        loader_url(tls_server, **verified(tls_server, tls_server.tls.wrong_ca)))
    result = cli("sync")
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


def test_libpq_environment_variables_configure_tls_too(tls_server: TlsPostgres, settings_env,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The RDS secret layout gives a URL without a query: PGSSLMODE and PGSSLROOTCERT in the
    environment reach both libraries (psycopg's libpq and the ADBC driver's)."""
    duckdb_path = settings_env(loader_url(tls_server))
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", str(tls_server.tls.wrong_ca))
    refused = cli("sync", "public.notes")
    assert refused.returncode == 2 and "certificate verify failed" in refused.stderr, \
        refused.stdout + refused.stderr
    monkeypatch.setenv("PGSSLROOTCERT", str(tls_server.tls.ca))
    result = cli("sync", "public.notes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert duck_rows(duckdb_path, "SELECT count(*) FROM raw.notes") == [(2,)]


# ---- least privilege ---------------------------------------------------------------------

SECURITY_DOC = REPO_ROOT / "docs" / "security.md"
DOC_ROLE, DOC_DATABASE, DOC_OWNER = "pg_to_bq_reader", "shop", "app_owner"


def documented_sql(marker: str) -> str:
    """The first ```sql block after `marker` in docs/security.md."""
    text = SECURITY_DOC.read_text(encoding="utf-8")
    after = text[text.index(marker):]
    start = after.index("```sql\n") + len("```sql\n")
    return after[start:after.index("```", start)]


def least_privilege_sql(role: str, database: str, owner: str) -> str:
    """docs/security.md's role SQL with its names replaced."""
    sql = documented_sql("runs this block as written")
    for name, value in ((DOC_ROLE, role), (DOC_OWNER, owner)):
        sql = re.sub(rf"\b{name}\b", value, sql)
    return sql.replace(f"ON DATABASE {DOC_DATABASE} ", f'ON DATABASE "{database}" ')


@contextlib.contextmanager
def roles(admin_url: str, *names: str) -> Iterator[None]:
    """Drop `names` (and what they own or were granted in this database) on exit."""
    try:
        yield
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for name in names:
                conn.execute(f"DROP OWNED BY {name}")
                conn.execute(f"DROP ROLE {name}")


def test_the_documented_role_loads_its_tables_and_a_table_outside_fails_alone(
        pg_url: str, settings_env) -> None:
    suffix = pg_url.rsplit("_", 1)[1]
    reader, owner, database = f"reader_{suffix}", f"owner_{suffix}", pg_url.rsplit("/", 1)[1]
    run_sql(pg_url, f"""
        CREATE ROLE {owner} NOLOGIN;
        GRANT CREATE ON SCHEMA public TO {owner};
        CREATE SCHEMA sales AUTHORIZATION {owner};
        SET ROLE {owner};
        CREATE TABLE public.customers (id int PRIMARY KEY, name text NOT NULL);
        INSERT INTO public.customers SELECT g, 'c' || g FROM generate_series(1, 500) g;
        CREATE TABLE sales.orders (id bigint PRIMARY KEY, customer_id int NOT NULL);
        INSERT INTO sales.orders SELECT g, g % 500 + 1 FROM generate_series(1, 20000) g;
        RESET ROLE;
        CREATE SCHEMA hr;  -- postgres's, no grants at all
        CREATE TABLE hr.salaries (id int PRIMARY KEY, amount int);
        INSERT INTO hr.salaries VALUES (1, 100);
    """)
    with roles(pg_url, reader, owner):
        run_sql(pg_url, least_privilege_sql(reader, database, owner))
        run_sql(pg_url, f"""
            SET ROLE {owner};  -- after the grants: readable through the default privileges
            CREATE TABLE sales.refunds (id int PRIMARY KEY, order_id bigint);
            INSERT INTO sales.refunds VALUES (1, 10), (2, 20), (3, 30);
            RESET ROLE;
            -- created by a role without default privileges for the reader: outside them
            CREATE TABLE public.audit_trail (id int PRIMARY KEY, what text);
            INSERT INTO public.audit_trail VALUES (1, 'x');
        """)
        reader_url = pg_url.replace("postgres@", f"{reader}@", 1)
        duckdb_path = settings_env(reader_url)

        result = cli("sync")
        assert result.returncode == 1, result.stdout + result.stderr
        out = result.stdout
        for table, rows in (("public.customers", 500), ("sales.orders", 20_000),
                            ("sales.refunds", 3)):
            assert re.search(rf"\] {table}: ok, {rows:,} rows", out), out
        assert "3 loaded, 2 failed" in out, out
        [audit] = [line for line in out.splitlines() if "] public.audit_trail: FAILED" in line]
        assert audit.endswith(
            "public.audit_trail: FAILED: table public.audit_trail: PostgreSQL: permission denied "
            "for table audit_trail (SQLSTATE 42501); to fix: run GRANT SELECT ON "
            f"public.audit_trail TO {reader}; as the owner, or leave the table out "
            "(PG_TO_BQ_EXCLUDE)"), audit
        [salaries] = [line for line in out.splitlines() if "] hr.salaries: FAILED" in line]
        assert salaries.endswith(
            "hr.salaries: FAILED: table hr.salaries: PostgreSQL: permission denied for schema "
            f"hr (SQLSTATE 42501); to fix: run GRANT USAGE ON SCHEMA hr TO {reader}; GRANT "
            f"SELECT ON hr.salaries TO {reader}; as the owner, or leave the table out "
            "(PG_TO_BQ_EXCLUDE)"), salaries

        # The role holds SELECT, nothing else, and cannot write.
        grants = pg_rows(pg_url, f"""
            SELECT table_schema || '.' || table_name, privilege_type
            FROM information_schema.role_table_grants WHERE grantee = '{reader}' ORDER BY 1""")
        assert grants == [("public.customers", "SELECT"), ("sales.orders", "SELECT"),
                          ("sales.refunds", "SELECT")]
        insert = "INSERT INTO public.customers VALUES (0, 'no')"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            pg_rows(reader_url, insert)
        # The role may lift its default itself; the grants are what hold.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            pg_rows(reader_url, f"SET TRANSACTION READ WRITE; {insert}")
        # A large table's read: two connections sharing one exported snapshot.
        with psycopg.connect(reader_url) as conn:
            (plan,) = build_plans(discover(conn, schemas=["sales"], table="orders"), "duckdb")
        with TableReader(reader_url, plan, streams=2, min_rows_per_stream=1) as reader:
            rows = sum(batch.num_rows for batch in reader.batches())
        assert (reader.stats.streams, rows) == (2, 20_000)

        # The statements the lines name are the whole fix.
        fixes = [re.search(r"to fix: run (.+;) as the owner", line).group(1)
                 for line in (audit, salaries)]
        run_sql(pg_url, " ".join(fixes))
        fixed = cli("sync", "public.audit_trail", "hr.salaries")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert duck_rows(duckdb_path, "SELECT count(*) FROM raw.audit_trail") == [(1,)]
        assert duck_rows(duckdb_path, "SELECT count(*) FROM raw.hr__salaries") == [(1,)]


class _Denied(Exception):
    sqlstate = "42501"


@pytest.mark.parametrize(("message", "table", "role", "fix"), [
    ("permission denied for table Odd", ("Sales", 'Odd "T"'), "Reader-1",
     'run GRANT SELECT ON "Sales"."Odd ""T""" TO "Reader-1"; as the owner'),
    ("permission denied for schema Sales", ("Sales", "t"), "r",
     'run GRANT USAGE ON SCHEMA "Sales" TO r; GRANT SELECT ON "Sales".t TO r; as the owner'),
    ("permission denied for table t", ("public", "t"), None,
     "run GRANT SELECT ON public.t TO <the role pg_to_bq logs in as>; as the owner"),
])
def test_the_grant_to_add_quotes_what_postgresql_would_not_fold(message, table, role, fix):
    line = describe(_Denied(f"ERROR:  {message}"), table=table, role=role)
    assert line == (f"PostgreSQL: {message} (SQLSTATE 42501); to fix: {fix}, or leave the "
                    "table out (PG_TO_BQ_EXCLUDE)")


@pytest.fixture(scope="module")
def logical_server() -> Iterator[PgServer]:
    """A server of its own with wal_level=logical (the suite's has replica)."""
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="pg_to_bq_logical_")),
                              settings={"wal_level": "logical"})
    server.start()
    try:
        yield PgServer(server.url("postgres"))
    finally:
        server.destroy()


def test_the_documented_change_capture_grants(logical_server: PgServer) -> None:
    """The role of the least-privilege block plus REPLICATION reads changes through the
    publication the owner created from docs/security.md's block; without REPLICATION it
    cannot create a slot, and neither it nor the owner can create what needs a superuser."""
    suffix = uuid.uuid4().hex[:8]
    reader, owner = f"reader_{suffix}", f"owner_{suffix}"
    with logical_server.database("cdc") as url, roles(url, reader, owner):
        database = url.rsplit("/", 1)[1]
        run_sql(url, f"""
            CREATE ROLE {owner} NOLOGIN; GRANT CREATE ON SCHEMA public TO {owner};
            GRANT CREATE ON DATABASE "{database}" TO {owner};
            CREATE SCHEMA sales AUTHORIZATION {owner};
            SET ROLE {owner};
            CREATE TABLE public.customers (id int PRIMARY KEY);
            CREATE TABLE sales.orders (id int PRIMARY KEY);
            CREATE TABLE sales.refunds (id int PRIMARY KEY);
            CREATE TABLE public.audit_log (id int);
            CREATE TABLE public.not_published (id int PRIMARY KEY);
        """)
        run_sql(url, least_privilege_sql(reader, database, owner))
        publication = documented_sql("The publication is created once by the tables' owner")
        run_sql(url, f"SET ROLE {owner}; " + re.sub(r"\bapp_owner\b", owner, publication))
        [publication_name] = set(re.findall(r"PUBLICATION (\w+)", publication))
        slot = f"pg_to_bq_{suffix}"

        def as_reader(sql: str) -> list[tuple]:
            return pg_rows(url.replace("postgres@", f"{reader}@", 1), sql)

        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="permission denied to use replication slots"):
            as_reader(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_reader("SET TRANSACTION READ WRITE; "
                      f"CREATE PUBLICATION p_{suffix} FOR TABLE public.customers")
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="must be superuser to create FOR TABLES IN SCHEMA"):
            run_sql(url, f"SET ROLE {owner}; CREATE PUBLICATION s_{suffix} "
                         "FOR TABLES IN SCHEMA sales")

        run_sql(url, f"ALTER ROLE {reader} REPLICATION")  # the self-managed server's line
        try:
            as_reader(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
            # The embedded server runs with synchronous_commit=off, and decoding reads only
            # flushed WAL: these commits wait for their flush.
            run_sql(url, f"""SET ROLE {owner}; SET synchronous_commit = on;
                INSERT INTO sales.orders VALUES (1), (2); INSERT INTO sales.refunds VALUES (1);
                INSERT INTO public.not_published VALUES (1), (2), (3);""")
            changes = as_reader(f"""
                SELECT data FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL,
                    'proto_version', '1', 'publication_names', '{publication_name}')""")
            inserts = [bytes(data) for (data,) in changes if bytes(data)[:1] == b"I"]
            assert len(inserts) == 3  # the published tables' rows, not the others'
            as_reader(f"SELECT pg_replication_slot_advance('{slot}', pg_current_wal_lsn())")
        finally:
            as_reader(f"SELECT pg_drop_replication_slot('{slot}')")
