"""The Dagster code location: `dagster dev` (via workspace.yaml) and `dagster api grpc -m` load this."""

from pg_to_bq.project import build_definitions

defs = build_definitions()
