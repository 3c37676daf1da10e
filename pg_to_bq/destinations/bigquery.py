"""BigQuery as pg_to_bq loads it: what dlt's BigQuery destination is told beyond the columns
(the table's description, partitioning and clustering)."""

from __future__ import annotations

from typing import Any

from pg_to_bq.planning.tables import TablePlan


def bigquery_hints(plan: TablePlan, columns: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mark the partitioning and clustering columns among `columns` (dlt column hints by
    name, changed in place) and return the table's own hints: its description from the
    PostgreSQL comment and its clustering.

    Set as dlt hints directly: `bigquery_adapter` replaces the resource's column hints with
    only its own, which would drop every column's type and description.
    """
    from dlt.destinations.impl.bigquery.bigquery_adapter import (
        CLUSTER_COLUMNS_HINT,
        CLUSTER_HINT,
        PARTITION_HINT,
        TABLE_DESCRIPTION_HINT,
    )

    table_hints: dict[str, Any] = {}
    if plan.table.comment:
        table_hints[TABLE_DESCRIPTION_HINT] = plan.table.comment
    if plan.bigquery_partition:
        columns[plan.column_for(plan.bigquery_partition).name][PARTITION_HINT] = True
    if plan.bigquery_cluster:
        names = [plan.column_for(c).name for c in plan.bigquery_cluster]
        for name in names:
            columns[name][CLUSTER_HINT] = True
        table_hints[CLUSTER_COLUMNS_HINT] = names
    return table_hints
