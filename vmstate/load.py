"""Saving and loading whole streams.

`load` reads a stream item by item, checks each against the registry's
descriptions and builds its record as it arrives (keeping only built records),
and returns them only after the trailer's digest (and HMAC) has matched. A
truncated, corrupt, tampered or incompatible stream raises one of the
documented errors and nothing has been handed to the caller to apply. Applying the result (records into live objects, RAM into memory) is
the caller's job and starts after `load` returns.
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Mapping

import attrs

from .codec import check_versions, decode_record, version_problem
from .container import DEFAULT_LIMITS, KIND_RAM, Header, Limits
from .errors import CorruptStream, IncompatibleVersion
from .ram import PageRun, RamRegion, check_runs
from .registry import Registry
from .stream import StreamReader, StreamWriter

__all__ = ["LoadedSection", "RamItem", "LoadedStream", "RawStream", "load", "loads", "read_raw", "save", "dumps", "resave"]


@attrs.frozen
class LoadedSection:
    name: str
    instance_id: int
    version: int
    state: Any


@attrs.frozen
class RamItem:
    """One RAM item as it came in the stream (part of one round)."""

    region: str
    page_size: int
    total_pages: int
    runs: list[PageRun]


@attrs.frozen
class RawStream:
    """A stream read and verified, items not yet checked against descriptions."""

    header: Header
    items: list[Any]
    digest: bytes
    signed: bool
    authenticated: bool


@attrs.frozen
class LoadedStream:
    header: Header
    items: list[LoadedSection | RamItem]
    digest: bytes
    authenticated: bool

    @property
    def sections(self) -> list[LoadedSection]:
        return [i for i in self.items if isinstance(i, LoadedSection)]

    def section(self, name: str, instance_id: int = 0) -> Any:
        """The record of section `name`/`instance_id`; KeyError when absent."""
        for s in self.sections:
            if s.name == name and s.instance_id == instance_id:
                return s.state
        raise KeyError(f"no section '{name}' instance {instance_id} in the stream")

    @property
    def ram(self) -> dict[str, RamRegion]:
        """RAM by region, every round's runs in stream order."""
        regions: dict[str, RamRegion] = {}
        for item in self.items:
            if isinstance(item, RamItem):
                r = regions.setdefault(item.region, RamRegion(item.region, item.page_size, item.total_pages))
                r.runs.extend(item.runs)
        return regions


def read_raw(
    source: Any, *, key: bytes | None = None, limits: Limits = DEFAULT_LIMITS, check_eof: bool = True
) -> RawStream:
    reader = StreamReader(source, key=key, limits=limits, check_eof=check_eof)
    items = list(reader)
    if reader.digest is None:  # the iteration above only ends at the trailer
        raise CorruptStream("stream truncated (no trailer)")
    return RawStream(reader.header, items, reader.digest, reader.signed, reader.authenticated)


def _section_root(name: str, instance_id: int) -> str:
    return name if instance_id == 0 else f"{name}:{instance_id}"


def check_section_item(item: list[Any]) -> tuple[str, int, int, Any, dict[str, int]]:
    if len(item) != 6:
        raise CorruptStream("malformed section item")
    _, name, instance_id, version, body, versions = item
    if name.__class__ is not str or instance_id.__class__ is not int or not 0 <= instance_id < 1 << 32:
        raise CorruptStream("section item: bad name or instance id")
    if version.__class__ is not int:
        raise CorruptStream(f"section '{name}': version is not an integer")
    return name, instance_id, version, body, check_versions(versions, name)


def check_ram_item(item: list[Any], limits: Limits) -> RamItem:
    if len(item) != 5:
        raise CorruptStream("malformed RAM item")
    _, region, page_size, total_pages, runs = item
    if region.__class__ is not str or page_size.__class__ is not int or total_pages.__class__ is not int:
        raise CorruptStream("RAM item: bad region, page size or page count")
    if not (512 <= page_size <= 1 << 21 and page_size & (page_size - 1) == 0):
        raise CorruptStream(f"RAM '{region}': page size {page_size} is not a power of two in 512..2 MiB")
    if not 0 <= total_pages <= limits.max_ram_pages:
        raise CorruptStream(f"RAM '{region}': {total_pages} pages exceeds the limit")
    if page_size * total_pages > limits.max_ram_bytes:
        raise CorruptStream(
            f"RAM '{region}': {total_pages} pages of {page_size} bytes exceeds the limit of {limits.max_ram_bytes} bytes"
        )
    if runs.__class__ is not list:
        raise CorruptStream(f"RAM '{region}': runs is not an array")
    return RamItem(region, page_size, total_pages, check_runs(region, page_size, total_pages, runs, limits.max_runs_per_item))


class _Builder:
    """Checks raw items against the registry and builds their records one at
    a time, as they arrive: a section the registry cannot load is refused
    before the rest of the stream is read, and only built records are kept."""

    def __init__(self, registry: Registry, limits: Limits) -> None:
        self.registry = registry
        self.limits = limits
        self.items: list[LoadedSection | RamItem] = []
        self.seen: set[tuple[str, int]] = set()
        self.geometry: dict[str, tuple[int, int]] = {}

    def add(self, item: list[Any]) -> None:
        if item[0] == KIND_RAM:
            ram = check_ram_item(item, self.limits)
            shape = (ram.page_size, ram.total_pages)
            if self.geometry.setdefault(ram.region, shape) != shape:
                raise CorruptStream(f"RAM '{ram.region}': page size or page count changes between rounds")
            self.items.append(ram)
            return
        name, instance_id, version, body, versions = check_section_item(item)
        if (name, instance_id) in self.seen:
            raise CorruptStream(f"section '{name}' instance {instance_id} appears twice")
        self.seen.add((name, instance_id))
        d = self.registry.get(name)
        if d is None:
            raise IncompatibleVersion(f"Unknown savevm section or instance '{name}' {instance_id}")
        problem = version_problem(d, version)
        if problem is not None:
            raise IncompatibleVersion(problem)
        state = decode_record(d, version, body, versions, _section_root(name, instance_id))
        self.items.append(LoadedSection(name, instance_id, version, state))


def build(raw: RawStream, registry: Registry, limits: Limits = DEFAULT_LIMITS) -> LoadedStream:
    """Checks raw items against the registry and builds every record."""
    builder = _Builder(registry, limits)
    for item in raw.items:
        builder.add(item)
    return LoadedStream(raw.header, builder.items, raw.digest, raw.authenticated)


def load(
    source: Any,
    registry: Registry,
    *,
    key: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
    check_eof: bool = True,
) -> LoadedStream:
    """Reads, verifies and builds a whole stream from a file object or socket.
    Pass `check_eof=False` on a connection that stays open after the stream.

    Each item is checked and its record built as it arrives (an unknown
    section or a bad value stops the load there); the records are returned
    only once the trailer's digest (and HMAC) has matched."""
    reader = StreamReader(source, key=key, limits=limits, check_eof=check_eof)
    builder = _Builder(registry, limits)
    for item in reader:
        builder.add(item)
    if reader.digest is None:  # the iteration above only ends at the trailer
        raise CorruptStream("stream truncated (no trailer)")
    return LoadedStream(reader.header, builder.items, reader.digest, reader.authenticated)


def loads(data: bytes, registry: Registry, *, key: bytes | None = None, limits: Limits = DEFAULT_LIMITS) -> LoadedStream:
    return load(io.BytesIO(data), registry, key=key, limits=limits)


def save(
    sink: Any,
    sections: Iterable[Any],
    *,
    producer: str,
    created: int | None = None,
    machine: Mapping[str, Any] | None = None,
    ram: Mapping[str, Any] | None = None,
    page_size: int = 4096,
    key: bytes | None = None,
) -> bytes:
    """Writes a complete stream: RAM regions (name -> bytes-like), then each
    section (a described record, or a `(record, instance_id)` pair).
    Returns the stream's sha256."""
    with StreamWriter(sink, producer=producer, created=created, machine=machine, key=key) as w:
        for region, memory in (ram or {}).items():
            w.write_ram(memory, region=region, page_size=page_size)
        for s in sections:
            state, instance_id = s if isinstance(s, tuple) else (s, 0)
            w.write_section(state, instance_id=instance_id)
    return w.close()


def dumps(sections: Iterable[Any], **kwargs: Any) -> bytes:
    """`save` into bytes."""
    buf = io.BytesIO()
    save(buf, sections, **kwargs)
    return buf.getvalue()


def resave(loaded: LoadedStream, sink: Any, *, key: bytes | None = None) -> bytes:
    """Writes a loaded stream back, item for item; for a stream this library
    wrote, the bytes are identical (the encoding is canonical)."""
    h = loaded.header
    w = StreamWriter(sink, producer=h.producer, created=h.created, machine=h.machine, key=key)
    for item in loaded.items:
        if isinstance(item, RamItem):
            w.write_ram_item(item.region, item.page_size, item.total_pages, item.runs)
        else:
            w.write_section(item.state, instance_id=item.instance_id)
    return w.close()
