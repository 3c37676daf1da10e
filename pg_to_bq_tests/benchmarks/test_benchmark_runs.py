"""Tier 2: the side-by-side benchmark runs end to end — real PostgreSQL, real DuckDB files.

Timings are not asserted (they belong to `benchmarks/run.py` itself, run by hand); this
checks that every path the README's benchmark command can run still runs, loads exactly the
source's rows (run.py counts them in each path's DuckDB file and fails otherwise) and lands
in the results table, so a change cannot quietly break the command the README quotes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATHS = ("copy", "pg_to_bq", "pg_to_bq_truncate", "pg_to_bq_1stream", "pg_to_bq_duckdb1gb",
         "dlt_connectorx", "dlt_pyarrow", "dlt_sqlalchemy", "old")


def test_every_path_incremental_and_definitions_run(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--rows", "3000",
         "--old-rows", "500", "--paths", ",".join(PATHS), "--tables", "20", "--pg-url", pg_url,
         "--data-dir", str(tmp_path / "data"), "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = out.read_text(encoding="utf-8")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in results.splitlines()
            if line.startswith("| ")}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from run import LABELS
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for path in PATHS:
        line = rows[LABELS[path]]
        expected = "500 (slice)" if path in ("dlt_sqlalchemy", "old") else "3,000"
        assert f" | {expected} | " in line, line
    assert " | 1.00× | " in rows[LABELS["pg_to_bq"]]
    # a 3,000-row table is below the parallel-read threshold: one stream, and the table says so
    assert "pg_to_bq read the table over 1 COPY stream(s)" in results
    # The incremental run over the unchanged table loaded nothing; the definitions loaded
    # from the snapshot without a connection, and live with one catalog query.
    # (3,000 rows: a small table, read whole when it changes, found unchanged; the README's
    # 1M-row table is above PG_TO_BQ_READ_WHOLE_BYTES, merged by cursor)
    assert "| incremental, nothing changed (same work dir) | full |" in results
    assert "no (unchanged)" in results
    snapshot = rows["snapshot (synthetic, 20 tables)"].split(" | ")
    assert snapshot[-2:] == ["0", "0 |"], snapshot
    assert "1 catalog query" in results


def test_the_nightly_executor_benchmark_runs(pg_url: str) -> None:
    """`benchmarks/nightly_steps.py` (the nightly job by executor): each executor loads every
    table (the script counts them in DuckDB and fails otherwise) and gets its row in the table
    it prints."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "nightly_steps.py"), "--pg-url", pg_url,
         "--tables", "2"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for executor in ("in_process", "multiprocess", "spawn"):
        assert f"| {executor} | " in proc.stdout, proc.stdout
