"""Restoring the emulator's device from a loaded vmstate stream: a record that
restore refuses leaves the machine as it was (the other restore rules are in
test_device_state.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import vmstate
from emulator.state.records import registry

EMU_STREAM = (
    Path(__file__).resolve().parents[2] / "fixtures" / "vmstate" / "emulator" / "streams"
    / "format1-virtio-serial-v1.vmstate"
)


# Issue 4 review. Was: a refused emulator restore had already overwritten guest RAM (restore now stages it).
def test_emulator_restore_that_refuses_a_record_leaves_guest_ram_unchanged() -> None:
    from emulator.core.chardev import MemoryChardev
    from emulator.machine.machine import Machine
    from emulator.state.records import restore

    loaded = vmstate.loads(EMU_STREAM.read_bytes(), registry())
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
