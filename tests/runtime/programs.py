"""The programs around a running Runtime, over real sockets: a QMP client on
its monitor socket (``Qmp``), a host program on a chardev socket (``Host``),
a guest program through the guest agent (``GuestProgram``); and the ``build``
fixture and ``pump``/``spin`` that drive its main loop, and ``busy_turns``
(``cpu_over``) that tells an idle loop from a spinning one.

Everything runs in-process: ``qemu_cli.build`` then ``rt.loop.run_once``.
A test module that uses the ``build`` fixture imports it from here.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from emulator.runtime import cmdline as qemu_cli
from emulator.runtime.runtime import Runtime

PORT_NAME = "org.review.0"
GUEST_PATH = f"/dev/virtio-ports/{PORT_NAME}"


@pytest.fixture
def build(tmp: str, runtimes: list[Runtime]) -> Callable[..., Runtime]:
    """``build("-chardev", "socket,id=c1,path=@s,...")``: ``@`` is the temp dir;
    a QMP monitor is always on ``@qmp.sock``."""

    def _build(*args: str, qmp: bool = True, start: bool = True) -> Runtime:
        argv = [a.replace("@", tmp + "/") for a in args]
        if qmp:
            argv += ["-qmp", f"unix:{tmp}/qmp.sock,server=on,wait=off"]
        rt = qemu_cli.build(argv)
        runtimes.append(rt)
        if start:
            rt.start()
        return rt

    return _build


def with_port(chardev: str) -> list[str]:
    return [
        "-chardev", chardev,
        "-device", "virtio-serial,id=vser0",
        "-device", f"virtserialport,id=p1,chardev=c1,name={PORT_NAME},nr=1",
    ]


def pump(rt: Runtime, cond: Callable[[], object], what: str, step: Callable[[], None] | None = None,
         seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if step is not None:
            step()
        if cond():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        rt.loop.run_once(0.02)


def spin(rt: Runtime, turns: int = 5) -> None:
    for _ in range(turns):
        rt.loop.run_once(0.01)


class _CountingPoll:
    """The loop's poll object, counting the turns that did not wait: poll(2)
    found a descriptor ready, or the loop had something due and asked it
    not to wait."""

    def __init__(self, poll: Any) -> None:
        self.inner = poll
        self.turns = 0
        self.busy = 0

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        events: list[tuple[int, int]] = self.inner.poll(timeout)
        self.turns += 1
        if events or timeout == 0:
            self.busy += 1
        return events

    def __getattr__(self, name: str) -> Any:  # register, modify, unregister
        return getattr(self.inner, name)


def busy_turns(rt: Runtime, turns: int = 40, timeout: float = 0.01) -> int:
    """How many of ``turns`` main-loop turns did not wait: an idle loop
    waits out every ``timeout`` (0), a spinning one none (``turns``).  A
    count, not a time, so a loaded CI machine does not change it."""
    loop = rt.loop
    counter = _CountingPoll(loop._poll)
    loop._poll = counter  # type: ignore[assignment]
    try:
        for _ in range(turns):
            loop.run_once(timeout)
    finally:
        loop._poll = counter.inner
    return counter.busy


def cpu_over(rt: Runtime, seconds: float = 0.4) -> float:
    """The share of main-loop turns, over about ``seconds`` of idling, that
    did not wait (``busy_turns`` over 10 ms turns): 0.0 for a loop that
    sleeps in poll(2), 1.0 for one that spins.  It used to be the CPU
    seconds the process used, which a loaded CI machine inflates; the
    callers' thresholds (0.05, 0.1) now read as a share of turns."""
    turns = max(10, round(seconds / 0.01))
    return busy_turns(rt, turns, 0.01) / turns


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def guest_port(rt: Runtime) -> dict[str, Any]:
    return next(p for p in rt.qmp_guest_ports() if p["name"] == PORT_NAME)


class Qmp:
    """A raw QMP client on the runtime's monitor socket (non-blocking)."""

    def __init__(self, rt: Runtime, path: str, negotiate: bool = True) -> None:
        self.rt = rt
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.buf = b""
        self.greeting = self.recv_line()
        if negotiate:
            assert self.cmd({"execute": "qmp_capabilities"}) == {"return": {}}

    def send(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = json.dumps(data).encode()
        view = memoryview(data)
        deadline = time.monotonic() + 10
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                assert time.monotonic() < deadline, "the monitor stopped reading"
                self.rt.loop.run_once(0.01)

    def recv_line(self, seconds: float = 5.0) -> bytes:
        deadline = time.monotonic() + seconds
        while b"\r\n" not in self.buf:
            try:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise EOFError("monitor closed the connection")
                self.buf += chunk
                continue
            except BlockingIOError:
                pass
            assert time.monotonic() < deadline, "no reply from the monitor"
            self.rt.loop.run_once(0.02)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def recv(self) -> dict[str, Any]:
        return json.loads(self.recv_line())

    def cmd(self, msg: dict[str, Any] | bytes) -> dict[str, Any]:
        """Send, return the reply (skipping events)."""
        self.send(msg)
        while True:
            r = self.recv()
            if "event" not in r:
                return r

    def close(self) -> None:
        self.sock.close()


def qmp(rt: Runtime, tmp: str) -> Qmp:
    return Qmp(rt, f"{tmp}/qmp.sock")


class GuestProgram:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.handle = rt.agent.open(GUEST_PATH, "r+")
        self.received = bytearray()

    def write(self, data: bytes) -> None:
        self.rt.agent.write(self.handle, base64.b64encode(data).decode())

    def read_some(self) -> None:
        r = self.rt.agent.read(self.handle, 1 << 20)
        self.received += base64.b64decode(r["buf-b64"])


class Host:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.received = bytearray()
        self.outbox = bytearray()
        self.eof = False

    def recv_some(self) -> None:
        while not self.eof:
            try:
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.eof = True
                return
            if not chunk:
                self.eof = True
                return
            self.received += chunk

    def send_some(self) -> None:
        while self.outbox:
            try:
                n = self.sock.send(self.outbox[: 1 << 16])
            except BlockingIOError:
                return
            del self.outbox[:n]

    def close(self) -> None:
        self.sock.close()


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}
