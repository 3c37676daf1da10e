"""The fingerprint's BigQuery dialect: exact integers rebuilt where BigQuery has no bit access."""

from __future__ import annotations

from pg_to_bq.checks.fingerprint.scope import MODULUS, NAN_BITS, PG_EPOCH_US, quote_for
from pg_to_bq.checks.fingerprint.sql import generic_aggregates
from pg_to_bq.planning.types import ColumnMapping

_INF_BITS = 0x7FF0_0000_0000_0000


_TWO_52 = 2**52


_TWO_63 = 2**63




def inner(column: ColumnMapping, method: str) -> list[str]:
    # Every function is GoogleSQL's (cloud.google.com/bigquery/docs/reference/standard-sql/):
    # MD5, TO_HEX, SUBSTR, CONCAT and CAST of a '0x' hex STRING to INT64 (string and
    # conversion functions); UNIX_MICROS, UNIX_DATE, TIME_DIFF (date and time functions);
    # IS_NAN, IS_INF, IEEE_DIVIDE, LOG, POW, FLOOR, ABS, LEAST, GREATEST, TRUNC, MOD
    # (mathematical functions); COUNT, COUNTIF, SUM over BIGNUMERIC (aggregate functions).
    value = quote_for("bigquery")(column.name)
    if method in ("count", "boolean"):
        return [value]
    if method == "integer":
        return [f"CAST({value} AS INT64)"]
    if method == "decimal":
        return [value, _bigquery_unscaled_residue(value, column.scale or 0)]
    if method == "timestamp":
        # dlt creates naive timestamps as TIMESTAMP too (the same digits, labelled UTC).
        return [f"UNIX_MICROS({value}) - {PG_EPOCH_US}"]
    if method == "date":
        return [f"UNIX_DATE({value})"]
    if method == "time":
        return [f"TIME_DIFF({value}, TIME '00:00:00', MICROSECOND)"]
    if method == "float":
        return [_bigquery_float_bits(value)]
    if method in ("text", "bytes"):
        # MD5 of a STRING hashes its UTF-8 bytes; MD5 of BYTES, the bytes.
        return [f"CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5({value})), 1, 15)) AS INT64)"]
    raise ValueError(f"no fingerprint method {method!r}")


def _bigquery_unscaled_residue(value: str, scale: int) -> str:
    """(v·10^scale) mod P of a NUMERIC or BIGNUMERIC v, exactly.

    A BIGNUMERIC(76,38)'s unscaled integer has 76 digits, more than BIGNUMERIC holds, so
    it is taken apart: the integer part and the fraction·10^scale (each fits), each reduced
    mod P, then combined. Both parts carry v's sign, so the result has it too, as
    PostgreSQL's mod() and DuckDB's % give it.
    """
    exact = f"CAST({value} AS BIGNUMERIC)"
    integer = f"TRUNC({exact})"
    fraction = f"(({exact} - {integer}) * BIGNUMERIC '1{'0' * scale}')"
    factor = pow(10, scale, MODULUS)
    return (f"CAST(MOD(MOD({integer}, {MODULUS}) * {factor} + MOD({fraction}, {MODULUS}), "
            f"{MODULUS}) AS INT64)")


def _bigquery_float_bits(value: str) -> str:
    """The IEEE-754 bits of a FLOAT64 as a signed INT64, from arithmetic alone.

    BigQuery has no bit access to a FLOAT64. With |x| = M·2^(E-52), M a 53-bit integer,
    the bits of |x| are (E + 1022)·2^52 + M (the exponent field is E + 1023 and M's
    leading 1 is implicit); subnormals have E = -1022 and M < 2^52, which the same
    formula covers. E starts as FLOOR(LOG(|x|, 2)), clamped to the doubles' exponents so
    POW never overflows, and is corrected by one either way (LOG may round across an
    integer); dividing by a power of two and multiplying by 2^52 are exact, so M is.
    Negative numbers set the sign bit (subtract 2^63), as the signed bits do elsewhere.
    """
    magnitude = f"ABS({value})"
    estimate = f"LEAST(GREATEST(FLOOR(LOG({magnitude}, 2)), -1074), 1023)"
    ratio = f"({magnitude} / POW(2, {estimate}))"
    exponent = f"GREATEST({estimate} + IF({ratio} >= 2, 1, 0) - IF({ratio} < 1, 1, 0), -1022)"
    bits = (f"(CAST({exponent} + 1022 AS INT64) * {_TWO_52} "
            f"+ CAST({magnitude} / POW(2, {exponent}) * {_TWO_52} AS INT64))")
    sign = f"{_TWO_63 - 1} - 1"  # 2^63 itself is no INT64 literal
    return (
        f"CASE WHEN IS_NAN({value}) THEN {NAN_BITS} "
        f"WHEN IS_INF({value}) THEN IF({value} > 0, {_INF_BITS}, {_INF_BITS} - {sign}) "
        # -0 = 0, but 1 / -0 is -inf
        f"WHEN {value} = 0 THEN IF(IEEE_DIVIDE(1, {value}) < 0, -{sign}, 0) "
        f"WHEN {value} < 0 THEN {bits} - {sign} "
        f"ELSE {bits} END"
    )


def aggregates(method: str, names: list[str], column: ColumnMapping) -> list[str]:
    # SUM(INT64) fails on overflow; a BIGNUMERIC sum holds 38 integer digits.
    return generic_aggregates(method, names, "COUNT({})", "SUM(CAST({} AS BIGNUMERIC))",
                               "COUNTIF({})")
