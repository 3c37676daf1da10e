"""Tier 1: settings are validated up front, with one message naming the variable."""

from pathlib import Path

import pytest

from pg_to_bq.planning.settings import Settings, SettingsError, parse_destination, redact_url

BASE = {"PG_TO_BQ_SOURCE_URL": "postgresql://app:s3cret@db.internal:5432/shop"}


def settings(**extra: str) -> Settings:
    return Settings.from_env({**BASE, **{f"PG_TO_BQ_{k}": v for k, v in extra.items()}})


def test_defaults() -> None:
    s = settings()
    assert s.destination.kind == "duckdb"
    assert s.destination.path == Path("/tmp/pg_to_bq/pg_to_bq.duckdb")
    assert s.dataset == "pg_raw"
    assert s.schedule_cron == "0 16 * * *"
    assert s.schedule_timezone == "UTC"
    assert s.work_dir == Path("/tmp/pg_to_bq")
    assert s.snapshot_path == Path("/tmp/pg_to_bq/catalog.json")


def test_missing_source_names_both_settings() -> None:
    with pytest.raises(SettingsError, match="PG_TO_BQ_SOURCE_URL.*PG_TO_BQ_SOURCE_SECRET"):
        Settings.from_env({})


def test_source_secret_alone_is_enough() -> None:
    s = Settings.from_env({"PG_TO_BQ_SOURCE_SECRET": "prod/pg"})
    assert s.source_secret == "prod/pg" and s.source_url is None
    assert "prod/pg" in s.redacted_source()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mysql://x@h/db", "PG_TO_BQ_SOURCE_URL.*not a PostgreSQL URL"),
        ("postgresql://u:p@host:notaport/db", "PG_TO_BQ_SOURCE_URL.*malformed port"),
        ("postgresql://u:p@host:5432/", "PG_TO_BQ_SOURCE_URL.*must name a host and a database"),
    ],
)
def test_malformed_source_url(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as error:
        Settings.from_env({"PG_TO_BQ_SOURCE_URL": value})
    assert "p@" not in str(error.value) or ":***@" in str(error.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DESTINATION", "duckdb://relative", "PG_TO_BQ_DESTINATION.*not understood"),
        ("DESTINATION", "duckdb:///", "PG_TO_BQ_DESTINATION.*names no file"),
        ("DESTINATION", "snowflake", "PG_TO_BQ_DESTINATION.*not understood"),
        ("DATASET", "my-dataset", "PG_TO_BQ_DATASET.*letters, digits and underscores"),
        ("SCHEDULE_CRON", "every night", "PG_TO_BQ_SCHEDULE_CRON.*not a valid cron"),
        ("SCHEDULE_TIMEZONE", "Mars/Olympus", "PG_TO_BQ_SCHEDULE_TIMEZONE.*IANA"),
        ("BATCH_BYTES", "lots", "PG_TO_BQ_BATCH_BYTES.*whole number"),
        ("PARALLEL_STREAMS", "0", "PG_TO_BQ_PARALLEL_STREAMS.*positive"),
        ("INCLUDE_VIEWS", "maybe", "PG_TO_BQ_INCLUDE_VIEWS.*true or false"),
        ("TAGS", "team", "PG_TO_BQ_TAGS.*key=value"),
        ("TABLES_FILE", "/nonexistent/tables.yaml", "PG_TO_BQ_TABLES_FILE.*no such file"),
        ("FRESHNESS", "soon", "PG_TO_BQ_FRESHNESS.*not a duration like 10m, 1h or 2d.*or off"),
        ("FRESHNESS_HOURS", "48", "PG_TO_BQ_FRESHNESS_HOURS is gone.*PG_TO_BQ_FRESHNESS"),
        ("DRIFT_MAX_ROWS", "-1", "PG_TO_BQ_DRIFT_MAX_ROWS"),
    ],
)
def test_bad_setting_is_named(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings(**{name: value})


def test_bigquery_needs_a_project() -> None:
    with pytest.raises(SettingsError, match="PG_TO_BQ_BIGQUERY_PROJECT"):
        settings(DESTINATION="bigquery")
    s = settings(DESTINATION="bigquery", BIGQUERY_PROJECT="acme-data", BIGQUERY_LOCATION="asia-northeast1")
    assert s.destination.kind == "bigquery"
    assert s.bigquery_location == "asia-northeast1"


def test_lists_and_tags() -> None:
    s = settings(INCLUDE="public.*, sales.orders", EXCLUDE="*.tmp_*", OWNERS="data@acme.io",
                 TAGS="team=data, tier=gold", SCHEDULE_TIMEZONE="Asia/Tokyo")
    assert s.include == ("public.*", "sales.orders")
    assert s.exclude == ("*.tmp_*",)
    assert s.owners == ("data@acme.io",)
    assert dict(s.tags) == {"team": "data", "tier": "gold"}
    assert s.schedule_timezone == "Asia/Tokyo"


def test_duckdb_destination_paths() -> None:
    assert parse_destination("duckdb:////abs/file.duckdb").path == Path("/abs/file.duckdb")
    assert parse_destination("duckdb:///rel/file.duckdb").path == Path("rel/file.duckdb").resolve()


def test_duckdb_settings_in_the_destination_query() -> None:
    spec = parse_destination("duckdb:////abs/file.duckdb?memory_limit=1GB&threads=4")
    assert spec.path == Path("/abs/file.duckdb")
    assert spec.duckdb_settings == (("memory_limit", "1GB"), ("threads", "4"))
    assert spec.describe() == "duckdb:////abs/file.duckdb?memory_limit=1GB&threads=4"
    assert parse_destination("duckdb:////abs/f.duckdb?temp_directory=%2Ftmp%2Fspill") \
        .duckdb_settings == (("temp_directory", "/tmp/spill"),)
    assert parse_destination("duckdb:////abs/file.duckdb").duckdb_settings == ()


@pytest.mark.parametrize("query", ["memory_limit", "memory_limit=", "Memory-Limit=1GB", "=1GB"])
def test_malformed_duckdb_settings_name_the_variable(query: str) -> None:
    with pytest.raises(SettingsError, match="PG_TO_BQ_DESTINATION=.*memory_limit=1GB"):
        parse_destination(f"duckdb:////abs/file.duckdb?{query}")


def test_redact_url_hides_password_only() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/shop") == "postgresql://app:***@db:5432/shop"
    assert redact_url("postgresql://app@db/shop") == "postgresql://app@db/shop"


@pytest.mark.parametrize("dataset", ["many", "MANY"])
def test_a_duckdb_dataset_named_like_its_file_is_refused_with_the_rename(dataset: str) -> None:
    """DuckDB names a file's catalog after the file: a schema of the same name makes every
    query ambiguous (every table failed). Refused before anything is touched."""
    with pytest.raises(SettingsError) as refused:
        settings(DESTINATION="duckdb:////data/many.duckdb", DATASET=dataset)
    message = str(refused.value)
    assert f"PG_TO_BQ_DATASET={dataset!r} is also the name DuckDB gives the file many.duckdb" \
        in message
    assert f"PG_TO_BQ_DATASET={dataset}_raw" in message
    assert "PG_TO_BQ_DESTINATION=duckdb:////data/many_mirror.duckdb" in message
    assert settings(DESTINATION="duckdb:////data/many.duckdb", DATASET="many_raw").dataset \
        == "many_raw"
