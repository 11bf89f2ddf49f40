"""The promise to plugin authors: everything a vserial plugin needs, in one import.

A third-party plugin (a port type, a chardev backend, a QMP command, a
notification hook) imports from this module and from nowhere else in
``emulator``.  The names below keep their meaning across vserial releases;
the modules they come from are free to move (the layers under ``emulator/``
are an implementation detail).  ``plugins/vserial-echo`` is a complete
distribution written against this module alone, and a test holds it to that.

* ``hookimpl`` marks a hook implementation; the hooks and what they are
  given are in ``emulator/plugin/hookspecs.py`` and ``docs/plugins.md``.
* ``VirtIOSerialPort`` is the base of every port type; ``VirtConsoleBase``
  adds the ``chardev`` property and is what most port types subclass.
* ``Chardev`` is the host-side contract a chardev backend builds, and
  ``Backend`` the ``-chardev`` kind that builds it; ``convert`` parses a
  string option as QEMU does ("bool", "uint32", ...).
* ``Machine`` is what the notification hooks are handed; a QMP command
  handler is handed the runtime, whose ``machine`` attribute is one.  (The
  runtime itself is a layer above this one and is not exported.)
* ``QmpEvent`` is the effect a port emits (``self.device.emit``) to send a
  QMP event.
* ``ConfigError`` refuses a device or an option (the message is QEMU's),
  ``QMPError`` fails a QMP command, ``PluginError`` is what a malformed
  plugin gets.
"""

from __future__ import annotations

from emulator.core.chardev import Chardev
from emulator.core.effects import QmpEvent
from emulator.core.ports import VirtConsoleBase, VirtIOSerialPort
from emulator.errors import ConfigError, PluginError, QMPError
from emulator.io.backend import Backend
from emulator.machine.machine import Machine
from emulator.machine.qdev import convert
from emulator.plugin.hookspecs import hookimpl

__all__ = [
    "Backend",
    "Chardev",
    "ConfigError",
    "Machine",
    "PluginError",
    "QMPError",
    "QmpEvent",
    "VirtConsoleBase",
    "VirtIOSerialPort",
    "convert",
    "hookimpl",
]
