"""Load: what one step does to copy its tables, from PostgreSQL into the destination.

Owns the group load (`group`: the order of a step's work), the tables found unchanged
before any read (`unchanged`), which rows a read asks for (`cursor`), the reads (`read`),
dlt's load
packages (`packages`; where pipelines keep their files, known without dlt: `pipelines`),
the schema changes owed before a load (`schema_changes`), the fills of new columns
(`fill`) and the delete pass (`deletes`), the values check's two sides
(`values_check`), the lookback window (`cursor_window`), parquet files (`parquet_files`),
and each table's state, trusted only while the destination holds its rows (`state`).

May import: `pg_to_bq.planning`, `pg_to_bq.postgres`, `pg_to_bq.destinations`,
`pg_to_bq.checks`, dlt, pyarrow. Never Dagster: a load runs the same from a Dagster step,
a benchmark or a test.
"""
