"""The built-in plugin: virtconsole, virtserialport and the chardev backends.

Registered through the same hooks a third-party plugin uses.
"""

from __future__ import annotations

from emulator.core.ports import VirtConsole, VirtIOSerialPort, VirtSerialPort
from emulator.io.backend import Backend
from emulator.io.builtin_backends import BUILTIN_BACKENDS
from emulator.plugin.hookspecs import hookimpl


@hookimpl
def vserial_port_types() -> list[type[VirtIOSerialPort]]:
    return [VirtConsole, VirtSerialPort]


@hookimpl
def vserial_chardev_backends() -> list[Backend]:
    return list(BUILTIN_BACKENDS)
