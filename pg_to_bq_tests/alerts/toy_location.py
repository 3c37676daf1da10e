"""The toy mirror as a code location for a real `dagster-daemon run` (test_daemon.py):
alert settings from the daemon's environment, every table stale one minute after its last
load, sensors evaluated every 2 s."""

from pg_to_bq.alerts.settings import AlertSettings
from pg_to_bq_tests.alerts.toy_mirror import ONE_MINUTE, build_toy_definitions

defs = build_toy_definitions(AlertSettings.from_env(database="shop on db.internal"),
                             freshness=ONE_MINUTE, minimum_interval_seconds=2,
                             freshness_settle_seconds=3)
