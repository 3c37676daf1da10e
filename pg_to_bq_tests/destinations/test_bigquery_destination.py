"""BigQuery tier: the demo tables through dlt's real BigQuery destination into the BigQuery
emulator (HTTP), with every secret read from Secrets Manager served by moto in server mode."""

from __future__ import annotations

import datetime as dt
import json
import logging
import struct
from decimal import Decimal

import boto3
import dagster as dg
import pytest

from pg_to_bq.orchestration.code_location import build_definitions
from pg_to_bq.planning.settings import Settings
from pg_to_bq_tests.conftest import pg_rows

pytestmark = [pytest.mark.bigquery, pytest.mark.aws]

PG_PASSWORD = "pg-Secret-Value-7731"


def with_password(url: str) -> str:
    # The embedded server trusts loopback logins, so any password works; it must still
    # never show up in a log.
    return url.replace("postgres@", f"postgres:{PG_PASSWORD}@", 1)


@pytest.fixture
def bigquery_secrets(aws_env: str, sample_db_url: str, bigquery_emulator) -> dict:
    client = boto3.client("secretsmanager")
    suffix = dt.datetime.now().strftime("%H%M%S%f")
    info = bigquery_emulator.service_account_info()
    # As the Secrets Manager console's key/value editor stores it: newlines escaped.
    escaped = json.dumps({**info, "private_key": info["private_key"].replace("\n", "\\n")})
    names = {"source": f"pg_to_bq/source-{suffix}", "gcp": f"pg_to_bq/gcp-{suffix}"}
    client.create_secret(Name=names["source"],
                         SecretString=json.dumps({"url": with_password(sample_db_url)}))
    client.create_secret(Name=names["gcp"], SecretString=escaped)
    return {**names, "private_key": info["private_key"]}


def configure(monkeypatch, tmp_path, emulator, secrets: dict, dataset: str) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("PG_TO_BQ_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PG_TO_BQ_SOURCE_SECRET", secrets["source"])
    monkeypatch.setenv("PG_TO_BQ_DESTINATION", "bigquery")
    monkeypatch.setenv("PG_TO_BQ_BIGQUERY_PROJECT", emulator.project_id)
    monkeypatch.setenv("PG_TO_BQ_BIGQUERY_CREDENTIALS_SECRET", secrets["gcp"])
    monkeypatch.setenv("PG_TO_BQ_DATASET", dataset)
    monkeypatch.setenv("PG_TO_BQ_WORK_DIR", str(tmp_path / "work"))


def materialize(defs: dg.Definitions, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(list(defs.assets or []), selection=dg.AssetSelection.kind("dlt"),
                          resources=defs.resources, raise_on_error=False, **kwargs)


def bq_rows(emulator, sql: str) -> list[tuple]:
    return [tuple(row.values()) for row in emulator.client().query_and_wait(sql)]


def test_demo_tables_land_in_bigquery_value_by_value(
    monkeypatch, tmp_path, bigquery_emulator, bigquery_secrets, sample_db_url, caplog, capfd
) -> None:
    configure(monkeypatch, tmp_path, bigquery_emulator, bigquery_secrets, "shop_raw")
    caplog.set_level(logging.DEBUG)
    defs = build_definitions(Settings.from_env())
    result = materialize(defs)
    failures = [e.step_failure_data.user_failure_data.description
                for e in result.get_step_failure_events() if e.step_failure_data.user_failure_data]
    assert result.success, failures

    project = bigquery_emulator.project_id
    for table in ("audit_log", "customers", "order_items", "orders", "page_views", "products",
                  "顧客メモ"):
        [(source,)] = pg_rows(sample_db_url, f'SELECT count(*) FROM public."{table}"')
        [(dest,)] = bq_rows(bigquery_emulator,
                            f"SELECT count(*) FROM `{project}.shop_raw.{table}`")
        assert dest == source, table

    source = pg_rows(sample_db_url, "SELECT id, email, country, signup_ip::text, birth_date, "
                                    "is_active, preferences::text, created_at FROM customers "
                                    "ORDER BY id")
    dest = bq_rows(bigquery_emulator, "SELECT id, email, country, signup_ip, birth_date, "
                                      "is_active, preferences, created_at "
                                      f"FROM `{project}.shop_raw.customers` ORDER BY id")
    assert len(dest) == 5000
    for s, d in zip(source, dest, strict=True):
        assert s[:6] == d[:6]
        assert s[6] == d[6]  # the exact jsonb text, in a STRING
        assert s[7] == d[7]  # the same instant

    source = pg_rows(sample_db_url, "SELECT id, status::text, total, local_time, "
                                    "delivery_slot::text FROM orders ORDER BY id")
    dest = bq_rows(bigquery_emulator, "SELECT id, status, total, local_time, delivery_slot "
                                      f"FROM `{project}.shop_raw.orders` ORDER BY id")
    for s, d in zip(source, dest, strict=True):
        assert (s[0], s[1], s[4]) == (d[0], d[1], d[4])
        assert isinstance(d[2], Decimal) and d[2] == s[2]
        # A naive timestamp keeps its digits (dlt creates TIMESTAMP, read back as UTC).
        assert d[3].replace(tzinfo=None) == s[3]

    source = pg_rows(sample_db_url, "SELECT id, price, weight_kg, tags FROM products ORDER BY id")
    dest = bq_rows(bigquery_emulator, "SELECT id, price, weight_kg, tags "
                                      f"FROM `{project}.shop_raw.products` ORDER BY id")
    for s, d in zip(source, dest, strict=True):
        assert s[1] == d[1]
        assert (None if s[2] is None else struct.pack("f", s[2])) == \
            (None if d[2] is None else struct.pack("f", d[2]))
        assert s[3] == (json.loads(d[3]) if d[3] is not None else None)

    # Column descriptions come from PostgreSQL comments.
    table = bigquery_emulator.client().get_table(f"{project}.shop_raw.customers")
    descriptions = {f.name: f.description for f in table.schema}
    assert descriptions["email"] == "Login e-mail address"
    assert "password_hash" not in descriptions

    # No secret reaches logs, events or metadata.
    captured = capfd.readouterr()
    text = caplog.text + captured.out + captured.err + "".join(
        str(e.message) + repr(getattr(e, "event_specific_data", "")) for e in result.all_events)
    assert PG_PASSWORD not in text
    key_body = bigquery_secrets["private_key"].splitlines()[5]
    assert key_body not in text and key_body.replace("\n", "\\n") not in text


def test_rerun_replaces_and_merges_without_duplicates(
    monkeypatch, tmp_path, bigquery_emulator, bigquery_secrets, sample_db_url
) -> None:
    configure(monkeypatch, tmp_path, bigquery_emulator, bigquery_secrets, "shop_rerun")
    monkeypatch.setenv("PG_TO_BQ_INCLUDE", "public.orders,public.audit_log")
    # (orders merged by cursor, as a table above PG_TO_BQ_READ_WHOLE_BYTES is)
    monkeypatch.setenv("PG_TO_BQ_READ_WHOLE_BYTES", "0")
    defs = build_definitions(Settings.from_env())
    assert materialize(defs).success
    second = materialize(defs)
    assert second.success
    modes = {e.event_specific_data.materialization.asset_key.path[-1]:
             e.event_specific_data.materialization.metadata["load_mode"].value
             for e in second.get_asset_materialization_events()}
    assert modes == {"orders": "incremental", "audit_log": "full"}
    project = bigquery_emulator.project_id
    assert bq_rows(bigquery_emulator, f"SELECT count(*), count(DISTINCT id) "
                                      f"FROM `{project}.shop_rerun.orders`") == [(20000, 20000)]
    assert bq_rows(bigquery_emulator, f"SELECT count(*) FROM `{project}.shop_rerun.audit_log`") \
        == [(4002,)]
    checks = {(e.asset_key.path[-1], e.check_name): e.passed
              for e in second.get_asset_check_evaluations()}
    assert checks[("orders", "matches_source")]
    assert checks[("audit_log", "matches_source")]


def test_missing_secret_fails_with_its_id(monkeypatch, tmp_path, bigquery_emulator,
                                          bigquery_secrets) -> None:
    configure(monkeypatch, tmp_path, bigquery_emulator,
              {**bigquery_secrets, "gcp": "pg_to_bq/does-not-exist"}, "shop_missing")
    monkeypatch.setenv("PG_TO_BQ_INCLUDE", "public.products")
    result = materialize(build_definitions(Settings.from_env()))
    assert not result.success
    [failure] = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert "pg_to_bq/does-not-exist" in message and "ResourceNotFoundException" in message


def test_broken_private_key_names_secret_and_field(monkeypatch, tmp_path, bigquery_emulator,
                                                  bigquery_secrets) -> None:
    info = bigquery_emulator.service_account_info()
    broken = info["private_key"][:300]
    name = bigquery_secrets["gcp"] + "-broken"
    boto3.client("secretsmanager").create_secret(
        Name=name, SecretString=json.dumps({**info, "private_key": broken}))
    configure(monkeypatch, tmp_path, bigquery_emulator, {**bigquery_secrets, "gcp": name},
              "shop_broken")
    monkeypatch.setenv("PG_TO_BQ_INCLUDE", "public.products")
    result = materialize(build_definitions(Settings.from_env()))
    [failure] = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert name in message and "private_key" in message
    assert broken.splitlines()[2] not in message


def test_table_description_partitioning_and_clustering(monkeypatch, tmp_path, bigquery_emulator,
                                                       bigquery_secrets, pg_url) -> None:
    from pg_to_bq_tests.conftest import run_sql

    run_sql(pg_url, """
        CREATE TABLE visits (id int PRIMARY KEY, day date NOT NULL, shop text, n int);
        COMMENT ON TABLE visits IS 'Daily visits per shop';
        INSERT INTO visits SELECT g, DATE '2026-11-01' + (g % 5), 'shop' || (g % 3), g
        FROM generate_series(1, 300) g;
    """)
    client = boto3.client("secretsmanager")
    source = bigquery_secrets["source"] + "-visits"
    client.create_secret(Name=source, SecretString=json.dumps({"url": pg_url}))
    tables = tmp_path / "tables.yaml"
    tables.write_text("tables:\n  public.visits:\n    bigquery: {partition: day, cluster: [shop]}\n")
    configure(monkeypatch, tmp_path, bigquery_emulator, {**bigquery_secrets, "source": source},
              "visits_raw")
    monkeypatch.setenv("PG_TO_BQ_TABLES_FILE", str(tables))
    result = materialize(build_definitions(Settings.from_env()))
    assert result.success
    table = bigquery_emulator.client().get_table(f"{bigquery_emulator.project_id}.visits_raw.visits")
    assert table.description == "Daily visits per shop"
    assert table.time_partitioning is not None and table.time_partitioning.field == "day"
    assert table.clustering_fields == ["shop"]
    assert table.num_rows == 300 or bq_rows(
        bigquery_emulator, f"SELECT count(*) FROM `{bigquery_emulator.project_id}.visits_raw.visits`"
    ) == [(300,)]
