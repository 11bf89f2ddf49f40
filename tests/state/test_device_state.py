"""The device's vmstate record: capture, stream, validated restore.

The destination is built from the same command line (stable ids).  A record
that does not fit it is refused with vmstate.ValidationError naming the
field, and the destination is left exactly as it was.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import vmstate

from emulator.core.chardev import MemoryChardev
from emulator.core.control import BAD_ID, Event
from emulator.machine.machine import Machine
from emulator.state.records import VirtIOSerialRecord, capture, registry, restore
from emulator.core.trace import Trace

from tests.core.rawdriver import RawDriver, ready_device
from tests.machine.serial_machine import serial_machine

CMDLINE = [
    {"driver": "virtio-serial", "id": "vser0", "max_ports": "8"},
    {"driver": "virtconsole", "chardev": "con", "id": "con0"},
    {"driver": "virtserialport", "chardev": "c1", "name": "org.test.1", "id": "p1", "nr": "1"},
    {"driver": "virtserialport", "chardev": "c2", "name": "org.test.2", "id": "p2", "nr": "2"},
]


def build(*, c1_window: int | None = None, c2_connected: bool = True, cmdline: list[dict[str, str]] = CMDLINE) -> Machine:
    m = Machine(ram_size=16 << 20, trace=Trace(["virtio_serial_*"]))
    m.chardev_add(MemoryChardev("con"))
    m.chardev_add(MemoryChardev("c1", window=c1_window))
    m.chardev_add(MemoryChardev("c2", connected=c2_connected))
    for props in cmdline:
        m.device_add(dict(props))
    return m


def source() -> tuple[Machine, RawDriver]:
    """A running source: p1 open by the guest and throttled mid-buffer."""
    m = build(c1_window=3)
    dev = m.devices[0]
    drv = ready_device(dev)
    drv.control(Event.DEVICE_READY, 1, BAD_ID)
    drv.received()
    for q in (4, 6):  # rx rings of ports 1 and 2
        drv.post_rx(q, 4)
    drv.control(Event.PORT_OPEN, 1, 1)
    drv.write(1, b"abcdef")
    drv.write(1, b"ghi")
    assert dev.ports[1].throttled and dev.ports[1].iov_offset == 3
    assert m.host_receive("c1") == b"abc"
    m.trace.take()
    return m, drv


def stream(m: Machine) -> bytes:
    return vmstate.dumps([capture(m.devices[0])], producer="test", created=0, ram={"ram": m.mem.ro})


def load_into(m: Machine, data: bytes) -> None:
    loaded = vmstate.loads(data, registry())
    restore(m.devices[0], loaded.section("virtio-serial", 0), ram=loaded.ram["ram"])


def test_a_port_that_finished_a_write_saves_and_restores() -> None:
    """After an ordinary (unthrottled) write the device's flush position
    still points past the finished element; QEMU saves it only with a held
    element, and so does capture (was: every restore of such a device was
    refused with "iov position without a held element")."""
    m = build()
    drv = ready_device(m.devices[0])
    drv.control(Event.DEVICE_READY, 1, BAD_ID)
    drv.received()
    drv.control(Event.PORT_OPEN, 1, 1)
    drv.write(1, b"hello")
    assert m.host_receive("c1") == b"hello"
    port = m.devices[0].ports[1]
    assert port.elem is None and port.iov_idx == 1  # where QEMU leaves it too
    rec = capture(m.devices[0])
    assert (rec.ports[1].iov_idx, rec.ports[1].iov_offset) == (0, 0)
    dst = build()
    load_into(dst, stream(m))
    assert dst.devices[0].ports[1].guest_connected


def test_schema_lists_the_device_descriptions() -> None:
    assert set(registry().descriptions()) == {
        "virtio-serial", "virtio-serial-port", "virtio-serial-element", "virtio-serial-sg", "virtqueue",
    }


def test_stream_round_trip_is_byte_identical() -> None:
    m, _ = source()
    data = stream(m)
    loaded = vmstate.loads(data, registry())
    assert loaded.section("virtio-serial", 0) == capture(m.devices[0])
    assert vmstate.dumps([loaded.section("virtio-serial", 0)], producer="test", created=0, ram={"ram": m.mem.ro}) == data


def test_restore_resumes_held_data_and_reports_state_like_qemu() -> None:
    src, drv = source()
    dst = build(c2_connected=False)  # the destination's own host side differs for p2
    dst.trace.take()  # the cold-plug lines
    load_into(dst, stream(src))
    dev = dst.devices[0]
    # The held element drained into the new host: once, in order, from offset 3.
    assert dst.host_receive("c1") == b"defghi"
    drv.dev, drv.mem = dev, dst.mem  # the guest's rings now live in dst's RAM
    assert drv.used_count(5) == 2
    # p2's host side is closed here: the guest is told with PORT_OPEN 0.
    assert [(c.id, Event(c.event).name, c.value) for c in drv.received()] == [(2, "PORT_OPEN", 0)]
    # As QEMU: the unthrottle while loading, then the post-load PORT_OPEN.
    assert dst.trace.take() == [
        "virtio_serial_throttle_port port 1, throttle 0",
        "virtio_serial_send_control_event port 2, event 6, value 0",
    ]
    dst.pump()
    assert [(e.name, e.data) for e in dst.events] == [
        ("VSERPORT_CHANGE", {"id": "con0", "open": False}),
        ("VSERPORT_CHANGE", {"id": "p1", "open": True}),
        ("VSERPORT_CHANGE", {"id": "p2", "open": False}),
    ]
    assert dev.ports[1].guest_connected and not dev.ports[1].throttled
    # Host -> guest keeps working on the restored rings.
    dst.host_send("c1", b"back")
    assert drv.read_rx(1) == b"back"


def _snapshot(m: Machine) -> Any:
    dev = m.devices[0]
    return (capture(dev), bytes(m.mem.ro), [(p.id, p.elem, p.throttled) for p in dev.ports.values()], m.trace.take())


def _tamper(rec: VirtIOSerialRecord, path: str, value: Any) -> VirtIOSerialRecord:
    rec = attrs.evolve(rec, ports=[attrs.evolve(p) for p in rec.ports], queues=[attrs.evolve(q) for q in rec.queues])
    parts = path.split("/")
    obj: Any = rec
    for part in parts[:-1]:
        name, _, idx = part.partition("[")
        obj = getattr(obj, name)
        if idx:
            obj = obj[int(idx[:-1])]
    setattr(obj, parts[-1], value)
    return rec


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("max_ports", 9, "virtio-serial/max_ports: stream has 9, this device 8"),
        ("ports_map", 0b1111, "virtio-serial/ports_map: ports in use differ: stream [0, 1, 2, 3], this device [0, 1, 2]"),
        ("guest_features", 1 << 40, "virtio-serial/guest_features: features 0x10000000000 are not offered"),
        ("ports[1]/id", 5, "virtio-serial/ports[1]/id: no port 5 on this device"),
        ("ports[1]/driver", "virtconsole", "virtio-serial/ports[1]/driver: stream has virtconsole, port 1 here is virtserialport"),
        ("queues[5]/used_addr", (16 << 20) - 8, "virtio-serial/queues[5]"),
        ("queues[5]/size", 3, "virtio-serial/queues[5]"),
        ("queues[5]/last_avail_idx", 300, "virtio-serial/queues[5]"),
        ("ports[1]/iov_offset", 6, "virtio-serial/ports[1]/iov_offset: position 0/6 is outside the element"),
        ("ports[1]/elem/head", 200, "virtio-serial/ports[1]/elem/head: head 200 is not in flight"),
    ],
)
def test_a_record_that_does_not_fit_is_refused_and_changes_nothing(path: str, value: Any, message: str) -> None:
    src, _ = source()
    dst = build()
    data = stream(src)
    loaded = vmstate.loads(data, registry())
    dst.trace.take()  # the cold-plug lines
    before = _snapshot(dst)  # guest RAM included: a refused restore leaves it alone
    bad = _tamper(loaded.section("virtio-serial", 0), path, value)
    with pytest.raises(vmstate.ValidationError) as err:
        restore(dst.devices[0], bad, ram=loaded.ram["ram"])
    assert str(err.value).startswith(message)
    assert _snapshot(dst) == before
    assert dst.events == []


def test_restore_without_ram_checks_the_rings_against_the_machines_own_ram() -> None:
    src, _ = source()
    dst = build()
    loaded = vmstate.loads(stream(src), registry())
    with pytest.raises(vmstate.ValidationError, match=r"queues\[2\]"):
        restore(dst.devices[0], loaded.section("virtio-serial", 0))  # dst's RAM has no rings yet
    loaded.ram["ram"].apply_to(dst.mem.ring_buf)
    restore(dst.devices[0], loaded.section("virtio-serial", 0))
    assert dst.host_receive("c1") == b"defghi"


def test_ram_of_another_size_is_refused() -> None:
    src, _ = source()
    dst = Machine(ram_size=8 << 20)
    dst.chardev_add(MemoryChardev("con"))
    dst.chardev_add(MemoryChardev("c1"))
    dst.chardev_add(MemoryChardev("c2"))
    for props in CMDLINE:
        dst.device_add(dict(props))
    with pytest.raises(vmstate.ValidationError, match="^ram: "):
        load_into(dst, stream(src))


def test_destination_with_a_different_command_line_is_refused() -> None:
    src, _ = source()
    dst = build(cmdline=CMDLINE[:3] + [{"driver": "virtserialport", "chardev": "c2", "id": "p2", "nr": "3"}])
    with pytest.raises(vmstate.ValidationError, match=r"ports_map: ports in use differ: stream \[0, 1, 2\], this device \[0, 1, 3\]"):
        load_into(dst, stream(src))


# ------------------ loads QEMU accepts: extra console, closed host, trace order

# Was: restore refuses a destination with an extra console at id 0 (port count must match, then
# _post_load would KeyError); QEMU loads it: the map is equal and only the source's ports are
# fetched (FACTS.md §4 'Loads that succeed')
def test_restore_into_destination_with_an_extra_console_succeeds() -> None:
    src = serial_machine({"driver": "virtserialport", "nr": "2"})
    dst = serial_machine({"driver": "virtconsole"}, {"driver": "virtserialport", "nr": "2"})
    restore(dst.devices[0], capture(src.devices[0]))
    assert list(dst.devices[0].ports) == [0, 2]


def _dst_with_c1_closed() -> Machine:
    m = Machine(ram_size=16 << 20, trace=Trace(["virtio_serial_*"]))
    m.chardev_add(MemoryChardev("con"))
    m.chardev_add(MemoryChardev("c1", connected=False))
    m.chardev_add(MemoryChardev("c2"))
    for props in CMDLINE:
        m.device_add(dict(props))
    return m


# Was: restore copies the saved 'throttled' flag and only unthrottles when the destination host is
# connected; QEMU does not migrate throttled and calls throttle_port(false) for every port with a
# held element (FACTS.md §4). A port loaded while its host is closed stays throttled forever:
# later guest writes never reach the host
def test_restore_unthrottles_held_port_even_when_destination_host_is_closed() -> None:
    src, drv = source()
    dst = _dst_with_c1_closed()
    load_into(dst, stream(src))
    dev = dst.devices[0]
    assert not dev.ports[1].throttled
    dst.host_connect("c1")
    drv.dev, drv.mem = dev, dst.mem
    drv.write(1, b"jkl")
    assert dst.host_receive("c1").endswith(b"jkl")


# Was: QEMU unthrottles held ports while loading (fetch_active_ports_list) and sends the PORT_OPEN
# for a changed host side later from the post-load timer; the trace order is reversed here
def test_restore_traces_unthrottle_before_post_load_port_open() -> None:
    src, _ = source()
    dst = build(c2_connected=False)
    dst.trace.take()
    load_into(dst, stream(src))
    assert dst.trace.take() == [
        "virtio_serial_throttle_port port 1, throttle 0",
        "virtio_serial_send_control_event port 2, event 6, value 0",
    ]
