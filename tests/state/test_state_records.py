"""Each state record is written once: its fields are the list that the live
object, capture and restore follow, and a field that one of them forgot
fails here, named.

A queue's list is ``VirtQueueState``; the stream's ``VirtQueueRecord`` and
the ``Element`` slots are checked against it and against ``ElementRecord``.
Ports and the device have no plain state record of their own: for them the
vmstate record is the list, and ``PORT_ON_RESTORE`` / ``DEVICE_ON_RESTORE``
say what restore does with each field; these tests check the tables against
the records and check each rule by restoring.
"""

from __future__ import annotations

from typing import Any, Iterable

import attrs
import pytest
import vmstate

from emulator.core.control import BAD_ID, Event
from emulator.core.memory import GuestMemory
from emulator.core.virtqueue import Element, VirtQueue, VirtQueueState
from emulator.errors import StateError
from emulator.machine.machine import Machine
from emulator.state.records import (
    COMPARE,
    COPY,
    DEVICE_ON_RESTORE,
    ELEMENT_NOT_SAVED,
    KEEP,
    MATCH,
    PORT_ON_RESTORE,
    QUEUE_NOT_SAVED,
    REBUILD,
    ElementRecord,
    PortRecord,
    VirtIOSerialRecord,
    VirtQueueRecord,
    capture,
    registry,
    restore,
)

from tests.core.rawdriver import ready_device
from tests.state.test_device_state import build

STATE_FIELDS = [a.name for a in attrs.fields(VirtQueueState)]


def _names(cls: type) -> list[str]:
    return [a.name for a in attrs.fields(cls)]


def _missing(want: Iterable[str], have: Iterable[str]) -> list[str]:
    return sorted(set(want) - set(have))


# ============================================================ the virtqueue


def test_every_virtqueue_state_field_is_a_live_queue_slot() -> None:
    slots = list(VirtQueue.__slots__)
    assert _missing(STATE_FIELDS, slots) == [], "VirtQueueState fields the live queue has no slot for"
    assert _missing(slots, STATE_FIELDS) == ["shadow_avail_idx"], "live queue slots VirtQueueState lacks"
    # The class annotations exist for the type checker; they name the slots.
    assert _missing(slots, VirtQueue.__annotations__) == [], "live queue slots without an annotation"
    assert _missing(VirtQueue.__annotations__, slots) == [], "annotations on the live queue that are not slots"


def test_every_virtqueue_state_field_is_saved_or_said_why_not() -> None:
    saved = _names(VirtQueueRecord)
    assert _missing(STATE_FIELDS, saved + list(QUEUE_NOT_SAVED)) == [], (
        "VirtQueueState fields neither in VirtQueueRecord nor in records.QUEUE_NOT_SAVED"
    )
    assert _missing(saved, STATE_FIELDS) == [], "VirtQueueRecord fields that are not VirtQueueState fields"
    assert sorted(set(saved) & set(QUEUE_NOT_SAVED)) == [], "fields both saved and listed as not saved"


@pytest.mark.parametrize("name", STATE_FIELDS)
def test_from_state_checks_every_virtqueue_state_field(name: str) -> None:
    # from_state copies the whole record once it is checked: a field without
    # a check would let any value into a live queue.
    good = VirtQueue(3, 128).state()
    bad: dict[str, Any] = {name: "not a value"}
    with pytest.raises(StateError, match=rf"\b{name}\b"):
        VirtQueue.from_state(attrs.evolve(good, **bad), GuestMemory(1 << 20))


def test_reset_puts_every_virtqueue_state_field_back() -> None:
    m, _ = _busy_source()
    q = m.devices[0].queues[5]
    busy = q.state()
    q.reset()
    fresh = VirtQueue(q.index, q.max_size).state()
    assert [n for n in STATE_FIELDS if getattr(q.state(), n) != getattr(fresh, n)] == []
    assert q.shadow_avail_idx == 0
    assert busy != fresh


def test_every_virtqueue_state_field_is_saved_and_restored() -> None:
    src, _ = _busy_source()
    before = [q.state() for q in src.devices[0].queues]
    # Each field is away from its default (or 0) somewhere, or the round trip proves nothing for it.
    plain = {a.name: 0 if a.default is attrs.NOTHING else a.default for a in attrs.fields(VirtQueueState)}
    idle = [n for n in STATE_FIELDS if all(getattr(s, n) == plain[n] for s in before)]
    assert idle == [], "fields the busy source leaves at their default in every queue"
    dst = _round_trip(src)
    after = [q.state() for q in dst.devices[0].queues]
    lost = sorted({n for s, d in zip(before, after) for n in STATE_FIELDS if getattr(s, n) != getattr(d, n)})
    assert lost == [], "VirtQueueState fields that did not survive capture, stream and restore"


# ============================================================ the held element


def test_every_element_slot_is_saved_or_said_why_not() -> None:
    slots = list(Element.__slots__)
    saved = _names(ElementRecord)
    assert _missing(slots, saved + list(ELEMENT_NOT_SAVED)) == [], (
        "Element slots neither in ElementRecord nor in records.ELEMENT_NOT_SAVED"
    )
    assert _missing(saved, slots) == [], "ElementRecord fields that are not Element slots"


def test_every_element_slot_is_saved_and_restored() -> None:
    src, _ = _busy_source()
    held = src.devices[0].ports[1].elem
    assert held is not None and len(held.out_sg) == 2
    got = _round_trip(src).devices[0].ports[1].elem
    assert got is not None
    assert [s for s in Element.__slots__ if getattr(held, s) != getattr(got, s)] == []


# ============================================================ ports and the device

ROLES = {MATCH, COPY, COMPARE, KEEP, REBUILD}


@pytest.mark.parametrize(("record", "table"), [(PortRecord, PORT_ON_RESTORE), (VirtIOSerialRecord, DEVICE_ON_RESTORE)])
def test_every_record_field_has_a_restore_rule(record: type, table: dict[str, str]) -> None:
    fields = _names(record)
    assert _missing(fields, table) == [], f"{record.__name__} fields with no rule in records.py"
    assert _missing(table, fields) == [], f"rules in records.py for fields {record.__name__} lacks"
    assert {n: r for n, r in table.items() if r not in ROLES} == {}


def test_capture_reads_every_port_and_device_field_from_the_live_object() -> None:
    m, _ = _busy_source()
    dev = m.devices[0]
    rec = capture(dev)
    # Nested records and the renamed or converted device fields aside, a
    # record field is the live attribute of the same name.
    special = {"elem", "bus", "ports_map", "ports", "queues"}
    for pr, port in zip(rec.ports, dev.ports.values()):
        wrong = [n for n in _names(PortRecord) if n not in special and getattr(pr, n) != getattr(port, n)]
        assert wrong == [], f"port {port.id}"
    assert [n for n in _names(VirtIOSerialRecord) if n not in special and getattr(rec, n) != getattr(dev, n)] == []
    assert rec.bus == dev.bus_name


def _tampered(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value ^ 8
    if isinstance(value, str):
        return value + "-other"
    raise AssertionError(f"no tampered value for {value!r}")


def _port_fields(role: str) -> list[str]:
    return [n for n, r in PORT_ON_RESTORE.items() if r == role]


def _device_fields(role: str) -> list[str]:
    return [n for n, r in DEVICE_ON_RESTORE.items() if r == role]


@pytest.mark.parametrize(
    "path", [f"ports[1]/{n}" for n in _port_fields(MATCH)] + _device_fields(MATCH)
)
def test_a_field_that_must_match_is_refused_when_it_differs(path: str) -> None:
    src, _ = _busy_source()
    rec, ram = _loaded(src)
    dst = _destination()
    bad = _set(rec, path, _tampered(_get(rec, path)))
    with pytest.raises(vmstate.ValidationError) as err:
        restore(dst.devices[0], bad, ram=ram)
    assert str(err.value).startswith(f"virtio-serial/{path}:")


def _showing(rec: VirtIOSerialRecord) -> VirtIOSerialRecord:
    """The record with the device fields the source leaves at their reset
    value set to ones that show whether restore wrote them."""
    return attrs.evolve(rec, broken=True, cols=80, rows=25)


def test_fields_restore_copies_arrive_as_saved() -> None:
    src, _ = _busy_source()
    rec, ram = _loaded(src)
    rec = _showing(rec)
    dst = _destination()
    dev = dst.devices[0]
    device_copied = _device_fields(COPY)
    port_copied = _port_fields(COPY)
    same = [n for n in device_copied if getattr(dev, n) == getattr(rec, n)]
    same += [
        n for n in port_copied if all(getattr(dev.ports[pr.id], n) == getattr(pr, n) for pr in rec.ports)
    ]
    assert same == [], "fields whose saved value the destination already has: the test would prove nothing"
    restore(dev, rec, ram=ram)
    assert [n for n in device_copied if getattr(dev, n) != getattr(rec, n)] == []
    for pr in rec.ports:
        assert [n for n in port_copied if getattr(dev.ports[pr.id], n) != getattr(pr, n)] == [], f"port {pr.id}"


def test_fields_the_destination_keeps_are_not_written() -> None:
    src, _ = _busy_source()
    rec, ram = _loaded(src)
    dst = _destination()
    dev = dst.devices[0]
    live_name = {"bus": "bus_name"}
    kept_device = [n for n, r in DEVICE_ON_RESTORE.items() if r in (KEEP, COMPARE)]
    kept_port = [n for n, r in PORT_ON_RESTORE.items() if r in (KEEP, COMPARE)]
    before = (
        {n: getattr(dev, live_name.get(n, n)) for n in kept_device},
        {p.id: {n: getattr(p, n) for n in kept_port} for p in dev.ports.values()},
    )
    for n in kept_device:
        rec = _set(rec, n, _tampered(getattr(rec, n)))
    for k, pr in enumerate(rec.ports):
        for n in kept_port:
            rec = _set(rec, f"ports[{k}]/{n}", _tampered(getattr(pr, n)) if getattr(pr, n) is not None else "other")
    restore(dev, rec, ram=ram)
    after = (
        {n: getattr(dev, live_name.get(n, n)) for n in kept_device},
        {p.id: {n: getattr(p, n) for n in kept_port} for p in dev.ports.values()},
    )
    assert after == before


def test_every_port_and_device_field_survives_a_round_trip() -> None:
    src, _ = _busy_source()
    rec, ram = _loaded(src)
    rec = _showing(rec)
    dst = _destination()
    restore(dst.devices[0], rec, ram=ram)
    assert _differences(rec, capture(dst.devices[0])) == []


# ============================================================ helpers


def _busy_source() -> tuple[Machine, Any]:
    """A source whose port 1 holds a two-buffer element, part written: every
    queue, port and element field is away from its reset value somewhere."""
    m = build(c1_window=4)
    dev = m.devices[0]
    drv = ready_device(dev)
    drv.control(Event.DEVICE_READY, 1, BAD_ID)
    drv.received()
    for q in (4, 6):  # rx rings of ports 1 and 2
        drv.post_rx(q, 4)
    drv.control(Event.PORT_OPEN, 1, 1)
    tx = drv.queue(5)
    a, b = drv.kmalloc.alloc(3), drv.kmalloc.alloc(3)
    m.mem.write(a, b"abc")
    m.mem.write(b, b"def")
    tx.add(m.mem, [(a, 3), (b, 3)], [], "chain")
    dev.kick(5)
    drv.write(1, b"ghi")
    p1 = dev.ports[1]
    assert p1.throttled and (p1.iov_idx, p1.iov_offset) == (1, 1)
    m.trace.take()
    return m, drv


def _loaded(m: Machine) -> tuple[VirtIOSerialRecord, Any]:
    data = vmstate.dumps([capture(m.devices[0])], producer="test", created=0, ram={"ram": m.mem.ro})
    loaded = vmstate.loads(data, registry())
    rec = loaded.section("virtio-serial", 0)
    assert isinstance(rec, VirtIOSerialRecord)
    return rec, loaded.ram["ram"]


def _destination() -> Machine:
    # c1's reader takes nothing, so the held element stays where the stream put it.
    return build(c1_window=0)


def _round_trip(src: Machine) -> Machine:
    rec, ram = _loaded(src)
    dst = _destination()
    restore(dst.devices[0], rec, ram=ram)
    return dst


def _get(rec: Any, path: str) -> Any:
    obj = rec
    for part in path.split("/"):
        name, _, idx = part.partition("[")
        obj = getattr(obj, name)
        if idx:
            obj = obj[int(idx[:-1])]
    return obj


def _set(rec: VirtIOSerialRecord, path: str, value: Any) -> VirtIOSerialRecord:
    rec = attrs.evolve(rec, ports=[attrs.evolve(p) for p in rec.ports], queues=[attrs.evolve(q) for q in rec.queues])
    head, _, last = path.rpartition("/")
    setattr(_get(rec, head) if head else rec, last, value)
    return rec


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths of the fields where two records differ."""
    if attrs.has(type(a)) and type(a) is type(b):
        return [
            d for f in attrs.fields(type(a))
            for d in _differences(getattr(a, f.name), getattr(b, f.name), f"{path}/{f.name}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for k, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{k}]")]
    return [] if a == b else [path]
