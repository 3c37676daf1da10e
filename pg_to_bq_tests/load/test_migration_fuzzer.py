"""The migration fuzzer (issue 21): generated sequences of schema changes, writes, syncs and
kills, each sync followed by an exact comparison of every table with its copy.

A Hypothesis state machine drives a real PostgreSQL database and a real destination through
a user's entry points: `pg-to-bq sync` (in this process, or as a process killed with
SIGKILL at a random moment) or the scheduled job as the run worker runs it
(`dagster job execute`, a persistent `DAGSTER_HOME`), into a DuckDB file or the BigQuery
emulator. Its tables are a merged one (primary key + `updated_at`, an enum column), a
keyless one (replaced, duplicate rows) and a partitioned one (merged, through its root,
partitions attached as it goes); migrations add (with and without a default), drop and
rename columns, widen and narrow types, turn text into numbers and back, set and drop NOT
NULL, add and rename enum labels, rename, drop and create tables and attach partitions, add
columns back under names dropped or renamed away (and rename columns to such names); the
tables file hashes text columns or stops, and the hash salt changes;
writes insert, update (moving the cursor, or not moving it, anywhere), delete, and TRUNCATE
a table and put a share of its rows back with a column changed and their cursor values as
they were (a restore: the table's new storage tells pg_to_bq its cursor no longer covers
the rows); and a row of a copy is deleted by hand (DuckDB), which the next sync must fail
on, naming the change, or repair by reading the table whole.

What the product promises, and so what is compared after every sync that finished: every
table PostgreSQL has holds exactly its rows in every column it has now. (A merged table
above 32 MiB may keep rows deleted in PostgreSQL until its weekly delete pass; every table
here is smaller, and has its pass in the run that finds its copy holds more rows than
PostgreSQL.) Writes that change a merged
table's rows without moving its cursor are generated anywhere: its cursor cannot see them,
but every table here is small enough (up to 32 MiB) for its read to take the rows written
since the last one too (`pg_to_bq.load.cursor.written_since`); the same machine with change
capture on (`PG_TO_BQ_CDC`) sees them in the write-ahead log, and there every deleted row
must be gone after the next sync. Small merged tables are read whole when they change, by
default, or merged by their cursor (`PG_TO_BQ_READ_WHOLE_BYTES=0`, as larger tables are): a
sequence starts in either and switches between them (`read_whole`).

CI runs a fixed seed and a few short sequences per runner (`PG_TO_BQ_FUZZ_EXAMPLES`,
`PG_TO_BQ_FUZZ_STEPS`); the long run is a separate command (README, "Test"):

    PG_TO_BQ_FUZZ_EXAMPLES=200 PG_TO_BQ_FUZZ_STEPS=30 PG_TO_BQ_FUZZ_SEED=random \\
        .venv/bin/pytest pg_to_bq_tests/load/test_migration_fuzzer.py -p no:cacheprovider
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from pg_to_bq.cli.main import main
from pg_to_bq_tests.support.mirror_compare import (
    canonical,
    differences,
    duckdb_rows,
    source_columns,
    source_rows,
)

EXAMPLES = int(os.environ.get("PG_TO_BQ_FUZZ_EXAMPLES", "2"))
STEPS = int(os.environ.get("PG_TO_BQ_FUZZ_STEPS", "14"))
# Unset: Hypothesis's fixed, derandomized sequences (CI). "random": new ones each run (a
# failure prints the sequence that led to it).
SEED = os.environ.get("PG_TO_BQ_FUZZ_SEED")
BIN = Path(sys.executable).parent

# Columns a migration never touches: keys, the cursor, the partition key.
PROTECTED = {"id", "updated_at", "at"}
# Types a column can take, and the changes from each (USING clauses keep values exact or
# make them NULL where the new type cannot hold them, as an application's migration would).
CONVERSIONS: dict[str, list[tuple[str, str]]] = {
    "integer": [("bigint", "{c}"), ("text", "{c}::text"), ("numeric(14,4)", "{c}")],
    "bigint": [("integer", "CASE WHEN abs({c}) < 2000000000 THEN {c}::integer END"),
               ("text", "{c}::text")],
    "numeric(10,2)": [("numeric(14,4)", "{c}"), ("text", "{c}::text"),
                      ("double precision", "{c}::double precision")],
    "numeric(14,4)": [("numeric(10,2)", "round({c}, 2)"), ("text", "{c}::text")],
    "text": [("integer", "CASE WHEN {c} ~ '^-?[0-9]{{1,9}}$' THEN {c}::integer END"),
             ("numeric(10,2)", "CASE WHEN {c} ~ '^-?[0-9]{{1,7}}(\\.[0-9]{{1,2}})?$' "
                               "THEN {c}::numeric(10,2) END"),
             ("varchar(40)", "left({c}, 40)")],
    "varchar(40)": [("text", "{c}")],
    "double precision": [("numeric(14,4)", "round({c}::numeric, 4)")],
    "boolean": [("text", "{c}::text")],
    "timestamp with time zone": [("text", "{c}::text")],
}
NEW_COLUMN_TYPES = ["integer", "text", "numeric(10,2)", "boolean", "timestamp with time zone"]
DEFAULTS = {"integer": "7", "bigint": "7", "text": "'d'", "numeric(10,2)": "1.25",
            "numeric(14,4)": "1.2500", "boolean": "true", "varchar(40)": "'v'",
            "timestamp with time zone": "TIMESTAMPTZ '2026-01-02 03:04:05+00'",
            "double precision": "0.5"}


def value_sql(type_: str, rng: random.Random, nullable: bool = True) -> str:
    """A literal of `type_`, sometimes NULL (where it may be)."""
    if nullable and rng.random() < 0.15:
        return "NULL"
    n = rng.randint(-500, 5000)
    return {"integer": str(n), "bigint": str(n * 1000003), "text": f"'t{n}'",
            "numeric(10,2)": f"{n}.{rng.randint(0, 99):02d}",
            "numeric(14,4)": f"{n}.{rng.randint(0, 9999):04d}", "boolean": rng.choice(
                ["true", "false"]), "varchar(40)": f"'v{n}'",
            "timestamp with time zone": f"TIMESTAMPTZ '2026-01-01 00:00:00+00' + {n} * "
                                        "interval '1 minute'",
            "double precision": f"{n}.5",
            # labels may have been renamed: one of the first two, as they are called now
            "mood": f"(enum_range(NULL::mood))[{rng.randint(1, 2)}]"}[type_]


@dataclass
class Table:
    """What the machine knows of one source table: enough to write valid SQL for it."""

    name: str
    kind: str  # "merge", "keyless" or "partitioned"
    columns: dict[str, str] = field(default_factory=dict)  # non-protected name -> type
    not_null: set[str] = field(default_factory=set)
    next_id: int = 1
    partitions: int = 1
    # Names of columns dropped or renamed away: the destination keeps a column of each.
    gone: list[str] = field(default_factory=list)
    # Text columns the tables file hashes.
    hashed: set[str] = field(default_factory=set)

    @property
    def merged(self) -> bool:
        return self.kind != "keyless"


def create_sql(table: Table, rows: int, rng: random.Random) -> str:
    columns = ", ".join(f'"{c}" {t}' for c, t in table.columns.items())
    if table.kind == "keyless":
        sql = f'CREATE TABLE "{table.name}" ({columns});'
    elif table.kind == "merge":
        sql = (f'CREATE TABLE "{table.name}" (id bigint PRIMARY KEY, {columns}, '
               "updated_at timestamptz NOT NULL);")
    else:
        sql = (f'CREATE TABLE "{table.name}" (id bigint, at date NOT NULL, {columns}, '
               f"updated_at timestamptz NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);"
               f'CREATE TABLE "{table.name}_p0" PARTITION OF "{table.name}" '
               "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');")
    return sql + insert_sql(table, rows, rng, old=True)


def insert_sql(table: Table, rows: int, rng: random.Random, old: bool = False,
               partition: int = 0) -> str:
    """`rows` new rows; `old` gives them cursor values in the past, an hour apart (a first
    load, or a partition attached with its history): only the newest is inside a lookback
    window, so a write that leaves the cursor alone is one the cursor cannot see."""
    if rows == 0:
        return ""
    names = list(table.columns)
    values = []
    for _ in range(rows):
        row = [value_sql(table.columns[c], rng, c not in table.not_null) for c in names]
        if table.kind == "keyless":
            values.append(f"({', '.join(row)})")
            continue
        stamp = ("now() - interval '30 days' + " f"{table.next_id} * interval '1 hour'"
                 if old else "now()")
        at = f"DATE '2026-01-05' + {partition * 31}" if table.kind == "partitioned" else None
        values.append(f"({', '.join([str(table.next_id), *([at] if at else []), *row, stamp])})")
        table.next_id += 1
    listed = [*(["id"] if table.merged else []), *(["at"] if table.kind == "partitioned" else []),
              *names, *(["updated_at"] if table.merged else [])]
    quoted = ", ".join(f'"{c}"' for c in listed)
    return f'INSERT INTO "{table.name}" ({quoted}) VALUES {", ".join(values)};'


class Destination:
    """Where the copy lives and how the machine reads it back."""

    name: str

    def configure(self, env: dict[str, str], workdir: Path) -> None: ...

    def rows(self, table: str, columns: Sequence[str], where: str = "") -> Counter: ...

    def has_column(self, table: str, column: str) -> bool: ...


class DuckDBCopy(Destination):
    name = "duckdb"

    def configure(self, env: dict[str, str], workdir: Path) -> None:
        self.path = workdir / "copy.duckdb"
        env["PG_TO_BQ_DESTINATION"] = f"duckdb:///{self.path}"

    def rows(self, table: str, columns: Sequence[str], where: str = "") -> Counter:
        return duckdb_rows(self.path, "raw", table, columns, where)

    def has_column(self, table: str, column: str) -> bool:
        with duckdb.connect(str(self.path), read_only=True) as conn:
            return bool(conn.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'raw' "
                "AND table_name = ? AND column_name = ?", [table, column]).fetchone()[0])


class BigQueryCopy(Destination):
    name = "bigquery"

    def __init__(self, emulator) -> None:
        self.emulator = emulator

    def configure(self, env: dict[str, str], workdir: Path) -> None:
        self.dataset = "fuzz_" + workdir.name.replace("-", "_").lower()[-20:]
        env.update(PG_TO_BQ_DESTINATION="bigquery", PG_TO_BQ_DATASET=self.dataset,
                   PG_TO_BQ_BIGQUERY_PROJECT=self.emulator.project_id,
                   PG_TO_BQ_BIGQUERY_KEY_FILE=str(self.emulator.key_file(workdir)))

    def rows(self, table: str, columns: Sequence[str], where: str = "") -> Counter:
        listed = ", ".join(f"`{c}`" for c in columns)
        result = self.emulator.client().query_and_wait(
            f"SELECT {listed} FROM `{self.emulator.project_id}.{self.dataset}.{table}` {where}")
        return Counter(tuple(canonical(v) for v in row.values()) for row in result)

    def has_column(self, table: str, column: str) -> bool:
        table_ = self.emulator.client().get_table(
            f"{self.emulator.project_id}.{self.dataset}.{table}")
        return any(f.name == column for f in table_.schema)


LIVE = "WHERE _pg_to_bq_deleted_at IS NULL"
KEPT = "WHERE _pg_to_bq_deleted_at IS NOT NULL"


def fuzz_settings() -> settings:
    return settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
        derandomize=SEED is None, print_blob=True,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
        + ([Phase.shrink] if os.environ.get("PG_TO_BQ_FUZZ_SHRINK") else []),
        suppress_health_check=list(HealthCheck), report_multiple_bugs=False)


# Types whose values the fuzzer hashes through the tables file (the hash of the text).
HASHABLE = ("text", "varchar(40)")


def hashed_rows(rows: Counter, positions: Sequence[int], salt: bytes) -> Counter:
    """`rows` with the values at `positions` as pg_to_bq hashes them: the hex SHA-256 of the
    salt and the text."""
    if not positions:
        return rows
    def hashed(value):
        return None if value is None else hashlib.sha256(salt + value.encode()).hexdigest()
    return Counter({tuple(hashed(v) if i in positions else v for i, v in enumerate(row)): n
                    for row, n in rows.items()})


def make_machine(pg_server, destination: Destination, runner: str, cdc: bool = False,
                 soft: bool = False) -> type:
    """The state machine class for one runner ("cli" or "job") and destination; with `cdc`,
    change capture is on, and updates leave the cursor alone anywhere in a table; with
    `soft`, soft deletes are on: the live rows are compared with the source, and no key
    marked deleted may be one PostgreSQL has."""

    class Migrations(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.rng = random.Random(0)
            self.tables: dict[str, Table] = {}
            self.created = 0
            self.steps = 0
            self.workdir = Path(tempfile.mkdtemp(prefix="pg_to_bq_fuzz_"))
            self.database = pg_server.create_database("fuzz")
            self.url = pg_server.url(self.database)
            self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG_TO_BQ_")}
            self.env.update(PG_TO_BQ_SOURCE_URL=self.url, PG_TO_BQ_DATASET="raw",
                            PG_TO_BQ_WORK_DIR=str(self.workdir / "work"),
                            DAGSTER_HOME=str(self.workdir / "home"))
            if cdc:
                self.env.update(PG_TO_BQ_CDC="true", PG_TO_BQ_CDC_CRON="off")
            if soft:
                self.env.update(PG_TO_BQ_SOFT_DELETES="true")
            self.tables_file = self.workdir / "tables.yaml"
            self.env.update(PG_TO_BQ_TABLES_FILE=str(self.tables_file),
                            PG_TO_BQ_HASH_SALT="salt0")
            self.salts = 0
            (self.workdir / "home").mkdir()
            (self.workdir / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            destination.configure(self.env, self.workdir)
            self.saved_env = dict(os.environ)
            self.log: list[str] = []

        def sql(self, statements: str) -> None:
            self.log.append(statements)
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(statements)

        @initialize(seed=st.integers(0, 2**32 - 1))
        def start(self, seed: int) -> None:
            self.rng.seed(seed)
            self.read_whole(self.rng.random() < 0.5)
            self.sql("CREATE TYPE mood AS ENUM ('ok', 'sad');")
            for name, kind, columns in (
                    ("orders", "merge", {"amount": "numeric(10,2)", "note": "text",
                                         "qty": "integer", "mood": "mood"}),
                    ("log", "keyless", {"a": "integer", "b": "text"}),
                    ("parts", "partitioned", {"v": "text", "w": "numeric(10,2)"})):
                table = Table(name, kind, dict(columns))
                self.tables[name] = table
                self.sql(create_sql(table, self.rng.randint(0, 40), self.rng))
            self.sync_and_compare(apply_deletes=False)

        def teardown(self) -> None:
            os.environ.clear()
            os.environ.update(self.saved_env)
            pg_server.drop_database(self.database)
            shutil.rmtree(self.workdir, ignore_errors=True)

        # -- helpers ---------------------------------------------------------------
        def pick(self, data, predicate: Callable[[Table], bool] = lambda t: True) -> Table | None:
            candidates = sorted(n for n, t in self.tables.items() if predicate(t))
            return self.tables[data.draw(st.sampled_from(candidates))] if candidates else None

        def column(self, data, table: Table) -> str | None:
            free = sorted(c for c, t in table.columns.items() if t != "mood")
            return data.draw(st.sampled_from(free)) if free else None

        def new_name(self, prefix: str) -> str:
            self.created += 1
            return f"{prefix}{self.created}"

        # -- migrations ------------------------------------------------------------
        @rule(data=st.data(), type_=st.sampled_from(NEW_COLUMN_TYPES), default=st.booleans())
        def add_column(self, data, type_: str, default: bool) -> None:
            table = self.pick(data)
            name = self.new_name("c")
            clause = f" DEFAULT {DEFAULTS[type_]}" if default else ""
            self.sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{name}" {type_}{clause}')
            table.columns[name] = type_

        @rule(data=st.data())
        def drop_column(self, data) -> None:
            table = self.pick(data, lambda t: len(t.columns) > 1)
            column = table and self.column(data, table)
            if column:
                self.sql(f'ALTER TABLE "{table.name}" DROP COLUMN "{column}"')
                del table.columns[column]
                table.not_null.discard(column)
                table.gone.append(column)
                table.hashed.discard(column)

        @rule(data=st.data(), type_=st.sampled_from(NEW_COLUMN_TYPES), default=st.booleans())
        def add_column_back(self, data, type_: str, default: bool) -> None:
            """A name dropped (or renamed away) before, added again: the destination's
            column of that name holds values PostgreSQL no longer has."""
            table = self.pick(data, lambda t: bool(t.gone))
            if table is None:
                return
            name = data.draw(st.sampled_from(table.gone))
            clause = f" DEFAULT {DEFAULTS[type_]}" if default else ""
            self.sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{name}" {type_}{clause}')
            table.gone.remove(name)
            table.columns[name] = type_

        @rule(data=st.data())
        def rename_column_to_a_gone_name(self, data) -> None:
            """A column renamed to the name of one dropped or renamed away before (columns
            swapping names): the destination's column of that name held another's values."""
            table = self.pick(data, lambda t: bool(t.gone))
            column = table and self.column(data, table)
            if not column:
                return
            name = data.draw(st.sampled_from(table.gone))
            self.sql(f'ALTER TABLE "{table.name}" RENAME COLUMN "{column}" TO "{name}"')
            table.gone.remove(name)
            table.gone.append(column)
            table.columns[name] = table.columns.pop(column)
            if column in table.hashed:  # (the user renames it in the tables file too)
                table.hashed = (table.hashed - {column}) | {name}
            if column in table.not_null:
                table.not_null = (table.not_null - {column}) | {name}

        @rule(data=st.data())
        def rename_column(self, data) -> None:
            table = self.pick(data)
            column = self.column(data, table)
            if column:
                name = self.new_name("r")
                self.sql(f'ALTER TABLE "{table.name}" RENAME COLUMN "{column}" TO "{name}"')
                table.columns[name] = table.columns.pop(column)
                table.gone.append(column)
                if column in table.hashed:
                    table.hashed = (table.hashed - {column}) | {name}
                if column in table.not_null:
                    table.not_null = (table.not_null - {column}) | {name}

        @rule(data=st.data())
        def change_type(self, data) -> None:
            table = self.pick(data)
            column = self.column(data, table)
            if not column:
                return
            target, using = data.draw(st.sampled_from(CONVERSIONS[table.columns[column]]))
            using = using.format(c=f'"{column}"')
            if column in table.not_null:  # a value the new type cannot hold takes a default
                using = f"coalesce(({using}), {DEFAULTS[target]})"
            # (A default of the old type may not cast to the new one: the migration drops it.)
            self.sql(f'ALTER TABLE "{table.name}" ALTER COLUMN "{column}" DROP DEFAULT, '
                     f'ALTER COLUMN "{column}" TYPE {target} USING {using}')
            table.columns[column] = target
            if target not in HASHABLE:
                table.hashed.discard(column)

        @rule(data=st.data())
        def hash_column(self, data) -> None:
            """The tables file hashes a text column."""
            # (Any table: one created or renamed since the last sync too, which the catalog
            # snapshot does not have yet.)
            table = self.pick(data, lambda t: any(
                c not in t.hashed and type_ in HASHABLE for c, type_ in t.columns.items()))
            if table is None:
                return
            table.hashed.add(data.draw(st.sampled_from(sorted(
                c for c, type_ in table.columns.items()
                if type_ in HASHABLE and c not in table.hashed))))
            self.log.append(f"tables file: {table.name} hashes {sorted(table.hashed)}")

        @rule(data=st.data())
        def unhash_column(self, data) -> None:
            """The tables file no longer hashes a column."""
            table = self.pick(data, lambda t: bool(t.hashed))
            if table is None:
                return
            table.hashed.discard(data.draw(st.sampled_from(sorted(table.hashed))))
            self.log.append(f"tables file: {table.name} hashes {sorted(table.hashed)}")

        @rule(whole=st.booleans())
        def read_whole(self, whole: bool) -> None:
            """Small merged tables read whole when they change (the default), or merged by
            their cursor as larger ones are (`PG_TO_BQ_READ_WHOLE_BYTES=0`): switching
            between the two between syncs, as a table growing past the size does."""
            if whole:
                self.env.pop("PG_TO_BQ_READ_WHOLE_BYTES", None)
            else:
                self.env["PG_TO_BQ_READ_WHOLE_BYTES"] = "0"
            self.log.append(f"small tables {'read whole' if whole else 'merged by cursor'}")

        @rule()
        def change_salt(self) -> None:
            self.salts += 1
            self.env["PG_TO_BQ_HASH_SALT"] = f"salt{self.salts}"
            self.log.append(f"hash salt: salt{self.salts}")

        @rule(data=st.data(), on=st.booleans())
        def not_null(self, data, on: bool) -> None:
            table = self.pick(data)
            column = self.column(data, table)
            if not column:
                return
            if on:
                cursor = ", updated_at = now()" if table.merged else ""
                self.sql(f'UPDATE "{table.name}" SET "{column}" = {DEFAULTS[table.columns[column]]}'
                         f'{cursor} WHERE "{column}" IS NULL;'
                         f'ALTER TABLE "{table.name}" ALTER COLUMN "{column}" SET NOT NULL')
                table.not_null.add(column)
            else:
                self.sql(f'ALTER TABLE "{table.name}" ALTER COLUMN "{column}" DROP NOT NULL')
                table.not_null.discard(column)

        @rule(rename=st.booleans())
        def enum_label(self, rename: bool) -> None:
            if rename:
                with psycopg.connect(self.url) as conn:
                    labels = [r[0] for r in conn.execute(
                        "SELECT unnest(enum_range(NULL::mood))::text").fetchall()]
                old = self.rng.choice(labels)
                self.sql(f"ALTER TYPE mood RENAME VALUE '{old}' TO '{old}x'")
            else:
                self.sql(f"ALTER TYPE mood ADD VALUE '{self.new_name('m')}'")

        @rule(data=st.data(), action=st.sampled_from(["rename", "drop", "create"]))
        def table_change(self, data, action: str) -> None:
            if action == "create" or len(self.tables) <= 1:
                kind = data.draw(st.sampled_from(["merge", "keyless"]))
                table = Table(self.new_name("t"), kind, {"x": "integer", "y": "text"})
                self.sql(create_sql(table, self.rng.randint(0, 30), self.rng))
                self.tables[table.name] = table
                return
            table = self.pick(data)
            if action == "drop":
                self.sql(f'DROP TABLE "{table.name}" CASCADE')
                del self.tables[table.name]
            else:
                old, table.name = table.name, self.new_name(table.name.rstrip("0123456789_") + "_")
                if table.hashed and not data.draw(st.booleans(), label="entry moves too"):
                    # (The entry goes; the one case not drawn, an entry left under the old
                    # name, holds the table back: pg_to_bq_tests/cli/test_names_the_catalog_lacks.py.)
                    table.hashed.clear()
                self.sql(f'ALTER TABLE "{old}" RENAME TO "{table.name}"')
                self.tables[table.name] = self.tables.pop(old)

        @rule(data=st.data(), rows=st.integers(0, 20))
        def attach_partition(self, data, rows: int) -> None:
            table = self.pick(data, lambda t: t.kind == "partitioned")
            if table is None:
                return
            n = table.partitions
            part = f"{table.name}_p{n}"
            start = f"DATE '2026-01-01' + {n * 31}"
            self.sql(f'CREATE TABLE "{part}" (LIKE "{table.name}" INCLUDING DEFAULTS);'
                     + insert_sql(Table(part, "partitioned", table.columns, table.not_null,
                                        next_id=table.next_id), rows, self.rng, old=True,
                                  partition=n)
                     + f'ALTER TABLE "{table.name}" ATTACH PARTITION "{part}" FOR VALUES FROM '
                       f"({start}) TO ({start} + 31)")
            table.next_id += rows
            table.partitions += 1

        # -- writes ----------------------------------------------------------------
        @rule(data=st.data(), rows=st.integers(1, 30))
        def insert(self, data, rows: int) -> None:
            table = self.pick(data)
            partition = self.rng.randrange(table.partitions) if table.kind == "partitioned" \
                else 0
            self.sql(insert_sql(table, rows, self.rng, partition=partition))

        @rule(data=st.data(), moving=st.booleans(), share=st.integers(1, 50))
        def update(self, data, moving: bool, share: int) -> None:
            table = self.pick(data)
            column = self.column(data, table)
            if not column:
                return
            value = value_sql(table.columns[column], self.rng, column not in table.not_null)
            where = f"random() * 100 < {share}"
            if not table.merged:
                self.sql(f'UPDATE "{table.name}" SET "{column}" = {value} WHERE {where}')
            elif moving:
                self.sql(f'UPDATE "{table.name}" SET "{column}" = {value}, updated_at = now() '
                         f"WHERE {where}")
            else:
                # Anywhere in the table, the cursor left as it was: change capture sees
                # these; without it, a merged table small enough for its row versions to be
                # scanned (every table here) reads the rows written since its last read.
                self.sql(f'UPDATE "{table.name}" SET "{column}" = {value} WHERE {where}')

        @rule(data=st.data(), share=st.integers(1, 30))
        def delete(self, data, share: int) -> None:
            table = self.pick(data)
            if table.merged:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    gone = conn.execute(f'DELETE FROM "{table.name}" WHERE random() * 100 < '
                                        f"{share} RETURNING id").fetchall()
                self.log.append(f"DELETE FROM {table.name}: {len(gone)} rows")
            else:
                self.sql(f'DELETE FROM "{table.name}" WHERE random() * 100 < {share}')

        @rule(data=st.data(), share=st.integers(30, 100))
        def truncate_and_restore(self, data, share: int) -> None:
            """TRUNCATE, then a share of the rows put back with a column changed and their
            cursor values as they were (a restore from a dump): no cursor moves."""
            table = self.pick(data)
            column = self.column(data, table)
            value = value_sql(table.columns[column], self.rng, column not in table.not_null) \
                if column else None
            quoted = f'"{table.name}"'
            with psycopg.connect(self.url, autocommit=True) as conn:
                before = {int(r[0]) for r in conn.execute(f"SELECT id FROM {quoted}")} \
                    if table.merged else set()
                conn.execute(f"CREATE TEMP TABLE restored AS SELECT * FROM {quoted} "
                             f"WHERE random() * 100 < {share}")
                if column:
                    conn.execute(f'UPDATE restored SET "{column}" = {value}')
                conn.execute(f"TRUNCATE {quoted}")
                conn.execute(f"INSERT INTO {quoted} SELECT * FROM restored")
                after = {int(r[0]) for r in conn.execute(f"SELECT id FROM {quoted}")} \
                    if table.merged else set()
            self.log.append(f"TRUNCATE {table.name}, {len(after)} of {len(before)} rows put "
                            f"back, {column} = {value}")

        @rule(data=st.data(), how=st.sampled_from(["delete a row", "set a value to NULL"]))
        def edit_copy_by_hand(self, data, how: str) -> None:
            """A table's copy changed behind pg_to_bq's back (DuckDB): a row deleted (the
            state's row count is then in doubt: read whole, saying why), or a value set to
            NULL (its figures differ). The next sync either fails the table, saying its
            destination changed since the last load, and the one after reads it whole; or it
            reads the table whole that run (it changed in PostgreSQL too, or its state was
            in doubt), saying so: exact after it either way. Never a sync that ends well
            with the copy still changed."""
            if destination.name != "duckdb":
                return
            table = self.pick(data)
            column = self.column(data, table) if table is not None else None
            if column is None:
                return
            quoted, named = f'raw."{table.name}"', f'"{column}"'
            with duckdb.connect(str(destination.path)) as conn:
                if not conn.execute("SELECT count(*) FROM information_schema.columns WHERE "
                                    "table_schema = 'raw' AND table_name = ? AND "
                                    "column_name = ?", [table.name, column]).fetchone()[0]:
                    return
                try:
                    (changed,) = conn.execute(
                        f"DELETE FROM {quoted} WHERE rowid = (SELECT min(rowid) FROM {quoted})"
                        if how == "delete a row" else
                        f"UPDATE {quoted} SET {named} = NULL WHERE rowid = (SELECT min(rowid) "
                        f"FROM {quoted} WHERE {named} IS NOT NULL)").fetchone()
                except duckdb.ConstraintException:  # (a NOT NULL column)
                    return
            if not changed:
                return
            self.log.append(f"{table.name}'s copy changed by hand: {how} ({column})")
            status, printed = self.run_sync(apply_deletes=False)
            line = next((x for x in printed.splitlines()
                         if f"public.{table.name}:" in x and "] " in x), "")
            if status == 0:
                if runner == "cli":  # (the job's output is Dagster's log)
                    assert f"public.{table.name}: unchanged" not in line \
                        and "(incremental)" not in line, self.history(
                            f"the copy changed by hand was not read whole: {line}")
                    assert "(full: " in line or "whole read replaced it" in line, self.history(
                        f"the copy changed by hand was replaced without a word: {line}")
                self.compare()
            else:
                assert f"public.{table.name}" in printed and "changed since the last load " \
                    "(not by pg_to_bq)" in printed, self.history(
                        f"sync exited {status}, not for the copy changed by hand: "
                        f"{printed[-3000:]}")
                self.sync_and_compare(apply_deletes=False)

        # -- syncs -----------------------------------------------------------------
        @rule(apply_deletes=st.booleans())
        def sync(self, apply_deletes: bool) -> None:
            self.sync_and_compare(apply_deletes)

        @invariant()
        def sync_every_third_step(self) -> None:
            """A sync (and its comparison) every third step, whichever rules a sequence
            draws: Hypothesis leaves a random subset of the rules out of each sequence
            (swarm testing), and some sequences had no sync after their changes at all."""
            self.steps += 1
            if self.steps % 3 == 0 and self.tables:
                self.sync_and_compare(apply_deletes=False)

        @rule(after=st.floats(0.2, 6.0))
        def killed_sync(self, after: float) -> None:
            """A sync killed with SIGKILL (the whole process group) at a random moment."""
            self.write_tables_file()
            process = subprocess.Popen(self.command(apply_deletes=False), env=self.env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
            deadline = time.monotonic() + after
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.05)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
            self.log.append(f"killed after {after:.1f} s")

        def write_tables_file(self) -> None:
            hashed = {f"public.{t.name}": {"columns": {c: {"hash": True} for c in sorted(t.hashed)}}
                      for t in self.tables.values() if t.hashed}
            self.tables_file.write_text(json.dumps({"tables": hashed}))

        def command(self, apply_deletes: bool) -> list[str]:
            if runner == "job":
                tags = ["--tags", json.dumps({"pg_to_bq/apply_deletes": "true"})] \
                    if apply_deletes else []
                return [str(BIN / "dagster"), "job", "execute", "-m", "pg_to_bq.definitions",
                        "-j", "mirror_all_tables", *tags]
            return [sys.executable, "-m", "pg_to_bq.cli", "sync",
                    *(["--apply-deletes"] if apply_deletes else [])]

        def run_sync(self, apply_deletes: bool) -> tuple[int, str]:
            """One sync as the runner runs it: its exit status and what it printed."""
            self.log.append(f"sync (apply_deletes={apply_deletes})")
            self.write_tables_file()
            if runner == "cli":
                os.environ.clear()
                os.environ.update(self.env)
                printed = io.StringIO()
                try:
                    with contextlib.redirect_stdout(printed):
                        status = main(["sync", *(["--apply-deletes"] if apply_deletes else [])])
                finally:
                    os.environ.clear()
                    os.environ.update(self.saved_env)
                return status, printed.getvalue()
            out = subprocess.run(self.command(apply_deletes), env=self.env,
                                 capture_output=True, text=True, timeout=900)
            return out.returncode, out.stdout + out.stderr

        def sync_and_compare(self, apply_deletes: bool) -> None:
            status, printed = self.run_sync(apply_deletes)
            assert status == 0, self.history(f"sync exited {status}: {printed[-3000:]}")
            # Every table here is small (up to 32 MiB): a merged one whose copy holds more
            # rows than PostgreSQL after its merge has its delete pass in the same run
            # (`_GroupRun.deleted_in_source`), and change capture deletes what PostgreSQL
            # deleted: no deleted row may remain after any sync.
            self.compare()

        def compare(self) -> None:
            for table in self.tables.values():
                columns = source_columns(self.url, table.name)
                source = hashed_rows(source_rows(self.url, table.name, columns),
                                     [columns.index(c) for c in table.hashed],
                                     self.env["PG_TO_BQ_HASH_SALT"].encode())
                marked = soft and destination.has_column(table.name, "_pg_to_bq_deleted_at")
                copy = destination.rows(table.name, columns, LIVE if marked else "")
                if marked and "id" in columns:
                    key = columns.index("id")
                    kept = destination.rows(table.name, ["id"], KEPT)
                    both = {row[0] for row in kept} & {row[key] for row in source}
                    assert not both, self.history(
                        f"{table.name}: keys PostgreSQL has are marked deleted: {sorted(both)[:5]}")
                problem = differences(source, copy)
                assert not problem, self.history(f"{table.name}: {problem}")

        def history(self, message: str) -> str:
            return message + "\n\nwhat led there:\n" + "\n".join(self.log[-40:])

    return Migrations


@pytest.mark.parametrize("runner", ["cli", "job"])
def test_migrations_into_duckdb(pg_server, runner: str) -> None:
    machine = make_machine(pg_server, DuckDBCopy(), runner)
    run_state_machine_as_test(machine, settings=fuzz_settings())


@pytest.mark.bigquery
def test_migrations_into_bigquery(pg_server, bigquery_emulator) -> None:
    machine = make_machine(pg_server, BigQueryCopy(bigquery_emulator), "cli")
    run_state_machine_as_test(machine, settings=fuzz_settings())


@pytest.mark.parametrize("runner", ["cli", "job"])
def test_migrations_with_soft_deletes(pg_server, runner: str) -> None:
    """Soft deletes on, with change capture (the CLI) and without it (the scheduled job,
    where the delete pass and every whole read mark the rows): the live rows are exact after
    every sync, through schema changes, reloads under new types, partitions and kills."""
    machine = make_machine(pg_server, DuckDBCopy(), runner, cdc=runner == "cli", soft=True)
    run_state_machine_as_test(machine, settings=fuzz_settings())


@pytest.mark.parametrize("runner", ["cli", "job"])
def test_migrations_with_change_capture(pg_server, runner: str) -> None:
    """Change capture on (issue 24): every update, wherever it is, and every delete is in
    the copy after the next sync, through schema changes, attached partitions and kills."""
    machine = make_machine(pg_server, DuckDBCopy(), runner, cdc=True)
    run_state_machine_as_test(machine, settings=fuzz_settings())
