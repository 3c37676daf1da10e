"""Destinations: DuckDB and BigQuery as pg_to_bq loads them.

Owns dlt's destinations as pg_to_bq configures them, resolved once per process
(`dlt_config`; DuckDB's in-transaction replace and memory limits in `duckdb_file`,
BigQuery's table hints in `bigquery`), pg_to_bq's own DuckDB connection for its questions
when nothing loads (`duckdb_session`; dlt's destination made only when something does,
`lazy`), the row counts (`row_counts`), what the destination's tables look like and the
DDL that changes them in place (`schema`), soft-deleted rows (`soft_deletes`), the table
of each mirrored table's load state (`state_table`), the writer lock of a DuckDB file
(`writer_lock`), and a check's queries to a DuckDB file on two connections at once
(`query_threads`).

May import: `pg_to_bq.planning`, dlt, DuckDB. Never Dagster, never PostgreSQL.
"""
