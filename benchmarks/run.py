"""pg_to_bq against the alternatives, each path in its own process, in one run.

    .venv/bin/python benchmarks/run.py --rows 1000000

Starts an embedded PostgreSQL 18 (or uses --pg-url), builds the 12-column benchmark table
(benchmarks/dataset.py), then runs every path in a fresh interpreter (benchmarks/paths.py)
against the same table and the DuckDB destination, one DuckDB file per path. For each it
reports rows/s, pg_to_bq's speed relative to it, and the process's peak RSS (ru_maxrss
from wait4: the whole process, imports and DuckDB included). Then the incremental run
over the unchanged table (benchmarks/incremental.py) and the 1,000-table definitions
measurement (benchmarks/definitions_scale.py). Results go to stdout and, as markdown,
to --out (benchmarks/results/latest.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402

ALL_PATHS = ("copy", "pg_to_bq", "pg_to_bq_truncate", "pg_to_bq_1stream", "pg_to_bq_duckdb1gb",
             "dlt_connectorx", "dlt_pyarrow", "dlt_sqlalchemy", "old")
DEFAULT_PATHS = ("copy", "pg_to_bq", "dlt_connectorx", "dlt_pyarrow", "dlt_sqlalchemy", "old")
SLOW_PATHS = ("dlt_sqlalchemy", "old")  # read the slice table, rows/s scaled
LABELS = {
    "copy": "raw `COPY … TO STDOUT (FORMAT binary)`, discarded (ceiling)",
    "pg_to_bq": "**pg_to_bq** (`load_table`: ADBC COPY → Arrow → dlt parquet → DuckDB)",
    "pg_to_bq_truncate": "pg_to_bq, replace strategy `truncate-and-insert` (variant)",
    "pg_to_bq_1stream": "pg_to_bq, one COPY stream (variant)",
    "pg_to_bq_duckdb1gb": "pg_to_bq, DuckDB `memory_limit=1GB` (variant)",
    "dlt_connectorx": "dlt `sql_table(backend=\"connectorx\")`",
    "dlt_pyarrow": "dlt `sql_table(backend=\"pyarrow\")`",
    "dlt_sqlalchemy": "dlt `sql_table(backend=\"sqlalchemy\")` (dlt default)",
    "old": "old approach (SQLAlchemy rows → `pipeline.run`, seed Lambda)",
}


@dataclass
class Run:
    path: str
    rows: int
    seconds: float  # work time inside the process, after its imports
    process_s: float  # the whole process: interpreter start, imports, work, exit
    peak_rss_mb: float
    cpu_s: float = 0.0  # user + system CPU of the process (all its threads)
    detail: dict = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def run_path(name: str, args: dict, timeout: float | None = None) -> Run:
    """Run one path in a fresh interpreter; wall time and peak RSS of exactly that process."""
    cmd = [sys.executable, str(HERE / "paths.py"), name, json.dumps(args)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = None if timeout is None else started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline and time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read(), proc.stderr.read()
    result = next((json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")),
                  None)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"path {name} failed (exit {proc.returncode}):\n{err[-3000:]}")
    return Run(path=name, rows=int(result["rows"]), seconds=float(result["seconds"]),
               process_s=elapsed, peak_rss_mb=usage.ru_maxrss / 1024,
               cpu_s=usage.ru_utime + usage.ru_stime, detail=result)


def destination_rows(result: dict) -> int:
    import duckdb

    with duckdb.connect(result["duckdb"], read_only=True) as con:
        return con.execute(
            f'SELECT count(*) FROM "{result["dataset"]}"."{result["destination_table"]}"'
        ).fetchone()[0]


def warm_up(url: str, table: str) -> None:
    """Read the table once so every path starts from the same (cached) state."""
    run_path("copy", {"url": url, "table": table})


def machine_info() -> dict:
    import dlt
    import duckdb
    import pyarrow

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {"python": platform.python_version(), "dlt": dlt.__version__,
                "duckdb": duckdb.__version__, "pyarrow": pyarrow.__version__}
    for module in ("adbc_driver_postgresql", "connectorx", "sqlalchemy", "psycopg2"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # optional
            versions[module] = "-"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1),
            "kernel": platform.release(), "versions": versions,
            "load_average_at_start": os.getloadavg()}


def chosen_paths(parser: argparse.ArgumentParser, text: str, known: Sequence[str]) -> list[str]:
    """The comma-separated `--paths`, each one of `known` (else a usage error)."""
    paths = [p.strip() for p in text.split(",") if p.strip()]
    unknown = set(paths) - set(known)
    if unknown:
        parser.error(f"unknown path(s) {sorted(unknown)}; choose from {tuple(known)}")
    return paths


@contextmanager
def postgres(args: argparse.Namespace, info: dict) -> Iterator[str]:
    """Say what machine this is, then yield the URL of the server to measure against:
    `--pg-url`, or an embedded one in `DATA_DIR/pg`, stopped afterwards (its data kept with
    `--keep-db`, else destroyed)."""
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; "
          f"load average {info['load_average_at_start']}", flush=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if args.pg_url:
        yield args.pg_url
        return
    server = dataset.start_server(args.data_dir / "pg")
    try:
        yield server.url()
    finally:
        if args.keep_db:
            server.stop()
        else:
            server.destroy()


def write_results(out: Path, markdown: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown, encoding="utf-8")
    print(f"\nwritten to {out}\n")
    print(markdown)


def summarize(runs: list[Run]) -> dict[str, dict]:
    """Per path: median rows/s, min and max, median peak RSS."""
    table: dict[str, dict] = {}
    for name in ALL_PATHS:
        mine = [r for r in runs if r.path == name]
        if not mine:
            continue
        rates = sorted(r.rows_per_s for r in mine)
        table[name] = {
            "rows": mine[0].rows,
            "runs": len(mine),
            "seconds": statistics.median(r.seconds for r in mine),
            "process_s": statistics.median(r.process_s for r in mine),
            "rows_per_s": statistics.median(rates),
            "min_rows_per_s": rates[0],
            "max_rows_per_s": rates[-1],
            "peak_rss_mb": max(r.peak_rss_mb for r in mine),
            "cpu_s": statistics.median(r.cpu_s for r in mine),
        }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the table")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                        help=f"comma-separated subset of {','.join(ALL_PATHS)}")
    parser.add_argument("--old-rows", type=int, default=50_000,
                        help="rows of the slice read by the slow paths (old approach and dlt's "
                             "sqlalchemy backend); their rows/s is rate on the slice")
    parser.add_argument("--sqlalchemy-full", action="store_true",
                        help="run dlt's sqlalchemy backend on the whole table, not the slice")
    parser.add_argument("--repeat", type=int, default=1, help="runs per path (median reported)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/pg_to_bq_bench"),
                        help="server data, work dirs and DuckDB files")
    parser.add_argument("--pg-url", help="use this PostgreSQL instead of an embedded one")
    parser.add_argument("--keep-db", action="store_true",
                        help="keep the embedded server's data (the table is reused when it "
                             "has --rows rows) and leave it stopped")
    parser.add_argument("--tables", type=int, default=1000,
                        help="tables for the definitions-at-scale measurement (0 skips it)")
    parser.add_argument("--skip-incremental", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.md")
    args = parser.parse_args(argv)
    paths = chosen_paths(parser, args.paths, ALL_PATHS)
    command = "python benchmarks/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    info = machine_info()
    with postgres(args, info) as url:
        print(f"building {args.rows:,}-row table (reused when it already has them) ...", flush=True)
        data = dataset.build(url, args.rows, args.old_rows, log=lambda m: print(m, flush=True))
        print(f"table {data['table']}: {data['rows']:,} rows, "
              f"{data['total_bytes'] / 2**20:.0f} MB on disk (PostgreSQL {data['server_version']})",
              flush=True)
        warm_up(url, data["table"])
        runs = measure_paths(url, data, paths, args)
        summary = summarize(runs)
        incremental = None
        if not args.skip_incremental:
            import incremental as incremental_bench

            print("incremental: full replace, then an incremental run with nothing changed ...",
                  flush=True)
            incremental = incremental_bench.measure(url, data["table"],
                                                    args.data_dir / "work" / "incremental",
                                                    run_path, destination_rows,
                                                    repeat=max(3, args.repeat))
            print(incremental_bench.describe(incremental), flush=True)
        definitions = None
        if args.tables:
            import definitions_scale

            print(f"definitions at scale: {args.tables} tables ...", flush=True)
            definitions = definitions_scale.measure(url, args.tables,
                                                    args.data_dir / "work" / "definitions")
            print(definitions_scale.describe(definitions), flush=True)
    write_results(args.out, render(command, info, data, summary, runs, incremental,
                                   definitions, args))
    return 0


def measure_paths(url: str, data: dict, paths: list[str], args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for repeat in range(args.repeat):
        for name in paths:
            slow = name in SLOW_PATHS and not (name == "dlt_sqlalchemy" and args.sqlalchemy_full)
            table = data["slice_table"] if slow else data["table"]
            work = args.data_dir / "work" / f"{name}-{repeat}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            run = run_path(name, {"url": url, "table": table, "work_dir": str(work)})
            if "duckdb" in run.detail:
                loaded = destination_rows(run.detail)
                expected = data["slice_rows"] if slow else data["rows"]
                if loaded != expected or run.rows != expected:
                    raise RuntimeError(f"{name}: {loaded} rows in DuckDB, {run.rows} reported, "
                                       f"{expected} expected")
            shutil.rmtree(work, ignore_errors=True)
            print(f"  {name:18s} {run.rows:>10,} rows  {run.seconds:7.2f} s  "
                  f"{run.rows_per_s:>10,.0f} rows/s  peak RSS {run.peak_rss_mb:6.0f} MB  "
                  f"(process {run.process_s:.1f} s, CPU {run.cpu_s:.1f} s)", flush=True)
            runs.append(run)
    return runs


def render(command, info, data, summary, runs, incremental, definitions, args) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["load_average_at_start"])
    lines = ["# pg_to_bq benchmark results", "",
             f"Command: `{command}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, "
             f"Linux {info['kernel']}; load average at start {load} "
             "(the machine is shared: timings are noisy).", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".", "",
             f"Source: PostgreSQL {data['server_version']} on loopback, table `{data['table']}` "
             f"(12 columns: bigint, int, text ×3, numeric(12,2), float8, bool, timestamptz ×2, "
             f"jsonb, uuid), {data['rows']:,} rows, {data['total_bytes'] / 2**20:.0f} MB on disk. "
             f"Destination: DuckDB (a fresh file per path).", ""]
    if summary:
        ours = summary.get("pg_to_bq")
        lines += ["| path | rows | time (s) | rows/s (median, min–max) | pg_to_bq ÷ path | "
                  "peak RSS (MB) | process (s) | process CPU (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, s in summary.items():
            ratio = f"{ours['rows_per_s'] / s['rows_per_s']:.2f}×" if ours and s["rows_per_s"] else "-"
            scaled = " (slice)" if s["rows"] != data["rows"] else ""
            spread = (f" ({s['min_rows_per_s']:,.0f}–{s['max_rows_per_s']:,.0f})"
                      if s["runs"] > 1 else "")
            lines.append(f"| {LABELS[name]} | {s['rows']:,}{scaled} | {s['seconds']:.2f} | "
                         f"{s['rows_per_s']:,.0f}{spread} | {ratio} | {s['peak_rss_mb']:.0f} | "
                         f"{s['process_s']:.1f} | {s['cpu_s']:.1f} |")
        lines += ["",
                  f"{args.repeat} run(s) per path. *time* is measured inside the path's process "
                  "after its imports, from the first connection to the rows being in DuckDB; "
                  "*process* is the whole process (interpreter start, imports, exit). "
                  "*peak RSS* is the process's ru_maxrss; *process CPU* its user + system CPU "
                  "(all threads, DuckDB's included; PostgreSQL's own CPU is not counted). "
                  "Paths marked *slice* read the first "
                  f"{data['slice_rows']:,} rows (table `{data['slice_table']}`); their rows/s "
                  "is their rate on the slice."]
        streams = sorted({r.detail.get("streams") for r in runs if r.path == "pg_to_bq"} - {None})
        if streams:
            lines[-1] += (f" pg_to_bq read the table over {' or '.join(map(str, streams))} COPY "
                          "stream(s): its default for a table this size "
                          "(`PG_TO_BQ_PARALLEL_STREAMS`, `PG_TO_BQ_PARALLEL_MIN_BYTES`).")
        lines.append("")
    if incremental:
        import incremental as incremental_bench

        lines += incremental_bench.render(incremental)
    if definitions:
        import definitions_scale

        lines += definitions_scale.render(definitions)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
