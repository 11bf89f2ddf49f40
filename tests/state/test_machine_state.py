"""The whole machine's snapshot stream: save, the checked all-or-nothing
load into a machine started with the same -device lines in another order,
and a loaded machine that carries on exactly as the original."""

from __future__ import annotations

import errno
import io
from typing import Any

import attrs
import pytest
import vmstate

from emulator.core.chardev import MemoryChardev
from emulator.core.control import CONTROL_HEADER, Event
from emulator.errors import GuestOSError
from emulator.io.char_ringbuf import RingbufChardev
from emulator.machine.machine import Machine
from emulator.machine.runstate import RunState
from emulator.state import machine as mstate

RAM = 8 << 20
VSER0 = {"driver": "virtio-serial", "id": "vser0", "max_ports": "4"}
ANON = {"driver": "virtio-serial", "max_ports": "8"}  # bus virtio-serial-bus.0
CONSOLE = {"driver": "virtconsole", "chardev": "con", "id": "con0", "name": "org.guest.console", "bus": "vser0.0"}
SLOW = {"driver": "virtserialport", "chardev": "c1", "name": "org.guest.slow", "id": "p1", "nr": "1", "bus": "vser0.0"}
DATA = {"driver": "virtserialport", "chardev": "c2", "name": "org.guest.data", "id": "p2", "nr": "3",
        "bus": "virtio-serial-bus.0"}
RING = {"driver": "virtserialport", "chardev": "rb", "name": "org.guest.ring", "nr": "2",
        "bus": "virtio-serial-bus.0"}  # no id: an anonymous QOM path
LATE = {"driver": "virtserialport", "chardev": "c3", "name": "org.guest.late", "id": "p3", "nr": "5",
        "bus": "virtio-serial-bus.0"}  # hot-plugged on the source after boot
SOURCE_LINES = [VSER0, ANON, CONSOLE, SLOW, DATA, RING]
TARGET_LINES = [ANON, LATE, DATA, VSER0, RING, SLOW, CONSOLE]  # the same machine, another order
CHARDEVS = ("con", "c1", "c2", "c3")
V = "/dev/virtio-ports/"


def _machine(lines: list[dict[str, str]], *, slow_window: int | None, chardevs: tuple[str, ...] = CHARDEVS,
             ring_size: int = 1024) -> Machine:
    m = Machine(ram_size=RAM)
    for c in chardevs:
        m.chardev_add(MemoryChardev(c, window=slow_window if c == "c1" else None))
    m.chardev_add(RingbufChardev("rb", ring_size))
    for line in lines:
        m.device_add(dict(line))
    return m


def _busy() -> Machine:
    """Booted, two devices; a console and three named ports open; c1's host
    stalls after 5 bytes (a held, throttled element); c2's data part read;
    the ring holds guest output; a port hot-plugged after boot."""
    m = _machine(SOURCE_LINES, slow_window=5)
    m.boot()
    m.device_add(dict(LATE))
    con = m.guest.open("/dev/hvc0")
    con.write(b"console up\n")
    slow = m.guest.open(V + "org.guest.slow")
    slow.write(b"held across the snapshot")
    data = m.guest.open(V + "org.guest.data")
    data.write(b"hello host, " * 20)
    ring = m.guest.open(V + "org.guest.ring")
    ring.write(b"into the ring")
    late = m.guest.open(V + "org.guest.late")
    late.write(b"late but here")
    m.host_send("c2", b"a" * 4096 + b"b" * 1000)
    assert data.read(100) == b"a" * 100
    m.host_receive("con")
    m.host_receive("c2")  # c3's bytes stay with its host program, untaken
    return m


def _target(lines: list[dict[str, str]] = TARGET_LINES, **kw: Any) -> Machine:
    kw.setdefault("slow_window", 0)  # c1's host has read its 5 bytes
    return _machine(lines, **kw)


def _observable(m: Machine) -> object:
    """All a user can see of a machine, for 'nothing changed'."""
    chardevs = [
        (c.id, c.be_open, c.fe_open, getattr(c, "window", None), bytes(getattr(c, "received", b"")),
         bytes(getattr(c, "unread", b"")), getattr(c, "pending", None))
        for c in m.chardevs.values()
    ]
    return (
        mstate.save_machine(m, created=0), bytes(m.mem.ro), m.describe(), m.events[:], m.error_log[:],
        chardevs, m.runstate.state, [attrs.asdict(p) for p in m.guest.ports()], m.qom.anon_count,
        dict(m.qom.anon), [d.index for d in m.devices], [d.pci_devfn for d in m.devices], m.trace.lines[:]
        if hasattr(m.trace, "lines") else None,
    )


def _drive(m: Machine) -> list[object]:
    """The same further operations on either machine; what each side saw."""
    seen: list[object] = []
    con, slow, data, ring, late = m.guest.open_files
    events_before = len(m.events[:])

    def attempt(fn: Any, *args: Any) -> object:
        try:
            return fn(*args)
        except GuestOSError as err:
            return f"errno {err.errno}"

    for _ in range(4):
        seen.append(attempt(data.read, 3000))
    seen.append(m.host_receive("c1"))
    m.host_grant("c1", None)  # the held write flows now
    seen.append(m.host_receive("c1"))
    seen.append(attempt(slow.write, b"after the grant"))
    seen.append(attempt(data.write, b"x" * 40000))
    seen.append(attempt(con.write, b"console again\n"))
    seen.append(attempt(ring.write, b"more ring"))
    seen.append(m.chardevs["rb"].read(4096))  # type: ignore[attr-defined]
    m.host_send("c1", b"to the slow port")
    seen.append(attempt(slow.read))
    m.host_send("c3", b"to the late port")
    seen.append(attempt(late.read))
    seen.append(attempt(late.write, b"late again"))
    data.close()
    m.host_send("c2", b"nobody reads this")
    again = m.guest.open(V + "org.guest.data")
    m.host_send("c2", b"fresh")
    seen.append(attempt(again.read))
    m.host_disconnect("c2")
    seen.append(attempt(again.read))
    seen.append(attempt(again.write, b"blocked"))
    m.host_connect("c2")
    seen.append(attempt(again.write, b"unblocked"))
    m.device_del("p3")
    seen.append(attempt(late.read))
    m.device_add({"driver": "virtserialport", "name": "org.guest.new", "bus": "vser0.0"})
    m.device_add({"driver": "virtio-serial"})  # virtio-serial-bus.1, device[N+1]
    for c in CHARDEVS:
        seen.append((c, m.host_receive(c)))
    seen.append([attrs.asdict(p) for p in m.guest.ports()])
    seen.append(m.guest.listdir("/dev/virtio-ports"))
    seen.append([(p.id, p.bytes_sent, p.bytes_received, p.bytes_discarded) for p in m.guest.all_ports()])
    seen.append(m.describe())  # x-query-virtio-serial, in plug order
    seen.append(sorted(m.qom.anon))
    seen.append(m.events[events_before:])
    seen.append(m.error_log[:])
    return seen


# ------------------------------------------------------------- round trips


def test_save_load_save_gives_the_same_bytes() -> None:
    a = _busy()
    data = mstate.save_machine(a, created=0)
    b = _target()
    mstate.load_machine(b, data)
    assert mstate.save_machine(b, created=0) == data
    assert mstate.save_machine(a, created=0) == data  # saving changed nothing


def test_load_accepts_a_file_object() -> None:
    a = _busy()
    data = mstate.save_machine(a, created=0)
    b = _target()
    rec = mstate.load_machine(b, io.BytesIO(data))
    assert rec.runstate == "running" and len(rec.devices) == 2
    assert mstate.save_machine(b, created=0) == data


def test_loaded_machine_behaves_exactly_as_the_original() -> None:
    a = _busy()
    b = _target()
    mstate.load_machine(b, mstate.save_machine(a, created=0))
    assert bytes(b.mem.ro) == bytes(a.mem.ro)
    assert b.guest.ports() == a.guest.ports()
    assert b.describe() == a.describe()
    seen_a, seen_b = _drive(a), _drive(b)
    assert seen_a == seen_b
    assert seen_a[5] == b"across the snapshot"  # the held element reached the host
    assert seen_a[10] == b"into the ringmore ring"  # the ring's bytes came along
    assert mstate.save_machine(b, created=0) == mstate.save_machine(a, created=0)


def test_the_stream_restores_plug_order_indices_slots_and_anonymous_paths() -> None:
    a = _busy()
    b = _target()
    assert [d.qdev_id for d in b.devices] == [None, "vser0"]
    mstate.load_machine(b, mstate.save_machine(a, created=0))
    assert [(d.qdev_id, d.index, d.pci_devfn, d.bus_name) for d in b.devices] == [
        (d.qdev_id, d.index, d.pci_devfn, d.bus_name) for d in a.devices
    ]
    assert [list(d.ports) for d in b.devices] == [list(d.ports) for d in a.devices]
    assert {p: b.qom_path(o) for p, o in b.qom.anon.items()} == {p: a.qom_path(o) for p, o in a.qom.anon.items()}
    assert b.qom.anon_count == a.qom.anon_count and b.bus_auto_ids == a.bus_auto_ids


def test_load_post_load_rules_vserport_change_and_port_open() -> None:
    a = _busy()
    data = mstate.save_machine(a, created=0)
    b = _target()
    b.chardevs["c2"].disconnect()  # type: ignore[attr-defined]  # this host's own connection differs
    n = len(b.events[:])
    mstate.load_machine(b, data)
    changes = [e.data for e in b.events[n:] if e.name == "VSERPORT_CHANGE"]
    assert sorted(changes, key=lambda d: str(d["id"])) == [
        {"id": "con0", "open": True}, {"id": "p1", "open": True}, {"id": "p2", "open": True},
        {"id": "p3", "open": True},
    ]
    port = b.devices[1].ports[3]
    assert port.host_connected is False
    # the guest heard PORT_OPEN 0: a write would block
    with pytest.raises(GuestOSError) as info:
        b.guest.open_files[2].write(b"nobody there")
    assert info.value.errno == errno.EAGAIN

def test_stopped_machine_with_pending_interrupts() -> None:
    a = _busy()
    a.stop()
    a.host_disconnect("c2")  # PORT_OPEN 0 queued; its interrupt waits for cont
    a.host_send("c3", b"while stopped")  # waits in the host program
    assert a.irqs
    data = mstate.save_machine(a, created=0)
    b = _target()
    b.stop()
    b.chardevs["c2"].disconnect()  # type: ignore[attr-defined]
    rec = mstate.load_machine(b, data)
    assert rec.runstate == "paused" and b.runstate.state is RunState.PAUSED
    assert b.irqs.pending() and [(d.index, q) for d, q in b.irqs.pending()] == [
        (d.index, q) for d, q in a.irqs.pending()
    ]
    assert mstate.save_machine(b, created=0) == data
    for m in (a, b):
        m.cont()
    assert mstate.save_machine(b, created=0) == mstate.save_machine(a, created=0)
    assert a.guest.open_files[4].read() == b.guest.open_files[4].read() == b"while stopped"


def test_a_port_unplugged_while_paused_loads_into_the_source_and_a_target_without_it() -> None:
    """device_del while stopped: the device lets the port go at once, its
    PORT_REMOVE waits in the control ring; the guest still has the port.
    The snapshot loads on the source and on a machine started without the
    port, and on cont each guest sees the port go the same way."""
    lines = [VSER0, ANON, CONSOLE, SLOW, DATA]
    a = _machine(lines, slow_window=None)
    a.boot()
    slow = a.guest.open(V + "org.guest.slow")
    assert slow.write(b"before the unplug") == 17
    a.host_receive("c1")
    a.host_send("c1", b"unread when unplugged")
    a.stop()
    a.device_del("p1")
    assert 1 not in a.devices[0].ports
    data = mstate.save_machine(a, created=0)
    b = _machine([x for x in lines if x is not SLOW], slow_window=None)
    b.stop()
    mstate.load_machine(b, data)
    mstate.load_machine(a, data)
    for m in (a, b):
        assert mstate.save_machine(m, created=0) == data
        assert V + "org.guest.slow" in m.guest.links  # the guest has not handled PORT_REMOVE
    seen = []
    for m in (a, b):
        n = len(m.events[:])
        m.cont()
        f = m.guest.open_files[0]
        assert f.port.removed and f.port.id == 1
        try:
            f.write(b"after the unplug")
        except GuestOSError as err:
            wrote: object = err.errno
        seen.append((
            f.read(), wrote, m.guest.listdir("/dev/virtio-ports"), [attrs.asdict(p) for p in m.guest.ports()],
            m.events[n:], m.error_log[:], m.host_receive("c1"), mstate.save_machine(m, created=0),
        ))
    assert seen[0] == seen[1]
    assert seen[0][:3] == (b"", errno.ENODEV, ["org.guest.console", "org.guest.data"])
    with pytest.raises(GuestOSError) as info:
        b.guest.open(V + "org.guest.slow")
    assert info.value.errno == errno.ENOENT


def test_a_guest_port_the_device_lacks_without_a_port_remove_in_flight_is_refused() -> None:
    lines = [VSER0, CONSOLE, SLOW]
    a = _machine(lines, slow_window=None)
    a.boot()
    a.stop()
    a.device_del("p1")
    loaded = vmstate.loads(mstate.save_machine(a, created=0), mstate.registry())
    ctl = next(q for q in loaded.section("guest").devices[0].queues if q.index == 2)
    ram = bytearray(a.mem.ro)
    head = int.from_bytes(ram[ctl.used + 4 + 8 * (ctl.last_used_idx % ctl.num):][:4], "little")
    buf = int.from_bytes(ram[ctl.desc + 16 * head:][:8], "little")
    assert ram[buf:buf + 8] == CONTROL_HEADER.pack(1, Event.PORT_REMOVE, 1)
    ram[buf + 4:buf + 6] = int(Event.RESIZE).to_bytes(2, "little")  # no longer a PORT_REMOVE
    items = [(s.state, s.instance_id) for s in loaded.sections]
    bad = vmstate.dumps(items, producer="test", created=0, ram={"ram": bytes(ram)})
    for m in (_machine([VSER0, CONSOLE], slow_window=None), a):
        m.stop()
        _refused(m, bad, "guest/devices[0]/ports[", "/id: the device has no port 1", "no PORT_REMOVE for it waits")


# -------------------------------------------------- refusals change nothing


def _refused(b: Machine, data: bytes, *words: str) -> None:
    before = _observable(b)
    with pytest.raises(vmstate.VMStateError) as info:
        mstate.load_machine(b, data)
    assert _observable(b) == before
    for w in words:
        assert w in str(info.value), str(info.value)


def _busy_target(lines: list[dict[str, str]] = TARGET_LINES, **kw: Any) -> Machine:
    """A target with a life of its own, so that a change would show."""
    b = _target(lines, **kw)
    b.boot()
    f = b.guest.open(V + [n for n in b.guest.listdir("/dev/virtio-ports") if "console" not in n][0])
    f.write(b"target's own")
    return b


def _without(line: dict[str, str]) -> list[dict[str, str]]:
    return [x for x in TARGET_LINES if x is not line]


def _replaced(line: dict[str, str], **changes: str) -> list[dict[str, str]]:
    return [{**x, **changes} if x is line else x for x in TARGET_LINES]


MISMATCHES = {
    "port missing": (_without(RING), ("id-less virtio-serial-pci", "port 2", "not on this machine")),
    "port extra": (TARGET_LINES + [{"driver": "virtserialport", "nr": "2", "bus": "vser0.0"}],
                   ("device 'vser0'", "port 2", "not in the stream")),
    "max_ports": (_replaced(VSER0, max_ports="8"), ("device 'vser0'", "max_ports 4", "8 here")),
    "driver at an id": (_replaced(SLOW, driver="virtconsole"), ("device 'vser0'", "port 1", "driver")),
    "name at an id": (_replaced(DATA, name="org.guest.other"), ("port 3", "'org.guest.data'", "'org.guest.other'")),
    "chardev at an id": (_replaced(LATE, chardev="spare"), ("port 5", "chardev 'c3'", "'spare'")),
    "device missing": ([x for x in TARGET_LINES if x not in (VSER0, CONSOLE, SLOW)],
                       ("device 'vser0'", "not on this machine")),
    "device extra": (TARGET_LINES + [{"driver": "virtio-serial", "id": "vser9"}],
                     ("device 'vser9'", "not in the stream")),
    "transport": (_replaced(VSER0, event_idx="off"), ("device 'vser0'", "event_idx")),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_mismatched_machine_is_refused_and_unchanged(case: str) -> None:
    lines, words = MISMATCHES[case]
    data = mstate.save_machine(_busy(), created=0)
    b = _busy_target(lines, chardevs=CHARDEVS + ("spare",))
    _refused(b, data, *words)


def test_a_missing_chardev_is_refused_and_nothing_changes() -> None:
    a = _busy()
    a.chardev_add(MemoryChardev("spare"))
    data = mstate.save_machine(a, created=0)
    _refused(_busy_target(), data, "chardev 'spare' (memory) is missing")


def test_a_ring_of_another_size_is_refused() -> None:
    data = mstate.save_machine(_busy(), created=0)
    _refused(_busy_target(ring_size=2048), data, "chardev 'rb'", "size 1024")


def test_a_guest_record_that_does_not_fit_the_staged_devices_is_refused() -> None:
    a = _busy()
    loaded = vmstate.loads(mstate.save_machine(a, created=0), mstate.registry())
    items = []
    for s in loaded.sections:
        st = s.state
        if s.name == "guest":
            dev = st.devices[0]
            st = attrs.evolve(st, devices=[attrs.evolve(dev, features=dev.features ^ 1), *st.devices[1:]])
        items.append((st, s.instance_id))
    bad = vmstate.dumps(items, producer="test", created=0, ram={"ram": a.mem.ro})
    _refused(_busy_target(), bad, "guest/devices[0]/features")


def test_bad_ring_state_in_the_second_device_leaves_the_first_untouched() -> None:
    a = _busy()
    loaded = vmstate.loads(mstate.save_machine(a, created=0), mstate.registry())
    items = []
    for s in loaded.sections:
        st = s.state
        if s.name == "virtio-serial" and s.instance_id == 1:
            q = st.queues[4]
            st = attrs.evolve(st, queues=[*st.queues[:4], attrs.evolve(q, last_avail_idx=q.last_avail_idx + 999),
                                          *st.queues[5:]])
        items.append((st, s.instance_id))
    bad = vmstate.dumps(items, producer="test", created=0, ram={"ram": a.mem.ro})
    _refused(_busy_target(), bad, "id-less virtio-serial-pci", "queues[4]")


def test_a_stream_of_a_newer_version_names_both_versions() -> None:
    @vmstate.describe(name="machine", version=7, minimum_version=7)
    @attrs.define
    class Future:
        x: int = vmstate.field(vmstate.U32)

    data = vmstate.dumps([Future(1)], producer="test", created=0)
    _refused(_busy_target(), data, "7", "machine", "v1")


def test_a_truncated_stream_is_refused_and_nothing_changes() -> None:
    data = mstate.save_machine(_busy(), created=0)
    _refused(_busy_target(), data[:-40], "")
