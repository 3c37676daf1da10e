"""A table's load state as a load uses it (kept by `pg_to_bq.destinations.state_table`):
trusted only while the destination holds the rows it covers, written after them.

State: a table's cursor and lookback-window digest, its row versions, its columns, its fill
markers, the destination's row count and load after its last load. Keyed by table, so a
fresh container resumes where the last load stopped, whichever step loads the table. A
table that failed keeps its previous state; a run killed before the write leaves states
that no longer match the tables' rows, which the next run notices (`trusted_states`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pg_to_bq.checks.drift import Figures
from pg_to_bq.destinations.row_counts import destination_counts
from pg_to_bq.destinations.schema import planned_types
from pg_to_bq.destinations.state_table import (
    INVALIDATED_KEY,
    LOAD_ID_KEY,
    LOADING_KEY,
    ROWS_KEY,
    SOURCE_OID_KEY,
    doubt,
    invalidated,
    write_states,
)
from pg_to_bq.load.cursor import CURSOR_STATE_KEY, state_value
from pg_to_bq.load.results import LoadResult, TableRead
from pg_to_bq.planning.derivation import derivations
from pg_to_bq.planning.errors import describe
from pg_to_bq.planning.evolution import Evolution
from pg_to_bq.planning.tables import TablePlan

log = logging.getLogger(__name__)


WINDOW_STATE_KEY = "pg_to_bq_window"


VERSIONS_STATE_KEY = "pg_to_bq_versions"


# The position of the last change captured and applied (`pg_to_bq.load.changes`).
CDC_STATE_KEY = "cdc_lsn"
# The destination's whole-table figures after the last load (`pg_to_bq.checks.drift`).
FIGURES_STATE_KEY = "figures"
# A merged table's partitions and enum labels (`pg_to_bq.postgres.row_versions.definitions`).
DEFINITION_STATE_KEY = "definition"


PENDING_FILL_STATE_KEY = "pending_fill"
# The oldest transaction running when a merged table was last read whole, or read with
# the rows written since the previous such read (`pg_to_bq.load.cursor.written_since`):
# every run for a small one, with the delete pass for a larger one.
SNAPSHOT_XMIN_STATE_KEY = "snapshot_xmin"


# The PostgreSQL type of each column last loaded (by PostgreSQL name), and the destination
# columns that load wrote.
COLUMNS_STATE_KEY = "columns"


LOADED_COLUMNS_STATE_KEY = "loaded_columns"
# The columns the last load found in the destination table and left as they were: dropped
# in PostgreSQL (or never in it), not written (`pg_to_bq.planning.evolution.diff`).
KEPT_COLUMNS_STATE_KEY = "kept_columns"
# How the last load derived each column it wrote (`pg_to_bq.planning.derivation`).
DERIVED_STATE_KEY = "derived"
# The table's storage in PostgreSQL when it was read (`Table.storage`).
STORAGE_STATE_KEY = "storage"
STORAGE_REPLACED = (
    "its PostgreSQL storage was replaced since its last load (TRUNCATE, a restore, VACUUM "
    "FULL, CLUSTER, pg_repack or a rewriting ALTER TABLE): rows may have changed or gone "
    "without their cursor moving")
# The same, for a table others INHERIT from: its storage is theirs too.
INHERITED_STORAGE_REPLACED = (
    "its PostgreSQL storage, or that of a table inheriting from it, was replaced since its "
    "last load, or a table began or ceased to inherit from it (TRUNCATE, a restore, VACUUM "
    "FULL, CLUSTER, pg_repack, a rewriting ALTER TABLE, or ALTER TABLE ... [NO] INHERIT): "
    "rows may have changed, come or gone without their cursor moving")


def storage_replaced(state: Mapping[str, Any], plan: TablePlan) -> bool:
    """Whether a merged table's cursor no longer covers its rows because PostgreSQL gave the
    table new storage since the state's load. TRUNCATE and a reload put rows back under a
    cursor value the state has already passed (a restored dump's `updated_at`s are old), so
    an incremental read would skip them and keep the rows that went, for good. A rewrite
    that kept every row (VACUUM FULL) looks the same from here: the table is read whole,
    once. Change capture sees a TRUNCATE itself (`pg_to_bq.load.changes`)."""
    before, now = state.get(STORAGE_STATE_KEY), plan.table.storage
    return (plan.disposition == "merge" and before is not None and now is not None
            and before != now and CDC_STATE_KEY not in state)


def storage_replaced_reason(state: Mapping[str, Any], plan: TablePlan) -> str:
    """What `storage_replaced` found, said for this table."""
    inherited = plan.table.kind != "p" and (
        plan.table.inherited_by or "," in str(state.get(STORAGE_STATE_KEY, "")))
    return INHERITED_STORAGE_REPLACED if inherited else STORAGE_REPLACED


# The parameterized destination types (`NUMERIC(10,2)`) the last load gave the columns, by
# destination name: where the destination reports a type without its parameters (the
# BigQuery emulator), they show what a change of precision or scale changes
# (`pg_to_bq.planning.evolution.diff`).
CREATED_TYPES_STATE_KEY = "created_types"


def trusted_states(queries: Any, plans: Sequence[TablePlan],
                    evolutions: Mapping[str, Evolution], stored: Mapping[str, dict[str, Any]],
                    live: Collection[str] = ()
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Of each table's `stored` state (`pg_to_bq.destinations.state_table.read_states`), the
    ones whose destination table still holds the rows they cover, and why not for the others
    (whose state is then empty, so they are read whole). One query for the group's row
    counts and loads.

    A state still marked as loading belongs to a load killed before it recorded its rows:
    its cursor is behind them (which only re-reads rows), but its figures describe the
    table before that load, so they are dropped (not compared) this run."""
    if not stored:
        return {}, {}
    oids = {p.destination_table: p.table.oid for p in plans}
    present = [t for t in stored if evolutions.get(t, Evolution(exists=False)).exists]
    load_ids = sorted({str(s[LOAD_ID_KEY]) for t, s in stored.items()
                       if t in present and s.get(LOAD_ID_KEY)})
    counts, known = destination_counts(queries, present, load_ids, live)
    trusted: dict[str, dict[str, Any]] = {}
    doubts: dict[str, str] = {}
    for table, state in stored.items():
        reason = doubt(state, exists=table in present, rows=counts.get(table),
                       load_known=str(state.get(LOAD_ID_KEY)) in known,
                       source_oid=oids.get(table))
        if reason is None:
            trusted[table] = state
            if state.get(LOADING_KEY):
                trusted[table] = {k: v for k, v in state.items() if k != FIGURES_STATE_KEY}
        else:
            doubts[table] = reason
            log.info("table %s is read whole: %s", table, reason)
    return trusted, doubts


def keeps_columns(state: Mapping[str, Any], evolution: Evolution) -> bool:
    """The destination table keeps columns PostgreSQL no longer has, with the values loaded
    before: recorded at its last load, or found now (`pg_to_bq.load.cursor.choose_mode`
    merges such a table by its cursor rather than replace that history with NULLs)."""
    return bool(state.get(KEPT_COLUMNS_STATE_KEY) or evolution.dropped or evolution.kept)


def commit_states(queries: Any, loaded: list[TableRead],
                   previous: dict[str, dict[str, Any]], load_id: str | None,
                   counts: Mapping[str, int], results: Sequence[LoadResult],
                   figures: Mapping[str, Figures]) -> None:
    """Store the state of the tables that loaded (see the module's docstring), with the
    destination's rows after the load (`counts`), which the next run checks before trusting
    it, and its whole-table `figures`, which the next run's check compares; an unchanged
    table whose delete pass removed rows has its count and figures updated, another one
    given `figures` has them stored. A table whose check says rows or values are missing or
    changed gets an invalidated state instead: the next run reads it whole. A failure here
    leaves the previous states, which no longer match the tables' rows: the next run reads
    those tables whole."""
    states: dict[str, dict[str, Any]] = {}
    kind = queries.destination.destination_name
    for result in results:
        table = result.destination_table
        if result.lost:
            states[table] = invalidated(
                "its last check found the destination differs from the source: "
                + "; ".join(c.description for c in result.lost)[:500])
        elif result.status == "unchanged" and result.deleted and table in counts \
                and table in previous:
            states[table] = {**previous[table], ROWS_KEY: counts[table]}
            _set_figures(states[table], figures.get(table))
        elif result.status == "unchanged" and table in figures and table in previous:
            # (figures of an earlier version's form, found as stored: stored with the row
            # figure, `_GroupRun.compare_figures`)
            states[table] = dict(previous[table])
            _set_figures(states[table], figures[table])
    for item in loaded:
        table = item.plan.destination_table
        if table in states or table not in counts:
            continue
        # A whole read replaces everything the state said; an incremental one moves it on.
        state = {} if item.mode == "full" else dict(previous.get(table, {}))
        state.pop(INVALIDATED_KEY, None)
        state.pop(LOADING_KEY, None)
        tracker = item.tracker
        if tracker is not None and tracker.max is not None:
            state[CURSOR_STATE_KEY] = state_value(tracker.max)
        elif item.mode == "full":
            state.pop(CURSOR_STATE_KEY, None)
        window = tracker.window if tracker is not None else None
        if window is None:
            state.pop(WINDOW_STATE_KEY, None)
        else:
            state[WINDOW_STATE_KEY] = window
        if item.versions is None:
            state.pop(VERSIONS_STATE_KEY, None)
        else:
            state[VERSIONS_STATE_KEY] = item.versions
        state[LOAD_ID_KEY] = load_id
        state[ROWS_KEY] = counts[table]
        if item.plan.table.oid is not None:
            state[SOURCE_OID_KEY] = item.plan.table.oid
        if item.snapshot_xmin is None:
            state.pop(SNAPSHOT_XMIN_STATE_KEY, None)
        else:
            state[SNAPSHOT_XMIN_STATE_KEY] = item.snapshot_xmin
        if item.cdc_lsn is None:
            state.pop(CDC_STATE_KEY, None)
        else:
            state[CDC_STATE_KEY] = item.cdc_lsn
        if item.definition is None:
            state.pop(DEFINITION_STATE_KEY, None)
        else:
            state[DEFINITION_STATE_KEY] = item.definition
        state[COLUMNS_STATE_KEY] = {c.source.name: c.source.type for c in item.plan.columns}
        state[LOADED_COLUMNS_STATE_KEY] = [c.name for c in item.plan.columns]
        state[DERIVED_STATE_KEY] = derivations(item.plan, item.reader.hash_salt)
        if item.plan.table.storage is None:
            state.pop(STORAGE_STATE_KEY, None)
        else:
            state[STORAGE_STATE_KEY] = item.plan.table.storage
        evolution = item.evolution
        state[KEPT_COLUMNS_STATE_KEY] = [] if item.refresh or not evolution.exists \
            else [*evolution.dropped, *evolution.kept]
        created = {name: type_ for name, type_ in planned_types(item.plan, kind).items()
                   if "(" in type_}
        if created:
            state[CREATED_TYPES_STATE_KEY] = created
        else:
            state.pop(CREATED_TYPES_STATE_KEY, None)
        state.pop(PENDING_FILL_STATE_KEY, None)  # done: the load and its fill succeeded
        _set_figures(state, figures.get(table))
        states[table] = state
    try:
        write_states(queries, states)
    except Exception as exc:  # noqa: BLE001 - the data is loaded; the next run re-reads
        log.warning("the loaded tables' states were not stored (%s): the next run reads "
                    "them whole", describe(exc))


def _set_figures(state: dict[str, Any], figures: Figures | None) -> None:
    if figures is None:
        state.pop(FIGURES_STATE_KEY, None)
    else:
        state[FIGURES_STATE_KEY] = figures.to_state()


def stored_figures(state: Mapping[str, Any], engine: str) -> Figures | None:
    """The figures the last load left (`pg_to_bq.checks.drift`), when they were computed by
    `engine` (figures of another engine, or version, cannot be compared)."""
    data = state.get(FIGURES_STATE_KEY)
    if not data or data.get("engine") != engine:
        return None
    return Figures.from_state(data)
