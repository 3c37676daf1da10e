"""Start `pg-to-bq demo` the way a user does, talk to its webserver, stop it with Ctrl-C.

`DemoStack.start` runs the console script from this virtualenv in its own process group,
waits until the webserver answers and the code location has loaded, and `stop` sends
SIGINT to that group, as a terminal's Ctrl-C would. The stack spreads over three process
groups (the CLI, `dagster dev` in a session of its own, and PostgreSQL daemonized by
`pg_ctl`), so "no leftovers" is checked against every process ever seen belonging to the
run: the CLI, every process whose command line names the demo's directory (the postmaster,
dagster's processes, run workers and log tailers even when re-parented to init), and all
their descendants (PostgreSQL's backends).

Shared by `test_ui.py` and `scripts/screenshots.py`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from pg_to_bq.postgres.embedded import free_port

VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
TERMINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}


class DemoStackError(RuntimeError):
    """The demo did not start, did not stop, or the webserver answered with an error."""


@dataclass(frozen=True, order=True)
class Proc:
    """A process, told apart from a later one that reuses its pid by its start time."""

    pid: int
    start_ticks: int
    command: str = field(compare=False)
    parent: int = field(compare=False, default=0)

    def alive(self) -> bool:
        current = _read_proc(self.pid)
        return current is not None and current.start_ticks == self.start_ticks

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.command[:160]}"


@dataclass
class StopResult:
    exit_code: int | None
    seconds: float
    leftovers: list[Proc]
    output: str


@dataclass
class DemoStack:
    """A running `pg-to-bq demo`; `url` is its Dagster webserver."""

    root: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    seen: dict[int, Proc] = field(default_factory=dict)
    started_in_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @classmethod
    def start(cls, root: Path, port: int | None = None, timeout: float = 300.0,
              cli: Sequence[str] | None = None) -> DemoStack:
        """Run `pg-to-bq demo --dir ROOT --host 127.0.0.1 --port PORT` and wait until it serves.

        `cli` replaces the console script (e.g. `[sys.executable, "-m", "pg_to_bq.cli"]`, to
        run the checkout on PYTHONPATH rather than the installed package).

        Raises:
            DemoStackError: the demo exited or did not serve its code location in time (the
                message holds the end of its output); it is stopped before raising.
        """
        root.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        log_path = root.with_name(f"{root.name}.log")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PG_TO_BQ_", "DAGSTER_"))}
        env["PYTHONUNBUFFERED"] = "1"
        command = [*(cli or [str(VENV_BIN / "pg-to-bq")]), "demo", "--dir", str(root),
                   "--host", HOST, "--port", str(port)]
        began = time.monotonic()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=root, process_group=0, preexec_fn=_default_sigint,
            )
        stack = cls(root=root.resolve(), port=port, process=process, log_path=log_path)
        try:
            stack._wait_until_loaded(timeout)
        except BaseException:
            stack.stop()
            raise
        stack.started_in_s = time.monotonic() - began
        stack.remember_processes()
        return stack

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _wait_until_loaded(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DemoStackError(
                    f"`pg-to-bq demo` exited with {self.process.returncode} before serving; "
                    f"its output:\n{self.output()[-4000:]}")
            self.remember_processes()
            try:
                entries = self.graphql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
            except (requests.RequestException, DemoStackError, KeyError, TypeError) as exc:
                last = str(exc)
                time.sleep(1)
                continue
            statuses = {e["name"]: e["loadStatus"] for e in entries}
            errors = [e["locationOrLoadError"]["message"] for e in entries
                      if (e.get("locationOrLoadError") or {}).get("__typename") == "PythonError"]
            if errors:
                raise DemoStackError("the code location failed to load:\n" + "\n".join(errors))
            if entries and all(s == "LOADED" for s in statuses.values()):
                return
            last = f"code locations {statuses}"
            time.sleep(1)
        raise DemoStackError(
            f"the demo did not serve a loaded code location at {self.url} within {timeout:.0f}s "
            f"({last}); its output:\n{self.output()[-4000:]}")

    def graphql(self, query: str, variables: dict[str, Any] | None = None,
                timeout: float = 30.0) -> dict[str, Any]:
        """POST to the webserver's /graphql; the `data` of the answer.

        Raises:
            DemoStackError: the answer holds GraphQL errors.
        """
        response = requests.post(f"{self.url}/graphql",
                                 json={"query": query, "variables": variables or {}},
                                 timeout=timeout)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise DemoStackError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def repository(self) -> tuple[str, str]:
        """(code location name, repository name) of the demo's single code location."""
        nodes = self.graphql(REPOSITORIES_QUERY)["repositoriesOrError"]["nodes"]
        if len(nodes) != 1:
            raise DemoStackError(f"expected one repository, found {nodes}")
        return nodes[0]["location"]["name"], nodes[0]["name"]

    def launch_materialization(self, asset_key: Iterable[str]) -> str:
        """Launch a run of the implicit asset job materializing only `asset_key`; its run id."""
        location, repository = self.repository()
        params = {"selector": {
            "repositoryLocationName": location,
            "repositoryName": repository,
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": list(asset_key)}],
        }}
        result = self.graphql(LAUNCH_RUN_MUTATION, {"executionParams": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise DemoStackError(f"launchRun failed: {result}")
        return result["run"]["runId"]

    def wait_for_run(self, run_id: str, timeout: float = 180.0) -> dict[str, Any]:
        """Poll the run until it ends; the run (status, stepKeysToExecute, ...)."""
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.remember_processes()
            run = self.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
            if run.get("status") in TERMINAL_RUN_STATUSES:
                return run
            time.sleep(1)
        raise DemoStackError(f"run {run_id} still {run.get('status')} after {timeout:.0f}s")

    def run_errors(self, run_id: str) -> str:
        """The run's error events (failures with their stack traces), for failure messages."""
        events = self.graphql(RUN_EVENTS_QUERY, {"runId": run_id})["logsForRun"]["events"]
        lines = []
        for event in events:
            error = event.get("error")
            if error or event.get("level") == "ERROR":
                lines.append(f"[{event['__typename']}] {event.get('stepKey') or ''} "
                             f"{event.get('message', '')}")
                if error:
                    lines.append(f"{error['message']}\n{''.join(error.get('stack') or [])}")
        return "\n".join(lines) or "(no error events)"

    def remember_processes(self) -> None:
        """Note every process that currently belongs to this run (see the module docstring)."""
        for proc in self._current_processes():
            self.seen.setdefault(proc.pid, proc)

    def _current_processes(self) -> list[Proc]:
        table = _process_table()
        marker = str(self.root)
        # The CLI (while it lives), and whatever names the demo's directory on its command
        # line: the postmaster (-D …/postgres/pgdata), dagster's processes (their instance
        # ref), run workers and compute-log tailers even when re-parented to init.
        roots = {pid for pid, proc in table.items() if marker in proc.command}
        if self.process.poll() is None:
            roots.add(self.process.pid)
        children: dict[int, list[int]] = {}
        for proc in table.values():
            children.setdefault(proc.parent, []).append(proc.pid)
        mine: set[int] = set()
        todo = list(roots)
        while todo:
            pid = todo.pop()
            if pid not in mine:
                mine.add(pid)
                todo.extend(children.get(pid, []))
        mine.difference_update(_ancestry(table, os.getpid()))  # whoever runs this, not the run
        return [table[pid] for pid in sorted(mine) if pid in table]

    def stop(self, timeout: float = 90.0, grace: float = 15.0,
             sig: signal.Signals = signal.SIGINT) -> StopResult:
        """Ctrl-C: SIGINT (or `sig`, e.g. a supervisor's SIGTERM) to the demo's process group;
        then look for processes left behind.

        Waits up to `grace` seconds after the CLI exits for the rest to go. Anything still
        alive is reported in the result and then killed, so a failing test leaves nothing
        running either.
        """
        self.remember_processes()
        began = time.monotonic()
        exit_code: int | None = None
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
                exit_code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        else:
            exit_code = self.process.returncode
        seconds = time.monotonic() - began
        deadline = time.monotonic() + grace
        leftovers = self._leftovers()
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.5)
            leftovers = self._leftovers()
        _kill(leftovers)
        return StopResult(exit_code, seconds, leftovers, self.output())

    def assert_stops_cleanly(self, sig: signal.Signals = signal.SIGINT) -> None:
        """Stop the demo with `sig`: it exits 0, says it stopped Dagster and PostgreSQL, and
        leaves no process of its own behind (both were seen running)."""
        result = self.stop(sig=sig)
        assert result.exit_code == 0, result.output[-3000:]
        assert "stopped Dagster and PostgreSQL" in result.output
        assert not result.leftovers, f"still running after {sig.name}:\n" + "\n".join(
            str(p) for p in result.leftovers)
        assert any("postgres" in p.command for p in self.seen.values())
        assert any("dagster" in p.command for p in self.seen.values())

    def _leftovers(self) -> list[Proc]:
        alive = {p for p in self.seen.values() if p.alive()}
        alive.update(self._current_processes())
        return sorted(alive)


def _default_sigint() -> None:
    # A child inherits an *ignored* SIGINT (a test runner started in the background has one),
    # and Python then never raises KeyboardInterrupt. A terminal gives the foreground job the
    # default disposition; so does this.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    rest = stat[stat.rfind(")") + 2:].split()
    if rest[0] == "Z":  # a zombie is gone, only not yet reaped by its parent
        return None
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    name = stat[stat.find("(") + 1:stat.rfind(")")]
    return Proc(pid, int(rest[19]), command or name, parent=int(rest[1]))


def _process_table() -> dict[int, Proc]:
    """Every live process by pid."""
    procs = (_read_proc(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit())
    return {p.pid: p for p in procs if p is not None}


def _ancestry(table: dict[int, Proc], pid: int) -> set[int]:
    chain = set()
    while pid in table and pid not in chain:
        chain.add(pid)
        pid = table[pid].parent
    return chain


def _kill(procs: Iterable[Proc]) -> None:
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)


WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""

REPOSITORIES_QUERY = """
query Repositories {
  repositoriesOrError {
    ... on RepositoryConnection { nodes { name location { name } } }
    ... on PythonError { message }
  }
}
"""

ASSET_NODES_QUERY = """
query AssetNodes {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    opNames
    jobNames
    groupName
    description
    kinds
    isExecutable
    isMaterializable
    metadataEntries {
      label
      ... on TableSchemaMetadataEntry { schema { columns { name type } } }
      ... on TextMetadataEntry { text }
    }
  }
}
"""

LAUNCH_RUN_MUTATION = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      runId
      status
      jobName
      stepKeysToExecute
      assetSelection { path }
      startTime
      endTime
    }
    ... on RunNotFoundError { message }
  }
}
"""

RUN_EVENTS_QUERY = """
query RunEvents($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on ErrorEvent { error { message stack } }
        ... on MaterializationEvent { assetKey { path } }
        ... on AssetCheckEvaluationEvent { evaluation { checkName success description } }
      }
    }
  }
}
"""

LATEST_MATERIALIZATION_QUERY = """
query LatestMaterialization($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue intRepr }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}
"""

FRESHNESS_QUERY = """
query Freshness($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { freshnessStatusInfo { freshnessStatus } }
  }
}
"""
