"""The catalog asset: PostgreSQL's tables as a run finds them, and the tables the definitions
do not have yet.

Part of the nightly job (and of `pg-to-bq sync` of everything). Its step:

1. discovers the catalog (one query; the table steps of the same run in this process use
   the same answer, `pg_to_bq.orchestration.steps.live_catalog`);
2. keeps it (`CatalogKeeper`: the snapshot file of the standalone code location, or the
   component's defs state), so the next load of the definitions has every table as its
   own asset;
3. reports tables that are gone (dropped, or renamed: PostgreSQL's object id says which)
   once, here, as warnings and metadata; their destination tables stay as they were;
4. loads the tables new since the definitions were built, through the same loader, and
   records a materialization on each one's future asset key, so the night that finds a
   table also copies it, without anyone reloading anything.
"""

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import dagster as dg

from pg_to_bq.orchestration.capture_step import run_capture, slot_check_spec
from pg_to_bq.orchestration.names import (
    CATALOG_STEP,
    SCHEDULE_TAG,
    AssetContext,
    catalog_key,
    destination_key,
)
from pg_to_bq.planning.catalog import Catalog, Table, with_former_names

if TYPE_CHECKING:
    from pg_to_bq.planning.settings import Settings

log = logging.getLogger(__name__)

class CatalogKeeper(Protocol):
    """Where a discovered catalog is kept for the next load of the definitions."""

    def save(self, catalog: Catalog, instance: dg.DagsterInstance) -> str:
        """Keep `catalog`; returns where it went, in words."""
        ...



def relations_of(catalog: Catalog, include_views: bool) -> Catalog:
    """The relations discovery returns for `include_views` (tables and partitioned tables,
    or views and foreign tables too)."""
    if include_views:
        return catalog
    return Catalog(tables=tuple(t for t in catalog.tables if t.kind in ("r", "p")),
                   database=catalog.database, discovered_at=catalog.discovered_at)


def compare(built: Catalog, live: Catalog) -> tuple[list[Table], list[str]]:
    """The tables new in `live`, and a line per table of `built` gone from it (dropped, or
    renamed: the object id stays when a table is renamed)."""
    known = {(t.schema, t.name) for t in built.tables}
    added = [t for t in live.tables if (t.schema, t.name) not in known]
    by_oid = {t.oid: t for t in live.tables if t.oid is not None}
    gone = []
    for table in built.tables:
        if live.get(table.schema, table.name) is not None:
            continue
        renamed = by_oid.get(table.oid) if table.oid is not None else None
        gone.append(f"{table.qualified_name}: renamed to {renamed.qualified_name}" if renamed
                    else f"{table.qualified_name}: no longer in PostgreSQL (dropped, or renamed)")
    return added, gone


def build_catalog_asset(settings: "Settings", built: Catalog, ctx: AssetContext,
                        keeper: CatalogKeeper) -> dg.AssetsDefinition:
    """The catalog asset of one mirrored database (see the module's docstring)."""
    from pg_to_bq.planning.tables import unused_settings

    names = ctx.names
    unused = unused_settings(settings, built)
    for sentence in unused:
        log.warning(sentence)

    @dg.multi_asset(
        name=names.name(CATALOG_STEP),
        specs=[dg.AssetSpec(
            catalog_key(ctx),
            description="PostgreSQL's tables, discovered again by every nightly run (one "
                        "query); tables new since the definitions were built are loaded by "
                        "this step, and have their own assets once the definitions are loaded "
                        "again" + "".join(f"\n\n**Selects nothing:** {u}" for u in unused),
            group_name=names.name("postgres"),
            kinds={"postgres"},
            tags={SCHEDULE_TAG: "nightly"},
        )],
        check_specs=[slot_check_spec(catalog_key(ctx))] if settings.cdc else None,
        required_resource_keys={names.source, names.destination},
        pool=ctx.pool,
    )
    def catalog(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return _refresh(context, settings, built, ctx, keeper)

    return catalog


def _refresh(context: dg.AssetExecutionContext, settings: "Settings", built: Catalog,
             ctx: AssetContext, keeper: CatalogKeeper) -> dg.MaterializeResult:
    from pg_to_bq.load.results import TableLoad
    from pg_to_bq.orchestration import progress
    from pg_to_bq.orchestration.steps import live_catalog, load_with, materialization_metadata
    from pg_to_bq.orchestration.storage_connections import hold_storage_connections
    from pg_to_bq.planning.groups import group_plans
    from pg_to_bq.planning.tables import plans_for, unused_settings

    hold_storage_connections(context.instance)
    started = time.monotonic()
    source = getattr(context.resources, ctx.names.source)
    destination = getattr(context.resources, ctx.names.destination)
    url = source.resolved_url()
    live = with_former_names(relations_of(
        live_catalog(context.run.run_id, url, ctx, source.statement_timeout_s),
        settings.include_views), built)
    where = keeper.save(live, context.instance)
    capture_metadata, slot_check = ({}, None)
    if settings.cdc:
        # Before the new tables are copied: the publication includes them first, so none of
        # their changes is missed.
        capture_metadata, slot_check = run_capture(context, settings, live, ctx, source,
                                                   destination, url)
    selected_built = built.select(settings.include, settings.exclude)
    added, gone = compare(selected_built, live.select(settings.include, settings.exclude))
    # (Each gone table's own step says so on its asset, and in the log.)
    added_names = {(t.schema, t.name) for t in added}
    new_plans = [p for p in plans_for(settings, live)
                 if (p.table.schema, p.table.name) in added_names and p.partition is None]
    # A new table whose plan has an error (an entry that does not fit it, or one left under
    # its former name) waits for its fix: said here, and by its own asset from the next load
    # of the definitions; it does not fail this step, which captured tables wait for.
    not_loaded = [f"{p.name}: {p.error}" for p in new_plans if p.error]
    for plan in (p for p in new_plans if p.error):
        context.log.error(f"{plan.name}: {plan.error}")
        progress.publish(progress.TableOutcome(plan.name, "failed", error=plan.error, new=True))
    new_plans = [p for p in new_plans if p.loadable]
    loaded, failed = [], []
    for group in group_plans(new_plans, ctx.step_tables, ctx.own_step_bytes,
                             prefix=ctx.names.name("new_") if ctx.names.prefix else "new_"):
        loads = [TableLoad(p, streams=source.streams_for(p.table.size_bytes))
                 for p in group.plans]
        for load, result in zip(loads, load_with(context, loads, group.pipeline_name, source,
                                                 destination, url, ctx), strict=True):
            if not result.ok:
                failed.append(f"{load.plan.name}: {result.error}")
                context.log.error(f"{result.error}\n\n{result.trace or ''}".rstrip())
                progress.publish(progress.TableOutcome(load.plan.name, "failed",
                                                       error=result.error, trace=result.trace,
                                                       new=True))
                continue
            loaded.append(load.plan.name)
            metadata = materialization_metadata(load.plan, None, result, ctx,
                                                result.destination_rows, None)
            metadata["pg_to_bq/new_table"] = "loaded by the catalog step the night it appeared"
            context.log_event(dg.AssetMaterialization(asset_key=destination_key(load.plan, ctx),
                                                      metadata=metadata))
            progress.publish(progress.TableOutcome(
                load.plan.name, "loaded", rows=result.rows, mode=result.mode,
                seconds=result.duration_s, new=True,
                notes=("new in PostgreSQL: loaded, and its own asset from the next load of "
                       "the definitions", *result.changes)))
    unused = unused_settings(settings, live)
    for sentence in unused:
        context.log.warning(sentence)
        progress.notice(f"warning: {sentence}")
    metadata: dict[str, Any] = {
        "tables": len(live.tables),
        "catalog": where,
        "new_tables_loaded": dg.MetadataValue.md("\n".join(f"- {n}" for n in loaded) or "-"),
        "gone_tables": dg.MetadataValue.md("\n".join(f"- {g}" for g in gone) or "-"),
        "new_tables_not_loaded": dg.MetadataValue.md(
            "\n".join(f"- {n}" for n in not_loaded) or "-"),
        "settings_selecting_nothing": dg.MetadataValue.md(
            "\n".join(f"- {u}" for u in unused) or "-"),
        "duration_s": round(time.monotonic() - started, 3),
        **capture_metadata,
    }
    if failed:
        raise dg.Failure(description=f"{len(failed)} new table(s) failed: " + " | ".join(failed),
                         metadata=metadata)
    return dg.MaterializeResult(metadata=metadata,
                                check_results=[slot_check] if slot_check is not None else None)
