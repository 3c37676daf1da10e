"""Where dlt pipelines keep their files, and whether one has a load package an interrupted
run left behind: known without importing dlt (`pg_to_bq.load.group` makes a pipeline only
when it has rows to load, or a package to finish)."""

from __future__ import annotations

from pathlib import Path

# Side loads (fills and delete passes) use pipelines of their own, never a table's: the
# change capture step's is this one, a group's `side_pipeline` its own.
SIDE_PIPELINE = "pg_to_bq__side_loads"


def side_pipeline(pipeline_name: str) -> str:
    """The side pipeline of the group loaded by `pipeline_name`. One per group, not one for
    all: a dlt pipeline's schema lists every table it ever loaded and each load handles all
    of it, so one side pipeline for 1,000 tables' keys made each step's side load cost ~33
    ms a table instead of ~23."""
    return f"{SIDE_PIPELINE}__{pipeline_name.removeprefix('pg_to_bq__')}"


# The folders of a pipeline's working directory that hold packages not yet loaded (dlt's
# layout: extracted packages wait for normalize, normalized ones for load).
PENDING_PACKAGE_FOLDERS = ("normalize/extracted", "load/new", "load/normalized")


def pipelines_dir(work_dir: Path) -> Path:
    return work_dir / "pipelines"


def working_dir(work_dir: Path, pipeline_name: str) -> Path:
    """The pipeline's own directory (dlt's `Pipeline.working_dir`)."""
    return pipelines_dir(work_dir) / pipeline_name


def files_dir(work_dir: Path, pipeline_name: str) -> Path:
    """Where a group's reads write their parquet files: beside the pipeline's working
    directory, not in it (dlt wipes that directory when it makes a pipeline it has no state
    for, or finds the destination empty, which it does after the reads); under the same
    root, so a file is hard-linked into a load package, not copied."""
    return work_dir / "pg_to_bq_files" / pipeline_name


def has_pending_packages(work_dir: Path, pipeline_name: str) -> bool:
    """Whether the pipeline has a package that an interrupted run extracted or normalized
    and did not load."""
    root = working_dir(work_dir, pipeline_name)
    for folder in PENDING_PACKAGE_FOLDERS:
        path = root / folder
        if path.is_dir() and any(child.is_dir() for child in path.iterdir()):
            return True
    return False
