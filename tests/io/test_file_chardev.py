"""The file chardev when the host side fails: a write error (``/dev/full``)
is not the runtime's end."""

from __future__ import annotations

from collections.abc import Callable

from emulator.runtime.runtime import Runtime

from tests.runtime.programs import GuestProgram, build, qmp, spin, with_port  # noqa: F401  (build: a fixture)


def test_file_chardev_write_error_does_not_crash(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build(*with_port("file,id=c1,path=/dev/full"))
    g = GuestProgram(rt)
    g.write(b"x" * 100)
    spin(rt)
    c = qmp(rt, tmp)
    assert c.cmd({"execute": "query-status"})["return"]["running"] is True
