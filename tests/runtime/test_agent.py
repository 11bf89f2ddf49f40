"""The guest agent's file writes when the port goes away: a write blocked on a
throttled port fails when the port is unplugged, a write on an unplugged port
fails at once, and a new port on the same chardev carries only new bytes."""

from __future__ import annotations

from collections.abc import Callable

from emulator.runtime.runtime import Runtime

from tests.runtime.programs import (  # noqa: F401  (build: a fixture)
    PORT_NAME, GuestProgram, Host, build, cpu_over, guest_port, pattern, pump, qmp, spin, with_port,
)


def test_device_del_of_a_throttled_port_fails_the_pending_write_and_a_new_port_works(
        build: Callable[..., Runtime], tmp: str) -> None:
    path = f"{tmp}/s"
    rt = build(*with_port(f"socket,id=c1,path={path},server=on,wait=off"))
    h = Host(path)
    pump(rt, lambda: guest_port(rt)["host-connected"], "host-connected")
    g = GuestProgram(rt)
    g.write(pattern(4 << 20, 5))
    port = rt.machine.port("p1")
    pump(rt, lambda: port.throttled, "the port to throttle")
    c = qmp(rt, tmp)
    assert c.cmd({"execute": "device_del", "arguments": {"id": "p1"}}) == {"return": {}}
    spin(rt)
    assert rt.agent.pending(g.handle) == 0 and not rt.agent.busy
    assert cpu_over(rt, 0.3) < 0.05
    # Drain what was in flight, then a new port on the same chardev carries new bytes only.
    for _ in range(10):
        h.recv_some()
        rt.loop.run_once(0.01)
    h.received.clear()
    assert c.cmd({"execute": "device_add", "arguments": {
        "driver": "virtserialport", "id": "p2", "chardev": "c1", "name": PORT_NAME}}) == {"return": {}}
    g2 = GuestProgram(rt)
    g2.write(b"fresh")
    pump(rt, lambda: bytes(h.received) == b"fresh", "the new port's bytes", step=h.recv_some)
    h.close()


def test_guest_file_write_on_an_unplugged_port_fails_at_once(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build(*with_port("null,id=c1"))
    g = GuestProgram(rt)
    c = qmp(rt, tmp)
    assert c.cmd({"execute": "device_del", "arguments": {"id": "p1"}}) == {"return": {}}
    spin(rt)
    r = c.cmd({"execute": "guest-file-write", "arguments": {"handle": g.handle, "buf-b64": "eA=="}})
    assert r == {"error": {"class": "GenericError", "desc": "failed to write to file: No such device"}}
