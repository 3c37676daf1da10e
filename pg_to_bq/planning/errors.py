"""Find the real cause of a failed load and decide whether retrying can help."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pg_to_bq.planning.secrets import SecretError
from pg_to_bq.planning.tables import PlanError

if TYPE_CHECKING:
    from pg_to_bq.planning.tables import TablePlan
    from pg_to_bq.planning.types import ColumnMapping

# SQLSTATEs worth a retry: connection failures, serialization failures and deadlocks,
# server shutdown, and resource exhaustion. Everything else (permission denied, undefined
# table, a value that cannot be loaded) fails the same way again.
_TRANSIENT_SQLSTATE = re.compile(r"^(08|40001|40P01|57P0[123]|53)")
_TRANSIENT_NAMES = ("ConnectionResetError", "BrokenPipeError", "ServerError", "ServiceUnavailable",
                    "InternalServerError", "BadGateway", "GatewayTimeout", "TooManyRequests",
                    "ConnectionError", "Timeout")
_TRANSIENT_TEXT = re.compile(
    r"(server closed the connection unexpectedly|connection reset|could not serialize access|"
    r"terminating connection|deadlock detected|SQLSTATE: (08\w{3}|40001|40P01|57P0[123]))",
    re.IGNORECASE,
)


class LossyValueError(ValueError):
    """A value cannot be loaded without changing it. Names table, column, type and the fix."""

    def __init__(self, plan: TablePlan, column: ColumnMapping, problem: str):
        self.table = plan.name
        self.column = column.source.name
        self.pg_type = column.source.type
        super().__init__(
            f"table {plan.name}, column {column.source.name!r} ({column.source.type}): {problem}. "
            f"Nothing was loaded for this table. To load it, override the column in the tables "
            f"file (PG_TO_BQ_TABLES_FILE): tables: {{{plan.name}: {{columns: "
            f"{{{column.source.name}: {{cast: text}}}}}}}} keeps the value as text, or "
            f"{{exclude: true}} leaves the column out."
        )


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (dlt wraps ours in several layers)."""
    seen = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        nxt = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        if nxt is None:
            break
        current = nxt
    return current


def is_transient(exc: BaseException) -> bool:
    """True when the same load could succeed if tried again shortly."""
    cause = root_cause(exc)
    if isinstance(cause, LossyValueError | PlanError | SecretError):
        return False
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "sqlstate_", None)
    if isinstance(sqlstate, str):
        return bool(_TRANSIENT_SQLSTATE.match(sqlstate))
    if any(type(c).__name__ in _TRANSIENT_NAMES for c in (cause, exc)):
        return True
    return bool(_TRANSIENT_TEXT.search(str(cause)))


# PostgreSQL's own message inside a driver's (ADBC: "INVALID_ARGUMENT: [libpq] Failed to
# execute query: could not begin COPY: ERROR:  permission denied for table t. SQLSTATE: 42501").
_PG_MESSAGE = re.compile(r"ERROR:\s+(.+?)(?:\. SQLSTATE|\nQuery was|\n|$)")
_SQLSTATE = re.compile(r"SQLSTATE: ([0-9A-Z]{5})")
# How DuckDB words running out of its buffer pool (`memory_limit`): an OutOfMemoryException,
# or a commit that could not pin a block.
DUCKDB_OUT_OF_MEMORY = re.compile(r"Out of Memory Error|failed to pin block|could not allocate "
                                  r"block", re.IGNORECASE)
_DUCKDB_MEMORY_FIX = ("give DuckDB more memory: memory_limit in PG_TO_BQ_DESTINATION, e.g. "
                      "duckdb:///file.duckdb?memory_limit=1GB")
# What to do about a source error that fails the same way every time (42501, a missing
# privilege, is `_grant_fix`).
_FIXES = {
    "57014": "the statement timeout cut the read off: raise PG_TO_BQ_STATEMENT_TIMEOUT_S",
    "42P01": "the table is gone: it is reported, not loaded, once the catalog is refreshed "
             "(pg-to-bq sync --refresh-catalog)",
}


def describe(exc: BaseException, *, table: tuple[str, str] | None = None,
             role: str | None = None) -> str:
    """One line: the real cause of `exc`, PostgreSQL's own words for a source error, and
    the fix when one is known. A missing privilege's fix is the GRANT to run, naming
    `table` (schema, name) and `role` (the role pg_to_bq logs in as) when given."""
    cause = root_cause(exc)
    text = str(cause).strip() or type(cause).__name__
    if isinstance(cause, ValueError | ConnectionError):
        return text
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "sqlstate_", None)
    if not isinstance(sqlstate, str):
        match = _SQLSTATE.search(text)
        sqlstate = match.group(1) if match else None
    message = _PG_MESSAGE.search(text)
    line = f"PostgreSQL: {message.group(1)} (SQLSTATE {sqlstate})" if message and sqlstate \
        else f"{type(cause).__name__}: {one_line(text)}"
    if sqlstate == "42501":
        fix: str | None = _grant_fix(message.group(1) if message else text, table, role)
    else:
        fix = _FIXES.get(sqlstate) if sqlstate else None
    if fix is None and DUCKDB_OUT_OF_MEMORY.search(text):
        fix = _DUCKDB_MEMORY_FIX
    return f"{line}; to fix: {fix}" if fix else line


def one_line(text: str) -> str:
    """`text`'s first paragraph on one line: a failed table is one line of the CLI, and a
    driver's message can run on (DuckDB follows its own with a blank line and a list of
    generic "Possible solutions"; libpq adds a hint on a line of its own). The whole message
    stays in the exception, in Dagster's event log."""
    paragraph = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    return " ".join(paragraph.split())


_DENIED_SCHEMA = re.compile(r"permission denied for schema (.+)$")
_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_$]*$")


def _grant_fix(message: str, table: tuple[str, str] | None, role: str | None) -> str:
    """The GRANT(s) that give the role pg_to_bq logs in as what reading `table` needs."""
    grantee = _sql_name(role) if role else "<the role pg_to_bq logs in as>"
    grants = []
    schema = _DENIED_SCHEMA.search(message)
    if schema:
        grants.append(f"GRANT USAGE ON SCHEMA {_sql_name(schema.group(1))} TO {grantee};")
    if table:
        grants.append(f"GRANT SELECT ON {_sql_name(table[0])}.{_sql_name(table[1])} "
                      f"TO {grantee};")
    if not grants:
        return ("grant the role pg_to_bq logs in as SELECT on the table and USAGE on its "
                "schema (docs/security.md), or leave the table out (PG_TO_BQ_EXCLUDE)")
    return (f"run {' '.join(grants)} as the owner, or leave the table out "
            "(PG_TO_BQ_EXCLUDE)")


def _sql_name(name: str) -> str:
    """`name` as written in SQL: bare when PostgreSQL would fold it to itself, else quoted."""
    return name if _PLAIN_NAME.match(name) else '"' + name.replace('"', '""') + '"'
