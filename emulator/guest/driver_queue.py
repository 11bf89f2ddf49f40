"""The driver side of a split virtqueue, as the Linux guest drives it.

This is the simulated guest's half of the ring (Linux's virtio_ring.c):
a free list of descriptors, ``add`` publishes a chain in the avail ring,
``kick_needed`` applies the event-index rule, ``get_buf`` collects used
entries.  It writes the exact byte layout of the spec into guest memory, so
the device side is always exercised through real rings (rust-vmm's mock.rs,
made a product feature).
"""

from __future__ import annotations

import errno
import struct
from typing import Any

from emulator.core import vring
from emulator.core.memory import GuestMemory
from emulator.errors import GuestKernelBug, GuestOSError
from emulator.guest.kmalloc import Kmalloc

_DESC = vring.DESC
_DESC_PACK = vring.DESC.pack_into
_USED_UNPACK = vring.USED_ELEM.unpack_from
_U16_UNPACK = struct.Struct("<H").unpack_from
_U16_PACK = struct.Struct("<H").pack_into


class DriverQueue:
    __slots__ = (
        "index", "num", "desc", "avail", "used", "free_head", "num_free", "avail_idx",
        "last_used_idx", "num_added", "tokens", "chain_len", "event_idx", "broken",
    )

    def __init__(self, mem: GuestMemory, alloc: Kmalloc, index: int, num: int, event_idx: bool) -> None:
        self.index = index
        self.num = num
        self.desc = alloc.alloc(vring.desc_table_size(num))
        self.avail = alloc.alloc(vring.avail_size(num))
        self.used = alloc.alloc(vring.used_size(num))
        mem.fill(self.desc, vring.desc_table_size(num))
        mem.fill(self.avail, vring.avail_size(num))
        mem.fill(self.used, vring.used_size(num))
        # Free descriptors are chained through their ``next`` fields.
        for i in range(num - 1):
            mem.write_u16(self.desc + i * 16 + 14, i + 1)
        self.free_head = 0
        self.num_free = num
        self.avail_idx = 0
        self.last_used_idx = 0
        self.num_added = 0
        self.tokens: list[Any] = [None] * num
        self.chain_len = [0] * num
        self.event_idx = event_idx
        self.broken = False

    # The rings were allocated inside RAM, so ring fields are accessed
    # straight in the RAM buffer (``GuestMemory.ring_buf``), marking the
    # dirty log by hand.

    def add(self, mem: GuestMemory, out_bufs: list[tuple[int, int]], in_bufs: list[tuple[int, int]], token: Any) -> int:
        """virtqueue_add: publish one chain; ENOSPC when the ring is full."""
        n = len(out_bufs) + len(in_bufs)
        if n == 0:
            raise GuestKernelBug("virtqueue_add of an empty chain")
        if n == 1:
            if out_bufs:
                addr, length = out_bufs[0]
                return self.add_one(mem, addr, length, 0, token)
            addr, length = in_bufs[0]
            return self.add_one(mem, addr, length, vring.VRING_DESC_F_WRITE, token)
        if self.num_free < n:
            raise GuestOSError(errno.ENOSPC, "virtqueue full")
        buf, dirty = mem.ring_buf, mem.ring_dirty
        head = i = self.free_head
        last = n - 1
        k = 0
        desc = self.desc
        for bufs, flag in ((out_bufs, 0), (in_bufs, vring.VRING_DESC_F_WRITE)):
            for addr, length in bufs:
                base = desc + i * 16
                nxt = _U16_UNPACK(buf, base + 14)[0]
                flags = flag | (vring.VRING_DESC_F_NEXT if k < last else 0)
                _DESC_PACK(buf, base, addr, length, flags, nxt)
                dirty[base >> 12] = 1
                k += 1
                if k <= last:
                    i = nxt
        self.free_head = _U16_UNPACK(buf, desc + i * 16 + 14)[0]
        self.num_free -= n
        self.tokens[head] = token
        self.chain_len[head] = n
        self._publish(buf, dirty, head)
        return head

    def add_one(self, mem: GuestMemory, addr: int, length: int, flags: int, token: Any) -> int:
        """virtqueue_add with one buffer (what virtio_console always does)."""
        if not self.num_free:
            raise GuestOSError(errno.ENOSPC, "virtqueue full")
        buf, dirty = mem.ring_buf, mem.ring_dirty
        head = self.free_head
        base = self.desc + head * 16
        nxt = _U16_UNPACK(buf, base + 14)[0]
        _DESC_PACK(buf, base, addr, length, flags, nxt)
        dirty[base >> 12] = 1
        self.free_head = nxt
        self.num_free -= 1
        self.tokens[head] = token
        self.chain_len[head] = 1
        self._publish(buf, dirty, head)
        return head

    def _publish(self, buf: bytearray, dirty: bytearray, head: int) -> None:
        avail = self.avail
        idx = self.avail_idx
        slot = avail + 4 + 2 * (idx % self.num)
        _U16_PACK(buf, slot, head)
        dirty[slot >> 12] = 1
        idx = self.avail_idx = (idx + 1) & 0xFFFF
        _U16_PACK(buf, avail + 2, idx)
        dirty[avail >> 12] = 1
        self.num_added += 1

    def kick_needed(self, mem: GuestMemory) -> bool:
        """virtqueue_kick_prepare: should the device be notified?"""
        buf = mem.ring_buf
        new = self.avail_idx
        old = (new - self.num_added) & 0xFFFF
        self.num_added = 0
        if self.event_idx:
            event: int = _U16_UNPACK(buf, self.used + 4 + 8 * self.num)[0]  # avail_event
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not (_U16_UNPACK(buf, self.used)[0] & vring.VRING_USED_F_NO_NOTIFY)

    def take_used(self, mem: GuestMemory) -> list[Any]:
        """Every used buffer's token, in order (a reclaim loop in one call)."""
        used_idx = _U16_UNPACK(mem.ring_buf, self.used + 2)[0]
        if used_idx == self.last_used_idx:
            return []
        out = []
        while self.last_used_idx != used_idx and (got := self.get_buf(mem)) is not None:
            out.append(got[0])
        return out

    def get_buf(self, mem: GuestMemory) -> tuple[Any, int] | None:
        """virtqueue_get_buf: the next used (token, written length), or None."""
        buf, dirty = mem.ring_buf, mem.ring_dirty
        used = self.used
        last = self.last_used_idx
        if _U16_UNPACK(buf, used + 2)[0] == last:
            return None
        head, length = _USED_UNPACK(buf, used + 4 + 8 * (last % self.num))
        if head >= self.num or self.tokens[head] is None:
            # Linux: "id %u is not a head!" -> the queue is marked broken.
            self.broken = True
            return None
        token = self.tokens[head]
        self.tokens[head] = None
        if self.chain_len[head] == 1:
            at = self.desc + head * 16 + 14
            _U16_PACK(buf, at, self.free_head)
            dirty[at >> 12] = 1
            self.free_head = head
            self.num_free += 1
            self.chain_len[head] = 0
        else:
            self._free_chain(mem, head)
        last = self.last_used_idx = (last + 1) & 0xFFFF
        if self.event_idx:
            # Ask for an interrupt at the next used entry (virtqueue_enable_cb).
            at = self.avail + 4 + 2 * self.num  # used_event
            _U16_PACK(buf, at, last)
            dirty[at >> 12] = 1
        return token, length

    def _free_chain(self, mem: GuestMemory, head: int) -> None:
        n = self.chain_len[head]
        i = head
        for _ in range(n - 1):
            i = mem.read_u16(self.desc + i * 16 + 14)
        mem.write_u16(self.desc + i * 16 + 14, self.free_head)
        self.free_head = head
        self.num_free += n
        self.chain_len[head] = 0

    def detach_unused(self, mem: GuestMemory) -> list[Any]:
        """virtqueue_detach_unused_buf, all at once (device reset/removal)."""
        out = []
        for head, token in enumerate(self.tokens):
            if token is not None:
                out.append(token)
                self.tokens[head] = None
                self._free_chain(mem, head)
        return out
