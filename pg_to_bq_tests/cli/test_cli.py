"""The `pg-to-bq` command against a real PostgreSQL and a real DuckDB file."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq_tests.conftest import duck_rows, pg_rows, run_sql

# The console script, next to the interpreter running the tests (the venv's bin/).
SCRIPT = Path(sys.executable).parent / "pg-to-bq"


def test_discover_prints_the_plan_and_saves_the_snapshot(sample_db_url: str, settings_env,
                                                         tmp_path: Path, capsys) -> None:
    settings_env(sample_db_url)
    assert main(["discover"]) == 0
    out = capsys.readouterr().out
    assert "7 table(s)" in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    # (20,000 rows, ~3 MB: a small merged table, read whole when its rows change)
    assert "whole when changed" in lines["public.orders"] and "updated_at" in lines["public.orders"]
    assert "replace" in lines["public.audit_log"] and "4,002" in lines["public.audit_log"]
    assert "order_id, line_no" in lines["public.order_items"]
    assert "password_hash" in lines["public.customers"]
    assert "loaded through the parent" in lines["public.page_views"]
    assert (tmp_path / "work" / "catalog.json").exists()
    assert main(["discover", "--offline"]) == 0
    assert "7 table(s) from snapshot" in capsys.readouterr().out


def test_sync_loads_then_merges_and_full_refresh(sample_db_url: str, settings_env,
                                                  capsys) -> None:
    path = settings_env(sample_db_url)
    assert main(["sync", "orders", "public.customers"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[[12]/2\] public.orders: ok, 20,000 rows \(full\)", out), out
    assert re.search(r"\[[12]/2\] public.customers: ok, 5,000 rows \(full\)", out), out
    assert "2 loaded, 0 failed, 25,000 rows" in out
    assert main(["sync", "orders"]) == 0
    assert "public.orders: unchanged" in capsys.readouterr().out
    assert main(["sync", "orders", "--full-refresh"]) == 0
    assert "20,000 rows (full)" in capsys.readouterr().out
    with duckdb.connect(str(path), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM raw.orders").fetchone() == (20000,)


def test_sync_exits_nonzero_and_names_the_failed_table(pg_url: str, settings_env,
                                                       capsys) -> None:
    run_sql(pg_url, """
        CREATE TABLE ok_table (id int PRIMARY KEY);
        INSERT INTO ok_table VALUES (1), (2);
        CREATE TABLE prices (id int PRIMARY KEY, price numeric(10,2));
        INSERT INTO prices VALUES (1, 'NaN');
    """)
    settings_env(pg_url)
    assert main(["sync"]) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert "public.ok_table: ok, 2 rows" in out
    failed = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed) == 2, out  # the progress line and the summary line
    assert failed[0].endswith("public.prices: FAILED: table public.prices, column 'price' "
                              "(numeric(10,2)): value 'NaN' does not fit DECIMAL(10,2) exactly "
                              "(no decimal type holds NaN). Nothing was loaded for this table. "
                              "To load it, override the column in the tables file "
                              "(PG_TO_BQ_TABLES_FILE): tables: {public.prices: {columns: "
                              "{price: {cast: text}}}} keeps the value as text, or "
                              "{exclude: true} leaves the column out."), failed[0]
    assert "1 loaded, 1 failed" in out
    # The stack trace is for the event log, not the terminal, unless asked for.
    assert "Traceback" not in out + captured.err
    assert main(["sync", "--verbose"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().out


def test_a_table_the_role_cannot_read_is_one_line_with_its_fix(pg_url: str, settings_env,
                                                               capsys) -> None:
    role = "reader_" + pg_url.rsplit("/", 1)[1]
    run_sql(pg_url, f"""
        CREATE TABLE open_table (id int PRIMARY KEY); INSERT INTO open_table VALUES (1);
        CREATE TABLE closed_table (id int PRIMARY KEY); INSERT INTO closed_table VALUES (1);
        CREATE ROLE {role} LOGIN; GRANT SELECT ON open_table TO {role};""")
    try:
        settings_env(pg_url.replace("postgres@", f"{role}@", 1))
        assert main(["sync"]) == 1
        out = capsys.readouterr().out
        [line] = [line for line in out.splitlines() if "closed_table: FAILED" in line]
        assert line.endswith(
            "public.closed_table: FAILED: table public.closed_table: PostgreSQL: permission "
            "denied for table closed_table (SQLSTATE 42501); to fix: run GRANT SELECT ON "
            f"public.closed_table TO {role}; as the owner, or leave the table out "
            "(PG_TO_BQ_EXCLUDE)"), line
        assert "public.open_table: ok, 1 rows" in out and "1 loaded, 1 failed" in out
    finally:
        run_sql(pg_url, f"DROP OWNED BY {role}; DROP ROLE {role};")


def test_a_table_that_moves_to_another_step_keeps_its_state_and_loses_nothing(
        pg_url: str, settings_env, monkeypatch, capsys) -> None:
    """Changing `PG_TO_BQ_STEP_TABLES` (or its default, between versions) moves tables to
    other steps, each with a dlt pipeline of its own. A table's state is kept by table, not
    by step: after the move an unchanged table is still skipped, and every change made
    before the move (an update behind a cursor, a delete, an insert) arrives exactly."""
    run_sql(pg_url, """
        CREATE TABLE orders (id int PRIMARY KEY, note text, updated_at timestamptz);
        INSERT INTO orders SELECT g, 'o' || g, '2026-01-01'::timestamptz + g * interval '1 h'
            FROM generate_series(1, 40) g;
        CREATE TABLE notes (n int, body text);
        INSERT INTO notes SELECT g, 'n' || g FROM generate_series(1, 30) g;
        CREATE TABLE kinds (code text PRIMARY KEY, label text);
        INSERT INTO kinds VALUES ('a', 'A'), ('b', 'B');
        CREATE TABLE tags (id int PRIMARY KEY, tag text);
        INSERT INTO tags SELECT g, 't' || g FROM generate_series(1, 20) g;
    """)
    path = settings_env(pg_url, step_tables="1")
    assert main(["sync"]) == 0
    assert "4 loaded, 0 failed" in capsys.readouterr().out
    run_sql(pg_url, """
        UPDATE orders SET note = 'edited', updated_at = now() WHERE id = 7;
        DELETE FROM notes WHERE n = 3;
        INSERT INTO tags VALUES (21, 't21');
    """)
    monkeypatch.setenv("PG_TO_BQ_STEP_TABLES", "100")  # three steps become one
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"public\.kinds: unchanged", out), out
    for table in ("orders", "notes", "tags"):
        assert re.search(rf"public\.{table}: ok", out), out
    for table, order in (("orders", "id"), ("notes", "n"), ("kinds", "code"), ("tags", "id")):
        columns = {"orders": "id, note, updated_at", "notes": "n, body",
                   "kinds": "code, label", "tags": "id, tag"}[table]
        assert duck_rows(path, f"SELECT {columns} FROM raw.{table} ORDER BY {order}") == \
            pg_rows(pg_url, f"SELECT {columns} FROM {table} ORDER BY {order}"), table


def test_a_table_whose_key_moves_to_another_column_merges_by_the_new_key(
        pg_url: str, settings_env, capsys) -> None:
    """The primary key moves from `id` to `code`, then a row's `id` changes behind its
    cursor: the copy must hold that row once, under the new key, and equal PostgreSQL; the
    destination's key (dlt's schema, which its merge uses) is `code` alone, not both."""
    run_sql(pg_url, """
        CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL, note text,
                            updated_at timestamptz NOT NULL);
        INSERT INTO items SELECT g, 'c' || g, 'n' || g,
                                 '2026-01-01'::timestamptz + g * interval '1 h'
            FROM generate_series(1, 10) g;
    """)
    path = settings_env(pg_url)
    assert main(["sync"]) == 0
    assert "1 loaded, 0 failed" in capsys.readouterr().out
    run_sql(pg_url, """
        ALTER TABLE items DROP CONSTRAINT items_pkey;
        ALTER TABLE items ADD PRIMARY KEY (code);
        UPDATE items SET id = 100, note = 'moved', updated_at = now() WHERE code = 'c3';
    """)
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"public\.items: ok", out), out
    columns = "id, code, note, updated_at"
    assert duck_rows(path, f"SELECT {columns} FROM raw.items ORDER BY code") == \
        pg_rows(pg_url, f"SELECT {columns} FROM items ORDER BY code")
    stored = duck_rows(path, "SELECT schema FROM raw._dlt_version "
                             "ORDER BY inserted_at DESC LIMIT 1")[0][0]
    columns_kept = json.loads(stored)["tables"]["items"]["columns"]
    assert [name for name, column in columns_kept.items() if column.get("primary_key")] \
        == ["code"]


def test_unknown_table_is_a_clear_error(sample_db_url: str, settings_env, capsys) -> None:
    settings_env(sample_db_url)
    assert main(["sync", "public.nope"]) == 2
    assert "error: no table 'public.nope' in the catalog" in capsys.readouterr().err


def test_unreachable_postgres_names_host_and_port_not_password(settings_env, capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings_env(f"postgresql://app:hunter2@127.0.0.1:{port}/shop")
    assert main(["discover"]) == 2
    err = capsys.readouterr().err
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/shop" in err
    assert "hunter2" not in err


def test_sync_with_postgres_unreachable_and_no_snapshot_is_an_error(settings_env,
                                                                    capsys) -> None:
    """Not "nothing to load" and exit 0: a nightly `pg-to-bq sync` must fail visibly."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings_env(f"postgresql://app:hunter2@127.0.0.1:{port}/shop")
    assert main(["sync"]) == 2
    captured = capsys.readouterr()
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/shop" in captured.err
    assert "nothing to load" not in captured.out
    assert "hunter2" not in captured.out + captured.err


def test_bad_setting_fails_before_anything_loads(settings_env, capsys) -> None:
    settings_env("postgresql://app@127.0.0.1:1/shop", DESTINATION="duckdb:/nope")
    assert main(["sync"]) == 2
    assert "error: PG_TO_BQ_DESTINATION='duckdb:/nope' is not understood" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("demo", "discover", "sync"):
        assert command in result.stdout


def test_the_console_script_exits_with_its_status_its_output_and_its_cleanup(
        pg_url: str, settings_env, tmp_path: Path) -> None:
    """`pg-to-bq` ends its process without tearing the interpreter down (`exit_now`): each
    exit status still arrives, every line it printed reaches a pipe, and the exit handlers
    still run (the sync's temporary event log directory is removed)."""
    run_sql(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text); "
                    "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g; "
                    "CREATE TABLE bad (id int PRIMARY KEY, n numeric(10,2)); "
                    "INSERT INTO bad VALUES (1, 'NaN')")
    settings_env(pg_url)
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    def sync(*names: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), "sync", *names], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "TMPDIR": str(scratch)})

    loaded = sync("public.t")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert loaded.stdout.rstrip().endswith("1 loaded, 0 failed, 50 rows in " +
                                           loaded.stdout.rstrip().rsplit(" in ", 1)[1])
    failed = sync()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAILED public.bad" in failed.stdout
    unknown = sync("public.nosuch")
    assert unknown.returncode == 2
    assert unknown.stderr == "error: no table 'public.nosuch' in the catalog\n"
    assert not list(scratch.glob("pg_to_bq_events_*"))


def test_a_killed_syncs_event_log_folder_goes_with_the_next_sync(
        pg_url: str, settings_env, tmp_path: Path) -> None:
    """A sync killed (SIGKILL) before its exit handlers ran leaves its temporary event log
    folder behind; the next sync removes it, and leaves a running process's folder alone."""
    run_sql(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text); "
                    "INSERT INTO t SELECT g, repeat('v', 100) FROM generate_series(1, 300000) g")
    settings_env(pg_url)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    killed = subprocess.Popen([str(SCRIPT), "sync"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(scratch.glob("pg_to_bq_events_*")) and killed.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        killed.kill()
        killed.wait()
    [left] = list(scratch.glob("pg_to_bq_events_*"))
    assert left.name.startswith(f"pg_to_bq_events_{killed.pid}_")
    running = scratch / f"pg_to_bq_events_{os.getpid()}_running"
    running.mkdir()
    done = subprocess.run([str(SCRIPT), "sync"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(scratch.glob("pg_to_bq_events_*")) == [running]


def test_a_reader_that_stops_reading_does_not_stop_the_loads(pg_url: str, settings_env) -> None:
    """`pg-to-bq sync | head -1`: the reader goes after the first line, before any table is
    loaded. The loads go on to the end, the status is theirs, and no BrokenPipeError
    traceback appears (it used to fail the step that published a table's line, and exit 1)."""
    names = [f"t{i}" for i in range(6)]
    run_sql(pg_url, "".join(f"CREATE TABLE {n} (id int PRIMARY KEY, v text); INSERT INTO {n} "
                            "SELECT g, 'v' || g FROM generate_series(1, 20) g; " for n in names))
    path = settings_env(pg_url)
    proc = subprocess.Popen([str(SCRIPT), "sync"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("loading 6 table(s)")
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    assert "BrokenPipeError" not in proc.stderr.read()
    for name in names:
        assert duck_rows(path, f"SELECT count(*) FROM raw.{name}") == [(20,)]


@pytest.mark.parametrize("argv", [["demo", "--help"], ["sync", "--help"]])
def test_subcommand_help(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0


def test_demo_with_a_bad_setting_says_so_and_leaves_no_postgresql_running() -> None:
    """The demo starts its own PostgreSQL (a daemon, not a child) before it reads the
    settings; an invalid setting must be reported and that server stopped."""
    # Not under pytest's temporary root: the server's unprivileged user must reach it.
    root = Path(tempfile.mkdtemp(prefix="pg_to_bq_demo_bad_"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG_TO_BQ_", "DAGSTER_"))}
        env["PG_TO_BQ_PARALLEL_STREAMS"] = "0"
        result = subprocess.run([str(SCRIPT), "demo", "--dir", str(root / "demo"), "--no-ui"],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "error: PG_TO_BQ_PARALLEL_STREAMS='0' must be a positive whole number" in result.stderr
        running = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(root) in command:
                running.append(command)
        assert running == []
    finally:
        shutil.rmtree(root, ignore_errors=True)
