"""Hostile QMP input: nothing a client sends kills or stalls the machine.

Two halves.  In process (a QMPSession, qmp_session.py): every command that
query-commands lists gets each argument as each wrong JSON type, missing
and extra arguments, NULs, and extreme sizes for every integer argument;
after each the monitor still answers query-status and no reply is an
internal error.  As a real ``vserial run`` process over its unix socket:
nesting at QEMU's MAX_NESTING and far beyond, huge strings and numbers,
and a 16 MiB junk value fed to one client while another is served.

The expected replies were checked against QEMU 7.2 (qemu-system-x86_64
-accel tcg -nodefaults -display none -qmp unix:...).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from typing import Any

import pytest

from emulator.runtime.runtime import Runtime

from tests.e2e.vm import VM
from tests.runtime.qmp_session import Session, make

WRONG_TYPES: dict[str, list[Any]] = {
    "str": [1, -1, 1.5, True, None, {}, [], ["x"]],
    "int": ["1", 1.5, True, False, None, {}, [], [1]],
    "bool": ["true", 0, 1, None, {}, []],
    "object": ["x", 1, True, None, [], [{}]],
    "array": ["x", 1, True, None, {}],
}
EXTREME_INTS = [2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64, -1, 0, 10**30]
NUL_STRINGS = ["\x00", "a\x00b", "\x00" * 1000]

# Arguments that reach a handler: the value under test replaces one of them.
TEMPLATES: dict[str, dict[str, Any]] = {
    "device_del": {"id": "nosuch"},
    "chardev-add": {"id": "fz", "backend": {"type": "null", "data": {}}},
    "chardev-remove": {"id": "nosuch"},
    "ringbuf-write": {"device": "r0", "data": "eA==", "format": "base64"},
    "ringbuf-read": {"device": "r0", "size": 1, "format": "utf8"},
    "qom-get": {"path": "/machine/peripheral/p1", "property": "name"},
    "guest-file-open": {"path": "/dev/virtio-ports/org.fuzz.0", "mode": "r+"},
    "guest-file-read": {"handle": 1, "count": 1},
    "guest-file-write": {"handle": 1, "buf-b64": "eA==", "count": 1},
    "guest-file-close": {"handle": 999},
    "guest-sync": {"id": 1},
    # free-form commands: the properties they read
    "device_add": {"driver": "virtserialport", "id": "fz1", "bus": "vs0.0", "nr": 5,
                   "name": "org.fuzz.1", "chardev": "nosuch"},
    "x-echo-stats": {"id": "p1"},
}
NEVER_VALID = {"quit"}  # only ever sent with a bad argument list
# Internal errors the corpus finds (each would have killed the process
# before handlers were contained): command -> the argument sets that do it.
# x-echo-stats: plugin commands are registered free-form and called as
# h(self, **args) (runtime/commands.py), so any unknown argument is a
# TypeError instead of QAPI's "Parameter 'x' is unexpected".
KNOWN_INTERNAL_ERRORS: set[str] = set()


def _alive(s: Session) -> list[dict[str, Any]]:
    """The request's reply came and the monitor answers query-status after
    it; the replies that are internal errors."""
    replies = [m for m in s.messages() if "event" not in m]
    assert replies and replies[-1].get("id") == "alive", replies[-3:]
    assert "return" in replies[-1] and replies[-1]["return"]["status"] in ("prelaunch", "running", "paused")
    assert len(replies) == 2, replies
    r = replies[0]
    assert "return" in r or r["error"]["class"] in ("GenericError", "CommandNotFound", "DeviceNotFound"), r
    return [r for r in replies[:-1] if "Internal error" in r.get("error", {}).get("desc", "")]


def _inputs(name: str, spec: dict[str, tuple[str, bool]] | None) -> list[dict[str, Any]]:
    """The hostile argument sets for one command."""
    base = TEMPLATES.get(name, {})
    kinds = {k: v[0] for k, v in spec.items()} if spec is not None else {
        k: "int" if isinstance(v, int) else "object" if isinstance(v, dict) else "str" for k, v in base.items()
    }
    out: list[dict[str, Any]] = [{**base, "x-bogus": 1}, {**base, "": None}]
    for arg, kind in kinds.items():
        if kind == "any":
            continue
        out.append({k: v for k, v in base.items() if k != arg})  # missing
        out += [{**base, arg: bad} for bad in WRONG_TYPES[kind]]
        if kind == "str":
            out += [{**base, arg: bad} for bad in NUL_STRINGS]
        if kind == "int":
            out += [{**base, arg: n} for n in EXTREME_INTS]
        if kind == "object" and name == "chardev-add":
            out += [{**base, arg: bad} for bad in (
                {"type": 1}, {"type": "null"}, {"type": "null", "data": []}, {"type": "\x00", "data": {}},
                {"type": "ringbuf", "data": {"size": 2**63}}, {"type": "ringbuf", "data": {"size": -1}},
                {"type": "ringbuf", "data": {"size": 0}}, {"type": "ringbuf", "data": {"size": "8"}},
                {"type": "socket", "data": {"addr": 1}},
            )]
    if name in NEVER_VALID:
        out = [a for a in out if a]  # never the empty, valid argument list
    return out


def test_every_command_survives_every_wrong_argument(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-chardev", "ringbuf,id=r0", "-chardev", "null,id=c1",
                 "-device", "virtio-serial,id=vs0",
                 "-device", "virtserialport,id=p1,chardev=c1,name=org.fuzz.0,nr=1")
    s.cmd("cont")
    s.raw.clear()
    s.cmd_raw(b'{"execute": "query-commands"}')
    names = [c["name"] for c in s.last()["return"]]
    assert "query-status" in names and "device_add" in names
    tried = 0
    crashes: dict[str, list[Any]] = {}
    rt.monitor.on_error = lambda line: None
    for name in names:
        spec = {"enable": ("array", False)} if name == "qmp_capabilities" else rt.monitor.commands[name][1]
        for args in _inputs(name, spec):
            s.raw.clear()
            s.cmd_raw(json.dumps({"execute": name, "arguments": args, "id": tried}).encode()
                      + b'{"execute": "query-status", "id": "alive"}')
            if _alive(s):
                crashes.setdefault(name, []).append(args)
            tried += 1
    assert tried > 400
    print(f"hostile corpus: {tried} argument sets over {len(names)} commands; internal errors: {crashes}")
    assert set(crashes) == KNOWN_INTERNAL_ERRORS, crashes


def test_wrong_types_get_qapis_messages(runtimes: list[Runtime]) -> None:
    """A sample of the corpus with QEMU 7.2's exact replies."""
    rt, s = make(runtimes, "-chardev", "ringbuf,id=r0")
    for args, desc in [
        ({"device": "r0", "size": 2**63}, "Invalid parameter type for 'size', expected: integer"),
        ({"device": "r0", "size": 1.5}, "Invalid parameter type for 'size', expected: integer"),
        ({"device": None, "size": 1}, "Invalid parameter type for 'device', expected: string"),
        ({"device": "r0"}, "Parameter 'size' is missing"),
        ({"device": "r0", "size": 1, "x": 1}, "Parameter 'x' is unexpected"),
        ({"device": "r\x00", "size": 1}, "Device 'r\x00' not found"),
    ]:
        s.cmd("ringbuf-read", **args)
        assert s.last() == {"error": {"class": "GenericError", "desc": desc}}, args


def test_a_handler_that_raises_gets_a_generic_error_and_one_log_line(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes)
    logged: list[str] = []
    rt.monitor.on_error = logged.append

    def broken() -> None:
        raise KeyError("boom")

    rt.monitor.register("x-broken", broken, {})
    s.cmd_raw(b'{"execute": "x-broken", "id": 7}{"execute": "query-status", "id": "alive"}')
    replies = s.messages()
    assert replies[0] == {"id": 7, "error": {"class": "GenericError",
                                             "desc": "Internal error in QMP command 'x-broken': KeyError (logged)"}}
    assert replies[1]["id"] == "alive"
    assert len(logged) == 1 and "\n" not in logged[0]
    assert logged[0].startswith("internal error in QMP command 'x-broken': KeyError: 'boom' [traceback: ")
    assert "test_hostile_qmp.py" in logged[0] and "in broken" in logged[0]


def test_a_reply_that_cannot_be_encoded_becomes_a_generic_error(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes)
    rt.monitor.on_error = lambda line: None
    rt.monitor.register("x-unencodable", lambda: {"x": object()}, {})
    s.cmd_raw(b'{"execute": "x-unencodable", "id": "u"}{"execute": "query-status", "id": "alive"}')
    first, second = s.messages()
    assert first == {"id": "u", "error": {"class": "GenericError",
                                          "desc": "Internal error in the reply to 'x-unencodable': TypeError (logged)"}}
    assert second["id"] == "alive"


def test_an_event_that_cannot_be_encoded_is_dropped_and_logged(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes)
    logged: list[str] = []
    rt.monitor.on_error = logged.append
    rt.monitor.broadcast("X_EVENT", {"x": object()})
    s.cmd("query-status")
    assert [m for m in s.messages() if "event" in m] == []
    assert len(logged) == 1 and logged[0].startswith("internal error in event X_EVENT: TypeError")


def test_the_runtime_logs_internal_errors_to_stderr_and_the_d_log(
        runtimes: list[Runtime], tmp: str, capsys: pytest.CaptureFixture[str]) -> None:
    rt, s = make(runtimes, "-D", f"{tmp}/log")
    rt.monitor.register("x-broken", lambda: 1 // 0, {})
    s.cmd("x-broken")
    assert s.last()["error"]["desc"] == "Internal error in QMP command 'x-broken': ZeroDivisionError (logged)"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("vserial: internal error in QMP command 'x-broken': ZeroDivisionError")
    rt.log_file.flush()  # type: ignore[union-attr]
    with open(f"{tmp}/log") as f:
        assert f.read() == err[0].removeprefix("vserial: ") + "\n"


# ======================================================== a real vserial run

class RawClient:
    def __init__(self, path: str) -> None:
        deadline = time.monotonic() + 20
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except ConnectionRefusedError:  # bound, not listening yet
                self.sock.close()
                assert time.monotonic() < deadline, "vserial does not listen"
                time.sleep(0.02)
        self.buf = b""
        assert "QMP" in self.line()
        self.sock.sendall(b'{"execute": "qmp_capabilities"}')
        assert self.line() == {"return": {}}

    def line(self, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, "no reply from vserial"
            if select.select([self.sock], [], [], left)[0]:
                chunk = self.sock.recv(1 << 20)
                assert chunk, "vserial closed the monitor"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(old + 3000)  # a reply may echo an id 1024 deep
        try:
            return json.loads(line)
        finally:
            sys.setrecursionlimit(old)

    def lines(self, data: bytes, n: int) -> list[Any]:
        self.sock.sendall(data)
        return [self.line() for _ in range(n)]

    def alive(self) -> None:
        assert self.lines(b'{"execute": "query-status", "id": "alive"}', 1)[0]["id"] == "alive"


def _nested(levels: int, where: bytes = b"id") -> bytes:
    d = levels - 1
    if where == b"id":
        return b'{"execute": "query-status", "id": ' + b"[" * d + b"]" * d + b"}"
    d -= 1  # the arguments object is a level too
    return b'{"execute": "qom-get", "arguments": {"path": ' + b"[" * d + b"]" * d + b', "property": "x"}}'


@pytest.fixture(scope="module")
def vm() -> Any:
    v = VM("-chardev", "ringbuf,id=r0")
    try:
        v.wait_socket()
        yield v
    finally:
        v.close()


def test_nesting_at_and_beyond_qemus_limit(vm: VM) -> None:
    c = RawClient(vm.qmp_path)
    (r,) = c.lines(_nested(1024), 1)  # was: the process died (RecursionError in the encoder)
    assert r["return"]["status"] == "running" and isinstance(r["id"], list)
    out = c.lines(_nested(1025), 1026)
    assert out == ([{"error": {"class": "GenericError", "desc": "JSON nesting depth limit exceeded"}}]
                   + [{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}] * 1025)
    (r,) = c.lines(_nested(1024, b"arguments"), 1)
    assert r == {"error": {"class": "GenericError", "desc": "Invalid parameter type for 'path', expected: string"}}
    # far beyond: 100000 openers are 97 errors and 575 levels still open
    out = c.lines(b"[" * 100_000, 97)
    assert {r["error"]["desc"] for r in out} == {"JSON nesting depth limit exceeded"}
    assert c.lines(b"]" * 575, 1) == [{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}]
    c.alive()
    # the rest of this one is a stream of errors: the next client gets a fresh session
    assert c.lines(_nested(1025, b"arguments"), 1)[0]["error"]["desc"] == "JSON nesting depth limit exceeded"
    c.sock.close()
    assert vm.proc.poll() is None


def test_huge_strings_numbers_and_nuls(vm: VM) -> None:
    c = RawClient(vm.qmp_path)
    big = "x" * (8 << 20)
    (r,) = c.lines(json.dumps({"execute": "query-status", "id": big}).encode(), 1)
    assert r["id"] == big
    (r,) = c.lines(json.dumps({"execute": "ringbuf-write", "arguments": {"device": "r0", "data": big}}).encode(), 1)
    assert r == {"return": {}}
    (r,) = c.lines(b'{"execute": "ringbuf-read", "arguments": {"device": "r0", "size": 1' + b"0" * 5000 + b"}}", 1)
    assert r == {"error": {"class": "GenericError", "desc": "Invalid parameter type for 'size', expected: integer"}}
    (r,) = c.lines(b'{"execute": "query-status", "id": "a\\u0000b"}', 1)
    assert r["id"] == "a\x00b"  # QEMU 7.2 echoes it
    (r,) = c.lines(b'{"execute": "ringbuf-read", "arguments": {"device": "r0", "size": -1}}', 1)
    assert r["error"]["class"] == "GenericError"
    c.alive()
    assert vm.proc.poll() is None


def test_a_16_mib_junk_value_does_not_stall_other_clients(tmp: str) -> None:
    """One client feeds a bare value in pieces; a second client on another
    monitor is answered meanwhile.  Was: every read rescanned the value
    from its start (16 MiB stalled the loop for 10.8 s)."""
    v = VM("-qmp", f"unix:{tmp}/b.sock,server=on,wait=off")
    try:
        v.wait_socket()
        a, b = RawClient(v.qmp_path), RawClient(f"{tmp}/b.sock")
        junk = b"a" * (1 << 20)
        worst = 0.0
        start = time.monotonic()
        for _ in range(16):
            a.sock.sendall(junk)
            t0 = time.monotonic()
            b.alive()
            worst = max(worst, time.monotonic() - t0)
        (r,) = a.lines(b" ", 1)
        took = time.monotonic() - start
        assert r["error"]["desc"].startswith("JSON parse error, invalid keyword 'aaaa")
        assert worst < 1.0 and took < 5.0, (worst, took)  # was: 10.8 s for the value
        a.alive()
    finally:
        v.close()
