"""Incremental run over an unchanged table versus its full replace.

The benchmark table has a primary key and an `updated_at timestamptz` column (indexed, as a
cursor column usually is), so pg_to_bq plans it as an incremental merge (above
`PG_TO_BQ_READ_WHOLE_BYTES`, 8 MiB: a smaller table is read whole when it changes, and its
mode shows `full`). Three runs, each a
fresh process, into the same DuckDB file:

1. full replace (`full_refresh=True`): every row, cursor stored in the destination;
2. incremental, nothing changed, same working directory (a long-lived container): reads
   rows at or after the stored cursor minus the lookback (10 minutes by default);
3. the same from an empty working directory (a fresh container): the pipeline state is
   first restored from the destination.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def measure(url: str, table: str, work_dir: Path, run_path, destination_rows, repeat: int = 1
            ) -> dict:
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    args = {"url": url, "table": table, "work_dir": str(work_dir)}
    full = run_path("pg_to_bq", {**args, "full_refresh": True})
    rows_after_full = destination_rows(full.detail)
    incremental = [run_path("pg_to_bq", args) for _ in range(repeat)]
    rows_after_incremental = destination_rows(incremental[-1].detail)
    shutil.rmtree(work_dir / "pipelines", ignore_errors=True)
    fresh = run_path("pg_to_bq", args)
    rows_after_fresh = destination_rows(fresh.detail)
    shutil.rmtree(work_dir, ignore_errors=True)
    if not (rows_after_full == rows_after_incremental == rows_after_fresh == full.rows):
        raise RuntimeError(f"row counts differ: full {full.rows} read, destination "
                           f"{rows_after_full}/{rows_after_incremental}/{rows_after_fresh}")
    median = sorted(incremental, key=lambda r: r.seconds)[len(incremental) // 2]
    return {
        "table": table,
        "full": _row(full),
        "incremental": _row(median),
        "incremental_all_s": [round(r.seconds, 3) for r in incremental],
        "fresh_container": _row(fresh),
        "destination_rows": rows_after_fresh,
    }


def _row(run) -> dict:
    return {"mode": run.detail.get("mode"), "rows": run.rows, "seconds": run.seconds,
            "process_s": run.process_s, "peak_rss_mb": run.peak_rss_mb,
            "loaded": "no (unchanged)" if run.detail.get("unchanged") else "yes"}


def describe(result: dict) -> str:
    full = result["full"]["seconds"]
    return "\n".join(
        f"  {label:28s} mode={r['mode']:11s} rows={r['rows']:>9,}  {r['seconds']:6.2f} s  "
        f"({100 * r['seconds'] / full:5.1f}% of full)  peak RSS {r['peak_rss_mb']:.0f} MB"
        for label, r in (("full replace", result["full"]),
                         ("incremental, unchanged", result["incremental"]),
                         ("incremental, fresh container", result["fresh_container"]))
    )


def render(result: dict) -> list[str]:
    full = result["full"]["seconds"]
    lines = ["## Incremental run over the unchanged table", "",
             f"`{result['table']}` has a primary key and an indexed `updated_at timestamptz`, so "
             "pg_to_bq plans it as an incremental merge. Each run is a fresh process loading "
             "into the same DuckDB file; the incremental runs re-read the rows inside the "
             "10-minute lookback.", "",
             "| run | mode | rows read | dlt load | time (s) | % of full replace | "
             "peak RSS (MB) |",
             "|---|---|---:|---|---:|---:|---:|"]
    for label, r in (("full replace (`full_refresh=True`)", result["full"]),
                     ("incremental, nothing changed (same work dir)", result["incremental"]),
                     ("incremental, nothing changed (empty work dir: state from the destination)",
                      result["fresh_container"])):
        lines.append(f"| {label} | {r['mode']} | {r['rows']:,} | {r['loaded']} | "
                     f"{r['seconds']:.2f} | {100 * r['seconds'] / full:.1f}% | "
                     f"{r['peak_rss_mb']:.0f} |")
    runs = ", ".join(f"{s:.2f}" for s in result["incremental_all_s"])
    lines += ["", f"Incremental runs in the same work dir (median shown): {runs} s. Destination "
              f"rows after all runs: {result['destination_rows']:,} (no duplicates).", ""]
    return lines
