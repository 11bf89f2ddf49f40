"""A log that keeps only its newest entries: what a long-running machine
collects (QMP events, error reports, trace lines, guest kernel messages)
must not grow with every guest operation.

``RingLog`` is a ``list``, so code and tests that read a log as a list
(``==``, slicing, ``[-1]``, ``in``) keep working; appending past
``maxlen`` drops the oldest entry, as ``collections.deque(maxlen=...)``
does, and counts it in ``dropped``.  The ring is small (a few thousand
entries), so dropping from the front costs a short memmove.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self, SupportsIndex, TypeVar

T = TypeVar("T")


class RingLog(list[T]):
    """The newest ``maxlen`` entries; ``dropped`` counts the ones let go."""

    def __init__(self, maxlen: int, items: Iterable[T] = ()) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, not {maxlen}")
        super().__init__()
        self.maxlen = maxlen
        self.dropped = 0
        self.extend(items)

    def _trim(self) -> None:
        excess = len(self) - self.maxlen
        if excess > 0:
            del self[:excess]
            self.dropped += excess

    def append(self, item: T, /) -> None:
        super().append(item)
        if len(self) > self.maxlen:
            del self[0]
            self.dropped += 1

    def extend(self, items: Iterable[T], /) -> None:
        super().extend(items)
        self._trim()

    def insert(self, index: SupportsIndex, item: T, /) -> None:
        super().insert(index, item)
        self._trim()

    def __iadd__(self, items: Iterable[T], /) -> Self:  # type: ignore[override,misc]
        self.extend(items)
        return self

    def __repr__(self) -> str:
        return f"RingLog(maxlen={self.maxlen}, {super().__repr__()})"
