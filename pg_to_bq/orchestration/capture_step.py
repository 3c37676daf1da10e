"""Change capture in a run: the catalog step reads the slot (`pg_to_bq.load.capture`) before
any table step runs (every table asset depends on the catalog asset when capture is on), and
reports the slot's health as a check on the catalog asset.

The check, `replication_slot`, warns when the WAL the slot held back before this run passed
`PG_TO_BQ_CDC_WAL_WARN_BYTES`, and fails when it passed 80% of the server's
`max_slot_wal_keep_size` (beyond it PostgreSQL invalidates the slot, and every captured
table must be copied again). A slot found lost or dropped is created again and said.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from pg_to_bq.orchestration import progress
from pg_to_bq.orchestration.names import AssetContext
from pg_to_bq.planning.settings import Settings

SLOT_CHECK = "replication_slot"


def slot_check_spec(key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        SLOT_CHECK, asset=key,
        description="The replication slot holds back less WAL than the warning threshold "
                    "(PG_TO_BQ_CDC_WAL_WARN_BYTES), and far less than max_slot_wal_keep_size, "
                    "past which PostgreSQL would invalidate it")


def run_capture(context: dg.AssetExecutionContext, settings: Settings, live: Any,
                ctx: AssetContext, source: Any, destination: Any, url: str
                ) -> tuple[dict[str, Any], dg.AssetCheckResult]:
    """Read the slot for this run; returns the catalog asset's capture metadata and check."""
    import dlt

    from pg_to_bq.destinations.state_table import invalidated, read_states, write_states
    from pg_to_bq.load.capture import capture
    from pg_to_bq.load.packages import dlt_settings, group_pipeline
    from pg_to_bq.load.pipelines import SIDE_PIPELINE
    from pg_to_bq.load.state import CDC_STATE_KEY
    from pg_to_bq.planning.tables import plans_for

    plans = [p for p in plans_for(settings, live) if p.loadable]
    pipeline = group_pipeline(SIDE_PIPELINE, destination.dlt_destination(), destination.dataset,
                              destination.work_path)
    with destination.writing(), dlt.config.values(dlt_settings(pipeline.destination)):
        states = read_states(pipeline, [p.destination_table for p in plans if p.primary_key])
        applied = {p.name: int(states[p.destination_table][CDC_STATE_KEY]) for p in plans
                   if p.destination_table in states
                   and states[p.destination_table].get(CDC_STATE_KEY) is not None}
        report = capture(url, slot=settings.cdc_slot, publication=settings.cdc_publication,
                         plans=plans, pipeline=pipeline, applied=applied,
                         statement_timeout_s=source.statement_timeout_s,
                         run_id=context.run.run_id)
        by_name = {p.name: p.destination_table for p in plans}
        lost = {by_name[name]: invalidated(
            f"{report.created}: its changes since the last run are lost, so it is read whole")
            for name in report.recopy}
        lost.update({by_name[name]: invalidated(
            "change capture no longer follows it (out of the publication, or no key): read "
            "whole") for name in report.left if name in by_name})
        if lost:
            write_states(pipeline, lost)
    for line in summary(report, settings):
        progress.notice(line)
        if report.capturing and not line.startswith("  "):
            context.log.info(line)
        else:
            context.log.warning(line)
    for finding in report.findings:
        if finding.scope == "table" and finding.level != "info":
            context.log.warning(f"change capture, table {finding.subject}: {finding.problem}"
                                + (f" — fix: {finding.fix}" if finding.fix else ""))
    metadata: dict[str, Any] = {
        "cdc/slot": settings.cdc_slot,
        "cdc/publication": settings.cdc_publication,
        "cdc/captured_tables": len(report.captured),
        "cdc/changes_spooled": sum(report.changes.values()),
        "cdc/tables_changed": len(report.changes),
    }
    if report.position is not None:
        metadata["cdc/position"] = f"{report.position >> 32:X}/{report.position & 0xFFFFFFFF:X}"
    if report.not_captured:
        metadata["cdc/not_captured"] = dg.MetadataValue.md("\n".join(
            f"- {name}: {why} (loaded as without change capture)"
            for name, why in sorted(report.not_captured.items())))
    if report.created:
        metadata["cdc/slot_created"] = report.created
    return metadata, _slot_check(context, settings, report)


def summary(report: Any, settings: Settings) -> list[str]:
    """What the run's capture did, in lines for the CLI and the event log: the changes
    read, a slot created (and why), or why capture is not running and the fixes."""
    lines = []
    if not report.capturing:
        lines.append("change capture is NOT running (tables load as without it):")
        for finding in report.findings:
            if finding.level == "error" and finding.scope != "table":
                lines.append(f"  {finding.subject}: {finding.problem}"
                             + (f"\n    fix: {finding.fix}" if finding.fix else ""))
    else:
        changed = sum(report.changes.values())
        lines.append(f"change capture: {changed:,} change(s) to {len(report.changes)} "
                     f"table(s) read from slot {settings.cdc_slot}; "
                     f"{len(report.captured)} table(s) captured")
        if report.created:
            lines.append(f"change capture: {report.created}: slot {settings.cdc_slot} created"
                         + (f", {len(report.recopy)} table(s) read whole" if report.recopy
                            else ""))
    for sql in report.dba_sql:
        lines.append(f"  a DBA must run (the role may not):\n    {sql}")
    return lines


def _slot_check(context: dg.AssetExecutionContext, settings: Settings, report: Any
                ) -> dg.AssetCheckResult:
    key = context.assets_def.key
    before = report.before
    if not report.capturing:
        gaps = "; ".join(f"{f.subject}: {f.problem}" for f in report.findings
                         if f.level == "error" and f.scope != "table") or \
            "the publication could not be made (see the run's log)"
        return dg.AssetCheckResult(asset_key=key, check_name=SLOT_CHECK, passed=False,
                                   severity=dg.AssetCheckSeverity.WARN,
                                   description=f"change capture is not running: {gaps}")
    retained = before.retained_bytes if before is not None and before.exists else 0
    limit = report.slot.max_slot_wal_keep_size if report.slot is not None else None
    metadata = {"retained_wal_bytes_before_run": retained or 0,
                "retained_wal_bytes_after_run": (report.slot.retained_bytes or 0)
                if report.slot is not None else 0,
                "lag_bytes_after_run": (report.slot.lag_bytes or 0) if report.slot else 0,
                "max_slot_wal_keep_size_bytes": limit if limit is not None else -1}
    if limit and retained and retained > 0.8 * limit:
        return dg.AssetCheckResult(
            asset_key=key, check_name=SLOT_CHECK, passed=False,
            severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
            description=f"the slot held back {retained / 1024**2:,.0f} MB of WAL before this "
                        f"run, over 80% of max_slot_wal_keep_size ({limit / 1024**2:,.0f} MB): "
                        "run more "
                        "often (PG_TO_BQ_CDC_CRON), or PostgreSQL will invalidate the slot")
    if retained and retained > settings.cdc_wal_warn_bytes:
        return dg.AssetCheckResult(
            asset_key=key, check_name=SLOT_CHECK, passed=False,
            severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
            description=f"the slot held back {retained / 1024**2:,.0f} MB of WAL before this "
                        f"run (warning above {settings.cdc_wal_warn_bytes / 1024**2:,.0f} MB)")
    description = "the slot holds back no WAL it needs" if report.created is None else \
        f"{report.created}: the slot was created again"
    return dg.AssetCheckResult(asset_key=key, check_name=SLOT_CHECK, passed=report.created is None
                               or not report.recopy, severity=dg.AssetCheckSeverity.WARN,
                               metadata=metadata, description=description)
