"""A toy mirror for the alert tests: what the real steps record, without PostgreSQL.

One multi-asset step loads three tables the way `pg_to_bq.orchestration.steps.run_step` reports
them: a materialization and a blocking `matches_source` check result per loaded table; for a
table that failed, an observation with `pg_to_bq/load_failed` (its one-line cause), and a
`dg.Failure` at the end of the step naming the failed tables; a step that fails before any
table raises at once. Run config says what goes wrong.
"""

from collections.abc import Callable, Iterable
from datetime import timedelta

import dagster as dg

from pg_to_bq.alerts.sensors import build_alert_sensors
from pg_to_bq.alerts.settings import AlertSettings

SOURCE_PASSWORD = "s3cr3t-Pw-9917"
SOURCE_URL = f"postgresql://loader:{SOURCE_PASSWORD}@db.internal:5432/shop"
TABLES = ("orders", "customers", "payments")
JOB = "mirror_all_tables"
OTHER_JOB = "unrelated_job"
CHECK = "matches_source"
# The smallest window Dagster accepts: a table is stale one minute after its last load.
ONE_MINUTE = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=1))


def table_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["duckdb", "raw", table])


class ToyLoad(dg.Config):
    """What goes wrong in a run of the toy mirror."""

    fail: list[str] = []  # tables whose load fails, with the source URL in the error
    cause: str = "permission denied for table {table}"  # ({table}, {url}, {password})
    bad_check: list[str] = []  # tables whose matches_source check fails (ERROR)
    step_error: bool = False  # the step fails before loading any table
    fail_step: bool = True  # a failed table fails the step (as the mirror's steps do)


def build_toy_definitions(settings: AlertSettings, *,
                          freshness: dg.FreshnessPolicy | None = None,
                          minimum_interval_seconds: int = 30,
                          freshness_settle_seconds: float = 30.0,
                          secret_values: Callable[[], Iterable[str]] | None = None,
                          ) -> dg.Definitions:
    """The toy mirror's tables, its job, an unrelated failing job, and the alert sensors
    watching the mirror's job."""

    @dg.multi_asset(
        name="load_tables",
        specs=[dg.AssetSpec(table_key(t), skippable=True, freshness_policy=freshness,
                            metadata={"pg_to_bq/source_table": f"public.{t}"})
               for t in TABLES],
        check_specs=[dg.AssetCheckSpec(CHECK, asset=table_key(t), blocking=True) for t in TABLES],
        can_subset=True,
    )
    def load_tables(context: dg.AssetExecutionContext, config: ToyLoad):
        if config.step_error:
            raise dg.Failure(description=f"{len(TABLES)} table(s) not loaded: cannot connect "
                                         f"to PostgreSQL at {SOURCE_URL}: connection timed out")
        failed = []
        for table in TABLES:
            key = table_key(table)
            if key not in context.selected_asset_keys:
                continue
            if table in config.fail:
                failed.append(table)
                cause = config.cause.format(table=table, url=SOURCE_URL, password=SOURCE_PASSWORD)
                context.log_event(dg.AssetObservation(
                    asset_key=key, metadata={"pg_to_bq/load_failed": cause}))
                continue
            yield dg.MaterializeResult(asset_key=key, metadata={"rows": 10})
            lost = table in config.bad_check
            yield dg.AssetCheckResult(
                asset_key=key, check_name=CHECK, passed=not lost,
                severity=dg.AssetCheckSeverity.ERROR,
                description="the destination has 3 fewer row(s) than the source snapshot" if lost
                else "rows and values match")
        if failed and config.fail_step:
            raise dg.Failure(description=f"{len(failed)} table(s) failed: {', '.join(failed)}")

    @dg.asset
    def unrelated() -> None:
        raise dg.Failure(description="not the mirror's")

    mirror_job = dg.define_asset_job(JOB, selection=dg.AssetSelection.assets(load_tables))
    other_job = dg.define_asset_job(OTHER_JOB, selection=dg.AssetSelection.assets(unrelated))
    return dg.Definitions(
        assets=[load_tables, unrelated],
        jobs=[mirror_job, other_job],
        sensors=build_alert_sensors(settings, jobs=[mirror_job],
                                    minimum_interval_seconds=minimum_interval_seconds,
                                    freshness_settle_seconds=freshness_settle_seconds,
                                    secret_values=secret_values),
    )
