"""Loading the code location with 1,000 tables in the catalog.

Three measurements, each `import pg_to_bq.definitions` then `defs.get_repository_def()` in a
fresh interpreter, timed as a whole and without `import dagster` (which the process that
loads a code location, `dagster api grpc` or `dagster dev`, has done already):

* snapshot: a synthetic 1,000-table catalog snapshot (`write_snapshot`), and
  `PG_TO_BQ_SOURCE_URL` pointing at a listener that only counts connections — there
  must be none;
* the same snapshot with the source given as a Secrets Manager secret id (as in
  production), which adds the `secrets` resource (pg_to_bq's boto3-based `SecretsManager`;
  boto3 itself is imported only when a secret is read);
* live: the same 1,000 tables created in PostgreSQL, no snapshot, and the source URL
  pointing at a proxy in front of PostgreSQL that counts connections and the statements
  sent (simple-query `Q` and extended-protocol `Parse` messages, read off the wire, so
  any driver is counted). The catalog must come from exactly one catalog query.

For comparison, dlt's `sql_database` reflecting the same tables, in its own process.

    .venv/bin/python benchmarks/definitions_scale.py postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

SCHEMAS = 10
DATABASE = "defs_scale"

# What `pg_to_bq.planning.catalog.discover` returns for these column types (checked against PG 18).
_COLUMN_TYPES = [
    ("id", "bigint", "int8", "N", -1, False),
    ("quantity", "integer", "int4", "N", -1, False),
    ("name", "text", "text", "S", -1, False),
    ("email", "text", "text", "S", -1, True),
    ("note", "text", "text", "S", -1, True),
    ("amount", "numeric(12,2)", "numeric", "N", 786438, True),
    ("score", "double precision", "float8", "N", -1, True),
    ("active", "boolean", "bool", "B", -1, False),
    ("created_at", "timestamp with time zone", "timestamptz", "D", -1, False),
    ("updated_at", "timestamp with time zone", "timestamptz", "D", -1, False),
    ("payload", "jsonb", "jsonb", "U", -1, True),
    ("ref", "uuid", "uuid", "U", -1, False),
]


def table_specs(count: int) -> list[dict]:
    """`count` tables over SCHEMAS schemas; 12 columns each. Two in three have an
    `updated_at` cursor (incremental merge), the rest a `changed_at` (replace); every fifth
    refers to the previous table of its schema."""
    specs = []
    for i in range(count):
        schema = "public" if i % SCHEMAS == 0 else f"app{i % SCHEMAS:02d}"
        name = f"t{i:04d}"
        columns = [dict(zip(("name", "type", "type_name", "type_category", "typmod", "nullable"),
                            c, strict=True)) for c in _COLUMN_TYPES]
        if i % 3 == 2:
            columns[9]["name"] = "changed_at"
        fk = None
        if i % 5 == 4 and i >= SCHEMAS:
            fk = {"name": f"{name}_parent_fk", "columns": ["quantity"], "referred_schema": schema,
                  "referred_table": f"t{i - SCHEMAS:04d}", "referred_columns": ["id"]}
            columns[1]["type"], columns[1]["type_name"] = "bigint", "int8"
        specs.append({"schema": schema, "name": name, "columns": columns, "fk": fk,
                      "comment": f"synthetic table {i} of {count}"})
    return specs


def write_synthetic_snapshot(specs: list[dict], path: Path) -> None:
    from pg_to_bq.planning.catalog import Catalog, Column, ForeignKey, Table, write_snapshot

    tables = []
    for spec in specs:
        fk = spec["fk"]
        tables.append(Table(
            schema=spec["schema"], name=spec["name"], kind="r", comment=spec["comment"],
            estimated_rows=10_000, size_bytes=2_000_000,
            columns=tuple(Column(name=c["name"], type=c["type"], type_name=c["type_name"],
                                 type_category=c["type_category"], typmod=c["typmod"],
                                 nullable=c["nullable"]) for c in spec["columns"]),
            primary_key=("id",),
            foreign_keys=(ForeignKey(fk["name"], tuple(fk["columns"]), fk["referred_schema"],
                                     fk["referred_table"], tuple(fk["referred_columns"])),)
            if fk else (),
        ))
    tables.sort(key=lambda t: (t.schema, t.name))
    write_snapshot(Catalog(tables=tuple(tables), database=DATABASE), path)


def create_tables(admin_url: str, specs: list[dict]) -> str:
    """Create DATABASE (fresh) with the tables of `specs`; returns its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    url = admin_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    statements = [f"CREATE SCHEMA IF NOT EXISTS {s}"
                  for s in sorted({spec["schema"] for spec in specs})]
    for spec in specs:
        qualified = f'{spec["schema"]}.{spec["name"]}'
        cols = []
        for c in spec["columns"]:
            cols.append(f'{c["name"]} {c["type"]}{"" if c["nullable"] else " NOT NULL"}')
        cols.append("PRIMARY KEY (id)")
        fk = spec["fk"]
        if fk:
            cols.append(f'CONSTRAINT {fk["name"]} FOREIGN KEY ({fk["columns"][0]}) REFERENCES '
                        f'{fk["referred_schema"]}.{fk["referred_table"]} (id)')
        statements.append(f"CREATE TABLE {qualified} ({', '.join(cols)})")
        statements.append(f"COMMENT ON TABLE {qualified} IS '{spec['comment']}'")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(";\n".join(statements))
        conn.execute("ANALYZE")
    return url



def _shutdown(*sockets: socket.socket) -> None:
    """End both directions of a relayed connection (either side may already be gone)."""
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

class WireCounter:
    """A TCP listener on 127.0.0.1 that counts connections and, when `upstream` is given,
    relays them to it, counting the statements clients send (protocol `Q` and `P`)."""

    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self.connections = 0
        self.statements: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            if self.upstream is None:
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._client_to_server, args=(client, server),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(src, dst)

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buffer = b""
        started = False  # after the StartupMessage, every message has a type byte
        try:
            while data := client.recv(65536):
                server.sendall(data)
                buffer += data
                while True:
                    if not started:
                        if len(buffer) < 8:
                            break
                        length, code = struct.unpack("!II", buffer[:8])
                        if len(buffer) < length:
                            break
                        buffer = buffer[length:]
                        # SSLRequest, GSSENCRequest and CancelRequest come before the startup.
                        started = code not in (80877103, 80877104, 80877102)
                        continue
                    if len(buffer) < 5:
                        break
                    kind = buffer[:1]
                    (length,) = struct.unpack("!I", buffer[1:5])
                    if len(buffer) < 1 + length:
                        break
                    body, buffer = buffer[5:1 + length], buffer[1 + length:]
                    if kind == b"Q":
                        self._record(body.split(b"\0", 1)[0])
                    elif kind == b"P":
                        self._record(body.split(b"\0", 2)[1])
        except OSError:
            pass
        finally:
            _shutdown(client, server)

    def _record(self, sql: bytes) -> None:
        with self._lock:
            self.statements.append(" ".join(sql.decode("utf-8", "replace").split()))


_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import dagster  # what `dagster api grpc` / `dagster dev` have imported before loading the module
t_dagster = time.perf_counter()
import pg_to_bq.orchestration.code_location  # the libraries the code location imports, and pg_to_bq's modules
t1 = time.perf_counter()
import pg_to_bq.definitions as d
t2 = time.perf_counter()
repo = d.defs.get_repository_def()
t3 = time.perf_counter()
assets = repo.asset_graph.get_all_asset_keys()
print("RESULT " + json.dumps({
    "dagster_s": t_dagster - t0, "imports_s": t1 - t0, "build_s": t2 - t1, "total_s": t2 - t0,
    "repository_s": t3 - t2, "load_s": t3 - t0, "after_dagster_s": t3 - t_dagster,
    "asset_keys": len(assets), "jobs": len(repo.get_all_jobs()),
    "imported": sorted(m for m in ("dlt", "dagster_aws", "pyarrow", "boto3", "sqlalchemy")
                       if m in sys.modules),
}))
"""


def _probe(env: dict[str, str]) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, timeout=600)
    elapsed = time.monotonic() - started
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"loading the definitions failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(line[7:]), "process_s": elapsed}


def _env(work: Path, source_url: str | None, catalog: Path) -> dict[str, str]:
    """The code location's settings; without `source_url`, the source is a Secrets Manager
    secret id (never read while loading from a snapshot), as in production."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_TO_BQ_")}
    source = ({"PG_TO_BQ_SOURCE_URL": source_url} if source_url else
              {"PG_TO_BQ_SOURCE_SECRET": "bench/source-url", "PG_TO_BQ_AWS_REGION": "us-east-1"})
    env.update({
        **source,
        "PG_TO_BQ_CATALOG_PATH": str(catalog),
        "PG_TO_BQ_WORK_DIR": str(work),
        "PG_TO_BQ_DESTINATION": f"duckdb:///{work}/defs.duckdb",
        "DAGSTER_HOME": str(work / "dagster_home"),
    })
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    return env


_DLT_REFLECT = r"""
import json, sys, time
t0 = time.perf_counter()
from dlt.sources.sql_database import sql_database
t1 = time.perf_counter()
url, schemas = sys.argv[1], sys.argv[2].split(",")
tables = 0
for schema in schemas:
    tables += len(sql_database(credentials=url, schema=schema).resources)
t2 = time.perf_counter()
print("RESULT " + json.dumps({"tables": tables, "reflect_s": t2 - t1}))
"""


def measure(admin_url: str, count: int, work: Path, dlt_reflection: bool = True,
            repeat: int = 2) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    specs = table_specs(count)

    # 1. From the snapshot: PostgreSQL must not be contacted at all.
    snapshot = work / "snapshot" / "catalog.json"
    write_synthetic_snapshot(specs, snapshot)
    listener = WireCounter()
    try:
        fake_url = f"postgresql://bench@127.0.0.1:{listener.port}/{DATABASE}"
        snapshot_runs = [_probe(_env(work, fake_url, snapshot)) for _ in range(repeat)]
    finally:
        listener.close()
    snapshot_connections = listener.connections
    # The same snapshot with the source as a secret id: the Secrets Manager resource is part
    # of the definitions.
    secret_runs = [_probe(_env(work, None, snapshot)) for _ in range(repeat)]

    # 2. Live: no snapshot, 1,000 real tables, one catalog query expected.
    created = time.monotonic()
    db_url = create_tables(admin_url, specs)
    create_s = time.monotonic() - created
    host_port = db_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    live_runs = []
    for _ in range(repeat):
        proxy = WireCounter(upstream=(host, int(port)))
        try:
            proxied = db_url.replace(host_port, f"127.0.0.1:{proxy.port}")
            live_catalog = work / "live" / "catalog.json"
            shutil.rmtree(live_catalog.parent, ignore_errors=True)
            run = _probe(_env(work, proxied, live_catalog))
            time.sleep(0.2)  # let the relay threads drain
            run["connections"] = proxy.connections
            run["statements"] = list(proxy.statements)
            run["snapshot_written"] = live_catalog.is_file()
        finally:
            proxy.close()
        live_runs.append(run)

    result = {
        "tables": count,
        "snapshot": {"runs": snapshot_runs, "connections": snapshot_connections},
        "snapshot_secret": {"runs": secret_runs},
        "live": {"runs": live_runs, "create_tables_s": create_s},
    }
    if dlt_reflection:
        schemas = ",".join(sorted({s["schema"] for s in specs}))
        proc = subprocess.run([sys.executable, "-c", _DLT_REFLECT, db_url, schemas],
                              capture_output=True, text=True, timeout=1200)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        result["dlt_reflection"] = (json.loads(line[7:]) if line else
                                    {"error": proc.stderr[-500:]})
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    shutil.rmtree(work, ignore_errors=True)
    return result


def _catalog_queries(statements: list[str]) -> list[str]:
    return [s for s in statements if "pg_catalog.pg_class" in s]


def _best(runs: list[dict], key: str = "load_s") -> dict:
    return min(runs, key=lambda r: r[key])


def _times(run: dict) -> str:
    return (f"import pg_to_bq.definitions {run['total_s']:.2f} s (libraries {run['imports_s']:.2f} s "
            f"+ build {run['build_s']:.2f} s), repository {run['repository_s']:.2f} s; whole load "
            f"{run['load_s']:.2f} s fresh, {run['after_dagster_s']:.2f} s after `import dagster`")


def describe(result: dict) -> str:
    snap = _best(result["snapshot"]["runs"])
    live = _best(result["live"]["runs"])
    lines = [
        f"  snapshot: {_times(snap)}, {snap['asset_keys']} asset keys, "
        f"{result['snapshot']['connections']} connection(s) to PostgreSQL, "
        f"imported {snap['imported']}",
    ]
    if "snapshot_secret" in result:
        secret = _best(result["snapshot_secret"]["runs"])
        lines.append(f"  snapshot, source as a secret id: {_times(secret)}, "
                     f"imported {secret['imported']}")
    lines.append(
        f"  live:     {_times(live)}, {live['connections']} "
        f"connection(s), {len(live['statements'])} statement(s), "
        f"{len(_catalog_queries(live['statements']))} catalog query(ies): "
        f"{[s[:40] for s in live['statements']]}")
    if "dlt_reflection" in result:
        d = result["dlt_reflection"]
        lines.append(f"  dlt sql_database reflection: {d}")
    return "\n".join(lines)


def _row(label: str, run: dict, connections: int | str, statements: int | str) -> str:
    return (f"| {label} | {run['total_s']:.2f} | {run['imports_s']:.2f} | {run['build_s']:.2f} | "
            f"{run['repository_s']:.2f} | **{run['load_s']:.2f}** | **{run['after_dagster_s']:.2f}** | "
            f"{run['asset_keys']:,} | {connections} | {statements} |")


def render(result: dict) -> list[str]:
    n = result["tables"]
    runs = len(result["snapshot"]["runs"])
    lines = [f"## Definitions at scale: {n:,} tables", "",
             "Each row: a fresh interpreter running `import pg_to_bq.definitions` (what "
             "`dagster dev` / `dagster api grpc -m pg_to_bq.definitions` do), then "
             f"`defs.get_repository_def()`; best of {runs}. *total* is the import of "
             "`pg_to_bq.definitions` = *libraries* (importing dagster and what pg_to_bq's "
             "modules import: PyYAML; psycopg only to discover the catalog live; dlt, pyarrow "
             "and boto3 only inside a run) + *build* (`build_definitions()`: catalog, plans, "
             "assets, jobs, schedules); *repository* is `defs.get_repository_def()` (Dagster "
             "resolving the asset graph). *whole load, fresh* is all of it from an empty "
             "interpreter; *load after dagster* leaves out `import dagster`, which the "
             "`dagster api grpc` / `dagster dev` process has done before it loads the module.",
             "",
             "| catalog from | total (s) | libraries (s) | build (s) | repository (s) | "
             "whole load, fresh (s) | load after dagster (s) | "
             "asset keys | connections to PostgreSQL | statements sent |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    snap = _best(result["snapshot"]["runs"])
    lines.append(_row(f"snapshot (synthetic, {n:,} tables)", snap,
                      result["snapshot"]["connections"], 0))
    if "snapshot_secret" in result:
        secret = _best(result["snapshot_secret"]["runs"])
        lines.append(_row("snapshot, source as a Secrets Manager secret id (production)",
                          secret, "-", "-"))
    live = _best(result["live"]["runs"])
    lines.append(_row(f"live PostgreSQL ({n:,} real tables, no snapshot)", live,
                      live["connections"], len(live["statements"])))
    lines += ["", "Statements the live load sent (read off the wire by a counting proxy): " +
              ", ".join(f"`{s[:60]}{'…' if len(s) > 60 else ''}`" for s in live["statements"]) +
              f" — {len(_catalog_queries(live['statements']))} catalog query. "
              f"The live load wrote the snapshot: {live['snapshot_written']}. "
              f"Modules a snapshot load imported (of dlt, dagster_aws, pyarrow, boto3, "
              f"sqlalchemy): {', '.join(snap['imported']) or 'none'}.", ""]
    if "dlt_reflection" in result and "reflect_s" in result["dlt_reflection"]:
        d = result["dlt_reflection"]
        lines += [f"For comparison, dlt's `sql_database` reflecting the same {d['tables']:,} "
                  f"tables (one source per schema): {d['reflect_s']:.1f} s.", ""]
    all_runs = ", ".join(f"{r['load_s']:.2f}" for r in result["snapshot"]["runs"])
    live_runs = ", ".join(f"{r['load_s']:.2f}" for r in result["live"]["runs"])
    lines += [f"All runs (whole load, fresh, s): snapshot {all_runs}; live {live_runs}.", ""]
    return lines


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pg_url", help="a PostgreSQL URL whose user may create a database")
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dlt-reflection", action="store_true",
                        help="also time dlt's sql_database reflecting the tables")
    args = parser.parse_args()
    outcome = measure(args.pg_url, args.tables, Path(tempfile.mkdtemp()) / "definitions",
                      dlt_reflection=args.dlt_reflection, repeat=args.repeat)
    print(describe(outcome))
    print("\n".join(render(outcome)))
