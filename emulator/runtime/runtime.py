"""A running machine: the sans-IO core on a main loop, with QMP monitors.

``Runtime`` owns the ``MainLoop``, the ``Machine``, the chardev backends'
descriptors, the QMP monitors and the guest programs (``GuestAgent``).
``vserial run`` builds one from a QEMU command line (``emulator.runtime.cmdline``);
tests and benches can build one directly.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
from collections.abc import Mapping
from typing import IO, Any

from emulator.runtime.agent import GuestAgent
from emulator.io.char_ringbuf import RingbufChardev
from emulator.core.chardev import Chardev
from emulator.core.effects import QmpEvent
from emulator.errors import ConfigError, QMPError
from emulator.machine.machine import Machine
from emulator.io.mainloop import MainLoop
from emulator.core.memory import DEFAULT_RAM_SIZE
from emulator.plugin.manager import Plugins, default_plugins
from emulator.core.ports import VirtIOSerialPort
from emulator.runtime.monitor import ChardevMonitor, Monitor
from emulator.runtime.qmp import qbase64_decode
from emulator.core.trace import Trace

VERSION = "0.1.0"
COMMON_CHARDEV_OPTIONS = {"id", "backend"}


class Runtime:
    def __init__(
        self,
        *,
        ram_size: int = DEFAULT_RAM_SIZE,
        name: str | None = None,
        plugins: Plugins | None = None,
        trace: Trace | None = None,
        paused: bool = False,
        machine_type: str = "pc",
    ) -> None:
        self.plugins = plugins if plugins is not None else default_plugins()
        self.loop = MainLoop()
        self.name = name
        self.machine = Machine(
            ram_size, name=name, trace=trace, plugins=self.plugins, machine_type=machine_type, paused=paused
        )
        self.machine.defer = self.loop.call_soon
        self.agent = GuestAgent(self.machine)
        self.monitor = Monitor(f"vserial {VERSION}")
        self.monitor.on_quit = self._quit_now
        self.monitors: list[ChardevMonitor] = []
        self.machine.event_listeners.append(self._on_event)
        self.loop.after_dispatch.append(self.service)
        self.shutdown_reason: str | None = None
        self._register_commands()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self.log_file: IO[str] | None = None  # -D; closed with the runtime
        self._signal: int | None = None
        self.uuid: str | None = None  # -uuid
        self.pidfile: str | None = None  # -pidfile; removed at exit
        self._deferred_events: list[QmpEvent] | None = None

    # ------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Cold plug is done: boot the guest unless started paused (-S)."""
        self.machine.init_done = True
        if self.machine.running:
            self.machine.boot()
        self.service()

    def service(self) -> None:
        """After every batch of I/O: run guest interrupt handlers and let
        guest programs write what their ports take now."""
        m = self.machine
        m.pump()
        if self.agent.busy:
            self.agent.flush()
            m.pump()

    def run(self) -> None:
        """Serve until ``quit`` or SIGTERM/SIGINT/SIGHUP."""
        self._install_signals()
        try:
            self.loop.run()
        finally:
            self.close()

    def _install_signals(self) -> None:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wakeup = (r, w)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)

        def drain() -> None:
            try:
                while r.recv(4096):
                    pass
            except BlockingIOError:
                pass
            if self._signal is not None and self.shutdown_reason is None:
                import sys

                print(f"vserial: terminating on signal {self._signal}", file=sys.stderr, flush=True)
                self.shutdown("host-signal")

        self.loop.add_reader(r.fileno(), drain)

        def on_signal(signum: int, frame: object) -> None:
            # Only record it: the handler may run in the middle of anything.
            # The wakeup fd makes the loop run drain(), which shuts down.
            self._signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)

    def shutdown(self, reason: str) -> None:
        if self.shutdown_reason is None:
            self.shutdown_reason = reason
            self.monitor.broadcast("SHUTDOWN", {"guest": False, "reason": reason})
        self.loop.stop()

    def _quit_now(self) -> None:
        self.loop.stop()

    def close(self) -> None:
        for mon in self.monitors:
            if mon.out:
                mon.chardev.flush_blocking(bytes(mon.out), timeout=2.0)
                mon.out.clear()
            mon.close()
        for chr_ in list(self.machine.chardevs.values()):
            chr_.close()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        if self.pidfile is not None:
            try:
                os.unlink(self.pidfile)
            except OSError:
                pass
            self.pidfile = None
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for s in self._wakeup:
                s.close()
            self._wakeup = None
        self.loop.close()

    def _on_event(self, ev: QmpEvent) -> None:
        if self._deferred_events is not None and ev.name == "DEVICE_DELETED":
            self._deferred_events.append(ev)
            return
        self.monitor.broadcast(ev.name, ev.data)

    # --------------------------------------------------------------- chardevs
    def chardev_new(self, chardev_id: str, backend_name: str, opts: Mapping[str, str], where: str = "") -> Chardev:
        """Create, open and add a chardev; ConfigError with QEMU's message."""
        backend = self.plugins.backends.get(backend_name)
        if backend is None:
            raise ConfigError(f"'{backend_name}' is not a valid char driver name")
        for key in opts:
            if key not in backend.options and key not in COMMON_CHARDEV_OPTIONS:
                raise ConfigError(f"Invalid parameter '{key}'")
        if chardev_id in self.machine.chardevs:
            raise ConfigError(f"Duplicate ID '{chardev_id}' for chardev")
        chr_ = backend.create(chardev_id, {**opts, "backend": backend_name})
        chr_.location = where
        chr_.open(self.loop)
        try:
            self.machine.chardev_add(chr_)
        except ConfigError:
            chr_.close()
            raise
        return chr_

    def chardev_from_opts(self, opts: dict[str, str], where: str = "") -> Chardev:
        """``-chardev BACKEND,id=ID,...``"""
        opts = dict(opts)
        backend = opts.pop("backend", None)
        chardev_id = opts.pop("id", None)
        if backend is None:
            raise ConfigError("chardev: \"backend\" is missing")  # pragma: no cover - parse_opts implies it
        if backend not in self.plugins.backends:
            raise ConfigError(f"'{backend}' is not a valid char driver name")
        if chardev_id is None:
            raise ConfigError("chardev: no id specified")
        from emulator.machine.qdev import check_id

        try:
            check_id(chardev_id)
        except ConfigError:
            raise ConfigError(
                "Parameter 'id' expects an identifier\n"
                "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
            ) from None
        return self.chardev_new(chardev_id, backend, opts, where)

    def chardev_remove(self, chardev_id: str) -> None:
        chr_ = self.machine.chardevs.get(chardev_id)
        self.machine.chardev_remove(chardev_id)
        if chr_ is not None:
            chr_.close()

    def add_monitor(self, chardev_id: str) -> ChardevMonitor:
        """A QMP monitor on an existing chardev (``-mon chardev=ID,mode=control``)."""
        chr_ = self.machine.chardevs.get(chardev_id)
        if chr_ is None:
            raise ConfigError(f'chardev "{chardev_id}" not found')
        mon = ChardevMonitor(self.monitor, chr_)
        self.monitors.append(mon)
        return mon

    def add_qmp(self, backend: str, opts: Mapping[str, str], where: str = "") -> ChardevMonitor:
        """``-qmp SPEC``: a chardev ``compat_monitorN`` plus a monitor on it."""
        n = 0
        while f"compat_monitor{n}" in self.machine.chardevs:
            n += 1
        self.chardev_new(f"compat_monitor{n}", backend, opts, where)
        return self.add_monitor(f"compat_monitor{n}")

    # ---------------------------------------------------------- run control
    def cont(self) -> None:
        if self.machine.running:
            return
        self.machine.cont()
        if not self.machine.guest.booted:
            self.machine.boot()
        self.service()

    def stop(self) -> None:
        if not self.machine.running:
            return
        self.machine.stop()

    # ------------------------------------------------------------ QMP table
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
        for name, handler in self.plugins.qmp_commands.items():
            if name in self.monitor.commands or name == "qmp_capabilities":
                from emulator.errors import PluginError

                raise PluginError(f"QMP command '{name}' is already registered")
            reg(name, lambda args, h=handler: h(self, **args), None)

    def qmp_query_status(self) -> dict[str, Any]:
        return {"status": self.status, "singlestep": False, "running": self.machine.running}

    @property
    def status(self) -> str:
        """query-status's ``status``: the machine's run state."""
        return self.machine.runstate.state.value

    def qmp_stop(self) -> dict[str, Any]:
        self.stop()
        return {}

    def qmp_cont(self) -> dict[str, Any]:
        self.cont()
        return {}

    def qmp_system_reset(self) -> dict[str, Any]:
        """RESET now; the reset itself runs from the main loop, after the
        reply, as in QEMU (so DEVICE_DELETED of pending unplugs follows it)."""
        self.monitor.broadcast("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        self.loop.call_soon(self.system_reset)
        return {}

    def system_reset(self) -> None:
        self.agent.reset()
        self.machine.system_reset()
        self.service()

    def qmp_quit(self) -> dict[str, Any]:
        self.shutdown_reason = "host-qmp-quit"
        self.monitor.broadcast("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        return {}

    def qmp_query_name(self) -> dict[str, Any]:
        return {"name": self.name} if self.name is not None else {}

    def qmp_query_version(self) -> dict[str, Any]:
        from emulator.runtime.qmp import QEMU_VERSION

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

    def _deferring(self, handler: Any) -> Any:
        """QEMU sends DEVICE_DELETED once the device is finalized, after the
        reply of the command that removed it (device_del, cont with a
        pending unplug): hold them until the reply is out."""

        def run(*args: Any, **kwargs: Any) -> Any:
            deferred: list[QmpEvent] = []
            self._deferred_events = deferred
            try:
                return handler(*args, **kwargs)
            finally:
                self._deferred_events = None
                if deferred:
                    self.loop.call_soon(lambda: self._send_events(deferred))

        return run

    def _send_events(self, events: list[QmpEvent]) -> None:
        for ev in events:
            self.monitor.broadcast(ev.name, ev.data)

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
        opts = be.qmp_to_opts(data)
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
        from emulator.machine import qdev

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

