"""The Dagster code location: `dagster dev` (via workspace.yaml) and `dagster api grpc -m` load this."""

from pg_to_bq.orchestration.code_location import build_definitions

defs = build_definitions()
