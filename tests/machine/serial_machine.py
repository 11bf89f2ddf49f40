"""A machine with one virtio-serial device and the given ports, tracing
``virtio_serial_*``: the starting point of device-level tests in several
layers (core, machine, state)."""

from __future__ import annotations

from typing import Any

from emulator.core.chardev import MemoryChardev
from emulator.core.trace import Trace
from emulator.machine.machine import Machine


def serial_machine(*ports: dict[str, Any], chardevs: tuple[MemoryChardev, ...] = (), **devprops: Any) -> Machine:
    m = Machine(trace=Trace(["virtio_serial_*"]))
    for c in chardevs:
        m.chardev_add(c)
    m.device_add({"driver": "virtio-serial", **devprops})
    for p in ports:
        m.device_add(dict(p))
    return m
