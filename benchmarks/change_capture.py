"""Change capture against the cursor, a full reload and dlt, on the issue's night.

    .venv/bin/python benchmarks/change_capture.py --rows 1000000

A merged table (`bench12`: primary key, `updated_at`, 12 columns, `--rows` rows) in an
embedded PostgreSQL 18 with `wal_level=logical`. Each path loads it once (untimed), then the
application does what a cursor cannot see — `--changes` updates that leave `updated_at`
alone, as many deletes and as many inserts — and the path's next run is timed, each run a
fresh `pg-to-bq` (or dlt) process, as a user runs it:

* `cursor`: `pg-to-bq sync` with change capture off (the incremental read by cursor);
* `cursor + deletes`: then `pg-to-bq sync --apply-deletes` (the weekly delete pass);
* `full reload`: `pg-to-bq sync --full-refresh`;
* `dlt connectorx`: dlt's `sql_table(backend="connectorx")`, write_disposition=replace;
* `cdc`: `pg-to-bq sync` with `PG_TO_BQ_CDC=true` (the keys from the slot, those rows read);
* `cdc, nothing changed`: the same again.

After each timed run the destination is checked against the source on every row the night
touched: values left stale, deleted rows left behind, inserted rows missing, and the row
count. Wall seconds, peak RSS of the process tree, ratios to `cdc`. Markdown to stdout and to
--out (benchmarks/results/change-capture.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.dataset import TABLE, build  # noqa: E402

BIN = Path(sys.executable).parent
DATASET = "bench"


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a whole process; its wall seconds, the peak RSS (MB) of its tree, its output."""
    started = time.monotonic()
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT)
    assert process.stdout is not None
    output = process.stdout.read()
    # Reaped here, not by Popen: wait4 reports the largest RSS of the process and of the
    # children it waited for.
    _, raw_status, usage = os.wait4(process.pid, 0)
    process.returncode = status = os.waitstatus_to_exitcode(raw_status)
    seconds = time.monotonic() - started
    peak = usage.ru_maxrss / 1024
    if status != 0:
        raise RuntimeError(f"{' '.join(args)} exited {status}:\n{output[-3000:]}")
    return seconds, peak, output


def night(url: str, changes: int, round_: int) -> dict[str, list[int]]:
    """The application's night: updates that leave updated_at alone, deletes, inserts."""
    base = 1_000 + round_ * changes * 10
    updated = list(range(base, base + changes * 3, 3))
    deleted = list(range(base + 1, base + 1 + changes * 3, 3))
    inserted = list(range(50_000_000 + round_ * changes, 50_000_000 + (round_ + 1) * changes))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"UPDATE {TABLE} SET note = 'changed in round {round_}', amount = amount + 1 "
                     "WHERE id = ANY(%s)", (updated,))
        conn.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)", (deleted,))
        conn.execute(f"INSERT INTO {TABLE} SELECT id + %s, quantity, name, email, 'inserted', "
                     "amount, score, active, created_at, now(), payload, ref FROM "
                     f"{TABLE} WHERE id BETWEEN 1 AND %s", (inserted[0] - 1, changes))
    return {"updated": updated, "deleted": deleted, "inserted": inserted}


def exactness(url: str, path: Path, touched: dict[str, list[int]], table: str = TABLE
              ) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        source = dict(conn.execute(
            f"SELECT id, note || '|' || amount::text FROM {TABLE} WHERE id = ANY(%s)",
            (touched["updated"],)).fetchall())
        source_rows = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
    with duckdb.connect(str(path), read_only=True) as duck:
        ids = ", ".join(map(str, touched["updated"]))
        copy = dict(duck.execute(
            f"SELECT id, note || '|' || CAST(amount AS VARCHAR) FROM {DATASET}.{table} "
            f"WHERE id IN ({ids})").fetchall())
        left = duck.execute(f"SELECT count(*) FROM {DATASET}.{table} WHERE id IN "
                            f"({', '.join(map(str, touched['deleted']))})").fetchone()[0]
        present = duck.execute(f"SELECT count(*) FROM {DATASET}.{table} WHERE id IN "
                               f"({', '.join(map(str, touched['inserted']))})").fetchone()[0]
        rows = duck.execute(f"SELECT count(*) FROM {DATASET}.{table}").fetchone()[0]
    stale = sum(1 for key, value in source.items() if copy.get(key) != value)
    return {"stale": stale, "deleted_left": left,
            "inserted_missing": len(touched["inserted"]) - present,
            "row_difference": rows - source_rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "change-capture.md")
    args = parser.parse_args()

    from pg_to_bq.postgres.embedded import EmbeddedPostgres

    scratch = Path(tempfile.mkdtemp(prefix="pg_to_bq_cdc_bench_"))
    server = EmbeddedPostgres(scratch / "pg", settings={
        "wal_level": "logical", "max_replication_slots": "4", "max_wal_senders": "4"}).start()
    results: list[dict] = []
    try:
        url = server.url("postgres")
        facts = build(url, args.rows, 1, log=lambda line: print(line, file=sys.stderr))
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PG_TO_BQ_")}

        def env_for(name: str, **extra: str) -> dict[str, str]:
            return {**base_env, "PG_TO_BQ_SOURCE_URL": url, "PG_TO_BQ_DATASET": DATASET,
                    "PG_TO_BQ_INCLUDE": TABLE, "PG_TO_BQ_WORK_DIR": str(scratch / name),
                    "PG_TO_BQ_DESTINATION": f"duckdb:///{scratch / name}.duckdb",
                    **{f"PG_TO_BQ_{k.upper()}": v for k, v in extra.items()}}

        sync = [str(BIN / "pg-to-bq"), "sync"]
        round_ = 0

        def timed(label: str, command: list[str], env: dict[str, str], duck: Path,
                  touched: dict | None) -> None:
            seconds, peak, output = run(command, env)
            found = exactness(url, duck, touched) if touched else {}
            line = next((ln for ln in output.splitlines() if f"public.{TABLE}:" in ln), "")
            results.append({"path": label, "seconds": seconds, "peak_rss_mb": peak,
                             "line": line.split(": ", 1)[-1], **found})
            print(f"{label}: {seconds:.2f}s {found} {line}", file=sys.stderr)

        # The cursor: first load, the night, the next sync, then the delete pass.
        env = env_for("cursor")
        run(sync, env)
        touched = night(url, args.changes, round_ := round_ + 1)
        timed("cursor (`pg-to-bq sync`, change capture off)", sync, env,
              scratch / "cursor.duckdb", touched)
        timed("cursor + delete pass (`pg-to-bq sync --apply-deletes`)", [*sync, "--apply-deletes"],
              env, scratch / "cursor.duckdb", touched)
        # A full reload, and dlt's, after a night of their own.
        touched = night(url, args.changes, round_ := round_ + 1)
        timed("full reload (`pg-to-bq sync --full-refresh`)", [*sync, "--full-refresh"], env,
              scratch / "cursor.duckdb", touched)
        dlt_dir = scratch / "dlt"
        dlt_dir.mkdir()
        dlt_args = json.dumps({"url": url, "table": TABLE, "work_dir": str(dlt_dir)})
        timed("dlt connectorx (`sql_table`, replace)",
              [sys.executable, str(HERE / "paths.py"), "dlt_connectorx", dlt_args], base_env,
              dlt_dir / "dlt_connectorx.duckdb", None)
        with duckdb.connect(str(dlt_dir / "dlt_connectorx.duckdb"), read_only=True) as duck:
            # benchmarks/paths.py loads into its own dataset name
            from benchmarks.paths import DATASET as DLT_DATASET

            results[-1]["row_difference"] = duck.execute(
                f"SELECT count(*) FROM {DLT_DATASET}.{TABLE}").fetchone()[0] - _count(url)
        # Change capture: first load (creates the slot), the night, the next sync, again.
        env = env_for("cdc", cdc="true", cdc_cron="off")
        run(sync, env)
        touched = night(url, args.changes, round_ := round_ + 1)
        timed("cdc (`pg-to-bq sync`, PG_TO_BQ_CDC=true)", sync, env, scratch / "cdc.duckdb",
              touched)
        timed("cdc, nothing changed since", sync, env, scratch / "cdc.duckdb", touched)
        run([str(BIN / "pg-to-bq"), "cdc", "drop"], env)
    finally:
        server.destroy()
    text = render(args, facts, results)
    print(text)
    args.out.write_text(text, encoding="utf-8")
    return 0 if all(r.get("stale", 0) == 0 for r in results if r["path"].startswith("cdc")) \
        else 1


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


def render(args: argparse.Namespace, facts: dict, results: list[dict]) -> str:
    cdc = next(r for r in results if r["path"].startswith("cdc (")) if results else None
    lines = [
        "# Change capture against the cursor, a full reload and dlt",
        "",
        f"    .venv/bin/python benchmarks/change_capture.py --rows {args.rows} "
        f"--changes {args.changes}",
        "",
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {facts['server_version']} (embedded, wal_level=logical), DuckDB file. "
        f"Table `{TABLE}`: {facts['rows']:,} rows, 12 columns, "
        f"{facts['total_bytes'] / 1024**2:,.0f} MB. Each night: {args.changes} updates that "
        f"leave `updated_at` alone, {args.changes} deletes, {args.changes} inserts; each timed "
        "run a whole process.",
        "",
        "| path | seconds | × cdc | peak RSS MB | stale values | deleted rows left | "
        "inserted missing | rows vs source | the table's line |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ratio = f"{r['seconds'] / cdc['seconds']:.1f}" if cdc else "-"
        lines.append(
            f"| {r['path']} | {r['seconds']:.2f} | {ratio} | {r['peak_rss_mb']:.0f} | "
            f"{r.get('stale', '-')} | {r.get('deleted_left', '-')} | "
            f"{r.get('inserted_missing', '-')} | {r.get('row_difference', '-'):+} | "
            f"{r['line'] or '-'} |")
    lines += ["", "Peak RSS: the largest resident set of the run's process and the processes it "
              "waited for (wait4).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
