"""What a step's load does about schema changes before its tables load: the changes found
(`pg_to_bq.planning.evolution`), the fills owed, the reloads announced (their state invalidated
first), the columns changed in place; and after the load, whether the columns it created or
changed have the planned types (`pg_to_bq.checks.column_types`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pg_to_bq.checks.column_types import TYPES, types_outcome
from pg_to_bq.checks.outcomes import CheckOutcome, not_computed
from pg_to_bq.destinations.schema import (
    alter_statements,
    apply,
    drop_table,
    forget_stored_schema,
    planned_types,
    stored_columns,
)
from pg_to_bq.destinations.soft_deletes import keep_aside
from pg_to_bq.destinations.state_table import (
    LOADING_KEY,
    invalidated,
    write_states,
)
from pg_to_bq.load.results import TableRead
from pg_to_bq.load.state import (
    COLUMNS_STATE_KEY,
    CREATED_TYPES_STATE_KEY,
    DERIVED_STATE_KEY,
    KEPT_COLUMNS_STATE_KEY,
    LOADED_COLUMNS_STATE_KEY,
    PENDING_FILL_STATE_KEY,
    STORAGE_STATE_KEY,
)
from pg_to_bq.planning.derivation import derivations
from pg_to_bq.planning.errors import describe
from pg_to_bq.planning.evolution import Evolution, StoredColumn, diff
from pg_to_bq.planning.tables import TablePlan


def evolutions_of(queries: Any, plans: Sequence[TablePlan],
                  states: Mapping[str, Mapping[str, Any]], salt: bytes | None = None
                  ) -> tuple[dict[str, Evolution], dict[str, dict[str, StoredColumn]]]:
    """What each table's load must do about schema changes (`pg_to_bq.planning.evolution`),
    and the columns each table has in the destination now (one query; `queries`: a dlt
    pipeline, or pg_to_bq's own connection, `pg_to_bq.destinations.duckdb_session`).
    `states`: the tables' stored states, whose types the last load created speak where the
    destination reports a type without its parameters, and which say what the last load
    wrote and how (`salt`: the hash salt of this run's reads)."""
    if not plans:
        return {}, {}
    stored = stored_columns(queries, [p.destination_table for p in plans])
    kind = queries.destination.destination_name
    return {p.destination_table: _diff(p, kind, stored.get(p.destination_table),
                                       states.get(p.destination_table, {}), salt)
            for p in plans}, stored


def _diff(plan: TablePlan, kind: str, stored: dict[str, StoredColumn] | None,
          state: Mapping[str, Any], salt: bytes | None) -> Evolution:
    before = state.get(DERIVED_STATE_KEY)
    if before is None and COLUMNS_STATE_KEY in state:
        # A state from before derivations were kept: the PostgreSQL types it loaded say a
        # part of them (the table's storage is not known, so a type change counts).
        loaded_types = state[COLUMNS_STATE_KEY]
        before = {c.name: {"type": loaded_types[c.source.name]} for c in plan.columns
                  if c.source.name in loaded_types}
    # Rewritten since the last load, or not known not to be: a type change may have changed
    # every value.
    rewritten = plan.table.storage is None or state.get(STORAGE_STATE_KEY) != plan.table.storage
    return diff(planned_types(plan, kind), stored, kind, frozenset(plan.destination_primary_key),
                created=state.get(CREATED_TYPES_STATE_KEY),
                loaded=state.get(LOADED_COLUMNS_STATE_KEY),
                kept=state.get(KEPT_COLUMNS_STATE_KEY),
                derived=None if before is None
                else (before, derivations(plan, salt, types=rewritten)))


def prepare(pipeline: Any, read: list[TableRead], states: dict[str, dict[str, Any]],
             record_state: bool, live: Collection[str] = ()) -> dict[str, str]:
    """Before the load: mark the tables being loaded (a run killed before it records their
    new state leaves that mark, so the next run knows the destination may hold more than
    the state says), mark the fills this run owes (so a run killed before they are done
    leaves them to the next one), invalidate the state of the tables about to be dropped and
    loaded again (so a reload that does not finish leaves no cursor without its rows) and
    copy aside the soft-deleted rows of those among `live` (the tables that keep them), and
    change column types in place. Returns the tables that cannot load (an ALTER the
    destination refused, rows that could not be copied aside)."""
    pending = {}
    for item in read:
        table = item.plan.destination_table
        if not record_state:
            continue
        if item.refresh:
            pending[table] = invalidated("its reload under a new column type did not finish")
            continue
        if not states.get(table):
            continue  # nothing to trust yet: a first (or whole) load records everything
        state = {**states[table], LOADING_KEY: True}
        if item.fill:
            state[PENDING_FILL_STATE_KEY] = sorted(set(state.get(PENDING_FILL_STATE_KEY, ()))
                                                   | set(item.fill))
        pending[table] = state
    if pending:
        write_states(pipeline, pending)
        states.update(pending)
    reloads = [i for i in read if i.refresh]
    failures = clear_for_reload(pipeline, reloads, live)
    if any(not item.evolution.exists or item.evolution.added for item in read) or reloads:
        # (dlt then compares every table of the package with the destination: it creates
        # the ones dropped, under their new types, and adds the columns missing. A column
        # new in PostgreSQL changes dlt's schema, which makes it compare anyway; one
        # dropped from the destination by hand does not, and every load of the table
        # failed on it.)
        forget_stored_schema(pipeline)
    for item in read:
        evolution = item.evolution
        if item.refresh or not (evolution.widened or evolution.relax):
            continue
        try:
            types = planned_types(item.plan, pipeline.destination.destination_name)
            apply(pipeline, alter_statements(pipeline, item.plan, evolution, types))
        except Exception as exc:  # noqa: BLE001 - this table's own failure
            failures[item.plan.destination_table] = (
                f"table {item.plan.name}: the destination refused to change its columns in "
                f"place ({describe(exc)}); a full refresh (--full-refresh) loads it again")
    return failures


def clear_for_reload(pipeline: Any, reloads: Sequence[TableRead],
                     live: Collection[str]) -> dict[str, str]:
    """Drop each table about to be loaded again under a new column type (its state was
    invalidated first). Of one among `live` (the tables that keep soft-deleted rows), those
    rows are first copied into a table of their own (`pg_to_bq.destinations.soft_deletes.
    keep_aside`), said in its line. A table whose rows could not be copied, or that could
    not be dropped, fails, left as it was."""
    failures = {}
    for item in reloads:
        table = item.plan.destination_table
        kept = None
        try:
            if table in live:
                with pipeline.sql_client() as client:
                    kept = keep_aside(client, table)
        except Exception as exc:  # noqa: BLE001 - this table's own failure
            failures[table] = (f"table {item.plan.name}: its soft-deleted rows could not be "
                               f"kept before its reload under a new column type "
                               f"({describe(exc)}); the table is left as it was")
            continue
        if kept is not None:
            item.changes.append(f"its {kept[1]:,} soft-deleted row(s) kept in table {kept[0]} "
                                "(the table is loaded again under a new column type)")
        try:
            drop_table(pipeline, table)
        except Exception as exc:  # noqa: BLE001 - this table's own failure
            failures[table] = (f"table {item.plan.name}: could not be dropped before its "
                               f"reload under a new column type ({describe(exc)}); the table "
                               "is left as it was")
    return failures


def compare_types(queries: Any, loaded: Sequence[TableRead]) -> dict[str, CheckOutcome]:
    """The column types part of the check of each loaded table whose load created it (new,
    reloaded, or dropped by hand) or changed its columns: its columns asked again (one query
    for the step) and compared with the planned types. A table whose columns did not change
    needs no question: the comparison this load started with found them as planned."""
    changed = [item for item in loaded
               if not item.evolution.exists or item.evolution.changed]
    if not changed:
        return {}
    kind = queries.destination.destination_name
    try:
        stored = stored_columns(queries, [item.plan.destination_table for item in changed])
    except Exception as exc:  # noqa: BLE001 - the load stands; the check says why it did not run
        return {item.plan.destination_table: not_computed(
            TYPES, f"column types not computed: the destination failed ({describe(exc)})")
            for item in changed}
    return {item.plan.destination_table: types_outcome(
        planned_types(item.plan, kind), stored.get(item.plan.destination_table), kind)
        for item in changed}
