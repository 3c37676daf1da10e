"""Dagster resources: the source PostgreSQL, the destination, and secrets.

Secret values are resolved when a run asks for them (never at import, never in logs
or metadata): plain values come through `dg.EnvVar`, secret ids through AWS Secrets
Manager via the `SecretsManager` resource (boto3, imported when a secret is read).
`read_secret` also takes dagster-aws's `SecretsManagerResource` (the same `get_client()`).
"""


import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

from pg_to_bq.planning.secrets import SecretError, service_account_info, source_url_from_secret
from pg_to_bq.planning.settings import DEFAULT_PARALLEL_MIN_BYTES, DEFAULT_PARALLEL_STREAMS, streams_for

if TYPE_CHECKING:
    from dagster_aws.secretsmanager import SecretsManagerResource


class _DropSecretPayloads(logging.Filter):
    """botocore logs whole response bodies at DEBUG, secret values included; drop those
    records so turning on debug logging can never print a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "SecretString" not in message and "SecretBinary" not in message


for _name in ("botocore.parsers", "botocore.endpoint", "botocore.hooks", "botocore.httpsession",
              "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_DropSecretPayloads())


class SecretsManager(dg.ConfigurableResource):
    """AWS Secrets Manager through boto3: the `secrets` resource when a secret id is set.

    It has dagster-aws's `SecretsManagerResource`'s `get_client()`, and either serves
    `read_secret`. pg_to_bq builds this one because importing dagster-aws's costs ~0.9 s
    (its module imports `dagster._core.test_utils`, and with it Dagster's run storage and
    alembic) in every process that loads the code location: the code server and each run's
    step processes, one per table. boto3 is imported only when a secret is read.

    Attributes:
        region_name: The AWS region; unset, boto3's (`AWS_REGION`, the instance's).
        endpoint_url: Another Secrets Manager endpoint (a VPC endpoint); unset, boto3's
            (which honours `AWS_ENDPOINT_URL_SECRETS_MANAGER` and `AWS_ENDPOINT_URL`).
    """

    region_name: str | None = None
    endpoint_url: str | None = None

    def get_client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "secretsmanager", region_name=self.region_name, endpoint_url=self.endpoint_url)


def secrets_manager(region_name: str | None = None) -> SecretsManager:
    return SecretsManager(region_name=region_name)


def read_secret(secrets: "SecretsManager | SecretsManagerResource", secret_id: str) -> str:
    """The SecretString of `secret_id`; errors name the id and the AWS error code only."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = secrets.get_client().get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise SecretError(f"cannot read secret {secret_id!r} from AWS Secrets Manager: {code}") from None
    except BotoCoreError as exc:
        raise SecretError(
            f"cannot reach AWS Secrets Manager for secret {secret_id!r}: {type(exc).__name__}"
        ) from None
    value = response.get("SecretString")
    if not value:
        raise SecretError(f"secret {secret_id!r} has no SecretString (binary secrets are not supported)")
    return value


class SourceDatabase(dg.ConfigurableResource):
    """The PostgreSQL database to mirror.

    Attributes:
        url: A PostgreSQL URL (set through `dg.EnvVar`, so the UI shows the variable's name).
        secret_id: Or the id of a Secrets Manager secret holding it.
        statement_timeout_s: Statement timeout on every connection (0 = none).
        batch_bytes: Target size of one Arrow batch; bounds the extractor's memory.
        hash_salt: Salt for hashed columns (set through `dg.EnvVar`).
        hash_salt_secret_id: Or a secret holding the salt.
        parallel_streams: COPY streams for one large table (each is one more connection),
            and the small tables a step reads at once (each over a connection of its own).
        parallel_min_bytes: Tables smaller than this on disk are read with one stream.
    """

    url: str | None = None
    secret_id: str | None = None
    statement_timeout_s: int = 3600
    batch_bytes: int = 16 * 1024 * 1024
    hash_salt: str | None = None
    hash_salt_secret_id: str | None = None
    parallel_streams: int = DEFAULT_PARALLEL_STREAMS
    parallel_min_bytes: int = DEFAULT_PARALLEL_MIN_BYTES
    secrets: dg.ResourceDependency[SecretsManager] = None  # type: ignore[assignment]
    _cache: dict = PrivateAttr(default_factory=dict)

    def resolved_url(self) -> str:
        if "url" not in self._cache:
            if self.url:
                self._cache["url"] = self.url
            elif self.secret_id:
                self._cache["url"] = source_url_from_secret(
                    read_secret(self._secrets(), self.secret_id), self.secret_id
                )
            else:
                raise SecretError("no source configured: set PG_TO_BQ_SOURCE_URL or PG_TO_BQ_SOURCE_SECRET")
        return self._cache["url"]

    def streams_for(self, size_bytes: int | None) -> int:
        """How many COPY streams to read a table of `size_bytes` with."""
        return streams_for(size_bytes, self.parallel_streams, self.parallel_min_bytes)

    def resolved_hash_salt(self) -> bytes | None:
        if self.hash_salt:
            return self.hash_salt.encode("utf-8")
        if self.hash_salt_secret_id:
            return read_secret(self._secrets(), self.hash_salt_secret_id).encode("utf-8")
        return None

    def _secrets(self) -> SecretsManager:
        return self.secrets or secrets_manager()


# dlt destinations made in this process, by the `Destination` configuration they serve.
_destinations: dict[str, Any] = {}
# ... and the `LazyDestination`s that make them (`Destination.for_loads`).
_loads_destinations: dict[str, Any] = {}


class Destination(dg.ConfigurableResource):
    """Where tables land: a DuckDB file or BigQuery.

    Attributes:
        kind: `duckdb` or `bigquery`.
        duckdb_path: The DuckDB file (kind duckdb).
        duckdb_settings: DuckDB settings applied while a table loads (`memory_limit`,
            `threads`, ...), over pg_to_bq's defaults; from `PG_TO_BQ_DESTINATION`'s query.
        dataset: Dataset (BigQuery) or schema (DuckDB) receiving the tables.
        work_dir: Root of every working directory (dlt pipelines); must be writable.
        bigquery_project / bigquery_location: The BigQuery project and dataset location.
        bigquery_credentials_secret_id: A Secrets Manager secret holding a service-account key.
        bigquery_key_file: Or a key file; with neither, application default credentials.
    """

    kind: str = "duckdb"
    duckdb_path: str | None = None
    duckdb_settings: dict[str, str] | None = None
    dataset: str = "pg_raw"
    work_dir: str = "/tmp/pg_to_bq"
    bigquery_project: str | None = None
    bigquery_location: str = "US"
    bigquery_credentials_secret_id: str | None = None
    bigquery_key_file: str | None = None
    secrets: dg.ResourceDependency[SecretsManager] = None  # type: ignore[assignment]

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir)

    def writing(self, on_wait: Callable[[float], None] | None = None) -> AbstractContextManager:
        """Held while a table loads. DuckDB takes one writing process at a time, so a DuckDB
        file is locked for the load (other loads wait, `on_wait` tells); inside
        `pg_to_bq.destinations.writer_lock.kept()` the lock and the open file outlive the
        block. BigQuery needs no lock."""
        if self.kind == "duckdb" and self.duckdb_path:
            from pg_to_bq.destinations.writer_lock import exclusive

            path, settings = self.duckdb_path, self.duckdb_settings

            def keep() -> Any:
                from pg_to_bq.destinations.duckdb_session import KeptFile
                from pg_to_bq.destinations.lazy import duckdb_global_config

                return KeptFile(path, duckdb_global_config(settings)["memory_limit"])

            return exclusive(Path(path), on_wait, keep=keep)
        return contextlib.nullcontext()

    def for_loads(self) -> Any:
        """The destination as a group's load takes it (`pg_to_bq.destinations.lazy`): dlt's
        destination is made only when a table has rows to load. Made (and the user's DuckDB
        settings checked) once per process for this configuration, as `dlt_destination`."""
        key = self.model_dump_json()
        destination = _loads_destinations.get(key)
        if destination is None:
            from pg_to_bq.destinations.lazy import LazyDestination, check_settings

            path = self._duckdb_file() if self.kind == "duckdb" else None
            if path and self.duckdb_settings:
                check_settings(self.duckdb_settings)
            destination = _loads_destinations[key] = LazyDestination(
                self.kind, self.dlt_destination, path, dict(self.duckdb_settings or {}))
        return destination

    def _duckdb_file(self) -> str:
        """The DuckDB file's path, its folder made."""
        if not self.duckdb_path:
            raise ValueError("destination duckdb needs a file path (PG_TO_BQ_DESTINATION)")
        Path(self.duckdb_path).parent.mkdir(parents=True, exist_ok=True)
        return self.duckdb_path

    def dlt_destination(self) -> Any:
        """The dlt destination, made once per process for this configuration (dlt resolves a
        destination's configuration on every use otherwise, `pg_to_bq.destinations.dlt_config`);
        credentials are resolved here, at run time."""
        key = self.model_dump_json()
        destination = _destinations.get(key)
        if destination is None:
            destination = _destinations[key] = self._make_dlt_destination()
        return destination

    def _make_dlt_destination(self) -> Any:
        from pg_to_bq.load import loader_imports

        loader_imports.finish()  # (dlt may be being imported for this process's first load)
        if self.kind == "duckdb":
            from pg_to_bq.destinations.duckdb_file import duckdb_destination

            return duckdb_destination(self._duckdb_file(), self.duckdb_settings)
        if self.kind == "bigquery":
            from pg_to_bq.destinations.dlt_config import bigquery_destination

            return bigquery_destination(
                credentials=self.bigquery_credentials(),
                location=self.bigquery_location,
                project_id=self.bigquery_project,
                replace_strategy="insert-from-staging",
            )
        raise ValueError(f"unknown destination kind {self.kind!r}")

    def bigquery_credentials(self) -> Any:
        """Service-account info from a secret or key file, or None for default credentials."""
        if self.bigquery_credentials_secret_id:
            secret_id = self.bigquery_credentials_secret_id
            secrets = self.secrets or secrets_manager()
            return service_account_info(read_secret(secrets, secret_id), secret_id)
        if self.bigquery_key_file:
            path = Path(self.bigquery_key_file)
            return service_account_info(path.read_text(encoding="utf-8"), str(path))
        return None
