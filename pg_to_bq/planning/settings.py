"""Settings from `PG_TO_BQ_*` environment variables.

Every setting is read and validated here, once, so a bad value fails early with one
message naming the variable. Reading settings never touches the network: secret ids
are kept as ids and resolved at run time by the resources.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from pg_to_bq.planning.overrides import Overrides

PREFIX = "PG_TO_BQ_"
DEFAULT_CRON = "0 16 * * *"
DEFAULT_DELETES_CRON = "0 18 * * 6"
DEFAULT_DATASET = "pg_raw"
DEFAULT_WORK_DIR = "/tmp/pg_to_bq"
# A table at least this large on disk is read over this many COPY connections, each over one
# range of the table inside one exported snapshot (`pg_to_bq.postgres.reader`): with one stream the
# PostgreSQL backend encoding the COPY is the bottleneck (the 1M-row benchmark table, 303 MB,
# is extracted ~20% faster over two and loaded 5-13% faster, at the same memory: each
# stream's batches are a share of `batch_bytes`). Smaller tables are not worth the extra
# connection.
DEFAULT_PARALLEL_STREAMS = 2
DEFAULT_PARALLEL_MIN_BYTES = 256 * 1024**2
# What a nightly run may take after its tick (`PG_TO_BQ_FRESHNESS`).
DEFAULT_FRESHNESS_BUDGET = timedelta(hours=3)
# Tables up to this many rows have their destination's figures compared every run.
DEFAULT_DRIFT_MAX_ROWS = 10_000_000
# Tables a step loads at most, on average: a step's own costs (its Dagster step, dlt
# pipeline, load package, schema update, queries for its figures and states, the file's
# checkpoint) outweigh what grows with its size. 1,000 tables (benchmarks/many_tables.py's)
# load in 16 steps of ~62 in 35.4-35.9 s rather than 32 of ~31 in 37.8-38.6 s under 50
# (whole `pg-to-bq sync` processes, alternated).
DEFAULT_STEP_TABLES = 100
# Tables at least this large on disk load in a step of their own (`PG_TO_BQ_OWN_STEP_BYTES`).
DEFAULT_OWN_STEP_BYTES = 64 * 1024**2
# A merged table up to this size on disk is read whole, and replaced, when its rows change,
# rather than merged by its cursor (`TablePlan.reads_whole`; `PG_TO_BQ_READ_WHOLE_BYTES`).
# A night that changed ~1% of the rows of 300 tables of 1,000 rows: 47.6 s merged by cursor
# (a window read, a merge, a delete pass for the rows deleted), 27.0 s read whole; a
# 100,000-row table (~25 MB): 1.5 s merged, 1.6 s read whole. Read whole, a table takes
# every change, a delete or an update that left its cursor alone, with no pass of its own.
DEFAULT_READ_WHOLE_BYTES = 8 * 1024**2
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")


class SettingsError(ValueError):
    """A setting is missing or malformed. The message names the variable and the problem."""


@dataclass(frozen=True)
class DestinationSpec:
    """Where tables land: `kind` is `duckdb` (with `path`, and DuckDB settings from the URL's
    query, e.g. `?memory_limit=1GB`) or `bigquery`."""

    kind: str
    path: Path | None = None
    duckdb_settings: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        if self.kind != "duckdb":
            return "bigquery"
        query = "&".join(f"{k}={v}" for k, v in self.duckdb_settings)
        return f"duckdb:///{self.path}" + (f"?{query}" if query else "")


@dataclass(frozen=True)
class Settings:
    """Validated pg_to_bq settings. Build with `Settings.from_env()`."""

    source_url: str | None
    source_secret: str | None
    destination: DestinationSpec
    dataset: str
    schemas: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_views: bool = False
    work_dir: Path = Path(DEFAULT_WORK_DIR)
    catalog_path: Path | None = None
    tables_file: Path | None = None
    schedule_cron: str = DEFAULT_CRON
    schedule_timezone: str = "UTC"
    bigquery_project: str | None = None
    bigquery_location: str = "US"
    bigquery_credentials_secret: str | None = None
    bigquery_key_file: Path | None = None
    aws_region: str | None = None
    batch_bytes: int = 16 * 1024 * 1024
    parallel_streams: int = DEFAULT_PARALLEL_STREAMS
    parallel_min_bytes: int = DEFAULT_PARALLEL_MIN_BYTES
    max_source_connections: int = 4
    statement_timeout_s: int = 3600
    owners: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    # What a nightly run may take after its tick before a table not loaded by then shows
    # stale (Dagster's freshness policy); None: no freshness policy.
    freshness_budget: timedelta | None = DEFAULT_FRESHNESS_BUDGET
    # The destination's whole-table figures are compared every run for tables up to this
    # many rows (`pg_to_bq.checks.drift`); 0: never.
    drift_max_rows: int = DEFAULT_DRIFT_MAX_ROWS
    deletes_cron: str = DEFAULT_DELETES_CRON
    executor: str = "multiprocess"
    hash_salt_set: bool = False
    hash_salt_secret: str | None = None
    step_tables: int = DEFAULT_STEP_TABLES
    own_step_bytes: int = DEFAULT_OWN_STEP_BYTES
    fingerprint: bool = True
    fingerprint_rows: int = 5_000
    # Change capture from PostgreSQL's logical replication (`pg_to_bq.postgres.cdc`): off
    # unless asked for (a slot retains WAL while nobody reads it).
    cdc: bool = False
    cdc_slot: str = "pg_to_bq"
    cdc_publication: str = "pg_to_bq"
    # The short schedule of change capture runs (besides the nightly one); None: none.
    cdc_cron: str | None = None
    # Retained WAL above which the slot's check warns; it fails at 80% of the server's
    # max_slot_wal_keep_size (beyond it PostgreSQL invalidates the slot).
    cdc_wal_warn_bytes: int = 1024**3
    # Rows deleted in PostgreSQL stay in the destination, marked in `_pg_to_bq_deleted_at`
    # (the tables file's `soft_deletes` decides per table, and overrides this).
    soft_deletes: bool = False
    # Merged tables up to this size on disk are read whole when their rows change (0: none).
    read_whole_bytes: int = DEFAULT_READ_WHOLE_BYTES
    # The environment variables that hold the source URL and the hash salt: resources read
    # them when a run needs them (`dg.EnvVar`), so the values never enter the definitions.
    source_url_env: str = f"{PREFIX}SOURCE_URL"
    hash_salt_env: str = f"{PREFIX}HASH_SALT"
    # Per-table overrides given inline (a Dagster component's `tables` attribute), in the
    # tables file's form; otherwise `tables_file` is read.
    inline_tables: Mapping[str, Any] | None = None

    def overrides(self) -> Overrides:
        """The per-table overrides: inline, else from the tables file, else none."""
        from pg_to_bq.planning.overrides import load_overrides, parse_overrides

        if self.inline_tables is not None:
            found = parse_overrides(dict(self.inline_tables), "the component's tables attribute")
        else:
            found = load_overrides(self.tables_file)
        if found.soft_deletes is None and self.soft_deletes:
            found = dataclasses.replace(found, soft_deletes=True)
        if found.read_whole_bytes != self.read_whole_bytes:
            found = dataclasses.replace(found, read_whole_bytes=self.read_whole_bytes)
        return found

    @property
    def snapshot_path(self) -> Path:
        """Where the catalog snapshot lives (`PG_TO_BQ_CATALOG_PATH`, default under the work dir)."""
        return self.catalog_path or self.work_dir / "catalog.json"

    def redacted_source(self) -> str:
        """The source location for messages: host, port and database, never the password."""
        if self.source_url:
            return redact_url(self.source_url)
        return f"secret {self.source_secret!r}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings from `env` (default: the process environment)."""
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(PREFIX + name)
            if value is None or value.strip() == "":
                return default
            return value.strip()

        source_url = get("SOURCE_URL")
        source_secret = get("SOURCE_SECRET")
        if not source_url and not source_secret:
            raise SettingsError(
                f"{PREFIX}SOURCE_URL is not set: set it to a PostgreSQL URL "
                f"(postgresql://user:password@host:5432/dbname) or set {PREFIX}SOURCE_SECRET "
                "to the id of an AWS Secrets Manager secret holding it"
            )
        if source_url:
            _check_postgres_url(source_url)

        work_dir = Path(get("WORK_DIR", DEFAULT_WORK_DIR)).expanduser()
        destination = parse_destination(get("DESTINATION", f"duckdb:///{work_dir}/pg_to_bq.duckdb"))
        dataset = get("DATASET", DEFAULT_DATASET)
        if not _DATASET_RE.match(dataset):
            raise SettingsError(
                f"{PREFIX}DATASET={dataset!r} is not a valid dataset name: use letters, digits "
                "and underscores only (BigQuery's rule)"
            )
        if destination.path is not None and dataset.casefold() == destination.path.stem.casefold():
            raise SettingsError(
                f"{PREFIX}DATASET={dataset!r} is also the name DuckDB gives the file "
                f"{destination.path.name} (its catalog): DuckDB cannot tell the two apart in a "
                f"query. Rename the dataset ({PREFIX}DATASET={dataset}_raw) or the file "
                f"({PREFIX}DESTINATION=duckdb:///"
                f"{destination.path.with_stem(destination.path.stem + '_mirror')})"
            )
        cron = get("SCHEDULE_CRON", DEFAULT_CRON)
        _check_cron(cron, "SCHEDULE_CRON")
        deletes_cron = get("DELETES_CRON", DEFAULT_DELETES_CRON)
        _check_cron(deletes_cron, "DELETES_CRON")
        timezone = get("SCHEDULE_TIMEZONE", "UTC")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise SettingsError(
                f"{PREFIX}SCHEDULE_TIMEZONE={timezone!r} is not a known IANA time zone "
                "(for example UTC or Asia/Tokyo)"
            ) from exc

        bigquery_project = get("BIGQUERY_PROJECT")
        key_file = get("BIGQUERY_KEY_FILE")
        if destination.kind == "bigquery" and not bigquery_project:
            raise SettingsError(
                f"{PREFIX}BIGQUERY_PROJECT is not set: {PREFIX}DESTINATION=bigquery needs the "
                "Google Cloud project id to load into"
            )
        if key_file and not Path(key_file).expanduser().is_file():
            raise SettingsError(f"{PREFIX}BIGQUERY_KEY_FILE={key_file!r}: no such file")

        return cls(
            source_url=source_url,
            source_secret=source_secret if not source_url else None,
            destination=destination,
            dataset=dataset,
            schemas=_split(get("SCHEMAS", "")),
            include=_split(get("INCLUDE", "")),
            exclude=_split(get("EXCLUDE", "")),
            include_views=_bool(get("INCLUDE_VIEWS", "false"), "INCLUDE_VIEWS"),
            work_dir=work_dir,
            catalog_path=Path(p).expanduser() if (p := get("CATALOG_PATH")) else None,
            tables_file=_existing_file(get("TABLES_FILE"), "TABLES_FILE"),
            schedule_cron=cron,
            schedule_timezone=timezone,
            bigquery_project=bigquery_project,
            bigquery_location=get("BIGQUERY_LOCATION", "US"),
            bigquery_credentials_secret=get("BIGQUERY_CREDENTIALS_SECRET"),
            bigquery_key_file=Path(key_file).expanduser() if key_file else None,
            aws_region=get("AWS_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            batch_bytes=_positive_int(get("BATCH_BYTES", str(16 * 1024 * 1024)), "BATCH_BYTES"),
            parallel_streams=_positive_int(get("PARALLEL_STREAMS", str(DEFAULT_PARALLEL_STREAMS)),
                                           "PARALLEL_STREAMS"),
            parallel_min_bytes=_non_negative_int(
                get("PARALLEL_MIN_BYTES", str(DEFAULT_PARALLEL_MIN_BYTES)), "PARALLEL_MIN_BYTES"),
            max_source_connections=_positive_int(
                get("MAX_SOURCE_CONNECTIONS", "4"), "MAX_SOURCE_CONNECTIONS"
            ),
            statement_timeout_s=_non_negative_int(
                get("STATEMENT_TIMEOUT_S", "3600"), "STATEMENT_TIMEOUT_S"
            ),
            owners=_split(get("OWNERS", "")),
            tags=_tags(get("TAGS", "")),
            freshness_budget=_freshness(get("FRESHNESS", "3h"), env),
            drift_max_rows=_non_negative_int(get("DRIFT_MAX_ROWS", str(DEFAULT_DRIFT_MAX_ROWS)),
                                             "DRIFT_MAX_ROWS"),
            deletes_cron=deletes_cron,
            executor=_choice(get("EXECUTOR", default_executor(destination)), "EXECUTOR",
                             ("multiprocess", "in_process", "ecs")),
            hash_salt_set=get("HASH_SALT") is not None,
            hash_salt_secret=get("HASH_SALT_SECRET"),
            step_tables=_positive_int(get("STEP_TABLES", str(DEFAULT_STEP_TABLES)), "STEP_TABLES"),
            own_step_bytes=_non_negative_int(get("OWN_STEP_BYTES", str(DEFAULT_OWN_STEP_BYTES)),
                                             "OWN_STEP_BYTES"),
            fingerprint=_bool(get("FINGERPRINT", "true"), "FINGERPRINT"),
            fingerprint_rows=_non_negative_int(get("FINGERPRINT_ROWS", "5000"),
                                               "FINGERPRINT_ROWS"),
            **_cdc_settings(get, dataset),
            soft_deletes=_bool(get("SOFT_DELETES", "false"), "SOFT_DELETES"),
            read_whole_bytes=_read_whole_bytes(get("READ_WHOLE_BYTES",
                                                   str(DEFAULT_READ_WHOLE_BYTES))),
        )


_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def _cdc_settings(get: Any, dataset: str) -> dict[str, Any]:
    """`PG_TO_BQ_CDC` and its companions; the slot and publication are named after the
    dataset by default, so two mirrors of one database (two datasets) never share one."""
    enabled = _bool(get("CDC", "false"), "CDC")
    default_name = f"pg_to_bq_{dataset.lower()}"[:63]
    slot = get("CDC_SLOT", default_name)
    if not _SLOT_NAME.match(slot):
        raise SettingsError(f"{PREFIX}CDC_SLOT={slot!r}: a replication slot name takes lower-case "
                            "letters, digits and underscores (at most 63)")
    publication = get("CDC_PUBLICATION", default_name)
    cron = get("CDC_CRON", "*/15 * * * *")
    if cron.lower() in ("off", "false", "none"):
        cron = None
    else:
        _check_cron(cron, "CDC_CRON")
    return {"cdc": enabled, "cdc_slot": slot, "cdc_publication": publication,
            "cdc_cron": cron if enabled else None,
            "cdc_wal_warn_bytes": _positive_int(get("CDC_WAL_WARN_BYTES", str(1024**3)),
                                                "CDC_WAL_WARN_BYTES")}


def default_executor(destination: DestinationSpec) -> str:
    """In-process for a DuckDB file: DuckDB takes one writing process at a time, so parallel
    step processes mostly wait for each other, and each still costs ~1 CPU-s more than a step
    in-process, even forked (20 small tables: 41 CPU-s in step processes, 21 in-process;
    `benchmarks/nightly_steps.py`). BigQuery loads in parallel, one process per table."""
    return "in_process" if destination.kind == "duckdb" else "multiprocess"


def parse_destination(value: str) -> DestinationSpec:
    """Parse `PG_TO_BQ_DESTINATION`: `duckdb:///path/file.duckdb[?setting=value&...]` or
    `bigquery`. The query's DuckDB settings (`memory_limit`, `threads`, ...) apply while a
    table loads, over pg_to_bq's own defaults."""
    if value == "bigquery":
        return DestinationSpec("bigquery")
    if value.startswith("duckdb:///"):
        path, _, query = value[len("duckdb:///") :].partition("?")
        if not path or path.endswith("/"):
            raise SettingsError(
                f"{PREFIX}DESTINATION={value!r} names no file: write duckdb:///path/to/file.duckdb"
            )
        # duckdb:////abs/path and duckdb:///rel/path both mean what a reader expects.
        resolved = Path(path if path.startswith("/") else path).expanduser()
        return DestinationSpec("duckdb", resolved.resolve(), _duckdb_settings(value, query))
    raise SettingsError(
        f"{PREFIX}DESTINATION={value!r} is not understood: use duckdb:///path/to/file.duckdb "
        "or bigquery"
    )


def _duckdb_settings(value: str, query: str) -> tuple[tuple[str, str], ...]:
    """`memory_limit=1GB&threads=2` as pairs; names must look like DuckDB setting names
    (whether DuckDB knows them is checked when the destination is opened)."""
    pairs = []
    for item in query.split("&") if query else ():
        name, equals, setting = item.partition("=")
        name, setting = unquote(name).strip(), unquote(setting).strip()
        if not equals or not setting or not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise SettingsError(
                f"{PREFIX}DESTINATION={value!r}: {item!r} is not a DuckDB setting; write "
                "duckdb:///path/to/file.duckdb?memory_limit=1GB&threads=4 (lower-case names)"
            )
        pairs.append((name, setting))
    return tuple(pairs)


def redact_url(url: str) -> str:
    """`postgresql://user:secret@host:5432/db` → `postgresql://user:***@host:5432/db`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _check_postgres_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") and not parts.scheme.startswith(
        "postgresql+"
    ):
        raise SettingsError(
            f"{PREFIX}SOURCE_URL={redact_url(url)!r} is not a PostgreSQL URL: it must start "
            "with postgresql://"
        )
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise SettingsError(
            f"{PREFIX}SOURCE_URL={redact_url(url)!r} has a malformed port"
        ) from exc
    if not parts.hostname or not parts.path.strip("/"):
        raise SettingsError(
            f"{PREFIX}SOURCE_URL={redact_url(url)!r} must name a host and a database "
            "(postgresql://user:password@host:5432/dbname)"
        )


def _freshness(value: str, env: Mapping[str, str]) -> timedelta | None:
    """`PG_TO_BQ_FRESHNESS`: the run budget (`3h`), or `off`."""
    if env.get(PREFIX + "FRESHNESS_HOURS"):
        raise SettingsError(
            f"{PREFIX}FRESHNESS_HOURS is gone: a table's freshness is Dagster's freshness policy, "
            f"derived from the schedule. Set {PREFIX}FRESHNESS to how long a nightly run may "
            "take (e.g. 3h), or to off")
    if value.strip().lower() in ("off", "false", "no", "0"):
        return None
    from pg_to_bq.planning.overrides import OverridesError, parse_duration

    try:
        return parse_duration(value, f"{PREFIX}FRESHNESS")
    except OverridesError as exc:
        raise SettingsError(f"{exc}, or off") from None


def freshness_window(cron: str, timezone: str, budget: timedelta) -> timedelta:
    """How long a table of a schedule may go without a load before it is stale: the longest
    gap between two consecutive ticks of the schedule over the next year (at most 400
    ticks), plus the run's `budget`. Nightly at 16:00 with a 3 h budget: 27 h."""
    from datetime import datetime

    from croniter import croniter

    ticks = croniter(cron, datetime.now(ZoneInfo(timezone)))
    first = previous = ticks.get_next(datetime)
    longest = timedelta(0)
    for _ in range(400):
        current = ticks.get_next(datetime)
        longest = max(longest, current - previous)
        previous = current
        if current - first > timedelta(days=366):
            break
    return longest + budget


def _check_cron(cron: str, name: str) -> None:
    from croniter import croniter

    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise SettingsError(
            f"{PREFIX}{name}={cron!r} is not a valid cron expression "
            "(five fields, for example '0 16 * * *')"
        )


def _choice(value: str | None, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SettingsError(f"{PREFIX}{name}={value!r} must be one of {', '.join(choices)}")
    return value


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _bool(value: str | None, name: str) -> bool:
    lowered = (value or "").lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{PREFIX}{name}={value!r} must be true or false")


def _positive_int(value: str | None, name: str) -> int:
    number = _non_negative_int(value, name)
    if number == 0:
        raise SettingsError(f"{PREFIX}{name}={value!r} must be a positive whole number")
    return number


def _read_whole_bytes(value: str | None) -> int:
    """`PG_TO_BQ_READ_WHOLE_BYTES`: at most the size up to which a merged table's row versions
    are scanned (a table read whole must be found unchanged by them, or it would be read
    whole every run)."""
    from pg_to_bq.postgres.row_versions import MERGE_MAX_BYTES

    number = _non_negative_int(value, "READ_WHOLE_BYTES")
    if number > MERGE_MAX_BYTES:
        raise SettingsError(
            f"{PREFIX}READ_WHOLE_BYTES={value!r} must be at most {MERGE_MAX_BYTES} (32 MiB): "
            "above it a table's row versions are not compared, so a table read whole when it "
            "changes would be read whole every run")
    return number


def _non_negative_int(value: str | None, name: str) -> int:
    try:
        number = int(value or "")
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={value!r} must be a whole number") from None
    if number < 0:
        raise SettingsError(f"{PREFIX}{name}={value!r} must not be negative")
    return number


def _existing_file(value: str | None, name: str) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise SettingsError(f"{PREFIX}{name}={value!r}: no such file")
    return path


def _tags(value: str | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in _split(value):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(
                f"{PREFIX}TAGS={value!r}: each tag must be written key=value, comma-separated"
            )
        tags[key.strip()] = val.strip()
    return tags


def streams_for(size_bytes: int | None, parallel_streams: int = DEFAULT_PARALLEL_STREAMS,
                parallel_min_bytes: int = DEFAULT_PARALLEL_MIN_BYTES) -> int:
    """How many COPY streams read a table of `size_bytes` on disk (unknown: one)."""
    if parallel_streams > 1 and size_bytes is not None and size_bytes >= parallel_min_bytes:
        return parallel_streams
    return 1
