"""Alert settings: off until configured, one clear error naming the setting."""

from __future__ import annotations

import pytest

from pg_to_bq.alerts.settings import AlertSettings, database_label
from pg_to_bq.planning.settings import SettingsError

TOPIC = "arn:aws:sns:eu-west-1:123456789012:pg-to-bq-alerts"
HOOK = "https://hooks.slack.com/services/T0000/B0000/XXXXSECRETXXXX"


def test_off_until_configured() -> None:
    settings = AlertSettings.from_env({})
    assert not settings.enabled
    assert not AlertSettings.from_env({"PG_TO_BQ_ALERT_SNS_TOPIC_ARN": "  ",
                                       "PG_TO_BQ_UI_URL": "http://ui:3000"}).enabled


def test_from_env() -> None:
    settings = AlertSettings.from_env({
        "PG_TO_BQ_ALERT_SNS_TOPIC_ARN": TOPIC,
        "PG_TO_BQ_ALERT_WEBHOOK_URL": HOOK,
        "PG_TO_BQ_UI_URL": "https://dagster.example.com/",
    }, database="shop on db.internal")
    assert settings == AlertSettings(sns_topic_arn=TOPIC, webhook_url=HOOK, webhook_secret=None,
                                     ui_url="https://dagster.example.com",
                                     database="shop on db.internal")
    assert settings.enabled
    assert "XXXXSECRETXXXX" not in repr(settings)
    secret = AlertSettings.from_env({"PG_TO_BQ_ALERT_WEBHOOK_SECRET": "prod/alerts/webhook"})
    assert secret.enabled and secret.webhook_secret == "prod/alerts/webhook"
    fifo = "arn:aws-us-gov:sns:us-gov-west-1:123456789012:alerts.fifo"
    assert AlertSettings.from_env({"PG_TO_BQ_ALERT_SNS_TOPIC_ARN": fifo}).sns_topic_arn == fifo


@pytest.mark.parametrize(("env", "error"), [
    ({"PG_TO_BQ_ALERT_SNS_TOPIC_ARN": "arn:aws:sqs:eu-west-1:123456789012:q"},
     "PG_TO_BQ_ALERT_SNS_TOPIC_ARN='arn:aws:sqs:eu-west-1:123456789012:q' is not an SNS topic "
     "ARN: expected arn:aws:sns:REGION:ACCOUNT_ID:TOPIC_NAME"),
    ({"PG_TO_BQ_ALERT_SNS_TOPIC_ARN": "pg-to-bq-alerts"},
     "PG_TO_BQ_ALERT_SNS_TOPIC_ARN='pg-to-bq-alerts' is not an SNS topic ARN"),
    ({"PG_TO_BQ_ALERT_WEBHOOK_URL": "hooks.slack.com/services/T0/B0/XXXXSECRETXXXX"},
     "PG_TO_BQ_ALERT_WEBHOOK_URL is not an http(s) URL (no scheme): expected https://HOST/PATH"),
    ({"PG_TO_BQ_ALERT_WEBHOOK_URL": "ftp://hooks.example.com/XXXXSECRETXXXX"},
     "PG_TO_BQ_ALERT_WEBHOOK_URL is not an http(s) URL (scheme 'ftp')"),
    ({"PG_TO_BQ_ALERT_WEBHOOK_URL": HOOK, "PG_TO_BQ_ALERT_WEBHOOK_SECRET": "alerts/hook"},
     "set PG_TO_BQ_ALERT_WEBHOOK_URL or PG_TO_BQ_ALERT_WEBHOOK_SECRET, not both"),
    ({"PG_TO_BQ_ALERT_WEBHOOK_SECRET": "my secret!"},
     "PG_TO_BQ_ALERT_WEBHOOK_SECRET='my secret!' is not an AWS Secrets Manager secret id"),
    ({"PG_TO_BQ_ALERT_SNS_TOPIC_ARN": TOPIC, "PG_TO_BQ_UI_URL": "dagster.internal:3000"},
     "PG_TO_BQ_UI_URL='dagster.internal:3000' is not an http(s) URL"),
])
def test_bad_values_name_the_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(SettingsError) as raised:
        AlertSettings.from_env(env)
    assert str(raised.value).startswith(error)
    assert "XXXXSECRETXXXX" not in str(raised.value)  # a webhook URL is a credential


def test_component_attributes_are_named_in_errors() -> None:
    names = {"sns_topic_arn": "alert_sns_topic_arn", "webhook_url": "alert_webhook_url",
             "webhook_secret": "alert_webhook_secret", "ui_url": "ui_url"}
    with pytest.raises(SettingsError, match="^alert_sns_topic_arn='nope' is not an SNS topic"):
        AlertSettings.from_values(sns_topic_arn="nope", names=names)


def test_database_label_has_no_credentials() -> None:
    assert database_label("postgresql://loader:s3cr3t@db.internal:5432/shop") == "shop on db.internal"
    assert database_label("postgresql+psycopg2://u@10.0.0.5/%E9%A1%A7%E5%AE%A2") == "顧客 on 10.0.0.5"
    assert database_label(None, "prod/pg_to_bq/source") == "the database of secret prod/pg_to_bq/source"
    assert database_label() == "PostgreSQL"
