"""The main loop does not spin: no CPU while idle, none while a port is
throttled with data waiting in the guest program."""

from __future__ import annotations

from collections.abc import Callable

from emulator.runtime.runtime import Runtime

from tests.runtime.programs import (  # noqa: F401  (build: a fixture)
    GuestProgram, Host, build, cpu_over, guest_port, pattern, pump, with_port,
)


def test_no_spin_while_idle_or_throttled(build: Callable[..., Runtime], tmp: str) -> None:
    path = f"{tmp}/s"
    rt = build(*with_port(f"socket,id=c1,path={path},server=on,wait=off"))
    h = Host(path)
    pump(rt, lambda: guest_port(rt)["host-connected"], "host-connected")
    g = GuestProgram(rt)
    assert cpu_over(rt) < 0.05
    g.write(pattern(4 << 20, 3))
    port = rt.machine.port("p1")
    pump(rt, lambda: port.throttled, "the port to throttle")
    assert cpu_over(rt) < 0.05  # throttled with 4 MiB pending in the guest program
    h.close()
