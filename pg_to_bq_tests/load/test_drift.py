"""Tier 2: unchanged tables stay truthful (issue 23), PostgreSQL → DuckDB.

An unchanged table is not read from PostgreSQL, yet its one check, `matches_source`, still
runs: the destination's whole-table figures now against those its last load left. A value
changed or set to NULL in the destination behind pg_to_bq's back is reported the next run,
naming the column; the run after that reads the table whole and the copy is exact again.
"""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from pg_to_bq.cli.main import main
from pg_to_bq.orchestration.code_location import build_definitions
from pg_to_bq.planning.settings import Settings
from pg_to_bq_tests.conftest import duck_rows, run_sql
from pg_to_bq_tests.support.mirror_compare import assert_mirrored_in_duckdb

TABLES = """
    CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric(12,2),
                           updated_at timestamptz NOT NULL DEFAULT now() - interval '3 days');
    INSERT INTO accounts SELECT g, 'a' || g, g * 1.5 FROM generate_series(1, 100000) g;
    CREATE TABLE tags (label text, weight int);
    INSERT INTO tags SELECT 't' || g, g FROM generate_series(1, 2000) g;
"""


@pytest.fixture
def loaded(pg_url: str, settings_env, capsys):
    run_sql(pg_url, TABLES)
    path = settings_env(pg_url)
    assert main(["sync", "--refresh-catalog"]) == 0
    out = capsys.readouterr().out
    assert "public.accounts: ok, 100,000 rows (full)" in out, out
    return pg_url, path


def test_a_destination_changed_by_hand_is_found_the_next_run(loaded, capsys) -> None:
    """The issue's case: a value changed and 500 values set to NULL in the destination; the
    table is unchanged in PostgreSQL, so it is not read, and the check says what changed."""
    url, path = loaded
    with duckdb.connect(str(path)) as conn:
        conn.execute("UPDATE raw.accounts SET balance = balance + 1 WHERE id = 77777")
        conn.execute("UPDATE raw.accounts SET name = NULL WHERE id BETWEEN 1001 AND 1500")
    assert main(["sync"]) == 1
    out = capsys.readouterr().out
    assert "public.tags: unchanged" in out, out
    assert "public.accounts: FAILED: table public.accounts: unchanged in PostgreSQL, but the " \
           "destination differs from the source: matches_source (the destination changed " \
           "since the last load (not by pg_to_bq): balance: values changed (100,000 non-null " \
           "either way); name: 100,000 non-null value(s) after the last load, 99,500 now) " \
           "(the next run reads the table whole)" in out, out
    # The next run does not trust the table's state any more: it reads it whole, exactly.
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "public.accounts: ok, 100,000 rows (full: its last check found the destination " \
           "differs from the source" in out, out
    assert_mirrored_in_duckdb(url, path, "accounts")
    # ... and then it is unchanged again, its check passing.
    assert main(["sync"]) == 0
    assert "public.accounts: unchanged" in capsys.readouterr().out


def test_rows_added_by_hand_to_an_unchanged_table_are_found(loaded, capsys) -> None:
    url, path = loaded
    with duckdb.connect(str(path)) as conn:
        # Same count as before (one row replaced by another): only the figures can tell.
        conn.execute("DELETE FROM raw.tags WHERE label = 't5'")
        conn.execute("INSERT INTO raw.tags VALUES ('forged', 5)")
    assert main(["sync"]) == 1
    out = capsys.readouterr().out
    assert "public.tags: FAILED" in out and "label: values changed" in out, out
    assert main(["sync"]) == 0
    assert_mirrored_in_duckdb(url, path, "tags")


def test_an_unchanged_table_keeps_its_data_version_and_passes_its_check(loaded) -> None:
    """Unchanged: a materialization that says so, with the data version of the load that
    wrote its rows (downstream automation sees no new data), and its check evaluated."""
    defs = build_definitions(Settings.from_env())
    instance = dg.DagsterInstance.ephemeral()

    def run() -> dg.ExecuteInProcessResult:
        result = dg.materialize(list(defs.assets or []), selection=dg.AssetSelection.kind("dlt"),
                                resources=defs.resources, instance=instance)
        assert result.success
        return result

    first, second = run(), run()
    versions = []
    for result in (first, second):
        [event] = [e for e in result.get_asset_materialization_events()
                   if e.asset_key == dg.AssetKey(["duckdb", "raw", "accounts"])]
        materialization = event.event_specific_data.materialization
        versions.append(materialization.tags["dagster/data_version"])
        assert materialization.metadata["unchanged"].value.startswith("the table's row versions")
        [check] = [e for e in result.get_asset_check_evaluations()
                   if e.asset_key == dg.AssetKey(["duckdb", "raw", "accounts"])]
        assert check.check_name == "matches_source" and check.passed
    assert versions[0] == versions[1]


def test_a_killed_load_is_not_taken_for_a_change_by_hand(loaded, capsys) -> None:
    """A load killed after it wrote rows and before it recorded them leaves its state marked
    as loading: the next run does not compare figures that predate that load (no false
    alarm), and the copy is exact."""
    url, path = loaded
    import json

    from pg_to_bq.destinations.state_table import LOADING_KEY

    run_sql(url, "UPDATE accounts SET name = 'moved', updated_at = now() WHERE id <= 10")
    # As a killed run leaves it: the rows merged, the state still the old one, marked.
    with duckdb.connect(str(path)) as conn:
        [(text,)] = conn.execute("SELECT state FROM raw._pg_to_bq_state "
                                 "WHERE table_name = 'accounts'").fetchall()
        state = json.loads(text)
        conn.execute("UPDATE raw._pg_to_bq_state SET state = ? WHERE table_name = 'accounts'",
                     [json.dumps({**state, LOADING_KEY: True})])
        conn.execute("UPDATE raw.accounts SET name = 'moved' WHERE id <= 10")
    assert main(["sync"]) == 0, capsys.readouterr().out
    assert_mirrored_in_duckdb(url, path, "accounts")
    assert duck_rows(path, "SELECT count(*) FROM raw.accounts WHERE name = 'moved'") == [(10,)]


@pytest.mark.bigquery
def test_a_bigquery_table_changed_by_hand_is_found_the_next_run(pg_url: str, settings_env,
                                                               tmp_path, bigquery_emulator,
                                                               capsys) -> None:
    """The same through dlt's BigQuery destination (the emulator): the figures use BigQuery's
    FARM_FINGERPRINT, and their row figure (of each row's JSON) finds values moved between
    rows."""
    run_sql(pg_url, """
        CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric(12,2),
                               opened timestamptz, photo bytea, active bool, score float8,
                               updated_at timestamptz NOT NULL DEFAULT now() - interval '3 days');
        INSERT INTO accounts SELECT g, 'a' || g, g * 1.5, now() - g * interval '1 hour',
                                    decode(md5(g::text), 'hex'), g % 2 = 0, g / 3.0
        FROM generate_series(1, 500) g;
    """)
    settings_env(pg_url, destination="bigquery", bigquery_project=bigquery_emulator.project_id,
                 bigquery_key_file=str(bigquery_emulator.key_file(tmp_path)), dataset="drift")
    assert main(["sync", "--refresh-catalog"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert main(["sync"]) == 0
    assert "public.accounts: unchanged" in capsys.readouterr().out
    bigquery_emulator.client().query_and_wait(
        f"UPDATE `{bigquery_emulator.project_id}.drift.accounts` SET score = 0 WHERE id = 7")
    assert main(["sync"]) == 1
    out = capsys.readouterr().out
    assert "public.accounts: FAILED" in out and "score: values changed" in out, out
    assert "name:" not in out and "balance:" not in out, out
    # Read whole (its check failed), then two rows' names swapped: every column holds the
    # values it held, only the row figure sees it.
    assert main(["sync"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    bigquery_emulator.client().query_and_wait(
        f"UPDATE `{bigquery_emulator.project_id}.drift.accounts` "
        "SET name = CASE id WHEN 5 THEN 'a6' ELSE 'a5' END WHERE id IN (5, 6)")
    assert main(["sync"]) == 1
    out = capsys.readouterr().out
    assert "public.accounts: FAILED" in out and "rows: values moved between rows" in out, out


def test_figures_stored_by_earlier_versions_equal_todays() -> None:
    """The DuckDB figures query changed shape (a list of numbers, not one text; each hash
    summed as DuckDB sums UBIGINTs, not cast to HUGEINT first): figures that earlier versions
    stored must equal today's for the same rows, or every table would show drift after an
    upgrade. Compared on a real DuckDB table of many types, NULLs and hashes near 2^64."""
    from pg_to_bq.checks import drift

    conn = duckdb.connect()
    conn.execute("""
        CREATE SCHEMA raw;
        CREATE TABLE raw.t AS SELECT i AS id, 'v' || i AS name,
            CASE WHEN i % 3 = 0 THEN NULL ELSE i * 1.25 END::DECIMAL(12,2) AS amount,
            i % 2 = 0 AS flag, TIMESTAMPTZ '2024-01-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS at,
            CASE WHEN i % 5 = 0 THEN NULL ELSE ('{"k": ' || i || '}')::JSON END AS doc
        FROM range(20000) r(i);
        CREATE TABLE raw.empty (id INT, name VARCHAR);
    """)
    columns = {"raw.t": [("id", "integer"), ("name", "text"), ("amount", "decimal"),
                         ("flag", "bool"), ("at", "timestamp"), ("doc", "json")],
               "raw.empty": [("id", "integer"), ("name", "text")]}

    def earlier(table: str, names: list[str]) -> str:
        parts = ["count(*)"] + [p for n in names for p in (
            f'count("{n}")', f'coalesce(sum(CAST(hash("{n}") AS HUGEINT)), 0)')]
        listed = ", ".join(f"CAST({p} AS VARCHAR)" for p in parts)
        return conn.execute(f"SELECT concat_ws(',', {listed}) FROM {table}").fetchone()[0]

    items = list(columns.items())
    answers = dict(conn.execute(drift.figures_sql("duckdb", items)).fetchall())
    for index, (table, pairs) in enumerate(items):
        names = [n for n, _ in pairs]
        then = drift.parse("duckdb", earlier(table, names), names)
        now = drift.parse("duckdb", answers[index], names)
        assert (now.rows, now.columns) == (then.rows, then.columns), table
        assert then.row is None and now.row is not None  # (today's have the row figure too)
        assert drift.changes(then, now) == []
    big = drift.parse("duckdb", answers[0], [n for n, _ in columns["raw.t"]])
    assert big.rows == 20000 and big.columns["amount"][0] == 20000 - 6667
    assert max(total for _, total in big.columns.values()) > 2**64  # sums past 64 bits


def _state(path, table: str) -> dict:
    import json

    with duckdb.connect(str(path)) as conn:
        [(text,)] = conn.execute("SELECT state FROM raw._pg_to_bq_state WHERE table_name = ?",
                                 [table]).fetchall()
    return json.loads(text)


def _set_state(path, table: str, state: dict) -> None:
    import json

    with duckdb.connect(str(path)) as conn:
        conn.execute("UPDATE raw._pg_to_bq_state SET state = ? WHERE table_name = ?",
                     [json.dumps(state), table])


def test_values_moved_between_rows_by_hand_are_found(loaded, capsys) -> None:
    """Two rows' names swapped in the destination: every column still holds the same values,
    so the columns' figures are those of the last load; the row figure is not."""
    url, path = loaded
    with duckdb.connect(str(path)) as conn:
        conn.execute("UPDATE raw.accounts SET name = CASE id WHEN 5 THEN 'a6' ELSE 'a5' END "
                     "WHERE id IN (5, 6)")
    assert main(["sync"]) == 1
    out = capsys.readouterr().out
    assert "public.accounts: FAILED: table public.accounts: unchanged in PostgreSQL, but the " \
           "destination differs from the source: matches_source (the destination changed " \
           "since the last load (not by pg_to_bq): rows: values moved between rows (each " \
           "column holds the values it held after the last load, not in the same rows))" \
           in out, out
    assert "public.tags: unchanged" in out, out
    assert main(["sync"]) == 0
    assert_mirrored_in_duckdb(url, path, "accounts")


def test_an_unchanged_table_is_asked_only_its_row_figure(loaded, capsys, monkeypatch) -> None:
    """An unchanged table whose figures have the row figure is asked only its rows and that
    figure; one whose stored figures lack it (stored by an earlier version) is compared
    column by column and, found as its last load left it, stored with it."""
    from pg_to_bq.load import group

    asked: dict[str, list[str]] = {"rows only": [], "whole": []}

    def spied(real, kind: str):
        def spy(pipeline, tables, live=()):
            asked[kind].extend(tables)
            return real(pipeline, tables, live)
        return spy

    monkeypatch.setattr(group, "destination_row_figures",
                        spied(group.destination_row_figures, "rows only"))
    monkeypatch.setattr(group, "destination_figures",
                        spied(group.destination_figures, "whole"))
    url, path = loaded
    state = _state(path, "accounts")
    assert state["figures"]["row"]
    older = {**state, "figures": {k: v for k, v in state["figures"].items() if k != "row"}}
    _set_state(path, "accounts", older)
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "public.accounts: unchanged" in out and "public.tags: unchanged" in out, out
    assert asked == {"rows only": ["tags"], "whole": ["accounts"]}
    assert _state(path, "accounts") == state  # (the row figure stored again, nothing else)
    asked["rows only"].clear(), asked["whole"].clear()
    assert main(["sync"]) == 0
    assert asked == {"rows only": ["accounts", "tags"], "whole": []}


def test_figures_of_another_duckdb_version_make_the_table_read_whole(loaded, capsys) -> None:
    """Figures a DuckDB upgrade cannot compare (its hash may differ): rather than left
    unchecked until the table changes in PostgreSQL, the table is read whole once, saying
    why, and compared by its figures again from the run after."""
    url, path = loaded
    state = _state(path, "accounts")
    _set_state(path, "accounts", {**state, "figures": {**state["figures"],
                                                         "engine": "duckdb 0.9.2"}})
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "public.accounts: ok, 100,000 rows (full: its figures were computed by duckdb " \
           f"0.9.2, which duckdb {duckdb.__version__} cannot compare (read whole once, to " \
           "check it against the source)" in out, out
    assert "public.tags: unchanged" in out, out
    assert _state(path, "accounts")["figures"]["engine"] == f"duckdb {duckdb.__version__}"
    assert_mirrored_in_duckdb(url, path, "accounts")
    assert main(["sync"]) == 0
    assert "public.accounts: unchanged" in capsys.readouterr().out


def test_a_table_above_the_drift_limit_is_not_read_again_for_its_figures(loaded, capsys,
                                                                         monkeypatch) -> None:
    """Figures of another DuckDB version on a table above `PG_TO_BQ_DRIFT_MAX_ROWS`: they
    would not be compared anyway, so the table is not read whole for them."""
    url, path = loaded
    for table in ("accounts", "tags"):
        state = _state(path, table)
        _set_state(path, table, {**state, "figures": {**state["figures"],
                                                      "engine": "duckdb 0.9.2"}})
    monkeypatch.setenv("PG_TO_BQ_DRIFT_MAX_ROWS", "5000")
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "public.accounts: unchanged" in out, out
    assert "public.tags: ok, 2,000 rows (full: its figures were computed by duckdb 0.9.2" \
        in out, out
