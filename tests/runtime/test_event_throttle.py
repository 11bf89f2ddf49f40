"""QEMU's monitor limits VSERPORT_CHANGE to one event per second per port
id (monitor_qapi_event_conf): the first goes out at once, within the second
only the latest state is kept, and it goes out when the second is over."""

from __future__ import annotations

import json
import time

from emulator.core.effects import QmpEvent
from emulator.runtime.monitor import THROTTLED_EVENTS, Monitor, QMPSession
from emulator.runtime.runtime import Runtime


class FakeTimers:
    """call_later for a Monitor, fired by hand."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, object]] = []

    def call_later(self, delay: float, callback: object) -> None:
        self.pending.append((delay, callback))

    def fire(self) -> None:
        due, self.pending = self.pending, []
        for _, callback in due:
            callback()  # type: ignore[operator]


def _events(out: list[bytes]) -> list[tuple[str, dict[str, object]]]:
    msgs = [json.loads(line) for chunk in out for line in chunk.splitlines()]
    out.clear()
    return [(m["event"], m["data"]) for m in msgs if "event" in m]


def _monitor() -> tuple[Monitor, FakeTimers, list[bytes]]:
    mon = Monitor("test")
    timers = FakeTimers()
    mon.call_later = timers.call_later
    out: list[bytes] = []
    session = QMPSession(mon, out.append)
    session.feed(b'{"execute": "qmp_capabilities"}')
    out.clear()
    return mon, timers, out


def test_the_rate_is_qemus_one_second() -> None:
    assert THROTTLED_EVENTS == {"VSERPORT_CHANGE": 1.0}


def test_first_event_goes_out_at_once_and_the_latest_when_the_second_is_over() -> None:
    mon, timers, out = _monitor()
    mon.broadcast("VSERPORT_CHANGE", {"id": "p1", "open": True})
    assert _events(out) == [("VSERPORT_CHANGE", {"id": "p1", "open": True})]
    assert [delay for delay, _ in timers.pending] == [1.0]
    for state in (False, True, False):
        mon.broadcast("VSERPORT_CHANGE", {"id": "p1", "open": state})
    assert _events(out) == []  # held back
    timers.fire()
    assert _events(out) == [("VSERPORT_CHANGE", {"id": "p1", "open": False})]  # only the latest
    assert len(timers.pending) == 1  # a new period started
    timers.fire()
    assert _events(out) == [] and timers.pending == []  # nothing held: throttling ends
    mon.broadcast("VSERPORT_CHANGE", {"id": "p1", "open": True})
    assert _events(out) == [("VSERPORT_CHANGE", {"id": "p1", "open": True})]


def test_each_port_id_has_its_own_second_and_other_events_are_not_limited() -> None:
    mon, timers, out = _monitor()
    mon.broadcast("VSERPORT_CHANGE", {"id": "p1", "open": True})
    mon.broadcast("VSERPORT_CHANGE", {"id": "p2", "open": True})
    mon.broadcast("DEVICE_DELETED", {"device": "x", "path": "/machine/peripheral/x"})
    mon.broadcast("DEVICE_DELETED", {"device": "y", "path": "/machine/peripheral/y"})
    assert [name for name, _ in _events(out)] == ["VSERPORT_CHANGE", "VSERPORT_CHANGE", "DEVICE_DELETED", "DEVICE_DELETED"]


def test_a_held_event_keeps_the_time_it_happened() -> None:
    mon, timers, out = _monitor()
    mon.broadcast("VSERPORT_CHANGE", {"id": "p1", "open": True})
    out.clear()
    before = time.time()
    mon.broadcast("VSERPORT_CHANGE", {"id": "p1", "open": False})
    after = time.time()
    timers.fire()
    (msg,) = [json.loads(line) for chunk in out for line in chunk.splitlines()]
    stamp = msg["timestamp"]["seconds"] + msg["timestamp"]["microseconds"] / 1e6
    assert before - 0.001 <= stamp <= after + 0.001


def test_vserial_run_throttles_with_its_main_loop() -> None:
    """Guest open/close/open within a second: the QMP client sees open at
    once and the final open when the second is over; the machine's own log
    keeps all three."""
    rt = Runtime()
    try:
        rt.machine.device_add({"driver": "virtio-serial"})
        rt.machine.device_add({"driver": "virtserialport", "nr": "1", "id": "p1", "name": "org.p1"})
        rt.start()
        out: list[bytes] = []
        session = QMPSession(rt.monitor, out.append)
        session.feed(b'{"execute": "qmp_capabilities"}')
        out.clear()
        start = time.monotonic()
        f = rt.machine.guest.open("/dev/virtio-ports/org.p1")
        f.close()
        rt.machine.guest.open("/dev/virtio-ports/org.p1")
        assert _events(out) == [("VSERPORT_CHANGE", {"id": "p1", "open": True})]
        got: list[tuple[str, dict[str, object]]] = []
        while not got and time.monotonic() - start < 5:
            rt.loop.run_once(0.05)
            got = _events(out)
        assert got == [("VSERPORT_CHANGE", {"id": "p1", "open": True})]
        assert time.monotonic() - start >= 0.99
        assert [e.data["open"] for e in rt.machine.events if e.name == "VSERPORT_CHANGE"] == [True, False, True]
        assert QmpEvent("VSERPORT_CHANGE", {"id": "p1", "open": True}) == rt.machine.events[-1]
    finally:
        rt.close()
