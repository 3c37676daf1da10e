"""The analysts' webserver: `dagster-webserver --read-only` beside the operators' full one.

docs/security.md deploys two webservers from one image on one Dagster instance: a
read-only one for analysts and a full one for operators. Here the full one is the demo's
(`pg-to-bq demo`, `dg dev`), and the read-only one is started next to it as the deploy
files start it: a code server (`dagster api grpc`) and `dagster-webserver --read-only -w
deploy/workspace.yaml` reaching it over gRPC, on the demo's Dagster instance, without any
pg_to_bq setting. The operators' webserver loads `public.orders`; the analysts'
shows the lineage and that table's page (its columns and row count) without an enabled
"Materialize" button (Dagster 1.13 greys it out, with the tooltip "You do not have
permission to materialize assets"), and its GraphQL API refuses every change (the
permissions it reports, a launch, a wipe). The same pages on the full webserver, with the
button enabled, are the control.

Screenshots of both land in this test's temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, expect

from pg_to_bq.cli.demo import DemoLayout, demo_environment
from pg_to_bq.orchestration.names import key_part
from pg_to_bq.postgres.embedded import EmbeddedPostgres, free_port
from pg_to_bq_tests.browser.demo_stack import (
    HOST,
    LAUNCH_RUN_MUTATION,
    VENV_BIN,
    WORKSPACE_QUERY,
    DemoStack,
)
from pg_to_bq_tests.browser.test_ui import (
    SAMPLE_TABLES,
    TABLE,
    TABLE_COLUMNS,
    expect_visible_texts,
    loaded_key,
    screenshots,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_PERMISSION = "You do not have permission to materialize assets"
PERMISSIONS_QUERY = "query Permissions { permissions { permission value } }"
WIPE_MUTATION = """
mutation Wipe($keys: [PartitionsByAssetSelector!]!) {
  wipeAssets(assetPartitionRanges: $keys) {
    __typename
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""
# What a webserver must refuse for analysts (Dagster's permission names).
CHANGES = ("launch_pipeline_execution", "launch_pipeline_reexecution",
           "terminate_pipeline_execution", "delete_pipeline_run", "wipe_assets",
           "start_schedule", "stop_running_schedule", "edit_sensor",
           "launch_partition_backfill", "reload_repository_location")


@dataclass
class Process:
    """A process this test started in a process group of its own, with its output in a log."""

    process: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, command: list[str], env: dict[str, str], cwd: Path, log_path: Path
              ) -> Process:
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                       process_group=0)
        return cls(process, log_path)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGINT to its process group, then SIGKILL to whatever of it is left."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class ReadOnlyDeployment:
    """The analysts' side as deploy/ starts it: a code server (the image's default command)
    and `dagster-webserver --read-only -w deploy/workspace.yaml` reaching it over gRPC, on
    the demo's Dagster instance. The webserver gets no PG_TO_BQ_* setting but the code
    server's address: it never connects to PostgreSQL or the destination."""

    url: str
    code_server: Process
    webserver: Process

    @classmethod
    def start(cls, demo_root: Path, timeout: float = 180.0) -> ReadOnlyDeployment:
        layout = DemoLayout(demo_root)
        database = EmbeddedPostgres(layout.postgres, port=int(layout.port_file.read_text()))
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("PG_TO_BQ_", "DAGSTER_", "PYTHONPATH"))}
        grpc_port, web_port = free_port(), free_port()
        code_env = {**base, **demo_environment(layout, database),
                    "PYTHONPATH": os.pathsep.join([str(layout.project), str(REPO_ROOT)])}
        code_server = Process.start(
            [str(VENV_BIN / "dagster"), "api", "grpc", "-h", HOST, "-p", str(grpc_port),
             "-f", str(layout.project / "pg_to_bq_demo" / "definitions.py"),
             "-d", str(layout.project)],
            code_env, layout.project, demo_root.with_name("code-server.log"))
        web_env = {**base, "DAGSTER_HOME": str(layout.dagster_home),
                   "PG_TO_BQ_CODE_SERVER_HOST": HOST, "PG_TO_BQ_CODE_SERVER_PORT": str(grpc_port)}
        webserver = Process.start(
            [str(VENV_BIN / "dagster-webserver"), "--read-only", "-h", HOST,
             "-p", str(web_port), "-w", str(REPO_ROOT / "deploy" / "workspace.yaml")],
            web_env, demo_root.parent, demo_root.with_name("read-only-webserver.log"))
        deployment = cls(f"http://{HOST}:{web_port}", code_server, webserver)
        try:
            deployment.wait_until_loaded(timeout)
        except BaseException:
            deployment.stop()
            raise
        return deployment

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(f"{self.url}/graphql",
                                 json={"query": query, "variables": variables or {}},
                                 timeout=30)
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def wait_until_loaded(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.webserver.process.poll() is None:
            try:
                entries = self.graphql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
            except (requests.RequestException, AssertionError, KeyError, TypeError):
                time.sleep(1)
                continue
            errors = [e["locationOrLoadError"] for e in entries
                      if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries) and not errors:
                assert [e["name"] for e in entries] == ["pg_to_bq"]
                return
            time.sleep(1)
        raise AssertionError(
            f"the read-only webserver did not serve the code location within {timeout:.0f}s."
            f"\nwebserver:\n{self.webserver.output()}\ncode server:\n{self.code_server.output()}")

    def stop(self) -> None:
        self.webserver.stop()
        self.code_server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """The demo (the operators' full webserver), running this checkout's code."""
    # Not under pytest's temporary root: see the `stack` fixture in test_ui.py.
    work = Path(tempfile.mkdtemp(prefix="pg_to_bq_read_only_"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
        stack = DemoStack.start(work / "demo", cli=[sys.executable, "-m", "pg_to_bq.cli"])
    try:
        yield stack
    finally:
        stack.stop()
        logs = tmp_path_factory.mktemp("logs")
        for log in work.glob("*.log"):
            shutil.copyfile(log, logs / log.name)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def read_only(stack: DemoStack) -> Iterator[ReadOnlyDeployment]:
    server = ReadOnlyDeployment.start(stack.root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def loaded(stack: DemoStack) -> dict[str, Any]:
    """`public.orders` loaded by an operator, through the full webserver."""
    run_id = stack.launch_materialization(loaded_key(TABLE))
    run = stack.wait_for_run(run_id)
    if run["status"] != "SUCCESS":
        pytest.fail(f"run {run_id} ended {run['status']}:\n{stack.run_errors(run_id)}")
    return run


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with screenshots.chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def permissions(server: DemoStack | ReadOnlyDeployment) -> dict[str, bool]:
    return {p["permission"]: p["value"] for p in server.graphql(PERMISSIONS_QUERY)["permissions"]}


def materialize_buttons(page: Page, enabled: bool | None = None) -> Locator:
    """The buttons offering to materialize ("Materialize", "Materialize all (8)", …):
    all of them, or only the enabled (or disabled) ones."""
    name = re.compile(r"\bMaterialize\b")
    if enabled is None:
        return page.get_by_role("button", name=name)
    return page.get_by_role("button", name=name, disabled=not enabled)


def tooltip_of(page: Page, button: Locator) -> str:
    """The tooltip Dagster shows when the pointer rests on `button` (disabled buttons take no
    pointer events; their tooltip listens on the wrapper)."""
    button.locator("xpath=..").hover()
    tooltip = page.locator(".bp5-popover-content, [role=tooltip]").first
    tooltip.wait_for()
    return tooltip.inner_text()


def check_buttons(page: Page, read_only: bool) -> None:
    """No enabled Materialize button on the read-only webserver; one on the full one."""
    if read_only:
        expect(materialize_buttons(page, enabled=True)).to_have_count(0)
        # Dagster 1.13 greys them out and says why, rather than leaving them out.
        for button in materialize_buttons(page).all():
            assert tooltip_of(page, button) == NO_PERMISSION
    else:
        expect(materialize_buttons(page, enabled=True).first).to_be_visible()


def test_the_read_only_api_refuses_every_change(stack: DemoStack,
                                                read_only: ReadOnlyDeployment) -> None:
    analysts, operators = permissions(read_only), permissions(stack)
    assert {name: analysts[name] for name in CHANGES} == dict.fromkeys(CHANGES, False)
    assert {name: operators[name] for name in CHANGES} == dict.fromkeys(CHANGES, True)

    location, repository = stack.repository()
    params = {"selector": {"repositoryLocationName": location, "repositoryName": repository,
                           "jobName": "__ASSET_JOB",
                           "assetSelection": [{"path": list(loaded_key(TABLE))}]}}
    launch = read_only.graphql(LAUNCH_RUN_MUTATION, {"executionParams": params})["launchRun"]
    assert launch["__typename"] == "UnauthorizedError", launch
    wipe = read_only.graphql(WIPE_MUTATION, {"keys": [{"assetKey": {
        "path": list(loaded_key(TABLE))}}]})["wipeAssets"]
    assert wipe["__typename"] == "UnauthorizedError", wipe


def test_lineage_without_materialize(stack: DemoStack, read_only: ReadOnlyDeployment,
                                     loaded: dict, browser: Browser, shots_dir: Path) -> None:
    for name, server in (("read-only", read_only), ("full", stack)):
        with screenshots.new_page(browser, screenshots.GRAPH_VIEWPORT) as page:
            screenshots.show_asset_graph(page, server.url)
            for table in SAMPLE_TABLES:
                # The PostgreSQL table and the loaded table, both labelled with its name.
                expect(page.get_by_text(key_part(table), exact=True)).to_have_count(2)
            expect(page.get_by_text("Materialized", exact=True)).to_have_count(1)
            screenshots.screenshot(page, shots_dir / f"asset-graph-{name}.png")
            check_buttons(page, read_only=server is read_only)


def test_table_page_without_materialize(stack: DemoStack, read_only: ReadOnlyDeployment,
                                        loaded: dict, browser: Browser, shots_dir: Path
                                        ) -> None:
    for name, server in (("read-only", read_only), ("full", stack)):
        with screenshots.new_page(browser, screenshots.ASSET_PAGE_VIEWPORT) as page:
            screenshots.show_asset_page(page, server.url, loaded_key(TABLE))
            expect_visible_texts(page, [TABLE, *TABLE_COLUMNS])
            expect(page.get_by_text("Row count", exact=True)).to_be_visible()
            screenshots.screenshot(page, shots_dir / f"asset-page-{name}.png")
            check_buttons(page, read_only=server is read_only)

