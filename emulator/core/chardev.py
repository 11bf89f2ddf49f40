"""Character devices: the host side of a port.

The contract is QEMU's chardev front end, reduced to what virtio-serial uses:

* front -> back: ``write(data) -> int`` takes what it can *now* (never
  blocks; fewer bytes than offered means "throttle me"), ``set_fe_open``
  tells the backend the guest opened or closed the port, ``accept_input``
  says the guest has room again.
* back -> front (``ChardevFrontend``): ``chr_can_read`` says how much the
  guest can take, ``chr_read(data)`` offers host data and returns how much
  was taken (never more than the guest had room for; the backend keeps the
  rest, nothing is lost), ``chr_event(opened)`` reports the host program
  connecting or leaving, ``chr_write_unblocked`` ends throttling.

``MemoryChardev`` is a complete in-process backend: the host program is the
caller, which reads what the guest wrote from ``received`` and queues bytes
for the guest with ``send``.  ``window`` simulates a slow reader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from emulator.errors import ConfigError


class IOLoop(Protocol):
    """The main loop a backend with real I/O runs on (emulator/io/mainloop.py
    implements it); the sans-IO core only names it."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_writer(self, fd: int) -> None: ...

    def add_hangup(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_hangup(self, fd: int) -> None: ...

    def has_reader(self, fd: int) -> bool: ...

    def has_writer(self, fd: int) -> bool: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> int: ...

    def cancel(self, handle: int) -> None: ...

    def call_soon(self, callback: Callable[[], None]) -> None: ...


class ChardevFrontend(Protocol):
    def chr_can_read(self) -> int: ...

    def chr_read(self, data: bytes | memoryview) -> int: ...

    def chr_event(self, opened: bool) -> None: ...

    def chr_write_unblocked(self) -> None: ...


class Chardev:
    """Base backend; subclasses implement the byte movement."""

    kind = "base"

    def __init__(self, chardev_id: str) -> None:
        self.id = chardev_id
        self.be_open = False  # a host program is connected
        self.fe_open = False  # the guest side has the port open
        self.frontend: ChardevFrontend | None = None
        self.location = ""  # the command-line option that made it, for messages

    # -- front-end attachment (qemu_chr_fe_init / set_handlers) ----------------
    def attach(self, frontend: ChardevFrontend) -> None:
        if self.frontend is not None:
            raise ConfigError(f"chardev '{self.id}' is in use")
        self.frontend = frontend

    def detach(self) -> None:
        self.frontend = None
        self.fe_open = False

    @property
    def in_use(self) -> bool:
        return self.frontend is not None

    # -- life cycle (the runtime's main loop) -----------------------------------
    def open(self, loop: IOLoop) -> None:
        """Start I/O on ``loop``; raise ConfigError with QEMU's message if the
        backend cannot open.  In-process backends have nothing to do."""

    def close(self) -> None:
        """Stop I/O and release descriptors (chardev-remove, shutdown)."""

    def flush_blocking(self, data: bytes, timeout: float) -> None:
        """Last words at shutdown: write ``data`` waiting up to ``timeout``."""
        self.write(memoryview(data))

    # -- front -> back -----------------------------------------------------------
    def write(self, data: memoryview) -> int:
        raise NotImplementedError

    def set_fe_open(self, is_open: bool) -> None:
        self.fe_open = is_open

    def accept_input(self) -> None:
        """The guest made room: push whatever is waiting."""

    # -- back -> front helpers ----------------------------------------------------
    def _be_event(self, opened: bool) -> None:
        self.be_open = opened
        if self.frontend is not None:
            self.frontend.chr_event(opened)

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": self.kind, "label": self.id}


class NullChardev(Chardev):
    """``-chardev null``: swallows everything, never sends.

    As in QEMU (null_chr_open sets ``be_opened = false``) it never reports
    OPENED, so a virtserialport on it stays host-closed; a virtconsole is
    host-open from realize on regardless.
    """

    kind = "null"

    def write(self, data: memoryview) -> int:
        return len(data)


class MemoryChardev(Chardev):
    """An in-memory host program, with an optional slow-reader window."""

    kind = "memory"

    def __init__(self, chardev_id: str, *, connected: bool = True, window: int | None = None) -> None:
        super().__init__(chardev_id)
        self.be_open = connected
        self.received = bytearray()  # guest -> host, in order
        self._outbox = bytearray()  # host -> guest; bytes before _out_pos are taken
        self._out_pos = 0
        self.window = window  # bytes the reader will take before it stalls
        self.keep = True  # False: count bytes, keep none (a sink for benches)
        self.received_count = 0
        self.short_writes = 0

    def write(self, data: memoryview) -> int:
        n = len(data)
        if self.window is not None:
            if self.window <= 0:
                self.short_writes += 1
                return 0
            if n > self.window:
                n = self.window
                data = data[:n]
                self.short_writes += 1
            self.window -= n
        if self.keep:
            self.received += data
        self.received_count += n
        return n

    def take(self) -> bytes:
        out = bytes(self.received)
        self.received.clear()
        return out

    def grant(self, nbytes: int | None) -> None:
        """The slow reader reads ``nbytes`` more (None: reads at full speed)."""
        if nbytes is None:
            self.window = None
        else:
            self.window = (self.window or 0) + nbytes
        if self.frontend is not None:
            self.frontend.chr_write_unblocked()

    @property
    def pending(self) -> int:
        """Host -> guest bytes the guest has not taken yet."""
        return len(self._outbox) - self._out_pos

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue host -> guest bytes; returns how many the guest took now."""
        self._outbox += data
        return self.pump()

    def pump(self) -> int:
        fe = self.frontend
        if fe is None or not self.be_open or self._out_pos == len(self._outbox):
            return 0
        moved = 0
        with memoryview(self._outbox) as view:
            while self._out_pos < len(view):
                n = fe.chr_read(view[self._out_pos :])
                if n <= 0:
                    break
                self._out_pos += n
                moved += n
        if self._out_pos == len(self._outbox):
            self._outbox.clear()
            self._out_pos = 0
        elif self._out_pos > (1 << 20):
            del self._outbox[: self._out_pos]
            self._out_pos = 0
        return moved

    def accept_input(self) -> None:
        self.pump()

    def connect(self) -> None:
        if not self.be_open:
            self._be_event(True)
            self.pump()

    def disconnect(self) -> None:
        if self.be_open:
            self._be_event(False)
