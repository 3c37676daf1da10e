"""Each table's two asset specs — the PostgreSQL table (external) and the loaded table —
with what analysts read in the UI: the description from the table comment, the column
schema with PostgreSQL and destination types, foreign keys, the plan, the checks.

Building the specs must stay cheap for 1,000+ tables: what is identical across tables
(equal column-schema entries) is built once.
"""

from __future__ import annotations

import functools
from typing import Any

import dagster as dg

from pg_to_bq.checks import outcomes as checks
from pg_to_bq.orchestration.names import (
    ESTIMATED_ROWS,
    PARTITIONED_TAG,
    SCHEDULE_TAG,
    AssetContext,
    captured_by,
    catalog_key,
    destination_key,
    key_part,
    partitions_for,
    source_key,
)
from pg_to_bq.planning.catalog import Table
from pg_to_bq.planning.naming import SOFT_DELETE_COLUMN, SOFT_DELETE_DESCRIPTION
from pg_to_bq.planning.tables import TablePlan


@functools.lru_cache(maxsize=16384)
def _table_column(name: str, type_: str, description: str | None, nullable: bool) -> dg.TableColumn:
    """One column of a `dagster/column_schema`; immutable, so equal columns (most tables have
    an `id bigint`) share one object instead of being built and validated again."""
    return dg.TableColumn(name=name, type=type_, description=description,
                          constraints=dg.TableColumnConstraints(nullable=nullable))


def source_spec(plan: TablePlan, ctx: AssetContext) -> dg.AssetSpec:
    table = plan.table
    metadata: dict[str, Any] = {
        "dagster/column_schema": dg.TableSchema(
            columns=[_table_column(c.name, c.type, c.comment, c.nullable) for c in table.columns]
        ),
        "dagster/table_name": table.qualified_name,
        "pg_to_bq/primary_key": ", ".join(table.primary_key) or "(none)",
        "pg_to_bq/foreign_keys": dg.MetadataValue.md(_foreign_keys_md(table)),
    }
    if table.estimated_rows is not None:
        metadata[ESTIMATED_ROWS] = table.estimated_rows
    if not plan.loadable:
        metadata["pg_to_bq/not_loaded"] = plan.error or "; ".join(plan.notes)
    return dg.AssetSpec(
        key=source_key(table, ctx),
        description=_describe(table, table.comment,
                              f"PostgreSQL {table.kind_label} `{table.qualified_name}`"),
        group_name=ctx.group("postgres_" + plan.group_name),
        kinds={"postgres"},
        metadata=metadata,
    )


def _describe(table: Table, comment: str | None, origin: str) -> str:
    """The real name first when the key could not show it, then the table comment (what
    analysts read), then where the data lives."""
    parts = []
    if key_part(table.name) != table.name:
        parts.append(f"**{table.qualified_name}**")
    if comment:
        parts.append(comment)
    parts.append(origin)
    return "\n\n".join(parts)


def _foreign_keys_md(table: Table) -> str:
    if not table.foreign_keys:
        return "(none)"
    return "\n".join(
        f"- `{', '.join(fk.columns)}` → `{fk.referred_schema}.{fk.referred_table}"
        f"({', '.join(fk.referred_columns)})`"
        for fk in table.foreign_keys
    )


def plan_markdown(plan: TablePlan) -> str:
    if plan.error:
        return f"- **not loadable**: {plan.error}"
    lines = [
        f"- **disposition**: {plan.describe_disposition(long=True)}",
        f"- **primary key**: {', '.join(plan.primary_key) or '(none: replaced each load)'}",
        f"- **cursor**: {plan.cursor or '(none)'}"
        + (f", lookback {plan.lookback}" if plan.cursor else ""),
    ]
    if plan.partition:
        lines.append(f"- **partitions**: {plan.partition.granularity} on `{plan.partition.column}`"
                     f" from {plan.partition.start}")
    if plan.bigquery_partition or plan.bigquery_cluster:
        lines.append(f"- **BigQuery**: partitioned by `{plan.bigquery_partition or '-'}`, "
                     f"clustered by `{', '.join(plan.bigquery_cluster) or '-'}`")
    if plan.excluded:
        lines.append(f"- **excluded columns**: {', '.join(plan.excluded)}")
    if plan.hashed:
        lines.append(f"- **hashed columns**: {', '.join(plan.hashed)}")
    lines.extend(f"  - `{c.column}`: {c.reason}; {c.setting}" for c in plan.left_out)
    if plan.renamings:
        lines.append("- **renamed columns**: " + "; ".join(r.describe() for r in plan.renamings))
    if plan.table_renaming:
        lines.append(f"- **destination table**: {plan.table_renaming.describe()}")
    lines.extend(f"- note: {n}" for n in plan.notes)
    return "\n".join(lines)


def destination_metadata(plan: TablePlan, ctx: AssetContext) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "dagster/column_schema": dg.TableSchema(
            columns=[
                _table_column(
                    c.name,
                    c.destination_type(ctx.destination_kind),
                    (f"{c.source.comment} (PostgreSQL {c.source.type})"
                     if c.source.comment else f"PostgreSQL {c.source.type}"),
                    c.source.nullable,
                )
                for c in plan.columns
            ] + ([_table_column(SOFT_DELETE_COLUMN,
                                "TIMESTAMP" if ctx.destination_kind == "bigquery"
                                else "TIMESTAMP WITH TIME ZONE",
                                SOFT_DELETE_DESCRIPTION, True)]
                 if plan.soft_deletes else [])
        ),
        "dagster/table_name": f"{ctx.qualified_prefix}.{plan.destination_table}",
        "pg_to_bq/source_table": plan.name,
        "pg_to_bq/plan": dg.MetadataValue.md(plan_markdown(plan)),
        "pg_to_bq/disposition": plan.disposition,
        "pg_to_bq/foreign_keys": dg.MetadataValue.md(_foreign_keys_md(plan.table)),
        **({ESTIMATED_ROWS: plan.table.estimated_rows}
           if plan.table.estimated_rows is not None else {}),
    }
    if plan.left_out:
        metadata["pg_to_bq/left_out_columns"] = dg.MetadataValue.md(
            "\n".join(f"- `{c.column}`: {c.action}, {c.reason} ({c.setting})"
                      for c in plan.left_out))
    if plan.error:
        metadata["pg_to_bq/not_loadable"] = plan.error
    return metadata


def check_specs(plan: TablePlan, key: dg.AssetKey, fingerprint: bool = True
                ) -> list[dg.AssetCheckSpec]:
    """The table's one check. Blocking: rows or values lost or changed (a failure of severity
    ERROR) fail the step, so the run fails and nothing downstream runs on the table."""
    return [dg.AssetCheckSpec(checks.MATCHES_SOURCE, asset=key, blocking=True,
                              description=_VALUES_DESCRIPTION if fingerprint
                              else _ROWS_DESCRIPTION)]


_ROWS_DESCRIPTION = ("The destination holds the source's rows (counted in the snapshot they "
                     "were read in), and nothing changed it since the last load (whole-table "
                     "figures computed in the destination)")
_VALUES_DESCRIPTION = (_ROWS_DESCRIPTION[:-1] + "; every loaded column's values equal the "
                       "source's (non-null counts and order-independent digests: the whole "
                       "table when small, primary-key ranges when large))")


def table_spec(plan: TablePlan, ctx: AssetContext) -> dg.AssetSpec:
    """The loaded table's asset spec (its upstream is `source_spec(plan)`)."""
    tags = {"pg_to_bq/source_schema": plan.group_name, **dict(ctx.tags)}
    if plan.scheduled and plan.partition is None:
        tags[SCHEDULE_TAG] = "nightly"
    if plan.partition is not None:
        tags[PARTITIONED_TAG] = plan.partition.granularity
    return dg.AssetSpec(
        key=destination_key(plan, ctx),
        # With change capture, after the catalog step, which reads the changes.
        deps=[source_key(plan.table, ctx),
              *([catalog_key(ctx)] if captured_by([plan], ctx) else [])],
        description=_describe(
            plan.table, plan.table.comment,
            f"PostgreSQL `{plan.name}` loaded by dlt into "
            f"`{ctx.qualified_prefix}.{plan.destination_table}`"),
        group_name=ctx.group(plan.group_name),
        kinds={"dlt", ctx.destination_kind},
        owners=list(ctx.owners),
        tags=tags,
        metadata=destination_metadata(plan, ctx),
        partitions_def=partitions_for(plan),
        skippable=True,
        freshness_policy=ctx.freshness_policy(plan),
    )
