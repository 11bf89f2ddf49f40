"""vserial-echo: a port type that is its own host program.

* port type ``x-echoport``: a serial port that is host-open from realize on
  and echoes everything the guest writes back to the guest, each write
  preceded by its ``prefix`` property.  What the guest cannot take yet (port
  closed, receive ring full) waits in ``pending`` and goes out when the guest
  adds buffers or reopens the port.
* QMP command ``x-echo-stats``: bytes echoed, per port and in total.

Installed, it loads through the ``vserial`` entry point; otherwise name it in
``VSERIAL_PLUGINS=vserial_echo`` or pass the module to ``make_plugin_manager``.
It uses vserial through ``emulator.plugin.api`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from emulator.plugin.api import Machine, QMPError, VirtConsoleBase, VirtIOSerialPort, hookimpl

__all__ = ["EchoPort", "echo_stats"]


class EchoPort(VirtConsoleBase):
    driver = "x-echoport"
    is_console = False
    extra_properties: ClassVar[dict[str, str]] = {"prefix": "str"}
    prefix = ""  # the default of the "prefix" property

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pending = bytearray()  # echo the guest has not taken yet
        self.echoed = 0  # bytes delivered to the guest

    def realize(self) -> None:
        super().realize()  # attaches a chardev if one was given
        assert self.device is not None
        self.device.port_host_open(self)  # the echo is the host program

    def have_data(self, data: memoryview) -> int:
        self.pending += self.prefix.encode()
        self.pending += data
        self.flush()
        return len(data)  # never throttles: the echo is buffered here

    def flush(self) -> None:
        if self.device is None or not self.guest_connected or not self.pending:
            return
        with memoryview(self.pending) as view:  # released before the buffer shrinks
            n = self.device.port_write(self, view)
        del self.pending[:n]
        self.echoed += n

    def set_guest_connected(self, connected: bool) -> None:
        super().set_guest_connected(connected)
        if connected:
            self.flush()

    def guest_writable(self) -> None:
        super().guest_writable()
        self.flush()


class Runtime(Protocol):
    """What a QMP command handler is handed (vserial's runtime), as far as
    ``x-echo-stats`` uses it."""

    @property
    def machine(self) -> Machine: ...


def echo_stats(runtime: Runtime, id: str | None = None) -> dict[str, Any]:
    """``x-echo-stats [id]``: {"echoed": N, "pending": M} for one port, or
    {"echoed": total, "ports": {qom path or id: N}} for all."""
    machine = runtime.machine
    if id is not None:
        port = machine.find_device(id)
        if not isinstance(port, EchoPort):
            raise QMPError(f"Device '{id}' not found", "DeviceNotFound")
        return {"echoed": port.echoed, "pending": len(port.pending)}
    ports = [p for dev in machine.devices for p in dev.ports.values() if isinstance(p, EchoPort)]
    return {
        "echoed": sum(p.echoed for p in ports),
        "ports": {p.qdev_id or machine.qom_path(p): p.echoed for p in ports},
    }


@hookimpl
def vserial_port_types() -> list[type[VirtIOSerialPort]]:
    return [EchoPort]


@hookimpl
def vserial_qmp_commands() -> dict[str, Callable[..., Any]]:
    return {"x-echo-stats": echo_stats}
