"""Tier 2: the nightly job with the multiprocess executor (BigQuery's default), run the way
the run worker runs it (`dagster job execute -m pg_to_bq.definitions`) — real PostgreSQL,
real DuckDB file, real step processes.

Each table's step is forked from a server that loaded the code location, the load libraries
and Dagster's storage once. Dagster's default (`spawn`) started every step from an empty
interpreter that imported them all and built every table's definitions again
(`benchmarks/nightly_steps.py`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb

from pg_to_bq_tests.conftest import run_sql

TABLES = 4


def test_nightly_steps_fork_from_one_loaded_code_location(pg_url: str, settings_env,
                                                          tmp_path: Path) -> None:
    run_sql(pg_url, "".join(
        f"CREATE TABLE t{i} (id int PRIMARY KEY, v text);"
        f"INSERT INTO t{i} SELECT g, md5(g::text) FROM generate_series(1, {100 * (i + 1)}) g;"
        for i in range(TABLES)))
    path = settings_env(pg_url, EXECUTOR="multiprocess")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"),
           # Every interpreter reports its imports on stderr: which processes built the
           # code location and which loaded dlt.
           "PYTHONPROFILEIMPORTTIME": "1"}
    (tmp_path / "home").mkdir()
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "pg-to-bq"), "discover"], env=env, check=True,
                   capture_output=True, timeout=120)
    out = subprocess.run(
        [str(bin_dir / "dagster"), "job", "execute", "-m", "pg_to_bq.definitions",
         "-j", "mirror_all_tables"],
        env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-5000:]
    with duckdb.connect(str(path), read_only=True) as conn:
        for i in range(TABLES):
            assert conn.execute(f"SELECT count(*) FROM raw.t{i}").fetchone() == (100 * (i + 1),)

    imports = [line for line in out.stderr.splitlines() if line.startswith("import time:")]
    # `pg_to_bq.orchestration.code_location` builds the definitions (Dagster's loader imports
    # the code location's module without an import-time line of its own, so its first import
    # is counted).
    definitions = [line for line in imports
                   if re.search(r"\|\s+pg_to_bq\.orchestration\.code_location$", line)]
    dlt = [line for line in imports if re.search(r"\|\s+dlt$", line)]
    # The run's own process and the fork server, not once more per table.
    assert len(definitions) == 2, definitions
    # dlt: imported by the fork server only (steps inherit it).
    assert len(dlt) == 1, dlt
    # SQLAlchemy, under Dagster's instance storage (~0.8 s a step): the run's process and the
    # fork server.
    sqlalchemy = [line for line in imports if re.search(r"\|\s+sqlalchemy$", line)]
    assert len(sqlalchemy) == 2, sqlalchemy
