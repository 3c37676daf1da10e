"""Every batch read from PostgreSQL, in the Arrow types the plan asks for, and checked: a
value the destination cannot hold exactly fails the table with `LossyValueError` (naming
table, column, type and the override that fixes it), never a silent change."""

from __future__ import annotations

import hashlib
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from pg_to_bq.planning.errors import LossyValueError
from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.planning.types import ColumnMapping
from pg_to_bq.postgres.sql import guarded

# BigQuery's DATE/DATETIME/TIMESTAMP span years 1 to 9999; infinity sentinels fall outside.
_MIN_DAY = (date(1, 1, 1) - date(1970, 1, 1)).days


_MAX_DAY = (date(9999, 12, 31) - date(1970, 1, 1)).days


_MIN_US = _MIN_DAY * 86_400_000_000


_MAX_US = (_MAX_DAY + 1) * 86_400_000_000 - 1


_DAY_US = 86_400_000_000


def arrow_schema(plan: TablePlan) -> pa.Schema:
    """The batches' schema; a column is nullable exactly when its dlt column is (dlt rewrites
    a parquet file whose nullability differs from the table's)."""
    return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.dlt_hint()["nullable"])
                      for c in plan.columns])


def convert_batch(
    plan: TablePlan, raw: pa.RecordBatch, schema: pa.Schema, hash_salt: bytes | None = None
) -> pa.RecordBatch:
    """Convert one driver batch to the plan's Arrow types, checking every value.

    `raw` holds the plan's columns, then one guard column per column with `guard_sql`.
    """
    _check_guards(plan, raw)
    arrays = []
    for index, column in enumerate(plan.columns):
        array = raw.column(index)
        if isinstance(array, pa.ExtensionArray):
            array = array.storage
        arrays.append(_convert(plan, column, array, hash_salt))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _check_guards(plan: TablePlan, raw: pa.RecordBatch) -> None:
    first = len(plan.columns)
    if raw.num_columns <= first:
        return
    for offset, column in enumerate(guarded(plan)):
        problems = raw.column(first + offset)
        if problems.null_count < len(problems):
            raise LossyValueError(plan, column, str(pc.drop_null(problems)[0].as_py()))


def _convert(
    plan: TablePlan, column: ColumnMapping, array: pa.Array, hash_salt: bytes | None
) -> pa.Array:
    if column.transform == "hash":
        return _salted_hash(array, hash_salt or b"")
    if column.logical == "decimal":
        return _to_decimal(plan, column, array)
    if "finite_range" in column.checks:
        _check_range(plan, column, array)
    if "time_of_day" in column.checks:
        _check_time(plan, column, array)
    if array.type != column.arrow_type:
        array = array.cast(column.arrow_type)
    return array


def _check_range(plan: TablePlan, column: ColumnMapping, array: pa.Array) -> None:
    if array.null_count == len(array):
        return
    is_date = pa.types.is_date32(array.type)
    raw = array.view(pa.int32() if is_date else pa.int64())
    low, high = (_MIN_DAY, _MAX_DAY) if is_date else (_MIN_US, _MAX_US)
    bounds = pc.min_max(raw)
    lowest, highest = bounds["min"].as_py(), bounds["max"].as_py()
    if lowest >= low and highest <= high:
        return
    shown = _describe_out_of_range(lowest if lowest < low else highest, is_date)
    raise LossyValueError(
        plan, column,
        f"value {shown} is outside the years 1 to 9999 that BigQuery's DATE, DATETIME and "
        "TIMESTAMP hold (no destination type holds infinity)",
    )


# The driver shifts PostgreSQL's values (days or microseconds since 2000) to the Unix epoch
# in 32/64-bit arithmetic, so 'infinity' (the type's maximum) wraps around to just below
# '-infinity' (its minimum), and timestamps after the year 294247 wrap to the far past.
_PG_EPOCH_DAYS, _PG_EPOCH_US = 10_957, 946_684_800_000_000


_DATE_INFINITY = {-(2**31) + _PG_EPOCH_DAYS: "'-infinity'",
                  -(2**31) + _PG_EPOCH_DAYS - 1: "'infinity'",
                  -(2**31): "'-infinity'", 2**31 - 1: "'infinity'"}


_TIMESTAMP_INFINITY = {-(2**63) + _PG_EPOCH_US: "'-infinity'",
                       -(2**63) + _PG_EPOCH_US - 1: "'infinity'",
                       -(2**63): "'-infinity'", 2**63 - 1: "'infinity'"}


_PG_MIN_DAY = -2_440_588  # 4714-11-24 BC, PostgreSQL's first day


_PG_MIN_US = _PG_MIN_DAY * _DAY_US


def _describe_out_of_range(value: int, is_date: bool) -> str:
    sentinel = (_DATE_INFINITY if is_date else _TIMESTAMP_INFINITY).get(value)
    if sentinel:
        return sentinel
    if value < (_PG_MIN_DAY if is_date else _PG_MIN_US):
        return "after the year 294247"
    year = _civil_year(value if is_date else value // _DAY_US)
    return f"in the year {year}" if year > 0 else f"in the year {1 - year} BC"


def _civil_year(days: int) -> int:
    """The proleptic Gregorian year (0 = 1 BC) of a day counted from 1970-01-01.

    Howard Hinnant's civil_from_days, reduced to the year.
    """
    shifted = days + 719_468
    era = shifted // 146_097
    day_of_era = shifted - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524
                   - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    march_based_month = (5 * day_of_year + 2) // 153
    return year_of_era + era * 400 + (1 if march_based_month >= 10 else 0)


def _check_time(plan: TablePlan, column: ColumnMapping, array: pa.Array) -> None:
    if array.null_count == len(array):
        return
    highest = pc.max(array.view(pa.int64())).as_py()
    if highest is not None and highest >= _DAY_US:
        raise LossyValueError(plan, column, "value '24:00:00' is past the destination TIME's end "
                                            "23:59:59.999999")


def _to_decimal(plan: TablePlan, column: ColumnMapping, array: pa.Array) -> pa.Array:
    try:
        return pc.cast(array, column.arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for value in array.to_pylist():
        if value is None:
            continue
        try:
            pc.cast(pa.array([value]), column.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            shown = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(value, value)
            raise LossyValueError(
                plan, column,
                f"value {shown!r} does not fit DECIMAL({column.precision},{column.scale}) "
                "exactly (no decimal type holds NaN)",
            ) from None
    raise LossyValueError(plan, column, "values do not convert to an exact decimal")


def _salted_hash(array: pa.Array, salt: bytes) -> pa.Array:
    if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    return pa.array(
        [None if v is None else hashlib.sha256(salt + v.encode("utf-8")).hexdigest()
         for v in array.to_pylist()],
        type=pa.string(),
    )
