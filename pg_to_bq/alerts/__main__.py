"""`python -m pg_to_bq.alerts test`: send a test message to the configured channels.

Run it where the sensors run (the code location's container, with its environment and AWS
role) to prove each channel end to end: the settings, the credentials, the network path.
Exit status 0 when every channel took the message, 1 when one did not (the log says why),
2 when no channel is configured or a setting is malformed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime

from pg_to_bq.alerts.channels import channels_for, deliver
from pg_to_bq.alerts.messages import Message
from pg_to_bq.alerts.settings import AlertSettings
from pg_to_bq.planning.settings import SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pg_to_bq.alerts",
                                     description="Alerts of pg_to_bq.")
    commands = parser.add_subparsers(dest="command", required=True)
    test = commands.add_parser("test", help="send a test message to every configured channel")
    test.add_argument("--database", default="PostgreSQL", help="how the message names the database")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    try:
        settings = AlertSettings.from_env(database=args.database)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    channels = channels_for(settings)
    if not channels:
        print("no alert channel is configured: set PG_TO_BQ_ALERT_SNS_TOPIC_ARN, "
              "PG_TO_BQ_ALERT_WEBHOOK_URL or PG_TO_BQ_ALERT_WEBHOOK_SECRET", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    link = f"\n\nDagster UI: {settings.ui_url}" if settings.ui_url else ""
    message = Message(f"pg_to_bq {settings.database}: test alert",
                      f"pg_to_bq · {settings.database}: a test alert sent at "
                      f"{now:%Y-%m-%d %H:%M:%S} UTC. Failed runs, failed tables, failed ERROR "
                      f"checks and stale tables will be reported here.{link}")
    sent = deliver(message, channels)
    print(f"test alert sent to {sent} of {len(channels)} channel(s): "
          + ", ".join(channel.name for channel in channels))
    return 0 if sent == len(channels) else 1


if __name__ == "__main__":
    sys.exit(main())
