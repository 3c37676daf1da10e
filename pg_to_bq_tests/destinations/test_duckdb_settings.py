"""Tier 2: DuckDB settings from `PG_TO_BQ_DESTINATION`'s query reach the DuckDB that loads
the table — real PostgreSQL, real DuckDB file.

`duckdb:///file.duckdb?memory_limit=1GB` lets a bigger machine give DuckDB more memory
than pg_to_bq's 88 MB default (see docs/configuration and benchmarks/README.md).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import psycopg
import pytest

from pg_to_bq.load.group import load_table
from pg_to_bq.orchestration.code_location import build_resources
from pg_to_bq.orchestration.resources import Destination
from pg_to_bq.planning.settings import Settings
from pg_to_bq.planning.tables import build_plans
from pg_to_bq.postgres.discovery import discover
from pg_to_bq_tests.conftest import run_sql


def _load(url: str, destination_url: str, work_dir: Path) -> int:
    """Load `numbers` through the destination resource the code location builds from
    `PG_TO_BQ_DESTINATION=destination_url`."""
    settings = Settings.from_env({"PG_TO_BQ_SOURCE_URL": url,
                                  "PG_TO_BQ_DESTINATION": destination_url})
    destination = build_resources(settings)["destination"]
    with psycopg.connect(url) as conn:
        (plan,) = build_plans(discover(conn, schemas=["public"], table="numbers"), "duckdb")
    return load_table(plan, source_url=url, destination=destination.dlt_destination(),
                      dataset="raw", work_dir=work_dir, full_refresh=True).rows


def _compressions(path: Path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as conn:
        rows = conn.execute("SELECT DISTINCT compression FROM pragma_storage_info('raw.numbers') "
                            "WHERE segment_type <> 'VALIDITY'").fetchall()
    return {r[0] for r in rows}


def test_a_setting_in_the_destination_url_applies_to_the_load(pg_url: str, tmp_path: Path) -> None:
    """`force_compression` leaves a mark in the file: every stored segment says how it was
    compressed. Without the setting DuckDB compresses a sequence; with it, nothing is."""
    run_sql(pg_url, "CREATE TABLE numbers (id int PRIMARY KEY, v bigint NOT NULL);"
                    "INSERT INTO numbers SELECT g, g * 2 FROM generate_series(1, 5000) g;")
    default = tmp_path / "default.duckdb"
    assert _load(pg_url, f"duckdb:///{default}", tmp_path / "w1") == 5000
    assert _compressions(default) - {"Uncompressed"}, "DuckDB compressed nothing by default"

    forced = tmp_path / "forced.duckdb"
    assert _load(pg_url, f"duckdb:///{forced}?force_compression=uncompressed",
                 tmp_path / "w2") == 5000
    assert _compressions(forced) == {"Uncompressed"}
    with duckdb.connect(str(forced), read_only=True) as conn:
        assert conn.execute("SELECT count(*), sum(v) FROM raw.numbers").fetchone() == \
            (5000, 5000 * 5001)


@pytest.mark.parametrize(("settings", "named"), [
    ({"no_such_setting": "1"}, "no_such_setting"),
    ({"memory_limit": "a lot"}, "memory_limit"),
])
def test_a_setting_duckdb_refuses_fails_before_loading(tmp_path: Path, settings: dict[str, str],
                                                      named: str) -> None:
    destination = Destination(kind="duckdb", duckdb_path=str(tmp_path / "d.duckdb"),
                              duckdb_settings=settings)
    with pytest.raises(ValueError, match=f"PG_TO_BQ_DESTINATION: .*{named}"):
        destination.dlt_destination()
    assert not (tmp_path / "d.duckdb").exists()
