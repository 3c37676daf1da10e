"""Delivery: an SNS topic and a Slack-compatible webhook.

A send never raises: an alert that cannot be delivered is logged (logger
`pg_to_bq.alerts`) with the channel and the reason, and the caller goes on (a sensor's
evaluation, and with it the cursor that keeps each event to one message, must not fail
because Slack or AWS is down). The webhook URL is a credential, so logs name its host only.

AWS calls use boto3's usual configuration (region, credentials, `AWS_ENDPOINT_URL`); boto3
is imported when an alert is sent, never at import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from pg_to_bq.alerts.messages import Message, redact
from pg_to_bq.alerts.settings import AlertSettings

log = logging.getLogger("pg_to_bq.alerts")

# SNS accepts up to 256 KB; Slack cuts a message's text after 40,000 characters.
SNS_MAX_BYTES = 250_000
WEBHOOK_MAX_CHARS = 39_000
DEFAULT_TIMEOUT_S = 10.0


class Channel(Protocol):
    """Where an alert goes. `send` returns whether it was delivered, and never raises."""

    @property
    def name(self) -> str: ...

    def send(self, message: Message) -> bool: ...


def _boto_config(timeout_s: float) -> Any:
    from botocore.config import Config

    # An alert must not hold a sensor's evaluation for botocore's default minutes of retries.
    return Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                  retries={"max_attempts": 2, "mode": "standard"})


def _aws_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class SnsChannel:
    """Publishes to an SNS topic (`sns:Publish`), with the message's subject (email
    subscribers see it) and text. A FIFO topic gets a message group and a deduplication id.
    """

    topic_arn: str
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def name(self) -> str:
        return f"SNS topic {self.topic_arn}"

    def send(self, message: Message) -> bool:
        text = _fit_bytes(message.text, SNS_MAX_BYTES)
        request: dict[str, Any] = {"TopicArn": self.topic_arn, "Subject": message.subject,
                                   "Message": text}
        if self.topic_arn.endswith(".fifo"):
            request["MessageGroupId"] = "pg_to_bq"
            request["MessageDeduplicationId"] = hashlib.sha256(
                (message.subject + "\n" + text).encode()).hexdigest()
        try:
            import boto3

            region = self.topic_arn.split(":")[3]
            client = boto3.session.Session().client("sns", region_name=region,
                                                    config=_boto_config(self.timeout_s))
            client.publish(**request)
        except Exception as exc:  # a failed alert is logged, never raised
            log.error("alert not sent to %s: %s (subject: %s)", self.name, _aws_error(exc),
                      message.subject)
            return False
        log.info("alert sent to %s: %s", self.name, message.subject)
        return True


@dataclass(frozen=True)
class WebhookChannel:
    """POSTs `{"text": ...}` (what Slack's incoming webhooks take; Mattermost, Rocket.Chat,
    Discord's `/slack` endpoint and Teams' workflows accept it too) to the URL given, or to
    the URL read from the Secrets Manager secret `secret_id` at each send (so a rotated URL
    is picked up without a restart). `&`, `<` and `>` are escaped as Slack requires.
    """

    url: str | None = field(default=None, repr=False)
    secret_id: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def name(self) -> str:
        if self.secret_id:
            return f"webhook from secret {self.secret_id!r}"
        return f"webhook at {urlsplit(self.url or '').hostname}"

    def send(self, message: Message) -> bool:
        try:
            url = self.resolve_url()
        except Exception as exc:  # no secret, no access, no URL in it
            log.error("alert not sent to the %s: cannot read the webhook URL: %s (subject: %s)",
                      self.name, _aws_error(exc), message.subject)
            return False
        text = _slack_escape(_fit_chars(message.text, WEBHOOK_MAX_CHARS))
        request = urllib.request.Request(
            url, data=json.dumps({"text": text}).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "pg_to_bq-alerts"})
        host = urlsplit(url).hostname
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read(300).decode("utf-8", "replace") if exc.fp else ""
            log.error("alert not sent to the webhook at %s: HTTP %s %s (subject: %s)", host,
                      exc.code, redact(_one_line(body), [url]), message.subject)
            return False
        except Exception as exc:  # unreachable, timed out, TLS, a bad answer
            reason = getattr(exc, "reason", exc)
            log.error("alert not sent to the webhook at %s: %s: %s (subject: %s)", host,
                      type(exc).__name__, redact(str(reason), [url]), message.subject)
            return False
        log.info("alert sent to the webhook at %s: %s", host, message.subject)
        return True

    def resolve_url(self) -> str:
        """The webhook URL: the one given, or the one the secret holds (plain text, or JSON
        with `url` or `webhook_url`)."""
        if self.url:
            return self.url
        if not self.secret_id:
            raise ValueError("no webhook URL and no secret holding it")
        import boto3

        region = self.secret_id.split(":")[3] if self.secret_id.startswith("arn:") else None
        client = boto3.session.Session().client("secretsmanager", region_name=region,
                                                config=_boto_config(self.timeout_s))
        value = (client.get_secret_value(SecretId=self.secret_id).get("SecretString") or "").strip()
        if value.startswith("{"):
            data = json.loads(value)
            value = str(data.get("url") or data.get("webhook_url") or "").strip()
        if urlsplit(value).scheme.lower() not in ("http", "https"):
            raise ValueError(f"secret {self.secret_id!r} holds no http(s) URL "
                             "(expected the URL as plain text, or JSON with 'url')")
        return value


def channels_for(settings: AlertSettings, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Channel]:
    """The channels `settings` configure (none when alerts are off)."""
    channels: list[Channel] = []
    if settings.sns_topic_arn:
        channels.append(SnsChannel(settings.sns_topic_arn, timeout_s=timeout_s))
    if settings.webhook_url or settings.webhook_secret:
        channels.append(WebhookChannel(url=settings.webhook_url, secret_id=settings.webhook_secret,
                                       timeout_s=timeout_s))
    return channels


def deliver(message: Message, channels: Sequence[Channel]) -> int:
    """Send `message` to every channel; the number that took it. Never raises."""
    return sum(1 for channel in channels if channel.send(message))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fit_chars(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    tail = "\n… (cut here: the whole list is on the run's page)"
    return text[: limit - len(tail)] + tail


def _fit_bytes(text: str, limit: int) -> str:
    if len(text.encode()) <= limit:
        return text
    tail = "\n… (cut here: the whole list is on the run's page)"
    cut = text.encode()[: limit - len(tail.encode())].decode("utf-8", "ignore")
    return cut + tail
