"""Can this server, this role and each table be captured — and what exactly fixes each gap.

`fetch_facts(conn, tables)` runs one query (server settings, the role, the tables, the
publication and the slot); `assess(facts)` is a pure function from those facts to findings,
each with the exact SQL or setting that fixes it. Splitting them keeps the rules testable
without a server and lets `pg-to-bq discover` show the findings from a cached snapshot.

Needs PostgreSQL 12+ for the query (`pg_partition_tree`, `attgenerated`); logical decoding
with pgoutput itself needs 10+.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import psycopg

from pg_to_bq.planning.tables import first_names

__all__ = ["Assessment", "Facts", "Finding", "TableFacts", "assess", "fetch_facts"]

TableName = tuple[str, str]
Level = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class TableFacts:
    schema: str
    name: str
    kind: str  # relkind: r table, p partitioned, v view, m matview, f foreign
    persistence: str  # p permanent, u unlogged, t temporary
    replica_identity: str  # d default, n nothing, f full, i index
    primary_key: tuple[str, ...] | None
    identity_index: str | None
    owner: str
    owned: bool  # the role is the owner or inherits its privileges
    can_select: bool
    is_partition: bool
    root: TableName | None
    leaves_without_identity: tuple[TableName, ...]
    generated_columns: tuple[str, ...]
    published: bool
    found: bool = True
    # Tables that INHERIT from it (not partitions): a read of it returns their rows too.
    inheritance_children: tuple[TableName, ...] = ()
    # Its partitions that are foreign tables: their rows are not in this server's WAL.
    foreign_leaves: tuple[TableName, ...] = ()

    @property
    def qualified(self) -> str:
        return _qualified((self.schema, self.name))


@dataclass(frozen=True)
class Facts:
    """Everything `assess` needs, as one query returns it."""

    server_version: int
    wal_level: str
    rds_logical_replication: str | None  # present (not None) on RDS and Aurora
    cloudsql_logical_decoding: str | None  # present on Cloud SQL
    max_replication_slots: int
    replication_slots_used: int
    max_wal_senders: int
    wal_senders_used: int
    max_slot_wal_keep_size_mb: int  # -1: unlimited
    in_recovery: bool
    role: str
    database: str
    superuser: bool
    replication: bool
    rds_replication_member: bool
    can_create_in_database: bool
    publication: str
    publication_exists: bool
    slot: str
    slot_exists: bool
    tables: tuple[TableFacts, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One gap. `fix` is the exact SQL or setting change (None when nothing fixes it)."""

    level: Level  # error: capture cannot work (for this table / at all); warning: works, at a cost
    scope: Literal["server", "role", "table"]
    subject: str  # the setting, role or table concerned
    problem: str
    fix: str | None = None


@dataclass(frozen=True)
class Assessment:
    findings: tuple[Finding, ...]
    capturable: tuple[TableName, ...]  # the tables that can be captured once server/role pass
    not_capturable: dict[TableName, str] = field(default_factory=dict)  # table → why

    @property
    def can_capture(self) -> bool:
        """The server and the role allow change capture (tables aside)."""
        return not any(f.level == "error" and f.scope != "table" for f in self.findings)


_FACTS_SQL = """
WITH selected AS (
  SELECT c.oid, n.nspname, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE CASE WHEN %(schemas)s::text[] IS NULL
        THEN c.relkind IN ('r', 'p') AND NOT c.relispartition
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
        ELSE (n.nspname, c.relname) IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]))
        END
), tables AS (
  SELECT json_build_object(
    'schema', s.nspname, 'name', s.relname, 'kind', c.relkind,
    'persistence', c.relpersistence, 'replica_identity', c.relreplident,
    'primary_key', (SELECT json_agg(a.attname ORDER BY k.ord)
                    FROM pg_index i CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                    WHERE i.indrelid = c.oid AND i.indisprimary),
    'identity_index', (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                       WHERE i.indrelid = c.oid AND i.indisreplident LIMIT 1),
    'owner', pg_get_userbyid(c.relowner),
    'owned', pg_has_role(c.relowner, 'USAGE'),
    'can_select', has_table_privilege(c.oid, 'SELECT'),
    'is_partition', c.relispartition,
    'root', CASE WHEN c.relispartition THEN
              (SELECT json_build_array(rn.nspname, rc.relname) FROM pg_class rc
               JOIN pg_namespace rn ON rn.oid = rc.relnamespace
               WHERE rc.oid = pg_partition_root(c.oid)) END,
    'leaves_without_identity', CASE WHEN c.relkind = 'p' THEN coalesce(
              (SELECT json_agg(json_build_array(ln.nspname, lc.relname))
               FROM pg_partition_tree(c.oid) t JOIN pg_class lc ON lc.oid = t.relid
               JOIN pg_namespace ln ON ln.oid = lc.relnamespace
               WHERE t.isleaf AND lc.relreplident <> 'f' AND NOT EXISTS (
                 SELECT 1 FROM pg_index i WHERE i.indrelid = lc.oid
                 AND ((lc.relreplident = 'd' AND i.indisprimary)
                      OR (lc.relreplident = 'i' AND i.indisreplident)))), '[]'::json) END,
    'generated_columns', (SELECT json_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                          AND a.attgenerated <> ''),
    'inheritance_children', (SELECT json_agg(json_build_array(hn.nspname, h.relname))
                             FROM pg_inherits i JOIN pg_class h ON h.oid = i.inhrelid
                             JOIN pg_namespace hn ON hn.oid = h.relnamespace
                             WHERE i.inhparent = c.oid AND NOT h.relispartition),
    'foreign_leaves', CASE WHEN c.relkind = 'p' THEN
              (SELECT json_agg(json_build_array(fn.nspname, fc.relname))
               FROM pg_partition_tree(c.oid) t JOIN pg_class fc ON fc.oid = t.relid
               JOIN pg_namespace fn ON fn.oid = fc.relnamespace
               WHERE fc.relkind = 'f') END,
    'published', EXISTS (SELECT 1 FROM pg_publication_tables pt
                         WHERE pt.pubname = %(publication)s AND pt.schemaname = s.nspname
                         AND pt.tablename = s.relname)
  ) AS t
  FROM selected s JOIN pg_class c ON c.oid = s.oid
)
SELECT current_setting('server_version_num')::int,
       current_setting('wal_level'),
       current_setting('rds.logical_replication', true),
       current_setting('cloudsql.logical_decoding', true),
       current_setting('max_replication_slots')::int,
       (SELECT count(*) FROM pg_replication_slots)::int,
       current_setting('max_wal_senders')::int,
       (SELECT count(*) FROM pg_stat_replication)::int,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size'),
       pg_is_in_recovery(),
       current_user, current_database(), r.rolsuper, r.rolreplication,
       EXISTS (SELECT 1 FROM pg_roles m WHERE m.rolname = 'rds_replication'
               AND pg_has_role(current_user, m.oid, 'MEMBER')),
       has_database_privilege(current_database(), 'CREATE'),
       EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %(publication)s),
       EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %(slot)s),
       coalesce((SELECT json_agg(t) FROM tables), '[]'::json)
FROM pg_roles r WHERE r.rolname = current_user
"""


def fetch_facts(conn: psycopg.Connection, tables: Sequence[TableName] | None = None, *,
                publication: str = "pg_to_bq", slot: str = "pg_to_bq") -> Facts:
    """The facts for `tables` ((schema, name) pairs; None: every table outside the system
    schemas, partitions left out since they are captured through their root), in one query."""
    schemas = None if tables is None else [s for s, _ in tables]
    names = None if tables is None else [t for _, t in tables]
    row = conn.execute(_FACTS_SQL, {"schemas": schemas, "names": names,
                                    "publication": publication, "slot": slot}).fetchone()
    assert row is not None
    *head, table_rows = row
    found = []
    for t in table_rows:
        found.append(TableFacts(
            schema=t["schema"], name=t["name"], kind=t["kind"], persistence=t["persistence"],
            replica_identity=t["replica_identity"],
            primary_key=tuple(t["primary_key"]) if t["primary_key"] else None,
            identity_index=t["identity_index"], owner=t["owner"], owned=t["owned"],
            can_select=t["can_select"], is_partition=t["is_partition"],
            root=tuple(t["root"]) if t["root"] else None,  # type: ignore[arg-type]
            leaves_without_identity=tuple(tuple(x) for x in t["leaves_without_identity"] or ()),
            generated_columns=tuple(t["generated_columns"] or ()), published=t["published"],
            inheritance_children=tuple(tuple(x) for x in t["inheritance_children"] or ()),
            foreign_leaves=tuple(tuple(x) for x in t.get("foreign_leaves") or ())))
    if tables is not None:
        have = {(t.schema, t.name) for t in found}
        for schema, name in tables:
            if (schema, name) not in have:
                found.append(TableFacts(schema, name, "", "", "", None, None, "", False, False,
                                        False, None, (), (), False, found=False))
    (version, wal_level, rds, cloudsql, max_slots, slots_used, max_senders, senders_used,
     keep, in_recovery, role, database, superuser, replication, rds_member, can_create,
     publication_exists, slot_exists) = head
    return Facts(version, wal_level, rds, cloudsql, max_slots, slots_used, max_senders,
                 senders_used, int(keep), in_recovery, role, database, superuser, replication,
                 rds_member, can_create, publication, publication_exists, slot, slot_exists,
                 tuple(found))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(table: TableName) -> str:
    return f"{_ident(table[0])}.{_ident(table[1])}"


def _server_findings(f: Facts) -> list[Finding]:
    out: list[Finding] = []
    if f.server_version < 100000:
        out.append(Finding("error", "server", "server_version",
                           f"PostgreSQL {f.server_version} has no pgoutput (10+ needed)",
                           "upgrade PostgreSQL"))
    if f.wal_level != "logical":
        problem = f"wal_level is {f.wal_level!r}: the WAL lacks what logical decoding needs"
        if f.rds_logical_replication is not None:
            fix = ("set rds.logical_replication = 1 in the instance's (Aurora: the cluster's) "
                   "DB parameter group, then reboot:\naws rds modify-db-parameter-group "
                   "--db-parameter-group-name <group> --parameters "
                   "\"ParameterName=rds.logical_replication,ParameterValue=1,"
                   "ApplyMethod=pending-reboot\"")
            out.append(Finding("error", "server", "rds.logical_replication", problem, fix))
        elif f.cloudsql_logical_decoding is not None:
            fix = ("gcloud sql instances patch <instance> --database-flags="
                   "cloudsql.logical_decoding=on  (restarts the instance; the list replaces "
                   "all flags: repeat the ones already set)")
            out.append(Finding("error", "server", "cloudsql.logical_decoding", problem, fix))
        else:
            out.append(Finding("error", "server", "wal_level", problem,
                               "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL"))
    if not f.slot_exists and f.replication_slots_used >= f.max_replication_slots:
        out.append(Finding(
            "error", "server", "max_replication_slots",
            f"all {f.max_replication_slots} replication slots are in use",
            f"ALTER SYSTEM SET max_replication_slots = {f.max_replication_slots + 1};  "
            "-- then restart PostgreSQL (or drop an unused slot: SELECT "
            "pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active "
            "AND slot_name = '<unused>';)"))
    if f.wal_senders_used >= f.max_wal_senders:
        out.append(Finding(
            "error", "server", "max_wal_senders",
            f"all {f.max_wal_senders} WAL senders are in use: a reader could not connect",
            f"ALTER SYSTEM SET max_wal_senders = {f.wal_senders_used + 1};  "
            "-- then restart PostgreSQL"))
    if f.max_slot_wal_keep_size_mb < 0:
        out.append(Finding(
            "warning", "server", "max_slot_wal_keep_size",
            "max_slot_wal_keep_size is -1 (unlimited): a slot nobody reads keeps WAL until "
            "the disk is full and the server stops",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '<a size well below the free disk, "
            "e.g. 50GB>'; SELECT pg_reload_conf();"))
    if f.in_recovery:
        if f.server_version < 160000:
            out.append(Finding("error", "server", "pg_is_in_recovery()",
                               "this is a standby: before PostgreSQL 16 logical decoding runs "
                               "only on the primary", "connect to the primary"))
        else:
            out.append(Finding("warning", "server", "pg_is_in_recovery()",
                               "this is a standby: the publication must be created on the "
                               "primary, and the standby needs hot_standby_feedback = on",
                               "ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();"))
    return out


def _role_findings(f: Facts, capturable: list[TableFacts]) -> list[Finding]:
    out: list[Finding] = []
    role = _ident(f.role)
    if not (f.superuser or f.replication or f.rds_replication_member):
        if f.rds_logical_replication is not None:
            fix = f"GRANT rds_replication TO {role};"
        else:
            fix = f"ALTER ROLE {role} WITH REPLICATION;"
        out.append(Finding("error", "role", f.role,
                           f"role {f.role} may not create or read replication slots", fix))
    if f.superuser:
        return out
    if not f.publication_exists and not f.can_create_in_database:
        out.append(Finding(
            "error", "role", f.role,
            f"role {f.role} may not create publication {f.publication} (no CREATE on "
            f"database {f.database})",
            f"GRANT CREATE ON DATABASE {_ident(f.database)} TO {role};  -- or a DBA creates it: "
            + _create_publication(f.publication, [(t.schema, t.name) for t in capturable],
                                  f.server_version)))
    not_owned = [t for t in capturable if not t.owned and not t.published]
    if not_owned:
        names = [(t.schema, t.name) for t in not_owned]
        if f.publication_exists:
            fix = (f"ALTER PUBLICATION {_ident(f.publication)} ADD TABLE "
                   + ", ".join(_qualified(n) for n in names) + ";")
        else:
            fix = _create_publication(f.publication, [(t.schema, t.name) for t in capturable],
                                      f.server_version)
        out.append(Finding(
            "error", "role", f.role,
            f"role {f.role} does not own {len(names)} table(s) to publish ("
            + ", ".join(f"{t.qualified} owned by {t.owner}" for t in not_owned[:5])
            + (", ..." if len(not_owned) > 5 else "")
            + "): only an owner or a superuser may add them to the publication",
            fix + "  -- run by the owner or a superuser"))
    return out


def _create_publication(name: str, tables: Sequence[TableName], server_version: int) -> str:
    options = "publish_via_partition_root = true"
    if server_version >= 180000:
        options += ", publish_generated_columns = stored"
    listed = (" FOR TABLE " + ", ".join(_qualified(t) for t in tables)) if tables else ""
    return f"CREATE PUBLICATION {_ident(name)}{listed} WITH ({options});"


def _table_findings(f: Facts, t: TableFacts) -> tuple[list[Finding], str | None]:
    """Findings for one table, and why it cannot be captured (None: it can)."""
    name = t.qualified
    if not t.found:
        return [Finding("error", "table", name, "no such table")], "no such table"
    if t.kind in ("v", "m", "f"):
        what = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}[t.kind]
        why = f"{what}: its rows are not in this server's WAL"
        return [Finding("info", "table", name, why + "; it keeps today's mode")], why
    if t.persistence != "p":
        why = "an unlogged table: its changes are never written to the WAL"
        return [Finding("error", "table", name, why + "; it keeps today's mode",
                        f"ALTER TABLE {name} SET LOGGED;")], why
    out: list[Finding] = []
    if t.is_partition and t.root is not None:
        why = f"a partition: captured through its root {_qualified(t.root)}"
        return [Finding("info", "table", name, why)], why
    if t.foreign_leaves:
        leaves = first_names([_qualified(leaf) for leaf in t.foreign_leaves])
        why = (f"its partition(s) {leaves} are foreign tables: their rows are not in this "
               "server's WAL")
        return [Finding("info", "table", name, why + "; it keeps today's mode")], why
    if t.inheritance_children:
        children = first_names([_qualified(c) for c in t.inheritance_children])
        why = (f"an inheritance parent: a read of it returns the rows of the tables that "
               f"inherit from it ({children}) too, whose changes PostgreSQL publishes as "
               "theirs, not its own")
        return [Finding("info", "table", name,
                        why + "; it keeps today's mode (those tables are captured)")], why
    if t.replica_identity == "n" or (t.replica_identity == "d" and not t.primary_key) or (
            t.replica_identity == "i" and not t.identity_index):
        why = ("no primary key and no REPLICA IDENTITY FULL: PostgreSQL cannot say which row "
               "an UPDATE or DELETE changed (and, once the table is published, rejects every "
               "UPDATE and DELETE on it), so only its inserts could be followed")
        fix = (f"ALTER TABLE {name} REPLICA IDENTITY DEFAULT;  -- it has a primary key"
               if t.replica_identity == "n" and t.primary_key else
               f"ALTER TABLE {name} ADD PRIMARY KEY (<key columns>);  -- or, for a unique column "
               f"set you would rather not declare: ALTER TABLE {name} REPLICA IDENTITY FULL; "
               "and name those columns as its primary_key in the tables file")
        if t.kind == "p" and t.leaves_without_identity:
            # REPLICA IDENTITY is per partition: setting it on the root does not reach them.
            fix += "".join(f"\nALTER TABLE {_qualified(leaf)} REPLICA IDENTITY FULL;"
                           for leaf in t.leaves_without_identity)
        out.append(Finding("warning", "table", name,
                           why + "; it keeps today's mode (read whole every run)", fix))
        return out, why
    if t.replica_identity == "f" and not t.primary_key:
        out.append(Finding(
            "info", "table", name,
            "captured with REPLICA IDENTITY FULL and no primary key: every UPDATE and DELETE "
            "carries the whole old row (more WAL); rows are matched by all their values, so "
            "identical duplicate rows cannot be told apart, and a later added table cannot "
            "be replayed idempotently (it needs an exact copy point)"))
    if t.kind == "p" and t.leaves_without_identity:
        leaves = ", ".join(_qualified(leaf) for leaf in t.leaves_without_identity)
        why = (f"partitions without a primary key or REPLICA IDENTITY FULL ({leaves}): "
               "REPLICA IDENTITY is per partition, and UPDATE/DELETE on them would fail once "
               "published")
        out.append(Finding("warning", "table", name, why + "; it keeps today's mode",
                           "\n".join(f"ALTER TABLE {_qualified(leaf)} REPLICA IDENTITY FULL;"
                                     for leaf in t.leaves_without_identity)))
        return out, why
    if t.generated_columns and f.server_version < 180000:
        out.append(Finding(
            "warning", "table", name,
            f"generated columns ({', '.join(t.generated_columns)}) are not sent by pgoutput "
            "before PostgreSQL 18: their values must be computed or re-read",
            "upgrade to PostgreSQL 18 (publish_generated_columns = stored)"))
    if not t.can_select:
        why = "no SELECT privilege: the initial copy cannot read it"
        out.append(Finding("error", "table", name, why,
                           f"GRANT SELECT ON {name} TO {_ident(f.role)};"))
        return out, why
    return out, None


def assess(facts: Facts) -> Assessment:
    """Findings for the server, the role and each table, with the fix for each gap."""
    findings: list[Finding] = _server_findings(facts)
    capturable: list[TableFacts] = []
    not_capturable: dict[TableName, str] = {}
    table_findings: list[Finding] = []
    for table in facts.tables:
        found, why = _table_findings(facts, table)
        table_findings.extend(found)
        if why is None:
            capturable.append(table)
        else:
            not_capturable[(table.schema, table.name)] = why
    findings.extend(_role_findings(facts, capturable))
    findings.extend(table_findings)
    return Assessment(tuple(findings), tuple((t.schema, t.name) for t in capturable),
                      not_capturable)

