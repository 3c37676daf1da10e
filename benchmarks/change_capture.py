"""Change capture against the cursor and a full reload, after a night of ~1% changes.

    .venv/bin/python benchmarks/change_capture.py --rows 1000000 --tables 1000

Two shapes in one embedded PostgreSQL 18 with `wal_level=logical`: one merged table
(`bench12`: primary key, `updated_at`, 12 columns, `--rows` rows) and `--tables` small
tables of 1,000 rows (those of `benchmarks/many_tables.py`: odd names, two schemas). Each
path loads its shape once (untimed); then the application's night changes ~1% of the rows
in ways a cursor cannot see — a third updates that leave `updated_at` alone, a third
deletes, a third inserts — and the path's next run is timed, each run a fresh process as a
user runs it:

* `cursor`: `pg-to-bq sync`, change capture off (incremental by cursor);
* `full reload`: `pg-to-bq sync --full-refresh`;
* `dlt connectorx` (big table): dlt's `sql_table(backend="connectorx")`, replace;
* `cdc`: `pg-to-bq sync` with `PG_TO_BQ_CDC=true`; then `cdc, nothing changed` again;
* (big table) one `UPDATE` of every row, applied by `cdc`, beside `pg_recvlogical`
  (pgoutput, to /dev/null) reading the same changes: the server's rate, the physical limit.

After each timed run the copy is checked against PostgreSQL on every row the night touched
(values left stale, deleted rows left behind, inserted rows missing) and on row counts.
Wall seconds, CPU seconds of the process tree, PostgreSQL's CPU seconds, peak RSS; ratios to
the full reload. Markdown to stdout and to --out (benchmarks/results/change-capture.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks import many_tables  # noqa: E402
from benchmarks.dataset import TABLE, build  # noqa: E402

BIN = Path(sys.executable).parent
DATASET = "bench"


@dataclass
class Run:
    shape: str
    path: str
    seconds: float
    cpu_s: float
    pg_cpu_s: float | None
    peak_rss_mb: float
    line: str = ""
    found: dict = field(default_factory=dict)


def run(args: list[str], env: dict[str, str], pg: many_tables.PostgresCpu | None = None
        ) -> tuple[float, float, float | None, float, str]:
    """A whole process: wall s, CPU s of its tree, PostgreSQL's CPU s, peak RSS MB, output."""
    pg_before = pg.read() if pg else None
    started = time.monotonic()
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT)
    assert process.stdout is not None
    output = process.stdout.read()
    # Reaped here, not by Popen: wait4 reports the process's and its reaped children's
    # resources (peak RSS: the largest of them).
    _, raw_status, usage = os.wait4(process.pid, 0)
    process.returncode = status = os.waitstatus_to_exitcode(raw_status)
    seconds = time.monotonic() - started
    pg_after = pg.read() if pg else None
    if status != 0:
        raise RuntimeError(f"{' '.join(args)} exited {status}:\n{output[-3000:]}")
    pg_cpu = pg_after - pg_before if pg_after is not None and pg_before is not None else None
    return (seconds, usage.ru_utime + usage.ru_stime, pg_cpu, usage.ru_maxrss / 1024, output)


@dataclass
class Shape:
    """One database shape: its tables, the night applied to them, and the check."""

    name: str
    url: str
    tables: list[tuple[str, str]]
    rows: int  # rows per table
    round: int = 0
    touched: dict = field(default_factory=dict)

    def night(self, share: float) -> None:
        """~`share` of every table's rows changed: updates (cursor left alone), deletes,
        inserts, a third each; what was touched is kept for the check."""
        self.round += 1
        per_kind = max(1, int(self.rows * share / 3))
        self.touched = {}
        statements = []
        with psycopg.connect(self.url, autocommit=True) as conn:
            for schema, table in self.tables:
                # Rows of this round only, spread over the table.
                step = max(1, self.rows // (per_kind * 2 + 1) // 4)
                base = 1 + self.round * step * (2 * per_kind + 1) % max(1, self.rows // 2)
                updated = [base + 2 * i * step for i in range(per_kind)]
                deleted = [base + (2 * i + 1) * step for i in range(per_kind)]
                inserted = [10_000_000 * self.round + i for i in range(per_kind)]
                self.touched[(schema, table)] = (updated, deleted, inserted)
                name = sql.Identifier(schema, table).as_string(conn)
                statements.append(
                    f"UPDATE {name} SET name = 'changed {self.round} ' || id "
                    f"WHERE id = ANY('{{{','.join(map(str, updated))}}}');"
                    f"DELETE FROM {name} WHERE id = ANY('{{{','.join(map(str, deleted))}}}');"
                    f"INSERT INTO {name} SELECT id + {inserted[0] - 1}, 'inserted', amount, "
                    f"active, created_at, now(), attributes FROM {name} WHERE id BETWEEN "
                    f"{updated[0]} AND {updated[0] + per_kind - 1} "
                    f"AND id + {inserted[0] - 1} <= {inserted[-1]};"
                    if self.name != "one big table" else
                    f"UPDATE {name} SET name = 'changed {self.round} ' || id "
                    f"WHERE id = ANY('{{{','.join(map(str, updated))}}}');"
                    f"DELETE FROM {name} WHERE id = ANY('{{{','.join(map(str, deleted))}}}');"
                    f"INSERT INTO {name} SELECT id + {inserted[0] - 1}, quantity, 'inserted', "
                    f"email, note, amount, score, active, created_at, now(), payload, ref "
                    f"FROM {name} WHERE id BETWEEN {updated[0]} AND {updated[0] + per_kind - 1} "
                    f"AND id + {inserted[0] - 1} <= {inserted[-1]};")
            for start in range(0, len(statements), 50):
                conn.execute("".join(statements[start:start + 50]))

    def check(self, duck_path: Path, dataset: str = DATASET) -> dict:
        """Against PostgreSQL, on the rows the last night touched, and row counts."""
        found = {"stale": 0, "deleted_left": 0, "inserted_missing": 0, "row_difference": 0}
        with psycopg.connect(self.url) as conn, \
                duckdb.connect(str(duck_path), read_only=True) as duck:
            for (schema, table), (updated, deleted, inserted) in self.touched.items():
                name = sql.Identifier(schema, table).as_string(conn)
                source = dict(conn.execute(f"SELECT id, name FROM {name} WHERE id = ANY(%s)",
                                           (updated,)).fetchall())
                source_rows = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
                copy_table = f'"{dataset}"."{destination_name(schema, table)}"'
                copy = dict(duck.execute(f"SELECT id, name FROM {copy_table} WHERE id IN "
                                         f"({', '.join(map(str, updated))})").fetchall())
                found["stale"] += sum(1 for k, v in source.items() if copy.get(k) != v)
                found["deleted_left"] += duck.execute(
                    f"SELECT count(*) FROM {copy_table} WHERE id IN "
                    f"({', '.join(map(str, deleted))})").fetchone()[0]
                found["inserted_missing"] += conn.execute(
                    f"SELECT count(*) FROM {name} WHERE id = ANY(%s)", (inserted,)
                ).fetchone()[0] - duck.execute(
                    f"SELECT count(*) FROM {copy_table} WHERE id IN "
                    f"({', '.join(map(str, inserted))})").fetchone()[0]
                found["row_difference"] += duck.execute(
                    f"SELECT count(*) FROM {copy_table}").fetchone()[0] - source_rows
        return found


def destination_name(schema: str, table: str) -> str:
    """The destination table pg_to_bq gives `schema.table` (its naming rules)."""
    from pg_to_bq.planning.catalog import Table
    from pg_to_bq.planning.tables import plan_table

    return plan_table(Table(schema=schema, name=table), "duckdb").destination_table


def measure(shape: Shape, scratch: Path, admin_url: str, database: str, big: bool,
            log) -> list[Run]:
    runs: list[Run] = []
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PG_TO_BQ_")}
    pg = many_tables.PostgresCpu(admin_url, database)

    def env_for(name: str, **extra: str) -> dict[str, str]:
        return {**base_env, "PG_TO_BQ_SOURCE_URL": shape.url, "PG_TO_BQ_DATASET": DATASET,
                "PG_TO_BQ_WORK_DIR": str(scratch / name),
                "PG_TO_BQ_DESTINATION": f"duckdb:///{scratch / name}.duckdb",
                **({"PG_TO_BQ_INCLUDE": TABLE} if big else {}),
                **{f"PG_TO_BQ_{k.upper()}": v for k, v in extra.items()}}

    sync = [str(BIN / "pg-to-bq"), "sync"]

    def timed(label: str, command: list[str], env: dict[str, str], duck: Path | None) -> Run:
        seconds, cpu, pg_cpu, peak, output = run(command, env, pg)
        found = shape.check(duck) if duck is not None else {}
        lines = [ln for ln in output.splitlines() if ln.startswith("[")]
        summary = [ln for ln in output.splitlines() if " loaded, " in ln and " failed" in ln]
        line = lines[0].split(": ", 1)[-1] if len(lines) == 1 else \
            summary[0] if summary else ""
        result = Run(shape.name, label, seconds, cpu, pg_cpu, peak, line, found)
        runs.append(result)
        log(f"  {label}: {seconds:.2f} s wall, {cpu:.1f} CPU-s, {peak:.0f} MB, {found}")
        return result

    cursor = env_for(f"{shape.name}-cursor")
    run(sync, cursor)
    shape.night(0.01)
    timed("cursor (`pg-to-bq sync`, change capture off)", sync, cursor,
          scratch / f"{shape.name}-cursor.duckdb")
    shape.night(0.01)
    timed("full reload (`pg-to-bq sync --full-refresh`)", [*sync, "--full-refresh"], cursor,
          scratch / f"{shape.name}-cursor.duckdb")
    if big:
        dlt_dir = scratch / "dlt"
        dlt_dir.mkdir()
        timed("dlt connectorx (`sql_table`, replace)",
              [sys.executable, str(HERE / "paths.py"), "dlt_connectorx",
               json.dumps({"url": shape.url, "table": TABLE, "work_dir": str(dlt_dir)})],
              base_env, None)
    cdc = env_for(f"{shape.name}-cdc", cdc="true", cdc_cron="off")
    run(sync, cdc)
    shape.night(0.01)
    timed("cdc (`pg-to-bq sync`, PG_TO_BQ_CDC=true)", sync, cdc,
          scratch / f"{shape.name}-cdc.duckdb")
    timed("cdc, nothing changed since", sync, cdc, scratch / f"{shape.name}-cdc.duckdb")
    if big:
        runs.extend(whole_table_update(shape, scratch, cdc, pg, timed, log))
    run([str(BIN / "pg-to-bq"), "cdc", "drop"], cdc)
    pg.close()
    return runs


def whole_table_update(shape: Shape, scratch: Path, env: dict[str, str], pg, timed, log
                       ) -> list[Run]:
    """One UPDATE of every row: `cdc` applies it; `pg_recvlogical` reads the same changes
    from a slot of its own (created before the UPDATE) to /dev/null."""
    from pg_to_bq.postgres.cdc.messages import format_lsn
    from pg_to_bq.postgres.cdc.slot import create_slot
    from pg_to_bq.postgres.cdc.stream import end_point
    from pg_to_bq.postgres.embedded import binaries_dir

    with psycopg.connect(shape.url, autocommit=True) as conn:
        create_slot(conn, "bench_recvlogical")
        conn.execute(f"UPDATE {TABLE} SET quantity = quantity + 1")
        lsn, block, segment = conn.execute(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint, "
            "current_setting('wal_block_size')::bigint, "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
        ).fetchone()
        conn.execute("CHECKPOINT")
        publication = conn.execute("SELECT pubname FROM pg_publication").fetchone()[0]
    shape.touched = {}
    result = timed("cdc, after one UPDATE of every row", [str(BIN / "pg-to-bq"), "sync"], env,
                   None)
    with psycopg.connect(shape.url) as conn, \
            duckdb.connect(str(scratch / f"{shape.name}-cdc.duckdb"), read_only=True) as duck:
        source = conn.execute(f"SELECT count(*), sum(quantity) FROM {TABLE}").fetchone()
        copy = duck.execute(f"SELECT count(*), sum(quantity) FROM {DATASET}.{TABLE}").fetchone()
    result.found = {"rows_and_sum_match": tuple(source) == tuple(copy)}
    params = psycopg.conninfo.conninfo_to_dict(shape.url)
    seconds, cpu, pg_cpu, peak, _ = run([
        str(binaries_dir() / "pg_recvlogical"), "-h", str(params.get("host", "127.0.0.1")),
        "-p", str(params.get("port", "5432")), "-U", str(params.get("user", "postgres")),
        "-d", str(params.get("dbname", "postgres")), "--slot", "bench_recvlogical", "--start",
        "-o", "proto_version=1", "-o", f"publication_names={publication}", "-f", "/dev/null",
        f"--endpos={format_lsn(end_point(lsn, block, segment))}", "--no-loop"],
        {k: v for k, v in os.environ.items() if not k.startswith("PG")}, pg)
    with psycopg.connect(shape.url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot('bench_recvlogical')")
    log(f"  pg_recvlogical: {seconds:.2f} s")
    return [Run(shape.name, "`pg_recvlogical` reading the same UPDATE (pgoutput → /dev/null)",
                seconds, cpu, pg_cpu, peak, "the server's rate: the physical limit")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "change-capture.md")
    args = parser.parse_args()

    from pg_to_bq.postgres.embedded import EmbeddedPostgres

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="pg_to_bq_cdc_bench_"))
    server = EmbeddedPostgres(scratch / "pg", settings={
        "wal_level": "logical", "max_replication_slots": "8", "max_wal_senders": "8"}).start()
    runs: list[Run] = []
    facts: dict = {}
    try:
        admin = server.url("postgres")
        if args.rows:
            log(f"one big table: {args.rows:,} rows")
            facts["big"] = build(admin, args.rows, 1, log=log)
            big = Shape("one big table", admin, [("public", TABLE)], args.rows)
            runs += measure(big, scratch, admin, "postgres", True, log)
        if args.tables:
            log(f"{args.tables:,} small tables")
            built = many_tables.build_database(admin, [(args.tables, 1000)], reuse=False,
                                                log=log)
            facts["small"] = built
            small = Shape(f"{args.tables} small tables", built["url"],
                          many_tables.table_names(args.tables), 1000)
            runs += measure(small, scratch, admin, built["database"], False, log)
    finally:
        with contextlib.suppress(Exception):
            server.destroy()
    text = render(args, facts, runs)
    print(text)
    args.out.write_text(text, encoding="utf-8")
    lost = [r for r in runs if r.path.startswith("cdc") and any(
        v not in (0, True) for v in r.found.values())]
    return 1 if lost else 0


def render(args: argparse.Namespace, facts: dict, runs: list[Run]) -> str:
    version = next(iter(facts.values()), {}).get("server_version", "?")
    lines = [
        "# Change capture against the cursor and a full reload",
        "",
        f"    .venv/bin/python benchmarks/change_capture.py --rows {args.rows} "
        f"--tables {args.tables}",
        "",
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {version} (embedded, wal_level=logical, on the same machine), DuckDB "
        "files. Each night changes ~1% of every table's rows (a third updates that leave "
        "`updated_at` alone, a third deletes, a third inserts); each timed run is a whole "
        "process. Stale, left and missing count the night's rows the copy gets wrong; "
        "`rows ±` is the copy's row count minus PostgreSQL's.",
        "",
    ]
    for shape in dict.fromkeys(r.shape for r in runs):
        rows = [r for r in runs if r.shape == shape]
        full = next((r for r in rows if r.path.startswith("full reload")), None)
        lines += [f"## {shape}", "",
                  "| path | wall s | × full reload | CPU s | PostgreSQL CPU s | peak RSS MB | "
                  "stale | deleted left | inserted missing | rows ± | the run says |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            ratio = f"{r.seconds / full.seconds:.2f}" if full else "-"
            pg_cpu = f"{r.pg_cpu_s:.1f}" if r.pg_cpu_s is not None else "-"
            f = r.found
            check = (f"{f.get('stale', '-')} | {f.get('deleted_left', '-')} | "
                     f"{f.get('inserted_missing', '-')} | {f.get('row_difference', '-')}"
                     if "stale" in f else
                     ("exact (count and sum) | | | " if f.get("rows_and_sum_match") else
                      ("DIFFERS | | | " if f else "- | - | - | -")))
            lines.append(f"| {r.path} | {r.seconds:.2f} | {ratio} | {r.cpu_s:.1f} | {pg_cpu} | "
                         f"{r.peak_rss_mb:.0f} | {check} | {r.line.replace('|', '/') or '-'} |")
        lines.append("")
    lines += ["Peak RSS: the largest resident set among the run's process and the processes it "
              "waited for (wait4). PostgreSQL CPU: the server's backends (and walsender) that "
              "served the run, from the postmaster's reaped children.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
