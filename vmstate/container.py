"""The wire format: framing, item shapes and the decoding limits.

A stream is a CBOR sequence (RFC 8742). Every item is tag 24 ("encoded CBOR
data item", RFC 8949 3.4.5.1) around a definite-length byte string, so a reader
learns an item's size from its first bytes and refuses an oversized one before
reading or decoding it. Inside, canonically encoded:

    header   {"magic": "vserial-vmstate", "format": 1, "producer": str,
              "created": uint (Unix seconds), ? "machine": map}
    section  ["section", name, instance_id, version, body, {description: version}]
    ram      ["ram", region, page_size, total_pages, [[start, count, data|null], ...]]
    trailer  ["end", sha256, hmac-sha256|null]

The header comes first and the trailer last; sections and RAM rounds may come
in any order between (live migration sends RAM rounds first). The digests
cover every byte before the trailer item. See docs/vmstate.md.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Iterator, NoReturn

import attrs
import cbor2

from .errors import CorruptStream, IncompatibleVersion

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "Limits",
    "Header",
    "encode_item",
    "decode_payload",
    "read_item_size",
]

MAGIC = "vserial-vmstate"
FORMAT_VERSION = 1
READABLE_FORMATS = (1,)
# Latest `created` a header may carry: 9999-12-31T23:59:59Z (what datetime
# can show; a clock is never that far ahead).
MAX_CREATED = 253402300799
ITEM_TAG = b"\xd8\x18"
KIND_SECTION = "section"
KIND_RAM = "ram"
KIND_END = "end"


@attrs.frozen
class Limits:
    """Hard limits for decoding untrusted streams."""

    # Bytes of one encoded item. RAM items hold about 1 MiB of pages; a
    # device section of a full 511-port bus is ~55 KB. The cap also bounds the
    # memory a hostile item can make the decoder allocate.
    max_item_size: int = 4 << 20
    max_depth: int = 16  # CBOR container nesting inside one item
    max_stream_size: int = 16 << 30  # bytes before the trailer
    max_items: int = 1 << 20
    max_ram_pages: int = 1 << 26  # pages of one RAM region (256 GiB of 4 KiB)
    max_ram_bytes: int = 64 << 30  # bytes of one RAM region (page_size * total_pages)
    max_runs_per_item: int = 4096  # page runs in one RAM item (the writer's own cap)
    # CBOR data items (every value, key and container) in one item. A data
    # item decodes to at most ~72 bytes of Python objects (an empty list or
    # map), so one decoded item stays under ~18 MiB (~4x max_item_size)
    # whatever it holds. A 511-port bus section has ~15000.
    max_item_elements: int = 1 << 18


DEFAULT_LIMITS = Limits()


@attrs.frozen
class Header:
    producer: str
    created: int
    machine: dict[str, Any] | None = None
    format: int = FORMAT_VERSION

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "magic": MAGIC,
            "format": self.format,
            "producer": self.producer,
            "created": self.created,
        }
        if self.machine is not None:
            out["machine"] = self.machine
        return out

    @classmethod
    def from_cbor(cls, raw: Any) -> "Header":
        if raw.__class__ is not dict or raw.get("magic") != MAGIC:
            raise CorruptStream("not a vmstate stream (bad magic)")
        fmt = raw.get("format")
        if fmt.__class__ is not int:
            raise CorruptStream("header: format version missing")
        if fmt not in READABLE_FORMATS:
            raise IncompatibleVersion(
                f"vmstate format version {fmt} is not supported (this reads {', '.join(map(str, READABLE_FORMATS))})"
            )
        if any(k.__class__ is not str for k in raw):
            raise CorruptStream("header: a key is not a text string")
        extra = set(raw) - {"magic", "format", "producer", "created", "machine"}
        if extra:
            raise CorruptStream(f"header: unknown keys {sorted(extra)}")
        producer, created, machine = raw.get("producer"), raw.get("created"), raw.get("machine")
        if producer.__class__ is not str or created.__class__ is not int or created < 0:
            raise CorruptStream("header: producer or created time missing or malformed")
        if created > MAX_CREATED:
            raise CorruptStream(f"header: created time {created} is after the year 9999")
        if machine is not None:
            if machine.__class__ is not dict:
                raise CorruptStream("header: machine is not a map")
            try:
                check_plain(machine)
            except ValueError as e:
                raise CorruptStream(f"header: machine: {e}") from None
        return cls(producer=producer, created=created, machine=machine, format=fmt)


def check_plain(value: Any) -> None:
    """Machine configuration must be plain data: str-keyed maps, lists, str,
    bytes, int, bool, None (so it round-trips through CBOR unchanged)."""
    if value is None or value.__class__ in (str, bytes, int, bool):
        return
    if value.__class__ in (list, tuple):
        for v in value:
            check_plain(v)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k.__class__ is not str:
                raise ValueError(f"key {k!r} is not a str")
            check_plain(v)
        return
    raise ValueError(f"{type(value).__name__} is not plain data")


def _bstr_head(n: int) -> bytes:
    if n < 24:
        return bytes((0x40 | n,))
    if n < 1 << 8:
        return bytes((0x58, n))
    if n < 1 << 16:
        return b"\x59" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\x5a" + n.to_bytes(4, "big")
    return b"\x5b" + n.to_bytes(8, "big")


def encode_item(record: Any) -> bytes:
    """One framed item: tag 24, byte string head, canonical CBOR payload."""
    payload = cbor2.dumps(record, canonical=True)
    return ITEM_TAG + _bstr_head(len(payload)) + payload


def read_item_size(head: bytes, read: Any) -> tuple[int, bytes]:
    """Parses an item's head (tag 24 + byte string head) given its first three
    bytes and a `read(n)` for the length bytes. Returns (payload size, every
    head byte, for the digest)."""
    if head[:2] != ITEM_TAG:
        raise CorruptStream(f"not a vmstate item (starts {head.hex()})")
    ib = head[2]
    if ib >> 5 != 2:
        raise CorruptStream("vmstate item is not a byte string")
    ai = ib & 0x1F
    if ai < 24:
        return ai, head
    if ai > 27:
        raise CorruptStream("indefinite or reserved length in item head")
    extra = read(1 << (ai - 24))
    return int.from_bytes(extra, "big"), head + extra


class _NoTags(Mapping[int, Any]):
    """Every CBOR tag inside an item is refused (no bignums, dates, shared
    references, regexps...): vmstate items use plain types only."""

    def __getitem__(self, tag: int) -> Any:
        return _refuse_tag

    def get(self, tag: int, default: Any = None) -> Any:
        return _refuse_tag

    def __contains__(self, tag: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _refuse_tag(decoder: Any) -> NoReturn:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed in vmstate items")


_NO_TAGS = _NoTags()


def check_element_count(payload: bytes, limit: int) -> None:
    """Refuses a payload holding more than `limit` CBOR data items, before it
    is decoded. Every data item takes at least one byte, so a payload of at
    most `limit` bytes passes at once; larger ones (RAM items, mostly page
    data) are walked head by head, skipping string contents, and the walk
    stops as soon as the count is over. Malformed heads are left to the decoder."""
    n = len(payload)
    if n <= limit:
        return
    count, i = 0, 0
    while i < n:
        count += 1
        if count > limit:
            raise CorruptStream(f"item holds more than {limit} CBOR data items")
        ib = payload[i]
        ai = ib & 0x1F
        i += 1
        if ai < 24:
            if 0x40 <= ib < 0x80:  # byte or text string: skip its content
                i += ai
        elif ai < 28:
            w = 1 << (ai - 24)
            if 0x40 <= ib < 0x80:
                i += w + int.from_bytes(payload[i : i + w], "big")
            else:
                i += w


def decode_payload(payload: bytes, limits: Limits) -> Any:
    """Decodes exactly one item payload under the limits."""
    check_element_count(payload, limits.max_item_elements)
    fp = io.BytesIO(payload)
    # These options need cbor2 >= 6.1.1 (allow_duplicate_keys came in 6.1.0,
    # and 6.1.1 fixed reading payloads over 4096 bytes from a file object).
    decoder = cbor2.CBORDecoder(
        fp,
        max_depth=limits.max_depth,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
        semantic_decoders=_NO_TAGS,
    )
    try:
        value = decoder.decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise CorruptStream(f"bad CBOR in item: {e}") from None
    if fp.tell() != len(payload):
        raise CorruptStream("item holds more than one CBOR value")
    return value
