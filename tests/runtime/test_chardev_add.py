"""QMP ``chardev-add`` with arguments that cannot be opened: a GenericError,
no chardev left behind and no descriptor leaked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from emulator.runtime.runtime import Runtime

from tests.runtime.programs import build, open_fds, qmp  # noqa: F401  (build: a fixture)


def test_chardev_add_with_an_out_of_range_tcp_port_is_an_error(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    before = open_fds()
    r = c.cmd({"execute": "chardev-add", "arguments": {"id": "t1", "backend": {"type": "socket", "data": {
        "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "70000"}}, "server": True, "wait": False}}}})
    assert r["error"]["class"] == "GenericError"
    assert "t1" not in rt.machine.chardevs
    assert open_fds() == before


@pytest.mark.parametrize("backend", [
    {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": "/tmp/a\u0000b"}}, "server": True,
                                "wait": False}},
    {"type": "file", "data": {"out": "/tmp/a\u0000b"}},
    {"type": "pipe", "data": {"device": "/tmp/a\u0000b"}},
], ids=["socket", "file", "pipe"])
def test_nul_in_a_chardev_path_is_an_error(backend: dict[str, Any], build: Callable[..., Runtime],
                                           tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    r = c.cmd({"execute": "chardev-add", "arguments": {"id": "t1", "backend": backend}})
    assert r["error"]["class"] == "GenericError"
    assert "t1" not in rt.machine.chardevs
