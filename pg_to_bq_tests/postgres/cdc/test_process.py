"""A reader in its own process: memory bounded on a 200,000-row transaction, and nothing
lost when it is killed with SIGKILL in the middle of a read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from pg_to_bq.postgres.cdc.slot import create_slot, ensure_publication, slot_status

from .conftest import read_all, run

ROOT = Path(__file__).parents[2]


def child(args: dict, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pg_to_bq_tests.postgres.cdc.reader_child",
                             json.dumps(args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def run_child(args: dict) -> dict:
    process = child(args)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))


def setup(url: str) -> None:
    run(url, "CREATE TABLE t (id int PRIMARY KEY, pad text)")
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_publication(conn, "pub", [("public", "t")])
        create_slot(conn, "s")


def test_a_200k_row_transaction_streams_in_bounded_memory(db: str, tmp_path: Path) -> None:
    setup(db)
    run(db, "INSERT INTO t SELECT g, repeat('s', 250) FROM generate_series(1, 100) g")
    args = {"url": db, "slot": "s", "publication": "pub", "out": str(tmp_path / "small")}
    small = run_child(args)
    assert small["changes"] == 101  # the Relation and 100 inserts
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT pg_replication_slot_advance('s', %s::pg_lsn)",
                     (f"{small['position'] >> 32:X}/{small['position'] & 0xFFFFFFFF:X}",))
    run(db, "INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(101, 200100) g")
    big = run_child({**args, "out": str(tmp_path / "big")})
    assert big["transactions"] == 1 and big["changes"] == 200_001
    assert big["payload_bytes"] > 50_000_000  # 52 MB of values went through
    grown = big["max_rss_mb"] - small["max_rss_mb"]
    print(f"peak RSS: 100 rows {small['max_rss_mb']:.1f} MB, 200,000 rows "
          f"{big['max_rss_mb']:.1f} MB (+{grown:.1f} MB for {big['payload_bytes'] / 1e6:.0f} MB "
          "of values)")
    assert grown < 15, f"the reader's memory grew by {grown:.1f} MB: it accumulates"


def applied(path: Path) -> tuple[list[int], int]:
    """The transactions the killed reader applied (their end LSNs), and what it confirmed."""
    lines = path.read_text().splitlines()
    done = [int(line.split()[2]) for line in lines if line.startswith("APPLIED ")]
    confirmed = [int(line.split()[1]) for line in lines if line.startswith("CONFIRMED ")]
    return done, confirmed[-1]


def test_a_reader_killed_mid_read_loses_nothing(db: str, tmp_path: Path) -> None:
    setup(db)
    for i in range(300):
        run(db, f"INSERT INTO t SELECT g, 'x' FROM generate_series({i * 10}, {i * 10 + 9}) g")
    out = tmp_path / "applied"
    process = child({"url": db, "slot": "s", "publication": "pub", "out": str(out),
                     "confirm_every": 10, "pause_after": 137}, start_new_session=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "PAUSED"  # mid-read: 137 applied, 130 confirmed
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    done, confirmed = applied(out)
    assert len(done) == 137 and confirmed == done[129]
    with psycopg.connect(db, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while (status := slot_status(conn, "s")).active and time.monotonic() < deadline:
            time.sleep(0.05)  # the killed reader's walsender notices and exits
    assert not status.active
    assert status.confirmed_flush_lsn == confirmed  # exactly what it confirmed, no more
    # Not confirmed → delivered again: from the first transaction after the confirmed one.
    again, _ = read_all(db, "s")
    assert len(again) == 170
    assert [c.end_lsn for _, _, c in again[:7]] == done[130:]
    # With the destination's stored position, the next read starts right after it.
    rest, _ = read_all(db, "s", start_lsn=done[-1])
    assert [c.end_lsn for _, _, c in rest] == [c.end_lsn for _, _, c in again[7:]]
    keys = sorted(int(c.new[0]) for _, changes, _ in rest for c in changes if hasattr(c, "new"))
    assert keys == list(range(1370, 3000))  # together with the 137 applied: all 300, once
