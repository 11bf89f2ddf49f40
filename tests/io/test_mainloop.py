"""The main loop does not spin: no CPU while idle, none while a port is
throttled with data waiting in the guest program."""

from __future__ import annotations

from collections.abc import Callable

from emulator.io.mainloop import MAX_WAIT, MainLoop
from emulator.runtime.runtime import Runtime

from tests.runtime.programs import (  # noqa: F401  (build: a fixture)
    GuestProgram, Host, build, cpu_over, guest_port, pattern, pump, with_port,
)


def test_no_spin_while_idle_or_throttled(build: Callable[..., Runtime], tmp: str) -> None:
    path = f"{tmp}/s"
    rt = build(*with_port(f"socket,id=c1,path={path},server=on,wait=off"))
    h = Host(path)
    pump(rt, lambda: guest_port(rt)["host-connected"], "host-connected")
    g = GuestProgram(rt)
    assert cpu_over(rt) < 0.05
    g.write(pattern(4 << 20, 3))
    port = rt.machine.port("p1")
    pump(rt, lambda: port.throttled, "the port to throttle")
    assert cpu_over(rt) < 0.05  # throttled with 4 MiB pending in the guest program
    h.close()


def test_a_callback_that_raises_is_reported_once_and_the_loop_runs_on() -> None:
    """Was: the exception left run_once and ended `vserial run` (exit 1)."""
    import os

    from emulator.io.mainloop import MainLoop

    loop = MainLoop()
    logged: list[str] = []
    loop.on_error = logged.append
    r, w = os.pipe()
    try:
        os.write(w, b"x")

        def bad_reader() -> None:
            raise RuntimeError("reader broke")

        ran: list[str] = []
        loop.add_reader(r, bad_reader)
        loop.call_soon(lambda: 1 // 0)
        loop.call_later(0, lambda: ran.append("timer"))
        hook_calls: list[int] = []

        def bad_hook() -> None:
            hook_calls.append(1)
            raise ValueError("hook broke")

        loop.after_dispatch.append(bad_hook)
        loop.run_once(0.01)
        loop.run_once(0.01)
        assert not loop.has_reader(r)  # the failing watch is removed
        assert ran == ["timer"] and len(hook_calls) == 2  # the hook stays, reported once
        assert [line.split(" [traceback: ")[0] for line in logged] == [
            f"internal error in the read callback of fd {r} "
            "test_a_callback_that_raises_is_reported_once_and_the_loop_runs_on.<locals>.bad_reader: "
            "RuntimeError: reader broke",
            "internal error in a deferred call "
            "test_a_callback_that_raises_is_reported_once_and_the_loop_runs_on.<locals>.<lambda>: "
            "ZeroDivisionError: integer division or modulo by zero",
            "internal error in the main loop hook "
            "test_a_callback_that_raises_is_reported_once_and_the_loop_runs_on.<locals>.bad_hook: "
            "ValueError: hook broke",
        ]
        assert all("test_mainloop.py" in line and "\n" not in line for line in logged)
    finally:
        loop.close()
        os.close(r)
        os.close(w)


def test_a_timer_beyond_polls_range_does_not_break_the_loop() -> None:
    """poll(2) takes an int of milliseconds; a timer 2**62 s away is waited
    for in bounded turns (was: OverflowError out of run_once)."""
    loop = MainLoop()
    try:
        fired: list[int] = []
        loop.call_later(float(2**62), lambda: fired.append(1))
        loop.call_soon(lambda: fired.append(0))
        loop.run_once(0.01)
        assert loop._timeout() == MAX_WAIT
        loop.run_once(0.01)
        assert fired == [0]
    finally:
        loop.close()
