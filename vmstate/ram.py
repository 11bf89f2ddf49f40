"""Guest RAM as page runs.

A RAM round is a list of runs `(start page, page count, data)`; `data` is None
for a run of all-zero pages, which therefore cost a few bytes whatever their
size. A full save sends every page; live migration sends the dirty pages of
each round, and the destination applies rounds in order, later pages
overwriting earlier ones (as QEMU's RAM iterations do).
"""

from __future__ import annotations

import mmap
from typing import Any, Iterable, Iterator, Sequence

import attrs

from .errors import CorruptStream

__all__ = ["PageRun", "RamRegion", "page_runs", "DEFAULT_PAGE_SIZE"]

DEFAULT_PAGE_SIZE = 4096
_ZERO_CHUNK = bytes(1 << 20)


@attrs.frozen
class PageRun:
    start: int
    count: int
    data: bytes | None  # None: `count` zero pages


def _slicer(memory: Any) -> Any:
    """Something whose slices are fast-to-compare bytes-like copies."""
    if isinstance(memory, (bytes, bytearray, mmap.mmap)):
        return memory
    view = memoryview(memory).cast("B")

    class _Slices:
        def __getitem__(self, s: slice) -> bytes:
            return view[s].tobytes()

    return _Slices()


def _spans(dirty: Iterable[int] | None, total: int) -> Iterator[tuple[int, int]]:
    """Contiguous [start, end) page spans to send."""
    if dirty is None:
        if total:
            yield 0, total
        return
    pages = sorted(set(dirty))
    if pages and (pages[0] < 0 or pages[-1] >= total):
        raise ValueError(f"dirty page outside memory of {total} pages")
    start = prev = -2
    for p in pages:
        if p != prev + 1:
            if start >= 0:
                yield start, prev + 1
            start = p
        prev = p
    if start >= 0:
        yield start, prev + 1


def page_runs(
    memory: Any,
    page_size: int = DEFAULT_PAGE_SIZE,
    dirty: Iterable[int] | None = None,
    max_run_bytes: int = 1 << 20,
) -> Iterator[PageRun]:
    """Runs covering `dirty` pages (all pages when None) of a bytes-like
    `memory` whose length is a multiple of `page_size`. Data runs are at most
    `max_run_bytes` long; zero runs have no limit."""
    size = memoryview(memory).nbytes
    if page_size <= 0 or size % page_size:
        raise ValueError(f"memory of {size} bytes is not a whole number of {page_size}-byte pages")
    total = size // page_size
    mem = _slicer(memory)
    zero = bytes(page_size)
    max_pages = max(1, max_run_bytes // page_size)
    for span_start, span_end in _spans(dirty, total):
        run_start, run_zero = span_start, True
        run_len = 0
        for p in range(span_start, span_end):
            off = p * page_size
            is_zero = mem[off : off + page_size] == zero
            if run_len and (is_zero != run_zero or (not is_zero and run_len == max_pages)):
                yield _make_run(mem, page_size, run_start, run_len, run_zero)
                run_len = 0
            if not run_len:
                run_start, run_zero = p, is_zero
            run_len += 1
        if run_len:
            yield _make_run(mem, page_size, run_start, run_len, run_zero)


def _make_run(mem: Any, page_size: int, start: int, count: int, zero: bool) -> PageRun:
    if zero:
        return PageRun(start, count, None)
    return PageRun(start, count, bytes(mem[start * page_size : (start + count) * page_size]))


@attrs.define
class RamRegion:
    """One named RAM region as loaded: its geometry and every run of every
    round, in stream order."""

    name: str
    page_size: int
    total_pages: int
    runs: list[PageRun] = attrs.field(factory=list)

    @property
    def size(self) -> int:
        return self.page_size * self.total_pages

    def apply_to(self, memory: Any) -> None:
        """Writes the pages into `memory` (a writable bytes-like of exactly
        `size` bytes) as applying the rounds in order would leave them, but
        writing each page at most once: runs are walked last to first and a
        page already written by a later run is skipped (last writer wins).
        Checks the size before writing."""
        view = memoryview(memory).cast("B")
        if view.readonly:
            raise TypeError("memory is read-only")
        if view.nbytes != self.size:
            raise ValueError(f"RAM region '{self.name}' is {self.size} bytes, memory is {view.nbytes}")
        ps = self.page_size
        written = bytearray(self.total_pages)  # 1: set by a later run
        for run in reversed(self.runs):
            end = run.start + run.count
            pos = run.start
            while pos < end:
                a = written.find(0, pos, end)
                if a < 0:
                    break
                b = written.find(1, a, end)
                if b < 0:
                    b = end
                written[a:b] = b"\x01" * (b - a)
                _write_pages(view, run, a, b, ps)
                pos = b

    def to_bytes(self) -> bytearray:
        memory = bytearray(self.size)
        self.apply_to(memory)
        return memory

    def page_counts(self) -> tuple[int, int]:
        """(data pages, zero pages) sent, counting every round."""
        data = sum(r.count for r in self.runs if r.data is not None)
        zero = sum(r.count for r in self.runs if r.data is None)
        return data, zero


def _write_pages(view: memoryview, run: PageRun, a: int, b: int, ps: int) -> None:
    """Writes pages [a, b) of `run` into `view`."""
    if run.data is not None:
        off = (a - run.start) * ps
        view[a * ps : b * ps] = memoryview(run.data)[off : off + (b - a) * ps]
        return
    lo, hi = a * ps, b * ps
    while lo < hi:
        n = min(hi - lo, len(_ZERO_CHUNK))
        view[lo : lo + n] = _ZERO_CHUNK[:n]
        lo += n


def check_runs(
    name: str, page_size: int, total_pages: int, raw_runs: Sequence[Any], max_runs: int = 4096
) -> list[PageRun]:
    """Validates the runs of one RAM item (untrusted) and returns them: at
    most `max_runs`, in page order, not overlapping (later rounds may
    overwrite earlier ones, but one item never writes a page twice)."""
    if len(raw_runs) > max_runs:
        raise CorruptStream(f"RAM '{name}': {len(raw_runs)} runs in one item exceeds the limit of {max_runs}")
    runs = []
    prev_end = 0
    for raw in raw_runs:
        if raw.__class__ is not list or len(raw) != 3:
            raise CorruptStream(f"RAM '{name}': a run is not [start, count, data]")
        start, count, data = raw
        if start.__class__ is not int or count.__class__ is not int or count < 1 or start < 0:
            raise CorruptStream(f"RAM '{name}': bad run start {start!r} count {count!r}")
        if start + count > total_pages:
            raise CorruptStream(f"RAM '{name}': run {start}+{count} beyond its {total_pages} pages")
        if start < prev_end:
            raise CorruptStream(f"RAM '{name}': run at page {start} overlaps or precedes the run before it")
        prev_end = start + count
        if data is not None and (data.__class__ is not bytes or len(data) != count * page_size):
            raise CorruptStream(f"RAM '{name}': run at page {start} does not hold {count} pages of data")
        runs.append(PageRun(start, count, data))
    return runs
