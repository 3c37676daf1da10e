"""The tables a step need not read, found before any read: those whose row versions are
the ones of their last load (`pg_to_bq.postgres.row_versions`).

A table found here is settled `unchanged` without the COPY reader, so a step whose tables
are all unchanged never imports Arrow or the ADBC driver (~45 MB and ~0.2 s of a process).
Each table's token, its row counts and (merged tables) its partitions and enum labels are
read over one psycopg connection, the step's tables in one REPEATABLE READ snapshot with
the reader's session settings, as a read would read them: a change committed after that
snapshot is the next run's, as it is for a read. The database's part of the tokens (its
enum labels and composite types) is asked once for that snapshot, not once a table
(~0.7 ms a table at 1,000 tables, with a round trip for the snapshot's settings and one to
end it), and the tables' own questions are sent together (psycopg's pipeline mode): one
round trip for the step's tokens, one for the row counts of those merged by a cursor
(this question, timed per call over 1,000 unchanged tables: 2.33-2.61 → 1.93-2.03 s on
loopback, 2.82-2.96 → 2.28-2.36 s through a 0.36 ms round trip). When any of them fails,
nothing is settled here.

Only what the read itself would find unchanged by its row versions is settled here, and
less when in doubt: a table is left to its read (`pg_to_bq.load.read.TableReads`), which
computes and compares the token itself, whenever change capture is on, its state is not
trusted or lacks a token, a fill is owed, its columns changed, it is refreshed, or one
partition is asked for, or when anything here fails. A table whose token differs is read,
and its read stores the token found here rather than scanning its row headers again: taken
before the read's snapshot, it can only make the next run read the table once more (a
change in between differs from it), never miss a change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pg_to_bq.destinations.state_table import LOAD_ID_KEY
from pg_to_bq.load.cursor import choose_mode
from pg_to_bq.load.results import LoadResult, TableLoad
from pg_to_bq.load.state import (
    DEFINITION_STATE_KEY,
    PENDING_FILL_STATE_KEY,
    VERSIONS_STATE_KEY,
    keeps_columns,
)
from pg_to_bq.planning.errors import describe
from pg_to_bq.planning.evolution import Evolution
from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.postgres import row_versions
from pg_to_bq.postgres.connect import connect
from pg_to_bq.postgres.sql import SESSION, qualified_name

log = logging.getLogger(__name__)


def settle_unchanged(loads: Sequence[TableLoad], states: Mapping[str, Mapping[str, Any]],
                     evolutions: Mapping[str, Evolution] | None, doubts: Mapping[str, str], *,
                     source_url: str, statement_timeout_s: int, hash_salt: bytes | None
                     ) -> tuple[dict[int, LoadResult], dict[str, str]]:
    """The `unchanged` result of each of `loads` (by index) whose row versions are those
    of its last load, and the token found for each table found changed (by destination
    table, for its read); the others are left to their reads. Without `evolutions` (asked
    before the destination's schema is known), every table with a state is asked: the
    caller then keeps what `still_unchanged` keeps."""
    candidates = [(index, load, mode, where, cursor_from)
                  for index, load in enumerate(loads)
                  if (chosen := _candidate(load, states, evolutions, doubts)) is not None
                  for mode, where, cursor_from in [chosen]]
    found: dict[int, LoadResult] = {}
    tokens: dict[str, str] = {}
    if not candidates:
        return found, tokens
    try:
        import psycopg

        with connect(source_url, application_name="pg_to_bq",
                     statement_timeout_s=statement_timeout_s) as conn:
            definitions = _definitions(conn, [load.plan for _, load, *_ in candidates
                                              if load.plan.disposition == "merge"])
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

            def query_one(sql: str) -> tuple | None:
                return conn.execute(sql).fetchone()

            try:
                conn.execute("; ".join(SESSION))  # (one round trip)
                database = row_versions.database_catalog(query_one)
                started = time.monotonic()
                asked = [(index, load, mode, where, cursor_from)
                         for index, load, mode, where, cursor_from in candidates
                         if _definition_unchanged(load.plan, states, definitions)]
                rows = _pipelined(conn, [row_versions.versions_sql(load.plan, with_database=False)
                                         for _, load, *_ in asked])
                same = []
                for (index, load, mode, where, cursor_from), row in zip(asked, rows, strict=True):
                    plan = load.plan
                    versions, table_rows = row_versions.token_of_row(row, plan, hash_salt,
                                                                     database)
                    if versions != states[plan.destination_table][VERSIONS_STATE_KEY]:
                        tokens[plan.destination_table] = versions
                        continue
                    same.append((index, load, mode, where, cursor_from, table_rows))
                counted = iter(_pipelined(conn, [
                    f"SELECT count(*) FROM {qualified_name(load.plan)} WHERE {where}"
                    for _, load, _, where, *_ in same if where is not None]))
                # The tables were asked together: each is given an equal share of the time.
                share = (time.monotonic() - started) / max(1, len(asked))
                for index, load, mode, where, cursor_from, table_rows in same:
                    plan = load.plan
                    snapshot_rows = table_rows
                    if where is not None:
                        row = next(counted)
                        snapshot_rows = int(row[0]) if row else 0
                    result = LoadResult(
                        table=plan.name, destination_table=plan.destination_table, rows=0,
                        snapshot_rows=snapshot_rows,
                        load_id=states[plan.destination_table].get(LOAD_ID_KEY),
                        duration_s=share, mode=mode, cursor_from=cursor_from,
                        table_rows=table_rows, status="unchanged")
                    result.extra["unchanged"] = "versions"
                    found[index] = result
            finally:
                conn.rollback()
    except Exception as exc:  # noqa: BLE001 - the reads find out, with their retries
        log.info("unchanged tables were not looked for before the reads (%s): each read "
                 "compares its own row versions", describe(exc))
    return found, tokens


def _definition_unchanged(plan: TablePlan, states: Mapping[str, Mapping[str, Any]],
                          definitions: Mapping[int, str]) -> bool:
    """False for a merged table whose partitions or enum labels may have changed since its
    last load (its read says what changed)."""
    if plan.disposition != "merge":
        return True
    stored = states[plan.destination_table].get(DEFINITION_STATE_KEY)
    return stored is not None and stored == definitions.get(plan.table.oid)


def _pipelined(conn: Any, statements: Sequence[str]) -> list[tuple | None]:
    """The first row of each of `statements`, sent together in psycopg's pipeline mode: one
    round trip for a step's tables rather than one a table (over a network to a managed
    PostgreSQL, a round trip is ~0.5-1 ms; 1,000 tables ask 1,000-2,000 questions)."""
    if not statements:
        return []
    with conn.pipeline():
        cursors = [conn.execute(sql) for sql in statements]
    return [cursor.fetchone() for cursor in cursors]


def still_unchanged(found: Mapping[int, LoadResult], loads: Sequence[TableLoad],
                    states: Mapping[str, Mapping[str, Any]], evolutions: Mapping[str, Evolution],
                    doubts: Mapping[str, str]) -> dict[int, LoadResult]:
    """Of `found` (`settle_unchanged` asked without `evolutions`), the tables that are
    still candidates now that the destination's schema and the trusted `states` are known,
    read as they were asked (same mode and cursor); the others are read."""
    kept = {}
    for index, result in found.items():
        chosen = _candidate(loads[index], states, evolutions, doubts)
        if chosen is not None and (chosen[0], chosen[2]) == (result.mode, result.cursor_from):
            kept[index] = result
    return kept


def _candidate(load: TableLoad, states: Mapping[str, Mapping[str, Any]],
               evolutions: Mapping[str, Evolution] | None, doubts: Mapping[str, str]
               ) -> tuple[str, str | None, Any] | None:
    """The read's mode, condition and cursor for a table the read could find unchanged by
    its row versions (see the module's docstring), or None. Without `evolutions`, whatever
    the destination's schema."""
    plan = load.plan
    table = plan.destination_table
    state = states.get(table)
    evolution = evolutions.get(table) if evolutions is not None else Evolution(exists=True)
    if not plan.loadable or plan.error is not None or load.full_refresh \
            or load.window is not None or not state or table in doubts \
            or VERSIONS_STATE_KEY not in state or state.get(PENDING_FILL_STATE_KEY) \
            or evolution is None or not evolution.exists or evolution.changed \
            or evolution.reload or not row_versions.applies(plan):
        return None
    mode, where, cursor_from = choose_mode(
        plan, dict(state), False, None,
        keeps_columns=keeps_columns(state, evolution))
    return (mode, where, cursor_from) if mode in ("full", "incremental") else None


def _definitions(conn: Any, plans: Sequence[Any]) -> dict[int, str]:
    oids = [p.table.oid for p in plans if p.table.oid is not None]
    if not oids:
        return {}
    try:
        return row_versions.definitions(lambda sql: conn.execute(sql).fetchall(), oids)
    finally:
        conn.rollback()
