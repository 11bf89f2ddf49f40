"""The emulator's vmstate history: every saved stream loads and restores
forever, and no description changes without a version bump.

If a test here fails because you changed emulator/state/records.py: bump the
description's version (keeping older streams loadable with since /
dropped_after / default / translate), then run
``python fixtures/vmstate/emulator/make_fixtures.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import vmstate

from emulator.core.chardev import MemoryChardev
from emulator.machine.machine import Machine
from emulator.state.records import SECTION, registry, restore

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vmstate" / "emulator"
STREAMS = sorted((FIXTURES / "streams").glob("*.vmstate"))


def test_fixtures_exist() -> None:
    assert STREAMS
    version = registry().descriptions()[SECTION].version
    assert any(p.name == f"format{vmstate.FORMAT_VERSION}-{SECTION}-v{version}.vmstate" for p in STREAMS)


@pytest.mark.parametrize("name", sorted(registry().descriptions()))
def test_description_is_unchanged_or_bumped(name: str) -> None:
    d = registry().descriptions()[name]
    saved = FIXTURES / "descriptions" / f"{name}-v{d.version}.json"
    assert saved.exists(), f"{name} v{d.version} has no saved description: run make_fixtures.py"
    assert json.loads(saved.read_text()) == json.loads(json.dumps(d.to_json())), (
        f"{name} changed without a version bump"
    )


def machine_for(loaded: vmstate.LoadedStream) -> Machine:
    """A machine built from the command line a fixture stream records."""
    cfg = loaded.header.machine
    m = Machine(ram_size=cfg["ram_size"])
    for c in cfg["chardevs"]:
        m.chardev_add(MemoryChardev(c))
    for props in cfg["device"]:
        m.device_add(dict(props))
    return m


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_every_saved_stream_restores_into_a_machine_from_its_command_line(path: Path) -> None:
    loaded = vmstate.loads(path.read_bytes(), registry())
    m = machine_for(loaded)
    restore(m.devices[0], loaded.section(SECTION, 0), ram=loaded.ram["ram"])
    # The sample held a throttled guest write; the new host takes the rest.
    assert m.host_receive("c1") == b"across the snapshot"
    assert m.devices[0].ports[1].guest_connected
    assert m.error_log == []


# Issue 4 review. Was: a refused emulator restore had already overwritten guest RAM (restore now stages it).
@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_a_refused_restore_leaves_guest_ram_unchanged(path: Path) -> None:
    loaded = vmstate.loads(path.read_bytes(), registry())
    m = machine_for(loaded)
    before = bytes(m.mem.ring_buf)
    record = loaded.section(SECTION, 0)
    record.queues[1].used_addr = loaded.header.machine["ram_size"] - 8  # outside RAM: refused
    with pytest.raises(vmstate.ValidationError):
        restore(m.devices[0], record, ram=loaded.ram["ram"])
    assert bytes(m.mem.ring_buf) == before
