"""PostgreSQL: everything that talks to the source database.

Owns connections (`connect`, `session` for the ADBC driver), catalog discovery in one query
(`discovery`), snapshot reads as Arrow batches over binary COPY (`reader`, with the SQL it
sends in `sql` and the value checks in `values`), row-version tokens that tell an
unchanged table (`row_versions`), change capture from logical replication (`cdc`), and the
embedded server of the demo and the tests (`embedded`, `sample_data.sql`).

May import: `pg_to_bq.planning`, psycopg, the ADBC PostgreSQL driver, pyarrow. Never
Dagster or dlt.
"""
