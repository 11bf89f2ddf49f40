"""Test descriptions with a history, the way a device's state evolves.

`demo-bus` went through three versions; every version's classes are kept here
(HISTORY) so fixtures can be written by each, and the current one (BUS) must
load them all forever:

    demo-bus v1   max_ports, features, port_map, ports (demo-port v1), label
    demo-bus v2   + cols (default 80), + subsection demo-bus/emergency;
                  ports are demo-port v2 (+ throttled, + held element)
    demo-bus v3   features dropped after v2, host_features (translated from
                  features in older streams); minimum_version still 1

`demo-clock` (v1) is a second section type, saved as two instances.
"""

from __future__ import annotations

from typing import Any

import attrs

import vmstate

PRODUCER = "vserial-tests"
CREATED = 1_700_000_000  # fixed: streams must be byte-identical across runs
PAGE_SIZE = 4096
RAM_PAGES = 64


# --- shared, unchanged descriptions -----------------------------------------


@vmstate.describe(name="demo-held", version=1)
@attrs.define
class Held:
    head: int = vmstate.field(vmstate.U16)
    iov_idx: int = vmstate.field(vmstate.U32)
    iov_offset: int = vmstate.field(vmstate.U32)


@vmstate.describe(name="demo-emergency", version=1)
@attrs.define
class Emergency:
    emerg_wr: int = vmstate.field(vmstate.U32)


@vmstate.describe(name="demo-clock", version=1)
@attrs.define
class Clock:
    ticks: int = vmstate.field(vmstate.U64)
    seed: bytes = vmstate.field(vmstate.Bytes(max_len=16))


# --- demo-bus v1 ------------------------------------------------------------


@vmstate.describe(name="demo-port", version=1)
@attrs.define
class PortV1:
    id: int = vmstate.field(vmstate.U32)
    name: str | None = vmstate.field(vmstate.Optional(vmstate.Str(max_len=64)))
    guest_connected: bool = vmstate.field(vmstate.Bool)
    host_connected: bool = vmstate.field(vmstate.Bool)


@vmstate.describe(name="demo-bus", version=1)
@attrs.define
class BusV1:
    max_ports: int = vmstate.field(vmstate.U32)
    features: int = vmstate.field(vmstate.U32)
    port_map: int = vmstate.field(vmstate.Bitmap(32))
    ports: list[PortV1] = vmstate.field(vmstate.ListOf(PortV1, max_len=32))
    label: str = vmstate.field(vmstate.Str(max_len=64))


# --- demo-bus v2 ------------------------------------------------------------


@vmstate.describe(name="demo-port", version=2)
@attrs.define
class Port:
    id: int = vmstate.field(vmstate.U32)
    name: str | None = vmstate.field(vmstate.Optional(vmstate.Str(max_len=64)))
    guest_connected: bool = vmstate.field(vmstate.Bool)
    host_connected: bool = vmstate.field(vmstate.Bool)
    throttled: bool = vmstate.field(vmstate.Bool, since=2, default=False)
    held: Held | None = vmstate.field(vmstate.Optional(Held), since=2, default=None)


@vmstate.describe(name="demo-bus", version=2)
@attrs.define
class BusV2:
    max_ports: int = vmstate.field(vmstate.U32)
    features: int = vmstate.field(vmstate.U32)
    port_map: int = vmstate.field(vmstate.Bitmap(32))
    ports: list[Port] = vmstate.field(vmstate.ListOf(Port, max_len=32))
    label: str = vmstate.field(vmstate.Str(max_len=64))
    cols: int = vmstate.field(vmstate.U16, since=2, default=80)
    emergency: Emergency | None = vmstate.subsection("demo-bus/emergency", Emergency)


# --- demo-bus v3: the current one -------------------------------------------


def _host_features(values: dict[str, Any], version: int) -> int:
    """v1/v2 streams carried 32-bit `features`; v3 keeps 64-bit host_features."""
    return int(values["features"]) | (1 << 32)


def _check_ports(instance: Any, attribute: Any, ports: list[Port]) -> None:
    ids = [p.id for p in ports]
    if len(set(ids)) != len(ids):
        raise ValueError("port ids are not unique")


@vmstate.describe(name="demo-bus", version=3, minimum_version=1)
@attrs.define(kw_only=True)  # stream order is declaration order; kw_only lets defaults sit anywhere
class Bus:
    max_ports: int = vmstate.field(vmstate.U32, validator=attrs.validators.le(32))
    features: int = vmstate.field(vmstate.U32, dropped_after=2, default=0)
    port_map: int = vmstate.field(vmstate.Bitmap(32))
    ports: list[Port] = vmstate.field(vmstate.ListOf(Port, max_len=32), validator=_check_ports)
    label: str = vmstate.field(vmstate.Str(max_len=64))
    cols: int = vmstate.field(vmstate.U16, since=2, default=80)
    host_features: int = vmstate.field(vmstate.U64, since=3, translate=_host_features)
    emergency: Emergency | None = vmstate.subsection("demo-bus/emergency", Emergency)
    loaded_from: int | None = attrs.field(default=None, eq=False)  # not saved: set by post_load

    def vmstate_post_load(self, version: int) -> None:
        self.loaded_from = version


def registry_of(*classes: type) -> vmstate.Registry:
    r = vmstate.Registry()
    for cls in classes:
        r.register(cls)
    return r


REGISTRY = registry_of(Bus, Clock)
HISTORY: dict[int, vmstate.Registry] = {
    1: registry_of(BusV1, Clock),
    2: registry_of(BusV2, Clock),
    3: REGISTRY,
}


# --- sample states, one per version -----------------------------------------


def sample_bus(version: int) -> Any:
    names = [None, "org.qemu.guest_agent.0", "com.example.port2"]
    if version == 1:
        ports1 = [PortV1(i, names[i], i != 2, i != 1) for i in range(3)]
        return BusV1(max_ports=31, features=0b110, port_map=0b111, ports=ports1, label="bus v1")
    ports = [Port(i, names[i], i != 2, i != 1) for i in range(3)]
    ports[2] = attrs.evolve(ports[2], throttled=True, held=Held(head=17, iov_idx=1, iov_offset=2048))
    if version == 2:
        return BusV2(31, 0b110, 0b111, ports, "bus v2", cols=132, emergency=Emergency(ord("!")))
    return Bus(
        max_ports=31,
        port_map=0b111,
        ports=ports,
        label="bus v3",
        cols=132,
        host_features=(1 << 33) | 0b110,
        emergency=Emergency(ord("!")),
    )


def sample_memory() -> bytearray:
    """RAM_PAGES pages: mostly zero, a few patterned pages."""
    memory = bytearray(RAM_PAGES * PAGE_SIZE)
    for page in (1, 2, 3, 10, 40):
        memory[page * PAGE_SIZE : (page + 1) * PAGE_SIZE] = bytes((page + i) % 251 for i in range(PAGE_SIZE))
    return memory


def sample_stream(version: int, key: bytes | None = None) -> bytes:
    """The stream the program of `version` writes: a full RAM round, a dirty
    round, then the device sections (migration order)."""
    import io

    memory = sample_memory()
    buf = io.BytesIO()
    machine = {"machine": "demo", "max_ports": 31, "devices": ["demo-bus"]}
    with vmstate.StreamWriter(buf, producer=PRODUCER, created=CREATED + version, machine=machine, key=key) as w:
        w.write_ram(memory, page_size=PAGE_SIZE)
        memory[10 * PAGE_SIZE] ^= 0xFF
        memory[20 * PAGE_SIZE : 21 * PAGE_SIZE] = bytes(range(256)) * (PAGE_SIZE // 256)
        memory[40 * PAGE_SIZE : 41 * PAGE_SIZE] = bytes(PAGE_SIZE)
        w.write_ram(memory, page_size=PAGE_SIZE, dirty=[10, 20, 40])
        w.write_section(sample_bus(version))
        w.write_section(Clock(ticks=123456789 * version, seed=b"seed"), instance_id=0)
        w.write_section(Clock(ticks=2**64 - 1, seed=b""), instance_id=1)
    return buf.getvalue()


def final_memory() -> bytearray:
    """What memory holds after applying sample_stream's two rounds."""
    memory = sample_memory()
    memory[10 * PAGE_SIZE] ^= 0xFF
    memory[20 * PAGE_SIZE : 21 * PAGE_SIZE] = bytes(range(256)) * (PAGE_SIZE // 256)
    memory[40 * PAGE_SIZE : 41 * PAGE_SIZE] = bytes(PAGE_SIZE)
    return memory


HMAC_KEY = b"vserial demo key: not a secret"
