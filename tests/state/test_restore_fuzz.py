"""Fuzzing the real restore: a booted machine's virtio-serial device is saved
with ``capture`` (plus its RAM), the record or the stream is mutated at
random, and the result is loaded back into the same machine with
``vmstate.loads`` + ``restore`` (a loadvm onto the machine the snapshot was
taken of).

What must hold, whatever the mutation:

* A refused load raises a clean error - one of vmstate's documented stream
  errors from ``loads``, ``vmstate.ValidationError`` (or emulator's
  ``StateError``) from ``restore`` - never anything else, and the machine's
  observable state is exactly as before: ``describe()``, every queue's
  ``state()``, the ports' held elements and positions, guest RAM, the
  guest's view of its ports, the QMP events, the error log, the host side.
* An accepted load leaves a machine that works.  When the restored state is
  the saved one, or only differs in fields restore keeps or compares (the
  bus and port names, cols/rows, host_connected), the guest <-> host round
  trip gives exactly the bytes it would have without the save.  Otherwise
  the restored state disagrees with the guest driver (as a forged snapshot
  would): driving the machine then never raises out of the device, only
  the guest's errno errors reach the guest program, the device is healthy
  or broken with QEMU's words (or broken because the record said so), and
  a system_reset brings back a machine whose round trip works.

The machine: console con0 (id 0), p1 (id 1, open, its host reader stalled
after 3 bytes, so it holds the guest's element mid-buffer), p2 (id 2,
open, with host data the guest has not read), p3 (id 4, host side closed).

Profiles: CI runs a fixed, derandomized set of examples; VSERIAL_FUZZ=long
runs many random ones (see docs/emulator.md, "Fuzzing").
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import vmstate
from emulator.core.chardev import MemoryChardev
from emulator.core.vring import avail_ring_addr
from emulator.errors import GuestError, GuestOSError, StateError
from emulator.machine.machine import Machine
from emulator.state.records import PortRecord, SgRecord, ElementRecord, VirtIOSerialRecord, capture, registry, restore
from tests.core.test_ring_fuzz import ERROR_PREFIXES
from tests.vmstate.vmstate_hostile import mutate
from vmstate.container import ITEM_TAG, encode_item

LONG = os.environ.get("VSERIAL_FUZZ") == "long"
FUZZ = settings(
    max_examples=3000 if LONG else 150,
    derandomize=not LONG,  # CI: the same examples on every run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

RAM_SIZE = 8 << 20
REGISTRY = registry()
STREAM_ERRORS = (vmstate.IncompatibleVersion, vmstate.CorruptStream, vmstate.IntegrityError, vmstate.ValidationError)
RESTORE_ERRORS = (vmstate.ValidationError, StateError)
# QEMU's ring messages, and the device's own error_report texts.
QEMU_MESSAGES = (*ERROR_PREFIXES, "Cannot map ", "virtio-serial-bus: ")


def booted() -> Machine:
    m = Machine(ram_size=RAM_SIZE)
    m.chardev_add(MemoryChardev("con"))
    m.chardev_add(MemoryChardev("c1", window=3))
    m.chardev_add(MemoryChardev("c2"))
    m.chardev_add(MemoryChardev("c3", connected=False))
    m.device_add({"driver": "virtio-serial", "id": "vs", "max_ports": "8"})
    m.device_add({"driver": "virtconsole", "id": "con0", "chardev": "con"})
    m.device_add({"driver": "virtserialport", "id": "p1", "chardev": "c1", "name": "org.fuzz.1", "nr": "1"})
    m.device_add({"driver": "virtserialport", "id": "p2", "chardev": "c2", "name": "org.fuzz.2", "nr": "2"})
    m.device_add({"driver": "virtserialport", "id": "p3", "chardev": "c3", "name": "org.fuzz.3", "nr": "4"})
    m.boot()
    f1 = m.guest.open("/dev/virtio-ports/org.fuzz.1")
    m.guest.open("/dev/virtio-ports/org.fuzz.2")
    assert f1.write(b"abcdef") == 6
    assert m.host_receive("c1") == b"abc"
    assert m.host_send("c2", b"queued") == 6
    m.events.clear()
    return m


def files(m: Machine) -> dict[str, Any]:
    return {f.path.rsplit(".", 1)[1]: f for f in m.guest.open_files if not f.console}


def observe(m: Machine) -> Any:
    """Everything a refused restore must leave as it was."""
    dev = m.devices[0]
    chardevs = {
        c: (bytes(m.host_chardev(c).received), m.host_chardev(c).pending, m.host_chardev(c).window) for c in m.chardevs
    }
    return (
        m.describe(),
        [q.state() for q in dev.queues],
        [q.shadow_avail_idx for q in dev.queues],
        [
            (p.id, p.iov_idx, p.iov_offset, None if p.elem is None else (p.elem.head, p.elem.out_sg, p.elem.in_sg, p.elem.ndescs))
            for p in dev.ports.values()
        ],
        (dev.guest_features, dev.cols, dev.rows, list(dev.ports_map), list(dev.effects)),
        bytes(m.mem.ro),
        m.guest.ports(),
        [(i, q.avail_idx, q.last_used_idx, q.num_free) for pd in m.guest.portdevs.values() for i, q in pd.queues.items()],
        [(e.name, e.data) for e in m.events],
        list(m.error_log),
        chardevs,
        bool(m.irqs),
    )


BOOTED = booted()
BASE = capture(BOOTED.devices[0])
BASE_STREAM = vmstate.dumps([BASE], producer="fuzz", created=0, ram={"ram": BOOTED.mem.ro})


def round_trip(m: Machine) -> None:
    """The guest <-> host traffic the saved machine was about to carry."""
    f = files(m)
    m.host_grant("c1", None)  # the stalled reader wakes up: the held rest
    assert m.host_receive("c1") == b"def"
    assert f["2"].read() == b"queued"
    assert m.host_send("c2", b"ping") == 4
    assert f["2"].read() == b"ping"
    assert f["2"].write(b"pong") == 4
    assert m.host_receive("c2") == b"pong"
    assert f["1"].write(b"more") == 4
    assert m.host_receive("c1") == b"more"
    assert not m.devices[0].broken


def drive(m: Machine, notes: list[str]) -> None:
    """The same traffic on a machine whose state no longer matches its
    guest: the guest program may get errno errors, nothing else escapes."""
    f = files(m)
    steps = [
        lambda: m.host_grant("c1", None),
        lambda: m.host_receive("c1"),
        lambda: f["2"].read(),
        lambda: m.host_send("c2", b"ping"),
        lambda: f["2"].read(),
        lambda: f["2"].write(b"pong"),
        lambda: f["1"].write(b"more"),
        lambda: m.host_receive("c2"),
    ]
    for step in steps:
        try:
            step()
        except GuestOSError as err:
            notes.append(f"accepted, driven: errno {errno.errorcode.get(err.errno or 0, err.errno)}")
    dev = m.devices[0]
    for q in range(len(dev.queues)):  # every queue kicked: the device never raises
        m.notify_device(dev, q)
    m.pump()


def after_reset_works(m: Machine) -> None:
    m.system_reset()
    dev = m.devices[0]
    assert not dev.broken
    f2 = m.guest.open("/dev/virtio-ports/org.fuzz.2")
    m.host_chardev("c2").take()
    # The host data waiting in c2 (if the guest never took it) arrives first.
    assert m.host_send("c2", b"ping") == 4 or m.host_chardev("c2").pending == 0
    got = b""
    while True:
        try:
            got += f2.read()
        except GuestOSError as err:
            assert err.errno == errno.EAGAIN
            break
    assert got.endswith(b"ping")
    assert f2.write(b"pong") == 4
    assert m.host_receive("c2") == b"pong"


# Fields whose mutation restore must absorb: it keeps its own value (names)
# or compares and tells the guest (host_connected), or copies a value that
# no data path reads (cols/rows, which the guest only reads on RESIZE).
HARMLESS = {"bus", "cols", "rows", "ports[*]/name", "ports[*]/host_connected"}


def load_and_check(m: Machine, data: bytes, touched: set[str]) -> list[str]:
    """Loads ``data`` into ``m`` and checks the outcome; returns what
    happened (for hypothesis' statistics)."""
    notes: list[str] = []
    _load_and_check(m, data, touched, notes)
    return notes


def _load_and_check(m: Machine, data: bytes, touched: set[str], notes: list[str]) -> None:
    dev = m.devices[0]
    before = observe(m)
    try:
        loaded = vmstate.loads(data, REGISTRY)
    except STREAM_ERRORS as err:
        notes.append(f"refused by loads: {type(err).__name__}")
        assert observe(m) == before
        return
    try:
        rec = loaded.section("virtio-serial", 0)
    except KeyError:
        # A stream without this device's section (its name or instance id
        # edited): there is no machine-level load yet to refuse it, so the
        # caller does (LoadedStream.section's documented KeyError).
        notes.append("refused: no section for the device")
        assert observe(m) == before
        return
    ram = loaded.ram.get("ram")
    try:
        restore(dev, rec, ram=ram)
    except RESTORE_ERRORS as err:
        notes.append(f"refused by restore: {str(err).split(':')[0]}")
        assert observe(m) == before, "a refused restore changed the machine"
        return
    m.pump()
    neutral = capture(dev) == BASE and bytes(m.mem.ro) == before[5]
    if neutral or touched <= HARMLESS:
        notes.append("accepted: " + ("as saved" if neutral else "harmless fields"))
        round_trip(m)
        return
    notes.append("accepted: state rewritten")
    errors_before = len(m.error_log)
    drive(m, notes)
    if dev.broken and not rec.broken:
        new = m.error_log[errors_before:]
        assert new and all(msg.startswith(QEMU_MESSAGES) for msg in new), new
    after_reset_works(m)


# ----------------------------------------------------- record-level mutations

U = {"U8": 0xFF, "U16": 0xFFFF, "U32": 0xFFFF_FFFF, "U64": 2**64 - 1}
DEVICE_FIELDS = {
    "bus": "str", "max_ports": "U32", "host_features": "U64", "guest_features": "U64", "status": "U8",
    "broken": "bool", "cols": "U16", "rows": "U16", "ports_map": "map",
}
PORT_FIELDS = {
    "id": "U32", "driver": "str", "name": "name", "guest_connected": "bool", "host_connected": "bool",
    "iov_idx": "U32", "iov_offset": "U32",
}
QUEUE_FIELDS = {
    "index": "U16", "size": "U32", "ready": "bool", "desc_addr": "addr", "avail_addr": "addr", "used_addr": "addr",
    "last_avail_idx": "U16", "used_idx": "U16", "inuse": "U16", "signalled_used": "U16", "signalled_used_valid": "bool",
}
STRINGS = ["", "vs.0", "virtconsole", "virtserialport", "x-echoport", "org.fuzz.1", "org.fuzz.2", "org.fuzz.9"]


def values(kind: str, current: Any) -> st.SearchStrategy[Any]:
    if kind == "bool":
        return st.booleans()
    if kind == "str":
        return st.sampled_from(STRINGS) | st.text(max_size=8)
    if kind == "name":
        return st.none() | st.sampled_from(STRINGS) | st.text(max_size=8)
    if kind == "map":
        return st.integers(0, 511).map(lambda bit: current ^ (1 << bit)) | st.integers(0, 2**512 - 1)
    top = U.get(kind, 2**64 - 1)
    near = st.integers(-3, 3).map(lambda d: min(max(current + d, 0), top))
    edges = st.sampled_from([0, 1, top, top - 1, 0x8000, 128, 32])
    if kind == "addr":
        edges = st.sampled_from([0, RAM_SIZE - 1, RAM_SIZE - 16, RAM_SIZE, 2**64 - 16, 2**64 - 1])
    return st.one_of(near, edges, st.integers(0, top))


@st.composite
def record_mutations(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """A short list of edits to the saved record and RAM (as drawn paths)."""
    nports, nqueues = len(BASE.ports), len(BASE.queues)
    # Queues of the ports in play: 0/1 console, 2/3 control, 4/5 p1, 6/7 p2, 10/11 p3.
    queue_index = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 10, 11]) | st.integers(0, nqueues - 1)
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["device", "port", "port", "queue", "queue", "elem", "sg", "ports", "ram"]))
        if kind == "device":
            name = draw(st.sampled_from(sorted(DEVICE_FIELDS)))
            ops.append(("device", name, draw(values(DEVICE_FIELDS[name], getattr(BASE, name)))))
        elif kind == "port":
            i = draw(st.integers(0, nports - 1))
            name = draw(st.sampled_from(sorted(PORT_FIELDS)))
            ops.append(("port", i, name, draw(values(PORT_FIELDS[name], getattr(BASE.ports[i], name)))))
        elif kind == "queue":
            i = draw(queue_index)
            name = draw(st.sampled_from(sorted(QUEUE_FIELDS)))
            ops.append(("queue", i, name, draw(values(QUEUE_FIELDS[name], getattr(BASE.queues[i], name)))))
        elif kind == "elem":
            # p1's held element (ports[1]) mostly; any port may get one forged
            i = draw(st.sampled_from([1, 1, 0, 2, 3]))
            what = draw(st.sampled_from(["head", "none", "forge"]))
            if what == "head":
                ops.append(("elem_head", i, draw(values("U16", 0))))
            elif what == "none":
                ops.append(("elem_none", i))
            else:
                sg = st.builds(SgRecord, values("addr", 0x32D000), values("U32", 6))
                ops.append(("elem_forge", i, draw(values("U16", 0)), draw(st.lists(sg, max_size=3)), draw(st.lists(sg, max_size=2))))
        elif kind == "sg":
            which = draw(st.sampled_from(["addr", "len", "add", "drop", "to_in"]))
            ops.append(("sg", which, draw(values("addr" if which == "addr" else "U32", 0x32D000 if which == "addr" else 6))))
        elif kind == "ports":
            what = draw(st.sampled_from(["drop", "dup", "swap", "forge"]))
            ops.append(("ports", what, draw(st.integers(0, nports - 1)), draw(st.integers(0, nports - 1)),
                        draw(values("U32", 3)), draw(st.sampled_from(["virtserialport", "virtconsole"]))))
        else:
            # The queue indices the guest keeps in RAM, and the held chain's descriptor.
            i = draw(queue_index)
            where = draw(st.sampled_from(["avail_idx", "used_idx", "avail_slot", "head_desc"]))
            ops.append(("ram", i, where, draw(values("U16", 0))))
    return ops


def apply_ops(rec: VirtIOSerialRecord, ram: bytearray, ops: list[tuple[Any, ...]]) -> set[str]:
    """Edit the record and RAM in place; returns the touched field names
    (ports' fields as ports[*]/name)."""
    touched: set[str] = set()
    for op in ops:
        if op[0] == "device":
            setattr(rec, op[1], op[2])
            touched.add(op[1])
        elif op[0] == "port" and op[1] < len(rec.ports):
            setattr(rec.ports[op[1]], op[2], op[3])
            touched.add(f"ports[*]/{op[2]}")
        elif op[0] == "queue" and op[1] < len(rec.queues):
            setattr(rec.queues[op[1]], op[2], op[3])
            touched.add(f"queues/{op[2]}")
        elif op[0] == "elem_head" and op[1] < len(rec.ports) and rec.ports[op[1]].elem is not None:
            rec.ports[op[1]].elem.head = op[2]  # type: ignore[union-attr]
            touched.add("elem")
        elif op[0] == "elem_none" and op[1] < len(rec.ports):
            rec.ports[op[1]].elem = None
            touched.add("elem")
        elif op[0] == "elem_forge" and op[1] < len(rec.ports):
            rec.ports[op[1]].elem = ElementRecord(head=op[2], out_sg=op[3], in_sg=op[4])
            touched.add("elem")
        elif op[0] == "sg" and len(rec.ports) > 1 and rec.ports[1].elem is not None:
            elem = rec.ports[1].elem
            if op[1] in ("addr", "len") and elem.out_sg:
                setattr(elem.out_sg[0], op[1], op[2])
            elif op[1] == "add":
                elem.out_sg.append(SgRecord(op[2] % RAM_SIZE, 1 + op[2] % 64))
            elif op[1] == "drop" and elem.out_sg:
                elem.out_sg.pop()
            elif op[1] == "to_in":
                elem.in_sg, elem.out_sg = elem.out_sg, elem.in_sg
            touched.add("elem")
        elif op[0] == "ports" and rec.ports:
            _, what, i, j, new_id, driver = op
            i, j = i % len(rec.ports), j % len(rec.ports)
            if what == "drop":
                del rec.ports[i]
            elif what == "dup":
                rec.ports.append(attrs.evolve(rec.ports[i]))
            elif what == "swap":
                rec.ports[i], rec.ports[j] = rec.ports[j], rec.ports[i]
            else:
                rec.ports.append(PortRecord(id=new_id, driver=driver, name=None, guest_connected=True,
                                            host_connected=True, iov_idx=0, iov_offset=0, elem=None))
            touched.add(f"ports/{what}")
        elif op[0] == "ram":
            _, i, where, value = op
            q = BASE.queues[i]
            if where == "avail_idx":
                at = q.avail_addr + 2
            elif where == "used_idx":
                at = q.used_addr + 2
            elif where == "avail_slot":
                at = avail_ring_addr(q.avail_addr, (q.last_avail_idx - 1) % q.size)
            else:
                at = q.desc_addr + 16 * BASE.ports[1].elem.head + 8  # type: ignore[union-attr]  # the len
            ram[at : at + 2] = value.to_bytes(2, "little")
            touched.add(f"ram/{where}")
    return touched


@FUZZ
@given(ops=record_mutations())
def test_mutated_record_is_refused_cleanly_or_leaves_a_working_machine(ops: list[tuple[Any, ...]]) -> None:
    m = booted()
    assert capture(m.devices[0]) == BASE
    rec = vmstate.loads(BASE_STREAM, REGISTRY).section("virtio-serial", 0)  # a fresh copy
    ram = bytearray(m.mem.ro)
    touched = apply_ops(rec, ram, ops)
    try:
        data = vmstate.dumps([rec], producer="fuzz", created=0, ram={"ram": bytes(ram)})
    except vmstate.ValidationError as err:
        # The writer checks the record against its description too; only a
        # forged port whose lists exceed their bounds could fail there.
        raise AssertionError(f"in-type values must serialize: {err}") from err
    for note in load_and_check(m, data, touched):
        event(note)


# ----------------------------------------------------- stream-level mutations
#
# As tests/vmstate/test_vmstate_fuzz.py does to the demo streams: the item
# payloads are edited and the stream resealed with a correct sha256 trailer
# (anyone without a key can), so the edits get past the digest.

def _items(data: bytes) -> list[bytes]:
    """The item payloads of a stream, trailer excluded."""
    items = cbor2.loads(b"\x9f" + data + b"\xff")
    return [i.value for i in items[:-1]]


def reseal(items: list[bytes]) -> bytes:
    frames = b"".join(ITEM_TAG + cbor2.dumps(p) for p in items)
    return frames + encode_item(["end", hashlib.sha256(frames).digest(), None])


def replace_at(value: Any, path: list[int], new: Any) -> Any:
    """Replaces the node reached by following ``path`` (indices taken modulo
    each container's size) with ``new``."""
    if not path or not isinstance(value, (list, dict)) or not value:
        return new
    if isinstance(value, list):
        i = path[0] % len(value)
        value[i] = replace_at(value[i], path[1:], new)
        return value
    key = list(value)[path[0] % len(value)]
    value[key] = replace_at(value[key], path[1:], new)
    return value


byte_mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete"]),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=1, max_value=16),
)
plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.sampled_from([0, 1, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, RAM_SIZE, RAM_SIZE - 8])
    | st.binary(max_size=72)
    | st.text(max_size=20)
    | st.floats(allow_nan=True),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


_KINDS = [p[0] if isinstance(p, list) else "header" for p in map(cbor2.loads, _items(BASE_STREAM))]
SECTION_ITEM = _KINDS.index("section")
RAM_ITEMS = [i for i, kind in enumerate(_KINDS) if kind == "ram"]


@FUZZ
@given(
    target=st.sampled_from(["device", "ports", "ports", "queues", "queues", "ram", "header"]),
    path=st.lists(st.integers(0, 200), max_size=6),
    new=plain,
)
def test_values_replaced_in_the_stream_are_refused_cleanly_or_leave_a_working_machine(
    target: str, path: list[int], new: Any
) -> None:
    """Values of any type, anywhere in the section (or the RAM and header
    items), behind a valid digest: loads' validation and restore's checks
    between them refuse all that does not fit."""
    m = booted()
    items = _items(BASE_STREAM)
    if target == "header":
        i = 0
    elif target == "ram":
        i = RAM_ITEMS[path[0] % len(RAM_ITEMS)] if path else RAM_ITEMS[0]
    else:
        i = SECTION_ITEM
        # ["section", name, instance, version, [bus, max_ports, ..., ports, queues]]
        field = {"device": None, "ports": 9, "queues": 10}[target]
        path = [4, *path] if field is None else [4, field, *path]
    items[i] = cbor2.dumps(replace_at(cbor2.loads(items[i]), path, new), canonical=True)
    for note in load_and_check(m, reseal(items), {"stream"}):
        event(note)


@FUZZ
@given(ops=st.lists(byte_mutation, min_size=1, max_size=4))
def test_mutated_section_bytes_are_refused_cleanly_or_leave_a_working_machine(ops: list[tuple[str, int, int, int]]) -> None:
    m = booted()
    items = _items(BASE_STREAM)
    items[SECTION_ITEM] = mutate(items[SECTION_ITEM], ops)
    for note in load_and_check(m, reseal(items), {"stream"}):
        event(note)


def test_the_unmutated_snapshot_restores_to_a_working_machine() -> None:
    """The baseline the fuzz relies on: the saved state, loaded back, is
    taken as it is and the round trip works."""
    m = booted()
    assert load_and_check(m, BASE_STREAM, set()) == ["accepted: as saved"]


@pytest.mark.parametrize(
    ("ops", "refused_with"),
    [
        ([("queue", 5, "inuse", 0)], "virtio-serial/ports[1]/elem/head"),
        ([("port", 1, "iov_offset", 6)], "virtio-serial/ports[1]/iov_offset"),
        ([("ports", "forge", 0, 0, 3, "virtserialport")], "virtio-serial/ports[4]/id"),
        ([("ram", 5, "avail_idx", 0x1234)], "virtio-serial/queues[5]"),
        ([("device", "max_ports", 9)], "virtio-serial/max_ports"),
    ],
)
def test_known_bad_edits_are_refused_and_change_nothing(ops: list[tuple[Any, ...]], refused_with: str) -> None:
    """The edit helpers reach restore's checks (so the fuzz is not testing
    records that never get that far)."""
    m = booted()
    rec = vmstate.loads(BASE_STREAM, REGISTRY).section("virtio-serial", 0)
    ram = bytearray(m.mem.ro)
    apply_ops(rec, ram, ops)
    loaded = vmstate.loads(vmstate.dumps([rec], producer="fuzz", created=0, ram={"ram": bytes(ram)}), REGISTRY)
    before = observe(m)
    with pytest.raises(vmstate.ValidationError) as err:
        restore(m.devices[0], loaded.section("virtio-serial", 0), ram=loaded.ram["ram"])
    assert str(err.value).startswith(refused_with)
    assert observe(m) == before
