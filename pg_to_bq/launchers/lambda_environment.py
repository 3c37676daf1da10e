"""Lambda's file system for a Dagster run: the root is read-only, only /tmp is writable and
HOME is unset. Every writable directory goes under `PG_TO_BQ_WORK_DIR` (default
`/tmp/pg_to_bq`): `DAGSTER_HOME` and `DLT_DATA_DIR` when unset, and the instance's local
artifact and compute log storage when the launching instance's directories are not
writable here; Dagster telemetry is disabled."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

import yaml
from dagster._core.instance import InstanceRef
from dagster._serdes.config_class import ConfigurableClassData

from pg_to_bq.planning.settings import DEFAULT_WORK_DIR

WORK_DIR_ENV = "PG_TO_BQ_WORK_DIR"


_LOCAL_ARTIFACT_STORAGE = ("dagster._core.storage.root", "LocalArtifactStorage")


_LOCAL_COMPUTE_LOGS = (
    "dagster._core.storage.local_compute_log_manager",
    "LocalComputeLogManager",
)


def _writable(path: Path) -> bool:
    """Whether `path` can be created or written, judged by its nearest existing ancestor."""
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK)
    return False


def prepare_environment(environ: MutableMapping[str, str] | None = None) -> Path:
    """Point writable state under the work dir (default /tmp/pg_to_bq) and return it."""
    env = os.environ if environ is None else environ
    work_dir = Path(env.get(WORK_DIR_ENV) or DEFAULT_WORK_DIR)
    env[WORK_DIR_ENV] = str(work_dir)
    env.setdefault("DAGSTER_HOME", str(work_dir / "dagster_home"))
    env.setdefault("DLT_DATA_DIR", str(work_dir / "dlt"))
    for key in ("DAGSTER_HOME", "DLT_DATA_DIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return work_dir


def _relocated(
    data: ConfigurableClassData | None, kind: tuple[str, str], base_dir: Path
) -> ConfigurableClassData | None:
    """`data` with its `base_dir` moved to `base_dir` when it is a local store we cannot write."""
    if data is None or (data.module_name, data.class_name) != kind:
        return data
    config = yaml.safe_load(data.config_yaml) or {}
    current = config.get("base_dir")
    if current and _writable(Path(current)):
        return data
    config["base_dir"] = str(base_dir)
    return ConfigurableClassData(data.module_name, data.class_name, yaml.safe_dump(config))


def lambda_instance_ref(ref: InstanceRef, work_dir: Path) -> InstanceRef:
    """The launching instance's ref, made usable on Lambda's read-only file system.

    Run, event and schedule storage stay as they are (they must be shared with the
    launcher, e.g. PostgreSQL). Local artifact and compute log directories that are not
    writable here move under `work_dir`; telemetry is turned off.
    """
    dagster_dir = work_dir / "dagster_home"
    return ref._replace(
        local_artifact_storage_data=_relocated(
            ref.local_artifact_storage_data, _LOCAL_ARTIFACT_STORAGE, dagster_dir
        ),
        compute_logs_data=_relocated(ref.compute_logs_data, _LOCAL_COMPUTE_LOGS, dagster_dir / "storage"),
        settings={**ref.settings, "telemetry": {"enabled": False}},
    )
