"""`pg-to-bq demo`: an embedded PostgreSQL with a sample shop database, and the Dagster UI.

Everything lives in a visible folder (`.pg_to_bq/` by default): the PostgreSQL data, the
DuckDB destination, the catalog snapshot, dlt's working files and DAGSTER_HOME. A second
start reuses it all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

from pg_to_bq.postgres.embedded import EmbeddedPostgres, free_port

DEMO_DATABASE = "shop"


@dataclass(frozen=True)
class DemoLayout:
    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def duckdb(self) -> Path:
        return self.root / "shop.duckdb"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.json"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def port_file(self) -> Path:
        return self.root / "postgres.port"

    @property
    def project(self) -> Path:
        """A Dagster project holding one `PostgresMirror` component: the demo runs pg_to_bq
        the way a team adds it to its own project."""
        return self.root / "project"


DEMO_PACKAGE = "pg_to_bq_demo"
# The demo's component: the standalone keys (no instance name), its settings from the
# environment the demo sets, and its catalog as defs state in the project.
DEMO_DEFS_YAML = """\
type: pg_to_bq.orchestration.component.PostgresMirror
attributes:
  source_url_env: PG_TO_BQ_SOURCE_URL
  destination: "{{ env.PG_TO_BQ_DESTINATION }}"
  dataset: "{{ env.PG_TO_BQ_DATASET }}"
  work_dir: "{{ env.PG_TO_BQ_WORK_DIR }}"
  executor: in_process
"""


def write_project(layout: DemoLayout) -> Path:
    """The demo's Dagster project (`dg.toml`, a package whose `defs` folder holds the
    component); returns its workspace file, which `dg dev` serves."""
    package = layout.project / DEMO_PACKAGE
    defs = package / "defs" / "shop"
    defs.mkdir(parents=True, exist_ok=True)
    (layout.project / "dg.toml").write_text(
        f'directory_type = "project"\n\n[project]\nroot_module = "{DEMO_PACKAGE}"\n'
        'code_location_name = "pg_to_bq"\n',
        encoding="utf-8")
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "defs" / "__init__.py").write_text("", encoding="utf-8")
    (package / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n@dg.definitions\n"
        "def defs() -> dg.Definitions:\n"
        "    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n",
        encoding="utf-8")
    (defs / "defs.yaml").write_text(DEMO_DEFS_YAML, encoding="utf-8")
    workspace = layout.project / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_file:\n"
        f"      relative_path: {DEMO_PACKAGE}/definitions.py\n"
        f"      working_directory: {layout.project}\n"
        "      location_name: pg_to_bq\n", encoding="utf-8")
    return workspace


def start_database(layout: DemoLayout) -> EmbeddedPostgres:
    """Start (or reuse) the demo PostgreSQL and seed it on first start."""
    layout.root.mkdir(parents=True, exist_ok=True)
    port = int(layout.port_file.read_text()) if layout.port_file.exists() else free_port()
    server = EmbeddedPostgres(layout.postgres, port=port)
    try:
        server.start()
    except RuntimeError:
        # The remembered port is taken by something else: use a new one.
        server = EmbeddedPostgres(layout.postgres, port=free_port()).start()
    layout.port_file.write_text(str(server.port))
    seed(server)
    return server


def seed(server: EmbeddedPostgres) -> bool:
    """Create and fill the sample database unless it exists. True when it was created now."""
    with psycopg.connect(server.url(), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)
        ).fetchone()
        if exists:
            return False
        conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}_loading"')
    sql = resources.files("pg_to_bq.postgres").joinpath("sample_data.sql").read_text(encoding="utf-8")
    with psycopg.connect(server.url(f"{DEMO_DATABASE}_loading"), autocommit=True) as conn:
        conn.execute(sql)
    # Renamed only once complete, so an interrupted first start seeds again next time.
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{DEMO_DATABASE}_loading" RENAME TO "{DEMO_DATABASE}"')
    return True


def demo_environment(layout: DemoLayout, server: EmbeddedPostgres) -> dict[str, str]:
    """The settings the demo runs with (on top of the caller's environment)."""
    return {
        "PG_TO_BQ_SOURCE_URL": server.url(DEMO_DATABASE),
        "PG_TO_BQ_DESTINATION": f"duckdb:///{layout.duckdb}",
        "PG_TO_BQ_DATASET": "shop_raw",
        "PG_TO_BQ_WORK_DIR": str(layout.work),
        "PG_TO_BQ_CATALOG_PATH": str(layout.catalog),
        "DAGSTER_HOME": str(layout.dagster_home),
    }


def write_dagster_yaml(home: Path, pool_limit: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "concurrency:\n"
        f"  pools:\n    granularity: op\n    default_limit: {pool_limit}\n"
        "  runs:\n    max_concurrent_runs: 4\n",
        encoding="utf-8",
    )


def run_demo(root: Path, host: str, port: int, open_ui: bool = True) -> int:
    from pg_to_bq.orchestration.code_location import discover_catalog
    from pg_to_bq.planning.settings import Settings

    layout = DemoLayout(root.resolve())
    # A terminal closing (SIGHUP) or a supervisor stopping the demo (SIGTERM) must clean up
    # like Ctrl-C: by default either signal ends Python without its `finally` blocks, leaving
    # PostgreSQL and Dagster running.
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _interrupt)
    print(f"pg_to_bq demo — everything lives in {layout.root}")
    print("starting the embedded PostgreSQL …", flush=True)
    server = start_database(layout)
    try:
        env = {**os.environ, **demo_environment(layout, server)}
        print(f"  PostgreSQL {server.url(DEMO_DATABASE)} (sample shop database)")
        settings = Settings.from_env(env)
        catalog = discover_catalog(settings)
        print(f"  discovered {len(catalog.tables)} tables: "
              + ", ".join(t.qualified_name for t in catalog.tables))
        write_dagster_yaml(layout.dagster_home, settings.max_source_connections)
    except BaseException:
        # A bad setting or a failed discovery: PostgreSQL runs as a daemon of its own and
        # would outlive the error.
        server.stop()
        raise
    if not open_ui:
        print("database ready; not starting the UI (--no-ui)")
        server.stop()
        return 0
    url = f"http://{host}:{port}"
    workspace = write_project(layout)
    # `dg dev`, which refreshes the component's catalog (its defs state) as it starts.
    command = [str(Path(sys.executable).with_name("dg")), "dev", "-w", str(workspace),
               "-h", host, "-p", str(port)]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(layout.project),
                                                    env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(command, env=env, start_new_session=True, cwd=layout.project)
    try:
        if _wait_for_ui(url, process):
            print(f"\nDagster UI: {url}\n"
                  f"  1. Open the lineage graph, {url}/asset-groups: each PostgreSQL table\n"
                  "     (postgres/public/…) feeds its loaded table (duckdb/shop_raw/…).\n"
                  "  2. Click 'Materialize all' to load every table; click a table to see its\n"
                  "     columns, row counts and checks.\n"
                  f"  3. The data lands in {layout.duckdb} (try: duckdb {layout.duckdb} "
                  "'select * from shop_raw.orders limit 5').\n"
                  "Press Ctrl-C to stop everything.", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        print("\nstopping …", flush=True)
        return 0
    finally:
        _stop_process_group(process)
        server.stop()
        print("stopped Dagster and PostgreSQL; data kept in", layout.root)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _wait_for_ui(url: str, process: subprocess.Popen, timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def _stop_process_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """Stop `dg dev` and every process of its group (Dagster's webserver and code servers):
    they end on the same SIGINT, the code servers a moment after their leader, so the
    group is waited for (up to `grace_s`), then whatever is left is killed."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
    deadline = time.monotonic() + grace_s
    while _group_members(process.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def _group_members(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (a zombie, which only waits to be
    reaped, does not count). Without /proc, whether the group has any process at all."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False
