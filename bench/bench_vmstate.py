"""Save/load time and size of a full virtio-serial bus state with vmstate.

The state mirrors DESIGN.md ("State that must survive"): a bus of 511 ports
(1024 virtqueues: 2 per port plus the control pair) with per-port and
per-virtqueue records. It is timed beside cbor2.dumps/cbor2.loads of the
equivalent plain dict in the same run. Targets: vmstate <= 3x plain cbor2,
encoded device state <= 67 KB (QEMU's own section for such a bus).

    python bench/bench_vmstate.py [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import timeit
from typing import Any

import attrs
import cbor2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import vmstate  # noqa: E402

MAX_PORTS = 511
QEMU_SECTION_BYTES = 67 * 1000


@vmstate.describe(name="bench-held-element", version=1)
@attrs.define
class HeldElement:
    head: int = vmstate.field(vmstate.U16)
    iov_idx: int = vmstate.field(vmstate.U32)
    iov_offset: int = vmstate.field(vmstate.U32)


@vmstate.describe(name="bench-port", version=1)
@attrs.define
class Port:
    id: int = vmstate.field(vmstate.U32)
    name: str | None = vmstate.field(vmstate.Optional(vmstate.Str(max_len=255)))
    type: str = vmstate.field(vmstate.Str(max_len=64))
    guest_connected: bool = vmstate.field(vmstate.Bool)
    host_connected: bool = vmstate.field(vmstate.Bool)
    throttled: bool = vmstate.field(vmstate.Bool)
    held: HeldElement | None = vmstate.field(vmstate.Optional(HeldElement))


@vmstate.describe(name="bench-virtqueue", version=1)
@attrs.define
class Virtqueue:
    size: int = vmstate.field(vmstate.U16)
    desc: int = vmstate.field(vmstate.U64)
    avail: int = vmstate.field(vmstate.U64)
    used: int = vmstate.field(vmstate.U64)
    last_avail_idx: int = vmstate.field(vmstate.U16)
    used_idx: int = vmstate.field(vmstate.U16)
    signalled_used: int = vmstate.field(vmstate.U16)
    signalled_used_valid: bool = vmstate.field(vmstate.Bool)
    shadow_avail_idx: int = vmstate.field(vmstate.U16)
    broken: bool = vmstate.field(vmstate.Bool)


@vmstate.describe(name="bench-virtio-serial", version=1)
@attrs.define
class Bus:
    max_ports: int = vmstate.field(vmstate.U32)
    host_features: int = vmstate.field(vmstate.U64)
    guest_features: int = vmstate.field(vmstate.U64)
    cols: int = vmstate.field(vmstate.U16)
    rows: int = vmstate.field(vmstate.U16)
    emerg_wr: int = vmstate.field(vmstate.U32)
    port_map: int = vmstate.field(vmstate.Bitmap(MAX_PORTS + 1))
    ports: list[Port] = vmstate.field(vmstate.ListOf(Port, max_len=MAX_PORTS))
    vqs: list[Virtqueue] = vmstate.field(vmstate.ListOf(Virtqueue, max_len=2 * MAX_PORTS + 2))


REGISTRY = vmstate.Registry()
REGISTRY.register(Bus)


def make_bus() -> Bus:
    """A busy 511-port bus in a 64 MiB guest: every port open, a few
    throttled with a held element, rings spread over guest memory."""
    ports = []
    for i in range(MAX_PORTS):
        held = HeldElement(head=i % 128, iov_idx=0, iov_offset=1000 + i) if i % 50 == 7 else None
        ports.append(
            Port(
                id=i,
                name=f"org.qemu.port.{i}",
                type="virtconsole" if i == 0 else "virtserialport",
                guest_connected=True,
                host_connected=i % 3 != 0,
                throttled=held is not None,
                held=held,
            )
        )
    vqs = []
    for q in range(2 * MAX_PORTS + 2):
        size = 32 if q in (2, 3) else 128
        base = 0x100000 + q * 0x4000
        idx = (q * 7919) & 0xFFFF
        vqs.append(
            Virtqueue(
                size=size,
                desc=base,
                avail=base + 16 * size,
                used=base + 0x2000,
                last_avail_idx=idx,
                used_idx=idx,
                signalled_used=idx,
                signalled_used_valid=True,
                shadow_avail_idx=idx,
                broken=False,
            )
        )
    return Bus(
        max_ports=MAX_PORTS,
        host_features=(1 << 1) | (1 << 2) | (1 << 32),
        guest_features=(1 << 1) | (1 << 32),
        cols=80,
        rows=25,
        emerg_wr=0,
        port_map=(1 << MAX_PORTS) - 1,
        ports=ports,
        vqs=vqs,
    )


def plain_dict(bus: Bus) -> dict[str, Any]:
    """The same state as a plain dict (field names as keys), the shape a
    hand-written cbor2 save would use."""
    d = attrs.asdict(bus)
    d["port_map"] = bus.port_map.to_bytes((MAX_PORTS + 8) // 8, "little")
    return d


def save(bus: Bus) -> bytes:
    buf = io.BytesIO()
    with vmstate.StreamWriter(buf, producer="bench", created=0) as w:
        w.write_section(bus)
    return buf.getvalue()


def section_bytes(bus: Any) -> int:
    """Size of the device section item alone (header and trailer excluded)."""
    from vmstate.codec import encode_record, versions_for
    from vmstate.container import encode_item

    d = vmstate.description_of(bus)
    return len(encode_item(["section", d.name, 0, d.version, encode_record(d, bus), versions_for(d)]))


def best(fn: Any, repeat: int) -> float:
    number = 10
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    bus = make_bus()
    plain = plain_dict(bus)
    blob = save(bus)
    plain_blob = cbor2.dumps(plain)
    loaded = vmstate.loads(blob, REGISTRY).section("bench-virtio-serial")
    assert loaded == bus, "round trip changed the state"
    assert save(loaded) == blob, "save -> load -> save is not byte-identical"

    t_save = best(lambda: save(bus), args.repeat)
    t_load = best(lambda: vmstate.loads(blob, REGISTRY), args.repeat)
    t_dumps = best(lambda: cbor2.dumps(plain), args.repeat)
    t_loads = best(lambda: cbor2.loads(plain_blob), args.repeat)
    sec = section_bytes(bus)

    print(f"virtio-serial bus: {MAX_PORTS} ports, {len(bus.vqs)} virtqueues")
    print(f"{'':24}{'vmstate':>12}{'cbor2 dict':>12}{'ratio':>8}  target")
    print(f"{'save (ms)':24}{t_save * 1e3:12.3f}{t_dumps * 1e3:12.3f}{t_save / t_dumps:8.2f}  <= 3")
    print(f"{'load (ms)':24}{t_load * 1e3:12.3f}{t_loads * 1e3:12.3f}{t_load / t_loads:8.2f}  <= 3")
    print(f"{'size (bytes)':24}{len(blob):12d}{len(plain_blob):12d}{len(blob) / len(plain_blob):8.2f}")
    print(f"{'device section (bytes)':24}{sec:12d}{'':12}{'':8}  <= {QEMU_SECTION_BYTES} (QEMU)")
    ok = t_save / t_dumps <= 3 and t_load / t_loads <= 3 and sec <= QEMU_SECTION_BYTES
    ok = emulator_device(args.repeat) and ok
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


def emulator_device(repeat: int) -> bool:
    """The same measurement on the emulator's own description
    (emulator/state/records.py), captured from a booted 511-port machine."""
    from emulator.core.chardev import MemoryChardev
    from emulator.machine.machine import Machine
    from emulator.state.records import SECTION, capture, registry

    m = Machine(ram_size=512 << 20)
    m.device_add({"driver": "virtio-serial", "max_ports": "511"})
    m.boot()
    m.chardev_add(MemoryChardev("con"))
    m.device_add({"driver": "virtconsole", "chardev": "con", "nr": "0"})
    for i in range(1, MAX_PORTS):
        m.device_add({"driver": "virtserialport", "name": f"org.bench.port.{i}", "nr": str(i)})
    assert len(m.guest.ports()) == MAX_PORTS
    rec = capture(m.devices[0])
    reg = registry()
    plain = attrs.asdict(rec)
    plain["ports_map"] = rec.ports_map.to_bytes(64, "little")
    blob = vmstate.dumps([rec], producer="bench", created=0)
    plain_blob = cbor2.dumps(plain)
    assert vmstate.loads(blob, reg).section(SECTION, 0) == rec
    t_save = best(lambda: vmstate.dumps([rec], producer="bench", created=0), repeat)
    t_load = best(lambda: vmstate.loads(blob, reg), repeat)
    t_dumps = best(lambda: cbor2.dumps(plain), repeat)
    t_loads = best(lambda: cbor2.loads(plain_blob), repeat)
    sec = section_bytes(rec)
    print(f"emulator device (emulator/state/records.py), booted guest: {len(rec.ports)} ports, {len(rec.queues)} virtqueues")
    print(f"{'save (ms)':24}{t_save * 1e3:12.3f}{t_dumps * 1e3:12.3f}{t_save / t_dumps:8.2f}  <= 3")
    print(f"{'load (ms)':24}{t_load * 1e3:12.3f}{t_loads * 1e3:12.3f}{t_load / t_loads:8.2f}  <= 3")
    print(f"{'size (bytes)':24}{len(blob):12d}{len(plain_blob):12d}{len(blob) / len(plain_blob):8.2f}")
    print(f"{'device section (bytes)':24}{sec:12d}{'':12}{'':8}  <= {QEMU_SECTION_BYTES} (QEMU)")
    return t_save / t_dumps <= 3 and t_load / t_loads <= 3 and sec <= QEMU_SECTION_BYTES


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
