"""Load a group of tables — one step's — with one dlt pipeline.

Every table of a group is read, in turn, into a parquet file (`pg_to_bq.load.read`), then
ONE dlt extract, normalize and load takes all the files (`pg_to_bq.load.packages`). dlt's
fixed costs — resolving its configuration, restoring state from the destination, creating
a load package, updating the stored schema, recording the load — are paid once per group,
not per table. A large table is a group of its own. Nothing about one table stops
another: a table that cannot be read fails alone before dlt sees it, and a table whose
load job fails fails alone.

The group asks the destination its questions (columns, states, row counts, figures)
through pg_to_bq's own connection where there is one (a DuckDB file,
`pg_to_bq.destinations.duckdb_session`), and makes its dlt pipeline only when it has rows
to load: a step whose tables are all unchanged never imports dlt (~0.7 s and ~50 MB of a
process). Tables whose row versions are those of their last load are found before any
read (`pg_to_bq.load.unchanged`), so such a step never imports Arrow either (~45 MB). A
pipeline with a package an interrupted run left behind is made first, and finishes that
package before anything is asked; BigQuery is asked through dlt's client.

The order of a group's load, and why:

1. the destination's tables and each table's state, trusted only while the destination
   holds the rows it covers (`pg_to_bq.load.state`), and meanwhile PostgreSQL's row
   versions of every table with a state (`pg_to_bq.load.unchanged`): those unchanged there
   and in the destination are not read;
2. the reads, `read_connections` tables at once, each over a source connection of its own
   and in its own snapshot;
3. the schema changes owed before the load (`pg_to_bq.load.schema_changes`), the load,
   the fills of new columns (`pg_to_bq.load.fill`) and the delete pass
   (`pg_to_bq.load.deletes`), then the destination's row counts, the values check and,
   for the tables whose load created or changed their columns, the column types;
4. the tables' states, written after the rows they cover: a table that failed keeps its
   previous state, and a run killed before this write leaves states that no longer match
   the tables' rows, which the next run notices.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Mapping, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pg_to_bq.checks import drift
from pg_to_bq.checks.outcomes import CheckOutcome, row_count_outcome
from pg_to_bq.destinations.lazy import LazyDestination, lazy
from pg_to_bq.destinations.row_counts import destination_counts, one_connection
from pg_to_bq.destinations.soft_deletes import add_column, live_tables
from pg_to_bq.destinations.state_table import read_states
from pg_to_bq.destinations.writer_lock import exclusive
from pg_to_bq.load.changes import CaptureState, capture_state, delete_keys
from pg_to_bq.load.memory import release_memory
from pg_to_bq.load.pipelines import files_dir, has_pending_packages, pipelines_dir, side_pipeline
from pg_to_bq.load.results import (
    EmptyTableError,
    LoadJobFailed,
    LoadResult,
    TableLoad,
    TableRead,
    Window,
    no_columns,
)
from pg_to_bq.load.schema_changes import compare_types, evolutions_of, prepare
from pg_to_bq.load.state import (
    CDC_STATE_KEY,
    FIGURES_STATE_KEY,
    ROWS_KEY,
    commit_states,
    stored_figures,
    trusted_states,
)
from pg_to_bq.load.unchanged import settle_unchanged, still_unchanged
from pg_to_bq.load.values_check import (
    compare_fingerprints,
    destination_figures,
    destination_row_figures,
    engine,
)
from pg_to_bq.planning.errors import describe
from pg_to_bq.planning.settings import DEFAULT_DRIFT_MAX_ROWS, DEFAULT_PARALLEL_STREAMS
from pg_to_bq.planning.tables import TablePlan

log = logging.getLogger(__name__)



def load_table(
    plan: TablePlan,
    *,
    source_url: str,
    destination: Any,
    dataset: str,
    work_dir: Path,
    full_refresh: bool = False,
    window: Window | None = None,
    batch_bytes: int = 16 * 1024 * 1024,
    hash_salt: bytes | None = None,
    statement_timeout_s: int = 3600,
    on_batch: Callable[[int], None] | None = None,
    streams: int = 1,
    pipeline_name: str | None = None,
    record_state: bool = True,
) -> LoadResult:
    """Extract `plan`'s table and load it with its own pipeline; raises when it fails.

    `full_refresh` replaces the destination table (and resets the incremental cursor);
    `window` re-reads one partition and merges it. Otherwise a merge plan with a cursor
    reads rows at or after the last cursor minus the lookback, and others are replaced.
    An incremental read that finds exactly the rows the last load recorded for its
    lookback window loads nothing (`status == "unchanged"`). `streams` > 1 reads a large
    table over that many connections (see `TableReader`). `pipeline_name` names another
    pipeline than the table's; without `record_state` no state is kept.
    """
    if not plan.columns and plan.error is None:
        raise EmptyTableError(no_columns(plan))
    [result] = load_group(
        [TableLoad(plan, full_refresh=full_refresh, window=window, streams=streams)],
        pipeline_name=pipeline_name or plan.pipeline_name, source_url=source_url,
        destination=destination, dataset=dataset, work_dir=work_dir, batch_bytes=batch_bytes,
        hash_salt=hash_salt, statement_timeout_s=statement_timeout_s, on_batch=on_batch,
        count_rows=False, raise_errors=True, record_state=record_state)
    return result


def load_group(
    loads: Sequence[TableLoad],
    *,
    pipeline_name: str,
    source_url: str,
    destination: Any,
    dataset: str,
    work_dir: Path,
    batch_bytes: int = 16 * 1024 * 1024,
    hash_salt: bytes | None = None,
    statement_timeout_s: int = 3600,
    on_batch: Callable[[str, int], None] | Callable[[int], None] | None = None,
    on_result: Callable[[LoadResult], None] | None = None,
    count_rows: bool = True,
    raise_errors: bool = False,
    destination_lock: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    record_state: bool = True,
    fingerprint_rows: int | None = None,
    drift_max_rows: int | None = DEFAULT_DRIFT_MAX_ROWS,
    cdc_publication: str | None = None,
    run_id: str | None = None,
    read_connections: int = DEFAULT_PARALLEL_STREAMS,
) -> list[LoadResult]:
    """Load `loads` with the dlt pipeline `pipeline_name`; a result per table, in order.

    A table that fails has a result with `status == "failed"` and the others load (with
    `raise_errors`, the first failure is raised instead, as `load_table` does). `on_result`
    is called with each table's result as soon as it is known (a failed read at once, the
    loaded tables after the group's load). `count_rows` asks the destination for each loaded
    table's rows (one query for many tables). `destination_lock` is held while the
    destination is used (restoring state, loading), not while the tables are read. Loads of
    one pipeline on one machine take turns (its working directory holds its packages).
    Schema changes are handled as `pg_to_bq.planning.evolution` says, and listed in each result.
    With `fingerprint_rows` (the whole-table limit), each loaded table's values are
    compared with PostgreSQL's (`pg_to_bq.checks.fingerprint`): the source side in the
    snapshot the table was read in, the destination side after the load, one query for the
    group. With `drift_max_rows`, each table of at most that many rows has its destination's
    whole-table figures stored after its load and compared before the next
    (`pg_to_bq.checks.drift`): what changed behind pg_to_bq's back is found even when the
    table is unchanged in PostgreSQL and not read. With `cdc_publication` (change capture on),
    the tables it publishes are loaded from the keys the capture spooled (`pg_to_bq.load.
    changes`): only their changed rows are read; a table with no change is not read at all.
    `run_id` (the Dagster run's) tells whether this run read the slot (its marker).
    `read_connections` tables are read at once, each over a connection of its own.
    """
    run = _GroupRun(
        loads=loads, source_url=source_url, dataset=dataset, work_dir=work_dir,
        batch_bytes=batch_bytes, hash_salt=hash_salt, statement_timeout_s=statement_timeout_s,
        on_batch=on_batch, on_result=on_result, count_rows=count_rows,
        raise_errors=raise_errors, destination_lock=destination_lock,
        record_state=record_state, fingerprint_rows=fingerprint_rows,
        drift_max_rows=drift_max_rows, cdc_publication=cdc_publication, run_id=run_id,
        pipeline_name=pipeline_name, destination=lazy(destination),
        read_connections=read_connections)
    with exclusive(pipelines_dir(work_dir) / pipeline_name, _waiting_for(pipeline_name)), \
            contextlib.ExitStack() as run.exits:
        run.queries = run.destination.queries(dataset)
        if run.queries is None or has_pending_packages(work_dir, pipeline_name):
            # Only dlt can ask (BigQuery), or a package is left to finish before anything
            # is asked: the pipeline now.
            run.loader()
        try:
            return run.execute()
        finally:
            # The destination's buffers (DuckDB's, in this process) go back to the OS
            # after each group: a run of many groups would otherwise keep them all.
            release_memory()


def _pass_failed(result: LoadResult, plan: TablePlan, exc: BaseException) -> None:
    """A table whose delete pass failed fails, its rows loaded (its state is kept: it
    covers them)."""
    result.status = "failed"
    result.error = (f"table {plan.name}: the delete pass failed ({describe(exc)}); its rows "
                    "are loaded, and rows deleted in PostgreSQL stay until a pass succeeds")
    result.trace = "".join(traceback.format_exception(exc))


def _cleared(stale: Sequence[str], rows: int) -> str:
    return (f"set {', '.join(stale)} to NULL in {rows:,} row(s) PostgreSQL no longer has "
            "(their values were derived the old way)")


def _waiting_for(pipeline_name: str) -> Callable[[float], None]:
    def waiting(seconds: float) -> None:
        log.info("waiting for another load of %s on this machine to finish (%.0f s so far)",
                 pipeline_name, seconds)

    return waiting


@dataclass
class _GroupRun:
    """One `load_group` call: its settings, and the steps it goes through."""

    loads: Sequence[TableLoad]
    source_url: str
    dataset: str
    work_dir: Path
    batch_bytes: int
    hash_salt: bytes | None
    statement_timeout_s: int
    on_batch: Callable[..., None] | None
    on_result: Callable[[LoadResult], None] | None
    count_rows: bool
    raise_errors: bool
    destination_lock: Callable[[], contextlib.AbstractContextManager]
    record_state: bool
    fingerprint_rows: int | None = None
    drift_max_rows: int | None = None
    cdc_publication: str | None = None
    run_id: str | None = None
    pipeline_name: str = ""
    destination: LazyDestination | None = None
    read_connections: int = DEFAULT_PARALLEL_STREAMS
    # The group's dlt pipeline, made when it first has rows to load (`loader`).
    pipeline: Any = None
    # What the group asks the destination through: pg_to_bq's own connection until the
    # pipeline is made, then the pipeline (`pg_to_bq.destinations.duckdb_session`).
    queries: Any = None
    exits: contextlib.ExitStack | None = None
    results: dict[int, LoadResult] = field(default_factory=dict)
    # The destination tables that keep soft-deleted rows (their live rows are compared).
    live: set[str] = field(default_factory=set)

    def settle(self, index: int, result: LoadResult) -> None:
        self.results[index] = result
        exception = result.extra.pop("exception", None)
        if self.raise_errors and result.status == "failed":
            raise exception or LoadJobFailed(result.error)
        if self.on_result is not None:
            self.on_result(result)

    def loader(self) -> Any:
        """The group's dlt pipeline, made (with dlt's settings for the rest of the group)
        the first time it is needed; its state and schema are restored from the destination
        and a package an interrupted run left is finished before it loads anything."""
        if self.pipeline is None:
            import dlt

            from pg_to_bq.load.packages import dlt_settings, group_pipeline, sync_once

            assert self.destination is not None and self.exits is not None
            pipeline = group_pipeline(self.pipeline_name, self.destination.dlt(), self.dataset,
                                      self.work_dir)
            self.exits.enter_context(dlt.config.values(dlt_settings(pipeline.destination)))
            with self.destination_lock(), one_connection(pipeline):
                sync_once(pipeline)
            self.pipeline = self.queries = pipeline
        return self.pipeline

    def execute(self) -> list[LoadResult]:
        plans = [load.plan for load in self.loads if load.plan.loadable]
        counting = self.count_rows or self.record_state
        queries = self.queries
        with ThreadPoolExecutor(1, thread_name_prefix="pg_to_bq-unchanged") as pool:
            with self.destination_lock(), one_connection(queries):
                stored = read_states(queries, [p.destination_table for p in plans]) \
                    if self.record_state else {}
                # The tables whose row versions are those of their last load, found without
                # reading (`pg_to_bq.load.unchanged`): PostgreSQL is asked, for every table
                # with a stored state, while the destination is asked its schema, whether the
                # states can be trusted and its figures; what is found is kept only for the
                # tables those answers leave unchanged (`still_unchanged`; the others are
                # read).
                looking = pool.submit(
                    settle_unchanged, self.loads, stored, None, {},
                    source_url=self.source_url, statement_timeout_s=self.statement_timeout_s,
                    hash_salt=self.hash_salt,
                ) if self.cdc_publication is None and self.record_state and stored else None
                evolutions, columns_now = evolutions_of(queries, plans, stored,
                                                            self.hash_salt)
                self.live = live_tables(columns_now)
                states, doubts = trusted_states(queries, plans, evolutions, stored, self.live)
                for table, reason in self.figures_doubts(states).items():
                    del states[table]
                    doubts[table] = reason
                capture = self.capture_state(states)
                before = self.figures_before(states, columns_now)
            found, tokens = looking.result() if looking is not None else ({}, {})
            found = still_unchanged(found, self.loads, states, evolutions, doubts)
        unchanged: list[tuple[int, LoadResult]] = []

        def settle_read(index: int, result: LoadResult) -> None:
            # An unchanged table is settled with the loaded ones, once its rows are counted.
            if result.status == "unchanged" and counting:
                unchanged.append((index, result))
            else:
                self.settle(index, result)

        for index, result in found.items():
            settle_read(index, result)
        read: list[tuple[int, TableRead]] = []
        if len(found) < len(self.loads):
            from pg_to_bq.load.read import TableReads

            reads = TableReads(
                loads=self.loads, source_url=self.source_url, batch_bytes=self.batch_bytes,
                hash_salt=self.hash_salt, statement_timeout_s=self.statement_timeout_s,
                on_batch=self.on_batch, record_state=self.record_state,
                raise_errors=self.raise_errors, fingerprint_rows=self.fingerprint_rows,
                destination_name=queries.destination.destination_name,
                files=files_dir(self.work_dir, self.pipeline_name),
                capture=capture, tokens=tokens, connections=self.read_connections)
            read = reads.read_all(states, evolutions, doubts, settle_read, skip=set(found))
        failures: dict[str, str] = {}
        loaded: list[tuple[int, TableRead]] = []
        load_id = None
        counts: dict[str, int] = {}
        checked: dict[str, CheckOutcome] = {}
        results: list[tuple[int, LoadResult]] = []
        if read or unchanged:
            pipeline = self.loader() if read else None
            queries = self.queries
            with self.destination_lock(), one_connection(queries):
                if read:
                    from pg_to_bq.load.packages import load_files

                    for _, item in read:
                        item.keeps_deleted = item.plan.destination_table in self.live
                    failures = prepare(pipeline, [r for _, r in read], states,
                                       self.record_state, self.live)
                    ready = [r for _, r in read if r.plan.destination_table not in failures]
                    load_failures, load_id = load_files(pipeline, ready)
                    failures.update(load_failures)
                    loaded = [(i, r) for i, r in read
                              if r.plan.destination_table not in failures]
                    # (dlt gave every table with soft deletes it loaded the column)
                    self.live.update(r.plan.destination_table for _, r in loaded
                                     if r.plan.soft_deletes)
                    failures.update(self.fill([r for _, r in loaded]))
                    loaded = [(i, r) for i, r in loaded if r.plan.destination_table not in failures]
                    failures.update(self.delete_absent([r for _, r in loaded]))
                    loaded = [(i, r) for i, r in loaded if r.plan.destination_table not in failures]
                results = [(i, item.result(load_id)) for i, item in loaded] + unchanged
                for (_, item), (_, result) in zip(loaded, results, strict=False):
                    if item.absent:
                        result.deleted = len(item.absent)
                if counting:
                    counts, _ = destination_counts(queries,
                                                   [r.destination_table for _, r in results],
                                                   live=self.live)
                passed = self.delete_pass(
                    results, {r.plan.destination_table: r.evolution.stale for _, r in loaded
                              if r.merges_whole},
                    self.deleted_in_source(results, counts))
                if counting and passed:
                    counts.update(destination_counts(queries, sorted(passed),
                                                     live=self.live)[0])
                checked = compare_fingerprints(queries, [r for _, r in loaded], self.live)
                typed = compare_types(queries, [r for _, r in loaded])
                upgraded = self.compare_figures(results, states, before)
                after = {**upgraded, **self.figures_after(results, counts)}
                for index, result in results:
                    result.destination_rows = counts.get(result.destination_table)
                    result.fingerprint = checked.get(result.destination_table)
                    result.types = typed.get(result.destination_table)
                    result.row_count = row_count_outcome(
                        mode=result.mode, disposition=self.loads[index].plan.disposition,
                        destination_rows=result.destination_rows,
                        snapshot_rows=result.snapshot_rows, table_rows=result.table_rows,
                        source_rows_after_deletes=result.source_rows_after_deletes)
                if self.record_state:
                    commit_states(queries, [r for _, r in loaded], states, load_id, counts,
                                  [r for _, r in results], after)
        for index, item in read:
            if item.plan.destination_table in failures:
                self.settle(index, item.failed(failures[item.plan.destination_table]))
        for index, result in results:
            self.settle(index, result)
        return [self.results[i] for i in sorted(self.results)]

    def capture_state(self, states: Mapping[str, Mapping[str, Any]]) -> CaptureState | None:
        """What change capture left for this step's tables (`pg_to_bq.load.changes`)."""
        if self.cdc_publication is None:
            return None
        applied = {load.plan.name: int(state[CDC_STATE_KEY]) for load in self.loads
                   if (state := states.get(load.plan.destination_table))
                   and state.get(CDC_STATE_KEY) is not None}
        with self.queries.sql_client() as client:
            # The rows the destination held after the last load: exact, where PostgreSQL's
            # estimate may be missing (a table never analyzed).
            return capture_state(client, self.cdc_publication, applied, {
                load.plan.name: states.get(load.plan.destination_table, {}).get(ROWS_KEY)
                or load.plan.table.estimated_rows for load in self.loads}, self.run_id)

    def delete_absent(self, loaded: list[TableRead]) -> dict[str, str]:
        """Delete the keys change capture found gone from PostgreSQL (after the merge of the
        rows read again); a table whose delete fails fails (its next run deletes them)."""
        failures = {}
        with self.queries.sql_client() as client:
            for item in loaded:
                if not item.absent:
                    continue
                try:
                    delete_keys(client, item.plan, item.absent,
                                item.plan.destination_table in self.live)
                except Exception as exc:  # noqa: BLE001 - this table's own failure
                    failures[item.plan.destination_table] = (
                        f"table {item.plan.name}: rows deleted in PostgreSQL were not deleted "
                        f"({describe(exc)}); the next run deletes them")
        return failures

    def drift_columns(self, plan: TablePlan, names: Sequence[str]) -> list[tuple[str, str]]:
        """`names` (destination columns) with their logical types, as the figures ask them."""
        logical = {c.name: c.logical for c in plan.columns}
        return [(name, logical.get(name, "text")) for name in names]

    def figures_doubts(self, states: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """The tables whose state holds figures another destination engine computed (a
        DuckDB upgrade may hash differently), with why: no figures of theirs can be compared
        with this engine's, so, rather than leave them unchecked until they change in
        PostgreSQL, they are read whole once (their check compares the source, and their
        new figures are compared from the next run). Not those above `drift_max_rows`,
        whose figures would not be compared anyway."""
        if self.drift_max_rows is None or not self.record_state or not states:
            return {}
        name = engine(self.queries)
        doubts = {}
        for table, state in states.items():
            figures = state.get(FIGURES_STATE_KEY) or {}
            if figures.get("engine") not in (None, name) \
                    and int(state.get(ROWS_KEY) or 0) <= self.drift_max_rows:
                doubts[table] = (f"its figures were computed by {figures['engine']}, which "
                                 f"{name} cannot compare (read whole once, to check it "
                                 "against the source)")
        return doubts

    def figures_before(self, states: Mapping[str, Mapping[str, Any]],
                       columns_now: Mapping[str, Mapping[str, Any]]) -> dict[str, drift.Figures]:
        """The destination's figures now of each table whose trusted state holds the figures
        its last load left: only columns that are still there are asked; a column gone from
        the destination shows as a difference. A table whose stored figures have the row
        figure is asked only its rows and that figure first (`drift.figures_sql(rows_only=
        True)`, a third of the cost): when they are those stored, so are its figures; the
        others are asked column by column."""
        if self.drift_max_rows is None or not states:
            return {}
        name = engine(self.queries)
        whole, quick, stored_of = {}, {}, {}
        for load in self.loads:
            table = load.plan.destination_table
            stored = stored_figures(states.get(table, {}), name)
            if stored is None or stored.rows > self.drift_max_rows:
                continue
            present = [c for c in stored.columns if c in columns_now.get(table, {})]
            asked = self.drift_columns(load.plan, present)
            if stored.row is not None and len(present) == len(stored.columns):
                quick[table], stored_of[table] = asked, stored
            else:
                whole[table] = asked
        found: dict[str, drift.Figures] = {}
        answered = destination_row_figures(self.queries, quick, self.live) if quick else {}
        for table, asked in quick.items():
            rows_and_row = answered.get(table)
            if rows_and_row is not None and stored_of[table].same_rows(*rows_and_row):
                found[table] = stored_of[table]
            else:
                whole[table] = asked
        found.update(destination_figures(self.queries, whole, self.live))
        return found

    def compare_figures(self, results: list[tuple[int, LoadResult]],
                        states: Mapping[str, Mapping[str, Any]],
                        before: Mapping[str, drift.Figures]) -> dict[str, drift.Figures]:
        """Each result's drift: what changed in the destination since the last load. For a
        table read whole this run it is what the whole read replaced (`drift_replaced`: said
        as a warning, the copy is exact again), for any other what is still there. Returns
        the figures to store for the unchanged tables whose stored ones lack the row figure
        (stored by an earlier version) and that were found, column by column, as their last
        load left them: the figures asked now, which have it (the next run asks that alone)."""
        name = engine(self.queries)
        upgraded = {}
        for _, result in results:
            table = result.destination_table
            now = before.get(table)
            stored = stored_figures(states.get(table, {}), name)
            if now is None or stored is None:
                continue
            found = tuple(drift.changes(stored, now))
            if result.status != "unchanged" and result.mode == "full":
                result.drift_replaced = found
                continue
            result.drift = found
            if result.status == "unchanged" and not result.drift and not result.deleted \
                    and stored.row is None and now.row is not None \
                    and set(now.columns) == set(stored.columns):
                upgraded[table] = now
        return upgraded

    def figures_after(self, results: list[tuple[int, LoadResult]], counts: Mapping[str, int]
                      ) -> dict[str, drift.Figures]:
        """The figures of the tables this run wrote (loaded, or trimmed by a delete pass), to
        store with their state; an unchanged table keeps the figures it has."""
        if self.drift_max_rows is None or not self.record_state:
            return {}
        wanted = {}
        for index, result in results:
            if result.status == "unchanged" and not result.deleted:
                continue
            if counts.get(result.destination_table, 0) > self.drift_max_rows:
                continue
            plan = self.loads[index].plan
            wanted[result.destination_table] = self.drift_columns(
                plan, [c.name for c in plan.columns])
        return destination_figures(self.queries, wanted, self.live)

    def side_load_many(self, plans: Sequence[TablePlan]) -> tuple[list[LoadResult], Any]:
        """Load `plans` (side tables beside the destination tables: a fill's, a delete pass's
        keys) in one package of the side pipeline, keeping no state; returns a result per
        plan, in order (a failed one says why), and the pipeline, to query the destination."""
        from pg_to_bq.load.packages import group_pipeline

        assert self.destination is not None
        name = side_pipeline(self.pipeline_name)
        results = load_group(
            [TableLoad(plan) for plan in plans], pipeline_name=name,
            source_url=self.source_url, destination=self.destination.dlt(),
            dataset=self.dataset, work_dir=self.work_dir, batch_bytes=self.batch_bytes,
            hash_salt=self.hash_salt, statement_timeout_s=self.statement_timeout_s,
            count_rows=False, record_state=False)
        return results, group_pipeline(name, self.destination.dlt(), self.dataset,
                                       self.work_dir)

    def fill(self, loaded: list[TableRead]) -> dict[str, str]:
        """Fill the columns added to merged tables for their existing rows; a table whose
        fill fails fails (its rows loaded; the next run fills them, see `prepare`)."""
        from pg_to_bq.load.fill import fill_from, fill_plan

        failures: dict[str, str] = {}
        fills = [item for item in loaded if item.fill]
        if not fills:
            return failures

        def failed(item: TableRead, exc: BaseException) -> None:
            failures[item.plan.destination_table] = (
                f"table {item.plan.name}: new column(s) {', '.join(item.fill)} were not "
                f"filled for the rows loaded before ({describe(exc)}); its rows are "
                "loaded and the next run fills them")

        with contextlib.ExitStack() as stack:
            try:
                # The key and new columns of every table to fill, in one side load, asked
                # over one client.
                sides, pipeline = self.side_load_many([fill_plan(item.plan, item.fill)
                                                       for item in fills])
                client = stack.enter_context(pipeline.sql_client())
            except Exception as exc:  # noqa: BLE001 - these tables' own failure
                for item in fills:
                    failed(item, exc)
                return failures
            for item, side in zip(fills, sides, strict=True):
                stale = [c for c in item.fill if c in item.evolution.stale]
                try:
                    if side.status == "failed":
                        raise RuntimeError(side.error or "its columns were not read")
                    rows, cleared = fill_from(item.plan, item.fill, client, stale)
                except Exception as exc:  # noqa: BLE001 - this table's own failure
                    failed(item, exc)
                    continue
                item.changes.append(
                    f"filled {', '.join(item.fill)} for {rows:,} existing row(s)")
                if cleared:
                    item.changes.append(_cleared(stale, cleared))
        return failures

    def deleted_in_source(self, results: list[tuple[int, LoadResult]],
                          counts: Mapping[str, int]) -> set[str]:
        """The small merged tables (`row_versions.applies`: their row versions are scanned
        every run) that hold more rows after this run's merge than PostgreSQL held when they
        were read, and had no delete pass: a merge adds and replaces rows, never removes
        them, so the difference is rows deleted in PostgreSQL. Their pass runs now, rather
        than leaving the rows (and a failed check) until the weekly one; on a small table
        it costs one read of its keys. Larger tables wait for the weekly pass, or change
        capture."""
        from pg_to_bq.postgres import row_versions

        found = set()
        for index, result in results:
            plan = self.loads[index].plan
            rows = counts.get(result.destination_table)
            if plan.disposition == "merge" and result.mode == "incremental" \
                    and result.status != "failed" and result.deleted is None \
                    and rows is not None and result.table_rows is not None \
                    and rows > result.table_rows and row_versions.applies(plan):
                found.add(result.destination_table)
        return found

    def delete_pass(self, results: list[tuple[int, LoadResult]],
                    soft_whole: Mapping[str, Sequence[str]], found: Set[str]) -> set[str]:
        """The delete pass of the merged tables that asked for one (`pg_to_bq.load.deletes`),
        after their load and fill, loaded or unchanged; of the tables that keep
        soft-deleted rows read whole this run (`soft_whole`: merged, not replaced, so the
        rows PostgreSQL no longer has are still there, to be marked or deleted, and the
        columns it maps to derived the old way set to NULL in them); and of
        those `deleted_in_source` found (`found`). A table whose pass fails fails, its rows
        loaded (its state is kept: it covers them). Returns the tables passed."""
        from pg_to_bq.load.deletes import delete_absent, keys_plan

        passes: list[tuple[LoadResult, TablePlan]] = []
        for index, result in results:
            plan = self.loads[index].plan
            asked = (self.loads[index].apply_deletes and plan.disposition == "merge"
                     and result.mode not in ("full", "changes")) \
                or result.destination_table in found
            if not asked and result.destination_table not in soft_whole:
                continue  # (change capture deletes what PostgreSQL deleted, every run)
            try:
                if plan.soft_deletes and plan.destination_table not in self.live:
                    add_column(self.queries, plan.destination_table)
                    self.live.add(plan.destination_table)
                passes.append((result, plan))
            except Exception as exc:  # noqa: BLE001 - this table's own failure
                _pass_failed(result, plan, exc)
        if not passes:
            return set()
        with contextlib.ExitStack() as stack:
            try:
                # The keys of every table of the pass, in one side load (each read in a
                # snapshot of its own, after its table's load), asked over one client.
                keys, pipeline = self.side_load_many([keys_plan(plan) for _, plan in passes])
                client = stack.enter_context(pipeline.sql_client())
            except Exception as exc:  # noqa: BLE001 - these tables' own failure
                for result, plan in passes:
                    _pass_failed(result, plan, exc)
                return {plan.destination_table for _, plan in passes}
            for (result, plan), read in zip(passes, keys, strict=True):
                try:
                    if read.status == "failed":
                        raise RuntimeError(read.error or "its keys were not read")
                    stale = soft_whole.get(plan.destination_table, ())
                    result.deleted, cleared = delete_absent(
                        plan, client, plan.destination_table in self.live, stale)
                    if cleared:
                        result.changes = (*result.changes, _cleared(stale, cleared))
                    result.source_rows_after_deletes = read.rows
                except Exception as exc:  # noqa: BLE001 - this table's own failure
                    _pass_failed(result, plan, exc)
        return {plan.destination_table for _, plan in passes}
