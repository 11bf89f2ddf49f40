"""The simulated Linux guest: drivers/char/virtio_console.c, as a program.

One ``PortsDevice`` per virtio-serial device (Linux's ``struct
ports_device``) drives the device through real split rings in guest memory;
``GuestKernel`` owns them all, the device nodes and sysfs files they create,
and the file API guest programs use (``open``/``read``/``write``/``close``).

Behaviours reproduced from the driver (function names in brackets):

* probe [virtcons_probe]: negotiate features, refuse max_nr_ports of 0 or
  above 0x8000, fill the control rx queue, send DEVICE_READY 1 (0 if the
  fill failed).
* control messages are handled one at a time in ring order, each buffer
  re-queued after its message [control_work_handler]; replies (PORT_READY,
  PORT_OPEN) go out synchronously [__send_control_msg], so the device's
  answers queue up behind messages already in the ring.
* PORT_ADD creates ``/dev/vport<dev>p<id>`` and fills its rx ring with one
  4096-byte buffer per entry [add_port, fill_queue]; CONSOLE_PORT makes it
  ``/dev/hvc<N>`` and opens it [init_port_console]; PORT_NAME publishes the
  sysfs name and udev's ``/dev/virtio-ports/<name>`` link.
* open/close send PORT_OPEN; data for a port nobody has open is discarded
  and counted [in_intr, discard_port_data]; a write takes at most 32 KiB in
  one buffer and would block while the host is closed or the ring is full
  [port_fops_write, will_write_block].

Guest programs are non-blocking: where Linux would sleep, the call raises
``GuestOSError(EAGAIN)`` and the program tries again later.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import attrs

from emulator.core import control, vring
from emulator.core.control import BAD_ID, CONTROL_HEADER, Event
from emulator.core.memory import PAGE_SIZE
from emulator.core.ring_log import RingLog
from emulator.core.virtio import (
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FAILED,
    STATUS_FEATURES_OK,
)
from emulator.errors import GuestNotRunning, GuestOSError
from emulator.guest.driver_queue import CPKT, DriverQueue
from emulator.guest.kmalloc import Kmalloc
from emulator.guest.platform import GuestPlatform, VirtioTransport

VIRTCONS_MAX_PORTS = 0x8000
MAX_WRITE = 32 * 1024
RX_BUF_SIZE = PAGE_SIZE
# The kernel's messages (probe failures) and each driver instance's warnings
# keep the newest lines only, as the kernel's own ring buffer (dmesg) does:
# a device that keeps sending bad control messages must not grow the guest.
KERNEL_LOG_KEPT = 256

# What the driver asks for (its feature table plus the ring features).
DRIVER_FEATURES = (
    (1 << control.VIRTIO_CONSOLE_F_SIZE)
    | (1 << control.VIRTIO_CONSOLE_F_MULTIPORT)
    | (1 << control.VIRTIO_CONSOLE_F_EMERG_WRITE)
    | (1 << vring.VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << vring.VIRTIO_RING_F_EVENT_IDX)
    | (1 << vring.VIRTIO_F_VERSION_1)
)


def _oserror(code: int, what: str) -> GuestOSError:
    return GuestOSError(code, f"{what}: {os.strerror(code)}")


@attrs.define
class GuestPortInfo:
    """One port as a guest program sees it (``x-guest-ports`` rows)."""

    path: str
    name: str | None
    id: int
    device: int
    console: str | None
    open: bool
    host_connected: bool


class GuestPort:
    """Linux's ``struct port``."""

    def __init__(self, portdev: PortsDevice, port_id: int) -> None:
        self.portdev = portdev
        self.id = port_id
        self.name: str | None = None
        self.hvc: int | None = None
        self.guest_connected = False
        self.host_connected = False
        self.outvq_full = False
        self.in_vq = portdev.queue(0 if port_id == 0 else 2 * port_id + 2)
        self.out_vq = portdev.queue(1 if port_id == 0 else 2 * port_id + 3)
        # The buffer being read: [addr, length, offset] or None.
        self.inbuf: list[int] | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.bytes_discarded = 0
        self.removed = False

    @classmethod
    def detached(cls, portdev: PortsDevice, port_id: int) -> GuestPort:
        """A port already unplugged that an open file still names (what a
        restore rebuilds for such a file).  It has no queues: every file
        operation on a removed port returns before it would touch them."""
        port = cls.__new__(cls)
        port.portdev = portdev
        port.id = port_id
        port.name = None
        port.hvc = None
        port.guest_connected = port.host_connected = port.outvq_full = False
        port.inbuf = None
        port.bytes_sent = port.bytes_received = port.bytes_discarded = 0
        port.removed = True
        return port

    @property
    def node(self) -> str:
        return f"vport{self.portdev.index}p{self.id}"

    @property
    def is_console(self) -> bool:
        return self.hvc is not None


class PortsDevice:
    """The driver instance bound to one virtio-serial device."""

    def __init__(self, kernel: GuestKernel, dev: VirtioTransport) -> None:
        self.kernel = kernel
        self.mem = kernel.mem
        self.dev = dev
        self.index = dev.index
        self.features = 0
        self.multiport = False
        self.max_nr_ports = 1
        self.queues: dict[int, DriverQueue] = {}
        self.ports: dict[int, GuestPort] = {}
        self.ctrl_tx_buf = 0
        self.probed = False
        self.warnings: RingLog[str] = RingLog(KERNEL_LOG_KEPT)

    @classmethod
    def detached(cls, kernel: GuestKernel, index: int) -> PortsDevice:
        """The driver instance of a device already removed, for the ports
        of files still open on it (see ``GuestPort.detached``): no transport,
        no queues, no ports, not probed and not in ``kernel.portdevs``."""
        pd = cls.__new__(cls)
        pd.kernel = kernel
        pd.mem = kernel.mem
        pd.index = index
        pd.features = 0
        pd.multiport = False
        pd.max_nr_ports = 1
        pd.queues = {}
        pd.ports = {}
        pd.ctrl_tx_buf = 0
        pd.probed = False
        pd.warnings = RingLog(KERNEL_LOG_KEPT)
        return pd

    # ------------------------------------------------------------- plumbing

    def queue(self, index: int) -> DriverQueue:
        q = self.queues.get(index)
        if q is None:
            num = self.dev.queue_max_size(index)
            q = DriverQueue(self.mem, self.kernel.kmalloc, index, num, bool(
                self.features & (1 << vring.VIRTIO_RING_F_EVENT_IDX)))
            self.dev.configure_queue(index, num, q.desc, q.avail, q.used)
            self.queues[index] = q
        return q

    def kick(self, q: DriverQueue) -> None:
        if q.kick_needed(self.mem):
            self.kernel.platform.notify_device(self.dev, q.index)

    # ---------------------------------------------------------------- probe
    def probe(self) -> None:
        dev = self.dev
        dev.set_status(STATUS_ACKNOWLEDGE)
        dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        self.features = dev.device_features() & DRIVER_FEATURES
        dev.set_driver_features(self.features)
        dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        self.multiport = bool(self.features & (1 << control.VIRTIO_CONSOLE_F_MULTIPORT))
        if self.multiport:
            self.max_nr_ports = int.from_bytes(dev.read_config(4, 4), "little")
            if not self.max_nr_ports or self.max_nr_ports > VIRTCONS_MAX_PORTS:
                dev.set_status(STATUS_FAILED)  # "Invalidate max_nr_ports"
                raise _oserror(errno.EINVAL, f"virtio{self.index}: invalid max_nr_ports")
        # init_vqs: control queues now; port queues as ports appear.
        if self.multiport:
            self.queue(2)
            self.queue(3)
            self.ctrl_tx_buf = self.kernel.kmalloc.alloc(CONTROL_HEADER.size)
        dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
        self.probed = True
        if self.multiport:
            try:
                self.fill_queue(self.queues[2])
            except GuestOSError:
                # "Error allocating buffers for control queue": tell the
                # host, then the probe fails.
                self.send_control(BAD_ID, Event.DEVICE_READY, 0)
                self.probed = False
                raise
            self.send_control(BAD_ID, Event.DEVICE_READY, 1)
        else:
            self.add_port(0)

    def fill_queue(self, q: DriverQueue) -> int:
        """fill_queue: page-sized buffers until the ring is full; returns how
        many were added.  Raises ENOMEM when an allocation fails (what was
        added stays posted) and ENOSPC when the ring was full already."""
        added = 0
        try:
            while True:
                addr = self.kernel.kmalloc.alloc(RX_BUF_SIZE)
                if not q.num_free:
                    self.kernel.kmalloc.free(addr)
                    raise _oserror(errno.ENOSPC, "fill_queue")
                q.add_one(self.mem, addr, RX_BUF_SIZE, vring.VRING_DESC_F_WRITE, addr)
                added += 1
                if not q.num_free:
                    return added
        finally:
            if added:
                self.kick(q)

    def add_inbuf(self, q: DriverQueue, addr: int) -> None:
        q.add_one(self.mem, addr, RX_BUF_SIZE, vring.VRING_DESC_F_WRITE, addr)
        self.kick(q)

    def send_control(self, port_id: int, event: int, value: int) -> None:
        """__send_control_msg: synchronous, the device answers before we return."""
        if not self.multiport:
            return
        q = self.queues[3]
        self.mem.write(self.ctrl_tx_buf, CONTROL_HEADER.pack(port_id, event, value))
        q.add(self.mem, [(self.ctrl_tx_buf, CONTROL_HEADER.size)], [], CPKT)
        # virtqueue_kick: prepare (which restarts the count of buffers added
        # since the last kick), then notify; this driver always notifies.
        q.num_added = 0
        self.kernel.platform.notify_device(self.dev, 3)
        # Linux spins on get_buf; the device consumed it during the kick
        # (or is broken, in which case Linux gives up too).
        q.get_buf(self.mem)

    # ------------------------------------------------------------ interrupts
    def interrupt(self, queue: int) -> None:
        if queue == 2:
            self.control_work()
        elif queue in (0,) or (queue >= 4 and queue % 2 == 0):
            port = self.ports.get(0 if queue == 0 else (queue - 2) // 2)
            if port is not None:
                self.in_intr(port)
        # tx and control-tx completions are reclaimed lazily, as Linux does.

    def control_work(self) -> None:
        q = self.queues.get(2)
        if q is None:
            return
        while (got := q.get_buf(self.mem)) is not None:
            addr, length = got
            length = min(length, RX_BUF_SIZE)
            self.handle_control_message(self.mem.read(addr, length))
            self.add_inbuf(q, addr)

    def handle_control_message(self, buf: bytes) -> None:
        if len(buf) < CONTROL_HEADER.size:
            return
        port_id, event, value = CONTROL_HEADER.unpack_from(buf)
        port = self.ports.get(port_id)
        if port is None and event != Event.PORT_ADD:
            self.warnings.append(f"Invalid index {port_id} in control packet")
            return
        if event == Event.PORT_ADD:
            if port is not None:
                self.send_control(port.id, Event.PORT_READY, 1)
                return
            if port_id >= self.max_nr_ports:
                self.warnings.append(
                    f"Request for adding port with out-of-bound id {port_id}, "
                    f"max. supported id: {self.max_nr_ports - 1}"
                )
                return
            self.add_port(port_id)
        elif event == Event.PORT_REMOVE:
            assert port is not None
            self.unplug_port(port)
        elif event == Event.CONSOLE_PORT:
            assert port is not None
            if value and not port.is_console:
                self.kernel.init_port_console(port)
        elif event == Event.PORT_OPEN:
            assert port is not None
            port.host_connected = bool(value)
            self.reclaim_consumed_buffers(port)
        elif event == Event.PORT_NAME:
            assert port is not None
            if port.name is not None:
                return
            raw = buf[CONTROL_HEADER.size :]
            port.name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            self.kernel.port_named(port)
        # RESIZE and unknown events: nothing for a non-console view.

    def add_port(self, port_id: int) -> None:
        try:
            port = GuestPort(self, port_id)
        except GuestOSError:
            # Linux allocates every vq at probe; ours are made on first use,
            # so running out of memory here is add_port's kzalloc failing:
            # answer PORT_READY 0 instead of letting ENOMEM escape the handler.
            self.warnings.append(f"Error allocating port {port_id}")
            self.send_control(port_id, Event.PORT_READY, 0)
            return
        # "We can safely ignore ENOSPC because it means the queue already has
        # buffers. Buffers are removed only by virtcons_remove(), not by
        # unplug_port()" (Linux add_port).
        try:
            self.fill_queue(port.in_vq)
        except GuestOSError as err:
            if err.errno != errno.ENOSPC:
                self.send_control(port_id, Event.PORT_READY, 0)
                self.warnings.append(f"Error allocating inbufs for port {port_id}")
                return
        self.ports[port_id] = port
        self.kernel.port_added(port)
        if not self.multiport:
            self.kernel.init_port_console(port)
        self.send_control(port_id, Event.PORT_READY, 1)

    def remove(self) -> None:
        """virtcons_remove (the PCI device is being ejected): reset the
        device, unplug every port, free the queues and their buffers."""
        self.dev.set_status(0)  # virtio_reset_device
        for port in list(self.ports.values()):
            self.unplug_port(port)
        free = self.kernel.kmalloc.free
        tokens: set[int] = set()
        for q in self.queues.values():
            for token in [*q.take_used(self.mem), *q.detach_unused(self.mem)]:
                if isinstance(token, int):  # buffers; the control packet is static
                    tokens.add(token)
        if self.ctrl_tx_buf:
            tokens.add(self.ctrl_tx_buf)
            self.ctrl_tx_buf = 0
        for addr in tokens:
            free(addr)
        for q in self.queues.values():
            for addr in (q.desc, q.avail, q.used):
                free(addr)
        self.queues.clear()
        self.probed = False

    def unplug_port(self, port: GuestPort) -> None:
        del self.ports[port.id]
        port.guest_connected = False
        port.host_connected = False
        port.removed = True
        self.discard_port_data(port)
        self.reclaim_consumed_buffers(port)
        self.kernel.port_removed(port)

    # ------------------------------------------------------------------ data
    def get_inbuf(self, port: GuestPort) -> list[int] | None:
        got = port.in_vq.get_buf(self.mem)
        if got is None:
            return None
        addr, length = got
        length = min(length, RX_BUF_SIZE)
        port.bytes_received += length
        return [addr, length, 0]

    def in_intr(self, port: GuestPort) -> None:
        if port.inbuf is None:
            port.inbuf = self.get_inbuf(port)
        if not port.guest_connected:
            self.discard_port_data(port)

    def discard_port_data(self, port: GuestPort) -> None:
        buf = port.inbuf if port.inbuf is not None else self.get_inbuf(port)
        while buf is not None:
            port.bytes_discarded += buf[1] - buf[2]
            port.inbuf = None
            self.add_inbuf(port.in_vq, buf[0])
            buf = self.get_inbuf(port)
        port.inbuf = None

    def port_has_data(self, port: GuestPort) -> bool:
        if port.inbuf is None:
            port.inbuf = self.get_inbuf(port)
        return port.inbuf is not None

    def fill_readbuf(self, port: GuestPort, count: int) -> bytes:
        """Copy from the current buffer only, as Linux does: one read
        returns at most what one 4 KiB receive buffer holds."""
        if count <= 0 or not self.port_has_data(port):
            return b""
        buf = port.inbuf
        assert buf is not None
        addr, length, offset = buf
        n = min(count, length - offset)
        out = self.mem.read(addr + offset, n)
        buf[2] = offset + n
        if buf[2] >= length:
            # Done with this buffer: give it back for more host data.
            port.inbuf = None
            self.add_inbuf(port.in_vq, addr)
        return out

    def reclaim_consumed_buffers(self, port: GuestPort) -> None:
        tokens = port.out_vq.take_used(self.mem)
        if tokens:
            free = self.kernel.kmalloc.free
            for addr in tokens:
                free(addr)
            port.outvq_full = False

    def will_write_block(self, port: GuestPort) -> bool:
        if not port.guest_connected:
            return False  # unplugged: the write fails instead
        if not port.host_connected:
            return True
        self.reclaim_consumed_buffers(port)
        return port.outvq_full

    def send_to_port(
        self, port: GuestPort, data: bytes | memoryview, nonblock: bool = True, reclaim: bool = True
    ) -> int:
        """__send_to_port: one readable buffer, kick, and (for consoles) wait.
        ``reclaim=False`` when the caller has just reclaimed (will_write_block)."""
        if reclaim:
            self.reclaim_consumed_buffers(port)
        count = len(data)
        addr = self.kernel.kmalloc.alloc(count)
        self.mem.write(addr, data)
        q = port.out_vq
        try:
            q.add_one(self.mem, addr, count, 0, addr)
        except GuestOSError:
            self.kernel.kmalloc.free(addr)
            self.kick(q)
            return 0
        if q.num_free == 0:
            port.outvq_full = True
        self.kick(q)
        port.bytes_sent += count
        if not nonblock:
            # put_chars spins until the host has the buffer back.
            self.reclaim_consumed_buffers(port)
        return count


class GuestFile:
    """An open file descriptor of a guest program."""

    def __init__(self, kernel: GuestKernel, path: str, port: GuestPort, console: bool) -> None:
        self.kernel = kernel
        self.path = path
        self.port = port
        self.console = console
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise _oserror(errno.EBADF, self.path)
        if self.kernel.dead:
            raise _oserror(errno.EIO, self.path)  # the guest was reset under the program
        if not self.kernel.platform.running:
            raise GuestNotRunning()

    def read(self, count: int = 65536) -> bytes:
        """Bytes that have arrived, from one receive buffer at most (as on
        Linux); b"" at EOF (host closed, nothing left); EAGAIN when the host
        is connected but nothing has arrived."""
        self._check()
        port = self.port
        dev = port.portdev
        if port.removed:
            return b""
        if not dev.port_has_data(port):
            if not port.host_connected and not self.console:
                return b""
            raise _oserror(errno.EAGAIN, self.path)
        data = dev.fill_readbuf(port, count)
        self.kernel.platform.pump()
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write up to 32 KiB; EAGAIN while the host is closed or the ring is
        full, ENODEV once the port is gone."""
        self._check()
        port = self.port
        if port.removed:
            raise _oserror(errno.ENODEV, self.path)
        if not data:
            return 0
        dev = port.portdev
        if self.console:
            data = memoryview(data)[: PAGE_SIZE]
            n = dev.send_to_port(port, data, nonblock=False)
            self.kernel.platform.pump()
            return n
        if dev.will_write_block(port):
            raise _oserror(errno.EAGAIN, self.path)
        n = dev.send_to_port(port, memoryview(data)[:MAX_WRITE], reclaim=False)
        self.kernel.platform.pump()
        if n == 0:
            raise _oserror(errno.EAGAIN, self.path)
        return n

    def close(self) -> None:
        if self.closed:
            return
        if self.kernel.dead:
            self.closed = True
            return
        if not self.kernel.platform.running:
            raise GuestNotRunning()
        self.closed = True
        self.kernel.release(self)

    def __enter__(self) -> GuestFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GuestKernel:
    """The guest OS: drivers, device nodes, sysfs and the file API."""

    def __init__(self, platform: GuestPlatform, kmalloc_base: int = 1 << 20) -> None:
        self.platform = platform
        self.mem = platform.mem
        self.kmalloc = Kmalloc(kmalloc_base, platform.mem.size)
        self.portdevs: dict[int, PortsDevice] = {}
        self.nodes: dict[str, GuestPort] = {}  # /dev/vport0p1 -> port
        self.hvcs: dict[int, GuestPort] = {}
        self.links: dict[str, str] = {}  # /dev/virtio-ports/<name> -> ../vport0p1
        self.open_files: list[GuestFile] = []
        self.booted = False
        self.dead = False  # replaced by a new kernel at system_reset
        self.log: RingLog[str] = RingLog(KERNEL_LOG_KEPT)

    # ------------------------------------------------------------ bring-up
    def boot(self) -> None:
        self.booted = True
        for dev in self.platform.devices:
            self.probe(dev)

    def probe(self, dev: VirtioTransport) -> None:
        pd = PortsDevice(self, dev)
        self.portdevs[dev.index] = pd
        try:
            pd.probe()
        except GuestOSError as err:
            self.log.append(f"virtio_console virtio{dev.index}: probe failed: {err}")
            del self.portdevs[dev.index]

    def remove(self, dev: VirtioTransport) -> None:
        """The device is hot-unplugged (ACPI eject): the driver lets go."""
        pd = self.portdevs.pop(dev.index, None)
        if pd is not None:
            pd.remove()

    def interrupt(self, dev: VirtioTransport, queue: int) -> None:
        pd = self.portdevs.get(dev.index)
        if pd is not None and pd.probed:
            pd.interrupt(queue)

    # ------------------------------------------------- udev / sysfs side
    def port_added(self, port: GuestPort) -> None:
        self.nodes[f"/dev/{port.node}"] = port

    def port_named(self, port: GuestPort) -> None:
        if port.name:
            self.links[f"/dev/virtio-ports/{port.name}"] = f"../{port.node}"

    def init_port_console(self, port: GuestPort) -> None:
        n = 0
        while n in self.hvcs:
            n += 1
        port.hvc = n
        self.hvcs[n] = port
        port.guest_connected = True
        port.portdev.send_control(port.id, Event.PORT_OPEN, 1)

    def port_removed(self, port: GuestPort) -> None:
        self.nodes.pop(f"/dev/{port.node}", None)
        if port.name:
            link = f"/dev/virtio-ports/{port.name}"
            if self.links.get(link) == f"../{port.node}":
                del self.links[link]
        if port.hvc is not None:
            self.hvcs.pop(port.hvc, None)

    # --------------------------------------------------------- file system
    def resolve(self, path: str) -> str:
        if path in self.links:
            return "/dev/" + self.links[path].removeprefix("../")
        return path

    def listdir(self, path: str) -> list[str]:
        path = path.rstrip("/")
        if path == "/dev/virtio-ports":
            return sorted(p.rsplit("/", 1)[1] for p in self.links)
        if path in ("/sys/class/virtio-ports", "/sys/kernel/virtio-ports"):
            return sorted(p.node for p in self.all_ports())
        if path == "/dev":
            names = [p.rsplit("/", 1)[1] for p in self.nodes] + [f"hvc{n}" for n in self.hvcs]
            if self.links:
                names.append("virtio-ports")
            return sorted(names)
        raise _oserror(errno.ENOENT, path)

    def readlink(self, path: str) -> str:
        if path in self.links:
            return self.links[path]
        raise _oserror(errno.EINVAL if path in self.nodes else errno.ENOENT, path)

    def read_text(self, path: str) -> str:
        """sysfs: /sys/class/virtio-ports/vport0p1/name (and the original
        series' /sys/kernel/virtio-ports/ spelling)."""
        for prefix in ("/sys/class/virtio-ports/", "/sys/kernel/virtio-ports/"):
            if path.startswith(prefix) and path.endswith("/name"):
                node = path[len(prefix) : -len("/name")]
                port = self.nodes.get(f"/dev/{node}")
                if port is not None and port.name is not None:
                    return port.name + "\n"
        raise _oserror(errno.ENOENT, path)

    def all_ports(self) -> Iterator[GuestPort]:
        for pd in self.portdevs.values():
            yield from pd.ports.values()

    def ports(self) -> list[GuestPortInfo]:
        return [
            GuestPortInfo(
                path=f"/dev/{p.node}",
                name=p.name,
                id=p.id,
                device=p.portdev.index,
                console=f"/dev/hvc{p.hvc}" if p.hvc is not None else None,
                open=p.guest_connected,
                host_connected=p.host_connected,
            )
            for p in sorted(self.all_ports(), key=lambda p: (p.portdev.index, p.id))
        ]

    def open(self, path: str) -> GuestFile:
        """open(2) on a port node, a virtio-ports link or an hvc console."""
        if not self.platform.running:
            raise GuestNotRunning()
        real = self.resolve(path)
        if real.startswith("/dev/hvc") and real[8:].isdigit():
            port = self.hvcs.get(int(real[8:]))
            if port is None:
                raise _oserror(errno.ENODEV, path)
            f = GuestFile(self, path, port, console=True)
            self.open_files.append(f)
            return f
        port = self.nodes.get(real)
        if port is None:
            raise _oserror(errno.ENOENT, path)
        if port.is_console:
            raise _oserror(errno.ENXIO, path)  # port_fops_open
        if port.guest_connected:
            raise _oserror(errno.EBUSY, path)
        port.guest_connected = True
        pd = port.portdev
        pd.reclaim_consumed_buffers(port)
        pd.send_control(port.id, Event.PORT_OPEN, 1)
        f = GuestFile(self, path, port, console=False)
        self.open_files.append(f)
        self.platform.pump()
        return f

    def release(self, f: GuestFile) -> None:
        if f in self.open_files:
            self.open_files.remove(f)
        port = f.port
        if f.console or port.removed:
            return
        pd = port.portdev
        pd.send_control(port.id, Event.PORT_OPEN, 0)
        port.guest_connected = False
        pd.discard_port_data(port)
        pd.reclaim_consumed_buffers(port)
        self.platform.pump()

    def emergency_write(self, dev_index: int, byte: int) -> None:
        """The early console path: write one byte through emerg_wr."""
        if not self.platform.running:
            raise GuestNotRunning()
        pd = self.portdevs[dev_index]
        pd.dev.write_config(8, int(byte & 0xFF).to_bytes(4, "little"))
        self.platform.pump()
