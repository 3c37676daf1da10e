"""Reading a step's tables: each in its own snapshot, a few at once over connections of
their own, into a parquet file — or found unchanged since its last load, and not read at all.

An incremental run re-reads the rows inside the lookback window of the last cursor. When
it reads back exactly the rows the last load recorded for that window (and nothing
newer), a merge would change nothing: the table is not loaded. A table whose row versions
are those of its last load (`pg_to_bq.postgres.row_versions`) is not read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pg_to_bq.destinations.state_table import LOAD_ID_KEY
from pg_to_bq.load import loader_imports
from pg_to_bq.load.changes import CaptureState, absent_keys_sql, key_condition
from pg_to_bq.load.cursor import choose_mode, written_since
from pg_to_bq.load.cursor_window import WindowTracker, max_of, window_digest
from pg_to_bq.load.memory import release_memory
from pg_to_bq.load.parquet_files import remove_stale_files, write_table_file
from pg_to_bq.load.results import (
    NOT_CAPTURED,
    EmptyTableError,
    LoadResult,
    PlanFailed,
    TableLoad,
    TableRead,
    failure_result,
    no_columns,
)
from pg_to_bq.load.state import (
    CDC_STATE_KEY,
    COLUMNS_STATE_KEY,
    DEFINITION_STATE_KEY,
    LOADED_COLUMNS_STATE_KEY,
    PENDING_FILL_STATE_KEY,
    SNAPSHOT_XMIN_STATE_KEY,
    VERSIONS_STATE_KEY,
    WINDOW_STATE_KEY,
    keeps_columns,
    storage_replaced,
    storage_replaced_reason,
)
from pg_to_bq.load.values_check import source_side_fingerprint
from pg_to_bq.planning.errors import describe, is_transient
from pg_to_bq.planning.evolution import Change, Evolution
from pg_to_bq.planning.naming import destination_name
from pg_to_bq.planning.settings import DEFAULT_PARALLEL_STREAMS
from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.postgres import row_versions as tuple_versions
from pg_to_bq.postgres.connect import SourceUnreachable, login_role, with_options
from pg_to_bq.postgres.connect import describe as describe_source
from pg_to_bq.postgres.reader import TableReader
from pg_to_bq.postgres.session import AdbcSession
from pg_to_bq.postgres.sql import literal

log = logging.getLogger(__name__)


# A table's read is tried this many times when it fails in a way that can pass (a dropped
# connection, a serialization failure), waiting RETRY_DELAY_S, then twice that, between.
READ_ATTEMPTS = 3


RETRY_DELAY_S = 2.0






def describe_changes(plan: TablePlan, evolution: Evolution, state: dict[str, Any], mode: str,
                      fill: tuple[str, ...]) -> list[str]:
    """The schema changes this load handles, in words (for the CLI and the metadata)."""
    if not evolution.exists:
        return []
    source_names = {c.name: c.source for c in plan.columns}
    before = state.get(COLUMNS_STATE_KEY, {})
    changes = []
    previously = state.get(LOADED_COLUMNS_STATE_KEY)
    rederived = dict(evolution.rederived)
    # Columns PostgreSQL still has that the plan leaves out, as the destination names them.
    excluded = {destination_name(c.column).casefold() for c in plan.left_out
                if c.action == "excluded"}
    for name in evolution.added:
        action = ("its values filled for the rows loaded before" if name in fill
                  else "loaded with every row")
        if name in rederived:
            if not evolution.reload:  # (else the whole table is, as its line says)
                changes.append(f"column {name} is loaded again ({rederived[name]}): {action}")
        elif previously is not None and name in previously:  # (the last load wrote it)
            changes.append(f"column {name} was missing from the destination (dropped there, "
                           f"not in PostgreSQL): added back, {action}")
        elif name in evolution.again:
            changes.append(f"column {name} is loaded again (dropped in PostgreSQL or left "
                           f"out before; the destination kept the column): {action}")
        else:
            changes.append(Change("added", name).describe(action))
    for name in evolution.dropped:
        if evolution.reload:
            changes.append(f"column {name} dropped in PostgreSQL: not in the reloaded table")
        elif name.casefold() in excluded:
            changes.append(f"column {name} is excluded now (see its note): kept in the "
                           "destination with the values loaded before, NULL for rows loaded "
                           "from now on (drop the column there to remove them)")
        elif previously is not None and name in previously:  # the first load after the drop
            changes.append(Change("dropped", name).describe(""))
        elif previously is None:  # no state says where it came from
            changes.append(f"column {name} is in the destination table, not in PostgreSQL: "
                           "kept, NULL for rows loaded from now on")
        else:
            changes.append(f"column {name} is in the destination table, not in PostgreSQL, "
                           "and pg_to_bq never wrote it (added there by hand): left as it is")
    if evolution.reload:
        for name in evolution.kept:
            changes.append(f"column {name} (no longer in PostgreSQL, kept in the destination "
                           "until now) is not in the reloaded table")
    for change in (*evolution.widened, *evolution.retyped):
        source = source_names.get(change.column)
        text = change.describe("")
        if source is not None and before.get(source.name) not in (None, source.type):
            text += f"; PostgreSQL {before[source.name]} → {source.type}"
        changes.append(text)
    extra = set(fill) - set(evolution.added)
    if extra:
        changes.append(f"column(s) {', '.join(sorted(extra))}: values for the rows loaded "
                       "before filled now (an earlier run could not)")
    if mode == "full" and evolution.changed and plan.disposition == "merge" \
            and not plan.reads_whole and not evolution.reload:
        changes.append("read whole this run")
    return changes


def batch_reporter(on_batch: Callable[..., None] | None, plan: TablePlan) -> Callable[[int], None]:
    if on_batch is None:
        return lambda rows: None
    try:  # `on_batch(rows)` (one table) or `on_batch(table, rows)` (a group)
        import inspect

        two = len(inspect.signature(on_batch).parameters) >= 2
    except (TypeError, ValueError):
        two = False
    return (lambda rows: on_batch(plan.name, rows)) if two else on_batch  # type: ignore[misc,return-value]


def _with_own_sessions(read_some: Callable[[SourceSessions], None], url: str,
                       statement_timeout_s: int) -> None:
    """`read_some` over a connection of its own; none if it cannot connect (a connection
    limit reached, say): the other connections read its share, no table fails for it."""
    with SourceSessions(url, statement_timeout_s) as sessions:
        try:
            sessions.get()
        except SourceUnreachable as exc:
            log.info("reading over one connection fewer: %s", exc)
            return
        read_some(sessions)


class SourceSessions:
    """One source connection shared by the group's reads (each in its own transaction),
    opened when first needed and opened again after a failure."""

    def __init__(self, url: str, statement_timeout_s: int) -> None:
        self.url = url
        self.statement_timeout_s = statement_timeout_s
        self._session: AdbcSession | None = None

    def get(self) -> AdbcSession:
        if self._session is None:
            uri = with_options(self.url, "pg_to_bq", self.statement_timeout_s)
            try:
                self._session = AdbcSession(uri)
            except Exception as exc:  # the driver raises its own error classes
                raise SourceUnreachable(
                    f"cannot connect to PostgreSQL at {describe_source(self.url)}: "
                    f"{str(exc).splitlines()[0]}") from None
        return self._session

    def discard(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> SourceSessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


@dataclass
class TableReads:
    """How a step reads its tables: the source, batch sizes, the values check's limit; and
    the results of tables settled while reading (failed, or unchanged)."""

    loads: Sequence[TableLoad]
    source_url: str
    batch_bytes: int
    hash_salt: bytes | None
    statement_timeout_s: int
    on_batch: Callable[..., None] | None
    record_state: bool
    raise_errors: bool
    fingerprint_rows: int | None
    destination_name: str
    files: Path
    # Change capture (`pg_to_bq.load.changes`), when it is on.
    capture: CaptureState | None = None
    # The tables the publication captures (source names), read when the step starts.
    captured: frozenset[str] = frozenset()
    # Row-version tokens found before the reads (`pg_to_bq.load.unchanged`), by destination
    # table, of tables found changed: each read keeps its table's instead of scanning the
    # row headers again.
    tokens: Mapping[str, str] = field(default_factory=dict)
    # Tables read at once, each over a connection of its own (`read_all`); by default as
    # many as a large table's COPY streams (`PG_TO_BQ_PARALLEL_STREAMS`). A small table's
    # read mostly waits for PostgreSQL (its queries, its COPY), so a second connection works
    # while the first waits (100 tables of 1,000 rows: 1.0 s of reads over one connection,
    # 0.57 s over two, no faster over three).
    connections: int = DEFAULT_PARALLEL_STREAMS

    def read_all(self, states: dict[str, dict[str, Any]], evolutions: dict[str, Evolution],
                 doubts: dict[str, str], settle: Callable[[int, LoadResult], None],
                 skip: Collection[int] = ()) -> list[tuple[int, TableRead]]:
        """Read each table (but those of `skip`, by index: settled already) into a parquet
        file, each table in its own snapshot, over `connections` connections at once;
        tables that fail are settled at once (one at a time), the others returned, in the
        order of `loads`, to be loaded."""
        files = self.files
        for stale in remove_stale_files(files):
            log.info("removed %s, left by an extraction that did not finish", stale)
        todo = [(index, load) for index, load in enumerate(self.loads) if index not in skip]
        read: list[tuple[int, TableRead]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def settled(index: int, result: LoadResult) -> None:
            with lock:
                settle(index, result)

        def read_some(sessions: SourceSessions) -> None:
            try:
                while not stop.is_set():
                    with lock:
                        if not todo:
                            return
                        index, load = todo.pop(0)
                    item = self.read_one(index, load, states, evolutions, doubts, definitions,
                                         sessions, settled)
                    if item is not None:
                        with lock:
                            read.append((index, item))
            except BaseException:
                stop.set()  # (`settle` raised: the caller asked for the first failure)
                raise

        with SourceSessions(self.source_url, self.statement_timeout_s) as sessions:
            definitions = self.definitions(sessions, skip)
            self.captured = self.published(sessions)
            more = min(self.connections, len(todo)) - 1
            if more >= 1:
                # This connection first: with a connection limit, the one it cannot exceed
                # is taken by the reader of first resort, not by a second reader.
                try:
                    sessions.get()
                except SourceUnreachable:
                    more = 0  # (each table's read says why, with its retries)
            if more < 1:
                read_some(sessions)
            else:
                with ThreadPoolExecutor(more, thread_name_prefix="pg_to_bq-read") as pool:
                    others = [pool.submit(_with_own_sessions, read_some, self.source_url,
                                          self.statement_timeout_s) for _ in range(more)]
                    read_some(sessions)
                    for other in others:
                        other.result()  # (raises what a connection's reads raised)
        release_memory()
        return sorted(read, key=lambda item: item[0])

    def read_one(self, index: int, load: TableLoad, states: dict[str, dict[str, Any]],
                 evolutions: dict[str, Evolution], doubts: dict[str, str],
                 definitions: dict[int, str], sessions: SourceSessions,
                 settle: Callable[[int, LoadResult], None]) -> TableRead | None:
        """Read one table of `read_all`: its file to load, or None when it was settled."""
        started = time.monotonic()
        table = load.plan.destination_table
        state, doubt = states.get(table, {}), doubts.get(table)
        definition = definitions.get(load.plan.table.oid)  # type: ignore[arg-type]
        stored = state.get(DEFINITION_STATE_KEY)
        if load.plan.disposition == "merge" and stored is not None and stored != definition:
            state, doubt = {}, ("a partition was attached or detached, or a label of an enum "
                                "it uses changed, since its last load")
        elif storage_replaced(state, load.plan) and not load.full_refresh and not (
                table in evolutions and evolutions[table].reload):
            # (A reload reads it whole anyway, and says why.)
            state, doubt = {}, storage_replaced_reason(state, load.plan)
        try:
            item = self.read_with_retries(
                load, state, evolutions.get(table), sessions, self.files, doubt)
            if isinstance(item, TableRead):
                item.definition = definition
        except Exception as exc:  # noqa: BLE001 - one table's failure is its own
            settle(index, failure_result(load.plan, exc, started, self.raise_errors,
                                         login_role(self.source_url)))
            return None
        note = self.not_captured(load.plan)
        if note and isinstance(item, LoadResult):
            item.extra[NOT_CAPTURED] = note
        elif note:
            item.not_captured = note
        if isinstance(item, LoadResult):
            settle(index, item)
            return None
        return item

    def definitions(self, sessions: SourceSessions, skip: Collection[int] = ()
                    ) -> dict[int, str]:
        """The partitions and enum labels of the merged tables to read (not `skip`'s,
        `tuple_versions.definitions`), one query; none when it cannot be asked (each table's
        read then says why)."""
        oids = [load.plan.table.oid for index, load in enumerate(self.loads)
                if index not in skip and load.plan.loadable
                and load.plan.disposition == "merge" and load.plan.table.oid is not None]
        if not oids or not self.record_state:
            return {}
        def query_all(sql: str) -> list[tuple]:
            session = sessions.get()
            try:
                return session.fetchall(sql)
            finally:
                session.rollback()

        try:
            return tuple_versions.definitions(query_all, oids)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the reads fail on their own, with retries
            sessions.discard()
            log.info("the merged tables' partitions and enum labels were not read: %s",
                     describe(exc))
            return {}

    def published(self, sessions: SourceSessions) -> frozenset[str]:
        """The tables the capture's publication publishes (none without change capture)."""
        if self.capture is None:
            return frozenset()
        session = sessions.get()
        try:
            rows = session.fetchall(
                "SELECT schemaname || '.' || tablename FROM pg_catalog.pg_publication_tables "
                f"WHERE pubname = {literal(self.capture.publication, 'text')}")
        finally:
            session.rollback()
        return frozenset(name for (name,) in rows)

    def not_captured(self, plan: TablePlan) -> str | None:
        """Why change capture, on, does not follow `plan` (None: it does, or it is off)."""
        if self.capture is None or plan.name in self.captured:
            return None
        if not plan.primary_key:
            return "not captured (no primary key): loaded as without change capture"
        if not self.captured:
            return ("change capture is not running (the run's catalog step says why, "
                    "`pg-to-bq discover` how to fix it): loaded as without it")
        return (f"not in the publication {self.capture.publication} (`pg-to-bq discover` says "
                "why): loaded as without change capture")

    def read_with_retries(self, load: TableLoad, state: dict[str, Any],
                          evolution: Evolution | None, sessions: SourceSessions,
                          files: Path, doubt: str | None = None) -> TableRead | LoadResult:
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return self.read_table(load, state, evolution, sessions, files, doubt)
            except Exception as exc:
                sessions.discard()
                if attempt == READ_ATTEMPTS or not is_transient(exc):
                    raise
                delay = RETRY_DELAY_S * 2 ** (attempt - 1)
                log.warning("reading %s failed (%s); trying again in %.0f s", load.plan.name,
                            describe(exc), delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def read_table(self, load: TableLoad, state: dict[str, Any], evolution: Evolution | None,
                   sessions: SourceSessions, files: Path, doubt: str | None = None
                   ) -> TableRead | LoadResult:
        """Read one table into a parquet file (or find it unchanged since the last load).
        `doubt` says why the table's stored state was not trusted (then `state` is empty)."""
        plan = load.plan
        if plan.error is not None:
            raise PlanFailed(plan.error)
        if not plan.columns:
            raise EmptyTableError(no_columns(plan))
        evolution = evolution or Evolution(exists=False)
        started = time.monotonic()
        # A table the destination does not have is read whole, whatever the cursor says (a
        # cursor without its rows would skip them), unless one partition is asked for; a
        # table that must be dropped for a new type is read whole, every partition of it.
        whole = (not evolution.exists and load.window is None) or evolution.reload
        mode, where, cursor_from = choose_mode(
            plan, state, load.full_refresh or whole, None if whole else load.window,
            keeps_columns=keeps_columns(state, evolution))
        captured = self.capture is not None and plan.name in self.captured \
            and load.window is None
        cdc_lsn = self.capture.spool_now if captured and self.capture else None
        if captured and self.capture is not None and not self.capture.fresh and not (
                load.full_refresh or whole):
            # This run did not read the slot (one table materialized on its own): what is
            # spooled is not all that changed, and a cursor cannot see the rest. Read whole,
            # which covers every key spooled so far; later ones the next capture applies.
            mode, where, cursor_from = "full", None, None
            doubt = ("this run did not read change capture's slot (its catalog step was not "
                     "part of it): read whole")
            captured = False
        keys: list[tuple] = []
        if captured and self.capture is not None and not load.full_refresh and not whole \
                and state.get(CDC_STATE_KEY) is not None:
            # Change capture: the rows whose keys changed, read again; nothing, if none did.
            pending_changes = self.capture.pending.get(plan.name)
            why = self.capture.whole.get(plan.name)
            if evolution.changed and plan.disposition != "merge":
                # Its new columns' values for the rows loaded before: only a whole read has
                # them (a merged table's are filled by key).
                why = "its columns changed: read whole"
            if pending_changes is None and not evolution.changed \
                    and not state.get(PENDING_FILL_STATE_KEY):
                return _unchanged_by_capture(plan, state, started)
            cdc_lsn = pending_changes.last_lsn if pending_changes is not None else int(state[CDC_STATE_KEY])
            if why is not None:
                mode, where, cursor_from, doubt = "full", None, None, why
                cdc_lsn = self.capture.spool_now
            else:
                mode, cursor_from = "changes", None
                keys = list(self.capture.keys[plan.name]) if pending_changes is not None \
                    else []
                where = key_condition(plan, keys)
        # A merged table also reads the rows written by transactions its last such read
        # could not see: committed since, under cursor values that read had passed
        # (`written_since`). A small one (its row versions are scanned anyway) every run; a
        # larger one, where the condition costs a scan, with the delete pass (which scans
        # its keys anyway); a whole read sees everything.
        since = state.get(SNAPSHOT_XMIN_STATE_KEY)
        # (not a view's rows, nor a foreign table's: they have no `xmin` to ask)
        watch = plan.disposition == "merge" and plan.cursor is not None \
            and plan.table.rows_have_system_columns and (
            mode == "full" or mode == "incremental" and (
                tuple_versions.applies(plan) or load.apply_deletes))
        if watch and mode == "incremental" and where is not None and since is not None:
            where = f"({where}) OR {written_since(int(since))}"
        pending = tuple(state.get(PENDING_FILL_STATE_KEY, ()))
        fill = () if mode == "full" or plan.disposition != "merge" else tuple(
            dict.fromkeys([*evolution.added, *(c for c in pending
                                               if c in {m.name for m in plan.columns})]))
        stored_window = state.get(WINDOW_STATE_KEY) if mode == "incremental" else None
        reader = TableReader(
            sessions.url, plan, where=where, batch_bytes=self.batch_bytes,
            hash_salt=self.hash_salt, statement_timeout_s=self.statement_timeout_s,
            streams=load.streams, count_table=True, session=sessions.get(),
            # A table read whole counts its rows and its row versions in one query.
            versions=mode == "full" and tuple_versions.applies(plan)
            and plan.destination_table not in self.tokens,
            snapshot_xmin=watch,
        )
        tracker = WindowTracker(plan, mode, window=mode == "incremental" or not plan.reads_whole) \
            if plan.cursor is not None and mode != "window" \
            else None
        report = batch_reporter(self.on_batch, plan)
        changes = describe_changes(plan, evolution, state, mode, fill)
        reason = doubt if doubt and mode == "full" and not load.full_refresh else None
        tracker = tracker if mode != "changes" else None
        with reader:
            versions = None
            if mode in ("full", "incremental") and tuple_versions.applies(plan):
                versions = self.tokens.get(plan.destination_table) \
                    or tuple_versions.token(reader, plan, self.hash_salt)
                if versions == state.get(VERSIONS_STATE_KEY) and not load.full_refresh \
                        and evolution.exists and not evolution.changed and not fill:
                    # Not one row version changed since the last load: nothing to read.
                    unchanged = TableRead(plan, mode, cursor_from, None, reader, Path(), started)
                    result = unchanged.result(state.get(LOAD_ID_KEY), status="unchanged")
                    result.extra["unchanged"] = "versions"
                    return result
                if reason is None and mode == "full" and state \
                        and tuple_versions.unversioned(versions):
                    reason = tuple_versions.UNVERSIONED_REASON
            ahead: list[pa.RecordBatch] | None = None
            if stored_window and not evolution.changed and not fill \
                    and reader.stats.snapshot_rows == stored_window.get("rows"):
                ahead = list(reader.batches())
                if window_digest(ahead, reader.schema) == stored_window.get("digest"):
                    report(reader.stats.rows)
                    unchanged = TableRead(plan, mode, cursor_from, None, reader, Path(), started)
                    result = unchanged.result(state.get(LOAD_ID_KEY), status="unchanged")
                    result.cursor_to = max_of(ahead, plan)
                    result.extra["unchanged"] = True
                    return result

            def batches() -> Iterator[pa.RecordBatch]:
                for batch in reader.batches() if ahead is None else ahead:
                    if tracker is not None and batch.num_rows:
                        tracker.add(batch)
                    report(batch.num_rows)
                    yield batch

            # This table has rows to load: what its load imports is imported while it is read.
            loader_imports.start(self.destination_name)
            path, _ = write_table_file(batches(), reader.schema, files,
                                       self.destination_name)
            if tracker is not None:
                tracker.finish(reader.schema)
            source_fingerprint = None
            if self.fingerprint_rows is not None:
                source_fingerprint = source_side_fingerprint(plan, reader, mode,
                                                         self.fingerprint_rows)
            absent = []
            if mode == "changes" and keys:
                # Keys PostgreSQL no longer has, in the snapshot the rows were read in.
                absent = [tuple(row) for row in reader.query_all(absent_keys_sql(plan, keys))]
        read = TableRead(plan, mode, cursor_from, tracker, reader, path, started, evolution, fill,
                         changes, source_fingerprint, versions, reason)
        read.cdc_lsn = cdc_lsn
        read.absent = absent
        # (A read that did not look keeps the bound of the last one that did.)
        read.snapshot_xmin = reader.snapshot_xmin if watch else (
            int(since) if since is not None and mode in ("incremental", "window") else None)
        if captured and state.get(CDC_STATE_KEY) is not None and self.capture is not None \
                and (found := self.capture.pending.get(plan.name)) is not None:
            read.captured = {"from": int(state[CDC_STATE_KEY]), "to": found.last_lsn,
                             "inserts": found.inserts, "updates": found.updates,
                             "deletes": found.deletes, "keys": found.keys}
        return read


def _unchanged_by_capture(plan: TablePlan, state: Mapping[str, Any], started: float
                          ) -> LoadResult:
    """A captured table with no change since its last load: not read from PostgreSQL."""
    result = LoadResult(
        table=plan.name, destination_table=plan.destination_table, rows=0, snapshot_rows=None,
        load_id=state.get(LOAD_ID_KEY), duration_s=time.monotonic() - started, mode="changes",
        status="unchanged")
    result.extra["unchanged"] = "changes"
    return result
