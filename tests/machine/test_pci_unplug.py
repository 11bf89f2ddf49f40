"""device_del of a virtio-serial device: QEMU's PCI hot-unplug, with the
simulated Linux guest doing the eject (virtcons_remove).

QEMU 7.2 (fixtures/qemu/qmp_transcript.json, RUNTIME_FACTS.md): device_del
returns at once with no event while the guest has not acted, and a second
device_del says "Device vs0 is already in the process of unplug".  When the
guest lets go, every device in the tree is deleted children first, each
with DEVICE_DELETED (a port, the virtio-backend, the PCI proxy)."""

from __future__ import annotations

import errno
import time

import pytest

from emulator.core.chardev import MemoryChardev
from emulator.errors import ConfigError, GuestOSError
from emulator.machine.machine import Machine
from emulator.runtime.runtime import Runtime

from tests.runtime.qmp_session import make


def booted() -> Machine:
    m = Machine()
    m.chardev_add(MemoryChardev("c1"))
    m.device_add({"driver": "virtio-serial", "id": "vs0"})
    m.device_add({"driver": "virtconsole", "id": "con0"})
    m.boot()
    return m


def add_second_device(m: Machine) -> None:
    m.device_add({"driver": "virtio-serial", "id": "vs1", "max_ports": "4"})
    m.device_add({"driver": "virtserialport", "id": "p1", "bus": "vs1.0", "chardev": "c1", "name": "org.x.one"})
    m.device_add({"driver": "virtserialport", "bus": "vs1.0", "nr": "3"})


def test_a_running_guest_ejects_the_device_and_every_device_in_it_is_deleted() -> None:
    m = booted()
    before = m.guest.kmalloc.allocated
    add_second_device(m)
    f = m.guest.open("/dev/virtio-ports/org.x.one")
    f.write(b"bye")
    assert m.host_receive("c1") == b"bye"
    assert "/dev/vport1p1" in m.guest.nodes
    m.events.clear()

    m.device_del("vs1")

    assert [(e.name, e.data) for e in m.events] == [
        ("VSERPORT_CHANGE", {"id": "p1", "open": False}),  # the guest's device reset closes the port
        # children last-plugged first (QEMU's bus_unparent; seen in QEMU's system_reset transcript)
        ("DEVICE_DELETED", {"path": "/machine/peripheral-anon/device[0]"}),
        ("DEVICE_DELETED", {"device": "p1", "path": "/machine/peripheral/p1"}),
        ("DEVICE_DELETED", {"path": "/machine/peripheral/vs1/virtio-backend"}),
        ("DEVICE_DELETED", {"device": "vs1", "path": "/machine/peripheral/vs1"}),
    ]
    assert [d.qdev_id for d in m.devices] == ["vs0"]
    assert not any(n.startswith("/dev/vport1") for n in m.guest.nodes)
    assert m.guest.links == {}
    # the program's descriptor: reads see EOF, writes ENODEV
    assert f.read() == b""
    with pytest.raises(GuestOSError) as info:
        f.write(b"x")
    assert info.value.errno == errno.ENODEV
    f.close()
    # the driver freed its rings and buffers
    assert m.guest.kmalloc.allocated == before
    # the chardev is free again, the ids can be reused, the guest index too
    assert not m.chardevs["c1"].in_use
    with pytest.raises(ConfigError, match=r"^Device 'vs1' not found$"):
        m.device_del("vs1")
    add_second_device(m)
    assert "/dev/vport1p1" in m.guest.nodes
    g = m.guest.open("/dev/virtio-ports/org.x.one")
    g.write(b"again")
    assert m.host_receive("c1") == b"again"
    # the first device was never disturbed
    assert m.guest.hvcs[0].id == 0 and "/dev/vport0p0" in m.guest.nodes


def test_unplug_waits_for_a_running_guest_and_cannot_be_asked_twice() -> None:
    m = booted()
    add_second_device(m)
    m.stop()
    m.events.clear()
    m.device_del("vs1")
    assert m.events == []  # nothing until the guest acts
    with pytest.raises(ConfigError, match=r"^Device vs1 is already in the process of unplug$"):
        m.device_del("vs1")
    assert "/dev/vport1p1" in m.guest.nodes
    m.cont()
    names = [(e.name, e.data.get("path")) for e in m.events]
    assert names[0] == ("RESUME", None)
    assert names[-1] == ("DEVICE_DELETED", "/machine/peripheral/vs1")
    assert [d.qdev_id for d in m.devices] == ["vs0"]


def test_unplug_of_an_anonymous_device_is_reported_by_path() -> None:
    m = Machine()
    m.device_add({"driver": "virtio-serial"})
    m.boot()
    m.events.clear()
    m.device_del("/machine/peripheral-anon/device[0]")
    assert [(e.name, e.data) for e in m.events] == [
        ("DEVICE_DELETED", {"path": "/machine/peripheral-anon/device[0]/virtio-backend"}),
        ("DEVICE_DELETED", {"path": "/machine/peripheral-anon/device[0]"}),
    ]
    assert m.devices == [] and m.guest.portdevs == {}


def test_system_reset_completes_pending_unplugs_and_reboots_the_guest() -> None:
    """QEMU 7.2's transcript: a pending PCI unplug completes at system_reset,
    ports deleted last-plugged first, then virtio-backend, then the device."""
    m = booted()
    add_second_device(m)
    f = m.guest.open("/dev/virtio-ports/org.x.one")
    m.stop()
    m.device_del("vs1")  # pending: the guest is not running
    m.events.clear()
    m.system_reset()
    assert [(e.name, e.data) for e in m.events] == [
        ("DEVICE_DELETED", {"path": "/machine/peripheral-anon/device[0]"}),
        ("DEVICE_DELETED", {"device": "p1", "path": "/machine/peripheral/p1"}),
        ("DEVICE_DELETED", {"path": "/machine/peripheral/vs1/virtio-backend"}),
        ("DEVICE_DELETED", {"device": "vs1", "path": "/machine/peripheral/vs1"}),
        ("VSERPORT_CHANGE", {"id": "con0", "open": False}),  # vs0's reset closes the open console
    ]
    assert not m.guest.booted  # stopped: the new guest boots on cont
    with pytest.raises(GuestOSError) as info:
        f.write(b"x")  # the old program's descriptor died with the old guest
    assert info.value.errno == errno.EIO
    m.cont()
    m.boot()
    assert sorted(m.guest.nodes) == ["/dev/vport0p0"]
    assert m.guest.hvcs[0].id == 0


def test_system_reset_while_running_closes_ports_and_the_guest_comes_back() -> None:
    m = booted()
    add_second_device(m)
    m.guest.open("/dev/virtio-ports/org.x.one")
    m.events.clear()
    m.system_reset()
    assert ("VSERPORT_CHANGE", {"id": "p1", "open": False}) in [(e.name, e.data) for e in m.events]
    assert m.guest.booted and "/dev/vport1p1" in m.guest.nodes
    g = m.guest.open("/dev/virtio-ports/org.x.one")  # not busy: the old opener is gone
    g.write(b"after reset")
    assert m.host_receive("c1") == b"after reset"


# =================================== unplug cycles and a pending unplug at cont

def test_unplug_replug_cycles_with_throttled_writes_free_all_guest_memory() -> None:
    m = Machine()
    m.chardev_add(MemoryChardev("c1"))
    m.chardev_add(MemoryChardev("c2"))
    m.device_add({"driver": "virtio-serial", "id": "vs0"})
    m.boot()
    base = m.guest.kmalloc.allocated
    for cycle in range(3):
        m.device_add({"driver": "virtio-serial", "id": "vs1", "max_ports": "4"})
        m.device_add({"driver": "virtserialport", "id": "p1", "bus": "vs1.0", "chardev": "c1", "name": "org.x"})
        m.device_add({"driver": "virtconsole", "bus": "vs1.0", "chardev": "c2"})
        m.host_grant("c1", 0)
        f = m.guest.open("/dev/virtio-ports/org.x")
        with pytest.raises(OSError):
            for _ in range(200):
                f.write(b"x" * 3000)
        m.host_send("c1", b"y" * 100_000)
        m.device_del("vs1")
        assert m.guest.kmalloc.allocated == base
        assert m.guest.nodes == {} and m.guest.hvcs == {} and m.guest.links == {}
        assert list(m.qdev_ids) == ["vs0"] and m.anon == {}
        assert not m.chardevs["c1"].in_use and not m.chardevs["c2"].in_use
        m.host_grant("c1", None)
        f.close()
    assert m._anon_count == 3  # never reused, as QEMU's peripheral-anon counter


def test_cont_with_a_pending_unplug_sends_the_guest_side_events_after_the_reply(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-chardev", "ringbuf,id=r0", "-device", "virtio-serial,id=vs0",
                 "-device", "virtio-serial,id=vs1", "-device", "virtserialport,id=p1,bus=vs1.0,chardev=r0,name=org.x")
    s.cmd("cont")
    rt.agent.open("/dev/virtio-ports/org.x", "w")  # the guest opens the port
    s.cmd("stop")
    s.cmd("device_del", id="vs1")
    s.raw.clear()
    s.cmd("cont")
    # p1's close comes within a second of its open: QEMU's monitor holds it
    # until that second is over (one VSERPORT_CHANGE per port per second).
    deadline = time.monotonic() + 5
    while "VSERPORT_CHANGE" not in [m.get("event") for m in s.messages()] and time.monotonic() < deadline:
        rt.loop.run_once(0.05)
    seq = [m.get("event", "reply") for m in s.messages()]
    assert seq[0] == "RESUME"
    reply = seq.index("reply")
    assert "VSERPORT_CHANGE" in seq[reply:], seq
