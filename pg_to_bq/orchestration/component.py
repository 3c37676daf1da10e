"""pg_to_bq as a Dagster component: a mirrored PostgreSQL database in any Dagster project.

    dg scaffold defs pg_to_bq.PostgresMirror shop      # writes defs/shop/defs.yaml
    dg check defs                                      # the attributes, located errors
    dg utils refresh-defs-state                        # discovers the tables (one query)
    dg dev                                             # refreshes it, then the UI

The catalog is the component's defs state: `write_state_to_path` runs the one catalog
query, `build_defs_from_state` builds the tables' assets, checks, jobs and schedules from
it with the builder the standalone code location uses (`pg_to_bq.orchestration.mirror`), never touching
PostgreSQL. The nightly run's catalog step keeps the catalog it discovers as the new state
(`ComponentState`), so tables new in PostgreSQL have their assets once the code location
loads again. Every attribute is a `PG_TO_BQ_*` setting (the scaffolded `defs.yaml` reads
them from the environment); values are checked as `pg_to_bq.planning.settings` checks them.
"""

import asyncio
import logging
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster.components import DefsStateConfig, DefsStateConfigArgs, ResolvedDefsStateConfig
from dagster_shared.serdes.objects.models.defs_state_info import (
    LOCAL_STATE_VERSION,
    DefsStateManagementType,
)

from pg_to_bq.alerts.settings import AlertSettings, database_label
from pg_to_bq.orchestration.names import InstanceNames
from pg_to_bq.planning.catalog import Catalog
from pg_to_bq.planning.settings import PREFIX, Settings, SettingsError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
# Attributes that are settings under their upper-case name (`dataset` → PG_TO_BQ_DATASET).
_SETTINGS = ("source_secret", "destination", "dataset", "schemas", "include", "exclude",
             "include_views", "tables_file", "schedule_cron", "schedule_timezone",
             "deletes_cron", "executor", "owners", "tags", "work_dir", "bigquery_project",
             "bigquery_location", "bigquery_credentials_secret", "bigquery_key_file",
             "aws_region", "batch_bytes", "parallel_streams", "parallel_min_bytes",
             "max_source_connections", "statement_timeout_s", "freshness", "drift_max_rows",
             "cdc", "cdc_slot", "cdc_publication", "cdc_cron", "cdc_wal_warn_bytes",
             "hash_salt_secret", "step_tables", "own_step_bytes", "fingerprint",
             "fingerprint_rows", "soft_deletes", "read_whole_bytes")
# Alert attributes, and what an error calls each (`pg_to_bq.alerts.settings`).
_ALERTS = {"sns_topic_arn": "alert_sns_topic_arn", "webhook_url": "alert_webhook_url",
           "webhook_secret": "alert_webhook_secret", "ui_url": "ui_url"}


class PostgresMirrorScaffolder(dg.Scaffolder):
    """Writes a `defs.yaml` that works unedited from the `PG_TO_BQ_*` environment variables."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = re.sub(r"[^A-Za-z0-9_]", "_", request.target_path.name).strip("_") or "mirror"
        if not name[0].isalpha():
            name = "db_" + name
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            DEFS_YAML.format(type=request.type_name, name=name), encoding="utf-8")


DEFS_YAML = """\
type: {type}
attributes:
  # Asset keys, jobs, schedules, resources and pools of this database start with this name
  # (one instance of the component per database).
  name: {name}
  # The PostgreSQL URL is read from this environment variable when a run needs it (it never
  # enters the definitions); or name an AWS Secrets Manager secret holding it.
  source_url_env: PG_TO_BQ_SOURCE_URL
  source_secret: "{{{{ env.PG_TO_BQ_SOURCE_SECRET }}}}"
  # duckdb:///path/file.duckdb or bigquery (with bigquery_project and credentials)
  destination: "{{{{ env.PG_TO_BQ_DESTINATION }}}}"
  dataset: "{{{{ env.PG_TO_BQ_DATASET }}}}"
  bigquery_project: "{{{{ env.PG_TO_BQ_BIGQUERY_PROJECT }}}}"
  bigquery_location: "{{{{ env.PG_TO_BQ_BIGQUERY_LOCATION }}}}"
  bigquery_credentials_secret: "{{{{ env.PG_TO_BQ_BIGQUERY_CREDENTIALS_SECRET }}}}"
  bigquery_key_file: "{{{{ env.PG_TO_BQ_BIGQUERY_KEY_FILE }}}}"
  # Which tables: schemas, and globs on schema.table (comma-separated, or YAML lists)
  schemas: "{{{{ env.PG_TO_BQ_SCHEMAS }}}}"
  include: "{{{{ env.PG_TO_BQ_INCLUDE }}}}"
  exclude: "{{{{ env.PG_TO_BQ_EXCLUDE }}}}"
  include_views: "{{{{ env.PG_TO_BQ_INCLUDE_VIEWS }}}}"
  # Per-table overrides: a file, or inline here as `tables:` (the file's form, e.g.
  # tables: {{tables: {{public.orders: {{cursor: updated_at}}}}}})
  tables_file: "{{{{ env.PG_TO_BQ_TABLES_FILE }}}}"
  schedule_cron: "{{{{ env.PG_TO_BQ_SCHEDULE_CRON }}}}"
  schedule_timezone: "{{{{ env.PG_TO_BQ_SCHEDULE_TIMEZONE }}}}"
  # in_process, multiprocess or ecs
  executor: "{{{{ env.PG_TO_BQ_EXECUTOR }}}}"
  owners: "{{{{ env.PG_TO_BQ_OWNERS }}}}"
  tags: "{{{{ env.PG_TO_BQ_TAGS }}}}"
  work_dir: "{{{{ env.PG_TO_BQ_WORK_DIR }}}}"
  hash_salt_env: PG_TO_BQ_HASH_SALT
  hash_salt_secret: "{{{{ env.PG_TO_BQ_HASH_SALT_SECRET }}}}"
  # How long a nightly run may take before a table it did not load shows stale, or off
  freshness: "{{{{ env.PG_TO_BQ_FRESHNESS }}}}"
  # Alerts (off until a channel is set): an SNS topic and/or a Slack-compatible webhook
  alert_sns_topic_arn: "{{{{ env.PG_TO_BQ_ALERT_SNS_TOPIC_ARN }}}}"
  alert_webhook_url: "{{{{ env.PG_TO_BQ_ALERT_WEBHOOK_URL }}}}"
  alert_webhook_secret: "{{{{ env.PG_TO_BQ_ALERT_WEBHOOK_SECRET }}}}"
  ui_url: "{{{{ env.PG_TO_BQ_UI_URL }}}}"
"""


@dg.scaffold_with(PostgresMirrorScaffolder)
@dataclass
class PostgresMirror(dg.StateBackedComponent, dg.Resolvable):
    """Mirror every table of a PostgreSQL database into BigQuery (or a DuckDB file): one
    asset per table, loaded by dlt, checked against the source, on a nightly schedule.

    Attributes are pg_to_bq's settings (`PG_TO_BQ_<ATTRIBUTE>`; see the README); unset ones
    take the setting's default. Secrets stay out of the definitions: the source URL and the
    hash salt are read from environment variables at run time (`source_url_env`,
    `hash_salt_env`), or from AWS Secrets Manager (`source_secret`, `hash_salt_secret`,
    `bigquery_credentials_secret`).
    """

    name: str = ""
    source_url_env: str | None = f"{PREFIX}SOURCE_URL"
    source_secret: str | None = None
    destination: str | None = None
    dataset: str | None = None
    schemas: list[str] | str | None = None
    include: list[str] | str | None = None
    exclude: list[str] | str | None = None
    include_views: bool | None = None
    tables: dict[str, Any] | None = None
    tables_file: str | None = None
    schedule_cron: str | None = None
    schedule_timezone: str | None = None
    deletes_cron: str | None = None
    executor: str | None = None
    owners: list[str] | str | None = None
    tags: dict[str, str] | str | None = None
    work_dir: str | None = None
    bigquery_project: str | None = None
    bigquery_location: str | None = None
    bigquery_credentials_secret: str | None = None
    bigquery_key_file: str | None = None
    aws_region: str | None = None
    batch_bytes: int | None = None
    parallel_streams: int | None = None
    parallel_min_bytes: int | None = None
    max_source_connections: int | None = None
    statement_timeout_s: int | None = None
    # How long a nightly run may take before a table it did not load shows stale (`3h`), or
    # `off` (Dagster's freshness policy, derived from schedule_cron).
    freshness: str | None = None
    drift_max_rows: int | None = None
    # Change capture from PostgreSQL's logical replication (a slot and a publication).
    cdc: bool | None = None
    cdc_slot: str | None = None
    cdc_publication: str | None = None
    cdc_cron: str | None = None
    cdc_wal_warn_bytes: int | None = None
    # Where alerts go (off until one is set): an SNS topic, a Slack-compatible webhook (or
    # the Secrets Manager secret holding its URL), and the UI's URL for links.
    alert_sns_topic_arn: str | None = None
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = None
    ui_url: str | None = None
    step_tables: int | None = None
    own_step_bytes: int | None = None
    fingerprint: bool | None = None
    fingerprint_rows: int | None = None
    # Keep rows deleted in PostgreSQL, marked in _pg_to_bq_deleted_at (merged tables).
    soft_deletes: bool | None = None
    # Merged tables up to this size on disk are read whole when their rows change (0: none).
    read_whole_bytes: int | None = None
    hash_salt_env: str | None = f"{PREFIX}HASH_SALT"
    hash_salt_secret: str | None = None
    defs_state: ResolvedDefsStateConfig = field(
        default_factory=DefsStateConfigArgs.local_filesystem)

    @property
    def defs_state_config(self) -> DefsStateConfig:
        return DefsStateConfig.from_args(
            self.defs_state, default_key=f"PostgresMirror[{self.name or 'default'}]")

    @property
    def names(self) -> InstanceNames:
        if self.name and not _NAME.match(self.name):
            raise SettingsError(
                f"name {self.name!r}: use a letter, then letters, digits and underscores (up to "
                "40): it starts this database's asset keys and job, schedule and pool names")
        return InstanceNames(self.name)

    def settings(self) -> Settings:
        """The attributes as pg_to_bq settings, checked as `Settings.from_env` checks them
        (errors name the attribute)."""
        import os

        env = {PREFIX + key.upper(): _as_setting(getattr(self, key)) for key in _SETTINGS}
        if self.source_url_env and os.environ.get(self.source_url_env):
            env[f"{PREFIX}SOURCE_URL"] = os.environ[self.source_url_env]
        if self.hash_salt_env and os.environ.get(self.hash_salt_env):
            env[f"{PREFIX}HASH_SALT"] = os.environ[self.hash_salt_env]
        try:
            settings = Settings.from_env({k: v for k, v in env.items() if v is not None})
        except SettingsError as exc:
            raise SettingsError(_attribute_message(str(exc), self.source_url_env)) from None
        from dataclasses import replace

        return replace(settings, source_url_env=self.source_url_env or f"{PREFIX}SOURCE_URL",
                       hash_salt_env=self.hash_salt_env or f"{PREFIX}HASH_SALT",
                       inline_tables=self.tables)

    async def refresh_state(self, project_root: Path) -> str:
        """As Dagster's, keeping the names each table had before a rename: the state it
        replaces is read first (Dagster removes a local one before writing the new)."""
        self._previous_state = previous_state(self, project_root)
        try:
            return await super().refresh_state(project_root)
        finally:
            self._previous_state = None

    def write_state_to_path(self, state_path: Path) -> None:
        """The one catalog query; the catalog is the state."""
        from pg_to_bq.orchestration.code_location import discover_catalog
        from pg_to_bq.planning.catalog import with_former_names

        catalog = with_former_names(discover_catalog(self.settings()),
                                    getattr(self, "_previous_state", None))
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(catalog.to_json(), encoding="utf-8")

    def build_defs_from_state(self, context: dg.ComponentLoadContext,
                              state_path: Path | None) -> dg.Definitions:
        from pg_to_bq.orchestration.mirror import LOAD_PRELOAD, build_mirror

        settings = self.settings()
        catalog = Catalog.from_json(state_path.read_text(encoding="utf-8")) \
            if state_path is not None and state_path.is_file() else Catalog(tables=())
        keeper = ComponentState(self, context.project_root)
        return build_mirror(settings, catalog, keeper, names=self.names, preload=LOAD_PRELOAD,
                            alerts=self.alerts(settings))

    def alerts(self, settings: Settings) -> AlertSettings:
        """The alert attributes, checked (errors name the attribute)."""
        try:
            return AlertSettings.from_values(
                **{field: getattr(self, attribute) for field, attribute in _ALERTS.items()},
                database=database_label(settings.source_url, settings.source_secret),
                names=_ALERTS)
        except SettingsError as exc:
            raise SettingsError(f"PostgresMirror attributes: {exc}") from None


@dataclass(frozen=True)
class ComponentState:
    """Keeps the catalog a run discovers as the component's defs state: in the project
    (local filesystem, what `dg dev` and one-machine deployments read) or in the instance's
    versioned state storage (`defs_state_storage` in dagster.yaml: what code servers on
    ECS or Lambda read when they load)."""

    component: PostgresMirror
    project_root: Path

    def save(self, catalog: Catalog, instance: dg.DagsterInstance) -> str:
        config = self.component.defs_state_config
        storage = instance.defs_state_storage
        if config.management_type == DefsStateManagementType.LOCAL_FILESYSTEM:
            from dagster.components.utils.project_paths import get_local_state_path

            path = get_local_state_path(config.key, self.project_root)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            temporary.write_text(catalog.to_json(), encoding="utf-8")
            temporary.replace(path)
            if storage is not None:
                storage.set_latest_version(config.key, LOCAL_STATE_VERSION)
            return f"defs state {config.key} in {path}"
        if config.management_type == DefsStateManagementType.VERSIONED_STATE_STORAGE:
            if storage is None:
                return (f"not kept: defs state {config.key} is versioned but the instance has "
                        "no defs_state_storage (dagster.yaml)")
            version = uuid.uuid4().hex
            with tempfile.TemporaryDirectory() as directory:
                path = Path(directory) / "state"
                path.write_text(catalog.to_json(), encoding="utf-8")
                storage.upload_state_from_path(config.key, version=version, path=path)
            return f"defs state {config.key}, version {version}"
        return f"defs state {config.key} is refreshed when the code server loads"


def previous_state(component: PostgresMirror, project_root: Path) -> Catalog | None:
    """The catalog the component's state holds now (None when there is none, or it cannot
    be read: then former names start again from this discovery)."""
    from dagster._core.storage.defs_state.base import DefsStateStorage

    config = component.defs_state_config
    try:
        if config.management_type == DefsStateManagementType.LOCAL_FILESYSTEM:
            from dagster.components.utils.project_paths import get_local_state_path

            path = get_local_state_path(config.key, project_root)
            return Catalog.from_json(path.read_text(encoding="utf-8")) if path.is_file() \
                else None
        storage = DefsStateStorage.get()
        if config.management_type != DefsStateManagementType.VERSIONED_STATE_STORAGE \
                or storage is None:
            return None
        version = storage.get_latest_version(config.key)
        if version is None:
            return None
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "state"
            storage.download_state_to_path(config.key, version, path)
            return Catalog.from_json(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - a state that cannot be read is not kept
        log.warning("the component's previous state was not read (%s): the names tables "
                    "had before a rename start again from this discovery", exc)
        return None


def refresh(component: PostgresMirror, project_root: Path) -> str:
    """Refresh the component's state now (what `dg utils refresh-defs-state` does)."""
    return asyncio.run(component.refresh_state(project_root))


def _as_setting(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _attribute_message(message: str, source_url_env: str | None) -> str:
    """A settings error as the component's attributes name things."""
    renamed = re.sub(
        r"PG_TO_BQ_([A-Z_]+)",
        lambda m: "source_url_env" if m.group(1) == "SOURCE_URL" else m.group(1).lower(),
        message)
    if "source_url_env is not set" in renamed:
        renamed = (f"no source: the environment variable {source_url_env} (source_url_env) is "
                   "not set, and source_secret is not given; set one of them")
    return f"PostgresMirror attributes: {renamed}"
