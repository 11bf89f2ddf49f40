"""Bytes across ``stop``/``cont``: what either side sent while the VM was
stopped arrives once, in order, after ``cont``; the stopped loop does not
spin; the guest agent does not answer while the guest is stopped."""

from __future__ import annotations

import base64
from collections.abc import Callable

from emulator.runtime.runtime import Runtime

from tests.runtime.programs import (  # noqa: F401  (build: a fixture)
    GuestProgram, Host, build, cpu_over, guest_port, pattern, pump, qmp, with_port,
)


def test_host_bytes_sent_while_stopped_arrive_once_in_order_after_cont(build: Callable[..., Runtime],
                                                                       tmp: str) -> None:
    path = f"{tmp}/s"
    rt = build(*with_port(f"socket,id=c1,path={path},server=on,wait=off"))
    h = Host(path)
    pump(rt, lambda: guest_port(rt)["host-connected"], "host-connected")
    g = GuestProgram(rt)
    rt.stop()
    data = pattern(300_000, 1)
    h.outbox += data
    for _ in range(20):
        h.send_some()
        rt.loop.run_once(0.005)
    assert len(h.outbox) < len(data)  # some left the host
    assert cpu_over(rt, 0.3) < 0.08  # stopped with input waiting: no spinning
    assert g.rt.machine.running is False
    rt.cont()

    def step() -> None:
        h.send_some()
        g.read_some()

    pump(rt, lambda: len(g.received) >= len(data), "everything", step=step)
    assert bytes(g.received) == data
    h.close()


def test_guest_program_bytes_pending_at_stop_are_delivered_after_cont(build: Callable[..., Runtime],
                                                                       tmp: str) -> None:
    """A program blocked in write when the VM stops resumes at cont; while
    stopped the agent (like a real one in a paused guest) does not answer."""
    path = f"{tmp}/s"
    rt = build(*with_port(f"socket,id=c1,path={path},server=on,wait=off"))
    h = Host(path)
    pump(rt, lambda: guest_port(rt)["host-connected"], "host-connected")
    g = GuestProgram(rt)
    c = qmp(rt, tmp)
    data = pattern(8 << 20, 2)  # more than the ring and the socket buffers hold
    r = c.cmd({"execute": "guest-file-write",
               "arguments": {"handle": g.handle, "buf-b64": base64.b64encode(data).decode()}})
    assert r == {"return": {"count": len(data), "eof": False}}
    assert rt.agent.pending(g.handle) > 0  # the program is blocked: the host has not read
    assert c.cmd({"execute": "stop"}) == {"return": {}}
    r = c.cmd({"execute": "guest-file-write", "arguments": {"handle": g.handle, "buf-b64": "eA=="}})
    assert r["error"] == {"class": "GenericError", "desc": "Guest agent is not available: the guest is not running"}
    assert c.cmd({"execute": "guest-ping"})["error"]["desc"].startswith("Guest agent is not available")
    pending = rt.agent.pending(g.handle)
    for _ in range(20):  # the host drains its socket; the stopped guest sends no more
        rt.loop.run_once(0.01)
        h.recv_some()
    assert rt.agent.pending(g.handle) == pending
    assert c.cmd({"execute": "cont"}) == {"return": {}}
    pump(rt, lambda: len(h.received) >= len(data), "everything", step=h.recv_some)
    assert bytes(h.received) == data
    h.close()
