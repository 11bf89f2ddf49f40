"""Snapshots across processes: a real ``vserial run`` saves over QMP
(``human-monitor-command savevm``), a new one started with ``-loadvm``, the
same ``-device`` lines in another order and the same ``-snapshot-dir``
carries on with the guest program's open port; ``-loadvm`` of a missing
tag fails as QEMU does."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any

from .vm import ROOT, VM, recv_exactly, wait_listening

DEVICES = [
    ["-device", "virtio-serial,id=vser0"],
    ["-device", "virtconsole,id=con0"],
    ["-device", "virtserialport,nr=1,name=org.test.p1,id=p1,chardev=c1"],
    ["-device", "virtserialport,nr=2,name=org.test.p2,id=p2"],
]
CHARDEV = ["-chardev", "socket,id=c1,path=@c1.sock,server=on,wait=off"]


async def _hmp(vm: VM, line: str) -> Any:
    return await vm.cmd("human-monitor-command", {"command-line": line})


async def _read(vm: VM, handle: int) -> bytes:
    got = await vm.cmd("guest-file-read", {"handle": handle, "count": 100})
    return base64.b64decode(got["buf-b64"])


async def _write(vm: VM, handle: int, data: bytes) -> None:
    await vm.cmd("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(data).decode()})


async def _port(vm: VM, name: str) -> dict[str, Any]:
    ports = await vm.cmd("x-guest-ports")
    return next(p for p in ports if p["name"] == name)


async def _save(vm: VM) -> int:
    await vm.start()
    wait_listening(vm.path("c1.sock"), vm.proc)
    host = vm.host("c1.sock")
    handle: int = await vm.cmd("guest-file-open", {"path": "/dev/virtio-ports/org.test.p1", "mode": "r+"})
    host.sendall(b"abcdef")
    got = bytearray()

    async def first() -> bool:
        got.extend(await _read(vm, handle))
        return len(got) == 6

    await vm.wait_for(first, "the first bytes")
    host.sendall(b"pending")
    # sendall() has put them in vserial's socket: the next poll sees it
    # readable, and the backend hands them to the guest's receive buffers
    # (the guest has 128 free) in the iteration that also answers a command
    # sent now.  Two round trips and a margin.
    for _ in range(2):
        await vm.cmd("query-status")
    await asyncio.sleep(0.05)
    host.close()

    async def host_gone() -> bool:
        return not (await _port(vm, "org.test.p1"))["host-connected"]

    await vm.wait_for(host_gone, "the host to leave")
    await _write(vm, handle, b"later")  # waits in the program: no host
    assert await _hmp(vm, "savevm t1") == ""
    info = await _hmp(vm, "info snapshots")
    assert info.startswith("List of snapshots present on all disks:\r\n") and "--        t1  " in info
    assert await vm.quit() == 0
    assert bytes(got) == b"abcdef"
    return handle


async def _load(vm: VM, handle: int) -> None:
    await vm.start()
    assert (await vm.cmd("query-status"))["status"] == "running"
    assert await _read(vm, handle) == b"pending"
    wait_listening(vm.path("c1.sock"), vm.proc)
    host = vm.host("c1.sock")
    assert recv_exactly(host, 5) == b"later"
    await _write(vm, handle, b"back")
    assert recv_exactly(host, 4) == b"back"
    await vm.cmd("guest-file-close", {"handle": handle})
    host.close()
    assert await vm.quit() == 0


def test_a_snapshot_of_one_process_loads_in_another_and_the_guest_program_carries_on() -> None:
    snaps = tempfile.mkdtemp(prefix="vss", dir="/tmp")
    try:
        first = VM("-snapshot-dir", snaps, *CHARDEV, *[a for d in DEVICES for a in d])
        try:
            handle = asyncio.run(_save(first))
        finally:
            first.close()
        order = [DEVICES[i] for i in (0, 3, 2, 1)]
        second = VM("-loadvm", "t1", "-snapshot-dir", snaps, *CHARDEV, *[a for d in order for a in d])
        try:
            asyncio.run(_load(second, handle))
        finally:
            second.close()
    finally:
        shutil.rmtree(snaps, ignore_errors=True)


def test_loadvm_of_a_missing_tag_exits_1_with_qemus_line() -> None:
    snaps = tempfile.mkdtemp(prefix="vss", dir="/tmp")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "emulator.cli.main", "run", "-snapshot-dir", snaps, "-loadvm", "nosuch",
             *[a for d in DEVICES[:1] for a in d]],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )
    finally:
        shutil.rmtree(snaps, ignore_errors=True)
    assert proc.returncode == 1
    assert proc.stderr == "vserial: Snapshot 'nosuch' does not exist in one or more devices\n"
    assert proc.stdout == ""
