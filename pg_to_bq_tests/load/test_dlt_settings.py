"""Tier 1: dlt as pg_to_bq sets it up, in a fresh interpreter (dlt's runtime settings are
process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
from pathlib import Path
from pg_to_bq.load.packages import group_pipeline
from dlt.common.runtime import anon_tracker
import os
pipeline = group_pipeline("probe", "duckdb", "d", Path({work!r}))
pipeline.run([{{"a": 1}}], table_name="t")
print(pipeline.run_context.runtime_config.dlthub_telemetry, anon_tracker._THREAD_POOL is None,
      os.environ.get("RUNTIME__DLTHUB_TELEMETRY"))
"""


def probe(tmp_path: Path, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "RUNTIME__DLTHUB_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(work=str(tmp_path))],
                         env={**environment, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip()


def test_dlt_telemetry_is_off_unless_the_user_turns_it_on(tmp_path: Path) -> None:
    """dlt reports every pipeline step to dltHub by default; a mirror of someone's database
    does not, unless they set RUNTIME__DLTHUB_TELEMETRY=true themselves."""
    # (and the process's environment, which its children inherit, is left as it was)
    assert probe(tmp_path) == "False True None"
    assert probe(tmp_path, RUNTIME__DLTHUB_TELEMETRY="true") == "True False true"
