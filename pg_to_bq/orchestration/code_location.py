"""The standalone code location: settings from `PG_TO_BQ_*`, the catalog snapshot a file.

`pg_to_bq.definitions` (what `workspace.yaml`, the container image and the launchers load)
builds its definitions here, with the builder the Dagster component shares
(`pg_to_bq.orchestration.mirror`). The code location is loaded often (the daemon and webserver reload
it), so it reads the snapshot written by the last discovery, never PostgreSQL, unless
there is none yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dagster as dg

from pg_to_bq.alerts.settings import AlertSettings, database_label
from pg_to_bq.orchestration.mirror import (  # noqa: F401 - the standalone code location's public names
    DELETE_PASS_SCHEDULE,
    FORKSERVER_PRELOAD,
    NIGHTLY_JOB,
    NIGHTLY_SCHEDULE,
    REFRESH_JOB,
    asset_context,
    build_mirror,
    build_resources,
    executor_for,
)
from pg_to_bq.orchestration.resources import read_secret, secrets_manager
from pg_to_bq.planning.catalog import (
    Catalog,
    read_snapshot,
    with_former_names,
    write_snapshot,
)
from pg_to_bq.planning.secrets import source_url_from_secret
from pg_to_bq.planning.settings import Settings
from pg_to_bq.planning.tables import plans_for  # noqa: F401 - also a public name here
from pg_to_bq.postgres.connect import SourceUnreachable, connect
from pg_to_bq.postgres.discovery import discover

log = logging.getLogger(__name__)


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


def discover_catalog(settings: Settings) -> Catalog:
    """PostgreSQL's catalog now (one query)."""
    url = resolve_source_url(settings)
    with connect(url, statement_timeout_s=settings.statement_timeout_s) as conn:
        return discover(conn, settings.schemas, settings.include_views)


def refresh_catalog(settings: Settings) -> Catalog:
    """Query PostgreSQL (one query) and write the snapshot (which keeps the names each table
    had before a rename, `with_former_names`)."""
    catalog = with_former_names(discover_catalog(settings), read_snapshot(settings.snapshot_path))
    write_snapshot(catalog, settings.snapshot_path)
    return catalog


def load_catalog(settings: Settings, refresh: bool = False,
                 empty_when_unreachable: bool = True) -> CatalogLoad:
    """The snapshot when there is one; otherwise (or when asked) a live discovery.

    When PostgreSQL cannot be reached the last snapshot is used with a warning, so the
    code location keeps loading; without any snapshot the catalog is empty, or (with
    `empty_when_unreachable=False`, for a command that came to load tables) the error
    is raised.
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
        if refresh or not empty_when_unreachable:
            raise
        warning = (f"PostgreSQL unreachable ({exc}) and no catalog snapshot at "
                   f"{settings.snapshot_path}: no table assets until discovery succeeds "
                   f"(run `pg-to-bq discover` or the {REFRESH_JOB} job)")
        return CatalogLoad(Catalog(tables=()), "none", warning)


@dataclass(frozen=True)
class SnapshotFile:
    """Keeps the catalog a run discovers in the snapshot file the code location reads."""

    settings: Settings

    def save(self, catalog: Catalog, instance: dg.DagsterInstance) -> str:
        write_snapshot(catalog, self.settings.snapshot_path)
        return f"snapshot {self.settings.snapshot_path} (read when the code location loads)"


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Everything the code location serves. Reads the catalog snapshot, not PostgreSQL."""
    settings = settings or Settings.from_env()
    loaded = load_catalog(settings)
    if loaded.warning:
        log.warning(loaded.warning)
    alerts = AlertSettings.from_env(
        database=database_label(settings.source_url, settings.source_secret))
    defs = build_mirror(settings, loaded.catalog, SnapshotFile(settings), alerts=alerts)
    for plan in plans_for(settings, loaded.catalog):
        if not plan.columns and plan.error is None:
            log.warning("table %s has no loadable columns and is skipped", plan.name)
    # Also what the UI's materializations run with (Dagster's implicit asset job); with
    # `ecs`, those run in the run's own task.
    executor = executor_for(settings.executor) if settings.executor != "ecs" else None
    return dg.Definitions.merge(defs, dg.Definitions(executor=executor)) if executor else defs
