"""The QMP monitor as its clients see it: the JSON it accepts and refuses
(QEMU 7.2's parse errors and output escaping), clients that hang up or never
read, a signal in the middle of a write, and the order of events and replies.

Many of these began as bugs found in review (strict xfails, since fixed); the
expected values were checked against QEMU 7.2 (``qemu-system-x86_64 -M pc -S
-display none -nodefaults -qmp stdio``) and fixtures/qemu/runtime.json
(RUNTIME_FACTS.md).  Everything runs in-process, either through a QMPSession
(qmp_session.py) or a client on the runtime's monitor socket (programs.py).
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from emulator.runtime import cmdline as qemu_cli
from emulator.runtime.runtime import Runtime

from tests.runtime.programs import Qmp, build, cpu_over, qmp, spin, with_port  # noqa: F401  (build: a fixture)
from tests.runtime.qmp_session import make


# ========================================================== JSON input / output

def test_a_lone_surrogate_escape_is_a_parse_error_not_a_crash(runtimes: list[Runtime]) -> None:
    """Baseline: QEMU rejects \\ud800 at parse time.  In vserial the string
    gets through, and it is what crashes ringbuf-write (next test)."""
    rt, s = make(runtimes, "-chardev", "ringbuf,id=r0")
    s.cmd_raw(b'{"execute": "x\\ud800y"}')
    assert s.last() == {"error": {"class": "GenericError",
                                  "desc": "JSON parse error, \\ud800 is not a valid Unicode character"}}


def test_ringbuf_write_of_a_lone_surrogate_gets_qemus_parse_error(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-chardev", "ringbuf,id=r0")
    s.cmd_raw(b'{"execute": "ringbuf-write", "arguments": {"device": "r0", "data": "\\ud800x"}}')
    assert s.last() == {"error": {"class": "GenericError",
                                  "desc": "JSON parse error, \\ud800 is not a valid Unicode character"}}


def test_port_name_with_a_lone_surrogate_does_not_crash_the_guest_bring_up(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes, "-device", "virtio-serial,id=vs0")
    s.cmd_raw(b'{"execute": "device_add", "arguments": {"driver": "virtserialport", "id": "p9", "name": "\\ud800"}}')
    assert s.last() == {"error": {"class": "GenericError",
                                  "desc": "JSON parse error, \\ud800 is not a valid Unicode character"}}
    assert "p9" not in rt.machine.qdev_ids  # refused before device_add ran
    s.cmd("cont")
    assert s.last() == {"return": {}}


def test_a_lone_low_surrogate_escape_is_refused_as_qemu_does(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes)
    s.cmd_raw(b'{"execute": "d\\udc80"}')
    assert s.last() == {"error": {"class": "GenericError",
                                  "desc": "JSON parse error, \\udc80 is not a valid Unicode character"}}


def test_invalid_utf8_inside_a_string_is_a_parse_error(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes)
    s.cmd_raw(b'{"execute": "c\xed\xa0\x80"}')  # CESU-8 surrogate: QEMU says invalid UTF-8 sequence
    assert s.last() == {"error": {"class": "GenericError",
                                  "desc": "JSON parse error, invalid UTF-8 sequence in string"}}


def test_escaped_single_quote_in_a_double_quoted_string(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes)
    s.cmd_raw(b'{"execute": "a\\\'b"}')
    assert s.last() == {"error": {"class": "CommandNotFound", "desc": "The command a'b has not been found"}}


@pytest.mark.parametrize("text, name", [
    (b"{'execute':'a[b{c\"d'}", 'a[b{c"d'),
    (b"{'execute':'a\\'b'}", "a'b"),
    (b"{'execute':\"a'b\"}", "a'b"),
    (b"{'execute':'a\\\"b'}", 'a"b'),
    (b"{'execute':'a\\/b\\u0041'}", "a/bA"),
    (b"{'execute':'a\\\\\\'b'}", "a\\'b"),
])
def test_single_quoted_strings_as_qemu_reads_them_at_any_split(runtimes: list[Runtime], text: bytes, name: str) -> None:
    """Verified against QEMU 7.2: all of these are CommandNotFound with that name."""
    rt, s = make(runtimes)
    for step in (1, 2, 3, len(text)):
        s.raw.clear()
        for k in range(0, len(text), step):
            s.cmd_raw(text[k:k + step])
        assert s.messages() == [{"error": {"class": "CommandNotFound", "desc": f"The command {name} has not been found"}}]


def test_output_escaping_matches_qemu_for_del_and_non_bmp(runtimes: list[Runtime]) -> None:
    """QEMU 7.2: "The command a\\u007F\\u007F/\\uD83D\\uDE00 has not been found"."""
    rt, s = make(runtimes)
    s.cmd_raw('{"execute":"a\x7f\\u007f/\\ud83d\\ude00"}'.encode())
    assert s.raw[-1] == (b'{"error": {"class": "CommandNotFound", "desc": '
                         b'"The command a\\u007F\\u007F/\\uD83D\\uDE00 has not been found"}}\r\n')


@pytest.mark.parametrize("id_text, echoed", [
    (b"1e400", b"inf"),  # QEMU 7.2 really sends this (json-writer.c: "%.17g")
    (b"-1e400", b"-inf"),
    (b"0.1", b"0.10000000000000001"),
    (b"1E2", b"100"),
    (b"-0.0", b"-0"),
    (b"-0", b"0"),
    (b"123456789012345678901234567890", b"1.2345678901234568e+29"),
    (b"-9223372036854775809", b"-9.2233720368547758e+18"),
    (b"18446744073709551615", b"18446744073709551615"),
    (b"18446744073709551616", b"1.8446744073709552e+19"),
])
def test_numbers_are_echoed_as_qemu_prints_them(runtimes: list[Runtime], id_text: bytes, echoed: bytes) -> None:
    """Checked against QEMU 7.2 byte for byte.  Was: Python's repr
    (0.1, 100.0), big integers exact, and 'Infinity'."""
    rt, s = make(runtimes)
    s.cmd_raw(b'{"execute": "query-name", "id": ' + id_text + b"}")
    assert s.raw[-1] == b'{"return": {}, "id": ' + echoed + b"}\r\n"


def test_nan_is_a_stray_byte_and_the_session_goes_on(runtimes: list[Runtime]) -> None:
    rt, s = make(runtimes)
    s.cmd_raw(b'{"execute": "query-name", "id": NaN}\n{"execute": "query-name", "id": 1}')
    assert s.raw == [
        b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'N\'"}}\r\n',
        b'{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}\r\n',
        b'{"return": {}, "id": 1}\r\n',
    ]


def test_after_a_stray_byte_in_an_open_value_the_next_command_is_answered(runtimes: list[Runtime]) -> None:
    """QEMU 7.2: "stray '@'" then the reply.  Was: nothing, ever again."""
    rt, s = make(runtimes)
    s.cmd_raw(b'{"x": @\n{"execute": "query-name", "id": 1}')
    assert s.messages() == [
        {"error": {"class": "GenericError", "desc": "JSON parse error, stray '@'"}},
        {"return": {}, "id": 1},
    ]


# ========================================================== misbehaving clients

def test_client_that_hangs_up_before_its_reply_does_not_crash_the_monitor(build: Callable[..., Runtime],
                                                                          tmp: str) -> None:
    rt = build()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(f"{tmp}/qmp.sock")
    spin(rt)
    s.sendall(b'{"execute":"qmp_capabilities"}{"execute":"query-commands"}')
    s.close()
    spin(rt, 10)  # raises BufferError today
    # The monitor serves the next client.
    c = qmp(rt, tmp)
    assert c.cmd({"execute": "query-status"})["return"]["status"] == "running"


def test_lone_surrogate_in_the_request_id_does_not_crash(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    c.send(b'{"execute":"query-status","id":"\\ud800"}')
    assert c.recv() == {"error": {"class": "GenericError",  # QEMU 7.2: no id, it was never parsed
                                  "desc": "JSON parse error, \\ud800 is not a valid Unicode character"}}
    assert c.cmd({"execute": "query-status", "id": "probe"})["id"] == "probe"


def test_sigterm_while_the_monitor_is_writing_shuts_down_cleanly(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    chr_ = rt.machine.chardevs["compat_monitor0"]
    orig_write = chr_.write
    fired = []

    def write(view: memoryview) -> int:
        if not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGTERM)  # the signal arrives mid-write
        return orig_write(view)

    try:
        rt._install_signals()
        chr_.write = write  # type: ignore[method-assign]
        c.send({"execute": "query-status", "id": "q"})
        msgs: list[dict[str, Any]] = []
        while not (any(m.get("event") == "SHUTDOWN" for m in msgs) and any("return" in m for m in msgs)):
            msgs.append(c.recv())  # drives the loop; raises BufferError today
        assert {"return": {"status": "running", "singlestep": False, "running": True}, "id": "q"} in msgs
        assert rt.shutdown_reason == "host-signal"
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def test_client_that_never_reads_replies_is_bounded_and_others_are_served(tmp: str,
                                                                          runtimes: list[Runtime]) -> None:
    rt = qemu_cli.build(["-qmp", f"unix:{tmp}/a.sock,server=on,wait=off",
                         "-qmp", f"unix:{tmp}/b.sock,server=on,wait=off"])
    runtimes.append(rt)
    rt.start()
    a = Qmp(rt, f"{tmp}/a.sock")
    b = Qmp(rt, f"{tmp}/b.sock")
    flood = b'{"execute":"query-commands"}' * 1000
    stalled = 0
    deadline = time.monotonic() + 5
    while stalled < 30 and time.monotonic() < deadline:
        try:
            a.sock.send(flood)
            stalled = 0
        except BlockingIOError:
            stalled += 1
        rt.loop.run_once(0.005)
    assert stalled >= 30, "the monitor should stop reading a client that does not read"
    from emulator.runtime.monitor import OUTPUT_HIGH_WATER

    assert len(rt.monitors[0].out) < OUTPUT_HIGH_WATER + (8 << 20)
    assert b.cmd({"execute": "query-status"})["return"]["running"] is True
    assert cpu_over(rt) < 0.1


# ================================================== replies as QEMU writes them
def _raw_lines(c: Qmp, n: int) -> list[str]:
    return [c.recv_line().decode() for _ in range(n)]


def test_qmp_capabilities_unknown_capability_message(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build()
    c = Qmp(rt, f"{tmp}/qmp.sock", negotiate=False)
    r = c.cmd({"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}})
    assert r == {"error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'bogus'"}}
    assert c.cmd({"execute": "query-status"})["error"]["class"] == "CommandNotFound"  # still negotiating


def test_single_quoted_json_is_accepted(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    assert c.cmd(b"{'execute':'query-status'}\n")["return"]["running"] is True


def test_invalid_utf8_byte_gets_qemus_stray_error(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    c.send(b"\xff\n")
    assert _raw_lines(c, 1) == [
        '{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}'
    ]


def test_non_ascii_output_is_escaped_as_qemu_does(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build("-chardev", "ringbuf,id=rb0,size=8")
    c = qmp(rt, tmp)
    assert c.cmd({"execute": "ringbuf-write", "arguments": {"device": "rb0", "data": "é€"}}) == {"return": {}}
    c.send({"execute": "ringbuf-read", "arguments": {"device": "rb0", "size": 2}})
    assert _raw_lines(c, 1) == ['{"return": "\\u00E9"}']


def test_ringbuf_bad_format_is_refused_before_the_device_lookup(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    r = c.cmd({"execute": "ringbuf-read", "arguments": {"device": "r0", "size": 1, "format": "hex"}})
    assert r["error"]["desc"] == "Parameter 'format' does not accept value 'hex'"
    r = c.cmd({"execute": "ringbuf-write", "arguments": {"device": "r0", "data": "x", "format": "hex"}})
    assert r["error"]["desc"] == "Parameter 'format' does not accept value 'hex'"


def test_device_del_of_a_port_replies_before_device_deleted(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build(*with_port("null,id=c1"))
    c = qmp(rt, tmp)
    c.send({"execute": "device_del", "arguments": {"id": "p1"}})
    first, second = json.loads(c.recv_line()), json.loads(c.recv_line())
    assert first == {"return": {}}
    assert second["event"] == "DEVICE_DELETED"
    assert second["data"] == {"device": "p1", "path": "/machine/peripheral/p1"}


def test_stop_cont_events_precede_replies_as_in_qemu(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    c.send({"execute": "stop", "id": "s"})
    a, b = c.recv(), c.recv()
    assert a["event"] == "STOP" and "data" not in a and b == {"return": {}, "id": "s"}
    assert c.cmd({"execute": "stop"}) == {"return": {}}  # stop while paused: no event
    c.send({"execute": "cont", "id": "c"})
    a, b = c.recv(), c.recv()
    assert a["event"] == "RESUME" and b == {"return": {}, "id": "c"}
