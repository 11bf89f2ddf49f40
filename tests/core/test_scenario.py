"""A whole session, start to finish, pinned by QEMU's trace lines.

Cold-plugged console + two named ports, the guest boots, opens a port, the
host connects, data moves both ways, a port is hot-plugged and another is
unplugged.  Every control message the device sends or handles is traced,
so the exact trace is the protocol transcript.
"""

from __future__ import annotations

from emulator.core.chardev import MemoryChardev
from emulator.machine.machine import Machine
from emulator.core.trace import Trace

SEND = "virtio_serial_send_control_event port {}, event {}, value {}"
HANDLE = "virtio_serial_handle_control_message event {}, value {}"
HANDLE_PORT = "virtio_serial_handle_control_message_port port {}"


def test_full_session_trace() -> None:
    m = Machine(trace=Trace(["virtio_serial_*"]))
    for c in (
        MemoryChardev("con0"),
        MemoryChardev("c1", connected=False),
        MemoryChardev("c2", connected=False),
        MemoryChardev("c3"),
    ):
        m.chardev_add(c)
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    m.device_add({"driver": "virtconsole", "chardev": "con0", "id": "console0"})
    m.device_add({"driver": "virtserialport", "chardev": "c1", "name": "org.qemu.port.1", "id": "port1"})
    m.device_add({"driver": "virtserialport", "chardev": "c2", "name": "org.qemu.port.2", "id": "port2", "nr": "4"})

    # Cold plug: every plug is traced although no control buffer exists yet;
    # the console is host-open from realize, so its PORT_OPEN precedes PORT_ADD.
    assert m.trace.take() == [
        SEND.format(0, 6, 1),
        SEND.format(0, 1, 1),
        SEND.format(1, 1, 1),
        SEND.format(4, 1, 1),
    ]

    m.boot()
    assert m.trace.take() == [
        # DEVICE_READY: PORT_ADD replayed in plug order, all three queued.
        HANDLE.format(0, 1),
        SEND.format(0, 1, 1),
        SEND.format(1, 1, 1),
        SEND.format(4, 1, 1),
        # The guest handles PORT_ADD 0: PORT_READY -> CONSOLE_PORT, PORT_OPEN.
        HANDLE.format(3, 1),
        HANDLE_PORT.format(0),
        SEND.format(0, 4, 1),
        SEND.format(0, 6, 1),
        # PORT_ADD 1 and 4: PORT_READY -> PORT_NAME (untraced); hosts closed.
        HANDLE.format(3, 1),
        HANDLE_PORT.format(1),
        HANDLE.format(3, 1),
        HANDLE_PORT.format(4),
        # CONSOLE_PORT reaches the guest: hvc0 opens itself.
        HANDLE.format(6, 1),
        HANDLE_PORT.format(0),
    ]
    assert m.guest.listdir("/dev/virtio-ports") == ["org.qemu.port.1", "org.qemu.port.2"]
    assert m.guest.readlink("/dev/virtio-ports/org.qemu.port.2") == "../vport0p4"
    assert m.guest.read_text("/sys/class/virtio-ports/vport0p1/name") == "org.qemu.port.1\n"

    f = m.guest.open("/dev/virtio-ports/org.qemu.port.1")
    assert m.trace.take() == [HANDLE.format(6, 1), HANDLE_PORT.format(1)]

    m.host_connect("c1")
    assert m.trace.take() == [SEND.format(1, 6, 1)]

    assert f.write(b"guest says hi") == 13
    assert m.host_receive("c1") == b"guest says hi"
    assert m.host_send("c1", b"host says hi") == 12
    assert f.read(100) == b"host says hi"
    assert m.trace.take() == []  # data moves without control traffic

    m.device_add({"driver": "virtserialport", "chardev": "c3", "name": "org.qemu.hot", "id": "hot"})
    assert m.trace.take() == [
        SEND.format(2, 6, 1),  # c3 is connected: open replayed at realize
        SEND.format(2, 1, 1),
        HANDLE.format(3, 1),
        HANDLE_PORT.format(2),
        SEND.format(2, 6, 1),
    ]
    assert "org.qemu.hot" in m.guest.listdir("/dev/virtio-ports")

    m.device_del("port2")
    assert m.trace.take() == [SEND.format(4, 2, 1)]
    assert m.guest.listdir("/dev/virtio-ports") == ["org.qemu.hot", "org.qemu.port.1"]

    assert [(e.name, e.data) for e in m.events] == [
        ("VSERPORT_CHANGE", {"id": "console0", "open": True}),
        ("VSERPORT_CHANGE", {"id": "port1", "open": True}),
        ("DEVICE_DELETED", {"device": "port2", "path": "/machine/peripheral/port2"}),
    ]
    assert [(p.path, p.name, p.console, p.open, p.host_connected) for p in m.guest.ports()] == [
        ("/dev/vport0p0", None, "/dev/hvc0", True, True),
        ("/dev/vport0p1", "org.qemu.port.1", None, True, True),
        ("/dev/vport0p2", "org.qemu.hot", None, False, True),
    ]
    assert m.error_log == []
