"""Value reconciliation of a loaded table against its PostgreSQL source ("fingerprint").

Row counts say every row arrived; they do not say the values did. A fingerprint reduces
each loaded column, on both sides, to its non-null count and an exact, order-independent
digest of its values, computed by one SQL query in PostgreSQL and one in the destination
(DuckDB or BigQuery). Equal fingerprints mean equal multisets of values per column; a
value changed, lost to NULL or rounded changes its column's digest, and the check names
that column.

How each column is digested is decided by the loaded type (`ColumnMapping.logical`). Every
digest is built from integers the three systems compute identically, summed exactly
(PostgreSQL `numeric`, DuckDB `HUGEINT`, BigQuery `BIGNUMERIC`), so the order of the
rows and the engines' parallelism never change a digest:

- integers: the value `c`; digest Σc and Σ(c mod P)², P = 2³¹−1. Σc changes with any
  single value; the sum of squares also catches changes that cancel in Σc (one value up
  by d, another down by d), except values swapped between rows (the same multiset).
- bool: the number of `true`.
- decimal: Σv exactly and Σ(u mod P)² of the unscaled integer u = v·10^scale.
- timestamps: `c` = microseconds since 2000-01-01 (PostgreSQL's binary form; DuckDB
  `epoch_us`, BigQuery `UNIX_MICROS`), digested like integers; dates as days since
  1970-01-01, times as microseconds since midnight.
- floats: `c` = the IEEE-754 bits of the double as a signed 64-bit integer (PostgreSQL
  `float8send`; DuckDB `CAST(x AS BIT)`; BigQuery, which has no bit access, rebuilds
  them exactly from exponent and mantissa), every NaN as the one canonical quiet NaN;
  digest Σc. Exact: 0.1 and 0.1 + 1 ulp differ, -0 and 0 differ, float32 rounding shows.
  (Summing the floats themselves depends on the order of the rows; their text forms
  differ between the systems: BigQuery documents its FLOAT64 → STRING cast as
  approximate.)
- text, JSON and everything read as text (uuid, interval, enums, arrays as JSON,
  numeric too wide for the destination, ...): `h` = the first 15 hex digits of the MD5 of
  the value's UTF-8 bytes, a 60-bit integer; digest Σh. Binary: the same over the bytes.
- hashed columns (`hash: true`): the salt never appears in SQL, so their values cannot
  be compared; their non-null counts are (a salted hash is NULL exactly when the value
  is). They are listed as not compared, with the reason.

What is compared ("scope") depends on the table's size: the whole table up to
`full_rows` rows; above, `ranges` ranges of about `range_rows` rows each of a
single-column integer primary key, placed by a seed (pass the load id, so successive
runs look at different rows); a large table without such a key has only its rows and
non-null counts compared, over the whole table, and the scope says so.

The PostgreSQL query reads each column through `ColumnMapping.select_sql`, the
expression the extraction copies, so it digests exactly what was loaded. Run it in a
transaction with the extraction's session settings (`pg_to_bq.postgres.reader.SESSION`: the text
of intervals, ranges and the like depends on them) and, to be exact under concurrent
writes, inside the snapshot the rows were extracted in. Rows written to the source after
that snapshot would otherwise show as differences.
"""

from pg_to_bq.checks.fingerprint.compare import compare, parse
from pg_to_bq.checks.fingerprint.destination import (
    destination_sql,
    destination_sql_many,
    split_many,
)
from pg_to_bq.checks.fingerprint.postgres import source_sql
from pg_to_bq.checks.fingerprint.scope import (
    DEFAULT_FULL_ROWS,
    DEFAULT_RANGE_ROWS,
    DEFAULT_RANGES,
    FINGERPRINT,
    METHODS,
    MODULUS,
    ColumnDigest,
    Fingerprint,
    Kind,
    Scope,
    bounds_sql,
    column_method,
    integer_key,
    not_compared,
    scope_for,
)
from pg_to_bq.checks.fingerprint.sql import qualified_name

__all__ = [
    "DEFAULT_FULL_ROWS", "DEFAULT_RANGES", "DEFAULT_RANGE_ROWS", "FINGERPRINT", "METHODS", "MODULUS",
    "ColumnDigest", "Fingerprint", "Kind", "Scope", "bounds_sql", "column_method", "compare",
    "destination_sql", "destination_sql_many", "integer_key", "not_compared", "parse",
    "qualified_name", "scope_for", "source_sql", "split_many",
]
