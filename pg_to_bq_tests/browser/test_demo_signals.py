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
        stack.assert_stops_cleanly(signal.SIGTERM)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
