"""The alerts under a real `dagster-daemon run`: its FreshnessDaemon finds the toy mirror's
tables stale, its sensor daemon evaluates the alert sensors of the code location it loaded,
and a run launched through that code location fails.

Nothing is faked: staleness needs time to pass, so the tables are loaded once and the test
waits out the shortest freshness window Dagster accepts (one minute); the daemon evaluates
freshness every 2 s (`FRESHNESS_DAEMON_INTERVAL_SECONDS`) and the sensors every 2 s. About
80 s in all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pg_to_bq.alerts.settings import AlertSettings
from pg_to_bq_tests.alerts.conftest import SnsInbox, WebhookServer
from pg_to_bq_tests.alerts.toy_mirror import (
    JOB,
    ONE_MINUTE,
    SOURCE_PASSWORD,
    TABLES,
    build_toy_definitions,
    table_key,
)

pytestmark = pytest.mark.aws

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
UI = "https://dagster.example.com"


@dataclass
class Daemon:
    home: Path
    workspace: Path
    env: dict[str, str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, daemon: Daemon) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"waited {timeout_s:.0f} s for {what}; the daemon's log:\n{daemon.output()[-6000:]}")


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sns_inbox: SnsInbox,
           webhook: WebhookServer) -> Iterator[Daemon]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "telemetry": {"enabled": False},
        "auto_materialize": {"enabled": False},
    }))
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_file": {
        "relative_path": str(ROOT / "pg_to_bq_tests" / "alerts" / "toy_location.py"),
        "working_directory": str(ROOT),
        "location_name": "toy",
    }}]}))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG_TO_BQ_")}
    env.update(DAGSTER_HOME=str(home), PYTHONPATH=str(ROOT),
               PG_TO_BQ_ALERT_SNS_TOPIC_ARN=sns_inbox.topic_arn,
               PG_TO_BQ_ALERT_WEBHOOK_URL=webhook.url, PG_TO_BQ_UI_URL=UI,
               FRESHNESS_DAEMON_INTERVAL_SECONDS="2")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
                                   env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield Daemon(home, workspace, env, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_daemon_alerts_a_failed_run_and_stale_tables_once_each(
        daemon: Daemon, sns_inbox: SnsInbox, webhook: WebhookServer) -> None:
    # The run status sensors start from the latest run event at their first tick: a run that
    # failed before it is not theirs.
    wait_for(lambda: "Sensor pg_to_bq_failed_run_alert skipped: Initiating" in daemon.output(),
             120, "the failed-run sensor's first tick", daemon)

    # Load every table once (in this process, on the daemon's instance): fresh for a minute.
    instance = dg.DagsterInstance.get()
    loaded = build_toy_definitions(AlertSettings(), freshness=ONE_MINUTE) \
        .resolve_job_def(JOB).execute_in_process(instance=instance)
    assert loaded.success
    loaded_at = time.monotonic()

    # A run of the mirror's job launched through the daemon's code location, failing
    # before any table (so the tables' freshness stays as it is).
    run_id = str(uuid.uuid4())
    subprocess.run(
        [str(BIN / "dagster"), "job", "launch", "-w", str(daemon.workspace), "-j", JOB,
         "--run-id", run_id,
         "--config-json", json.dumps({"ops": {"load_tables": {"config": {"step_error": True}}}})],
        env=daemon.env, check=True, capture_output=True, timeout=120)
    wait_for(lambda: len(webhook.requests) >= 1, 120, "the failed run's alert", daemon)
    [failed_run] = webhook.texts()
    assert failed_run.startswith(f"pg_to_bq · shop on db.internal: run of {JOB} failed: "
                                 "3 tables failed.")
    assert "postgresql://loader:***@db.internal:5432/shop" in failed_run
    assert failed_run.endswith(f"Run: {UI}/runs/{run_id}")

    # A minute after their load, the FreshnessDaemon records the tables' state FAIL, and
    # the stale-tables sensor sends one message for the three.
    wait_for(lambda: len(webhook.requests) >= 2, 150, "the stale tables' alert", daemon)
    assert time.monotonic() - loaded_at >= 60
    stale = webhook.texts()[1]
    assert stale.startswith("pg_to_bq · shop on db.internal: 3 tables in duckdb/raw are stale")
    for table in TABLES:
        assert f"• {table}: last loaded " in stale
        assert f"{UI}/assets/duckdb/raw/{table}" in stale
    states = instance.get_freshness_state_records([table_key(t) for t in TABLES])
    assert {record.freshness_state.value for record in states.values()} == {"FAIL"}

    # More freshness passes and sensor ticks: nothing more.
    time.sleep(8)
    assert len(webhook.requests) == 2
    published = sns_inbox.messages()
    assert [m["Subject"] for m in published] == [
        f"pg_to_bq shop on db.internal: {JOB} failed: 3 tables",
        "pg_to_bq shop on db.internal: 3 tables stale"]
    assert all(SOURCE_PASSWORD not in m["Message"] for m in published)
    assert SOURCE_PASSWORD not in "".join(webhook.texts())
