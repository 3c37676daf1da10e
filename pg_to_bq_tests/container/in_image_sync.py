"""Runs inside the image (mounted read-only by test_image.py): the product end to end.

Starts the demo's embedded PostgreSQL with its sample database under the work
directory, then runs `pg-to-bq discover` and `pg-to-bq sync` as a user would,
and prints one JSON report on the last line of stdout: both commands' exit codes
and output tails, and the row count of every table that landed in DuckDB.
"""

import json
import os
import subprocess
import sys
from pathlib import Path


def tail(text: str, limit: int = 4000) -> str:
    return text[-limit:]


def main() -> int:
    import duckdb

    from pg_to_bq.cli.demo import DemoLayout, demo_environment, start_database

    layout = DemoLayout(Path(os.environ["PG_TO_BQ_WORK_DIR"]) / "demo")
    server = start_database(layout)
    env = {**os.environ, **demo_environment(layout, server)}
    # As `pg-to-bq demo` does before it runs anything.
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    Path(env["DAGSTER_HOME"], "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    report: dict = {"uid": os.getuid(), "environment": demo_environment(layout, server)}
    try:
        for name in ("discover", "sync"):
            done = subprocess.run(["pg-to-bq", name], env=env, capture_output=True, text=True, timeout=600)
            report[name] = {
                "returncode": done.returncode,
                "stdout": tail(done.stdout),
                "stderr": tail(done.stderr),
            }
            if done.returncode != 0:
                break
    finally:
        server.stop()

    tables: dict[str, int] = {}
    if layout.duckdb.exists():
        with duckdb.connect(str(layout.duckdb), read_only=True) as conn:
            for schema, table in conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_schema NOT LIKE '%_staging'"
                " AND table_name NOT LIKE '\\_dlt%' ESCAPE '\\'"
            ).fetchall():
                count = conn.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]
                tables[f"{schema}.{table}"] = int(count)
    report["tables"] = tables
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
