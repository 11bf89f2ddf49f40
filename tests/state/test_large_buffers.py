"""Buffers larger than one vmstate item (4 MiB) save in ``buffer-piece``
sections and load into a fresh machine: an in-memory host program's
queues, a ring buffer's unread bytes and a guest program's held write;
the bytes arrive once, in order.  Pieces that do not fit are refused."""

from __future__ import annotations

import errno
import io
from typing import Any

import pytest
import vmstate

from emulator.core.chardev import MemoryChardev
from emulator.errors import GuestOSError
from emulator.io.char_ringbuf import RingbufChardev
from emulator.machine.machine import Machine
from emulator.state import agent as astate
from emulator.state import machine as mstate
from emulator.state import pieces

BIG = bytes(range(251)) * (5 * 4096 + 7)  # ~5 MiB, a period that is not a power of two
assert len(BIG) > 4 << 20
V = "/dev/virtio-ports/"


def _machine() -> Machine:
    m = Machine(ram_size=8 << 20)
    m.chardev_add(MemoryChardev("c1"))
    m.chardev_add(MemoryChardev("c2"))
    m.chardev_add(RingbufChardev("rb", 8 << 20))
    m.device_add({"driver": "virtio-serial", "id": "vser0", "max_ports": "4"})
    for nr, c in ((1, "c1"), (2, "c2"), (3, "rb")):
        m.device_add({"driver": "virtserialport", "chardev": c, "name": f"p{nr}", "id": f"p{nr}",
                      "nr": str(nr), "bus": "vser0.0"})
    return m


def _write_all(f: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        assert n > 0
        view = view[n:]


def test_chardev_buffers_over_4_mib_save_load_and_arrive_once_in_order() -> None:
    a = _machine()
    a.boot()
    assert a.host_send("c1", BIG) == 0  # p1 never opened: 5 MiB pending in the host program
    _write_all(a.guest.open(V + "p2"), BIG)  # the host program has not taken them
    _write_all(a.guest.open(V + "p3"), BIG[:-1])  # into the ring
    assert len(a.chardevs["c2"].received) == len(BIG)
    stream = mstate.save_machine(a, created=0)
    got = vmstate.loads(stream, mstate.registry())
    assert all(len(p.state.data) <= pieces.PIECE_BYTES for p in got.sections if p.name == pieces.SECTION)
    assert sum(1 for p in got.sections if p.name == pieces.SECTION) >= 15

    b = _machine()
    b.boot()
    mstate.load_machine(b, stream)
    c2 = b.chardevs["c2"]
    assert isinstance(c2, MemoryChardev)
    assert c2.take() == BIG and c2.take() == b""
    ring: Any = b.chardevs["rb"]
    assert ring.read(len(BIG)) == BIG[:-1] and ring.count() == 0
    p1 = b.guest.open(V + "p1")
    out = bytearray()
    for _ in range(100000):
        try:
            out += p1.read(1 << 16)
        except GuestOSError as err:
            assert err.errno == errno.EAGAIN
            break
        b.pump()
    assert bytes(out) == BIG
    assert mstate.save_machine(b, created=0) != stream  # everything was taken
    # save -> load -> save gives the same bytes
    c = _machine()
    c.boot()
    mstate.load_machine(c, stream)
    assert mstate.save_machine(c, created=0) == stream


def test_agent_pending_over_4_mib_saves_and_loads() -> None:
    a = _machine()
    a.boot()
    a.guest.open(V + "p1")
    rec = astate.AgentRecord(next_handle=1001, handles=[
        astate.AgentHandleRecord(handle=1000, file=0, mode="w", pending=BIG, written=3, closing=False, error=None)])
    stream = mstate.save_machine(a, created=0, extra=[(rec, 0)])
    b = _machine()
    b.boot()
    seen: list[Any] = []

    def loader(records: list[Any], guest: Any) -> Any:
        seen.extend(records)
        return lambda: None

    mstate.load_machine(b, stream, extra=loader)
    (got,) = seen
    assert got.handles[0].pending == BIG and got.handles[0].pending_len == len(BIG)
    assert got.handles[0].written == 3


def _resave(stream: bytes, edit: Any) -> bytes:
    """The stream with its sections edited by ``edit(list of (record, instance id))``."""
    loaded = vmstate.loads(stream, mstate.registry())
    pieces.assemble(loaded.sections)  # the records' lengths are those of their bytes again
    secs = edit([(s.state, s.instance_id) for s in loaded.sections])
    mem = bytearray(8 << 20)
    loaded.ram["ram"].apply_to(mem)
    buf = io.BytesIO()
    with vmstate.StreamWriter(buf, producer="t", created=0) as w:
        for rec, n in secs:
            w.write_section(rec, instance_id=n)
        w.write_ram(mem)
    return buf.getvalue()


@pytest.mark.parametrize("edit, message", [
    (lambda secs: [s for s in secs if not (s[0].__class__ is pieces.PieceRecord and s[1] == 3)],
     "bytes declared"),
    (lambda secs: [*secs, (pieces.PieceRecord(owner="chardev-memory", instance=0, path="nosuch", data=b"x"), 999)],
     "a buffer the stream does not have"),
    (lambda secs: [*secs, (pieces.PieceRecord(owner="chardev-memory", instance=0, path="received", data=b"x"),
                           999)], "more than the"),
])
def test_pieces_that_do_not_fit_are_refused_and_change_nothing(edit: Any, message: str) -> None:
    a = _machine()
    a.boot()
    a.host_send("c1", BIG)
    _write_all(a.guest.open(V + "p2"), b"x" * 10)
    stream = _resave(mstate.save_machine(a, created=0), edit)
    b = _machine()
    b.boot()
    before = mstate.save_machine(b, created=0)
    with pytest.raises(vmstate.ValidationError, match=message):
        mstate.load_machine(b, stream)
    assert mstate.save_machine(b, created=0) == before
