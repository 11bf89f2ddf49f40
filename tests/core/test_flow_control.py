"""Flow control between the guest and the host, both directions.

Guest -> host: a chardev that takes less than offered throttles a serial
port; the device holds the element (``elem``, ``iov_idx``, ``iov_offset``)
without returning it to the guest until the host takes the rest.  A console
drops the excess instead.  Host -> guest: data waits in the chardev while the
guest cannot take it, and is never lost.
"""

from __future__ import annotations

import errno

import pytest

from emulator.core.chardev import MemoryChardev
from emulator.core.device import DATA_QUEUE_SIZE
from emulator.errors import GuestOSError
from emulator.guest.kernel import RX_BUF_SIZE, GuestFile
from emulator.machine.machine import Machine
from emulator.core.trace import Trace

NODE = "/dev/vport0p1"
THROTTLE_1 = "virtio_serial_throttle_port port 1, throttle 1"
THROTTLE_0 = "virtio_serial_throttle_port port 1, throttle 0"


def make_machine(*, window: int | None = None, con_window: int | None = None) -> Machine:
    """Console at port 0 (chardev "con"), serial port 1 (chardev "c0"), booted."""
    m = Machine(trace=Trace(["virtio_serial_*"]))
    m.chardev_add(MemoryChardev("c0", window=window))
    m.chardev_add(MemoryChardev("con", window=con_window))
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    m.device_add({"driver": "virtconsole", "chardev": "con", "id": "console0"})
    m.device_add({"driver": "virtserialport", "chardev": "c0", "name": "org.qemu.port.0", "id": "p0"})
    m.boot()
    m.trace.take()
    return m


def tx_used_idx(m: Machine, qdev_id: str = "p0") -> int:
    """The used index of the port's tx ring, as the guest reads it from RAM."""
    port = m.port(qdev_id)
    vq = m.devices[0].queues[port.tx_queue]
    return m.mem.read_u16(vq.used_addr + 2)


def read_all(f: GuestFile) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = f.read(1 << 20)
        except GuestOSError as err:
            assert err.errno == errno.EAGAIN
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


PATTERN = bytes(range(256)) * 64  # 16 KiB, every offset distinguishable mod 256


# ---------------------------------------------------------- guest -> host


def test_short_write_throttles_port_and_holds_element_mid_buffer() -> None:
    m = make_machine(window=10)
    f = m.guest.open(NODE)
    m.trace.take()
    used_before = tx_used_idx(m)
    assert f.write(PATTERN[:100]) == 100  # the guest's write completes at once
    assert m.trace.take() == [THROTTLE_1]
    port = m.port("p0")
    assert port.throttled
    assert port.elem is not None and port.elem.out_len == 100
    assert (port.iov_idx, port.iov_offset) == (0, 10)
    # The buffer is not given back to the guest while held.
    assert tx_used_idx(m) == used_before
    assert m.host_receive("c0") == PATTERN[:10]


def test_grant_resumes_and_bytes_arrive_in_order_exactly_once() -> None:
    m = make_machine(window=10)
    f = m.guest.open(NODE)
    data = PATTERN[:3000]
    for off in range(0, len(data), 1000):
        assert f.write(data[off : off + 1000]) == 1000
    m.trace.take()
    port = m.port("p0")
    got = bytearray(m.host_receive("c0"))
    used = tx_used_idx(m)
    # A grant that ends inside the first buffer: resume, throttle again.
    m.host_grant("c0", 500)
    assert m.trace.take() == [THROTTLE_0, THROTTLE_1]
    assert (port.iov_idx, port.iov_offset) == (0, 510)
    assert tx_used_idx(m) == used
    got += m.host_receive("c0")
    # One that finishes the first buffer and ends inside the second.
    m.host_grant("c0", 990)
    assert (port.iov_idx, port.iov_offset) == (0, 500)
    assert tx_used_idx(m) == (used + 1) & 0xFFFF
    got += m.host_receive("c0")
    m.host_grant("c0", None)
    assert m.trace.take()[-1] == THROTTLE_0
    assert not port.throttled and port.elem is None
    assert tx_used_idx(m) == (used + 3) & 0xFFFF
    got += m.host_receive("c0")
    assert bytes(got) == data
    assert m.host_chardev("c0").received_count == len(data)


def test_grant_ending_exactly_at_a_buffer_end_moves_to_the_next_segment() -> None:
    # A chain of two readable descriptors, as a guest using scatter-gather
    # would post it (Linux's virtio_console posts one; the device must not care).
    m = make_machine(window=15)
    m.guest.open(NODE)
    pd = m.guest.portdevs[0]
    gp = pd.ports[1]
    km = m.guest.kmalloc
    a, b = km.alloc(10), km.alloc(10)
    m.mem.write(a, b"ABCDEFGHIJ")
    m.mem.write(b, b"klmnopqrst")
    gp.out_vq.add(m.mem, [(a, 10), (b, 10)], [], a)
    pd.kick(gp.out_vq)
    m.pump()
    port = m.port("p0")
    assert port.throttled
    assert (port.iov_idx, port.iov_offset) == (1, 5)
    assert m.host_receive("c0") == b"ABCDEFGHIJklmno"
    m.host_grant("c0", 5)  # exactly the rest: the element is complete
    assert port.elem is None
    assert m.host_receive("c0") == b"pqrst"


def test_segment_boundary_hit_by_the_window_is_recorded_as_next_segment() -> None:
    m = make_machine(window=10)
    m.guest.open(NODE)
    pd = m.guest.portdevs[0]
    gp = pd.ports[1]
    km = m.guest.kmalloc
    a, b = km.alloc(10), km.alloc(10)
    m.mem.write(a, b"0123456789")
    m.mem.write(b, b"abcdefghij")
    gp.out_vq.add(m.mem, [(a, 10), (b, 10)], [], a)
    pd.kick(gp.out_vq)
    m.pump()
    port = m.port("p0")
    # The first segment was fully taken, the second refused outright.
    assert port.throttled
    assert (port.iov_idx, port.iov_offset) == (1, 0)
    m.host_grant("c0", None)
    assert m.host_receive("c0") == b"0123456789abcdefghij"


def test_throttled_port_does_not_hold_up_another_port() -> None:
    m = make_machine(window=0)
    m.chardev_add(MemoryChardev("c1"))
    m.device_add({"driver": "virtserialport", "chardev": "c1", "name": "other", "id": "p1"})
    f0 = m.guest.open(NODE)
    f1 = m.guest.open("/dev/virtio-ports/other")
    f0.write(b"stuck")
    f1.write(b"flows")
    assert m.port("p0").throttled and not m.port("p1").throttled
    assert m.host_receive("c1") == b"flows"
    assert m.host_receive("c0") == b""


def test_virtconsole_drops_what_its_chardev_cannot_take() -> None:
    m = make_machine(con_window=5)
    h = m.guest.open("/dev/hvc0")
    console = m.port("console0")
    used = tx_used_idx(m, "console0")
    assert h.write(b"0123456789") == 10
    assert m.trace.take() == []  # no throttle line
    assert not console.throttled and console.elem is None
    assert tx_used_idx(m, "console0") == (used + 1) & 0xFFFF  # buffer returned
    assert m.host_receive("con") == b"01234"
    m.host_grant("con", 3)
    assert m.host_receive("con") == b""  # the excess is gone, not held
    h.write(b"abcdef")
    assert m.host_receive("con") == b"abc"


def test_host_disconnect_while_throttled_drops_untaken_data_and_sends_port_open_0() -> None:
    m = make_machine(window=10)
    f = m.guest.open(NODE)
    f.write(b"a" * 100)
    f.write(b"b" * 100)
    m.trace.take()
    used = tx_used_idx(m)
    m.host_disconnect("c0")
    assert m.trace.take() == ["virtio_serial_send_control_event port 1, event 6, value 0"]
    port = m.port("p0")
    assert not port.throttled and port.elem is None
    assert (port.iov_idx, port.iov_offset) == (0, 0)
    # Both buffers went back to the guest (the held one and the queued one).
    assert tx_used_idx(m) == (used + 2) & 0xFFFF
    assert m.host_receive("c0") == b"a" * 10
    assert not m.guest.ports()[1].host_connected
    assert f.read() == b""
    with pytest.raises(GuestOSError) as info:
        f.write(b"x")
    assert info.value.errno == errno.EAGAIN
    # A new host connection sees only what is written from then on.
    m.host_connect("c0")
    m.host_grant("c0", None)
    assert f.write(b"new") == 3
    assert m.host_receive("c0") == b"new"
    assert m.guest.portdevs[0].ports[1].out_vq.num_free >= DATA_QUEUE_SIZE - 1


def test_guest_data_without_host_connection_is_consumed_and_dropped() -> None:
    # A console without a chardev is never host-connected; hvc writes do not
    # wait for the host, so the device sees the data and must drop it.
    m = Machine()
    m.device_add({"driver": "virtio-serial"})
    m.device_add({"driver": "virtconsole", "id": "console0"})
    m.boot()
    assert not m.port("console0").host_connected
    h = m.guest.open("/dev/hvc0")
    used = tx_used_idx(m, "console0")
    for _ in range(3 * DATA_QUEUE_SIZE):  # more than the ring holds
        assert h.write(b"into the void") == 13
    assert tx_used_idx(m, "console0") == (used + 3 * DATA_QUEUE_SIZE) & 0xFFFF
    assert m.port("console0").elem is None


def test_serial_port_data_racing_a_host_close_is_dropped() -> None:
    # The guest still believes the host is there when its buffer reaches the
    # device (the PORT_OPEN 0 is in flight): the device consumes and drops it.
    m = make_machine()
    m.guest.open(NODE)
    m.host_chardev("c0").disconnect()  # host side gone, guest not told yet
    pd = m.guest.portdevs[0]
    gp = pd.ports[1]
    assert gp.host_connected
    used = tx_used_idx(m)
    assert pd.send_to_port(gp, b"late data") == 9
    m.pump()
    assert tx_used_idx(m) == (used + 1) & 0xFFFF
    assert m.host_receive("c0") == b""
    assert m.port("p0").elem is None


# ---------------------------------------------------------- host -> guest


def test_host_data_waits_in_the_chardev_while_the_guest_port_is_closed() -> None:
    m = make_machine()
    assert m.host_send("c0", b"early bird") == 0
    assert guest_discarded(m) == 0
    f = m.guest.open(NODE)  # PORT_OPEN 1 lets the data in
    assert f.read() == b"early bird"
    f.close()
    assert m.host_send("c0", b"after close") == 0
    g = m.guest.open(NODE)
    assert g.read() == b"after close"
    assert guest_discarded(m) == 0


def guest_discarded(m: Machine) -> int:
    return m.guest.portdevs[0].ports[1].bytes_discarded


def test_host_data_waits_while_the_guest_has_no_rx_buffers() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    ring = DATA_QUEUE_SIZE * RX_BUF_SIZE  # 128 x 4096 posted by the guest
    data = (PATTERN * (ring // len(PATTERN) + 2))[: ring + 10000]
    assert m.host_send("c0", data) == ring  # the rest waits
    assert m.host_send("c0", b"") == 0
    # Reading one buffer's worth gives one buffer back, and the host fills it.
    assert f.read(RX_BUF_SIZE) == data[:RX_BUF_SIZE]
    rest = read_all(f)
    assert rest == data[RX_BUF_SIZE:]


def test_host_data_waits_while_the_machine_is_stopped() -> None:
    m = make_machine()
    f = m.guest.open(NODE)
    m.stop()
    assert m.host_send("c0", b"while stopped") == 0
    m.cont()
    assert f.read() == b"while stopped"


def test_host_data_sent_before_the_guest_boots_arrives_after_open() -> None:
    m = Machine()
    m.chardev_add(MemoryChardev("c0"))
    m.device_add({"driver": "virtio-serial"})
    m.device_add({"driver": "virtserialport", "chardev": "c0", "name": "x"})
    assert m.host_send("c0", b"before boot") == 0
    m.boot()
    f = m.guest.open("/dev/virtio-ports/x")
    assert f.read() == b"before boot"
