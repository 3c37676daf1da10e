"""The PostgresMirror component in a project made by `create-dagster`, driven with `dg`.

From a fresh temporary directory, as a team adds pg_to_bq to its own Dagster project:
`create-dagster project`, `dg scaffold defs` the component (settings from the environment,
pointing at the test PostgreSQL), `dg check defs`, `dg list defs --json`, `dg launch`, a
state refresh after a table is added, and two databases side by side. The project's
package is put on PYTHONPATH instead of being installed, so the test leaves nothing in the
virtual environment; pg_to_bq itself is the installed one, as in a user's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pg_to_bq_tests.conftest import run_sql, sample_sql

pytestmark = pytest.mark.timeout(900)

BIN = Path(sys.executable).parent
COMPONENT = "pg_to_bq.PostgresMirror"  # the name the README documents
SAMPLE_TABLES = {"audit_log", "customers", "order_items", "orders", "page_views", "products",
                 "顧客メモ"}


class Project:
    """A Dagster project made by `create-dagster`, and `dg` run in it."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    @classmethod
    def create(cls, parent: Path, name: str, env: dict[str, str]) -> Project:
        result = subprocess.run([str(BIN / "create-dagster"), "project", name, "--no-uv-sync"],
                                cwd=parent, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        root = parent / name
        env = {**env, "PYTHONPATH": str(root / "src")}
        return cls(root, env)

    @property
    def defs(self) -> Path:
        return self.root / "src" / self.root.name / "defs"

    def dg(self, *args: str, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(BIN / "dg"), *args], cwd=self.root,
                                env={**self.env, **(env or {})}, capture_output=True, text=True,
                                timeout=600)
        if check:
            assert result.returncode == 0, f"dg {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def list_defs(self) -> dict:
        return json.loads(self.dg("list", "defs", "--json").stdout)


@pytest.fixture
def environment(tmp_path: Path) -> dict[str, str]:
    """The process environment without PG_TO_BQ_* settings, with `dg` and the project's
    Python on PATH, a DAGSTER_HOME of its own, and no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_TO_BQ_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(BIN.parent)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    env["DAGSTER_HOME"] = str(home)
    env["DAGSTER_DISABLE_TELEMETRY"] = "1"
    return env


def settings_for(url: str, duckdb_path: Path, work: Path, dataset: str = "shop_raw") -> dict:
    return {"PG_TO_BQ_SOURCE_URL": url, "PG_TO_BQ_DESTINATION": f"duckdb:///{duckdb_path}",
            "PG_TO_BQ_DATASET": dataset, "PG_TO_BQ_WORK_DIR": str(work)}


def test_the_component_from_scaffold_to_loaded_tables(sample_db_url: str, pg_url: str,
                                                      tmp_path: Path, environment) -> None:
    run_sql(pg_url, sample_sql())  # a database of its own: this test adds a table to it
    project = Project.create(tmp_path, "analytics", environment)
    listed = project.dg("list", "components", "--json")
    assert COMPONENT in {c["key"] for c in json.loads(listed.stdout)["items"]}

    project.dg("scaffold", "defs", COMPONENT, "shop")
    defs_yaml = (project.defs / "shop" / "defs.yaml").read_text(encoding="utf-8")
    assert f"type: {COMPONENT}" in defs_yaml and "name: shop" in defs_yaml
    assert "source_url_env: PG_TO_BQ_SOURCE_URL" in defs_yaml
    assert '"{{ env.PG_TO_BQ_DESTINATION }}"' in defs_yaml

    destination = tmp_path / "shop.duckdb"
    project.env.update(settings_for(pg_url, destination, tmp_path / "work"))
    assert "All definitions loaded successfully" in project.dg("check", "defs").stdout
    project.dg("utils", "refresh-defs-state")
    listing = project.list_defs()
    loaded = {tuple(a["asset_key_parts"]) for a in listing["assets"] if a["is_executable"]}
    assert loaded == {("shop", "duckdb", "shop_raw", t) for t in SAMPLE_TABLES} \
        | {("shop", "postgres", "catalog")}
    assert {j["name"] for j in listing["jobs"]} >= {"shop__mirror_all_tables",
                                                   "shop__refresh_catalog"}
    assert {s["name"] for s in listing["schedules"]} >= {"shop__nightly_mirror"}
    # The URL is read when a run needs it: it is nowhere in the definitions.
    assert "postgres@" not in json.dumps(listing)

    project.dg("launch", "--assets", "*")
    with duckdb.connect(str(destination), read_only=True) as conn:
        counts = dict(conn.execute(
            "SELECT table_name, estimated_size FROM duckdb_tables() "
            "WHERE schema_name = 'shop_raw' AND NOT starts_with(table_name, '_')").fetchall())
        exact = {t: conn.execute(f'SELECT count(*) FROM shop_raw."{t}"').fetchone()[0]
                 for t in counts}
    import psycopg

    with psycopg.connect(pg_url) as conn:
        source = {t: conn.execute(f'SELECT count(*) FROM public."{t}"').fetchone()[0]
                  for t in SAMPLE_TABLES}
    assert exact == source

    # A table added in PostgreSQL: a state refresh, and it is an asset of its own.
    run_sql(pg_url, "CREATE TABLE refunds (id int PRIMARY KEY, amount numeric(10,2))")
    project.dg("utils", "refresh-defs-state")
    keys = {tuple(a["asset_key_parts"]) for a in project.list_defs()["assets"]}
    assert ("shop", "duckdb", "shop_raw", "refunds") in keys
    assert ("shop", "postgres", "public", "refunds") in keys

    # Renamed in PostgreSQL: the refreshed state keeps the name it had (what holds back a
    # table whose tables-file entry was left under that name, `plan_table`).
    run_sql(pg_url, "ALTER TABLE refunds RENAME TO refunds_v2")
    project.dg("utils", "refresh-defs-state")
    [state] = [p for p in project.root.rglob("*") if p.is_file() and p.suffix != ".py"
               and '"refunds_v2"' in p.read_text(encoding="utf-8", errors="ignore")]
    [refunds] = [t for t in json.loads(state.read_text(encoding="utf-8"))["tables"]
                 if t["name"] == "refunds_v2"]
    assert refunds["former_names"] == ["public.refunds"]


def test_two_databases_side_by_side(sample_db_url: str, pg_url: str, tmp_path: Path,
                                    environment) -> None:
    run_sql(pg_url, "CREATE TABLE tickets (id int PRIMARY KEY, subject text);"
                    "INSERT INTO tickets SELECT g, 's' || g FROM generate_series(1, 40) g")
    project = Project.create(tmp_path, "data_platform", environment)
    project.dg("scaffold", "defs", COMPONENT, "shop")
    project.dg("scaffold", "defs", COMPONENT, "support")
    # The second instance reads its own variables: edit its defs.yaml as a user would.
    support = project.defs / "support" / "defs.yaml"
    support.write_text(support.read_text(encoding="utf-8")
                       .replace("source_url_env: PG_TO_BQ_SOURCE_URL",
                                "source_url_env: SUPPORT_DB_URL")
                       .replace("{{ env.PG_TO_BQ_DATASET }}", "support_raw"), encoding="utf-8")
    destination = tmp_path / "warehouse.duckdb"
    project.env.update(settings_for(sample_db_url, destination, tmp_path / "work"))
    project.env["SUPPORT_DB_URL"] = pg_url
    project.dg("check", "defs")
    listing = project.list_defs()
    keys = {tuple(a["asset_key_parts"]) for a in listing["assets"]}
    assert ("shop", "duckdb", "shop_raw", "orders") in keys
    assert ("support", "duckdb", "support_raw", "tickets") in keys
    assert ("support", "postgres", "public", "tickets") in keys
    jobs = {j["name"] for j in listing["jobs"]}
    assert {"shop__mirror_all_tables", "support__mirror_all_tables"} <= jobs
    assert {r["name"] for r in listing["resources"]} == {
        "shop__source", "support__source", "shop__destination", "support__destination"}
    project.dg("launch", "--job", "support__mirror_all_tables")
    with duckdb.connect(str(destination), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM support_raw.tickets").fetchone() == (40,)


def test_a_wrong_attribute_or_value_is_a_clear_error(sample_db_url: str, tmp_path: Path,
                                                    environment) -> None:
    project = Project.create(tmp_path, "broken", environment)
    project.dg("scaffold", "defs", COMPONENT, "shop")
    project.env.update(settings_for(sample_db_url, tmp_path / "x.duckdb", tmp_path / "work"))
    defs_yaml = project.defs / "shop" / "defs.yaml"
    original = defs_yaml.read_text(encoding="utf-8")

    defs_yaml.write_text(original.replace("  dataset:", "  datset:"), encoding="utf-8")
    result = project.dg("check", "defs", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "datset" in output and "defs.yaml:" in output  # located: file and line

    defs_yaml.write_text(original.replace('  executor: "{{ env.PG_TO_BQ_EXECUTOR }}"',
                                          "  executor: threads"), encoding="utf-8")
    result = project.dg("check", "defs", check=False)
    assert result.returncode != 0
    assert "PostgresMirror attributes: executor='threads' must be one of multiprocess, " \
           "in_process, ecs" in result.stdout + result.stderr
