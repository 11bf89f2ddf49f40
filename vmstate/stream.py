"""Writing and reading streams incrementally over a file object or socket.

`StreamWriter` emits each item as soon as it is given one (a migration sends
RAM rounds while the machine runs, then the device sections). `StreamReader`
reads items one at a time under the decoding limits and checks the trailer's
digest and HMAC when it reaches it. Nothing here knows descriptions; load.py
turns verified raw items into records.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from .codec import encode_record, versions_for
from .container import (
    DEFAULT_LIMITS,
    ITEM_TAG,
    MAX_CREATED,
    KIND_END,
    KIND_RAM,
    KIND_SECTION,
    Header,
    Limits,
    check_plain,
    decode_payload,
    encode_item,
    read_item_size,
)
from .description import description_of
from .errors import CorruptStream, IntegrityError
from .ram import DEFAULT_PAGE_SIZE, PageRun, check_runs, page_runs

__all__ = ["StreamWriter", "StreamReader", "MIN_KEY_BYTES", "check_key"]

_END = object()  # what _next_item returns for the trailer

_MAX_RUNS_PER_ITEM = 4096
MIN_KEY_BYTES = 16  # an HMAC key shorter than this (or empty) is refused


def check_key(key: bytes | None) -> None:
    """Refuses an HMAC key that is not bytes or is shorter than MIN_KEY_BYTES:
    an empty key would "authenticate" streams anyone can forge."""
    if key is None:
        return
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"HMAC key must be bytes, not {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"HMAC key of {len(key)} bytes is too short (at least {MIN_KEY_BYTES} bytes)")


def _sink_writer(sink: Any) -> Callable[[bytes], None]:
    if hasattr(sink, "sendall"):
        return sink.sendall  # type: ignore[no-any-return]
    write = sink.write

    def write_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = write(view)
            if n is None:  # non-blocking raw file with nothing written: not supported
                raise OSError("sink would block")
            view = view[n:]

    return write_all


class StreamWriter:
    """Writes one stream. The header goes out on construction, the trailer
    on `close()` (or on leaving a `with` block without an exception; after an
    exception no trailer is written, so readers refuse the partial stream)."""

    def __init__(
        self,
        sink: Any,
        *,
        producer: str,
        created: int | None = None,
        machine: Mapping[str, Any] | None = None,
        key: bytes | None = None,
        ram_item_bytes: int = 1 << 20,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        check_key(key)
        created = int(time.time()) if created is None else created
        if created.__class__ is not int or not 0 <= created <= MAX_CREATED:
            raise ValueError(f"created {created!r} is not a Unix time in 0..{MAX_CREATED}")
        self._write = _sink_writer(sink)
        self._limits = limits
        self._sha = hashlib.sha256()
        self._mac = hmac.new(key, digestmod=hashlib.sha256) if key is not None else None
        self._ram_item_bytes = ram_item_bytes
        self.closed = False
        self.bytes_written = 0
        if machine is not None:
            check_plain(machine)
        self.header = Header(
            producer=producer,
            created=created,
            machine=dict(machine) if machine is not None else None,
        )
        self._emit(self.header.to_cbor())

    def _emit(self, record: Any) -> None:
        if self.closed:
            raise ValueError("stream is closed")
        frame = encode_item(record)
        if len(frame) > self._limits.max_item_size:
            # Readers with the same limits would refuse it: fail now, at the writer.
            raise ValueError(f"item of {len(frame)} bytes exceeds max_item_size {self._limits.max_item_size}")
        self._sha.update(frame)
        if self._mac is not None:
            self._mac.update(frame)
        self._write(frame)
        self.bytes_written += len(frame)

    def write_section(self, state: Any, *, instance_id: int = 0) -> None:
        """Saves a described record as one section (hooks and checks run;
        ValidationError names the bad field and nothing is written)."""
        d = description_of(state)
        if instance_id.__class__ is not int or not 0 <= instance_id < 1 << 32:
            raise ValueError(f"instance_id {instance_id!r} is not a u32")
        body = encode_record(d, state)
        self._emit([KIND_SECTION, d.name, instance_id, d.version, body, versions_for(d)])

    def write_ram(
        self,
        memory: Any,
        *,
        region: str = "ram",
        page_size: int = DEFAULT_PAGE_SIZE,
        dirty: Iterable[int] | None = None,
    ) -> int:
        """One RAM round: every page of `memory` (bytes-like) or only the
        `dirty` page indices. Returns the number of pages sent."""
        total = memoryview(memory).nbytes // page_size
        runs = page_runs(memory, page_size, dirty, max_run_bytes=self._ram_item_bytes)
        return self.write_ram_runs(region, page_size, total, runs)

    def write_ram_runs(self, region: str, page_size: int, total_pages: int, runs: Iterable[PageRun]) -> int:
        """Writes runs as RAM items of at most ~`ram_item_bytes` of data each."""
        pages = 0
        batch: list[list[Any]] = []
        budget = 0
        prev_end = 0
        max_runs = min(_MAX_RUNS_PER_ITEM, self._limits.max_runs_per_item)
        for run in runs:
            if batch and (budget + len(run.data or b"") > self._ram_item_bytes or len(batch) >= max_runs):
                self._emit([KIND_RAM, region, page_size, total_pages, batch])
                batch, budget, prev_end = [], 0, 0
            if run.start < prev_end:  # readers refuse an item that writes a page twice
                raise ValueError(f"RAM run at page {run.start} overlaps or precedes the run before it")
            prev_end = run.start + run.count
            batch.append([run.start, run.count, run.data])
            budget += len(run.data or b"")
            pages += run.count
        if batch:
            self._emit([KIND_RAM, region, page_size, total_pages, batch])
        return pages

    def write_ram_item(self, region: str, page_size: int, total_pages: int, runs: list[PageRun]) -> None:
        """Writes exactly one RAM item (used to re-save a loaded stream as is)."""
        try:
            check_runs(region, page_size, total_pages, [[r.start, r.count, r.data] for r in runs], self._limits.max_runs_per_item)
        except CorruptStream as e:  # readers would refuse it
            raise ValueError(str(e)) from None
        self._emit([KIND_RAM, region, page_size, total_pages, [[r.start, r.count, r.data] for r in runs]])

    def close(self) -> bytes:
        """Writes the trailer; returns the stream's sha256. Idempotent."""
        if not self.closed:
            mac = self._mac.digest() if self._mac is not None else None
            trailer = encode_item([KIND_END, self._sha.digest(), mac])
            self._write(trailer)
            self.bytes_written += len(trailer)
            self.closed = True
        return self._sha.digest()

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()


def _source_reader(source: Any) -> Callable[[int], bytes]:
    if not hasattr(source, "read") and hasattr(source, "recv"):
        source = source.makefile("rb")
    read = source.read

    def read_upto(n: int) -> bytes:
        """Up to n bytes; fewer only at end of stream."""
        data = read(n)
        if data is None:
            raise OSError("source would block")
        if len(data) == n or not data:
            return bytes(data)
        parts = [bytes(data)]
        got = len(data)
        while got < n:
            more = read(n - got)
            if not more:
                break
            parts.append(bytes(more))
            got += len(more)
        return b"".join(parts)

    return read_upto


class StreamReader:
    """Reads one stream item by item.

    The header is read and checked on construction. Iterating yields the raw
    items between header and trailer (decoded CBOR, not yet checked against
    any description); when the trailer comes, the digest (and, with `key`, the
    HMAC) is checked and IntegrityError raised on mismatch. Items yielded
    before that point are NOT verified: use vmstate.load(), which applies
    nothing until the end, unless you buffer them yourself.
    """

    def __init__(
        self,
        source: Any,
        *,
        key: bytes | None = None,
        limits: Limits = DEFAULT_LIMITS,
        check_eof: bool = True,
    ) -> None:
        check_key(key)
        self._read = _source_reader(source)
        self._key = key
        self._limits = limits
        self._check_eof = check_eof
        self._sha = hashlib.sha256()
        self._mac = hmac.new(key, digestmod=hashlib.sha256) if key is not None else None
        self._size = 0
        self._items = 0
        self.digest: bytes | None = None
        self.authenticated = False  # True once an HMAC was checked with `key`
        self.signed = False  # the stream carries an HMAC
        self.finished = False
        first = self._next_item(first=True)
        if first is _END:
            raise CorruptStream("stream has no header")
        self.header = Header.from_cbor(first)

    def _exact(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise CorruptStream("stream truncated (no trailer)")
        return data

    def _next_item(self, first: bool = False) -> Any:
        head = self._read(3)
        if not head and first:
            raise CorruptStream("empty stream")
        if len(head) != 3:
            raise CorruptStream("stream truncated (no trailer)")
        if first and head[:2] != ITEM_TAG:
            raise CorruptStream("not a vmstate stream")
        size, head = read_item_size(head, self._exact)
        if size > self._limits.max_item_size:
            raise CorruptStream(f"item of {size} bytes exceeds the limit of {self._limits.max_item_size}")
        self._items += 1
        self._size += len(head) + size
        if self._items > self._limits.max_items or self._size > self._limits.max_stream_size:
            raise CorruptStream("stream exceeds the size limits")
        payload = self._exact(size)
        value = decode_payload(payload, self._limits)
        if value.__class__ is list and value and value[0] == KIND_END:
            self._finish(value)
            return _END
        self._sha.update(head)
        self._sha.update(payload)
        if self._mac is not None:
            self._mac.update(head)
            self._mac.update(payload)
        return value

    def _finish(self, trailer: list[Any]) -> None:
        if len(trailer) != 3 or trailer[1].__class__ is not bytes or not (
            trailer[2] is None or trailer[2].__class__ is bytes
        ):
            raise CorruptStream("malformed trailer")
        _, digest, mac = trailer
        if not hmac.compare_digest(digest, self._sha.digest()):
            raise IntegrityError("stream digest mismatch: the stream was altered or damaged")
        self.signed = mac is not None
        if self._mac is not None:
            if mac is None:
                raise IntegrityError("stream carries no HMAC, but a key was given")
            if not hmac.compare_digest(mac, self._mac.digest()):
                raise IntegrityError("HMAC mismatch: the stream was altered or written with another key")
            self.authenticated = True
        if self._check_eof and self._read(1):
            raise CorruptStream("data after the trailer")
        self.digest = digest
        self.finished = True

    def __iter__(self) -> Iterator[Any]:
        while not self.finished:
            value = self._next_item()
            if value is _END:
                return
            if value.__class__ is not list or not value or value[0] not in (KIND_SECTION, KIND_RAM):
                raise CorruptStream("unknown item in stream")
            yield value
