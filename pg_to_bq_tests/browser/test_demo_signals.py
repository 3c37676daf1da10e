"""The demo stack stopped by SIGTERM, as `timeout`, systemd or a container runtime stop it:
nothing may be left running. (Ctrl-C is `test_ui.test_ctrl_c_stops_everything`.)"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

from pg_to_bq_tests.browser.demo_stack import DemoStack


def test_sigterm_stops_everything() -> None:
    # Not under pytest's temporary root: see the `stack` fixture in test_ui.py.
    work = Path(tempfile.mkdtemp(prefix="pg_to_bq_sigterm_"))
    stack = DemoStack.start(work / "demo")
    try:
        result = stack.stop(sig=signal.SIGTERM)
        assert result.exit_code == 0, result.output[-3000:]
        assert "stopped Dagster and PostgreSQL" in result.output
        assert not result.leftovers, "still running after SIGTERM:\n" + "\n".join(
            str(p) for p in result.leftovers)
        assert any("postgres" in p.command for p in stack.seen.values())
        assert any("dagster" in p.command for p in stack.seen.values())
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
