"""QMP ``chardev-add`` with arguments that cannot be opened: a GenericError,
no chardev left behind and no descriptor leaked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from emulator.errors import QMPError
from emulator.runtime.runtime import Runtime

from tests.runtime.programs import build, open_fds, qmp  # noqa: F401  (build: a fixture)


def test_chardev_add_with_an_out_of_range_tcp_port_is_an_error(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    before = open_fds()
    r = c.cmd({"execute": "chardev-add", "arguments": {"id": "t1", "backend": {"type": "socket", "data": {
        "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "70000"}}, "server": True, "wait": False}}}})
    assert r["error"]["class"] == "GenericError"
    assert "t1" not in rt.machine.chardevs
    assert open_fds() == before


@pytest.mark.parametrize("backend", [
    {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": "/tmp/a\u0000b"}}, "server": True,
                                "wait": False}},
    {"type": "file", "data": {"out": "/tmp/a\u0000b"}},
    {"type": "pipe", "data": {"device": "/tmp/a\u0000b"}},
], ids=["socket", "file", "pipe"])
def test_nul_in_a_chardev_path_is_an_error(backend: dict[str, Any], build: Callable[..., Runtime],
                                           tmp: str) -> None:
    rt = build()
    c = qmp(rt, tmp)
    r = c.cmd({"execute": "chardev-add", "arguments": {"id": "t1", "backend": backend}})
    assert r["error"]["class"] == "GenericError"
    assert "t1" not in rt.machine.chardevs


def _add(c: Any, chardev_id: str, backend: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = c.cmd({"execute": "chardev-add", "arguments": {"id": chardev_id, "backend": backend}})
    return reply


def _still_serving(rt: Runtime, c: Any, chardevs: set[str]) -> None:
    assert c.cmd({"execute": "query-status"})["return"]["status"] == "prelaunch"
    assert set(rt.machine.chardevs) == chardevs


def _inet(host: str, port: str, **kw: Any) -> dict[str, Any]:
    return {"type": "socket", "data": {"addr": {"type": "inet", "data": {"host": host, "port": port}}, **kw}}


# QEMU 7.2 g_malloc0s the ring and aborts ("GLib: ../glib/gmem.c:169: failed to
# allocate 1099511627776 bytes", exit 133); vserial refuses it with GLib's words.
@pytest.mark.parametrize("kind", ["ringbuf", "memory"])
@pytest.mark.parametrize("size", [2**40, 2**62, 2**63 * -1])
def test_chardev_add_of_a_ringbuf_bigger_than_the_host_is_an_error(
    kind: str, size: int, build: Callable[..., Runtime], tmp: str
) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    before = set(rt.machine.chardevs)
    r = _add(c, "t1", {"type": kind, "data": {"size": size}})
    # QEMU keeps the size in a size_t: -2**63 is 2**63, a power of two
    assert r["error"] == {"class": "GenericError",
                          "desc": f"Failed to add chardev 't1': failed to allocate {size % 2**64} bytes"}
    _still_serving(rt, c, before)


def test_chardev_add_of_a_negative_ringbuf_size_is_not_a_power_of_two(build: Callable[..., Runtime],
                                                                      tmp: str) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    r = _add(c, "t1", {"type": "ringbuf", "data": {"size": -1}})  # QEMU 7.2's answer
    assert r["error"]["desc"] == "Failed to add chardev 't1': size of ringbuf chardev must be power of two"


def test_a_big_ringbuf_takes_memory_only_for_what_is_written(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    assert _add(c, "big", {"type": "ringbuf", "data": {"size": 2**30}}) == {"return": {}}
    assert c.cmd({"execute": "ringbuf-write", "arguments": {"device": "big", "data": "abc"}}) == {"return": {}}
    assert c.cmd({"execute": "ringbuf-read", "arguments": {"device": "big", "size": 2**62}}) == {"return": "abc"}


def test_ringbuf_keeps_the_last_size_bytes(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    assert _add(c, "r", {"type": "ringbuf", "data": {"size": 4}}) == {"return": {}}
    for data in ("ab", "cde", "fghijk"):
        c.cmd({"execute": "ringbuf-write", "arguments": {"device": "r", "data": data}})
    assert c.cmd({"execute": "ringbuf-read", "arguments": {"device": "r", "size": 3}}) == {"return": "hij"}
    c.cmd({"execute": "ringbuf-write", "arguments": {"device": "r", "data": "lmn"}})
    assert c.cmd({"execute": "ringbuf-read", "arguments": {"device": "r", "size": 10}}) == {"return": "klmn"}


# QEMU 7.2 keeps the NUL as C0 80, which getaddrinfo() does not resolve.
@pytest.mark.parametrize("server", [True, False], ids=["server", "client"])
def test_chardev_add_of_an_inet_host_with_a_nul_is_an_address_error(server: bool, build: Callable[..., Runtime],
                                                                    tmp: str) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    before = set(rt.machine.chardevs)
    r = _add(c, "t1", _inet("127.0.0.1\u0000x", "1", server=server, wait=False))
    assert r["error"] == {"class": "GenericError", "desc": "Failed to add chardev 't1': address resolution failed "
                                                           "for 127.0.0.1\u0000x:1: Name or service not known"}
    _still_serving(rt, c, before)


def test_a_reconnecting_client_reports_an_unresolvable_host_and_is_added(
    build: Callable[..., Runtime], tmp: str, capfd: pytest.CaptureFixture[str]
) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    capfd.readouterr()
    assert _add(c, "t1", _inet("127.0.0.1\u0000x", "1", server=False, reconnect=1)) == {"return": {}}
    assert capfd.readouterr().err == ("vserial: Unable to connect character device t1: address resolution failed "
                                      "for 127.0.0.1\x00x:1: Name or service not known\n")
    assert "t1" in rt.machine.chardevs


@pytest.mark.parametrize("port", ["-1", str(2**70), "70000"])
def test_chardev_add_of_an_inet_port_out_of_range_is_an_address_error(port: str, build: Callable[..., Runtime],
                                                                      tmp: str) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    r = _add(c, "t1", _inet("127.0.0.1", port, server=True, wait=False))
    assert r["error"]["desc"] == (f"Failed to add chardev 't1': address resolution failed for 127.0.0.1:{port}: "
                                  "Servname not supported for ai_socktype")


def test_chardev_add_of_an_unknown_host_says_address_resolution_failed(build: Callable[..., Runtime],
                                                                      tmp: str) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    r = _add(c, "t1", _inet("nonexistent.invalid", "1", server=False))
    assert r["error"]["desc"] == ("Failed to add chardev 't1': address resolution failed for nonexistent.invalid:1: "
                                  "Name or service not known")


def test_a_huge_reconnect_wait_does_not_overflow_the_main_loop(build: Callable[..., Runtime], tmp: str,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    assert _add(c, "t1", _inet("127.0.0.1", "1", server=False, reconnect=2**62)) == {"return": {}}
    for _ in range(20):  # the refused connect arms the reconnect timer
        rt.loop.run_once(0.01)
    timeout = rt.loop._timeout()
    assert timeout is not None and timeout * 1000 < 2**31  # what poll(2) can wait
    assert c.cmd({"execute": "query-status"})["return"]["status"] == "prelaunch"


# QEMU 7.2's answers: QAPI checks the backend's members before the chardev is made.
@pytest.mark.parametrize("backend,desc", [
    ({"type": "ringbuf", "data": {"size": "x"}}, "Invalid parameter type for 'backend.data.size', expected: integer"),
    ({"type": "ringbuf", "data": {"size": 1.5}}, "Invalid parameter type for 'backend.data.size', expected: integer"),
    ({"type": "ringbuf", "data": {"size": None}}, "Invalid parameter type for 'backend.data.size', expected: integer"),
    ({"type": "ringbuf", "data": {"size": True}}, "Invalid parameter type for 'backend.data.size', expected: integer"),
    ({"type": "ringbuf", "data": {"size": 2**64}}, "Invalid parameter type for 'backend.data.size', expected: integer"),
    (_inet("127.0.0.1", "0", server="yes", wait=False),
     "Invalid parameter type for 'backend.data.server', expected: boolean"),
    (_inet("127.0.0.1", "0", server=True, wait=False, nodelay="x"),
     "Invalid parameter type for 'backend.data.nodelay', expected: boolean"),
    ({"type": "socket", "data": {"addr": {"type": "inet", "data": "str"}, "server": True, "wait": False}},
     "Invalid parameter type for 'backend.data.addr.data', expected: object"),
    ({"type": "socket", "data": {"addr": {"type": "inet"}, "server": True, "wait": False}},
     "Parameter 'backend.data.addr.data' is missing"),
    ({"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": 5}}, "server": True, "wait": False}},
     "Invalid parameter type for 'backend.data.addr.data.path', expected: string"),
    ({"type": "socket", "data": {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": 12345}},
                                 "server": True, "wait": False}},
     "Invalid parameter type for 'backend.data.addr.data.port', expected: string"),  # runtime.json
    ({"type": "file", "data": {"out": 5}}, "Invalid parameter type for 'backend.data.out', expected: string"),
    ({"type": "file", "data": {}}, "Parameter 'backend.data.out' is missing"),
    ({"type": "pipe", "data": {"device": 5}}, "Invalid parameter type for 'backend.data.device', expected: string"),
], ids=["size-str", "size-float", "size-null", "size-bool", "size-2^64", "server-str", "nodelay-str",
        "addr-data-str", "addr-data-missing", "unix-path-int", "inet-port-int", "file-out-int", "file-out-missing",
        "pipe-device-int"])
def test_chardev_add_checks_member_types_as_qapi_does(backend: dict[str, Any], desc: str,
                                                      build: Callable[..., Runtime], tmp: str) -> None:
    rt = build("-S")
    c = qmp(rt, tmp)
    before = set(rt.machine.chardevs)
    assert _add(c, "t1", backend) == {"error": {"class": "GenericError", "desc": desc}}
    _still_serving(rt, c, before)


def test_chardev_add_qapi_errors_come_from_the_handler_itself(build: Callable[..., Runtime]) -> None:
    """A QMPError at the source, not a ConfigError left to the monitor."""
    rt = build("-S", qmp=False)
    with pytest.raises(QMPError) as exc:
        rt.qmp_chardev_add("t1", {"type": "file", "data": {"out": 5}})
    assert exc.value.desc == "Invalid parameter type for 'backend.data.out', expected: string"
