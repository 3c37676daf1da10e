"""The load libraries, imported in the background while a group's tables are read.

A group makes its dlt pipeline only when a table has rows to load (`pg_to_bq.load.group`),
so a run whose tables are all unchanged never imports dlt. A run that loads imported it
after its first group's reads: ~0.3-0.5 s of a one-table sync (dlt, its HTTP client and
the destination's client) during which nothing else ran. Started when the first table
found to have rows to load starts streaming into its file (`pg_to_bq.load.read`; a table
found unchanged never gets there), the same imports overlap that read, which waits on
PostgreSQL and decodes in C.

Only modules are imported here; nothing of dlt's is made or used. A module that fails to
import here fails again, with its error, where the load imports it.

dlt notes its "main thread" when it is imported (the thread whose contexts are global):
`finish` waits for the imports and, when dlt was imported here, makes the calling thread
dlt's main thread, as if it had imported dlt itself. Whatever makes a dlt object calls it
first: the dlt destination (`pg_to_bq.orchestration.resources.Destination`) and every
pipeline (`pg_to_bq.load.packages.group_pipeline`).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading

log = logging.getLogger(__name__)

# What a group's first load imports beyond what its reads did, by destination.
# (BigQuery's pipeline is made before the reads: only dlt can ask it anything.)
_COMMON = ("dlt", "dlt.sources.helpers.requests", "dlt.common.libs.pyarrow",
           "dlt.common.normalizers.naming.direct", "pg_to_bq.load.packages",
           "pg_to_bq.load.fill", "pg_to_bq.load.deletes")
MODULES = {"duckdb": (*_COMMON, "pg_to_bq.destinations.duckdb_file")}

_lock = threading.Lock()
_thread: threading.Thread | None = None
# Whether dlt was first imported by this module's thread.
_imported_dlt_here = False


def start(destination_name: str) -> None:
    """Import `destination_name`'s load modules in a daemon thread (once per process, and
    only while dlt is not imported yet)."""
    global _thread, _imported_dlt_here
    with _lock:
        if _thread is not None or "dlt" in sys.modules:
            return
        _imported_dlt_here = True
        _thread = threading.Thread(target=_import, args=(MODULES.get(destination_name, _COMMON),),
                                   daemon=True, name="pg_to_bq-loader-imports")
        _thread.start()


def finish() -> None:
    """Wait for the imports `start` began; the calling thread is about to use dlt."""
    global _imported_dlt_here
    with _lock:
        thread = _thread
    if thread is None:
        return
    thread.join()
    with _lock:
        if not _imported_dlt_here:
            return
        _imported_dlt_here = False
        container = sys.modules.get("dlt.common.configuration.container")
        if container is not None and thread.ident == container.Container._MAIN_THREAD_ID:
            # (the container holds nothing yet: dlt's own way to re-capture its main thread)
            container.Container.reset_main_thread()


def _import(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the load imports it again, and fails there
            log.debug("importing %s ahead of the load failed: %s", name, exc)
            return
