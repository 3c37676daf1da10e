"""Run ``bqemulator`` (1.4.0) as an HTTP server, patched for offline, trustworthy tests.

This is the *emulator process*: ``pg_to_bq_tests.support.bigquery_emulator``
starts it with ``python run_bigquery_emulator.py --ready-file F ...`` and talks
to it only over HTTP. All fixes are applied here, in-process, by
monkeypatching the installed package -- nothing under site-packages is edited.

Every patch says why it exists (``WHY (n)`` comments). In short
(bqemulator 1.4.0 as installed):

1. No extension downloads: the engine ``INSTALL``s DuckDB's ``spatial`` (and
   ``avro``) extension at start, which aborts the start without internet.
2. ``jobs.query`` (the synchronous endpoint the google client uses for
   ``query_and_wait`` and the DB-API -- i.e. for every dlt SQL statement)
   answered HTTP 200 for failed queries with the error tucked in a field the
   client ignores: a failing query looked like an empty result. It now
   answers with BigQuery's error envelope and a 4xx status.
3. ``jobs.query`` ignored ``defaultDataset`` (dlt relies on it), and the
   rewriter used for jobs.insert re-rendered every query through SQLGlot,
   which broke ``INFORMATION_SCHEMA`` references with ``?`` parameters (dlt's
   schema query). Unqualified names are now qualified, and SQL that needs no
   qualification is left untouched.
4. Unexpected (non-BigQuery) exceptions became HTTP 500 ``internalError``,
   which the google client *retries* for up to its deadline (minutes): a
   broken query hung instead of failing. They are now 400 errors.
5. ``getQueryResults`` answered ``maxResults=0`` (the client's "wait for the
   job" probe) with an empty ``rows`` page plus a page token, and answered
   a failed job with 404 "job not found". Now: no rows and no token for
   ``maxResults=0`` (like BigQuery), and the job's own error for failed jobs.
6. JSONL load files: gzip (dlt's default compression) is decompressed, BYTES
   arrive base64-encoded (BigQuery's JSON wire format) and are decoded,
   columns are matched by name.
7. Parquet load files: columns are matched by name (BigQuery semantics), not
   by position.
8. Uploaded load jobs keep the job id the client chose (dlt polls and resumes
   load jobs by that id); the emulator minted its own.
9. ``ALTER TABLE t ADD COLUMN a, ADD COLUMN b`` (dlt's schema evolution) failed
   in DuckDB (one action per statement) -- it is split per column; and ALTER
   TABLE never reached the table metadata (tables.get, INFORMATION_SCHEMA),
   which is refreshed after every ALTER now.
10. JSON columns were reported as STRING in table metadata.
11. Column descriptions and ``CLUSTER BY`` of CREATE TABLE were dropped from
    table metadata.
12. Load jobs with ``autodetect`` (dlt's ``autodetect_schema``) could not
    create tables from Parquet or gzipped JSON, ignored the job's table
    options, and ignored ``ALLOW_FIELD_ADDITION``.
13. (Addition) an OAuth2 token endpoint, so service-account keys made by the
    harness (``token_uri`` pointing here) work without Google.

Usage (normally only via the harness)::

    python run_bigquery_emulator.py --ready-file /tmp/x/ready.json \
        [--project pg-to-bq-test] [--data-dir DIR] [--log-level warning] [--watch-stdin]

When ready, the REST/gRPC ports are written as JSON to ``--ready-file``
(atomically). SIGTERM/SIGINT (or EOF on stdin with ``--watch-stdin``) stop it.
"""

# NOTE: no ``from __future__ import annotations`` here: FastAPI resolves the
# parameter annotations of the replacement route functions at import time and
# needs real objects, not strings.

import argparse
import asyncio
import base64
import contextlib
import contextvars
import json
import logging
import os
import signal
import sys
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

PATCH_MARKER = "_pg_to_bq_patched"

# Reasons BigQuery uses for job errors -> HTTP status of the direct error
# response (what real BigQuery returns from jobs.query for a failed query).
_REASON_TO_STATUS = {
    "notFound": 404,
    "duplicate": 409,
    "accessDenied": 403,
    "invalidQuery": 400,
    "invalid": 400,
    "outOfRange": 400,
    "resourceInUse": 400,
    "notImplemented": 501,
}


def _error_envelope(error_result: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Render a job ``errorResult`` as BigQuery's HTTP error body."""
    reason = error_result.get("reason") or "invalidQuery"
    status = _REASON_TO_STATUS.get(reason, 400)
    message = error_result.get("message") or "query failed"
    detail = {"domain": "global", "reason": reason, "message": message}
    if error_result.get("location"):
        detail["location"] = error_result["location"]
    grpc_status = {
        400: "INVALID_ARGUMENT",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        409: "ALREADY_EXISTS",
        501: "UNIMPLEMENTED",
    }.get(status, "INVALID_ARGUMENT")
    return status, {"error": {"code": status, "message": message, "errors": [detail], "status": grpc_status}}


# ---------------------------------------------------------------------------
# 1. DuckDB extensions: never download
# ---------------------------------------------------------------------------


def _patch_extensions() -> None:
    from bqemulator.storage import engine as engine_mod

    def _load_spatial(self: Any) -> None:
        # WHY (1): upstream runs ``INSTALL spatial`` and raises if it fails, so the
        # emulator cannot start without internet. GEOGRAPHY (ST_*) is not used
        # by pg_to_bq; load the extension only if it is already installed
        # locally, never download. Also switch off DuckDB's *automatic*
        # extension install so no later query tries the network either (it
        # fails with a clear "extension not loaded" error instead).
        conn = self._connection
        conn.execute("SET autoinstall_known_extensions = false")
        try:
            conn.execute("LOAD spatial")
        except Exception as exc:  # noqa: BLE001 - optional capability
            logging.getLogger(__name__).info("spatial extension not available: %s", exc)

    def _load_format_extensions(self: Any) -> None:
        # WHY (1): same as above for ``avro`` (best-effort upstream, but it still
        # tries to download on every start, costing seconds offline).
        with contextlib.suppress(Exception):  # optional capability
            self._connection.execute("LOAD avro")

    engine_mod.DuckDBEngine._load_spatial = _load_spatial
    engine_mod.DuckDBEngine._load_format_extensions = _load_format_extensions


# ---------------------------------------------------------------------------
# 2-5. Query endpoints
# ---------------------------------------------------------------------------


def _replace_route(router: Any, path: str, method: str, endpoint: Any) -> None:
    """Swap the endpoint of an already-declared route, keeping its position."""
    from fastapi.routing import APIRoute

    for index, route in enumerate(router.routes):
        if isinstance(route, APIRoute) and route.path == path and method in route.methods:
            router.routes[index] = APIRoute(
                route.path,
                endpoint,
                methods=[method],
                name=route.name,
                tags=route.tags,
            )
            return
    raise RuntimeError(f"bqemulator route {method} {path} not found; patch needs updating")


def _qualify_with_default_dataset(bq_sql: str, default_project: str, default_dataset: str) -> str:
    """Qualify unqualified table names; return the SQL *unchanged* if there are none.

    Upstream's rewriter always re-renders the whole statement through
    SQLGlot, which is lossy: e.g. ``p.d.INFORMATION_SCHEMA.COLUMNS`` becomes
    `` `INFORMATION_SCHEMA.COLUMNS` AS COLUMNS`` and ``IN (?, ?)`` then fails to
    tokenize (dlt's schema query). It also qualified names of script temp
    tables. Here SQL is only re-rendered when some name really needs the
    default dataset, and CTE names and ``CREATE TEMP TABLE`` names are left alone.
    """
    import sqlglot
    from sqlglot import expressions as exp

    try:
        statements = [s for s in sqlglot.parse(bq_sql, read="bigquery") if s is not None]
    except Exception:  # noqa: BLE001 - unparsable: let the executor report it
        return bq_sql
    shadowed: set[str] = set()
    for statement in statements:
        for cte in statement.find_all(exp.CTE):
            if cte.alias_or_name:
                shadowed.add(cte.alias_or_name)
        for create in statement.find_all(exp.Create):
            if create.find(exp.TemporaryProperty) is not None:
                target = create.this.find(exp.Table) if create.this is not None else None
                if target is not None and target.name:
                    shadowed.add(target.name)
    to_qualify = [
        table
        for statement in statements
        for table in statement.find_all(exp.Table)
        if table.name
        and not table.args.get("db")
        and not table.args.get("catalog")
        and table.name not in shadowed
    ]
    if not to_qualify:
        return bq_sql
    for table in to_qualify:
        table.set("db", exp.to_identifier(default_dataset))
        table.set("catalog", exp.to_identifier(default_project))
    return ";\n".join(s.sql(dialect="bigquery") for s in statements)


def _patch_default_dataset() -> None:
    from bqemulator.api.routes import jobs as jobs_mod

    def _apply_default_dataset(bq_sql: str, query_config: dict[str, Any], *, request_project_id: str) -> str:
        # WHY (3): see _qualify_with_default_dataset; used by jobs.insert
        # (upstream caller) and by the patched jobs.query below.
        default_dataset = query_config.get("defaultDataset")
        if not isinstance(default_dataset, dict) or not default_dataset.get("datasetId"):
            return bq_sql
        project_id = default_dataset.get("projectId") or request_project_id
        return _qualify_with_default_dataset(bq_sql, project_id, default_dataset["datasetId"])

    jobs_mod._apply_default_dataset = _apply_default_dataset


def _patch_query_routes() -> None:
    from bqemulator.api.dependencies import AppContext, get_caller, get_context
    from bqemulator.api.routes import jobs as jobs_mod
    from bqemulator.domain.errors import DomainError
    from bqemulator.row_access.identity import CallerIdentity
    from fastapi import Depends, Query, Request
    from fastapi.responses import JSONResponse

    original_query = jobs_mod.query
    original_get_query_results = jobs_mod.get_query_results
    original_execute_or_failed = jobs_mod._execute_query_or_failed_meta

    def _unexpected(exc: Exception) -> JSONResponse:
        status, body = _error_envelope(
            {
                "reason": "invalidQuery",
                "message": f"bqemulator failed on this query ({type(exc).__name__}): {exc}",
            }
        )
        return JSONResponse(status_code=status, content=body)

    async def query(
        project_id: str,
        request: Request,
        ctx: Annotated[AppContext, Depends(get_context)],
        caller: Annotated[CallerIdentity, Depends(get_caller)],
    ) -> Any:
        body = await request.json()  # Starlette caches it; the original re-reads this dict
        if isinstance(body, dict) and isinstance(body.get("query"), str):
            # WHY (3): jobs.query carries ``defaultDataset`` at the top level of
            # the request; upstream only applies it for jobs.insert, so every
            # unqualified table name (dlt uses them) failed to resolve.
            body["query"] = jobs_mod._apply_default_dataset(
                body["query"], body, request_project_id=project_id
            )
        try:
            response = await original_query(project_id, request, ctx, caller)
        except DomainError:
            raise  # already rendered as a proper BigQuery error by the app
        except Exception as exc:  # noqa: BLE001
            # WHY (4): an unmapped exception became HTTP 500 internalError,
            # which the google client retries until its deadline.
            return _unexpected(exc)
        if isinstance(response, dict) and response.get("errors"):
            # WHY (2): upstream returns HTTP 200 + ``errors`` for a failed query.
            # The google client only raises on a non-2xx jobs.query response
            # (it treats ``errors`` as warnings), so failures were swallowed.
            status, err_body = _error_envelope(response["errors"][0])
            return JSONResponse(status_code=status, content=err_body)
        if isinstance(response, dict) and body.get("maxResults") == 0:
            # WHY (5): a page of zero rows must not look like a first page.
            response.pop("rows", None)
            response.pop("pageToken", None)
        return response

    async def get_query_results(
        project_id: str,
        job_id: str,
        ctx: Annotated[AppContext, Depends(get_context)],
        maxResults: int = Query(default=10000, alias="maxResults"),  # noqa: N803
        startIndex: int = Query(default=0, alias="startIndex"),  # noqa: N803
        pageToken: str | None = Query(default=None, alias="pageToken"),  # noqa: N803
    ) -> Any:
        job = ctx.catalog.get_job(project_id, job_id)
        if job is not None and job.error_result:
            # WHY (5): a failed job has no results; BigQuery answers with the
            # job's error, upstream with "job not found".
            status, err_body = _error_envelope(job.error_result)
            return JSONResponse(status_code=status, content=err_body)
        response = original_get_query_results(project_id, job_id, ctx, maxResults, startIndex, pageToken)
        if maxResults == 0:
            # WHY (5): the client calls getQueryResults with maxResults=0 only
            # to wait for completion. Upstream answered with ``rows: []`` and
            # ``pageToken: "0"``; the client then takes that empty list as the
            # first page of results. BigQuery omits both.
            response.pop("rows", None)
            response.pop("pageToken", None)
        return response

    async def execute_query_or_failed_meta(**kwargs: Any) -> Any:
        # WHY (4): for jobs.insert, upstream turns only BigQuery-style errors
        # into a failed job; anything else became HTTP 500 (retried by the
        # client for minutes). Record it as a failed job instead.
        try:
            return await original_execute_or_failed(**kwargs)
        except DomainError:
            raise
        except Exception as exc:  # noqa: BLE001
            return jobs_mod._failed_job_meta(
                project_id=kwargs["project_id"],
                job_id=kwargs["job_id"],
                job_type="QUERY",
                config=kwargs["config"],
                error_result={
                    "reason": "invalidQuery",
                    "message": f"bqemulator failed on this query ({type(exc).__name__}): {exc}",
                },
                now=kwargs["ctx"].clock.now(),
            )

    jobs_mod._execute_query_or_failed_meta = execute_query_or_failed_meta
    _replace_route(jobs_mod.router, "/bigquery/v2/projects/{project_id}/queries", "POST", query)
    _replace_route(
        jobs_mod.router,
        "/bigquery/v2/projects/{project_id}/queries/{job_id}",
        "GET",
        get_query_results,
    )


# ---------------------------------------------------------------------------
# 9-11. DDL: ALTER TABLE and the table metadata (catalog)
# ---------------------------------------------------------------------------


def _split_multi_add_alter(bq_sql: str) -> str:
    """``ALTER TABLE t ADD COLUMN a .., ADD COLUMN b ..`` -> one ALTER per column.

    Only the affected statements are rewritten; the rest of the text is kept
    byte for byte (re-rendering through SQLGlot is lossy).
    """
    if "alter" not in bq_sql.lower():
        return bq_sql
    import sqlglot
    from sqlglot import expressions as exp
    from sqlglot.tokens import TokenType

    try:
        tokens = sqlglot.Dialect.get_or_raise("bigquery").tokenize(bq_sql)
    except Exception:  # noqa: BLE001 - let the executor report bad SQL
        return bq_sql
    segments: list[tuple[int, int]] = []
    current: list[Any] = []
    for token in [*tokens, None]:
        if token is None or token.token_type == TokenType.SEMICOLON:
            if current:
                segments.append((current[0].start, current[-1].end + 1))
            current = []
        else:
            current.append(token)
    replacements: list[tuple[int, int, str]] = []
    for start, end in segments:
        text = bq_sql[start:end]
        if not text.lstrip().upper().startswith("ALTER"):
            continue
        try:
            tree = sqlglot.parse_one(text, read="bigquery")
        except Exception:  # noqa: BLE001
            continue
        actions = tree.args.get("actions") or [] if isinstance(tree, exp.Alter) else []
        if len(actions) < 2 or not all(isinstance(a, exp.ColumnDef) for a in actions):
            continue
        singles = []
        for action in actions:
            single = tree.copy()
            single.set("actions", [action.copy()])
            singles.append(single.sql(dialect="bigquery"))
        replacements.append((start, end, ";\n".join(singles)))
    for start, end, new_text in reversed(replacements):
        bq_sql = bq_sql[:start] + new_text + bq_sql[end:]
    return bq_sql


def _column_descriptions(column_defs: Any) -> dict[str, str]:
    from sqlglot import expressions as exp

    found: dict[str, str] = {}
    for column in column_defs:
        for prop in column.find_all(exp.Property):
            key = prop.name if prop.this is not None else ""
            if str(key).lower() == "description" and isinstance(prop.args.get("value"), exp.Literal):
                found[column.name] = prop.args["value"].this
    return found


def _patch_ddl_catalog_sync() -> None:
    import sqlglot
    from bqemulator.api.routes import jobs as jobs_mod
    from bqemulator.catalog import ddl_sync
    from bqemulator.catalog.models import Clustering, TableSchema
    from bqemulator.jobs import executor
    from bqemulator.scripting import interpreter
    from bqemulator.storage.sql_identifiers import quoted_table_ref
    from sqlglot import expressions as exp

    original_introspect = ddl_sync._introspect_schema
    original_sync_created_table = ddl_sync.sync_created_table
    original_sync_dropped = ddl_sync.sync_dropped_object
    original_execute_query_job = jobs_mod.execute_query_job

    def _introspect_schema(project_id: str, dataset_id: str, table_id: str, ctx: Any) -> Any:
        # WHY (10): the catalog schema is derived from the Arrow export of
        # the DuckDB table, where JSON is a plain string: tables.get and
        # INFORMATION_SCHEMA reported JSON columns as STRING.
        schema = original_introspect(project_id, dataset_id, table_id, ctx)
        ref = quoted_table_ref(project_id, dataset_id, table_id)
        json_columns = {name for name, dtype in _table_columns(ctx, ref) if dtype.upper() == "JSON"}
        if not json_columns:
            return schema
        return TableSchema(
            fields=tuple(
                f.model_copy(update={"type": "JSON"}) if f.name in json_columns else f for f in schema.fields
            )
        )

    def _set_descriptions(meta: Any, descriptions: dict[str, str], ctx: Any) -> None:
        if not descriptions:
            return
        fields = tuple(
            f.model_copy(update={"description": descriptions[f.name]}) if f.name in descriptions else f
            for f in meta.schema_.fields
        )
        ctx.catalog.update_table(meta.model_copy(update={"schema_": TableSchema(fields=fields)}))

    def sync_created_table(bq_sql: str, project_id: str, ctx: Any) -> None:
        original_sync_created_table(bq_sql, project_id, ctx)
        # WHY (11): column ``OPTIONS(description=...)`` and ``CLUSTER BY`` of
        # CREATE TABLE were accepted but dropped: tables.get showed neither
        # column descriptions nor clustering.
        target = ddl_sync._detect_plain_create_table(bq_sql)
        if target is None:
            return
        try:
            tree = sqlglot.parse_one(bq_sql, read="bigquery")
        except Exception:  # noqa: BLE001
            return
        p_id, d_id, t_id = ddl_sync._split_target(target, project_id)
        meta = ctx.catalog.get_table(p_id, d_id, t_id) if d_id and t_id else None
        if meta is None:
            return
        cluster = tree.find(exp.ClusterProperty)
        if cluster is not None and meta.clustering is None:
            names = tuple(e.name for e in cluster.expressions if e.name)
            if names:
                meta = meta.model_copy(update={"clustering": Clustering(fields=names)})
                ctx.catalog.update_table(meta)
        _set_descriptions(meta, _column_descriptions(tree.find_all(exp.ColumnDef)), ctx)

    def sync_dropped_object(bq_sql: str, project_id: str, ctx: Any) -> None:
        original_sync_dropped(bq_sql, project_id, ctx)
        # WHY (9b): ALTER TABLE changed DuckDB but not the catalog, so
        # tables.get and INFORMATION_SCHEMA.COLUMNS (which dlt reads to plan
        # schema changes) never showed added columns. Refresh the catalog
        # schema after every ALTER TABLE (runs once per executed statement).
        if "alter" not in bq_sql.lower():
            return
        try:
            tree = sqlglot.parse_one(bq_sql, read="bigquery")
        except Exception:  # noqa: BLE001
            return
        if not isinstance(tree, exp.Alter) or not isinstance(tree.this, exp.Table):
            return
        p_id, d_id, t_id = ddl_sync._split_target(tree.this, project_id)
        if d_id and t_id:
            actions = [a for a in (tree.args.get("actions") or []) if isinstance(a, exp.ColumnDef)]
            _refresh_table_schema(ctx, p_id, d_id, t_id, _column_descriptions(actions))

    async def execute_query_job(project_id: str, job_id: str, bq_sql: str, *args: Any, **kwargs: Any) -> Any:
        # WHY (9a): dlt adds several columns with ONE statement
        # (``ALTER TABLE t ADD COLUMN a .., ADD COLUMN b ..``, valid BigQuery);
        # DuckDB accepts one ALTER action per statement, so schema evolution
        # failed (and with jobs.query swallowing errors, silently).
        return await original_execute_query_job(
            project_id, job_id, _split_multi_add_alter(bq_sql), *args, **kwargs
        )

    ddl_sync._introspect_schema = _introspect_schema
    for module in (ddl_sync, executor, interpreter):
        if hasattr(module, "sync_created_table"):
            module.sync_created_table = sync_created_table
        if hasattr(module, "sync_dropped_object"):
            module.sync_dropped_object = sync_dropped_object
    jobs_mod.execute_query_job = execute_query_job


# ---------------------------------------------------------------------------
# 6-7. Load files
# ---------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _table_columns(ctx: Any, target_ref: str) -> list[tuple[str, str]]:
    rows = ctx.engine.execute(f"DESCRIBE {target_ref}").fetchall()
    return [(row[0], row[1]) for row in rows]


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _reader_sql(source_format: str, path: str) -> str | None:
    """DuckDB table function reading a staged load file (path inlined, already validated)."""
    if source_format in ("NEWLINE_DELIMITED_JSON", "JSON"):
        compression = "gzip" if _is_gzip(path) else "none"
        return (
            f"read_json_auto({_sql_string(path)}, format = 'newline_delimited', "
            f"compression = {_sql_string(compression)})"
        )
    if source_format == "PARQUET":
        return f"read_parquet({_sql_string(path)})"
    return None


def _refresh_table_schema(
    ctx: Any,
    project_id: str,
    dataset_id: str,
    table_id: str,
    descriptions: dict[str, str] | None = None,
) -> None:
    """Re-read a table's columns from DuckDB into the catalog, keeping known fields as they are."""
    from bqemulator.catalog import ddl_sync
    from bqemulator.catalog.models import TableSchema

    meta = ctx.catalog.get_table(project_id, dataset_id, table_id)
    if meta is None or meta.table_type != "TABLE":
        return
    fresh = ddl_sync._introspect_schema(project_id, dataset_id, table_id, ctx)  # patched: JSON-aware
    known = {f.name: f for f in meta.schema_.fields}
    fields = []
    for field in fresh.fields:
        field = known.get(field.name, field)
        if descriptions and field.name in descriptions:
            field = field.model_copy(update={"description": descriptions[field.name]})
        fields.append(field)
    ctx.catalog.update_table(
        meta.model_copy(
            update={
                "schema_": TableSchema(fields=tuple(fields)),
                "last_modified_time": ctx.clock.now(),
            }
        )
    )


def _patch_load_formats() -> None:
    from bqemulator.api.routes import tables as tables_routes
    from bqemulator.catalog.etag import generate_etag
    from bqemulator.catalog.models import TableMeta, TableSchema
    from bqemulator.domain.errors import ResourceRef, resource_not_found
    from bqemulator.jobs import executor
    from bqemulator.storage.sql_identifiers import quoted_table_ref
    from bqemulator.storage.type_map import duckdb_type_to_bq_field

    def _load_json(path: str, target_ref: str, ctx: Any) -> None:
        # WHY (6): upstream runs ``COPY t FROM file (FORMAT JSON)``:
        #  - the upload is staged as ``<id>.bin``, so DuckDB cannot guess gzip
        #    from the name and fails on dlt's gzipped JSONL; we sniff the magic
        #    bytes instead;
        #  - BigQuery's JSON format carries BYTES base64-encoded; a plain cast
        #    stored the base64 *text* as the bytes. BLOB columns are read as
        #    text and decoded with from_base64();
        #  - INSERT ... BY NAME matches keys to columns by name, like BigQuery.
        columns = _table_columns(ctx, target_ref)
        read_types = []
        select_exprs = []
        for name, dtype in columns:
            is_blob = dtype.upper() in ("BLOB", "BYTEA", "VARBINARY", "BINARY")
            read_type = "VARCHAR" if is_blob else dtype
            read_types.append(f"{_sql_string(name)}: {_sql_string(read_type)}")
            expr = f"from_base64({_sql_ident(name)})" if is_blob else _sql_ident(name)
            select_exprs.append(f"{expr} AS {_sql_ident(name)}")
        compression = "gzip" if _is_gzip(path) else "none"
        ctx.engine.execute(
            f"INSERT INTO {target_ref} BY NAME SELECT {', '.join(select_exprs)} "
            f"FROM read_json(?, format = 'newline_delimited', "
            f"columns = {{{', '.join(read_types)}}}, compression = {_sql_string(compression)})",
            [path],
        )

    def _load_parquet(path: str, target_ref: str, ctx: Any) -> None:
        # WHY (7): upstream inserts ``SELECT *`` positionally; BigQuery maps
        # Parquet columns by name, and a file whose column order differs from
        # the table's (e.g. after a column was added) put values into the
        # wrong columns.
        ctx.engine.execute(
            f"INSERT INTO {target_ref} BY NAME SELECT * FROM read_parquet(?)",
            [path],
        )

    handlers = executor._LOAD_FORMAT_HANDLERS
    handlers["NEWLINE_DELIMITED_JSON"] = _load_json
    handlers["JSON"] = _load_json
    handlers["PARQUET"] = _load_parquet

    original_load_path = executor._load_path_into_target
    original_maybe_create = executor._maybe_create_load_destination

    def _load_path_into_target(path: str, job: Any, ctx: Any) -> None:
        # WHY (12b): ``schemaUpdateOptions: [ALLOW_FIELD_ADDITION]`` (dlt sets
        # it for autodetect tables) was ignored: a file with a new column
        # failed to load. Add the missing columns first, like BigQuery.
        options = job.raw_config.get("schemaUpdateOptions") or []
        reader = _reader_sql(job.source_format, path)
        if "ALLOW_FIELD_ADDITION" in options and reader is not None:
            existing = {name for name, _ in _table_columns(ctx, job.target_ref)}
            source = ctx.engine.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
            added = False
            for name, dtype, *_ in source:
                if name not in existing:
                    ctx.engine.execute(f"ALTER TABLE {job.target_ref} ADD COLUMN {_sql_ident(name)} {dtype}")
                    added = True
            if added:
                _refresh_table_schema(ctx, job.project_id, job.dataset_id, job.table_id)
        original_load_path(path, job, ctx)

    def _maybe_create_load_destination(
        *,
        dest_project: str,
        dest_dataset: str,
        dest_table_id: str,
        load_config: dict[str, Any],
        now: Any,
        ctx: Any,
    ) -> None:
        # WHY (12a): with ``autodetect`` and no schema (dlt's autodetect_schema
        # / bigquery_adapter(autodetect_schema=True)) BigQuery creates the
        # table from the file. Upstream only did that for CSV/JSON, not
        # Parquet, and could not read gzipped JSON; table options of the
        # load job (description, partitioning, clustering) were dropped.
        fmt = str(load_config.get("sourceFormat", "CSV")).upper()
        fields_raw = (load_config.get("schema") or {}).get("fields") or []
        source_uris = load_config.get("sourceUris") or []
        if fields_raw or not load_config.get("autodetect") or not source_uris:
            return original_maybe_create(
                dest_project=dest_project,
                dest_dataset=dest_dataset,
                dest_table_id=dest_table_id,
                load_config=load_config,
                now=now,
                ctx=ctx,
            )
        path = executor._resolve_uri(source_uris[0], ctx)
        executor._validate_local_path(path)
        reader = _reader_sql(fmt, path)
        if reader is None:
            return original_maybe_create(
                dest_project=dest_project,
                dest_dataset=dest_dataset,
                dest_table_id=dest_table_id,
                load_config=load_config,
                now=now,
                ctx=ctx,
            )
        if ctx.catalog.get_dataset(dest_project, dest_dataset) is None:
            raise resource_not_found(ResourceRef("dataset", dest_project, dest_dataset))
        target_ref = quoted_table_ref(dest_project, dest_dataset, dest_table_id)
        ctx.engine.execute(f"CREATE TABLE {target_ref} AS SELECT * FROM {reader} LIMIT 0")
        try:
            rest_fields = [
                duckdb_type_to_bq_field(name, dtype) for name, dtype in _table_columns(ctx, target_ref)
            ]
            schema = TableSchema(fields=tuple(tables_routes._parse_schema_fields(rest_fields)))
        except Exception:
            ctx.engine.execute(f"DROP TABLE IF EXISTS {target_ref}")
            raise
        props = load_config.get("destinationTableProperties") or {}
        ctx.catalog.create_table(
            TableMeta(
                project_id=dest_project,
                dataset_id=dest_dataset,
                table_id=dest_table_id,
                table_type="TABLE",
                schema=schema,
                description=props.get("description"),
                friendly_name=props.get("friendlyName"),
                time_partitioning=tables_routes._rest_to_time_partitioning(
                    load_config.get("timePartitioning"), None
                ),
                clustering=tables_routes._rest_to_clustering(load_config.get("clustering"), None),
                labels={},
                creation_time=now,
                last_modified_time=now,
                num_rows=0,
                num_bytes=0,
                etag=generate_etag(dest_project, dest_dataset, dest_table_id, "TABLE", str(now)),
            )
        )

    executor._load_path_into_target = _load_path_into_target
    executor._maybe_create_load_destination = _maybe_create_load_destination


# ---------------------------------------------------------------------------
# 8. Client-chosen job ids for uploaded loads
# ---------------------------------------------------------------------------

_REQUESTED_JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bqemu_requested_job_id", default=None
)
_JOB_ID_KEY = "_pg_to_bq_requested_job_id"


def _patch_upload_job_ids() -> None:
    from bqemulator.api.routes import upload

    original_from_envelope = upload._load_configuration_from_envelope
    original_new_job_id = upload._new_job_id
    original_run_load = upload._run_load

    def _load_configuration_from_envelope(envelope: dict[str, Any]) -> dict[str, Any]:
        # WHY (8): the client sends ``jobReference.jobId``; upstream drops it
        # and mints its own id, so ``jobs.get`` by the client's id (how dlt
        # resumes a load job) found nothing. Carry it through the session.
        configuration = original_from_envelope(envelope)
        job_id = (envelope.get("jobReference") or {}).get("jobId")
        if job_id:
            configuration = {**configuration, _JOB_ID_KEY: job_id}
        return configuration

    def _new_job_id() -> str:
        return _REQUESTED_JOB_ID.get() or original_new_job_id()

    async def _run_load(*, project_id: str, configuration: dict[str, Any], **kwargs: Any) -> Any:
        configuration = dict(configuration)
        requested = configuration.pop(_JOB_ID_KEY, None)
        token = _REQUESTED_JOB_ID.set(requested)  # per request task: no cross-talk
        try:
            return await original_run_load(project_id=project_id, configuration=configuration, **kwargs)
        finally:
            _REQUESTED_JOB_ID.reset(token)

    upload._load_configuration_from_envelope = _load_configuration_from_envelope
    upload._new_job_id = _new_job_id
    upload._run_load = _run_load


# ---------------------------------------------------------------------------
# 13. An OAuth2 token endpoint (addition, not a fix)
# ---------------------------------------------------------------------------

TOKEN_PATH = "/oauth2/token"


def _add_token_endpoint() -> None:
    # WHY (13): service-account credentials (a JSON key, as production uses)
    # exchange a signed JWT for an access token at the key's ``token_uri``
    # before every first request; offline, oauth2.googleapis.com is not
    # reachable and the client retries for minutes. Keys made by the harness
    # point ``token_uri`` here, so the real google-auth flow (parse the key,
    # sign a JWT with it) runs end to end. The assertion is checked for shape
    # (a JWT whose issuer is a service account), not for its signature.
    import bqemulator.server as server_mod
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse

    router = APIRouter()

    @router.post(TOKEN_PATH)
    async def token(request: Request) -> JSONResponse:
        raw = (await request.body()).decode(errors="replace")
        if raw.lstrip().startswith("{"):
            form = {k: str(v) for k, v in json.loads(raw).items()}
        else:  # application/x-www-form-urlencoded (no python-multipart needed)
            form = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
        grant = form.get("grant_type")
        assertion = form.get("assertion") or ""
        claims: dict[str, Any] = {}
        parts = assertion.split(".")
        if len(parts) == 3:
            padded = parts[1] + "=" * (-len(parts[1]) % 4)
            with contextlib.suppress(Exception):
                claims = json.loads(base64.urlsafe_b64decode(padded))
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not claims.get("iss"):
            return JSONResponse(
                status_code=400,
                content={"error": "invalid_grant", "error_description": "bad JWT assertion"},
            )
        return JSONResponse(
            {
                "access_token": f"bqemulator-token-for-{claims['iss']}",
                "expires_in": 3600,
                "token_type": "Bearer",
            }
        )

    original_create_app = server_mod.create_app

    def create_app(context: Any) -> Any:
        app = original_create_app(context)
        app.include_router(router)
        return app

    server_mod.create_app = create_app


# ---------------------------------------------------------------------------


def _patch_unicode_table_names() -> None:
    # WHY (14): BigQuery table names may be Unicode letters, marks, digits, connectors,
    # dashes and spaces (up to 1,024 bytes), so a PostgreSQL table named 顧客メモ loads
    # under its own name. The emulator accepts only ASCII. Widen both validators to word
    # characters and dashes: still no quotes, semicolons or whitespace reach its SQL.
    import re

    from bqemulator.domain import ids
    from bqemulator.storage import sql_identifiers

    unicode_id = re.compile(r"^[\w][\w\-]{0,1023}$")
    ids._TABLE_RE = unicode_id
    sql_identifiers._SQL_SAFE_ID_RE = unicode_id


def apply_patches() -> None:
    """Apply every patch once. Must run before the FastAPI app is created."""
    import bqemulator

    if getattr(bqemulator, PATCH_MARKER, False):
        return
    if bqemulator.__version__ != "1.4.0":
        # The patches replace private functions of this exact release.
        raise RuntimeError(
            f"run_bigquery_emulator.py is written for bqemulator 1.4.0, found "
            f"{bqemulator.__version__}; review every patch before bumping it"
        )
    _patch_extensions()
    _patch_default_dataset()
    _patch_query_routes()
    _patch_ddl_catalog_sync()
    _patch_load_formats()
    _patch_upload_job_ids()
    _add_token_endpoint()
    _patch_unicode_table_names()
    setattr(bqemulator, PATCH_MARKER, True)


def _write_ready_file(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


async def _serve(args: argparse.Namespace) -> None:
    from bqemulator.config import LogLevel, PersistenceMode, Settings
    from bqemulator.server import EmulatorServer

    settings_kwargs: dict[str, Any] = {
        "rest_host": args.host,
        "rest_port": args.port,  # 0: the OS picks a free port, reported below
        "grpc_host": args.host,
        "grpc_port": 0,
        "default_project_id": args.project,
        "log_level": LogLevel(args.log_level),
        "persistence_mode": PersistenceMode.EPHEMERAL,
    }
    if args.data_dir:
        settings_kwargs["persistence_mode"] = PersistenceMode.PERSISTENT
        settings_kwargs["data_dir"] = Path(args.data_dir)
        settings_kwargs["upload_staging_dir"] = Path(args.data_dir) / "uploads"
    server = EmulatorServer(Settings(**settings_kwargs))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.watch_stdin:
        # Stop when the parent goes away (its end of our stdin pipe closes),
        # so a killed test run never leaves an orphaned emulator behind.
        # (An event-loop reader, not a thread: a thread blocked in read()
        # aborts the interpreter at shutdown.)
        stdin_fd = sys.stdin.fileno()

        def _on_stdin() -> None:
            try:
                data = os.read(stdin_fd, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(stdin_fd)
                stop.set()

        loop.add_reader(stdin_fd, _on_stdin)

    await server.start()
    try:
        _write_ready_file(
            Path(args.ready_file),
            {
                "pid": os.getpid(),
                "rest_url": server.rest_url,
                "rest_port": server.rest_port,
                "grpc_endpoint": server.grpc_endpoint,
                "project_id": args.project,
            },
        )
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--project", default="pg-to-bq-test")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--watch-stdin", action="store_true")
    args = parser.parse_args(argv)
    apply_patches()
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
