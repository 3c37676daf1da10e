"""The values check of a load: the fingerprint (`pg_to_bq.checks.fingerprint`), its
PostgreSQL side computed in the snapshot the table was read in and its destination side
after the load; and the destination's whole-table figures (`pg_to_bq.checks.drift`),
before and after the load. One query for many tables each time."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pg_to_bq.checks import drift
from pg_to_bq.checks.fingerprint import (
    DEFAULT_RANGE_ROWS,
    Fingerprint,
    Scope,
    bounds_sql,
    compare,
    destination_sql_many,
    not_compared,
    parse,
    scope_for,
    source_sql,
    split_many,
)
from pg_to_bq.checks.outcomes import FINGERPRINT, CheckOutcome, not_computed
from pg_to_bq.destinations import query_threads
from pg_to_bq.destinations.soft_deletes import rows_of
from pg_to_bq.planning.errors import describe
from pg_to_bq.planning.tables import TablePlan

if TYPE_CHECKING:
    from pg_to_bq.load.results import TableRead
    from pg_to_bq.postgres.reader import TableReader

T = TypeVar("T")

log = logging.getLogger(__name__)

# A key range holds at least this many rows, however few the load read.
MIN_RANGE_ROWS = 200


def source_side_fingerprint(plan: TablePlan, reader: TableReader, mode: str, full_rows: int
                        ) -> tuple[Scope, Fingerprint] | str:
    """The source side of the values check, in the snapshot the table was read in. A table
    of at most `full_rows` rows is compared whole; a larger one in key ranges sized by what
    the load read, so the check costs a small share of the load (digesting a row costs
    about as much as loading it: a whole 1M-row table would double the load)."""
    if mode == "window":
        return "not computed for a run of one partition: the check compares whole tables"
    if mode == "changes":
        return ("not compared: a change-capture run reads the changed rows only (compared "
                "when the table is read whole)")
    try:
        stats = reader.stats
        table_rows = stats.table_rows if stats.table_rows is not None else stats.rows
        bounds = None
        bounds_query = bounds_sql(plan)
        if bounds_query is not None and table_rows > full_rows:
            row = reader.query_one(bounds_query)
            if row and row[0] is not None:
                bounds = (int(row[0]), int(row[1]))
        range_rows = max(MIN_RANGE_ROWS, min(DEFAULT_RANGE_ROWS, stats.rows // 4))
        scope = scope_for(plan, table_rows, uuid.uuid4().hex, full_rows=full_rows,
                          range_rows=range_rows, bounds=bounds)
        row = reader.query_one(source_sql(plan, scope, server_encoding=reader.server_encoding()))
        assert row is not None
        return scope, parse(plan, row, scope)
    except Exception as exc:  # noqa: BLE001 - the load stands; the check says why it did not run
        return f"not computed: the PostgreSQL side failed ({describe(exc)})"


# Tables whose destination side one query computes (BigQuery: each query is a round trip;
# DuckDB asks fewer at a time, `query_threads.DUCKDB_QUERY_TABLES`).
FINGERPRINT_QUERY_TABLES = 50


def compare_fingerprints(pipeline: Any, loaded: list[TableRead], live: Collection[str] = ()
                         ) -> dict[str, CheckOutcome]:
    """The values check of each loaded table (see `load_group`; `live`: the tables whose
    live rows only are compared, `pg_to_bq.destinations.soft_deletes`)."""
    outcomes: dict[str, CheckOutcome] = {}
    ready = []
    for item in loaded:
        if isinstance(item.fingerprint, str):
            outcomes[item.plan.destination_table] = not_computed(
                FINGERPRINT, f"values {item.fingerprint}")
        elif item.fingerprint is not None:
            ready.append(item)
    if not ready:
        return outcomes
    kind = pipeline.destination.destination_name

    def failed(items: Sequence[TableRead], exc: Exception) -> None:
        for item in items:
            outcomes.setdefault(item.plan.destination_table, not_computed(
                FINGERPRINT, f"values not computed: the destination side failed ({describe(exc)})"))

    try:
        with pipeline.sql_client() as client:
            parts = query_threads.chunks_for(client, ready, FINGERPRINT_QUERY_TABLES)
            statements = [destination_sql_many(
                [(r.plan, rows_of(client, r.plan.destination_table,
                                  r.plan.destination_table in live),
                  r.fingerprint[0]) for r in chunk], kind)  # type: ignore[index]
                for chunk in parts]
            for chunk, answer in zip(parts, query_threads.answers(client, statements),
                                     strict=True):
                if isinstance(answer, Exception):
                    failed(chunk, answer)
                    continue
                rows = split_many(answer)
                for index, item in enumerate(chunk):
                    scope, source = item.fingerprint  # type: ignore[misc]
                    destination = parse(item.plan, rows[index], scope)
                    outcomes[item.plan.destination_table] = compare(
                        source, destination, skipped=not_compared(item.plan),
                        disposition=item.plan.disposition)
    except Exception as exc:  # noqa: BLE001 - the loads stand; the check says why it did not run
        failed(ready, exc)
    return outcomes


def engine(pipeline: Any) -> str:
    """The destination engine whose hash the figures use, with its version."""
    kind = pipeline.destination.destination_name
    if kind == "duckdb":
        import duckdb

        return f"duckdb {duckdb.__version__}"
    return kind


def destination_figures(pipeline: Any, tables: Mapping[str, Sequence[tuple[str, str]]],
                        live: Collection[str] = ()) -> dict[str, drift.Figures]:
    """The whole-table figures (`pg_to_bq.checks.drift`) of `tables` (destination table ->
    its (column, logical type) pairs), one query per `drift.QUERY_TABLES` tables (fewer in
    DuckDB, two at a time: `pg_to_bq.destinations.query_threads`). A chunk whose query fails
    (a column dropped by hand) is asked table by table; a table that still fails has no
    figures (logged): it is not compared this run."""
    name = engine(pipeline)
    return _asked(pipeline, tables, live, False,
                  lambda answer, columns: drift.parse(name, answer, columns))


def destination_row_figures(pipeline: Any, tables: Mapping[str, Sequence[tuple[str, str]]],
                            live: Collection[str] = ()) -> dict[str, tuple[int, int]]:
    """Of `tables`, as `destination_figures` asks them, only the rows and the row
    figure (`drift.figures_sql(rows_only=True)`)."""
    return _asked(pipeline, tables, live, True, lambda answer, _: drift.parse_rows(answer))


def _asked(pipeline: Any, tables: Mapping[str, Sequence[tuple[str, str]]],
           live: Collection[str], rows_only: bool,
           parse: Callable[[Any, list[str]], T]) -> dict[str, T]:
    """Each of `tables`' answer to `drift.figures_sql`, read by `parse` (the answer and the
    columns asked), by table (see `destination_figures`)."""
    found: dict[str, T] = {}
    if not tables:
        return found
    kind = pipeline.destination.destination_name
    items = list(tables.items())
    with pipeline.sql_client() as client:
        def sql(chunk: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> str:
            return drift.figures_sql(kind, [(rows_of(client, t, t in live), columns)
                                            for t, columns in chunk], rows_only)

        def take(chunk: Sequence[tuple[str, Sequence[tuple[str, str]]]],
                 rows: Sequence[tuple]) -> None:
            for index, answer in rows:
                table, columns = chunk[int(index)]
                found[table] = parse(answer, [c for c, _ in columns])

        parts = query_threads.chunks_for(client, items, drift.QUERY_TABLES)
        for chunk, answer in zip(parts, query_threads.answers(client, [sql(c) for c in parts]),
                                 strict=True):
            if not isinstance(answer, Exception):
                take(chunk, answer)
                continue
            for item in chunk:  # narrowed to the table
                try:
                    take([item], client.execute_sql(sql([item])) or [])
                except Exception as exc:  # noqa: BLE001 - this table is not compared
                    log.info("no figures for %s: %s", item[0], describe(exc))
    return found
