"""Building the plugin manager and the registries it yields.

``make_plugin_manager()`` registers the hook specs, the built-in plugin,
every ``vserial`` entry point (unless ``VSERIAL_DISABLE_PLUGIN_AUTOLOAD`` is
set to a non-empty value), the modules named in ``VSERIAL_PLUGINS``
(comma-separated import paths) and any plugin objects passed in; then it
rejects misspelt hook implementations and builds the registries.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from emulator.core.ports import VirtIOSerialPort
from emulator.errors import PluginError
from emulator.io.backend import Backend
from emulator.machine.machine import Machine
from emulator.plugin import builtin, hookspecs

ENTRY_POINT_GROUP = "vserial"
AUTOLOAD_ENV = "VSERIAL_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "VSERIAL_PLUGINS"


class Plugins:
    """A pluggy manager plus the registries collected from it."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.hook = pm.hook
        self.port_types: dict[str, type[VirtIOSerialPort]] = {}
        self.backends: dict[str, Backend] = {}
        self.qmp_commands: dict[str, Callable[..., Any]] = {}
        self._collect()

    def _collect(self) -> None:
        for plugin_name, types in self._each("vserial_port_types"):
            for cls in types or []:
                if not (isinstance(cls, type) and issubclass(cls, VirtIOSerialPort)):
                    raise PluginError(f"plugin '{plugin_name}': vserial_port_types returned {cls!r}, not a port type")
                if cls.driver in self.port_types:
                    raise PluginError(f"plugin '{plugin_name}': port type '{cls.driver}' is already registered")
                self.port_types[cls.driver] = cls
        for plugin_name, backends in self._each("vserial_chardev_backends"):
            for backend in backends or []:
                if not isinstance(backend, Backend):
                    raise PluginError(
                        f"plugin '{plugin_name}': vserial_chardev_backends returned {backend!r}, not a Backend"
                    )
                for name in (backend.name, *backend.aliases):
                    if name in self.backends:
                        raise PluginError(f"plugin '{plugin_name}': chardev backend '{name}' is already registered")
                    self.backends[name] = backend
        for plugin_name, commands in self._each("vserial_qmp_commands"):
            for name, handler in (commands or {}).items():
                if name in self.qmp_commands:
                    raise PluginError(f"plugin '{plugin_name}': QMP command '{name}' is already registered")
                self.qmp_commands[name] = handler

    def _each(self, hook_name: str) -> Iterable[tuple[str, Any]]:
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order (pluggy calls LIFO)
            result = impl.function()
            want: tuple[type, ...] = (dict,) if hook_name == "vserial_qmp_commands" else (list, tuple)
            if result is not None and not isinstance(result, want):
                kind = "dict" if want == (dict,) else "list"
                raise PluginError(f"plugin '{impl.plugin_name}': {hook_name} returned {result!r}, not a {kind}")
            yield impl.plugin_name, result

    def port_type(self, driver: str) -> type[VirtIOSerialPort] | None:
        cls = self.port_types.get(driver)
        if cls is None:
            cls = self.pm.hook.vserial_port_type_for(driver=driver)
            if cls is not None and not (isinstance(cls, type) and issubclass(cls, VirtIOSerialPort)):
                raise PluginError(f"vserial_port_type_for('{driver}') returned {cls!r}, not a port type")
        return cls

    # -- the machine's hooks (emulator.machine.machine.MachineHooks) ------------
    def machine_created(self, machine: Machine) -> None:
        self.hook.vserial_machine_created(machine=machine)

    def port_plugged(self, machine: Machine, port: VirtIOSerialPort) -> None:
        self.hook.vserial_port_plugged(machine=machine, port=port)

    def port_unplugged(self, machine: Machine, port: VirtIOSerialPort) -> None:
        self.hook.vserial_port_unplugged(machine=machine, port=port)

    def guest_open(self, machine: Machine, port: VirtIOSerialPort, opened: bool) -> None:
        self.hook.vserial_guest_open(machine=machine, port=port, opened=opened)

    def host_connection(self, machine: Machine, port: VirtIOSerialPort, connected: bool) -> None:
        self.hook.vserial_host_connection(machine=machine, port=port, connected=connected)

    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]


def _check(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("vserial_")))
        raise PluginError(f"{err}; the vserial hooks are: {known}") from None


def make_plugin_manager(plugins: Iterable[object] = (), *, autoload: bool | None = None) -> Plugins:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="vserial.builtin")
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    try:
        if autoload:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for modname in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
            try:
                module = importlib.import_module(modname)
            except ImportError as err:
                raise PluginError(f"{PLUGINS_ENV}: cannot import plugin module '{modname}': {err}") from None
            if pm.get_plugin(modname) is None and not pm.is_registered(module):
                pm.register(module, name=modname)
        for plugin in plugins:
            pm.register(plugin)
    except pluggy.PluginValidationError as err:
        raise PluginError(str(err)) from None
    _check(pm)
    return Plugins(pm)


_default: Plugins | None = None


def default_plugins() -> Plugins:
    """The process-wide plugin manager (built on first use)."""
    global _default
    if _default is None:
        _default = make_plugin_manager()
    return _default
