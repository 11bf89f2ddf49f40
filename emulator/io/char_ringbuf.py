"""``-chardev ringbuf``: ``size=``, alias ``memory``; keeps the last bytes
the guest wrote for ``ringbuf-read`` (QEMU's chardev/char-ringbuf.c)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from emulator.core.chardev import Chardev
from emulator.errors import ConfigError
from emulator.io.backend import Backend, parse_size


class RingbufChardev(Chardev):
    """``-chardev ringbuf,size=N``: keeps the last N bytes the guest wrote;
    ``ringbuf-read`` drains them and ``ringbuf-write`` appends to the same
    ring (char-ringbuf.c).  The guest never blocks on it."""

    kind = "ringbuf"

    def __init__(self, chardev_id: str, size: int = 65536, kind: str = "ringbuf") -> None:
        super().__init__(chardev_id)
        self.kind = kind
        if size & (size - 1) or size == 0:
            raise ConfigError("size of ringbuf chardev must be power of two")
        self.size = size
        self.buf = bytearray(size)
        self.prod = 0
        self.cons = 0
        self.be_open = True

    def write(self, data: memoryview) -> int:
        n = len(data)
        mask = self.size - 1
        for start in range(0, n, self.size):
            chunk = data[start : start + self.size]
            pos = self.prod & mask
            first = min(len(chunk), self.size - pos)
            self.buf[pos : pos + first] = chunk[:first]
            self.buf[: len(chunk) - first] = chunk[first:]
            self.prod += len(chunk)
        if self.prod - self.cons > self.size:
            self.cons = self.prod - self.size
        return n

    def count(self) -> int:
        return self.prod - self.cons

    def read(self, size: int) -> bytes:
        n = min(size, self.count())
        mask = self.size - 1
        out = bytearray()
        pos = self.cons & mask
        first = min(n, self.size - pos)
        out += self.buf[pos : pos + first]
        out += self.buf[: n - first]
        self.cons += n
        return bytes(out)

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
        return RingbufChardev(chardev_id, size or 65536, kind=opts.get("backend", "ringbuf"))
