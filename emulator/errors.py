"""The emulator's error hierarchy.

Two families, kept apart as QEMU keeps them apart:

* ``ConfigError``: the host side (a ``-device`` line, ``device_add``, a
  property) asked for something invalid.  The message is QEMU's, word for
  word, so management tools that match on it keep working.  Nothing changed.
* ``GuestError``: the guest broke the virtio contract (a malformed ring).  It
  never escapes into a caller: the device catches it, marks itself broken
  (NEEDS_RESET) and reports the message, as QEMU's ``virtio_error()`` does.
"""

from __future__ import annotations


class VSerialError(Exception):
    """Base of every error the emulator raises on purpose."""


class ConfigError(VSerialError):
    """Host-side misconfiguration; ``str(err)`` is QEMU's message."""


class GuestError(VSerialError):
    """The guest violated the virtio contract (QEMU: ``virtio_error``)."""


class MemoryAccessError(GuestError):
    """An access outside guest RAM (QEMU fails the DMA mapping)."""

    def __init__(self, addr: int, length: int, size: int) -> None:
        super().__init__(
            f"guest memory access out of range: addr 0x{addr:x} len {length} "
            f"(RAM size 0x{size:x})"
        )
        self.addr = addr
        self.length = length


class GuestOSError(OSError):
    """An errno the simulated guest kernel returns to a guest program."""


class GuestNotRunning(VSerialError):
    """A guest program was asked to run while the machine is stopped."""

    def __init__(self) -> None:
        super().__init__("the guest is not running: the machine is stopped (cont resumes it)")
