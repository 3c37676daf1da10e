"""The Dagster sensors that send alerts: `build_alert_sensors`.

Three sensors, built only when a channel is configured, running by default (the daemon
evaluates them; they can be stopped in the UI like any sensor):

- `<prefix>pg_to_bq_failed_run_alert` — Dagster's `run_failure_sensor`: one message per
  failed run of the monitored jobs, listing its unloaded tables grouped by cause, its
  failed ERROR checks and errors attached to no table (`run_events.run_report`).
- `<prefix>pg_to_bq_failures_in_successful_run_alert` — a `run_status_sensor` on SUCCESS:
  one message per run that succeeded with failed tables or failed ERROR checks in it (none
  for a clean run).
- `<prefix>pg_to_bq_stale_tables_alert` — Dagster 1.13 has no sensor type for freshness:
  its FreshnessDaemon evaluates each asset's `FreshnessPolicy` and records a
  `FRESHNESS_STATE_CHANGE` event only when the state changes, which nothing else consumes.
  This sensor polls the latest freshness state of the monitored assets (the record the UI
  shows), and sends one message for all the tables that entered FAIL since its last tick.
  Its cursor keeps, for each table in FAIL, the time of that state change, so a table is
  alerted once per transition into FAIL, and again only after it was fresh in between.
  Tables that go stale together are one message: the daemon writes one state change after
  another, so the sensor waits until the newest transition is `freshness_settle_seconds`
  old (the daemon's pass is over) before it sends, unless the oldest has waited ten times
  that.

Run status sensors keep Dagster's own cursor (the last run status event handled), so each
failed run is one message; an alert that cannot be delivered is logged and not retried.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from pg_to_bq.alerts.channels import Channel, channels_for, deliver
from pg_to_bq.alerts.messages import Message, RunReport, StaleTable, run_message, stale_message
from pg_to_bq.alerts.run_events import run_failure_error, run_report, source_tables
from pg_to_bq.alerts.settings import AlertSettings

FAILED_RUN_SENSOR = "pg_to_bq_failed_run_alert"
FAILURES_IN_SUCCESSFUL_RUN_SENSOR = "pg_to_bq_failures_in_successful_run_alert"
STALE_TABLES_SENSOR = "pg_to_bq_stale_tables_alert"
# SQLite's default limit on a statement's variables is 999 before 3.32.
_KEYS_PER_QUERY = 500
_FAIL = "FAIL"
# The FreshnessDaemon evaluates every asset each 30 s and writes each change as it goes.
DEFAULT_SETTLE_SECONDS = 30.0


def build_alert_sensors(
    settings: AlertSettings,
    *,
    jobs: Sequence[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] | None = None,
    assets: dg.AssetSelection | None = None,
    name_prefix: str = "",
    minimum_interval_seconds: int = 30,
    freshness_settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    secret_values: Callable[[], Iterable[str]] | None = None,
) -> list[dg.SensorDefinition]:
    """The alert sensors for one mirrored database; none when no channel is configured.

    Args:
        settings: Where alerts go and how messages name the database and link to the UI.
        jobs: The jobs whose runs are watched (the mirror's jobs). None watches every job of
            the code location, materializations launched from the UI included.
        assets: The assets watched for staleness; None, every asset of the code location
            that has a `FreshnessPolicy`.
        name_prefix: Prepended to the sensors' names (one set of sensors per mirror).
        minimum_interval_seconds: How often the daemon evaluates each sensor.
        freshness_settle_seconds: How long tables that go stale are waited for, so that
            the tables the FreshnessDaemon finds stale in one pass are one message.
        secret_values: Called when a message is built; values that must never appear in it
            (e.g. the source's password), besides URL passwords, which are always masked.
    """
    if not settings.enabled:
        return []
    channels = channels_for(settings)
    monitored = list(jobs) if jobs else None
    location = _CodeLocation(assets)
    watched = "the jobs " + ", ".join(j.name for j in monitored) if monitored else "every job"

    def secrets() -> list[str]:
        values = list(secret_values()) if secret_values else []
        return [*values, *([settings.webhook_url] if settings.webhook_url else [])]

    def send(message: Message | None, context_log: logging.Logger) -> None:
        if message is None:
            return
        sent = deliver(message, channels)
        line = f"alert {message.subject!r} sent to {sent} of {len(channels)} channel(s)"
        if sent < len(channels):
            context_log.warning(f"{line}; why not to the others: the code server's log "
                                "(logger pg_to_bq.alerts)")
        else:
            context_log.info(line)

    @dg.run_failure_sensor(
        name=name_prefix + FAILED_RUN_SENSOR,
        monitored_jobs=monitored,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Alerts ({_names(channels)}) when a run of {watched} fails: its failed "
                    "tables by cause, failed ERROR checks, and a link to the run.")
    def failed_run(context: dg.RunFailureSensorContext) -> None:
        run, run_error = context.dagster_run, run_failure_error(context.failure_event)
        try:
            report = run_report(context.instance, run, succeeded=False, run_error=run_error,
                                aliases=location.aliases(context.repository_def))
        except Exception as exc:  # the failure is worth a message even without its details
            context.log.exception("could not read the failed run's events")
            report = RunReport(run.run_id, run.job_name, succeeded=False, errors=(
                *([run_error] if run_error else []),
                f"(the run's tables could not be read from its events: {type(exc).__name__})"))
        send(run_message(report, database=settings.database, ui_url=settings.ui_url,
                         secrets=secrets()), context.log)

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name=name_prefix + FAILURES_IN_SUCCESSFUL_RUN_SENSOR,
        monitored_jobs=monitored,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Alerts ({_names(channels)}) when a run of {watched} succeeds with failed "
                    "tables or failed ERROR checks in it.")
    def failures_in_successful_run(context: dg.RunStatusSensorContext) -> None:
        report = run_report(context.instance, context.dagster_run, succeeded=True,
                            aliases=location.aliases(context.repository_def))
        send(run_message(report, database=settings.database, ui_url=settings.ui_url,
                         secrets=secrets()), context.log)

    @dg.sensor(
        name=name_prefix + STALE_TABLES_SENSOR,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Alerts ({_names(channels)}) when tables go stale under their "
                    "FreshnessPolicy (Dagster's freshness state FAIL), once per table and "
                    "transition.")
    def stale_tables(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        if context.repository_def is None:
            return dg.SkipReason("no code location to read the watched assets from")
        keys = location.watched(context.repository_def)
        states = freshness_states(context.instance, keys)
        previous = json.loads(context.cursor) if context.cursor else {}
        tick = stale_transitions(previous, states, now=time.time(),
                                 settle_s=freshness_settle_seconds)
        context.update_cursor(json.dumps(tick.cursor, sort_keys=True))
        if tick.waiting:
            return dg.SkipReason(f"{tick.waiting} table(s) just went stale: waiting for the "
                                 "freshness daemon's pass to end, to report them together")
        if not tick.report:
            return dg.SkipReason(f"no table went stale ({len(states)} watched with a freshness "
                                 f"state, {len(tick.cursor)} stale and reported)")
        stale = _stale_tables(context.instance, [dg.AssetKey(json.loads(k)) for k in tick.report])
        send(stale_message(stale, database=settings.database, ui_url=settings.ui_url,
                           secrets=secrets()), context.log)
        return dg.SkipReason(f"{len(tick.report)} table(s) went stale: alert sent")

    return [failed_run, failures_in_successful_run, stale_tables]


@dataclass(frozen=True)
class StaleTransitions:
    """What the stale-tables sensor does at a tick.

    Attributes:
        report: The tables to report as stale now (sorted).
        cursor: The next cursor: each reported table still in FAIL, with the time it
            entered FAIL.
        waiting: How many tables entered FAIL too recently to be reported yet.
    """

    report: list[str]
    cursor: dict[str, float]
    waiting: int = 0


def stale_transitions(previous: dict[str, float], states: dict[str, tuple[str, float]], *,
                      now: float, settle_s: float) -> StaleTransitions:
    """Which tables to report as newly stale now, and the next cursor.

    Args:
        previous: The cursor: each table in FAIL that was reported, with the time it
            entered FAIL.
        states: Each watched table's latest freshness state and the time it changed.
        now: The current time (seconds since the epoch).
        settle_s: Transitions newer than this are waited for (more may follow in the same
            pass of the FreshnessDaemon), unless the oldest waiting one is ten times older.
    """
    stale = {key: changed for key, (state, changed) in states.items() if state == _FAIL}
    pending = {key: changed for key, changed in stale.items() if previous.get(key) != changed}
    if pending and max(pending.values()) > now - settle_s \
            and min(pending.values()) > now - 10 * settle_s:
        reported = {key: changed for key, changed in stale.items() if key not in pending}
        return StaleTransitions([], reported, waiting=len(pending))
    return StaleTransitions(sorted(pending), stale)


def freshness_states(instance: dg.DagsterInstance,
                     keys: Sequence[dg.AssetKey]) -> dict[str, tuple[str, float]]:
    """Each key's latest freshness state (as the FreshnessDaemon recorded it) and when it
    changed, by the key's path as JSON; keys without a recorded state are left out."""
    states: dict[str, tuple[str, float]] = {}
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        records = instance.get_freshness_state_records(list(keys[start:start + _KEYS_PER_QUERY]))
        for key, record in records.items():
            state = getattr(record.freshness_state, "value", record.freshness_state)
            states[json.dumps(list(key.path))] = (str(state), record.updated_at.timestamp())
    return states


class _CodeLocation:
    """What the sensors read from the code location's definitions, once per load: the
    assets watched for staleness, and the tables' PostgreSQL names."""

    def __init__(self, selection: dg.AssetSelection | None) -> None:
        self._selection = selection
        self._watched: tuple[int, list[dg.AssetKey]] | None = None
        self._aliases: tuple[int, dict[tuple[str, ...], tuple[str, ...]]] | None = None

    def watched(self, repository: dg.RepositoryDefinition) -> list[dg.AssetKey]:
        if self._watched is None or self._watched[0] != id(repository):
            assets_defs = list(dict.fromkeys(repository.assets_defs_by_key.values()))
            with_policy = [key for assets_def in assets_defs
                           for key, spec in assets_def.specs_by_key.items()
                           if _has_freshness_policy(spec)]
            if self._selection is not None:
                selected = self._selection.resolve(assets_defs, allow_missing=True)
                with_policy = [key for key in with_policy if key in selected]
            self._watched = (id(repository), sorted(with_policy))
        return self._watched[1]

    def aliases(self, repository: dg.RepositoryDefinition | None
                ) -> dict[tuple[str, ...], tuple[str, ...]]:
        if repository is None:
            return {}
        if self._aliases is None or self._aliases[0] != id(repository):
            self._aliases = (id(repository), source_tables(repository))
        return self._aliases[1]


def _has_freshness_policy(spec: dg.AssetSpec) -> bool:
    # Since 1.11 the policy is the spec's own attribute; before, it was kept in metadata
    # (the FreshnessDaemon reads both).
    return spec.freshness_policy is not None or \
        "dagster/internal_freshness_policy" in (spec.metadata or {})


def _stale_tables(instance: dg.DagsterInstance, keys: list[dg.AssetKey]) -> list[StaleTable]:
    from datetime import UTC, datetime

    last: dict[dg.AssetKey, datetime] = {}
    for record in instance.get_asset_records(keys):
        materialization = record.asset_entry.last_materialization
        if materialization is not None:
            last[record.asset_entry.asset_key] = datetime.fromtimestamp(
                materialization.timestamp, UTC)
    return [StaleTable(tuple(key.path), last.get(key)) for key in keys]


def _names(channels: Sequence[Channel]) -> str:
    return ", ".join(channel.name.split(" at ")[0] for channel in channels)
