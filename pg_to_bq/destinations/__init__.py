"""Destinations: DuckDB and BigQuery as pg_to_bq loads them.

Owns dlt's destinations as pg_to_bq configures them, resolved once per process
(`dlt_config`; DuckDB's in-transaction replace and memory limits in `duckdb_file`,
BigQuery's table hints in `bigquery`), what the destination's tables look like and the DDL
that changes them in place (`schema`), the table of each mirrored table's load state
(`state_table`), and the writer lock of a DuckDB file (`writer_lock`).

May import: `pg_to_bq.planning`, dlt, DuckDB. Never Dagster, never PostgreSQL.
"""
