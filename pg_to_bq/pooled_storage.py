"""The storage class's path before the package was laid out in parts: a `dagster.yaml` that
names `module: pg_to_bq.pooled_storage` keeps working (deploy/dagster.yaml names the new one)."""

from pg_to_bq.orchestration.pooled_storage import PooledPostgresStorage

__all__ = ["PooledPostgresStorage"]
