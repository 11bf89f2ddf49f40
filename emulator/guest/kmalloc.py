"""The simulated guest kernel's allocator over guest RAM.

Like Linux's kmalloc, sizes round up to a power of two (64 B minimum) and
freed blocks go back to a per-size free list; fresh blocks come from a bump
pointer, aligned to their own size (up to a page), which also gives the
virtqueue rings the alignment the spec asks for.  The low 1 MiB is left to
"firmware", as on a PC.
"""

from __future__ import annotations

import errno

from emulator.core.memory import PAGE_SIZE
from emulator.errors import GuestKernelBug, GuestOSError

_MIN_SHIFT = 6


def _bucket(size: int) -> int:
    return max(_MIN_SHIFT, (size - 1).bit_length())


class Kmalloc:
    __slots__ = ("base", "limit", "_brk", "_free", "_sizes", "allocated")

    def __init__(self, base: int, limit: int) -> None:
        self.base = base
        self.limit = limit
        self._brk = base
        self._free: dict[int, list[int]] = {}
        self._sizes: dict[int, int] = {}  # addr -> bucket
        self.allocated = 0

    def alloc(self, size: int) -> int:
        if size <= 0:
            raise GuestKernelBug("kmalloc of zero bytes")
        b = _bucket(size)
        free = self._free.get(b)
        if free:
            addr = free.pop()
        else:
            block = 1 << b
            align = min(block, PAGE_SIZE)
            addr = (self._brk + align - 1) & ~(align - 1)
            if addr + block > self.limit:
                raise GuestOSError(errno.ENOMEM, "Cannot allocate memory")
            self._brk = addr + block
        self._sizes[addr] = b
        self.allocated += 1 << b
        return addr

    def free(self, addr: int) -> None:
        b = self._sizes.pop(addr, None)
        if b is None:
            # Linux would oops; the simulation says which free was wrong.
            raise GuestKernelBug(f"kfree of 0x{addr:x}, which is not an allocated block")
        self._free.setdefault(b, []).append(addr)
        self.allocated -= 1 << b

    def state(self) -> dict[str, object]:
        return {
            "brk": self._brk,
            "free": {b: list(v) for b, v in self._free.items()},
            "sizes": dict(self._sizes),
        }

    def load_state(self, st: dict[str, object]) -> None:
        self._brk = int(st["brk"])  # type: ignore[call-overload]
        self._free = {int(b): list(v) for b, v in st["free"].items()}  # type: ignore[attr-defined]
        self._sizes = {int(a): int(b) for a, b in st["sizes"].items()}  # type: ignore[attr-defined]
        self.allocated = sum(1 << b for b in self._sizes.values())
