"""The control protocol, device side, driven by a bare driver (rawdriver.py).

Each test pins one rule of QEMU's hw/char/virtio-serial-bus.c as DESIGN.md
states it, by the control messages in the guest's ring and the trace lines.
"""

from __future__ import annotations

import pytest

from emulator.core.chardev import MemoryChardev, NullChardev
from emulator.core.control import BAD_ID, ControlMessage, Event
from emulator.core.virtio import STATUS_NEEDS_RESET
from emulator.machine.machine import Machine
from emulator.core.trace import Trace

from tests.core.rawdriver import EMERG_WRITE, MULTIPORT, SIZE, RawDriver, ready_device
from tests.machine.serial_machine import serial_machine


def machine(*ports: dict, chardevs: tuple = (), **devprops: str) -> Machine:
    m = Machine(trace=Trace(["virtio_serial_*"]))
    for c in chardevs:
        m.chardev_add(c)
    m.device_add({"driver": "virtio-serial", "id": "vser0", **devprops})
    for p in ports:
        m.device_add(p)
    m.trace.take()
    return m


def msgs(drv: RawDriver) -> list[tuple[int, str, int, bytes]]:
    return [(c.id, Event(c.event).name, c.value, c.payload) for c in drv.received()]


# --------------------------------------------------------------- device config
def test_features_offer_multiport_and_emergency_write_but_never_size() -> None:
    dev = machine().devices[0]
    f = dev.device_features()
    assert f & MULTIPORT and f & EMERG_WRITE and not f & SIZE


def test_single_port_device_does_not_offer_multiport() -> None:
    assert not machine(max_ports="1").devices[0].device_features() & MULTIPORT


def test_emergency_write_off_removes_feature_and_shrinks_config() -> None:
    dev = machine(**{"emergency-write": "off"}).devices[0]
    assert not dev.device_features() & EMERG_WRITE
    assert dev.config_size == 8
    assert len(dev.read_config(0, 8)) == 8


def test_config_space_layout_is_cols_rows_max_ports_emerg_wr() -> None:
    dev = machine(max_ports="7").devices[0]
    assert dev.config_size == 12
    assert dev.read_config(0, 12) == bytes([0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0])


def test_queue_count_and_sizes_follow_qemu() -> None:
    dev = machine(max_ports="4").devices[0]
    assert len(dev.queues) == 2 * 4 + 2
    assert [q.max_size for q in dev.queues] == [128, 128, 32, 32, 128, 128, 128, 128, 128, 128]


@pytest.mark.parametrize(
    ("max_ports", "message"),
    [("0", "Maximum number of serial ports not specified"), ("512", "maximum ports supported: 511")],
)
def test_max_ports_limits(max_ports: str, message: str) -> None:
    m = Machine()
    with pytest.raises(Exception, match=f"^{message}$"):
        m.device_add({"driver": "virtio-serial", "max_ports": max_ports})
    assert m.devices == []


# ------------------------------------------------------------------ DEVICE_READY
def test_device_ready_replays_port_add_in_plug_order() -> None:
    m = machine(
        {"driver": "virtserialport", "nr": "5"},
        {"driver": "virtconsole"},
        {"driver": "virtserialport", "nr": "2"},
    )
    drv = ready_device(m.devices[0])
    drv.control(Event.DEVICE_READY, 1, BAD_ID)
    assert msgs(drv) == [(5, "PORT_ADD", 1, b""), (0, "PORT_ADD", 1, b""), (2, "PORT_ADD", 1, b"")]
    assert m.trace.take() == [
        "virtio_serial_handle_control_message event 0, value 1",
        "virtio_serial_send_control_event port 5, event 1, value 1",
        "virtio_serial_send_control_event port 0, event 1, value 1",
        "virtio_serial_send_control_event port 2, event 1, value 1",
    ]


def test_device_ready_zero_reports_guest_failure() -> None:
    m = machine({"driver": "virtserialport"})
    drv = ready_device(m.devices[0])
    drv.control(Event.DEVICE_READY, 0, BAD_ID)
    m.pump()
    assert msgs(drv) == []
    assert m.error_log == ["virtio-serial-bus: Guest failure in adding device vser0.0"]


def test_messages_before_the_guest_has_buffers_are_dropped_but_traced() -> None:
    m = machine(chardevs=(MemoryChardev("c0"),))
    dev = m.devices[0]
    m.device_add({"driver": "virtserialport", "chardev": "c0", "nr": "1"})
    assert m.trace.take() == [
        "virtio_serial_send_control_event port 1, event 6, value 1",
        "virtio_serial_send_control_event port 1, event 1, value 1",
    ]
    drv = ready_device(dev)
    assert msgs(drv) == []  # nothing was queued for later
    drv.control(Event.DEVICE_READY, 1, BAD_ID)
    assert msgs(drv) == [(1, "PORT_ADD", 1, b"")]


def test_console_with_chardev_is_open_before_port_add() -> None:
    m = machine(chardevs=(NullChardev("n0"),))
    m.device_add({"driver": "virtconsole", "chardev": "n0"})
    assert m.trace.take() == [
        "virtio_serial_send_control_event port 0, event 6, value 1",
        "virtio_serial_send_control_event port 0, event 1, value 1",
    ]
    assert m.devices[0].ports[0].host_connected


def test_serial_port_on_null_chardev_stays_host_closed() -> None:
    m = machine(chardevs=(NullChardev("n0"),))
    m.device_add({"driver": "virtserialport", "chardev": "n0"})
    assert m.trace.take() == ["virtio_serial_send_control_event port 1, event 1, value 1"]
    assert not m.devices[0].ports[1].host_connected


# -------------------------------------------------------------------- PORT_READY
def test_port_ready_sends_console_name_open_in_order() -> None:
    m = machine(chardevs=(MemoryChardev("c0"),))
    m.device_add({"driver": "virtconsole", "chardev": "c0", "name": "org.qemu.console.0"})
    drv = ready_device(m.devices[0])
    m.trace.take()
    drv.control(Event.PORT_READY, 1, 0)
    assert msgs(drv) == [
        (0, "CONSOLE_PORT", 1, b""),
        (0, "PORT_NAME", 1, b"org.qemu.console.0\0"),
        (0, "PORT_OPEN", 1, b""),
    ]
    # PORT_NAME is built by hand in QEMU and never traced.
    assert m.trace.take() == [
        "virtio_serial_handle_control_message event 3, value 1",
        "virtio_serial_handle_control_message_port port 0",
        "virtio_serial_send_control_event port 0, event 4, value 1",
        "virtio_serial_send_control_event port 0, event 6, value 1",
    ]


def test_port_ready_for_unnamed_closed_port_sends_nothing() -> None:
    m = machine({"driver": "virtserialport"})
    drv = ready_device(m.devices[0])
    drv.control(Event.PORT_READY, 1, 1)
    assert msgs(drv) == []


def test_port_ready_calls_the_port_types_guest_ready_hook_last() -> None:
    m = machine({"driver": "virtserialport", "name": "a", "id": "p"})
    port = m.port("p")
    drv = ready_device(m.devices[0])
    seen: list[int] = []
    port.guest_ready = lambda: seen.append(len(drv.received()))  # type: ignore[method-assign]
    drv.control(Event.PORT_READY, 1, 1)
    assert seen == [1]  # PORT_NAME was already in the ring when the hook ran


def test_port_ready_zero_reports_guest_failure_for_port() -> None:
    m = machine({"driver": "virtserialport", "name": "a"})
    drv = ready_device(m.devices[0])
    drv.control(Event.PORT_READY, 0, 1)
    m.pump()
    assert msgs(drv) == []
    assert m.error_log == ["virtio-serial-bus: Guest failure in adding port 1 for device vser0.0"]


def test_unknown_port_id_is_reported_and_ignored() -> None:
    m = machine({"driver": "virtserialport"})
    drv = ready_device(m.devices[0])
    m.trace.take()
    drv.control(Event.PORT_OPEN, 1, 9)
    m.pump()
    assert m.error_log == ["virtio-serial-bus: Unexpected port id 9 for device vser0.0"]
    # No _port trace line for a port that does not exist.
    assert m.trace.take() == ["virtio_serial_handle_control_message event 6, value 1"]


def test_short_control_message_is_ignored_silently() -> None:
    m = machine({"driver": "virtserialport"})
    drv = ready_device(m.devices[0])
    m.trace.take()
    drv.send(b"\x01\x00\x00\x00\x03\x00")
    m.pump()
    assert m.trace.take() == [] and m.error_log == [] and msgs(drv) == []


def test_host_to_guest_events_from_the_guest_are_traced_and_ignored() -> None:
    m = machine({"driver": "virtserialport", "name": "x"})
    drv = ready_device(m.devices[0])
    m.trace.take()
    drv.control(Event.PORT_NAME, 1, 1)
    assert msgs(drv) == []
    assert m.trace.take() == [
        "virtio_serial_handle_control_message event 7, value 1",
        "virtio_serial_handle_control_message_port port 1",
    ]


def test_port_name_payload_reaches_a_short_buffer_truncated_with_full_length() -> None:
    m = machine({"driver": "virtserialport", "name": "org.example.long-name"})
    dev = m.devices[0]
    drv = RawDriver(dev)
    drv.negotiate()
    drv.queue(3)
    drv.post_rx(2, 1, size=12)
    drv.driver_ok()
    drv.control(Event.PORT_READY, 1, 1)
    q = drv.queue(2)
    (addr, size), length = q.get_buf(dev.mem)
    assert length == 8 + len("org.example.long-name") + 1  # QEMU reports the full length
    assert dev.mem.read(addr, size) == ControlMessage(1, Event.PORT_NAME, 1).encode() + b"org."


# --------------------------------------------------------------------- PORT_OPEN
def test_guest_open_sets_guest_connected_and_emits_vserport_change() -> None:
    c0 = MemoryChardev("c0")
    m = machine({"driver": "virtserialport", "chardev": "c0", "id": "p1"}, chardevs=(c0,))
    drv = ready_device(m.devices[0])
    drv.control(Event.PORT_OPEN, 1, 1)
    m.pump()
    port = m.port("p1")
    assert port.guest_connected and c0.fe_open
    drv.control(Event.PORT_OPEN, 0, 1)
    m.pump()
    assert not port.guest_connected and not c0.fe_open
    assert [(e.name, e.data) for e in m.events] == [
        ("VSERPORT_CHANGE", {"id": "p1", "open": True}),
        ("VSERPORT_CHANGE", {"id": "p1", "open": False}),
    ]


def test_port_without_id_emits_no_vserport_change() -> None:
    m = machine({"driver": "virtserialport"})
    drv = ready_device(m.devices[0])
    drv.control(Event.PORT_OPEN, 1, 1)
    m.pump()
    assert m.devices[0].ports[1].guest_connected and m.events == []


def test_console_guest_open_emits_event_but_leaves_chardev_fe_state() -> None:
    """A virtconsole opens its chardev front end at realize (query-chardev on
    QEMU 7.2 shows frontend-open true at once) and the guest's PORT_OPEN
    does not change it."""
    c0 = MemoryChardev("c0")
    m = machine({"driver": "virtconsole", "chardev": "c0", "id": "con"}, chardevs=(c0,))
    assert c0.fe_open
    drv = ready_device(m.devices[0])
    drv.control(Event.PORT_OPEN, 1, 0)
    drv.control(Event.PORT_OPEN, 0, 0)
    m.pump()
    assert [(e.name, e.data) for e in m.events] == [
        ("VSERPORT_CHANGE", {"id": "con", "open": True}),
        ("VSERPORT_CHANGE", {"id": "con", "open": False}),
    ]
    assert c0.fe_open


# -------------------------------------------------------------- host open/close
def test_host_connect_and_disconnect_send_port_open() -> None:
    c0 = MemoryChardev("c0", connected=False)
    m = machine({"driver": "virtserialport", "chardev": "c0", "id": "p1"}, chardevs=(c0,))
    drv = ready_device(m.devices[0])
    m.host_connect("c0")
    m.host_connect("c0")  # already open: nothing more
    m.host_disconnect("c0")
    assert msgs(drv) == [(1, "PORT_OPEN", 1, b""), (1, "PORT_OPEN", 0, b"")]


def test_console_ignores_chardev_disconnect() -> None:
    c0 = MemoryChardev("c0")
    m = machine({"driver": "virtconsole", "chardev": "c0"}, chardevs=(c0,))
    drv = ready_device(m.devices[0])
    m.host_disconnect("c0")
    assert msgs(drv) == [] and m.devices[0].ports[0].host_connected


# ------------------------------------------------------------- plug and unplug
def test_hotplug_sends_port_add_and_unplug_sends_port_remove() -> None:
    m = machine()
    drv = ready_device(m.devices[0])
    drv.control(Event.DEVICE_READY, 1, BAD_ID)
    m.device_add({"driver": "virtserialport", "id": "hp", "nr": "3"})
    m.device_del("hp")
    assert msgs(drv) == [(3, "PORT_ADD", 1, b""), (3, "PORT_REMOVE", 1, b"")]
    assert [(e.name, e.data) for e in m.events] == [
        ("DEVICE_DELETED", {"device": "hp", "path": "/machine/peripheral/hp"})
    ]


def test_unplugged_id_is_free_again_but_port_zero_stays_reserved() -> None:
    m = machine({"driver": "virtconsole", "id": "con"}, {"driver": "virtserialport", "id": "a"})
    dev = m.devices[0]
    m.device_del("con")
    m.device_del("a")
    assert dev.ports_map[0] == 1
    port = m.device_add({"driver": "virtserialport"})
    assert port.id == 1


def test_unplug_returns_held_and_queued_guest_data() -> None:
    c0 = MemoryChardev("c0", window=3)
    m = machine({"driver": "virtserialport", "chardev": "c0", "id": "p"}, chardevs=(c0,))
    dev = m.devices[0]
    drv = ready_device(dev)
    drv.control(Event.PORT_OPEN, 1, 1)
    drv.write(1, b"abcdef")
    drv.write(1, b"ghi")
    assert dev.ports[1].throttled and drv.used_count(5) == 0
    m.device_del("p")
    assert drv.used_count(5) == 2  # both buffers went back to the guest
    assert c0.take() == b"abc" and not c0.in_use


def test_chardev_is_free_after_failed_plug() -> None:
    m = machine({"driver": "virtserialport", "nr": "1"}, chardevs=(MemoryChardev("c0"),))
    with pytest.raises(Exception, match="A port already exists at id 1"):
        m.device_add({"driver": "virtserialport", "nr": "1", "chardev": "c0"})
    assert not m.chardevs["c0"].in_use
    m.device_add({"driver": "virtserialport", "nr": "2", "chardev": "c0"})
    assert m.chardevs["c0"].in_use


def test_failed_device_add_changes_nothing() -> None:
    m = machine({"driver": "virtserialport", "name": "a", "id": "p"})
    before = (dict(m.devices[0].ports), list(m.devices[0].ports_map), dict(m.qdev_ids), m.trace.take())
    for props in (
        {"driver": "virtserialport", "name": "a"},
        {"driver": "virtserialport", "id": "p"},
        {"driver": "virtserialport", "nr": "99"},
        {"driver": "virtserialport", "nr": "x"},
        {"driver": "virtserialport", "bogus": "1"},
        {"driver": "virtserialport", "chardev": "none"},
    ):
        with pytest.raises(Exception):
            m.device_add(props)
    assert (dict(m.devices[0].ports), list(m.devices[0].ports_map), dict(m.qdev_ids), m.trace.take()) == before


def test_duplicate_qdev_id_is_refused() -> None:
    m = machine({"driver": "virtserialport", "id": "p"})
    with pytest.raises(Exception, match="^Duplicate device ID 'p'$"):
        m.device_add({"driver": "virtserialport", "id": "p"})


# ------------------------------------------------------------- emergency write
def test_emergency_write_goes_to_first_host_connected_console() -> None:
    a, b = MemoryChardev("a", connected=False), MemoryChardev("b")
    m = Machine()
    m.chardev_add(a)
    m.chardev_add(b)
    m.device_add({"driver": "virtio-serial"})
    m.device_add({"driver": "virtconsole"})  # no chardev: host side closed
    m.device_add({"driver": "virtconsole", "chardev": "b"})
    dev = m.devices[0]
    drv = RawDriver(dev)
    drv.negotiate()
    dev.write_config(8, (0x4142).to_bytes(4, "little"))
    assert b.take() == b"B"  # the low byte only
    dev.write_config(8, bytes(4))  # zero writes nothing
    assert b.take() == b""


def test_emergency_write_follows_the_offered_feature_not_the_negotiated_one() -> None:
    # QEMU's set_config checks host_features only.
    b = MemoryChardev("b")
    m = machine({"driver": "virtconsole", "chardev": "b"}, chardevs=(b,))
    dev = m.devices[0]
    RawDriver(dev).negotiate(dev.device_features() & ~EMERG_WRITE)
    dev.write_config(8, b"x\0\0\0")
    assert b.take() == b"x"
    off = MemoryChardev("off")
    m2 = machine({"driver": "virtconsole", "chardev": "off"}, chardevs=(off,), **{"emergency-write": "off"})
    m2.devices[0].write_config(8, b"x\0\0\0")
    assert off.take() == b""


# ---------------------------------------------------------------- broken device
def test_reset_clears_guest_state_and_broken_flag() -> None:
    m = machine({"driver": "virtserialport", "id": "p"})
    dev = m.devices[0]
    drv = ready_device(dev)
    drv.control(Event.PORT_OPEN, 1, 1)
    dev.set_broken("Looped descriptor")
    assert dev.status & STATUS_NEEDS_RESET
    dev.set_status(0)
    assert not dev.broken and dev.status == 0 and not m.port("p").guest_connected
    m.pump()
    assert m.events[-1].data == {"id": "p", "open": False}


# ------------------------- features, emergency write and DRIVER_OK, as QEMU 7.2

# Was: set_driver_features accepts new features after FEATURES_OK (and flips EVENT_IDX on live
# queues); QEMU virtio_set_features refuses once FEATURES_OK is set
def test_features_cannot_change_after_features_ok() -> None:
    dev = serial_machine().devices[0]
    ready_device(dev)
    before = dev.guest_features
    dev.set_driver_features(0)
    assert dev.guest_features == before
    assert all(q.event_idx for q in dev.queues)


# Was: write_config requires the guest to have negotiated EMERG_WRITE; QEMU set_config checks only
# host_features (FACTS.md §3 set_config)
def test_emergency_write_works_when_offered_even_if_not_negotiated() -> None:
    m = serial_machine({"driver": "virtconsole", "chardev": "con"}, chardevs=(MemoryChardev("con"),))
    dev = m.devices[0]
    drv = RawDriver(dev)
    drv.negotiate(dev.device_features() & ~EMERG_WRITE)
    drv.driver_ok()
    dev.write_config(8, (0x41).to_bytes(4, "little"))
    assert m.host_receive("con") == b"A"


# Was: write_config ignores config writes that are not exactly 4 bytes at offset 8; QEMU's
# virtio_config_*_writeb/w store into the config and call set_config, so a 1-byte write to
# emerg_wr is an emergency write
def test_emergency_write_by_a_single_byte_config_write() -> None:
    m = serial_machine({"driver": "virtconsole", "chardev": "con"}, chardevs=(MemoryChardev("con"),))
    dev = m.devices[0]
    ready_device(dev)
    dev.write_config(8, b"B")
    assert m.host_receive("con") == b"B"


# Was: set_status never marks port 0 guest_connected on a non-multiport device at DRIVER_OK (QEMU
# set_status, FACTS.md §3); qtree/state/describe show the console as guest-closed
def test_non_multiport_console_is_guest_connected_at_driver_ok() -> None:
    m = serial_machine({"driver": "virtconsole", "chardev": "con"}, chardevs=(MemoryChardev("con"),), max_ports="1")
    m.boot()
    assert m.devices[0].ports[0].guest_connected
