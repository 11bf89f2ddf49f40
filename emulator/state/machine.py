"""The whole machine's saved state: one vmstate stream.

A stream holds, in this order: the ``machine`` section (run state, the
devices in plug order with their qdev properties, QOM paths and counters,
pending unplugs and interrupts, the chardevs), one section per chardev that
holds state (``chardev-memory``, ``chardev-ringbuf``; instance id = the
chardev's position in the machine section's list), one ``virtio-serial``
section per device (``records.py``; instance id = the device's position in
plug order), the ``guest`` section (``guest.py``) and the RAM.

Matching (the destination must be started with the same devices and port
ids, in any order of ``-device`` lines, as QEMU's stable-id rule asks):

* a device with a qdev id is the local device with that id;
* the devices without one are matched by position: the k-th id-less device
  of the stream (in its plug order) is the k-th id-less device here (in
  creation order).  Their bus names (``virtio-serial-bus.<n>``), QOM paths
  and the machine's counters are then taken from the stream, so a device
  unplugged and re-added on the source does not make the snapshot refuse;
* ports are matched by port id within their matched device.

Each matched device must have the same driver, max_ports, emergency-write
and explicitly set transport properties (``addr=`` included); each port the
same driver, qdev id, name and chardev id; a port or device on one side
only, or a chardev the stream names that is missing here or of another
kind, refuses the load with a message naming the device and the port id.
What is the machine's history rather than its configuration comes from the
stream: plug order (of devices and of each device's ports), the guest's
virtio indices, automatically chosen PCI slots, anonymous QOM paths, bus
numbers, pending unplugs and interrupts.

A socket's peer or a file's descriptor is the destination's own (as in
QEMU): for such chardevs the stream holds only id and kind.  The in-memory
host programs (``MemoryChardev``: bytes the host has not taken yet, bytes
the host sent that the guest has not taken) and ring buffers (their unread
bytes) come with the stream; a MemoryChardev's connection and slow-reader
window are the destination's own, so a difference in connection sends
PORT_OPEN after the load (QEMU's post-load rule).

``load_machine`` checks everything first - every section against the local
machine, RAM staged on a copy, every device's rings against the staged RAM,
the guest against the staged devices - and only then applies it; a refused
load raises ``vmstate.VMStateError`` and changes nothing.

The run state: as QEMU's ``loadvm``, the load itself leaves the
destination's run state alone (stop it before loading a stream of a
stopped machine, continue it afterwards if it should run); the stream's
run state and autostart are in the returned ``MachineRecord`` for a caller
that follows an incoming migration's rule instead.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import attrs

import vmstate
from emulator.core.chardev import Chardev, MemoryChardev
from emulator.core.device import VirtIOSerial
from emulator.core.memory import GuestMemory
from emulator.core.ports import VirtIOSerialPort
from emulator.machine.machine import Machine
from emulator.machine.pci import BUILTIN_PCI
from emulator.machine.qom import PERIPHERAL_ANON
from emulator.machine.runstate import RunState
from emulator.state import agent as astate
from emulator.state import guest as gstate
from emulator.state import pieces
from emulator.state import records
from vmstate import U8, U16, U32, U64, Bool, Bytes, ListOf, Nested, Optional, Str

SECTION = "machine"
MEMORY_SECTION = "chardev-memory"
RINGBUF_SECTION = "chardev-ringbuf"
PRODUCER = "vserial"

# What load_machine raises, for callers above this layer (they do not import vmstate).
LoadError = vmstate.VMStateError
# The sections of the layers above the machine (``extra``): the guest programs.
EXTRA_SECTIONS = (astate.SECTION,)


@vmstate.describe(name="machine-devfn", version=1)
@attrs.define
class DevfnRecord:
    slot: int = vmstate.field(U8)
    function: int = vmstate.field(U8)


@vmstate.describe(name="machine-property", version=1)
@attrs.define
class PropertyRecord:
    """A transport property as set (``-device ...,name=value``), as text."""

    name: str = vmstate.field(Str(max_len=64))
    value: str = vmstate.field(Str(max_len=256))


@vmstate.describe(name="machine-port", version=1)
@attrs.define(kw_only=True)
class MachinePortRecord:
    id: int = vmstate.field(U32)
    driver: str = vmstate.field(Str(max_len=64))
    qdev_id: str | None = vmstate.field(Optional(Str(max_len=256)))
    qom_path: str = vmstate.field(Str(max_len=300))
    name: str | None = vmstate.field(Optional(Str(max_len=4096)))
    chardev: str | None = vmstate.field(Optional(Str(max_len=256)))


@vmstate.describe(name="machine-device", version=1)
@attrs.define(kw_only=True)
class MachineDeviceRecord:
    driver: str = vmstate.field(Str(max_len=64))
    qdev_id: str | None = vmstate.field(Optional(Str(max_len=256)))
    qom_path: str = vmstate.field(Str(max_len=300))
    bus: str = vmstate.field(Str(max_len=300))
    index: int = vmstate.field(U16)  # the guest's virtio index
    max_ports: int = vmstate.field(U32)
    emergency_write: bool = vmstate.field(Bool)
    pci_devfn: DevfnRecord | None = vmstate.field(Optional(Nested(DevfnRecord)))
    transport: list[PropertyRecord] = vmstate.field(ListOf(PropertyRecord, max_len=64))
    unplug_pending: bool = vmstate.field(Bool)
    ports: list[MachinePortRecord] = vmstate.field(ListOf(MachinePortRecord, max_len=511))


@vmstate.describe(name="machine-irq", version=1)
@attrs.define
class IrqRecord:
    """A pending interrupt: the device's position in plug order, the queue."""

    device: int = vmstate.field(U16)
    queue: int = vmstate.field(U16)


@vmstate.describe(name="machine-chardev", version=1)
@attrs.define
class ChardevRecord:
    id: str = vmstate.field(Str(max_len=256))
    kind: str = vmstate.field(Str(max_len=64))


@vmstate.describe(name=SECTION, version=1)
@attrs.define(kw_only=True)
class MachineRecord:
    runstate: str = vmstate.field(Str(max_len=32))
    autostart: bool = vmstate.field(Bool)
    machine_type: str = vmstate.field(Str(max_len=32))
    ram_size: int = vmstate.field(U64)
    anon_count: int = vmstate.field(U32)
    bus_auto_ids: int = vmstate.field(U32)
    devices: list[MachineDeviceRecord] = vmstate.field(ListOf(MachineDeviceRecord, max_len=256))
    irqs: list[IrqRecord] = vmstate.field(ListOf(IrqRecord, max_len=1 << 18))
    chardevs: list[ChardevRecord] = vmstate.field(ListOf(ChardevRecord, max_len=1 << 12))


@vmstate.describe(name=MEMORY_SECTION, version=1)
@attrs.define(kw_only=True)
class MemoryChardevRecord:
    """An in-memory host program's buffers (their bytes in ``buffer-piece``
    sections, pieces.py: they have no bound)."""

    received: bytes = attrs.field(default=b"", repr=False)  # guest -> host, not taken yet
    pending: bytes = attrs.field(default=b"", repr=False)  # host -> guest, not taken yet
    id: str = vmstate.field(Str(max_len=256))
    received_len: int = vmstate.field(U64, default=attrs.Factory(lambda r: len(r.received), takes_self=True))
    pending_len: int = vmstate.field(U64, default=attrs.Factory(lambda r: len(r.pending), takes_self=True))

    def buffers(self) -> dict[str, bytes]:
        return {"received": self.received, "pending": self.pending}

    def buffer_lengths(self) -> dict[str, int]:
        return {"received": self.received_len, "pending": self.pending_len}

    def set_buffer(self, path: str, data: bytes) -> None:
        setattr(self, path, data)


@vmstate.describe(name=RINGBUF_SECTION, version=1)
@attrs.define(kw_only=True)
class RingbufChardevRecord:
    """A ring buffer (its unread bytes in ``buffer-piece`` sections)."""

    unread: bytes = attrs.field(default=b"", repr=False)
    id: str = vmstate.field(Str(max_len=256))
    size: int = vmstate.field(U64)
    unread_len: int = vmstate.field(U64, default=attrs.Factory(lambda r: len(r.unread), takes_self=True))

    def buffers(self) -> dict[str, bytes]:
        return {"unread": self.unread}

    def buffer_lengths(self) -> dict[str, int]:
        return {"unread": self.unread_len}

    def set_buffer(self, path: str, data: bytes) -> None:
        self.unread = data


def registry() -> vmstate.Registry:
    """Every section of a machine stream."""
    reg = vmstate.Registry()
    for cls in (MachineRecord, MemoryChardevRecord, RingbufChardevRecord, records.VirtIOSerialRecord,
                gstate.GuestRecord, astate.AgentRecord, pieces.PieceRecord):
        reg.register(cls)
    return reg


_REGISTRY = registry()


# ------------------------------------------------------------------ capture


def _prop_text(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        slot, fn = value
        return f"{slot:02x}.{fn}"
    return str(value)


def _is_ring(chr_: Chardev) -> bool:
    # RingbufChardev lives in emulator.io, above this layer: recognised by shape.
    return not isinstance(chr_, MemoryChardev) and isinstance(getattr(chr_, "unread", None), bytearray) \
        and isinstance(getattr(chr_, "size", None), int)


def _port_record(m: Machine, p: VirtIOSerialPort) -> MachinePortRecord:
    return MachinePortRecord(
        id=p.id, driver=p.driver, qdev_id=p.qdev_id, qom_path=m.qom_path(p), name=p.name,
        chardev=None if p.chardev is None else p.chardev.id,
    )


def _device_record(m: Machine, dev: VirtIOSerial) -> MachineDeviceRecord:
    return MachineDeviceRecord(
        driver=dev.driver, qdev_id=dev.qdev_id, qom_path=m.qom_path(dev), bus=dev.bus_name, index=dev.index,
        max_ports=dev.max_ports, emergency_write=dev.emergency_write,
        pci_devfn=None if dev.pci_devfn is None else DevfnRecord(*dev.pci_devfn),
        transport=[PropertyRecord(k, _prop_text(v)) for k, v in sorted(dev.transport_props.items())],
        unplug_pending=dev.unplug_pending,
        ports=[_port_record(m, p) for p in dev.ports.values()],
    )


def capture(m: Machine) -> MachineRecord:
    """The machine section (nothing is changed)."""
    position = {id(dev): n for n, dev in enumerate(m.devices)}
    return MachineRecord(
        runstate=m.runstate.state.value, autostart=m.autostart, machine_type=m.machine_type,
        ram_size=m.mem.size, anon_count=m.qom.anon_count, bus_auto_ids=m.bus_auto_ids,
        devices=[_device_record(m, dev) for dev in m.devices],
        irqs=[IrqRecord(position[id(dev)], q) for dev, q in m.irqs.pending()],
        chardevs=[ChardevRecord(c.id, c.kind) for c in m.chardevs.values()],
    )


def _chardev_sections(m: Machine) -> list[tuple[Any, int]]:
    out: list[tuple[Any, int]] = []
    for n, chr_ in enumerate(m.chardevs.values()):
        if isinstance(chr_, MemoryChardev):
            out.append((MemoryChardevRecord(id=chr_.id, received=bytes(chr_.received),
                                            pending=bytes(chr_._outbox[chr_._out_pos:])), n))
        elif _is_ring(chr_):
            ring: Any = chr_
            out.append((RingbufChardevRecord(id=chr_.id, size=ring.size, unread=bytes(ring.unread)), n))
    return out


def capture_all(m: Machine) -> list[tuple[Any, int]]:
    """Every section of the machine's stream, RAM aside, as (record, instance id)."""
    return [
        (capture(m), 0),
        *_chardev_sections(m),
        *((records.capture(dev), n) for n, dev in enumerate(m.devices)),
        (gstate.capture(m.guest), 0),
    ]


def save_machine(m: Machine, *, created: int | None = None, key: bytes | None = None,
                 extra: Sequence[tuple[Any, int]] = ()) -> bytes:
    """The whole machine as a vmstate stream.  With ``created`` fixed the
    bytes depend on the machine's state only (save -> load -> save gives
    the same bytes).  ``extra``: (record, instance id) of the sections of
    the layers above (``EXTRA_SECTIONS``: the guest programs), written
    after the guest section."""
    sections = [*capture_all(m), *extra]
    buf = io.BytesIO()
    with vmstate.StreamWriter(buf, producer=PRODUCER, created=created, key=key,
                              machine={"devices": len(m.devices)}) as w:
        piece_id = 0
        for rec, instance_id in sections:
            w.write_section(rec, instance_id=instance_id)
            for piece in pieces.pieces(rec, instance_id):
                w.write_section(piece, instance_id=piece_id)
                piece_id += 1
        w.write_ram(m.mem.ro)
    data = buf.getvalue()
    limits = vmstate.Limits()
    if len(data) > limits.max_stream_size or piece_id + len(sections) + 2 > limits.max_items:
        # What a reader would refuse: refuse it here, where the caller can say so.
        raise ValueError(f"machine state of {len(data)} bytes in {piece_id + len(sections)} sections exceeds "
                         f"the stream limits ({limits.max_stream_size} bytes, {limits.max_items} items)")
    return data


# ------------------------------------------------------------------- load


def _fail(path: str, reason: str) -> vmstate.ValidationError:
    return vmstate.ValidationError(f"{SECTION}/{path}" if path else SECTION, reason)


def _name(d: MachineDeviceRecord | VirtIOSerial, bus: str | None = None) -> str:
    qdev_id = d.qdev_id
    return f"device '{qdev_id}'" if qdev_id is not None else f"id-less {d.driver} on bus '{bus}'"


def _match_devices(m: Machine, rec: MachineRecord) -> list[VirtIOSerial]:
    """The local device for each device of the stream, in stream order."""
    by_id = {dev.qdev_id: dev for dev in m.devices if dev.qdev_id is not None}
    anon = [dev for dev in m.devices if dev.qdev_id is None]
    out: list[VirtIOSerial] = []
    seen: set[str] = set()
    k = 0
    for n, dr in enumerate(rec.devices):
        if dr.qdev_id is not None:
            if dr.qdev_id in seen:
                raise _fail(f"devices[{n}]/qdev_id", f"device '{dr.qdev_id}' appears twice")
            seen.add(dr.qdev_id)
            got = by_id.get(dr.qdev_id)
            if got is None:
                raise _fail(f"devices[{n}]", f"device '{dr.qdev_id}' ({dr.driver}) is not on this machine")
        else:
            if k >= len(anon):
                raise _fail(f"devices[{n}]", f"id-less {dr.driver} number {k + 1} ({dr.qom_path}) "
                            f"is not on this machine (it has {len(anon)} id-less devices)")
            got = anon[k]
            k += 1
        out.append(got)
    for dev in m.devices:
        if (dev.qdev_id is not None and dev.qdev_id not in seen) or (dev.qdev_id is None and dev not in out):
            raise _fail("devices", f"{_name(dev, dev.bus_name)} ({dev.driver}) on this machine is not in the stream")
    return out


def _check_device(m: Machine, n: int, dr: MachineDeviceRecord, dev: VirtIOSerial) -> None:
    path = f"devices[{n}]"
    who = _name(dr, dr.bus)
    device_checks: tuple[tuple[str, object, object], ...] = (
        ("driver", dr.driver, dev.driver),
        ("max_ports", dr.max_ports, dev.max_ports),
        ("emergency_write", dr.emergency_write, dev.emergency_write),
    )
    for field, theirs, ours in device_checks:
        if theirs != ours:
            raise _fail(f"{path}/{field}", f"{who}: {field} {theirs} in the stream, {ours} here")
    local_props = [(k, _prop_text(v)) for k, v in sorted(dev.transport_props.items())]
    if [(p.name, p.value) for p in dr.transport] != local_props:
        raise _fail(f"{path}/transport", f"{who}: properties {[(p.name, p.value) for p in dr.transport]} "
                    f"in the stream, {local_props} here")
    if dr.qdev_id is not None and dr.bus != f"{dr.qdev_id}.0":
        raise _fail(f"{path}/bus", f"{who}: bus '{dr.bus}' is not '{dr.qdev_id}.0'")
    if dr.qdev_id is None and not dr.qom_path.startswith(PERIPHERAL_ANON):
        raise _fail(f"{path}/qom_path", f"{who}: {dr.qom_path!r} is not an anonymous path")
    seen: set[int] = set()
    for j, pr in enumerate(dr.ports):
        ppath = f"{path}/ports[{j}]"
        if pr.id in seen:
            raise _fail(f"{ppath}/id", f"{who}: port {pr.id} appears twice")
        seen.add(pr.id)
        port = dev.ports.get(pr.id)
        if port is None:
            raise _fail(f"{ppath}/id", f"{who}: port {pr.id} ({pr.driver}) is in the stream but not on this machine")
        checks: tuple[tuple[str, str | None, str | None], ...] = (
            ("driver", pr.driver, port.driver),
            ("qdev_id", pr.qdev_id, port.qdev_id),
            ("name", pr.name, port.name),
            ("chardev", pr.chardev, None if port.chardev is None else port.chardev.id),
        )
        for field, theirs, ours in checks:
            if theirs != ours:
                raise _fail(f"{ppath}/{field}", f"{who}: port {pr.id}: {field} {theirs!r} in the stream, {ours!r} here")
        if pr.qdev_id is None and not pr.qom_path.startswith(PERIPHERAL_ANON):
            raise _fail(f"{ppath}/qom_path", f"{who}: port {pr.id}: {pr.qom_path!r} is not an anonymous path")
    for port_id, port in dev.ports.items():
        if port_id not in seen:
            raise _fail(f"{path}/ports", f"{who}: port {port_id} ({port.driver}) on this machine is not in the stream")


def _check_machine(m: Machine, rec: MachineRecord, devs: list[VirtIOSerial]) -> None:
    if rec.ram_size != m.mem.size:
        raise _fail("ram_size", f"{rec.ram_size} bytes in the stream, {m.mem.size} here")
    if rec.machine_type != m.machine_type:
        raise _fail("machine_type", f"'{rec.machine_type}' in the stream, '{m.machine_type}' here")
    if rec.runstate not in {s.value for s in RunState}:
        raise _fail("runstate", f"unknown run state '{rec.runstate}'")
    for n, (dr, dev) in enumerate(zip(rec.devices, devs)):
        _check_device(m, n, dr, dev)
    for field, values in (("index", [d.index for d in rec.devices]), ("bus", [d.bus for d in rec.devices]),
                          ("qom_path", [d.qom_path for d in rec.devices if d.qdev_id is None]
                           + [p.qom_path for d in rec.devices for p in d.ports if p.qdev_id is None])):
        if len(set(values)) != len(values):
            raise _fail(f"devices/{field}", f"the same {field} twice in {values}")
    builtin = BUILTIN_PCI.get(m.machine_type, {})
    slots = [(d.pci_devfn.slot, d.pci_devfn.function) for d in rec.devices if d.pci_devfn is not None]
    if len(set(slots)) != len(slots) or set(slots) & set(builtin) or any(s > 31 or f > 7 for s, f in slots):
        raise _fail("devices/pci_devfn", f"PCI slots {slots} overlap or are not free on {m.machine_type}")
    for n, dr in enumerate(rec.devices):
        if dr.qdev_id is None:
            prefix = "virtio-serial-bus."
            number = dr.bus.removeprefix(prefix)
            if dr.bus == number or not number.isdigit() or int(number) >= rec.bus_auto_ids:
                raise _fail(f"devices[{n}]/bus", f"'{dr.bus}' is not an automatic bus name below "
                            f"{prefix}{rec.bus_auto_ids}")
        if (dr.pci_devfn is None) != (devs[n].pci_devfn is None):
            raise _fail(f"devices[{n}]/pci_devfn", f"{_name(dr, dr.bus)}: PCI placement differs")
    anon = [int(p.removeprefix(PERIPHERAL_ANON + "device[").rstrip("]"))
            for p in [d.qom_path for d in rec.devices if d.qdev_id is None]
            + [p.qom_path for d in rec.devices for p in d.ports if p.qdev_id is None]
            if p.removeprefix(PERIPHERAL_ANON + "device[").rstrip("]").isdigit()]
    if any(k >= rec.anon_count for k in anon):
        raise _fail("anon_count", f"{rec.anon_count}, but the stream has device[{max(anon)}]")
    for k, irq in enumerate(rec.irqs):
        if irq.device >= len(devs) or irq.queue >= len(devs[irq.device].queues):
            raise _fail(f"irqs[{k}]", f"no queue {irq.queue} on device {irq.device}")
    if len({(i.device, i.queue) for i in rec.irqs}) != len(rec.irqs):
        raise _fail("irqs", "an interrupt is pending twice")
    ids = [c.id for c in rec.chardevs]
    if len(set(ids)) != len(ids):
        raise _fail("chardevs", "a chardev id appears twice")
    for k, cr in enumerate(rec.chardevs):
        local = m.chardevs.get(cr.id)
        if local is None:
            raise _fail(f"chardevs[{k}]", f"chardev '{cr.id}' ({cr.kind}) is missing on this machine")
        if local.kind != cr.kind:
            raise _fail(f"chardevs[{k}]/kind", f"chardev '{cr.id}' is {cr.kind} in the stream, {local.kind} here")


def _chardev_states(m: Machine, rec: MachineRecord, loaded: vmstate.LoadedStream) -> list[tuple[Chardev, Any]]:
    out: list[tuple[Chardev, Any]] = []
    for sec in loaded.sections:
        if sec.name not in (MEMORY_SECTION, RINGBUF_SECTION):
            continue
        st: Any = sec.state
        path = f"{sec.name}[{sec.instance_id}]"
        if sec.instance_id >= len(rec.chardevs) or rec.chardevs[sec.instance_id].id != st.id:
            raise vmstate.ValidationError(path, f"chardev '{st.id}' is not chardev {sec.instance_id} of the machine")
        local = m.chardevs[st.id]
        if sec.name == MEMORY_SECTION and not isinstance(local, MemoryChardev):
            raise vmstate.ValidationError(path, f"chardev '{st.id}' here is not an in-memory host program")
        if sec.name == RINGBUF_SECTION:
            ring: Any = local
            if not _is_ring(local):
                raise vmstate.ValidationError(path, f"chardev '{st.id}' here is not a ring buffer")
            if st.size != ring.size:
                raise vmstate.ValidationError(path, f"chardev '{st.id}': size {st.size} in the stream, {ring.size} here")
            if len(st.unread) > st.size:
                raise vmstate.ValidationError(path, f"{len(st.unread)} unread bytes in a ring of {st.size}")
        out.append((local, st))
    if len({id(c) for c, _ in out}) != len(out):
        raise vmstate.ValidationError(SECTION + "/chardevs", "a chardev's state appears twice")
    return out


def _read(data: Any) -> vmstate.LoadedStream:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return vmstate.loads(bytes(data), _REGISTRY)
    return vmstate.load(data, _REGISTRY)


ExtraLoader = Callable[[list[Any], "gstate.GuestRecord"], Callable[[], None]]


def load_machine(m: Machine, data: Any, *, extra: ExtraLoader | None = None) -> MachineRecord:
    """Load a stream (bytes or a binary file object) into a machine started
    with the same devices and port ids.  Raises vmstate.VMStateError (a
    ValidationError naming the device and port id for a machine that does
    not fit); on error nothing changed.  Returns the stream's machine
    record (its run state and autostart, for the caller's run-state rule).

    ``extra`` is the caller's part for the ``EXTRA_SECTIONS`` of the stream
    (without it they are ignored): it gets their records (possibly none)
    and the guest section, checks them (raising vmstate.VMStateError) and
    returns what applies them, which runs right after the guest is applied."""
    loaded = _read(data)
    pieces.assemble(loaded.sections)
    sections: dict[str, list[vmstate.LoadedSection]] = {}
    for sec in loaded.sections:
        sections.setdefault(sec.name, []).append(sec)
    for name in (SECTION, gstate.SECTION):
        if len(sections.get(name, [])) != 1:
            raise vmstate.ValidationError(name, f"the stream has {len(sections.get(name, []))} '{name}' sections, not one")
    rec: MachineRecord = sections[SECTION][0].state
    devs = _match_devices(m, rec)
    _check_machine(m, rec, devs)
    chardevs = _chardev_states(m, rec, loaded)
    dev_secs = {s.instance_id: s.state for s in sections.get(records.SECTION, [])}
    if sorted(dev_secs) != list(range(len(devs))) or len(sections.get(records.SECTION, [])) != len(devs):
        raise vmstate.ValidationError(records.SECTION, f"instances {sorted(dev_secs)} for {len(devs)} devices")
    ram = loaded.ram.get("ram")
    if ram is None or set(loaded.ram) != {"ram"}:
        raise vmstate.ValidationError("ram", f"regions {sorted(loaded.ram)}, expected ['ram']")
    # Stage RAM on a copy, every device against it, the guest against those.
    mem: GuestMemory = m.mem.clone()
    try:
        ram.apply_to(mem.ring_buf)
    except (ValueError, TypeError) as err:
        raise vmstate.ValidationError("ram", str(err)) from None
    staged: list[records.StagedDevice] = []
    for n, (dr, dev) in enumerate(zip(rec.devices, devs)):
        drec = dev_secs[n]
        if drec.bus != dr.bus:
            raise vmstate.ValidationError(f"{records.SECTION}[{n}]/bus", f"'{drec.bus}', the machine says '{dr.bus}'")
        try:
            staged.append(records.stage(dev, drec, mem))
        except vmstate.ValidationError as err:
            raise vmstate.ValidationError(f"{_name(dr, dr.bus)} ({records.SECTION}[{n}])", str(err)) from None
    views = {
        dr.index: gstate.DeviceView(dev, s.rec.guest_features, dev.max_ports, s.queues, dev.ports)
        for dr, dev, s in zip(rec.devices, devs, staged)
    }
    guest_rec = sections[gstate.SECTION][0].state
    apply_guest = gstate.prepare(m.guest, guest_rec, mem=mem, devices=views)
    apply_extra = None
    if extra is not None:
        apply_extra = extra([s.state for name in EXTRA_SECTIONS for s in sections.get(name, [])], guest_rec)
    # Everything checked: apply.
    _apply(m, rec, devs, mem, chardevs, staged)
    apply_guest()
    if apply_extra is not None:
        apply_extra()
    m.pump()
    m.request_eject()
    return rec


def _apply(m: Machine, rec: MachineRecord, devs: list[VirtIOSerial], mem: GuestMemory,
           chardevs: list[tuple[Chardev, Any]], staged: list[records.StagedDevice]) -> None:
    m.mem.assign(mem)
    m.devices[:] = devs  # in place: every device's ``siblings`` is this list
    qom_paths: list[tuple[Any, str]] = []
    for dr, dev in zip(rec.devices, devs):
        dev.index = dr.index
        dev.bus_name = dr.bus
        dev.pci_devfn = None if dr.pci_devfn is None else (dr.pci_devfn.slot, dr.pci_devfn.function)
        dev.unplug_pending = dr.unplug_pending
        ports = [(pr.id, dev.ports[pr.id]) for pr in dr.ports]
        dev.ports.clear()
        dev.ports.update(ports)  # plug order
        if dr.qdev_id is None:
            qom_paths.append((dev, dr.qom_path))
        qom_paths += [(dev.ports[pr.id], pr.qom_path) for pr in dr.ports if pr.qdev_id is None]
    m.qom.reassign_anon(qom_paths, rec.anon_count)
    m.bus_auto_ids = rec.bus_auto_ids
    m.irqs.clear()
    for irq in rec.irqs:
        m.irqs.raise_irq(devs[irq.device], irq.queue)
    for chr_, st in chardevs:
        if isinstance(st, MemoryChardevRecord):
            assert isinstance(chr_, MemoryChardev)
            chr_.received[:] = st.received
            # (MemoryChardev has no setter for its outbox; this module restores it)
            chr_._outbox = bytearray(st.pending)
            chr_._out_pos = 0
        else:
            ring: Any = chr_
            ring.unread[:] = st.unread
    # Held elements resume and post-load tells the guest, with the chardevs
    # already holding what they held.
    for s in staged:
        s.apply()
