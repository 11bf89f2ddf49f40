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

import struct

import attrs

from emulator.core import vring
from emulator.core.memory import GuestMemory
from emulator.errors import ConfigValueError, GuestError, MemoryAccessError, RingError, StateError

_DESC = vring.DESC
_USED_ELEM = vring.USED_ELEM
_DESC_UNPACK = vring.DESC.unpack_from
_USED_PACK = vring.USED_ELEM.pack_into
_U16_UNPACK = struct.Struct("<H").unpack_from
_U16_PACK = struct.Struct("<H").pack_into
_F_NEXT = vring.VRING_DESC_F_NEXT
_F_WRITE = vring.VRING_DESC_F_WRITE
_F_INDIRECT = vring.VRING_DESC_F_INDIRECT

# QEMU's VIRTQUEUE_MAX_SIZE: the most buffers one element may carry (and
# VIRTIO_QUEUE_MAX, the most queues a device has).
VIRTQUEUE_MAX_SIZE = 1024
VIRTIO_QUEUE_MAX = 1024


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


def _check_int(state: VirtQueueState, name: str, low: int, high: int) -> int:
    v = getattr(state, name)
    if type(v) is not int or not low <= v <= high:
        raise StateError(f"virtqueue {state.index}: {name} {v!r} out of range [{low}, {high}]")
    return v


@attrs.define
class VirtQueueState:
    """Plain, untrusted record of a queue (what vmstate saves and loads).

    Its fields are the one list of a queue's state: the live queue's slots,
    ``state()``, ``reset()`` and what ``from_state()`` copies are derived
    from them (every field must also get a check in ``from_state()``; a test
    tries a bad value in each).  A default is the value ``reset()`` leaves,
    except ``size``, which returns to ``max_size``; ``index`` and
    ``max_size`` name the queue and have none.
    """

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


_STATE_FIELDS = tuple(a.name for a in attrs.fields(VirtQueueState))
_RESET_VALUES = tuple(
    (a.name, a.default) for a in attrs.fields(VirtQueueState) if a.default is not attrs.NOTHING
)


class VirtQueue:
    """Device side of one split virtqueue."""

    # The slots are VirtQueueState's fields plus the cached guest avail
    # index.  The annotations are for the type checker only; a test keeps
    # them equal to the slots.
    __slots__ = (*_STATE_FIELDS, "shadow_avail_idx")
    index: int
    max_size: int
    size: int
    desc_addr: int
    avail_addr: int
    used_addr: int
    ready: bool
    last_avail_idx: int
    used_idx: int
    inuse: int
    signalled_used: int
    signalled_used_valid: bool
    event_idx: bool
    shadow_avail_idx: int

    def __init__(self, index: int, max_size: int) -> None:
        if not vring.is_valid_size(max_size):
            raise ConfigValueError(f"queue size {max_size} is not a power of two <= 32768")
        self.index = index
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        # Every field to VirtQueueState's default: no rings, indices at 0,
        # and (virtio_reset clears the guest features) no EVENT_IDX.
        for name, value in _RESET_VALUES:
            setattr(self, name, value)
        self.size = self.max_size
        self.shadow_avail_idx = 0

    # -- configuration (what the transport's queue registers set) -------------
    def configure(self, mem: GuestMemory, size: int, desc: int, avail: int, used: int) -> None:
        """Set the ring geometry and enable the queue (QUEUE_ENABLE)."""
        if not vring.is_valid_size(size) or size > self.max_size:
            raise GuestError(f"virtio: queue {self.index} size {size} is invalid (max {self.max_size})")
        # The spec asks the driver to align the rings; QEMU does not check it,
        # and neither do we (accesses below work at any address).
        for addr, length in (
            (desc, vring.desc_table_size(size)),
            (avail, vring.avail_size(size)),
            (used, vring.used_size(size)),
        ):
            if addr < 0 or addr + length > mem.size:
                raise MemoryAccessError(addr, length, mem.size)
        self.size = size
        self.desc_addr, self.avail_addr, self.used_addr = desc, avail, used
        self.ready = True

    # -- state records ---------------------------------------------------------
    def state(self) -> VirtQueueState:
        return VirtQueueState(**{name: getattr(self, name) for name in _STATE_FIELDS})

    @classmethod
    def from_state(cls, state: VirtQueueState, mem: GuestMemory) -> VirtQueue:
        """Build a live queue from an untrusted record, validating every field
        as ``configure`` would (virtio-queue's ``Queue::try_from``) plus
        QEMU's ``virtio_load`` checks.  Any bad field raises StateError (a
        ValueError) and nothing is built."""
        _check_int(state, "index", 0, VIRTIO_QUEUE_MAX - 1)
        _check_int(state, "max_size", 1, vring.MAX_QUEUE_SIZE)
        if not vring.is_valid_size(state.max_size):
            raise StateError(f"virtqueue {state.index}: max_size {state.max_size} is not a power of two")
        q = cls(state.index, state.max_size)
        size = _check_int(state, "size", 1, state.max_size)
        if not vring.is_valid_size(size):
            raise StateError(f"virtqueue {state.index}: size {size} is not a power of two")
        for name in ("desc_addr", "avail_addr", "used_addr"):
            _check_int(state, name, 0, 0xFFFF_FFFF_FFFF_FFFF)
        for name in ("last_avail_idx", "used_idx", "signalled_used"):
            _check_int(state, name, 0, 0xFFFF)
        _check_int(state, "inuse", 0, size)
        for name in ("ready", "signalled_used_valid", "event_idx"):
            if not isinstance(getattr(state, name), bool):
                raise StateError(f"virtqueue {state.index}: {name} {getattr(state, name)!r} is not a bool")
        if state.ready:
            try:
                q.configure(mem, size, state.desc_addr, state.avail_addr, state.used_addr)
            except GuestError as err:
                raise StateError(str(err)) from err
            # virtio_load: the guest cannot have more heads in flight than
            # the ring holds, nor the device more than it took.
            avail_idx = mem.read_u16(state.avail_addr + 2)
            delta = _u16(avail_idx - state.last_avail_idx)
            if delta > size:
                raise StateError(
                    f"VQ {state.index} size 0x{size:x} Guest index 0x{avail_idx:x} "
                    f"inconsistent with Host index 0x{state.last_avail_idx:x}: delta 0x{delta:x}"
                )
            taken = _u16(state.last_avail_idx - state.used_idx)
            if taken > size:
                raise StateError(
                    f"VQ {state.index} size 0x{size:x} < last_avail_idx 0x{state.last_avail_idx:x} "
                    f"- used_idx 0x{state.used_idx:x}"
                )
            # Every element in use was popped and not yet pushed.
            if state.inuse > taken:
                raise StateError(
                    f"virtqueue {state.index}: inuse {state.inuse} exceeds last_avail_idx "
                    f"0x{state.last_avail_idx:x} - used_idx 0x{state.used_idx:x}"
                )
        else:
            # A queue the guest has not enabled is as reset() leaves it
            # (virtio_load: "address 0x0 inconsistent with Host index").
            if state.last_avail_idx:
                raise StateError(
                    f"VQ {state.index} address 0x0 inconsistent with Host index "
                    f"0x{state.last_avail_idx:x}"
                )
            for name in ("desc_addr", "avail_addr", "used_addr", "used_idx", "inuse", "signalled_used"):
                if getattr(state, name):
                    raise StateError(f"virtqueue {state.index}: {name} set on a queue that is not ready")
            if state.signalled_used_valid:
                raise StateError(f"virtqueue {state.index}: signalled_used_valid on a queue that is not ready")
        # Every field checked: the queue takes the record as it is.
        for name in _STATE_FIELDS:
            setattr(q, name, getattr(state, name))
        q.shadow_avail_idx = state.last_avail_idx
        return q

    # -- the avail side ----------------------------------------------------------
    # Ring structures (descriptor table, avail and used rings) were checked
    # to lie inside RAM when the queue was configured, so the hot paths below
    # read and write them straight in the RAM buffer, without a bounds check
    # per access; only addresses taken from descriptors are checked.

    def avail_idx(self, mem: GuestMemory) -> int:
        buf = mem.ring_buf
        self.shadow_avail_idx = _U16_UNPACK(buf, self.avail_addr + 2)[0]
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
        if not self.ready:
            return None
        buf, dirty = mem.ring_buf, mem.ring_dirty
        last = self.last_avail_idx
        if self.shadow_avail_idx == last:
            self.shadow_avail_idx = _U16_UNPACK(buf, self.avail_addr + 2)[0]
            if self.shadow_avail_idx == last:
                return None
        num = self.size
        if (self.shadow_avail_idx - last) & 0xFFFF > num:
            raise RingError(f"Guest moved used index from {last} to {self.shadow_avail_idx}")
        if self.inuse >= num:
            raise RingError("Virtqueue size exceeded")
        head = _U16_UNPACK(buf, self.avail_addr + 4 + 2 * (last % num))[0]
        if head >= num:
            raise RingError(f"Guest says index {head} is available")
        self.last_avail_idx = (last + 1) & 0xFFFF
        if self.event_idx:
            at = self.used_addr + 4 + 8 * num  # avail_event
            _U16_PACK(buf, at, self.last_avail_idx)
            dirty[at >> 12] = 1
            dirty[(at + 1) >> 12] = 1

        table = self.desc_addr
        limit = num
        ram_end = mem.size
        addr, length, flags, nxt = _DESC_UNPACK(buf, table + head * 16)
        indirect = flags & _F_INDIRECT
        if indirect:
            if not length or length % 16:
                self.last_avail_idx = last
                raise RingError("Invalid size for indirect buffer table")
            if addr + length > ram_end:
                self.last_avail_idx = last
                raise RingError("Cannot map indirect buffer")
            table = addr
            limit = length // 16
            addr, length, flags, nxt = _DESC_UNPACK(buf, table)
        elif not flags & _F_NEXT and length and addr + length <= ram_end:
            # The common case, one buffer (a guest write, or a receive
            # buffer): every check of the walk below passes trivially.
            self.inuse += 1
            if flags & _F_WRITE:
                return Element(head, [], [(addr, length)], 1)
            return Element(head, [(addr, length)], [], 1)

        # The chain walk, in virtqueue_split_pop's order of checks
        # (virtqueue_map_desc: direction order, zero size, the sg limit, the
        # mapping; then the loop bound; then virtqueue_split_read_next_desc).
        out_sg: list[tuple[int, int]] = []
        in_sg: list[tuple[int, int]] = []
        max_entries = VIRTQUEUE_MAX_SIZE
        entries = 0
        try:
            while True:
                if flags & _F_WRITE:
                    sg = in_sg
                else:
                    if in_sg:
                        raise RingError("Incorrect order for descriptors")
                    sg = out_sg
                if not length:
                    raise RingError("virtio: zero sized buffers are not allowed")
                if entries == max_entries:
                    raise RingError("virtio: too many write descriptors in indirect table")
                if addr + length > ram_end:
                    raise RingError("virtio: bogus descriptor or out of resources")
                sg.append((addr, length))
                entries += 1
                if entries > limit:
                    raise RingError("Looped descriptor")
                if not flags & _F_NEXT:
                    break
                if nxt >= limit:
                    raise RingError(f"Desc next is {nxt}")
                addr, length, flags, nxt = _DESC_UNPACK(buf, table + nxt * 16)
        except RingError:
            # The head is given back (virtqueue_unpop), so the queue's indices
            # are as before the pop; the device is broken by then anyway.
            self.last_avail_idx = last
            raise
        self.inuse += 1
        return Element(head, out_sg, in_sg, entries)

    def unpop(self, count: int = 1) -> None:
        """Give back elements popped but not used (virtqueue_unpop/rewind)."""
        if not 0 <= count <= self.inuse:
            raise StateError(f"virtqueue {self.index}: cannot unpop {count} of {self.inuse} in use")
        self.last_avail_idx = _u16(self.last_avail_idx - count)
        self.inuse -= count

    # -- the used side ---------------------------------------------------------
    def push(self, mem: GuestMemory, elem: Element, written: int) -> None:
        """virtqueue_push: fill one used entry and publish the index."""
        buf, dirty = mem.ring_buf, mem.ring_dirty
        used = self.used_addr
        old = self.used_idx
        at = used + 4 + 8 * (old % self.size)
        _USED_PACK(buf, at, elem.head, written)
        dirty[at >> 12] = 1
        dirty[(at + 7) >> 12] = 1
        new = self.used_idx = (old + 1) & 0xFFFF
        _U16_PACK(buf, used + 2, new)
        dirty[(used + 2) >> 12] = 1
        dirty[(used + 3) >> 12] = 1
        self.inuse -= 1
        # virtqueue_split_flush: "(int16_t)(new - signalled_used) < 1".  Once
        # used_idx has run half the u16 space past the last signalled value,
        # that value no longer orders, so the next should_notify signals.
        since = (new - self.signalled_used) & 0xFFFF
        if since == 0 or since >= 0x8000:
            self.signalled_used_valid = False

    def should_notify(self, mem: GuestMemory) -> bool:
        """virtio_split_should_notify (without NOTIFY_ON_EMPTY)."""
        buf = mem.ring_buf
        if not self.event_idx:
            return not (int(_U16_UNPACK(buf, self.avail_addr)[0]) & vring.VRING_AVAIL_F_NO_INTERRUPT)
        valid = self.signalled_used_valid
        self.signalled_used_valid = True
        old = self.signalled_used
        new = self.signalled_used = self.used_idx
        if not valid:
            return True
        event: int = _U16_UNPACK(buf, self.avail_addr + 4 + 2 * self.size)[0]  # used_event
        return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def in_bytes_available(self, mem: GuestMemory, want: int) -> int:
        """Device-writable bytes in the available chains, counting stops once
        ``want`` is reached (virtqueue_split_get_avail_bytes with
        max_in_bytes=want, max_out_bytes=0; nothing is popped).

        A malformed ring raises RingError with QEMU's text, as QEMU reports
        it from here (virtio_serial_guest_ready is how host data first
        meets a guest's rx ring).
        """
        if not self.ready:
            return 0
        buf = mem.ring_buf
        num = self.size
        idx = self.last_avail_idx
        avail_idx = self.avail_idx(mem)
        if (avail_idx - idx) & 0xFFFF > num:
            raise RingError(f"Guest moved used index from {idx} to {avail_idx}")
        ram_end = mem.size
        in_total = 0
        total_bufs = 0
        while idx != avail_idx:
            head = _U16_UNPACK(buf, self.avail_addr + 4 + 2 * (idx % num))[0]
            idx = (idx + 1) & 0xFFFF
            if head >= num:
                raise RingError(f"Guest says index {head} is available")
            table, limit, num_bufs = self.desc_addr, num, total_bufs
            addr, length, flags, nxt = _DESC_UNPACK(buf, table + head * 16)
            indirect = flags & _F_INDIRECT
            if indirect:
                if not length or length % 16:
                    raise RingError("Invalid size for indirect buffer table")
                if num_bufs >= limit:
                    raise RingError("Looped descriptor")
                if addr + length > ram_end:
                    raise RingError("Cannot map indirect buffer")
                table, limit, num_bufs = addr, length // 16, 0
                addr, length, flags, nxt = _DESC_UNPACK(buf, table)
            while True:
                num_bufs += 1
                if num_bufs > limit:
                    raise RingError("Looped descriptor")
                if flags & _F_WRITE:
                    in_total += length
                if in_total >= want:
                    return in_total
                if not flags & _F_NEXT:
                    break
                if nxt >= limit:
                    raise RingError(f"Desc next is {nxt}")
                addr, length, flags, nxt = _DESC_UNPACK(buf, table + nxt * 16)
            total_bufs = total_bufs + 1 if indirect else num_bufs
        return in_total
