"""Settings that name a table the catalog lacks (real PostgreSQL → DuckDB).

The tables file and `PG_TO_BQ_INCLUDE` name tables; PostgreSQL renames, drops and creates
them every sprint, and the catalog snapshot learns of it at the next discovery. A name
the catalog lacks must never stop the other tables (before, one such entry made `pg-to-bq
sync` exit 2 and the code location fail to load, so the nightly run loaded nothing): a
table the snapshot does not have yet is found by one discovery, and an entry that still
names nothing is one warning, in the CLI and on the catalog asset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq.orchestration.code_location import NIGHTLY_JOB, build_definitions
from pg_to_bq.orchestration.names import CATALOG_STEP
from pg_to_bq.planning.settings import Settings
from pg_to_bq_tests.conftest import duck_rows, run_sql


@pytest.fixture
def tables_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tables.yaml"
    path.write_text("tables: {}\n")
    monkeypatch.setenv("PG_TO_BQ_TABLES_FILE", str(path))
    monkeypatch.setenv("PG_TO_BQ_HASH_SALT", "pepper")
    return path


def _sha(text: str) -> str:
    return hashlib.sha256(b"pepper" + text.encode()).hexdigest()


def test_a_table_created_after_the_snapshot_loads_with_its_entry(
        pg_url: str, settings_env, tables_file: Path, capsys) -> None:
    """The snapshot lacks `people` (created after the last sync); its entry hashes `email`.
    The sync discovers once, and the table loads hashed, first time."""
    run_sql(pg_url, "CREATE TABLE shops (id int PRIMARY KEY); INSERT INTO shops VALUES (1);")
    path = settings_env(pg_url)
    assert main(["sync"]) == 0
    capsys.readouterr()
    run_sql(pg_url, """
        CREATE TABLE people (id int PRIMARY KEY, email text);
        INSERT INTO people VALUES (1, 'a@example.com'), (2, 'b@example.com');""")
    tables_file.write_text("tables:\n  public.people:\n    columns:\n      email: {hash: true}\n")
    assert main(["sync"]) == 0
    captured = capsys.readouterr()
    assert "public.people: ok, 2 rows" in captured.out, captured.out
    assert "warning" not in captured.err, captured.err
    assert duck_rows(path, "SELECT id, email FROM raw.people ORDER BY id") == [
        (1, _sha("a@example.com")), (2, _sha("b@example.com"))]


def test_a_table_created_after_the_snapshot_can_be_synced_by_name(
        pg_url: str, settings_env, capsys) -> None:
    """An ad-hoc `pg-to-bq sync NEW_TABLE` needs no `--refresh-catalog` first."""
    run_sql(pg_url, "CREATE TABLE shops (id int PRIMARY KEY); INSERT INTO shops VALUES (1);")
    path = settings_env(pg_url)
    assert main(["sync"]) == 0
    run_sql(pg_url, "CREATE TABLE fresh (id int PRIMARY KEY); INSERT INTO fresh VALUES (7);")
    capsys.readouterr()
    assert main(["sync", "fresh"]) == 0
    assert "public.fresh: ok, 1 rows" in capsys.readouterr().out
    assert duck_rows(path, "SELECT id FROM raw.fresh") == [(7,)]
    assert main(["sync", "public.nope"]) == 2
    assert "error: no table 'public.nope' in the catalog" in capsys.readouterr().err


def test_an_entry_for_a_dropped_table_is_one_warning_and_the_rest_loads(
        pg_url: str, settings_env, tables_file: Path, capsys) -> None:
    """A table dropped in PostgreSQL whose entry stays in the tables file: the sync, the
    code location and the nightly job go on, and each says the entry is not used."""
    run_sql(pg_url, """
        CREATE TABLE shops (id int PRIMARY KEY, name text); INSERT INTO shops VALUES (1, 'a');
        CREATE TABLE old_log (id int PRIMARY KEY); INSERT INTO old_log VALUES (1);""")
    tables_file.write_text("tables:\n  public.old_log: {disposition: replace}\n")
    path = settings_env(pg_url)
    assert main(["sync"]) == 0
    run_sql(pg_url, "DROP TABLE old_log; INSERT INTO shops VALUES (2, 'b');")
    capsys.readouterr()
    assert main(["sync", "--refresh-catalog"]) == 0
    captured = capsys.readouterr()
    assert "public.shops: ok" in captured.out, captured.out
    [warning] = [line for line in captured.err.splitlines() if "old_log" in line]
    assert warning == (f"warning: {tables_file}: table public.old_log is not in the catalog "
                       "(renamed or dropped in PostgreSQL, or check the name): its entry is not "
                       "used"), warning
    assert duck_rows(path, "SELECT id, name FROM raw.shops ORDER BY id") == [(1, "a"), (2, "b")]
    # Every later sync says it again (one discovery each, looking for the table), and loads.
    assert main(["sync"]) == 0
    assert "public.old_log is not in the catalog" in capsys.readouterr().err

    # The code location loads; its catalog asset says it; the nightly job runs.
    defs = build_definitions(Settings.from_env())
    catalog_node = defs.resolve_asset_graph().get(dg.AssetKey(["postgres", "catalog"]))
    assert "**Selects nothing:**" in catalog_node.description
    assert "public.old_log is not in the catalog" in catalog_node.description
    run_sql(pg_url, "INSERT INTO shops VALUES (3, 'c');")
    result = defs.resolve_job_def(NIGHTLY_JOB).execute_in_process(
        raise_on_error=False, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [catalog_event] = [m for m in result.get_asset_materialization_events()
                       if m.asset_key.path[-1] == "catalog"]
    said = catalog_event.materialization.metadata["settings_selecting_nothing"].value
    assert "public.old_log is not in the catalog" in said
    assert any(e.event_type_value == "STEP_START" and CATALOG_STEP in (e.step_key or "")
               for e in result.all_events)
    assert duck_rows(path, "SELECT count(*) FROM raw.shops") == [(3,)]


def test_a_renamed_table_whose_old_entry_hashes_a_column_waits_for_the_entry(
        pg_url: str, settings_env, tables_file: Path, capsys) -> None:
    """The tables file is keyed by name. A table renamed in PostgreSQL is a new table to it;
    when the entry left under the old name hashes or excludes columns, loading the new name
    without it would put the plain values in the destination, for good. It waits, said by
    the catalog step (the night of the rename, without failing that step) and by its own
    asset after, until the entry is moved; the nightly job goes on."""
    run_sql(pg_url, """
        CREATE TABLE shops (id int PRIMARY KEY); INSERT INTO shops VALUES (1);
        CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders VALUES (1, 'x');""")
    tables_file.write_text("tables:\n  public.orders:\n    columns:\n      note: {hash: true}\n")
    path = settings_env(pg_url)
    assert main(["sync"]) == 0
    run_sql(pg_url, "ALTER TABLE orders RENAME TO orders_v2;")

    # The nightly job, the night of the rename: its catalog step finds the new name.
    result = build_definitions(Settings.from_env()).resolve_job_def(NIGHTLY_JOB) \
        .execute_in_process(raise_on_error=False, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [catalog_event] = [m.materialization for m in result.get_asset_materialization_events()
                       if m.asset_key.path[-1] == "catalog"]
    waiting = catalog_event.metadata["new_tables_not_loaded"].value
    assert waiting.startswith(f"- public.orders_v2: {tables_file}: table public.orders_v2 was "
                              "public.orders (renamed in PostgreSQL), whose entry excludes or "
                              "hashes columns: not loaded until the entry is moved to "
                              "public.orders_v2"), waiting
    said = catalog_event.metadata["settings_selecting_nothing"].value
    assert "public.orders_v2 is not loaded until then" in said, said
    assert duck_rows(path, "SELECT count(*) FROM information_schema.tables "
                           "WHERE table_name = 'orders_v2'") == [(0,)]

    # The next sync: the table's own asset (the snapshot keeps its former name) fails, alone.
    capsys.readouterr()
    assert main(["sync"]) == 1
    captured = capsys.readouterr()
    assert f"warning: {tables_file}: table public.orders was renamed to public.orders_v2 in " \
           "PostgreSQL (move its entry there: public.orders_v2 is not loaded until then: the " \
           "entry excludes or hashes columns): its entry is not used" in captured.err, \
        captured.err
    [failed] = [line for line in captured.out.splitlines() if "orders_v2: FAILED" in line]
    assert failed.endswith("not loaded until the entry is moved to public.orders_v2 (or "
                           "public.orders_v2 has an entry of its own)"), failed
    assert "public.shops: unchanged" in captured.out, captured.out
    assert duck_rows(path, "SELECT count(*) FROM information_schema.tables "
                           "WHERE table_name = 'orders_v2'") == [(0,)]

    # The entry moved: the table loads, hashed; nothing is said any more.
    tables_file.write_text("tables:\n  public.orders_v2:\n    columns:\n      note: {hash: true}\n")
    assert main(["sync"]) == 0
    captured = capsys.readouterr()
    assert "public.orders_v2: ok, 1 rows" in captured.out and "warning" not in captured.err
    assert duck_rows(path, "SELECT note FROM raw.orders_v2") == [(_sha("x"),)]
    # (The destination table loaded under the old name keeps its hashed values.)
    assert duck_rows(path, "SELECT note FROM raw.orders") == [(_sha("x"),)]


def test_a_renamed_table_whose_old_entry_keeps_nothing_out_loads_and_says_so(
        pg_url: str, settings_env, tables_file: Path, capsys) -> None:
    run_sql(pg_url, """
        CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders VALUES (1, 'x');""")
    tables_file.write_text("tables:\n  public.orders: {disposition: replace}\n")
    path = settings_env(pg_url)
    assert main(["sync"]) == 0
    run_sql(pg_url, "ALTER TABLE orders RENAME TO orders_v2;")
    capsys.readouterr()
    assert main(["sync", "--refresh-catalog"]) == 0
    captured = capsys.readouterr()
    assert f"warning: {tables_file}: table public.orders was renamed to public.orders_v2 in " \
           "PostgreSQL (move its entry there: public.orders_v2 loads without it): its entry " \
           "is not used" in captured.err, captured.err
    assert "public.orders_v2: ok, 1 rows" in captured.out, captured.out
    assert duck_rows(path, "SELECT id, note FROM raw.orders_v2") == [(1, "x")]


def test_an_include_pattern_matching_no_table_is_a_warning_while_others_match(
        pg_url: str, settings_env, capsys) -> None:
    run_sql(pg_url, """
        CREATE TABLE shops (id int PRIMARY KEY); INSERT INTO shops VALUES (1);
        CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1);""")
    path = settings_env(pg_url, INCLUDE="public.shops,public.shps_typo")
    assert main(["sync"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["warning: PG_TO_BQ_INCLUDE pattern 'public.shps_typo' "
                                         "matches no table: it selects nothing (check the "
                                         "name)"], captured.err
    assert "public.shops: ok, 1 rows" in captured.out and "public.other" not in captured.out
    assert duck_rows(path, "SELECT id FROM raw.shops") == [(1,)]
