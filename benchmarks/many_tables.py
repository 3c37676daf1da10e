"""Many small tables: pg_to_bq's CLI and scheduled job against dlt's sql_database, in one run.

    .venv/bin/python benchmarks/many_tables.py --shapes 100x1000,1000x1000

For each shape (TABLESxROWS, or groups joined by `+`: `1000x1000+2x1000000` is 1,000 small
tables with two 1M-row tables among them) it builds a database of that many 7-column tables (named like an
application's: most in `public`, some in a second schema `billing`, some with mixed-case names
or spaces that need quoting) in an embedded PostgreSQL 18 (or on --pg-url), then loads ALL of
them into a fresh DuckDB file once per path, each path a fresh process driven as a user
drives the product (commands and environment variables only):

* `pg_to_bq_discover`: `pg-to-bq discover` (the catalog snapshot the other two need);
* `pg_to_bq_cli`: `pg-to-bq sync` into an empty DuckDB file and work dir;
* `pg_to_bq_cli_resync`: the same `pg-to-bq sync` again, nothing changed in PostgreSQL;
* `pg_to_bq_job`: the scheduled job as a run worker runs it,
  `dagster job execute -m pg_to_bq.definitions -j mirror_all_tables` (after an untimed
  `pg-to-bq discover` in its own work dir), Dagster's default storage (SQLite files);
* `pg_to_bq_job_pg`: the same, with Dagster's storage in PostgreSQL as deployed
  (`deploy/dagster.yaml`), a fresh database on the same server;
* `dlt_connectorx`, `dlt_pyarrow`: dlt's `sql_database(credentials=url, schema=...,
  backend=...)`, one source per schema, all in ONE `pipeline.run(..., write_disposition=
  "replace")` into DuckDB, dlt's defaults otherwise.

Per path: wall seconds of the whole process, CPU seconds of its process tree and of
PostgreSQL's backends, peak RSS, the tables and rows found in its DuckDB file afterwards
(checked against the source: a mismatch is reported, the run goes on, the exit status is 1)
and the ratios to `pg_to_bq_cli`. Markdown to stdout and to --out
(benchmarks/results/many-tables.md), with the command, the machine and library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
DATASET = "many_tables"
SECOND_SCHEMA = "billing"
BUILD_VERSION = "many_tables v1"  # in the database's comment: a kept database is reused
DLT_SECTIONS = ("EXTRACT", "NORMALIZE", "LOAD", "DATA_WRITER", "RUNTIME")
ALL_PATHS = ("pg_to_bq_discover", "pg_to_bq_cli", "pg_to_bq_cli_resync", "pg_to_bq_job",
             "pg_to_bq_job_pg", "dlt_connectorx", "dlt_pyarrow")
LABELS = {
    "pg_to_bq_discover": "`pg-to-bq discover` (catalog query, snapshot, plan)",
    "pg_to_bq_cli": "`pg-to-bq sync`, empty DuckDB file and work dir",
    "pg_to_bq_cli_resync": "`pg-to-bq sync` again, nothing changed",
    "pg_to_bq_job": "scheduled job: `dagster job execute -j mirror_all_tables`",
    "pg_to_bq_job_pg": "the same job, Dagster's storage in PostgreSQL (as deployed)",
    "dlt_connectorx": "dlt `sql_database(backend=\"connectorx\")`, one `run`",
    "dlt_pyarrow": "dlt `sql_database(backend=\"pyarrow\")`, one `run`",
}
LOADS = ("pg_to_bq_cli", "pg_to_bq_cli_resync", "pg_to_bq_job", "pg_to_bq_job_pg",
         "dlt_connectorx", "dlt_pyarrow")
NOUNS = ("users", "accounts", "orders", "order_items", "invoices", "payments", "products",
         "customers", "subscriptions", "shipments", "user_events", "audit_log", "sessions",
         "addresses", "coupons", "refunds", "carts", "reviews", "inventory_levels",
         "warehouses", "suppliers", "employees", "departments", "support_tickets", "messages",
         "notifications", "devices", "login_attempts", "api_keys", "feature_flags",
         "price_lists", "tax_rates", "exchange_rates", "campaigns", "page_views", "webhooks",
         "team_members")


# ---------------------------------------------------------------------------------------------
# The source database


def table_names(count: int) -> list[tuple[str, str]]:
    """(schema, table) for `count` tables, deterministic. Every fifth table is in `billing`,
    every tenth has a CamelCase name (`"UserEvents3"`), every twentieth spaces (`"order items
    3"`, `"legacy orders"`); the first four cover all of these. A name is a noun and, after
    the first round of nouns, the round's number, so no two tables meet in one name even
    after lower-casing or snake-casing (dlt's naming)."""
    names = []
    for i in range(count):
        noun, round_ = NOUNS[i % len(NOUNS)], i // len(NOUNS)
        if i % 10 == 3:
            name = "".join(w.capitalize() for w in noun.split("_")) + (str(round_) if round_ else "")
        elif i % 20 == 2:
            words = noun.replace("_", " ") if "_" in noun else "legacy " + noun
            name = words + (f" {round_}" if round_ else "")
        else:
            name = noun + (f"_{round_}" if round_ else "")
        names.append((SECOND_SCHEMA if i % 5 == 1 else "public", name))
    return names


CREATE_SQL = """
CREATE TABLE {table} (
    id          integer PRIMARY KEY,
    name        text NOT NULL,
    amount      numeric(12,2),
    active      boolean NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    attributes  jsonb
);
INSERT INTO {table}
SELECT g,
       'item ' || g || ' ' || md5(({seed} * 1000003 + g)::text),
       CASE WHEN g % 10 = 0 THEN NULL ELSE ((g::bigint * 37 + {seed}) % 1000000) / 100.0 END,
       (g + {seed}) % 3 <> 0,
       timestamptz '2024-01-01 00:00:00+00' + ((g::bigint * 7919 + {seed}) % 31536000) * interval '1 s',
       timestamptz '2024-01-01 00:00:00+00' + ((g::bigint * 7919 + {seed}) % 31536000) * interval '1 s'
           + ((g::bigint * 104729 + {seed}) % 8640000) * interval '1 s',
       CASE WHEN g % 7 = 0 THEN NULL
            ELSE jsonb_build_object('k', g % 100, 'tag', 't' || ((g + {seed}) % 17),
                                    'ok', g % 2 = 0) END
FROM generate_series(1, {rows}) AS g;
"""


def database_url(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def shape_label(groups: list[tuple[int, int]]) -> str:
    """`1000x1000`, or `1000x1000+2x1000000` for groups of tables of different sizes."""
    return "+".join(f"{tables}x{rows}" for tables, rows in groups)


def row_counts(groups: list[tuple[int, int]]) -> list[int]:
    """Each table's rows, in `table_names` order: the groups one after the other (the last
    groups' tables, the big ones, get the last names, in `public` and `billing` alike)."""
    return [rows for tables, rows in groups for _ in range(tables)]


def build_database(admin_url: str, groups: list[tuple[int, int]], reuse: bool,
                   log=print) -> dict:
    """Create database `many_tables_{tables}x{rows}` for `groups` [(tables, rows)] (for
    several sizes, `many_tables_1000x1000_2x1000000`), or reuse it when `reuse` and it was
    built by this version for this shape: the tables, 50 a round trip, then VACUUM ANALYZE."""
    import psycopg
    from psycopg import sql

    counts = row_counts(groups)
    tables, label = len(counts), shape_label(groups)
    database = "many_tables_" + label.replace("+", "_")
    comment = f"{BUILD_VERSION} {label}"
    url = database_url(admin_url, database)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        existing = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                "WHERE datname = %s", (database,)).fetchone()
        built = existing is not None and existing[0] == comment
        if not (reuse and built):
            started = time.monotonic()
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            _fill(url, counts, log)
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(database), sql.Literal(comment)))
            log(f"  built {describe_groups(groups)} in {time.monotonic() - started:.1f}s")
        else:
            log(f"  reusing database {database}")
    with psycopg.connect(url, autocommit=True) as conn:
        stats = conn.execute(
            "SELECT count(*), coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname IN ('public', %s)", (SECOND_SCHEMA,)).fetchone()
        version = conn.execute("SHOW server_version").fetchone()[0]
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
        _warm_up(conn, table_names(tables))
    if stats[0] != tables:
        raise RuntimeError(f"{database}: {stats[0]} tables, {tables} expected")
    return {"database": database, "url": url, "tables": tables, "rows": sum(counts),
            "counts": counts, "groups": groups, "label": label,
            "total_bytes": stats[1], "server_version": version,
            "max_connections": max_connections}


def describe_groups(groups: list[tuple[int, int]]) -> str:
    return " + ".join(f"{tables:,} table{'s' * (tables != 1)} × {rows:,} rows"
                      for tables, rows in groups)


def _fill(url: str, counts: list[int], log) -> None:
    import psycopg
    from psycopg import sql

    tables = len(counts)
    names = table_names(tables)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SECOND_SCHEMA)))
        for start in range(0, tables, 50):
            script = "".join(
                CREATE_SQL.format(table=sql.Identifier(schema, name).as_string(conn),
                                  seed=start + offset, rows=counts[start + offset])
                for offset, (schema, name) in enumerate(names[start:start + 50]))
            conn.execute(script)  # one round trip: a multi-statement simple query
            if tables > 200 and (start + 50) % 200 == 0:
                log(f"  {min(start + 50, tables):,}/{tables:,} tables")
        conn.execute("VACUUM ANALYZE")


def _warm_up(conn, names: list[tuple[str, str]]) -> None:
    """Read every table once (one round trip a 200 tables), so the first path measured does
    not pay for a cold cache (a kept database) that later ones do not."""
    from psycopg import sql

    for start in range(0, len(names), 200):
        conn.execute(sql.SQL(";").join(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
            for schema, name in names[start:start + 200]))


def create_database(admin_url: str, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def drop_database(admin_url: str, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(database)))


# ---------------------------------------------------------------------------------------------
# Measuring one process


@dataclass
class Measurement:
    path: str
    wall_s: float
    cpu_s: float  # user + system of the process and every descendant it waited for
    peak_rss_mb: float  # ru_maxrss from wait4: the largest single process of the tree
    exit_code: int | None  # None: timed out (killed)
    pg_cpu_s: float | None = None
    tables: int | None = None
    rows: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.exit_code is None:
            return "TIMED OUT"
        if self.exit_code != 0:
            return f"FAILED (exit {self.exit_code})"
        return "MISMATCH" if self.problems else "ok"


class PostgresCpu:
    """CPU seconds of PostgreSQL's backends, when the server runs on this machine: the
    postmaster's reaped children (cutime + cstime in /proc/PID/stat), read once the measured
    process's backends have exited. Autovacuum workers ending meanwhile count too."""

    def __init__(self, admin_url: str, database: str) -> None:
        import psycopg

        self.database = database
        self.conn = psycopg.connect(admin_url, autocommit=True)
        self.pid = None
        with contextlib.suppress(Exception):
            data_dir = self.conn.execute("SHOW data_directory").fetchone()[0]
            pid = int((Path(data_dir) / "postmaster.pid").read_text().splitlines()[0])
            self._ticks(pid)
            self.pid = pid

    @staticmethod
    def _ticks(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # after the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def read(self) -> float | None:
        if self.pid is None:
            return None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            busy = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND backend_type = 'client backend'", (self.database,)).fetchone()[0]
            if not busy:
                break
            time.sleep(0.05)
        time.sleep(0.05)  # the postmaster reaps an exited backend on SIGCHLD
        try:
            return self._ticks(self.pid)
        except OSError:
            return None

    def close(self) -> None:
        self.conn.close()


def run_process(path: str, cmd: list[str], env: dict[str, str], log_base: Path,
                timeout_s: float, pg_cpu: PostgresCpu | None) -> Measurement:
    """Run `cmd` in a new session; wall time, and CPU and peak RSS from wait4 (the process
    and its waited-for descendants; for the RSS the largest one of them). Killed as a whole
    process group after `timeout_s`. Output goes to `log_base`.out/.err."""
    log_base.parent.mkdir(parents=True, exist_ok=True)
    pg_before = pg_cpu.read() if pg_cpu else None
    with open(f"{log_base}.out", "wb") as out, open(f"{log_base}.err", "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=ROOT, start_new_session=True)
        timed_out = False
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - started > timeout_s:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.02)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(ProcessLookupError):  # whatever it left behind
        os.killpg(proc.pid, signal.SIGKILL)
    pg_after = pg_cpu.read() if pg_cpu else None
    return Measurement(path=path, wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
                       peak_rss_mb=usage.ru_maxrss / 1024,
                       exit_code=None if timed_out else proc.returncode,
                       pg_cpu_s=None if pg_before is None or pg_after is None
                       else pg_after - pg_before)


def count_loaded(duckdb_path: Path, dataset: str) -> tuple[int, int, list[int]]:
    """Tables in the dataset, their total rows and each one's rows. Names starting with `_`
    are the loaders' bookkeeping (dlt's `_dlt_*`, pg_to_bq's `_pg_to_bq_state`), left out:
    no source table's name starts with one."""
    import duckdb

    if not duckdb_path.exists():
        return 0, 0, []
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? "
            "AND NOT starts_with(table_name, '_') ORDER BY table_name", [dataset]).fetchall()]
        quoted = '"' + dataset.replace('"', '""') + '"'
        counts = [con.execute(f'SELECT count(*) FROM {quoted}."{n.replace(chr(34), chr(34) * 2)}"'
                              ).fetchone()[0] for n in names]
    return len(names), sum(counts), counts


def verify(m: Measurement, duckdb_path: Path, shape: dict) -> None:
    if m.exit_code is None:
        return
    try:
        m.tables, m.rows, counts = count_loaded(duckdb_path, DATASET)
    except Exception as exc:  # a path that died midway may leave an unreadable file
        m.problems.append(f"DuckDB file unreadable: {exc}")
        return
    if m.tables != shape["tables"]:
        m.problems.append(f"{m.tables} tables in DuckDB, {shape['tables']} in PostgreSQL")
    # Tables are counted in the destination's name order: compared as multisets of sizes.
    short = (Counter(shape["counts"]) - Counter(counts)).total()
    if m.rows != shape["rows"] or short:
        m.problems.append(f"{m.rows:,} rows in DuckDB, {shape['rows']:,} in PostgreSQL "
                          f"({short} table(s) without their source's row count)")


# ---------------------------------------------------------------------------------------------
# The paths


def pg_to_bq_env(url: str, work: Path, dagster_home: Path | None = None) -> dict[str, str]:
    """What a user sets: the source, a DuckDB file, the dataset and the work dir. Any
    PG_TO_BQ_* (and DAGSTER_HOME) of the calling shell is left out."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PG_TO_BQ_") and k != "DAGSTER_HOME"}
    env.update({"PG_TO_BQ_SOURCE_URL": url,
                "PG_TO_BQ_DESTINATION": f"duckdb:///{work / 'mirror.duckdb'}",
                "PG_TO_BQ_DATASET": DATASET, "PG_TO_BQ_WORK_DIR": str(work / "pg_to_bq")})
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    return env


def measure_shape(shape: dict, paths: list[str], args: argparse.Namespace,
                  pg_cpu: PostgresCpu | None, rep: int) -> list[Measurement]:
    """One repetition: every chosen path once, in order, each into fresh directories."""
    tag = shape["label"]
    base = args.data_dir / "work" / tag / str(rep)
    logs = args.data_dir / "logs" / tag / str(rep)
    shutil.rmtree(base, ignore_errors=True)
    results: list[Measurement] = []

    def run(path: str, cmd: list[str], env: dict, work: Path, record: bool = True,
            check_rows: bool = True) -> Measurement:
        m = run_process(path, cmd, env, logs / path, args.timeout_s, pg_cpu)
        if check_rows:
            verify(m, work / "mirror.duckdb", shape)
        report(m, logs / path)
        if record:
            results.append(m)
        return m

    url = shape["url"]
    cli = [str(BIN / "pg-to-bq")]
    if {"pg_to_bq_discover", "pg_to_bq_cli", "pg_to_bq_cli_resync"} & set(paths):
        work = base / "pg_to_bq_cli"
        env = pg_to_bq_env(url, work)
        run("pg_to_bq_discover", [*cli, "discover"], env, work,
            record="pg_to_bq_discover" in paths, check_rows=False)
        if {"pg_to_bq_cli", "pg_to_bq_cli_resync"} & set(paths):
            run("pg_to_bq_cli", [*cli, "sync"], env, work, record="pg_to_bq_cli" in paths)
        if "pg_to_bq_cli_resync" in paths:
            run("pg_to_bq_cli_resync", [*cli, "sync"], env, work)
    for job_path in ("pg_to_bq_job", "pg_to_bq_job_pg"):
        if job_path not in paths:
            continue
        work = base / job_path
        home = work / "dagster_home"
        home.mkdir(parents=True)
        if job_path == "pg_to_bq_job_pg":
            # deploy/dagster.yaml's storage, in a fresh database of the same server.
            storage_db = f"dagster_{tag}_{rep}"
            drop_database(database_url(url, "postgres"), storage_db)
            create_database(database_url(url, "postgres"), storage_db)
            storage_url = database_url(url, storage_db).replace("postgresql://",
                                                                "postgresql+psycopg2://", 1)
            (home / "dagster.yaml").write_text(
                "storage:\n  custom:\n    module: pg_to_bq.orchestration.pooled_storage\n"
                "    class: PooledPostgresStorage\n"
                f"    config:\n      postgres_url: {json.dumps(storage_url)}\n")
        env = pg_to_bq_env(url, work, home)
        prepared = subprocess.run([*cli, "discover"], env=env, capture_output=True, text=True,
                                  cwd=ROOT)
        if prepared.returncode != 0:
            print(f"  {job_path}: the untimed `pg-to-bq discover` failed (exit "
                  f"{prepared.returncode}):\n{prepared.stderr[-2000:]}", file=sys.stderr)
        run(job_path, [str(BIN / "dagster"), "job", "execute", "-m",
                       "pg_to_bq.definitions", "-j", "mirror_all_tables"], env, work)
        if job_path == "pg_to_bq_job_pg":
            drop_database(database_url(url, "postgres"), storage_db)
    for backend in ("connectorx", "pyarrow"):
        if f"dlt_{backend}" in paths:
            work = base / f"dlt_{backend}"
            work.mkdir(parents=True)
            spec = {"url": url, "backend": backend, "schemas": ["public", SECOND_SCHEMA],
                    "work_dir": str(work)}
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG_TO_BQ_")}
            run(f"dlt_{backend}", [sys.executable, __file__, "_dlt", json.dumps(spec)], env, work)
    if not args.keep_work:
        shutil.rmtree(base, ignore_errors=True)
    return results


def report(m: Measurement, log_base: Path) -> None:
    loaded = f"{m.tables:,} tables, {m.rows:,} rows" if m.tables is not None else "-"
    pg = f", PostgreSQL CPU {m.pg_cpu_s:.1f} s" if m.pg_cpu_s is not None else ""
    print(f"  {m.path:20s} {m.wall_s:8.2f} s  CPU {m.cpu_s:7.1f} s{pg}  peak RSS "
          f"{m.peak_rss_mb:6.0f} MB  {loaded}  {m.status}", flush=True)
    if m.exit_code != 0:
        tail = "\n".join(Path(f"{log_base}.err").read_text(errors="replace").splitlines()[-15:])
        print(f"    {m.path} {m.status}; log {log_base}.out/.err; stderr ends:\n{tail}",
              file=sys.stderr, flush=True)
    for problem in m.problems:
        print(f"    {m.path}: {problem}", file=sys.stderr, flush=True)


def dlt_worker(spec: dict) -> None:
    """The dlt paths' process: `sql_database` per schema, one pipeline, one `run`."""
    import dlt
    from dlt.sources.sql_database import sql_database

    work = Path(spec["work_dir"])
    pipeline = dlt.pipeline(
        pipeline_name=f"many_tables_{spec['backend']}",
        destination=dlt.destinations.duckdb(credentials=str(work / "mirror.duckdb")),
        dataset_name=DATASET, pipelines_dir=str(work / "pipelines"))
    sources = [sql_database(credentials=spec["url"], schema=schema, backend=spec["backend"])
               for schema in spec["schemas"]]
    info = pipeline.run(sources, write_disposition="replace")
    info.raise_on_failed_jobs()
    print(info, flush=True)


# ---------------------------------------------------------------------------------------------
# Summary and output


def summarize(runs: list[Measurement], path: str) -> dict | None:
    mine = [m for m in runs if m.path == path]
    if not mine:
        return None
    walls = sorted(m.wall_s for m in mine)
    pg = [m.pg_cpu_s for m in mine if m.pg_cpu_s is not None]
    statuses = sorted({m.status for m in mine})
    return {"runs": len(mine), "wall_s": statistics.median(walls), "min_s": walls[0],
            "max_s": walls[-1], "cpu_s": statistics.median(m.cpu_s for m in mine),
            "pg_cpu_s": statistics.median(pg) if pg else None,
            "peak_rss_mb": max(m.peak_rss_mb for m in mine),
            "tables": mine[-1].tables, "rows": mine[-1].rows,
            "status": ", ".join(statuses), "ok": statuses == ["ok"]}


def render_shape(shape: dict, runs: list[Measurement], paths: list[str]) -> list[str]:
    names = table_names(shape["tables"])
    second = sum(schema == SECOND_SCHEMA for schema, _ in names)
    camel = sum(name[0].isupper() for _, name in names)
    spaces = sum(" " in name for _, name in names)
    lines = [f"### {describe_groups(shape['groups'])}",
             "",
             f"{shape['tables']:,} tables ({shape['tables'] - second:,} in `public`, {second:,} in "
             f"`{SECOND_SCHEMA}`; {camel:,} with CamelCase and {spaces:,} with spaced names), "
             f"{shape['rows']:,} rows, "
             f"{shape['total_bytes'] / 2**20:.0f} MB on disk (database `{shape['database']}`).",
             "",
             "| path | what runs | tables | rows | wall (s), median (min–max) | "
             "path ÷ pg_to_bq_cli (wall) | pg_to_bq_cli ÷ path (wall) | CPU (s) | "
             "PostgreSQL CPU (s) | peak RSS (MB) | status |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ours = summarize(runs, "pg_to_bq_cli")
    for path in paths:
        s = summarize(runs, path)
        if s is None:
            continue
        spread = f" ({s['min_s']:.2f}–{s['max_s']:.2f})" if s["runs"] > 1 else ""
        comparable = ours and s["ok"]  # a failed run's time says nothing about the path
        slower = f"{s['wall_s'] / ours['wall_s']:.2f}×" if comparable else "-"
        faster = f"{ours['wall_s'] / s['wall_s']:.2f}×" if comparable else "-"
        tables = f"{s['tables']:,}" if s["tables"] is not None else "-"
        rows = f"{s['rows']:,}" if s["rows"] is not None else "-"
        pg = f"{s['pg_cpu_s']:.1f}" if s["pg_cpu_s"] is not None else "-"
        lines.append(f"| `{path}` | {LABELS[path]} | {tables} | {rows} | {s['wall_s']:.2f}{spread} "
                     f"| {slower} | {faster} | {s['cpu_s']:.1f} | {pg} | {s['peak_rss_mb']:.0f} | "
                     f"{s['status']} |")
    return lines + [""]


NOTES = """\
Every path is a fresh process with its own DuckDB file and work dir; within a repetition the
paths run one after the other in the order shown. *wall* is the whole process, from the
interpreter's start to its exit (imports included). *CPU* is the user + system CPU from
`wait4`: the process and every descendant it waited for (Dagster's step processes, if any).
*PostgreSQL CPU* is the CPU of the server's backends that ended during the path (the
postmaster's reaped children; autovacuum workers too), `-` when the server is not local.
*peak RSS* is `ru_maxrss` from `wait4`: for a process tree that is the largest single
process's peak, not the sum. *tables* and *rows* are counted in the path's DuckDB file
afterwards (the bookkeeping tables `_dlt_*` and `_pg_to_bq_state` left out) and must equal
the source's; `MISMATCH` says they did not. The ratios (none for a row that is not `ok`)
divide medians: *path ÷ pg_to_bq_cli* above 1 means the path took longer than `pg-to-bq sync`.

- `pg_to_bq_discover`, `pg_to_bq_cli`, `pg_to_bq_cli_resync` share one work dir and DuckDB
  file, with `PG_TO_BQ_SOURCE_URL`, `PG_TO_BQ_DESTINATION=duckdb:///…/mirror.duckdb`,
  `PG_TO_BQ_DATASET=many_tables` and `PG_TO_BQ_WORK_DIR` set (no `DAGSTER_HOME`, nothing
  else): `pg-to-bq discover`, then `pg-to-bq sync`, then `pg-to-bq sync` again.
- `pg_to_bq_job`: the same settings in a work dir of its own plus a fresh `DAGSTER_HOME`;
  an untimed `pg-to-bq discover`, then
  `dagster job execute -m pg_to_bq.definitions -j mirror_all_tables` (pg_to_bq's default
  executor for DuckDB), Dagster's default storage (SQLite files in `DAGSTER_HOME`).
- `pg_to_bq_job_pg`: the same job with a `dagster.yaml` putting Dagster's storage in
  PostgreSQL with `deploy/dagster.yaml`'s storage class (`PooledPostgresStorage`), as in
  production (a fresh database on the same server, dropped afterwards).
- `dlt_*`: `dlt.pipeline(destination=dlt.destinations.duckdb(file), dataset_name=...)` and
  `pipeline.run([sql_database(credentials=url, schema="public", backend=...),
  sql_database(..., schema="billing", ...)], write_disposition="replace")`: dlt's
  defaults otherwise (replace, since dlt appends by default).
- Every path inherits the shell's environment but `PG_TO_BQ_*` and `DAGSTER_HOME`; dlt
  settings in it (`EXTRACT__…`, `LOAD__…`, …) are shown in the command above.
"""


def render(command: str, info: dict, shapes: list[dict], runs: dict, paths: list[str],
           args: argparse.Namespace) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["load_average_at_start"])
    lines = ["# pg_to_bq benchmark: many tables", "",
             f"Command: `{command}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, "
             f"Linux {info['kernel']}; load average at start {load} "
             "(the machine is shared: timings are noisy, compare within a run).", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".", "",
             f"Source: PostgreSQL {shapes[0]['server_version'] if shapes else '?'} on loopback "
             f"(max_connections {shapes[0]['max_connections'] if shapes else '?'}); "
             "every table has 7 columns (`integer` primary key, `text`, `numeric(12,2)`, "
             "`boolean`, `created_at` and `updated_at timestamptz`, `jsonb`). Destination: DuckDB. "
             f"{args.repeat} repetition(s) per path.", ""]
    for shape in shapes:
        lines += render_shape(shape, runs[shape["database"]], paths)
    lines.append(NOTES)
    return "\n".join(lines)


def machine_info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import run  # benchmarks/run.py: CPU model, cores, memory, kernel, load average

    info = run.machine_info()
    versions = {"python": info["versions"]["python"]}
    for package in ("dlt", "dagster", "duckdb", "connectorx", "pyarrow", "sqlalchemy",
                    "psycopg", "adbc-driver-postgresql"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "-"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pg_to_bq"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    if commit:
        versions["pg_to_bq"] = commit + (" + uncommitted changes" if dirty else "")
    info["versions"] = versions
    return info


def dlt_settings() -> dict[str, str]:
    """dlt's performance settings in the environment (`EXTRACT__NEXT_ITEM_MODE=fifo`, ...):
    every path inherits the environment, so they belong in the command as recorded."""
    return {k: v for k, v in sorted(os.environ.items())
            if "__" in k and k.split("__")[0] in DLT_SECTIONS}


def parse_shapes(text: str) -> list[list[tuple[int, int]]]:
    """`100x1000,1000x1000+2x1000000` -> [[(100, 1000)], [(1000, 1000), (2, 1000000)]]."""
    shapes = []
    for item in text.split(","):
        groups = []
        for group in item.strip().lower().split("+"):
            tables, _, rows = group.partition("x")
            groups.append((int(tables), int(rows)))
            if groups[-1][0] < 1 or groups[-1][1] < 1:
                raise ValueError(item)
        shapes.append(groups)
    return shapes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_dlt"]:  # a dlt path's own process
        dlt_worker(json.loads(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="100x1000,1000x1000",
                        help="comma-separated TABLESxROWS (rows per table); groups of "
                             "several sizes joined by + (1000x1000+2x1000000)")
    parser.add_argument("--paths", default=",".join(ALL_PATHS),
                        help=f"comma-separated subset of {','.join(ALL_PATHS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per path (median reported)")
    parser.add_argument("--timeout-s", type=float, default=3600,
                        help="a path still running after this is killed and reported timed out")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/pg_to_bq_many_tables"),
                        help="server data, work dirs, DuckDB files and each path's logs")
    parser.add_argument("--pg-url", help="use this PostgreSQL instead of an embedded one (the "
                                         "user must be able to create databases)")
    parser.add_argument("--keep-db", action="store_true",
                        help="keep the databases (reused by the next run with the same shape) "
                             "and leave the embedded server's data, stopped")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep each path's work dir and DuckDB file")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "many-tables.md")
    args = parser.parse_args(argv)
    try:
        shapes_wanted = parse_shapes(args.shapes)
    except ValueError:
        parser.error(f"--shapes {args.shapes!r}: expected e.g. 100x1000,1000x1000+2x1000000")
    import run  # benchmarks/run.py: what the benchmarks share

    wanted = run.chosen_paths(parser, args.paths, ALL_PATHS)
    paths = [p for p in ALL_PATHS if p in wanted]
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in dlt_settings().items()),
                        "python benchmarks/many_tables.py", shlex.join(argv)]).strip()

    info = machine_info()
    shapes: list[dict] = []
    runs: dict[str, list[Measurement]] = {}
    with run.postgres(args, info) as admin_url:
        for groups in shapes_wanted:
            print(f"{describe_groups(groups)}: building (reused with --keep-db) ...",
                  flush=True)
            shape = build_database(admin_url, groups, reuse=args.keep_db,
                                   log=lambda m: print(m, flush=True))
            shapes.append(shape)
            runs[shape["database"]] = []
            pg_cpu = PostgresCpu(admin_url, shape["database"])
            try:
                for rep in range(args.repeat):
                    runs[shape["database"]] += measure_shape(shape, paths, args, pg_cpu, rep)
            finally:
                pg_cpu.close()
            if not args.keep_db:
                drop_database(admin_url, shape["database"])
            print("\n".join(render_shape(shape, runs[shape["database"]], paths)), flush=True)
    run.write_results(args.out, render(command, info, shapes, runs, paths, args))
    failed = [m for ms in runs.values() for m in ms if m.status != "ok"]
    for m in failed:
        print(f"{m.path}: {m.status}" + (f": {'; '.join(m.problems)}" if m.problems else ""),
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
