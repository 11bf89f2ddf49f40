"""The virtio-serial device and its bus (QEMU's hw/char/virtio-serial-bus.c).

Sans-IO: the transport-facing methods (features, config, queues, ``kick``,
``set_status``) and the host-facing ones (plug/unplug, port open/close,
writes) are plain calls.  What the outside world must do in answer -
interrupts, QMP events, error reports - is appended to ``effects``.

Theory of operation, in QEMU's terms:

* Queue 0/1 belong to port 0, 2/3 are control rx/tx, port N>=1 uses
  2N+2 (rx, host->guest) and 2N+3 (tx, guest->host).
* Control messages to the guest consume one control-rx buffer each and are
  dropped when there is none (before DEVICE_READY, or when the guest is
  behind); DEVICE_READY replays PORT_ADD for every port in plug order.
* Guest data is handed to the port type (``have_data``).  A short take
  throttles the port: the popped element stays held with ``iov_idx`` and
  ``iov_offset`` and is only returned to the guest once fully consumed.
* A malformed ring marks the device broken (NEEDS_RESET); nothing is
  processed until the guest resets it.
"""

from __future__ import annotations

import struct
from typing import Protocol

from emulator.core import control, vring
from emulator.core.control import BAD_ID, CONTROL_HEADER, Event
from emulator.core.effects import ConfigInterrupt, Effect, ErrorReport, Interrupt, PortChange
from emulator.core.memory import GuestMemory
from emulator.core.ports import VirtIOSerialPort
from emulator.core.trace import Trace
from emulator.core.virtio import STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET
from emulator.core.virtqueue import Element, VirtQueue
from emulator.errors import ConfigError, GuestError

DATA_QUEUE_SIZE = 128
CONTROL_QUEUE_SIZE = 32
VIRTIO_QUEUE_MAX = 1024
MAX_SUPPORTED_PORTS = VIRTIO_QUEUE_MAX // 2 - 1  # 511
DEFAULT_MAX_PORTS = 31

# Driver names of the bus device -> the type QEMU reports in messages
# ("virtio-serial" is an alias of virtio-serial-pci on PC machines).
TRANSPORT_DRIVERS = {
    "virtio-serial-pci": "virtio-serial-pci",
    "virtio-serial": "virtio-serial-pci",
    "virtio-serial-pci-transitional": "virtio-serial-pci-transitional",
    "virtio-serial-pci-non-transitional": "virtio-serial-pci-non-transitional",
    "virtio-serial-device": "virtio-serial-device",
    "virtio-serial-ccw": "virtio-serial-ccw",
}

_CONFIG = struct.Struct("<HHII")  # cols, rows, max_nr_ports, emerg_wr


class RunStateView(Protocol):
    """Whether the VM runs, as the machine's run state says (QEMU's virtio
    devices follow it through a VM change-state handler)."""

    @property
    def running(self) -> bool: ...


class _AlwaysRunning:
    """A device built alone (tests, tools) runs."""

    running = True


class VirtIOSerial:
    """One virtio-serial device with its bus of up to 511 ports."""

    def __init__(
        self,
        mem: GuestMemory,
        *,
        bus_name: str,
        qdev_id: str | None = None,
        driver: str = "virtio-serial-pci",
        max_ports: int = DEFAULT_MAX_PORTS,
        emergency_write: bool = True,
        trace: Trace | None = None,
        siblings: list[VirtIOSerial] | None = None,
        index: int = 0,
        vm: RunStateView | None = None,
    ) -> None:
        # virtio_serial_device_realize's checks, QEMU's words.
        if not max_ports:
            raise ConfigError("Maximum number of serial ports not specified")
        if max_ports > MAX_SUPPORTED_PORTS:
            raise ConfigError(f"maximum ports supported: {MAX_SUPPORTED_PORTS}")
        self.mem = mem
        self.bus_name = bus_name
        self.qdev_id = qdev_id
        self.driver = driver
        self.index = index  # the guest's virtio device index (vport<index>p<n>)
        self.unplug_pending = False  # device_del asked the guest to let go
        self.transport_props: dict[str, object] = {}  # PCI/virtio transport properties as set
        self.pci_devfn: tuple[int, int] | None = None  # (slot, function) on pci.0
        self.max_ports = max_ports
        self.emergency_write = emergency_write
        self.trace = trace if trace is not None else Trace()
        # All virtio-serial devices of the machine: names are unique across them.
        self.siblings = siblings if siblings is not None else [self]
        self.host_features = (
            (1 << vring.VIRTIO_F_VERSION_1)
            | (1 << vring.VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << vring.VIRTIO_RING_F_EVENT_IDX)
            | ((1 << control.VIRTIO_CONSOLE_F_MULTIPORT) if max_ports > 1 else 0)
            | ((1 << control.VIRTIO_CONSOLE_F_EMERG_WRITE) if emergency_write else 0)
        )
        self.guest_features = 0
        self.status = 0
        self.broken = False
        self.vm: RunStateView = vm if vm is not None else _AlwaysRunning()
        self.cols = 0
        self.rows = 0
        self.queues = [
            VirtQueue(i, CONTROL_QUEUE_SIZE if i in (2, 3) else DATA_QUEUE_SIZE)
            for i in range(2 * max_ports + 2)
        ]
        self.ports: dict[int, VirtIOSerialPort] = {}  # in plug order
        # Bit n set: id n is taken.  Bit 0 is reserved for a console at
        # realize and never released (old guests expect port 0 = console).
        self.ports_map = [0] * ((max_ports + 31) // 32)
        self.ports_map[0] |= 1
        self.effects: list[Effect] = []
        self._interrupts = [Interrupt(i) for i in range(len(self.queues))]  # immutable, shared

    @property
    def vm_running(self) -> bool:
        return self.vm.running

    # ------------------------------------------------------------------ effects
    def emit(self, effect: Effect) -> None:
        self.effects.append(effect)

    def take_effects(self) -> list[Effect]:
        out, self.effects = self.effects, []
        return out

    def error_report(self, message: str) -> None:
        """QEMU's error_report(): the one channel is the ErrorReport effect
        (the machine keeps them in ``error_log``)."""
        self.emit(ErrorReport(message))

    def _notify(self, vq: VirtQueue) -> None:
        if vq.should_notify(self.mem):
            self.effects.append(self._interrupts[vq.index])

    def set_broken(self, message: str) -> None:
        """virtio_error(): report, NEEDS_RESET (virtio 1 only), stop processing."""
        self.error_report(message)
        if self.guest_features & (1 << vring.VIRTIO_F_VERSION_1):
            self.status |= STATUS_NEEDS_RESET
            self.emit(ConfigInterrupt())
        self.broken = True

    def _pop(self, vq: VirtQueue) -> Element | None:
        if self.broken:
            return None
        try:
            return vq.pop(self.mem)
        except GuestError as err:  # RingError or an access outside RAM
            self.set_broken(str(err))
            return None

    # --------------------------------------------------------- transport face
    @property
    def multiport(self) -> bool:
        return bool(self.guest_features & (1 << control.VIRTIO_CONSOLE_F_MULTIPORT))

    def device_features(self) -> int:
        return self.host_features

    def set_driver_features(self, features: int) -> None:
        """virtio_set_features: refused once FEATURES_OK is set."""
        if self.status & STATUS_FEATURES_OK:
            return
        self.guest_features = features & self.host_features
        event_idx = bool(self.guest_features & (1 << vring.VIRTIO_RING_F_EVENT_IDX))
        for vq in self.queues:
            vq.event_idx = event_idx

    @property
    def config_size(self) -> int:
        return 12 if self.host_features & (1 << control.VIRTIO_CONSOLE_F_EMERG_WRITE) else 8

    def read_config(self, offset: int, size: int) -> bytes:
        blob = _CONFIG.pack(self.cols, self.rows, self.max_ports, 0)[: self.config_size]
        if offset < 0 or size < 0 or offset + size > len(blob):
            return b"\xff" * size  # out-of-range config reads float high, as on PCI
        return blob[offset : offset + size]

    def write_config(self, offset: int, data: bytes) -> None:
        """A guest config write of any width (virtio_config_write*): the
        bytes land in the config, then set_config runs.  Only emerg_wr
        matters: non-zero sends its low byte to the first console whose
        host side is connected, and it reads back as zero."""
        size = self.config_size
        if offset < 0 or not data or offset + len(data) > size:
            return  # QEMU ignores writes past the config
        config = bytearray(_CONFIG.pack(self.cols, self.rows, self.max_ports, 0)[:size])
        config[offset : offset + len(data)] = data
        if size < 12 or not self.host_features & (1 << control.VIRTIO_CONSOLE_F_EMERG_WRITE):
            return
        value = int.from_bytes(config[8:12], "little")
        if not value:
            return
        for port in self.ports.values():
            if port.is_console and port.host_connected:
                port.have_data(memoryview(bytes([value & 0xFF])))
                break

    def set_status(self, status: int) -> None:
        if status == 0:
            self.reset()
            return
        if status & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            if self.guest_features & ~self.host_features:
                status &= ~STATUS_FEATURES_OK
        self.status = status | (self.status & STATUS_NEEDS_RESET)
        # virtio-serial's set_status: a guest without MULTIPORT cannot say it
        # opened port 0, so the port counts as open once the driver is up.
        port0 = self.ports.get(0)
        if port0 is not None and not self.multiport and status & STATUS_DRIVER_OK:
            port0.guest_connected = True
        if not status & STATUS_DRIVER_OK:
            self._guest_reset()

    def queue_max_size(self, index: int) -> int:
        return self.queues[index].max_size

    def configure_queue(self, index: int, size: int, desc: int, avail: int, used: int) -> None:
        """The transport's queue registers.  A queue that does not exist or a
        size QEMU's virtio_queue_set_num refuses is ignored; rings outside
        RAM break the device with QEMU's "Cannot map ..." text."""
        if not 0 <= index < len(self.queues):
            return
        vq = self.queues[index]
        if not vring.is_valid_size(size) or size > vq.max_size:
            return
        for what, addr, length in (
            ("desc", desc, vring.desc_table_size(size)),
            ("avail", avail, vring.avail_size(size)),
            ("used", used, vring.used_size(size)),
        ):
            if addr < 0 or addr + length > self.mem.size:
                self.set_broken(f"Cannot map {what}")
                return
        vq.configure(self.mem, size, desc, avail, used)

    def _guest_reset(self) -> None:
        """QEMU's guest_reset: held data dropped, the guest side closed."""
        for port in self.ports.values():
            self._discard_throttle_data(port, push=False)
            if port.guest_connected:
                port.guest_connected = False
                port.set_guest_connected(False)
                self.effects.append(PortChange(port, "guest", False))

    def reset(self) -> None:
        """virtio_reset + vser_reset: the guest side forgets everything.
        ``throttled`` stays, as in QEMU: it follows the host side."""
        self._guest_reset()
        for vq in self.queues:
            vq.reset()
        self.status = 0
        self.guest_features = 0
        self.broken = False

    def kick(self, index: int) -> None:
        """The guest notified queue ``index`` (virtio_queue_notify)."""
        if self.broken or not 0 <= index < len(self.queues):
            return
        if index == 2:
            return  # control_in: nothing to do
        if index == 3:
            self._control_out()
            return
        port = self.ports.get(0 if index < 2 else (index - 2) // 2)
        if index % 2 == 0:
            # handle_input: only a port open on both sides hears about it.
            if port is not None and port.host_connected and port.guest_connected:
                port.guest_writable()
        else:
            self._handle_output(self.queues[index], port)

    # ----------------------------------------------------- guest -> host data
    def _discard_vq_data(self, vq: VirtQueue) -> None:
        if not vq.ready:
            return
        while (elem := self._pop(vq)) is not None:
            vq.push(self.mem, elem, 0)
        self._notify(vq)

    def _handle_output(self, vq: VirtQueue, port: VirtIOSerialPort | None) -> None:
        if port is None or not port.host_connected:
            self._discard_vq_data(vq)
            return
        if not port.throttled:
            self._flush_queued_data(port, vq)

    def _flush_queued_data(self, port: VirtIOSerialPort, vq: VirtQueue | None = None) -> None:
        """do_flush_queued_data: hand guest buffers to the port type, holding
        the element (and where in it we are) when the port throttles."""
        if vq is None:
            vq = self.queues[port.tx_queue]
        if not vq.ready:
            return
        mem = self.mem
        ram = mem.ro
        while True:
            elem = port.elem
            if elem is None:
                if self.broken:
                    break
                try:
                    elem = vq.pop(mem)
                except GuestError as err:
                    self.set_broken(str(err))
                    break
                if elem is None:
                    break
                port.elem = elem
                port.iov_idx = 0
                port.iov_offset = 0
            sg = elem.out_sg
            idx, off, count = port.iov_idx, port.iov_offset, len(sg)
            while idx < count:
                addr, length = sg[idx]
                # pop() checked every buffer against RAM: slice without rechecking.
                taken = port.have_data(ram[addr + off : addr + length])
                if port.elem is not elem:
                    return  # the port was closed or unplugged under us
                if port.throttled:
                    off += taken
                    if off == length:
                        idx += 1
                        off = 0
                    break
                off = 0
                idx += 1
            port.iov_idx, port.iov_offset = idx, off
            if port.throttled:
                break
            vq.push(mem, elem, 0)
            port.elem = None
            if vq.shadow_avail_idx == vq.last_avail_idx and vq.avail_idx(mem) == vq.last_avail_idx:
                break  # ring drained (what the next pop would find)
        self._notify(vq)

    def throttle_port(self, port: VirtIOSerialPort, throttle: bool) -> None:
        """virtio_serial_throttle_port: unthrottling resumes the flush."""
        self.trace("virtio_serial_throttle_port", port=port.id, throttle=int(throttle))
        port.throttled = throttle
        if throttle:
            return
        if port.host_connected and port.device is self:
            self._flush_queued_data(port)

    def _discard_throttle_data(self, port: VirtIOSerialPort, push: bool = True) -> None:
        elem, port.elem = port.elem, None
        port.iov_idx = port.iov_offset = 0
        if elem is not None:
            vq = self.queues[port.tx_queue]
            if push and vq.ready:
                # QEMU detaches the element without returning it, which costs
                # the guest a descriptor chain for good; we hand it back empty.
                vq.push(self.mem, elem, 0)
                self._notify(vq)
            else:
                vq.inuse -= 1

    # ----------------------------------------------------- host -> guest data
    def port_guest_ready(self, port: VirtIOSerialPort) -> int:
        """virtio_serial_guest_ready: bytes the guest can take now."""
        vq = self.queues[port.rx_queue]
        if (
            self.broken
            or not self.vm_running
            or not vq.ready
            or not self.status & STATUS_DRIVER_OK
            or vq.is_empty(self.mem)
        ):
            return 0
        if self.multiport and not port.guest_connected:
            return 0
        try:
            # QEMU asks virtqueue_get_avail_bytes for up to 4096 bytes.
            return vq.in_bytes_available(self.mem, 4096)
        except GuestError as err:
            self.set_broken(str(err))
            return 0

    def port_write(self, port: VirtIOSerialPort, data: bytes | memoryview) -> int:
        """virtio_serial_write: copy into the guest's rx buffers; returns the
        bytes taken (the chardev keeps the rest)."""
        if not port.host_connected or not port.guest_connected or not self.vm_running or self.broken:
            return 0
        vq = self.queues[port.rx_queue]
        if not vq.ready or not data or not self.status & STATUS_DRIVER_OK:
            return 0
        mem = self.mem
        size = len(data)
        offset = 0
        mv = memoryview(data)
        while offset < size:
            elem = self._pop(vq)
            if elem is None:
                break
            written = 0
            for addr, length in elem.in_sg:
                n = min(length, size - offset)
                mem.write(addr, mv[offset : offset + n])
                offset += n
                written += n
                if offset == size:
                    break
            vq.push(mem, elem, written)
        self._notify(vq)
        return offset

    # ------------------------------------------------------ host open / close
    def port_host_open(self, port: VirtIOSerialPort) -> None:
        """virtio_serial_open."""
        if port.host_connected:
            return
        port.host_connected = True
        self.send_control_event(port.id, Event.PORT_OPEN, 1)
        self.effects.append(PortChange(port, "host", True))

    def port_host_close(self, port: VirtIOSerialPort) -> None:
        """virtio_serial_close: drop what the host did not take."""
        port.host_connected = False
        port.throttled = False
        self._discard_throttle_data(port)
        self._discard_vq_data(self.queues[port.tx_queue])
        self.send_control_event(port.id, Event.PORT_OPEN, 0)
        self.effects.append(PortChange(port, "host", False))

    # ---------------------------------------------------------- control path
    def send_control_message(self, payload: bytes) -> bool:
        """send_control_msg: one control-rx buffer or the message is lost."""
        vq = self.queues[2]
        if not vq.ready:
            return False
        elem = self._pop(vq)
        if elem is None:
            return False
        offset = 0
        for addr, length in elem.in_sg:
            n = min(length, len(payload) - offset)
            if n <= 0:
                break
            self.mem.write(addr, payload[offset : offset + n])
            offset += n
        # QEMU pushes the full length even when the buffer was short.
        vq.push(self.mem, elem, len(payload))
        self._notify(vq)
        return True

    def send_control_event(self, port_id: int, event: int, value: int) -> bool:
        self.trace("virtio_serial_send_control_event", port=port_id, event=int(event), value=value)
        return self.send_control_message(CONTROL_HEADER.pack(port_id, event, value))

    def _control_out(self) -> None:
        vq = self.queues[3]
        if not vq.ready:
            return
        while (elem := self._pop(vq)) is not None:
            header = bytearray()
            for addr, length in elem.out_sg:
                need = 8 - len(header)
                if need <= 0:
                    break
                header += self.mem.read(addr, min(length, need))
            vq.push(self.mem, elem, 0)
            self._handle_control_message(bytes(header))
            if self.broken:
                break
        self._notify(vq)

    def _handle_control_message(self, buf: bytes) -> None:
        if len(buf) < CONTROL_HEADER.size:
            return  # QEMU: an invalid control packet is ignored
        port_id, event, value = CONTROL_HEADER.unpack_from(buf)
        self.trace("virtio_serial_handle_control_message", event=event, value=value)
        if event == Event.DEVICE_READY:
            if not value:
                self.error_report(f"virtio-serial-bus: Guest failure in adding device {self.bus_name}")
                return
            for plugged in list(self.ports.values()):
                self.send_control_event(plugged.id, Event.PORT_ADD, 1)
            return
        port = self.ports.get(port_id)
        if port is None:
            self.error_report(
                f"virtio-serial-bus: Unexpected port id {port_id} for device {self.bus_name}"
            )
            return
        self.trace("virtio_serial_handle_control_message_port", port=port.id)
        if event == Event.PORT_READY:
            if not value:
                self.error_report(
                    f"virtio-serial-bus: Guest failure in adding port {port.id} for device {self.bus_name}"
                )
                return
            if port.is_console:
                self.send_control_event(port.id, Event.CONSOLE_PORT, 1)
            if port.name is not None:
                # Built by hand in QEMU, so it is not traced; NUL-terminated.
                self.send_control_message(
                    CONTROL_HEADER.pack(port.id, Event.PORT_NAME, 1) + port.name.encode() + b"\0"
                )
            if port.host_connected:
                self.send_control_event(port.id, Event.PORT_OPEN, 1)
            port.guest_ready()
        elif event == Event.PORT_OPEN:
            port.guest_connected = bool(value)
            port.set_guest_connected(bool(value))
            self.effects.append(PortChange(port, "guest", bool(value)))

    # ------------------------------------------------------- plug and unplug
    def find_port_by_name(self, name: str) -> VirtIOSerialPort | None:
        for dev in self.siblings:
            for port in dev.ports.values():
                if port.name == name:
                    return port
        return None

    def _id_taken(self, port_id: int) -> bool:
        return bool(self.ports_map[port_id // 32] & (1 << (port_id % 32)))

    def find_free_port_id(self) -> int:
        """QEMU scans whole 32-bit words of the map, so on a device whose
        max_ports is not a multiple of 32 a full device yields an id past
        the end (reported as out of range) rather than BAD_ID."""
        for i, word in enumerate(self.ports_map):
            inverted = ~word & 0xFFFFFFFF
            if inverted:
                return i * 32 + ((inverted & -inverted).bit_length() - 1)
        return BAD_ID

    def plug(self, port: VirtIOSerialPort) -> None:
        """virtser_port_device_realize + plug: validate in QEMU's order, then
        realize the port type and announce it with PORT_ADD."""
        nr = port.requested_nr
        if nr != BAD_ID and nr in self.ports:
            raise ConfigError(f"virtio-serial-bus: A port already exists at id {nr}")
        if port.name is not None and self.find_port_by_name(port.name) is not None:
            raise ConfigError(f"virtio-serial-bus: A port already exists by name {port.name}")
        if nr == BAD_ID:
            if port.is_console and 0 not in self.ports:
                nr = 0
            else:
                nr = self.find_free_port_id()
                if nr == BAD_ID:
                    raise ConfigError("virtio-serial-bus: Maximum port limit for this device reached")
        if nr >= self.max_ports:
            raise ConfigError(
                f"virtio-serial-bus: Out-of-range port id specified, max. allowed: {self.max_ports - 1}"
            )
        if nr == 0 and not port.is_console:
            raise ConfigError(
                "Port number 0 on virtio-serial devices reserved for virtconsole devices "
                "for backward compatibility."
            )
        port.id = nr
        port.device = self
        try:
            port.realize()
        except BaseException:
            port.device = None
            port.id = port.requested_nr
            raise
        self.ports[nr] = port
        self.ports_map[nr // 32] |= 1 << (nr % 32)
        self.send_control_event(nr, Event.PORT_ADD, 1)

    def unplug(self, port: VirtIOSerialPort) -> None:
        """virtser_port_device_unrealize: PORT_REMOVE, then the type's unrealize."""
        if self.ports.get(port.id) is not port:
            raise ConfigError(f"port {port.id} is not on bus {self.bus_name}")
        if port.id:
            self.ports_map[port.id // 32] &= ~(1 << (port.id % 32))
        self._discard_throttle_data(port)
        self._discard_vq_data(self.queues[port.tx_queue])
        self.send_control_event(port.id, Event.PORT_REMOVE, 1)
        del self.ports[port.id]
        port.unrealize()
        port.device = None

    # --------------------------------------------------------------- queries
    def describe(self) -> dict[str, object]:
        return {
            "id": self.qdev_id,
            "driver": self.driver,
            "bus": self.bus_name,
            "max_ports": self.max_ports,
            "emergency-write": self.emergency_write,
            "status": self.status,
            "broken": self.broken,
            "ports": [p.describe() for p in self.ports.values()],
        }

