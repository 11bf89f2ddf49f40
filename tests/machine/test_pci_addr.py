"""PCI ``addr=slot.function``: QEMU 7.2's multifunction rules and messages."""

from __future__ import annotations

import pytest

from emulator.errors import ConfigError
from emulator.machine.machine import Machine


def test_function_1_of_a_single_function_slot_is_refused() -> None:
    m = Machine()
    m.device_add({"driver": "virtio-serial", "id": "a", "addr": "5"})
    with pytest.raises(ConfigError, match=r"^PCI: single function device can't be populated in function 5\.1$"):
        m.device_add({"driver": "virtio-serial", "id": "b", "addr": "5.1"})
    assert [d.qdev_id for d in m.devices] == ["a"] and "b" not in m.qdev_ids


def test_function_0_without_multifunction_after_function_1_is_refused() -> None:
    m = Machine()
    m.device_add({"driver": "virtio-serial", "id": "a", "addr": "5.1", "multifunction": "on"})
    with pytest.raises(ConfigError, match=r"^PCI: 5\.0 indicates single function, but 5\.1 is already populated\.$"):
        m.device_add({"driver": "virtio-serial", "id": "b", "addr": "5"})
