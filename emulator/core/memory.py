"""Guest RAM: a bounds-checked, flat address space with a dirty-page log.

Every device and guest access goes through here, so an out-of-range access is
one precise error (never an ``IndexError``), and every write marks its 4 KiB
pages dirty for migration to read (QEMU's dirty bitmap, one byte per page).
The backing store is a ``bytearray``; ``view()`` hands out zero-copy
memoryviews so bulk data (a 32 KiB write) never passes through per-byte
Python.  Views are never cached by callers: a restore replaces the contents
in place, but queues must always re-read the rings.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from emulator.errors import ConfigValueError, MemoryAccessError, StateError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MiB = 1 << 20
DEFAULT_RAM_SIZE = 64 * MiB

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ONES = b"\x01" * 64  # dirty-map fill for writes of up to 64 pages at once


class GuestMemory:
    """Flat guest-physical RAM starting at address 0."""

    __slots__ = ("size", "_ram", "_mv", "_dirty", "_pages", "ro", "ring_buf", "ring_dirty")

    def __init__(self, size: int = DEFAULT_RAM_SIZE) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ConfigValueError(f"RAM size must be a positive multiple of {PAGE_SIZE}: {size}")
        self.size = size
        self._ram = bytearray(size)
        self._mv = memoryview(self._ram)
        # A read-only view of all of RAM, for ranges already bounds-checked
        # (a popped element's buffers): slicing it costs no extra check.
        self.ro = self._mv.toreadonly()
        self._pages = size >> PAGE_SHIFT
        # One byte per page; 1 = written since the log was last collected.
        # Never rebound (cleared in place), so holders of ``ring_dirty`` stay valid.
        self._dirty = bytearray(self._pages)
        # The RAM buffer and the dirty map, for virtqueue code that accesses
        # ring structures whose whole extent it validated against ``size``
        # when the ring was set up.  Writers mark ``ring_dirty[addr >> 12]``.
        self.ring_buf = self._ram
        self.ring_dirty = self._dirty

    # -- bounds ---------------------------------------------------------------
    def _check(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise MemoryAccessError(addr, length, self.size)

    def _mark(self, addr: int, length: int) -> None:
        if length <= 0:
            return
        first = addr >> PAGE_SHIFT
        last = (addr + length - 1) >> PAGE_SHIFT
        if first == last:
            self._dirty[first] = 1
        else:
            self._dirty[first : last + 1] = b"\x01" * (last - first + 1)  # any size

    # -- bulk access ----------------------------------------------------------
    def read(self, addr: int, length: int) -> bytes:
        """A copy of guest RAM (immutable: later writes do not show)."""
        self._check(addr, length)
        return bytes(self._mv[addr : addr + length])

    def view(self, addr: int, length: int) -> memoryview:
        """A read-only zero-copy view of guest RAM."""
        self._check(addr, length)
        return self._mv[addr : addr + length].toreadonly()

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        if type(data) is memoryview and data.format != "B":
            data = data.cast("B")  # len() must count bytes, not items
        n = len(data)
        end = addr + n
        if addr < 0 or end > self.size:
            raise MemoryAccessError(addr, n, self.size)
        self._mv[addr:end] = data
        if n:
            first = addr >> PAGE_SHIFT
            last = (end - 1) >> PAGE_SHIFT
            if first == last:
                self._dirty[first] = 1
            elif last - first < 64:
                self._dirty[first : last + 1] = _ONES[: last - first + 1]
            else:
                self._dirty[first : last + 1] = b"\x01" * (last - first + 1)

    def fill(self, addr: int, length: int, byte: int = 0) -> None:
        self._check(addr, length)
        self._mv[addr : addr + length] = bytes([byte]) * length
        self._mark(addr, length)

    # -- little-endian scalars (virtio 1.x is always little-endian) -----------
    def read_u16(self, addr: int) -> int:
        if addr < 0 or addr + 2 > self.size:
            raise MemoryAccessError(addr, 2, self.size)
        value: int = _U16.unpack_from(self._ram, addr)[0]
        return value

    def read_u32(self, addr: int) -> int:
        if addr < 0 or addr + 4 > self.size:
            raise MemoryAccessError(addr, 4, self.size)
        value: int = _U32.unpack_from(self._ram, addr)[0]
        return value

    def read_u64(self, addr: int) -> int:
        if addr < 0 or addr + 8 > self.size:
            raise MemoryAccessError(addr, 8, self.size)
        value: int = _U64.unpack_from(self._ram, addr)[0]
        return value

    def write_u16(self, addr: int, value: int) -> None:
        if addr < 0 or addr + 2 > self.size:
            raise MemoryAccessError(addr, 2, self.size)
        _U16.pack_into(self._ram, addr, value & 0xFFFF)
        self._dirty[addr >> PAGE_SHIFT] = 1
        self._dirty[(addr + 1) >> PAGE_SHIFT] = 1

    def write_u32(self, addr: int, value: int) -> None:
        if addr < 0 or addr + 4 > self.size:
            raise MemoryAccessError(addr, 4, self.size)
        _U32.pack_into(self._ram, addr, value & 0xFFFFFFFF)
        self._mark(addr, 4)

    def write_u64(self, addr: int, value: int) -> None:
        if addr < 0 or addr + 8 > self.size:
            raise MemoryAccessError(addr, 8, self.size)
        _U64.pack_into(self._ram, addr, value & 0xFFFFFFFFFFFFFFFF)
        self._mark(addr, 8)

    def unpack_from(self, fmt: struct.Struct, addr: int) -> tuple[int, ...]:
        if addr < 0 or addr + fmt.size > self.size:
            raise MemoryAccessError(addr, fmt.size, self.size)
        return fmt.unpack_from(self._ram, addr)

    def pack_into(self, fmt: struct.Struct, addr: int, *values: int) -> None:
        if addr < 0 or addr + fmt.size > self.size:
            raise MemoryAccessError(addr, fmt.size, self.size)
        fmt.pack_into(self._ram, addr, *values)
        self._mark(addr, fmt.size)

    # -- whole-RAM copies (restore stages incoming RAM before applying it) -----
    def clone(self) -> GuestMemory:
        """A separate copy of this RAM (clean dirty log)."""
        other = GuestMemory(self.size)
        other._mv[:] = self._mv
        return other

    def assign(self, other: GuestMemory) -> None:
        """Take ``other``'s contents in place; every page counts as written."""
        if other.size != self.size:
            raise StateError(f"RAM sizes differ: 0x{other.size:x} vs 0x{self.size:x}")
        self._mv[:] = other._mv
        self.mark_all_dirty()

    # -- dirty log (read by snapshot and migration) ---------------------------
    @property
    def page_count(self) -> int:
        return self._pages

    def dirty_pages(self, clear: bool = True) -> list[int]:
        """Pages written since the last collection, in ascending order."""
        pages = [i for i, d in enumerate(self._dirty) if d] if self._dirty.find(1) >= 0 else []
        if clear and pages:
            self._dirty[:] = bytes(self._pages)
        return pages

    def mark_all_dirty(self) -> None:
        self._dirty[:] = b"\x01" * self._pages

    def page(self, index: int) -> memoryview:
        if not 0 <= index < self._pages:
            raise MemoryAccessError(index << PAGE_SHIFT, PAGE_SIZE, self.size)
        start = index << PAGE_SHIFT
        return self._mv[start : start + PAGE_SIZE].toreadonly()

    def nonzero_pages(self) -> Iterator[int]:
        """Indices of pages holding any non-zero byte (zero pages compact)."""
        zero = bytes(PAGE_SIZE)
        mv = self._mv
        for i in range(self._pages):
            start = i << PAGE_SHIFT
            if mv[start : start + PAGE_SIZE] != zero:
                yield i

    def load_page(self, index: int, data: bytes | memoryview) -> None:
        if not 0 <= index < self._pages or len(data) != PAGE_SIZE:
            raise MemoryAccessError(index << PAGE_SHIFT, len(data), self.size)
        start = index << PAGE_SHIFT
        self._mv[start : start + PAGE_SIZE] = data
