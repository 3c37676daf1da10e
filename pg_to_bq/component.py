"""The component's path before the package was laid out in parts: `defs.yaml` files that
name `pg_to_bq.component.PostgresMirror` keep working. New ones name `pg_to_bq.PostgresMirror`."""

from pg_to_bq.orchestration.component import PostgresMirror

__all__ = ["PostgresMirror"]
