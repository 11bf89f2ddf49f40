"""``-chardev ringbuf``: ``size=``, alias ``memory``; keeps the last bytes
the guest wrote for ``ringbuf-read`` (QEMU's chardev/char-ringbuf.c)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from emulator.core.chardev import Chardev
from emulator.errors import ConfigError
from emulator.io.backend import Backend, parse_size, qapi_member

DEFAULT_SIZE = 65536  # char-ringbuf.c: opts->has_size ? opts->size : 65536


def host_memory() -> int:
    """Physical memory of the host, in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


class RingbufChardev(Chardev):
    """``-chardev ringbuf,size=N``: keeps the last N bytes the guest wrote;
    ``ringbuf-read`` drains them and ``ringbuf-write`` appends to the same
    ring (char-ringbuf.c).  The guest never blocks on it.

    QEMU g_malloc0s the whole ring up front and aborts when it cannot
    ("GLib: failed to allocate N bytes").  Here the ring holds only the
    unread bytes, so memory follows what was written, and a size this host
    could never hold is refused, with GLib's words, before anything is
    allocated."""

    kind = "ringbuf"

    def __init__(self, chardev_id: str, size: int = DEFAULT_SIZE, kind: str = "ringbuf") -> None:
        super().__init__(chardev_id)
        self.kind = kind
        if size & (size - 1) or size == 0:
            raise ConfigError("size of ringbuf chardev must be power of two")
        limit = host_memory()
        if limit and size > limit:
            raise ConfigError(f"failed to allocate {size} bytes")
        self.size = size
        self.unread = bytearray()  # the bytes between QEMU's cons and prod
        self.be_open = True

    def write(self, data: memoryview) -> int:
        n = len(data)
        self.unread += data[-self.size :] if n > self.size else data
        excess = len(self.unread) - self.size
        if excess > 0:  # the oldest bytes are overwritten
            del self.unread[:excess]
        return n

    def count(self) -> int:
        return len(self.unread)

    def read(self, size: int) -> bytes:
        n = min(size, len(self.unread))
        out = bytes(self.unread[:n])
        del self.unread[:n]
        return out

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": self.kind, "label": self.id}


class RingbufBackend(Backend):
    name = "ringbuf"
    aliases = ("memory",)
    options: ClassVar[dict[str, str]] = {"size": "size"}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        size = parse_size("size", opts["size"]) if "size" in opts else 0
        # size=0 means the default.  (QEMU's QMP path makes a zero-sized ring
        # from it, and a guest write then crashes QEMU; we do not copy that.)
        return RingbufChardev(chardev_id, size or DEFAULT_SIZE, kind=opts.get("backend", "ringbuf"))

    def qmp_to_opts(self, data: Mapping[str, Any]) -> dict[str, str]:
        """ChardevRingbuf: ``size`` is a QAPI int; QEMU keeps it in a size_t,
        so a negative size is a huge one (-1 is not a power of two)."""
        opts = super().qmp_to_opts({k: v for k, v in data.items() if k != "size"})
        size = qapi_member(data, "size", "int", "backend.data.")
        if size is not None:
            if size >= 2**63:
                raise ConfigError("Invalid parameter type for 'backend.data.size', expected: integer")
            opts["size"] = str(size % 2**64)
        return opts
