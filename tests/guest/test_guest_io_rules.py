"""Guest I/O rules that come from the guest being a stopped or running CPU
and from Linux's read path."""

from __future__ import annotations

import pytest

from emulator.core.chardev import MemoryChardev
from emulator.errors import GuestNotRunning
from emulator.machine.machine import Machine


def booted() -> Machine:
    m = Machine()
    m.chardev_add(MemoryChardev("c0"))
    m.device_add({"driver": "virtio-serial"})
    m.device_add({"driver": "virtserialport", "chardev": "c0", "name": "p"})
    m.boot()
    return m


def test_guest_programs_do_not_run_while_the_machine_is_stopped() -> None:
    m = booted()
    f = m.guest.open("/dev/virtio-ports/p")
    m.stop()
    with pytest.raises(GuestNotRunning):
        f.write(b"x")
    with pytest.raises(GuestNotRunning):
        f.read(10)
    with pytest.raises(GuestNotRunning):
        m.guest.open("/dev/vport0p1")
    assert m.host_receive("c0") == b""
    m.cont()
    assert f.write(b"x") == 1
    assert m.host_receive("c0") == b"x"


def test_a_read_returns_at_most_one_receive_buffer() -> None:
    m = booted()
    f = m.guest.open("/dev/virtio-ports/p")
    payload = bytes(range(256)) * 40  # 10240 bytes: three 4 KiB buffers
    assert m.host_send("c0", payload) == len(payload)
    sizes = []
    got = b""
    while len(got) < len(payload):
        chunk = f.read(65536)
        sizes.append(len(chunk))
        got += chunk
    assert sizes == [4096, 4096, 2048]
    assert got == payload


def test_partial_reads_continue_inside_a_buffer() -> None:
    m = booted()
    f = m.guest.open("/dev/virtio-ports/p")
    m.host_send("c0", b"abcdefgh")
    assert [f.read(3), f.read(3), f.read(3)] == [b"abc", b"def", b"gh"]
