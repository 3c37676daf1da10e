"""Tier 1: secret parsing/repair and the check functions."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pg_to_bq.checks import outcomes as checks
from pg_to_bq.planning.secrets import SecretError, service_account_info, source_url_from_secret


@pytest.fixture(scope="module")
def pem_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def service_account(private_key: str) -> str:
    return json.dumps({
        "type": "service_account", "project_id": "acme", "private_key_id": "k1",
        "private_key": private_key, "client_email": "loader@acme.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    })


def test_escaped_private_key_is_repaired(pem_key: str) -> None:
    escaped = pem_key.replace("\n", "\\n")
    info = service_account_info(service_account(escaped), "prod/gcp")
    assert info["private_key"] == pem_key
    assert service_account_info(service_account(pem_key), "prod/gcp")["private_key"] == pem_key


def test_broken_private_key_names_secret_and_field_not_value(pem_key: str) -> None:
    broken = pem_key[:200]
    with pytest.raises(SecretError) as error:
        service_account_info(service_account(broken), "prod/gcp")
    message = str(error.value)
    assert "prod/gcp" in message and "private_key" in message
    assert broken[40:80] not in message


def test_missing_fields_are_named() -> None:
    with pytest.raises(SecretError, match=r"prod/gcp.*\['private_key', 'client_email'\]"):
        service_account_info(json.dumps({"type": "service_account", "project_id": "p",
                                         "token_uri": "t"}), "prod/gcp")
    with pytest.raises(SecretError, match="prod/gcp.*not JSON"):
        service_account_info("not json", "prod/gcp")


@pytest.mark.parametrize(
    "secret",
    [
        "postgresql://app:pw@db:5432/shop",
        json.dumps({"url": "postgresql://app:pw@db:5432/shop"}),
        json.dumps({"host": "db", "port": 5432, "username": "app", "password": "pw",
                    "dbname": "shop", "engine": "postgres"}),
    ],
)
def test_source_secret_layouts(secret: str) -> None:
    assert source_url_from_secret(secret, "prod/pg") == "postgresql://app:pw@db:5432/shop"


def test_source_secret_password_is_url_quoted_and_errors_hide_it() -> None:
    url = source_url_from_secret(json.dumps({"host": "db", "username": "app",
                                             "password": "p@ss/word"}), "prod/pg")
    assert url == "postgresql://app:p%40ss%2Fword@db:5432/postgres"
    with pytest.raises(SecretError) as error:
        source_url_from_secret(json.dumps({"host": "db", "password": "hunter2"}), "prod/pg")
    assert "prod/pg" in str(error.value) and "hunter2" not in str(error.value)


def test_row_count_reconciliation() -> None:
    assert checks.reconcile_row_counts(10, 10, "replace").passed
    missing = checks.reconcile_row_counts(10, 9, "merge")
    assert not missing.passed and missing.severity == "ERROR"
    deleted = checks.reconcile_row_counts(10, 12, "merge")
    assert not deleted.passed and deleted.severity == "WARN"
    extra = checks.reconcile_row_counts(10, 12, "replace")
    assert not extra.passed and extra.severity == "ERROR"
    assert extra.metadata == {"source_rows": 10, "destination_rows": 12, "difference": 2}


def test_cursor_freshness() -> None:
    now = datetime(2026, 11, 27, tzinfo=UTC)
    assert checks.cursor_freshness(now - timedelta(hours=1), timedelta(hours=48), now).passed
    stale = checks.cursor_freshness(now - timedelta(days=5), timedelta(hours=48), now)
    assert not stale.passed and stale.metadata["age_hours"] == 120.0
