"""``-global driver.prop=value``: which types a global reaches (the proxy,
the backend type, the port parent type), and that a global that does not
parse fails the device it applies to and changes nothing else, as in QEMU 7.2.
"""

from __future__ import annotations

import pytest

from emulator.errors import ConfigError
from emulator.machine.machine import Machine
from emulator.runtime.runtime import Runtime

from tests.runtime.qmp_session import make


def test_a_bad_global_only_warns_for_a_hotplugged_device(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-global", "virtio-serial-pci.max_ports=abc")
    s.cmd("device_add", driver="virtio-serial", id="vs0")
    assert s.last() == {"return": {}}
    assert [d.qdev_id for d in rt.machine.devices] == ["vs0"]
    assert rt.machine.devices[0].max_ports == 31


def test_global_on_the_backend_type_applies(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-global", "virtio-serial-device.max_ports=5", "-device", "virtio-serial,id=vs0")
    assert rt.machine.devices[0].max_ports == 5


def test_global_on_the_port_parent_type_applies(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-global", "virtio-serial-port.name=zz",
                 "-device", "virtio-serial,id=vs0", "-device", "virtserialport,id=p1")
    assert rt.machine.port("p1").name == "zz"


def test_a_failed_global_changes_nothing() -> None:
    m = Machine()
    m.globals.append(("virtio-serial-pci", "max_ports", "abc"))
    with pytest.raises(ConfigError):
        m.device_add({"driver": "virtio-serial"})
    assert m.devices == [] and m.anon == {} and m.qdev_ids == {} and m._bus_auto_ids == 0
