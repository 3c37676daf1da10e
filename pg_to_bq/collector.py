"""Python's cyclic garbage collector, while a process builds what it keeps.

Importing Dagster, dlt and Arrow and building the definitions of many tables allocate
millions of objects that live as long as the process. The collector's full collections
rescan all of them each time the heap grows by a quarter: a quarter of the definitions'
build time, and 0.3-0.5 s of a one-table `pg-to-bq sync` (measured with `gc.callbacks`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# Set by a process that ends when its command does (the `pg-to-bq` console script): what it
# builds at its start may then be left out of collection for good (`long_lived`).
_short_lived = False


def short_lived_process() -> None:
    """Say that this process ends with its command (see `long_lived`)."""
    global _short_lived
    _short_lived = True


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No collection inside: for a block that makes no garbage worth collecting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """No collection inside; in a short-lived process, what is alive at its end is also left
    out of every later collection (`gc.freeze`): a command's start (modules, settings,
    definitions), kept to the process's end. A frozen object is still freed when nothing
    refers to it; only garbage in a reference cycle stays, which is why a long-lived process
    (a code server, a test session calling the CLI in-process) never freezes."""
    with paused():
        try:
            yield
        finally:
            if _short_lived:
                gc.freeze()
