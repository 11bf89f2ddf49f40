"""Chardev backends doing real I/O, driven in-process through a Runtime.

Each test builds a machine from a QEMU command line (``qemu_cli.build``),
starts it, and plays the host program with real unix/tcp sockets, files and
fifos while a guest program (``rt.agent``) uses the port.  The main loop is
driven with ``rt.loop.run_once`` in bounded loops that stop as soon as the
awaited condition holds (``pump``); nothing sleeps and hopes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from emulator.runtime import cmdline as qemu_cli
from emulator.io.char_socket import SocketChardev
from emulator.io.char_stdio import StdioChardev
from emulator.core.chardev import Chardev
from emulator.core.ports import VirtIOSerialPort
from emulator.runtime.runtime import Runtime

PORT_NAME = "org.test.x"
GUEST_PATH = f"/dev/virtio-ports/{PORT_NAME}"
# Host -> guest moves at most 4 KiB per loop turn (QEMU's chr_can_read asks
# virtqueue_get_avail_bytes for 4096), so turns are many and cheap; a turn
# with nothing ready waits 0.05 s.  Give up after this many turns or seconds.
MAX_ITERATIONS = 20_000
MAX_SECONDS = 20.0


# ------------------------------------------------------------------ helpers


@pytest.fixture
def start(runtimes: list[Runtime]) -> Callable[..., Runtime]:
    def _start(chardev: str, *extra: str, port: str = "virtserialport", boot: bool = True) -> Runtime:
        argv = [
            "-chardev", chardev,
            "-device", "virtio-serial,id=vser0",
            "-device", f"{port},id=p1,chardev=c1,name={PORT_NAME},nr=1",
            *extra,
        ]
        rt = qemu_cli.build(argv)
        runtimes.append(rt)
        if boot:
            rt.start()
        return rt

    return _start


def pump(rt: Runtime, cond: Callable[[], object], what: str, *, step: Callable[[], None] | None = None,
         limit: int = MAX_ITERATIONS) -> None:
    """Run the main loop until ``cond()`` holds; fail after ``limit`` turns
    or MAX_SECONDS."""
    deadline = time.monotonic() + MAX_SECONDS
    for _ in range(limit):
        if step is not None:
            step()
        if cond():
            return
        if time.monotonic() > deadline:
            break
        rt.loop.run_once(0.05)
    if step is not None:
        step()
    assert cond(), f"timed out waiting for {what}"


def spin(rt: Runtime, turns: int = 5) -> None:
    """A few loop turns, for checks that something does *not* happen; every
    such check is paired with a positive one that proves the loop ran."""
    for _ in range(turns):
        rt.loop.run_once(0.01)


def guest_port(rt: Runtime, name: str = PORT_NAME) -> dict[str, Any]:
    ports = [p for p in rt.qmp_guest_ports() if p["name"] == name]
    assert len(ports) == 1, rt.qmp_guest_ports()
    return ports[0]


def host_connected(rt: Runtime, name: str = PORT_NAME) -> bool:
    return bool(guest_port(rt, name)["host-connected"])


def chardev_info(rt: Runtime, label: str = "c1") -> dict[str, object]:
    infos = [c for c in rt.qmp_query_chardev() if c["label"] == label]
    assert len(infos) == 1
    return infos[0]


def the_chardev(rt: Runtime, label: str = "c1") -> Chardev:
    return rt.machine.chardevs[label]


def the_port(rt: Runtime) -> VirtIOSerialPort:
    return rt.machine.port("p1")


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that are not periodic at any small stride (catches reordering,
    duplication and loss)."""
    out = bytearray()
    counter = seed
    while len(out) < n:
        out += counter.to_bytes(4, "little") + bytes(((counter * 7 + i) & 0xFF) for i in range(12))
        counter += 1
    return bytes(out[:n])


class GuestProgram:
    """A guest program with the port open, through the guest agent."""

    def __init__(self, rt: Runtime, path: str = GUEST_PATH, mode: str = "r+") -> None:
        self.rt = rt
        self.handle = rt.agent.open(path, mode)
        self.received = bytearray()
        self.eof = False

    def write(self, data: bytes) -> None:
        ret = self.rt.agent.write(self.handle, base64.b64encode(data).decode())
        assert ret == {"count": len(data), "eof": False}

    def read_some(self) -> None:
        r = self.rt.agent.read(self.handle, 1 << 20)
        self.received += base64.b64decode(r["buf-b64"])
        assert r["count"] == len(base64.b64decode(r["buf-b64"]))
        self.eof = r["eof"]

    @property
    def pending(self) -> int:
        return self.rt.agent.pending(self.handle)

    def close(self) -> None:
        self.rt.agent.close(self.handle)


class HostPeer:
    """The host program: non-blocking descriptors, an outbox and an inbox."""

    def __init__(self, *, sock: socket.socket | None = None, rfd: int | None = None, wfd: int | None = None) -> None:
        self.sock = sock
        if sock is not None:
            sock.setblocking(False)
        self.rfd = rfd
        self.wfd = wfd
        self.outbox = bytearray()
        self.sent = 0
        self.received = bytearray()
        self.eof = False
        self.would_block = False  # the last send found the kernel buffer full

    def queue(self, data: bytes) -> None:
        self.outbox += data

    def send_some(self) -> None:
        self.would_block = False
        while self.outbox:
            try:
                if self.sock is not None:
                    n = self.sock.send(self.outbox[: 1 << 16])
                else:
                    assert self.wfd is not None
                    n = os.write(self.wfd, self.outbox[: 1 << 16])
            except BlockingIOError:
                self.would_block = True
                return
            del self.outbox[:n]
            self.sent += n

    def recv_some(self) -> None:
        while not self.eof:
            try:
                if self.sock is not None:
                    chunk = self.sock.recv(1 << 16)
                else:
                    assert self.rfd is not None
                    chunk = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self.eof = True
                return
            self.received += chunk

    def step(self) -> None:
        self.send_some()
        self.recv_some()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        for fd in {self.rfd, self.wfd} - {None}:
            assert fd is not None
            os.close(fd)


def unix_client(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def exchange(rt: Runtime, host: HostPeer, guest: GuestProgram, to_guest: bytes, to_host: bytes) -> None:
    """Move both payloads at once and check them byte for byte."""
    want_guest = len(guest.received) + len(to_guest)
    want_host = len(host.received) + len(to_host)
    start_guest, start_host = len(guest.received), len(host.received)
    host.queue(to_guest)
    if to_host:
        guest.write(to_host)

    def step() -> None:
        host.step()
        guest.read_some()

    pump(rt, lambda: len(guest.received) >= want_guest and len(host.received) >= want_host,
         f"{len(to_guest)} bytes to the guest and {len(to_host)} to the host", step=step)
    assert bytes(guest.received[start_guest:]) == to_guest
    assert bytes(host.received[start_host:]) == to_host
    assert guest.pending == 0


def free_tcp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------- unix socket server


def test_unix_server_listens_before_any_client(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert host_connected(rt) is False
    # QEMU 7.2: a listening socket with no client, and no guest open yet.
    assert chardev_info(rt) == {
        "label": "c1", "filename": f"disconnected:unix:{path},server=on", "frontend-open": False,
    }
    assert guest_port(rt)["open"] is False


def test_unix_server_client_connect_makes_guest_see_host_connected(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    client = unix_client(path)
    try:
        pump(rt, lambda: host_connected(rt), "host-connected after connect")
        assert rt.machine.guest.ports()[0].host_connected is True
        assert the_port(rt).host_connected is True
        assert chardev_info(rt)["filename"] == f"unix:{path},server=on"
        # A virtserialport opens its front end only when the guest opens the port.
        assert chardev_info(rt)["frontend-open"] is False
        guest = GuestProgram(rt)
        assert chardev_info(rt)["frontend-open"] is True
        assert guest_port(rt)["open"] is True
        guest.close()
        assert chardev_info(rt)["frontend-open"] is False
    finally:
        client.close()


def test_unix_server_small_data_both_ways_byte_exact(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    host = HostPeer(sock=unix_client(path))
    try:
        pump(rt, lambda: host_connected(rt), "host-connected")
        guest = GuestProgram(rt)
        every_byte = bytes(range(256))
        exchange(rt, host, guest, every_byte + b"\x00\r\n", every_byte[::-1] + b"\n\x00")
        exchange(rt, host, guest, b"ping", b"")
        exchange(rt, host, guest, b"", b"pong")
    finally:
        host.close()


def test_unix_server_more_than_one_mib_each_way_at_once(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    host = HostPeer(sock=unix_client(path))
    try:
        pump(rt, lambda: host_connected(rt), "host-connected")
        guest = GuestProgram(rt)
        size = (1 << 20) + 12345
        exchange(rt, host, guest, pattern(size, seed=1), pattern(size, seed=2))
        chr_ = the_chardev(rt)
        assert isinstance(chr_, SocketChardev)
        assert chr_.bytes_in == size and chr_.bytes_out == size
    finally:
        host.close()


def test_unix_server_client_disconnect_clears_host_connected(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    host = HostPeer(sock=unix_client(path))
    pump(rt, lambda: host_connected(rt), "host-connected")
    guest = GuestProgram(rt)
    exchange(rt, host, guest, b"before", b"")
    host.close()
    pump(rt, lambda: not host_connected(rt), "host-connected false after the client left")
    assert the_port(rt).host_connected is False
    assert chardev_info(rt)["filename"] == f"disconnected:unix:{path},server=on"
    # The guest program reads EOF: the host closed and nothing is left.
    guest.read_some()
    assert guest.eof is True
    assert bytes(guest.received) == b"before"


def test_unix_server_accepts_a_new_client_after_disconnect(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    guest = GuestProgram(rt)
    for round_ in range(3):
        host = HostPeer(sock=unix_client(path))
        pump(rt, lambda: host_connected(rt), f"host-connected (client {round_})")
        exchange(rt, host, guest, f"to guest {round_}".encode(), f"to host {round_}".encode())
        host.close()
        pump(rt, lambda: not host_connected(rt), f"host-connected false (client {round_})")
    assert bytes(guest.received) == b"to guest 0to guest 1to guest 2"


def test_unix_server_second_client_waits_in_backlog_until_first_leaves(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    guest = GuestProgram(rt)
    first = HostPeer(sock=unix_client(path))
    pump(rt, lambda: host_connected(rt), "first client connected")
    # The second connect() completes in the kernel's backlog, but QEMU
    # serves one peer at a time: it is not accepted while the first is here.
    second = HostPeer(sock=unix_client(path))
    try:
        second.queue(b"from the second")
        second.send_some()
        exchange(rt, first, guest, b"from the first", b"to the first")
        spin(rt)
        assert bytes(guest.received) == b"from the first"
        second.recv_some()
        assert bytes(second.received) == b""
        first.close()
        # Now the queued client is accepted and its early bytes arrive.
        pump(rt, lambda: bytes(guest.received) == b"from the firstfrom the second",
             "the second client's bytes", step=guest.read_some)
        assert host_connected(rt) is True
        exchange(rt, second, guest, b"", b"to the second")
    finally:
        second.close()


def test_unix_server_close_removes_the_socket_file(tmp: str, runtimes: list[Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = qemu_cli.build(["-chardev", f"socket,id=c1,path={path},server=on,wait=off"])
    rt.start()
    assert os.path.exists(path)
    rt.close()
    assert not os.path.exists(path)


def test_unix_server_replaces_a_stale_socket_file(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays behind, as after a crash
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    host = HostPeer(sock=unix_client(path))
    try:
        pump(rt, lambda: host_connected(rt), "host-connected")
    finally:
        host.close()


# ------------------------------------------------------------ tcp server


def test_tcp_server_on_port_zero_reports_bound_port_and_carries_data(start: Callable[..., Runtime]) -> None:
    rt = start("socket,id=c1,host=127.0.0.1,port=0,server=on,wait=off")
    chr_ = the_chardev(rt)
    assert isinstance(chr_, SocketChardev)
    port = chr_.port
    assert isinstance(port, int) and 0 < port < 65536
    assert chardev_info(rt)["filename"] == f"disconnected:tcp:127.0.0.1:{port},server=on"
    sock = socket.create_connection(("127.0.0.1", port))
    client_port = sock.getsockname()[1]
    host = HostPeer(sock=sock)
    try:
        pump(rt, lambda: host_connected(rt), "host-connected over tcp")
        assert chardev_info(rt)["filename"] == f"tcp:127.0.0.1:{port},server=on <-> 127.0.0.1:{client_port}"
        guest = GuestProgram(rt)
        exchange(rt, host, guest, pattern(200_000, 3), pattern(150_000, 4))
    finally:
        host.close()
    pump(rt, lambda: not host_connected(rt), "host-connected false after the tcp client left")
    assert chardev_info(rt)["filename"] == f"disconnected:tcp:127.0.0.1:{port},server=on"


# ---------------------------------------------------------- socket client


def test_socket_client_connects_to_a_listening_unix_socket(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "l")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        rt = start(f"socket,id=c1,path={path},server=off")
        conn, _ = listener.accept()  # connect() completed during build
        host = HostPeer(sock=conn)
        try:
            assert host_connected(rt) is True
            assert chardev_info(rt)["filename"] == f"unix:{path}"
            guest = GuestProgram(rt)
            exchange(rt, host, guest, pattern(70_000, 5), pattern(90_000, 6))
        finally:
            host.close()
        pump(rt, lambda: not host_connected(rt), "host-connected false after the server closed")
        assert chardev_info(rt)["filename"] == f"disconnected:unix:{path}"
    finally:
        listener.close()


def test_socket_client_is_the_default_mode(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "l")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        rt = start(f"socket,id=c1,path={path}")
        conn, _ = listener.accept()
        conn.close()
        chr_ = the_chardev(rt)
        assert isinstance(chr_, SocketChardev) and chr_.server is False
    finally:
        listener.close()


def test_socket_client_tcp(start: Callable[..., Runtime]) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        rt = start(f"socket,id=c1,host=127.0.0.1,port={port}")
        conn, _ = listener.accept()
        host = HostPeer(sock=conn)
        try:
            assert host_connected(rt) is True
            guest = GuestProgram(rt)
            exchange(rt, host, guest, b"over tcp", b"back over tcp")
        finally:
            host.close()
    finally:
        listener.close()


def test_socket_client_with_reconnect_starts_without_listener_and_connects_later(
    tmp: str, start: Callable[..., Runtime]
) -> None:
    path = os.path.join(tmp, "late")
    rt = start(f"socket,id=c1,path={path},server=off,reconnect=1")  # no error
    assert host_connected(rt) is False
    assert chardev_info(rt)["filename"] == f"disconnected:unix:{path}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.setblocking(False)
    accepted: list[socket.socket] = []

    def try_accept() -> None:
        try:
            accepted.append(listener.accept()[0])
        except BlockingIOError:
            pass

    try:
        pump(rt, lambda: accepted, "the reconnect timer to connect", step=try_accept)
        pump(rt, lambda: host_connected(rt), "host-connected after the reconnect")
        host = HostPeer(sock=accepted.pop())
        guest = GuestProgram(rt)
        exchange(rt, host, guest, b"late hello", b"late reply")
        # The peer leaves: the client connects again by itself.
        host.close()
        pump(rt, lambda: not host_connected(rt), "host-connected false")
        pump(rt, lambda: accepted, "a second reconnect", step=try_accept)
        host = HostPeer(sock=accepted.pop())
        pump(rt, lambda: host_connected(rt), "host-connected after the second reconnect")
        exchange(rt, host, guest, b"again", b"again back")
        host.close()
    finally:
        listener.close()


def test_socket_client_without_reconnect_to_missing_path_fails_with_qemus_message(tmp: str) -> None:
    path = os.path.join(tmp, "nolistener")
    with pytest.raises(qemu_cli.UsageError) as info:
        qemu_cli.build(["-chardev", f"socket,id=c1,path={path},server=off"])
    assert info.value.where == f"-chardev socket,id=c1,path={path},server=off"
    assert info.value.message == f"Failed to connect to '{path}': No such file or directory"
    # The implicit client mode gives the same message.
    with pytest.raises(qemu_cli.UsageError) as info:
        qemu_cli.build(["-chardev", f"socket,id=c1,path={path}"])
    assert info.value.message == f"Failed to connect to '{path}': No such file or directory"


def test_socket_client_tcp_refused_fails_with_qemus_message() -> None:
    port = free_tcp_port()
    with pytest.raises(qemu_cli.UsageError) as info:
        qemu_cli.build(["-chardev", f"socket,id=c1,host=127.0.0.1,port={port}"])
    assert info.value.message == f"Failed to connect to '127.0.0.1:{port}': Connection refused"


def test_socket_client_with_reconnect_reports_the_first_failure(tmp: str, start: Callable[..., Runtime],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(tmp, "late")
    start(f"socket,id=c1,path={path},reconnect=1")
    err = capsys.readouterr().err
    assert f"Unable to connect character device c1: Failed to connect to '{path}': No such file or directory" in err


# ---------------------------------------------------------------- file


def test_file_backend_guest_writes_land_in_the_file(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "out")
    rt = start(f"file,id=c1,path={path}")
    assert host_connected(rt) is True  # a file is always there to write to
    guest = GuestProgram(rt)
    data = pattern((1 << 20) + 99, seed=7)
    guest.write(data)
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    with open(path, "rb") as fh:
        assert fh.read() == data


def test_file_backend_truncates_an_existing_file_by_default(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "out")
    with open(path, "wb") as fh:
        fh.write(b"old contents that must go\n")
    rt = start(f"file,id=c1,path={path}")
    with open(path, "rb") as fh:
        assert fh.read() == b""  # truncated at open, before the guest writes
    guest = GuestProgram(rt)
    guest.write(b"new\n")
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    with open(path, "rb") as fh:
        assert fh.read() == b"new\n"


def test_file_backend_append_on_keeps_existing_contents(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "out")
    with open(path, "wb") as fh:
        fh.write(b"kept\n")
    rt = start(f"file,id=c1,path={path},append=on")
    guest = GuestProgram(rt)
    guest.write(b"added\n")
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    with open(path, "rb") as fh:
        assert fh.read() == b"kept\nadded\n"


def test_file_backend_append_off_truncates(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "out")
    with open(path, "wb") as fh:
        fh.write(b"dropped\n")
    rt = start(f"file,id=c1,path={path},append=off")
    guest = GuestProgram(rt)
    guest.write(b"only\n")
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    with open(path, "rb") as fh:
        assert fh.read() == b"only\n"


def test_file_backend_creates_a_missing_file(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "new")
    start(f"file,id=c1,path={path}")
    assert os.path.isfile(path)


def test_file_backend_sends_nothing_to_the_guest(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "out")
    rt = start(f"file,id=c1,path={path}")
    guest = GuestProgram(rt)
    guest.write(b"x")
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    spin(rt)
    # Host connected, nothing arrived: an empty read that is not EOF.
    guest.read_some()
    assert bytes(guest.received) == b"" and guest.eof is False


def test_file_backend_query_chardev_filename_is_file(tmp: str, start: Callable[..., Runtime]) -> None:
    rt = start(f"file,id=c1,path={os.path.join(tmp, 'out')}")
    assert chardev_info(rt)["filename"] == "file"


# ---------------------------------------------------------------- pipe


def test_pipe_backend_uses_in_and_out_fifos(tmp: str, start: Callable[..., Runtime]) -> None:
    base = os.path.join(tmp, "p")
    os.mkfifo(base + ".in")
    os.mkfifo(base + ".out")
    rt = start(f"pipe,id=c1,path={base}")
    assert host_connected(rt) is True
    # The emulator holds both fifos read-write, so the host opens without blocking.
    host = HostPeer(rfd=os.open(base + ".out", os.O_RDONLY | os.O_NONBLOCK),
                    wfd=os.open(base + ".in", os.O_WRONLY | os.O_NONBLOCK))
    try:
        guest = GuestProgram(rt)
        exchange(rt, host, guest, b"into P.in", b"out of P.out")
        exchange(rt, host, guest, pattern(300_000, 8), pattern(300_000, 9))
    finally:
        host.close()


def test_pipe_backend_single_fifo(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "f")
    os.mkfifo(path)
    rt = start(f"pipe,id=c1,path={path}")
    assert host_connected(rt) is True
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        guest = GuestProgram(rt)
        # host -> guest through the one fifo
        os.write(wfd, b"via one fifo")
        pump(rt, lambda: bytes(guest.received) == b"via one fifo", "the guest to read", step=guest.read_some)
        # guest -> host: the port writes into the fifo synchronously; read it
        # before the loop turns (the emulator reads the same fifo).
        guest.write(b"back")
        assert guest.pending == 0
        assert os.read(rfd, 100) == b"back"
    finally:
        os.close(wfd)
        os.close(rfd)


def test_pipe_backend_falls_back_to_the_plain_path_when_one_fifo_is_missing(
    tmp: str, start: Callable[..., Runtime]
) -> None:
    base = os.path.join(tmp, "p")
    os.mkfifo(base + ".in")  # no P.out: char-pipe.c falls back to P
    os.mkfifo(base)
    rt = start(f"pipe,id=c1,path={base}")
    wfd = os.open(base, os.O_WRONLY | os.O_NONBLOCK)
    try:
        guest = GuestProgram(rt)
        os.write(wfd, b"plain")
        pump(rt, lambda: bytes(guest.received) == b"plain", "the guest to read", step=guest.read_some)
    finally:
        os.close(wfd)


def test_pipe_backend_missing_fifo_fails_with_qemus_message(tmp: str) -> None:
    path = os.path.join(tmp, "nofifo")
    with pytest.raises(qemu_cli.UsageError) as info:
        qemu_cli.build(["-chardev", f"pipe,id=c1,path={path}"])
    assert info.value.message == f"Could not open '{path}': No such file or directory"


def test_pipe_backend_query_chardev_filename_is_pipe(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "f")
    os.mkfifo(path)
    rt = start(f"pipe,id=c1,path={path}")
    assert chardev_info(rt)["filename"] == "pipe"


# --------------------------------------------------------------- ringbuf


def test_ringbuf_collects_guest_writes_for_ringbuf_read(start: Callable[..., Runtime]) -> None:
    rt = start("ringbuf,id=c1,size=1024")
    assert host_connected(rt) is True
    guest = GuestProgram(rt)
    guest.write(b"hello from the guest")
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    assert rt.qmp_ringbuf_read("c1", 5) == "hello"
    assert rt.qmp_ringbuf_read("c1", 1000) == " from the guest"
    assert rt.qmp_ringbuf_read("c1", 10) == ""  # drained


def test_ringbuf_read_base64_returns_raw_bytes(start: Callable[..., Runtime]) -> None:
    rt = start("ringbuf,id=c1,size=1024")
    guest = GuestProgram(rt)
    raw = bytes([0xFF, 0xFE, 0x00, 0x41, 0x80])
    guest.write(raw)
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    assert base64.b64decode(rt.qmp_ringbuf_read("c1", 100, "base64")) == raw


def test_ringbuf_read_utf8_replaces_invalid_bytes(start: Callable[..., Runtime]) -> None:
    rt = start("ringbuf,id=c1,size=64")
    guest = GuestProgram(rt)
    guest.write(b"\xff\xfeA")
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    assert rt.qmp_ringbuf_read("c1", 100) == "\ufffd\ufffdA"  # as QEMU 7.2


def test_ringbuf_overwrite_keeps_the_newest_size_bytes(start: Callable[..., Runtime]) -> None:
    rt = start("ringbuf,id=c1,size=16")
    guest = GuestProgram(rt)
    data = pattern(1000, seed=11)
    guest.write(data)
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    # The guest never blocks on a ringbuf: everything was taken, the last 16 kept.
    assert base64.b64decode(rt.qmp_ringbuf_read("c1", 100, "base64")) == data[-16:]
    assert rt.qmp_ringbuf_read("c1", 100) == ""


def test_ringbuf_overwrite_across_two_writes_keeps_the_newest(start: Callable[..., Runtime]) -> None:
    rt = start("ringbuf,id=c1,size=8")
    guest = GuestProgram(rt)
    guest.write(b"abcde")
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    guest.write(b"fghij")
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    assert rt.qmp_ringbuf_read("c1", 100) == "cdefghij"  # QEMU 7.2's answer


def test_ringbuf_write_from_the_host_shares_the_ring_with_the_guest(start: Callable[..., Runtime]) -> None:
    rt = start("ringbuf,id=c1,size=64")
    guest = GuestProgram(rt)
    guest.write(b"guest;")
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    rt.qmp_ringbuf_write("c1", "aG9zdDs=", "base64")  # "host;"
    assert rt.qmp_ringbuf_read("c1", 100) == "guest;host;"


def test_ringbuf_default_size_is_64k(start: Callable[..., Runtime]) -> None:
    rt = start("ringbuf,id=c1")
    guest = GuestProgram(rt)
    data = pattern(70_000, seed=12)
    guest.write(data)
    pump(rt, lambda: guest.pending == 0, "the guest program to flush")
    assert base64.b64decode(rt.qmp_ringbuf_read("c1", 1 << 20, "base64")) == data[-65536:]


def test_ringbuf_memory_alias(runtimes: list[Runtime]) -> None:
    rt = qemu_cli.build(["-chardev", "memory,id=m0,size=16"])
    runtimes.append(rt)
    rt.qmp_ringbuf_write("m0", "m")
    assert rt.qmp_ringbuf_read("m0", 5) == "m"
    # QEMU 7.2 lists it under the alias it was created with.
    assert chardev_info(rt, "m0") == {"label": "m0", "filename": "memory", "frontend-open": False}


@pytest.mark.parametrize("size", ["3", "1000", "65535", "24k"])
def test_ringbuf_size_must_be_a_power_of_two(size: str) -> None:
    with pytest.raises(qemu_cli.UsageError) as info:
        qemu_cli.build(["-chardev", f"ringbuf,id=c1,size={size}"])
    assert info.value.message == "size of ringbuf chardev must be power of two"


@pytest.mark.parametrize("size,expected", [("1", 1), ("1k", 1024), ("64K", 65536), ("1M", 1 << 20)])
def test_ringbuf_size_accepts_powers_of_two_with_suffixes(size: str, expected: int,
                                                          runtimes: list[Runtime]) -> None:
    rt = qemu_cli.build(["-chardev", f"ringbuf,id=c1,size={size}"])
    runtimes.append(rt)
    chr_ = the_chardev(rt)
    assert getattr(chr_, "size") == expected


def test_ringbuf_size_zero_on_the_command_line_means_default(runtimes: list[Runtime]) -> None:
    rt = qemu_cli.build(["-chardev", "ringbuf,id=c1,size=0"])
    runtimes.append(rt)
    rt.qmp_ringbuf_write("c1", "abc")
    assert rt.qmp_ringbuf_read("c1", 10) == "abc"
    assert getattr(the_chardev(rt), "size") == 65536


def test_ringbuf_query_chardev_filename(start: Callable[..., Runtime]) -> None:
    rt = start("ringbuf,id=c1,size=16")
    assert chardev_info(rt) == {"label": "c1", "filename": "ringbuf", "frontend-open": False}


def test_ringbuf_virtconsole_opens_the_front_end(start: Callable[..., Runtime]) -> None:
    rt = start("ringbuf,id=c1,size=16", port="virtconsole")
    assert chardev_info(rt)["frontend-open"] is True


# ------------------------------------------------------------------ null


def test_null_backend_never_opens_for_a_virtserialport(start: Callable[..., Runtime]) -> None:
    rt = start("null,id=c1")
    assert host_connected(rt) is False
    assert chardev_info(rt) == {"label": "c1", "filename": "null", "frontend-open": False}
    guest = GuestProgram(rt)
    # host closed: the read is EOF, a write waits in the program
    guest.read_some()
    assert guest.eof is True
    guest.write(b"nobody listens")
    spin(rt)
    assert guest.pending == len(b"nobody listens")


def test_null_backend_swallows_console_output(start: Callable[..., Runtime]) -> None:
    rt = start("null,id=c1", port="virtconsole")
    port = guest_port(rt)
    assert port["host-connected"] is True and port["console"] == "/dev/hvc0"
    guest = GuestProgram(rt, "/dev/hvc0")
    guest.write(pattern(100_000))
    pump(rt, lambda: guest.pending == 0, "the console writes to be swallowed")
    assert the_port(rt).throttled is False


# ----------------------------------------------------------------- stdio


@contextlib.contextmanager
def fake_stdio() -> Iterator[tuple[int, int]]:
    """Replace fds 0 and 1 with pipes; yields (write end of our stdin, read
    end of our stdout) and restores the real descriptors afterwards.  Used
    inside the test body: pytest's own capture re-installs its descriptors
    between the fixture and the call phases."""
    saved = os.dup(0), os.dup(1)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.dup2(in_r, 0)
    os.dup2(out_w, 1)
    os.close(in_r)
    os.close(out_w)
    os.set_blocking(in_w, False)
    os.set_blocking(out_r, False)
    try:
        yield in_w, out_r
    finally:
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        for fd in (*saved, in_w, out_r):
            os.close(fd)


def test_stdio_backend_carries_data_both_ways(start: Callable[..., Runtime], runtimes: list[Runtime]) -> None:
    with fake_stdio() as (in_w, out_r):
        rt = start("stdio,id=c1")
        try:
            assert host_connected(rt) is True
            assert chardev_info(rt)["filename"] == "stdio"
            host = HostPeer(rfd=out_r, wfd=in_w)
            guest = GuestProgram(rt)
            exchange(rt, host, guest, b"typed on stdin", b"printed on stdout")
            exchange(rt, host, guest, pattern(100_000, 30), pattern(100_000, 31))
        finally:
            rt.close()
            runtimes.remove(rt)
    assert StdioChardev.in_use_by is None


def test_stdio_backend_cannot_be_used_twice() -> None:
    with fake_stdio():
        with pytest.raises(qemu_cli.UsageError) as info:
            qemu_cli.build(["-chardev", "stdio,id=a", "-chardev", "stdio,id=b"])
    assert info.value.where == "-chardev stdio,id=b"
    assert info.value.message == "cannot use stdio by multiple character devices"
    assert StdioChardev.in_use_by is None  # the failed build released stdio


# --------------------------------------------------------- flow control


def test_guest_writes_throttle_when_the_host_does_not_read(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    log = os.path.join(tmp, "trace.log")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off", "-trace", "virtio_serial_throttle_port", "-D", log)
    host = HostPeer(sock=unix_client(path))
    try:
        pump(rt, lambda: host_connected(rt), "host-connected")
        guest = GuestProgram(rt)
        data = pattern(6 << 20, seed=21)  # more than the tx ring holds (128 x 32 KiB)
        guest.write(data)
        port = the_port(rt)
        pump(rt, lambda: port.throttled, "the port to throttle")
        assert "virtio_serial_throttle_port port 1, throttle 1" in rt.machine.trace.lines
        # Nothing moves while the host does not read; the rest waits in the guest.
        chr_ = the_chardev(rt)
        assert isinstance(chr_, SocketChardev)
        out_before, pending_before = chr_.bytes_out, guest.pending
        assert pending_before > 0
        spin(rt)
        assert (chr_.bytes_out, guest.pending) == (out_before, pending_before)
        assert port.throttled is True
        # The host reads everything: every byte arrives, in order.
        pump(rt, lambda: len(host.received) >= len(data), "all the guest's bytes", step=host.recv_some)
        assert bytes(host.received) == data
        assert guest.pending == 0
        assert port.throttled is False
        assert "virtio_serial_throttle_port port 1, throttle 0" in rt.machine.trace.lines
    finally:
        host.close()
    with open(log, encoding="utf-8") as fh:
        assert "virtio_serial_throttle_port port 1, throttle 1\n" in fh.read()


def test_host_writes_stop_being_read_while_the_guest_does_not_read(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    host = HostPeer(sock=unix_client(path))
    try:
        pump(rt, lambda: host_connected(rt), "host-connected")
        guest = GuestProgram(rt)
        chr_ = the_chardev(rt)
        assert isinstance(chr_, SocketChardev)
        fd = chr_.in_fd
        assert fd is not None and rt.loop.has_reader(fd)
        data = pattern(2 << 20, seed=22)
        host.queue(data)
        # The guest's receive ring fills; the backend stops reading the socket
        # and the socket's buffers fill up behind it.
        pump(rt, lambda: not rt.loop.has_reader(fd) and host.would_block, "the backend to stop reading",
             step=host.send_some)
        taken = chr_.bytes_in
        assert 0 < taken < len(data)
        spin(rt)
        host.send_some()
        assert not rt.loop.has_reader(fd)
        assert chr_.bytes_in == taken
        assert host.would_block
        # The guest reads: reading resumes, and nothing is lost.
        def step() -> None:
            host.send_some()
            guest.read_some()

        pump(rt, lambda: len(guest.received) >= len(data), "the guest to read everything", step=step)
        assert bytes(guest.received) == data
        assert rt.loop.has_reader(fd)
    finally:
        host.close()


def test_host_bytes_wait_until_the_guest_opens_the_port(tmp: str, start: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    host = HostPeer(sock=unix_client(path))
    try:
        pump(rt, lambda: host_connected(rt), "host-connected")
        chr_ = the_chardev(rt)
        assert isinstance(chr_, SocketChardev)
        fd = chr_.in_fd
        assert fd is not None
        host.queue(b"sent before the guest opened")
        host.send_some()
        # The guest has not opened the port: nothing is read from the socket.
        pump(rt, lambda: not rt.loop.has_reader(fd), "the backend to leave the socket alone")
        spin(rt)
        assert chr_.bytes_in == 0
        guest = GuestProgram(rt)
        pump(rt, lambda: bytes(guest.received) == b"sent before the guest opened", "the early bytes",
             step=guest.read_some)
    finally:
        host.close()


def test_bytes_sent_before_the_host_hangs_up_still_reach_the_guest(tmp: str, start: Callable[..., Runtime]) -> None:
    """vserial's documented choice (backends.py StreamChardev._hangup): unread
    bytes survive the hang-up.  QEMU 7.2's tcp_chr_hup disconnects at once
    and the bytes still in the socket are dropped."""
    path = os.path.join(tmp, "s")
    rt = start(f"socket,id=c1,path={path},server=on,wait=off")
    host = HostPeer(sock=unix_client(path))
    pump(rt, lambda: host_connected(rt), "host-connected")
    guest = GuestProgram(rt)
    chr_ = the_chardev(rt)
    assert isinstance(chr_, SocketChardev)
    fd = chr_.in_fd
    assert fd is not None
    # More than the guest's receive ring holds (128 x 4 KiB), less than the
    # ring plus the socket's buffers: all of it leaves the host program.
    data = pattern(512 * 1024 + 32 * 1024, seed=23)
    host.queue(data)
    pump(rt, lambda: not host.outbox and not rt.loop.has_reader(fd), "everything sent, the backend paused",
         step=host.send_some)
    assert chr_.bytes_in < len(data)  # some is still in the socket
    host.close()
    spin(rt)
    # The hang-up is noticed, but unread bytes keep the connection up.
    assert host_connected(rt) is True
    pump(rt, lambda: len(guest.received) >= len(data), "the guest to read everything", step=guest.read_some)
    assert bytes(guest.received) == data
    pump(rt, lambda: not host_connected(rt), "host-connected false after the hang-up")
    guest.read_some()
    assert guest.eof is True
