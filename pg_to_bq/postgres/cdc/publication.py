"""The publication: which tables PostgreSQL sends the changes of (partitioned tables through
their root), created or corrected, and refused for a table that publishing would break."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from .errors import DbaActionRequired

TableName = tuple[str, str]  # (schema, table)


def _table_list(tables: Sequence[TableName]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(schema, name) for schema, name in tables)


def publication_sql(name: str, tables: Sequence[TableName], *, server_version: int = 180000,
                    ) -> sql.Composed:
    """`CREATE PUBLICATION name FOR TABLE ... WITH (...)`, as pg_to_bq wants it.

    `publish_via_partition_root = true`: a partitioned table's changes arrive as the root
    table's (one relation per partitioned table, whatever partition a row lives in or moves
    to). `publish_generated_columns = stored` (PG 18+): stored generated columns are sent too;
    before PG 18 they are never sent and a consumer must compute or re-read them.
    """
    options = [sql.SQL("publish_via_partition_root = true")]
    if server_version >= 180000:
        options.append(sql.SQL("publish_generated_columns = stored"))
    statement = sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(name))
    if tables:
        statement += sql.SQL(" FOR TABLE ") + _table_list(tables)
    return statement + sql.SQL(" WITH (") + sql.SQL(", ").join(options) + sql.SQL(")")


@dataclass(frozen=True)
class Publication:
    """What a publication covers now. `missing`: wanted tables it does not publish (with
    `dba_sql`, what a DBA runs to add them) — only returned with `partial_ok=True`."""

    name: str
    tables: frozenset[TableName]
    all_tables: bool
    via_partition_root: bool
    publishes: frozenset[str]
    created: bool = False
    altered: bool = False
    missing: frozenset[TableName] = frozenset()
    dba_sql: str | None = None


_PUBLICATION_SQL = """
SELECT p.puballtables, p.pubviaroot, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
       coalesce((SELECT json_agg(json_build_array(t.schemaname, t.tablename))
                 FROM pg_publication_tables t WHERE t.pubname = p.pubname), '[]'::json)
FROM pg_publication p WHERE p.pubname = %s
"""


def _read_publication(conn: psycopg.Connection, name: str) -> Publication | None:
    row = conn.execute(_PUBLICATION_SQL, (name,)).fetchone()
    if row is None:
        return None
    all_tables, via_root, ins, upd, dele, trunc, tables = row
    publishes = frozenset(kind for kind, on in (("insert", ins), ("update", upd),
                                                ("delete", dele), ("truncate", trunc)) if on)
    return Publication(name, frozenset((s, t) for s, t in tables), all_tables, via_root,
                       publishes)


_IDENTITY_SQL = """
SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relreplident, c.relispartition,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
               AND (i.indisprimary OR (c.relreplident = 'i' AND i.indisreplident)))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN unnest(%s::text[], %s::text[]) AS w(schema_name, table_name)
  ON n.nspname = w.schema_name AND c.relname = w.table_name
"""


def _check_capturable(conn: psycopg.Connection, tables: Sequence[TableName]) -> None:
    """Refuse tables a publication would break or could not carry.

    A table without a replica identity (no primary key, REPLICA IDENTITY DEFAULT or NOTHING)
    in a publication that publishes updates and deletes makes PostgreSQL reject every UPDATE
    and DELETE on it ("cannot update table ... because it does not have a replica identity
    and publishes updates"): adding it would break the application. `prerequisites` says
    which tables can be captured; the caller passes only those.
    """
    rows = conn.execute(_IDENTITY_SQL, ([s for s, _ in tables], [t for _, t in tables])).fetchall()
    found = {(schema, name): rest for schema, name, *rest in rows}
    problems = []
    for table in tables:
        if table not in found:
            problems.append(f"{table[0]}.{table[1]}: no such table")
            continue
        kind, persistence, identity, is_partition, has_key = found[table]
        if is_partition:
            # Published through its root (publish_via_partition_root): listing a partition
            # too would only make its changes depend on which of the two PostgreSQL picks.
            problems.append(f"{table[0]}.{table[1]}: a partition (publish its root)")
        elif kind not in ("r", "p"):
            problems.append(f"{table[0]}.{table[1]}: not a table (relkind {kind!r})")
        elif persistence != "p":
            problems.append(f"{table[0]}.{table[1]}: unlogged or temporary, never in the WAL")
        elif identity != "f" and not has_key:
            problems.append(f"{table[0]}.{table[1]}: no primary key and no REPLICA IDENTITY "
                            "FULL (its UPDATEs and DELETEs would fail once published)")
    if problems:
        raise ValueError("cannot publish: " + "; ".join(problems))


def ensure_publication(conn: psycopg.Connection, name: str, tables: Sequence[TableName], *,
                       partial_ok: bool = False) -> Publication:
    """Make publication `name` publish `tables` (roots for partitioned tables), or use it as is.

    Creates it if missing (`publication_sql`), adds missing tables and drops tables no longer
    wanted when it exists, fixes `publish` and `publish_via_partition_root`. Where the role
    may not (not the owner of a table, no CREATE on the database), raises
    `DbaActionRequired` with the SQL a DBA runs — unless the existing publication already
    covers every table, or `partial_ok` is set, in which case it returns what is covered
    with `missing` and `dba_sql` filled in. A publication FOR ALL TABLES is used as it is.

    Runs in its own transaction on `conn` (which must not be inside one).
    """
    _check_capturable(conn, tables)
    wanted = frozenset(tables)
    ordered = sorted(wanted)
    current = _read_publication(conn, name)
    server_version = conn.info.server_version
    statements: list[sql.Composable] = []
    if current is None:
        statements.append(publication_sql(name, ordered, server_version=server_version))
    else:
        if not current.all_tables:
            missing = sorted(wanted - current.tables)
            extra = sorted(current.tables - wanted)
            if missing:
                statements.append(sql.SQL("ALTER PUBLICATION {} ADD TABLE ").format(
                    sql.Identifier(name)) + _table_list(missing))
            if extra:
                statements.append(sql.SQL("ALTER PUBLICATION {} DROP TABLE ").format(
                    sql.Identifier(name)) + _table_list(extra))
        if current.publishes != {"insert", "update", "delete", "truncate"}:
            statements.append(sql.SQL(
                "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')").format(
                sql.Identifier(name)))
        if not current.via_partition_root:
            statements.append(sql.SQL(
                "ALTER PUBLICATION {} SET (publish_via_partition_root = true)").format(
                sql.Identifier(name)))
    if not statements:
        return current  # type: ignore[return-value]
    try:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
    except pg_errors.InsufficientPrivilege as error:
        script = ";\n".join(s.as_string(conn) for s in statements) + ";"
        fallback = current
        if fallback is not None and (fallback.all_tables or wanted <= fallback.tables) \
                and fallback.via_partition_root:
            # What exists already carries every wanted table: use it (extra tables in it
            # are only filtered out by the consumer).
            return fallback
        if partial_ok and fallback is not None:
            return Publication(**{**fallback.__dict__, "missing": wanted - fallback.tables,
                                  "dba_sql": script})
        raise DbaActionRequired(
            f'the role "{conn.info.user}" may not {"create" if current is None else "change"} '
            f'publication "{name}" ({error.diag.message_primary})', script,
            sqlstate=error.sqlstate) from error
    result = _read_publication(conn, name)
    assert result is not None
    return Publication(**{**result.__dict__, "created": current is None,
                          "altered": current is not None})


def drop_publication(conn: psycopg.Connection, name: str) -> bool:
    """Drop publication `name`; False if there was none."""
    existed = _read_publication(conn, name) is not None
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
    return existed
