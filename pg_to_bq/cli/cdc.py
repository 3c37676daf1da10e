"""`pg-to-bq cdc status|drop`, and what `discover` says about change capture.

`status` shows the slot (its position, lag, the WAL it holds back and how far that is from
`max_slot_wal_keep_size`) and the publication's tables; `drop` removes the slot and the
publication (pg_to_bq then loads as without change capture until `PG_TO_BQ_CDC` is set
again, when the next run creates them and copies the captured tables).
"""

from __future__ import annotations

from collections.abc import Sequence

from pg_to_bq.planning.settings import Settings
from pg_to_bq.planning.tables import TablePlan


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024**2:,.1f} MB"


def _lsn(value: int | None) -> str:
    return "-" if value is None else f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def format_prerequisites(settings: Settings, url: str, plans: Sequence[TablePlan]) -> str:
    """What the server, the role and each table allow of change capture, and the fixes."""
    from pg_to_bq.load.capture import capturable
    from pg_to_bq.postgres.cdc.prerequisites import assess, fetch_facts
    from pg_to_bq.postgres.connect import connect

    with connect(url, statement_timeout_s=settings.statement_timeout_s) as conn:
        assessment = assess(fetch_facts(
            conn, [(p.table.schema, p.table.name) for p in plans],
            publication=settings.cdc_publication, slot=settings.cdc_slot))
    tables, not_captured = capturable(assessment, plans)
    lines = [f"change capture (PG_TO_BQ_CDC=true): slot {settings.cdc_slot}, publication "
             f"{settings.cdc_publication}: "
             + ("the server and the role allow it" if assessment.can_capture
                else "NOT POSSIBLE as configured")]
    for finding in assessment.findings:
        if finding.scope == "table" and finding.level == "info":
            continue
        fix = f"\n      fix: {finding.fix}" if finding.fix else ""
        lines.append(f"  {finding.level.upper()} {finding.scope} {finding.subject}: "
                     f"{finding.problem}{fix}")
    lines.append(f"  {len(tables)} table(s) captured; "
                 f"{len(not_captured)} loaded as without change capture")
    for name, why in sorted(not_captured.items()):
        lines.append(f"    {name}: {why}")
    return "\n".join(lines)


def cmd_cdc(action: str) -> int:
    from pg_to_bq.orchestration.code_location import resolve_source_url
    from pg_to_bq.postgres.cdc.publication import drop_publication
    from pg_to_bq.postgres.cdc.slot import drop_slot, slot_status
    from pg_to_bq.postgres.connect import connect

    settings = Settings.from_env()
    url = resolve_source_url(settings)
    with connect(url, statement_timeout_s=settings.statement_timeout_s) as conn:
        conn.read_only = False
        conn.autocommit = True
        if action == "drop":
            dropped_slot = drop_slot(conn, settings.cdc_slot)
            dropped_publication = drop_publication(conn, settings.cdc_publication)
            print(f"slot {settings.cdc_slot}: {'dropped' if dropped_slot else 'none'}; "
                  f"publication {settings.cdc_publication}: "
                  f"{'dropped' if dropped_publication else 'none'}")
            return 0
        status = slot_status(conn, settings.cdc_slot)
        tables = conn.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                              "WHERE pubname = %s ORDER BY 1",
                              (settings.cdc_publication,)).fetchall()
    if not status.exists:
        print(f"slot {settings.cdc_slot}: none (the next run with PG_TO_BQ_CDC=true creates it)")
    else:
        keep = "unlimited" if status.max_slot_wal_keep_size is None \
            else _mb(status.max_slot_wal_keep_size)
        print(f"slot {settings.cdc_slot}: {'ACTIVE' if status.active else 'idle'}, "
              f"wal_status {status.wal_status or '-'}"
              + (" (INVALIDATED: the next run copies the captured tables again)"
                 if status.lost else ""))
        print(f"  confirmed {_lsn(status.confirmed_flush_lsn)}, server at "
              f"{_lsn(status.current_lsn)}: lag {_mb(status.lag_bytes)}")
        print(f"  WAL held back {_mb(status.retained_bytes)} (restart {_lsn(status.restart_lsn)}); "
              f"max_slot_wal_keep_size {keep}"
              + (f", {_mb(status.safe_wal_size)} before it is invalidated"
                 if status.safe_wal_size is not None else ""))
    print(f"publication {settings.cdc_publication}: {len(tables)} table(s)"
          + ("" if not tables else ": " + ", ".join(t for (t,) in tables[:20])
             + (" …" if len(tables) > 20 else "")))
    return 0
