"""Checks: is the loaded table the source's? Pure reconciliation.

Owns the check outcomes (`outcomes`: row counts, freshness, what severity means), the
column types after a schema change (`column_types`) and the values fingerprint
(`fingerprint`: per column, a non-null count and an exact, order-independent digest, as one
SQL query per side, in PostgreSQL's, DuckDB's and BigQuery's dialects).

May import: `pg_to_bq.planning`. Builds SQL text; never connects to anything.
"""
