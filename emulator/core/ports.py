"""Port types on the virtio-serial bus (QEMU's hw/char/virtio-console.c).

``VirtIOSerialPort`` carries the bus-level state of a port (QEMU's
VirtIOSerialPort): id, name, both open flags, throttling and the element
held while throttled.  The hooks a port type may override are QEMU's
VirtIOSerialPortClass callbacks.  ``VirtConsole`` and ``VirtSerialPort`` are
the two built-in types; they differ only where QEMU's ``is_console`` makes
them differ:

* a console with a chardev is host-open from realize on and ignores the
  chardev's open/close; a serial port follows the chardev's connection;
* a console drops what its chardev cannot take; a serial port throttles;
* a serial port tells its chardev when the guest opens or closes it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from emulator.core.chardev import Chardev
from emulator.core.control import BAD_ID
from emulator.core.effects import Effect, QmpEvent
from emulator.core.virtqueue import Element
from emulator.errors import ConfigError


class PortBus(Protocol):
    """What a port asks of the bus it is plugged into: QEMU's port code
    calls virtio_serial_open/close, virtio_serial_throttle_port,
    virtio_serial_write and virtio_serial_guest_ready on its VirtIOSerial.
    The device implements it; a port never sees the device's internals."""

    def port_host_open(self, port: VirtIOSerialPort) -> None: ...

    def port_host_close(self, port: VirtIOSerialPort) -> None: ...

    def throttle_port(self, port: VirtIOSerialPort, throttle: bool) -> None: ...

    def port_guest_ready(self, port: VirtIOSerialPort) -> int: ...

    def port_write(self, port: VirtIOSerialPort, data: bytes | memoryview) -> int: ...

    def emit(self, effect: Effect) -> None: ...


class VirtIOSerialPort:
    """Bus-level state of one port plus the port-type hooks."""

    driver: ClassVar[str] = "virtio-serial-port"
    is_console: ClassVar[bool] = False
    # Extra ``-device`` properties a port type accepts: name -> kind
    # ("str", "uint32", "bool"); the defaults are the attribute values.
    extra_properties: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        *,
        qdev_id: str | None = None,
        nr: int = BAD_ID,
        name: str | None = None,
        chardev: Chardev | None = None,
        **extra: Any,
    ) -> None:
        self.qdev_id = qdev_id
        self.requested_nr = nr
        self.name = name
        self.chardev = chardev
        for key, value in extra.items():
            if key not in self.extra_properties:
                raise ConfigError(f"Property '{self.driver}.{key}' not found")
            setattr(self, key.replace("-", "_"), value)
        self.device: PortBus | None = None  # the bus while plugged
        self.id = nr
        self.guest_connected = False
        self.host_connected = False
        self.throttled = False
        self.elem: Element | None = None
        self.iov_idx = 0
        self.iov_offset = 0

    # -- identity ----------------------------------------------------------------
    @property
    def rx_queue(self) -> int:
        """Host -> guest queue index (QEMU's ivq)."""
        return 0 if self.id == 0 else 2 * self.id + 2

    @property
    def tx_queue(self) -> int:
        """Guest -> host queue index (QEMU's ovq)."""
        return 1 if self.id == 0 else 2 * self.id + 3

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.qdev_id,
            "driver": self.driver,
            "nr": self.id,
            "name": self.name,
            "chardev": self.chardev.id if self.chardev else None,
            "guest-connected": self.guest_connected,
            "host-connected": self.host_connected,
            "throttled": self.throttled,
        }

    # -- port-type hooks (VirtIOSerialPortClass) --------------------------------
    def realize(self) -> None:
        """Called once the id is settled, before PORT_ADD; may raise ConfigError."""

    def unrealize(self) -> None:
        """Called after PORT_REMOVE."""

    def have_data(self, data: memoryview) -> int:
        """Guest wrote ``data``; return how many bytes were taken.  A short
        count leaves the rest in the guest's buffer (see ``throttle``)."""
        return len(data)

    def set_guest_connected(self, connected: bool) -> None:
        """The guest opened or closed the port (PORT_OPEN from the guest)."""

    def guest_ready(self) -> None:
        """The guest finished PORT_READY for this port."""

    def guest_writable(self) -> None:
        """The guest added receive buffers."""


class VirtConsoleBase(VirtIOSerialPort):
    """hw/char/virtio-console.c: a port backed by a chardev."""

    def realize(self) -> None:
        chr_ = self.chardev
        if chr_ is None:
            return
        if chr_.in_use:
            raise ConfigError(
                f"Property '{self.driver}.chardev' can't take value '{chr_.id}': "
                f"Device '{chr_.id}' is in use"
            )
        chr_.attach(self)
        if self.is_console:
            chr_.set_fe_open(True)  # qemu_chr_fe_set_open: consoles are open at once
            # Consoles never block on a missing reader: open from realize on.
            assert self.device is not None
            self.device.port_host_open(self)
        elif chr_.be_open:
            # qemu_chr_fe_set_handlers replays OPENED for an open backend.
            self.chr_event(True)

    def unrealize(self) -> None:
        if self.chardev is not None:
            self.chardev.detach()

    def have_data(self, data: memoryview) -> int:
        if self.chardev is None:
            return len(data)
        taken = self.chardev.write(data)
        if taken < 0:
            taken = 0
        if taken < len(data) and not self.is_console:
            assert self.device is not None
            self.device.throttle_port(self, True)
        return taken

    def set_guest_connected(self, connected: bool) -> None:
        if not self.is_console and self.chardev is not None:
            self.chardev.set_fe_open(connected)
        if self.qdev_id is not None and self.device is not None:
            self.device.emit(QmpEvent("VSERPORT_CHANGE", {"id": self.qdev_id, "open": connected}))
        if connected and self.chardev is not None:
            # QEMU's main loop polls chr_can_read on every iteration, so host
            # data that waited for the guest to open the port now flows;
            # a sans-IO backend has to be told.
            self.chardev.accept_input()

    def guest_writable(self) -> None:
        if self.chardev is not None:
            self.chardev.accept_input()

    # -- ChardevFrontend ---------------------------------------------------------
    def chr_can_read(self) -> int:
        assert self.device is not None
        return self.device.port_guest_ready(self)

    def chr_read(self, data: bytes | memoryview) -> int:
        if self.device is None:
            return 0
        return self.device.port_write(self, data)

    def chr_event(self, opened: bool) -> None:
        if self.is_console or self.device is None:
            return
        if opened:
            self.device.port_host_open(self)
        else:
            self.device.port_host_close(self)

    def chr_write_unblocked(self) -> None:
        if self.device is not None and self.throttled:
            self.device.throttle_port(self, False)


class VirtConsole(VirtConsoleBase):
    driver = "virtconsole"
    is_console = True


class VirtSerialPort(VirtConsoleBase):
    driver = "virtserialport"
    is_console = False
