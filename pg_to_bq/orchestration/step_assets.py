"""Turn table plans into Dagster assets: one external PostgreSQL asset per table, and the
loaded tables in steps (`pg_to_bq.planning.groups`): small tables load many to a step,
each step a subsettable multi-asset, so every table is still its own asset with its own
materializations, metadata and checks, and materializing one table runs just that table.
The step's work is `pg_to_bq.orchestration.steps.run_step`.

Building the definitions must stay cheap for 1,000+ tables: dlt is imported only inside a
running load, each step's op and asset are constructed directly (not through
`@multi_asset`, see `build_group_asset`), and what is identical across tables (the config
schema, the check outputs) is built once.
"""


import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg

from pg_to_bq.orchestration.names import (
    LOAD_CONFIG_SCHEMA,
    AssetContext,
    LoadConfig,
    captured_by,
    catalog_key,
    source_key,
)
from pg_to_bq.orchestration.specs import check_specs, source_spec, table_spec
from pg_to_bq.planning.groups import LoadGroup, group_plans
from pg_to_bq.planning.naming import dagster_name
from pg_to_bq.planning.tables import TablePlan

# Parts identical across ops, built (and their Dagster types resolved) once.
_SOURCE_IN = dg.In(dg.Nothing)
_CHECK_OUT = dg.Out(None, is_required=False)


def _output_name(key: dg.AssetKey, *extra: str) -> str:
    """The output name `@multi_asset` gives an asset (or its check) when that is a valid
    Dagster name; otherwise (Unicode or odd key parts) an ASCII form with a hash."""
    name = "_".join([key.to_python_identifier(), *extra])
    return name if re.fullmatch(r"[A-Za-z0-9_]+", name) else dagster_name(*key.path, *extra)


def _input_name(key: dg.AssetKey) -> str:
    """The input name Dagster's asset decorators give a dependency (`postgres_public_orders`):
    a copy of Dagster's private `stringify_asset_key_to_input_name`, which
    `test_group_asset_is_what_multi_asset_would_build` holds it to; an ASCII form with a hash
    for keys Dagster would refuse as a name."""
    name = "_".join(key.path).replace("-", "_").replace(".", "_")
    return name if re.fullmatch(r"[A-Za-z0-9_]+", name) else dagster_name(*key.path)




def build_group_asset(group: LoadGroup, ctx: AssetContext) -> dg.AssetsDefinition:
    """The step loading `group`'s tables: one asset per table, subsettable.

    What `@multi_asset(specs=..., check_specs=..., can_subset=True)` builds, constructed
    directly from an `OpDefinition` and an `AssetsDefinition`: the decorator inspects the
    compute function and re-derives and re-validates every input, output and the config
    schema per op, which took half the time of loading a 1,000-table code location. The
    compute function takes `(context, inputs)` (the form Dagster runs a directly constructed
    op with); `context` is the `AssetExecutionContext`. Names are the decorator's where
    Dagster accepts them (`_output_name`, `_input_name`).
    """
    specs = [table_spec(plan, ctx) for plan in group.plans]
    keys_by_input: dict[str, dg.AssetKey] = {}
    keys_by_output: dict[str, dg.AssetKey] = {}
    outs: dict[str, dg.Out] = {}
    checks_by_output: dict[str, dg.AssetCheckSpec] = {}
    for plan, spec in zip(group.plans, specs, strict=True):
        upstream = source_key(plan.table, ctx)
        keys_by_input[_input_name(upstream)] = upstream
        output = _output_name(spec.key)
        keys_by_output[output] = spec.key
        outs[output] = dg.Out(dg.Nothing, description=spec.description, metadata=spec.metadata,
                              is_required=False)
        for check in check_specs(plan, spec.key, ctx.fingerprint):
            checks_by_output[_output_name(spec.key, check.name)] = check
    outs.update(dict.fromkeys(checks_by_output, _CHECK_OUT))
    if captured_by(group.plans, ctx):
        # Change capture: after the catalog step, which reads the changes (a failed read
        # stops these steps rather than let them call a table unchanged).
        keys_by_input[_input_name(catalog_key(ctx))] = catalog_key(ctx)

    def _load(context: dg.AssetExecutionContext, inputs: Mapping[str, Any]
              ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        from pg_to_bq.orchestration.steps import run_step  # dlt: only when a step runs

        config = LoadConfig(**(context.op_execution_context.op_config or {}))
        resources = context.resources
        yield from run_step(context, group, ctx, config,
                            getattr(resources, ctx.names.source),
                            getattr(resources, ctx.names.destination))

    tags = {"pg_to_bq/tables": str(len(group.plans))}
    if group.single:
        tags["pg_to_bq/table"] = group.plans[0].name
    op = dg.OpDefinition(
        compute_fn=_load,
        name=group.name,
        ins=dict.fromkeys(keys_by_input, _SOURCE_IN),
        outs=outs,
        config_schema=LOAD_CONFIG_SCHEMA,
        required_resource_keys={ctx.names.source, ctx.names.destination},
        tags=tags,
        retry_policy=dg.RetryPolicy(max_retries=ctx.retries, delay=5,
                                    backoff=dg.Backoff.EXPONENTIAL),
        pool=ctx.pool,
    )
    return dg.AssetsDefinition(
        keys_by_input_name=keys_by_input,
        keys_by_output_name=keys_by_output,
        node_def=op,
        check_specs_by_output_name=checks_by_output,
        specs=specs,
        can_subset=True,
    )


def build_assets(
    plans: Sequence[TablePlan], ctx: AssetContext
) -> tuple[list[dg.AssetSpec], list[dg.AssetsDefinition]]:
    """Source specs for every table; loaded-table assets, in steps, for those with columns.

    A table without loadable columns keeps its source asset (so it is visible), whose
    metadata says why it is not loaded. A table whose overrides do not fit it keeps its
    loaded asset: materializing it fails with the reason.
    """
    loaded = [p for p in plans if p.columns or p.error]
    prefix = ctx.names.name("") if ctx.names.prefix else ""
    if ctx.cdc_publication is None:
        groups = group_plans(loaded, ctx.step_tables, ctx.own_step_bytes, prefix=prefix)
    else:
        # With change capture, the tables it may follow (a primary key) run after the
        # catalog step and the others in steps of their own, which a failed read of the
        # slot does not stop.
        groups = group_plans([p for p in loaded if p.primary_key], ctx.step_tables,
                             ctx.own_step_bytes, prefix=prefix) + \
            group_plans([p for p in loaded if not p.primary_key], ctx.step_tables,
                        ctx.own_step_bytes, prefix=f"{prefix}keyless_")
    return [source_spec(p, ctx) for p in plans], [build_group_asset(g, ctx) for g in groups]
