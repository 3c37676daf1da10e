"""Wiring: settings → catalog snapshot → plans → assets, jobs, schedules and resources."""


import contextlib
import gc
import logging
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

from pg_to_bq.assets import (
    APPLY_DELETES_TAG,
    PARTITIONED_TAG,
    SCHEDULE_TAG,
    AssetContext,
    build_assets,
)
from pg_to_bq.catalog import Catalog, discover, read_snapshot, write_snapshot
from pg_to_bq.overrides import load_overrides
from pg_to_bq.plan import TablePlan, build_plans
from pg_to_bq.resources import Destination, SourceDatabase, read_secret, secrets_manager
from pg_to_bq.secrets import source_url_from_secret
from pg_to_bq.settings import PREFIX, Settings, SettingsError
from pg_to_bq.source import SourceUnreachable, connect

log = logging.getLogger(__name__)

NIGHTLY_JOB = "mirror_all_tables"
NIGHTLY_SCHEDULE = "nightly_mirror"
DELETE_PASS_SCHEDULE = "delete_pass"
REFRESH_JOB = "refresh_catalog"


@dataclass(frozen=True)
class CatalogLoad:
    catalog: Catalog
    origin: str  # "snapshot", "live", "stale snapshot" or "none"
    warning: str | None = None


def resolve_source_url(settings: Settings) -> str:
    """The source URL, reading the secret when only a secret id is configured."""
    if settings.source_url:
        return settings.source_url
    assert settings.source_secret is not None
    secrets = secrets_manager(settings.aws_region)
    return source_url_from_secret(read_secret(secrets, settings.source_secret),
                                  settings.source_secret)


def refresh_catalog(settings: Settings) -> Catalog:
    """Query PostgreSQL (one query) and write the snapshot."""
    url = resolve_source_url(settings)
    with connect(url, statement_timeout_s=settings.statement_timeout_s) as conn:
        catalog = discover(conn, settings.schemas, settings.include_views)
    write_snapshot(catalog, settings.snapshot_path)
    return catalog


def load_catalog(settings: Settings, refresh: bool = False) -> CatalogLoad:
    """The snapshot when there is one; otherwise (or when asked) a live discovery.

    When PostgreSQL cannot be reached the last snapshot is used with a warning, so the
    code location keeps loading; without any snapshot the catalog is empty.
    """
    snapshot = None if refresh else read_snapshot(settings.snapshot_path)
    if snapshot is not None:
        return CatalogLoad(snapshot, "snapshot")
    try:
        return CatalogLoad(refresh_catalog(settings), "live")
    except (SourceUnreachable, OSError, ValueError) as exc:
        stale = read_snapshot(settings.snapshot_path)
        if stale is not None:
            warning = (f"PostgreSQL unreachable ({exc}); using the catalog snapshot of "
                       f"{stale.discovered_at} from {settings.snapshot_path}")
            return CatalogLoad(stale, "stale snapshot", warning)
        if refresh:
            raise
        warning = (f"PostgreSQL unreachable ({exc}) and no catalog snapshot at "
                   f"{settings.snapshot_path}: no table assets until discovery succeeds "
                   f"(run `pg-to-bq discover` or the {REFRESH_JOB} job)")
        return CatalogLoad(Catalog(tables=()), "none", warning)


def plans_for(settings: Settings, catalog: Catalog) -> list[TablePlan]:
    """Select tables by the include/exclude settings and plan them."""
    if catalog.tables:
        unmatched = catalog.unmatched_patterns(settings.include)
        if unmatched:
            raise SettingsError(
                f"{PREFIX}INCLUDE pattern(s) {unmatched} match no table; tables look like "
                f"{', '.join(t.qualified_name for t in catalog.tables[:3])}"
            )
    selected = catalog.select(settings.include, settings.exclude)
    return build_plans(selected, settings.destination.kind, load_overrides(settings.tables_file))


def asset_context(settings: Settings) -> AssetContext:
    if settings.destination.kind == "bigquery":
        prefix = f"{settings.bigquery_project}.{settings.dataset}"
    else:
        assert settings.destination.path is not None
        prefix = f"{settings.destination.path.stem}.{settings.dataset}"
    return AssetContext(
        destination_kind=settings.destination.kind,
        dataset=settings.dataset,
        qualified_prefix=prefix,
        owners=settings.owners,
        tags=tuple(sorted(settings.tags.items())),
        freshness=timedelta(hours=settings.freshness_hours),
        overrides=load_overrides(settings.tables_file),
        schemas=settings.schemas,
        include_views=settings.include_views,
        step_tables=settings.step_tables,
        own_step_bytes=settings.own_step_bytes,
        fingerprint_rows=settings.fingerprint_rows,
    )


def uses_secrets(settings: Settings) -> bool:
    """Is any value read from AWS Secrets Manager?"""
    return bool(settings.source_secret or settings.hash_salt_secret
                or settings.bigquery_credentials_secret)


def build_resources(settings: Settings) -> dict[str, object]:
    """The source and destination resources, and the `secrets` resource (AWS Secrets
    Manager) when a secret id is configured; without one nothing reads a secret."""
    secrets = secrets_manager(settings.aws_region) if uses_secrets(settings) else None
    dependency = {"secrets": secrets} if secrets is not None else {}
    resources: dict[str, object] = {
        "source": SourceDatabase(
            url=dg.EnvVar(f"{PREFIX}SOURCE_URL") if settings.source_url else None,
            secret_id=settings.source_secret,
            statement_timeout_s=settings.statement_timeout_s,
            batch_bytes=settings.batch_bytes,
            hash_salt=dg.EnvVar(f"{PREFIX}HASH_SALT") if settings.hash_salt_set else None,
            hash_salt_secret_id=settings.hash_salt_secret,
            parallel_streams=settings.parallel_streams,
            parallel_min_bytes=settings.parallel_min_bytes,
            **dependency,
        ),
        "destination": Destination(
            kind=settings.destination.kind,
            duckdb_path=str(settings.destination.path) if settings.destination.path else None,
            duckdb_settings=dict(settings.destination.duckdb_settings) or None,
            dataset=settings.dataset,
            work_dir=str(settings.work_dir),
            bigquery_project=settings.bigquery_project,
            bigquery_location=settings.bigquery_location,
            bigquery_credentials_secret_id=settings.bigquery_credentials_secret,
            bigquery_key_file=str(settings.bigquery_key_file) if settings.bigquery_key_file
            else None,
            **dependency,
        ),
    }
    if secrets is not None:
        resources["secrets"] = secrets
    return resources


@dg.op(description="Re-read the PostgreSQL catalog (one query) and write the snapshot; "
                   "reload the code location afterwards to see new tables.")
def refresh_catalog_op(context: dg.OpExecutionContext) -> None:
    settings = Settings.from_env()
    catalog = refresh_catalog(settings)
    context.log.info(f"catalog snapshot written to {settings.snapshot_path}: "
                     f"{len(catalog.tables)} tables")
    context.add_output_metadata({"tables": len(catalog.tables),
                                 "snapshot": str(settings.snapshot_path)})


@dg.job(name=REFRESH_JOB, description="Rediscover PostgreSQL tables (then reload the code location)")
def refresh_catalog_job() -> None:
    refresh_catalog_op()


# What a table's step process needs, loaded once per run by the multiprocess executor's fork
# server and inherited by every step it forks: the code location (its definitions, built
# from the catalog), the load path's libraries (dlt, pyarrow, DuckDB, the ADBC driver, psycopg
# for the schema check), and what Dagster's step process imports to reach its instance's
# storage (~0.9 s a step otherwise; found with PYTHONPROFILEIMPORTTIME). Nothing here may
# start a thread or open a connection when imported (a test checks): forking copies neither.
FORKSERVER_PRELOAD = ("pg_to_bq.definitions", "pg_to_bq.load", "pg_to_bq.duckdb_destination",
                      "pg_to_bq.adbc_session", "psycopg", "dlt.sources.helpers.requests",
                      "dagster._cli", "dagster._core.storage.base_storage")


def executor_for(name: str) -> dg.ExecutorDefinition | None:
    """The nightly job's executor: multiprocess (a process per table, forked from a server that
    has loaded the code location once: Dagster's default `spawn` starts every step from an
    empty interpreter, ~5 CPU-s of imports and definitions each), in-process, or
    dagster-aws's `ecs_executor` (one ECS task per table) for runs that outgrow one container."""
    if name == "ecs":
        from dagster_aws.ecs import ecs_executor

        return ecs_executor
    if name == "in_process":
        return dg.in_process_executor
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return None
    return dg.multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": list(FORKSERVER_PRELOAD)}}},
        name="multiprocess",
    )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building 1,000 tables' definitions allocates millions of long-lived objects, and the
    cyclic garbage collector rescanned them again and again (a quarter of the build time).
    Nothing built here is garbage, so collection waits until the build is done."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Everything the code location serves. Reads the catalog snapshot, not PostgreSQL."""
    with _gc_paused():
        return _build_definitions(settings)


def _build_definitions(settings: Settings | None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    loaded = load_catalog(settings)
    if loaded.warning:
        log.warning(loaded.warning)
    plans = plans_for(settings, loaded.catalog)
    for plan in plans:
        if not plan.columns and plan.error is None:
            log.warning("table %s has no loadable columns and is skipped", plan.name)
    source_specs, table_assets = build_assets(plans, asset_context(settings))
    jobs: list = [refresh_catalog_job]
    schedules: list = []
    if any(p.scheduled and p.partition is None and (p.columns or p.error) for p in plans):
        nightly = dg.define_asset_job(
            NIGHTLY_JOB,
            selection=dg.AssetSelection.tag(SCHEDULE_TAG, "nightly"),
            description="Load every scheduled table (small tables share a step, large ones "
                        "have their own)",
            executor_def=executor_for(settings.executor),
        )
        jobs.append(nightly)
        schedules.append(
            dg.ScheduleDefinition(
                name=NIGHTLY_SCHEDULE,
                job=nightly,
                cron_schedule=settings.schedule_cron,
                execution_timezone=settings.schedule_timezone,
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="Mirror every table nightly (incremental where a cursor allows)",
            )
        )
        schedules.append(
            dg.ScheduleDefinition(
                name=DELETE_PASS_SCHEDULE,
                job=nightly,
                cron_schedule=settings.deletes_cron,
                execution_timezone=settings.schedule_timezone,
                tags={APPLY_DELETES_TAG: "true"},
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="Load every table, then delete destination rows of merged tables "
                            "whose primary key no longer exists in PostgreSQL",
            )
        )
    for granularity in ("day", "month"):
        partitioned = [p for p in plans if p.partition and p.partition.granularity == granularity
                       and p.scheduled]
        if partitioned:
            job = dg.define_asset_job(
                f"mirror_{granularity}_partitions",
                selection=dg.AssetSelection.tag(PARTITIONED_TAG, granularity),
            )
            jobs.append(job)
            schedules.append(dg.build_schedule_from_partitioned_job(
                job, name=f"nightly_{granularity}_partitions",
                default_status=dg.DefaultScheduleStatus.RUNNING))
    return dg.Definitions(
        assets=[*source_specs, *table_assets],
        jobs=jobs,
        schedules=schedules,
        resources=build_resources(settings),
        # Also what the UI's materializations run with (Dagster's implicit asset job); with
        # `ecs`, those run in the run's own task.
        executor=executor_for(settings.executor) if settings.executor != "ecs" else None,
    )
