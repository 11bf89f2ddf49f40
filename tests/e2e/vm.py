"""Start ``vserial run`` as a separate process and drive it as a management
tool would: QEMU's own QMP client library over a unix socket, and plain
sockets for the host side of the ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parents[2]
# The ``vserial`` console script of the environment running the tests.
VSERIAL_SCRIPT = str(Path(sys.executable).with_name("vserial"))


def unix_listening(path: str) -> bool:
    """A unix socket at ``path`` is in the listening state (/proc/net/unix
    flag __SO_ACCEPTCON), so a connect will not be refused.  Checking the
    file alone races: it exists from bind(), before listen()."""
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return True
    return False


def wait_listening(path: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not unix_listening(path):
        if proc.poll() is not None:
            raise AssertionError(f"vserial exited {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {path}")
        time.sleep(0.02)


class VM:
    """``vserial run ARGS -qmp unix:...``; ``@`` in ARGS stands for the VM's
    own temporary directory.  ``program`` is what runs (``python -m
    emulator.cli.main`` unless given, e.g. ``[VSERIAL_SCRIPT]``)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, program: list[str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vs", dir="/tmp"))
        self.qmp_path = str(self.dir / "qmp.sock")
        self.args = [a.replace("@", str(self.dir) + "/") for a in args]
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        program = program or [sys.executable, "-m", "emulator.cli.main"]
        self.proc = subprocess.Popen(
            [*program, "run", *self.args, "-qmp", f"unix:{self.qmp_path},server=on,wait=off"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=ROOT,
        )
        self.qmp = QMPClient("test")
        self.events: list[dict[str, Any]] = []

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def wait_socket(self, timeout: float = 20.0) -> None:
        """Until the monitor socket listens (it is bound, then listened on,
        before the machine runs; a client that connects early gets its
        greeting once it does)."""
        wait_listening(self.qmp_path, self.proc, timeout)

    async def start(self, timeout: float = 20.0) -> None:
        await asyncio.to_thread(self.wait_socket, timeout)
        await self.qmp.connect(self.qmp_path)

    async def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        return await self.qmp.execute(name, args)

    async def next_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next event called ``name`` (earlier ones are kept in events)."""
        async def wait() -> dict[str, Any]:
            async for ev in self.qmp.events:
                self.events.append(dict(ev))
                if ev["event"] == name:
                    return dict(ev)
            raise AssertionError("event stream ended")

        return await asyncio.wait_for(wait(), timeout)

    def host(self, name: str) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path(name))
        return s

    async def wait_for(self, predicate: Any, what: str, timeout: float = 10.0) -> None:
        """Poll the monitor until ``await predicate()`` is true."""
        deadline = time.monotonic() + timeout
        while not await predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def quit(self) -> int:
        """``quit``: the SHUTDOWN event, then the reply, then the process
        exits and closes the monitor (the client sees EOF, as with QEMU)."""
        await self.cmd("quit")
        try:
            await self.qmp.disconnect()
        except EOFError:
            pass
        return self.wait()

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def recv_exactly(sock: socket.socket, n: int, timeout: float = 20.0) -> bytes:
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"socket closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)
