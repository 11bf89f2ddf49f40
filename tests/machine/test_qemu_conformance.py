"""Conformance with QEMU 7.2 and Linux virtio_console, from a review.

Each test pins a behaviour the first version of the emulator got wrong; the
comment above it says what was wrong and where the fact comes from
(fixtures/qemu/FACTS.md sections, QEMU 7.2 and Linux function names).
"""

from __future__ import annotations

from typing import Any

import pytest

from emulator.core import vring
from emulator.core.chardev import MemoryChardev
from emulator.core.control import BAD_ID, Event
from emulator.core.device import VirtIOSerial
from emulator.core.effects import ErrorReport
from emulator.core.virtio import STATUS_NEEDS_RESET
from emulator.guest.driver_queue import DriverQueue
from emulator.errors import ConfigError
from emulator.machine.machine import Machine
from emulator.core.memory import GuestMemory, MiB
from emulator.plugin.hookspecs import hookimpl
from emulator.plugin.manager import make_plugin_manager
from emulator.core.ports import VirtIOSerialPort
from emulator.state.records import capture, restore
from emulator.core.trace import Trace

from tests.core.rawdriver import EMERG_WRITE, RawDriver, ready_device
from tests.state.test_device_state import CMDLINE, build, load_into, source, stream

NEXT = vring.VRING_DESC_F_NEXT
WRITE = vring.VRING_DESC_F_WRITE
INDIRECT = vring.VRING_DESC_F_INDIRECT


def publish_raw(mem: GuestMemory, q: DriverQueue, descs: list[tuple[int, int, int, int]], head: int = 0) -> None:
    """Write descriptors straight into q's table and make ``head`` available
    (a malicious guest: no free-list bookkeeping)."""
    for i, (addr, length, flags, nxt) in enumerate(descs):
        mem.pack_into(vring.DESC, q.desc + 16 * i, addr, length, flags, nxt)
    idx = mem.read_u16(q.avail + 2)
    mem.write_u16(q.avail + 4 + 2 * (idx % q.num), head)
    mem.write_u16(q.avail + 2, (idx + 1) & 0xFFFF)


def serial_machine(*ports: dict[str, Any], chardevs: tuple[MemoryChardev, ...] = (), **devprops: Any) -> Machine:
    m = Machine(trace=Trace(["virtio_serial_*"]))
    for c in chardevs:
        m.chardev_add(c)
    m.device_add({"driver": "virtio-serial", **devprops})
    for p in ports:
        m.device_add(dict(p))
    return m


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


# ------------------------------------------------------------ ring validation
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


# --------------------------------------------------- guest-controlled transport
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


# Was: set_driver_features accepts new features after FEATURES_OK (and flips EVENT_IDX on live
# queues); QEMU virtio_set_features refuses once FEATURES_OK is set
def test_features_cannot_change_after_features_ok() -> None:
    dev = serial_machine().devices[0]
    ready_device(dev)
    before = dev.guest_features
    dev.set_driver_features(0)
    assert dev.guest_features == before
    assert all(q.event_idx for q in dev.queues)


# ------------------------------------------------------------ emergency write
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


# ------------------------------------------------------ set_status / handle_input
# Was: set_status never marks port 0 guest_connected on a non-multiport device at DRIVER_OK (QEMU
# set_status, FACTS.md §3); qtree/state/describe show the console as guest-closed
def test_non_multiport_console_is_guest_connected_at_driver_ok() -> None:
    m = serial_machine({"driver": "virtconsole", "chardev": "con"}, chardevs=(MemoryChardev("con"),), max_ports="1")
    m.boot()
    assert m.devices[0].ports[0].guest_connected


class _CountingPort(VirtIOSerialPort):
    driver = "counting-port"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.writable_calls = 0

    def guest_writable(self) -> None:
        self.writable_calls += 1


# Was: kick on an rx queue calls the port type's guest_writable hook unconditionally; QEMU
# handle_input calls it only when guest_connected && host_connected (FACTS.md §3)
def test_guest_writable_hook_not_called_while_port_is_closed() -> None:
    class Plugin:
        @hookimpl
        def vserial_port_types(self) -> list[type[VirtIOSerialPort]]:
            return [_CountingPort]

    m = Machine(plugins=make_plugin_manager([Plugin()], autoload=False))
    m.device_add({"driver": "virtio-serial"})
    port = m.device_add({"driver": _CountingPort.driver, "nr": "1"})
    m.boot()  # the guest fills port 1's rx ring and kicks it; nobody has the port open
    assert isinstance(port, _CountingPort)
    assert port.writable_calls == 0


# ------------------------------------------------------------ device_add layer
# Was: device_add checks properties before the duplicate id; QEMU qdev_device_add sets the id
# (qdev_set_id) before any property, so QMP answers "Duplicate device ID 'p0'" (checked on 7.2)
def test_duplicate_device_id_is_reported_before_property_errors() -> None:
    m = serial_machine({"driver": "virtserialport", "id": "p0"})
    with pytest.raises(ConfigError, match=r"^Duplicate device ID 'p0'$"):
        m.device_add({"driver": "virtserialport", "id": "p0", "foo": "1"}, from_json=True)


# Was: chardev='' is refused with "can't find value ''"; QEMU's set_chr treats an empty string as
# no chardev (checked on 7.2: -device virtserialport,chardev= starts)
def test_empty_chardev_property_means_no_chardev() -> None:
    m = serial_machine()
    port = m.device_add({"driver": "virtserialport", "chardev": ""})
    assert isinstance(port, VirtIOSerialPort) and port.chardev is None


# Was: device_add(from_json=True) demands JSON integers; 7.2 device_add goes through QemuOpts, so
# "nr": "3" is accepted (FACTS.md §2, checked on 7.2)
def test_qmp_device_add_accepts_integer_property_as_string() -> None:
    m = serial_machine()
    port = m.device_add({"driver": "virtserialport", "nr": "3"}, from_json=True)
    assert isinstance(port, VirtIOSerialPort) and port.id == 3


# Was: device_add(from_json=True) reports "Invalid parameter type for 'nr', expected: integer";
# QEMU 7.2 QMP says "Parameter 'nr' expects integer" (FACTS.md §2, checked for "abc" and true)
@pytest.mark.parametrize("value", ["abc", True])
def test_qmp_device_add_bad_integer_uses_qemu_opts_message(value: Any) -> None:
    m = serial_machine()
    with pytest.raises(ConfigError, match=r"^Parameter 'nr' expects integer$"):
        m.device_add({"driver": "virtserialport", "nr": value}, from_json=True)


# ------------------------------------------------------------------- restore
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


# ------------------------------------------------------------ simulated guest
# Was: guest fill_queue stops quietly on ENOMEM and DEVICE_READY 1 goes out for a partly filled
# control rx queue; Linux fill_queue returns -ENOMEM on any failed alloc and probe sends
# DEVICE_READY 0 (commit 'virtio_console: make fill_queue return int')
def test_guest_sends_device_ready_0_when_control_rx_fill_runs_out_of_memory() -> None:
    m = Machine(ram_size=1 * MiB + 32 * 1024)  # room for a handful of 4 KiB buffers, not 32
    m.device_add({"driver": "virtio-serial"})
    m.boot()
    assert "virtio-serial-bus: Guest failure in adding device virtio-serial-bus.0" in m.error_log
