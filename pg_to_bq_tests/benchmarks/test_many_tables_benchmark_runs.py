"""Tier 2: the many-tables benchmark runs end to end — real PostgreSQL, real DuckDB files.

Timings are not asserted (they belong to `benchmarks/many_tables.py` itself, run by hand);
this checks that every path the README's many-tables command runs still runs through the
product's own commands, loads exactly the source's tables and rows (the script counts them in
each path's DuckDB file and exits non-zero otherwise) and lands in the results table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATHS = ("pg_to_bq_discover", "pg_to_bq_cli", "pg_to_bq_cli_resync", "pg_to_bq_job",
         "pg_to_bq_job_pg", "dlt_connectorx", "dlt_pyarrow")


def test_every_many_tables_path_runs(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "many-tables.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "many_tables.py"), "--shapes", "3x50+1x70",
         "--paths", ",".join(PATHS), "--pg-url", pg_url, "--data-dir", str(tmp_path / "data"),
         "--timeout-s", "600", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = out.read_text(encoding="utf-8")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in results.splitlines()
            if line.startswith("| `")}
    assert set(rows) == {f"`{path}`" for path in PATHS}, results
    for path in PATHS:
        line = rows[f"`{path}`"]
        assert line.endswith(" | ok |"), line
        if path != "pg_to_bq_discover":  # discover loads nothing
            # three tables of 50 rows and one of 70, each checked by the script
            assert " | 4 | 220 | " in line, line
    assert " | 1.00× | 1.00× | " in rows["`pg_to_bq_cli`"]
    # the shape covers every kind of name: a second schema, CamelCase, spaces
    assert "(3 in `public`, 1 in `billing`; 1 with CamelCase and 1 with spaced names)" in results
    assert "### 3 tables × 50 rows + 1 table × 70 rows" in results
    assert "Command: `python benchmarks/many_tables.py --shapes 3x50+1x70" in results
    # the script's own printout has the same table
    assert "| `dlt_pyarrow` |" in proc.stdout
