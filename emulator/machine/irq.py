"""Interrupts raised by devices and not yet handled by the guest.

A device's used-buffer notification (virtio_notify) becomes a pending
interrupt for (device, queue).  Like a level-triggered line, raising one
that is already pending changes nothing; the machine's ``pump`` hands them
to the guest in the order they were raised, while the VM runs.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar


class _Indexed(Protocol):
    @property
    def index(self) -> int: ...


D = TypeVar("D", bound=_Indexed)


class PendingInterrupts(Generic[D]):
    """FIFO of (device, queue) interrupts, each pending at most once."""

    def __init__(self) -> None:
        self._queue: deque[tuple[D, int]] = deque()
        self._set: set[tuple[int, int]] = set()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def raise_irq(self, dev: D, queue: int) -> None:
        key = (dev.index, queue)
        if key not in self._set:
            self._set.add(key)
            self._queue.append((dev, queue))

    def pending(self) -> list[tuple[D, int]]:
        """The pending interrupts, oldest first (nothing changes)."""
        return list(self._queue)

    def take(self) -> tuple[D, int]:
        """The oldest pending interrupt, no longer pending."""
        dev, queue = self._queue.popleft()
        self._set.discard((dev.index, queue))
        return dev, queue

    def forget(self, dev: D) -> None:
        """A device went away: its interrupts with it."""
        self._queue = deque((d, q) for d, q in self._queue if d is not dev)
        self._set = {(d.index, q) for d, q in self._queue}

    def clear(self) -> None:
        self._queue.clear()
        self._set.clear()
