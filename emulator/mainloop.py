"""The runtime's main loop: file-descriptor watches and timers.

This is QEMU's iohandler/GSource loop in miniature, on ``selectors``: a
backend registers a read or write watch on a descriptor and gets a callback
when it is ready; timers fire once at a deadline.  Everything runs on one
thread, so the sans-IO core never sees concurrency.  After every batch of
callbacks the loop runs its ``after_dispatch`` hooks (the machine's pump and
the guest programs' pending writes): nothing in the guest can change except
in response to a callback, so the loop never spins while idle.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import time
from collections.abc import Callable

Callback = Callable[[], None]


class MainLoop:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        # fd -> [reader callback, writer callback]
        self._watches: dict[int, list[Callback | None]] = {}
        self._timers: list[tuple[float, int, Callback]] = []
        self._cancelled: set[int] = set()
        self._seq = itertools.count()
        self._soon: list[Callback] = []
        self.after_dispatch: list[Callback] = []
        self.running = False

    # ----------------------------------------------------------------- watches
    def _update(self, fd: int) -> None:
        reader, writer = self._watches.get(fd, (None, None))
        mask = (selectors.EVENT_READ if reader else 0) | (selectors.EVENT_WRITE if writer else 0)
        try:
            registered = self._sel.get_key(fd)
        except KeyError:
            registered = None
        if mask == 0:
            self._watches.pop(fd, None)
            if registered is not None:
                self._sel.unregister(fd)
        elif registered is None:
            self._sel.register(fd, mask)
        elif registered.events != mask:
            self._sel.modify(fd, mask)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._watches.setdefault(fd, [None, None])[0] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if fd in self._watches:
            self._watches[fd][0] = None
            self._update(fd)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._watches.setdefault(fd, [None, None])[1] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if fd in self._watches:
            self._watches[fd][1] = None
            self._update(fd)

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
        return max(0.0, self._timers[0][0] - time.monotonic())

    def run_once(self, timeout: float | None = None) -> None:
        wait = self._timeout()
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        if self._watches or wait is None:
            events = self._sel.select(wait)
        else:
            time.sleep(wait)
            events = []
        for key, mask in events:
            cbs = self._watches.get(key.fd)
            if cbs is None:
                continue
            if mask & selectors.EVENT_WRITE and cbs[1] is not None:
                cbs[1]()
            cbs = self._watches.get(key.fd)
            if cbs is not None and mask & selectors.EVENT_READ and cbs[0] is not None:
                cbs[0]()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, handle, cb = heapq.heappop(self._timers)
            if handle in self._cancelled:
                self._cancelled.discard(handle)
                continue
            cb()
        soon, self._soon = self._soon, []
        for cb in soon:
            cb()
        for hook in list(self.after_dispatch):
            hook()

    def run(self) -> None:
        self.running = True
        while self.running:
            self.run_once()

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        self._sel.close()
