"""`vserial vmstate dump|schema|check` through cli.main."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cbor2
import pytest
import vmstate_demo as demo
from vmstate_hostile import EMU_STREAM, HEADER_MAP, emu_registry, seal, time_limit

import vmstate
from vmstate.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "vmstate"
STREAM = FIXTURES / "streams" / "format1-demo-bus-v3.vmstate"
SIGNED = FIXTURES / "streams" / "format1-demo-bus-v3-hmac.vmstate"


def emu_items() -> list[Any]:
    data = EMU_STREAM.read_bytes()
    items = cbor2.loads(b"\x9f" + data + b"\xff")
    values = [cbor2.loads(i.value) for i in items[:-1]]
    assert seal(values) == data
    return values


def test_dump_json_names_fields_and_summarizes_ram(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", str(STREAM), "--json"], demo.REGISTRY) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["header"]["producer"] == demo.PRODUCER
    assert out["header"]["machine"]["max_ports"] == 31
    assert out["trailer"]["hmac"] == "absent"
    bus = out["items"][2]
    assert (bus["name"], bus["instance_id"], bus["version"], bus["status"]) == ("demo-bus", 0, 3, "ok")
    assert bus["fields"]["ports"][2]["held"] == {"head": 17, "iov_idx": 1, "iov_offset": 2048}
    assert bus["fields"]["port_map"] == "0-2"
    assert bus["fields"]["subsections"] == {"demo-bus/emergency": {"emerg_wr": 33}}
    assert out["ram"]["ram"] == {"page_size": 4096, "total_pages": 64, "items": 2, "data_pages": 7, "zero_pages": 60}


def test_dump_without_registry_shows_positional_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", str(STREAM), "--json"]) == 0
    bus = json.loads(capsys.readouterr().out)["items"][2]
    assert bus["status"] == "unknown section"
    assert bus["fields"][0] == 31


def test_dump_text_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", str(STREAM)], demo.REGISTRY) == 0
    out = capsys.readouterr().out
    for text in ("vmstate stream", "demo-bus", "host_connected", "zero pages sent", "org.qemu.guest_agent.0"):
        assert text in out


def test_dump_checks_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key"
    key.write_bytes(demo.HMAC_KEY)
    assert main(["dump", str(SIGNED), "--json", "--key-file", str(key)], demo.REGISTRY) == 0
    assert json.loads(capsys.readouterr().out)["trailer"]["hmac"] == "verified"
    key.write_bytes(b"wrong key, long enough")
    assert main(["dump", str(SIGNED), "--key-file", str(key)], demo.REGISTRY) == 1
    assert "HMAC mismatch" in capsys.readouterr().err
    key.write_bytes(b"")  # an empty (or short) key file would "verify" forgeries
    assert main(["dump", str(SIGNED), "--key-file", str(key)], demo.REGISTRY) == 1
    assert "too short (at least 16 bytes)" in capsys.readouterr().err


def test_dump_of_a_damaged_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.vmstate"
    bad.write_bytes(STREAM.read_bytes()[:-5])
    assert main(["dump", str(bad)], demo.REGISTRY) == 1
    assert "truncated" in capsys.readouterr().err
    assert main(["dump", str(tmp_path / "missing")]) == 1


# Issue 4 review. Was: dump expanded a bitmap of any length with a quadratic bit walk, so an oversized ports_map hung it.
def test_dump_of_an_oversized_bitmap_field_is_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = emu_items()
    items[2][4][8] = b"\x55" * (256 << 10)  # virtio-serial/ports_map
    path = tmp_path / "big-bitmap.vmstate"
    path.write_bytes(seal(items))
    with time_limit(5):
        assert main(["dump", str(path), "--json"], emu_registry()) == 0
    section = json.loads(capsys.readouterr().out)["items"][1]
    assert "ports_map" in section["status"]


# Issue 4 review. Was: dump passed stream strings to rich as markup: a producer 'evil [/oops]' raised MarkupError.
def test_dump_text_shows_markup_like_strings_literally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "markup.vmstate"
    path.write_bytes(vmstate.dumps([demo.Clock(1, b"")], producer="evil [/oops]", created=0))
    assert main(["dump", str(path)], demo.REGISTRY) == 0
    assert "evil [/oops]" in capsys.readouterr().out


# Issue 4 review. Was: dump wrote stream strings raw to the terminal, ESC sequences included.
def test_dump_text_escapes_terminal_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "escape.vmstate"
    path.write_bytes(vmstate.dumps([demo.Clock(1, b"")], producer="\x1b]0;pwned\x07x", created=0))
    assert main(["dump", str(path)], demo.REGISTRY) == 0
    assert "\x1b]0;pwned" not in capsys.readouterr().out


# Issue 4 review. Was: created was any uint and dump's datetime.fromtimestamp raised OverflowError on 2**64-1.
def test_dump_of_a_far_future_created_time_does_not_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = dict(HEADER_MAP, created=2**64 - 1)
    path = tmp_path / "future.vmstate"
    path.write_bytes(seal([header]))
    for extra in ([], ["--json"]):
        assert main(["dump", str(path), *extra], emu_registry()) == 1
        out, err = capsys.readouterr()
        assert (out, err) == ("", f"vserial vmstate dump: {path}: header: created time {2**64 - 1} "
                                  "is after the year 9999\n")


# Was: text mode looked at kind == "section" before the error case: KeyError 'name'.
@pytest.mark.parametrize("item,error", [
    (["section"], "malformed section item"),
    (["section", "x"], "malformed section item"),
    (["ram"], "malformed RAM item"),
], ids=["section", "section-short", "ram"])
def test_dump_text_lists_a_malformed_item_with_its_error(item: list[Any], error: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "malformed.vmstate"
    path.write_bytes(seal([HEADER_MAP, item]))  # a valid digest around a bad item
    kind = item[0]
    assert main(["dump", str(path), "--json"], emu_registry()) == 0
    assert json.loads(capsys.readouterr().out)["items"] == [{"kind": kind, "error": error}]
    assert main(["dump", str(path)], emu_registry()) == 0
    out, err = capsys.readouterr()
    assert err == ""
    row = next(line for line in out.splitlines() if line.startswith("│ 0 "))
    assert [cell.strip() for cell in row.strip("│").split("│")] == ["0", kind, "", "", error]


def test_schema_json_is_the_registry_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--json"], demo.REGISTRY) == 0
    assert json.loads(capsys.readouterr().out) == demo.REGISTRY.schema()
    assert main(["schema"], demo.REGISTRY) == 0
    out = capsys.readouterr().out
    assert "demo-bus (section) version 3, minimum 1" in out and "translate" in out


def test_check_of_compatible_schemas_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    old, new = FIXTURES / "schema" / "demo-v1.json", FIXTURES / "schema" / "demo-v3.json"
    assert main(["check", str(old), str(new)]) == 0
    assert capsys.readouterr().out == ""


def test_check_prints_one_line_per_problem_and_exits_with_their_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = json.loads((FIXTURES / "schema" / "demo-v3.json").read_text())
    new = json.loads(json.dumps(old))
    del new["descriptions"]["demo-clock"]
    new["sections"].remove("demo-clock")
    bus = new["descriptions"]["demo-bus"]
    bus["minimum_version"] = 4
    bus["version"] = 4
    bus["fields"] = [f for f in bus["fields"] if f["name"] != "label"]
    bus["subsections"] = []
    new["descriptions"]["demo-port"]["fields"][1]["type"]["of"]["max_len"] = 8
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    status = main(["check", str(tmp_path / "old.json"), str(tmp_path / "new.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        'Section "demo-clock" does not exist in new',
        "demo-bus: minimum_version 4 is above old version 3: old streams are refused",
        "demo-bus/label: field removed (mark it dropped_after=3 instead)",
        "demo-bus: subsection 'demo-bus/emergency' missing in new",
        "demo-port/name: max_len lowered from 64 to 8",
        "demo-port: fields changed without a version bump (still version 2)",
    ]
    assert status == len(lines)


def test_check_caps_the_status_at_255(tmp_path: Path) -> None:
    old = {"sections": [f"s{i}" for i in range(300)], "descriptions": {}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps({"sections": [], "descriptions": {}}))
    assert main(["check", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 255


def test_check_refuses_files_that_are_not_schemas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.json").write_text("[]")
    assert main(["check", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 255
    assert "not a vmstate schema" in capsys.readouterr().err
    assert main(["check", os.devnull, str(tmp_path / "x.json")]) == 255


# Issue 4 review. Was: check did not validate subsections or since/dropped_after types: TypeError/AttributeError escaped main.
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


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
