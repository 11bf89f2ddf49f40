"""HMP savevm/loadvm/delvm/info snapshots through QMP human-monitor-command,
-loadvm and -snapshot-dir, and guest programs across a load: replayed
against the replies and events recorded from QEMU 7.2
(fixtures/qemu/snapshots.json, SNAPSHOT_FACTS.md)."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from emulator.errors import UsageError
from emulator.runtime import cmdline
from emulator.runtime.runtime import Runtime
from tests.runtime.qmp_session import Session

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = json.loads((ROOT / "fixtures" / "qemu" / "snapshots.json").read_text())
SESSIONS = {s["name"]: s for s in FIXTURE["sessions"]}
CMDLINE = {c["name"]: c for c in FIXTURE["cmdline"]}
# QEMU-only steps: vserial has no block layer.
SKIPPED = {"query-block"}


def _normalise_text(text: str) -> str:
    """The snapshots.json normalisation, applied to both sides: dates,
    automatic tags, sizes and a non-zero VM clock (same widths)."""
    lines = text.split("\r\n")
    out = []
    for line in lines:
        if line.startswith("--"):
            head, tail = line[:-52], line[-52:]
            clock = tail[28:41]
            clock = clock if clock.strip() == "00:00:00.000" else " 00:00:01.000"
            tail = "SIZE".rjust(8) + "2000-01-01 00:00:00".rjust(20) + clock + tail[41:]
            line = re.sub(r"vm-\d{14}", "vm-20000101000000", head) + tail
        out.append(line)
    return "\r\n".join(out)


def _normalise(msg: dict[str, Any]) -> dict[str, Any]:
    msg = dict(msg)
    msg.pop("timestamp", None)
    if isinstance(msg.get("return"), str):
        msg["return"] = _normalise_text(msg["return"])
    return msg


def _runtime(runtimes: list[Runtime], tmp: str, *argv: str) -> tuple[Runtime, Session]:
    rt = cmdline.build([*argv, "-snapshot-dir", f"{tmp}/snaps"])
    runtimes.append(rt)
    rt.monitor.call_later = None  # no VSERPORT_CHANGE rate limit: compare every event
    rt.start()
    return rt, Session(rt)


def _vserial_args(session: dict[str, Any], tmp: str) -> list[str]:
    """The recorded command line without what is QEMU's alone (the disk,
    the QMP socket, accelerator and display options)."""
    args, out = session["args"], []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-accel", "-display", "-machine", "-m", "-drive", "-qmp"):
            i += 2
            continue
        if a == "-device" and args[i + 1].startswith("virtio-blk"):
            i += 2
            continue
        if a == "-chardev":
            out += [a, re.sub(r"path=[^,]*/", f"path={tmp}/", args[i + 1])]
            i += 2
            continue
        if a != "-nodefaults":
            out.append(a)
        i += 1
    return out


@pytest.mark.parametrize("name", ["hmp_prelaunch", "hmp_running"])
def test_hmp_session_replays_as_recorded(name: str, tmp: str, runtimes: list[Runtime]) -> None:
    """Every reply (normalised as the fixture is) and every event as QEMU
    sent them; VSERPORT_CHANGE, whose place relative to replies QEMU does
    not fix, is compared as the session's list."""
    session = SESSIONS[name]
    rt, s = _runtime(runtimes, tmp, *_vserial_args(session, tmp))
    ours_vc: list[dict[str, Any]] = []
    theirs_vc: list[dict[str, Any]] = []
    for step in session["steps"]:
        if any(m["execute"] in SKIPPED for m in step["send"]):
            continue
        s.raw.clear()
        for m in step["send"]:
            s.cmd(m["execute"], **m.get("arguments", {}))
        got = [_normalise(m) for m in s.messages()]
        want = [_normalise(m) for m in step["recv"]]
        ours_vc += [m for m in got if m.get("event") == "VSERPORT_CHANGE"]
        theirs_vc += [m for m in want if m.get("event") == "VSERPORT_CHANGE"]
        assert [m for m in got if m.get("event") != "VSERPORT_CHANGE"] == \
            [m for m in want if m.get("event") != "VSERPORT_CHANGE"], step["note"]
        if rt.machine.running:
            time.sleep(0.002)  # a VM clock of at least 1 ms, as QEMU's was non-zero
    assert ours_vc == theirs_vc


def _hmp(s: Session, line: str) -> str:
    s.raw.clear()
    s.cmd("human-monitor-command", **{"command-line": line})
    reply = s.last()
    assert isinstance(reply["return"], str), reply
    return reply["return"]


def test_hmp_parsing_as_qemu(tmp: str, runtimes: list[Runtime]) -> None:
    """Checked against qemu-system-x86_64 7.2 by hand (monitor/hmp.c)."""
    rt, s = _runtime(runtimes, tmp, "-S", "-device", "virtio-serial")
    assert _hmp(s, "") == ""
    assert _hmp(s, "nosuch") == "unknown command: 'nosuch'\r\n"
    assert _hmp(s, "info nosuch") == "unknown command: 'info nosuch'\r\n"
    assert _hmp(s, "savevm a b") == 'savevm: extraneous characters at the end of line\r\nTry "help savevm" for more information\r\n'
    assert _hmp(s, "info snapshots x") == \
        'snapshots: extraneous characters at the end of line\r\nTry "help info snapshots" for more information\r\n'
    assert _hmp(s, "delvm") == 'delvm: string expected\r\nTry "help delvm" for more information\r\n'
    assert _hmp(s, "loadvm  ") == 'loadvm: string expected\r\nTry "help loadvm" for more information\r\n'
    assert _hmp(s, 'savevm "q t"') == ""
    assert _hmp(s, "  savevm   sp") == ""
    assert [e.tag for e in rt.snapshots.list()] == ["q t", "sp"]
    assert _hmp(s, "info status") == "VM status: paused (prelaunch)\r\n"
    s.cmd("human-monitor-command", **{"command-line": "info status", "cpu-index": 5})
    assert s.last() == {"error": {"class": "GenericError", "desc": "Parameter 'cpu-index' expects a CPU number"}}
    s.cmd("human-monitor-command", **{"command-line": "info status", "cpu-index": 0})
    assert s.last() == {"return": "VM status: paused (prelaunch)\r\n"}


def test_automatic_tag_is_local_time(tmp: str, runtimes: list[Runtime]) -> None:
    rt, s = _runtime(runtimes, tmp, "-S", "-device", "virtio-serial")
    before = time.strftime("vm-%Y%m%d%H%M%S")
    assert _hmp(s, "savevm") == ""
    after = time.strftime("vm-%Y%m%d%H%M%S")
    (entry,) = rt.snapshots.list()
    assert before <= entry.tag <= after


PORTS = ["-device", "virtio-serial,id=vser0", "-device", "virtserialport,nr=1,name=org.test.p1,id=p1,chardev=c1"]


def test_a_snapshot_that_does_not_fit_is_refused_and_a_running_machine_stays_in_restore_vm(
        tmp: str, runtimes: list[Runtime]) -> None:
    _, a = _runtime(runtimes, tmp, "-chardev", "null,id=c1", *PORTS)
    assert _hmp(a, "savevm t1") == ""
    b_rt, b = _runtime(runtimes, tmp, "-chardev", "null,id=c1", "-device", "virtio-serial,id=vser0",
                       "-device", "virtserialport,nr=2,name=org.test.p1,id=p1,chardev=c1")
    before = b_rt.qmp_query_virtio_serial()
    b.raw.clear()
    b.cmd("human-monitor-command", **{"command-line": "loadvm t1"})
    events = [m["event"] for m in b.messages() if "event" in m]
    text = b.last()["return"]
    assert events == ["STOP"]
    assert text.startswith("Error: machine/devices[0]/") and text.endswith("\r\n")
    assert "device 'vser0': port 1 (virtserialport) is in the stream but not on this machine" in text
    assert b_rt.qmp_query_virtio_serial() == before
    b.cmd("query-status")
    assert b.last() == {"return": {"status": "restore-vm", "singlestep": False, "running": False}}
    b.raw.clear()
    b.cmd("stop")
    assert b.messages() == [{"return": {}}]
    b.cmd("cont")
    assert [m.get("event") for m in b.messages()][-2:] == ["RESUME", None]
    assert b_rt.machine.running


def test_loadvm_on_the_command_line(tmp: str, runtimes: list[Runtime]) -> None:
    _, a = _runtime(runtimes, tmp, "-chardev", "null,id=c1", *PORTS)
    assert _hmp(a, "savevm t1") == ""
    with pytest.raises(UsageError) as err:
        cmdline.build(["-snapshot-dir", f"{tmp}/snaps", "-loadvm", "nosuch", "-chardev", "null,id=c1", *PORTS])
    assert err.value.lines() == "vserial: Snapshot 'nosuch' does not exist in one or more devices\n"
    with pytest.raises(UsageError) as err:
        cmdline.build(["-snapshot-dir", f"{tmp}/snaps", "-loadvm", "t1", "-device", "virtio-serial,id=vser0"])
    assert err.value.lines().startswith("vserial: machine/devices[0]/ports")
    # -S: the machine stays in prelaunch; the first cont sends the loaded
    # port's VSERPORT_CHANGE after RESUME.
    rt, s = _runtime(runtimes, tmp, "-S", "-loadvm", "t1", "-chardev", "null,id=c1", *PORTS)
    s.cmd("query-status")
    assert s.last()["return"]["status"] == "prelaunch"
    s.raw.clear()
    s.cmd("cont")
    assert [(m.get("event"), m.get("data")) for m in s.messages()] == [
        ("RESUME", None), ("VSERPORT_CHANGE", {"id": "p1", "open": False}), (None, None)]
    rt2, s2 = _runtime(runtimes, tmp, "-loadvm", "t1", "-chardev", "null,id=c1", *PORTS)
    s2.cmd("query-status")
    assert s2.last()["return"]["status"] == "running"


def _pump(rt: Runtime, until: Any, what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        rt.loop.run_once(0.01)
        got = until()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


def _read(s: Session, handle: int) -> bytes:
    s.cmd("guest-file-read", handle=handle, count=100)
    return base64.b64decode(s.last()["return"]["buf-b64"])


def test_guest_program_carries_on_after_loadvm_in_a_new_process_and_in_the_same(
        tmp: str, runtimes: list[Runtime]) -> None:
    """A program with a port open: the bytes the host sent that it has not
    read, and the bytes it wrote while the host was away, survive a
    snapshot loaded with -loadvm by a machine whose -device lines come in
    another order, and a loadvm in the same process."""
    devices = ["-device", "virtio-serial,id=vser0", "-device", "virtconsole,id=con0",
               "-device", "virtserialport,nr=1,name=org.test.p1,id=p1,chardev=c1",
               "-device", "virtserialport,nr=2,name=org.test.p2,id=p2"]
    chardev = ["-chardev", f"socket,id=c1,path={tmp}/a.sock,server=on,wait=off"]
    rt, s = _runtime(runtimes, tmp, *chardev, *devices)
    host = socket.socket(socket.AF_UNIX)
    host.connect(f"{tmp}/a.sock")
    s.cmd("guest-file-open", path="/dev/virtio-ports/org.test.p1", mode="r+")
    handle = s.last()["return"]
    host.sendall(b"abcdef")
    got = bytearray()
    _pump(rt, lambda: got.extend(_read(s, handle)) or got, "the first bytes")
    assert got == b"abcdef"
    host.sendall(b"pending")
    _pump(rt, lambda: rt.machine.guest.ports() and any(
        p.port.portdev.port_has_data(p.port) for p in rt.machine.guest.open_files), "bytes in the guest")
    host.close()
    _pump(rt, lambda: not rt.machine.port("p1").host_connected, "the host to leave")
    s.cmd("guest-file-write", handle=handle, **{"buf-b64": base64.b64encode(b"later").decode()})
    assert rt.agent.pending(handle) == 5
    assert _hmp(s, "savevm t1") == ""

    # A new machine, -device lines in another order, the same directory.
    order = [devices[i] for i in (0, 1, 6, 7, 4, 5, 2, 3)]
    chardev_b = ["-chardev", f"socket,id=c1,path={tmp}/b.sock,server=on,wait=off"]
    rt_b, s_b = _runtime(runtimes, tmp, "-loadvm", "t1", *chardev_b, *order)
    assert _read(s_b, handle) == b"pending"
    host_b = socket.socket(socket.AF_UNIX)
    host_b.connect(f"{tmp}/b.sock")
    host_b.settimeout(0)
    received = bytearray()

    def take() -> bytes:
        try:
            received.extend(host_b.recv(100))
        except BlockingIOError:
            pass
        return bytes(received)

    _pump(rt_b, lambda: take() == b"later", "the pending write")
    s_b.cmd("guest-file-write", handle=handle, **{"buf-b64": base64.b64encode(b"back").decode()})
    _pump(rt_b, lambda: take() == b"laterback", "a new write")
    # In the same process: load again; the handle is the saved one again.
    assert _hmp(s_b, "loadvm t1") == ""
    assert _read(s_b, handle) == b"pending"
    _pump(rt_b, lambda: take() == b"laterbacklater", "the pending write again")
    s_b.cmd("guest-file-close", handle=handle)
    assert s_b.last() == {"return": {}}
    host_b.close()


def test_an_agent_section_that_does_not_fit_is_refused(tmp: str, runtimes: list[Runtime]) -> None:
    from emulator.state import agent as astate
    rec = astate.AgentRecord(next_handle=1001, handles=[astate.AgentHandleRecord(
        handle=1000, file=0, mode="r", pending=b"", written=0, closing=False, error=None)])
    with pytest.raises(Exception, match="file 0, but the guest has 0 open files"):
        astate.check(rec, 0)
    astate.check(rec, 1)


BIG = bytes(range(251)) * (5 * 4096 + 7)  # ~5 MiB: more than one vmstate item (4 MiB)


def test_savevm_of_buffers_over_4_mib_saves_and_loads(tmp: str, runtimes: list[Runtime]) -> None:
    """A 5 MiB write the guest program holds while no client is on the
    socket, and 5 MiB in a ring buffer, survive savevm and -loadvm in a
    new process; the bytes arrive once, in order."""
    args = ["-chardev", f"socket,id=c1,path={tmp}/a.sock,server=on,wait=off",
            "-chardev", "ringbuf,id=r,size=8M",
            "-device", "virtio-serial,id=vser0",
            "-device", "virtserialport,nr=1,name=org.test.p1,id=p1,chardev=c1",
            "-device", "virtserialport,nr=2,name=org.test.p2,id=p2,chardev=r"]
    rt, s = _runtime(runtimes, tmp, *args)
    s.cmd("guest-file-open", path="/dev/virtio-ports/org.test.p1", mode="w")
    h1 = s.last()["return"]
    s.cmd("guest-file-write", handle=h1, **{"buf-b64": base64.b64encode(BIG).decode()})
    s.cmd("guest-file-open", path="/dev/virtio-ports/org.test.p2", mode="w")
    h2 = s.last()["return"]
    s.cmd("guest-file-write", handle=h2, **{"buf-b64": base64.b64encode(BIG).decode()})
    _pump(rt, lambda: rt.agent.pending(h2) == 0, "the ring to take the write")
    assert rt.agent.pending(h1) == len(BIG)
    assert _hmp(s, "savevm t1") == ""

    rt_b, s_b = _runtime(runtimes, tmp, "-loadvm", "t1", *[a.replace("a.sock", "b.sock") for a in args])
    ring: Any = rt_b.machine.chardevs["r"]
    assert ring.read(len(BIG) + 1) == BIG
    host = socket.socket(socket.AF_UNIX)
    host.connect(f"{tmp}/b.sock")
    host.settimeout(0)
    received = bytearray()

    def take() -> int:
        try:
            while chunk := host.recv(1 << 16):
                received.extend(chunk)
        except BlockingIOError:
            pass
        return len(received) >= len(BIG)

    _pump(rt_b, take, "the held write", timeout=30)
    rt_b.loop.run_once(0.05)
    take()
    assert bytes(received) == BIG
    host.close()


@pytest.mark.parametrize("running", [True, False])
def test_a_failed_save_is_an_hmp_error_with_stop_and_resume_when_running(
        running: bool, tmp: str, runtimes: list[Runtime], monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever save_machine raises is QEMU's ``Error while writing VM
    state: ...`` as the HMP text, never a QMP error; a running machine
    gets STOP and RESUME (save_snapshot restarts it on every path after
    its vm_stop) and runs on; the old snapshot with the tag is intact."""
    from emulator.runtime import runtime as rmod
    rt, s = _runtime(runtimes, tmp, *([] if running else ["-S"]))
    assert _hmp(s, "savevm t1") == ""

    def boom(*args: Any, **kwargs: Any) -> bytes:
        raise ValueError("item of 5242951 bytes exceeds max_item_size 4194304")

    monkeypatch.setattr(rmod, "save_machine", boom)
    s.raw.clear()
    s.cmd("human-monitor-command", **{"command-line": "savevm t1"})
    got = [_normalise(m) for m in s.messages()]
    reply = {"return": "Error: Error while writing VM state: item of 5242951 bytes exceeds max_item_size 4194304\r\n"}
    assert got == ([{"event": "STOP"}, {"event": "RESUME"}, reply] if running else [reply])
    s.cmd("query-status")
    assert s.last()["return"]["status"] == ("running" if running else "prelaunch")
    monkeypatch.undo()
    assert _hmp(s, "loadvm t1") == ""
