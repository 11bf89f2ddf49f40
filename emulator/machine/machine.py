"""A machine: guest RAM, virtio-serial devices, chardevs and the guest.

The machine is the thin shell around the sans-IO core.  It owns what QEMU's
qdev owns (device ids, bus names, the default-bus rule; QOM paths in
``qom.py``, PCI slots in ``pci.py``, properties in ``qdev.py``), the one run
state (``runstate.py``), routes guest kicks to devices and device
interrupts to the guest, and turns device effects into QMP events and error
reports.  It does no I/O of its own: ``pump()`` runs the guest's interrupt
handlers until nothing is pending.

Port types and the notifications plugins listen to come from a
``MachineHooks`` object: the plugin manager in ``vserial run``, the built-in
port types alone (``BuiltinPorts``) by default, so importing and building a
machine loads no plugin machinery and no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from emulator.core.chardev import Chardev, MemoryChardev
from emulator.core.control import BAD_ID
from emulator.core.device import DEFAULT_MAX_PORTS, TRANSPORT_DRIVERS, VirtIOSerial
from emulator.core.effects import ConfigInterrupt, ErrorReport, Interrupt, PortChange, QmpEvent
from emulator.core.memory import DEFAULT_RAM_SIZE, GuestMemory
from emulator.core.ports import VirtConsole, VirtIOSerialPort, VirtSerialPort
from emulator.core.ring_log import RingLog
from emulator.core.trace import Trace
from emulator.errors import ConfigError
from emulator.guest.kernel import GuestKernel
from emulator.guest.platform import VirtioTransport
from emulator.machine import pci, qdev
from emulator.machine.irq import PendingInterrupts
from emulator.machine.qdev import port_types, transport_types
from emulator.machine.qom import QomTree
from emulator.machine.runstate import RunState, RunStateMachine

# -M names -> the machine modelled: its buses decide which transports fit.
MACHINE_TYPES = {
    "pc": "pc", "pc-i440fx-7.2": "pc", "q35": "q35", "pc-q35-7.2": "q35", "microvm": "microvm",
}

Device = VirtIOSerial | VirtIOSerialPort

# What a machine remembers of its QMP events and error reports: the newest
# entries only.  Listeners (the QMP monitors, stderr in vserial run) get every
# one as it happens; the logs are for a program that drives the machine
# directly, and must not grow with every guest open or hot-plug.
EVENTS_KEPT = 1024
ERROR_LOG_KEPT = 1024


class MachineHooks(Protocol):
    """Who answers port types and hears what happens to ports (the plugin
    manager implements it; see emulator/plugin/hookspecs.py)."""

    def port_type(self, driver: str) -> type[VirtIOSerialPort] | None:
        """The port class for a ``-device`` driver name, or None."""
        ...

    def machine_created(self, machine: Machine) -> None: ...

    def port_plugged(self, machine: Machine, port: VirtIOSerialPort) -> None: ...

    def port_unplugged(self, machine: Machine, port: VirtIOSerialPort) -> None: ...

    def guest_open(self, machine: Machine, port: VirtIOSerialPort, opened: bool) -> None: ...

    def host_connection(self, machine: Machine, port: VirtIOSerialPort, connected: bool) -> None: ...


class BuiltinPorts:
    """virtconsole and virtserialport, and nobody listening."""

    def __init__(self) -> None:
        self.port_types: dict[str, type[VirtIOSerialPort]] = {c.driver: c for c in (VirtConsole, VirtSerialPort)}

    def port_type(self, driver: str) -> type[VirtIOSerialPort] | None:
        return self.port_types.get(driver)

    def machine_created(self, machine: Machine) -> None:
        pass

    def port_plugged(self, machine: Machine, port: VirtIOSerialPort) -> None:
        pass

    def port_unplugged(self, machine: Machine, port: VirtIOSerialPort) -> None:
        pass

    def guest_open(self, machine: Machine, port: VirtIOSerialPort, opened: bool) -> None:
        pass

    def host_connection(self, machine: Machine, port: VirtIOSerialPort, connected: bool) -> None:
        pass


class Machine:
    def __init__(
        self,
        ram_size: int = DEFAULT_RAM_SIZE,
        *,
        name: str | None = None,
        trace: Trace | None = None,
        plugins: MachineHooks | None = None,
        machine_type: str = "pc",
        paused: bool = False,
    ) -> None:
        self.mem = GuestMemory(ram_size)
        self.name = name
        self.trace = trace if trace is not None else Trace()
        self.plugins: MachineHooks = plugins if plugins is not None else BuiltinPorts()
        if machine_type not in MACHINE_TYPES:
            raise ConfigError("unsupported machine type\nUse -machine help to list supported machines")
        self.machine_type = MACHINE_TYPES[machine_type]
        # The one run state: -S starts in prelaunch, otherwise the machine runs.
        self.runstate = RunStateMachine(RunState.PRELAUNCH if paused else RunState.RUNNING)
        self.autostart = not paused  # QEMU's autostart: run once an incoming migration is in
        self.devices: list[VirtIOSerial] = []
        self.chardevs: dict[str, Chardev] = {}
        self.qom: QomTree[Device] = QomTree()
        self.globals: list[tuple[str, str, str]] = []  # -global driver.property=value
        self.defer: Callable[[Callable[[], None]], None] | None = None  # run later (the main loop)
        self.init_done = False  # cold plug finished: -global errors become warnings
        self._bus_auto_ids = 0
        self.events: RingLog[QmpEvent] = RingLog(EVENTS_KEPT)
        # error_report()/warn_report() lines from the devices and the machine:
        # one channel, the newest kept here, each handed to the listeners
        # (vserial run prints them on stderr, as QEMU does).
        self.error_log: RingLog[str] = RingLog(ERROR_LOG_KEPT)
        self.report_listeners: list[Callable[[str], None]] = []
        self.event_listeners: list[Callable[[QmpEvent], None]] = []
        self.guest = GuestKernel(self)
        self.irqs: PendingInterrupts[VirtIOSerial] = PendingInterrupts()
        self._pumping = False
        self.plugins.machine_created(self)

    @property
    def running(self) -> bool:
        return self.runstate.running

    # QOM bookkeeping, read by tools and tests under the names QEMU's users know.
    @property
    def qdev_ids(self) -> dict[str, Device]:
        return self.qom.ids

    @property
    def anon(self) -> dict[str, Device]:
        return self.qom.anon

    @property
    def _anon_count(self) -> int:
        return self.qom.anon_count

    @property
    def bus_auto_ids(self) -> int:
        """The n the next id-less virtio-serial device's bus gets
        (``virtio-serial-bus.<n>``); a loaded snapshot sets it."""
        return self._bus_auto_ids

    @bus_auto_ids.setter
    def bus_auto_ids(self, value: int) -> None:
        self._bus_auto_ids = value

    # ---------------------------------------------------------------- chardevs
    def chardev_add(self, chardev: Chardev) -> Chardev:
        if chardev.id in self.chardevs:
            raise ConfigError(f"attempt to add duplicate property '{chardev.id}' to object (type 'container')")
        self.chardevs[chardev.id] = chardev
        return chardev

    def chardev_remove(self, chardev_id: str) -> None:
        chr_ = self.chardevs.get(chardev_id)
        if chr_ is None:
            raise ConfigError(f"Chardev '{chardev_id}' not found")
        if chr_.in_use:
            raise ConfigError(f"Chardev '{chardev_id}' is busy")
        del self.chardevs[chardev_id]

    # ------------------------------------------------------------------ buses
    def find_bus(self, name: str) -> VirtIOSerial | None:
        for dev in self.devices:
            if dev.bus_name == name:
                return dev
        return None

    def port(self, qdev_id: str) -> VirtIOSerialPort:
        obj = self.qdev_ids.get(qdev_id)
        if not isinstance(obj, VirtIOSerialPort):
            raise ConfigError(f"Device '{qdev_id}' not found")
        return obj

    # ------------------------------------------------------------ device_add
    def device_add(self, props: dict[str, Any], *, from_json: bool = False) -> VirtIOSerial | VirtIOSerialPort:
        """Create a device the way ``qdev_device_add`` does, checks in its
        order: driver, bus, id, properties, realize.  Raises ConfigError
        with QEMU's message; on error nothing has changed.

        ``from_json``: the values come from QMP.  QEMU 7.2's device_add goes
        through QemuOpts, so JSON scalars become strings first (true -> "on",
        4 -> "4") and other JSON values are ignored; then every property is
        parsed as on the command line.
        """
        props = qdev.opts_from_json(props) if from_json else dict(props)
        driver = props.pop("driver", None)
        if driver is None:
            raise ConfigError("Parameter 'driver' is missing")
        qdev_id = props.pop("id", None)
        if qdev_id is not None:
            qdev_id = qdev.check_id(qdev_id)
        if driver in TRANSPORT_DRIVERS and driver != "virtio-serial-ccw":  # no CCW bus on x86
            resolved = TRANSPORT_DRIVERS[driver]
            self._apply_globals(transport_types(resolved), resolved, props,
                                {**qdev.SERIAL_DEVICE_PROPERTIES, **qdev.VIRTIO_PROPERTIES, **qdev.PCI_PROPERTIES})
            return self._add_serial_device(resolved, qdev_id, props)
        cls = self.plugins.port_type(driver)
        if cls is None:
            raise ConfigError(f"'{driver}' is not a valid device model name")
        self._apply_globals(port_types(cls), cls.driver, props, {**qdev.PORT_PROPERTIES, **cls.extra_properties})
        return self._add_port(cls, qdev_id, props)

    def _apply_globals(self, types: list[str], driver: str, props: dict[str, Any], known: dict[str, str]) -> None:
        """-global TYPE.PROP=VALUE: a default for every device of TYPE or of
        a type derived from it (QEMU matches with object_dynamic_cast).  A
        global that cannot be applied fails a cold-plugged device; for a
        hot-plugged one QEMU only warns and uses the default."""
        for gdriver, prop, value in self.globals:
            if gdriver not in types or prop in props:
                continue
            kind = known.get(prop)
            try:
                if kind is None or prop == "bus":
                    raise ConfigError(f"Property '{driver}.{prop}' not found")
                qdev.convert_device_property(driver, prop, kind, value)
            except ConfigError as err:
                message = f"can't apply global {gdriver}.{prop}={value}: {err}"
                if not self.init_done:
                    raise ConfigError(message) from None
                self.report(f"warning: {message}")
                continue
            props[prop] = value

    def qom_path(self, obj: Device) -> str:
        return self.qom.path(obj, obj.qdev_id)

    def _check_transport(self, driver: str, qdev_id: str | None, props: dict[str, Any]) -> None:
        """What QEMU refuses at realize, and what vserial does not model."""
        if props.get("iommu_platform"):
            raise ConfigError("VIRTIO_F_IOMMU_PLATFORM was supported by neither legacy nor transitional device")
        if props.get("packed"):
            raise ConfigError(f"Property '{driver}.packed': vserial models split virtqueues only")
        devfn = props.get("addr")
        if devfn is None and driver.startswith("virtio-serial-pci"):
            props["_devfn"] = pci.free_slot(self.machine_type, self.devices, driver)
        if devfn is not None:
            pci.check_devfn(self.machine_type, self.devices, driver, devfn, bool(props.get("multifunction")))

    def _add_serial_device(self, driver: str, qdev_id: str | None, props: dict[str, Any]) -> VirtIOSerial:
        values: dict[str, Any] = {"max_ports": DEFAULT_MAX_PORTS, "emergency-write": True}
        pci = driver.startswith("virtio-serial-pci")
        if pci and self.machine_type == "microvm":
            raise ConfigError(f"No 'PCI' bus found for device '{driver}'")
        if not pci and self.machine_type != "microvm":
            raise ConfigError(f"No 'virtio-bus' bus found for device '{driver}'")
        bus = props.pop("bus", None)
        if bus is not None:
            # The machine has one PCI bus, pci.0; virtio-serial buses take ports only.
            if bus != "pci.0" or not driver.startswith("virtio-serial-pci"):
                if self.find_bus(str(bus)) is not None:
                    raise ConfigError(f"Device '{driver}' can't go on virtio-serial-bus bus")
                raise ConfigError(f"Bus '{bus}' not found")
        self.qom.check_free_id(qdev_id)
        anon_path = self.qom.take_anon_path(qdev_id)
        transport: dict[str, Any] = {}
        for key, raw in props.items():
            kind = qdev.SERIAL_DEVICE_PROPERTIES.get(key)
            if kind is not None:
                values[key] = qdev.convert(key, kind, raw)
                continue
            kind = qdev.VIRTIO_PROPERTIES.get(key) or (qdev.PCI_PROPERTIES.get(key) if pci else None)
            if kind is None:
                raise ConfigError(f"Property '{driver}.{key}' not found")
            transport[key] = qdev.convert_device_property(driver, key, kind, raw)
        self._check_transport(driver, qdev_id, transport)
        if qdev_id is not None:
            bus_name = f"{qdev_id}.0"
            auto = False
        else:
            bus_name = f"virtio-serial-bus.{self._bus_auto_ids}"
            auto = True
        dev = VirtIOSerial(
            self.mem,
            bus_name=bus_name,
            qdev_id=qdev_id,
            driver=driver,
            max_ports=values["max_ports"],
            emergency_write=values["emergency-write"],
            trace=self.trace,
            siblings=self.devices,
            # the guest's virtio index: the lowest free one (Linux's ida)
            index=min(set(range(len(self.devices) + 1)) - {d.index for d in self.devices}),
            vm=self.runstate,
        )
        dev.pci_devfn = transport.pop("_devfn", None) or transport.get("addr")
        dev.transport_props = transport
        for prop, bit in (("event_idx", 29), ("indirect_desc", 28)):  # VIRTIO_RING_F_*
            if transport.get(prop) is False:
                dev.host_features &= ~(1 << bit)
        if auto:
            self._bus_auto_ids += 1
        self.devices.append(dev)
        self.qom.add(dev, qdev_id, anon_path)
        if self.guest.booted:
            self.guest.probe(dev)  # PCI hot-plug: the guest binds the driver
        self.pump()
        return dev

    def _add_port(self, cls: type[VirtIOSerialPort], qdev_id: str | None, props: dict[str, Any]) -> VirtIOSerialPort:
        driver = cls.driver
        bus_name = props.pop("bus", None)
        if bus_name is not None:
            dev = self.find_bus(bus_name)
            if dev is None:
                if bus_name == "pci.0":
                    raise ConfigError(f"Device '{driver}' can't go on PCI bus")
                raise ConfigError(f"Bus '{bus_name}' not found")
        else:
            if not self.devices:
                raise ConfigError(f"No 'virtio-serial-bus' bus found for device '{driver}'")
            dev = self.devices[-1]
        self.qom.check_free_id(qdev_id)
        anon_path = self.qom.take_anon_path(qdev_id)
        kwargs: dict[str, Any] = {"nr": BAD_ID}
        for key, raw in props.items():
            kind = qdev.PORT_PROPERTIES.get(key) or cls.extra_properties.get(key)
            if kind is None:
                raise ConfigError(f"Property '{driver}.{key}' not found")
            value = qdev.convert(key, kind, raw)
            if key == "chardev":
                if value == "":
                    kwargs.pop("chardev", None)  # set_chr: an empty name means none
                    continue
                chr_ = self.chardevs.get(value)
                if chr_ is None:
                    raise ConfigError(f"Property '{driver}.chardev' can't find value '{value}'")
                if chr_.in_use:
                    raise ConfigError(
                        f"Property '{driver}.chardev' can't take value '{value}': Device '{value}' is in use"
                    )
                value = chr_
            kwargs[key] = value
        port = cls(qdev_id=qdev_id, **kwargs)
        dev.plug(port)
        self.qom.add(port, qdev_id, anon_path)
        self.plugins.port_plugged(self, port)
        self.pump()
        return port

    def find_device(self, id_or_path: str) -> Device | None:
        """A device by qdev id or by QOM path (as device_del accepts)."""
        return self.qom.find(id_or_path)

    def bus_of(self, port: VirtIOSerialPort) -> VirtIOSerial | None:
        """The virtio-serial device a port is plugged into."""
        for dev in self.devices:
            if dev.ports.get(port.id) is port:
                return dev
        return None

    def device_del(self, id_or_path: str) -> None:
        obj = self.find_device(id_or_path)
        if obj is None:
            raise ConfigError(f"Device '{id_or_path}' not found")
        if isinstance(obj, VirtIOSerial):
            # PCI hot-unplug: QEMU asks the guest (ACPI) and returns at once;
            # the device goes when the guest has let go of it.
            if obj.unplug_pending:
                raise ConfigError(f"Device {obj.qdev_id or self.qom_path(obj)} is already in the process of unplug")
            obj.unplug_pending = True
            self._request_eject()
            return
        self._delete_port(obj)
        self.pump()

    def _delete_port(self, port: VirtIOSerialPort) -> None:
        dev = self.bus_of(port)
        assert dev is not None
        dev.unplug(port)
        self.plugins.port_unplugged(self, port)
        self._deleted(port)

    def _deleted(self, obj: Device) -> None:
        """Forget a device's id (or anonymous path) and say DEVICE_DELETED."""
        path = self.qom.remove(obj, obj.qdev_id)
        if obj.qdev_id is not None:
            self._event(QmpEvent("DEVICE_DELETED", {"device": obj.qdev_id, "path": path}))
        else:
            self._event(QmpEvent("DEVICE_DELETED", {"path": path}))

    def request_eject(self) -> None:
        """Pending unplug requests reach the guest (after a snapshot load)."""
        self._request_eject()

    def _request_eject(self) -> None:
        """The guest acts on a pending unplug request: at once in the
        sans-IO machine, from the main loop (after the reply of the command
        that caused it, as in QEMU) when the runtime set ``defer``."""
        if not any(d.unplug_pending for d in self.devices):
            return
        if self.defer is not None:
            self.defer(self.eject_pending)
        else:
            self.eject_pending()

    def eject_pending(self) -> None:
        """A running guest handles pending PCI unplug requests: its driver
        lets go (device reset, ports gone), then the device and its ports
        are deleted, children first, each with DEVICE_DELETED."""
        if not self.running or not self.guest.booted:
            return
        for dev in [d for d in self.devices if d.unplug_pending]:
            self.guest.remove(dev)
            self._collect(dev)
            self._delete_serial_device(dev)
        self.pump()

    def _delete_serial_device(self, dev: VirtIOSerial) -> None:
        """Unparent a virtio-serial device: its ports (last plugged first,
        as QEMU's bus_unparent does), the virtio-backend, the device."""
        for port in reversed(list(dev.ports.values())):
            self._delete_port(port)
        path = self.qom_path(dev)
        self._event(QmpEvent("DEVICE_DELETED", {"path": f"{path}/virtio-backend"}))
        self._deleted(dev)
        self.devices.remove(dev)
        self.irqs.forget(dev)

    def system_reset(self) -> None:
        """qemu_system_reset: pending PCI unplugs complete, every device is
        reset, and the guest starts over (it boots now if the machine runs,
        else on cont).  The RESET event is the caller's: QEMU sends it when
        the reset is requested."""
        for dev in [d for d in self.devices if d.unplug_pending]:
            self._delete_serial_device(dev)
        self.guest.dead = True
        for dev in self.devices:
            dev.reset()
            self._collect(dev)
        self.irqs.clear()
        self.guest = GuestKernel(self)
        if self.running:
            self.guest.boot()
        elif self.runstate.state not in (RunState.INMIGRATE, RunState.FINISH_MIGRATE):
            self.runstate.set(RunState.PRELAUNCH)  # QEMU: a reset while not running leaves prelaunch
        self.pump()

    # ----------------------------------------------------------- guest face
    def boot(self) -> None:
        """Start the guest: its driver probes every virtio-serial device."""
        if not self.guest.booted:
            self.guest.boot()
        self.pump()
        self._request_eject()

    def notify_device(self, dev: VirtioTransport, queue: int) -> None:
        """A guest kick, delivered synchronously as a vCPU exit would be."""
        assert isinstance(dev, VirtIOSerial)
        dev.kick(queue)
        self._collect(dev)

    # ------------------------------------------------------------ run state
    def stop(self, state: RunState = RunState.PAUSED) -> None:
        """vm_stop: only a running machine stops (and says STOP)."""
        if not self.running:
            return
        self.runstate.set(state)
        self._event(QmpEvent("STOP", {}))

    def stop_force_state(self, state: RunState) -> None:
        """vm_stop_force_state: a running machine stops into ``state``; a
        stopped one just changes state (no STOP event)."""
        if self.running:
            self.stop(state)
        else:
            self.runstate.set(state)

    def cont(self) -> None:
        """vm_start: RESUME, then what waited for the guest runs."""
        if self.running:
            return
        self.runstate.set(RunState.RUNNING)
        self._event(QmpEvent("RESUME", {}))
        self.pump()
        self._request_eject()
        for chr_ in self.chardevs.values():
            chr_.accept_input()
        self.pump()

    # --------------------------------------------------------------- effects
    def _event(self, ev: QmpEvent) -> None:
        self.events.append(ev)
        for listener in list(self.event_listeners):
            listener(ev)

    def report(self, message: str) -> None:
        """QEMU's error_report/warn_report: one line for the host's user."""
        self.error_log.append(message)
        for listener in list(self.report_listeners):
            listener(message)

    def _collect(self, dev: VirtIOSerial) -> None:
        if not dev.effects:
            return
        for eff in dev.take_effects():
            if isinstance(eff, Interrupt):
                self.irqs.raise_irq(dev, eff.queue)
            elif isinstance(eff, QmpEvent):
                self._event(eff)
            elif isinstance(eff, ErrorReport):
                self.report(eff.message)
            elif isinstance(eff, PortChange):
                if eff.side == "guest":
                    self.plugins.guest_open(self, eff.port, eff.connected)
                else:
                    self.plugins.host_connection(self, eff.port, eff.connected)
            elif isinstance(eff, ConfigInterrupt):
                pass  # the Linux driver only acts on resize, which QEMU never sends

    def pump(self) -> None:
        """Run guest interrupt handlers until nothing is pending."""
        for dev in self.devices:
            if dev.effects:
                self._collect(dev)
        if self._pumping or not self.running or not self.irqs:
            return
        self._pumping = True
        try:
            while self.irqs:
                dev, queue = self.irqs.take()
                self.guest.interrupt(dev, queue)
                for d in self.devices:
                    if d.effects:
                        self._collect(d)
        finally:
            self._pumping = False

    # ------------------------------------------------------ host programs
    def host_chardev(self, chardev_id: str) -> MemoryChardev:
        chr_ = self.chardevs.get(chardev_id)
        if not isinstance(chr_, MemoryChardev):
            raise ConfigError(f"Chardev '{chardev_id}' not found")
        return chr_

    def host_send(self, chardev_id: str, data: bytes) -> int:
        n = self.host_chardev(chardev_id).send(data)
        self.pump()
        return n

    def host_receive(self, chardev_id: str) -> bytes:
        return self.host_chardev(chardev_id).take()

    def host_connect(self, chardev_id: str) -> None:
        self.host_chardev(chardev_id).connect()
        self.pump()

    def host_disconnect(self, chardev_id: str) -> None:
        self.host_chardev(chardev_id).disconnect()
        self.pump()

    def host_grant(self, chardev_id: str, nbytes: int | None) -> None:
        """A slow host reader reads ``nbytes`` more (None: full speed)."""
        self.host_chardev(chardev_id).grant(nbytes)
        self.pump()

    def describe(self) -> list[dict[str, object]]:
        return [dev.describe() for dev in self.devices]

