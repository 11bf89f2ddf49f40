"""The container: framing, limits, digest and HMAC, RAM rounds, streaming."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import tracemalloc
from typing import Any

import cbor2
import pytest
import vmstate_demo as demo
from vmstate_hostile import HEADER_MAP, emu_registry, seal, time_limit

import vmstate
from vmstate.container import ITEM_TAG, encode_item


def reseal(items: list[bytes]) -> bytes:
    """Frames raw payloads and appends a correct trailer, so a test reaches
    the layer behind the digest check."""
    return seal_frames(b"".join(frame_payload(p) for p in items))


def seal_frames(frames: bytes) -> bytes:
    return frames + encode_item(["end", hashlib.sha256(frames).digest(), None])


def frame_payload(payload: bytes) -> bytes:
    """Frames a raw (possibly non-canonical or hostile) payload."""
    head = cbor2.dumps(payload)  # a CBOR byte string: its head then the payload
    return ITEM_TAG + head


HEADER = cbor2.dumps({"magic": "vserial-vmstate", "format": 1, "producer": "t", "created": 0}, canonical=True)


def test_stream_is_a_cbor_sequence_of_tagged_items() -> None:
    data = demo.sample_stream(3)
    fp = io.BytesIO(data)
    items = []
    while fp.tell() < len(data):
        items.append(cbor2.load(fp))
    assert all(isinstance(i, cbor2.CBORTag) and i.tag == 24 for i in items)
    header = cbor2.loads(items[0].value)
    assert header == {
        "magic": "vserial-vmstate", "format": 1, "producer": demo.PRODUCER, "created": demo.CREATED + 3,
        "machine": {"machine": "demo", "max_ports": 31, "devices": ["demo-bus"]},
    }
    kinds = [cbor2.loads(i.value)[0] for i in items[1:]]
    assert kinds == ["ram", "ram", "section", "section", "section", "end"]
    trailer = cbor2.loads(items[-1].value)
    assert trailer[1] == hashlib.sha256(data[: len(data) - len(encode_item(trailer))]).digest()


def test_ram_rounds_apply_in_order() -> None:
    loaded = vmstate.loads(demo.sample_stream(3), demo.REGISTRY)
    ram = loaded.ram["ram"]
    assert (ram.page_size, ram.total_pages) == (demo.PAGE_SIZE, demo.RAM_PAGES)
    assert ram.to_bytes() == demo.final_memory()
    assert ram.page_counts() == (5 + 2, 59 + 1)


def test_big_memory_with_dirty_rounds_is_compact_and_exact() -> None:
    memory = bytearray(64 << 20)
    for page in range(0, 16384, 1000):
        memory[page * 4096 : page * 4096 + 8] = page.to_bytes(8, "little")
    buf = io.BytesIO()
    with vmstate.StreamWriter(buf, producer="t", created=0) as w:
        assert w.write_ram(memory) == 16384
        memory[5 * 4096] = 0xAA
        memory[1000 * 4096 : 1001 * 4096] = bytes(4096)
        assert w.write_ram(memory, dirty=[1000, 5, 5, 6]) == 3
        assert w.write_ram(memory, dirty=[]) == 0
    data = buf.getvalue()
    assert len(data) < 17 * 4096 + 4096  # 17 data pages plus a little framing
    target = bytearray(len(memory))
    target[123] = 1  # the load overwrites whatever was there
    vmstate.loads(data, demo.REGISTRY).ram["ram"].apply_to(target)
    assert target == memory


def test_large_data_is_split_into_bounded_items() -> None:
    memory = bytes(range(256)) * (4 << 12)  # 4 MiB, no zero page
    data = vmstate.dumps([], producer="t", created=0, ram={"ram": memory})
    sizes = [len(i.value) for i in cbor2.loads(b"\x9f" + data + b"\xff")]
    assert max(sizes) < (1 << 20) + 64
    assert vmstate.loads(data, demo.REGISTRY).ram["ram"].to_bytes() == memory


def test_ram_apply_checks_the_size_before_writing() -> None:
    region = vmstate.loads(demo.sample_stream(3), demo.REGISTRY).ram["ram"]
    small = bytearray(4096)
    with pytest.raises(ValueError, match="is 262144 bytes, memory is 4096"):
        region.apply_to(small)
    assert small == bytearray(4096)


def test_memoryview_and_bytes_memory_are_accepted() -> None:
    memory = demo.sample_memory()
    a = vmstate.dumps([], producer="t", created=0, ram={"ram": memoryview(memory)})
    b = vmstate.dumps([], producer="t", created=0, ram={"ram": bytes(memory)})
    assert a == b == vmstate.dumps([], producer="t", created=0, ram={"ram": memory})


def test_hmac_protects_against_tampering_and_foreign_keys() -> None:
    data = demo.sample_stream(3, key=demo.HMAC_KEY)
    assert vmstate.loads(data, demo.REGISTRY, key=demo.HMAC_KEY).authenticated
    assert not vmstate.loads(data, demo.REGISTRY).authenticated  # digest still checked
    with pytest.raises(vmstate.IntegrityError, match="HMAC mismatch"):
        vmstate.loads(data, demo.REGISTRY, key=b"another key, 16+ bytes")
    with pytest.raises(vmstate.IntegrityError, match="no HMAC, but a key was given"):
        vmstate.loads(demo.sample_stream(3), demo.REGISTRY, key=demo.HMAC_KEY)


def test_resealed_tampering_is_caught_by_the_hmac() -> None:
    """An attacker who rewrites an item and recomputes the sha256 still lacks the key."""
    data = demo.sample_stream(3, key=demo.HMAC_KEY)
    trailer = encode_item(["end", b"\0" * 32, b"\0" * 32])
    body = bytearray(data[: len(data) - len(trailer)])
    i = body.index(b"bus v3")
    body[i : i + 6] = b"bus v9"
    forged = bytes(body) + encode_item(["end", hashlib.sha256(body).digest(), b"\0" * 32])
    assert vmstate.loads(forged, demo.REGISTRY).section("demo-bus").label == "bus v9"
    with pytest.raises(vmstate.IntegrityError):
        vmstate.loads(forged, demo.REGISTRY, key=demo.HMAC_KEY)


def test_a_flipped_byte_is_an_integrity_error() -> None:
    data = bytearray(demo.sample_stream(3))
    i = data.index(b"bus v3")
    data[i] ^= 1
    with pytest.raises(vmstate.IntegrityError, match="digest mismatch"):
        vmstate.loads(bytes(data), demo.REGISTRY)


@pytest.mark.parametrize("cut", [0, 1, 3, 10, 100, -1, -40])
def test_truncated_streams_are_corrupt(cut: int) -> None:
    data = demo.sample_stream(3)
    with pytest.raises(vmstate.CorruptStream):
        vmstate.loads(data[:cut], demo.REGISTRY)


def test_data_after_the_trailer_is_refused_unless_the_source_stays_open() -> None:
    data = demo.sample_stream(3)
    with pytest.raises(vmstate.CorruptStream, match="data after the trailer"):
        vmstate.loads(data + b"\0", demo.REGISTRY)
    fp = io.BytesIO(data + b"next")
    vmstate.load(fp, demo.REGISTRY, check_eof=False)
    assert fp.read() == b"next"


def test_not_a_stream_and_unknown_format_versions() -> None:
    with pytest.raises(vmstate.CorruptStream, match="not a vmstate stream"):
        vmstate.loads(b"QEVM\x00\x00\x00\x03", demo.REGISTRY)
    with pytest.raises(vmstate.CorruptStream, match="bad magic"):
        vmstate.loads(reseal([cbor2.dumps({"magic": "other"})]), demo.REGISTRY)
    future = cbor2.dumps({"magic": "vserial-vmstate", "format": 2, "producer": "t", "created": 0})
    with pytest.raises(vmstate.IncompatibleVersion, match="format version 2 is not supported"):
        vmstate.loads(reseal([future]), demo.REGISTRY)


def test_oversized_items_are_refused_before_reading_them() -> None:
    class Endless(io.RawIOBase):
        """Claims a 2**62-byte item, then would feed zeros forever."""

        def __init__(self) -> None:
            self.head = ITEM_TAG + b"\x5b" + (1 << 62).to_bytes(8, "big")
            self.served = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = len(b)
            chunk = self.head[self.served : self.served + n] or bytes(n)
            b[: len(chunk)] = chunk
            self.served += len(chunk)
            assert self.served < 1 << 20, "the reader read into the oversized item"
            return len(chunk)

    with pytest.raises(vmstate.CorruptStream, match="exceeds the limit"):
        vmstate.load(io.BufferedReader(Endless()), demo.REGISTRY)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x9f\x01\xff", "indefinite"),  # indefinite-length array
        (b"\xa2\x61a\x01\x61a\x02", "Duplicate"),  # duplicate map key
        (b"\xa1\x01\x02", "map key must be"),  # non-string map key
        (b"\xc1\x00", "semantic tag"),  # tag 1: a datetime
        (b"\xd8\x1c\x81\x01", "semantic tag"),  # tag 28: shared reference
        (b"\x81" * 40 + b"\x01", "nesting depth"),  # too deep
        (b"\x01\x02", "more than one CBOR value"),
        (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "premature end"),  # bstr longer than the item
        (b"\x7f\x61a\xff", "indefinite"),
    ],
)
def test_hostile_cbor_inside_items_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(vmstate.CorruptStream, match=message):
        vmstate.loads(reseal([HEADER, payload]), demo.REGISTRY)


def test_limits_are_configurable() -> None:
    data = demo.sample_stream(3)
    with pytest.raises(vmstate.CorruptStream, match="exceeds the limit of 1000"):
        vmstate.loads(data, demo.REGISTRY, limits=vmstate.Limits(max_item_size=1000))
    with pytest.raises(vmstate.CorruptStream, match="size limits"):
        vmstate.loads(data, demo.REGISTRY, limits=vmstate.Limits(max_items=3))
    with pytest.raises(vmstate.CorruptStream, match="nesting depth"):
        vmstate.loads(data, demo.REGISTRY, limits=vmstate.Limits(max_depth=3))


@pytest.mark.parametrize(
    "item, message",
    [
        (["ram", "ram", 4096, 4, [[3, 2, None]]], "beyond its 4 pages"),
        (["ram", "ram", 4096, 4, [[0, 1, b"x"]]], "does not hold 1 pages"),
        (["ram", "ram", 1000, 4, []], "not a power of two"),
        (["ram", "ram", 4096, 4, [[0, 0, None]]], "bad run"),
        (["ram", "ram", 4096, 1 << 40, []], "exceeds the limit"),
        (["section", "demo-clock", -1, 1, [1, b""], {}], "bad name or instance id"),
        (["section", "demo-clock", 0, 1, [1, b""], {"demo-held": "1"}], "bad version entry"),
        (["section", "demo-clock", 0, 1, [1, b""]], "malformed section item"),
        (["bogus"], "unknown item"),
    ],
)
def test_malformed_items_are_corrupt(item: list[Any], message: str) -> None:
    with pytest.raises(vmstate.CorruptStream, match=message):
        vmstate.loads(reseal([HEADER, cbor2.dumps(item)]), demo.REGISTRY)


def test_ram_geometry_may_not_change_between_rounds() -> None:
    items = [HEADER, cbor2.dumps(["ram", "ram", 4096, 4, []]), cbor2.dumps(["ram", "ram", 4096, 8, []])]
    with pytest.raises(vmstate.CorruptStream, match="changes between rounds"):
        vmstate.loads(reseal(items), demo.REGISTRY)


def test_streaming_over_a_socket_with_ram_rounds_first() -> None:
    """Migration order: RAM rounds while the machine runs, then device state.
    The reader consumes the stream as it arrives; the connection stays open."""
    a, b = socket.socketpair()
    memory = demo.sample_memory()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with a.makefile("wb") as out:
                w = vmstate.StreamWriter(out, producer="t", created=0, key=demo.HMAC_KEY)
                w.write_ram(memory)
                out.flush()
                w.write_ram(memory, dirty=[1])
                w.write_section(demo.sample_bus(3))
                w.close()
                out.write(b"after")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            a.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    with b.makefile("rb") as inp:
        loaded = vmstate.load(inp, demo.REGISTRY, key=demo.HMAC_KEY, check_eof=False)
        rest = inp.read()
    t.join()
    a.close()
    b.close()
    assert not errors
    assert rest == b"after"
    assert loaded.section("demo-bus") == demo.sample_bus(3)
    assert loaded.ram["ram"].to_bytes() == memory


def test_a_writer_left_by_an_exception_writes_no_trailer() -> None:
    buf = io.BytesIO()
    with pytest.raises(RuntimeError):
        with vmstate.StreamWriter(buf, producer="t", created=0) as w:
            w.write_section(demo.Clock(1, b""))
            raise RuntimeError("migration cancelled")
    with pytest.raises(vmstate.CorruptStream, match="truncated"):
        vmstate.loads(buf.getvalue(), demo.REGISTRY)


def test_machine_configuration_must_be_plain_data() -> None:
    with pytest.raises(ValueError, match="not plain data"):
        vmstate.StreamWriter(io.BytesIO(), producer="t", machine={"x": 1.5})
    data = vmstate.dumps([], producer="t", created=0, machine={"a": [1, "b", None, {"c": b"\x01"}]})
    assert vmstate.loads(data, demo.REGISTRY).header.machine == {"a": [1, "b", None, {"c": b"\x01"}]}


def test_raw_stream_reader_yields_items_then_verifies() -> None:
    reader = vmstate.StreamReader(io.BytesIO(demo.sample_stream(3)))
    assert reader.header.created == demo.CREATED + 3
    kinds = [item[0] for item in reader]
    assert kinds == ["ram", "ram", "section", "section", "section"]
    assert reader.finished and reader.digest is not None


def test_writer_refuses_items_readers_would_refuse() -> None:
    w = vmstate.StreamWriter(io.BytesIO(), producer="t", created=0, limits=vmstate.Limits(max_item_size=100))
    with pytest.raises(ValueError, match="exceeds max_item_size 100"):
        w.write_section(demo.sample_bus(3))


# --- limits added after the review (issue 4 review findings) -----------------


@pytest.mark.parametrize(
    "runs, message",
    [
        ([[2, 1, None], [0, 1, None]], "overlaps or precedes"),
        ([[0, 2, None], [1, 1, None]], "overlaps or precedes"),
        ([[i, 1, None] for i in range(4097)], "exceeds the limit of 4096"),
    ],
)
def test_ram_runs_in_one_item_are_ordered_disjoint_and_capped(runs: list[Any], message: str) -> None:
    item = cbor2.dumps(["ram", "ram", 512, 8192, runs])
    with pytest.raises(vmstate.CorruptStream, match=message):
        vmstate.loads(reseal([HEADER, item]), demo.REGISTRY)


def test_the_writer_refuses_overlapping_runs() -> None:
    w = vmstate.StreamWriter(io.BytesIO(), producer="t", created=0)
    with pytest.raises(ValueError, match="overlaps or precedes"):
        w.write_ram_runs("ram", 4096, 4, [vmstate.PageRun(1, 1, None), vmstate.PageRun(0, 1, None)])
    with pytest.raises(ValueError, match="overlaps or precedes"):
        w.write_ram_item("ram", 4096, 4, [vmstate.PageRun(0, 2, None), vmstate.PageRun(1, 1, None)])


def test_apply_writes_each_page_once_and_the_last_round_wins() -> None:
    ps = 512
    rounds = [
        [vmstate.PageRun(0, 8, bytes([1]) * 8 * ps)],
        [vmstate.PageRun(2, 3, None), vmstate.PageRun(6, 1, bytes([2]) * ps)],
        [vmstate.PageRun(1, 2, bytes([3]) * 2 * ps), vmstate.PageRun(4, 1, bytes([4]) * ps)],
        [vmstate.PageRun(7, 1, None)],
    ]
    region = vmstate.RamRegion("ram", ps, 8, [r for rnd in rounds for r in rnd])
    expected = bytearray(8 * ps)
    for run in region.runs:  # the naive order: every run in turn
        expected[run.start * ps : (run.start + run.count) * ps] = run.data or bytes(run.count * ps)
    memory = bytearray(b"\xee" * 8 * ps)
    region.apply_to(memory)
    assert memory == expected
    data = vmstate.dumps([], producer="t", created=0)
    assert vmstate.loads(data, demo.REGISTRY).ram == {}


def test_ram_regions_are_limited_in_bytes() -> None:
    item = cbor2.dumps(["ram", "ram", 1 << 21, 1 << 10, []])  # 2 GiB
    vmstate.loads(reseal([HEADER, item]), demo.REGISTRY)
    with pytest.raises(vmstate.CorruptStream, match="exceeds the limit of 1073741824 bytes"):
        vmstate.loads(reseal([HEADER, item]), demo.REGISTRY, limits=vmstate.Limits(max_ram_bytes=1 << 30))


def test_elements_per_item_are_counted_before_decoding() -> None:
    data = demo.sample_stream(3)
    with pytest.raises(vmstate.CorruptStream, match="more than 10 CBOR data items"):
        vmstate.loads(data, demo.REGISTRY, limits=vmstate.Limits(max_item_elements=10))
    # a RAM item is mostly page data: few data items, whatever its size
    memory = bytearray(b"\x01" * (1 << 20))
    big = vmstate.dumps([], producer="t", created=0, ram={"ram": memory})
    loaded = vmstate.loads(big, demo.REGISTRY, limits=vmstate.Limits(max_item_elements=64))
    assert loaded.ram["ram"].to_bytes() == memory


def test_short_hmac_keys_and_far_future_times_are_refused() -> None:
    for key in (b"", b"15 bytes only!!"):
        with pytest.raises(ValueError, match="too short"):
            vmstate.StreamWriter(io.BytesIO(), producer="t", created=0, key=key)
        with pytest.raises(ValueError, match="too short"):
            vmstate.loads(demo.sample_stream(3), demo.REGISTRY, key=key)
    vmstate.StreamWriter(io.BytesIO(), producer="t", created=0, key=b"16 bytes exactly")
    with pytest.raises(ValueError, match="not a Unix time"):
        vmstate.StreamWriter(io.BytesIO(), producer="t", created=253402300800)
    late = cbor2.dumps({"magic": "vserial-vmstate", "format": 1, "producer": "t", "created": 253402300800})
    with pytest.raises(vmstate.CorruptStream, match="after the year 9999"):
        vmstate.loads(reseal([late]), demo.REGISTRY)


def test_a_bad_item_is_refused_before_the_trailer_but_nothing_is_returned_before_it() -> None:
    """Sections are built as they arrive; a good prefix with a bad digest is still refused."""
    data = bytearray(demo.sample_stream(3))
    data[-5] ^= 1  # inside the trailer's digest
    with pytest.raises(vmstate.IntegrityError):
        vmstate.loads(bytes(data), demo.REGISTRY)


# --- hostile streams for the emulator's records: memory, reads, writes, keys ---


# Issue 4 review. Was: a 1 MiB item of empty CBOR arrays decoded into ~1M lists (~64x its size), and read_raw kept every decoded item until the trailer.
def test_a_hostile_item_decodes_into_at_most_16x_its_size() -> None:
    n = (1 << 20) - 64
    body = b"\x9a" + n.to_bytes(4, "big") + b"\x80" * n
    section = b"\x86" + cbor2.dumps("section") + cbor2.dumps("virtio-serial") + b"\x00\x01" + body + b"\xa0"
    data = seal_frames(encode_item(HEADER_MAP) + frame_payload(section))
    tracemalloc.start()
    try:
        with pytest.raises(vmstate.VMStateError):
            vmstate.loads(data, emu_registry())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * len(data), f"peak {peak / 1e6:.0f} MB for a {len(data) / 1e6:.1f} MB stream"


class _Tripwire:
    """A source: `prefix`, then an endless run of valid RAM items; fails the
    test if the reader goes on more than 1 MiB past the prefix."""

    def __init__(self, prefix: bytes) -> None:
        self.buf = bytearray(prefix)
        self.limit = len(prefix) + (1 << 20)
        self.pos = 0
        self.filler = encode_item(["ram", "ram", 4096, 1, [[0, 1, None]]]) * 1024

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.filler
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.pos += n
        if self.pos > self.limit:
            raise AssertionError("the reader went on past a section it cannot load")
        return out


# Issue 4 review. Was: load() read and kept the whole stream before checking any section against the registry, so an unknown first section was refused only after the trailer.
def test_load_refuses_an_unknown_section_without_reading_the_rest() -> None:
    prefix = encode_item(HEADER_MAP) + encode_item(["section", "no-such-device", 0, 1, [], {}])
    with pytest.raises(vmstate.IncompatibleVersion):
        vmstate.load(_Tripwire(prefix), emu_registry(), check_eof=False)


# Issue 4 review. Was: zero-page runs were uncapped per item and could overlap, and apply_to memset every run, so a small item cost hours of writes.
def test_applying_ram_costs_at_most_about_one_write_per_page() -> None:
    data = seal([HEADER_MAP, ["ram", "ram", 4096, 1024, [[0, 1024, None]] * 200_000]])
    try:
        loaded = vmstate.loads(data, emu_registry())
    except vmstate.CorruptStream:
        return  # refusing overlapping runs is a fine fix too
    memory = bytearray(b"\xee" * (4 << 20))
    with time_limit(3):
        loaded.ram["ram"].apply_to(memory)
    assert memory == bytes(4 << 20)


# Issue 4 review. Was: max_ram_pages counted pages, not bytes: 2**26 pages of 2 MiB (128 TiB) loaded.
def test_a_ram_region_over_256_gib_is_refused() -> None:
    pages = 1 << 26
    data = seal([HEADER_MAP, ["ram", "ram", 2 << 20, pages, [[0, pages, None]]]])
    with pytest.raises(vmstate.CorruptStream):
        vmstate.loads(data, emu_registry())


# Issue 4 review. Was: a header with unknown keys b'x' and 'y' raised TypeError (sorted() of mixed bytes/str) out of loads.
def test_header_with_unknown_bytes_and_text_keys_is_corrupt() -> None:
    header = dict(HEADER_MAP)
    header[b"x"] = 1  # type: ignore[index]
    header["y"] = 1
    with pytest.raises(vmstate.CorruptStream):
        vmstate.loads(seal([header]), emu_registry())


# Issue 4 review. Was: an empty key was taken as a real key, 'verifying' streams anyone can forge with HMAC(b'', ...).
def test_an_empty_hmac_key_is_refused() -> None:
    forged = seal([HEADER_MAP], key=b"")
    with pytest.raises((ValueError, vmstate.VMStateError)):
        vmstate.loads(forged, emu_registry(), key=b"")
