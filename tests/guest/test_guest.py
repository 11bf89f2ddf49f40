"""The simulated guest: drivers/char/virtio_console.c as a guest program sees it.

Every test drives a whole Machine (device + guest driver over real rings) and
looks only at what a Linux guest would see (device nodes, sysfs, errno values)
or at what QEMU would show (trace lines, QMP events, error reports).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from emulator.core import vring
from emulator.core.chardev import MemoryChardev
from emulator.core.control import Event
from emulator.core.device import DATA_QUEUE_SIZE
from emulator.core.virtio import STATUS_FAILED
from emulator.errors import ConfigError, GuestOSError
from emulator.guest.kernel import MAX_WRITE, GuestPort
from emulator.machine.machine import Machine
from emulator.core.memory import MiB
from emulator.core.trace import Trace

PORT_NAME = "org.qemu.port.0"
NODE = "/dev/vport0p1"
LINK = f"/dev/virtio-ports/{PORT_NAME}"


def make_machine(*, connected: bool = True, window: int | None = None, ram_size: int = 64 * MiB) -> Machine:
    """One virtio-serial device with a console (port 0, chardev "con") and a
    named serial port (port 1, chardev "c0"), booted."""
    m = Machine(ram_size, trace=Trace(["virtio_serial_*"]))
    m.chardev_add(MemoryChardev("c0", connected=connected, window=window))
    m.chardev_add(MemoryChardev("con"))
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    m.device_add({"driver": "virtconsole", "chardev": "con", "id": "console0"})
    m.device_add({"driver": "virtserialport", "chardev": "c0", "name": PORT_NAME, "id": "p0"})
    m.boot()
    return m


def errno_of(call: Callable[[], object]) -> int:
    with pytest.raises(GuestOSError) as info:
        call()
    assert info.value.errno is not None
    return info.value.errno


def guest_port(m: Machine, port_id: int, dev: int = 0) -> GuestPort:
    return m.guest.portdevs[dev].ports[port_id]


# ----------------------------------------------------------------- nodes, sysfs


def test_ports_appear_as_vport_dev_p_id_for_each_device() -> None:
    m = Machine()
    m.device_add({"driver": "virtio-serial", "id": "a"})
    m.device_add({"driver": "virtserialport", "bus": "a.0", "nr": 3})
    m.device_add({"driver": "virtio-serial", "id": "b"})
    m.device_add({"driver": "virtserialport", "bus": "b.0", "nr": 1})
    m.device_add({"driver": "virtserialport", "bus": "b.0", "nr": 2})
    m.boot()
    vports = [n for n in m.guest.listdir("/dev") if n.startswith("vport")]
    assert vports == ["vport0p3", "vport1p1", "vport1p2"]
    assert m.guest.listdir("/sys/class/virtio-ports") == vports
    assert [(p.device, p.id, p.path) for p in m.guest.ports()] == [
        (0, 3, "/dev/vport0p3"),
        (1, 1, "/dev/vport1p1"),
        (1, 2, "/dev/vport1p2"),
    ]


def test_port_name_is_published_in_sys_class_and_sys_kernel() -> None:
    m = make_machine()
    assert m.guest.read_text("/sys/class/virtio-ports/vport0p1/name") == PORT_NAME + "\n"
    # The original series' spelling is answered too.
    assert m.guest.read_text("/sys/kernel/virtio-ports/vport0p1/name") == PORT_NAME + "\n"


def test_virtio_ports_link_points_at_the_vport_node() -> None:
    m = make_machine()
    assert m.guest.listdir("/dev/virtio-ports") == [PORT_NAME]
    assert m.guest.readlink(LINK) == "../vport0p1"
    # Opening the link opens the port it names.
    f = m.guest.open(LINK)
    assert f.write(b"via link") == 8
    assert m.host_receive("c0") == b"via link"


def test_unnamed_port_has_no_sysfs_name_and_no_link() -> None:
    m = Machine()
    m.device_add({"driver": "virtio-serial"})
    m.device_add({"driver": "virtserialport"})
    m.boot()
    assert "vport0p1" in m.guest.listdir("/dev")
    assert "virtio-ports" not in m.guest.listdir("/dev")
    assert errno_of(lambda: m.guest.read_text("/sys/class/virtio-ports/vport0p1/name")) == errno.ENOENT
    assert m.guest.listdir("/dev/virtio-ports") == []


def test_readlink_of_a_node_is_einval_and_of_nothing_enoent() -> None:
    m = make_machine()
    assert errno_of(lambda: m.guest.readlink(NODE)) == errno.EINVAL
    assert errno_of(lambda: m.guest.readlink("/dev/virtio-ports/nope")) == errno.ENOENT
    assert errno_of(lambda: m.guest.open("/dev/virtio-ports/nope")) == errno.ENOENT


# ---------------------------------------------------------------------- consoles


def test_console_port_becomes_hvc0_and_its_vport_cannot_be_opened() -> None:
    m = make_machine()
    info = m.guest.ports()[0]
    assert (info.id, info.console, info.open) == (0, "/dev/hvc0", True)
    assert "hvc0" in m.guest.listdir("/dev")
    assert errno_of(lambda: m.guest.open("/dev/vport0p0")) == errno.ENXIO


def test_consoles_take_the_first_free_hvc_number() -> None:
    m = Machine()
    for c in ("a", "b", "c", "d"):
        m.chardev_add(MemoryChardev(c))
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    m.device_add({"driver": "virtconsole", "chardev": "a", "id": "ca"})
    m.device_add({"driver": "virtconsole", "chardev": "b", "id": "cb"})
    m.device_add({"driver": "virtconsole", "chardev": "c", "id": "cc"})
    m.boot()
    assert [p.console for p in m.guest.ports()] == ["/dev/hvc0", "/dev/hvc1", "/dev/hvc2"]
    m.device_del("cb")  # frees hvc1
    assert "hvc1" not in m.guest.listdir("/dev")
    m.device_add({"driver": "virtconsole", "chardev": "d", "id": "cd", "nr": 7})
    by_id = {p.id: p.console for p in m.guest.ports()}
    assert by_id[7] == "/dev/hvc1"
    # The new console is hvc1 for programs too: what it writes reaches "d".
    m.guest.open("/dev/hvc1").write(b"to d")
    assert m.host_receive("d") == b"to d"
    assert m.host_receive("b") == b""


def test_guest_opens_its_console_by_itself() -> None:
    m = Machine(trace=Trace(["virtio_serial_*"]))
    m.chardev_add(MemoryChardev("con"))
    m.chardev_add(MemoryChardev("con2"))
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    m.device_add({"driver": "virtconsole", "chardev": "con", "id": "console0"})
    m.device_add({"driver": "virtconsole", "chardev": "con2"})  # no id
    m.boot()
    lines = m.trace.lines
    # CONSOLE_PORT(1) is answered with PORT_OPEN 1 from the guest, per port.
    for port_id in (0, 1):
        console_at = lines.index(f"virtio_serial_send_control_event port {port_id}, event 4, value 1")
        tail = lines[console_at:]
        opened = [
            i
            for i in range(len(tail) - 1)
            if tail[i] == "virtio_serial_handle_control_message event 6, value 1"
            and tail[i + 1] == f"virtio_serial_handle_control_message_port port {port_id}"
        ]
        assert opened, f"guest never opened console port {port_id}"
    assert all(p.guest_connected for p in m.devices[0].ports.values())
    # VSERPORT_CHANGE for the console that has an id, none for the one without.
    assert [e.data for e in m.events if e.name == "VSERPORT_CHANGE"] == [{"id": "console0", "open": True}]


def test_single_port_device_without_multiport_is_a_console() -> None:
    m = Machine()
    m.chardev_add(MemoryChardev("con"))
    m.device_add({"driver": "virtio-serial", "max_ports": 1})
    m.device_add({"driver": "virtconsole", "chardev": "con"})
    m.boot()
    assert [p.console for p in m.guest.ports()] == ["/dev/hvc0"]
    h = m.guest.open("/dev/hvc0")
    h.write(b"early")
    assert m.host_receive("con") == b"early"
    m.host_send("con", b"input")
    assert h.read() == b"input"


# ---------------------------------------------------------------- open / close


def test_second_open_fails_with_ebusy() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    assert errno_of(lambda: m.guest.open(NODE)) == errno.EBUSY
    assert errno_of(lambda: m.guest.open(LINK)) == errno.EBUSY
    f.close()
    m.guest.open(LINK).close()  # free again once closed


def test_open_and_close_send_port_open_1_and_0() -> None:
    m = make_machine()
    m.trace.take()
    dev_port = m.port("p0")
    chardev = m.host_chardev("c0")
    f = m.guest.open(NODE)
    assert m.trace.take() == [
        "virtio_serial_handle_control_message event 6, value 1",
        "virtio_serial_handle_control_message_port port 1",
    ]
    assert dev_port.guest_connected and chardev.fe_open
    f.close()
    assert m.trace.take() == [
        "virtio_serial_handle_control_message event 6, value 0",
        "virtio_serial_handle_control_message_port port 1",
    ]
    assert not dev_port.guest_connected and not chardev.fe_open
    assert [e.data for e in m.events if e.data.get("id") == "p0"] == [
        {"id": "p0", "open": True},
        {"id": "p0", "open": False},
    ]
    assert errno_of(f.read) == errno.EBADF


# ------------------------------------------------------------------------ reads


def test_read_returns_eof_when_host_not_connected_and_nothing_pending() -> None:
    m = make_machine(connected=False)
    f = m.guest.open(NODE)
    assert f.read() == b""


def test_read_would_block_with_eagain_when_host_connected_without_data() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    assert errno_of(f.read) == errno.EAGAIN


def test_read_returns_what_the_host_sent() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    m.host_send("c0", b"hello guest")
    assert f.read(5) == b"hello"
    assert f.read() == b" guest"
    assert errno_of(f.read) == errno.EAGAIN


def test_data_received_before_host_closed_is_still_readable() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    m.host_send("c0", b"last words")
    m.host_disconnect("c0")
    assert not m.guest.ports()[1].host_connected
    assert f.read() == b"last words"
    assert f.read() == b""  # then EOF


# ----------------------------------------------------------------------- writes


def test_write_is_capped_at_32_kib() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    data = bytes(range(256)) * 200  # 51200 bytes
    assert f.write(data) == MAX_WRITE == 32 * 1024
    assert m.host_receive("c0") == data[:MAX_WRITE]


def test_write_would_block_with_eagain_when_host_not_connected() -> None:
    m = make_machine(connected=False)
    f = m.guest.open(NODE)
    assert errno_of(lambda: f.write(b"x")) == errno.EAGAIN
    m.host_connect("c0")
    assert f.write(b"x") == 1
    assert m.host_receive("c0") == b"x"


def test_write_would_block_with_eagain_when_tx_ring_is_full() -> None:
    m = make_machine(window=0)  # the host reads nothing
    f = m.guest.open(NODE)
    for i in range(DATA_QUEUE_SIZE):
        assert f.write(bytes([i])) == 1
    assert errno_of(lambda: f.write(b"!")) == errno.EAGAIN
    m.host_grant("c0", None)
    assert m.host_receive("c0") == bytes(range(DATA_QUEUE_SIZE))
    assert f.write(b"!") == 1  # room again once the host took the buffers
    assert m.host_receive("c0") == b"!"


def test_write_fails_with_enomem_when_no_buffer_can_be_allocated() -> None:
    # port_fops_write: alloc_buf failing returns -ENOMEM; nothing is sent.
    m = make_machine(ram_size=4 * MiB)
    f = m.guest.open(NODE)
    km = m.guest.kmalloc
    hog = []
    with pytest.raises(GuestOSError):
        while True:
            hog.append(km.alloc(64))
    assert errno_of(lambda: f.write(b"x")) == errno.ENOMEM
    assert m.host_receive("c0") == b""
    km.free(hog.pop())
    assert f.write(b"x") == 1
    assert m.host_receive("c0") == b"x"


def test_zero_length_write_returns_zero_and_sends_nothing() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    assert f.write(b"") == 0
    assert m.host_receive("c0") == b""


# ----------------------------------------------------------- discarded rx data


def test_data_for_a_closed_port_is_discarded_and_counted() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    m.host_send("c0", b"x" * 5000)  # lands in two rx buffers
    f.close()
    gp = guest_port(m, 1)
    assert gp.bytes_discarded == 5000
    # The buffers went back to the ring: all 128 pages are posted again.
    assert gp.in_vq.num_free == 0
    assert m.host_send("c0", b"") == 0
    # A new open does not see the old data.
    g = m.guest.open(NODE)
    assert errno_of(g.read) == errno.EAGAIN
    m.host_send("c0", b"fresh")
    assert g.read() == b"fresh"
    assert gp.bytes_discarded == 5000


def test_partly_read_buffer_is_discarded_on_close() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    m.host_send("c0", b"0123456789")
    assert f.read(4) == b"0123"
    f.close()
    assert guest_port(m, 1).bytes_discarded == 6


# ------------------------------------------------------------- hot (un)plug


def test_port_remove_makes_node_link_and_sysfs_name_vanish() -> None:
    m = make_machine()
    m.device_del("p0")
    assert "vport0p1" not in m.guest.listdir("/dev")
    assert "virtio-ports" not in m.guest.listdir("/dev")
    assert m.guest.listdir("/dev/virtio-ports") == []
    assert m.guest.listdir("/sys/class/virtio-ports") == ["vport0p0"]
    assert errno_of(lambda: m.guest.read_text("/sys/class/virtio-ports/vport0p1/name")) == errno.ENOENT
    assert errno_of(lambda: m.guest.open(LINK)) == errno.ENOENT
    assert errno_of(lambda: m.guest.open(NODE)) == errno.ENOENT


def test_open_handle_reads_eof_and_writes_enodev_after_port_remove() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    m.host_send("c0", b"never read")
    m.device_del("p0")
    assert f.read() == b""
    assert errno_of(lambda: f.write(b"x")) == errno.ENODEV
    f.close()  # closing a removed port's handle sends nothing
    assert not [line for line in m.trace.take() if "event 6, value 0" in line]


def test_hot_plugged_port_appears_with_its_name() -> None:
    m = make_machine()
    m.chardev_add(MemoryChardev("hp"))
    m.device_add({"driver": "virtserialport", "chardev": "hp", "name": "org.example.hot", "id": "hot"})
    nr = m.port("hot").id
    node = f"vport0p{nr}"
    assert node in m.guest.listdir("/dev")
    assert m.guest.read_text(f"/sys/class/virtio-ports/{node}/name") == "org.example.hot\n"
    assert m.guest.readlink("/dev/virtio-ports/org.example.hot") == f"../{node}"
    f = m.guest.open("/dev/virtio-ports/org.example.hot")
    f.write(b"ping")
    assert m.host_receive("hp") == b"ping"
    m.host_send("hp", b"pong")
    assert f.read() == b"pong"


def test_port_re_added_at_a_removed_id_gets_the_new_name() -> None:
    m = make_machine()
    m.device_del("p0")
    m.chardev_add(MemoryChardev("c1"))
    m.device_add({"driver": "virtserialport", "chardev": "c1", "name": "second", "nr": 1})
    assert m.guest.listdir("/dev/virtio-ports") == ["second"]
    assert m.guest.readlink("/dev/virtio-ports/second") == "../vport0p1"
    f = m.guest.open("/dev/virtio-ports/second")
    m.host_send("c1", b"new port")
    assert f.read() == b"new port"


def test_port_add_with_id_beyond_max_nr_ports_is_ignored_with_a_warning() -> None:
    m = make_machine()
    dev = m.devices[0]
    m.trace.take()
    dev.send_control_event(dev.max_ports, Event.PORT_ADD, 1)
    m.pump()
    pd = m.guest.portdevs[0]
    assert pd.warnings[-1] == (
        f"Request for adding port with out-of-bound id {dev.max_ports}, "
        f"max. supported id: {dev.max_ports - 1}"
    )
    assert dev.max_ports not in pd.ports
    # The guest sent nothing back (no PORT_READY of either value).
    assert not [line for line in m.trace.take() if "handle_control_message" in line]
    assert m.error_log == []


def test_port_add_for_a_known_port_is_answered_with_port_ready_again() -> None:
    m = make_machine()
    m.trace.take()
    m.devices[0].send_control_event(1, Event.PORT_ADD, 1)
    m.pump()
    assert m.trace.take()[1:3] == [
        "virtio_serial_handle_control_message event 3, value 1",
        "virtio_serial_handle_control_message_port port 1",
    ]
    assert [p.id for p in m.guest.ports()] == [0, 1]


# ------------------------------------------------------------------------ probe


@pytest.mark.parametrize("max_nr_ports", [0, 0x8001, 0xFFFFFFFF])
def test_probe_fails_on_max_nr_ports_zero_or_above_0x8000(
    monkeypatch: pytest.MonkeyPatch, max_nr_ports: int
) -> None:
    m = Machine()
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    m.device_add({"driver": "virtserialport", "name": "x"})
    dev = m.devices[0]
    real = dev.read_config

    def read_config(offset: int, size: int) -> bytes:
        if (offset, size) == (4, 4):
            return max_nr_ports.to_bytes(4, "little")
        return real(offset, size)

    monkeypatch.setattr(dev, "read_config", read_config)
    m.boot()
    assert m.guest.portdevs == {}
    assert m.guest.ports() == []
    assert dev.status & STATUS_FAILED
    assert len(m.guest.log) == 1
    assert m.guest.log[0].startswith("virtio_console virtio0: probe failed: ")
    assert "max_nr_ports" in m.guest.log[0]


def test_probe_accepts_max_nr_ports_0x8000(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Machine()
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    m.device_add({"driver": "virtserialport", "name": "x"})
    dev = m.devices[0]
    real = dev.read_config
    monkeypatch.setattr(
        dev, "read_config", lambda o, s: (0x8000).to_bytes(4, "little") if (o, s) == (4, 4) else real(o, s)
    )
    m.boot()
    assert not dev.status & STATUS_FAILED
    assert m.guest.portdevs[0].max_nr_ports == 0x8000
    assert [p.name for p in m.guest.ports()] == ["x"]


@pytest.mark.parametrize(
    ("max_ports", "message"),
    [(0, "Maximum number of serial ports not specified"), (512, "maximum ports supported: 511")],
)
def test_device_refuses_max_ports_outside_1_to_511(max_ports: int, message: str) -> None:
    # The guest can only meet what the device allows; QEMU refuses the rest.
    m = Machine()
    with pytest.raises(ConfigError) as info:
        m.device_add({"driver": "virtio-serial", "max_ports": max_ports})
    assert str(info.value) == message
    assert m.devices == []


@pytest.mark.parametrize("max_ports", [1, 511])
def test_probe_succeeds_across_the_device_max_ports_range(max_ports: int) -> None:
    m = Machine()
    m.device_add({"driver": "virtio-serial", "max_ports": max_ports})
    m.device_add({"driver": "virtconsole"})
    if max_ports > 1:
        m.device_add({"driver": "virtserialport", "nr": max_ports - 1})
    m.boot()
    assert m.guest.log == []
    assert [p.id for p in m.guest.ports()] == sorted({0, max_ports - 1})


# ------------------------------------------------------------ memory pressure


def test_ports_whose_memory_cannot_be_allocated_get_port_ready_0() -> None:
    nports = 30
    m = Machine(ram_size=4 * MiB, trace=Trace(["virtio_serial_*"]))
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    for i in range(1, nports + 1):
        m.device_add({"driver": "virtserialport", "name": f"n{i}"})
    m.boot()  # ENOMEM stays inside the guest driver
    seen = [p.id for p in m.guest.ports()]
    # 3 MiB of guest heap holds a few 128 x 4 KiB rx rings, not 30.
    assert 0 < len(seen) < nports
    assert seen == list(range(1, len(seen) + 1))  # ports are added in plug order
    failed = list(range(len(seen) + 1, nports + 1))
    assert m.error_log == [
        f"virtio-serial-bus: Guest failure in adding port {i} for device vser0.0" for i in failed
    ]
    ready = [line for line in m.trace.lines if line.startswith("virtio_serial_handle_control_message event 3")]
    assert ready == ["virtio_serial_handle_control_message event 3, value 1"] * len(seen) + [
        "virtio_serial_handle_control_message event 3, value 0"
    ] * len(failed)


def test_port_ready_0_when_no_rx_buffer_can_be_allocated() -> None:
    m = make_machine(ram_size=8 * MiB)
    km = m.guest.kmalloc
    # Keep exactly the blocks a new port's two rings need, use up everything
    # else, then give the ring blocks back: the rings fit, no 4 KiB buffer does.
    reserve = [
        km.alloc(size)
        for _ in range(2)
        for size in (
            vring.desc_table_size(DATA_QUEUE_SIZE),
            vring.avail_size(DATA_QUEUE_SIZE),
            vring.used_size(DATA_QUEUE_SIZE),
        )
    ]
    with pytest.raises(GuestOSError):
        while True:
            km.alloc(64)
    for addr in reserve:
        km.free(addr)
    m.device_add({"driver": "virtserialport", "name": "starved", "nr": 5})
    assert m.guest.portdevs[0].warnings[-1] == "Error allocating inbufs for port 5"
    assert m.error_log == ["virtio-serial-bus: Guest failure in adding port 5 for device vser0.0"]
    assert "vport0p5" not in m.guest.listdir("/dev")
    assert "starved" not in m.guest.listdir("/dev/virtio-ports")


# ----------------------------------------------------------- emergency write


def test_emergency_write_reaches_the_console_chardev() -> None:
    m = make_machine()
    m.guest.emergency_write(0, ord("x"))
    m.guest.emergency_write(0, 0x141)  # only the low byte counts
    assert m.host_receive("con") == b"xA"
    assert m.host_receive("c0") == b""


def test_emergency_write_off_sends_nothing() -> None:
    m = Machine()
    m.chardev_add(MemoryChardev("con"))
    m.device_add({"driver": "virtio-serial", "emergency-write": "off"})
    m.device_add({"driver": "virtconsole", "chardev": "con"})
    m.boot()
    assert m.devices[0].config_size == 8
    m.guest.emergency_write(0, ord("x"))
    assert m.host_receive("con") == b""


# -------------------------------------------------- control rx queue overflow


def test_cold_plugged_ports_beyond_the_32_control_buffers_are_lost_at_device_ready() -> None:
    # QEMU's send_control_msg pops one control-rx buffer per message and
    # silently drops the message when there is none.  At DEVICE_READY the
    # device replays PORT_ADD for all 40 ports back to back, but the guest
    # posted only 32 buffers (the control queue size) and re-posts each one
    # only after handling its message: PORT_ADD for ports 33..40 is dropped,
    # and so is port 1's PORT_NAME, which the device answers to port 1's
    # PORT_READY while all 32 buffers still hold unhandled PORT_ADDs.
    m = Machine(trace=Trace(["virtio_serial_*"]))
    m.device_add({"driver": "virtio-serial", "id": "vser0", "max_ports": 64})
    for i in range(1, 41):
        m.device_add({"driver": "virtserialport", "name": f"n{i}"})
    m.trace.take()
    m.boot()
    lines = m.trace.take()
    # Every PORT_ADD is traced, delivered or not.
    assert [line for line in lines if ", event 1," in line] == [
        f"virtio_serial_send_control_event port {i}, event 1, value 1" for i in range(1, 41)
    ]
    ports = m.guest.ports()
    assert [p.id for p in ports] == list(range(1, 33))
    assert [p.name for p in ports] == [None] + [f"n{i}" for i in range(2, 33)]
    assert m.guest.listdir("/dev/virtio-ports") == sorted(f"n{i}" for i in range(2, 33))
    assert m.error_log == []


# ------------------------------------------------ control rx fill out of memory

# Was: guest fill_queue stops quietly on ENOMEM and DEVICE_READY 1 goes out for a partly filled
# control rx queue; Linux fill_queue returns -ENOMEM on any failed alloc and probe sends
# DEVICE_READY 0 (commit 'virtio_console: make fill_queue return int')
def test_guest_sends_device_ready_0_when_control_rx_fill_runs_out_of_memory() -> None:
    m = Machine(ram_size=1 * MiB + 32 * 1024)  # room for a handful of 4 KiB buffers, not 32
    m.device_add({"driver": "virtio-serial"})
    m.boot()
    assert "virtio-serial-bus: Guest failure in adding device virtio-serial-bus.0" in m.error_log
