"""Property tests: whatever the guest writes into its rings, the device side
either takes a well-formed element or refuses with QEMU's words.

Two levels:

* ``VirtQueue.pop`` on a configured queue whose descriptor table, avail ring
  and a spare "indirect area" hold random bytes or random-but-plausible
  descriptors, from random starting indices.  Each result is checked
  against invariants (buffers inside RAM, non-zero, readable before
  writable, bounded count, indices moved by exactly one or not at all) and
  against ``reference_pop``, a plain transcription of QEMU's
  ``virtqueue_split_pop`` that also names the expected error.
* A booted machine whose port tx ring is overwritten at random, then
  kicked: ``VirtIOSerial.kick`` never raises, and the device ends up
  either healthy (everything available consumed and handed to the host) or
  broken with NEEDS_RESET and exactly the error the reference predicts.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emulator.core import vring
from emulator.core.virtio import STATUS_FEATURES_OK, STATUS_NEEDS_RESET
from emulator.core.effects import ConfigInterrupt, ErrorReport
from emulator.errors import GuestError
from emulator.core.chardev import MemoryChardev
from emulator.machine.machine import Machine
from emulator.core.memory import GuestMemory
from emulator.core.virtqueue import VIRTQUEUE_MAX_SIZE, Element, VirtQueue
from emulator.errors import RingError

FUZZ = settings(
    max_examples=300,
    derandomize=True,  # the same examples on every run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


# ------------------------------------------------------------- the reference


def reference_pop(ram: bytes, num: int, desc: int, avail: int, last_avail: int, inuse: int) -> tuple[Any, ...]:
    """QEMU's virtqueue_split_pop over a RAM snapshot.

    Returns ("empty",), ("error", message) or ("ok", head, out_sg, in_sg).
    """
    size = len(ram)

    def u16(addr: int) -> int:
        return int(_U16.unpack_from(ram, addr)[0])

    def read_desc(table: int, i: int) -> tuple[int, int, int, int]:
        return _DESC.unpack_from(ram, table + 16 * i)  # type: ignore[return-value]

    avail_idx = u16(avail + 2)
    if avail_idx == last_avail:
        return ("empty",)
    if (avail_idx - last_avail) % 65536 > num:
        return ("error", f"Guest moved used index from {last_avail} to {avail_idx}")
    if inuse >= num:
        return ("error", "Virtqueue size exceeded")
    head = u16(avail + 4 + 2 * (last_avail % num))
    if head >= num:
        return ("error", f"Guest says index {head} is available")
    table, limit = desc, num
    addr, length, flags, nxt = read_desc(table, head)
    indirect = bool(flags & F_INDIRECT)
    if indirect:
        if length == 0 or length % 16:
            return ("error", "Invalid size for indirect buffer table")
        if addr + length > size:
            return ("error", "Cannot map indirect buffer")
        table, limit = addr, length // 16
        addr, length, flags, nxt = read_desc(table, 0)
    out_sg: list[tuple[int, int]] = []
    in_sg: list[tuple[int, int]] = []
    while True:
        # QEMU 7.2 has no nested-indirect check: INDIRECT inside a table is ignored.
        writable = bool(flags & F_WRITE)
        if not writable and in_sg:
            return ("error", "Incorrect order for descriptors")
        if length == 0:
            return ("error", "virtio: zero sized buffers are not allowed")
        if len(out_sg) + len(in_sg) == VIRTQUEUE_MAX_SIZE:
            return ("error", "virtio: too many write descriptors in indirect table")
        if addr + length > size:
            return ("error", "virtio: bogus descriptor or out of resources")
        (in_sg if writable else out_sg).append((addr, length))
        if len(out_sg) + len(in_sg) > limit:
            return ("error", "Looped descriptor")
        if not flags & F_NEXT:
            return ("ok", head, out_sg, in_sg)
        if nxt >= limit:
            return ("error", f"Desc next is {nxt}")
        addr, length, flags, nxt = read_desc(table, nxt)


def check_element(elem: Element, num: int, ram_size: int, ram: bytes, desc: int) -> None:
    """Invariants every popped element must satisfy, reference or not."""
    assert 0 <= elem.head < num
    bufs = elem.out_sg + elem.in_sg
    assert bufs, "an element has at least one buffer"
    for addr, length in bufs:
        assert length > 0
        assert 0 <= addr and addr + length <= ram_size
    head_flags = _DESC.unpack_from(ram, desc + 16 * elem.head)[2]
    if head_flags & F_INDIRECT:
        table_len = _DESC.unpack_from(ram, desc + 16 * elem.head)[1]
        assert len(bufs) <= min(table_len // 16, VIRTQUEUE_MAX_SIZE)
    else:
        assert len(bufs) <= num
    assert elem.ndescs == len(bufs)


# ---------------------------------------------------------------- strategies
#
# A ring image is a *plan*: well-formed chains as an honest driver would post
# them (some through indirect tables), then a few mutations - a descriptor
# field, an avail slot, the avail index, or a run of raw bytes overwritten.
# Hypothesis prefers short mutation lists, so clean rings, rings broken deep
# in, and rings scribbled all over all come up.

u16s = st.integers(0, 0xFFFF)
MAX_INDIRECT = 8  # descriptors per indirect table in a plan
INDIRECT_ROOM = 64 * 16  # bytes of the indirect area


def _field_values(num: int, ram: int) -> dict[str, st.SearchStrategy[int]]:
    return {
        "addr": st.one_of(
            st.integers(0, ram + 64), st.sampled_from([ram - 16, ram - 1, ram]), st.integers(0, 2**64 - 1)
        ),
        "len": st.one_of(st.integers(0, 64), st.sampled_from([0, 8, 16, 24, 32, 4096]), st.integers(0, 2**32 - 1)),
        "flags": st.one_of(st.integers(0, 7), u16s),
        "next": st.one_of(st.integers(0, num + 1), st.sampled_from([num, num + 1]), u16s),
    }


@st.composite
def ring_plans(draw: st.DrawFn, num: int, ram: int, buffers: tuple[int, int]) -> dict[str, Any]:
    lo, hi = buffers
    buf = st.tuples(st.integers(lo, hi - 0x200), st.integers(1, 0x200))
    chain = st.tuples(
        st.booleans(),  # through an indirect table
        st.integers(1, 4),  # buffers
        st.integers(0, 4),  # how many of them are device-readable
        st.lists(buf, min_size=4, max_size=4),
    ).map(lambda c: (c[0], c[3][: min(c[2], c[1])], c[3][min(c[2], c[1]) : c[1]]))
    chains = draw(st.lists(chain, min_size=1, max_size=num))
    order = draw(st.permutations(range(num)))
    fields = _field_values(num, ram)
    mutation = st.one_of(
        st.tuples(st.just("desc"), st.integers(0, num - 1), st.sampled_from(list(fields))).flatmap(
            lambda t: st.tuples(st.just(t[0]), st.just(t[1]), st.just(t[2]), fields[t[2]])
        ),
        st.tuples(st.just("indirect"), st.integers(0, INDIRECT_ROOM // 16 - 1), st.sampled_from(list(fields))).flatmap(
            lambda t: st.tuples(st.just(t[0]), st.just(t[1]), st.just(t[2]), _field_values(MAX_INDIRECT, ram)[t[2]])
        ),
        st.tuples(
            st.just("link"),
            st.integers(0, num - 1),
            st.one_of(st.integers(0, num - 1), st.just(-num)),  # -num: just off the table
        ),
        st.tuples(st.just("flip"), st.integers(0, num - 1), st.sampled_from([F_NEXT, F_WRITE, F_INDIRECT])),
        st.tuples(st.just("head"), st.integers(0, num - 1), st.one_of(st.integers(0, num - 1), st.just(num), u16s)),
        st.tuples(st.just("edge"), st.integers(0, num - 1), st.integers(1, 64), st.sampled_from([0, 1])),
        st.tuples(st.just("avail_idx"), st.one_of(st.integers(0, num + 1), u16s)),
        st.tuples(
            st.just("bytes"),
            st.sampled_from(["desc", "avail", "indirect"]),
            st.integers(0, 16 * num),
            st.binary(min_size=1, max_size=16 * num),
        ),
    )
    mode = draw(st.sampled_from(["clean", "mutated", "mutated", "mutated", "scribbled"]))
    mutations = [] if mode == "clean" else draw(st.lists(mutation, min_size=1, max_size=4))
    if mode == "scribbled":
        # Random bytes over every area the guest writes, as garbage would be.
        mutations += [
            ("bytes", "desc", 0, draw(st.binary(min_size=16 * num, max_size=16 * num))),
            ("bytes", "avail", 0, draw(st.binary(min_size=vring.avail_size(num), max_size=vring.avail_size(num)))),
            ("bytes", "indirect", 0, draw(st.binary(max_size=INDIRECT_ROOM))),
        ]
    return {"chains": chains, "order": order, "mutations": mutations}


def apply_plan(
    mem: GuestMemory, plan: dict[str, Any], num: int, desc: int, avail: int, start: int, indirect_at: int
) -> int:
    """Write the plan's chains and mutations; returns how many chains were posted."""
    free = list(plan["order"])
    next_table = 0
    posted = 0
    for through_table, outs, ins in plan["chains"]:
        bufs = [(a, n, 0) for a, n in outs] + [(a, n, F_WRITE) for a, n in ins]
        if through_table and len(bufs) <= MAX_INDIRECT and next_table + len(bufs) <= INDIRECT_ROOM // 16 and free:
            table = indirect_at + 16 * next_table
            next_table += len(bufs)
            for k, (a, n, w) in enumerate(bufs):
                more = F_NEXT if k < len(bufs) - 1 else 0
                mem.pack_into(_DESC, table + 16 * k, a, n, w | more, k + 1)
            head = free.pop()
            mem.pack_into(_DESC, desc + 16 * head, table, 16 * len(bufs), F_INDIRECT, 0)
        elif len(bufs) <= len(free):
            ids = [free.pop() for _ in bufs]
            for k, (a, n, w) in enumerate(bufs):
                more = F_NEXT if k < len(bufs) - 1 else 0
                mem.pack_into(_DESC, desc + 16 * ids[k], a, n, w | more, ids[k + 1] if more else 0)
            head = ids[0]
        else:
            continue
        mem.write_u16(vring.avail_ring_addr(avail, (start + posted) % num), head)
        posted += 1
    mem.write_u16(avail + 2, (start + posted) & 0xFFFF)
    offsets = {"addr": 0, "len": 8, "flags": 12, "next": 14}
    writers = {"addr": mem.write_u64, "len": mem.write_u32, "flags": mem.write_u16, "next": mem.write_u16}
    areas = {"desc": (desc, 16 * num), "avail": (avail, vring.avail_size(num)), "indirect": (indirect_at, INDIRECT_ROOM)}
    for m in plan["mutations"]:
        if m[0] == "desc":
            # Counted from the end of ``order``: small numbers hit the
            # descriptors of the first chains posted.
            i = plan["order"][num - 1 - m[1]]
            writers[m[2]](desc + 16 * i + offsets[m[2]], m[3])
        elif m[0] == "link":  # chain a posted descriptor to another, or off the table
            i = plan["order"][num - 1 - m[1]]
            j = plan["order"][num - 1 - m[2]] if m[2] >= 0 else -m[2]
            mem.write_u16(desc + 16 * i + 12, mem.read_u16(desc + 16 * i + 12) | F_NEXT)
            mem.write_u16(desc + 16 * i + 14, j)
        elif m[0] == "edge":  # a buffer ending exactly at, or one past, the end of RAM
            i = plan["order"][num - 1 - m[1]]
            mem.write_u64(desc + 16 * i, mem.size - m[2] + m[3])
            mem.write_u32(desc + 16 * i + 8, m[2])
        elif m[0] == "flip":
            i = plan["order"][num - 1 - m[1]]
            mem.write_u16(desc + 16 * i + 12, mem.read_u16(desc + 16 * i + 12) ^ m[2])
        elif m[0] == "indirect":
            writers[m[2]](indirect_at + 16 * m[1] + offsets[m[2]], m[3])
        elif m[0] == "head":
            mem.write_u16(vring.avail_ring_addr(avail, (start + m[1]) % num), m[2])
        elif m[0] == "avail_idx":
            mem.write_u16(avail + 2, (start + m[1]) & 0xFFFF)
        else:
            base, size = areas[m[1]]
            off = min(m[2], size - 1)
            if m[3]:
                mem.write(base + off, m[3][: size - off])
    return posted


def _outcome(err: BaseException) -> str:
    text = str(err)
    return next((p.strip() for p in ERROR_PREFIXES if text.startswith(p)), text)


# ------------------------------------------------------- the queue by itself

RAM = 64 * 1024
DESC_AT, AVAIL_AT, USED_AT, INDIRECT_AT, BUFFERS_AT = 0x1000, 0x2000, 0x3000, 0x4000, 0x8000
ERROR_PREFIXES = (
    "Desc next is ",
    "Looped descriptor",
    "Guest moved used index from ",
    "Guest says index ",
    "Virtqueue size exceeded",
    "Incorrect order for descriptors",
    "virtio: zero sized buffers are not allowed",
    "Invalid size for indirect buffer table",
    "Cannot map indirect buffer",
    "virtio: bogus descriptor or out of resources",
    "virtio: too many write descriptors in indirect table",
)


@st.composite
def queues(draw: st.DrawFn) -> tuple[GuestMemory, VirtQueue, int]:
    """A configured queue at a random index, its rings written from a plan."""
    num = draw(st.sampled_from([1, 2, 4, 8, 16]))
    start = draw(st.one_of(st.just(0), st.integers(0xFFF0, 0xFFFF), u16s))
    inuse = draw(st.one_of(st.just(0), st.integers(0, num)))
    mem = GuestMemory(RAM)
    plan = draw(ring_plans(num, RAM, (BUFFERS_AT, RAM)))
    apply_plan(mem, plan, num, DESC_AT, AVAIL_AT, start, INDIRECT_AT)
    vq = VirtQueue(0, 16)
    vq.configure(mem, num, DESC_AT, AVAIL_AT, USED_AT)
    vq.event_idx = draw(st.booleans())
    vq.last_avail_idx = vq.shadow_avail_idx = start
    vq.inuse = inuse
    vq.used_idx = (start - inuse) & 0xFFFF
    return mem, vq, num


@FUZZ
@given(queue=queues(), data=st.data())
def test_pop_on_random_rings_yields_valid_elements_or_ring_errors(
    queue: tuple[GuestMemory, VirtQueue, int], data: st.DataObject
) -> None:
    mem, vq, num = queue
    held: list[Element] = []
    for _ in range(num + 2):
        ram = mem.read(0, RAM)
        before = (vq.last_avail_idx, vq.inuse, vq.used_idx)
        expected = reference_pop(ram, num, DESC_AT, AVAIL_AT, vq.last_avail_idx, vq.inuse)
        try:
            elem = vq.pop(mem)
        except RingError as err:
            event(f"pop: {_outcome(err)}")
            event(f"pops before the end: {len(held)}")
            assert expected == ("error", str(err))
            assert (vq.last_avail_idx, vq.inuse, vq.used_idx) == before
            return
        except GuestError as err:  # allowed by the contract; none expected here
            raise AssertionError(f"unexpected non-ring guest error: {err}") from err
        if elem is None:
            event("pop: empty")
            event(f"pops before the end: {len(held)}")
            assert expected == ("empty",)
            assert (vq.last_avail_idx, vq.inuse, vq.used_idx) == before
            return
        assert expected == ("ok", elem.head, elem.out_sg, elem.in_sg)
        check_element(elem, num, RAM, ram, DESC_AT)
        assert vq.last_avail_idx == (before[0] + 1) & 0xFFFF
        assert vq.inuse == before[1] + 1
        if vq.event_idx:
            assert mem.read_u16(vring.avail_event_addr(USED_AT, num)) == vq.last_avail_idx
        held.append(elem)
        if data.draw(st.booleans(), label="push one back"):
            done = held.pop(data.draw(st.integers(0, len(held) - 1), label="which"))
            vq.push(mem, done, data.draw(st.integers(0, 2**32 - 1), label="written"))
            assert mem.read_u16(USED_AT + 2) == vq.used_idx
    # num + 2 pops cannot all succeed: the ring holds num heads at most.
    raise AssertionError("pop kept returning elements past the ring size")


@FUZZ
@given(queue=queues(), data=st.data())
def test_in_bytes_available_counts_clean_rings_and_reports_bad_ones(
    queue: tuple[GuestMemory, VirtQueue, int], data: st.DataObject
) -> None:
    mem, vq, num = queue
    vq.inuse = 0
    vq.used_idx = vq.last_avail_idx
    before = vq.state()
    try:
        n: int | None = vq.in_bytes_available(mem, 1 << 40)
    except RingError as err:
        # QEMU's virtqueue_split_get_avail_bytes reports ring faults itself.
        assert str(err).startswith(ERROR_PREFIXES), str(err)
        n = None
    # Never pops and never changes the queue, whatever the ring holds.
    assert vq.state() == before
    ram = mem.read(0, RAM)
    pending = (mem.read_u16(AVAIL_AT + 2) - vq.last_avail_idx) & 0xFFFF
    if pending > num:
        assert n is None  # "Guest moved used index"
        return
    last, total, descs, clean = vq.last_avail_idx, 0, 0, True
    for _ in range(pending):
        got = reference_pop(ram, num, DESC_AT, AVAIL_AT, last, 0)
        if got[0] != "ok":
            clean = False
            break
        total += sum(length for _, length in got[3])
        indirect = _DESC.unpack_from(ram, DESC_AT + 16 * got[1])[2] & F_INDIRECT
        descs += 1 if indirect else len(got[2]) + len(got[3])
        last = (last + 1) & 0xFFFF
    clean = clean and descs <= num
    event(f"in_bytes: {'clean' if clean else 'not clean'}, {'some' if total else 'no'} bytes")
    if clean:
        # Every pending chain well formed and within the ring's bound (QEMU
        # applies the same): exactly their writable bytes; with a smaller
        # ``want`` it may stop early, never short of ``want``.
        assert n == total
        want = data.draw(st.integers(1, max(1, total)), label="want")
        assert min(want, total) <= vq.in_bytes_available(mem, want) <= total
        assert vq.state() == before


# ----------------------------------------------------------- a whole machine

MACHINE_RAM = 2 << 20


def _booted() -> tuple[Machine, Any, Any]:
    m = Machine(ram_size=MACHINE_RAM)
    m.chardev_add(MemoryChardev("c0"))
    m.device_add({"driver": "virtio-serial", "id": "vs", "max_ports": 2})
    m.device_add({"driver": "virtserialport", "id": "p1", "chardev": "c0", "name": "fuzz"})
    m.boot()
    dev = m.devices[0]
    port = m.port("p1")
    return m, dev, port


@FUZZ
@given(warmup=st.lists(st.integers(1, 300), max_size=3), data=st.data())
def test_random_tx_ring_then_kick_never_raises_and_breaks_cleanly(warmup: list[int], data: st.DataObject) -> None:
    m, dev, port = _booted()
    mem = m.mem
    tx = port.tx_queue
    vq = dev.queues[tx]
    drv = m.guest.portdevs[dev.index].queues[tx]
    num = drv.num
    assert dev.status & STATUS_FEATURES_OK and vq.event_idx

    # Some honest traffic first, so the indices are not at zero.
    f = m.guest.open("/dev/virtio-ports/fuzz")
    for n in warmup:
        assert f.write(b"w" * n) == n
    chardev = m.host_chardev("c0")
    assert chardev.take() == b"".join(b"w" * n for n in warmup)
    dev.take_effects()
    start = vq.last_avail_idx
    assert vq.inuse == 0

    # Then the guest rewrites its descriptor table and avail ring from a plan.
    # Buffers lie in a scratch area of known bytes; mutations may point
    # anywhere at all.
    scratch = m.guest.kmalloc.alloc(0x4000)
    mem.write(scratch, bytes(range(256)) * 64)
    table_area = m.guest.kmalloc.alloc(INDIRECT_ROOM)
    plan = data.draw(ring_plans(num, MACHINE_RAM, (scratch, scratch + 0x4000)), label="plan")
    apply_plan(mem, plan, num, drv.desc, drv.avail, start, table_area)

    # What QEMU would do with this ring, from a snapshot taken now.
    ram = mem.read(0, mem.size)
    expected_data = bytearray()
    expected_error = None
    last = start
    used_lo, used_hi = drv.used, drv.used + vring.used_size(num)
    data_is_stable = True
    for _ in range(num + 1):
        got = reference_pop(ram, num, drv.desc, drv.avail, last, 0)
        if got[0] == "empty":
            break
        if got[0] == "error":
            expected_error = got[1]
            break
        for addr, length in got[2]:
            expected_data += ram[addr : addr + length]
            if addr < used_hi and addr + length > used_lo:
                data_is_stable = False  # the device's own pushes rewrite it
        last = (last + 1) & 0xFFFF
    event(f"device: {_outcome(RingError(expected_error)) if expected_error else 'healthy'}")
    event(f"device: {'some' if expected_data else 'no'} data")

    dev.kick(tx)  # must not raise, whatever the ring says
    effects = dev.take_effects()
    received = chardev.take()
    reports = [e.message for e in effects if isinstance(e, ErrorReport)]

    if data_is_stable:
        assert received == expected_data
    else:
        assert len(received) == len(expected_data)
    if expected_error is None:
        assert not dev.broken
        assert reports == []
        assert not dev.status & STATUS_NEEDS_RESET
        assert vq.last_avail_idx == mem.read_u16(drv.avail + 2)
        assert vq.inuse == 0
        assert mem.read_u16(drv.used + 2) == vq.used_idx == vq.last_avail_idx
    else:
        assert dev.broken
        assert reports == [expected_error]
        assert expected_error.startswith(ERROR_PREFIXES)
        assert dev.status & STATUS_NEEDS_RESET
        assert ConfigInterrupt() in effects
        assert vq.last_avail_idx == last  # the bad head was given back
        # Broken stays broken, quietly, whatever is kicked.
        for q in range(len(dev.queues)):
            dev.kick(q)
        assert dev.take_effects() == []
        assert chardev.take() == b""
        # ...until the guest resets the device.
        dev.set_status(0)
        assert not dev.broken and dev.status == 0
