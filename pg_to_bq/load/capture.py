"""Change capture at the start of a run: the publication and the slot, and the keys that
changed since the last run spooled in the destination (`pg_to_bq.load.changes`); then, and
only then, the slot advanced.

Why by key, and why no exported snapshot: each table's step reads its changed rows again
from PostgreSQL (every value exactly as a snapshot read delivers it) and merges them, so
applying a change twice, or a change already in a copy, changes nothing. A table is
therefore copied whenever it must be (its first load, a table added to the selection, a
backfill, a slot lost), at any point after the slot exists: the changes before the copy's
snapshot re-read rows the copy has (no duplicate), those after arrive as keys (no gap).

The slot is advanced after every run, changes or not, so the WAL of other tables' traffic
is released; a slot found missing or invalidated (`wal_status = lost`) is created again and
every captured table is read whole by the next step, said in one line each.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dlt

from pg_to_bq.load.changes import (
    MANY,
    MAX_KEYS,
    NO_KEY,
    SPOOL_TABLE,
    clean_spool,
    spool_position,
)
from pg_to_bq.load.spool_rows import SPOOL_SCHEMA, marker, spool_batches
from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.postgres.cdc.errors import CdcError, DbaActionRequired
from pg_to_bq.postgres.cdc.keys import KeyChange, KeyReader
from pg_to_bq.postgres.cdc.prerequisites import Assessment, Finding, assess, fetch_facts
from pg_to_bq.postgres.cdc.publication import ensure_publication
from pg_to_bq.postgres.cdc.slot import (
    SlotStatus,
    advance_slot,
    create_slot,
    drop_slot,
    slot_status,
)
from pg_to_bq.postgres.cdc.stream import ChangeStream
from pg_to_bq.postgres.connect import connect

log = logging.getLogger(__name__)


# How long a run waits for another run's read of the slot to finish.
BUSY_WAIT_S = 900.0
# How long a read of the slot may go without progress before it fails.
STALL_S = 300.0


@dataclass
class CaptureReport:
    """What a run's capture did, for the catalog step's metadata, check and log."""

    captured: list[str] = field(default_factory=list)
    not_captured: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    changes: Counter = field(default_factory=Counter)
    position: int | None = None
    # The slot before this run read it (what WAL it held back), and after.
    before: SlotStatus | None = None
    slot: SlotStatus | None = None
    # Why the slot was created this run (first run, dropped, invalidated), or None.
    created: str | None = None
    # Captured tables that must be read whole: their changes since the last run are lost.
    recopy: list[str] = field(default_factory=list)
    # Tables that applied changes before and are not captured now: read whole next time.
    left: list[str] = field(default_factory=list)
    dba_sql: list[str] = field(default_factory=list)

    @property
    def capturing(self) -> bool:
        return self.position is not None


def capture(url: str, *, slot: str, publication: str, plans: Sequence[TablePlan],
            pipeline: Any, applied: Mapping[str, int], statement_timeout_s: int = 3600,
            run_id: str | None = None) -> CaptureReport:
    """Make sure the publication and the slot exist, spool the keys changed since the last
    run, advance the slot (see the module's docstring).

    Args:
        url: The source PostgreSQL URL.
        slot / publication: Their names.
        plans: The tables of the run; those with a primary key may be captured.
        pipeline: The dlt pipeline the spool is loaded with (the side loads').
        applied: Each captured table's applied position (source name -> LSN), from its
            state: spooled keys at or before it are deleted; a table with a position whose
            slot is lost must be read whole.
        run_id: The run's id, spooled with the position read (the marker its table steps
            look for: without it they do not take the spool for all that changed).
    """
    report = CaptureReport()
    by_name = {(p.table.schema, p.table.name): p for p in plans}
    with _managing(url, statement_timeout_s) as conn:
        facts = fetch_facts(conn, list(by_name), publication=publication, slot=slot)
        assessment = assess(facts)
        report.findings = list(assessment.findings)
        tables, report.not_captured = capturable(assessment, plans)
        if not assessment.can_capture:
            return report
        try:
            published = ensure_publication(conn, publication, tables, partial_ok=True)
            if published.dba_sql:
                report.dba_sql.append(published.dba_sql)
            tables = [t for t in tables if published.all_tables or t in published.tables]
        except DbaActionRequired as exc:
            report.dba_sql.append(exc.sql)
            if not facts.publication_exists:
                return report
            published_now = conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (publication,)).fetchall()
            tables = [t for t in tables if t in {tuple(r) for r in published_now}]
        report.captured = [f"{s}.{t}" for s, t in tables]
        # A table that applied changes before but is not captured now (out of the
        # publication, its key gone): its changes meanwhile are not in the slot.
        report.left = [name for name in applied if name not in report.captured]
        status = slot_status(conn, slot)
        [database] = conn.execute("SELECT current_database()").fetchone()
        if status.exists and status.database != database:
            # Slot names are the server's, not the database's.
            raise CdcError(
                f"replication slot {slot} belongs to database {status.database}, not "
                f"{database} (another mirror's?): set PG_TO_BQ_CDC_SLOT (and "
                "PG_TO_BQ_CDC_PUBLICATION) to names of this mirror's own")
        report.before = status
        had_positions = [name for name in report.captured if name in applied]
        if not status.exists or status.lost:
            if status.lost:
                drop_slot(conn, slot)
                report.created = ("the replication slot was invalidated (wal_status lost: "
                                  "PostgreSQL removed WAL it had not delivered)")
            elif had_positions:
                report.created = "the replication slot was dropped since the last run"
            else:
                report.created = "first run with change capture"
            create_slot(conn, slot)
            report.recopy = had_positions
            status = slot_status(conn, slot)
    key_columns = {(s, t): by_name[(s, t)].primary_key for s, t in tables}

    def counted(changes: Iterator[KeyChange]) -> Iterator[KeyChange]:
        # Past MAX_KEYS a table is read whole: one `many` row instead of the rest of its
        # keys (a million-row UPDATE spools one row, not a million).
        for change in changes:
            name = f"{change.schema}.{change.table}"
            report.changes[name] += 1
            seen = report.changes[name]
            if seen <= MAX_KEYS:
                yield change
            elif seen == MAX_KEYS + 1:
                yield KeyChange(change.schema, change.table, change.lsn, MANY)

    # Another run reading the slot (runs may overlap): wait for it, up to BUSY_WAIT_S.
    with ChangeStream(url, slot, [publication], busy_timeout=BUSY_WAIT_S,
                      stall_timeout=STALL_S) as stream:
        reader = KeyReader(stream, lambda schema, table: key_columns.get((schema, table)))
        def rows() -> Iterator[Any]:
            yield from spool_batches(counted(reader.changes()))
            if run_id is not None:
                # The run's marker, in the same load as its keys.
                yield marker(run_id, stream.position)

        resource = dlt.resource(rows, name=SPOOL_TABLE, write_disposition="append",
                                columns=[{"name": f.name, "data_type": _type(f.type),
                                          "nullable": f.name == "key"} for f in SPOOL_SCHEMA])
        pipeline.extract(resource, loader_file_format="parquet")
        position = stream.position
    with pipeline.sql_client() as client:
        spooled_before = spool_position(client)
    pipeline.normalize()
    pipeline.load()
    with _managing(url, statement_timeout_s) as conn:
        advance_slot(conn, slot, position)
        report.slot = slot_status(conn, slot)
    report.position = position
    with pipeline.sql_client() as client:
        clean_spool(client, {name: lsn for name, lsn in applied.items()
                             if name in report.captured and name not in report.recopy},
                    others_through=spooled_before, run_id=run_id)
    return report


def capturable(assessment: Assessment, plans: Sequence[TablePlan]
               ) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The tables of `plans` change capture follows (PostgreSQL can, and pg_to_bq has a key
    to apply their changes by), and why each other one is not (source name -> why)."""
    keys = {(p.table.schema, p.table.name): bool(p.primary_key) for p in plans}
    not_captured = {f"{s}.{t}": why for (s, t), why in assessment.not_capturable.items()}
    tables = []
    for table in assessment.capturable:
        if keys.get(table):
            tables.append(table)
        elif table in keys:
            not_captured[f"{table[0]}.{table[1]}"] = NO_KEY
    return tables, not_captured


@contextlib.contextmanager
def _managing(url: str, statement_timeout_s: int) -> Iterator[Any]:
    """A connection that may create the publication and the slot (not read-only, each
    statement its own transaction)."""
    with connect(url, statement_timeout_s=statement_timeout_s) as conn:
        conn.read_only = False
        conn.autocommit = True
        yield conn


def _type(arrow_type: Any) -> str:
    return "bigint" if str(arrow_type) == "int64" else "text"
