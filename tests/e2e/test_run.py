"""End to end: ``vserial run`` in its own process, QEMU's QMP client, real
unix sockets for the host side of the ports."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from qemu.qmp import ExecuteError

from emulator.plugin.manager import AUTOLOAD_ENV, PLUGINS_ENV

from .vm import ROOT, VM, VSERIAL_SCRIPT, recv_exactly, wait_listening

BASE = (
    "-chardev", "socket,id=c1,path=@p1.sock,server=on,wait=off",
    "-chardev", "socket,id=c2,path=@p2.sock,server=on,wait=off",
    "-device", "virtio-serial,id=vser0",
    "-device", "virtconsole,id=con0",
    "-device", "virtserialport,id=p1,chardev=c1,name=org.test.one,nr=1",
    "-device", "virtserialport,id=p2,chardev=c2,name=org.test.two",
)


def run(test: Callable[[VM], Awaitable[None]], *args: str, **kw: Any) -> None:
    vm = VM(*args, **kw)
    try:
        asyncio.run(_drive(vm, test))
    finally:
        vm.close()


async def _drive(vm: VM, test: Callable[[VM], Awaitable[None]]) -> None:
    await vm.start()
    await test(vm)
    assert await vm.quit() == 0


async def guest_ports(vm: VM) -> dict[str, dict[str, Any]]:
    return {p["path"]: p for p in await vm.cmd("x-guest-ports")}


async def gwrite(vm: VM, handle: int, data: bytes) -> None:
    ret = await vm.cmd("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(data).decode()})
    assert ret == {"count": len(data), "eof": False}


async def gread_exactly(vm: VM, handle: int, n: int, timeout: float = 30.0) -> bytes:
    """guest-file-read until n bytes have come (reads never block, so poll)."""
    import time

    deadline = time.monotonic() + timeout
    out = bytearray()
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} bytes reached the guest"
        r = await vm.cmd("guest-file-read", {"handle": handle, "count": 32768})
        assert not r["eof"]
        chunk = base64.b64decode(r["buf-b64"])
        assert r["count"] == len(chunk)
        out += chunk
        if not chunk:
            await asyncio.sleep(0.005)
    return bytes(out)


async def expect_error(vm: VM, name: str, args: dict[str, Any], cls: str, desc: str) -> None:
    with pytest.raises(ExecuteError) as info:
        await vm.cmd(name, args)
    assert info.value.error_class == cls
    assert info.value.error.error.desc == desc


def test_guest_sees_the_named_ports_and_their_state() -> None:
    async def body(vm: VM) -> None:
        ports = await guest_ports(vm)
        assert ports == {
            # a console without a chardev is never host-open; with one it is open from realize on
            "/dev/vport0p0": {"path": "/dev/vport0p0", "name": None, "id": 0, "console": "/dev/hvc0",
                              "open": True, "host-connected": False},
            "/dev/vport0p1": {"path": "/dev/vport0p1", "name": "org.test.one", "id": 1, "console": None,
                              "open": False, "host-connected": False},
            "/dev/vport0p2": {"path": "/dev/vport0p2", "name": "org.test.two", "id": 2, "console": None,
                              "open": False, "host-connected": False},
            "/dev/vport1p0": {"path": "/dev/vport1p0", "name": None, "id": 0, "console": "/dev/hvc1",
                              "open": True, "host-connected": True},
        }
        assert await vm.cmd("query-status") == {"status": "running", "singlestep": False, "running": True}

    run(body, *BASE, "-chardev", "null,id=n0", "-device", "virtio-serial,id=vser1", "-device", "virtconsole,id=con9,chardev=n0,bus=vser1.0")  # noqa: E501


def test_data_flows_both_ways_through_real_sockets() -> None:
    payload_out = os.urandom(1 << 20)
    payload_in = os.urandom((1 << 20) + 123)

    async def body(vm: VM) -> None:
        host = vm.host("p1.sock")
        h = await vm.cmd("guest-file-open", {"path": "/dev/virtio-ports/org.test.one", "mode": "r+"})
        ev = await vm.next_event("VSERPORT_CHANGE")
        assert ev["data"] == {"id": "p1", "open": True}
        assert set(ev["timestamp"]) == {"seconds", "microseconds"}

        async def host_connected() -> bool:
            return bool((await guest_ports(vm))["/dev/vport0p1"]["host-connected"])

        await vm.wait_for(host_connected, "the guest to see the host connect")
        for off in range(0, len(payload_out), 300_000):
            await gwrite(vm, h, payload_out[off : off + 300_000])
        got = await asyncio.to_thread(recv_exactly, host, len(payload_out))
        assert got == payload_out

        # The host cannot push 1 MiB ahead of a guest that does not read
        # (backpressure), so it sends while the guest program reads.
        sender = asyncio.create_task(asyncio.to_thread(host.sendall, payload_in))
        assert await gread_exactly(vm, h, len(payload_in)) == payload_in
        await sender

        await vm.cmd("guest-file-close", {"handle": h})
        ev = await vm.next_event("VSERPORT_CHANGE")
        assert ev["data"] == {"id": "p1", "open": False}
        host.close()

        async def host_gone() -> bool:
            return not (await guest_ports(vm))["/dev/vport0p1"]["host-connected"]

        await vm.wait_for(host_gone, "the guest to see the host leave")

    run(body, *BASE)


def test_bytes_written_before_the_host_connects_are_delivered_once_it_does() -> None:
    async def body(vm: VM) -> None:
        h = await vm.cmd("guest-file-open", {"path": "/dev/vport0p2", "mode": "w"})
        await gwrite(vm, h, b"early bird " * 1000)
        await vm.cmd("guest-file-close", {"handle": h})  # closes once flushed
        host = vm.host("p2.sock")
        assert await asyncio.to_thread(recv_exactly, host, 11000) == b"early bird " * 1000
        host.close()

    run(body, *BASE)


def test_hotplug_and_unplug_reach_the_guest() -> None:
    async def body(vm: VM) -> None:
        sock = vm.path("hot.sock")
        addr = {"type": "unix", "data": {"path": sock}}
        ret = await vm.cmd("chardev-add", {"id": "hc", "backend": {"type": "socket", "data": {"addr": addr, "server": True, "wait": False}}})  # noqa: E501
        assert ret == {}
        assert await vm.cmd("device_add", {"driver": "virtserialport", "id": "hot", "chardev": "hc", "name": "org.test.hot", "nr": 7}) == {}  # noqa: E501
        ports = await guest_ports(vm)
        assert ports["/dev/vport0p7"]["name"] == "org.test.hot"

        host = vm.host("hot.sock")
        h = await vm.cmd("guest-file-open", {"path": "/dev/virtio-ports/org.test.hot", "mode": "r+"})
        assert (await vm.next_event("VSERPORT_CHANGE"))["data"] == {"id": "hot", "open": True}
        await gwrite(vm, h, b"from a hot-plugged port")
        assert await asyncio.to_thread(recv_exactly, host, 23) == b"from a hot-plugged port"

        assert await vm.cmd("device_del", {"id": "hot"}) == {}
        ev = await vm.next_event("DEVICE_DELETED")
        assert ev["data"] == {"device": "hot", "path": "/machine/peripheral/hot"}
        assert "/dev/vport0p7" not in await guest_ports(vm)
        r = await vm.cmd("guest-file-read", {"handle": h})
        assert r == {"count": 0, "buf-b64": "", "eof": True}
        await vm.cmd("guest-file-close", {"handle": h})
        await expect_error(vm, "device_del", {"id": "hot"}, "DeviceNotFound", "Device 'hot' not found")
        assert await vm.cmd("chardev-remove", {"id": "hc"}) == {}
        host.close()

        # An id-less port: addressed by its QOM path, DEVICE_DELETED carries only the path.
        await vm.cmd("device_add", {"driver": "virtserialport", "nr": 9})
        anon = [p for p in await vm.cmd("x-query-virtio-serial") if p["id"] == "vser0"][0]["ports"]
        path = [p["path"] for p in anon if p["nr"] == 9][0]
        assert path.startswith("/machine/peripheral-anon/device[")
        await vm.cmd("device_del", {"id": path})
        assert (await vm.next_event("DEVICE_DELETED"))["data"] == {"path": path}

    run(body, *BASE)


def test_errors_carry_qemus_messages_and_the_machine_keeps_running() -> None:
    async def body(vm: VM) -> None:
        cases = [
            ({"driver": "virtserialport", "nr": 1}, "virtio-serial-bus: A port already exists at id 1"),
            ({"driver": "virtserialport", "name": "org.test.two"},
             "virtio-serial-bus: A port already exists by name org.test.two"),
            ({"driver": "virtserialport", "nr": 31}, "virtio-serial-bus: Out-of-range port id specified, max. allowed: 30"),
            ({"driver": "virtserialport", "nr": 0},
             "virtio-serial-bus: A port already exists at id 0"),
            ({"driver": "virtserialport", "chardev": "c1"},
             "Property 'virtserialport.chardev' can't take value 'c1': Device 'c1' is in use"),
            ({"driver": "virtserialport", "id": "p1"}, "Duplicate device ID 'p1'"),
            ({"driver": "nope-device"}, "'nope-device' is not a valid device model name"),
            ({"driver": "virtserialport", "bus": "nope.0"}, "Bus 'nope.0' not found"),
            ({"driver": "virtserialport", "nr": "abc"}, "Parameter 'nr' expects integer"),
        ]
        host = vm.host("p1.sock")
        h = await vm.cmd("guest-file-open", {"path": "/dev/vport0p1", "mode": "r+"})
        for n, (args, desc) in enumerate(cases):
            await expect_error(vm, "device_add", args, "GenericError", desc)
            assert (await vm.cmd("query-status"))["running"] is True
            msg = f"still alive {n}\n".encode()
            await gwrite(vm, h, msg)
            assert await asyncio.to_thread(recv_exactly, host, len(msg)) == msg
        await expect_error(vm, "guest-file-open", {"path": "/dev/vport0p1"}, "GenericError",
                           "failed to open file '/dev/vport0p1' (mode: 'r'): Device or resource busy")
        await expect_error(vm, "guest-file-open", {"path": "/dev/vport0p0"}, "GenericError",
                           "failed to open file '/dev/vport0p0' (mode: 'r'): No such device or address")
        await expect_error(vm, "guest-file-open", {"path": "/dev/virtio-ports/nope"}, "GenericError",
                           "failed to open file '/dev/virtio-ports/nope' (mode: 'r'): No such file or directory")
        await expect_error(vm, "guest-file-read", {"handle": 4242}, "GenericError", "handle '4242' has not been found")
        await expect_error(vm, "ringbuf-read", {"device": "c1", "size": "ten"}, "GenericError",
                           "Invalid parameter type for 'size', expected: integer")
        await expect_error(vm, "no-such-command", {}, "CommandNotFound", "The command no-such-command has not been found")
        await expect_error(vm, "chardev-remove", {"id": "c1"}, "GenericError", "Chardev 'c1' is busy")
        await gwrite(vm, h, b"done")
        assert await asyncio.to_thread(recv_exactly, host, 4) == b"done"
        host.close()

    run(body, *BASE)


def test_malformed_input_gets_qemus_errors_on_a_raw_connection() -> None:
    """Raw bytes, as QEMU's transcript recorded them; the connection stays usable."""
    vm = VM(*BASE)
    try:
        vm.wait_socket()
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(vm.qmp_path)
        f = raw.makefile("rwb")
        import json

        greeting = json.loads(f.readline())
        assert greeting["QMP"]["version"]["qemu"] == {"micro": 22, "minor": 2, "major": 7}
        assert greeting["QMP"]["capabilities"] == ["oob"]

        def exchange(text: bytes) -> Any:
            f.write(text)
            f.flush()
            return json.loads(f.readline())

        assert exchange(b'{"execute": "query-status"}') == {"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}  # noqa: E501
        assert exchange(b'{"execute": "qmp_capabilities"}') == {"return": {}}
        assert exchange(b'{"execute": "query-status", }\n') == {"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}  # noqa: E501
        assert exchange(b"[1, 2]\n") == {"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}
        assert exchange(b'{"arguments": {}}') == {"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}  # noqa: E501
        assert exchange(b'{"execute": 1}') == {"error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}}  # noqa: E501
        assert exchange(b'{"execute": "query-status", "bogus": 1}') == {"error": {"class": "GenericError", "desc": "QMP input member 'bogus' is unexpected"}}  # noqa: E501
        assert exchange(b'{"execute": "query-status", "arguments": {"x": 1}, "id": 7}') == {"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}, "id": 7}  # noqa: E501
        # a command split across writes, then two in one write
        f.write(b'{"execute": "query-')
        f.flush()
        assert exchange(b'status", "id": "a"}{"execute": "query-name", "id": "b"}') == {"return": {"status": "running", "singlestep": False, "running": True}, "id": "a"}  # noqa: E501
        assert json.loads(f.readline()) == {"return": {}, "id": "b"}
        assert exchange(b'{"execute": "query-name", "id": 1, "id": 2}') == {"error": {"class": "GenericError", "desc": "JSON parse error, duplicate key"}}  # noqa: E501
        assert exchange(b'{"execute": "nope", "id": [1]}') == {"id": [1], "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}  # noqa: E501
        shutdown = exchange(b'{"execute": "quit"}')
        assert shutdown["event"] == "SHUTDOWN" and shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
        assert json.loads(f.readline()) == {"return": {}}
        assert f.readline() == b""  # the monitor closes
        raw.close()
        assert vm.wait() == 0
    finally:
        vm.close()


def test_start_paused_boots_the_guest_on_cont() -> None:
    async def body(vm: VM) -> None:
        assert await vm.cmd("query-status") == {"status": "prelaunch", "singlestep": False, "running": False}
        assert await vm.cmd("x-guest-ports") == []
        await expect_error(vm, "guest-file-open", {"path": "/dev/vport0p1"}, "GenericError",
                           "Guest agent is not available: the guest is not running")
        await vm.cmd("cont")
        assert (await vm.next_event("RESUME"))["event"] == "RESUME"
        assert len(await vm.cmd("x-guest-ports")) == 3
        await vm.cmd("stop")
        assert (await vm.next_event("STOP"))["event"] == "STOP"
        assert (await vm.cmd("query-status"))["status"] == "paused"

    run(body, *BASE, "-S", "-name", "guest=e2e")


def test_sigterm_shuts_down_cleanly_with_a_shutdown_event() -> None:
    async def body(vm: VM) -> None:
        vm.proc.send_signal(signal.SIGTERM)
        ev = await vm.next_event("SHUTDOWN")
        assert ev["data"] == {"guest": False, "reason": "host-signal"}
        assert await asyncio.to_thread(vm.proc.wait, 20) == 0
        assert not os.path.exists(vm.path("p1.sock"))  # listening sockets removed

    vm = VM(*BASE)
    try:
        async def drive() -> None:
            await vm.start()
            await body(vm)
            try:
                await vm.qmp.disconnect()
            except EOFError:
                pass

        asyncio.run(drive())
    finally:
        vm.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-device", "virtserialport,nr=1"], "vserial: -device virtserialport,nr=1: No 'virtio-serial-bus' bus found for device 'virtserialport'"),  # noqa: E501
        (["-device", "virtio-serial,max_ports=512"], "vserial: -device virtio-serial,max_ports=512: maximum ports supported: 511"),  # noqa: E501
        (["-device", "virtio-serial", "-device", "virtserialport,nr=0"],
         "vserial: -device virtserialport,nr=0: Port number 0 on virtio-serial devices reserved for virtconsole devices for backward compatibility."),  # noqa: E501
        (["-device", "virtio-serial,id=v", "-device", "virtio-serial,id=v"], "vserial: -device virtio-serial,id=v: Duplicate ID 'v' for device"),  # noqa: E501
        (["-chardev", "null,id=x", "-chardev", "null,id=x"], "vserial: -chardev null,id=x: Duplicate ID 'x' for chardev"),
        (["-device", "virtio-serial", "-device", "virtserialport,chardev=nope"],
         "vserial: -device virtserialport,chardev=nope: Property 'virtserialport.chardev' can't find value 'nope'"),
    ],
)
def test_command_line_errors_exit_1_with_qemus_message_before_starting(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "emulator.cli.main", "run", *args, "-qmp", "unix:/tmp/vserial-never.sock,server=on,wait=off"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == message + "\n"
    assert not os.path.exists("/tmp/vserial-never.sock")


def test_slow_host_reader_throttles_the_port_and_loses_nothing() -> None:
    """64 MiB from a guest program to a host program that reads slowly."""
    total = 64 << 20
    chunk = 1 << 20
    block = hashlib.sha256(b"seed").digest() * (chunk // 32)

    def piece(i: int) -> bytes:
        return bytes([i & 0xFF]) + block[1:]

    async def body(vm: VM) -> None:
        host = vm.host("p1.sock")
        h = await vm.cmd("guest-file-open", {"path": "/dev/vport0p1", "mode": "w"})

        def slow_reader() -> str:
            digest = hashlib.sha256()
            got = 0
            host.settimeout(60)
            while got < total:
                # Slow for the first 4 MiB (small reads, pauses), then full speed.
                n = 4096 if got < (4 << 20) else 1 << 20
                data = host.recv(n)
                if not data:
                    raise AssertionError(f"EOF after {got} bytes")
                digest.update(data)
                got += len(data)
                if got < (4 << 20):
                    import time

                    time.sleep(0.0005)
            return digest.hexdigest()

        reader = asyncio.create_task(asyncio.to_thread(slow_reader))
        expect = hashlib.sha256()
        for i in range(total // chunk):
            data = piece(i)
            expect.update(data)
            await gwrite(vm, h, data)
        assert await reader == expect.hexdigest()
        await vm.cmd("guest-file-close", {"handle": h})
        host.close()

    vm_trace = ("-trace", "virtio_serial_throttle_port", "-D", "@trace.log")
    vm = VM(*BASE, *vm_trace)
    lines: list[str] = []
    try:
        async def drive() -> None:
            await vm.start()
            await body(vm)
            lines.extend(open(vm.path("trace.log")).read().splitlines())
            assert await vm.quit() == 0

        asyncio.run(drive())
    finally:
        vm.close()
    assert "virtio_serial_throttle_port port 1, throttle 1" in lines
    assert "virtio_serial_throttle_port port 1, throttle 0" in lines
    # every throttle is followed by an unthrottle; the last word is "unthrottled"
    states = [line[-1] for line in lines if line.startswith("virtio_serial_throttle_port port 1,")]
    assert states[-1] == "0"
    assert all(a != b or a == "0" for a, b in zip(states, states[1:]))


def test_a_plugin_port_type_runs_in_vserial_run() -> None:
    """A third-party port type (plugins/vserial-echo, installed, loaded through
    its entry point) takes its own -device property, its own guest-data
    behaviour and its own QMP command, through the real process."""

    async def body(vm: VM) -> None:
        await expect_error(vm, "device_add", {"driver": "x-echoport", "foo": "1"}, "GenericError",
                           "Property 'x-echoport.foo' not found")
        await vm.cmd("device_add", {"driver": "x-echoport", "id": "echo2", "name": "org.test.echo2", "prefix": "> "})
        for path, prefix in (("/dev/virtio-ports/org.test.echo", b"< "), ("/dev/virtio-ports/org.test.echo2", b"> ")):
            h = await vm.cmd("guest-file-open", {"path": path, "mode": "r+"})
            await gwrite(vm, h, b"marco")
            assert await gread_exactly(vm, h, len(prefix) + 5) == prefix + b"marco"
            await vm.cmd("guest-file-close", {"handle": h})
        stats = await vm.cmd("x-echo-stats", {"id": "echo"})
        assert stats["echoed"] == len(b"< marco")

    run(body, "-device", "virtio-serial", "-device", "x-echoport,id=echo,name=org.test.echo,prefix=< ",
        env={AUTOLOAD_ENV: "", PLUGINS_ENV: ""})


def test_vserial_script_runs_the_echo_port_named_in_vserial_plugins() -> None:
    """``vserial run -device x-echoport,...`` as a user types it, with
    autoloading off and the plugin named in VSERIAL_PLUGINS: the echo comes
    back prefixed, what the guest has no room for waits in the port until it
    reads, and x-echo-stats counts every byte."""
    writes = [os.urandom(16_000) for _ in range(40)]  # more than the guest's 128 x 4 KiB receive ring
    echo = b"".join(b"# " + w for w in writes)  # one prefix per guest write (each fits one buffer)

    async def body(vm: VM) -> None:
        h = await vm.cmd("guest-file-open", {"path": "/dev/virtio-ports/org.test.echo", "mode": "r+"})
        for w in writes:
            await gwrite(vm, h, w)
        stats = await vm.cmd("x-echo-stats", {"id": "echo0"})
        assert stats["pending"] > 0, "the echo should be waiting for the guest to read"
        assert stats["echoed"] + stats["pending"] == len(echo)
        assert await gread_exactly(vm, h, len(echo)) == echo
        assert await vm.cmd("x-echo-stats", {"id": "echo0"}) == {"echoed": len(echo), "pending": 0}
        assert await vm.cmd("x-echo-stats") == {"echoed": len(echo), "ports": {"echo0": len(echo)}}
        await vm.cmd("guest-file-close", {"handle": h})

    run(body, "-device", "virtio-serial", "-device", "x-echoport,id=echo0,name=org.test.echo,prefix=# ",
        env={AUTOLOAD_ENV: "1", PLUGINS_ENV: "vserial_echo"}, program=[VSERIAL_SCRIPT])


def test_vserial_script_without_the_plugin_does_not_know_the_echo_port() -> None:
    proc = subprocess.run(
        [VSERIAL_SCRIPT, "run", "-device", "virtio-serial", "-device", "x-echoport,name=org.test.echo"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, AUTOLOAD_ENV: "1", PLUGINS_ENV: ""}, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == "vserial: -device x-echoport,name=org.test.echo: 'x-echoport' is not a valid device model name\n"


def test_qmp_over_tcp() -> None:
    import socket as so

    probe = so.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator.cli.main", "run", "-device", "virtio-serial", "-device", "virtconsole",
         "-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE,
    )
    try:
        async def drive() -> None:
            from qemu.qmp import ConnectError, QMPClient

            qmp = QMPClient("tcp")
            for _ in range(500):
                try:
                    await qmp.connect(("127.0.0.1", port))
                    break
                except ConnectError:  # not listening yet
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("no QMP on tcp")
            assert (await qmp.execute("query-status"))["running"] is True
            ports = await qmp.execute("x-guest-ports")
            assert [p["console"] for p in ports] == ["/dev/hvc0"]
            await qmp.execute("quit")
            try:
                await qmp.disconnect()
            except EOFError:
                pass

        asyncio.run(drive())
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_libvirt_style_monitor_serves_one_client_at_a_time() -> None:
    """``-chardev socket,id=charmonitor,... -mon chardev=charmonitor,mode=control``
    as libvirt starts QEMU.  The monitor is a socket chardev: one client at
    a time; a second one gets its greeting when the first leaves."""
    import json
    import tempfile

    d = tempfile.mkdtemp(dir="/tmp")
    path = f"{d}/mon.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator.cli.main", "run", "-chardev", f"socket,id=charmonitor,path={path},server=on,wait=off",
         "-mon", "chardev=charmonitor,id=monitor,mode=control", "-device", "virtio-serial"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE,
    )
    try:
        wait_listening(path, proc)
        first = socket.socket(socket.AF_UNIX)
        first.connect(path)
        f1 = first.makefile("rwb")
        assert "QMP" in json.loads(f1.readline())
        second = socket.socket(socket.AF_UNIX)
        second.connect(path)  # queued in the backlog
        f1.write(b'{"execute": "qmp_capabilities"}{"execute": "query-chardev"}')
        f1.flush()
        assert json.loads(f1.readline()) == {"return": {}}
        assert json.loads(f1.readline())["return"] == [
            {"label": "charmonitor", "filename": f"unix:{path},server=on", "frontend-open": True}
        ]
        # The loop has served the first client's commands, sent after the
        # second connected: a server that took the second client would have
        # greeted it by now.
        with pytest.raises(BlockingIOError):
            second.recv(1, socket.MSG_DONTWAIT)  # no greeting while the first client is connected
        f1.close()
        first.close()  # (the makefile holds the fd too)
        second.settimeout(20)
        f2 = second.makefile("rwb")
        assert "QMP" in json.loads(f2.readline())  # a fresh session: negotiation again
        f2.write(b'{"execute": "query-status"}')
        f2.flush()
        assert json.loads(f2.readline())["error"]["class"] == "CommandNotFound"
        f2.write(b'{"execute": "qmp_capabilities"}{"execute": "quit"}')
        f2.flush()
        assert json.loads(f2.readline()) == {"return": {}}
        assert json.loads(f2.readline())["event"] == "SHUTDOWN"
        assert json.loads(f2.readline()) == {"return": {}}
        second.close()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def test_qmp_on_stdio() -> None:
    import json

    proc = subprocess.run(
        [sys.executable, "-m", "emulator.cli.main", "run", "-name", "guest=piped", "-qmp", "stdio"],
        input=b'{"execute":"qmp_capabilities"}\n{"execute":"query-name"}\n{"execute":"quit"}\n',
        capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )
    assert proc.returncode == 0
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["QMP"]["capabilities"] == ["oob"]
    assert lines[1:3] == [{"return": {}}, {"return": {"name": "piped"}}]
    assert lines[3]["event"] == "SHUTDOWN" and lines[4] == {"return": {}}
    assert proc.stdout.endswith(b"\r\n")


def test_system_reset_over_qmp() -> None:
    async def body(vm: VM) -> None:
        h = await vm.cmd("guest-file-open", {"path": "/dev/vport0p1", "mode": "w"})
        assert (await vm.next_event("VSERPORT_CHANGE"))["data"] == {"id": "p1", "open": True}
        assert await vm.cmd("system_reset") == {}
        assert (await vm.next_event("RESET"))["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        # The reset closes p1 and con0, and the rebooted guest opens con0
        # again.  QEMU's monitor sends one VSERPORT_CHANGE per port per
        # second, the latest state, so p1's close (a moment after its open)
        # comes when that second is over, and con0 may go straight to open.
        seen: dict[str, list[tuple[bool, float]]] = {}
        while seen.get("p1", [(True, 0.0)])[-1][0] or not seen.get("con0", [(False, 0.0)])[-1][0]:
            ev = await vm.next_event("VSERPORT_CHANGE")
            stamp = ev["timestamp"]["seconds"] + ev["timestamp"]["microseconds"] / 1e6
            seen.setdefault(ev["data"]["id"], []).append((ev["data"]["open"], stamp))
        assert [state for state, _ in seen["p1"]] == [False]
        assert [state for state, _ in seen["con0"]] in ([False, True], [True])
        # the guest's programs went with it; the rebooted guest sees its ports again
        await expect_error(vm, "guest-file-close", {"handle": h}, "GenericError", f"handle '{h}' has not been found")
        ports = await guest_ports(vm)
        assert ports["/dev/vport0p1"]["name"] == "org.test.one" and not ports["/dev/vport0p1"]["open"]
        assert (await vm.cmd("query-status"))["status"] == "running"

    run(body, *BASE)
