"""The fingerprint's PostgreSQL side: one query over the columns as the extraction reads them."""

from __future__ import annotations

from pg_to_bq.checks.fingerprint.scope import MODULUS, NAN_BITS, Scope, source_table
from pg_to_bq.checks.fingerprint.sql import Dialect, generic_aggregates, select_parts
from pg_to_bq.planning.tables import TablePlan
from pg_to_bq.planning.types import ColumnMapping, quote_ident


def source_sql(plan: TablePlan, scope: Scope, *, server_encoding: str = "UTF8") -> str:
    """One SELECT returning one row: the fingerprint of `plan`'s table in PostgreSQL.

    Run it with the extraction's session settings, in its snapshot if possible (see the
    module's docstring).

    Args:
        plan: The table's plan (its `select_sql` expressions are what is digested).
        scope: From `scope_for`.
        server_encoding: The database's `server_encoding`. Text is hashed as the UTF-8 it
            was loaded as; in a database with another encoding it is converted first.
    """
    utf8 = server_encoding.upper().replace("-", "").replace("_", "") in ("UTF8", "UNICODE")
    dialect = Dialect(quote_ident, lambda c, m: _pg_inner(c, m, utf8), _pg_aggregates,
                       f"({{}} % {MODULUS})")
    # OFFSET 0 keeps PostgreSQL from merging the subquery into the aggregate, which would
    # compute each per-row value again for every aggregate using it.
    select, source = select_parts(plan, scope, dialect, source_table(plan), scope.source_where,
                             inner_suffix=" OFFSET 0")
    return f"SELECT {', '.join(select)} FROM {source}"




def _pg_inner(column: ColumnMapping, method: str, utf8: bool) -> list[str]:
    value = f"({column.select_sql})"
    if method == "count":
        # Every select_sql, and a salted hash, is NULL exactly when its column is.
        return [quote_ident(column.source.name)]
    if method == "integer":
        return [f"{value}::int8"]
    if method == "boolean":
        return [f"{value}::int4"]
    if method == "decimal":
        power = "1" + "0" * (column.scale or 0)
        return [value, f"mod({value} * {power}::numeric, {MODULUS})::int8"]
    if method == "timestamp":
        # The binary form is the int8 of microseconds since 2000-01-01 in every version
        # (extract(epoch ...) is a double, inexact, before PostgreSQL 14, and slower after).
        send = "timestamptz_send" if column.logical == "timestamptz" else "timestamp_send"
        return [_pg_int8_of_bytes(f"{send}({value})")]
    if method == "date":
        return [f"({value} - DATE '1970-01-01')::int8"]
    if method == "time":
        return [_pg_int8_of_bytes(f"time_send({value})")]
    if method == "float":
        double = f"{value}::float8"  # a real widens exactly, as it does on its way to a double
        return [f"CASE WHEN {double} = 'NaN'::float8 THEN {NAN_BITS} "
                f"ELSE {_pg_int8_of_bytes(f'float8send({double})')} END"]
    if method == "text":
        text = _pg_text(column, value)
        return [_pg_md5_60(text if utf8 else f"convert_to({text}, 'UTF8')")]
    if method == "bytes":
        return [_pg_md5_60(value)]
    raise ValueError(f"no fingerprint method {method!r}")


def _pg_int8_of_bytes(eight_bytes: str) -> str:
    return f"('x' || encode({eight_bytes}, 'hex'))::bit(64)::int8"


def _pg_text(column: ColumnMapping, value: str) -> str:
    """The text the extraction loads for a text or JSON column."""
    base = column.source.base_type_name or column.source.type_name
    if column.rule == "text" and base == "bpchar":
        # char(n) loads with its padding (binary COPY sends it); a cast to text strips it.
        return f"textin(bpcharout({value}))"
    return f"{value}::text"


def _pg_md5_60(value: str) -> str:
    return f"('x' || left(md5({value}), 15))::bit(60)::int8"


def _pg_aggregates(method: str, names: list[str], column: ColumnMapping) -> list[str]:
    # sum(int8) is numeric in PostgreSQL: exact at any size.
    return generic_aggregates(method, names, "count({})", "sum({})", "sum({})")
