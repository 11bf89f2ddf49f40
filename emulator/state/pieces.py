"""Large buffers of a machine stream, saved in pieces.

A vmstate item is at most ``max_item_size`` (4 MiB), but the buffers a
machine holds (a ring buffer's unread bytes, an in-memory host program's
queues, a guest program's write held while the host is away) have no such
bound.  Their records therefore carry only each buffer's length; the bytes
follow as ``buffer-piece`` sections of at most ``PIECE_BYTES`` each, each
naming its owner (section name and instance id) and the buffer's path in
it, written right after the owner.  A loader joins the pieces of each
buffer in stream order and refuses a stream whose pieces do not add up to
the declared lengths, or name a buffer the stream does not have.

A record with buffers implements ``Buffered``; its lengths are saved
fields (by default the length of the bytes given to the constructor), the
bytes are unsaved attributes that ``assemble`` fills.  A loaded record
that was not assembled (lengths, no bytes) saves without pieces, so a
stream's sections written back as they were loaded stay whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

import vmstate
from vmstate import U32, Bytes, Str

SECTION = "buffer-piece"
PIECE_BYTES = 1 << 20  # well under max_item_size (4 MiB) with the item's framing


@vmstate.describe(name=SECTION, version=1)
@attrs.define(kw_only=True)
class PieceRecord:
    owner: str = vmstate.field(Str(max_len=64))  # the owner's section name
    instance: int = vmstate.field(U32)  # the owner's instance id
    path: str = vmstate.field(Str(max_len=64))  # the buffer in the owner
    data: bytes = vmstate.field(Bytes(max_len=PIECE_BYTES))


@runtime_checkable
class Buffered(Protocol):
    def buffers(self) -> dict[str, bytes]:
        """Path -> bytes of every buffer (saving)."""

    def buffer_lengths(self) -> dict[str, int]:
        """Path -> length as the stream declares it (loading)."""

    def set_buffer(self, path: str, data: bytes) -> None:
        """Put a loaded buffer in place."""


def pieces(rec: Any, instance_id: int) -> Iterator[PieceRecord]:
    """The piece sections that follow ``rec`` (none for a record without buffers)."""
    if not isinstance(rec, Buffered):
        return
    owner = vmstate.description_of(type(rec)).name
    lengths = rec.buffer_lengths()
    for path, data in rec.buffers().items():
        if len(data) != lengths[path]:
            if not data:
                continue  # a loaded record not assembled: its pieces are sections of their own
            raise ValueError(f"{owner}[{instance_id}]/{path}: {len(data)} bytes, {lengths[path]} declared")
        view = memoryview(data)
        for off in range(0, len(view), PIECE_BYTES):
            yield PieceRecord(owner=owner, instance=instance_id, path=path, data=bytes(view[off:off + PIECE_BYTES]))


def assemble(sections: Sequence[vmstate.LoadedSection]) -> None:
    """Fill every buffer of the loaded records from the stream's pieces;
    raises vmstate.ValidationError for pieces that do not fit."""
    owners: dict[tuple[str, int], Any] = {(s.name, s.instance_id): s.state for s in sections if s.name != SECTION}
    parts: dict[tuple[str, int, str], list[bytes]] = {}
    sizes: dict[tuple[str, int, str], int] = {}
    for s in sections:
        if s.name != SECTION:
            continue
        p: PieceRecord = s.state
        where = f"{SECTION}:{s.instance_id}" if s.instance_id else SECTION
        owner = owners.get((p.owner, p.instance))
        lengths = owner.buffer_lengths() if isinstance(owner, Buffered) else {}
        if p.path not in lengths:
            raise vmstate.ValidationError(where, f"a piece of {p.owner}[{p.instance}]/{p.path}, "
                                          "a buffer the stream does not have")
        if not p.data:
            raise vmstate.ValidationError(f"{where}/data", "an empty piece")
        key = (p.owner, p.instance, p.path)
        sizes[key] = sizes.get(key, 0) + len(p.data)
        if sizes[key] > lengths[p.path]:
            raise vmstate.ValidationError(where, f"{p.owner}[{p.instance}]/{p.path}: more than the "
                                          f"{lengths[p.path]} bytes declared")
        parts.setdefault(key, []).append(p.data)
    for (name, instance_id), rec in owners.items():
        if not isinstance(rec, Buffered):
            continue
        for path, n in rec.buffer_lengths().items():
            got = sizes.get((name, instance_id, path), 0)
            if got != n:
                raise vmstate.ValidationError(f"{name}[{instance_id}]/{path}",
                                              f"{n} bytes declared, {got} in pieces")
            rec.set_buffer(path, b"".join(parts.pop((name, instance_id, path), [])))
