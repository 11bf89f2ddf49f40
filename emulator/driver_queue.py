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
from typing import Any

from . import vring
from .errors import GuestOSError
from .kmalloc import Kmalloc
from .memory import GuestMemory

_DESC = vring.DESC


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

    def add(self, mem: GuestMemory, out_bufs: list[tuple[int, int]], in_bufs: list[tuple[int, int]], token: Any) -> int:
        """virtqueue_add: publish one chain; ENOSPC when the ring is full."""
        n = len(out_bufs) + len(in_bufs)
        if n == 0:
            raise ValueError("empty chain")
        if self.num_free < n:
            raise GuestOSError(errno.ENOSPC, "virtqueue full")
        head = i = self.free_head
        last = n - 1
        k = 0
        desc = self.desc
        for bufs, flag in ((out_bufs, 0), (in_bufs, vring.VRING_DESC_F_WRITE)):
            for addr, length in bufs:
                base = desc + i * 16
                nxt = mem.read_u16(base + 14)
                flags = flag | (vring.VRING_DESC_F_NEXT if k < last else 0)
                mem.pack_into(_DESC, base, addr, length, flags, nxt)
                k += 1
                if k <= last:
                    i = nxt
        self.free_head = mem.read_u16(desc + i * 16 + 14)
        self.num_free -= n
        self.tokens[head] = token
        self.chain_len[head] = n
        mem.write_u16(vring.avail_ring_addr(self.avail, self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        mem.write_u16(self.avail + 2, self.avail_idx)
        self.num_added += 1
        return head

    def kick_needed(self, mem: GuestMemory) -> bool:
        """virtqueue_kick_prepare: should the device be notified?"""
        new = self.avail_idx
        old = (new - self.num_added) & 0xFFFF
        self.num_added = 0
        if self.event_idx:
            event = mem.read_u16(vring.avail_event_addr(self.used, self.num))
            return vring.need_event(event, new, old)
        return not (mem.read_u16(self.used) & vring.VRING_USED_F_NO_NOTIFY)

    def has_used(self, mem: GuestMemory) -> bool:
        return mem.read_u16(self.used + 2) != self.last_used_idx

    def get_buf(self, mem: GuestMemory) -> tuple[Any, int] | None:
        """virtqueue_get_buf: the next used (token, written length), or None."""
        if mem.read_u16(self.used + 2) == self.last_used_idx:
            return None
        slot = self.last_used_idx % self.num
        head, length = mem.unpack_from(vring.USED_ELEM, vring.used_ring_addr(self.used, slot))
        if head >= self.num or self.tokens[head] is None:
            # Linux: "id %u is not a head!" -> the queue is marked broken.
            self.broken = True
            return None
        token = self.tokens[head]
        self.tokens[head] = None
        self._free_chain(mem, head)
        self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
        if self.event_idx:
            # Ask for an interrupt at the next used entry (virtqueue_enable_cb).
            mem.write_u16(vring.used_event_addr(self.avail, self.num), self.last_used_idx)
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
