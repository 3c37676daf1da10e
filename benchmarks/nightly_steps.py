"""The nightly job over many small tables, by executor: what a run costs beyond the rows.

    .venv/bin/python benchmarks/nightly_steps.py --pg-url postgresql://postgres@host/db --tables 20

Creates `--tables` tables of 2,000 rows in a database of their own, then runs the nightly job
(`dagster job execute -m … -j mirror_all_tables`, as a run worker does) into a fresh DuckDB
file once per executor:

* `in_process`: every table in the run's process (DuckDB's default);
* `multiprocess`: a process per table, forked from a server that loaded the code location
  and the load libraries once (pg_to_bq's `multiprocess`, BigQuery's default);
* `spawn`: Dagster's stock multiprocess executor, every step started from an empty
  interpreter (what `multiprocess` was before; run through `benchmarks/spawn_definitions.py`).

Prints wall time and the CPU the whole machine spent meanwhile (from /proc/stat: the run's
processes, the fork server and its children, and PostgreSQL), so run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
DATABASE = "nightly_steps"
EXECUTORS = {"in_process": ("in_process", "pg_to_bq.definitions"),
             "multiprocess": ("multiprocess", "pg_to_bq.definitions"),
             "spawn": ("multiprocess", "spawn_definitions")}


def create_tables(admin_url: str, count: int) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    url = admin_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(count):
            conn.execute(f"CREATE TABLE t{i:04d} (id bigint PRIMARY KEY, v text, "
                         "updated_at timestamptz NOT NULL DEFAULT now())")
            conn.execute(f"INSERT INTO t{i:04d} (id, v) SELECT g, md5(g::text) "
                         "FROM generate_series(1, 2000) g")
    return url


def _machine_cpu_s() -> float:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run(url: str, executor: str, tables: int) -> dict:
    setting, module = EXECUTORS[executor]
    with tempfile.TemporaryDirectory() as work:
        home = Path(work) / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG_TO_BQ_")}
        env.update({"DAGSTER_HOME": str(home), "PG_TO_BQ_SOURCE_URL": url,
                    "PG_TO_BQ_WORK_DIR": work, "PG_TO_BQ_EXECUTOR": setting,
                    "PG_TO_BQ_DESTINATION": f"duckdb:///{work}/nightly.duckdb",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE),
                                                                env.get("PYTHONPATH")]))})
        bin_dir = Path(sys.executable).parent
        subprocess.run([str(bin_dir / "pg-to-bq"), "discover"], env=env, check=True,
                       capture_output=True)
        cpu, started = _machine_cpu_s(), time.monotonic()
        done = subprocess.run([str(bin_dir / "dagster"), "job", "execute", "-m", module,
                               "-j", "mirror_all_tables"], env=env, capture_output=True,
                              text=True)
        wall, cpu = time.monotonic() - started, _machine_cpu_s() - cpu
        loaded = _loaded_tables(Path(work) / "nightly.duckdb")
        if done.returncode != 0 or loaded != tables:
            raise RuntimeError(f"{executor}: exit {done.returncode}, {loaded}/{tables} tables "
                               f"loaded\n{done.stderr[-3000:]}")
    return {"executor": executor, "wall_s": wall, "cpu_s": cpu}


def _loaded_tables(path: Path) -> int:
    """Tables holding their 2,000 rows (the run's log interleaves its processes' lines, so it
    is not what says a table was loaded)."""
    import duckdb

    with duckdb.connect(str(path), read_only=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_name LIKE 't____' AND table_schema NOT LIKE '%staging%'").fetchall()]
        return sum(conn.execute(f"SELECT count(*) FROM {n}").fetchone() == (2000,)
                   for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--tables", type=int, default=20)
    parser.add_argument("--executors", default="in_process,multiprocess,spawn")
    args = parser.parse_args()
    url = create_tables(args.pg_url, args.tables)
    print(f"{args.tables} tables of 2,000 rows; nightly job into DuckDB")
    print("| executor | wall (s) | machine CPU (s) | CPU per table (s) |")
    print("|---|---:|---:|---:|")
    for executor in args.executors.split(","):
        result = run(url, executor, args.tables)
        print(f"| {executor} | {result['wall_s']:.1f} | {result['cpu_s']:.1f} | "
              f"{result['cpu_s'] / args.tables:.2f} |", flush=True)


if __name__ == "__main__":
    main()
