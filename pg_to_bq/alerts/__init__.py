"""Alerts: who hears about a failed night, a failed check or a stale table.

This package owns everything between Dagster's record of what happened and a message on
an operator's channel:

- `settings`: `AlertSettings` (the SNS topic, the webhook URL or the Secrets Manager secret
  holding it, the UI's URL, the database's display name), read from `PG_TO_BQ_ALERT_*` and
  `PG_TO_BQ_UI_URL` or given as component attributes, validated with one error naming the
  setting. No channel configured means no alerts. `database_label` names the database
  from the source URL without its credentials.
- `messages`: pure functions from structured facts (a run's failed tables and checks, the
  tables gone stale) to ONE `Message` per event, with every known secret redacted.
- `channels`: delivery to SNS (`sns:Publish`) and to a Slack-compatible webhook (HTTP POST
  of `{"text": ...}`); a failed delivery is logged, never raised.
- `run_events`: a run's outcome read from Dagster's event log as the facts `messages` takes.
- `sensors`: `build_alert_sensors`, the Dagster sensors that tie it together.
- `__main__`: `python -m pg_to_bq.alerts test`, a test message to each configured channel.

What it may import: the standard library; `pg_to_bq.planning.settings` (for `SettingsError` only);
`dagster` in `run_events` and `sensors` only, so settings, messages and channels stay
usable and testable without Dagster; boto3 inside the functions that call AWS, never at
import. Nothing else in `pg_to_bq` imports from here except the code that wires the
sensors into a code location's definitions. Nothing here reads the environment, a secret
or the network at import.
"""
