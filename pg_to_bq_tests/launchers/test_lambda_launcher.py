"""LambdaRunLauncher and its handler, end to end without an AWS account.

The run path is the real one: `dagster job launch` → the instance's `LambdaRunLauncher`
→ boto3 `invoke(InvocationType="Event")` → a local Lambda (Invoke + Runtime API, see
`lambda_runtime_api`) → the real `awslambdaric` → `lambda_handler.handler`. The runtime
runs under bubblewrap the way Lambda runs a function: read-only root, only /tmp
writable, no writable /dev/shm, HOME unset, an address-space limit and a wall-clock
limit. The Dagster instance lives in a real PostgreSQL shared by the test and the
sandbox.

A separate test checks the `invoke` request against moto in server mode.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
)

from pg_to_bq.launchers.lambda_handler import in_process_run_config, parse_event
from pg_to_bq.launchers.lambda_launcher import (
    DEADLINE_TAG,
    EXITED_TAG,
    FUNCTION_TAG,
    INVOKED_AT_TAG,
    REQUEST_ID_TAG,
    LambdaRunLauncher,
)
from pg_to_bq.postgres.embedded import EmbeddedPostgres, free_port
from pg_to_bq_tests.launchers import toy_definitions
from pg_to_bq_tests.launchers.lambda_runtime_api import LocalLambda

REPO_ROOT = Path(__file__).resolve().parents[2]
TOY_MODULE = "pg_to_bq_tests.launchers.toy_definitions"
HANDLER = "pg_to_bq.launchers.lambda_handler.handler"
DAGSTER_CLI = str(Path(sys.executable).with_name("dagster"))
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SANDBOX_MEMORY_BYTES = 2 * 1024**3  # address space, not RSS: threads reserve a lot of it
SANDBOX_TIME_LIMIT_S = 120
DEADLINE_MARGIN_S = 4

pytestmark = pytest.mark.timeout(300)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's tmp dir: PostgreSQL runs as an unprivileged user, and every pytest
    # session (ours or a concurrent one) resets /tmp/pytest-of-root to mode 0700.
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="pg_to_bq_lambda_pg_"))).start()
    try:
        yield pg
    finally:
        pg.destroy()


class CodeServer:
    """The toy code location served by `dagster code-server`, as a deployment serves it.

    Started without waiting, so it loads while PostgreSQL starts; `launch` waits for it.
    """

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [DAGSTER_CLI, "code-server", "start", "-m", TOY_MODULE,
                 "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO_ROOT,
                env={**os.environ, "DAGSTER_HOME": str(log_path.parent)},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._ready = False

    def wait_ready(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while not self._ready and time.monotonic() < deadline and self.process.poll() is None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                self._ready = True
                break
            time.sleep(0.2)
        if not self._ready:
            pytest.fail(f"dagster code-server did not start:\n{self.log_path.read_text()[-3000:]}")
        return self.port

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


@pytest.fixture(scope="module")
def code_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CodeServer]:
    server = CodeServer(tmp_path_factory.mktemp("code_server") / "code_server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local_lambda() -> Iterator[LocalLambda]:
    with LocalLambda() as service:
        yield service


def _storage_url(postgres: EmbeddedPostgres) -> str:
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, whose server-side parameters break
    # dagster-postgres's `NOTIFY run_events, %(id)s`; dagster-postgres needs psycopg2.
    return postgres.url().replace("postgresql://", "postgresql+psycopg2://", 1)


def _write_dagster_home(path: Path, postgres: EmbeddedPostgres, launcher_config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "storage": {"postgres": {"postgres_url": _storage_url(postgres)}},
        # Launch at submission; the default queued coordinator needs the daemon.
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "DefaultRunCoordinator",
        },
        "run_launcher": {
            "module": "pg_to_bq.launchers.lambda_launcher",
            "class": "LambdaRunLauncher",
            "config": launcher_config,
        },
        "run_monitoring": {
            "enabled": True,
            # The handler polls the run status this often (Dagster's own setting for it).
            "cancellation_thread_poll_interval_seconds": 1,
        },
        "telemetry": {"enabled": False},
    }
    (path / "dagster.yaml").write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def dagster_home(
    tmp_path_factory: pytest.TempPathFactory, postgres: EmbeddedPostgres, local_lambda: LocalLambda
) -> Path:
    return _write_dagster_home(
        tmp_path_factory.mktemp("lambda_dagster_home"),
        postgres,
        {
            "function_name": local_lambda.function_name,
            "region_name": local_lambda.region,
            "endpoint_url": local_lambda.endpoint_url,
            "health_check_grace_seconds": 2,
        },
    )


@pytest.fixture(scope="module")
def instance(dagster_home: Path) -> Iterator[DagsterInstance]:
    with DagsterInstance.from_config(str(dagster_home)) as dagster_instance:
        yield dagster_instance


class Sandbox:
    """`python -m awslambdaric` under bubblewrap, as Lambda runs a container image."""

    def __init__(self, local_lambda: LocalLambda, dagster_home: Path, log_path: Path, margin_s: float):
        self.log_path = log_path
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TZ": ":UTC",
            "PYTHONUNBUFFERED": "1",
            "MALLOC_ARENA_MAX": "2",
            "LAMBDA_TASK_ROOT": str(REPO_ROOT),
            "PYTHONPATH": str(REPO_ROOT),
            "_HANDLER": HANDLER,
            "AWS_LAMBDA_RUNTIME_API": local_lambda.runtime_api,
            "AWS_LAMBDA_FUNCTION_NAME": local_lambda.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{local_lambda.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"2026/11/27/[$LATEST]{uuid.uuid4().hex}",
            "AWS_REGION": local_lambda.region,
            "PG_TO_BQ_LAMBDA_DEADLINE_MARGIN_S": str(margin_s),
        }
        command = [
            "timeout", "--signal=KILL", str(SANDBOX_TIME_LIMIT_S),
            "bwrap",
            "--ro-bind", "/", "/",
            "--tmpfs", "/tmp",
            # The code and its virtualenv stay visible (read-only) when the checkout lives
            # under /tmp, like the image's own files on Lambda.
            "--ro-bind", str(REPO_ROOT), str(REPO_ROOT),
            "--ro-bind", sys.prefix, sys.prefix,
            # The launching instance's DAGSTER_HOME exists but is read-only, like a
            # directory baked into the image.
            "--ro-bind", str(dagster_home), str(dagster_home),
            "--dev", "/dev",
            "--remount-ro", "/dev",  # no writable /dev/shm, as on Lambda
            "--proc", "/proc",
            "--unshare-pid",
            "--die-with-parent",
            "--unsetenv", "HOME",
            "--chdir", str(REPO_ROOT),
            "--",
            "prlimit", f"--as={SANDBOX_MEMORY_BYTES}", "--",
            sys.executable, "-m", "awslambdaric", HANDLER,
        ]  # fmt: skip
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def sandbox(
    request: pytest.FixtureRequest, local_lambda: LocalLambda, dagster_home: Path, tmp_path: Path
) -> Iterator[Sandbox]:
    """A fresh Lambda runtime; parametrize indirectly to change the deadline margin."""
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap (apt package bubblewrap)")
    margin_s = getattr(request, "param", DEADLINE_MARGIN_S)
    runtime = Sandbox(local_lambda, dagster_home, tmp_path / "lambda.log", margin_s)
    try:
        yield runtime
    finally:
        runtime.kill()
        local_lambda.forget_runtimes()
        local_lambda.timeout_s = 900.0


# --- helpers ----------------------------------------------------------------------------


def launch(dagster_home: Path, code_server: CodeServer, job: str, run_config: dict | None = None) -> str:
    """Launch `job` of the toy code location through the instance's run launcher."""
    run_id = str(uuid.uuid4())
    command = [
        DAGSTER_CLI, "job", "launch", "--grpc-host", "127.0.0.1",
        "--grpc-port", str(code_server.wait_ready()), "-j", job, "--run-id", run_id,
    ]  # fmt: skip
    if run_config:
        command += ["--config-json", json.dumps(run_config)]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **AWS_ENV, "DAGSTER_HOME": str(dagster_home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return run_id


def wait_for_run(
    instance: DagsterInstance, run_id: str, sandbox: Sandbox, timeout: float = 60.0
) -> DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        if sandbox.process.poll() is not None:
            pytest.fail(f"the Lambda runtime exited ({sandbox.process.returncode}):\n{sandbox.log()}")
        time.sleep(0.25)
    pytest.fail(f"run {run_id} did not finish within {timeout}s:\n{sandbox.log()}")


def wait_for_event(
    instance: DagsterInstance, run_id: str, event_type: DagsterEventType, sandbox: Sandbox
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if instance.all_logs(run_id, of_type=event_type):
            return
        time.sleep(0.25)
    pytest.fail(f"no {event_type} in run {run_id}:\n{sandbox.log()}")


def messages(instance: DagsterInstance, run_id: str, event_type: DagsterEventType) -> list[str]:
    return [
        entry.dagster_event.message or ""
        for entry in instance.all_logs(run_id, of_type=event_type)
        if entry.dagster_event
    ]


# --- the Lambda path --------------------------------------------------------------------


def test_run_succeeds_in_lambda(
    code_server: CodeServer,
    instance: DagsterInstance,
    dagster_home: Path,
    local_lambda: LocalLambda,
    sandbox: Sandbox,
) -> None:
    # The job's default executor is multiprocess, configured explicitly here; Lambda has
    # no /dev/shm, so the handler must still run it in-process.
    run_id = launch(
        dagster_home,
        code_server,
        "quick_job",
        {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}},
    )
    run = wait_for_run(instance, run_id, sandbox)
    assert run.status == DagsterRunStatus.SUCCESS, sandbox.log()

    request_id = run.tags[REQUEST_ID_TAG]
    invocation = local_lambda.wait_finished(request_id, timeout=30)
    assert invocation.invocation_type == "Event"
    assert invocation.error is None
    assert json.loads(invocation.response) == {
        "run_id": run_id,
        "status": "SUCCESS",
        "request_id": request_id,
    }
    assert run.tags[FUNCTION_TAG] == local_lambda.function_name
    assert float(run.tags[DEADLINE_TAG]) == pytest.approx(invocation.deadline_ms / 1000, abs=2)

    materialization = instance.get_latest_materialization_event(AssetKey("quick_table"))
    assert materialization is not None and materialization.run_id == run_id
    metadata = materialization.asset_materialization.metadata
    assert metadata["work_dir"].value == "/tmp/pg_to_bq"
    assert metadata["home_set"].value is False
    # The launching instance's DAGSTER_HOME is read-only in the sandbox: storage moved to /tmp.
    assert metadata["storage_dir"].value.startswith("/tmp/pg_to_bq/")
    # In-process: the asset ran in the handler's own process.
    worker_started = [
        entry
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
        if (entry.dagster_event.message or "").startswith("Started run worker in Lambda")
    ]
    assert len(worker_started) == 1
    assert f"(pid {metadata['pid'].value}," in worker_started[0].dagster_event.message


def test_run_fails_at_lambda_deadline(
    code_server: CodeServer,
    instance: DagsterInstance,
    dagster_home: Path,
    local_lambda: LocalLambda,
    sandbox: Sandbox,
) -> None:
    local_lambda.timeout_s = 14
    run_id = launch(dagster_home, code_server, "slow_job")
    run = wait_for_run(instance, run_id, sandbox, timeout=40)
    assert run.status == DagsterRunStatus.FAILURE, sandbox.log()

    failures = messages(instance, run_id, DagsterEventType.RUN_FAILURE)
    assert len(failures) == 1
    assert failures[0].startswith("Lambda deadline reached after ")
    assert f"stopped {DEADLINE_MARGIN_S}s before the function's timeout" in failures[0]
    assert "pg_to_bq/compute=ecs" in failures[0]

    # The handler returned before Lambda's deadline, so Lambda neither kills nor retries it.
    invocation = local_lambda.wait_finished(run.tags[REQUEST_ID_TAG], timeout=30)
    assert invocation.error is None
    assert json.loads(invocation.response)["status"] == "FAILURE"
    assert invocation.finished_at * 1000 < invocation.deadline_ms
    assert not instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)


def test_run_is_canceled_in_lambda(
    code_server: CodeServer,
    instance: DagsterInstance,
    dagster_home: Path,
    local_lambda: LocalLambda,
    sandbox: Sandbox,
) -> None:
    run_id = launch(dagster_home, code_server, "slow_job")
    wait_for_event(instance, run_id, DagsterEventType.STEP_START, sandbox)

    assert instance.run_launcher.terminate(run_id) is True
    run = wait_for_run(instance, run_id, sandbox, timeout=30)
    assert run.status == DagsterRunStatus.CANCELED, sandbox.log()

    invocation = local_lambda.wait_finished(run.tags[REQUEST_ID_TAG], timeout=30)
    assert json.loads(invocation.response)["status"] == "CANCELED"
    assert instance.run_launcher.terminate(run_id) is False


def test_run_config_is_adapted_to_the_in_process_executor() -> None:
    ops = {"ops": {"a": {"config": {"x": 1}}}}
    assert in_process_run_config(ops) == ops
    retries = {"enabled": {}}
    multi = {"multiprocess": {"max_concurrent": 4, "retries": retries, "start_method": {}}}
    assert in_process_run_config({**ops, "execution": {"config": multi}}) == {
        **ops,
        "execution": {"config": {"retries": retries}},
    }
    assert in_process_run_config({"execution": {"config": {"in_process": None}}}) == {
        "execution": {"config": {}}
    }
    assert in_process_run_config({"execution": {"config": {"max_concurrent": 2}}}) == {
        "execution": {"config": {}}
    }


# --- run monitoring ---------------------------------------------------------------------


def _started_run(instance: DagsterInstance, tags: dict[str, str]) -> DagsterRun:
    job_def = toy_definitions.defs.resolve_job_def("quick_job")
    return instance.create_run_for_job(job_def=job_def, status=DagsterRunStatus.STARTED, tags=tags)


def test_run_monitoring_fails_a_run_whose_lambda_is_gone(instance: DagsterInstance) -> None:
    launcher = instance.run_launcher
    assert isinstance(launcher, LambdaRunLauncher)
    assert launcher.supports_check_run_worker_health
    now = time.time()
    base = {FUNCTION_TAG: "pg-to-bq-runs", REQUEST_ID_TAG: "req-1", INVOKED_AT_TAG: f"{now - 5}"}

    running = _started_run(instance, {**base, DEADLINE_TAG: f"{now + 600}"})
    assert launcher.check_run_worker_health(running).status.value == "RUNNING"

    # Killed by Lambda (timeout, out of memory): the deadline plus grace has passed.
    killed = _started_run(instance, {**base, DEADLINE_TAG: f"{now - 30}"})
    result = launcher.check_run_worker_health(killed)
    assert result.status.value == "FAILED"
    assert "req-1" in result.msg and "deadline" in result.msg
    assert result.run_worker_id == "req-1"

    # The handler left its exit marker but the run never reached a final status.
    exited = _started_run(instance, {**base, DEADLINE_TAG: f"{now + 600}", EXITED_TAG: f"{now}"})
    result = launcher.check_run_worker_health(exited)
    assert result.status.value == "FAILED"
    assert "exited" in result.msg

    # Never started by the handler: bounded by invocation time + the function's timeout.
    launcher_with_timeout = LambdaRunLauncher(function_name="pg-to-bq-runs", timeout_seconds=60)
    queued = _started_run(instance, {**base, INVOKED_AT_TAG: f"{now - 600}"})
    assert launcher_with_timeout.check_run_worker_health(queued).status.value == "FAILED"
    fresh = _started_run(instance, base)
    assert launcher_with_timeout.check_run_worker_health(fresh).status.value == "RUNNING"


@pytest.mark.parametrize("sandbox", [0], indirect=True, ids=["no_margin"])
def test_run_monitoring_detects_a_killed_lambda(
    code_server: CodeServer,
    instance: DagsterInstance,
    dagster_home: Path,
    local_lambda: LocalLambda,
    sandbox: Sandbox,
) -> None:
    local_lambda.timeout_s = 12
    run_id = launch(dagster_home, code_server, "slow_job")
    wait_for_event(instance, run_id, DagsterEventType.STEP_START, sandbox)
    # Lambda kills the function (as on a timeout or out of memory): no chance to report.
    sandbox.kill()
    local_lambda.forget_runtimes()

    run = instance.get_run_by_id(run_id)
    assert run.status == DagsterRunStatus.STARTED
    assert instance.run_launcher.check_run_worker_health(run).status.value == "RUNNING"
    deadline = float(run.tags[DEADLINE_TAG])
    time.sleep(max(0.0, deadline + 2 - time.time()) + 0.5)  # past deadline + grace (2 s)
    result = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run_id))
    assert result.status.value == "FAILED", result
    assert run.tags[REQUEST_ID_TAG] in result.msg


# --- the Invoke request, against moto ---------------------------------------------------


@pytest.fixture
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        server.stop()


@pytest.mark.aws
def test_invoke_request_against_moto(
    moto_server: str,
    postgres: EmbeddedPostgres,
    code_server: CodeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import requests

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    # moto serves Lambda Invoke only with its Docker-free backend (no execution).
    requests.post(f"{moto_server}/moto-api/config", json={"lambda": {"use_docker": False}}).raise_for_status()
    iam = boto3.client("iam", endpoint_url=moto_server)
    role = iam.create_role(
        RoleName="pg-to-bq-lambda",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]
    client = boto3.client("lambda", endpoint_url=moto_server)
    function = client.create_function(
        FunctionName="pg-to-bq-runs",
        Role=role["Arn"],
        PackageType="Image",
        Code={"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/pg-to-bq:latest"},
        Timeout=900,
        MemorySize=2048,
    )

    # moto's recorder writes to ./moto_recording of this process.
    monkeypatch.chdir(tmp_path)
    requests.post(f"{moto_server}/moto-api/recorder/reset-recording")
    requests.post(f"{moto_server}/moto-api/recorder/start-recording")
    home = _write_dagster_home(
        tmp_path / "dagster_home",
        postgres,
        {"function_name": function["FunctionArn"], "region_name": "us-east-1",
         "endpoint_url": moto_server},
    )  # fmt: skip
    run_id = launch(home, code_server, "quick_job")
    requests.post(f"{moto_server}/moto-api/recorder/stop-recording")
    recording = requests.get(f"{moto_server}/moto-api/recorder/download-recording").text

    invokes = [
        entry
        for entry in map(json.loads, recording.splitlines())
        if entry["method"] == "POST" and entry["url"].endswith("/invocations")
    ]
    assert len(invokes) == 1
    headers = {key.lower(): value for key, value in invokes[0]["headers"].items()}
    assert headers["x-amz-invocation-type"] == "Event"
    assert "/2015-03-31/functions/" in invokes[0]["url"]
    body = invokes[0]["body"]
    if invokes[0]["body_encoded"]:
        body = base64.b64decode(body).decode()
    args = parse_event(json.loads(body))
    assert args.run_id == run_id
    assert args.instance_ref is not None
    assert args.job_origin.job_name == "quick_job"

    with DagsterInstance.from_config(str(home)) as moto_instance:
        run = moto_instance.get_run_by_id(run_id)
        assert run.status == DagsterRunStatus.STARTING  # moto accepts, never executes
        assert run.tags[FUNCTION_TAG] == function["FunctionArn"]
        assert run.tags[REQUEST_ID_TAG]
        # The launcher reads the timeout from the function when not configured.
        launcher = moto_instance.run_launcher
        assert launcher.function_timeout_seconds() == 900
        assert moto_instance.run_launcher.terminate(run_id) is True
        assert moto_instance.get_run_by_id(run_id).status == DagsterRunStatus.CANCELING
