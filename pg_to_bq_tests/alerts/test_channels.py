"""Channels for real: SNS in moto (server mode), read back through a subscribed SQS queue;
the webhook against a local HTTP server, its URL given or read from Secrets Manager (moto).
A send that fails is logged and returns False; it never raises."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from pg_to_bq.alerts.channels import SnsChannel, WebhookChannel, channels_for, deliver
from pg_to_bq.alerts.messages import Message
from pg_to_bq.alerts.settings import AlertSettings
from pg_to_bq_tests.alerts.conftest import SnsInbox, WebhookServer

pytestmark = pytest.mark.aws

ROOT = Path(__file__).parents[2]

MESSAGE = Message("pg_to_bq shop: mirror_all_tables failed: 1 table",
                  "pg_to_bq · shop: run of mirror_all_tables failed.\n• a <b> & c — 1 table")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sns_publishes_subject_and_text(sns_inbox: SnsInbox) -> None:
    assert SnsChannel(sns_inbox.topic_arn).send(MESSAGE) is True
    [published] = sns_inbox.messages()
    assert published["Subject"] == MESSAGE.subject
    assert published["Message"] == MESSAGE.text
    assert published["TopicArn"] == sns_inbox.topic_arn


def test_sns_fifo_topic_gets_a_group_and_deduplication_id(aws_env: str) -> None:
    arn = boto3.client("sns").create_topic(
        Name="pg-to-bq-alerts.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
    assert SnsChannel(arn).send(MESSAGE) is True


def test_sns_failure_is_logged_not_raised(aws_env: str, caplog: pytest.LogCaptureFixture) -> None:
    missing = "arn:aws:sns:ap-northeast-1:123456789012:no-such-topic"
    with caplog.at_level(logging.ERROR, logger="pg_to_bq.alerts"):
        assert SnsChannel(missing).send(MESSAGE) is False
    assert f"alert not sent to SNS topic {missing}: NotFound" in caplog.text
    assert MESSAGE.subject in caplog.text


def test_webhook_posts_slack_json(webhook: WebhookServer) -> None:
    assert WebhookChannel(url=webhook.url).send(MESSAGE) is True
    [received] = webhook.requests
    assert received.content_type == "application/json"
    assert received.path == "/services/T0000/B0000/XXXXSECRETXXXX"
    # Slack's text escapes &, < and > (and nothing else).
    assert received.body == {"text": MESSAGE.text.replace("&", "&amp;").replace("<", "&lt;")
                                                 .replace(">", "&gt;")}


def test_webhook_url_from_a_secret(webhook: WebhookServer, aws_env: str) -> None:
    secrets = boto3.client("secretsmanager")
    secrets.create_secret(Name="alerts/webhook-plain", SecretString=webhook.url)
    secrets.create_secret(Name="alerts/webhook-json", SecretString=json.dumps({"url": webhook.url}))
    settings = AlertSettings.from_env({"PG_TO_BQ_ALERT_WEBHOOK_SECRET": "alerts/webhook-plain"})
    [channel] = channels_for(settings)
    assert deliver(MESSAGE, [channel]) == 1
    assert WebhookChannel(secret_id="alerts/webhook-json").send(MESSAGE) is True
    assert len(webhook.requests) == 2


def test_webhook_secret_missing_is_logged(aws_env: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pg_to_bq.alerts"):
        assert WebhookChannel(secret_id="alerts/no-such-secret").send(MESSAGE) is False
    assert "cannot read the webhook URL: ResourceNotFoundException" in caplog.text


def test_webhook_500_is_logged_without_the_url(webhook: WebhookServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    webhook.status = 500
    with caplog.at_level(logging.ERROR, logger="pg_to_bq.alerts"):
        assert WebhookChannel(url=webhook.url).send(MESSAGE) is False
    assert "alert not sent to the webhook at 127.0.0.1: HTTP 500 invalid_payload" in caplog.text
    assert "XXXXSECRETXXXX" not in caplog.text  # the URL is a credential: the host only


def test_webhook_unreachable_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/services/T0000/B0000/XXXXSECRETXXXX"
    with caplog.at_level(logging.ERROR, logger="pg_to_bq.alerts"):
        assert WebhookChannel(url=url).send(MESSAGE) is False
    assert "alert not sent to the webhook at 127.0.0.1: URLError" in caplog.text
    assert "XXXXSECRETXXXX" not in caplog.text


def test_webhook_timeout_is_logged(webhook: WebhookServer,
                                   caplog: pytest.LogCaptureFixture) -> None:
    webhook.delay_s = 3.0
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="pg_to_bq.alerts"):
        assert WebhookChannel(url=webhook.url, timeout_s=0.5).send(MESSAGE) is False
    assert time.monotonic() - started < 2.5
    assert "timed out" in caplog.text


def test_a_failed_channel_does_not_stop_the_others(sns_inbox: SnsInbox,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    settings = AlertSettings.from_values(sns_topic_arn=sns_inbox.topic_arn, webhook_url=url)
    with caplog.at_level(logging.ERROR, logger="pg_to_bq.alerts"):
        assert deliver(MESSAGE, channels_for(settings)) == 1
    assert len(sns_inbox.messages()) == 1
    assert "alert not sent to the webhook at 127.0.0.1" in caplog.text


def test_too_long_for_the_channel_is_cut_not_refused(sns_inbox: SnsInbox,
                                                     webhook: WebhookServer) -> None:
    long = Message("pg_to_bq shop: 20000 tables stale", "• table\n" * 40_000)
    assert deliver(long, channels_for(AlertSettings.from_values(
        sns_topic_arn=sns_inbox.topic_arn, webhook_url=webhook.url))) == 2
    [published] = sns_inbox.messages()
    assert len(published["Message"].encode()) <= 250_000
    assert published["Message"].endswith("the whole list is on the run's page)")
    assert len(webhook.texts()[0]) <= 39_000


def run_test_command(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG_TO_BQ_")}
    return subprocess.run([sys.executable, "-m", "pg_to_bq.alerts", "test", "--database", "shop"],
                          env={**clean, "PYTHONPATH": str(ROOT), **env}, capture_output=True,
                          text=True, timeout=60)


def test_the_test_command_proves_each_channel(sns_inbox: SnsInbox,
                                              webhook: WebhookServer) -> None:
    result = run_test_command({"PG_TO_BQ_ALERT_SNS_TOPIC_ARN": sns_inbox.topic_arn,
                               "PG_TO_BQ_ALERT_WEBHOOK_URL": webhook.url})
    assert result.returncode == 0, result.stderr
    assert "test alert sent to 2 of 2 channel(s)" in result.stdout
    [published] = sns_inbox.messages()
    assert published["Subject"] == "pg_to_bq shop: test alert"
    assert webhook.texts()[0].startswith("pg_to_bq · shop: a test alert sent at")

    webhook.status = 500
    failed = run_test_command({"PG_TO_BQ_ALERT_WEBHOOK_URL": webhook.url})
    assert failed.returncode == 1
    assert "alert not sent to the webhook at 127.0.0.1: HTTP 500" in failed.stderr
    assert "XXXXSECRETXXXX" not in failed.stdout + failed.stderr

    unconfigured = run_test_command({})
    assert unconfigured.returncode == 2
    assert "no alert channel is configured" in unconfigured.stderr
    malformed = run_test_command({"PG_TO_BQ_ALERT_SNS_TOPIC_ARN": "my-topic"})
    assert malformed.returncode == 2
    assert "PG_TO_BQ_ALERT_SNS_TOPIC_ARN='my-topic' is not an SNS topic ARN" in malformed.stderr
