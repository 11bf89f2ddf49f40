"""The QMP commands of ``vserial run``: their table and their handlers.

``QmpCommands`` is the part of ``Runtime`` that answers the monitor: one
``qmp_*`` method per command (QEMU's name, with ``-`` as ``_``), registered
with the argument spec QEMU's QAPI schema gives it, then every plugin's
commands, which get the runtime as their first argument.  Errors are
``QMPError`` with QEMU's class and text; the handlers run the machine only
through the runtime's methods.
"""

from __future__ import annotations

import base64
import inspect
import time
import typing
from collections.abc import Callable
from typing import Any

from emulator.core.chardev import Chardev
from emulator.core.ports import VirtIOSerialPort
from emulator.errors import ConfigError, PluginError, QMPError
from emulator.io.char_ringbuf import RingbufChardev
from emulator.io.mainloop import MainLoop
from emulator.machine import qdev
from emulator.machine.machine import Machine
from emulator.machine.runstate import RunState
from emulator.plugin.manager import Plugins
from emulator.runtime import hmp
from emulator.runtime.agent import GuestAgent
from emulator.runtime.monitor import Monitor
from emulator.runtime.qmp import QEMU_VERSION, qbase64_decode
from emulator.snapshot.info_snapshots import render_info_snapshots
from emulator.snapshot.store import SnapshotError, SnapshotStore
from emulator.state.machine import LoadError


_QAPI_KINDS: dict[object, str] = {str: "str", int: "int", bool: "bool", dict: "object", list: "array"}


def plugin_arg_spec(handler: Callable[..., Any]) -> dict[str, tuple[str, bool]]:
    """A plugin command's QAPI argument spec, read from its signature: the
    parameters after the runtime, required unless they have a default,
    typed by their annotation (``str``, ``int``, ``bool``, ``dict``,
    ``list``, optionally ``| None``; anything else is taken as is).  The
    monitor then answers a missing, unexpected or mistyped argument with
    QEMU's messages before the plugin runs."""
    sig = inspect.signature(handler)
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # an annotation the plugin's module cannot resolve
        hints = {}
    spec: dict[str, tuple[str, bool]] = {}
    for param in list(sig.parameters.values())[1:]:
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise PluginError(f"QMP command handler {handler.__qualname__}: parameter '{param.name}' must be named")
        kinds = [a for a in typing.get_args(hints.get(param.name)) if a is not type(None)] or [hints.get(param.name)]
        kind = _QAPI_KINDS.get(typing.get_origin(kinds[0]) or kinds[0], "any") if len(kinds) == 1 else "any"
        spec[param.name] = (kind, param.default is param.empty)
    return spec


class QmpCommands:
    """The command handlers; ``Runtime`` provides what is declared here."""

    machine: Machine
    monitor: Monitor
    plugins: Plugins
    loop: MainLoop
    agent: GuestAgent
    name: str | None
    uuid: str | None
    shutdown_reason: str | None
    stop: Callable[[], None]
    cont: Callable[[], None]
    system_reset: Callable[[], None]
    chardev_new: Callable[..., Chardev]
    chardev_remove: Callable[[str], None]
    _deferring: Callable[[Any], Any]
    snapshots: SnapshotStore
    save_snapshot: Callable[[str], None]
    load_snapshot: Callable[[str], None]

    def _register_commands(self) -> None:
        def reg(name: str, handler: Any, spec: dict[str, tuple[str, bool]] | None) -> None:
            self.monitor.register(name, self._deferring(handler), spec)

        reg("query-status", self.qmp_query_status, {})
        reg("stop", self.qmp_stop, {})
        reg("cont", self.qmp_cont, {})
        reg("quit", self.qmp_quit, {})
        reg("system_reset", self.qmp_system_reset, {})
        reg("query-name", self.qmp_query_name, {})
        reg("query-uuid", lambda: {"UUID": self.uuid or "00000000-0000-0000-0000-000000000000"}, {})
        reg("query-version", self.qmp_query_version, {})
        reg("query-commands", self.qmp_query_commands, {})
        reg("device_add", self.qmp_device_add, None)
        reg("device_del", self.qmp_device_del, {"id": ("str", True)})
        reg("chardev-add", self.qmp_chardev_add, {"id": ("str", True), "backend": ("object", True)})
        reg("chardev-remove", self.qmp_chardev_remove, {"id": ("str", True)})
        reg("query-chardev", self.qmp_query_chardev, {})
        reg("query-chardev-backends", self.qmp_query_chardev_backends, {})
        reg("ringbuf-write", self.qmp_ringbuf_write, {"device": ("str", True), "data": ("str", True), "format": ("str", False)})
        reg("ringbuf-read", self.qmp_ringbuf_read, {"device": ("str", True), "size": ("int", True), "format": ("str", False)})
        reg("qom-get", self.qmp_qom_get, {"path": ("str", True), "property": ("str", True)})
        reg("x-query-virtio-serial", self.qmp_query_virtio_serial, {})
        reg("x-guest-ports", self.qmp_guest_ports, {})
        reg("guest-file-open", self.qmp_guest_file_open, {"path": ("str", True), "mode": ("str", False)})
        reg("guest-file-read", self.qmp_guest_file_read, {"handle": ("int", True), "count": ("int", False)})
        reg(
            "guest-file-write",
            self.qmp_guest_file_write,
            {"handle": ("int", True), "buf-b64": ("str", True), "count": ("int", False)},
        )
        reg("guest-file-close", self.qmp_guest_file_close, {"handle": ("int", True)})
        reg("guest-ping", self.qmp_guest_ping, {})
        reg("guest-sync", self.qmp_guest_sync, {"id": ("int", True)})
        reg("human-monitor-command", self.qmp_human_monitor_command,
            {"command-line": ("str", True), "cpu-index": ("int", False)})
        self._hmp_commands = {
            "savevm": hmp.HmpCommand("savevm", "s?", self.hmp_savevm),
            "loadvm": hmp.HmpCommand("loadvm", "s", self.hmp_loadvm),
            "delvm": hmp.HmpCommand("delvm", "s", self.hmp_delvm),
            "info": hmp.HmpCommand("info", None, lambda: ""),
        }
        self._hmp_info = {
            "snapshots": hmp.HmpCommand("snapshots", None, self.hmp_info_snapshots,
                                        "show the currently saved VM snapshots"),
            "name": hmp.HmpCommand("name", None, lambda: "" if self.name is None else f"{self.name}\r\n",
                                   "show the current VM name"),
            "status": hmp.HmpCommand("status", None, self.hmp_info_status,
                                     "show the current VM status (running|paused)"),
        }
        for name, handler in self.plugins.qmp_commands.items():
            if name in self.monitor.commands or name == "qmp_capabilities":
                raise PluginError(f"QMP command '{name}' is already registered")
            reg(name, lambda h=handler, **args: h(self, **args), plugin_arg_spec(handler))

    @property
    def status(self) -> str:
        """query-status's ``status``: the machine's run state."""
        return self.machine.runstate.state.value

    def qmp_query_status(self) -> dict[str, Any]:
        return {"status": self.status, "singlestep": False, "running": self.machine.running}

    def qmp_stop(self) -> dict[str, Any]:
        """qmp_stop: during an incoming migration, only 'do not start when
        it is in'; otherwise vm_stop (nothing when not running)."""
        if self.machine.runstate.state is RunState.INMIGRATE:
            self.machine.autostart = False
        else:
            self.stop()
        return {}

    def qmp_cont(self) -> dict[str, Any]:
        """qmp_cont, with its refusals in QEMU's order and words."""
        state = self.machine.runstate
        if state.needs_reset:
            raise QMPError("Resetting the Virtual Machine is required")
        if state.state is RunState.FINISH_MIGRATE:
            raise QMPError("Migration is not finalized yet")
        if state.state is RunState.INMIGRATE:
            self.machine.autostart = True  # start once the migration is in
        else:
            self.cont()
        return {}

    def qmp_system_reset(self) -> dict[str, Any]:
        """RESET now; the reset itself runs from the main loop, after the
        reply, as in QEMU (so DEVICE_DELETED of pending unplugs follows it)."""
        self.monitor.broadcast("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        self.loop.call_soon(self.system_reset)
        return {}

    def qmp_quit(self) -> dict[str, Any]:
        self.shutdown_reason = "host-qmp-quit"
        self.monitor.broadcast("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        return {}

    def qmp_query_name(self) -> dict[str, Any]:
        return {"name": self.name} if self.name is not None else {}

    def qmp_query_version(self) -> dict[str, Any]:
        return {"qemu": dict(QEMU_VERSION), "package": self.monitor.package}

    def qmp_query_commands(self) -> list[dict[str, str]]:
        return [{"name": n} for n in ["qmp_capabilities", *self.monitor.commands]]

    def qmp_device_add(self, args: dict[str, Any]) -> dict[str, Any]:
        self.machine.device_add(args, from_json=True)
        return {}

    def qmp_device_del(self, id: str) -> dict[str, Any]:
        if id.endswith("/virtio-backend") and self.machine.find_device(id.removesuffix("/virtio-backend")):
            raise QMPError("Bus 'virtio-bus' does not support hotplugging")
        if self.machine.find_device(id) is None:
            raise QMPError(f"Device '{id}' not found", "DeviceNotFound")
        self.machine.device_del(id)
        return {}

    def qmp_chardev_add(self, id: str, backend: dict[str, Any]) -> dict[str, Any]:
        kind = backend.get("type")
        if not isinstance(kind, str):
            raise QMPError("Parameter 'type' is missing" if kind is None else "Invalid parameter type for 'type', expected: string")
        be = self.plugins.backends.get(kind)
        if be is None:
            raise QMPError(f"Parameter 'type' does not accept value '{kind}'")
        if "data" not in backend:
            raise QMPError("Parameter 'backend.data' is missing")
        data = backend["data"]
        if not isinstance(data, dict):
            raise QMPError("Invalid parameter type for 'data', expected: object")
        if id in self.machine.chardevs:
            raise QMPError(f"Chardev with id '{id}' already exists")
        try:  # the QAPI checks of ``data``: their messages carry no prefix
            opts = be.qmp_to_opts(data)
        except ConfigError as err:
            raise QMPError(str(err)) from None
        try:
            self.chardev_new(id, kind, opts)
        except ConfigError as err:
            raise QMPError(f"Failed to add chardev '{id}': {err}") from None
        return {}

    def qmp_chardev_remove(self, id: str) -> dict[str, Any]:
        self.chardev_remove(id)
        return {}

    def qmp_query_chardev(self) -> list[dict[str, object]]:
        return [chr_.info() for chr_ in self.machine.chardevs.values()]

    def qmp_query_chardev_backends(self) -> list[dict[str, str]]:
        return [{"name": name} for name in self.plugins.backends]

    def _ringbuf(self, device: str) -> RingbufChardev:
        chr_ = self.machine.chardevs.get(device)
        if chr_ is None:
            raise QMPError(f"Device '{device}' not found")
        if not isinstance(chr_, RingbufChardev):
            raise QMPError(f"{device} is not a ringbuf device")
        return chr_

    @staticmethod
    def _format(fmt: str | None) -> str:
        if fmt is None:
            return "utf8"
        if fmt not in ("utf8", "base64"):
            raise QMPError(f"Parameter 'format' does not accept value '{fmt}'")
        return fmt

    def qmp_ringbuf_write(self, device: str, data: str, format: str | None = None) -> dict[str, Any]:
        fmt = self._format(format)  # QAPI checks arguments before the command runs
        chr_ = self._ringbuf(device)
        if fmt == "base64":
            raw = qbase64_decode(data)
        else:
            # QEMU keeps strings as C strings: U+0000 is stored as C0 80
            raw = data.encode("utf-8", "surrogateescape").replace(b"\x00", b"\xc0\x80")
        chr_.write(memoryview(raw))
        return {}

    def qmp_ringbuf_read(self, device: str, size: int, format: str | None = None) -> str:
        fmt = self._format(format)
        chr_ = self._ringbuf(device)
        if size <= 0:
            raise QMPError("size must be greater than zero")
        raw = chr_.read(size)
        if fmt == "base64":
            return base64.b64encode(raw).decode()
        return raw.decode("utf-8", "replace")

    def qmp_qom_get(self, path: str, property: str) -> Any:
        """A port's properties, the PCI proxy's (with every virtio property,
        as QEMU aliases them) and the virtio-backend's; defaults included."""
        m = self.machine
        backend = path.endswith("/virtio-backend")
        obj = m.find_device(path.removesuffix("/virtio-backend"))
        if obj is None or (backend and isinstance(obj, VirtIOSerialPort)):
            raise QMPError(f"Device '{path}' not found", "DeviceNotFound")
        if isinstance(obj, VirtIOSerialPort):
            type_name = obj.driver
            bus = m.bus_of(obj)
            props: dict[str, Any] = {
                key: getattr(obj, key.replace("-", "_"), None) for key in type(obj).extra_properties
            }
            props |= {
                "nr": obj.id,
                "name": obj.name or "",
                "chardev": obj.chardev.id if obj.chardev else "",
                "type": obj.driver,
                "realized": True,
                "parent_bus": (m.qom_path(bus) + f"/virtio-backend/{bus.bus_name}") if bus else "",
            }
        else:
            set_props = {k: v for k, v in obj.transport_props.items() if k != "addr"}
            props = {"max_ports": obj.max_ports, "emergency-write": obj.emergency_write, "realized": True}
            props |= qdev.VIRTIO_DEFAULTS | {k: v for k, v in set_props.items() if k in qdev.VIRTIO_DEFAULTS}
            pci = obj.driver.startswith("virtio-serial-pci")
            if backend or not pci:
                type_name = "virtio-serial-device"
            else:
                type_name = obj.driver
                props |= qdev.PCI_DEFAULTS | {k: v for k, v in set_props.items() if k in qdev.PCI_DEFAULTS}
                if obj.pci_devfn is not None:
                    props["addr"] = obj.pci_devfn[0] << 3 | obj.pci_devfn[1]
            props["type"] = type_name
        if property not in props:
            raise QMPError(f"Property '{type_name}.{property}' not found")
        return props[property]

    def qmp_query_virtio_serial(self) -> list[dict[str, object]]:
        out = []
        for dev in self.machine.devices:
            d = dev.describe()
            d["path"] = self.machine.qom_path(dev)
            for p, port in zip(d["ports"], dev.ports.values()):  # type: ignore[call-overload]
                p["path"] = self.machine.qom_path(port)
            out.append(d)
        return out

    def qmp_guest_ports(self) -> list[dict[str, object]]:
        return [
            {
                "path": p.path,
                "name": p.name,
                "id": p.id,
                "console": p.console,
                "open": p.open,
                "host-connected": p.host_connected,
            }
            for p in self.machine.guest.ports()
        ]

    def qmp_guest_ping(self) -> dict[str, Any]:
        self.agent._guest()
        return {}

    def qmp_guest_sync(self, id: int) -> int:
        self.agent._guest()
        return id

    def qmp_guest_file_open(self, path: str, mode: str | None = None) -> int:
        return self.agent.open(path, mode or "r")

    def qmp_guest_file_read(self, handle: int, count: int | None = None) -> dict[str, Any]:
        return self.agent.read(handle, count)

    def qmp_guest_file_write(self, handle: int, buf_b64: str, count: int | None = None) -> dict[str, Any]:
        return self.agent.write(handle, buf_b64, count)

    def qmp_guest_file_close(self, handle: int) -> dict[str, Any]:
        self.agent.close(handle)
        return {}


    # ------------------------------------------------------------------ HMP
    def qmp_human_monitor_command(self, command_line: str, cpu_index: int | None = None) -> str:
        """HMP through QMP: the text is the reply, errors included."""
        if cpu_index is not None and cpu_index != 0:  # one CPU, index 0 (monitor_set_cpu)
            raise QMPError("Parameter 'cpu-index' expects a CPU number")
        return hmp.run(command_line, self._hmp_commands, self._hmp_info)

    def hmp_savevm(self, tag: str | None) -> str:
        """hmp_savevm: save_snapshot(name, overwrite=true); no tag: the
        local time as ``vm-%Y%m%d%H%M%S``."""
        try:
            self.save_snapshot(tag if tag is not None else time.strftime("vm-%Y%m%d%H%M%S"))
        except SnapshotError as err:
            return f"Error: {err}\r\n"
        return ""

    def hmp_loadvm(self, tag: str) -> str:
        """hmp_loadvm: stop a running machine in ``restore-vm``, load, and
        start it again only when the load worked (a failed load of a
        running machine leaves it in ``restore-vm`` until ``cont``)."""
        was_running = self.machine.running
        self.machine.stop(RunState.RESTORE_VM)
        try:
            self.load_snapshot(tag)
        except (SnapshotError, LoadError) as err:
            return f"Error: {err}\r\n"
        if was_running:
            self.cont()
        return ""

    def hmp_delvm(self, tag: str) -> str:
        """hmp_delvm: deleting a tag that is not there succeeds."""
        try:
            self.snapshots.delete(tag)
        except SnapshotError as err:
            return f"Error: {err}\r\n"
        return ""

    def hmp_info_snapshots(self) -> str:
        try:
            return render_info_snapshots(self.snapshots.list())
        except SnapshotError as err:
            return f"Error: {err}\r\n"

    def hmp_info_status(self) -> str:
        """hmp_info_status: ``running`` or ``paused``, with the run state in
        brackets when it is not plain ``paused``."""
        state = self.machine.runstate.state
        if self.machine.running:
            return "VM status: running\r\n"
        if state is RunState.PAUSED:
            return "VM status: paused\r\n"
        return f"VM status: paused ({state.value})\r\n"
