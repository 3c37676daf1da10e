"""Change capture: how fast the server hands out changes, and how fast we read and decode them.

    .venv/bin/python benchmarks/cdc_decode.py --rows 1000000 [--pypgoutput DIR]

Starts an embedded PostgreSQL 18 with wal_level=logical (or uses --pg-url, which must have
it), builds a table (bigint key, int, text, numeric(12,2), timestamptz) of --rows rows,
creates the publication and four slots, then UPDATEs every row in one transaction. Each
slot then delivers the same changes to one reader, each in its own process, one after the
other, timed with wait4 (wall, CPU, peak RSS of exactly that process):

- `pg_recvlogical` (pgoutput, protocol 1) writing to /dev/null: the physical limit, the
  server's own rate of decoding and sending (run first and again last);
- pg_to_bq's `ChangeStream` with the pgoutput decoder, every change decoded and its values
  touched;
- the same connection loop without decoding (transport only), which also saves the first
  --sample messages for the decode-only comparison.

Then the decoders alone on those saved messages: pg_to_bq's `decode_message` and, if
--pypgoutput names a directory holding the `pypgoutput` package (PyPI, 0.0.3), its
decoder. Prints a markdown table; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def wait4(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd` and measure exactly that process with os.wait4."""
    started = time.monotonic()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    # The children print a few lines, which the pipes hold until they exit.
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    out = process.stdout.read().decode()
    err = process.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} failed ({status}):\n{err[-3000:]}")
    result = next((json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")),
                  {})
    return {"wall_s": elapsed, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, **result}


# -- children ------------------------------------------------------------------------------


def child_read(args: dict) -> None:
    from pg_to_bq.postgres.cdc.pgoutput import Delete, Insert, Update
    from pg_to_bq.postgres.cdc.stream import ChangeStream

    started = time.monotonic()
    changes = values = 0
    first_change = None
    with ChangeStream(args["url"], args["slot"], [args["publication"]],
                      end_lsn=args["end_lsn"]) as stream:
        for txn in stream.transactions():
            for change in txn:
                kind = type(change)
                if kind is Update or kind is Insert:
                    if first_change is None:
                        first_change = time.monotonic() - started
                    changes += 1
                    values += len(change.new)
                elif kind is Delete:
                    changes += 1
    print("RESULT " + json.dumps({"seconds": time.monotonic() - started, "changes": changes,
                                  "values": values, "first_change_s": first_change}), flush=True)


def child_raw(args: dict) -> None:
    """The same replication loop with no decoding; saves the first `sample` payloads."""
    from pg_to_bq.postgres.cdc.pgoutput import format_lsn
    from pg_to_bq.postgres.cdc.walsender import ReplicationConnection, parse_keepalive

    started = time.monotonic()
    conn = ReplicationConnection(args["url"])
    conn.start_replication(f"START_REPLICATION SLOT {args['slot']} LOGICAL 0/0 "
                           f"(proto_version '1', publication_names '\"{args['publication']}\"')")
    end = args["end_lsn"]
    messages = 0
    sample: list[bytes] = []
    pgconn = conn.pgconn
    drained = False
    while True:
        size, data = pgconn.get_copy_data(1)
        if size > 0:
            drained = False
            buf = bytes(data)
            if buf[0] == 119:
                messages += 1
                if len(sample) < args["sample"] and buf[25] == 85:  # Update messages
                    sample.append(buf[25:])
                if buf[25] == 67 and struct.unpack_from(">Q", buf, 35)[0] >= end:
                    break  # the Commit that ends at or past the end point
            elif buf[0] == 107:
                keepalive = parse_keepalive(buf)
                if keepalive.reply_requested:
                    conn.send_status(0, 0, 0)
                if keepalive.wal_end >= end and messages:
                    break
            continue
        if size == 0:
            if drained:
                conn.wait_readable(0.2)
            pgconn.consume_input()
            drained = True
            continue
        raise RuntimeError(f"stream ended before {format_lsn(end)}")
    conn.close()
    seconds = time.monotonic() - started
    with open(args["sample_file"], "wb") as out:
        for payload in sample:
            out.write(struct.pack(">I", len(payload)) + payload)
    print("RESULT " + json.dumps({"seconds": seconds, "messages": messages}), flush=True)


def load_sample(path: str) -> list[bytes]:
    data = Path(path).read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4:pos + 4 + length])
        pos += 4 + length
    return out


def child_decode(args: dict) -> None:
    sample = load_sample(args["sample_file"])
    results = {"messages": len(sample)}
    from pg_to_bq.postgres.cdc.pgoutput import decode_message

    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for payload in sample:
            decode_message(payload)
        best = min(best, time.perf_counter() - started)
    results["pg_to_bq_ns"] = best / len(sample) * 1e9
    if args.get("pypgoutput"):
        sys.path.insert(0, args["pypgoutput"])
        from pypgoutput.decoders import Update as PyUpdate

        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for payload in sample:
                PyUpdate(payload)
            best = min(best, time.perf_counter() - started)
        results["pypgoutput_ns"] = best / len(sample) * 1e9
        # Same values out of both (the first message, column by column).
        ours = decode_message(sample[0]).new
        theirs = [c.col_data for c in PyUpdate(sample[0]).new_tuple.column_data]
        results["same_values"] = [v.decode() if isinstance(v, bytes) else v for v in ours] == theirs
    print("RESULT " + json.dumps(results), flush=True)


# -- the benchmark -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pg-url", help="a wal_level=logical server (default: an embedded one)")
    parser.add_argument("--sample", type=int, default=200_000,
                        help="messages saved for the decode-only comparison")
    parser.add_argument("--pypgoutput", help="directory holding the pypgoutput package")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--child", choices=["read", "raw", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        {"read": child_read, "raw": child_raw, "decode": child_decode}[options.child](
            json.loads(options.args))
        return

    import psycopg

    from pg_to_bq.postgres.cdc.pgoutput import format_lsn
    from pg_to_bq.postgres.cdc.slot import create_slot, ensure_publication
    from pg_to_bq.postgres.cdc.stream import end_point
    from pg_to_bq.postgres.embedded import EmbeddedPostgres, binaries_dir

    server = None
    work = Path(tempfile.mkdtemp(prefix="pg_to_bq_cdc_bench_"))
    if options.pg_url:
        admin = options.pg_url
    else:
        server = EmbeddedPostgres(work / "pg", settings={
            "wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10",
            "max_wal_size": "4GB"})
        server.start()
        admin = server.url("postgres")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS cdc_bench WITH (FORCE)")
            conn.execute("CREATE DATABASE cdc_bench")
        url = admin.rsplit("/", 1)[0] + "/cdc_bench"
        # pg_recvlogical reads first and last: the spread between its two runs shows how much
        # the order and the machine's other load move these numbers.
        slots = ("bench_recvlogical", "bench_reader", "bench_raw", "bench_recvlogical_2")
        with psycopg.connect(url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            conn.execute("CREATE TABLE bench_cdc (id bigint PRIMARY KEY, k int NOT NULL, "
                         "name text, amount numeric(12,2), at timestamptz)")
            started = time.monotonic()
            conn.execute("INSERT INTO bench_cdc SELECT g, g %% 1000, 'name ' || g, g * 0.01, "
                         "'2026-01-01'::timestamptz + g * interval '1 second' "
                         "FROM generate_series(1, %s) g", (options.rows,))
            conn.execute("VACUUM ANALYZE bench_cdc")
            print(f"table: {options.rows:,} rows in {time.monotonic() - started:.1f} s", flush=True)
            ensure_publication(conn, "bench", [("public", "bench_cdc")])
            for slot in slots:
                create_slot(conn, slot)
            started = time.monotonic()
            conn.execute("UPDATE bench_cdc SET k = k + 1")
            print(f"UPDATE of every row: {time.monotonic() - started:.1f} s", flush=True)
            lsn, block, segment = conn.execute(
                "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint, "
                "current_setting('wal_block_size')::bigint, "
                "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
            ).fetchone()
            end = end_point(lsn, block, segment)
            conn.execute("CHECKPOINT")  # flushed and quiet before the timed reads
        params = psycopg.conninfo.conninfo_to_dict(url)

        def recvlogical(slot: str) -> dict:
            return wait4([
                str(binaries_dir() / "pg_recvlogical"), "-h", str(params.get("host", "127.0.0.1")),
                "-p", str(params.get("port", "5432")), "-U", str(params.get("user", "postgres")),
                "-d", "cdc_bench", "--slot", slot, "--start", "-o", "proto_version=1",
                "-o", "publication_names=bench", "-f", "/dev/null", f"--endpos={format_lsn(end)}",
                "--no-loop"], env={k: v for k, v in os.environ.items() if not k.startswith("PG")})

        first_recvlogical = recvlogical(slots[0])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        me = [sys.executable, str(Path(__file__).resolve())]
        common = {"url": url, "publication": "bench", "end_lsn": end}
        reader = wait4([*me, "--child", "read", "--args",
                        json.dumps({**common, "slot": slots[1]})], env=env)
        sample_file = str(work / "sample.bin")
        raw = wait4([*me, "--child", "raw", "--args", json.dumps(
            {**common, "slot": slots[2], "sample": options.sample, "sample_file": sample_file})],
            env=env)
        last_recvlogical = recvlogical(slots[3])
        decode = wait4([*me, "--child", "decode", "--args", json.dumps(
            {"sample_file": sample_file, "pypgoutput": options.pypgoutput})], env=env)
        with psycopg.connect(url, autocommit=True) as conn:
            for slot in slots:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        assert reader["changes"] == options.rows, reader
        report = render(options, version, first_recvlogical, last_recvlogical, reader, raw, decode)
        print(report)
        if options.out:
            options.out.write_text(report, encoding="utf-8")
    finally:
        if server is not None:
            server.destroy()
        shutil.rmtree(work, ignore_errors=True)


def render(options, version: str, first: dict, last: dict, reader: dict, raw: dict,
           decode: dict) -> str:
    rows = options.rows
    recvlogical = min(first, last, key=lambda run: run["wall_s"])
    ratio = reader["wall_s"] / recvlogical["wall_s"]

    def line(label: str, run: dict) -> str:
        inside = f"{run['seconds']:.2f}" if "seconds" in run else "—"
        return (f"| {label} | {run['wall_s']:.2f} | {inside} | {rows / run['wall_s']:,.0f} | "
                f"{run['cpu_s']:.2f} | {run['peak_rss_mb']:.0f} |")

    lines = [
        f"## Change capture: one UPDATE of {rows:,} rows, read back through pgoutput",
        "",
        f"PostgreSQL {version} on loopback, {os.cpu_count()} cores, {platform.python_version()}; "
        "each reader its own process, one after the other (wall, CPU and peak RSS from wait4).",
        "",
        "| reader | wall s (process) | s after imports | changes/s (wall) | CPU s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
        line("`pg_recvlogical` → /dev/null, read first (the server's rate: the physical limit)",
             first),
        line("**pg_to_bq `ChangeStream` + pgoutput decoder**, every value touched", reader),
        line("same connection loop, no decoding (transport only)", raw),
        line("`pg_recvlogical` → /dev/null, read last", last),
        "",
        f"Reader + decoder / the faster pg_recvlogical run: **{ratio:.2f}×** (target ≤ 3×). "
        f"Time to the first change (the server decoding the transaction, spilling it to disk "
        f"and reading it back, before it sends anything): reader {reader['first_change_s']:.2f} s.",
        "",
        f"Decoding alone, {decode['messages']:,} Update messages (5 columns), best of 3: "
        f"pg_to_bq `decode_message` {decode['pg_to_bq_ns']:,.0f} ns/message"
        + (f"; pypgoutput 0.0.3 {decode['pypgoutput_ns']:,.0f} ns/message "
           f"({decode['pypgoutput_ns'] / decode['pg_to_bq_ns']:.1f}× slower, same values: "
           f"{decode['same_values']})" if "pypgoutput_ns" in decode else "")
        + ".",
        "",
        f"    .venv/bin/python benchmarks/cdc_decode.py --rows {rows}"
        + (" --pypgoutput DIR" if options.pypgoutput else ""),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
