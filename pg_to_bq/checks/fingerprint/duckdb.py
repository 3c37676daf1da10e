"""The fingerprint's DuckDB dialect."""

from __future__ import annotations

from pg_to_bq.checks.fingerprint.scope import MODULUS, NAN_BITS, PG_EPOCH_US, quote_for
from pg_to_bq.checks.fingerprint.sql import generic_aggregates
from pg_to_bq.planning.types import ColumnMapping

# In DuckDB, SUM over DECIMAL(p,s) returns DECIMAL(38,s) and fails on overflow; below
# this precision ten billion rows fit, above it the integer parts are summed as HUGEINT.
_DUCKDB_DECIMAL_SUM_PRECISION = 28




def inner(column: ColumnMapping, method: str) -> list[str]:
    value = quote_for("duckdb")(column.name)
    if method in ("count", "boolean"):
        return [value]
    if method == "integer":
        return [f"CAST({value} AS BIGINT)"]
    if method == "decimal":
        return [value, f"CAST({_duckdb_unscaled(value, column)} % {MODULUS} AS BIGINT)"]
    if method == "timestamp":
        return [f"epoch_us({value}) - {PG_EPOCH_US}"]
    if method == "date":
        return [f"CAST({value} - DATE '1970-01-01' AS BIGINT)"]
    if method == "time":
        return [f"date_diff('microsecond', TIME '00:00:00', {value})"]
    if method == "float":
        # A DOUBLE casts to BIT as its 64 bits, and BIT to BIGINT: the IEEE-754 bits.
        return [f"CASE WHEN isnan({value}) THEN {NAN_BITS} "
                f"ELSE CAST(CAST(CAST({value} AS DOUBLE) AS BIT) AS BIGINT) END"]
    if method == "text":
        # md5 of a VARCHAR hashes its UTF-8 bytes; a JSON column casts to its exact text.
        return [f"CAST('0x' || left(md5(CAST({value} AS VARCHAR)), 15) AS BIGINT)"]
    if method == "bytes":
        return [f"CAST('0x' || left(md5({value}), 15) AS BIGINT)"]
    raise ValueError(f"no fingerprint method {method!r}")


def _duckdb_unscaled(value: str, column: ColumnMapping) -> str:
    """The DECIMAL's unscaled integer (v·10^scale) as HUGEINT, exactly."""
    precision, scale = column.precision or 38, column.scale or 0
    if precision + scale <= 38:
        # DuckDB multiplies the unscaled integers: v·10^s is held as v·10^s·10^s.
        return f"CAST({value} * {10 ** scale} AS HUGEINT)"
    # Wider: the decimal's text without its point (38 digits fit a HUGEINT).
    return f"CAST(replace(CAST({value} AS VARCHAR), '.', '') AS HUGEINT)"


def aggregates(method: str, names: list[str], column: ColumnMapping) -> list[str]:
    # SUM(BIGINT) is a HUGEINT: exact for 2^64 rows of 63-bit values.
    aggregates = generic_aggregates(method, names, "count({})", "sum({})", "count_if({})")
    if method == "decimal" and (column.precision or 38) > _DUCKDB_DECIMAL_SUM_PRECISION:
        # SUM(DECIMAL(p,s)) is a DECIMAL(38,s) and fails above 10^(38-s): sum the integer
        # parts as HUGEINT and the fractions apart (parse adds them).
        value = names[0]
        aggregates[1:3] = [f"sum(CAST(trunc({value}) AS HUGEINT))",
                           f"sum({value} - trunc({value}))"]
    return aggregates
