"""``busy_turns``, the measure the no-spinning tests use, tells an idle
loop from a spinning one by counting turns, not CPU seconds: an idle
runtime waits in poll(2) on every turn, whatever else the machine runs."""

from __future__ import annotations

import os
from collections.abc import Callable

from emulator.runtime.runtime import Runtime

from tests.runtime.programs import build, busy_turns, cpu_over, with_port  # noqa: F401  (build: a fixture)


def test_an_idle_runtime_waits_on_every_turn(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build(*with_port(f"socket,id=c1,path={tmp}/s,server=on,wait=off"))
    busy_turns(rt, 5)  # what start-up left due
    assert busy_turns(rt) == 0
    assert cpu_over(rt, 0.1) == 0.0


def test_a_descriptor_nobody_drains_is_counted_on_every_turn(build: Callable[..., Runtime], tmp: str) -> None:
    rt = build(*with_port(f"socket,id=c1,path={tmp}/s,server=on,wait=off"))
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        rt.loop.add_reader(r, lambda: None)  # readable, never read: a level-triggered spin
        assert busy_turns(rt, 20) == 20
        assert cpu_over(rt, 0.1) == 1.0
    finally:
        rt.loop.remove_reader(r)
        os.close(r)
        os.close(w)


def test_a_callback_that_reschedules_itself_is_counted_on_every_turn(build: Callable[..., Runtime]) -> None:
    rt = build()
    spinning = True

    def again() -> None:
        if spinning:
            rt.loop.call_soon(again)

    rt.loop.call_soon(again)
    assert busy_turns(rt, 20) == 20
    spinning = False
    busy_turns(rt, 2)
    assert busy_turns(rt, 20) == 0
