"""``info snapshots`` laid out byte for byte as QEMU 7.2 printed it
(fixtures/qemu/snapshots.json), and QEMU's size and clock formatting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from emulator.snapshot.info_snapshots import format_vm_clock, render_info_snapshots, size_to_str
from emulator.snapshot.store import SnapshotEntry, SnapshotInfo, SnapshotStore

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = json.loads((ROOT / "fixtures" / "qemu" / "snapshots.json").read_text())
# The recording normalised every date to this local time (SNAPSHOT_FACTS.md).
RECORDED_DATE_NS = int(time.mktime((2000, 1, 1, 0, 0, 0, 0, 0, -1))) * 1_000_000_000
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}


def _recorded_texts() -> list[tuple[str, str]]:
    texts = []
    for session in FIXTURE["sessions"]:
        for step in session["steps"]:
            if "info snapshots" in json.dumps(step["send"]):
                texts.append((f"{session['name']} / {step['note']}", step["recv"][0]["return"]))
    return texts


def _vserial_can_print(text: str) -> bool:
    """Leave out what vserial never has: disks (partial lists, the no-disk
    message) and disk-only snapshots (a non-empty ICOUNT)."""
    return "partial" not in text and "block device" not in text and " 0 B " not in text


LAYOUT_CASES = [(n, t) for n, t in _recorded_texts() if _vserial_can_print(t)]


def _entries_of(text: str) -> list[SnapshotEntry]:
    """The values of each recorded row; the layout is what is compared."""
    entries: list[SnapshotEntry] = []
    for line in text.split("\r\n")[2:-1]:
        ident, tag, number, unit, _date, _time, clock = line.split()
        assert ident == "--"
        h, m, s = clock.split(":")
        clock_ns = round((int(h) * 3600 + int(m) * 60 + float(s)) * 1e9)
        entries.append(SnapshotEntry(tag, int(number) * _UNITS[unit], RECORDED_DATE_NS, clock_ns, len(entries)))
    return entries


def test_every_kind_of_recorded_table_is_covered() -> None:
    names = [n for n, _ in LAYOUT_CASES]
    assert "hmp_prelaunch / info snapshots, 0 snapshots" in names
    assert "hmp_prelaunch / info snapshots with a long tag" in names  # 17 and 40 chars
    assert "hmp_running / info snapshots (running, 1 snapshot)" in names  # a non-zero clock
    assert len(LAYOUT_CASES) >= 15


@pytest.mark.parametrize(("name", "recorded"), LAYOUT_CASES, ids=[n for n, _ in LAYOUT_CASES])
def test_the_table_is_qemus_byte_for_byte(name: str, recorded: str) -> None:
    assert render_info_snapshots(_entries_of(recorded)) == recorded


def test_a_store_renders_in_creation_order_with_file_sizes(tmp_path: Path) -> None:
    recorded = dict(_recorded_texts())["jobs_running / info snapshots at the end"]
    store = SnapshotStore(tmp_path)
    for tag in ("s1", "sa", "sb", "sc", "sd", "si"):
        store.save(tag, b"\0" * (697 * 1024 - 48), SnapshotInfo(vm_clock=1.0, date=RECORDED_DATE_NS / 1e9))
    store.delete("sa")
    assert render_info_snapshots(store.list()) == recorded


def test_no_snapshots_has_qemus_sentence() -> None:
    assert render_info_snapshots([]) == "There is no snapshot available.\r\n"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"), (1, "1 B"), (999, "999 B"), (1000, "0.977 KiB"), (1023, "0.999 KiB"),
        (1024, "1 KiB"), (1536, "1.5 KiB"), (433 * 1024, "433 KiB"), (1000 * 1024 - 1, "1e+03 KiB"), (1000 * 1024, "0.977 MiB"),
        (999 * 1024, "999 KiB"), (999 * 1024 + 600, "1e+03 KiB"), (10 << 20, "10 MiB"), (5 << 30, "5 GiB"),
        ((1 << 64) - 1, "16 EiB"),
    ],
)
def test_size_to_str_is_qemus(size: int, text: str) -> None:
    """util/cutils.c: the unit switches once val * 1024 / 1000 reaches the
    next power of 1024, so "%0.3g" prints 1e+03 just below the switch."""
    assert size_to_str(size) == text


@pytest.mark.parametrize(
    ("clock_ns", "text"),
    [
        (0, "00:00:00.000"), (1_000_000_000, "00:00:01.000"), (999_999_999, "00:00:00.999"),
        (3_723_456_789_000, "01:02:03.456"), (360_000 * 1_000_000_000, "100:00:00.000"),
    ],
)
def test_the_vm_clock_is_truncated_to_milliseconds(clock_ns: int, text: str) -> None:
    assert format_vm_clock(clock_ns) == text
