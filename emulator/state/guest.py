"""The simulated guest's saved state, described for vmstate.

A real guest keeps its driver state in RAM, so QEMU saves none of it; the
simulated Linux ``virtio_console`` driver keeps it in Python objects, and
this section carries what RAM does not: per virtio device (by the guest's
virtio index) the driver's ring shadows, its ports with their names, hvc
numbers, counters and the receive buffer a read is part-way through; the
kernel's device nodes, ``/dev/virtio-ports`` links and open files; kmalloc's
accounting; the kernel log and each device's warnings.

Records are plain, untrusted data.  ``capture`` reads a live kernel;
``restore`` checks a record against a kernel of a machine built with the
same devices (matched by virtio index and port id) and against guest RAM,
builds every live object aside, and only then swaps them in: a record that
does not fit raises ``vmstate.ValidationError`` naming the field and leaves
the kernel as it was.  Restore the devices (``records.restore``, with the
RAM) first: the guest's rings are checked against the restored RAM and the
devices' queues.

Tokens.  ``DriverQueue`` remembers a Python value per posted chain: the
address of the buffer it put there, or ``CPKT`` for the control packet.  A
queue record says which heads are posted (``in_flight``, a bitmap) and
which of them carry the control packet (``cpkt``); every other posted
head's token is its buffer's address, the one in that head's descriptor
in RAM (checked on capture and on restore), so the stream does not repeat
the 4096 addresses of a booted 31-port guest's receive buffers.

The section is registered in this module's own ``registry()``, not in
``records.registry()``: the emulator's registered set is fixture history
(tests/state/test_state_fixtures.py needs a saved description for each of
its sections), and this section joins it when the snapshot format is
assembled.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import attrs

import vmstate
from emulator.core import vring
from emulator.core.control import CONTROL_HEADER, Event
from emulator.core.device import VirtIOSerial
from emulator.core.memory import PAGE_SIZE, GuestMemory
from emulator.core.ring_log import RingLog
from emulator.guest.driver_queue import (
    CPKT,
    DriverQueue,
    DriverQueueState,
    DriverQueueStateError,
)
from emulator.guest.kernel import (
    KERNEL_LOG_KEPT,
    RX_BUF_SIZE,
    VIRTCONS_MAX_PORTS,
    GuestFile,
    GuestKernel,
    GuestPort,
    PortsDevice,
)
from emulator.guest.kmalloc import Kmalloc
from vmstate import U8, U16, U32, U64, Bool, Bytes, ListOf, Nested, Optional, Str

SECTION = "guest"
_MIN_BUCKET = 6  # kmalloc's smallest block, 64 bytes


@vmstate.describe(name="guest-log", version=1)
@attrs.define
class GuestLogRecord:
    """The newest lines of a RingLog and how many older ones it let go."""

    lines: list[str] = vmstate.field(ListOf(Str(max_len=4096), max_len=KERNEL_LOG_KEPT))
    dropped: int = vmstate.field(U64)


@vmstate.describe(name="guest-virtqueue-chain", version=1)
@attrs.define
class GuestChainRecord:
    """A posted chain of more than one descriptor."""

    head: int = vmstate.field(U16)
    length: int = vmstate.field(U16)


@vmstate.describe(name="guest-virtqueue", version=1)
@attrs.define(kw_only=True)
class GuestQueueRecord:
    """The driver's shadows of one ring (``DriverQueueState``)."""

    index: int = vmstate.field(U16)
    num: int = vmstate.field(U32)
    desc: int = vmstate.field(U64)
    avail: int = vmstate.field(U64)
    used: int = vmstate.field(U64)
    free_head: int = vmstate.field(U16)
    num_free: int = vmstate.field(U32)
    avail_idx: int = vmstate.field(U16)
    last_used_idx: int = vmstate.field(U16)
    num_added: int = vmstate.field(U16)
    event_idx: bool = vmstate.field(Bool)
    broken: bool = vmstate.field(Bool)
    # Bit h (byte h // 8, least significant bit first): a chain is posted at
    # head h.  Its token is the control packet when h is in ``cpkt``, else
    # the address in descriptor h.  Its length is 1 unless ``chains`` says.
    in_flight: bytes = vmstate.field(Bytes(max_len=vring.MAX_QUEUE_SIZE // 8))
    cpkt: list[int] = vmstate.field(ListOf(U16, max_len=vring.MAX_QUEUE_SIZE))
    chains: list[GuestChainRecord] = vmstate.field(ListOf(GuestChainRecord, max_len=vring.MAX_QUEUE_SIZE))


@vmstate.describe(name="guest-inbuf", version=1)
@attrs.define
class GuestInbufRecord:
    """The receive buffer a read has started on (``GuestPort.inbuf``)."""

    addr: int = vmstate.field(U64)
    length: int = vmstate.field(U32)
    offset: int = vmstate.field(U32)


@vmstate.describe(name="guest-port", version=1)
@attrs.define(kw_only=True)
class GuestPortRecord:
    id: int = vmstate.field(U32)
    name: str | None = vmstate.field(Optional(Str(max_len=4096)))
    hvc: int | None = vmstate.field(Optional(U32))
    guest_connected: bool = vmstate.field(Bool)
    host_connected: bool = vmstate.field(Bool)
    outvq_full: bool = vmstate.field(Bool)
    inbuf: GuestInbufRecord | None = vmstate.field(Optional(Nested(GuestInbufRecord)))
    bytes_sent: int = vmstate.field(U64)
    bytes_received: int = vmstate.field(U64)
    bytes_discarded: int = vmstate.field(U64)


@vmstate.describe(name="guest-virtio-serial", version=1)
@attrs.define(kw_only=True)
class GuestDeviceRecord:
    """One driver instance (Linux's ``struct ports_device``)."""

    index: int = vmstate.field(U16)
    features: int = vmstate.field(U64)
    multiport: bool = vmstate.field(Bool)
    max_nr_ports: int = vmstate.field(U32)
    ctrl_tx_buf: int = vmstate.field(U64)
    probed: bool = vmstate.field(Bool)
    queues: list[GuestQueueRecord] = vmstate.field(ListOf(GuestQueueRecord, max_len=1024))
    ports: list[GuestPortRecord] = vmstate.field(ListOf(GuestPortRecord, max_len=511))
    warnings: GuestLogRecord = vmstate.field(Nested(GuestLogRecord))


@vmstate.describe(name="guest-kmalloc-run", version=1)
@attrs.define
class GuestKmallocRunRecord:
    """``count`` allocated blocks of ``1 << bucket`` bytes side by side from ``addr``."""

    addr: int = vmstate.field(U64)
    bucket: int = vmstate.field(U8)
    count: int = vmstate.field(U32)


@vmstate.describe(name="guest-kmalloc-free", version=1)
@attrs.define
class GuestFreeListRecord:
    """One size's free list, in order (the last is handed out first)."""

    bucket: int = vmstate.field(U8)
    addrs: list[int] = vmstate.field(ListOf(U64, max_len=1 << 18))


@vmstate.describe(name="guest-kmalloc", version=1)
@attrs.define(kw_only=True)
class GuestKmallocRecord:
    base: int = vmstate.field(U64)
    limit: int = vmstate.field(U64)
    brk: int = vmstate.field(U64)
    blocks: list[GuestKmallocRunRecord] = vmstate.field(ListOf(GuestKmallocRunRecord, max_len=1 << 18))
    free: list[GuestFreeListRecord] = vmstate.field(ListOf(GuestFreeListRecord, max_len=64))


@vmstate.describe(name="guest-link", version=1)
@attrs.define
class GuestLinkRecord:
    """udev's ``/dev/virtio-ports/<name>`` -> ``../vport<d>p<id>``."""

    path: str = vmstate.field(Str(max_len=4200))
    target: str = vmstate.field(Str(max_len=64))


@vmstate.describe(name="guest-file", version=1)
@attrs.define(kw_only=True)
class GuestFileRecord:
    """An open file: the path it was opened by and the port it reads.
    ``port_removed``: the port was unplugged under it (reads give EOF,
    writes ENODEV)."""

    path: str = vmstate.field(Str(max_len=4200))
    device: int = vmstate.field(U16)
    port: int = vmstate.field(U32)
    console: bool = vmstate.field(Bool)
    closed: bool = vmstate.field(Bool)
    port_removed: bool = vmstate.field(Bool)


@vmstate.describe(name=SECTION, version=1)
@attrs.define(kw_only=True)
class GuestRecord:
    booted: bool = vmstate.field(Bool)
    dead: bool = vmstate.field(Bool)
    kmalloc: GuestKmallocRecord = vmstate.field(Nested(GuestKmallocRecord))
    devices: list[GuestDeviceRecord] = vmstate.field(ListOf(GuestDeviceRecord, max_len=256))
    nodes: list[str] = vmstate.field(ListOf(Str(max_len=64), max_len=1 << 17))
    links: list[GuestLinkRecord] = vmstate.field(ListOf(GuestLinkRecord, max_len=1 << 17))
    files: list[GuestFileRecord] = vmstate.field(ListOf(GuestFileRecord, max_len=1 << 16))
    log: GuestLogRecord = vmstate.field(Nested(GuestLogRecord))


def registry() -> vmstate.Registry:
    """The guest's section, apart from ``records.registry()`` until the
    snapshot format takes it in (see the module docstring)."""
    reg = vmstate.Registry()
    reg.register(GuestRecord)
    return reg


# ------------------------------------------------------------------ capture

# DriverQueueState fields copied to a GuestQueueRecord field of the same
# name; ``tokens`` and ``chain_len`` become in_flight/cpkt/chains.
_QUEUE_COPIED = tuple(
    a.name for a in attrs.fields(DriverQueueState) if a.name not in ("tokens", "chain_len")
)
# A DriverQueueState field named in a refusal -> the record field that holds it.
_QUEUE_FIELD_OF = {name: name for name in _QUEUE_COPIED} | {"tokens": "in_flight", "chain_len": "chains"}
_PORT_COPIED = tuple(a.name for a in attrs.fields(GuestPortRecord) if a.name != "inbuf")


def _log_record(log: RingLog[str]) -> GuestLogRecord:
    return GuestLogRecord(list(log), log.dropped)


def _queue_record(q: DriverQueue, mem: GuestMemory) -> GuestQueueRecord:
    st = q.state()
    bits = bytearray((st.num + 7) // 8)
    cpkt, chains = [], []
    for head, token in enumerate(st.tokens):
        if token is None:
            continue
        bits[head >> 3] |= 1 << (head & 7)
        if token == CPKT:
            cpkt.append(head)
        elif not (type(token) is int and token == mem.read_u64(st.desc + 16 * head)):
            raise vmstate.ValidationError(
                f"{SECTION}/queues[{st.index}]", f"head {head}: token {token!r} is not its buffer's address"
            )
        if st.chain_len[head] > 1:
            chains.append(GuestChainRecord(head, st.chain_len[head]))
    return GuestQueueRecord(
        **{name: getattr(st, name) for name in _QUEUE_COPIED},
        in_flight=bytes(bits), cpkt=cpkt, chains=chains,
    )


def _port_record(p: GuestPort) -> GuestPortRecord:
    inbuf = None if p.inbuf is None else GuestInbufRecord(*p.inbuf)
    return GuestPortRecord(**{name: getattr(p, name) for name in _PORT_COPIED}, inbuf=inbuf)


def _kmalloc_record(k: Kmalloc) -> GuestKmallocRecord:
    st = k.state()
    sizes: dict[int, int] = st["sizes"]  # type: ignore[assignment]
    free: dict[int, list[int]] = st["free"]  # type: ignore[assignment]
    runs: list[GuestKmallocRunRecord] = []
    for addr in sorted(sizes):
        b = sizes[addr]
        last = runs[-1] if runs else None
        if last is not None and last.bucket == b and last.addr + (last.count << b) == addr:
            last.count += 1
        else:
            runs.append(GuestKmallocRunRecord(addr, b, 1))
    return GuestKmallocRecord(
        base=k.base, limit=k.limit, brk=int(st["brk"]),  # type: ignore[call-overload]
        blocks=runs,
        free=[GuestFreeListRecord(b, list(v)) for b, v in sorted(free.items()) if v],
    )


def capture(kernel: GuestKernel) -> GuestRecord:
    """The guest's state as a plain record (nothing is changed)."""
    mem = kernel.mem
    devices = [
        GuestDeviceRecord(
            index=pd.index, features=pd.features, multiport=pd.multiport, max_nr_ports=pd.max_nr_ports,
            ctrl_tx_buf=pd.ctrl_tx_buf, probed=pd.probed,
            queues=[_queue_record(q, mem) for q in pd.queues.values()],
            ports=[_port_record(p) for p in pd.ports.values()],
            warnings=_log_record(pd.warnings),
        )
        for pd in kernel.portdevs.values()
    ]
    return GuestRecord(
        booted=kernel.booted,
        dead=kernel.dead,
        kmalloc=_kmalloc_record(kernel.kmalloc),
        devices=devices,
        nodes=list(kernel.nodes),
        links=[GuestLinkRecord(path, target) for path, target in kernel.links.items()],
        files=[
            GuestFileRecord(
                path=f.path, device=f.port.portdev.index, port=f.port.id, console=f.console,
                closed=f.closed, port_removed=f.port.removed,
            )
            for f in kernel.open_files
        ],
        log=_log_record(kernel.log),
    )


# ------------------------------------------------------------------ restore


def _fail(path: str, reason: str) -> vmstate.ValidationError:
    return vmstate.ValidationError(f"{SECTION}/{path}" if path else SECTION, reason)


class _Blocks:
    """kmalloc's accounting from a record, checked, and who owns which block."""

    def __init__(self, rec: GuestKmallocRecord, local: Kmalloc) -> None:
        if rec.base != local.base:
            raise _fail("kmalloc/base", f"stream has 0x{rec.base:x}, this guest 0x{local.base:x}")
        if rec.limit != local.limit:
            raise _fail("kmalloc/limit", f"stream has 0x{rec.limit:x}, this guest 0x{local.limit:x}")
        if not rec.base <= rec.brk <= rec.limit:
            raise _fail("kmalloc/brk", f"0x{rec.brk:x} is outside [0x{rec.base:x}, 0x{rec.limit:x}]")
        self.room = rec.limit - rec.base
        self.sizes: dict[int, int] = {}
        spans: list[tuple[int, int, str]] = []
        for n, run in enumerate(rec.blocks):
            path = f"kmalloc/blocks[{n}]"
            self._check_bucket(run.bucket, f"{path}/bucket")
            if run.count < 1:
                raise _fail(f"{path}/count", "a run of no blocks")
            size = 1 << run.bucket
            self._check_block(run.addr, run.bucket, f"{path}/addr")
            end = run.addr + run.count * size
            if end > rec.brk:
                raise _fail(f"{path}/count", f"the run ends at 0x{end:x}, beyond brk 0x{rec.brk:x}")
            spans.append((run.addr, end, f"{path}/addr"))
            for k in range(run.count):
                self.sizes[run.addr + k * size] = run.bucket
        free: dict[int, list[int]] = {}
        for n, fl in enumerate(rec.free):
            path = f"kmalloc/free[{n}]"
            self._check_bucket(fl.bucket, f"{path}/bucket")
            if fl.bucket in free:
                raise _fail(f"{path}/bucket", f"a second free list for bucket {fl.bucket}")
            for k, addr in enumerate(fl.addrs):
                self._check_block(addr, fl.bucket, f"{path}/addrs[{k}]")
                if addr + (1 << fl.bucket) > rec.brk:
                    raise _fail(f"{path}/addrs[{k}]", f"0x{addr:x} is beyond brk 0x{rec.brk:x}")
                spans.append((addr, addr + (1 << fl.bucket), f"{path}/addrs[{k}]"))
            free[fl.bucket] = list(fl.addrs)
        spans.sort()
        for (_, end, before), (start, _, where) in itertools.pairwise(spans):
            if start < end:
                raise _fail(where, f"block 0x{start:x} overlaps {before}")
        self.kmalloc = Kmalloc(local.base, local.limit)
        self.kmalloc.load_state({"brk": rec.brk, "free": free, "sizes": self.sizes})
        self.owner: dict[int, str] = {}

    def _check_bucket(self, b: int, path: str) -> None:
        if not _MIN_BUCKET <= b < 64 or 1 << b > self.room:
            raise _fail(path, f"bucket {b} is not a kmalloc size here")

    def _check_block(self, addr: int, bucket: int, path: str) -> None:
        align = min(1 << bucket, PAGE_SIZE)
        if addr % align:
            raise _fail(path, f"0x{addr:x} is not {align}-byte aligned")

    def own(self, addr: int, length: int, path: str) -> None:
        """``addr`` is an allocated block of at least ``length`` bytes, and
        nothing else in the record holds it."""
        b = self.sizes.get(addr)
        if b is None:
            raise _fail(path, f"0x{addr:x} is not a block kmalloc allocated")
        if length > 1 << b:
            raise _fail(path, f"{length} bytes at 0x{addr:x} do not fit its {1 << b}-byte block")
        if addr in self.owner:
            raise _fail(path, f"block 0x{addr:x} is also held by {self.owner[addr]}")
        self.owner[addr] = path


def _queue_state(qr: GuestQueueRecord, mem: GuestMemory, path: str) -> DriverQueueState:
    """The DriverQueueState a record stands for (tokens read from RAM)."""
    num = qr.num
    if not vring.is_valid_size(num):
        raise _fail(f"{path}/num", f"{num} is not a power of two <= {vring.MAX_QUEUE_SIZE}")
    if len(qr.in_flight) != (num + 7) // 8:
        raise _fail(f"{path}/in_flight", f"{len(qr.in_flight)} bytes for a ring of {num}")
    heads = [h for h in range(num) if qr.in_flight[h >> 3] >> (h & 7) & 1]
    if any(qr.in_flight[h >> 3] >> (h & 7) & 1 for h in range(num, 8 * len(qr.in_flight))):
        raise _fail(f"{path}/in_flight", f"a head beyond the ring of {num} is set")
    posted = set(heads)
    if len(heads) + sum(ch.length - 1 for ch in qr.chains) + qr.num_free != num:
        raise _fail(
            f"{path}/in_flight",
            f"{len(heads)} chains posted ({len(qr.chains)} longer than one) and num_free {qr.num_free} "
            f"do not make up the ring of {num}",
        )
    if qr.desc + vring.desc_table_size(num) > mem.size:
        raise _fail(f"{path}/desc", f"ring 0x{qr.desc:x} is not inside RAM ({mem.size} bytes)")
    tokens: list[int | str | None] = [None] * num
    chain_len = [0] * num
    for h in heads:
        tokens[h] = mem.read_u64(qr.desc + 16 * h)
        chain_len[h] = 1
    for k, h in enumerate(qr.cpkt):
        if h not in posted or tokens[h] == CPKT:
            raise _fail(f"{path}/cpkt[{k}]", f"head {h} is not a posted chain (or named twice)")
        tokens[h] = CPKT
    seen: set[int] = set()
    for k, ch in enumerate(qr.chains):
        if ch.head not in posted or ch.head in seen:
            raise _fail(f"{path}/chains[{k}]/head", f"head {ch.head} is not a posted chain (or named twice)")
        if ch.length < 2:
            raise _fail(f"{path}/chains[{k}]/length", f"{ch.length}: only longer chains are listed")
        seen.add(ch.head)
        chain_len[ch.head] = ch.length
    return DriverQueueState(
        **{name: getattr(qr, name) for name in _QUEUE_COPIED}, tokens=tokens, chain_len=chain_len,
    )


def _rx_index(port_id: int) -> int:
    return 0 if port_id == 0 else 2 * port_id + 2


_NODE = re.compile(r"/dev/vport(\d+)p(\d+)\Z")


@attrs.frozen
class DeviceView:
    """A device as the guest's restore checks it: the live transport the
    driver will be bound to, and the state the device's own restore will
    leave it in (the whole-machine load checks the guest against devices
    it has staged but not yet applied, and may renumber their virtio
    indices)."""

    transport: Any
    guest_features: int
    max_ports: int
    queues: list[Any]
    ports: Any  # supports ``in`` (port ids)


def restore(kernel: GuestKernel, rec: GuestRecord, *, mem: GuestMemory | None = None) -> None:
    """Apply a record to the guest of a machine with the same devices.

    Every field is checked first - against ``mem`` (default: the guest's
    RAM; pass a staged copy to check before RAM goes in) and the machine's
    devices, which must already hold their restored state - then the
    kernel takes the rebuilt objects all at once.  Raises
    vmstate.ValidationError naming the field; on error nothing changed.
    """
    prepare(kernel, rec, mem=mem)()


def prepare(
    kernel: GuestKernel, rec: GuestRecord, *, mem: GuestMemory | None = None,
    devices: dict[int, DeviceView] | None = None,
) -> Callable[[], None]:
    """``restore``'s checks, nothing changed; returns what applies it.

    ``devices``: virtio index -> the device as it will be (default: the
    machine's devices as they are, by their current index)."""
    mem = kernel.mem if mem is None else mem
    if mem.size != kernel.mem.size:
        raise _fail("", f"RAM of {mem.size} bytes, this guest has {kernel.mem.size}")
    blocks = _Blocks(rec.kmalloc, kernel.kmalloc)
    if rec.dead:
        raise _fail("dead", "a kernel that system_reset replaced is not restored")
    if not rec.booted and (rec.devices or rec.files or rec.nodes or rec.links):
        raise _fail("booted", "a guest that has not booted has no devices, nodes or files")
    if devices is None:
        devices = {
            dev.index: DeviceView(dev, dev.guest_features, dev.max_ports, dev.queues, dev.ports)
            for dev in kernel.platform.devices if isinstance(dev, VirtIOSerial)
        }
        transports = {dev.index: dev for dev in kernel.platform.devices}
    else:
        transports = {index: view.transport for index, view in devices.items()}
    portdevs: dict[int, PortsDevice] = {}
    live: dict[tuple[int, int], GuestPort] = {}
    hvcs: dict[int, GuestPort] = {}
    hvc_path: dict[int, str] = {}
    port_path: dict[GuestPort, str] = {}
    for i, dr in enumerate(rec.devices):
        path = f"devices[{i}]"
        if dr.index in portdevs:
            raise _fail(f"{path}/index", f"virtio{dr.index} appears twice")
        dev = transports.get(dr.index)
        if dev is None:
            raise _fail(f"{path}/index", f"this machine has no virtio{dr.index}")
        pd = _device(kernel, dev, devices.get(dr.index), dr, mem, blocks, path)
        for j, pr in enumerate(dr.ports):
            port = pd.ports[pr.id]
            if pr.hvc is not None:
                if pr.hvc in hvcs:
                    raise _fail(f"{path}/ports[{j}]/hvc", f"hvc{pr.hvc} is also {hvc_path[pr.hvc]}")
                hvcs[pr.hvc] = port
                hvc_path[pr.hvc] = f"{path}/ports[{j}]"
            live[(dr.index, pr.id)] = port
            port_path[port] = f"{path}/ports[{j}]"
        portdevs[dr.index] = pd
    nodes = _nodes(rec, live)
    links = _links(rec, live)
    files = _files(kernel, rec, portdevs, live, port_path)

    def apply() -> None:
        # Everything checked: the kernel takes it all.
        kernel.kmalloc = blocks.kmalloc
        kernel.portdevs = portdevs
        kernel.nodes = nodes
        kernel.hvcs = dict(sorted(hvcs.items()))
        kernel.links = links
        kernel.open_files = files
        kernel.booted = rec.booted
        kernel.dead = rec.dead
        kernel.log = _ring_log(rec.log)

    return apply


def _ring_log(lr: GuestLogRecord) -> RingLog[str]:
    log: RingLog[str] = RingLog(KERNEL_LOG_KEPT, lr.lines)
    log.dropped = lr.dropped
    return log


def _device(
    kernel: GuestKernel, dev: Any, device: DeviceView | None, dr: GuestDeviceRecord, mem: GuestMemory,
    blocks: _Blocks, path: str,
) -> PortsDevice:
    if not dr.probed:
        raise _fail(f"{path}/probed", "a driver instance the kernel keeps is probed")
    if device is not None and dr.features != device.guest_features:
        raise _fail(
            f"{path}/features",
            f"0x{dr.features:x}, but the device has 0x{device.guest_features:x} from the driver",
        )
    if dr.multiport != bool(dr.features & (1 << 1)):  # VIRTIO_CONSOLE_F_MULTIPORT
        raise _fail(f"{path}/multiport", f"{dr.multiport} disagrees with features 0x{dr.features:x}")
    if dr.multiport:
        if not 1 <= dr.max_nr_ports <= VIRTCONS_MAX_PORTS or (
            device is not None and dr.max_nr_ports != device.max_ports
        ):
            raise _fail(f"{path}/max_nr_ports", f"{dr.max_nr_ports} is not what the device's config says")
        blocks.own(dr.ctrl_tx_buf, CONTROL_HEADER.size, f"{path}/ctrl_tx_buf")
    else:
        if dr.max_nr_ports != 1:
            raise _fail(f"{path}/max_nr_ports", f"{dr.max_nr_ports} without MULTIPORT (1)")
        if dr.ctrl_tx_buf:
            raise _fail(f"{path}/ctrl_tx_buf", "a control buffer without MULTIPORT")
    event_idx = bool(dr.features & (1 << vring.VIRTIO_RING_F_EVENT_IDX))
    pd = PortsDevice(kernel, dev)
    pd.index = dr.index  # the device takes this index when the machine's load renumbers it
    pd.features, pd.multiport, pd.max_nr_ports = dr.features, dr.multiport, dr.max_nr_ports
    pd.ctrl_tx_buf, pd.probed = dr.ctrl_tx_buf, dr.probed
    pd.warnings = _ring_log(dr.warnings)
    for j, qr in enumerate(dr.queues):
        qpath = f"{path}/queues[{j}]"
        if qr.index in pd.queues:
            raise _fail(f"{qpath}/index", f"queue {qr.index} appears twice")
        if device is not None:
            if qr.index >= len(device.queues):
                raise _fail(f"{qpath}/index", f"the device has {len(device.queues)} queues")
            vq = device.queues[qr.index]
            if not vq.ready:
                raise _fail(f"{qpath}/index", f"queue {qr.index} is not set up on the device")
            for name, theirs in (("num", vq.size), ("desc", vq.desc_addr), ("avail", vq.avail_addr),
                                 ("used", vq.used_addr)):
                if getattr(qr, name) != theirs:
                    raise _fail(f"{qpath}/{name}",
                                f"0x{getattr(qr, name):x}, the device's queue {qr.index} has 0x{theirs:x}")
        if qr.event_idx != event_idx:
            raise _fail(f"{qpath}/event_idx", f"{qr.event_idx} disagrees with features 0x{dr.features:x}")
        try:
            q = DriverQueue.from_state(_queue_state(qr, mem, qpath), mem)
        except DriverQueueStateError as err:
            raise _fail(f"{qpath}/{_QUEUE_FIELD_OF[err.field]}", err.reason) from None
        for name, size in (("desc", vring.desc_table_size(q.num)), ("avail", vring.avail_size(q.num)),
                           ("used", vring.used_size(q.num))):
            blocks.own(getattr(q, name), size, f"{qpath}/{name}")
        for head, token in enumerate(q.tokens):
            if token == CPKT:
                if qr.index != 3 or mem.read_u64(q.desc + 16 * head) != dr.ctrl_tx_buf:
                    raise _fail(f"{qpath}/cpkt", f"head {head} is not the control packet of queue 3")
            elif type(token) is int:
                length = mem.read_u32(q.desc + 16 * head + 8)
                blocks.own(token, length, f"{qpath}/in_flight")
        pd.queues[qr.index] = q
    if dr.multiport and not {2, 3} <= pd.queues.keys():
        raise _fail(f"{path}/queues", "the control queues 2 and 3 are missing")
    # A port unplugged while the VM was paused: the device let it go at
    # once, the guest still has it, and its PORT_REMOVE waits in the control
    # ring in RAM - the guest unplugs it when it runs, as it would have.
    removing = _removals_in_flight(pd.queues[2], mem) if dr.multiport else set()
    for j, pr in enumerate(dr.ports):
        ppath = f"{path}/ports[{j}]"
        if pr.id in pd.ports:
            raise _fail(f"{ppath}/id", f"port {pr.id} appears twice")
        if pr.id >= dr.max_nr_ports:
            raise _fail(f"{ppath}/id", f"{pr.id} is beyond max_nr_ports {dr.max_nr_ports}")
        if device is not None and pr.id not in device.ports and pr.id not in removing:
            raise _fail(
                f"{ppath}/id",
                f"the device has no port {pr.id} and no PORT_REMOVE for it waits in the control ring",
            )
        rx = _rx_index(pr.id)
        if rx not in pd.queues or rx + 1 not in pd.queues:
            raise _fail(f"{ppath}/id", f"port {pr.id}'s queues {rx} and {rx + 1} are missing")
        if pr.inbuf is not None:
            ib = pr.inbuf
            if ib.length > RX_BUF_SIZE:
                raise _fail(f"{ppath}/inbuf/length", f"{ib.length} bytes in a {RX_BUF_SIZE}-byte buffer")
            if ib.offset > ib.length or (ib.offset == ib.length and ib.length):
                raise _fail(f"{ppath}/inbuf/offset", f"{ib.offset} of {ib.length} bytes: a buffer read to its end is given back")
            blocks.own(ib.addr, RX_BUF_SIZE, f"{ppath}/inbuf/addr")
        port = GuestPort(pd, pr.id)  # its queues exist: nothing is allocated
        for name in _PORT_COPIED:
            setattr(port, name, getattr(pr, name))
        port.inbuf = None if pr.inbuf is None else [pr.inbuf.addr, pr.inbuf.length, pr.inbuf.offset]
        pd.ports[pr.id] = port
    return pd


def _removals_in_flight(q: DriverQueue, mem: GuestMemory) -> set[int]:
    """The ports the guest will unplug when it handles the control
    messages the device has put in the used ring of ``q`` (control rx) and
    the guest has not taken yet: those whose last PORT_ADD/PORT_REMOVE there
    is a PORT_REMOVE (the order ``control_work`` handles them in)."""
    last: dict[int, int] = {}
    used_idx = mem.read_u16(q.used + 2)
    idx = q.last_used_idx
    for _ in range(min((used_idx - idx) & 0xFFFF, q.num)):  # no more can be outstanding
        head, length = vring.USED_ELEM.unpack(mem.read(vring.used_ring_addr(q.used, idx % q.num), 8))
        token = q.tokens[head] if head < q.num else None
        if type(token) is not int:
            break  # the guest would mark the queue broken here and stop
        if min(length, RX_BUF_SIZE) >= CONTROL_HEADER.size:
            port_id, event, _ = CONTROL_HEADER.unpack(mem.read(token, CONTROL_HEADER.size))
            if event in (Event.PORT_ADD, Event.PORT_REMOVE):
                last[port_id] = event
        idx = (idx + 1) & 0xFFFF
    return {port_id for port_id, event in last.items() if event == Event.PORT_REMOVE}


def _nodes(rec: GuestRecord, live: dict[tuple[int, int], GuestPort]) -> dict[str, GuestPort]:
    nodes: dict[str, GuestPort] = {}
    for k, path in enumerate(rec.nodes):
        m = _NODE.match(path)
        port = live.get((int(m[1]), int(m[2]))) if m else None
        if port is None or path in nodes:
            raise _fail(f"nodes[{k}]", f"{path!r} is not the node of a port (or is listed twice)")
        nodes[path] = port
    if len(nodes) != len(live):
        missing = sorted(f"/dev/{p.node}" for p in live.values() if f"/dev/{p.node}" not in nodes)
        raise _fail("nodes", f"ports without a node: {missing}")
    return nodes


def _links(rec: GuestRecord, live: dict[tuple[int, int], GuestPort]) -> dict[str, str]:
    links: dict[str, str] = {}
    for k, lr in enumerate(rec.links):
        name = lr.path.removeprefix("/dev/virtio-ports/")
        if name == lr.path or not name or "/" in name or lr.path in links:
            raise _fail(f"links[{k}]/path", f"{lr.path!r} is not a /dev/virtio-ports link (or is listed twice)")
        m = _NODE.match("/dev/" + lr.target.removeprefix("../"))
        port = live.get((int(m[1]), int(m[2]))) if m and lr.target.startswith("../") else None
        if port is None or port.name != name:
            raise _fail(f"links[{k}]/target", f"{lr.target!r} is not a port named {name!r}")
        links[lr.path] = lr.target
    # udev makes one link per named port (GuestKernel.port_named) and it
    # goes with the port (port_removed); names are unique on the bus.
    missing = sorted(
        f"/dev/virtio-ports/{p.name} (/dev/{p.node})" for p in live.values()
        if p.name and f"/dev/virtio-ports/{p.name}" not in links
    )
    if missing:
        raise _fail("links", f"named ports without their udev link: {missing}")
    return links


def _files(
    kernel: GuestKernel, rec: GuestRecord, portdevs: dict[int, PortsDevice],
    live: dict[tuple[int, int], GuestPort], port_path: dict[GuestPort, str],
) -> list[GuestFile]:
    files: list[GuestFile] = []
    opened: dict[tuple[int, int], int] = {}
    detached: dict[int, PortsDevice] = {}
    for k, fr in enumerate(rec.files):
        path = f"files[{k}]"
        if not fr.path:
            raise _fail(f"{path}/path", "an empty path")
        if fr.closed:
            raise _fail(f"{path}/closed", "a closed file is no longer the kernel's")
        key = (fr.device, fr.port)
        if fr.port_removed:
            if fr.device in portdevs:
                pd = portdevs[fr.device]
            else:
                pd = detached.setdefault(fr.device, PortsDevice.detached(kernel, fr.device))
            port = GuestPort.detached(pd, fr.port)
        elif fr.device not in portdevs:
            raise _fail(f"{path}/device", f"the guest has no virtio{fr.device}")
        else:
            got = live.get(key)
            if got is None:
                raise _fail(f"{path}/port", f"virtio{fr.device} has no port {fr.port}")
            port = got
            if fr.console != port.is_console:
                raise _fail(f"{path}/console", f"{fr.console}, but port {fr.port} is {'' if port.is_console else 'not '}a console")
            if not fr.console:
                if not port.guest_connected:
                    raise _fail(f"{path}/port", f"port {fr.port} is open but not guest_connected")
                if key in opened:
                    raise _fail(f"{path}/port", f"port {fr.port} is also open as files[{opened[key]}] (EBUSY)")
                opened[key] = k
        f = GuestFile(kernel, fr.path, port, fr.console)
        f.closed = fr.closed
        files.append(f)
    for (d, p), port in live.items():
        if port.guest_connected and not port.is_console and (d, p) not in opened:
            raise _fail(f"{port_path[port]}/guest_connected", f"port {p} of virtio{d} is open but no file has it")
    return files
