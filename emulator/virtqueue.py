"""The device side of a split virtqueue (virtio 1.x, 2.7).

Modelled on QEMU's hw/virtio/virtio.c (``virtqueue_split_pop``,
``virtqueue_fill``/``flush``, ``virtio_split_should_notify``) and on
rust-vmm's virtio-queue: the queue never owns guest memory, every operation
takes it as an argument, and its plain state (``VirtQueueState``) is
untrusted data that only becomes a live queue through validation.

A malformed ring raises ``RingError`` carrying QEMU's ``virtio_error()``
text; the device turns that into NEEDS_RESET and stops, it never reaches the
device's caller.
"""

from __future__ import annotations

import attrs

from . import vring
from .errors import GuestError, MemoryAccessError
from .memory import GuestMemory

_DESC = vring.DESC
_USED_ELEM = vring.USED_ELEM
_F_NEXT = vring.VRING_DESC_F_NEXT
_F_WRITE = vring.VRING_DESC_F_WRITE
_F_INDIRECT = vring.VRING_DESC_F_INDIRECT


class RingError(GuestError):
    """The guest's ring is malformed; the text is QEMU's ``virtio_error``."""


class Element:
    """One popped descriptor chain (QEMU's VirtQueueElement)."""

    __slots__ = ("head", "out_sg", "in_sg", "ndescs")

    def __init__(
        self, head: int, out_sg: list[tuple[int, int]], in_sg: list[tuple[int, int]], ndescs: int
    ) -> None:
        self.head = head
        self.out_sg = out_sg  # device-readable (guest -> device)
        self.in_sg = in_sg  # device-writable (device -> guest)
        self.ndescs = ndescs

    @property
    def out_len(self) -> int:
        return sum(n for _, n in self.out_sg)

    @property
    def in_len(self) -> int:
        return sum(n for _, n in self.in_sg)

    def __repr__(self) -> str:
        return f"Element(head={self.head}, out={self.out_sg}, in={self.in_sg})"


def _u16(v: int) -> int:
    return v & 0xFFFF


@attrs.define
class VirtQueueState:
    """Plain, untrusted record of a queue (what vmstate saves and loads)."""

    index: int
    max_size: int
    size: int = 0
    desc_addr: int = 0
    avail_addr: int = 0
    used_addr: int = 0
    ready: bool = False
    last_avail_idx: int = 0
    used_idx: int = 0
    inuse: int = 0
    signalled_used: int = 0
    signalled_used_valid: bool = False
    event_idx: bool = False


class VirtQueue:
    """Device side of one split virtqueue."""

    __slots__ = (
        "index", "max_size", "size", "desc_addr", "avail_addr", "used_addr", "ready",
        "last_avail_idx", "shadow_avail_idx", "used_idx", "inuse", "signalled_used",
        "signalled_used_valid", "event_idx",
    )

    def __init__(self, index: int, max_size: int) -> None:
        if not vring.is_valid_size(max_size):
            raise ValueError(f"queue size {max_size} is not a power of two <= 32768")
        self.index = index
        self.max_size = max_size
        self.event_idx = False
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.ready = False
        self.last_avail_idx = self.shadow_avail_idx = 0
        self.used_idx = 0
        self.inuse = 0
        self.signalled_used = 0
        self.signalled_used_valid = False

    # -- configuration (what the transport's queue registers set) -------------
    def configure(self, mem: GuestMemory, size: int, desc: int, avail: int, used: int) -> None:
        """Set the ring geometry and enable the queue (QUEUE_ENABLE)."""
        if not vring.is_valid_size(size) or size > self.max_size:
            raise GuestError(f"virtio: queue {self.index} size {size} is invalid (max {self.max_size})")
        for addr, length, align in (
            (desc, vring.desc_table_size(size), 16),
            (avail, vring.avail_size(size), 2),
            (used, vring.used_size(size), 4),
        ):
            if addr % align:
                raise GuestError(f"virtio: queue {self.index} ring address 0x{addr:x} misaligned")
            if addr < 0 or addr + length > mem.size:
                raise MemoryAccessError(addr, length, mem.size)
        self.size = size
        self.desc_addr, self.avail_addr, self.used_addr = desc, avail, used
        self.ready = True

    # -- state records ---------------------------------------------------------
    def state(self) -> VirtQueueState:
        return VirtQueueState(
            index=self.index, max_size=self.max_size, size=self.size,
            desc_addr=self.desc_addr, avail_addr=self.avail_addr, used_addr=self.used_addr,
            ready=self.ready, last_avail_idx=self.last_avail_idx, used_idx=self.used_idx,
            inuse=self.inuse, signalled_used=self.signalled_used,
            signalled_used_valid=self.signalled_used_valid, event_idx=self.event_idx,
        )

    @classmethod
    def from_state(cls, state: VirtQueueState, mem: GuestMemory) -> VirtQueue:
        """Build a live queue from an untrusted record, validating every field
        as ``configure`` would (virtio-queue's ``Queue::try_from``)."""
        q = cls(state.index, state.max_size)
        for name in ("last_avail_idx", "used_idx", "signalled_used"):
            v = getattr(state, name)
            if not 0 <= v <= 0xFFFF:
                raise ValueError(f"virtqueue {state.index}: {name} {v} out of range")
        if state.ready:
            q.configure(mem, state.size, state.desc_addr, state.avail_addr, state.used_addr)
            # QEMU's virtio_load check: the guest cannot have more heads in
            # flight than the ring holds.
            avail_idx = mem.read_u16(state.avail_addr + 2)
            if _u16(avail_idx - state.last_avail_idx) > state.size:
                raise ValueError(
                    f"VQ {state.index} size 0x{state.size:x} Guest index 0x{avail_idx:x} "
                    f"inconsistent with Host index 0x{state.last_avail_idx:x}: delta "
                    f"0x{_u16(avail_idx - state.last_avail_idx):x}"
                )
            if not 0 <= state.inuse <= state.size:
                raise ValueError(f"virtqueue {state.index}: inuse {state.inuse} out of range")
        elif state.size != state.max_size and not vring.is_valid_size(state.size):
            raise ValueError(f"virtqueue {state.index}: size {state.size} invalid")
        q.last_avail_idx = q.shadow_avail_idx = state.last_avail_idx
        q.used_idx = state.used_idx
        q.inuse = state.inuse
        q.signalled_used = state.signalled_used
        q.signalled_used_valid = state.signalled_used_valid
        q.event_idx = state.event_idx
        return q

    # -- the avail side ----------------------------------------------------------
    def avail_idx(self, mem: GuestMemory) -> int:
        self.shadow_avail_idx = mem.read_u16(self.avail_addr + 2)
        return self.shadow_avail_idx

    def is_empty(self, mem: GuestMemory) -> bool:
        if not self.ready:
            return True
        if self.shadow_avail_idx != self.last_avail_idx:
            return False
        return self.avail_idx(mem) == self.last_avail_idx

    def pop(self, mem: GuestMemory) -> Element | None:
        """Take the next available chain, fully validated (virtqueue_split_pop).

        Returns None when the ring is empty; raises RingError (QEMU's text)
        when the guest's ring is malformed.
        """
        if not self.ready or self.is_empty(mem):
            return None
        num = self.size
        pending = _u16(self.shadow_avail_idx - self.last_avail_idx)
        if pending > num:
            raise RingError(
                f"Guest moved used index from {self.last_avail_idx} to {self.shadow_avail_idx}"
            )
        if self.inuse >= num:
            raise RingError("Virtqueue size exceeded")
        head = mem.read_u16(vring.avail_ring_addr(self.avail_addr, self.last_avail_idx % num))
        if head >= num:
            raise RingError(f"Guest says index {head} is available")
        self.last_avail_idx = _u16(self.last_avail_idx + 1)
        if self.event_idx:
            mem.write_u16(vring.avail_event_addr(self.used_addr, num), self.last_avail_idx)

        table = self.desc_addr
        limit = num
        i = head
        addr, length, flags, nxt = mem.unpack_from(_DESC, table + i * 16)
        if flags & _F_INDIRECT:
            if not length or length % 16:
                self.last_avail_idx = _u16(self.last_avail_idx - 1)
                raise RingError("Invalid size for indirect buffer table")
            if addr < 0 or addr + length > mem.size:
                self.last_avail_idx = _u16(self.last_avail_idx - 1)
                raise RingError("Cannot map indirect buffer")
            table = addr
            limit = length // 16
            i = 0
            addr, length, flags, nxt = mem.unpack_from(_DESC, table)
            indirect = True
        else:
            indirect = False

        out_sg: list[tuple[int, int]] = []
        in_sg: list[tuple[int, int]] = []
        try:
            while True:
                if indirect and flags & _F_INDIRECT:
                    raise RingError("Indirect descriptor in indirect table")
                if not length:
                    raise RingError("virtio: zero sized buffers are not allowed")
                if addr + length > mem.size:
                    raise RingError("virtio: bogus descriptor or out of resources")
                if flags & _F_WRITE:
                    in_sg.append((addr, length))
                else:
                    if in_sg:
                        raise RingError("Incorrect order for descriptors")
                    out_sg.append((addr, length))
                if len(out_sg) + len(in_sg) > limit:
                    raise RingError("Looped descriptor")
                if not flags & _F_NEXT:
                    break
                if nxt >= limit:
                    raise RingError(f"Desc next is {nxt}")
                i = nxt
                addr, length, flags, nxt = mem.unpack_from(_DESC, table + i * 16)
        except RingError:
            # QEMU's err_undo_map: virtqueue_unpop() gives the head back.
            self.last_avail_idx = _u16(self.last_avail_idx - 1)
            raise
        self.inuse += 1
        return Element(head, out_sg, in_sg, len(out_sg) + len(in_sg))

    def unpop(self, count: int = 1) -> None:
        """Give back elements popped but not used (virtqueue_unpop)."""
        self.last_avail_idx = _u16(self.last_avail_idx - count)
        self.inuse -= count

    # -- the used side ---------------------------------------------------------
    def push(self, mem: GuestMemory, elem: Element, written: int) -> None:
        """virtqueue_push: fill one used entry and publish the index."""
        num = self.size
        slot = self.used_idx % num
        mem.pack_into(_USED_ELEM, vring.used_ring_addr(self.used_addr, slot), elem.head, written)
        self.used_idx = _u16(self.used_idx + 1)
        mem.write_u16(self.used_addr + 2, self.used_idx)
        self.inuse -= 1

    def should_notify(self, mem: GuestMemory) -> bool:
        """virtio_split_should_notify (without NOTIFY_ON_EMPTY)."""
        if not self.event_idx:
            return not (mem.read_u16(self.avail_addr) & vring.VRING_AVAIL_F_NO_INTERRUPT)
        valid = self.signalled_used_valid
        self.signalled_used_valid = True
        old = self.signalled_used
        new = self.signalled_used = self.used_idx
        if not valid:
            return True
        event = mem.read_u16(vring.used_event_addr(self.avail_addr, self.size))
        return vring.need_event(event, new, old)

    def in_bytes_available(self, mem: GuestMemory, want: int) -> int:
        """How many device-writable bytes the available chains offer, up to
        ``want`` (virtqueue_get_avail_bytes, reading without popping).
        Malformed chains count as nothing here; ``pop`` reports them."""
        if not self.ready or self.is_empty(mem):
            return 0
        total = 0
        idx = self.last_avail_idx
        num = self.size
        pending = _u16(self.shadow_avail_idx - idx)
        if pending > num:
            return 0
        for _ in range(pending):
            head = mem.read_u16(vring.avail_ring_addr(self.avail_addr, idx % num))
            if head >= num:
                return total
            i, seen = head, 0
            while True:
                addr, length, flags, nxt = mem.unpack_from(_DESC, self.desc_addr + i * 16)
                if flags & _F_INDIRECT:
                    break  # counted precisely when popped
                if flags & _F_WRITE:
                    total += length
                seen += 1
                if not flags & _F_NEXT or nxt >= num or seen > num:
                    break
                i = nxt
            if total >= want:
                return total
            idx = _u16(idx + 1)
        return total
