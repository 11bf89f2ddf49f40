"""QMP ``qom-get`` on the virtio-serial proxy, its backend and its ports:
defaults, which object holds which property, and QEMU 7.2's message for an
unknown property (checked against ``qemu-system-x86_64 -M pc -S -qmp stdio``).
"""

from __future__ import annotations

from emulator.runtime.runtime import Runtime

from tests.runtime.qmp_session import make


def test_qom_get_returns_defaults(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-device", "virtio-serial,id=vs0")
    assert rt.qmp_qom_get("/machine/peripheral/vs0/virtio-backend", "max_ports") == 31
    assert rt.qmp_qom_get("/machine/peripheral/vs0", "vectors") == 2
    assert rt.qmp_qom_get("/machine/peripheral/vs0", "event_idx") is True


def test_qom_get_proxy_properties_live_on_the_proxy(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-device", "virtio-serial,id=vs0,vectors=3")
    s.cmd("qom-get", path="/machine/peripheral/vs0", property="vectors")
    assert s.last() == {"return": 3}
    s.cmd("qom-get", path="/machine/peripheral/vs0/virtio-backend", property="vectors")
    assert s.last() == {"error": {"class": "GenericError", "desc": "Property 'virtio-serial-device.vectors' not found"}}


def test_qom_get_unknown_property_message(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-device", "virtio-serial,id=vs0", "-device", "virtserialport,id=p1")
    s.cmd("qom-get", path="/machine/peripheral/p1", property="foo")
    assert s.last() == {"error": {"class": "GenericError", "desc": "Property 'virtserialport.foo' not found"}}
