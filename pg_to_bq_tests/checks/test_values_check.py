"""The values check as the load runs it (`load_group` → `matches_source`, its values part): real
PostgreSQL → DuckDB and the BigQuery emulator. The digests themselves (canonical forms,
quoting, scopes, many tables in one query) are tested in `test_fingerprint_digests`.

It must pass on a faithful copy of every type the loader handles, fail naming exactly the
column on any single changed value (one per aggregate class), fail on the 19,389-NULL
case of issue 16, and catch a change inside the key ranges it samples on a large table.
"""

from __future__ import annotations

import duckdb
import pytest

from pg_to_bq.checks.fingerprint import (
    compare,
    destination_sql,
    not_compared,
    parse,
    scope_for,
    source_sql,
)
from pg_to_bq.cli.main import main
from pg_to_bq.load.group import load_group
from pg_to_bq.load.results import TableLoad
from pg_to_bq.orchestration.resources import Destination
from pg_to_bq.planning.tables import plan_table
from pg_to_bq.postgres.connect import connect
from pg_to_bq.postgres.discovery import discover
from pg_to_bq_tests.conftest import duck_rows, run_sql

MANY_TYPES = """
    CREATE TYPE mood AS ENUM ('ok', 'happy');
    CREATE TABLE kinds (
        id bigint PRIMARY KEY, small int2, big int8, num numeric(12,2), wide numeric(38,10),
        free numeric, real_v float4, dbl float8, flag bool, txt text, code char(5),
        var varchar(20), doc jsonb, raw_json json, uid uuid, bin bytea, day date,
        moment timestamp, instant timestamptz, clock time, span interval, feeling mood,
        ints int[]);
    INSERT INTO kinds VALUES
        (1, -32768, 9223372036854775807, 1234567890.12, 1.0000000001, 3.14159265358979323846,
         1.5, 'NaN', true, 'こんにちは', 'ab', 'x', '{"b": 1, "a": [1, 2]}', '{"b":1,  "a":2}',
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', '2024-02-29',
         '2024-01-01 12:34:56.789012', '2024-01-01 12:34:56.789012+09', '23:59:59.999999',
         '1 year 2 months 3 days 04:05:06.789', 'happy', '{1,NULL,3}'),
        (2, 0, -1, -0.01, 0, 0, -0.0, 1e300, false, '', 'abcde', 'yy', 'null', '[]',
         NULL, '\\x', '0001-01-01', '1970-01-01 00:00:00', '1999-12-31 23:59:59+00',
         '00:00:00', '-1 day', 'ok', '{}'),
        (3, NULL, NULL, NULL, NULL, NULL, NULL, 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""
# A change per aggregate class, made in the loaded copy: the check must name that column.
TAMPERING = [
    ("big", "UPDATE raw.kinds SET big = big - 1 WHERE id = 1"),
    ("num", "UPDATE raw.kinds SET num = 1234567890.13 WHERE id = 1"),
    ("dbl", "UPDATE raw.kinds SET dbl = 2e300 WHERE id = 2"),
    ("flag", "UPDATE raw.kinds SET flag = true WHERE id = 2"),
    ("txt", "UPDATE raw.kinds SET txt = 'こんばんは' WHERE id = 1"),
    ("code", "UPDATE raw.kinds SET code = 'ab' WHERE id = 1"),
    ("doc", "UPDATE raw.kinds SET doc = '{\"a\": [1, 3], \"b\": 1}' WHERE id = 1"),
    ("bin", "UPDATE raw.kinds SET bin = '\\x00ff11'::BLOB WHERE id = 1"),
    ("day", "UPDATE raw.kinds SET day = DATE '2024-03-01' WHERE id = 1"),
    ("instant", "UPDATE raw.kinds SET instant = instant + INTERVAL 1 MICROSECOND WHERE id = 1"),
    ("clock", "UPDATE raw.kinds SET clock = TIME '23:59:59.999998' WHERE id = 1"),
    ("uid", "UPDATE raw.kinds SET uid = NULL WHERE id = 1"),
    ("span", "UPDATE raw.kinds SET span = 'P1Y' WHERE id = 1"),
]


def _plan(url: str, table: str):
    with connect(url) as conn:
        [found] = discover(conn, table=table).tables
    return plan_table(found, "duckdb")


def _load(url: str, plan, tmp_path, full_rows: int = 20_000):
    destination = Destination(kind="duckdb", duckdb_path=str(tmp_path / "dest.duckdb"),
                              dataset="raw", work_dir=str(tmp_path / "work"))
    [result] = load_group([TableLoad(plan, full_refresh=True)], pipeline_name="fingerprints",
                          source_url=url, destination=destination.dlt_destination(),
                          dataset="raw", work_dir=tmp_path / "work", fingerprint_rows=full_rows)
    assert result.ok, result.error
    return result


def test_every_type_passes_then_each_single_change_is_named(pg_url: str, tmp_path) -> None:
    run_sql(pg_url, MANY_TYPES)
    plan = _plan(pg_url, "kinds")
    result = _load(pg_url, plan, tmp_path)
    assert result.fingerprint is not None and result.fingerprint.passed, \
        result.fingerprint.description if result.fingerprint else None
    assert len(result.fingerprint.metadata["compared_columns"]) == len(plan.columns)
    for column, tampering in TAMPERING:
        with duckdb.connect(str(tmp_path / "dest.duckdb")) as conn:
            conn.execute(tampering)
        again = _load(pg_url, plan, tmp_path)  # reloads, then compares
        assert again.fingerprint.passed, (column, again.fingerprint.description)
        # Tamper again after the load and compare without reloading: only the check.
        scope = scope_for(plan, 3, "s")
        with duckdb.connect(str(tmp_path / "dest.duckdb")) as conn:
            conn.execute(tampering)
            loaded = conn.execute(destination_sql(plan, "duckdb", "raw.kinds", scope)).fetchone()
        with connect(pg_url) as conn:
            conn.execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3;"
                         "SET IntervalStyle = 'iso_8601'; SET DateStyle = 'ISO, YMD'")
            source = conn.execute(source_sql(plan, scope)).fetchone()
        outcome = compare(parse(plan, source, scope), parse(plan, loaded, scope),
                          skipped=not_compared(plan))
        assert not outcome.passed, column
        assert outcome.description.startswith(
            f"1 of {len(plan.columns)} column(s) differ: {column} ("), \
            (column, outcome.description)


def test_the_19389_nulls_of_issue_16_fail_the_check(pg_url: str, settings_env, capsys) -> None:
    """A merged table whose new column reached only the rows whose cursor moved: the check
    fails, naming the column (here made by hand in the copy; the load itself fills it)."""
    run_sql(pg_url, """
        CREATE TABLE events (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL);
        INSERT INTO events SELECT g, 'v' || g, now() - interval '30 days' + g * interval '1 min'
        FROM generate_series(1, 20000) g;
        ALTER TABLE events ADD COLUMN extra text DEFAULT 'x';
    """)
    # Every row compared (the default, 5,000, samples key ranges of a 20,000-row table).
    # (merged by cursor, as a table above PG_TO_BQ_READ_WHOLE_BYTES is: a whole read
    # would replace the copy, repairing it)
    path = settings_env(pg_url, fingerprint_rows="20000", read_whole_bytes="0")
    assert main(["sync"]) == 0
    assert "matches_source" not in capsys.readouterr().out
    with duckdb.connect(str(path)) as conn:
        conn.execute("UPDATE raw.events SET extra = NULL WHERE id <= 19389")
    run_sql(pg_url, "UPDATE events SET v = 'again', updated_at = now() WHERE id = 20000")
    # Values lost: the table failed (issue 21), and the process says so.
    assert main(["sync"]) == 1
    out = capsys.readouterr().out
    # Both parts of the check say it: the values compared with the source, and the
    # destination's figures compared with those its last load left.
    assert "public.events: FAILED: table public.events: loaded, but the destination differs " \
           "from the source: matches_source (1 of 4 column(s) differ: extra (non-null " \
           "count: source 20,000, destination 611; values differ too) (scope: whole table " \
           "(20,000 rows)); the destination changed since the last load (not by pg_to_bq): " \
           "extra: 20,000 non-null value(s) after the last load, 611 now) (the next run reads " \
           "the table whole)" in out, out
    # The next run does not trust the state and reads the table whole: exact again.
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "public.events: ok, 20,000 rows (full: its last check found the destination differs " \
           "from the source: 1 of 4 column(s) differ: extra" in out, out
    assert duck_rows(path, "SELECT count(extra) FROM raw.events") == [(20000,)]


def test_a_change_in_a_sampled_range_of_a_large_table_is_caught(pg_url: str, tmp_path) -> None:
    run_sql(pg_url, "CREATE TABLE big (id int PRIMARY KEY, v text);"
                    "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
    plan = _plan(pg_url, "big")
    _load(pg_url, plan, tmp_path, full_rows=1_000)
    scope = scope_for(plan, 50_000, "seed", full_rows=1_000, range_rows=1_000,
                      bounds=(1, 50_000))
    assert scope.values and scope.description.startswith("3 ranges of key id")
    inside = scope.ranges[1][0]
    with connect(pg_url) as conn:
        source = conn.execute(source_sql(plan, scope)).fetchone()
    with duckdb.connect(str(tmp_path / "dest.duckdb")) as conn:
        loaded = conn.execute(destination_sql(plan, "duckdb", "raw.big", scope)).fetchone()
        assert compare(parse(plan, source, scope), parse(plan, loaded, scope),
                       skipped={}).passed
        conn.execute(f"UPDATE raw.big SET v = 'changed' WHERE id = {inside}")
        loaded = conn.execute(destination_sql(plan, "duckdb", "raw.big", scope)).fetchone()
    outcome = compare(parse(plan, source, scope), parse(plan, loaded, scope), skipped={})
    assert not outcome.passed and "v (values differ)" in outcome.description
    assert outcome.metadata["scope"] == scope.description


@pytest.mark.bigquery
def test_every_type_passes_through_the_bigquery_emulator(pg_url: str, tmp_path,
                                                         bigquery_emulator) -> None:
    """The same table through dlt's BigQuery destination: the BigQuery side of every
    aggregate (BIGNUMERIC sums, UNIX_MICROS, UNIX_DATE, TIME_DIFF, MD5/TO_HEX) agrees with
    PostgreSQL's, as far as the emulator computes them."""
    run_sql(pg_url, MANY_TYPES)
    with connect(pg_url) as conn:
        [found] = discover(conn, table="kinds").tables
    plan = plan_table(found, "bigquery")
    destination = Destination(kind="bigquery", dataset="fingerprints",
                              work_dir=str(tmp_path / "work"),
                              bigquery_project=bigquery_emulator.project_id,
                              bigquery_key_file=str(bigquery_emulator.key_file(tmp_path)))
    [result] = load_group([TableLoad(plan, full_refresh=True)], pipeline_name="bq_fingerprints",
                          source_url=pg_url, destination=destination.dlt_destination(),
                          dataset="fingerprints", work_dir=tmp_path / "work",
                          fingerprint_rows=20_000)
    assert result.ok, result.error
    assert result.fingerprint is not None
    # bqemulator 1.4.0 computes BIGNUMERIC (numeric(38,10)) as DECIMAL(38,5): `wide` is
    # rounded there when stored or cast (real BigQuery keeps it exact), and the check must
    # then name it.
    client = bigquery_emulator.client()
    stored = [tuple(row.values()) for row in client.query_and_wait(
        "SELECT `id`, CAST(`wide` AS BIGNUMERIC) "
        f"FROM `{bigquery_emulator.project_id}.fingerprints.kinds` ORDER BY `id`")]
    with connect(pg_url) as conn:
        exact = [tuple(r) for r in conn.execute("SELECT id, wide FROM kinds ORDER BY id")]
    rounded = {"wide"} if stored != exact else set()
    differences = set(result.fingerprint.metadata.get("differences", {}))
    assert differences == rounded, (result.fingerprint.description, result.fingerprint.metadata)
