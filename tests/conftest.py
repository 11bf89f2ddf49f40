"""Fixtures shared by the runtime tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from emulator.runtime.runtime import Runtime


@pytest.fixture
def tmp() -> Iterator[str]:
    """A short directory under /tmp: a unix socket path must fit in
    sun_path (108 bytes), which pytest's tmp_path may not."""
    d = tempfile.mkdtemp(dir="/tmp", prefix="vs")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    """Runtimes a test made; closed afterwards, pass or fail."""
    made: list[Runtime] = []
    try:
        yield made
    finally:
        for rt in made:
            rt.close()
