"""A local BigQuery (``bqemulator`` 1.4.0) as a real HTTP server, for tests.

The emulator runs in its own process (``run_bigquery_emulator.py``, which
patches it for offline, fail-loudly use -- see that file) on a free port of
127.0.0.1. Tests reach it only through BigQuery's public REST API, with the
real ``google-cloud-bigquery`` client and dlt's real ``bigquery`` destination.

Typical use, once per pytest session::

    @pytest.fixture(scope="session")
    def bigquery_emulator():
        yield from bigquery_emulator_fixture()   # starts, sets env, stops

    def test_x(bigquery_emulator):
        client = bigquery_emulator.client()
        dest = bigquery_emulator.dlt_destination()
        pipeline = dlt.pipeline("p", destination=dest, dataset_name="ds",
                                pipelines_dir=str(tmp_path))

What a dlt pipeline needs (all provided here):

* ``BIGQUERY_EMULATOR_HOST=http://127.0.0.1:PORT`` in ``os.environ`` of the
  process that runs dlt. dlt builds ``bigquery.Client(project, credentials,
  location)`` itself, without client options; google-cloud-bigquery reads
  this variable when a Client is created and then sends every REST call,
  including load-file uploads, to that host. ``bigquery_emulator_fixture`` and
  ``BigQueryEmulator.activate()`` set it; ``BigQueryEmulator.env()`` returns it.
* Credentials dlt accepts and that need no network: ``dlt_destination()``
  passes a static-token ``google.oauth2.credentials.Credentials`` natively (dlt
  rejects anonymous ones; the emulator ignores the token). For config-driven
  code, ``dlt_env()`` puts a generated service-account key JSON (real RSA key,
  ``token_uri`` = the emulator's token endpoint) into
  ``DESTINATION__BIGQUERY__CREDENTIALS``; dlt keeps that ``token_uri``.
  Field-by-field credentials (``...CREDENTIALS__PRIVATE_KEY``/``__TOKEN``...)
  do not work offline: dlt then builds them with Google's token URI (or OAuth
  credentials without expiry), google-auth calls oauth2.googleapis.com before
  the first request, and the client retries for minutes.
* ``project_id`` and ``location`` (``"US"``) -- the emulator keeps no
  per-location data but dlt and the client send it.

Not routed to the emulator: the BigQuery Storage Read API (gRPC). Read results
with ``list(rows)`` / ``query_and_wait`` or pass ``create_bqstorage_client=False``
to ``to_arrow()`` / ``to_dataframe()`` (else the client dials
bigquerystorage.googleapis.com and fails offline).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from google.cloud import bigquery
    from google.oauth2.credentials import Credentials

LAUNCHER = Path(__file__).with_name("run_bigquery_emulator.py")
DEFAULT_PROJECT_ID = "pg-to-bq-test"
DEFAULT_LOCATION = "US"
EMULATOR_HOST_ENV = "BIGQUERY_EMULATOR_HOST"


class BigQueryEmulatorError(RuntimeError):
    """The emulator could not be started (the message carries its log)."""


@dataclass(frozen=True)
class BigQueryEmulator:
    """Connection facts for a running emulator, and builders for its clients."""

    base_url: str
    """``http://127.0.0.1:PORT`` -- the REST root (``/bigquery/v2/...`` below it)."""
    project_id: str
    location: str = DEFAULT_LOCATION
    grpc_endpoint: str | None = None
    pid: int | None = None
    log_path: Path | None = None

    # -- what clients need ------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment a process needs so google-cloud-bigquery (and dlt) use the emulator."""
        return {EMULATOR_HOST_ENV: self.base_url}

    @contextlib.contextmanager
    def activate(self) -> Iterator[BigQueryEmulator]:
        """Set :meth:`env` in ``os.environ`` for the block, restoring previous values."""
        with _patched_environ(self.env()):
            yield self

    def credentials(self) -> Credentials:
        """Static-token OAuth credentials (accepted by dlt; ignored by the emulator)."""
        from google.oauth2.credentials import Credentials

        return Credentials(token="bqemulator-token", quota_project_id=self.project_id)

    def client(self, **kwargs: Any) -> bigquery.Client:
        """A ``google.cloud.bigquery.Client`` for the emulator.

        Works whether or not :meth:`activate` is in effect (the endpoint is
        passed explicitly).
        """
        from google.api_core.client_options import ClientOptions
        from google.cloud import bigquery

        kwargs.setdefault("project", self.project_id)
        kwargs.setdefault("credentials", self.credentials())
        kwargs.setdefault("location", self.location)
        kwargs.setdefault("client_options", ClientOptions(api_endpoint=self.base_url))
        return bigquery.Client(**kwargs)

    def dlt_destination(self, **kwargs: Any) -> Any:
        """``dlt.destinations.bigquery(...)`` pointed at the emulator.

        Extra keyword arguments go to the factory (e.g. ``replace_strategy``,
        ``autodetect_schema``, ``destination_name``). The emulator host itself
        comes from ``BIGQUERY_EMULATOR_HOST``, which must be set in the process
        when the pipeline runs (see :meth:`activate`).
        """
        import dlt

        kwargs.setdefault("credentials", self.credentials())
        kwargs.setdefault("project_id", self.project_id)
        kwargs.setdefault("location", self.location)
        # the emulator answers instantly; fail fast instead of retrying a minute
        kwargs.setdefault("retry_deadline", 10.0)
        return dlt.destinations.bigquery(**kwargs)

    @property
    def token_uri(self) -> str:
        """The emulator's OAuth2 token endpoint (for service-account keys)."""
        return f"{self.base_url}/oauth2/token"

    def key_file(self, directory: Path) -> Path:
        """A fresh service-account key (:meth:`service_account_info`) as a key file in
        `directory`, what `PG_TO_BQ_BIGQUERY_KEY_FILE` names."""
        path = Path(directory) / "key.json"
        path.write_text(json.dumps(self.service_account_info()), encoding="utf-8")
        return path

    def service_account_info(self, client_email: str | None = None) -> dict[str, str]:
        """A fresh service-account key (the JSON a key file holds) usable offline.

        The RSA key is real (generated now), ``token_uri`` points at the
        emulator, so google-auth's real flow runs: parse the PEM, sign a JWT,
        exchange it for a token. Works wherever the key's ``token_uri`` is
        honoured: ``service_account.Credentials.from_service_account_info(info)``
        (:meth:`service_account_credentials`), and dlt when the *whole* JSON is the
        credentials value (``credentials=json.dumps(info)`` or :meth:`dlt_env`).
        Given field by field, dlt uses Google's token URI and hangs offline.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        email = client_email or f"pg-to-bq-test@{self.project_id}.iam.gserviceaccount.com"
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": uuid.uuid4().hex,
            "private_key": pem,
            "client_email": email,
            "client_id": "1",
            "token_uri": self.token_uri,
        }

    def service_account_credentials(self, info: Mapping[str, str] | None = None) -> Any:
        """Native service-account credentials (for the google client) whose token comes
        from the emulator. For dlt pass ``json.dumps(info)`` instead: dlt 1.31 fails on a
        native service-account object (``'Credentials' object is not subscriptable``).
        """
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(
            dict(info or self.service_account_info())
        )

    def dlt_env(self, service_account_info: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment-only dlt configuration for ``destination="bigquery"``.

        The credentials are a whole service-account key JSON in one variable; dlt
        parses it as the native form and keeps its ``token_uri`` (the emulator).
        """
        info = dict(service_account_info or self.service_account_info())
        return {
            **self.env(),
            "DESTINATION__BIGQUERY__CREDENTIALS": json.dumps(info),
            "DESTINATION__BIGQUERY__PROJECT_ID": self.project_id,
            "DESTINATION__BIGQUERY__LOCATION": self.location,
        }

    # -- convenience ------------------------------------------------------

    def is_alive(self) -> bool:
        return _healthy(self.base_url, timeout=2.0)


@dataclass
class BigQueryEmulatorProcess:
    """A started emulator subprocess; :meth:`stop` ends it."""

    emulator: BigQueryEmulator
    process: subprocess.Popen[bytes]
    workdir: Path
    keep_workdir: bool = False
    _stopped: bool = field(default=False, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL if needed. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        proc = self.process
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=timeout)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, max_chars: int = 4000) -> str:
        return _read_tail(self.workdir / "emulator.log", max_chars)

    def __enter__(self) -> BigQueryEmulator:
        return self.emulator

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_bigquery_emulator(
    *,
    project_id: str = DEFAULT_PROJECT_ID,
    location: str = DEFAULT_LOCATION,
    workdir: str | os.PathLike[str] | None = None,
    persistent: bool = False,
    startup_timeout: float = 60.0,
    log_level: str = "warning",
    python: str | None = None,
) -> BigQueryEmulatorProcess:
    """Start the patched emulator on a free 127.0.0.1 port and wait until it answers.

    ``workdir`` holds the log (``emulator.log``), the ready file and, with
    ``persistent=True``, the DuckDB file; a temporary directory (removed on
    stop) is used when not given. Raises :class:`BigQueryEmulatorError` with
    the emulator's log if it does not become ready in ``startup_timeout``.
    """
    keep = workdir is not None
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="bqemulator-"))
    wd.mkdir(parents=True, exist_ok=True)
    ready_file = wd / "ready.json"
    ready_file.unlink(missing_ok=True)
    log_path = wd / "emulator.log"

    cmd = [
        python or sys.executable,
        str(LAUNCHER),
        "--ready-file",
        str(ready_file),
        "--project",
        project_id,
        "--log-level",
        log_level,
        "--watch-stdin",
    ]
    if persistent:
        cmd += ["--data-dir", str(wd / "data")]
    # The emulator reads BQEMU_* variables and a .bqemu.toml in its cwd; give
    # it a clean slate so the caller's environment cannot reconfigure it.
    child_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BQEMU_")}
    child_env.pop(EMULATOR_HOST_ENV, None)
    child_env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=wd,
            env=child_env,
            stdin=subprocess.PIPE,  # closed by us (or by our death) -> emulator exits
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not it
        )
    handle = BigQueryEmulatorProcess(
        emulator=BigQueryEmulator(base_url="", project_id=project_id, location=location),
        process=proc,
        workdir=wd,
        keep_workdir=keep,
    )
    try:
        info = _wait_ready(proc, ready_file, log_path, startup_timeout)
        emulator = BigQueryEmulator(
            base_url=f"http://127.0.0.1:{int(info['rest_port'])}",
            project_id=project_id,
            location=location,
            grpc_endpoint=info.get("grpc_endpoint"),
            pid=proc.pid,
            log_path=log_path,
        )
        deadline = time.monotonic() + startup_timeout
        while not _healthy(emulator.base_url, timeout=2.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BigQueryEmulatorError(
                    "bqemulator wrote its ready file but does not answer HTTP:\n" + _read_tail(log_path)
                )
            time.sleep(0.05)
    except BaseException:
        handle.keep_workdir = True  # keep the log for the post-mortem
        handle.stop()
        raise
    handle.emulator = emulator
    return handle


@contextlib.contextmanager
def bigquery_emulator(*, activate: bool = True, **start_kwargs: Any) -> Iterator[BigQueryEmulator]:
    """Context manager: start the emulator, optionally set its env, stop it on exit."""
    handle = start_bigquery_emulator(**start_kwargs)
    try:
        if activate:
            with handle.emulator.activate():
                yield handle.emulator
        else:
            yield handle.emulator
    finally:
        handle.stop()


def bigquery_emulator_fixture(**start_kwargs: Any) -> Iterator[BigQueryEmulator]:
    """Generator for a pytest fixture: ``yield from bigquery_emulator_fixture()``.

    Starts the emulator, sets ``BIGQUERY_EMULATOR_HOST`` for the fixture's
    lifetime, stops it afterwards.
    """
    with bigquery_emulator(**start_kwargs) as emulator:
        yield emulator


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _wait_ready(
    proc: subprocess.Popen[bytes], ready_file: Path, log_path: Path, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        if ready_file.exists():
            return json.loads(ready_file.read_text())
        code = proc.poll()
        if code is not None:
            raise BigQueryEmulatorError(
                f"bqemulator exited with code {code} before it was ready:\n" + _read_tail(log_path)
            )
        if time.monotonic() > deadline:
            raise BigQueryEmulatorError(
                f"bqemulator not ready after {timeout:.0f}s:\n" + _read_tail(log_path)
            )
        time.sleep(0.05)


def _healthy(base_url: str, timeout: float) -> bool:
    # A real API call, not just an open socket: lists datasets of a project.
    url = f"{base_url}/bigquery/v2/projects/{DEFAULT_PROJECT_ID}/datasets"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _read_tail(path: Path, max_chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-max_chars:]


__all__ = [
    "DEFAULT_LOCATION",
    "DEFAULT_PROJECT_ID",
    "EMULATOR_HOST_ENV",
    "BigQueryEmulator",
    "BigQueryEmulatorError",
    "BigQueryEmulatorProcess",
    "bigquery_emulator",
    "bigquery_emulator_fixture",
    "start_bigquery_emulator",
]
