"""pg_to_bq: mirror PostgreSQL tables into BigQuery as Dagster assets loaded by dlt."""
