"""The vserial plugin hooks (pluggy project name ``vserial``).

Port types and chardev backends are plugins: the built-in ones live in
``emulator.plugin.builtin`` and are registered through these very hooks, and a
third-party package registers its own through the ``vserial`` entry-point
group::

    [project.entry-points.vserial]
    myports = "myports.plugin"

A plugin is any object or module with functions named after the hooks
below, marked with ``@emulator.plugin.hookspecs.hookimpl``.  A function whose name
starts with ``vserial_`` but matches no hook is rejected when the plugin
manager is built (``check_pending``), so a typo fails loudly instead of
silently never running.

Two kinds of hook:

* **registries** (``vserial_port_types``, ``vserial_chardev_backends``,
  ``vserial_qmp_commands``) are called once, when a plugin manager is built;
  every plugin's answer is collected.  A name claimed twice is an error.
* **notifications** (``vserial_machine_created`` and the port hooks) are
  called synchronously from the machine's event processing; their return
  values are ignored, and they must not block.

``vserial_port_type_for`` is ``firstresult``: the first plugin that
answers decides, so a plugin can claim a whole family of driver names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from emulator.core.ports import VirtIOSerialPort
    from emulator.io.backend import Backend
    from emulator.machine.machine import Machine

PROJECT = "vserial"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vserial_port_types() -> list[type[VirtIOSerialPort]]:  # type: ignore[empty-body]
    """Return the port types this plugin provides.

    Called once per plugin manager.  Each entry is a subclass of
    ``emulator.core.ports.VirtIOSerialPort`` (usually of ``VirtConsoleBase``);
    its ``driver`` class attribute is the ``-device`` driver name, its
    ``extra_properties`` the ``-device`` properties it adds (name -> kind:
    "str", "bool", "uint8/16/32/64"), and its hooks (``have_data``,
    ``set_guest_connected``, ``guest_ready``, ``guest_writable``,
    ``realize``, ``unrealize``) its behaviour.  Two plugins that return the
    same driver name make the plugin manager fail.
    """


@hookspec(firstresult=True)
def vserial_port_type_for(driver: str) -> type[VirtIOSerialPort] | None:
    """Return the port type for ``driver`` if this plugin implements it
    dynamically (a name not listed by ``vserial_port_types``), else None.

    Called by ``device_add`` for a driver name no registered port type has;
    the first non-None answer wins.
    """


@hookspec
def vserial_chardev_backends() -> list[Backend]:  # type: ignore[empty-body]
    """Return the ``-chardev`` backends this plugin provides.

    Called once per plugin manager.  Each entry is an
    ``emulator.io.backend.Backend``: ``name`` (and ``aliases``) is the
    ``-chardev`` kind and the QMP ``chardev-add`` backend type, ``options``
    its option names, ``create(id, opts)`` builds the ``Chardev`` and
    ``qmp_to_opts(data)`` maps a QMP backend ``data`` object to the same
    options.  A name claimed twice is an error.
    """


@hookspec
def vserial_qmp_commands() -> dict[str, Callable[..., Any]]:  # type: ignore[empty-body]
    """Return extra QMP commands: name -> handler.

    Called once per plugin manager.  A handler is called as
    ``handler(runtime, **arguments)`` and returns the JSON-able ``return``
    value; it raises ``emulator.errors.QMPError`` (or ``ConfigError``, which
    becomes ``GenericError``) to fail.  Names should start with ``x-`` as
    QEMU's unstable commands do.  A name claimed twice is an error.
    """


@hookspec
def vserial_machine_created(machine: Machine) -> None:
    """A machine was created (before any device); return value ignored."""


@hookspec
def vserial_port_plugged(machine: Machine, port: VirtIOSerialPort) -> None:
    """``port`` was realized on its bus and PORT_ADD was sent (cold or hot
    plug); ``port.id`` is its final number."""


@hookspec
def vserial_port_unplugged(machine: Machine, port: VirtIOSerialPort) -> None:
    """``port`` was unplugged (PORT_REMOVE sent); it no longer has a bus."""


@hookspec
def vserial_guest_open(machine: Machine, port: VirtIOSerialPort, opened: bool) -> None:
    """The guest opened (``opened=True``) or closed the port: the guest's
    PORT_OPEN control message, or a guest reset closing it."""


@hookspec
def vserial_host_connection(machine: Machine, port: VirtIOSerialPort, connected: bool) -> None:
    """The host side of the port connected or disconnected (a socket
    client came or went; PORT_OPEN was sent to the guest)."""
