"""DriverQueue.state() / from_state(): the driver side of a ring as a plain,
untrusted record, checked against the ring in guest RAM."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from emulator.core.memory import GuestMemory
from emulator.guest.driver_queue import CPKT, DriverQueue, DriverQueueStateError
from emulator.guest.kmalloc import Kmalloc


def _queue() -> tuple[GuestMemory, DriverQueue]:
    mem = GuestMemory(1 << 20)
    q = DriverQueue(mem, Kmalloc(0x10000, mem.size), 3, 8, True)
    q.add_one(mem, 0x20000, 64, 0, 0x20000)
    q.add(mem, [(0x30000, 8)], [], CPKT)
    q.add(mem, [(0x40000, 16)], [(0x50000, 16)], 0x40000)
    q.num_added = 0
    return mem, q


def test_state_round_trips() -> None:
    mem, q = _queue()
    again = DriverQueue.from_state(q.state(), mem)
    assert again.state() == q.state()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("index", -1), ("num", 6), ("desc", 1 << 20), ("avail", 0x10001), ("used", 1 << 21),
        ("free_head", 8), ("free_head", 0), ("num_free", 7), ("avail_idx", 4), ("last_used_idx", 1),
        ("num_added", 9), ("event_idx", 1), ("broken", "no"),
        ("tokens", [None] * 8), ("tokens", [0x20001, CPKT, 0x40000] + [None] * 5),
        ("tokens", ["x", CPKT, 0x40000] + [None] * 5), ("chain_len", [1, 1, 1] + [0] * 5),
        ("chain_len", [1, 1] + [0] * 6),
    ],
)
def test_each_bad_field_alone_is_refused(name: str, value: Any) -> None:
    mem, q = _queue()
    with pytest.raises(DriverQueueStateError) as info:
        DriverQueue.from_state(attrs.evolve(q.state(), **{name: value}), mem)
    assert info.value.field in {name, "num_free", "chain_len", "tokens", "last_used_idx"}
    assert str(info.value).startswith(f"{info.value.field}: ")


def test_every_field_has_a_bad_case() -> None:
    from emulator.guest.driver_queue import DriverQueueState

    cases = {c[0] for c in test_each_bad_field_alone_is_refused.pytestmark[0].args[1]}
    assert {a.name for a in attrs.fields(DriverQueueState)} - cases == set()
