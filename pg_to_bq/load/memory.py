"""Memory handed back to the OS between a step's reads and its load."""

from __future__ import annotations

import sys
from collections.abc import Callable


def release_memory() -> None:
    """Hand the extraction's buffers back to the OS before DuckDB (in this process) loads:
    Arrow's allocator, and the C library's for the driver's buffers, keep freed memory for
    reuse, which would add up with DuckDB's."""
    pa = sys.modules.get("pyarrow")  # (not imported: no Arrow buffer was ever allocated)
    if pa is not None:
        pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, where there is one (not on musl or macOS)."""
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()
