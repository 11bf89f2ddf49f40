"""A bare virtio driver for device-level tests: real rings, no policy.

Unlike the simulated Linux guest it answers nothing by itself, so a test
sends exactly the control messages it means to and reads back exactly what
the device put in the control rx ring.
"""

from __future__ import annotations

from emulator.core import control, vring
from emulator.core.control import CONTROL_HEADER, ControlMessage
from emulator.core.device import VirtIOSerial
from emulator.core.virtio import STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK
from emulator.guest.driver_queue import DriverQueue
from emulator.guest.kmalloc import Kmalloc
from emulator.core.memory import GuestMemory, MiB


class RawDriver:
    def __init__(self, dev: VirtIOSerial, *, event_idx: bool = True) -> None:
        self.dev = dev
        self.mem: GuestMemory = dev.mem
        self.kmalloc = Kmalloc(1 * MiB, dev.mem.size)
        self.queues: dict[int, DriverQueue] = {}
        self.event_idx = event_idx

    def negotiate(self, features: int | None = None) -> int:
        dev = self.dev
        dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        if features is None:
            features = dev.device_features()
            if not self.event_idx:
                features &= ~(1 << vring.VIRTIO_RING_F_EVENT_IDX)
        dev.set_driver_features(features)
        dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        return features

    def queue(self, index: int) -> DriverQueue:
        q = self.queues.get(index)
        if q is None:
            num = self.dev.queues[index].max_size
            q = DriverQueue(self.mem, self.kmalloc, index, num, self.event_idx)
            self.dev.configure_queue(index, num, q.desc, q.avail, q.used)
            self.queues[index] = q
        return q

    def driver_ok(self) -> None:
        self.dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)

    def post_rx(self, index: int, count: int, size: int = 4096) -> list[int]:
        q = self.queue(index)
        addrs = []
        for _ in range(count):
            addr = self.kmalloc.alloc(size)
            q.add(self.mem, [], [(addr, size)], (addr, size))
            addrs.append(addr)
        self.dev.kick(index)
        return addrs

    def send(self, msg: ControlMessage | bytes) -> None:
        data = msg.encode() if isinstance(msg, ControlMessage) else msg
        q = self.queue(3)
        addr = self.kmalloc.alloc(max(len(data), 1))
        self.mem.write(addr, data)
        q.add(self.mem, [(addr, len(data))], [], addr)
        self.dev.kick(3)
        got = q.get_buf(self.mem)
        assert got is not None, "the device did not consume the control message"
        self.kmalloc.free(addr)

    def control(self, event: int, value: int, port_id: int = 0) -> None:
        self.send(ControlMessage(port_id, event, value))

    def received(self) -> list[ControlMessage]:
        """Control messages the device wrote into our control rx buffers."""
        q = self.queue(2)
        out = []
        while (got := q.get_buf(self.mem)) is not None:
            (addr, size), length = got
            out.append(ControlMessage.decode(self.mem.read(addr, min(size, length))))
        return out

    def write(self, port_id: int, data: bytes) -> None:
        index = 1 if port_id == 0 else 2 * port_id + 3
        q = self.queue(index)
        addr = self.kmalloc.alloc(len(data))
        self.mem.write(addr, data)
        q.add(self.mem, [(addr, len(data))], [], addr)
        self.dev.kick(index)

    def used_count(self, index: int) -> int:
        return self.mem.read_u16(self.queue(index).used + 2)

    def read_rx(self, port_id: int) -> bytes:
        index = 0 if port_id == 0 else 2 * port_id + 2
        q = self.queue(index)
        out = bytearray()
        while (got := q.get_buf(self.mem)) is not None:
            (addr, size), length = got
            out += self.mem.read(addr, length)
        return bytes(out)


def ready_device(dev: VirtIOSerial, rx_buffers: int = 32) -> RawDriver:
    """Negotiate, set up the control queues with buffers, DRIVER_OK."""
    drv = RawDriver(dev)
    drv.negotiate()
    drv.queue(3)
    drv.post_rx(2, rx_buffers)
    drv.driver_ok()
    return drv


MULTIPORT = 1 << control.VIRTIO_CONSOLE_F_MULTIPORT
EMERG_WRITE = 1 << control.VIRTIO_CONSOLE_F_EMERG_WRITE
SIZE = 1 << control.VIRTIO_CONSOLE_F_SIZE
HEADER = CONTROL_HEADER
