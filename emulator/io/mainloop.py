"""The runtime's main loop: file-descriptor watches and timers.

This is QEMU's iohandler/GSource loop in miniature, on ``poll(2)``: a
backend registers a read or write watch on a descriptor and gets a callback
when it is ready; timers fire once at a deadline.  Everything runs on one
thread, so the sans-IO core never sees concurrency.  After every batch of
callbacks the loop runs its ``after_dispatch`` hooks (the machine's pump and
the guest programs' pending writes): nothing in the guest can change except
in response to a callback, so the loop never spins while idle.

A callback that raises does not take the machine down: the loop reports
it through ``on_error`` (one line, traceback included) and goes on.  A
watch whose callback raised is removed, so a broken backend cannot make
the loop fail on every turn; a timer or deferred call was one-shot anyway;
an ``after_dispatch`` hook stays (it is the machine's pump) and is
reported once.
"""

from __future__ import annotations

import heapq
import itertools
import select
import sys
import time
import traceback
from collections.abc import Callable

Callback = Callable[[], None]
MAX_WAIT = 3600.0  # seconds; well inside poll(2)'s INT_MAX milliseconds


def internal_error_line(where: str, exc: BaseException) -> str:
    """One log line for an exception nobody expected: what was running,
    the exception, and its traceback innermost frame last."""
    frames = "; ".join(
        f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)
    )
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > 500:  # an exception may carry a client's huge input
        text = text[:500] + "..."
    return f"internal error in {where}: {text} [traceback: {frames}]"


def _report_on_stderr(line: str) -> None:
    print(f"vserial: {line}", file=sys.stderr, flush=True)

_IN = select.POLLIN | select.POLLPRI
_OUT = select.POLLOUT
_RDHUP = getattr(select, "POLLRDHUP", 0x2000)
_ERR = select.POLLHUP | select.POLLERR | select.POLLNVAL


class MainLoop:
    def __init__(self) -> None:
        self._poll = select.poll()
        # fd -> [reader, writer, hangup] callbacks
        self._watches: dict[int, list[Callback | None]] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[tuple[float, int, Callback]] = []
        self._cancelled: set[int] = set()
        self._seq = itertools.count()
        self._soon: list[Callback] = []
        self.after_dispatch: list[Callback] = []
        self.running = False
        # where an unexpected exception in a callback is reported (one line)
        self.on_error: Callable[[str], None] = _report_on_stderr
        self._failed_hooks: set[int] = set()

    # ----------------------------------------------------------------- watches
    def _update(self, fd: int) -> None:
        reader, writer, hup = self._watches.get(fd, (None, None, None))
        mask = (_IN if reader else 0) | (_OUT if writer else 0) | (_RDHUP if hup else 0)
        old = self._masks.get(fd)
        if mask == 0:
            self._watches.pop(fd, None)
            if old is not None:
                del self._masks[fd]
                self._poll.unregister(fd)
        elif old is None:
            self._masks[fd] = mask
            self._poll.register(fd, mask)
        elif old != mask:
            self._masks[fd] = mask
            self._poll.modify(fd, mask)

    def _set(self, fd: int, slot: int, callback: Callback | None) -> None:
        if callback is None and fd not in self._watches:
            return
        self._watches.setdefault(fd, [None, None, None])[slot] = callback
        self._update(fd)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._set(fd, 0, callback)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._set(fd, 1, callback)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 1, None)

    def add_hangup(self, fd: int, callback: Callback) -> None:
        """Called when the peer hangs up while nobody reads the descriptor
        (QEMU's char-socket hup_source).  One-shot: the watch is removed
        before the callback runs."""
        self._set(fd, 2, callback)

    def remove_hangup(self, fd: int) -> None:
        self._set(fd, 2, None)

    def has_reader(self, fd: int) -> bool:
        return fd in self._watches and self._watches[fd][0] is not None

    def has_writer(self, fd: int) -> bool:
        return fd in self._watches and self._watches[fd][1] is not None

    # ------------------------------------------------------------------ timers
    def call_later(self, delay: float, callback: Callback) -> int:
        handle = next(self._seq)
        heapq.heappush(self._timers, (time.monotonic() + delay, handle, callback))
        return handle

    def cancel(self, handle: int) -> None:
        self._cancelled.add(handle)

    def call_soon(self, callback: Callback) -> None:
        self._soon.append(callback)

    # -------------------------------------------------------------------- run
    def _timeout(self) -> float | None:
        if self._soon:
            return 0.0
        while self._timers and self._timers[0][1] in self._cancelled:
            self._cancelled.discard(heapq.heappop(self._timers)[1])
        if not self._timers:
            return None
        # poll(2) takes an int of milliseconds: a far timer is waited for in
        # turns of at most MAX_WAIT (the loop wakes and looks again).
        return min(MAX_WAIT, max(0.0, self._timers[0][0] - time.monotonic()))

    def run_once(self, timeout: float | None = None) -> None:
        wait = self._timeout()
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        if self._masks or wait is None:
            events = self._poll.poll(None if wait is None else wait * 1000.0)
        else:
            time.sleep(wait)
            events = []
        for fd, ev in events:
            cbs = self._watches.get(fd)
            if cbs is None:
                continue
            reader, writer, hup = cbs
            if ev & _OUT or (ev & _ERR and writer is not None and reader is None):
                if writer is not None:
                    self._call_watch(fd, 1, writer)
            cbs = self._watches.get(fd)
            if cbs is None:
                continue
            if ev & (_IN | _ERR) and cbs[0] is not None:
                self._call_watch(fd, 0, cbs[0])
            elif ev & (_RDHUP | _ERR) and cbs[2] is not None:
                hup = cbs[2]
                self.remove_hangup(fd)
                self._call(hup, f"the hangup callback of fd {fd}")
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, handle, cb = heapq.heappop(self._timers)
            if handle in self._cancelled:
                self._cancelled.discard(handle)
                continue
            self._call(cb, "a timer callback")
        soon, self._soon = self._soon, []
        for cb in soon:
            self._call(cb, "a deferred call")
        for hook in list(self.after_dispatch):
            try:
                hook()
            except Exception as exc:
                if id(hook) not in self._failed_hooks:  # reported once, not every turn
                    self._failed_hooks.add(id(hook))
                    self._report(exc, f"the main loop hook {_name(hook)}")

    def _call(self, cb: Callback, where: str) -> bool:
        try:
            cb()
        except Exception as exc:
            self._report(exc, f"{where} {_name(cb)}")
            return False
        return True

    def _call_watch(self, fd: int, slot: int, cb: Callback) -> None:
        """A watch whose callback raises is removed (if the callback has not
        replaced it): its backend stops, the machine runs on."""
        kind = ("read", "write")[slot]
        if not self._call(cb, f"the {kind} callback of fd {fd}"):
            cbs = self._watches.get(fd)
            if cbs is not None and cbs[slot] is cb:
                self._set(fd, slot, None)

    def _report(self, exc: Exception, where: str) -> None:
        line = internal_error_line(where, exc)
        try:
            self.on_error(line)
        except Exception:  # a broken reporter must not end the loop either
            _report_on_stderr(line)

    def run(self) -> None:
        self.running = True
        while self.running:
            self.run_once()

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        for fd in list(self._masks):
            self._poll.unregister(fd)
        self._masks.clear()
        self._watches.clear()


def _name(cb: Callable[..., object]) -> str:
    return getattr(cb, "__qualname__", None) or repr(cb)
