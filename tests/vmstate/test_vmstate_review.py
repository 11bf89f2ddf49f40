"""Review findings against vmstate (issue 4), one test each.

Each test states the behaviour the issue / DESIGN.md asks for; the comment
above it says what the first version got wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import signal
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import cbor2
import pytest
import vmstate_demo as demo

import vmstate
from vmstate.cli import main
from vmstate.container import encode_item

ROOT = Path(__file__).resolve().parents[2]
EMU_STREAM = ROOT / "fixtures" / "vmstate" / "emulator" / "streams" / "format1-virtio-serial-v1.vmstate"
HEADER = {"magic": vmstate.MAGIC, "format": 1, "producer": "review", "created": 0}


def emu_registry() -> vmstate.Registry:
    from emulator.state.records import registry

    return registry()


def seal(values: list[Any], key: bytes | None = None) -> bytes:
    """Frames decoded items and appends a trailer with a correct digest (and
    HMAC under `key`): what anyone can do to a stream without a key."""
    frames = b"".join(encode_item(v) for v in values)
    mac = hmac.new(key, frames, hashlib.sha256).digest() if key is not None else None
    return frames + encode_item(["end", hashlib.sha256(frames).digest(), mac])


def seal_frames(frames: bytes) -> bytes:
    return frames + encode_item(["end", hashlib.sha256(frames).digest(), None])


def frame_payload(payload: bytes) -> bytes:
    """Frames a raw (possibly non-canonical or hostile) payload."""
    from vmstate.container import ITEM_TAG, _bstr_head

    return ITEM_TAG + _bstr_head(len(payload)) + payload


def emu_items() -> list[Any]:
    data = EMU_STREAM.read_bytes()
    items = cbor2.loads(b"\x9f" + data + b"\xff")
    values = [cbor2.loads(i.value) for i in items[:-1]]
    assert seal(values) == data
    return values


class _TooSlow(BaseException):
    """Not an Exception: nothing under test may swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise _TooSlow(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TooSlow as e:
        pytest.fail(str(e))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- 1. unbounded memory before anything is checked --------------------------


# Was: a 1 MiB item of empty CBOR arrays decoded into ~1M lists (~64x its size), and read_raw kept every decoded item until the trailer.
def test_a_hostile_item_decodes_into_at_most_16x_its_size() -> None:
    n = (1 << 20) - 64
    body = b"\x9a" + n.to_bytes(4, "big") + b"\x80" * n
    section = b"\x86" + cbor2.dumps("section") + cbor2.dumps("virtio-serial") + b"\x00\x01" + body + b"\xa0"
    data = seal_frames(encode_item(HEADER) + frame_payload(section))
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


# Was: load() read and kept the whole stream before checking any section against the registry, so an unknown first section was refused only after the trailer.
def test_load_refuses_an_unknown_section_without_reading_the_rest() -> None:
    prefix = encode_item(HEADER) + encode_item(["section", "no-such-device", 0, 1, [], {}])
    with pytest.raises(vmstate.IncompatibleVersion):
        vmstate.load(_Tripwire(prefix), emu_registry(), check_eof=False)


# --- 2. RAM runs: CPU amplification and sizes ------------------------------------


# Was: zero-page runs were uncapped per item and could overlap, and apply_to memset every run, so a small item cost hours of writes.
def test_applying_ram_costs_at_most_about_one_write_per_page() -> None:
    data = seal([HEADER, ["ram", "ram", 4096, 1024, [[0, 1024, None]] * 200_000]])
    try:
        loaded = vmstate.loads(data, emu_registry())
    except vmstate.CorruptStream:
        return  # refusing overlapping runs is a fine fix too
    memory = bytearray(b"\xee" * (4 << 20))
    with time_limit(3):
        loaded.ram["ram"].apply_to(memory)
    assert memory == bytes(4 << 20)


# Was: max_ram_pages counted pages, not bytes: 2**26 pages of 2 MiB (128 TiB) loaded.
def test_a_ram_region_over_256_gib_is_refused() -> None:
    pages = 1 << 26
    data = seal([HEADER, ["ram", "ram", 2 << 20, pages, [[0, pages, None]]]])
    with pytest.raises(vmstate.CorruptStream):
        vmstate.loads(data, emu_registry())


# --- 3. undocumented exceptions from loads ----------------------------------


# Was: a header with unknown keys b'x' and 'y' raised TypeError (sorted() of mixed bytes/str) out of loads.
def test_header_with_unknown_bytes_and_text_keys_is_corrupt() -> None:
    header = dict(HEADER)
    header[b"x"] = 1  # type: ignore[index]
    header["y"] = 1
    with pytest.raises(vmstate.CorruptStream):
        vmstate.loads(seal([header]), emu_registry())


# --- 4. dump -----------------------------------------------------------------


# Was: dump expanded a bitmap of any length with a quadratic bit walk, so an oversized ports_map hung it.
def test_dump_of_an_oversized_bitmap_field_is_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = emu_items()
    items[2][4][8] = b"\x55" * (256 << 10)  # virtio-serial/ports_map
    path = tmp_path / "big-bitmap.vmstate"
    path.write_bytes(seal(items))
    with time_limit(5):
        assert main(["dump", str(path), "--json"], emu_registry()) == 0
    section = json.loads(capsys.readouterr().out)["items"][1]
    assert "ports_map" in section["status"]


# Was: dump passed stream strings to rich as markup: a producer 'evil [/oops]' raised MarkupError.
def test_dump_text_shows_markup_like_strings_literally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "markup.vmstate"
    path.write_bytes(vmstate.dumps([demo.Clock(1, b"")], producer="evil [/oops]", created=0))
    assert main(["dump", str(path)], demo.REGISTRY) == 0
    assert "evil [/oops]" in capsys.readouterr().out


# Was: dump wrote stream strings raw to the terminal, ESC sequences included.
def test_dump_text_escapes_terminal_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "escape.vmstate"
    path.write_bytes(vmstate.dumps([demo.Clock(1, b"")], producer="\x1b]0;pwned\x07x", created=0))
    assert main(["dump", str(path)], demo.REGISTRY) == 0
    assert "\x1b]0;pwned" not in capsys.readouterr().out


# Was: created was any uint and dump's datetime.fromtimestamp raised OverflowError on 2**64-1.
def test_dump_of_a_far_future_created_time_does_not_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = dict(HEADER, created=2**64 - 1)
    path = tmp_path / "future.vmstate"
    path.write_bytes(seal([header]))
    assert main(["dump", str(path), "--json"], emu_registry()) in (0, 1)


# --- 5. check ----------------------------------------------------------------


# Was: check did not validate subsections or since/dropped_after types: TypeError/AttributeError escaped main.
@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d.__setitem__("subsections", None),
        lambda d: d.__setitem__("subsections", [1]),
        lambda d: d["fields"][0].__setitem__("since", "1"),
    ],
    ids=["subsections-null", "subsection-not-a-map", "since-not-an-int"],
)
def test_check_exits_255_on_a_malformed_schema(tmp_path: Path, breakage: Any) -> None:
    good = demo.REGISTRY.schema()
    bad = json.loads(json.dumps(good))
    breakage(bad["descriptions"]["demo-bus"])
    (tmp_path / "old.json").write_text(json.dumps(good))
    (tmp_path / "new.json").write_text(json.dumps(bad))
    assert main(["check", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 255


# --- 6. HMAC -----------------------------------------------------------------


# Was: an empty key was taken as a real key, 'verifying' streams anyone can forge with HMAC(b'', ...).
def test_an_empty_hmac_key_is_refused() -> None:
    forged = seal([HEADER], key=b"")
    with pytest.raises((ValueError, vmstate.VMStateError)):
        vmstate.loads(forged, emu_registry(), key=b"")


# --- 7. the emulator applies RAM before the device record is validated -------


# Was: a refused emulator restore had already overwritten guest RAM (restore now stages it).
def test_emulator_restore_that_refuses_a_record_leaves_guest_ram_unchanged() -> None:
    from emulator.core.chardev import MemoryChardev
    from emulator.machine.machine import Machine
    from emulator.state.records import restore

    loaded = vmstate.loads(EMU_STREAM.read_bytes(), emu_registry())
    cfg = loaded.header.machine
    m = Machine(ram_size=cfg["ram_size"])
    for c in cfg["chardevs"]:
        m.chardev_add(MemoryChardev(c))
    for props in cfg["device"]:
        m.device_add(dict(props))
    before = bytes(m.mem.ring_buf)
    record = loaded.section("virtio-serial", 0)
    record.queues[1].used_addr = cfg["ram_size"] - 8  # outside RAM: refused
    with pytest.raises(vmstate.ValidationError):
        restore(m.devices[0], record, ram=loaded.ram["ram"])
    assert bytes(m.mem.ring_buf) == before


# --- 8. issue 4 asks for atheris when it installs ------------------------------


# Was: issue 4 asks for atheris when it installs, and there was no atheris harness.
def test_an_atheris_harness_exists() -> None:
    """fuzz/fuzz_vmstate.py is run by hand (atheris is not a dependency):
    check that it is there and looks like a harness, without importing it."""
    harness = ROOT / "fuzz" / "fuzz_vmstate.py"
    text = harness.read_text()
    compile(text, str(harness), "exec")  # valid Python
    for needle in ("import atheris", "atheris.Setup", "atheris.Fuzz", "VMStateError", "emulator.state.records import registry"):
        assert needle in text
