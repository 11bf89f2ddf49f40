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
* A booted machine driven by a hostile guest through every register it
  has, interleaved: random rings on the control queues (2, 3), the ports'
  rx and tx queues, ``configure_queue`` with guest-chosen sizes and
  addresses, status writes (resets among them), feature and config writes,
  kicks of any queue number, and host traffic and connection changes in
  between.  No exception escapes the device; every error report is one of
  QEMU's; the device is healthy or broken (with NEEDS_RESET on a virtio 1
  device) because of a reported ring error; the queue indices stay
  consistent; and a system reset always brings back a working machine.

Examples: a fixed, derandomized set in CI; ``VSERIAL_FUZZ=long`` runs 5000
random ones per test.
"""

from __future__ import annotations

import os
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

# CI runs a fixed, derandomized set of examples (the whole file in well under
# 20 s on two cores); VSERIAL_FUZZ=long runs many random ones
# (docs/emulator.md, "Fuzzing").
LONG = os.environ.get("VSERIAL_FUZZ") == "long"


def fuzz(ci_examples: int) -> settings:
    return settings(
        max_examples=5000 if LONG else ci_examples,
        derandomize=not LONG,  # CI: the same examples on every run
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
def ring_plans(
    draw: st.DrawFn, num: int, ram: int, buffers: tuple[int, int], max_chains: int | None = None
) -> dict[str, Any]:
    lo, hi = buffers
    buf = st.tuples(st.integers(lo, hi - 0x200), st.integers(1, 0x200))
    chain = st.tuples(
        st.booleans(),  # through an indirect table
        st.integers(1, 4),  # buffers
        st.integers(0, 4),  # how many of them are device-readable
        st.lists(buf, min_size=4, max_size=4),
    ).map(lambda c: (c[0], c[3][: min(c[2], c[1])], c[3][min(c[2], c[1]) : c[1]]))
    chains = draw(st.lists(chain, min_size=1, max_size=min(num, max_chains or num)))
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


@fuzz(200)
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


@fuzz(150)
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


@fuzz(100)
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


# ------------------------------------------- the whole register face, interleaved

QEMU_REPORTS = (*ERROR_PREFIXES, "Cannot map ", "virtio-serial-bus: ")
RING_BREAKS = (*ERROR_PREFIXES, "Cannot map ")


def _console_machine() -> Machine:
    m = Machine(ram_size=4 << 20)
    m.chardev_add(MemoryChardev("cc"))
    m.chardev_add(MemoryChardev("c0"))
    m.device_add({"driver": "virtio-serial", "id": "vs", "max_ports": 2})
    m.device_add({"driver": "virtconsole", "id": "con0", "chardev": "cc"})
    m.device_add({"driver": "virtserialport", "id": "p1", "chardev": "c0", "name": "fuzz"})
    m.boot()
    return m


# Queues in play: console rx/tx 0/1, control rx/tx 2/3, p1 rx/tx 4/5.
PLAYED_QUEUES = [0, 1, 2, 3, 4, 5]
STATUS_VALUES = st.one_of(
    st.just(0),  # reset
    st.sampled_from([1, 3, 11, 15, 7, 13, 15 | 64, 128, 15 | 128]),  # the driver's steps, NEEDS_RESET, FAILED
    st.integers(0, 255),
)


@st.composite
def register_ops(draw: st.DrawFn, ram: int) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(
        ["ring", "ring", "ring", "kick", "kick", "configure", "status", "features", "host", "config"]
    ))
    if kind == "ring":
        return ("ring", draw(st.sampled_from(PLAYED_QUEUES)))  # the plan is drawn against the live geometry
    if kind == "kick":
        return ("kick", draw(st.one_of(st.sampled_from(PLAYED_QUEUES), st.integers(-1, 8))))
    if kind == "configure":
        addr = st.one_of(
            st.integers(0, ram), st.sampled_from([0, ram - 1, ram - 16, ram - 0x1000, ram]), st.integers(0, 2**64 - 1)
        )
        size = st.one_of(st.sampled_from([0, 1, 2, 3, 8, 31, 32, 64, 128, 256, 32768]), st.integers(0, 2**16))
        index = st.one_of(st.sampled_from(PLAYED_QUEUES), st.integers(-1, 8))
        return ("configure", draw(index), draw(size), draw(addr), draw(addr), draw(addr))
    if kind == "status":
        return ("status", draw(STATUS_VALUES))
    if kind == "features":
        return ("features", draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, (1 << 32) | 7 | (1 << 29)]))))
    if kind == "config":
        return ("config", draw(st.integers(-2, 14)), draw(st.binary(max_size=6)))
    return (
        "host",
        draw(st.sampled_from(["cc", "c0"])),
        draw(st.sampled_from(["send", "send", "take", "grant", "stall", "disconnect", "connect"])),
        draw(st.integers(1, 9000)),
    )


@fuzz(150)
@given(data=st.data())
def test_hostile_guest_on_every_register_never_escapes_the_device(data: st.DataObject) -> None:
    m = _console_machine()
    dev = m.devices[0]
    mem = m.mem
    dev.take_effects()
    scratch = m.guest.kmalloc.alloc(0x4000)
    mem.write(scratch, bytes(range(256)) * 64)
    table_area = m.guest.kmalloc.alloc(INDIRECT_ROOM)
    ops = data.draw(st.lists(register_ops(mem.size), min_size=1, max_size=12), label="ops")
    broke_with: str | None = None  # the report that broke the device, since the last reset
    for op in ops:
        was_broken = dev.broken
        if op[0] == "ring":
            vq = dev.queues[op[1]]
            if vq.ready:
                plan = data.draw(
                    ring_plans(vq.size, mem.size, (scratch, scratch + 0x4000), max_chains=8), label="plan"
                )
                apply_plan(mem, plan, vq.size, vq.desc_addr, vq.avail_addr, vq.last_avail_idx, table_area)
            dev.kick(op[1])
        elif op[0] == "kick":
            dev.kick(op[1])
        elif op[0] == "configure":
            dev.configure_queue(*op[1:])
        elif op[0] == "status":
            dev.set_status(op[1])
        elif op[0] == "features":
            dev.set_driver_features(op[1])
        elif op[0] == "config":
            dev.write_config(op[1], op[2])
        else:
            _, chardev_id, what, n = op
            chardev = m.host_chardev(chardev_id)
            if what == "send":
                chardev.send(bytes([n & 0xFF]) * n)  # straight into the device, no guest run
            elif what == "take":
                chardev.take()
            elif what == "grant":
                chardev.grant(None)
            elif what == "stall":
                chardev.grant(0)
                chardev.window = n % 7
            elif what == "disconnect":
                chardev.disconnect()
            else:
                chardev.connect()
        event(f"op: {op[0]}")
        effects = dev.take_effects()
        reports = [e.message for e in effects if isinstance(e, ErrorReport)]
        for msg in reports:
            assert msg.startswith(QEMU_REPORTS), msg
            event(f"report: {_outcome(RingError(msg))}")
        if op[0] == "status" and op[1] == 0:
            broke_with = None
            assert not dev.broken and dev.status == 0
        if dev.broken and not was_broken:
            breaking = [msg for msg in reports if msg.startswith(RING_BREAKS)]
            assert breaking, f"broken without a ring error: {reports}"
            broke_with = breaking[0]
            virtio1 = bool(dev.guest_features & (1 << vring.VIRTIO_F_VERSION_1))
            assert bool(dev.status & STATUS_NEEDS_RESET) == virtio1 or op[0] == "status"
            assert (ConfigInterrupt() in effects) == virtio1
        if was_broken and dev.broken:
            # Broken stays quiet: no ring is walked.  Only a queue address
            # the guest writes may be refused again ("Cannot map ...": QEMU's
            # virtio_error reports every time, broken or not).
            assert not [msg for msg in reports if msg.startswith(ERROR_PREFIXES)], "a broken device went on"
        assert dev.broken == (broke_with is not None)
        for vq in dev.queues:
            # Every popped element is pushed back, held by a port, or
            # dropped by a guest reset (QEMU's detach): never more in use
            # than taken, and never one in use that no port holds.
            held = sum(1 for p in dev.ports.values() if p.elem is not None and p.tx_queue == vq.index)
            assert vq.inuse == held, (vq.index, vq.inuse, held)
            assert (vq.last_avail_idx - vq.used_idx) & 0xFFFF >= vq.inuse
            for name in ("last_avail_idx", "used_idx", "signalled_used"):
                assert 0 <= getattr(vq, name) <= 0xFFFF
        for port in dev.ports.values():
            if port.elem is not None:
                assert port.iov_idx <= len(port.elem.out_sg)
    event("end: broken" if dev.broken else "end: healthy")
    # Whatever the guest did, a system reset gives a machine that works.
    m.system_reset()
    assert not dev.broken and not dev.status & STATUS_NEEDS_RESET
    for chardev_id in ("cc", "c0"):
        m.host_connect(chardev_id)
        m.host_grant(chardev_id, None)
        m.host_receive(chardev_id)
    # Host data the old guest never took waits in the backend (never lost)
    # and arrives first, once the new guest opens the port.
    waiting = m.host_chardev("c0").pending
    f = m.guest.open("/dev/virtio-ports/fuzz")
    assert f.write(b"after reset") == 11
    assert m.host_receive("c0") == b"after reset"
    m.host_send("c0", b"back")
    got = b""
    while m.host_chardev("c0").pending or len(got) < waiting + 4:
        got += f.read()
    assert len(got) == waiting + 4 and got.endswith(b"back")
