"""Has a table changed since its last load? Its row versions say so exactly.

PostgreSQL writes a new row version for every insert and update, at a place (`ctid`) and
with the writing transaction's id (`xmin`); a delete removes one; TRUNCATE, VACUUM FULL,
CLUSTER and table rewrites give every row a new place or file. So a table whose set of
(`tableoid`, `ctid`, `xmin`) and row count are those the last load read holds the rows it
held then. Values can also change without a new row version when the catalog changes (a
column added with a default, an enum label renamed, a composite type altered) or when
pg_to_bq reads the columns differently (another type mapping, hash salt or column choice):
the token covers those too, the catalog conservatively (any enum or composite type change
anywhere in the database counts).

A table whose token equals the one stored at its last successful load is not read again
(`status == "unchanged"`): a replaced table, and a merged one of up to `MERGE_MAX_BYTES`
(whose lookback window would otherwise be read and compared). The token is only ever
compared for equality; when in doubt (a view, a changed schema, a forced refresh) the table
is read. Rows of foreign tables (a partition, an inheriting table) have no row versions: a
table holding any is read every run (`_UNVERSIONED`). Cost: one scan of the row headers, no
values (~0.45 s per million rows).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pg_to_bq.postgres.sql import qualified_name

if TYPE_CHECKING:
    from pg_to_bq.planning.tables import TablePlan
    from pg_to_bq.postgres.reader import TableReader

# A merged table's incremental read is a window of recent rows; above this size on disk
# (~100,000 rows of 300 bytes), its token (a scan of every row header: ~45 ms per 100,000
# rows) would cost more than the window it saves.
MERGE_MAX_BYTES = 32 * 1024 * 1024

_VERSION = "t.tableoid::text || ':' || t.ctid::text || ':' || t.xmin::text"
# The hashes are bigints, summed exactly: PostgreSQL's sum of bigints is a numeric, added up
# in 128-bit integers, the same number as a sum of each cast to numeric first, which took
# ~15% longer (1,000-row tables).
_ROW_VERSIONS = f"""count(*),
       coalesce(sum(hashtextextended({_VERSION}, 0)), 0),
       coalesce(sum(hashtextextended({_VERSION}, 1)), 0),
       count(*) FILTER (WHERE t.xmin = '0'::xid)"""
# The rows of a foreign table (a partition, or a table inheriting from it) have no row
# versions: their `xmin` is 0, and their `ctid` is the remote server's (postgres_fdw: a
# place a later update can take again after a VACUUM) or none at all. A token over such
# rows could be that of the last load while a value changed, so a table with any is never
# found unchanged: its token is new every time (`_UNVERSIONED`), and it is read every run.
_UNVERSIONED = "unversioned:"
# Why such a table, loaded before, is read again (on its line and its materialization).
UNVERSIONED_REASON = ("some of its rows are a foreign table's, which have no row versions to "
                      "compare: read every run")


def unversioned(token: str | None) -> bool:
    """Whether `token` is that of a table with rows of a foreign table (`_UNVERSIONED`)."""
    return token is not None and token.startswith(_UNVERSIONED)

# The table's own catalog rows (any ALTER updates them; a rewrite changes relfilenode) and
# every enum label and composite type attribute of the database. The database's part is the
# same for every table: a caller asking for many tables in one snapshot asks it once
# (`database_catalog`), and the token is the same either way.
_TABLE_CATALOG = """(SELECT c.xmin::text || ':' || c.relfilenode::text FROM pg_catalog.pg_class c
        WHERE c.oid = {oid}::regclass),
       (SELECT string_agg(a.attnum::text || ':' || a.xmin::text, ',' ORDER BY a.attnum)
        FROM pg_catalog.pg_attribute a WHERE a.attrelid = {oid}::regclass)"""
_DATABASE_CATALOG = """(SELECT string_agg(e.oid::text || ':' || e.xmin::text, ',' ORDER BY e.oid)
        FROM pg_catalog.pg_enum e),
       (SELECT string_agg(a.attrelid::text || ':' || a.attnum::text || ':' || a.xmin::text, ','
                          ORDER BY a.attrelid, a.attnum)
        FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
        WHERE c.relkind = 'c')"""


def applies(plan: TablePlan) -> bool:
    """Worth asking: a table with row versions, replaced (the token costs less than the read
    it saves) or merged and small enough that scanning its row headers costs about as much
    as the row count its load takes anyway."""
    if not plan.table.has_row_versions:
        return False
    size = plan.table.size_bytes
    return plan.disposition == "replace" or (size is not None and size <= MERGE_MAX_BYTES)


def token(reader: TableReader, plan: TablePlan, hash_salt: bytes | None) -> str:
    """This table's row versions and everything else its loaded values depend on, read in
    the reader's snapshot (inside `with reader:`; by the reader's count, when it was asked
    with `versions=True`)."""
    if reader.versions_row is not None:
        return token_of_row(reader.versions_row, plan, hash_salt)[0]
    return token_and_rows(reader.query_one, plan, hash_salt)[0]


def database_catalog(query_one: Callable[[str], tuple | None]) -> tuple:
    """The database's part of every table's token (its enum labels and composite types),
    in the snapshot the caller holds: for `token_of_row` of tables in that snapshot."""
    return tuple(query_one(f"SELECT {_DATABASE_CATALOG}") or ())


def token_and_rows(query_one: Callable[[str], tuple | None], plan: TablePlan,
                   hash_salt: bytes | None) -> tuple[str, int]:
    """`token`, and the table's rows, asked with `query_one` (one row of a query, in the
    snapshot the caller holds): the values are compared as text, so a driver that returns
    numerics as text and one that returns `Decimal`s give the same token."""
    return token_of_row(query_one(versions_sql(plan)), plan, hash_salt)


def versions_sql(plan: TablePlan, with_database: bool = True) -> str:
    """One query for everything a table's token depends on in PostgreSQL (but the database's
    part, `database_catalog`, without `with_database`), its row count first (a reader's
    count and the token's inputs in one scan and one round trip): `token_of_row` makes the
    token of its row."""
    table = qualified_name(plan)
    database = f",\n       {_DATABASE_CATALOG}" if with_database else ""
    # (a table with foreign partitions is not asked its rows' system columns: file_fdw's
    # cannot answer; its token is `_UNVERSIONED` whatever they are)
    versions = _ROW_VERSIONS if plan.table.rows_have_system_columns else "count(*), 0, 0, 1"
    return (f"SELECT {versions},\n       {_TABLE_CATALOG.format(oid=_dollar_quoted(table))}"
            f"{database}\nFROM {table} AS t")


def token_of_row(row: tuple | None, plan: TablePlan, hash_salt: bytes | None,
                 database: tuple | None = None) -> tuple[str, int]:
    """The token and the row count from the row of `versions_sql` (asked without the
    database's part when `database`, from `database_catalog` in the same snapshot, is given)."""
    row = tuple(row or ())
    if row and row[3]:
        return _UNVERSIONED + uuid.uuid4().hex, int(row[0])
    return _token(row[:3], (*row[4:], *(database or ())), plan, hash_salt)


def _token(rows: Sequence[Any] | None, catalog: Sequence[Any] | None, plan: TablePlan,
           hash_salt: bytes | None) -> tuple[str, int]:
    reading = [(c.source.name, c.source.type, c.name, c.select_sql, c.logical, c.transform,
                c.precision, c.scale) for c in plan.columns]
    salt = hashlib.sha256(hash_salt).hexdigest() if hash_salt and plan.hashed else None
    text = json.dumps([[str(v) for v in rows or ()], [str(v) for v in catalog or ()],
                       reading, salt], default=str)
    return hashlib.sha256(text.encode()).hexdigest(), int(rows[0]) if rows else 0


def _dollar_quoted(text: str) -> str:
    """`text` as an SQL string constant, whatever it holds (quotes, backslashes)."""
    tag, n = "$q$", 0
    while tag in text:
        n += 1
        tag = f"$q{n}$"
    return f"{tag}{text}{tag}"


# What a merged table's values depend on beyond its rows, which an incremental read (the
# rows whose cursor moved) would not pick up: the partitions it holds (an attached partition
# brings rows with any cursor value) and the labels of the enum types its columns use (a
# renamed label changes every row holding it). One query for many tables, by object id.
_DEFINITIONS = """
SELECT t.oid,
       (SELECT string_agg(p.relid::oid::text, ',' ORDER BY p.relid::oid)
        FROM pg_catalog.pg_partition_tree(t.oid) AS p),
       (SELECT string_agg(e.oid::text || ':' || e.enumlabel, ',' ORDER BY e.oid)
        FROM pg_catalog.pg_enum e
        WHERE e.enumtypid IN (
            SELECT coalesce(nullif(ty.typelem, 0), nullif(ty.typbasetype, 0), ty.oid)
            FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
            WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped))
FROM (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.oid IN ({oids})) AS t
"""


def definitions(query_all: Callable[[str], Sequence[Sequence[Any]]], oids: Sequence[int]
                ) -> dict[int, str]:
    """Each table's partitions and enum labels (see `_DEFINITIONS`) as one string, by object
    id, asked with `query_all` (every row of a query); a table that no longer exists is left
    out."""
    if not oids:
        return {}
    rows = query_all(_DEFINITIONS.format(oids=", ".join(str(int(o)) for o in oids)))
    return {int(oid): hashlib.sha256(json.dumps([partitions, labels]).encode()).hexdigest()
            for oid, partitions, labels in rows}
