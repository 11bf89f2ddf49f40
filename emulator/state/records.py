"""The virtio-serial device's saved state, described for vmstate.

Records here are plain, untrusted data.  ``capture`` turns a live device into
a record; ``restore`` checks a record against a live device built from the
same command line (QEMU's rule: stable ids, the destination is started with
the same ``nr=`` values), validates every queue and held element exactly as
construction would, and only then applies it - a record that does not fit
raises ``vmstate.ValidationError`` and changes nothing.

As in QEMU's virtio_serial_load_device, ``throttled`` is not saved: every
port that holds an element is unthrottled while loading (traced), so held
guest data flows to the destination's host as soon as it can take it.
Then, as virtio_serial_post_load_timer_cb does for the ports in the stream,
a port whose local host connection differs from the saved one tells the
guest with PORT_OPEN (the local value), and every such port reports its
loaded guest state (VSERPORT_CHANGE for ports with an id; a serial port's
chardev learns it).  The destination may have ports the stream does not
(a console at id 0, whose bit is always set in the map); those are left
as they are.
"""

from __future__ import annotations

from typing import Any

import attrs

import vmstate
from emulator.core.control import Event
from emulator.core.device import VirtIOSerial
from emulator.core.ports import VirtIOSerialPort
from emulator.core.virtqueue import Element, VirtQueue, VirtQueueState
from emulator.errors import GuestError
from vmstate import U8, U16, U32, U64, Bitmap, Bool, ListOf, Nested, Optional, Str

SECTION = "virtio-serial"


@vmstate.describe(name="virtio-serial-sg", version=1)
@attrs.define
class SgRecord:
    addr: int = vmstate.field(U64)
    len: int = vmstate.field(U32)


@vmstate.describe(name="virtio-serial-element", version=1)
@attrs.define
class ElementRecord:
    """A chain the device holds (a throttled port's element)."""

    head: int = vmstate.field(U16)
    out_sg: list[SgRecord] = vmstate.field(ListOf(SgRecord, max_len=1024))
    in_sg: list[SgRecord] = vmstate.field(ListOf(SgRecord, max_len=1024))


@vmstate.describe(name="virtqueue", version=1)
@attrs.define(kw_only=True)
class VirtQueueRecord:
    index: int = vmstate.field(U16)
    size: int = vmstate.field(U32)
    ready: bool = vmstate.field(Bool)
    desc_addr: int = vmstate.field(U64)
    avail_addr: int = vmstate.field(U64)
    used_addr: int = vmstate.field(U64)
    last_avail_idx: int = vmstate.field(U16)
    used_idx: int = vmstate.field(U16)
    inuse: int = vmstate.field(U16)
    signalled_used: int = vmstate.field(U16)
    signalled_used_valid: bool = vmstate.field(Bool)


@vmstate.describe(name="virtio-serial-port", version=1)
@attrs.define(kw_only=True)
class PortRecord:
    id: int = vmstate.field(U32)
    driver: str = vmstate.field(Str(max_len=64))
    name: str | None = vmstate.field(Optional(Str(max_len=4096)))
    guest_connected: bool = vmstate.field(Bool)
    host_connected: bool = vmstate.field(Bool)
    iov_idx: int = vmstate.field(U32)
    iov_offset: int = vmstate.field(U32)
    elem: ElementRecord | None = vmstate.field(Optional(Nested(ElementRecord)))


@vmstate.describe(name=SECTION, version=1)
@attrs.define(kw_only=True)
class VirtIOSerialRecord:
    bus: str = vmstate.field(Str(max_len=256))
    max_ports: int = vmstate.field(U32)
    host_features: int = vmstate.field(U64)
    guest_features: int = vmstate.field(U64)
    status: int = vmstate.field(U8)
    broken: bool = vmstate.field(Bool)
    cols: int = vmstate.field(U16)
    rows: int = vmstate.field(U16)
    ports_map: int = vmstate.field(Bitmap(512))
    ports: list[PortRecord] = vmstate.field(ListOf(PortRecord, max_len=511))
    queues: list[VirtQueueRecord] = vmstate.field(ListOf(VirtQueueRecord, max_len=1024))


def registry() -> vmstate.Registry:
    """The emulator's sections, for ``vserial vmstate schema`` and loading."""
    reg = vmstate.Registry()
    reg.register(VirtIOSerialRecord)
    return reg


# -- how each saved field maps to the live objects ----------------------------
#
# A record's attrs fields (their order and types are the stream format) are
# the list capture and restore go over.  What is not a plain copy between a
# record field and the live attribute of the same name is said once here;
# tests/state/test_state_records.py checks these tables against the
# records and the live objects and names any field that has no entry.

# VirtQueueState fields the stream does not carry, and where restore takes
# them from.  Every other VirtQueueState field is a VirtQueueRecord field of
# the same name: capture copies it from ``VirtQueue.state()``, restore back
# into the state that ``VirtQueue.from_state`` validates.
QUEUE_NOT_SAVED = {
    "max_size": "the destination's queue, built from the same command line",
    "event_idx": "the saved guest_features (VIRTIO_RING_F_EVENT_IDX)",
}

# Element slots the stream does not carry.
ELEMENT_NOT_SAVED = {
    "ndescs": "len(out_sg) + len(in_sg): each buffer came from one descriptor",
}

# What restore does with each saved port and device field.  Capture reads
# every field from the live attribute of the same name, except the device's
# ``bus`` (``bus_name``), ``ports_map`` (a bitmap of ``ports_map``'s words)
# and the nested records.
#   match    the destination's value must be the same (same command line)
#   copy     written to the destination as saved
#   compare  the destination keeps its own; if it differs, the guest is told
#   keep     the destination keeps its own, unchecked
#   rebuild  validated, then made a live object (queues, the held element)
MATCH, COPY, COMPARE, KEEP, REBUILD = "match", "copy", "compare", "keep", "rebuild"

PORT_ON_RESTORE = {
    "id": MATCH,
    "driver": MATCH,
    "name": KEEP,
    "guest_connected": COPY,
    "host_connected": COMPARE,  # PORT_OPEN with the local value (post_load)
    "iov_idx": COPY,
    "iov_offset": COPY,
    "elem": REBUILD,
}

DEVICE_ON_RESTORE = {
    "bus": KEEP,
    "max_ports": MATCH,
    "host_features": MATCH,
    "guest_features": COPY,  # once checked to be offered here
    "status": COPY,
    "broken": COPY,
    "cols": COPY,
    "rows": COPY,
    "ports_map": MATCH,
    "ports": REBUILD,
    "queues": REBUILD,
}

_QUEUE_SAVED = tuple(a.name for a in attrs.fields(VirtQueueRecord))
_PORT_READ = tuple(a.name for a in attrs.fields(PortRecord) if a.name != "elem")
_PORT_COPIED = tuple(name for name, how in PORT_ON_RESTORE.items() if how == COPY)
_DEVICE_READ = tuple(
    a.name for a in attrs.fields(VirtIOSerialRecord) if a.name not in ("bus", "ports_map", "ports", "queues")
)
_DEVICE_COPIED = tuple(name for name, how in DEVICE_ON_RESTORE.items() if how == COPY)


def _map_int(words: list[int]) -> int:
    return sum(w << (32 * i) for i, w in enumerate(words))


def _element_record(e: Element) -> ElementRecord:
    return ElementRecord(
        head=e.head,
        out_sg=[SgRecord(a, n) for a, n in e.out_sg],
        in_sg=[SgRecord(a, n) for a, n in e.in_sg],
    )


def _live_element(er: ElementRecord) -> Element:
    out = [(s.addr, s.len) for s in er.out_sg]
    ins = [(s.addr, s.len) for s in er.in_sg]
    return Element(er.head, out, ins, len(out) + len(ins))


def _port_fields(port: VirtIOSerialPort) -> dict[str, Any]:
    fields = {name: getattr(port, name) for name in _PORT_READ}
    if port.elem is None:
        # QEMU saves the flush position only with a held element; without
        # one, iov_idx still points past the last element finished.
        fields["iov_idx"] = fields["iov_offset"] = 0
    return fields


def capture(dev: VirtIOSerial) -> VirtIOSerialRecord:
    """The device's state as a plain record (nothing is changed)."""
    ports = [
        PortRecord(**_port_fields(p), elem=None if p.elem is None else _element_record(p.elem))
        for p in dev.ports.values()  # plug order, as QEMU saves them
    ]
    queues = []
    for q in dev.queues:
        st = q.state()
        queues.append(VirtQueueRecord(**{name: getattr(st, name) for name in _QUEUE_SAVED}))
    return VirtIOSerialRecord(
        **{name: getattr(dev, name) for name in _DEVICE_READ},
        bus=dev.bus_name, ports_map=_map_int(dev.ports_map), ports=ports, queues=queues,
    )


def _fail(path: str, reason: str) -> vmstate.ValidationError:
    return vmstate.ValidationError(f"{SECTION}/{path}" if path else SECTION, reason)


def restore(dev: VirtIOSerial, rec: VirtIOSerialRecord, ram: Any = None) -> None:
    """Apply a record to a device built from the same command line.

    ``ram``: the stream's RAM (a ``vmstate.RamRegion``) when the guest's
    memory comes with it.  It is staged on a copy of the current RAM, the
    rings are checked against the staged copy, and only when everything
    fits do RAM and device state go in together.  Without ``ram`` the rings
    are checked against the RAM the machine holds.  Raises
    vmstate.ValidationError naming the field; on error nothing changed.
    """
    live = dev.mem
    mem = live
    if ram is not None:
        mem = live.clone()
        try:
            ram.apply_to(mem.ring_buf)
        except (ValueError, TypeError) as err:
            raise vmstate.ValidationError("ram", str(err)) from None
    staged = stage(dev, rec, mem)
    # Everything checked: apply.
    if mem is not live:
        live.assign(mem)
    staged.apply()


@attrs.define
class StagedDevice:
    """A record checked against a device and the RAM it will run on, with
    its live queues and held elements built aside (``stage``); ``apply``
    puts them in and runs QEMU's post-load rules.  The whole-machine load
    stages every device (and checks the guest against ``queues``) before
    it applies any."""

    dev: VirtIOSerial
    rec: VirtIOSerialRecord
    queues: list[VirtQueue]
    held: dict[int, Element | None]

    def apply(self) -> None:
        _apply(self.dev, self.rec, self.queues, self.held)


def stage(dev: VirtIOSerial, rec: VirtIOSerialRecord, mem: Any) -> StagedDevice:
    """Check ``rec`` against ``dev`` with the rings in ``mem`` (the staged
    RAM) and build its live objects aside; nothing is changed.  Raises
    vmstate.ValidationError naming the field."""
    live = dev.mem
    if rec.max_ports != dev.max_ports:
        raise _fail("max_ports", f"stream has {rec.max_ports}, this device {dev.max_ports}")
    if rec.ports_map != _map_int(dev.ports_map):
        theirs = [i for i in range(rec.max_ports) if rec.ports_map >> i & 1]
        ours = [i for i in range(dev.max_ports) if _map_int(dev.ports_map) >> i & 1]
        raise _fail("ports_map", f"ports in use differ: stream {theirs}, this device {ours}")
    if rec.guest_features & ~dev.host_features:
        raise _fail(
            "guest_features",
            f"features 0x{rec.guest_features & ~dev.host_features:x} are not offered by this device",
        )
    if rec.host_features != dev.host_features:
        raise _fail("host_features", f"stream 0x{rec.host_features:x}, this device 0x{dev.host_features:x}")
    if len(rec.queues) != len(dev.queues):
        raise _fail("queues", f"stream has {len(rec.queues)} queues, this device {len(dev.queues)}")
    if len({p.id for p in rec.ports}) != len(rec.ports):
        raise _fail("ports", "a port id appears twice")
    event_idx = bool(rec.guest_features & (1 << 29))
    queues: list[VirtQueue] = []
    for i, qr in enumerate(rec.queues):
        local = dev.queues[i]
        state = VirtQueueState(
            **{name: getattr(qr, name) for name in _QUEUE_SAVED},
            max_size=local.max_size, event_idx=event_idx,
        )
        if qr.index != i:
            raise _fail(f"queues[{i}]/index", f"{qr.index} out of order")
        try:
            queues.append(VirtQueue.from_state(state, mem))
        except (ValueError, GuestError) as err:
            raise _fail(f"queues[{i}]", str(err)) from None
    held: dict[int, Element | None] = {}
    for n, pr in enumerate(rec.ports):
        path = f"ports[{n}]"
        port = dev.ports.get(pr.id)
        if port is None:
            raise _fail(f"{path}/id", f"no port {pr.id} on this device")
        if pr.driver != port.driver:
            raise _fail(f"{path}/driver", f"stream has {pr.driver}, port {pr.id} here is {port.driver}")
        held[pr.id] = _element(pr, queues[port.tx_queue], live.size, path)
    return StagedDevice(dev, rec, queues, held)


def _apply(dev: VirtIOSerial, rec: VirtIOSerialRecord, queues: list[VirtQueue],
           held: dict[int, Element | None]) -> None:
    for name in _DEVICE_COPIED:
        setattr(dev, name, getattr(rec, name))
    dev.queues = queues
    saved_host: dict[int, bool] = {}
    for pr in rec.ports:
        port = dev.ports[pr.id]
        for name in _PORT_COPIED:
            setattr(port, name, getattr(pr, name))
        port.throttled = False
        port.elem = held[pr.id]
        saved_host[pr.id] = pr.host_connected
    # fetch_active_ports_list: a held element means "resume the flush".
    for pr in rec.ports:
        port = dev.ports[pr.id]
        if port.elem is not None:
            dev.throttle_port(port, False)
    _post_load(dev, saved_host)


def _element(pr: PortRecord, vq: VirtQueue, ram_size: int, path: str) -> Element | None:
    er = pr.elem
    if er is None:
        if pr.iov_idx or pr.iov_offset:
            raise _fail(f"{path}/iov_idx", "iov position without a held element")
        return None
    if not vq.ready or er.head >= vq.size or vq.inuse < 1:
        raise _fail(f"{path}/elem/head", f"head {er.head} is not in flight on queue {vq.index}")
    for kind, sgs in (("out_sg", er.out_sg), ("in_sg", er.in_sg)):
        for k, sg in enumerate(sgs):
            if not sg.len or sg.addr + sg.len > ram_size:
                raise _fail(f"{path}/elem/{kind}[{k}]", f"buffer 0x{sg.addr:x}+{sg.len} is not inside RAM")
    if pr.iov_idx > len(er.out_sg) or (
        pr.iov_idx < len(er.out_sg) and pr.iov_offset >= er.out_sg[pr.iov_idx].len
    ) or (pr.iov_idx == len(er.out_sg) and pr.iov_offset):
        raise _fail(f"{path}/iov_offset", f"position {pr.iov_idx}/{pr.iov_offset} is outside the element")
    return _live_element(er)


def _post_load(dev: VirtIOSerial, saved_host: dict[int, bool]) -> None:
    for port_id, host_connected in saved_host.items():
        port = dev.ports[port_id]
        if port.host_connected != host_connected:
            dev.send_control_event(port.id, Event.PORT_OPEN, int(port.host_connected))
        port.set_guest_connected(port.guest_connected)
