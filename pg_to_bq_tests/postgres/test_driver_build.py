"""Tier 1: the ADBC PostgreSQL driver pg_to_bq loads with is an optimized build.

The PyPI wheels of adbc-driver-postgresql 1.9.0 to 1.13.0 ship a driver compiled without
optimization: decoding the binary COPY stream took twice the CPU (2.1–2.6 s against
0.9–1.2 s per million rows of the benchmark's table), which is why pyproject.toml pins
1.8.0. A build at -O0 keeps C++ template helpers that an optimized build always inlines as
functions of their own; `std::vector<T>::operator[]` is one (10 such symbols in each of the
1.9.0-1.13.0 drivers, none in 1.8.0's). Before raising the pin, check the new wheel the same
way (or `objdump -d -C` its `ReadUnsafe<unsigned short>`: an optimized build has no frame
set-up and no call in it).
"""

from __future__ import annotations

import re
from pathlib import Path

import adbc_driver_postgresql

# The mangled name of an out-of-line `std::vector<...>::operator[](unsigned long)`.
_OUT_OF_LINE_SUBSCRIPT = re.compile(rb"_ZNSt6vectorI\w+EixEm")


def test_the_adbc_driver_is_an_optimized_build() -> None:
    library = Path(adbc_driver_postgresql._driver_path())
    assert library.is_file(), f"no bundled driver library: {library}"
    found = sorted(set(_OUT_OF_LINE_SUBSCRIPT.findall(library.read_bytes())))
    assert not found, (
        f"{library} (adbc-driver-postgresql {adbc_driver_postgresql.__version__}) is built "
        f"without optimization: it has {len(found)} out-of-line std::vector::operator[] "
        "functions; decoding COPY takes twice the CPU. Pin a version whose wheel is optimized."
    )
