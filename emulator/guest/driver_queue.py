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

import attrs

from emulator.core import vring
from emulator.core.memory import GuestMemory
from emulator.errors import GuestKernelBug, GuestOSError, StateError
from emulator.guest.kmalloc import Kmalloc

_DESC = vring.DESC
_DESC_PACK = vring.DESC.pack_into
_USED_UNPACK = vring.USED_ELEM.unpack_from
_U16_UNPACK = struct.Struct("<H").unpack_from
_U16_PACK = struct.Struct("<H").pack_into


# The control packet's token (virtio_console's static ``cpkt``); every other
# token the driver posts is the address of the buffer it put in the chain.
CPKT = "cpkt"


class DriverQueueStateError(StateError):
    """A driver queue record that does not fit its ring; ``field`` names the
    ``DriverQueueState`` field that is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@attrs.define
class DriverQueueState:
    """Plain, untrusted record of the driver's side of one ring (Linux's
    ``struct vring_virtqueue`` shadows); the ring itself is in guest RAM.

    ``tokens[head]`` is what ``add`` was given for the chain at ``head``
    (None: no chain there): a buffer address or ``CPKT``;
    ``chain_len[head]`` is that chain's descriptor count (0: none).
    """

    index: int
    num: int
    desc: int
    avail: int
    used: int
    free_head: int
    num_free: int
    avail_idx: int
    last_used_idx: int
    num_added: int
    tokens: list[int | str | None]
    chain_len: list[int]
    event_idx: bool
    broken: bool


_QUEUE_FIELDS = tuple(a.name for a in attrs.fields(DriverQueueState))


def _int_in(st: DriverQueueState, name: str, low: int, high: int) -> int:
    v = getattr(st, name)
    if type(v) is not int or not low <= v <= high:
        raise DriverQueueStateError(name, f"{v!r} out of range [{low}, {high}]")
    return v


class DriverQueue:
    __slots__ = _QUEUE_FIELDS

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

    # ------------------------------------------------------------ state records
    def state(self) -> DriverQueueState:
        values: dict[str, Any] = {name: getattr(self, name) for name in _QUEUE_FIELDS}
        values["tokens"] = list(self.tokens)
        values["chain_len"] = list(self.chain_len)
        return DriverQueueState(**values)

    @classmethod
    def from_state(cls, st: DriverQueueState, mem: GuestMemory) -> DriverQueue:
        """A live queue from an untrusted record, checked against the ring in
        ``mem``: geometry inside RAM, every index in range, the free list and
        the posted chains walked through the descriptors' ``next`` fields
        (together exactly the ring, no descriptor twice), each buffer token
        equal to its head descriptor's address, the avail and used indices
        in RAM agreeing with the shadows.  Raises DriverQueueStateError
        naming the field; nothing is built or written."""
        _int_in(st, "index", 0, 0xFFFF)
        num = _int_in(st, "num", 1, vring.MAX_QUEUE_SIZE)
        if not vring.is_valid_size(num):
            raise DriverQueueStateError("num", f"{num} is not a power of two")
        for name, size, align in (
            ("desc", vring.desc_table_size(num), 16),
            ("avail", vring.avail_size(num), 2),
            ("used", vring.used_size(num), 4),
        ):
            addr = _int_in(st, name, 0, 0xFFFF_FFFF_FFFF_FFFF)
            if addr + size > mem.size:
                raise DriverQueueStateError(name, f"ring 0x{addr:x}+{size} is not inside RAM ({mem.size} bytes)")
            if addr % align:
                raise DriverQueueStateError(name, f"ring 0x{addr:x} is not {align}-byte aligned")
        _int_in(st, "free_head", 0, num - 1)
        _int_in(st, "num_free", 0, num)
        _int_in(st, "avail_idx", 0, 0xFFFF)
        _int_in(st, "last_used_idx", 0, 0xFFFF)
        _int_in(st, "num_added", 0, num)
        for name in ("event_idx", "broken"):
            if not isinstance(getattr(st, name), bool):
                raise DriverQueueStateError(name, f"{getattr(st, name)!r} is not a bool")
        if len(st.tokens) != num:
            raise DriverQueueStateError("tokens", f"{len(st.tokens)} entries for a ring of {num}")
        if len(st.chain_len) != num:
            raise DriverQueueStateError("chain_len", f"{len(st.chain_len)} entries for a ring of {num}")
        # Walk the posted chains, then the free list: together they are the
        # ring, each descriptor once.
        owner: list[int | None] = [None] * num
        heads = []
        for head, (token, n) in enumerate(zip(st.tokens, st.chain_len, strict=True)):
            if token is None:
                if n != 0:
                    raise DriverQueueStateError("chain_len", f"head {head} has a length but no token")
                continue
            if type(n) is not int or not 1 <= n <= num:
                raise DriverQueueStateError("chain_len", f"head {head}: length {n!r} out of range [1, {num}]")
            if not (token == CPKT or (type(token) is int and token >= 0)):
                raise DriverQueueStateError("tokens", f"head {head}: {token!r} is neither a buffer nor {CPKT!r}")
            heads.append(head)
            i = head
            for k in range(n):
                if owner[i] is not None:
                    raise DriverQueueStateError(
                        "chain_len", f"head {head}: descriptor {i} is also in the chain at {owner[i]}")
                owner[i] = head
                addr, length, flags, nxt = mem.unpack_from(_DESC, st.desc + 16 * i)
                if addr + length > mem.size:
                    raise DriverQueueStateError(
                        "desc", f"descriptor {i}: buffer 0x{addr:x}+{length} is not inside RAM")
                if bool(flags & vring.VRING_DESC_F_NEXT) != (k < n - 1):
                    raise DriverQueueStateError("chain_len", f"head {head}: the chain in RAM is not {n} long")
                if k == 0 and type(token) is int and addr != token:
                    raise DriverQueueStateError(
                        "tokens", f"head {head}: token 0x{token:x} is not its buffer 0x{addr:x}")
                if k < n - 1:
                    if nxt >= num:
                        raise DriverQueueStateError("chain_len", f"head {head}: next {nxt} is outside the ring")
                    i = nxt
        i = st.free_head
        for k in range(st.num_free):
            if owner[i] is not None:
                raise DriverQueueStateError("num_free", f"free descriptor {i} is in the chain at {owner[i]}")
            owner[i] = num  # free
            i = mem.read_u16(st.desc + 16 * i + 14)
            if k < st.num_free - 1 and i >= num:
                raise DriverQueueStateError("free_head", f"the free list leaves the ring (next {i})")
        if owner.count(None):
            raise DriverQueueStateError(
                "num_free", f"{owner.count(None)} descriptors are neither free nor in a chain")
        # Every chain posted and not yet taken back is in the avail ring,
        # the newest ``in_flight`` entries (the device uses them in order).
        in_flight = len(heads)
        if mem.read_u16(st.avail + 2) != st.avail_idx:
            raise DriverQueueStateError(
                "avail_idx", f"{st.avail_idx} but the ring's avail idx is {mem.read_u16(st.avail + 2)}")
        if (st.avail_idx - st.last_used_idx) & 0xFFFF != in_flight:
            raise DriverQueueStateError(
                "last_used_idx",
                f"avail_idx {st.avail_idx} - last_used_idx {st.last_used_idx} is not the {in_flight} chains posted",
            )
        posted = sorted(
            mem.read_u16(st.avail + 4 + 2 * (((st.avail_idx - in_flight + k) & 0xFFFF) % num))
            for k in range(in_flight)
        )
        if posted != heads:
            raise DriverQueueStateError("tokens", "the chains posted are not the avail ring's newest entries")
        if not st.broken:
            used_idx = mem.read_u16(st.used + 2)
            done = (used_idx - st.last_used_idx) & 0xFFFF
            if done > in_flight:
                raise DriverQueueStateError(
                    "last_used_idx", f"the device used {done} buffers but only {in_flight} are posted")
            for k in range(done):
                head = mem.read_u32(st.used + 4 + 8 * ((st.last_used_idx + k) % num))
                if head >= num or st.tokens[head] is None:
                    raise DriverQueueStateError("broken", f"used entry {k} names {head}, which is not a head")
        q = cls.__new__(cls)
        for name in _QUEUE_FIELDS:
            v = getattr(st, name)
            setattr(q, name, list(v) if name in ("tokens", "chain_len") else v)
        return q
