"""Tier 1: secret parsing/repair and the check functions."""

import json
from datetime import timedelta

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


def test_one_check_names_every_difference_with_the_right_severity() -> None:
    rows = checks.reconcile_row_counts(10, 10, "merge")
    values = checks.CheckOutcome(checks.FINGERPRINT, True, "ERROR", "values of 3 column(s) match")
    passed = checks.matches_source([rows, values])
    assert passed.passed and passed.name == "matches_source"
    assert passed.description == "row counts match; values of 3 column(s) match"
    # Rows only the delete pass will remove: a warning, never a failed table.
    pending = checks.matches_source([checks.reconcile_row_counts(10, 12, "merge")])
    assert not pending.passed and pending.severity == "WARN"
    # Values changed behind pg_to_bq's back: an error, naming the columns.
    drifted = checks.matches_source([rows], drift=["amount: values changed (9 non-null either "
                                                   "way)", "rows: 10 after the last load, 9 now"])
    assert not drifted.passed and drifted.severity == "ERROR"
    assert "the destination changed since the last load (not by pg_to_bq): amount: values " \
           "changed" in drifted.description and drifted.metadata["drift"][1].startswith("rows")
    # Values changed behind pg_to_bq's back that this run's whole read replaced: the copy
    # is exact again, so a warning (never a failed table), naming what had changed.
    replaced = checks.matches_source([rows, values], replaced=["amount: values changed (9 "
                                                               "non-null either way)"])
    assert not replaced.passed and replaced.severity == "WARN"
    assert "this run's whole read replaced it with the source's rows: amount: values " \
           "changed" in replaced.description
    assert replaced.metadata["drift_replaced"] == ["amount: values changed (9 non-null "
                                                   "either way)"]
    # Both: the error wins, and both are said.
    both = checks.matches_source([checks.reconcile_row_counts(10, 12, "merge"),
                                  checks.CheckOutcome(checks.FINGERPRINT, False, "ERROR",
                                                      "1 of 3 column(s) differ: a")])
    assert both.severity == "ERROR" and "12" not in both.description.split(";")[1] \
        and "1 of 3 column(s) differ: a" in both.description
    # A part not computed this run is said, never a failure.
    skipped = checks.matches_source([rows, checks.not_computed(checks.FINGERPRINT,
                                                               "values not computed: a partition")])
    assert skipped.passed and "values not computed: a partition" in skipped.description


def test_freshness_window_is_the_schedules_longest_gap_plus_the_budget() -> None:
    from pg_to_bq.planning.settings import freshness_window

    assert freshness_window("0 16 * * *", "UTC", timedelta(hours=3)) == timedelta(hours=27)
    assert freshness_window("*/15 * * * *", "UTC", timedelta(minutes=10)) == \
        timedelta(minutes=25)
    # Weekdays only: Friday to Monday is the longest gap.
    assert freshness_window("0 9 * * 1-5", "Asia/Tokyo", timedelta(hours=1)) == \
        timedelta(days=3, hours=1)
