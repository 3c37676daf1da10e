"""pg_to_bq: mirror every table of a PostgreSQL database into BigQuery (or DuckDB) as Dagster
assets loaded by dlt.

The folders follow the data, top down; each part uses only the parts below it:

    cli/            the `pg-to-bq` command: demo, discover, sync (and its in-process instance)
    launchers/      the Lambda run launcher and the ECS/Lambda router
    orchestration/  the Dagster side: assets and their steps, the catalog asset, the mirror
                    builder, the `PostgresMirror` component, the code location, resources
    load/           one step's load: read each table, dlt packages, schema evolution, fills,
                    the delete pass, the state that is trusted only while its rows are there
    checks/         reconciliation of a loaded table with its source (counts, digests)
    postgres/       PostgreSQL: connections, catalog discovery, snapshot reads, row versions,
                    change capture, the embedded server
    destinations/   DuckDB and BigQuery: dlt's destinations as pg_to_bq configures them, the
                    destination's schema, the state table, the writer lock
    planning/       pure: settings, per-table overrides, the catalog model, table plans,
                    the type map, names, sensitive columns, step groups, what errors mean

`pg_to_bq.definitions` is the standalone code location; `pg_to_bq.PostgresMirror` the
Dagster component (`dg scaffold defs pg_to_bq.PostgresMirror NAME`). Importing this package
imports nothing else: the component is imported when it is asked for.
"""

from typing import Any

__all__ = ["PostgresMirror"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `import pg_to_bq.planning.settings` must not import Dagster.
    if name == "PostgresMirror":
        from pg_to_bq.orchestration.component import PostgresMirror

        return PostgresMirror
    raise AttributeError(f"module 'pg_to_bq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
