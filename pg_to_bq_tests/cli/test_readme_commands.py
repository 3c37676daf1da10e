"""Every command block of the README, run as written (issue 22: the front door cannot drift).

Each ```bash block of README.md is matched to a runner below; a block that no runner knows
fails the test, so a new command in the README needs a test. The commands are run
verbatim, from a directory laid out as the repository is (`.venv`, `benchmarks` and
`pg_to_bq_tests` and `pyproject.toml` linked in), with three exceptions, each said where it applies:

- the install commands (`bash install.sh`, `pip install`) are not run here: `.ci/run` runs
  `bash install.sh` and then `.venv/bin/pytest` exactly (checked below), on a clean clone;
- a placeholder the reader replaces (the example PostgreSQL URL) is replaced by the test
  database's URL;
- commands that run until stopped or for a long time (the demo, `dg dev`, the long fuzzer
  run, the three benchmarks) are run verbatim until they show they work (the UI answers; the
  fuzzer collected its tests; each benchmark timed its first path), then stopped with
  Ctrl-C, as a user would. Their full runs are covered by `load/test_migration_fuzzer`,
  `benchmarks/test_benchmark_runs`, `benchmarks/test_many_tables_benchmark_runs` and
  `benchmarks/test_change_capture_benchmark_runs`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pg_to_bq_tests.conftest import run_sql, sample_sql

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE_URL = "postgresql://app@db.internal:5432/shop"

pytestmark = pytest.mark.timeout(1200)


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [m.group(1).strip() for m in re.finditer(r"```bash\n(.*?)```", text, re.S)]


def lines_of(block: str) -> list[str]:
    """The block's commands, comments dropped (a `#` after two spaces, as the README writes
    them)."""
    return [re.split(r"\s{2,}#", line)[0].strip() for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A working directory laid out as the repository's root is for these commands."""
    for name in (".venv", "benchmarks", "pg_to_bq_tests", "pyproject.toml"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_TO_BQ_")}
    env.update(DAGSTER_DISABLE_TELEMETRY="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


def run_until(command: str, cwd: Path, env: dict[str, str], ready: Callable[[str], bool],
              what: str, timeout: float = 300) -> str:
    """Start `command` in bash (its own process group), wait until `ready(output so far)`,
    then stop it with Ctrl-C (SIGINT) and wait for it to end; returns the output."""
    log = cwd / f"run_{abs(hash(command))}.log"
    with log.open("w") as out:
        process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            text = log.read_text(errors="replace")
            if ready(text):
                break
            if process.poll() is not None:
                pytest.fail(f"`{command}` ended ({process.returncode}) before {what}:\n{text[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"`{command}`: no {what} within {timeout:.0f} s:\n{text[-4000:]}")
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
    return log.read_text(errors="replace")


def answers(url: str) -> Callable[[str], bool]:
    def check(_: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return check


# What each README block starts with, and the test that runs it.
BLOCKS = {
    "bash install.sh": "test_ci_runs_the_install_and_test_commands_as_written",
    ".venv/bin/pytest": "test_ci_runs_the_install_and_test_commands_as_written",
    ".venv/bin/pg-to-bq demo": "test_the_demo_command",
    "pip install /path/to/pg_to_bq": "test_the_component_commands",
    "PG_TO_BQ_FUZZ_EXAMPLES=": "test_the_long_fuzzer_command",
    ".venv/bin/python benchmarks/run.py": "test_the_benchmark_command",
    ".venv/bin/python benchmarks/many_tables.py": "test_the_many_tables_benchmark_command",
    ".venv/bin/python benchmarks/change_capture.py": "test_the_change_capture_benchmark_command",
    "export PG_TO_BQ_CDC=true": "test_the_change_capture_commands",
}


def block_starting(prefix: str) -> list[str]:
    """The commands of the one README block whose first command starts with `prefix`."""
    found = [lines_of(b) for b in readme_blocks() if lines_of(b)[0].startswith(prefix)]
    assert len(found) == 1, f"{len(found)} README blocks start with {prefix!r}"
    return found[0]


def test_every_block_has_a_test() -> None:
    for block in readme_blocks():
        first = lines_of(block)[0]
        assert any(first.startswith(prefix) for prefix in BLOCKS), (
            f"a README block no test runs (add it to BLOCKS in {__file__}):\n{block}")
        [test] = {t for prefix, t in BLOCKS.items() if first.startswith(prefix)}
        assert test in globals(), test


def test_ci_runs_the_install_and_test_commands_as_written() -> None:
    """Not run here: `.ci/run` runs the README's install command, then its test command."""
    assert block_starting("bash install.sh") == ["bash install.sh"]
    assert block_starting(".venv/bin/pytest") == [".venv/bin/pytest"]
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands.index("bash install.sh") < commands.index(".venv/bin/pytest")


def test_the_demo_command(checkout: Path) -> None:
    """Until its UI answers; stopped with Ctrl-C, it stops its PostgreSQL too."""
    [command] = block_starting(".venv/bin/pg-to-bq demo")
    run_until(command, checkout, environment(), answers("http://127.0.0.1:3000/server_info"),
              "UI on port 3000", timeout=240)
    assert (checkout / ".pg_to_bq" / "shop.duckdb").exists() or \
        (checkout / ".pg_to_bq").is_dir()
    leftovers = subprocess.run(["pgrep", "-f", str(checkout / ".pg_to_bq")],
                               capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the demo left processes running"


def test_the_component_commands(pg_url: str, tmp_path: Path) -> None:
    """In a `create-dagster` project: every line but the install, the example URL replaced
    by the test database's; `dg dev` until its UI answers."""
    run_sql(pg_url, sample_sql())
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = environment(DAGSTER_HOME=str(home), VIRTUAL_ENV=str(BIN.parent))
    created = subprocess.run([str(BIN / "create-dagster"), "project", "analytics", "--no-uv-sync"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout + created.stderr
    project = tmp_path / "analytics"
    # The project installed in its environment, as the README says (here: on the path).
    env["PYTHONPATH"] = str(project / "src")
    lines = block_starting("pip install /path/to/pg_to_bq")
    assert lines[0].startswith("pip install") and lines[-1] == "dg dev"
    commands = [line.replace(EXAMPLE_URL, pg_url) for line in lines[1:-1]]
    out = subprocess.run(["bash", "-c", "set -e\n" + "\n".join(commands)], cwd=project, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All definitions loaded successfully" in out.stdout + out.stderr
    exports = "\n".join(c for c in commands if c.startswith("export "))
    run_until(f"{exports}\ndg dev", project, env, answers("http://127.0.0.1:3000/server_info"),
              "UI on port 3000", timeout=300)
    listed = subprocess.run(["bash", "-c", f"{exports}\ndg list defs --json"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    keys = {tuple(a["asset_key_parts"]) for a in json.loads(listed.stdout)["assets"]}
    assert ("shop", "duckdb", "raw_shop", "orders") in keys, sorted(keys)[:10]


def test_the_long_fuzzer_command(checkout: Path) -> None:
    """Until pytest has collected the fuzzer's tests and started them."""
    [command] = block_starting("PG_TO_BQ_FUZZ_EXAMPLES=")
    run_until(command, checkout, environment(),
              lambda text: re.search(r"collected [1-9]\d* items?", text) is not None,
              "collected tests", timeout=120)


def test_the_benchmark_command(checkout: Path) -> None:
    """Until it has timed its first path."""
    [command] = block_starting(".venv/bin/python benchmarks/run.py")
    run_until(command, checkout, environment(),
              lambda text: re.search(r"^\s+\S+\s+[\d,]+ rows\s+[\d.]+ s", text, re.M) is not None,
              "timed path", timeout=600)


def test_the_many_tables_benchmark_command(checkout: Path) -> None:
    """Until it has timed its first path."""
    [command] = block_starting(".venv/bin/python benchmarks/many_tables.py")
    run_until(command, checkout, environment(),
              lambda text: re.search(r"^\s+\S+\s+[\d.]+ s\s+CPU", text, re.M) is not None,
              "timed path", timeout=600)


def test_the_change_capture_benchmark_command(checkout: Path) -> None:
    """Until it has timed its first path."""
    [command] = block_starting(".venv/bin/python benchmarks/change_capture.py")
    run_until(command, checkout, environment(),
              lambda text: re.search(r"^\s+cursor \(.*: [\d.]+ s wall", text, re.M) is not None,
              "timed path", timeout=900)


def test_the_change_capture_commands(pg_url: str, tmp_path: Path) -> None:
    """Every line as written, against the sample shop (PostgreSQL with wal_level=logical);
    between the two syncs the shop changes a row without touching a cursor and deletes
    one."""
    run_sql(pg_url, sample_sql())
    env = environment(PG_TO_BQ_SOURCE_URL=pg_url, PG_TO_BQ_WORK_DIR=str(tmp_path / "work"),
                      PG_TO_BQ_DESTINATION=f"duckdb:///{tmp_path / 'shop.duckdb'}")
    lines = block_starting("export PG_TO_BQ_CDC=true")
    syncs = [i for i, line in enumerate(lines) if line == "pg-to-bq sync"]
    assert len(syncs) == 2, lines
    change = ("UPDATE customers SET full_name = full_name || ' (changed)' WHERE id = 1; "
              "DELETE FROM \"顧客メモ\" WHERE id = (SELECT min(id) FROM \"顧客メモ\")")
    outputs = []
    for index, line in enumerate(lines):
        if index == syncs[1]:
            run_sql(pg_url, change)
        done = subprocess.run(["bash", "-c", "\n".join(lines[:1] + [line])], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}:\n{done.stdout}{done.stderr}"
        outputs.append(done.stdout)
    discover, first, second, status, drop = outputs[1:]
    assert "the server and the role allow it" in discover, discover
    assert "first run with change capture: slot" in first, first
    assert "change capture: 2 change(s) to 2 table(s)" in second, second
    assert "(changes)" in second
    assert "WAL held back" in status, status
    assert "dropped" in drop, drop
