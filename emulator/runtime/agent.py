"""Guest programs driven over the monitor, in the guest agent's terms.

``guest-file-open/read/write/close`` keep the QEMU guest agent's names,
arguments, return shapes and messages (qga/commands-posix.c): handles are
integers counting from 1000, reads default to 4096 bytes and return
``{count, buf-b64, eof}``, writes return ``{count, eof}``.

Two things differ from a real qemu-ga on purpose, because the agent here is
a stand-in for *a guest program*: reads never block (qemu-ga also opens
files non-blocking), but a write is taken whole and flushed by the program
as the port allows, exactly as a blocking ``write(2)`` loop would.  So
bytes written while the host side is closed, or while a slow host reader
throttles the port, wait in the program and are delivered in order once
the port can take them; nothing is dropped.  Closing a handle with bytes
still pending closes the file once they are flushed, as ``close`` after a
blocking write would.
"""

from __future__ import annotations

import base64
import errno
import os
from collections import deque
from typing import TYPE_CHECKING, Any

from emulator.errors import AgentError, GuestNotRunning, GuestOSError, QMPError
from emulator.guest.kernel import GuestFile
from emulator.runtime.qmp import qbase64_decode

if TYPE_CHECKING:
    from emulator.machine.machine import Machine

FIRST_HANDLE = 1000  # QGA_PSTATE_DEFAULT_FD_COUNTER
READ_COUNT_DEFAULT = 4096  # QGA_READ_COUNT_DEFAULT
READ_COUNT_MAX = 48 * 1024 * 1024  # GUEST_FILE_READ_COUNT_MAX
OPEN_MODES = {"r", "rb", "w", "wb", "a", "ab", "r+", "rb+", "r+b", "w+", "wb+", "w+b", "a+", "ab+", "a+b"}


class AgentHandle:
    def __init__(self, handle: int, file: GuestFile, mode: str) -> None:
        self.handle = handle
        self.file = file
        self.mode = mode
        self.pending: deque[memoryview] = deque()
        self.pending_bytes = 0
        self.written = 0  # bytes the guest program has written to the port
        self.closing = False
        self.error: str | None = None


class GuestAgent:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.handles: dict[int, AgentHandle] = {}
        self.draining: list[AgentHandle] = []  # closed by the program, still flushing
        self.next_handle = FIRST_HANDLE

    def _get(self, handle: int) -> AgentHandle:
        h = self.handles.get(handle)
        if h is None:
            raise AgentError(f"handle '{handle}' has not been found")
        return h

    def _guest(self) -> None:
        if not self.machine.guest.booted or not self.machine.running:
            raise AgentError("Guest agent is not available: the guest is not running")

    # ----------------------------------------------------------------- commands
    def open(self, path: str, mode: str = "r") -> int:
        self._guest()
        if mode not in OPEN_MODES:
            raise AgentError(f"invalid file open mode '{mode}'")
        try:
            f = self.machine.guest.open(path)
        except GuestOSError as err:
            raise AgentError(f"failed to open file '{path}' (mode: '{mode}'): {os.strerror(err.errno or 0)}") from None
        except GuestNotRunning:
            raise AgentError("Guest agent is not available: the guest is not running") from None
        handle = self.next_handle
        self.next_handle += 1
        self.handles[handle] = AgentHandle(handle, f, mode)
        return handle

    def read(self, handle: int, count: int | None = None) -> dict[str, Any]:
        self._guest()
        h = self._get(handle)
        if count is None:
            count = READ_COUNT_DEFAULT
        if count < 0 or count > READ_COUNT_MAX:
            raise AgentError(f"value '{count}' is invalid for argument count")
        out = bytearray()
        eof = False
        while len(out) < count:
            try:
                chunk = h.file.read(count - len(out))
            except GuestOSError as err:
                if err.errno == errno.EAGAIN:
                    break
                raise AgentError(f"failed to read file: {os.strerror(err.errno or 0)}") from None
            except GuestNotRunning:
                break
            if not chunk:
                eof = True
                break
            out += chunk
        return {"count": len(out), "buf-b64": base64.b64encode(out).decode(), "eof": eof}

    def write(self, handle: int, buf_b64: str, count: int | None = None) -> dict[str, Any]:
        """The monitor's guest-file-write: like every guest-* command, it
        needs the guest running (a real agent cannot answer a paused guest)."""
        self._guest()
        self._get(handle)
        try:
            data = qbase64_decode(buf_b64)
        except QMPError as err:
            raise AgentError(err.desc) from None
        if count is None:
            count = len(data)
        elif count < 0 or count > len(data):
            raise AgentError(f"value '{count}' is invalid for argument count")
        self.write_bytes(handle, memoryview(data)[:count])
        return {"count": count, "eof": False}

    def write_bytes(self, handle: int, data: bytes | memoryview) -> None:
        """The program writes ``data`` (taken whole, flushed as the port allows)."""
        h = self._get(handle)
        if h.error is None and h.file.port.removed:
            h.error = os.strerror(errno.ENODEV)
        if h.error is not None:
            raise AgentError(f"failed to write to file: {h.error}")
        if len(data):
            h.pending.append(memoryview(data))
            h.pending_bytes += len(data)
            self.flush_one(h)
            if h.error is not None:  # the port went away under this write
                raise AgentError(f"failed to write to file: {h.error}")

    def close(self, handle: int) -> None:
        self._guest()
        h = self._get(handle)
        del self.handles[handle]
        h.closing = True
        if h.pending:
            self.draining.append(h)
            self.flush_one(h)
        else:
            self._really_close(h)

    def reset(self) -> None:
        """The guest was reset: its programs and their descriptors are gone."""
        self.handles.clear()
        self.draining.clear()

    def pending(self, handle: int) -> int:
        return self._get(handle).pending_bytes

    # ------------------------------------------------------------ the programs
    def _really_close(self, h: AgentHandle) -> None:
        try:
            h.file.close()
        except GuestNotRunning:
            self.draining.append(h)  # close when the machine runs again
            return
        if h in self.draining:
            self.draining.remove(h)

    def flush_one(self, h: AgentHandle) -> None:
        f = h.file
        while h.pending:
            view = h.pending[0]
            try:
                n = f.write(view)
            except GuestOSError as err:
                if err.errno == errno.EAGAIN:
                    return
                # The port is gone (ENODEV): what was not written cannot be.
                h.error = os.strerror(err.errno or 0)
                h.pending.clear()
                h.pending_bytes = 0
                break
            except GuestNotRunning:
                return
            h.written += n
            h.pending_bytes -= n
            if n == len(view):
                h.pending.popleft()
            else:
                h.pending[0] = view[n:]
        if h.closing:
            self._really_close(h)

    def flush(self) -> None:
        """Let every program with pending bytes write what the port takes."""
        for h in list(self.handles.values()):
            if h.pending:
                self.flush_one(h)
        for h in list(self.draining):
            self.flush_one(h)

    @property
    def busy(self) -> bool:
        return any(h.pending for h in self.handles.values()) or bool(self.draining)
