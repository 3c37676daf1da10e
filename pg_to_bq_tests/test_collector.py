"""Tier 1: the garbage collector during a command's start (`pg_to_bq.collector`).

Each case runs in a fresh interpreter: freezing objects in the test session would keep its
garbage for good.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import gc, json, sys
    from pg_to_bq import collector
    if sys.argv[1] == "short":
        collector.short_lived_process()
    before = gc.get_freeze_count()
    with collector.long_lived():
        inside = gc.isenabled()
        kept = [[i] for i in range(10_000)]
    frozen = gc.get_freeze_count() - before
    with collector.paused():
        paused_inside = gc.isenabled()
    print(json.dumps({"inside": inside, "after": gc.isenabled(), "frozen": frozen,
                      "paused_inside": paused_inside, "after_pause": gc.isenabled()}))
""")


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def test_a_short_lived_process_leaves_what_its_start_built_out_of_collection() -> None:
    seen = _probe("short")
    assert seen["inside"] is False and seen["after"] is True
    # the 10,000 lists, and everything else alive then
    assert seen["frozen"] >= 10_000
    assert seen["paused_inside"] is False and seen["after_pause"] is True


def test_another_process_only_pauses_collection() -> None:
    """A code server, or a test session calling the CLI in-process, never freezes."""
    seen = _probe("long")
    assert seen["inside"] is False and seen["after"] is True
    assert seen["frozen"] == 0


def test_the_console_script_is_a_short_lived_process() -> None:
    """`pg-to-bq` (the `run` entry point) says so before its command starts."""
    probe = textwrap.dedent("""
        import sys
        from pg_to_bq import collector
        from pg_to_bq.cli import main as cli
        cli.main = lambda argv=None: print(collector._short_lived) or 0
        sys.argv = ["pg-to-bq", "--help"]
        cli.run()
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "True"
