"""Discover a database's tables with one query against `pg_catalog`: tables, columns (type,
typmod, nullability, comments), primary and foreign keys, comments and size estimates;
partitioned tables once, through their root. Never one round trip per table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pg_to_bq.planning.catalog import Catalog, Column, Table

# One round trip for the whole database: relations with their columns, keys, comments and
# size estimates as JSON. Partitions are skipped (their parent is loaded); row estimates of a
# partitioned parent sum its leaves; the size, row estimate and storage of a table others
# INHERIT from include theirs (a read of it returns their rows). Only the schema list is a
# parameter, never pasted in.
# Columns and comments are joined for all relations in one grouped pass: a correlated
# subquery and `col_description()` per relation took ~0.5 s for 1,000 tables, this ~0.3 s.
CATALOG_SQL = """
WITH RECURSIVE rels AS (
    SELECT c.oid, n.nspname AS schema, c.relname AS name, c.relkind, c.reltuples,
           c.relhassubclass AND c.relkind <> 'p' AS inherited
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = ANY(%(relkinds)s)
      AND NOT c.relispartition
      AND n.nspname <> 'information_schema'
      AND n.nspname NOT LIKE 'pg\\_%%'
      AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
      AND (%(table)s::text IS NULL OR c.relname = %(table)s::text)
      AND NOT EXISTS (
          SELECT 1 FROM pg_catalog.pg_depend d
          WHERE d.objid = c.oid AND d.deptype = 'e'
      )
),
cols AS (
    SELECT a.attrelid AS oid, json_agg(json_build_object(
            'name', a.attname,
            'type', pg_catalog.format_type(a.atttypid, a.atttypmod),
            'type_name', t.typname,
            'type_schema', tn.nspname,
            'type_kind', t.typtype,
            'type_category', t.typcategory,
            'typmod', a.atttypmod,
            'base_type', CASE WHEN t.typtype = 'd'
                THEN pg_catalog.format_type(t.typbasetype, t.typtypmod) END,
            'base_type_name', bt.typname,
            'element_type_name', et.typname,
            'element_type_kind', et.typtype,
            'dimensions', a.attndims,
            'nullable', NOT a.attnotnull,
            'comment', cd.description
        ) ORDER BY a.attnum) AS columns,
        json_agg(a.attnum ORDER BY a.attnum) AS column_numbers
    FROM rels r
    JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
    LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd'
    LEFT JOIN pg_catalog.pg_type et
        ON et.oid = CASE WHEN t.typtype = 'd' THEN bt.typelem ELSE t.typelem END
        AND (CASE WHEN t.typtype = 'd' THEN bt.typcategory ELSE t.typcategory END) = 'A'
    LEFT JOIN pg_catalog.pg_description cd
        ON cd.objoid = a.attrelid AND cd.classoid = 'pg_catalog.pg_class'::regclass
        AND cd.objsubid = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped
    GROUP BY a.attrelid
),
-- The tables that INHERIT from a table (classic inheritance, not a partitioned table's
-- partitions), at any depth: a read of the parent returns their rows too.
descendants AS (
    SELECT r.oid AS root, i.inhrelid AS relid
    FROM rels r JOIN pg_catalog.pg_inherits i ON i.inhparent = r.oid
    WHERE r.inherited
    UNION
    SELECT d.root, i.inhrelid
    FROM descendants d JOIN pg_catalog.pg_inherits i ON i.inhparent = d.relid
),
inheritance AS (
    SELECT d.root AS oid,
           json_agg(hn.nspname || '.' || h.relname ORDER BY hn.nspname, h.relname)
               FILTER (WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i
                                     WHERE i.inhrelid = d.relid AND i.inhparent = d.root))
               AS children,
           sum(pg_catalog.pg_total_relation_size(d.relid))::bigint AS size_bytes,
           sum(greatest(h.reltuples, 0))::bigint AS estimated_rows,
           string_agg(pg_catalog.pg_relation_filenode(d.relid)::text, ',' ORDER BY d.relid)
               AS storage,
           json_agg(hn.nspname || '.' || h.relname ORDER BY hn.nspname, h.relname)
               FILTER (WHERE h.relkind = 'f') AS foreign_parts
    FROM descendants d
    JOIN pg_catalog.pg_class h ON h.oid = d.relid
    JOIN pg_catalog.pg_namespace hn ON hn.oid = h.relnamespace
    GROUP BY d.root
)
SELECT json_build_object(
    'oid', r.oid,
    'schema', r.schema,
    'name', r.name,
    'kind', r.relkind,
    'comment', td.description,
    'estimated_rows', CASE WHEN r.relkind = 'p' THEN (
            SELECT sum(greatest(leaf.reltuples, 0))::bigint
            FROM pg_catalog.pg_partition_tree(r.oid) pt
            JOIN pg_catalog.pg_class leaf ON leaf.oid = pt.relid
            WHERE pt.isleaf)
        WHEN r.reltuples < 0 THEN NULL
        ELSE r.reltuples::bigint + COALESCE(inh.estimated_rows, 0) END,
    'size_bytes', CASE WHEN r.relkind = 'p' THEN (
            SELECT sum(pg_catalog.pg_total_relation_size(pt.relid))::bigint
            FROM pg_catalog.pg_partition_tree(r.oid) pt WHERE pt.isleaf)
        WHEN r.relkind IN ('r', 'm') THEN pg_catalog.pg_total_relation_size(r.oid)
            + COALESCE(inh.size_bytes, 0)
        ELSE NULL END,
    'columns', COALESCE(cols.columns, '[]'::json),
    'column_numbers', COALESCE(cols.column_numbers, '[]'::json),
    'storage', CASE WHEN r.relkind = 'p' THEN (
            SELECT string_agg(pg_catalog.pg_relation_filenode(pt.relid)::text, ','
                              ORDER BY pt.relid)
            FROM pg_catalog.pg_partition_tree(r.oid) pt WHERE pt.isleaf)
        WHEN inh.storage IS NOT NULL THEN concat_ws(
            ',', pg_catalog.pg_relation_filenode(r.oid)::text, inh.storage)
        ELSE pg_catalog.pg_relation_filenode(r.oid)::text END,
    'inherited_by', inh.children,
    'foreign_parts', CASE WHEN r.relkind = 'p' THEN (
            SELECT json_agg(fn.nspname || '.' || f.relname ORDER BY fn.nspname, f.relname)
            FROM pg_catalog.pg_partition_tree(r.oid) pt
            JOIN pg_catalog.pg_class f ON f.oid = pt.relid AND f.relkind = 'f'
            JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace)
        ELSE inh.foreign_parts END,
    'primary_key', (
        SELECT json_agg(a.attname ORDER BY k.ord)
        FROM pg_catalog.pg_constraint con
        CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
        WHERE con.conrelid = r.oid AND con.contype = 'p'
    ),
    'foreign_keys', COALESCE((
        SELECT json_agg(json_build_object(
            'name', con.conname,
            'columns', (SELECT json_agg(a.attname ORDER BY k.ord)
                        FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                        JOIN pg_catalog.pg_attribute a
                          ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
            'referred_schema', fn.nspname,
            'referred_table', f.relname,
            'referred_columns', (SELECT json_agg(a.attname ORDER BY k.ord)
                        FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
                        JOIN pg_catalog.pg_attribute a
                          ON a.attrelid = con.confrelid AND a.attnum = k.attnum)
        ) ORDER BY con.conname)
        FROM pg_catalog.pg_constraint con
        JOIN pg_catalog.pg_class f ON f.oid = con.confrelid
        JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace
        WHERE con.conrelid = r.oid AND con.contype = 'f'
    ), '[]'::json)
) AS table_json
FROM rels r
LEFT JOIN cols ON cols.oid = r.oid
LEFT JOIN inheritance inh ON inh.oid = r.oid
LEFT JOIN pg_catalog.pg_description td
    ON td.objoid = r.oid AND td.classoid = 'pg_catalog.pg_class'::regclass AND td.objsubid = 0
ORDER BY r.schema, r.name
"""


def discover(
    connection, schemas: Sequence[str] = (), include_views: bool = False, table: str | None = None
) -> Catalog:
    """Run the catalog query on an open psycopg connection and return every user table.

    `table` narrows the query to one table name (with `schemas` naming its schema).
    """
    relkinds = ["r", "p", "v", "m", "f"] if include_views else ["r", "p"]
    with connection.cursor() as cur:
        cur.execute(
            CATALOG_SQL, {"relkinds": relkinds, "schemas": list(schemas), "table": table}
        )
        rows = cur.fetchall()
        cur.execute("SELECT current_database()")
        database = cur.fetchone()[0]
    columns: dict[tuple, Column] = {}
    tables = tuple(Table.from_dict(_as_dict(row[0]), columns) for row in rows)
    return Catalog(tables=tables, database=database)


def _as_dict(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value
