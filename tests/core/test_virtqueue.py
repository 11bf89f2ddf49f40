"""The split virtqueue, both sides, through real rings in guest memory.

Well-formed rings are written by the driver side (``DriverQueue``, the
simulated Linux guest's half); malformed ones by hand where the driver
cannot express them.  Every malformed case must raise ``RingError`` with
QEMU's ``virtio_error`` text and give the head back.
"""

from __future__ import annotations

import errno

import attrs
import pytest

from emulator.core import vring
from emulator.core.control import BAD_ID, Event
from emulator.core.device import VirtIOSerial
from emulator.core.virtio import STATUS_NEEDS_RESET
from emulator.guest.driver_queue import DriverQueue
from emulator.core.effects import ConfigInterrupt, ErrorReport, Interrupt
from emulator.errors import GuestError, GuestOSError, MemoryAccessError
from emulator.guest.kmalloc import Kmalloc
from emulator.core.chardev import MemoryChardev
from emulator.machine.machine import Machine
from emulator.core.memory import PAGE_SIZE, GuestMemory, MiB
from emulator.core.virtqueue import Element, VirtQueue, VirtQueueState
from emulator.errors import RingError

from tests.core.rawdriver import RawDriver, ready_device
from tests.machine.serial_machine import serial_machine

RAM = 1 << 20
NUM = 8
F_NEXT = vring.VRING_DESC_F_NEXT
F_WRITE = vring.VRING_DESC_F_WRITE
F_INDIRECT = vring.VRING_DESC_F_INDIRECT


class Ring:
    """A queue of ``num`` entries: the driver's half and the device's half
    over the same guest memory, plus hand tools for malformed rings."""

    def __init__(self, num: int = NUM, *, event_idx: bool = False, ram: int = RAM) -> None:
        self.mem = GuestMemory(ram)
        self.alloc = Kmalloc(PAGE_SIZE, ram)
        self.num = num
        self.drv = DriverQueue(self.mem, self.alloc, 0, num, event_idx)
        self.vq = VirtQueue(0, num)
        self.vq.configure(self.mem, num, self.drv.desc, self.drv.avail, self.drv.used)
        self.vq.event_idx = event_idx

    def buf(self, size: int = 64) -> int:
        return self.alloc.alloc(size)

    def pop(self) -> Element | None:
        return self.vq.pop(self.mem)

    # -- by hand -------------------------------------------------------------
    def set_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, *, table: int | None = None) -> None:
        base = self.drv.desc if table is None else table
        self.mem.pack_into(vring.DESC, base + 16 * i, addr, length, flags, nxt)

    def publish(self, *heads: int) -> None:
        """Put heads in the avail ring and move avail->idx past them."""
        idx = self.mem.read_u16(self.drv.avail + 2)
        for h in heads:
            self.mem.write_u16(vring.avail_ring_addr(self.drv.avail, idx % self.num), h)
            idx = (idx + 1) & 0xFFFF
        self.mem.write_u16(self.drv.avail + 2, idx)

    def set_avail_idx(self, idx: int) -> None:
        self.mem.write_u16(self.drv.avail + 2, idx)

    def used_idx(self) -> int:
        return self.mem.read_u16(self.drv.used + 2)

    def used_elem(self, slot: int) -> tuple[int, int]:
        return self.mem.unpack_from(vring.USED_ELEM, vring.used_ring_addr(self.drv.used, slot))  # type: ignore[return-value]

    def avail_event(self) -> int:
        return self.mem.read_u16(vring.avail_event_addr(self.drv.used, self.num))

    def set_used_event(self, value: int) -> None:
        self.mem.write_u16(vring.used_event_addr(self.drv.avail, self.num), value)


@pytest.fixture
def ring() -> Ring:
    return Ring()


# ============================================================ well-formed rings


def test_pop_on_an_empty_or_unconfigured_queue_is_none() -> None:
    r = Ring()
    assert r.pop() is None
    assert r.vq.is_empty(r.mem)
    fresh = VirtQueue(1, NUM)
    assert fresh.pop(r.mem) is None
    assert fresh.in_bytes_available(r.mem, 100) == 0


def test_single_readable_buffer(ring: Ring) -> None:
    b = ring.buf()
    head = ring.drv.add(ring.mem, [(b, 10)], [], "tok")
    elem = ring.pop()
    assert elem is not None
    assert elem.head == head == 0
    assert elem.out_sg == [(b, 10)]
    assert elem.in_sg == []
    assert (elem.out_len, elem.in_len) == (10, 0)
    assert ring.vq.last_avail_idx == 1
    assert ring.vq.inuse == 1
    assert ring.pop() is None


def test_chain_keeps_buffer_order_readable_before_writable(ring: Ring) -> None:
    o1, o2, i1, i2 = (ring.buf() for _ in range(4))
    ring.drv.add(ring.mem, [(o1, 1), (o2, 2)], [(i1, 3), (i2, 4)], "tok")
    elem = ring.pop()
    assert elem is not None
    assert elem.out_sg == [(o1, 1), (o2, 2)]
    assert elem.in_sg == [(i1, 3), (i2, 4)]
    assert elem.ndescs == 4
    assert (elem.out_len, elem.in_len) == (3, 7)


def test_writable_only_chain(ring: Ring) -> None:
    b = ring.buf(4096)
    ring.drv.add(ring.mem, [], [(b, 4096)], "rx")
    elem = ring.pop()
    assert elem is not None and elem.out_sg == [] and elem.in_sg == [(b, 4096)]


def test_chains_pop_in_avail_order_with_driver_free_list_heads(ring: Ring) -> None:
    b = ring.buf()
    h1 = ring.drv.add(ring.mem, [(b, 1), (b, 1)], [], "a")
    h2 = ring.drv.add(ring.mem, [(b, 2)], [], "b")
    h3 = ring.drv.add(ring.mem, [], [(b, 3)], "c")
    assert (h1, h2, h3) == (0, 2, 3)
    assert [e.head for e in (ring.pop(), ring.pop(), ring.pop()) if e] == [0, 2, 3]
    assert ring.vq.inuse == 3


def test_descriptor_may_end_exactly_at_the_end_of_ram(ring: Ring) -> None:
    ring.set_desc(0, RAM - 16, 16)
    ring.publish(0)
    elem = ring.pop()
    assert elem is not None and elem.out_sg == [(RAM - 16, 16)]


def test_chain_of_exactly_queue_size_descriptors_is_accepted(ring: Ring) -> None:
    b = ring.buf()
    ring.drv.add(ring.mem, [(b, 1)] * NUM, [], "full")
    elem = ring.pop()
    assert elem is not None and len(elem.out_sg) == NUM


def test_descriptors_may_chain_in_any_order(ring: Ring) -> None:
    ring.set_desc(5, 0x1000, 1, F_NEXT, 2)
    ring.set_desc(2, 0x2000, 2, F_NEXT | F_WRITE, 7)
    ring.set_desc(7, 0x3000, 3, F_WRITE)
    ring.publish(5)
    elem = ring.pop()
    assert elem is not None
    assert elem.head == 5
    assert elem.out_sg == [(0x1000, 1)]
    assert elem.in_sg == [(0x2000, 2), (0x3000, 3)]


def test_indirect_descriptor_table(ring: Ring) -> None:
    table = ring.buf(4 * 16)
    ring.set_desc(0, 0x1000, 10, F_NEXT, 1, table=table)
    ring.set_desc(1, 0x2000, 20, F_NEXT, 3, table=table)
    ring.set_desc(3, 0x3000, 30, F_WRITE, table=table)
    # Head 6 points at the table; its own ``next`` is ignored.
    ring.set_desc(6, table, 4 * 16, F_INDIRECT | F_NEXT, 99)
    ring.publish(6)
    elem = ring.pop()
    assert elem is not None
    assert elem.head == 6
    assert elem.out_sg == [(0x1000, 10), (0x2000, 20)]
    assert elem.in_sg == [(0x3000, 30)]
    ring.vq.push(ring.mem, elem, 30)
    assert ring.used_elem(0) == (6, 30)


def test_indirect_table_of_one_descriptor(ring: Ring) -> None:
    table = ring.buf(16)
    ring.set_desc(0, 0x4000, 4096, F_WRITE, table=table)
    ring.set_desc(0, table, 16, F_INDIRECT)
    ring.publish(0)
    elem = ring.pop()
    assert elem is not None and elem.in_sg == [(0x4000, 4096)]


def test_indirect_table_may_hold_more_descriptors_than_the_ring() -> None:
    r = Ring(num=2)
    n = 300
    table = r.buf(n * 16)
    for i in range(n):
        r.set_desc(i, 0x1000 + i, 1, F_NEXT if i < n - 1 else 0, i + 1, table=table)
    r.set_desc(1, table, n * 16, F_INDIRECT)
    r.publish(1)
    elem = r.pop()
    assert elem is not None and len(elem.out_sg) == n and elem.out_sg[-1] == (0x1000 + n - 1, 1)


def test_non_head_indirect_flag_in_the_ring_is_an_ordinary_buffer(ring: Ring) -> None:
    # QEMU only looks at INDIRECT on the head descriptor of a direct chain.
    ring.set_desc(0, 0x1000, 8, F_NEXT, 1)
    ring.set_desc(1, 0x2000, 8, F_INDIRECT)
    ring.publish(0)
    elem = ring.pop()
    assert elem is not None and elem.out_sg == [(0x1000, 8), (0x2000, 8)]


# -------------------------------------------------------------- used ring


def test_push_writes_used_element_and_index(ring: Ring) -> None:
    b = ring.buf()
    ring.drv.add(ring.mem, [(b, 5)], [], "one")
    ring.drv.add(ring.mem, [], [(b, 64)], "two")
    e1, e2 = ring.pop(), ring.pop()
    assert e1 is not None and e2 is not None
    ring.vq.push(ring.mem, e2, 17)  # completion order need not be avail order
    assert ring.used_elem(0) == (e2.head, 17)
    assert ring.used_idx() == 1
    assert ring.vq.used_idx == 1
    assert ring.vq.inuse == 1
    ring.vq.push(ring.mem, e1, 0)
    assert ring.used_elem(1) == (e1.head, 0)
    assert ring.used_idx() == 2
    assert ring.vq.inuse == 0
    assert ring.drv.get_buf(ring.mem) == ("two", 17)
    assert ring.drv.get_buf(ring.mem) == ("one", 0)
    assert ring.drv.get_buf(ring.mem) is None
    assert ring.drv.num_free == NUM


def test_push_dirties_the_used_ring_pages(ring: Ring) -> None:
    b = ring.buf()
    ring.drv.add(ring.mem, [(b, 5)], [], "one")
    elem = ring.pop()
    assert elem is not None
    ring.mem.dirty_pages()
    ring.vq.push(ring.mem, elem, 0)
    assert ring.mem.dirty_pages() == [ring.drv.used >> 12]  # an aligned 70-byte ring


def _start_at(r: Ring, idx: int) -> None:
    """Put both sides at free-running index ``idx`` (as after long uptime)."""
    r.drv.avail_idx = r.drv.last_used_idx = idx
    r.set_avail_idx(idx)
    r.mem.write_u16(r.drv.used + 2, idx)
    st = attrs.evolve(r.vq.state(), last_avail_idx=idx, used_idx=idx, signalled_used=idx)
    r.vq = VirtQueue.from_state(st, r.mem)


@pytest.mark.parametrize("start", [0xFFFF - NUM, 0xFFFD, 0xFFFF])
def test_free_running_indices_wrap_at_u16(start: int) -> None:
    r = Ring()
    _start_at(r, start)
    b = r.buf()
    seen = []
    for k in range(3 * NUM):
        r.drv.add(r.mem, [(b, k + 1)], [], k)
        idx = (start + k) & 0xFFFF
        assert r.mem.read_u16(r.drv.avail + 2) == (idx + 1) & 0xFFFF
        elem = r.pop()
        assert elem is not None and elem.out_sg == [(b, k + 1)]
        r.vq.push(r.mem, elem, k)
        assert r.used_elem(idx % NUM) == (elem.head, k)
        assert r.used_idx() == (idx + 1) & 0xFFFF
        seen.append(r.drv.get_buf(r.mem))
    assert seen == [(k, k) for k in range(3 * NUM)]
    assert r.vq.last_avail_idx == r.vq.used_idx == (start + 3 * NUM) & 0xFFFF


def test_full_ring_across_the_wrap(ring: Ring) -> None:
    _start_at(ring, 0xFFFC)
    b = ring.buf()
    for k in range(NUM):
        ring.drv.add(ring.mem, [(b, 1)], [], k)
    with pytest.raises(GuestOSError) as info:
        ring.drv.add(ring.mem, [(b, 1)], [], "no room")
    assert info.value.errno == errno.ENOSPC
    elems = [ring.pop() for _ in range(NUM)]
    assert ring.pop() is None
    assert ring.vq.inuse == NUM
    for e in elems:
        assert e is not None
        ring.vq.push(ring.mem, e, 0)
    assert [ring.drv.get_buf(ring.mem) for _ in range(NUM)] == [(k, 0) for k in range(NUM)]


# ------------------------------------------------------------- notification


@pytest.mark.parametrize("flags,expect", [(0, True), (vring.VRING_AVAIL_F_NO_INTERRUPT, False)])
def test_no_interrupt_flag_without_event_idx(ring: Ring, flags: int, expect: bool) -> None:
    ring.mem.write_u16(ring.drv.avail, flags)
    ring.set_used_event(0xFFFF)  # ignored without EVENT_IDX
    b = ring.buf()
    for _ in range(3):
        ring.drv.add(ring.mem, [(b, 1)], [], "x")
        elem = ring.pop()
        assert elem is not None
        ring.vq.push(ring.mem, elem, 0)
        assert ring.vq.should_notify(ring.mem) is expect


def test_pop_without_event_idx_leaves_avail_event_alone(ring: Ring) -> None:
    b = ring.buf()
    ring.drv.add(ring.mem, [(b, 1)], [], "x")
    ring.pop()
    assert ring.avail_event() == 0


def test_pop_with_event_idx_writes_avail_event() -> None:
    r = Ring(event_idx=True)
    b = r.buf()
    for k in range(1, 4):
        r.drv.add(r.mem, [(b, 1)], [], k)
    for k in range(1, 4):
        r.pop()
        assert r.avail_event() == k


def test_should_notify_is_unconditional_until_a_first_signal() -> None:
    r = Ring(event_idx=True)
    r.set_used_event(0x8000)  # far away: would suppress
    b = r.buf()
    r.drv.add(r.mem, [(b, 1)], [], "x")
    elem = r.pop()
    assert elem is not None
    r.vq.push(r.mem, elem, 0)
    assert r.vq.should_notify(r.mem) is True
    assert r.vq.signalled_used_valid and r.vq.signalled_used == 1


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("event_offset", [-2, -1, 0, 1, 2, 3])
@pytest.mark.parametrize("start", [0, 0xFFFE])
def test_should_notify_follows_vring_need_event(start: int, event_offset: int, batch: int) -> None:
    r = Ring(event_idx=True)
    _start_at(r, start)
    r.vq.signalled_used_valid = True  # a signal at ``start`` was the last one
    b = r.buf()
    for k in range(batch):
        r.drv.add(r.mem, [(b, 1)], [], k)
    elems = [r.pop() for _ in range(batch)]
    old = start
    new = (start + batch) & 0xFFFF
    event = (start + event_offset) & 0xFFFF
    r.set_used_event(event)
    for e in elems:
        assert e is not None
        r.vq.push(r.mem, e, 0)
    # vring_need_event: (u16)(new - event - 1) < (u16)(new - old)
    expect = ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
    assert expect == (0 <= event_offset < batch)
    assert r.vq.should_notify(r.mem) is expect
    assert r.vq.signalled_used == new
    # Nothing used since: never again for the same index.
    assert r.vq.should_notify(r.mem) is False


def test_driver_get_buf_asks_for_the_next_interrupt() -> None:
    r = Ring(event_idx=True)
    b = r.buf()
    r.drv.add(r.mem, [(b, 1)], [], "a")
    r.drv.add(r.mem, [(b, 1)], [], "b")
    for tok in ("a", "b"):
        e = r.pop()
        assert e is not None
        r.vq.push(r.mem, e, 0)
    r.vq.should_notify(r.mem)
    r.drv.get_buf(r.mem)
    assert r.mem.read_u16(vring.used_event_addr(r.drv.avail, NUM)) == 1
    r.drv.get_buf(r.mem)
    assert r.mem.read_u16(vring.used_event_addr(r.drv.avail, NUM)) == 2


@pytest.mark.parametrize(
    "signalled_behind,valid_after", [(1, True), (0x7FFF, True), (0x8000, False), (0xFFFF, False), (0x10000, False)]
)
def test_push_far_past_the_last_signal_forces_the_next_notify(signalled_behind: int, valid_after: bool) -> None:
    # virtqueue_split_flush drops signalled_used_valid once used_idx has
    # moved half the u16 space past it, where the comparison stops ordering.
    r = Ring(event_idx=True)
    _start_at(r, 0x1234)
    b = r.buf()
    r.drv.add(r.mem, [(b, 1)], [], "x")
    e = r.pop()
    assert e is not None
    r.vq.signalled_used = (0x1235 - signalled_behind) & 0xFFFF
    r.vq.signalled_used_valid = True
    r.set_used_event(0x1235 + 0x100)  # outside [old, new): would suppress
    r.vq.push(r.mem, e, 0)
    assert r.vq.signalled_used_valid is valid_after
    assert r.vq.should_notify(r.mem) is (not valid_after)


def test_kick_needed_with_event_idx_follows_avail_event() -> None:
    r = Ring(event_idx=True)
    b = r.buf()
    r.drv.add(r.mem, [(b, 1)], [], 1)
    assert r.drv.kick_needed(r.mem) is True  # avail_event 0 lies in [0, 1)
    r.pop()  # the device wants a kick at 1 now
    r.drv.add(r.mem, [(b, 1)], [], 2)
    assert r.drv.kick_needed(r.mem) is True
    r.drv.add(r.mem, [(b, 1)], [], 3)  # device has not caught up: no kick
    assert r.drv.kick_needed(r.mem) is False
    r.pop()
    r.pop()
    r.drv.add(r.mem, [(b, 1)], [], 4)
    r.drv.add(r.mem, [(b, 1)], [], 5)  # one kick covers a batch containing the event
    assert r.drv.kick_needed(r.mem) is True
    assert r.drv.kick_needed(r.mem) is False  # nothing added since


def test_kick_needed_without_event_idx_follows_no_notify(ring: Ring) -> None:
    b = ring.buf()
    ring.drv.add(ring.mem, [(b, 1)], [], 1)
    assert ring.drv.kick_needed(ring.mem) is True
    ring.mem.write_u16(ring.drv.used, vring.VRING_USED_F_NO_NOTIFY)
    ring.drv.add(ring.mem, [(b, 1)], [], 2)
    assert ring.drv.kick_needed(ring.mem) is False


# ------------------------------------------------------ in_bytes_available


def test_in_bytes_available_counts_writable_bytes_without_popping(ring: Ring) -> None:
    b = ring.buf(4096)
    ring.drv.add(ring.mem, [(b, 100)], [(b, 10)], 1)
    ring.drv.add(ring.mem, [], [(b, 20), (b, 30)], 2)
    assert ring.vq.in_bytes_available(ring.mem, 1000) == 60
    assert ring.vq.in_bytes_available(ring.mem, 5) == 10  # stops once it has enough
    assert ring.vq.last_avail_idx == 0 and ring.vq.inuse == 0
    ring.pop()
    assert ring.vq.in_bytes_available(ring.mem, 1000) == 50


def test_in_bytes_available_sees_buffers_added_after_a_pop(ring: Ring) -> None:
    b = ring.buf(4096)
    ring.drv.add(ring.mem, [], [(b, 10)], 1)
    ring.drv.add(ring.mem, [], [(b, 10)], 2)
    ring.pop()  # the device knows of two, has taken one
    ring.drv.add(ring.mem, [], [(b, 5)], 3)
    assert ring.vq.in_bytes_available(ring.mem, 1000) == 15


def test_in_bytes_available_counts_indirect_tables(ring: Ring) -> None:
    table = ring.buf(32)
    ring.set_desc(0, 0x1000, 7, F_NEXT, 1, table=table)
    ring.set_desc(1, 0x2000, 40, F_WRITE, table=table)
    ring.set_desc(3, table, 32, F_INDIRECT)
    ring.publish(3)
    assert ring.vq.in_bytes_available(ring.mem, 1000) == 40


def test_in_bytes_available_reports_a_malformed_chain_like_qemu(ring: Ring) -> None:
    ring.set_desc(0, 0x1000, 10, F_WRITE)
    ring.set_desc(1, 0x1000, 20, F_WRITE | F_NEXT, 1)  # loops on itself
    ring.set_desc(2, 0x1000, 30, F_WRITE)
    ring.publish(0, 1, 2)
    # Enough bytes before the loop: counting stops there, as QEMU's does.
    assert ring.vq.in_bytes_available(ring.mem, 10) == 10
    # Counting on meets the loop: QEMU's virtio_error text.
    with pytest.raises(RingError, match="^Looped descriptor$"):
        ring.vq.in_bytes_available(ring.mem, 1 << 20)
    ring.set_avail_idx(NUM + 1)
    with pytest.raises(RingError, match=f"^Guest moved used index from 0 to {NUM + 1}$"):
        ring.vq.in_bytes_available(ring.mem, 1 << 20)


# ------------------------------------------------------------------- unpop


def test_unpop_gives_elements_back(ring: Ring) -> None:
    b = ring.buf()
    ring.drv.add(ring.mem, [(b, 1)], [], 1)
    ring.drv.add(ring.mem, [(b, 2)], [], 2)
    first = ring.pop()
    ring.pop()
    ring.vq.unpop(2)
    assert ring.vq.inuse == 0 and ring.vq.last_avail_idx == 0
    again = ring.pop()
    assert again is not None and first is not None and again.out_sg == first.out_sg
    with pytest.raises(ValueError):
        ring.vq.unpop(2)
    assert ring.vq.inuse == 1 and ring.vq.last_avail_idx == 1


# ======================================================== malformed rings


def _expect_ring_error(r: Ring, message: str) -> None:
    before = (r.vq.last_avail_idx, r.vq.inuse, r.vq.used_idx)
    with pytest.raises(RingError) as info:
        r.pop()
    assert str(info.value) == message
    assert isinstance(info.value, GuestError)
    # The head is given back: the queue is as before the pop...
    assert (r.vq.last_avail_idx, r.vq.inuse, r.vq.used_idx) == before
    # ...so the same chain is read, and refused, again.
    with pytest.raises(RingError) as again:
        r.pop()
    assert str(again.value) == message


@pytest.mark.parametrize("nxt", [NUM, NUM + 1, 0xFFFF])
def test_desc_next_out_of_range(ring: Ring, nxt: int) -> None:
    ring.set_desc(0, 0x1000, 8, F_NEXT, 1)
    ring.set_desc(1, 0x1000, 8, F_NEXT, nxt)
    ring.publish(0)
    _expect_ring_error(ring, f"Desc next is {nxt}")


def test_desc_next_out_of_range_of_the_indirect_table(ring: Ring) -> None:
    table = ring.buf(32)
    ring.set_desc(0, 0x1000, 8, F_NEXT, 2, table=table)  # the table has 2
    ring.set_desc(0, table, 32, F_INDIRECT)
    ring.publish(0)
    _expect_ring_error(ring, "Desc next is 2")


@pytest.mark.parametrize("cycle", [[0], [0, 1], [3, 1, 6]])
def test_looped_descriptor(ring: Ring, cycle: list[int]) -> None:
    for k, i in enumerate(cycle):
        ring.set_desc(i, 0x1000, 8, F_NEXT, cycle[(k + 1) % len(cycle)])
    ring.publish(cycle[0])
    _expect_ring_error(ring, "Looped descriptor")


def test_looped_descriptor_in_an_indirect_table(ring: Ring) -> None:
    table = ring.buf(32)
    ring.set_desc(0, 0x1000, 8, F_NEXT, 1, table=table)
    ring.set_desc(1, 0x1000, 8, F_NEXT, 0, table=table)
    ring.set_desc(0, table, 32, F_INDIRECT)
    ring.publish(0)
    _expect_ring_error(ring, "Looped descriptor")


@pytest.mark.parametrize("start,jump", [(0, NUM + 1), (0, 0x8000), (0xFFFE, NUM + 1), (5, 0xFFFF)])
def test_avail_index_moved_by_more_than_the_queue_size(start: int, jump: int) -> None:
    r = Ring()
    _start_at(r, start)
    new = (start + jump) & 0xFFFF
    r.set_avail_idx(new)
    _expect_ring_error(r, f"Guest moved used index from {start} to {new}")


def test_avail_index_moved_by_exactly_the_queue_size_is_fine(ring: Ring) -> None:
    for i in range(NUM):
        ring.set_desc(i, 0x1000, 8)
    ring.publish(*range(NUM))
    assert all(ring.pop() is not None for _ in range(NUM))


@pytest.mark.parametrize("head", [NUM, NUM + 7, 0xFFFF])
def test_avail_ring_names_a_head_outside_the_table(ring: Ring, head: int) -> None:
    ring.publish(head)
    _expect_ring_error(ring, f"Guest says index {head} is available")


def test_virtqueue_size_exceeded(ring: Ring) -> None:
    for i in range(NUM):
        ring.set_desc(i, 0x1000, 8)
    ring.publish(*range(NUM))
    for _ in range(NUM):
        assert ring.pop() is not None
    # The guest reposts a head the device still holds: more in flight than
    # the ring has entries.
    ring.publish(0)
    _expect_ring_error(ring, "Virtqueue size exceeded")


def test_readable_after_writable_is_incorrect_order(ring: Ring) -> None:
    ring.set_desc(0, 0x1000, 8, F_WRITE | F_NEXT, 1)
    ring.set_desc(1, 0x2000, 8, 0)
    ring.publish(0)
    _expect_ring_error(ring, "Incorrect order for descriptors")


def test_incorrect_order_inside_an_indirect_table(ring: Ring) -> None:
    table = ring.buf(32)
    ring.set_desc(0, 0x1000, 8, F_WRITE | F_NEXT, 1, table=table)
    ring.set_desc(1, 0x2000, 8, 0, table=table)
    ring.set_desc(0, table, 32, F_INDIRECT)
    ring.publish(0)
    _expect_ring_error(ring, "Incorrect order for descriptors")


@pytest.mark.parametrize("flags", [0, F_WRITE])
def test_zero_sized_buffer(ring: Ring, flags: int) -> None:
    ring.set_desc(0, 0x1000, 8, F_NEXT | flags, 1)
    ring.set_desc(1, 0x2000, 0, flags)
    ring.publish(0)
    _expect_ring_error(ring, "virtio: zero sized buffers are not allowed")


def test_zero_sized_readable_after_writable_reports_the_order_first(ring: Ring) -> None:
    # virtqueue_split_pop checks the direction before virtqueue_map_desc
    # looks at the size.
    ring.set_desc(0, 0x1000, 8, F_WRITE | F_NEXT, 1)
    ring.set_desc(1, 0x2000, 0, 0)
    ring.publish(0)
    _expect_ring_error(ring, "Incorrect order for descriptors")


@pytest.mark.parametrize("length", [0, 1, 15, 17, 24])
def test_invalid_size_for_indirect_table(ring: Ring, length: int) -> None:
    ring.set_desc(0, 0x1000, length, F_INDIRECT)
    ring.publish(0)
    _expect_ring_error(ring, "Invalid size for indirect buffer table")


@pytest.mark.parametrize("addr,length", [(RAM - 16, 32), (RAM, 16), (2**64 - 16, 16)])
def test_indirect_table_outside_ram(ring: Ring, addr: int, length: int) -> None:
    ring.set_desc(0, addr, length, F_INDIRECT)
    ring.publish(0)
    _expect_ring_error(ring, "Cannot map indirect buffer")


def test_indirect_flag_inside_an_indirect_table_is_ignored(ring: Ring) -> None:
    # QEMU 7.2's virtqueue_split_pop looks only at WRITE and NEXT inside a
    # table (FACTS.md section 5): the inner descriptor is an ordinary buffer.
    table = ring.buf(32)
    inner = ring.buf(16)
    ring.set_desc(0, inner, 16, F_INDIRECT, table=table)
    ring.set_desc(0, table, 16, F_INDIRECT)
    ring.publish(0)
    elem = ring.vq.pop(ring.mem)
    assert elem is not None and elem.out_sg == [(inner, 16)] and elem.in_sg == []


def test_more_than_virtqueue_max_size_buffers_in_an_indirect_table() -> None:
    r = Ring(num=2)
    n = 1025  # QEMU's VIRTQUEUE_MAX_SIZE is 1024
    table = r.buf(n * 16)
    for i in range(n):
        r.set_desc(i, 0x1000, 1, F_WRITE | (F_NEXT if i < n - 1 else 0), i + 1, table=table)
    r.set_desc(0, table, n * 16, F_INDIRECT)
    r.publish(0)
    _expect_ring_error(r, "virtio: too many write descriptors in indirect table")


@pytest.mark.parametrize(
    "addr,length",
    [(RAM - 8, 9), (RAM, 1), (2**64 - 1, 1), (0, 0xFFFFFFFF)],
)
@pytest.mark.parametrize("flags", [0, F_WRITE])
def test_buffer_outside_ram(ring: Ring, addr: int, length: int, flags: int) -> None:
    ring.set_desc(0, 0x1000, 8, F_NEXT | flags, 1)
    ring.set_desc(1, addr, length, flags)
    ring.publish(0)
    _expect_ring_error(ring, "virtio: bogus descriptor or out of resources")


def test_malformed_chain_after_good_ones_keeps_the_good_ones(ring: Ring) -> None:
    ring.set_desc(0, 0x1000, 8)
    ring.set_desc(1, 0x1000, 8, F_NEXT, 1)
    ring.publish(0, 1)
    assert ring.pop() is not None
    _expect_ring_error(ring, "Looped descriptor")
    assert ring.vq.last_avail_idx == 1 and ring.vq.inuse == 1


def test_error_under_event_idx_also_gives_the_head_back() -> None:
    r = Ring(event_idx=True)
    r.publish(NUM)
    _expect_ring_error(r, f"Guest says index {NUM} is available")
    r.set_avail_idx(0)
    r.set_desc(0, 0x1000, 0)
    r.mem.write_u16(vring.avail_ring_addr(r.drv.avail, 0), 0)
    r.set_avail_idx(1)
    _expect_ring_error(r, "virtio: zero sized buffers are not allowed")
    assert r.vq.last_avail_idx == 0


# ============================================================ configuration


def test_configure_validates_size_and_ram_but_not_alignment() -> None:
    mem = GuestMemory(RAM)
    vq = VirtQueue(3, 128)
    with pytest.raises(GuestError, match="size 256 is invalid"):
        vq.configure(mem, 256, 0x1000, 0x2000, 0x3000)
    with pytest.raises(GuestError, match="size 48 is invalid"):
        vq.configure(mem, 48, 0x1000, 0x2000, 0x3000)
    # QEMU maps rings at any address; the spec's alignment is the driver's duty.
    other = VirtQueue(4, 128)
    other.configure(mem, 128, 0x1008, 0x2001, 0x3002)
    assert other.ready and other.used_addr == 0x3002
    with pytest.raises(MemoryAccessError):
        vq.configure(mem, 128, RAM - 16, 0x2000, 0x3000)
    with pytest.raises(MemoryAccessError):
        vq.configure(mem, 128, 0x1000, 0x2000, RAM - 8)
    assert not vq.ready
    vq.configure(mem, 64, 0x1000, 0x2000, 0x3000)
    assert vq.ready and vq.size == 64


@pytest.mark.parametrize("max_size", [0, 3, 100, 65536])
def test_queue_size_must_be_a_power_of_two_up_to_32768(max_size: int) -> None:
    with pytest.raises(ValueError):
        VirtQueue(0, max_size)


def test_reset_forgets_everything_event_idx_included() -> None:
    r = Ring(event_idx=True)
    b = r.buf()
    r.drv.add(r.mem, [(b, 1)], [], 1)
    e = r.pop()
    assert e is not None
    r.vq.push(r.mem, e, 0)
    r.vq.should_notify(r.mem)
    r.vq.reset()
    assert r.vq.state() == VirtQueueState(index=0, max_size=NUM, size=NUM)


# ============================================================ state records


def _busy_ring() -> Ring:
    """A queue in mid-flight: indices near the wrap, one element held."""
    r = Ring(event_idx=True)
    _start_at(r, 0xFFFE)
    b = r.buf()
    for k in range(3):
        r.drv.add(r.mem, [(b, 1)], [], k)
    for _ in range(2):
        e = r.pop()
        assert e is not None
        r.vq.push(r.mem, e, 0)
        r.vq.should_notify(r.mem)
    assert r.pop() is not None
    return r


def test_state_round_trips_through_from_state() -> None:
    r = _busy_ring()
    st = r.vq.state()
    assert (st.last_avail_idx, st.used_idx, st.inuse) == (1, 0, 1)
    q = VirtQueue.from_state(st, r.mem)
    assert q.state() == st
    # ...and the restored queue carries on: pushes the held element, pops the next.
    r.drv.add(r.mem, [(r.buf(), 9)], [], "late")
    e = q.pop(r.mem)
    assert e is not None and e.out_sg[0][1] == 9


def test_state_of_a_fresh_queue_round_trips() -> None:
    mem = GuestMemory(RAM)
    st = VirtQueue(7, 32).state()
    assert VirtQueue.from_state(st, mem).state() == st


def _bad_fields(r: Ring) -> list[tuple[str, object]]:
    ram = r.mem.size
    return [
        ("index", -1),
        ("index", 1024),
        ("index", "0"),
        ("max_size", 0),
        ("max_size", 12),
        ("max_size", 65536),
        ("max_size", 4),  # smaller than the configured size
        ("size", 0),
        ("size", 6),
        ("size", 16),  # above max_size
        ("size", 8.0),
        ("desc_addr", ram - 16),
        ("desc_addr", -16),
        ("avail_addr", ram - 2),
        ("used_addr", ram - 4),
        ("used_addr", 2**64),
        ("ready", 1),
        ("ready", "yes"),
        ("last_avail_idx", -1),
        ("last_avail_idx", 0x10000),
        ("last_avail_idx", 0xFFFE),  # fits the guest's index, not used_idx
        ("last_avail_idx", 1 + NUM + 1),  # more heads taken than the guest made
        ("used_idx", 0x10000),
        ("used_idx", None),
        ("used_idx", (1 - NUM - 1) & 0xFFFF),  # more taken than the ring holds
        ("used_idx", 1 + 1),  # more used than taken
        ("inuse", -1),
        ("inuse", NUM + 1),
        ("inuse", 2),  # more than last_avail_idx - used_idx
        ("signalled_used", 0x10000),
        ("signalled_used", -1),
        ("signalled_used_valid", 0),
        ("event_idx", "no"),
    ]


def test_each_bad_field_alone_is_refused() -> None:
    # virtio-queue's state.rs habit: change one field of a good record.
    r = _busy_ring()
    good = r.vq.state()
    VirtQueue.from_state(good, r.mem)
    accepted = []
    for name, value in _bad_fields(r):
        bad = attrs.evolve(good, **{name: value})
        try:
            VirtQueue.from_state(bad, r.mem)
        except ValueError:
            continue
        accepted.append((name, value))
    assert accepted == []


def test_guest_index_inconsistent_with_host_index_uses_qemus_words() -> None:
    r = _busy_ring()
    r.set_avail_idx((1 + NUM + 1) & 0xFFFF)
    with pytest.raises(ValueError) as info:
        VirtQueue.from_state(r.vq.state(), r.mem)
    assert str(info.value) == "VQ 0 size 0x8 Guest index 0xa inconsistent with Host index 0x1: delta 0x9"


def test_taken_beyond_the_ring_uses_qemus_words() -> None:
    r = _busy_ring()
    st = attrs.evolve(r.vq.state(), used_idx=0xFFF0, inuse=0)
    with pytest.raises(ValueError) as info:
        VirtQueue.from_state(st, r.mem)
    assert str(info.value) == "VQ 0 size 0x8 < last_avail_idx 0x1 - used_idx 0xfff0"


def test_queue_that_is_not_ready_must_be_as_reset_leaves_it() -> None:
    mem = GuestMemory(RAM)
    good = VirtQueue(5, 128).state()
    assert VirtQueue.from_state(attrs.evolve(good, event_idx=True), mem).event_idx
    with pytest.raises(ValueError) as info:
        VirtQueue.from_state(attrs.evolve(good, last_avail_idx=3), mem)
    assert str(info.value) == "VQ 5 address 0x0 inconsistent with Host index 0x3"
    for name, value in [
        ("desc_addr", 0x1000), ("avail_addr", 0x1000), ("used_addr", 0x1000),
        ("used_idx", 1), ("inuse", 1), ("signalled_used", 1), ("signalled_used_valid", True),
        ("size", 256), ("size", 3),
    ]:
        with pytest.raises(ValueError):
            VirtQueue.from_state(attrs.evolve(good, **{name: value}), mem)


def test_refused_state_raises_value_error_never_a_guest_error() -> None:
    r = _busy_ring()
    with pytest.raises(ValueError) as info:
        VirtQueue.from_state(attrs.evolve(r.vq.state(), desc_addr=RAM), r.mem)
    assert not isinstance(info.value, GuestError)


# ============================================================ driver side


def test_driver_add_refuses_empty_chains_and_reports_enospc(ring: Ring) -> None:
    with pytest.raises(ValueError):
        ring.drv.add(ring.mem, [], [], "x")
    b = ring.buf()
    ring.drv.add(ring.mem, [(b, 1)] * (NUM - 1), [], "big")
    with pytest.raises(GuestOSError) as info:
        ring.drv.add(ring.mem, [(b, 1)], [(b, 1)], "two")
    assert info.value.errno == errno.ENOSPC
    assert ring.drv.num_free == 1
    ring.drv.add(ring.mem, [(b, 1)], [], "one")
    assert ring.drv.num_free == 0


def test_driver_recycles_descriptors_after_get_buf(ring: Ring) -> None:
    b = ring.buf()
    for round_ in range(5):
        heads = [ring.drv.add(ring.mem, [(b, 1)], [(b, 1)], (round_, k)) for k in range(NUM // 2)]
        assert ring.drv.num_free == 0
        for _ in heads:
            e = ring.pop()
            assert e is not None
            ring.vq.push(ring.mem, e, 1)
        got = [ring.drv.get_buf(ring.mem) for _ in heads]
        assert got == [((round_, k), 1) for k in range(NUM // 2)]
        assert ring.drv.num_free == NUM


def test_driver_detach_unused_returns_every_outstanding_token(ring: Ring) -> None:
    b = ring.buf()
    ring.drv.add(ring.mem, [(b, 1)], [], "a")
    ring.drv.add(ring.mem, [(b, 1), (b, 1)], [], "b")
    ring.drv.add(ring.mem, [], [(b, 1)], "c")
    e = ring.pop()
    assert e is not None
    ring.vq.push(ring.mem, e, 0)
    assert ring.drv.get_buf(ring.mem) == ("a", 0)
    assert sorted(ring.drv.detach_unused(ring.mem)) == ["b", "c"]
    assert ring.drv.num_free == NUM
    assert ring.drv.detach_unused(ring.mem) == []
    heads = [ring.drv.add(ring.mem, [(b, 1)], [], k) for k in range(NUM)]
    assert sorted(heads) == list(range(NUM))


def test_driver_marks_itself_broken_on_a_used_id_that_is_not_a_head(ring: Ring) -> None:
    b = ring.buf()
    ring.drv.add(ring.mem, [(b, 1)], [], "a")
    ring.mem.pack_into(vring.USED_ELEM, vring.used_ring_addr(ring.drv.used, 0), 5, 0)
    ring.mem.write_u16(ring.drv.used + 2, 1)
    assert ring.drv.get_buf(ring.mem) is None
    assert ring.drv.broken


def test_kmalloc_sizes_alignment_and_reuse() -> None:
    k = Kmalloc(PAGE_SIZE, 64 * PAGE_SIZE)
    a = k.alloc(1)
    b = k.alloc(100)
    c = k.alloc(3000)
    assert a % 64 == 0 and b % 128 == 0 and c % 4096 == 0
    assert k.allocated == 64 + 128 + 4096
    k.free(b)
    assert k.alloc(65) == b  # same bucket comes back
    with pytest.raises(ValueError):
        k.alloc(0)
    with pytest.raises(ValueError):
        k.free(a + 1)
    with pytest.raises(GuestOSError) as info:
        k.alloc(64 * PAGE_SIZE)
    assert info.value.errno == errno.ENOMEM
    restored = Kmalloc(PAGE_SIZE, 64 * PAGE_SIZE)
    restored.load_state(k.state())
    assert restored.allocated == k.allocated
    assert restored.alloc(8192) == k.alloc(8192)


# ========================================================= the device level


def _machine() -> tuple[Machine, VirtIOSerial, int]:
    m = Machine(ram_size=8 << 20)
    m.chardev_add(MemoryChardev("c0"))
    m.device_add({"driver": "virtio-serial", "id": "vs", "max_ports": 4})
    m.device_add({"driver": "virtserialport", "id": "p1", "chardev": "c0", "name": "org.test.0"})
    m.boot()
    dev = m.devices[0]
    return m, dev, m.port("p1").tx_queue


def _guest_post_bad_chain(m: Machine, tx: int) -> None:
    """The guest posts a chain whose second descriptor points past the table."""
    mem = m.mem
    q = m.guest.portdevs[0].queues[tx]
    buf = m.guest.kmalloc.alloc(64)
    head = q.add(mem, [(buf, 8)], [], buf)
    mem.pack_into(vring.DESC, q.desc + 16 * head, buf, 8, F_NEXT, 200)


def test_guest_data_flows_through_a_healthy_device() -> None:
    m, dev, _ = _machine()
    f = m.guest.open("/dev/virtio-ports/org.test.0")
    assert f.write(b"hello") == 5
    assert m.host_receive("c0") == b"hello"
    assert not dev.broken and m.error_log == []


def test_malformed_tx_ring_breaks_the_device_with_qemus_message() -> None:
    m, dev, tx = _machine()
    assert dev.status & 8  # FEATURES_OK
    dev.take_effects()
    _guest_post_bad_chain(m, tx)
    vq = dev.queues[tx]
    before = vq.last_avail_idx
    dev.kick(tx)
    assert dev.broken
    assert dev.status & STATUS_NEEDS_RESET
    effects = dev.take_effects()
    assert ErrorReport("Desc next is 200") in effects
    assert ConfigInterrupt() in effects
    assert [e.message for e in effects if isinstance(e, ErrorReport)] == ["Desc next is 200"]
    assert vq.last_avail_idx == before
    # A broken device does nothing more, whatever the guest kicks.
    for q in range(len(dev.queues)):
        dev.kick(q)
    assert dev.take_effects() == []
    assert vq.last_avail_idx == before
    # The status write keeps NEEDS_RESET until the guest resets the device.
    dev.set_status(dev.status & ~STATUS_NEEDS_RESET)
    assert dev.status & STATUS_NEEDS_RESET
    dev.set_status(0)
    assert not dev.broken
    assert dev.status == 0
    assert all(not q.ready and q.last_avail_idx == 0 for q in dev.queues)


def test_malformed_ring_through_the_machine_reaches_the_error_log() -> None:
    m, dev, tx = _machine()
    _guest_post_bad_chain(m, tx)
    m.notify_device(dev, tx)
    assert dev.broken
    assert m.error_log == ["Desc next is 200"]
    # The guest's later writes go nowhere and raise nothing.
    f = m.guest.open("/dev/virtio-ports/org.test.0")
    try:
        f.write(b"lost")
    except GuestOSError:
        pass
    assert m.host_receive("c0") == b""
    assert m.error_log == ["Desc next is 200"]


def test_malformed_ring_before_features_ok_breaks_without_needs_reset() -> None:
    mem = GuestMemory(RAM)
    dev = VirtIOSerial(mem, bus_name="vs.0", max_ports=2)
    alloc = Kmalloc(PAGE_SIZE, RAM)
    drv = DriverQueue(mem, alloc, 3, 32, False)
    dev.set_status(1 | 2)  # ACKNOWLEDGE | DRIVER
    dev.configure_queue(3, 32, drv.desc, drv.avail, drv.used)
    mem.write_u16(vring.avail_ring_addr(drv.avail, 0), 40)
    mem.write_u16(drv.avail + 2, 1)
    dev.kick(3)
    assert dev.broken
    assert not dev.status & STATUS_NEEDS_RESET
    effects = dev.take_effects()
    assert ErrorReport("Guest says index 40 is available") in effects
    assert ConfigInterrupt() not in effects  # nothing to tell a driver not yet FEATURES_OK


def test_descriptor_outside_ram_on_control_tx_breaks_the_device() -> None:
    m, dev, _ = _machine()
    q = m.guest.portdevs[0].queues[3]
    q.add(m.mem, [(m.mem.size - 4, 8)], [], "cpkt")
    dev.take_effects()
    dev.kick(3)
    assert dev.broken
    assert ErrorReport("virtio: bogus descriptor or out of resources") in dev.take_effects()


def test_healthy_kick_delivers_data_with_no_error_effects() -> None:
    m, dev, tx = _machine()
    f = m.guest.open("/dev/virtio-ports/org.test.0")
    q = m.guest.portdevs[0].queues[tx]
    buf = m.guest.kmalloc.alloc(64)
    m.mem.write(buf, b"abc")
    q.add(m.mem, [(buf, 3)], [], buf)
    dev.take_effects()
    dev.kick(tx)
    effects = dev.take_effects()
    assert all(isinstance(e, Interrupt) and e.queue == tx for e in effects)
    assert m.host_receive("c0") == b"abc"
    f.close()


# =================================== the device against QEMU 7.2's virtio_error

# The short names the device-level tests below use for the descriptor flags.
NEXT, WRITE, INDIRECT = F_NEXT, F_WRITE, F_INDIRECT


def publish_raw(mem: GuestMemory, q: DriverQueue, descs: list[tuple[int, int, int, int]], head: int = 0) -> None:
    """Write descriptors straight into q's table and make ``head`` available
    (a malicious guest: no free-list bookkeeping)."""
    for i, (addr, length, flags, nxt) in enumerate(descs):
        mem.pack_into(vring.DESC, q.desc + 16 * i, addr, length, flags, nxt)
    idx = mem.read_u16(q.avail + 2)
    mem.write_u16(q.avail + 4 + 2 * (idx % q.num), head)
    mem.write_u16(q.avail + 2, (idx + 1) & 0xFFFF)


def open_port1(m: Machine) -> RawDriver:
    """Bare driver: DEVICE_READY, then the guest opens port 1."""
    drv = ready_device(m.devices[0])
    drv.control(Event.DEVICE_READY, 1, BAD_ID)
    drv.control(Event.PORT_OPEN, 1, 1)
    drv.received()
    return drv


def reported(dev: VirtIOSerial) -> list[str]:
    """The error_report() lines the device has emitted and nobody collected."""
    return [e.message for e in dev.take_effects() if isinstance(e, ErrorReport)]


# Was: virtqueue.pop raises a non-QEMU 'Indirect descriptor in indirect table' error; QEMU 7.2
# virtqueue_split_pop ignores INDIRECT inside a table (FACTS.md §5.6)
def test_indirect_flag_inside_an_indirect_table_is_ignored_like_qemu() -> None:
    m = serial_machine({"driver": "virtserialport", "nr": "1", "chardev": "c1"}, chardevs=(MemoryChardev("c1"),))
    dev = m.devices[0]
    drv = open_port1(m)
    q = drv.queue(5)
    data = drv.kmalloc.alloc(64)
    m.mem.write(data, b"hello")
    table = drv.kmalloc.alloc(16)
    m.mem.pack_into(vring.DESC, table, data, 5, INDIRECT, 0)  # INDIRECT inside the table
    publish_raw(m.mem, q, [(table, 16, INDIRECT, 0)])
    dev.kick(5)
    assert not dev.broken, reported(dev)
    assert m.host_receive("c1") == b"hello"


# Was: port_guest_ready (chr_can_read) silently returns 0 on a malformed rx ring; QEMU's
# virtio_serial_guest_ready -> virtqueue_get_avail_bytes calls virtio_error (FACTS.md §3, §5), so
# a backend that honours can_read never pops and the device never breaks
def test_can_read_on_a_malformed_rx_ring_marks_the_device_broken() -> None:
    m = serial_machine({"driver": "virtserialport", "nr": "1", "chardev": "c1"}, chardevs=(MemoryChardev("c1"),))
    dev = m.devices[0]
    drv = open_port1(m)
    q = drv.queue(4)
    buf = drv.kmalloc.alloc(4096)
    publish_raw(m.mem, q, [(buf, 100, WRITE | NEXT, 200)])  # under the 4096 bytes QEMU asks for
    dev.ports[1].chr_can_read()  # type: ignore[attr-defined]
    assert dev.broken
    assert "Desc next is 200" in reported(dev)


# Was: set_broken sets NEEDS_RESET when FEATURES_OK is set; QEMU's virtio_error sets it only when
# VIRTIO_F_VERSION_1 was negotiated (FACTS.md §5)
def test_broken_legacy_device_without_version_1_gets_no_needs_reset() -> None:
    m = serial_machine()
    dev = m.devices[0]
    drv = RawDriver(dev)
    drv.negotiate(dev.device_features() & ~(1 << vring.VIRTIO_F_VERSION_1))
    q = drv.queue(3)
    drv.driver_ok()
    buf = drv.kmalloc.alloc(64)
    publish_raw(m.mem, q, [(buf, 8, NEXT, 99)])
    dev.kick(3)
    assert dev.broken and "Desc next is 99" in reported(dev)
    assert not dev.status & STATUS_NEEDS_RESET


# ----------------------------------------- guest-controlled queue configuration

# Was: configure_queue lets guest-chosen queue index/geometry raise (IndexError, GuestError,
# MemoryAccessError) into the caller; QEMU ignores bad sizes/indices and reports unmappable rings
# with virtio_error, never an exception
@pytest.mark.parametrize(
    ("index", "size", "desc", "avail", "used"),
    [
        (64, 128, 0x10000, 0x20000, 0x30000),  # queue_sel past the last queue
        (3, 32, 64 * MiB - 16, 0x20000, 0x30000),  # descriptor table outside RAM
        (3, 32, 0x10008, 0x20000, 0x30000),  # misaligned (QEMU does not check)
        (3, 48, 0x10000, 0x20000, 0x30000),  # not a power of two
    ],
)
def test_configure_queue_with_guest_values_never_raises(index: int, size: int, desc: int, avail: int, used: int) -> None:
    dev = serial_machine().devices[0]
    RawDriver(dev).negotiate()
    dev.configure_queue(index, size, desc, avail, used)


# Was: a ring outside RAM raises MemoryAccessError instead of QEMU's virtio_error 'Cannot map
# desc' (virtio_init_region_cache)
def test_configure_queue_outside_ram_marks_device_broken_with_cannot_map_desc() -> None:
    dev = serial_machine().devices[0]
    RawDriver(dev).negotiate()
    try:
        dev.configure_queue(3, 32, dev.mem.size - 16, 0x20000, 0x30000)
    except Exception:
        pass
    assert dev.broken and "Cannot map desc" in reported(dev)
