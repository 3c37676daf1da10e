"""The alert sensors on a real instance: the toy mirror's job executed for real, then every
sensor evaluated the way the daemon does (`evaluate_tick` with the cursor it returned last),
and what SNS (moto, read back through SQS) and the webhook server received counted.

Each kind of failure is exactly one message on each channel, and the ticks after it send
nothing more; a clean run, or a failed run of a job that is not watched, sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import dagster as dg
import pytest

from pg_to_bq.alerts.sensors import StaleTransitions, build_alert_sensors, stale_transitions
from pg_to_bq.alerts.settings import AlertSettings
from pg_to_bq_tests.alerts.conftest import SnsInbox, WebhookServer
from pg_to_bq_tests.alerts.toy_mirror import (
    JOB,
    OTHER_JOB,
    SOURCE_PASSWORD,
    SOURCE_URL,
    build_toy_definitions,
)

pytestmark = pytest.mark.aws

UI = "https://dagster.example.com"
DATABASE = "shop on db.internal"


@dataclass
class Deployment:
    """The toy mirror's definitions on a real instance, its sensors ticked like the daemon's."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    cursors: dict[str, str | None] = field(default_factory=dict)

    def tick(self) -> list[dg.SensorDefinition]:
        """Evaluate every sensor once; the sensors whose tick reacted to a run."""
        reacted = []
        for sensor in self.defs.sensors or []:
            context = dg.build_sensor_context(instance=self.instance, definitions=self.defs,
                                              cursor=self.cursors.get(sensor.name))
            result = sensor.evaluate_tick(context)
            self.cursors[sensor.name] = result.cursor
            for reaction in result.dagster_run_reactions or []:
                assert reaction.error is None, reaction.error  # the sensor itself never fails
                reacted.append(sensor)
        return reacted

    def run(self, job: str = JOB, **config: object) -> dg.ExecuteInProcessResult:
        run_config = {"ops": {"load_tables": {"config": config}}} if job == JOB else {}
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, run_config=run_config, raise_on_error=False)


@pytest.fixture
def deployment(sns_inbox: SnsInbox, webhook: WebhookServer) -> Iterator[Deployment]:
    settings = AlertSettings.from_values(sns_topic_arn=sns_inbox.topic_arn,
                                         webhook_url=webhook.url, ui_url=UI, database=DATABASE)
    with dg.instance_for_test() as instance:
        deployed = Deployment(build_toy_definitions(settings), instance)
        deployed.tick()  # the run status sensors start from the latest event, like the daemon's
        yield deployed


def one_message(sns_inbox: SnsInbox, webhook: WebhookServer, deployment: Deployment) -> str:
    """The one message both channels received (asserting it was one); ticking again sends
    nothing more."""
    [published] = sns_inbox.messages()
    [text] = webhook.texts()
    assert text == published["Message"].replace("&", "&amp;").replace("<", "&lt;") \
        .replace(">", "&gt;")
    deployment.tick()
    assert sns_inbox.messages() == [] and len(webhook.requests) == 1
    assert SOURCE_PASSWORD not in published["Message"] + published["Subject"] + text
    return published["Subject"] + "\n" + published["Message"]


def test_failed_run_is_one_message_listing_its_tables_by_cause(
        deployment: Deployment, sns_inbox: SnsInbox, webhook: WebhookServer) -> None:
    # Each cause names its own table ("permission denied for table orders"): one cause.
    result = deployment.run(fail=["orders", "payments"])
    assert not result.success
    assert [s.name for s in deployment.tick()] == ["pg_to_bq_failed_run_alert"]
    message = one_message(sns_inbox, webhook, deployment)
    assert message == (
        f"pg_to_bq {DATABASE}: {JOB} failed: 2 tables\n"
        f"pg_to_bq · {DATABASE}: run of {JOB} failed: 2 tables failed.\n"
        "\n"
        "Failed tables (2) in duckdb/raw, by cause:\n"
        "• permission denied for table <table> — 2 tables:\n"
        "    orders, payments\n"
        "\n"
        f"Run: {UI}/runs/{result.run_id}")


def test_a_step_failing_before_any_table_names_its_tables_and_hides_the_password(
        deployment: Deployment, sns_inbox: SnsInbox, webhook: WebhookServer) -> None:
    result = deployment.run(step_error=True)
    deployment.tick()
    message = one_message(sns_inbox, webhook, deployment)
    assert SOURCE_URL in str(result.get_step_failure_events()[0].step_failure_data.user_failure_data)
    assert ("• 3 table(s) not loaded: cannot connect to PostgreSQL at "
            "postgresql://loader:***@db.internal:5432/shop: connection timed out — 3 tables:\n"
            "    customers, orders, payments") in message


def test_the_source_password_in_a_tables_cause_never_reaches_a_message(
        deployment: Deployment, sns_inbox: SnsInbox, webhook: WebhookServer) -> None:
    deployment.run(fail=["orders"], cause="could not read {table} from {url}")
    deployment.tick()
    message = one_message(sns_inbox, webhook, deployment)
    assert "could not read orders from postgresql://loader:***@db.internal:5432/shop" in message


def test_known_secret_values_never_reach_a_message(
        sns_inbox: SnsInbox, webhook: WebhookServer) -> None:
    settings = AlertSettings.from_values(sns_topic_arn=sns_inbox.topic_arn,
                                         webhook_url=webhook.url, database=DATABASE)
    defs = build_toy_definitions(settings, secret_values=lambda: [SOURCE_PASSWORD])
    with dg.instance_for_test() as instance:
        deployed = Deployment(defs, instance)
        deployed.tick()
        deployed.run(fail=["orders"], cause="the server rejected password {password}")
        deployed.tick()
        message = one_message(sns_inbox, webhook, deployed)
    assert "the server rejected password ***" in message


def test_failed_table_in_a_successful_run_is_one_message(
        deployment: Deployment, sns_inbox: SnsInbox, webhook: WebhookServer) -> None:
    result = deployment.run(fail=["customers"], fail_step=False)
    assert result.success
    assert [s.name for s in deployment.tick()] == ["pg_to_bq_failures_in_successful_run_alert"]
    message = one_message(sns_inbox, webhook, deployment)
    assert message.startswith(
        f"pg_to_bq {DATABASE}: 1 table failed in {JOB}\n"
        f"pg_to_bq · {DATABASE}: run of {JOB} succeeded, but 1 table failed.\n")
    assert "• permission denied for table customers — 1 table:\n    customers" in message


def test_failed_error_check_is_one_message(
        deployment: Deployment, sns_inbox: SnsInbox, webhook: WebhookServer) -> None:
    result = deployment.run(bad_check=["customers"])
    assert not result.success  # blocking: the step fails
    deployment.tick()
    message = one_message(sns_inbox, webhook, deployment)
    assert message == (
        f"pg_to_bq {DATABASE}: {JOB} failed: 1 ERROR check\n"
        f"pg_to_bq · {DATABASE}: run of {JOB} failed: 1 ERROR check failed.\n"
        "\n"
        "Failed ERROR checks (1) in duckdb/raw:\n"
        "• customers · matches_source: the destination has 3 fewer row(s) than the source "
        "snapshot\n"
        "\n"
        f"Run: {UI}/runs/{result.run_id}")


def test_nothing_failed_nothing_sent(
        deployment: Deployment, sns_inbox: SnsInbox, webhook: WebhookServer) -> None:
    assert deployment.run().success
    assert not deployment.run(OTHER_JOB).success  # not a job the sensors watch
    reacted = deployment.tick()
    assert [s.name for s in reacted] == ["pg_to_bq_failures_in_successful_run_alert"]
    deployment.tick()
    assert sns_inbox.messages() == [] and webhook.requests == []


def test_nothing_configured_no_sensor_nothing_sent(
        sns_inbox: SnsInbox, webhook: WebhookServer) -> None:
    settings = AlertSettings.from_env({"PG_TO_BQ_UI_URL": UI})
    assert build_alert_sensors(settings) == []
    defs = build_toy_definitions(settings)
    assert not defs.sensors
    with dg.instance_for_test() as instance:
        assert not Deployment(defs, instance).run(fail=["orders"]).success
    assert sns_inbox.messages() == [] and webhook.requests == []


def test_a_failing_send_is_logged_and_the_sensor_goes_on(
        sns_inbox: SnsInbox, webhook: WebhookServer, caplog: pytest.LogCaptureFixture) -> None:
    webhook.status = 500
    settings = AlertSettings.from_values(sns_topic_arn=sns_inbox.topic_arn,
                                         webhook_url=webhook.url, database=DATABASE)
    with dg.instance_for_test() as instance:
        deployed = Deployment(build_toy_definitions(settings), instance)
        deployed.tick()
        deployed.run(fail=["orders"])
        with caplog.at_level(logging.ERROR, logger="pg_to_bq.alerts"):
            assert [s.name for s in deployed.tick()] == ["pg_to_bq_failed_run_alert"]
        # Delivered where it could be, logged where it could not, not sent twice.
        assert len(sns_inbox.messages()) == 1 and len(webhook.requests) == 1
        assert "alert not sent to the webhook at 127.0.0.1: HTTP 500" in caplog.text
        deployed.tick()
        assert sns_inbox.messages() == [] and len(webhook.requests) == 1


def test_unreachable_channels_are_logged_and_the_sensor_goes_on(
        aws_env: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = AlertSettings.from_values(
        sns_topic_arn="arn:aws:sns:ap-northeast-1:123456789012:no-such-topic",
        webhook_url="http://127.0.0.1:9/hook", database=DATABASE)
    with dg.instance_for_test() as instance:
        deployed = Deployment(build_toy_definitions(settings), instance)
        deployed.tick()
        deployed.run(step_error=True)
        with caplog.at_level(logging.ERROR, logger="pg_to_bq.alerts"):
            assert [s.name for s in deployed.tick()] == ["pg_to_bq_failed_run_alert"]
    assert "alert not sent to SNS topic arn:aws:sns:ap-northeast-1:123456789012:no-such-topic: " \
           "NotFound" in caplog.text
    assert "alert not sent to the webhook at 127.0.0.1: URLError" in caplog.text


def test_stale_transitions_once_per_transition_after_the_pass_settles() -> None:
    a, b = '["raw", "a"]', '["raw", "b"]'
    # b entered FAIL 2 s ago: the daemon may still be writing its pass, so wait.
    assert stale_transitions({}, {a: ("FAIL", 100.0), b: ("FAIL", 108.0)}, now=110.0,
                             settle_s=5) == StaleTransitions([], {}, waiting=2)
    # Settled: both in one alert.
    assert stale_transitions({}, {a: ("FAIL", 100.0), b: ("FAIL", 108.0)}, now=114.0,
                             settle_s=5) == StaleTransitions([a, b], {a: 100.0, b: 108.0})
    # Still stale: nothing more. Fresh again: forgotten. Stale again later: alerted again.
    assert stale_transitions({a: 100.0, b: 108.0}, {a: ("FAIL", 100.0), b: ("PASS", 200.0)},
                             now=300.0, settle_s=5) == StaleTransitions([], {a: 100.0})
    assert stale_transitions({a: 100.0}, {a: ("FAIL", 100.0), b: ("FAIL", 400.0)}, now=410.0,
                             settle_s=5) == StaleTransitions([b], {a: 100.0, b: 400.0})
    # WARN, UNKNOWN and NOT_APPLICABLE are not stale.
    assert stale_transitions({}, {a: ("WARN", 1.0), b: ("UNKNOWN", 1.0)}, now=100.0,
                             settle_s=5) == StaleTransitions([], {})
    # Tables going stale without a pause never hold an alert back more than 10 × settle.
    assert stale_transitions({}, {a: ("FAIL", 100.0), b: ("FAIL", 149.0)}, now=151.0,
                             settle_s=5) == StaleTransitions([a, b], {a: 100.0, b: 149.0})
