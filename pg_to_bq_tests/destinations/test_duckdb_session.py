"""pg_to_bq's own DuckDB connection (`pg_to_bq.destinations.duckdb_session`): it must ask
exactly what dlt's client would, and an unchanged sync must not need dlt at all (nor
Arrow: its tables are found unchanged before any read, `pg_to_bq.load.unchanged`).

Tier 1 (pure, against dlt's own code): the names, literals and types it writes without
dlt are dlt's. Tier 2 (real PostgreSQL, real DuckDB file, whole `pg-to-bq sync`
processes): an unchanged re-sync imports no dlt, a changed one loads, and the figures,
states and counts the connection reads agree with what dlt's client wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dlt
import duckdb
import pytest
from dlt.common.normalizers.naming.snake_case import NamingConvention
from dlt.common.schema.typing import LOADS_TABLE_NAME
from hypothesis import given, settings
from hypothesis import strategies as st

from pg_to_bq.destinations import soft_deletes
from pg_to_bq.destinations.duckdb_file import duckdb_destination
from pg_to_bq.destinations.duckdb_session import (
    DuckDBFile,
    MissingRelation,
    escape_literal,
    is_missing_relation,
    keeps_name,
)
from pg_to_bq.destinations.lazy import duckdb_global_config
from pg_to_bq.destinations.row_counts import LOADS_TABLE, destination_counts
from pg_to_bq.load.packages import dlt_settings, group_pipeline
from pg_to_bq.load.pipelines import has_pending_packages, working_dir
from pg_to_bq_tests.conftest import duck_rows, run_sql

# --- tier 1 -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcAB_019", min_size=1, max_size=12))
def test_a_dataset_name_kept_is_one_dlt_keeps(name: str) -> None:
    if keeps_name(name):
        assert NamingConvention().normalize_identifier(name) == name


@pytest.mark.parametrize("name", ["raw", "pg_raw", "raw2", "a_b_c"])
def test_plain_dataset_names_are_kept(name: str) -> None:
    assert keeps_name(name)


@pytest.mark.parametrize("name", ["Raw", "rawData", "_raw", "raw_", "a__b", "2raw"])
def test_names_dlt_would_change_are_left_to_dlt(name: str) -> None:
    assert not keeps_name(name)


def test_constants_are_dlts() -> None:
    assert LOADS_TABLE == LOADS_TABLE_NAME
    for kind, type_ in soft_deletes.COLUMN_TYPES.items():
        mapper = getattr(dlt.destinations, kind)().capabilities().get_type_mapper()
        assert mapper.to_destination_type(soft_deletes.HINT, {"name": "t", "columns": {}}) \
            == type_, kind


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text().filter(lambda t: "\x00" not in t), st.integers(-2**63, 2**63 - 1),
                 st.booleans(), st.none()))
def test_a_literal_reads_back_as_its_value(value: object) -> None:
    with duckdb.connect(":memory:") as conn:
        assert conn.execute(f"SELECT {escape_literal(value)}").fetchone()[0] == value


def test_a_missing_table_is_recognized_from_either_client(tmp_path: Path) -> None:
    file = DuckDBFile(str(tmp_path / "d.duckdb"), "raw", duckdb_global_config(None))
    with file.sql_client() as client, pytest.raises(MissingRelation) as caught:
        client.execute_sql(f"SELECT * FROM {client.make_qualified_table_name('nope')}")
    assert is_missing_relation(caught.value)
    pipeline = group_pipeline("probe", duckdb_destination(str(tmp_path / "d.duckdb")), "raw",
                               tmp_path / "work")
    with pipeline.sql_client() as client, pytest.raises(Exception) as caught_dlt:  # noqa: PT011
        client.execute_sql(f"SELECT * FROM {client.make_qualified_table_name('nope')}")
    assert is_missing_relation(caught_dlt.value)
    assert not is_missing_relation(ValueError("nope does not exist"))


# --- tier 2 -----------------------------------------------------------------------------


def test_it_asks_what_dlt_asks_and_sees_what_dlt_wrote(tmp_path: Path) -> None:
    """Same names, same settings, same answers: a table written through dlt's client, read
    through both."""
    path = str(tmp_path / "d.duckdb")
    pipeline = group_pipeline("probe", duckdb_destination(path), "raw", tmp_path / "work")
    odd = 'Odd "name"'
    with dlt.config.values(dlt_settings(pipeline.destination)), pipeline.sql_client() as client:
        client.execute_sql("CREATE SCHEMA IF NOT EXISTS raw")
        table = client.make_qualified_table_name(odd)
        client.execute_sql(f"CREATE TABLE {table} (t TIMESTAMPTZ, s VARCHAR)")
        client.execute_sql(f"INSERT INTO {table} VALUES ('2026-01-02 03:04:05+09', 'it''s \\n')")
        dlt_view = client.execute_sql(f"SELECT t::VARCHAR, s, current_setting('TimeZone'), "
                                      f"current_setting('memory_limit') FROM {table}")
    file = DuckDBFile(path, "raw", duckdb_global_config(None))
    with file.sql_client() as client:
        assert client.make_qualified_table_name(odd) == table
        assert client.has_dataset()
        assert client.execute_sql(f"SELECT t::VARCHAR, s, current_setting('TimeZone'), "
                                  f"current_setting('memory_limit') FROM {table}") == dlt_view
        assert dlt_view[0][2] == "UTC"
        with client.begin_transaction():
            client.execute_sql(f"INSERT INTO {table} VALUES (NULL, {escape_literal(odd)})")
        with pytest.raises(RuntimeError), client.begin_transaction():
            client.execute_sql(f"INSERT INTO {table} VALUES (NULL, 'rolled back')")
            raise RuntimeError
    assert destination_counts(file, [odd]) == ({odd: 2}, set())
    assert destination_counts(pipeline, [odd]) == ({odd: 2}, set())


def test_nested_clients_share_one_connection_and_close_it(tmp_path: Path) -> None:
    path = str(tmp_path / "d.duckdb")
    file = DuckDBFile(path, "raw", duckdb_global_config(None))
    with file.sql_client() as outer, file.sql_client() as inner:
        assert outer is inner
    # Closed: another process may open the file for writing.
    result = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({path!r})"
                             ".execute('CREATE TABLE x (a INT)')"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_package_left_behind_is_seen_on_disk(tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert not has_pending_packages(work, "p")
    (working_dir(work, "p") / "load" / "normalized").mkdir(parents=True)
    assert not has_pending_packages(work, "p")
    (working_dir(work, "p") / "load" / "normalized" / "1234.5").mkdir()
    assert has_pending_packages(work, "p")


_PROBE = """
import sys
from pg_to_bq.cli.main import main
code = main(["sync"])
print("IMPORTED", sorted({m.split(".")[0] for m in sys.modules}
                         & {"dlt", "requests", "pyarrow"}))
sys.exit(code)
"""


def _sync(env: dict[str, str]) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                            text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_an_unchanged_sync_needs_no_dlt_and_a_changed_one_loads(pg_url: str, settings_env,
                                                                  tmp_path: Path) -> None:
    """Whole `pg-to-bq sync` processes: the first loads (dlt), the second finds both tables
    unchanged by their row versions before any read, checks them (figures and counts
    through pg_to_bq's own connection, compared with what dlt's wrote) and imports neither
    dlt nor pyarrow; after a change, dlt loads again."""
    run_sql(pg_url, """
        CREATE TABLE items (id int PRIMARY KEY, at timestamptz, note text,
                            updated_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO items SELECT g, '2026-01-01 00:00:00+05'::timestamptz + g * interval '1 h',
                                 'n' || g, now() - interval '1 day' FROM generate_series(1, 300) g;
        CREATE TABLE "Odd Log" (line text);
        INSERT INTO "Odd Log" VALUES ('a'), ('b');
    """)
    path = settings_env(pg_url)
    env = dict(os.environ)
    code, out = _sync(env)
    assert code == 0, out
    assert "IMPORTED ['dlt', 'pyarrow', 'requests']" in out
    code, out = _sync(env)
    assert code == 0, out
    assert out.count(": unchanged") == 2, out
    assert "IMPORTED []" in out, out
    assert "checks failed" not in out and "drift" not in out, out
    states = dict(duck_rows(path, "SELECT table_name, state FROM raw._pg_to_bq_state"))
    assert json.loads(states["items"])["destination_rows"] == 300
    # Changed behind pg_to_bq's back in the destination: found by figures read without dlt.
    with duckdb.connect(str(path)) as conn:
        conn.execute("UPDATE raw.items SET note = 'tampered' WHERE id = 7")
    code, out = _sync(env)
    assert code == 1, out
    assert "note: values changed" in out, out
    assert "IMPORTED []" in out, out
    run_sql(pg_url, "UPDATE items SET note = 'changed', updated_at = now() WHERE id = 8")
    code, out = _sync(env)
    assert "IMPORTED ['dlt', 'pyarrow', 'requests']" in out, out
    assert duck_rows(path, "SELECT note FROM raw.items WHERE id = 8") == [("changed",)]


_BACKGROUND_PROBE = """
import sys, threading
from pg_to_bq.cli.main import main
from pg_to_bq.load import loader_imports
code = main(["sync"])
from dlt.common.configuration.container import Container
thread = loader_imports._thread
print("BACKGROUND", thread is not None and thread.name, not (thread and thread.is_alive()))
print("DLT MAIN", Container._MAIN_THREAD_ID == threading.main_thread().ident)
sys.exit(code)
"""


def test_dlt_is_imported_while_the_first_table_is_read(pg_url: str, settings_env) -> None:
    """A whole process whose table has rows to load imports dlt in a thread of its own while
    the table streams into its file; the load then runs as if the main thread had imported
    dlt (dlt notes its main thread at import: its global contexts are that thread's)."""
    run_sql(pg_url, """
        CREATE TABLE big (id int PRIMARY KEY, note text);
        INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g;
    """)
    path = settings_env(pg_url)
    result = subprocess.run([sys.executable, "-c", _BACKGROUND_PROBE], env=dict(os.environ),
                            capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "public.big: ok, 50,000 rows (full)" in out, out
    assert "BACKGROUND pg_to_bq-loader-imports True" in out, out
    assert "DLT MAIN True" in out, out
    assert duck_rows(path, "SELECT count(*), count(DISTINCT id) FROM raw.big") == [(50000, 50000)]
