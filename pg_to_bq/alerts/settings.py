"""Where alerts go: `AlertSettings`, from `PG_TO_BQ_*` variables or component attributes.

Off until configured: with neither an SNS topic nor a webhook there is no channel, and no
sensor is built. Reading the settings touches nothing outside the process: a webhook
secret is kept as its id and read from AWS Secrets Manager when an alert is sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pg_to_bq.planning.settings import SettingsError

SNS_TOPIC_ARN_ENV = "PG_TO_BQ_ALERT_SNS_TOPIC_ARN"
WEBHOOK_URL_ENV = "PG_TO_BQ_ALERT_WEBHOOK_URL"
WEBHOOK_SECRET_ENV = "PG_TO_BQ_ALERT_WEBHOOK_SECRET"
UI_URL_ENV = "PG_TO_BQ_UI_URL"

# What an error names for each field: the environment variables by default; the component
# passes its attribute names.
ENV_NAMES: Mapping[str, str] = {
    "sns_topic_arn": SNS_TOPIC_ARN_ENV,
    "webhook_url": WEBHOOK_URL_ENV,
    "webhook_secret": WEBHOOK_SECRET_ENV,
    "ui_url": UI_URL_ENV,
}

# arn:PARTITION:sns:REGION:ACCOUNT:TOPIC (a FIFO topic's name ends in .fifo).
_SNS_TOPIC_ARN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:sns:[a-z]{2}(?:-[a-z]+)+-\d+:\d{12}:[A-Za-z0-9_-]{1,256}(?:\.fifo)?$")
# A Secrets Manager secret name (letters, digits and /_+=.@-) or a secret's ARN.
_SECRET_ID = re.compile(
    r"^(?:arn:aws(?:-[a-z]+)*:secretsmanager:[a-z0-9-]+:\d{12}:secret:)?[A-Za-z0-9/_+=.@-]{1,2048}$")


@dataclass(frozen=True)
class AlertSettings:
    """Validated alert settings. Build with `from_env` or `from_values` (never directly, or
    nothing is checked).

    Attributes:
        sns_topic_arn: The SNS topic every alert is published to, or None.
        webhook_url: A Slack-compatible incoming-webhook URL, or None. It is a secret (whoever
            holds it can post), so it never appears in an error, a log line or a message.
        webhook_secret: The id (name or ARN) of an AWS Secrets Manager secret holding the
            webhook URL (plain text, or JSON with `url`), read at each send; or None.
        ui_url: The Dagster UI's base URL (no trailing slash) for links in messages, or None.
        database: How messages name the mirrored database (e.g. `shop on db.example.com`).
    """

    sns_topic_arn: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    ui_url: str | None = None
    database: str = "PostgreSQL"

    def __repr__(self) -> str:  # the webhook URL is a credential
        webhook = "'***'" if self.webhook_url else "None"
        return (f"AlertSettings(sns_topic_arn={self.sns_topic_arn!r}, webhook_url={webhook}, "
                f"webhook_secret={self.webhook_secret!r}, ui_url={self.ui_url!r}, "
                f"database={self.database!r})")

    @property
    def enabled(self) -> bool:
        """Whether any channel is configured (otherwise no alert is sent, no sensor built)."""
        return bool(self.sns_topic_arn or self.webhook_url or self.webhook_secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 database: str = "PostgreSQL") -> AlertSettings:
        """Read `PG_TO_BQ_ALERT_SNS_TOPIC_ARN`, `PG_TO_BQ_ALERT_WEBHOOK_URL`,
        `PG_TO_BQ_ALERT_WEBHOOK_SECRET` and `PG_TO_BQ_UI_URL` from `environ` (default: the
        process environment). An unset or blank variable is not configured.

        Args:
            environ: The variables to read.
            database: How messages name the mirrored database.

        Raises:
            SettingsError: A value is malformed; the message names the variable.
        """
        environ = os.environ if environ is None else environ
        return cls.from_values(
            sns_topic_arn=environ.get(SNS_TOPIC_ARN_ENV),
            webhook_url=environ.get(WEBHOOK_URL_ENV),
            webhook_secret=environ.get(WEBHOOK_SECRET_ENV),
            ui_url=environ.get(UI_URL_ENV),
            database=database,
        )

    @classmethod
    def from_values(cls, *, sns_topic_arn: str | None = None, webhook_url: str | None = None,
                    webhook_secret: str | None = None, ui_url: str | None = None,
                    database: str = "PostgreSQL",
                    names: Mapping[str, str] = ENV_NAMES) -> AlertSettings:
        """Validated settings from values (a component's attributes); `names` says what an
        error calls each field (default: its environment variable).

        Raises:
            SettingsError: A value is malformed; the message names the setting.
        """
        topic = _blank_to_none(sns_topic_arn)
        url = _blank_to_none(webhook_url)
        secret = _blank_to_none(webhook_secret)
        ui = _blank_to_none(ui_url)
        if topic is not None and not _SNS_TOPIC_ARN.match(topic):
            raise SettingsError(
                f"{names['sns_topic_arn']}={topic!r} is not an SNS topic ARN: expected "
                "arn:aws:sns:REGION:ACCOUNT_ID:TOPIC_NAME (e.g. "
                "arn:aws:sns:eu-west-1:123456789012:pg-to-bq-alerts)")
        if url is not None and secret is not None:
            raise SettingsError(
                f"set {names['webhook_url']} or {names['webhook_secret']}, not both: the "
                "secret holds the webhook URL")
        if url is not None:
            _check_http_url(url, names["webhook_url"], show_value=False)
        if secret is not None and not _SECRET_ID.match(secret):
            raise SettingsError(
                f"{names['webhook_secret']}={secret!r} is not an AWS Secrets Manager secret id: "
                "expected a secret's name (letters, digits and /_+=.@-) or its ARN")
        if ui is not None:
            _check_http_url(ui, names["ui_url"], show_value=True)
            ui = ui.rstrip("/")
        return cls(sns_topic_arn=topic, webhook_url=url, webhook_secret=secret, ui_url=ui,
                   database=database.strip() or "PostgreSQL")


def _blank_to_none(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip()


def _check_http_url(value: str, name: str, *, show_value: bool) -> None:
    parts = urlsplit(value)
    if parts.scheme.lower() in ("http", "https") and parts.hostname:
        return
    if show_value:
        raise SettingsError(f"{name}={value!r} is not an http(s) URL: expected https://HOST/PATH")
    # A webhook URL is a credential: the error says what is wrong with it, never the URL.
    what = "no host" if parts.scheme.lower() in ("http", "https") else \
        f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
    raise SettingsError(f"{name} is not an http(s) URL ({what}): expected https://HOST/PATH")


def database_label(source_url: str | None = None, source_secret: str | None = None) -> str:
    """How messages can name the mirrored database without a credential: `shop on
    db.internal` from a PostgreSQL URL (its database and host only), the secret's id when
    the URL is in a secret (not read here), else `PostgreSQL`."""
    if source_url:
        parts = urlsplit(source_url)
        database = unquote(parts.path.lstrip("/")) or "postgres"
        return f"{database} on {parts.hostname or 'localhost'}"
    if source_secret:
        return f"the database of secret {source_secret}"
    return "PostgreSQL"
