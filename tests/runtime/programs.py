"""The programs around a running Runtime, over real sockets: a QMP client on
its monitor socket (``Qmp``), a host program on a chardev socket (``Host``),
a guest program through the guest agent (``GuestProgram``); and the ``build``
fixture and ``pump``/``spin``/``cpu_over`` that drive its main loop.

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


def cpu_over(rt: Runtime, seconds: float = 0.4) -> float:
    """CPU seconds the process used while the loop ran for ``seconds``."""
    t0 = time.process_time()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rt.loop.run_once(0.1)
    return time.process_time() - t0


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
