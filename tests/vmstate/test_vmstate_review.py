"""Review findings against vmstate (issue 4), one strict xfail test each.

Each test states the behaviour the issue / DESIGN.md asks for; the xfail
reason gives the finding and the evidence. Remove a mark once it is fixed.
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
    from emulator.state import registry

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


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Memory amplification: a 1 MiB item of empty CBOR arrays (0x80 each) decodes into ~1M Python "
        "lists; tracemalloc peak ~67 MB for one item (~64x). read_raw keeps every decoded item until the "
        "trailer (max_stream_size 16 GiB, max_items 1M), so 16.8 MB of such items measured 1.2 GB RSS, "
        "and with a key given this all happens before the HMAC is checked. Fix: bound decoded elements "
        "per item (pre-scan heads, e.g. <= max_item_size/16 elements) and check/build each item as it "
        "arrives, keeping only built records."
    ),
)
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


@pytest.mark.xfail(
    strict=True,
    reason=(
        "load() reads and retains the whole stream (up to 16 GiB / 1M items) before it checks any item "
        "against the registry: a first section 'no-such-device' is only refused after the trailer, so a "
        "peer can make the destination buffer the limit. Evidence: the tripwire source is read >1 MiB "
        "past the bad section. Fix: check each section item (registry, version, shape) when it is read; "
        "nothing is applied either way."
    ),
)
def test_load_refuses_an_unknown_section_without_reading_the_rest() -> None:
    prefix = encode_item(HEADER) + encode_item(["section", "no-such-device", 0, 1, [], {}])
    with pytest.raises(vmstate.IncompatibleVersion):
        vmstate.load(_Tripwire(prefix), emu_registry(), check_eof=False)


# --- 2. RAM runs: CPU amplification and sizes ------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Zero-page runs cost 6 bytes on the wire whatever they cover, runs may overlap and the reader "
        "does not cap runs per item (the writer caps at 4096). A 1.2 MB item of 200000 runs "
        "[0, 1024, null] over the emulator's 4 MiB RAM loads in 0.25 s, then RamRegion.apply_to memsets "
        "4 MiB per run (20000 runs measured 2.6 s; a 4 MiB item ~90 s; 1M items or a bigger guest: "
        "hours). Fix: refuse overlapping/unsorted runs in an item and cap runs per item, and make "
        "RamRegion coalesce rounds so apply_to writes each page at most once (last writer wins)."
    ),
)
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


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Limits.max_ram_pages (2**26, commented '256 GiB of 4 KiB') counts pages, but page_size may be "
        "2 MiB: a region of 2**26 x 2 MiB = 128 TiB loads (one 6-byte zero run), and RamRegion.to_bytes() "
        "would try to allocate it. Fix: limit region bytes (page_size * total_pages), e.g. max_ram_bytes."
    ),
)
def test_a_ram_region_over_256_gib_is_refused() -> None:
    pages = 1 << 26
    data = seal([HEADER, ["ram", "ram", 2 << 20, pages, [[0, pages, None]]]])
    with pytest.raises(vmstate.CorruptStream):
        vmstate.loads(data, emu_registry())


# --- 3. undocumented exceptions from loads ----------------------------------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Header.from_cbor does sorted(extra) on unknown keys; cbor2's strict_hashable_types allows text "
        "AND byte-string keys, so a header with unknown keys b'x' and 'y' raises TypeError "
        "(\"'<' not supported between instances of 'str' and 'bytes'\") out of vmstate.loads. Found by "
        "probing and independently by the atheris run. Fix: refuse non-text keys, or sort by repr."
    ),
)
def test_header_with_unknown_bytes_and_text_keys_is_corrupt() -> None:
    header = dict(HEADER)
    header[b"x"] = 1  # type: ignore[index]
    header["y"] = 1
    with pytest.raises(vmstate.CorruptStream):
        vmstate.loads(seal([header]), emu_registry())


# --- 4. dump -----------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "dump renders a Bitmap field with _bit_ranges(int.from_bytes(raw)) without checking the length "
        "(the decoder's nbytes check only sets the status), and _bit_ranges is quadratic (n >> i per bit). "
        "A resealed emulator stream whose 64-byte ports_map is 32 KiB took 2.3 s in summarize, 256 KiB "
        "~150 s, a 4 MiB one hours: `vserial vmstate dump` hangs. Fix: only expand bitmaps of the "
        "declared size (else show hex/length), and walk bits linearly (bin() or per byte)."
    ),
)
def test_dump_of_an_oversized_bitmap_field_is_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = emu_items()
    items[2][4][8] = b"\x55" * (256 << 10)  # virtio-serial/ports_map
    path = tmp_path / "big-bitmap.vmstate"
    path.write_bytes(seal(items))
    with time_limit(5):
        assert main(["dump", str(path), "--json"], emu_registry()) == 0
    section = json.loads(capsys.readouterr().out)["items"][1]
    assert "ports_map" in section["status"]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "dump's text output passes stream strings (producer, section names, statuses quoting values) to "
        "rich as markup: a stream whose producer is 'evil [/oops]' (or a port name '[/x]') makes "
        "`vserial vmstate dump` die with rich.errors.MarkupError instead of printing; other markup "
        "([link=...], styles) is interpreted. Fix: rich.markup.escape() every stream string, or Text()."
    ),
)
def test_dump_text_shows_markup_like_strings_literally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "markup.vmstate"
    path.write_bytes(vmstate.dumps([demo.Clock(1, b"")], producer="evil [/oops]", created=0))
    assert main(["dump", str(path)], demo.REGISTRY) == 0
    assert "evil [/oops]" in capsys.readouterr().out


@pytest.mark.xfail(
    strict=True,
    reason=(
        "dump's text output writes stream strings raw to the terminal: producer '\\x1b]0;pwned\\x07x' "
        "comes out with its ESC (rich strips BEL only), so a stream can drive the user's terminal "
        "(title, screen clears, ...). Field values are repr()'d; producer, section names and statuses "
        "are not. Fix: escape control characters (repr or replace) in every stream string."
    ),
)
def test_dump_text_escapes_terminal_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "escape.vmstate"
    path.write_bytes(vmstate.dumps([demo.Clock(1, b"")], producer="\x1b]0;pwned\x07x", created=0))
    assert main(["dump", str(path)], demo.REGISTRY) == 0
    assert "\x1b]0;pwned" not in capsys.readouterr().out


@pytest.mark.xfail(
    strict=True,
    reason=(
        "The header's created is any uint (loads accepts 2**64-1), but dump's summarize calls "
        "datetime.fromtimestamp(created) unguarded: OverflowError 'timestamp out of range for platform "
        "time_t' escapes `vserial vmstate dump` (traceback, not exit 1). Fix: bound created at load "
        "(e.g. < 2**40) or show created_utc as null/'out of range'."
    ),
)
def test_dump_of_a_far_future_created_time_does_not_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = dict(HEADER, created=2**64 - 1)
    path = tmp_path / "future.vmstate"
    path.write_bytes(seal([header]))
    assert main(["dump", str(path), "--json"], emu_registry()) in (0, 1)


# --- 5. check ----------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "check validates fields' name/type but not 'subsections' nor since/dropped_after/max_len types: "
        "subsections null -> TypeError, subsections [1] -> AttributeError, since '1' -> TypeError escape "
        "cli.main (traceback, exit 1) instead of the documented 255 for a non-schema input. Fix: "
        "validate the whole schema shape in _descriptions (SchemaFormatError)."
    ),
)
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


@pytest.mark.xfail(
    strict=True,
    reason=(
        "An empty key is taken as a real key: load(key=b'') (and `dump --key-file` of an empty or "
        "truncated key file) reports authenticated/'verified' for a stream anyone can forge with "
        "HMAC(b'', ...). Fix: refuse empty (or < 16-byte) keys in StreamReader/StreamWriter and the CLI."
    ),
)
def test_an_empty_hmac_key_is_refused() -> None:
    forged = seal([HEADER], key=b"")
    with pytest.raises((ValueError, vmstate.VMStateError)):
        vmstate.loads(forged, emu_registry(), key=b"")


# --- 7. the emulator applies RAM before the device record is validated -------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "emulator.state.restore validates queues against the guest RAM already in the machine, so the "
        "documented sequence (tests/emulator: loaded.ram['ram'].apply_to(mem); restore(dev, rec)) "
        "overwrites guest RAM before the device record can be refused: a refused record leaves the "
        "machine half-restored (test_a_record_that_does_not_fit_is_refused_and_changes_nothing "
        "snapshots AFTER applying RAM, hiding it). Issue 4: 'changes nothing'. Fix: let restore take the "
        "loaded RAM (e.g. restore(dev, rec, ram=region)), check rings against it, then apply RAM and "
        "device together."
    ),
)
def test_emulator_restore_that_refuses_a_record_leaves_guest_ram_unchanged() -> None:
    from emulator.chardev import MemoryChardev
    from emulator.machine import Machine
    from emulator.state import restore

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
        restore(m.devices[0], record, ram=loaded.ram["ram"])  # type: ignore[call-arg]
    assert bytes(m.mem.ring_buf) == before


# --- 8. issue 4 asks for atheris when it installs ------------------------------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Issue 4: 'hypothesis (and atheris if it installs)'. `pip install atheris` works here "
        "(atheris 3.0.0, Python 3.11) but the repository has no atheris harness; the review's ad-hoc "
        "harness ran 3.1M inputs and found the header TypeError the hypothesis tests (text-only keys) "
        "never try. Fix: add the harness (e.g. tests/vmstate/fuzz_atheris.py) and a byte-keyed "
        "dictionary strategy to the hypothesis fuzz."
    ),
)
def test_an_atheris_harness_exists() -> None:
    hits = [p for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name and "atheris" in p.read_text()]
    hits += [p for p in (ROOT / "bench").rglob("*.py") if "atheris" in p.read_text()]
    assert hits
