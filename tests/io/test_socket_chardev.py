"""The socket chardev against host programs that misbehave: a client that
connects and hangs up at once, a reconnect that must not block the main loop,
chardev-remove while connected, and a host that reconnects mid-transfer
(QEMU's virtio_serial_close rules).  In-process, over real unix sockets.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from emulator.io.char_socket import SocketChardev
from emulator.runtime.runtime import Runtime

from tests.runtime.programs import (  # noqa: F401  (build: a fixture)
    GuestProgram, Host, build, cpu_over, guest_port, open_fds, pattern, pump, qmp, spin, with_port,
)


def test_socket_reconnect_does_not_block_the_main_loop(build: Callable[..., Runtime], tmp: str) -> None:
    path = f"{tmp}/srv.sock"
    rt = build(*with_port(f"socket,id=c1,path={path},reconnect=1"))
    chr_ = rt.machine.chardevs["c1"]
    assert isinstance(chr_, SocketChardev) and chr_.conn is None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    filler.connect(path)  # the backlog is now full: a blocking connect waits
    done = threading.Event()
    th = threading.Thread(target=lambda: (chr_._try_reconnect(), done.set()), daemon=True)
    th.start()
    try:
        assert done.wait(1.0), "the reconnect attempt blocked the main loop"
    finally:
        listener.close()  # unblocks a stuck connect()
        th.join(5)
        filler.close()


def test_host_that_connects_and_closes_at_once_leaves_the_port_closed(build: Callable[..., Runtime],
                                                                     tmp: str) -> None:
    path = f"{tmp}/s"
    rt = build(*with_port(f"socket,id=c1,path={path},server=on,wait=off"))
    chr_ = rt.machine.chardevs["c1"]
    assert isinstance(chr_, SocketChardev)
    g = GuestProgram(rt)
    for _ in range(3):
        before = chr_.bytes_in
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.close()
        # accepted, saw EOF, back to listening
        pump(rt, lambda: chr_.conn is None and rt.loop.has_reader(chr_.listener.fileno())  # type: ignore[union-attr]
             and not guest_port(rt)["host-connected"], "the quick client to come and go")
        spin(rt)
        assert chr_.bytes_in == before
    h = Host(path)
    pump(rt, lambda: guest_port(rt)["host-connected"], "a real client")
    g.write(b"still works")
    pump(rt, lambda: bytes(h.received) == b"still works", "the bytes", step=h.recv_some)
    h.close()
    assert cpu_over(rt) < 0.1


def test_chardev_remove_of_a_connected_socket_closes_everything(build: Callable[..., Runtime], tmp: str) -> None:
    path = f"{tmp}/c2.sock"
    rt = build("-chardev", f"socket,id=c2,path={path},server=on,wait=off")
    h = Host(path)
    pump(rt, lambda: rt.machine.chardevs["c2"].info()["filename"] == f"unix:{path},server=on", "the client")
    chr_ = rt.machine.chardevs["c2"]
    assert isinstance(chr_, SocketChardev) and chr_.conn is not None and chr_.listener is not None
    socks = [chr_.conn, chr_.listener]
    fds = {s.fileno() for s in socks}
    c = qmp(rt, tmp)
    spin(rt)
    before = len(open_fds())
    assert c.cmd({"execute": "chardev-remove", "arguments": {"id": "c2"}}) == {"return": {}}
    assert all(s.fileno() == -1 for s in socks) and not os.path.exists(path)
    assert not any(fd in rt.loop._masks for fd in fds)
    assert len(open_fds()) == before - 2
    h.sock.settimeout(2)
    assert h.sock.recv(10) == b""
    h.close()


def test_guest_bytes_across_a_host_reconnect_arrive_once_in_order(build: Callable[..., Runtime], tmp: str) -> None:
    """As QEMU's virtio_serial_close: what the guest had queued when the host
    hung up is dropped; what it writes while nobody is connected waits and
    reaches the next host program exactly once, nothing stale before it."""
    path = f"{tmp}/s"
    rt = build(*with_port(f"socket,id=c1,path={path},server=on,wait=off"))
    h1 = Host(path)
    pump(rt, lambda: guest_port(rt)["host-connected"], "host-connected")
    g = GuestProgram(rt)
    old = pattern(3 << 20, 4)
    g.write(old)
    pump(rt, lambda: len(h1.received) >= 100_000, "some bytes", step=h1.recv_some)
    h1.close()
    pump(rt, lambda: not guest_port(rt)["host-connected"], "the hang-up")
    assert old.startswith(bytes(h1.received))
    new = pattern(500_000, 9)
    g.write(new)
    spin(rt)
    assert rt.agent.pending(g.handle) == len(new)  # waits for a host program
    h2 = Host(path)
    pump(rt, lambda: len(h2.received) >= len(new), "the new bytes", step=h2.recv_some)
    spin(rt)
    h2.recv_some()
    assert bytes(h2.received) == new
    h2.close()
