"""One mirrored PostgreSQL database as Dagster definitions.

The one builder both ways of deploying pg_to_bq share: the standalone code location
(`pg_to_bq.definitions`, settings from `PG_TO_BQ_*`, the catalog snapshot a file) and the
Dagster component (`pg_to_bq.orchestration.component.PostgresMirror`, settings from its YAML attributes,
the catalog its defs state). It touches nothing outside: the catalog is given, secrets stay
behind `dg.EnvVar` and secret ids, and dlt is imported only when a step runs.

    settings + catalog → plans → table assets in steps, the catalog asset,
                         the nightly job and schedules, resources
"""

from __future__ import annotations

import multiprocessing

import dagster as dg

from pg_to_bq import collector
from pg_to_bq.alerts.settings import AlertSettings
from pg_to_bq.orchestration.catalog_asset import CatalogKeeper, build_catalog_asset
from pg_to_bq.orchestration.names import (
    APPLY_DELETES_TAG,
    CHANGES_ONLY_TAG,
    PARTITIONED_TAG,
    SCHEDULE_TAG,
    AssetContext,
    InstanceNames,
)
from pg_to_bq.orchestration.resources import Destination, SourceDatabase, secrets_manager
from pg_to_bq.orchestration.step_assets import build_assets
from pg_to_bq.planning.catalog import Catalog
from pg_to_bq.planning.settings import Settings, freshness_window
from pg_to_bq.planning.tables import plans_for

NIGHTLY_JOB = "mirror_all_tables"
NIGHTLY_SCHEDULE = "nightly_mirror"
DELETE_PASS_SCHEDULE = "delete_pass"
REFRESH_JOB = "refresh_catalog"
CHANGES_SCHEDULE = "captured_changes"

# What a table's step process needs, loaded once per run by the multiprocess executor's fork
# server and inherited by every step it forks: the code location (its definitions, built
# from the catalog; the standalone one, a component's project adds its own), the load
# path's libraries (dlt, pyarrow, DuckDB, the ADBC driver, psycopg for the catalog), and
# what Dagster's step process imports to reach its instance's storage (~0.9 s a step
# otherwise; found with PYTHONPROFILEIMPORTTIME). Nothing here may start a thread or open
# a connection when imported (a test checks): forking copies neither.
LOAD_PRELOAD = ("pg_to_bq.load.group", "pg_to_bq.orchestration.steps", "pg_to_bq.destinations.duckdb_file",
                "pg_to_bq.postgres.session", "psycopg", "dlt.sources.helpers.requests",
                "dagster._cli", "dagster._core.storage.base_storage")
FORKSERVER_PRELOAD = ("pg_to_bq.definitions", *LOAD_PRELOAD)




def asset_context(settings: Settings, names: InstanceNames | None = None) -> AssetContext:
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
        freshness_window=freshness_window(settings.schedule_cron, settings.schedule_timezone,
                                          settings.freshness_budget)
        if settings.freshness_budget is not None else None,
        drift_max_rows=settings.drift_max_rows,
        cdc_publication=settings.cdc_publication if settings.cdc else None,
        names=names or InstanceNames(),
        overrides=settings.overrides(),
        schemas=settings.schemas,
        include_views=settings.include_views,
        step_tables=settings.step_tables,
        own_step_bytes=settings.own_step_bytes,
        fingerprint=settings.fingerprint,
        fingerprint_rows=settings.fingerprint_rows,
    )


def uses_secrets(settings: Settings) -> bool:
    """Is any value read from AWS Secrets Manager?"""
    return bool(settings.source_secret or settings.hash_salt_secret
                or settings.bigquery_credentials_secret)


def build_resources(settings: Settings, names: InstanceNames | None = None) -> dict[str, object]:
    """The source and destination resources, and the `secrets` resource (AWS Secrets
    Manager) when a secret id is configured; without one nothing reads a secret."""
    names = names or InstanceNames()
    secrets = secrets_manager(settings.aws_region) if uses_secrets(settings) else None
    dependency = {"secrets": secrets} if secrets is not None else {}
    resources: dict[str, object] = {
        names.source: SourceDatabase(
            url=dg.EnvVar(settings.source_url_env) if settings.source_url else None,
            secret_id=settings.source_secret,
            statement_timeout_s=settings.statement_timeout_s,
            batch_bytes=settings.batch_bytes,
            hash_salt=dg.EnvVar(settings.hash_salt_env) if settings.hash_salt_set else None,
            hash_salt_secret_id=settings.hash_salt_secret,
            parallel_streams=settings.parallel_streams,
            parallel_min_bytes=settings.parallel_min_bytes,
            **dependency,
        ),
        names.destination: Destination(
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
        resources[names.secrets] = secrets
    return resources


def executor_for(name: str, preload: tuple[str, ...] = FORKSERVER_PRELOAD
                 ) -> dg.ExecutorDefinition | None:
    """The nightly job's executor: multiprocess (a process per step, forked from a server
    that has loaded the code location once: Dagster's default `spawn` starts every step from
    an empty interpreter, ~5 CPU-s of imports and definitions each), in-process, or
    dagster-aws's `ecs_executor` (one ECS task per step) for runs that outgrow one
    container."""
    if name == "ecs":
        from dagster_aws.ecs import ecs_executor

        return ecs_executor
    if name == "in_process":
        return dg.in_process_executor
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return None
    return dg.multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": list(preload)}}},
        name="multiprocess",
    )


def build_mirror(
    settings: Settings,
    catalog: Catalog,
    keeper: CatalogKeeper,
    *,
    names: InstanceNames | None = None,
    preload: tuple[str, ...] = FORKSERVER_PRELOAD,
    alerts: AlertSettings | None = None,
) -> dg.Definitions:
    """Everything one mirrored database contributes: built from `catalog`, never querying
    PostgreSQL. `keeper` stores the catalog a run discovers (the snapshot file, or the
    component's defs state); `alerts`, where failures are sent (`pg_to_bq.alerts`: sensors
    only when a channel is configured)."""
    # Nothing built here is garbage: collection waits until the build is done (the
    # collector rescanned the new objects again and again, a quarter of the build time).
    with collector.paused():
        return _build_mirror(settings, catalog, keeper, names or InstanceNames(), preload,
                             alerts)


def _build_mirror(settings: Settings, catalog: Catalog, keeper: CatalogKeeper,
                  names: InstanceNames, preload: tuple[str, ...],
                  alerts: AlertSettings | None) -> dg.Definitions:
    plans = plans_for(settings, catalog)
    ctx = asset_context(settings, names)
    source_specs, table_assets = build_assets(plans, ctx)
    catalog_asset = build_catalog_asset(settings, catalog, ctx, keeper)
    executor = executor_for(settings.executor, preload)
    refresh = dg.define_asset_job(
        names.name(REFRESH_JOB), selection=dg.AssetSelection.assets(catalog_asset),
        description="Discover PostgreSQL's tables again (one query), keep the catalog, and "
                    "load the tables it did not have")
    jobs: list = [refresh]
    schedules: list = []
    # Always there, even before the first discovery: its catalog step picks up new tables.
    nightly_selection = dg.AssetSelection.tag(SCHEDULE_TAG, "nightly")
    if names.prefix:
        nightly_selection = nightly_selection & dg.AssetSelection.key_prefixes(
            list(names.key_prefix))
    nightly = dg.define_asset_job(
        names.name(NIGHTLY_JOB),
        selection=nightly_selection,
        description="Load every scheduled table, and tables new in PostgreSQL (small "
                    "tables share a step, large ones have their own)",
        executor_def=executor,
    )
    jobs.append(nightly)
    schedules.append(dg.ScheduleDefinition(
        name=names.name(NIGHTLY_SCHEDULE), job=nightly,
        cron_schedule=settings.schedule_cron, execution_timezone=settings.schedule_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Mirror every table nightly (incremental where a cursor allows)"))
    schedules.append(dg.ScheduleDefinition(
        name=names.name(DELETE_PASS_SCHEDULE), job=nightly,
        cron_schedule=settings.deletes_cron, execution_timezone=settings.schedule_timezone,
        tags={APPLY_DELETES_TAG: "true"}, default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Load every table, then delete destination rows of merged tables "
                    "whose primary key no longer exists in PostgreSQL"))
    if settings.cdc and settings.cdc_cron:
        # A run costs its changes: the captured tables every 15 minutes (others wait for
        # the nightly run; the catalog step reads the changes and advances the slot).
        schedules.append(dg.ScheduleDefinition(
            name=names.name(CHANGES_SCHEDULE), job=nightly,
            cron_schedule=settings.cdc_cron, execution_timezone=settings.schedule_timezone,
            tags={CHANGES_ONLY_TAG: "true"}, default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Apply the changes captured from PostgreSQL's write-ahead log to the "
                        "captured tables"))
    for granularity in ("day", "month"):
        if any(p.partition and p.partition.granularity == granularity and p.scheduled
               for p in plans):
            selection = dg.AssetSelection.tag(PARTITIONED_TAG, granularity)
            if names.prefix:
                selection = selection & dg.AssetSelection.key_prefixes(list(names.key_prefix))
            job = dg.define_asset_job(names.name(f"mirror_{granularity}_partitions"),
                                      selection=selection)
            jobs.append(job)
            schedules.append(dg.build_schedule_from_partitioned_job(
                job, name=names.name(f"nightly_{granularity}_partitions"),
                default_status=dg.DefaultScheduleStatus.RUNNING))
    sensors = []
    if alerts is not None and alerts.enabled:
        from pg_to_bq.alerts.sensors import build_alert_sensors

        # A standalone code location is this mirror alone: every job of it is watched, the
        # UI's materializations too; a component watches its own jobs and assets.
        sensors = build_alert_sensors(
            alerts, jobs=jobs if names.prefix else None,
            assets=dg.AssetSelection.key_prefixes(list(names.key_prefix)) if names.prefix
            else None,
            name_prefix=names.name("") if names.prefix else "",
            secret_values=lambda: _source_secrets(settings))
    return dg.Definitions(
        assets=[*source_specs, catalog_asset, *table_assets],
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=build_resources(settings, names),
    )


def _source_secrets(settings: Settings) -> list[str]:
    """Values an alert must never show: the source URL's password, when it is known here."""
    import os
    from urllib.parse import unquote, urlsplit

    url = os.environ.get(settings.source_url_env) or settings.source_url or ""
    password = urlsplit(url).password if url else None
    return [unquote(password)] if password else []
