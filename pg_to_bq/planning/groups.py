"""Which tables share a step: small tables load many to a step, large ones alone.

A step that loads one small table spends far more on machinery (a Dagster step, a dlt
pipeline's configuration, state restore, load package and schema update) than on its
rows; a step of many small tables pays those once (`pg_to_bq.load.group.load_group`). Large
tables keep a step of their own, so they load in parallel and retry alone.

Grouping is stable, because op names show in the UI's run history: a small table's group
is chosen by a hash of its name into a number of buckets that is a power of two, which
changes only when the number of small tables crosses one. A table that changes group (the
buckets doubled, it grew past the size limit, or `PG_TO_BQ_STEP_TABLES` changed) keeps its
state, which is kept by table in the destination (`pg_to_bq.load.state`): it is not read
again for the move.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from pg_to_bq.planning.settings import DEFAULT_OWN_STEP_BYTES, DEFAULT_STEP_TABLES
from pg_to_bq.planning.tables import TablePlan

# Tables of this many rows (or `DEFAULT_OWN_STEP_BYTES` on disk) load in a step of their own.
OWN_STEP_ROWS = 500_000


@dataclass(frozen=True)
class LoadGroup:
    """Tables loaded by one step (one Dagster op, one dlt pipeline)."""

    name: str
    pipeline_name: str
    plans: tuple[TablePlan, ...]

    @property
    def single(self) -> bool:
        return len(self.plans) == 1


def loads_alone(plan: TablePlan, own_step_bytes: int = DEFAULT_OWN_STEP_BYTES) -> bool:
    """Whether `plan`'s table gets a step of its own: large, or partitioned (a step's
    tables share one partitions definition)."""
    table = plan.table
    return (plan.partition is not None
            or (table.size_bytes or 0) >= own_step_bytes
            or (table.estimated_rows or 0) >= OWN_STEP_ROWS)


def group_plans(plans: Sequence[TablePlan], step_tables: int = DEFAULT_STEP_TABLES,
                own_step_bytes: int = DEFAULT_OWN_STEP_BYTES, prefix: str = "") -> list[LoadGroup]:
    """The steps that load `plans` (the module's rule); `prefix` keeps the names of several
    databases in one project apart."""
    alone = [p for p in plans if loads_alone(p, own_step_bytes)]
    small = [p for p in plans if not loads_alone(p, own_step_bytes)]
    groups = [LoadGroup(prefix + p.op_name, prefix + p.pipeline_name, (p,)) for p in alone]
    if small:
        buckets = _buckets(len(small), step_tables)
        members: dict[int, list[TablePlan]] = {}
        for plan in small:
            members.setdefault(bucket_of(plan, buckets), []).append(plan)
        width = len(str(buckets - 1))
        for bucket in sorted(members):
            suffix = f"_{bucket:0{width}d}_of_{buckets}" if buckets > 1 else ""
            groups.append(LoadGroup(f"{prefix}load_tables{suffix}",
                                    f"{prefix}pg_to_bq__tables{suffix}", tuple(members[bucket])))
    return groups


def _buckets(count: int, step_tables: int) -> int:
    needed = max(1, math.ceil(count / max(1, step_tables)))
    return 1 << (needed - 1).bit_length()


def bucket_of(plan: TablePlan, buckets: int) -> int:
    """The bucket of a small table: a hash of `schema.table`, stable across processes."""
    return zlib.crc32(plan.name.encode("utf-8")) % buckets
